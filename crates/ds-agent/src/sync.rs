//! Following the gateway: Watch, periodic and on-gap List, and status reports.
//!
//! Three tasks, each started once and living as long as the agent (reconnects happen
//! inside them, so loops are never duplicated):
//! - [`watch_loop`]: opens the Watch stream, applies its snapshot and ordered events to the
//!   [`DesiredState`], reconnects with jittered exponential backoff;
//! - [`list_loop`]: calls List every resync period and whenever a revision gap is seen;
//! - [`status_loop`]: sends deployment statuses when they change, plus a periodic heartbeat.
//!
//! All three share one lazily connected tonic channel.

use super::AgentError;
use super::cache::Stores;
use super::desired::Kind;
use super::held::Held;
use super::metrics::Metrics;
use super::pages::{Assembled, Known, PageOutcome, SnapshotPages};
use super::pods::{KeptStatus, Pods};
use backon::{BackoffBuilder, ExponentialBuilder};
use ds_core::DeployedObject;
use ds_core::proto;
use ds_core::proto::agent_service_client::AgentServiceClient;
use ds_transport::{Bearer, ChannelOptions, Plaintext};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

/// Longest wait between two reconnect attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Shortest wait before a reconnect.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// A stream that stayed up this long resets the backoff to its minimum.
const HEALTHY_PERIOD: Duration = Duration::from_secs(30);
/// How long the agent waits between tries once the gateway refuses its token twice in a
/// row (revoked, rotated out, or its deployer deleted): asking faster changes nothing.
/// A token file rewritten meanwhile (a rotated Secret) is used at the next try.
pub const REFUSED_BACKOFF: Duration = Duration::from_secs(300);
/// Refusals in a row before [`REFUSED_BACKOFF`]: one quick retry first, for a token file
/// rewritten just now.
const REFUSALS_BEFORE_BACKOFF: u32 = 2;

// === Desired state ===

/// What the gateway wants in this cluster, as far as the agent knows.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    /// This agent's deployer, learned from the first snapshot.
    pub deployer_id: Option<String>,
    /// The latest revision applied.
    pub revision: u64,
    /// True when the map is known complete: a complete snapshot was applied and no gap seen
    /// since. Only then may owned objects absent from it be pruned.
    pub complete: bool,
    /// Desired deployments by ID. Shared, so that a reconcile pass holding the state does
    /// not copy the map; an update while a pass holds it copies it once (`Arc::make_mut`).
    pub deployments: Arc<HashMap<Arc<str>, Arc<Held>>>,
}

/// Where the desired state lives: the sync tasks write, the reconciler reads.
pub type DesiredTx = watch::Sender<DesiredState>;

/// Converts a gateway deployment into the domain type the builders take (`ds_core`'s one
/// conversion, moving its strings); a deployment without its deployer ID belongs to ours.
pub fn from_proto(d: proto::Deployment, deployer_id: &str) -> DeployedObject {
    let mut obj = DeployedObject::from(d);
    if obj.deployer_id.is_empty() {
        obj.deployer_id = deployer_id.to_string();
    }
    obj
}

/// Applies a snapshot. `from_watch` snapshots (sent on connect) are always authoritative;
/// a List answer older than what the stream already delivered is ignored.
///
/// Each deployment is compared with the one already known, and the known `Arc` kept when
/// equal, so a snapshot of thousands of unchanged deployments never exists twice in
/// memory once applied.
///
/// Returns whether the state changed.
pub fn apply_snapshot(
    state: &mut DesiredState,
    snap: impl Into<Assembled>,
    from_watch: bool,
) -> bool {
    let snap: Assembled = snap.into();
    if !from_watch && snap.revision < state.revision {
        debug!(
            revision = snap.revision,
            ours = state.revision,
            "stale list answer ignored"
        );
        return false;
    }
    if let Some(ours) = &state.deployer_id
        && !snap.deployer_id.is_empty()
        && ours != &snap.deployer_id
    {
        // A token of another deployer: following it would prune this deployer's objects.
        warn!(
            ours = %ours,
            theirs = %snap.deployer_id,
            "snapshot of another deployer ignored"
        );
        return false;
    }
    if state.deployer_id.is_none() && !snap.deployer_id.is_empty() {
        state.deployer_id = Some(snap.deployer_id.clone());
    }
    let deployer_id = state.deployer_id.clone().unwrap_or_default();
    // A gateway that names no deployer in its snapshot: the one this agent knows.
    let owned = |mut obj: Arc<Held>| {
        if obj.deployer_id.is_empty() {
            Arc::make_mut(&mut obj).set_deployer_if_unset(&deployer_id);
        }
        obj
    };
    let before = (state.revision, state.complete);
    if snap.complete {
        let mut old = Arc::unwrap_or_clone(std::mem::take(&mut state.deployments));
        let known = old.len();
        let mut same = true;
        let mut fresh = HashMap::with_capacity(snap.deployments.len());
        for new in snap.deployments {
            let new = owned(new);
            let (id, obj) = match old.remove_entry(&new.id) {
                Some((id, o)) if *o == *new => (id, o),
                Some((id, _)) => {
                    same = false;
                    (id, new)
                }
                None => {
                    same = false;
                    (new.id.clone(), new)
                }
            };
            fresh.insert(id, obj);
        }
        // Whatever is left was known and is no longer desired.
        same &= old.is_empty() && fresh.len() == known;
        state.deployments = Arc::new(fresh);
        state.complete = true;
        state.revision = snap.revision;
        !same || before.0 != state.revision || !before.1
    } else {
        // An incomplete list adds what it carries but proves nothing about absences.
        let map = Arc::make_mut(&mut state.deployments);
        for obj in snap.deployments {
            let obj = owned(obj);
            map.insert(obj.id.clone(), obj);
        }
        state.revision = state.revision.max(snap.revision);
        true
    }
}

/// What applying one stream event asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Applied in order.
    Applied,
    /// Nothing new (a duplicate or an older event).
    Ignored,
    /// Applied, but a revision was skipped: the map is no longer known complete; List now.
    Gap,
}

/// Applies an upsert or a removal carrying `revision`.
fn apply_ordered(
    state: &mut DesiredState,
    revision: u64,
    change: impl FnOnce(&mut DesiredState),
) -> EventOutcome {
    if revision <= state.revision {
        return EventOutcome::Ignored;
    }
    let gap = revision > state.revision + 1;
    change(state);
    state.revision = revision;
    if gap {
        // Something in between was missed; until a List fills it in, a deployment absent
        // from the map may simply be unknown, so pruning must wait.
        state.complete = false;
        EventOutcome::Gap
    } else {
        EventOutcome::Applied
    }
}

/// What the Watch stream delivered: a snapshot assembled from its pages, or one event.
enum Received {
    Snapshot(Assembled),
    Event(Box<proto::watch_event::Event>),
}

/// Applies a snapshot from the Watch stream (always authoritative).
fn snapshot_outcome(state: &mut DesiredState, snap: Assembled) -> EventOutcome {
    if apply_snapshot(state, snap, true) {
        EventOutcome::Applied
    } else {
        EventOutcome::Ignored
    }
}

/// Applies one Watch event; snapshots are handled by [`apply_snapshot`].
pub fn apply_event(state: &mut DesiredState, event: proto::watch_event::Event) -> EventOutcome {
    use proto::watch_event::Event;
    match event {
        Event::Snapshot(s) => snapshot_outcome(state, s.into()),
        Event::Upsert(u) => {
            let Some(d) = u.deployment else {
                return EventOutcome::Ignored;
            };
            let deployer_id: Arc<str> = state.deployer_id.as_deref().unwrap_or_default().into();
            let obj = Arc::new(Held::new(from_proto(d, &deployer_id), &deployer_id));
            apply_ordered(state, u.revision, |s| {
                Arc::make_mut(&mut s.deployments).insert(obj.id.clone(), obj);
            })
        }
        Event::Removal(r) => apply_ordered(state, r.revision, |s| {
            Arc::make_mut(&mut s.deployments).remove(r.deployment_id.as_str());
        }),
        Event::Heartbeat(h) => {
            if h.revision > state.revision {
                EventOutcome::Gap
            } else {
                EventOutcome::Ignored
            }
        }
    }
}

// === Channel ===

/// The client type every sync task uses.
pub type Client =
    AgentServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// Builds the lazily connecting channel to the gateway (HTTP/2 keep-alive for the change
/// stream).
///
/// # Errors
/// A bad URL, plain `http://` without `insecure`, or an unreadable CA bundle.
pub fn channel(
    url: &str,
    insecure: bool,
    ca_cert: Option<&PathBuf>,
) -> Result<Channel, AgentError> {
    let options = ChannelOptions {
        ca_cert: ca_cert.map(PathBuf::as_path),
        plaintext: if insecure {
            Plaintext::Allow
        } else {
            Plaintext::Refuse { hint: "--insecure" }
        },
        connect_timeout: Duration::from_secs(10),
        keep_alive: Some(Duration::from_secs(20)),
    };
    Ok(ds_transport::endpoint(url, &options)?.connect_lazy())
}

/// The reconnect backoff: jittered, exponential, capped at [`MAX_BACKOFF`], never giving up.
pub fn backoff() -> impl Iterator<Item = Duration> + Send {
    // backon's jitter adds up to 100% of the delay: grow to half the cap, so the jittered
    // delay stays within it and agents that lost the gateway together do not return together.
    ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .map(|d| d.min(MAX_BACKOFF))
}

// === Shared context ===

/// What the sync tasks share.
#[derive(Clone)]
pub struct SyncContext {
    pub client: Client,
    pub desired: Arc<DesiredTx>,
    /// Ask the list task for a List now (a gap was seen).
    pub list_now: Arc<Notify>,
    /// When the current Watch stream connected; `None` while disconnected.
    pub connected: Arc<watch::Sender<Option<chrono::DateTime<chrono::Utc>>>>,
    pub agent: proto::AgentInfo,
    pub metrics: Arc<Metrics>,
}

impl SyncContext {
    fn agent_info(&self) -> proto::AgentInfo {
        let mut info = self.agent.clone();
        if let Some(since) = *self.connected.borrow() {
            info.connected_since = since.to_rfc3339();
        }
        info
    }

    /// Runs `f` on the desired state; readers wake only when it says something changed.
    fn update<R>(&self, f: impl FnOnce(&mut DesiredState) -> (R, bool)) -> R {
        let mut out = None;
        self.desired.send_if_modified(|s| {
            let (r, changed) = f(s);
            out = Some(r);
            changed
        });
        match out {
            Some(r) => r,
            None => unreachable!("send_if_modified always runs its closure"),
        }
    }

    /// The deployments held now, shared (a pointer, not a copy).
    fn known(&self) -> Known {
        self.desired.borrow().deployments.clone()
    }

    fn record_desired(&self) {
        let n = self.desired.borrow().deployments.len();
        self.metrics.desired.set(n as i64);
    }
}

// === Tasks ===

/// Keeps a Watch stream open and applies what it carries.
pub async fn watch_loop(ctx: SyncContext, cancel: CancellationToken) {
    let mut delays = backoff();
    let mut attempts: u64 = 0;
    // Refusals of the token in a row.
    let mut refusals: u32 = 0;
    while !cancel.is_cancelled() {
        let mut refused = false;
        let opened = Instant::now();
        let mut client = ctx.client.clone();
        let request = proto::WatchRequest {
            agent: Some(ctx.agent_info()),
        };
        let result = tokio::select! {
            r = client.watch(request) => r,
            () = cancel.cancelled() => return,
        };
        match result {
            Ok(response) => {
                let mut stream = response.into_inner();
                // The snapshot's pages; dropped with the stream if it is cut before the last.
                let mut pages = SnapshotPages::reusing(ctx.known());
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        () = cancel.cancelled() => return,
                    };
                    match msg {
                        Ok(Some(proto::WatchEvent { event: Some(event) })) => {
                            let event = match event {
                                proto::watch_event::Event::Snapshot(page) => match pages.push(page)
                                {
                                    PageOutcome::Partial => continue,
                                    PageOutcome::Complete(snap) => Received::Snapshot(snap),
                                    PageOutcome::Inconsistent { expected, got } => {
                                        warn!(
                                            expected,
                                            got,
                                            "watch snapshot pages of different revisions; reconnecting"
                                        );
                                        break;
                                    }
                                },
                                _ if pages.in_progress() => {
                                    warn!("watch event inside a paged snapshot; reconnecting");
                                    break;
                                }
                                other => Received::Event(Box::new(other)),
                            };
                            let is_snapshot = matches!(event, Received::Snapshot(_));
                            let is_heartbeat = matches!(
                                &event,
                                Received::Event(e) if matches!(**e, proto::watch_event::Event::Heartbeat(_))
                            );
                            let outcome = ctx.update(|s| {
                                let o = match event {
                                    Received::Snapshot(snap) => snapshot_outcome(s, snap),
                                    Received::Event(event) => apply_event(s, *event),
                                };
                                let changed = o != EventOutcome::Ignored && !is_heartbeat;
                                (o, changed)
                            });
                            if is_snapshot && ctx.connected.borrow().is_none() {
                                let since = chrono::Utc::now();
                                ctx.connected.send_replace(Some(since));
                                ctx.metrics.gateway_connected.set(1);
                                info!(attempts, "connected to the gateway");
                                attempts = 0;
                                refusals = 0;
                            }
                            if outcome == EventOutcome::Gap {
                                debug!("revision gap: asking for a List");
                                ctx.list_now.notify_one();
                            }
                            ctx.record_desired();
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            info!("gateway closed the watch stream");
                            break;
                        }
                        Err(status) => {
                            refused = status.code() == tonic::Code::Unauthenticated;
                            if !refused || refusals == 0 {
                                warn!(code = ?status.code(), message = %status.message(), "watch stream failed");
                            }
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                refused = status.code() == tonic::Code::Unauthenticated;
                if !refused || refusals == 0 {
                    warn!(code = ?status.code(), message = %status.message(), attempts, "cannot open the watch stream");
                }
            }
        }
        if ctx.connected.send_replace(None).is_some() {
            ctx.metrics.gateway_connected.set(0);
        }
        if opened.elapsed() >= HEALTHY_PERIOD {
            delays = backoff();
        }
        attempts += 1;
        refusals = if refused { refusals + 1 } else { 0 };
        let delay = if refusals >= REFUSALS_BEFORE_BACKOFF {
            if refusals == REFUSALS_BEFORE_BACKOFF {
                error!(
                    retry_every = ?REFUSED_BACKOFF,
                    "the gateway refuses this agent's token: it was revoked or rotated out, or its deployer was deleted; the cluster's workloads are left as they are; give the agent a valid token (`ds deployer rotate-token`, or reinstall with `ds deployer install`)"
                );
            }
            REFUSED_BACKOFF
        } else {
            delays.next().unwrap_or(MAX_BACKOFF)
        };
        debug!(?delay, "reconnecting after");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Calls List every `resync` and whenever asked (a gap).
pub async fn list_loop(ctx: SyncContext, resync: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refusals: u32 = 0;
    let mut paused_until: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = ctx.list_now.notified() => {}
            () = cancel.cancelled() => return,
        }
        // A refused token is refused again: wait as the watch does (it logs why).
        if paused_until.is_some_and(|t| tokio::time::Instant::now() < t) {
            continue;
        }
        let mut client = ctx.client.clone();
        let answer = tokio::select! {
            r = list_snapshot(&mut client, ctx.known()) => r,
            () = cancel.cancelled() => return,
        };
        match answer {
            Ok(snap) => {
                refusals = 0;
                ctx.update(|s| ((), apply_snapshot(s, snap, false)));
                ctx.record_desired();
            }
            Err(status) => {
                // The periodic tick retries; workloads are untouched meanwhile.
                debug!(code = ?status.code(), message = %status.message(), "list failed");
                refusals = if status.code() == tonic::Code::Unauthenticated {
                    refusals + 1
                } else {
                    0
                };
                if refusals >= REFUSALS_BEFORE_BACKOFF {
                    paused_until = Some(tokio::time::Instant::now() + REFUSED_BACKOFF);
                }
            }
        }
    }
}

/// Calls List and reads its pages up to the last: a complete snapshot, or the failure (a
/// stream that ends early or mixes revisions is one; nothing partial is returned).
async fn list_snapshot(client: &mut Client, known: Known) -> Result<Assembled, tonic::Status> {
    let mut stream = client.list(proto::ListRequest {}).await?.into_inner();
    let mut pages = SnapshotPages::reusing(known);
    while let Some(page) = stream.message().await? {
        match pages.push(page) {
            PageOutcome::Partial => {}
            PageOutcome::Complete(snap) => return Ok(snap),
            PageOutcome::Inconsistent { expected, got } => {
                return Err(tonic::Status::data_loss(format!(
                    "list pages of revisions {expected} and {got} in one answer"
                )));
            }
        }
    }
    Err(tonic::Status::unavailable(
        "list stream ended before its last page",
    ))
}

/// Current statuses as the reconciler computes them, by deployment ID, and the pods to
/// report with them. Keys and values are shared with the scheduler's own map, so
/// publishing it copies one table of pointers, not every status.
#[derive(Default)]
pub struct StatusTable {
    /// The statuses, without their pods.
    pub by_id: HashMap<Arc<str>, Arc<KeptStatus>>,
    /// The pod watch the pods of a report are read from.
    pub pods: Pods,
}

/// The statuses as published by the scheduler.
pub type Statuses = Arc<StatusTable>;

/// Most statuses in one report: a first report after a restart covers every deployment,
/// and chunks keep its encoding (and the copies it needs) small.
const REPORT_CHUNK: usize = 500;

/// This deployer's objects in the caches of `stores`, counted at the revision of
/// `desired`; `None` until both are complete (the caches synced, a complete snapshot
/// applied). The revision is read before the count: a count of 0 then says nothing was
/// left after that state was known.
pub fn owned_objects(
    desired: &DesiredState,
    stores: Option<&Stores>,
) -> Option<proto::ClusterObjects> {
    let stores = stores?;
    if !desired.complete {
        return None;
    }
    let revision = desired.revision;
    let owned: usize = Kind::ALL.iter().map(|k| stores.of(*k).len()).sum();
    Some(proto::ClusterObjects {
        revision,
        owned: u32::try_from(owned).unwrap_or(u32::MAX),
    })
}

/// Sends statuses that changed, a full report after each (re)connect and every `resync`,
/// and a heartbeat; each report carries the count of owned objects (see
/// [`owned_objects`]).
///
/// The full report every `resync` is what makes the gateway match the cluster whatever
/// happened in between: a status the gateway lost or holds stale (a report it stored
/// from another replica, a restored database) is replaced within one period, although
/// this agent believes it sent the current one.
pub async fn status_loop(
    ctx: SyncContext,
    mut statuses: watch::Receiver<Statuses>,
    stores: watch::Receiver<Option<Stores>>,
    mut leader: watch::Receiver<bool>,
    heartbeat: Duration,
    resync: Duration,
    cancel: CancellationToken,
) {
    // Fingerprints of the statuses the gateway has, by deployment ID.
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut buf = Vec::new();
    let mut connected = ctx.connected.subscribe();
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At most once a second: a full report of thousands of statuses is not free.
    let mut full = tokio::time::interval(resync.max(Duration::from_secs(1)));
    full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    full.reset();
    loop {
        let mut beat = false;
        tokio::select! {
            _ = tick.tick() => beat = true,
            _ = full.tick() => {
                sent.clear();
                beat = true;
            }
            r = statuses.changed() => if r.is_err() { return },
            r = connected.changed() => {
                if r.is_err() { return }
                // A new stream: the gateway may have restarted; tell it everything again.
                sent.clear();
                beat = true;
            }
            r = leader.changed() => if r.is_err() { return },
            () = cancel.cancelled() => return,
        }
        if !*leader.borrow() || connected.borrow().is_none() {
            continue;
        }
        let current = statuses.borrow_and_update().clone();
        let mut changed: Vec<(&KeptStatus, u64)> = current
            .by_id
            .values()
            .filter_map(|s| {
                let f = s.fingerprint(&mut buf);
                (sent.get(s.deployment_id()) != Some(&f)).then_some((&**s, f))
            })
            .collect();
        if changed.is_empty() && !beat {
            continue;
        }
        let mut gateway_ahead = false;
        let objects = owned_objects(&ctx.desired.borrow(), stores.borrow().as_ref());
        loop {
            let chunk: Vec<_> = changed.drain(..changed.len().min(REPORT_CHUNK)).collect();
            let reported = {
                let desired = ctx.desired.borrow();
                chunk
                    .iter()
                    .map(|(s, _)| {
                        let id = s.deployment_id();
                        let pods = desired
                            .deployments
                            .get(id)
                            .map(|o| current.pods.of(&o.namespace, id))
                            .unwrap_or_default();
                        s.report(pods)
                    })
                    .collect()
            };
            let report = proto::StatusReport {
                agent: Some(ctx.agent_info()),
                statuses: reported,
                objects,
            };
            let mut client = ctx.client.clone();
            let result = tokio::select! {
                r = client.report_status(report) => r,
                () = cancel.cancelled() => return,
            };
            match result {
                Ok(ack) => {
                    for (s, f) in chunk {
                        sent.insert(s.deployment_id().to_owned(), f);
                    }
                    gateway_ahead |= ack.into_inner().revision > ctx.desired.borrow().revision;
                }
                Err(status) => {
                    // Unsent statuses stay different from `sent`, so the next wake-up retries.
                    debug!(code = ?status.code(), message = %status.message(), "status report failed");
                    break;
                }
            }
            if changed.is_empty() {
                break;
            }
        }
        sent.retain(|id, _| current.by_id.contains_key(id.as_str()));
        if gateway_ahead {
            ctx.list_now.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::watch_event::Event;

    fn dep(id: &str, rev: u64) -> proto::Deployment {
        proto::Deployment {
            id: id.into(),
            name: id.into(),
            namespace: "default".into(),
            spec: Some(proto::DeploymentSpec {
                image: "img:1".into(),
                replicas: 1,
                port: 8501,
                ..Default::default()
            }),
            revision_of_last_change: rev,
            deployer_id: "d1".into(),
            ..Default::default()
        }
    }

    fn snap(rev: u64, deps: Vec<proto::Deployment>, complete: bool) -> proto::Snapshot {
        proto::Snapshot {
            deployer_id: "d1".into(),
            revision: rev,
            deployments: deps,
            complete,
        }
    }

    #[test]
    fn snapshot_then_ordered_events() {
        let mut s = DesiredState::default();
        assert!(!s.complete);
        apply_snapshot(&mut s, snap(3, vec![dep("a", 2), dep("b", 3)], true), true);
        assert!(s.complete);
        assert_eq!(s.deployer_id.as_deref(), Some("d1"));
        assert_eq!(s.deployments.len(), 2);
        let up = Event::Upsert(proto::Upsert {
            revision: 4,
            deployment: Some(dep("c", 4)),
        });
        assert_eq!(apply_event(&mut s, up.clone()), EventOutcome::Applied);
        assert_eq!(
            apply_event(&mut s, up.clone()),
            EventOutcome::Ignored,
            "duplicate"
        );
        let rm = Event::Removal(proto::Removal {
            revision: 5,
            deployment_id: "a".into(),
            ..Default::default()
        });
        assert_eq!(apply_event(&mut s, rm), EventOutcome::Applied);
        assert!(!s.deployments.contains_key("a"));
        assert!(s.complete);
        assert_eq!(s.revision, 5);
    }

    #[test]
    fn gap_marks_incomplete_until_a_list() {
        let mut s = DesiredState::default();
        apply_snapshot(&mut s, snap(3, vec![dep("a", 3)], true), true);
        let up = Event::Upsert(proto::Upsert {
            revision: 6,
            deployment: Some(dep("b", 6)),
        });
        assert_eq!(apply_event(&mut s, up.clone()), EventOutcome::Gap);
        assert!(!s.complete, "no prune while something may be missing");
        let hb = Event::Heartbeat(proto::Heartbeat { revision: 9 });
        assert_eq!(apply_event(&mut s, hb), EventOutcome::Gap);
        // An older List answer is ignored; a current one restores completeness.
        assert!(!apply_snapshot(&mut s, snap(5, vec![], true), false));
        assert!(!s.complete);
        apply_snapshot(&mut s, snap(9, vec![dep("b", 6)], true), false);
        assert!(s.complete);
        assert_eq!(s.deployments.len(), 1);
    }

    #[test]
    fn incomplete_snapshot_never_removes() {
        let mut s = DesiredState::default();
        apply_snapshot(&mut s, snap(1, vec![], false), true);
        assert!(!s.complete, "an empty list counts only when complete");
        apply_snapshot(&mut s, snap(2, vec![dep("a", 2)], true), true);
        apply_snapshot(&mut s, snap(3, vec![], false), true);
        assert!(s.deployments.contains_key("a"));
    }

    #[test]
    fn unchanged_snapshot_keeps_the_known_deployments() {
        let mut s = DesiredState::default();
        apply_snapshot(&mut s, snap(3, vec![dep("a", 2), dep("b", 3)], true), true);
        let a = s.deployments["a"].clone();
        let b = s.deployments["b"].clone();
        assert!(!apply_snapshot(
            &mut s,
            snap(3, vec![dep("a", 2), dep("b", 3)], true),
            false
        ));
        assert!(Arc::ptr_eq(&a, &s.deployments["a"]), "not rebuilt");
        let mut b2 = dep("b", 4);
        b2.spec.as_mut().unwrap().image = "img:2".into();
        assert!(apply_snapshot(
            &mut s,
            snap(4, vec![dep("a", 2), b2], true),
            false
        ));
        assert!(Arc::ptr_eq(&a, &s.deployments["a"]));
        assert_eq!(s.deployments["b"].spec().image, "img:2");
        assert!(!Arc::ptr_eq(&b, &s.deployments["b"]));
        // Same revision, one fewer deployment: a change.
        assert!(apply_snapshot(
            &mut s,
            snap(4, vec![dep("a", 2)], true),
            false
        ));
        assert!(!s.deployments.contains_key("b"));
    }

    #[test]
    fn snapshot_of_another_deployer_is_refused() {
        let mut s = DesiredState::default();
        apply_snapshot(&mut s, snap(1, vec![dep("a", 1)], true), true);
        let mut other = snap(2, vec![], true);
        other.deployer_id = "d2".into();
        assert!(!apply_snapshot(&mut s, other, true));
        assert!(s.deployments.contains_key("a"));
    }

    #[test]
    fn proto_conversion_maps_empty_strings_to_none() {
        let mut d = dep("a", 1);
        let spec = d.spec.as_mut().unwrap();
        spec.host = "iris.example.com".into();
        spec.resources = Some(proto::Resources {
            cpu_request: "500m".into(),
            ..Default::default()
        });
        let o = from_proto(d, "d1");
        assert_eq!(o.spec.host.as_deref(), Some("iris.example.com"));
        assert_eq!(o.spec.ingress_class, None);
        assert_eq!(o.spec.resources.cpu_request.as_deref(), Some("500m"));
        assert_eq!(o.spec.resources.cpu_limit, None);
        assert_eq!(o.revision, 1);
        assert_eq!(o.deployer_id, "d1");
    }

    #[test]
    fn proto_conversion_keeps_the_proxy_settings() {
        let mut d = dep("a", 1);
        d.spec.as_mut().unwrap().proxy = Some(proto::ProxySpec {
            enabled: true,
            class_names: vec!["setosa".into()],
            query_log: true,
            protocol: "v2".into(),
        });
        let o = from_proto(d, "d1");
        assert!(o.spec.proxy.enabled);
        assert_eq!(o.spec.proxy.class_names, vec!["setosa".to_string()]);
        assert!(o.spec.proxy.query_log, "query logs reach the builders");
        assert_eq!(o.spec.proxy.protocol.as_deref(), Some("v2"));
        // No settings at all: the defaults, as the gateway and the CLI read them.
        let mut d = dep("b", 2);
        d.spec.as_mut().unwrap().proxy = None;
        assert_eq!(
            from_proto(d, "d1").spec.proxy,
            ds_core::ProxySpec::default()
        );
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let delays: Vec<Duration> = backoff().take(40).collect();
        assert!(delays[0] >= MIN_BACKOFF && delays[0] <= MIN_BACKOFF * 2);
        assert!(delays.iter().all(|d| *d <= MAX_BACKOFF));
        assert!(delays[39] >= MAX_BACKOFF / 2, "reaches the cap region");
        let distinct: std::collections::HashSet<_> = delays[30..].iter().collect();
        assert!(distinct.len() > 1, "jittered, not a fixed period");
    }
}
