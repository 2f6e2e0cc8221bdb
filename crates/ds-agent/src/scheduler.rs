//! Decides what the reconciler runs when: one task per deployment (plus one prune sweep),
//! run concurrently up to a bound, each with its own error backoff.
//!
//! Modelled on kube-runtime's `Controller`: a task is scheduled by what concerns it (its
//! entry of the desired state changed, one of its objects changed in the cluster, its
//! backoff expired, a resync), never runs twice at once (scheduled while running, it runs
//! once more afterwards), and a failing deployment only delays itself. A *pass* is the set
//! of every task scheduled at once on resync, on gaining the Lease and when the desired
//! state first becomes complete; its end drives readiness and the `reconcile_runs` metric.

use super::AgentError;
use super::cache::Cached;
use super::desired::Kind;
use super::held::Held;
use super::pods::{KeptStatus, Pods};
use super::reconcile::{PruneOutcome, Reconciler};
use super::sync::{DesiredState, StatusTable, Statuses};
use ds_core::proto;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// First retry delay of a deployment after a transient failure (409, 429, 5xx, network).
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay after transient failures.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// First retry delay after a failure a quick retry will not fix (name taken, namespace
/// missing): someone has to act first, and the resync retries anyway.
const RETRY_PERMANENT_MIN: Duration = Duration::from_secs(1);
/// Longest time a changed status waits before it is handed to the status reporter while
/// work is still running (when idle it goes at once).
const STATUS_DELAY: Duration = Duration::from_millis(200);

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Period of full passes.
    pub resync: Duration,
    /// Tasks running at once.
    pub concurrency: usize,
}

/// Channels the scheduler reads and writes.
pub struct LoopIo {
    pub desired: watch::Receiver<DesiredState>,
    pub leader: watch::Receiver<bool>,
    /// Owned objects the watches saw change.
    pub touched: mpsc::UnboundedReceiver<Arc<Cached>>,
    pub statuses: watch::Sender<Statuses>,
    pub ready: watch::Sender<bool>,
    /// The deployments' pods, overlaid on every status computed (see [`super::pods`]).
    pub pods: Pods,
    /// Deployments whose pods changed: their status is recomputed, nothing is written.
    pub pods_touched: mpsc::UnboundedReceiver<Arc<str>>,
}

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Task {
    /// Reconcile the deployment with this ID.
    Deployment(Arc<str>),
    /// Delete the owned objects nothing wants.
    Prune,
}

enum Done {
    Deployment {
        id: Arc<str>,
        /// Boxed: the status is most of the variant's size.
        status: Option<Box<proto::DeploymentStatus>>,
        result: Result<(), AgentError>,
    },
    Prune(PruneOutcome),
}

// === impl Queue ===

/// Tasks due now (in order), running, and waiting out a backoff.
#[derive(Default)]
struct Queue {
    due: VecDeque<Task>,
    queued: HashSet<Task>,
    running: HashSet<Task>,
    /// Scheduled while running: due again once it ends.
    again: HashSet<Task>,
    delayed: BTreeSet<(Instant, Task)>,
    delayed_at: HashMap<Task, Instant>,
    /// Consecutive failures per task (the backoff exponent).
    failures: HashMap<Task, u32>,
}

impl Queue {
    /// Makes `task` due now (an earlier schedule wins over a backoff, as in kube-runtime).
    fn schedule(&mut self, task: Task) {
        if self.running.contains(&task) {
            self.again.insert(task);
            return;
        }
        if let Some(at) = self.delayed_at.remove(&task) {
            self.delayed.remove(&(at, task.clone()));
        }
        if self.queued.insert(task.clone()) {
            self.due.push_back(task);
        }
    }

    /// Makes `task` due after `delay`, unless it is due sooner already.
    fn schedule_after(&mut self, task: Task, delay: Duration) {
        let at = Instant::now() + delay;
        if self.queued.contains(&task) || self.again.contains(&task) {
            return;
        }
        match self.delayed_at.get(&task) {
            Some(&old) if old <= at => {}
            Some(&old) => {
                self.delayed.remove(&(old, task.clone()));
                self.delayed.insert((at, task.clone()));
                self.delayed_at.insert(task, at);
            }
            None => {
                self.delayed.insert((at, task.clone()));
                self.delayed_at.insert(task, at);
            }
        }
    }

    fn next_delayed(&self) -> Option<Instant> {
        self.delayed.first().map(|(at, _)| *at)
    }

    /// Moves the tasks whose backoff is over to the due ones.
    fn release_delayed(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.delayed.first()
            && *at <= now
        {
            if let Some((_, task)) = self.delayed.pop_first() {
                self.delayed_at.remove(&task);
                self.schedule(task);
            }
        }
    }

    fn start(&mut self) -> Option<Task> {
        let task = self.due.pop_front()?;
        self.queued.remove(&task);
        self.running.insert(task.clone());
        Some(task)
    }

    fn finished(&mut self, task: &Task) {
        self.running.remove(task);
        if self.again.remove(task) {
            self.schedule(task.clone());
        }
    }

    /// Counts a failure of `task` and schedules its retry.
    fn failed(&mut self, task: Task, transient: bool, cap: Duration) {
        let n = self.failures.entry(task.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let n = *n;
        let (min, max) = if transient {
            (RETRY_MIN, RETRY_MAX)
        } else {
            (RETRY_PERMANENT_MIN, cap.max(RETRY_PERMANENT_MIN))
        };
        self.schedule_after(task, backoff(min, max, n));
    }

    fn succeeded(&mut self, task: &Task) {
        self.failures.remove(task);
    }

    /// Forgets everything due or delayed (the Lease was lost; a new leader starts over).
    fn clear(&mut self) {
        self.due.clear();
        self.queued.clear();
        self.again.clear();
        self.delayed.clear();
        self.delayed_at.clear();
        self.failures.clear();
    }

    fn idle(&self) -> bool {
        self.due.is_empty() && self.running.is_empty()
    }
}

/// The delay before retry `n` (1-based): doubling from `min`, capped at `max`, with jitter
/// (a random 50–100 %) so failures that started together do not retry together.
fn backoff(min: Duration, max: Duration, n: u32) -> Duration {
    let exp = min.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    exp.min(max).mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// A full pass under way.
struct Pass {
    started: Instant,
    remaining: HashSet<Task>,
    failed: bool,
    complete: bool,
}

/// Whether the change from `old` to `new` may leave an owned object unwanted (moved, or
/// a kind no longer wanted: host, autoscaler or disruption budget removed).
fn moved(old: &Held, new: &Held) -> bool {
    old.name != new.name
        || old.namespace != new.namespace
        || Kind::ALL
            .into_iter()
            .any(|k| old.wants_kind(k) && !new.wants_kind(k))
}

async fn run_task(rec: &Reconciler, task: Task, desired: DesiredState) -> (Task, Done) {
    let done = match &task {
        Task::Deployment(id) => {
            let (status, result) = match desired.deployments.get(&**id) {
                Some(obj) => {
                    let (status, result) = rec.reconcile(&obj.object(), &desired).await;
                    (Some(Box::new(status)), result)
                }
                // Removed meanwhile: the prune sweep deals with its objects.
                None => (None, Ok(())),
            };
            Done::Deployment {
                id: id.clone(),
                status,
                result,
            }
        }
        Task::Prune => Done::Prune(rec.prune(&desired).await),
    };
    (task, done)
}

/// Runs the reconciler until `cancel`: tasks when the desired state or the cluster
/// changes, full passes every `resync`, retries per task after failures. Runs tasks only
/// while `leader` says so; each write is fenced besides (see [`super::leader::Fence`]).
pub async fn run(rec: Reconciler, mut io: LoopIo, cfg: SchedulerConfig, cancel: CancellationToken) {
    tokio::select! {
        () = rec.stores().ready() => {}
        () = cancel.cancelled() => return,
    }
    info!(deployer = %rec.deployer_id(), "cluster caches synced");
    let rec = &rec;
    let mut q = Queue::default();
    let mut running: FuturesUnordered<BoxFuture<'_, (Task, Done)>> = FuturesUnordered::new();
    let mut statuses: HashMap<Arc<str>, Arc<KeptStatus>> = HashMap::new();
    let mut publish_at: Option<Instant> = None;
    let mut known = io.desired.borrow_and_update().clone();
    let mut leader = *io.leader.borrow_and_update();
    let mut pass: Option<Pass> = None;
    let mut pass_wanted = true;
    let mut next_resync = Instant::now() + cfg.resync;
    loop {
        if leader && pass.is_none() && pass_wanted {
            pass_wanted = false;
            let desired = io.desired.borrow().clone();
            rec.begin_pass(&desired);
            let mut remaining: HashSet<Task> = desired
                .deployments
                .keys()
                .map(|id| Task::Deployment(id.clone()))
                .collect();
            remaining.insert(Task::Prune);
            // In ID order, as passes always went: the order is then the same on every replica.
            let mut order: Vec<&Task> = remaining.iter().collect();
            order.sort();
            for t in order {
                q.schedule(t.clone());
            }
            pass = Some(Pass {
                started: Instant::now(),
                remaining,
                failed: false,
                complete: desired.complete,
            });
        }
        if leader {
            while running.len() < cfg.concurrency.max(1) {
                let Some(task) = q.start() else { break };
                running.push(Box::pin(run_task(rec, task, io.desired.borrow().clone())));
            }
        }
        if pass.as_ref().is_some_and(|p| p.remaining.is_empty()) {
            let p = pass.take().unwrap_or_else(|| unreachable!("checked above"));
            let took = p.started.elapsed();
            rec.count_owned();
            rec.metrics().reconcile_runs.inc();
            rec.metrics().reconcile_duration.observe(took.as_secs_f64());
            if p.failed {
                rec.metrics().reconcile_failures.inc();
            }
            debug!(
                desired = known.deployments.len(),
                took_ms = took.as_millis() as u64,
                failed = p.failed,
                "reconcile pass"
            );
            next_resync = Instant::now() + cfg.resync;
            if p.complete && !*io.ready.borrow() {
                publish_at = Some(Instant::now());
                info!(
                    deployments = known.deployments.len(),
                    "first complete snapshot applied: ready"
                );
            }
            if p.complete {
                io.ready.send_if_modified(|r| !std::mem::replace(r, true));
            }
        }
        if publish_at.is_some() && q.idle() {
            publish_at = Some(Instant::now());
        }
        if publish_at.is_some_and(|at| at <= Instant::now()) {
            publish_at = None;
            io.statuses.send_replace(Arc::new(StatusTable {
                by_id: statuses.clone(),
                pods: io.pods.clone(),
            }));
        }
        let delayed = q.next_delayed();
        tokio::select! {
            Some((task, done)) = running.next(), if !running.is_empty() => {
                q.finished(&task);
                let counted = match done {
                    Done::Deployment { result: Err(AgentError::NotLeader), .. } => false,
                    Done::Prune(PruneOutcome { fenced: true, .. }) => false,
                    Done::Deployment { id, status, result } => {
                        let namespace = io
                            .desired
                            .borrow()
                            .deployments
                            .get(&*id)
                            .map(|o| o.namespace.clone());
                        let status = status
                            .zip(namespace)
                            .map(|(s, namespace)| KeptStatus::new(*s, io.pods.of(&namespace, &id)));
                        if let Some(s) = status
                            && statuses.get(&*id).map(|o| &**o) != Some(&s)
                        {
                            statuses.insert(id.clone(), Arc::new(s));
                            publish_at.get_or_insert_with(|| Instant::now() + STATUS_DELAY);
                        }
                        match result {
                            Ok(()) => q.succeeded(&task),
                            Err(error) => {
                                debug!(deployment = %id, %error, "reconcile failed");
                                if let Some(p) = &mut pass {
                                    p.failed = true;
                                }
                                q.failed(task.clone(), error.is_transient(), cfg.resync);
                            }
                        }
                        true
                    }
                    Done::Prune(out) => {
                        if out.failures > 0 {
                            if let Some(p) = &mut pass {
                                p.failed = true;
                            }
                            q.failed(task.clone(), out.transient_failures > 0, cfg.resync);
                        } else {
                            q.succeeded(&task);
                        }
                        true
                    }
                };
                if counted && let Some(p) = &mut pass {
                    p.remaining.remove(&task);
                }
            }
            r = io.desired.changed() => {
                if r.is_err() { return }
                let desired = io.desired.borrow_and_update().clone();
                if !Arc::ptr_eq(&desired.deployments, &known.deployments) {
                    let mut prune = false;
                    for (id, obj) in desired.deployments.iter() {
                        match known.deployments.get(id) {
                            Some(old) if Arc::ptr_eq(old, obj) => {}
                            old => {
                                prune |= old.is_some_and(|o| moved(o, obj));
                                q.schedule(Task::Deployment(id.clone()));
                            }
                        }
                    }
                    for id in known.deployments.keys() {
                        if !desired.deployments.contains_key(id) {
                            prune = true;
                            if statuses.remove(&**id).is_some() {
                                publish_at.get_or_insert_with(|| Instant::now() + STATUS_DELAY);
                            }
                        }
                    }
                    if prune {
                        q.schedule(Task::Prune);
                    }
                }
                // Complete at last: prune may run now, and readiness follows a full pass.
                pass_wanted |= desired.complete && !known.complete;
                known = desired;
            }
            Some(first) = io.touched.recv() => {
                let desired = io.desired.borrow().clone();
                let mut prune = false;
                let mut next = Some(first);
                // Take what else has arrived too: one look at the desired state for all.
                let mut budget = 1024;
                while let Some(c) = next.take() {
                    if let Some(id) = c.deployment_id.as_deref()
                        && desired.deployments.contains_key(id)
                    {
                        q.schedule(Task::Deployment(Arc::from(id)));
                    }
                    prune |= rec.unwanted(&c, &desired);
                    budget -= 1;
                    if budget > 0 {
                        next = io.touched.try_recv().ok();
                    }
                }
                if prune {
                    q.schedule(Task::Prune);
                }
            }
            Some(first) = io.pods_touched.recv() => {
                // A status recompute only: the pods are the cluster's business, not a
                // reason to write.
                let desired = io.desired.borrow().clone();
                let mut next = Some(first);
                let mut budget = 1024;
                while let Some(id) = next.take() {
                    if let Some(obj) = desired.deployments.get(&*id)
                        && let Some(old) = statuses.get(&*id)
                    {
                        let s = old.overlaid(io.pods.of(&obj.namespace, &id));
                        if s != **old {
                            statuses.insert(id.clone(), Arc::new(s));
                            publish_at.get_or_insert_with(|| Instant::now() + STATUS_DELAY);
                        }
                    }
                    budget -= 1;
                    if budget > 0 {
                        next = io.pods_touched.try_recv().ok();
                    }
                }
            }
            r = io.leader.changed() => {
                if r.is_err() { return }
                let now_leader = *io.leader.borrow_and_update();
                if now_leader && !leader {
                    pass_wanted = true;
                } else if !now_leader && leader {
                    warn!("not the leader any more: stopping all work");
                    q.clear();
                    pass = None;
                }
                leader = now_leader;
            }
            () = tokio::time::sleep_until(next_resync), if pass.is_none() && leader => {
                pass_wanted = true;
                next_resync = Instant::now() + cfg.resync;
            }
            () = sleep_until_opt(delayed), if delayed.is_some() => q.release_delayed(),
            () = sleep_until_opt(publish_at), if publish_at.is_some() => {}
            () = cancel.cancelled() => return,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(id: &str) -> Task {
        Task::Deployment(Arc::from(id))
    }

    #[test]
    fn a_task_runs_once_at_a_time_and_again_if_scheduled_meanwhile() {
        let mut q = Queue::default();
        q.schedule(dep("a"));
        q.schedule(dep("a"));
        assert_eq!(q.start(), Some(dep("a")));
        assert_eq!(q.start(), None, "queued once");
        q.schedule(dep("a"));
        assert_eq!(q.start(), None, "not while running");
        q.finished(&dep("a"));
        assert_eq!(q.start(), Some(dep("a")), "once more afterwards");
        q.finished(&dep("a"));
        assert!(q.idle());
    }

    #[tokio::test]
    async fn failures_back_off_per_task() {
        let mut q = Queue::default();
        q.schedule(dep("bad"));
        let t = q.start().unwrap();
        q.finished(&t);
        q.failed(t, true, Duration::from_secs(30));
        q.schedule(dep("good"));
        assert_eq!(q.start(), Some(dep("good")), "the others go on");
        assert!(q.next_delayed().is_some());
        q.release_delayed();
        assert_eq!(q.start(), None, "not before its backoff");
        tokio::time::sleep(RETRY_MIN).await;
        q.release_delayed();
        assert_eq!(q.start(), Some(dep("bad")), "retried after its backoff");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(10));
        for n in 1..40 {
            let d = backoff(min, max, n);
            let full = min.saturating_mul(1 << (n - 1).min(16)).min(max);
            assert!(d >= full / 2 && d <= full, "retry {n}: {d:?}");
        }
    }

    #[test]
    fn dropping_the_autoscaler_or_the_budget_calls_for_a_prune() {
        let held = |o| Held::new(o, &Arc::from("owner-1"));
        let base = crate::desired::test_object(ds_core::DeploymentSpec::test("iris").replicas(3));
        let mut scaled = base.clone();
        scaled.spec.min_replicas = 1;
        scaled.spec.max_replicas = 4;
        let (base, scaled) = (held(base), held(scaled));
        assert!(moved(&scaled, &base), "autoscaler no longer wanted");
        assert!(moved(&base, &scaled), "min 1: the budget goes");
        let one = held(crate::desired::test_object(ds_core::DeploymentSpec::test(
            "iris",
        )));
        assert!(moved(&base, &one), "one replica: the budget goes");
        assert!(!moved(&one, &base), "only new objects: nothing to prune");
        assert!(!moved(&base, &base.clone()));
    }
}
