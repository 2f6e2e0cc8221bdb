//! Leader election over a `coordination.k8s.io/v1` Lease: only the holder writes.
//!
//! The holder renews every third of the lease duration with an optimistic-concurrency
//! replace (the resource version is the lock); a standby takes over once it has seen the
//! same lease record unchanged for a whole lease duration (measured on its own clock, so
//! clock skew between nodes does not matter). A holder that cannot renew within two thirds
//! of the duration stops writing before anyone else may start. On graceful shutdown the
//! holder releases the lease so a standby takes over at once.
//!
//! # Fencing
//! Every write of the agent goes through the [`Fence`]: it takes a permit right before the
//! call, and the permit is refused once the lease is lost or its renewal deadline has
//! passed. Losing the lease closes the fence and waits for the writes already under way
//! before leadership is published as lost, so no write starts after the loss is observed,
//! however long the current work takes.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::Metrics;

/// The gate every write passes: open while this replica holds a lease renewed recently
/// enough that nobody else can have taken it over.
#[derive(Debug)]
pub struct Fence {
    open: AtomicBool,
    /// Until when the last renewal holds, in nanoseconds after `epoch`; `u64::MAX` without
    /// leader election.
    until_ns: AtomicU64,
    epoch: Instant,
    /// Writes hold it shared; closing takes it exclusively, so it waits for them.
    gate: tokio::sync::RwLock<()>,
}

/// Leave to write once; held for the duration of the write call.
#[derive(Debug)]
pub struct WritePermit<'a> {
    _shared: tokio::sync::RwLockReadGuard<'a, ()>,
}

impl Fence {
    /// A fence that stays open (no leader election: this replica is the only writer).
    pub fn open() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicBool::new(true),
            until_ns: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    /// A fence that stays closed until the lease is acquired.
    pub fn closed() -> Arc<Self> {
        let f = Self::open();
        f.open.store(false, Ordering::SeqCst);
        f.until_ns.store(0, Ordering::SeqCst);
        f
    }

    /// A permit for one write, or `None` if this replica may not write now.
    pub async fn permit(&self) -> Option<WritePermit<'_>> {
        let shared = self.gate.read().await;
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        (self.open.load(Ordering::SeqCst) && now < self.until_ns.load(Ordering::SeqCst))
            .then_some(WritePermit { _shared: shared })
    }

    /// Opens the fence until `until` (a renewal sent at `until - renew deadline` succeeded).
    fn open_until(&self, until: Instant) {
        let ns = u64::try_from(until.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX);
        self.until_ns.store(ns, Ordering::SeqCst);
        self.open.store(true, Ordering::SeqCst);
    }

    /// Closes the fence and waits until no write is under way.
    async fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        drop(self.gate.write().await);
    }
}

/// Where and how long the lease is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name or host name plus a random suffix).
    pub identity: String,
    pub duration: Duration,
}

/// What we last observed of someone else's lease.
#[derive(Debug, PartialEq)]
struct Observed {
    holder: String,
    renew: Option<String>,
    transitions: i32,
}

fn observe(l: &Lease) -> Observed {
    let spec = l.spec.clone().unwrap_or_default();
    Observed {
        holder: spec.holder_identity.unwrap_or_default(),
        renew: spec.renew_time.map(|t| t.0.to_string()),
        transitions: spec.lease_transitions.unwrap_or(0),
    }
}

fn spec_for(cfg: &LeaseConfig, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(cfg.duration.as_secs().max(1)).unwrap_or(i32::MAX),
        ),
        acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Tries once to acquire or renew; returns whether we hold the lease now.
async fn try_acquire(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    seen: &mut Option<(Observed, Instant)>,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(spec_for(cfg, None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let now_seen = observe(&lease);
    let spec = lease.spec.clone().unwrap_or_default();
    let mine = now_seen.holder == cfg.identity;
    let free = now_seen.holder.is_empty();
    if !mine && !free {
        // Someone else's: take over only after a whole duration without a renewal.
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .unwrap_or(cfg.duration);
        match seen {
            Some((o, since)) if *o == now_seen => {
                if since.elapsed() < duration {
                    return Ok(false);
                }
                info!(previous = %now_seen.holder, "lease expired: taking over");
            }
            _ => {
                *seen = Some((now_seen, Instant::now()));
                return Ok(false);
            }
        }
    }
    let transitions = if mine {
        now_seen.transitions
    } else {
        now_seen.transitions + 1
    };
    let acquire = if mine { spec.acquire_time } else { None };
    lease.spec = Some(spec_for(cfg, acquire, transitions));
    // `replace` carries the resource version we read: a concurrent writer makes it 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => {
            *seen = None;
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Campaigns for and holds the lease until `cancel`, publishing leadership on `leader` and
/// opening `fence` while it holds.
///
/// # Guarantees
/// `leader` turns false only after `fence` is closed and the writes that held permits are
/// done; the fence also closes by itself once a renewal is older than the renew deadline.
pub async fn run(
    client: kube::Client,
    cfg: LeaseConfig,
    leader: watch::Sender<bool>,
    fence: Arc<Fence>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let renew_every = cfg.duration / 3;
    let renew_deadline = cfg.duration * 2 / 3;
    let mut seen = None;
    let mut last_renew: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        // A hung request must not keep a stale leader writing: bound each attempt.
        let attempt = tokio::time::timeout(renew_every, try_acquire(&api, &cfg, &mut seen));
        let result = match attempt.await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service("lease request timed out".into())),
        };
        match result {
            Ok(true) => {
                if !*leader.borrow() {
                    info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                }
                last_renew = Some(sent);
                fence.open_until(sent + renew_deadline);
                leader.send_replace(true);
                metrics.leader.set(1);
            }
            Ok(false) => {
                if *leader.borrow() {
                    warn!(lease = %cfg.name, "lost the lease");
                }
                last_renew = None;
                fence.close().await;
                leader.send_replace(false);
                metrics.leader.set(0);
            }
            Err(error) => {
                debug!(%error, "lease request failed");
                // Keep writing only while a renewal is recent enough that nobody else can
                // have taken over.
                if last_renew.is_some_and(|t| t.elapsed() >= renew_deadline) {
                    warn!(lease = %cfg.name, %error, "cannot renew the lease: stepping down");
                    last_renew = None;
                    fence.close().await;
                    leader.send_replace(false);
                    metrics.leader.set(0);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(renew_every) => {}
            () = cancel.cancelled() => break,
        }
    }
    if *leader.borrow() {
        fence.close().await;
        leader.send_replace(false);
        metrics.leader.set(0);
        release(&api, &cfg).await;
    }
}

/// Gives the lease up so a standby need not wait for it to expire.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => info!(lease = %cfg.name, "lease released"),
        Err(error) => debug!(%error, "releasing the lease failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fence_refuses_writes_once_closed_or_expired() {
        let always = Fence::open();
        assert!(always.permit().await.is_some());
        let f = Fence::closed();
        assert!(f.permit().await.is_none(), "closed until acquired");
        f.open_until(Instant::now() + Duration::from_secs(60));
        assert!(f.permit().await.is_some());
        f.open_until(Instant::now());
        assert!(f.permit().await.is_none(), "a renewal past its deadline");
    }

    #[tokio::test]
    async fn closing_waits_for_the_writes_under_way() {
        let f = Fence::closed();
        f.open_until(Instant::now() + Duration::from_secs(60));
        let permit = f.permit().await.expect("open");
        let closing = f.close();
        tokio::pin!(closing);
        // Not closed while a write holds its permit.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut closing)
                .await
                .is_err()
        );
        drop(permit);
        closing.await;
        assert!(f.permit().await.is_none());
    }
}
