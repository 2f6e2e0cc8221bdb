//! The agent service: Watch (snapshot pages, then ordered changes and heartbeats), List
//! (snapshot pages), ReportStatus and Inspect, each authenticated by a deployer token that
//! only sees its deployer.

use super::Shared;
use super::credentials;
use super::paging::{self, SendError};
use super::rpc::{bearer, store_status};
use super::store::{
    AgentHeartbeat, Change, DeploymentRecord, ObjectCount, StatusRecord, StoreError,
};
use chrono::{DateTime, Utc};
use ds_core::proto::agent_service_server::AgentService;
use ds_core::proto::{
    AgentInfo, ClusterObjects, Heartbeat, InspectReply, InspectRequest, ListRequest, Removal,
    Snapshot, StatusAck, StatusReport, Upsert, WatchEvent, WatchRequest, watch_event,
};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Events buffered per Watch stream before the producer waits for the client.
const WATCH_BUFFER: usize = 64;
/// Snapshot pages (each up to [`paging::PAGE_BYTES`]) buffered per stream: few, so that
/// a slow client holds the gateway to a few MiB, not to its whole snapshot.
const PAGE_BUFFER: usize = 2;

/// How often an open Watch stream re-checks its token, however busy it is: a token rotated
/// out, revoked or of a deleted deployer ends its stream within this period (one indexed
/// read per stream and period).
pub const TOKEN_RECHECK: Duration = Duration::from_secs(2);

/// The stream type of Watch: the snapshot's pages, then the changes.
pub type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;
/// The stream type of List.
pub type ListStream = ReceiverStream<Result<Snapshot, Status>>;

/// The stream type of Inspect (the gateway's questions).
pub type InspectStream = ReceiverStream<Result<InspectRequest, Status>>;

// === impl Presence ===

/// Which deployers have open Watch streams, and when a stream last opened or closed:
/// a connected agent counts as online without writing to the database.
#[derive(Debug, Default)]
pub struct Presence(Mutex<HashMap<String, PresenceEntry>>);

#[derive(Debug, Clone, Copy)]
struct PresenceEntry {
    streams: usize,
    last_seen: DateTime<Utc>,
}

impl Presence {
    fn enter(&self, deployer_id: &str) {
        let mut map = self.0.lock();
        let entry = map.entry(deployer_id.to_string()).or_insert(PresenceEntry {
            streams: 0,
            last_seen: Utc::now(),
        });
        entry.streams += 1;
        entry.last_seen = Utc::now();
    }

    fn leave(&self, deployer_id: &str) {
        let mut map = self.0.lock();
        if let Some(entry) = map.get_mut(deployer_id) {
            entry.streams = entry.streams.saturating_sub(1);
            entry.last_seen = Utc::now();
        }
    }

    /// `(connected now, last time a stream opened or closed)`.
    pub fn get(&self, deployer_id: &str) -> (bool, Option<DateTime<Utc>>) {
        let map = self.0.lock();
        map.get(deployer_id)
            .map_or((false, None), |e| (e.streams > 0, Some(e.last_seen)))
    }
}

/// Ends a stream's presence and gauge when its producer task ends, however it ends.
struct StreamGuard {
    shared: Arc<Shared>,
    deployer_id: String,
}

impl StreamGuard {
    fn new(shared: Arc<Shared>, deployer_id: String) -> Self {
        shared.presence.enter(&deployer_id);
        shared.metrics.watch_streams.inc();
        Self {
            shared,
            deployer_id,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared.presence.leave(&self.deployer_id);
        self.shared.metrics.watch_streams.dec();
        tracing::debug!(deployer = %self.deployer_id, "watch stream closed");
    }
}

// === impl AgentSvc ===

/// The AgentService implementation.
pub struct AgentSvc {
    shared: Arc<Shared>,
}

impl AgentSvc {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The deployer (and token) the request's token authenticates.
    async fn authenticate<T>(
        &self,
        req: &Request<T>,
        method: &'static str,
    ) -> Result<credentials::Authenticated, Status> {
        let presented = bearer(req).inspect_err(|_| {
            self.shared.metrics.auth_failures.inc();
        })?;
        match credentials::verify_token(self.shared.store.as_ref(), presented).await {
            Ok(Some(auth)) => Ok(auth),
            Ok(None) => {
                self.shared.metrics.auth_failures.inc();
                tracing::warn!(
                    method,
                    "rejected a deployer token (unknown, revoked or expired)"
                );
                Err(Status::unauthenticated(
                    "invalid, revoked or expired deployer token",
                ))
            }
            Err(e) => Err(store_status(e)),
        }
    }
}

fn heartbeat_of(agent: Option<AgentInfo>, objects: Option<ClusterObjects>) -> AgentHeartbeat {
    let agent = agent.unwrap_or_default();
    AgentHeartbeat {
        version: agent.version,
        cluster: agent.cluster,
        instance: agent.instance,
        namespaces: agent.namespaces,
        objects: objects.map(|o| ObjectCount {
            revision: o.revision,
            owned: o.owned,
        }),
    }
}

fn event(e: watch_event::Event) -> WatchEvent {
    WatchEvent { event: Some(e) }
}

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type WatchStream = WatchStream;
    type ListStream = ListStream;
    type InspectStream = InspectStream;

    async fn inspect(
        &self,
        request: Request<Streaming<InspectReply>>,
    ) -> Result<Response<Self::InspectStream>, Status> {
        let auth = self.authenticate(&request, "Inspect").await?;
        let replies = request.into_inner();
        let (link, rx) = self.shared.inspectors.add(&auth.deployer_id);
        tracing::debug!(deployer = %auth.deployer_id, "inspect stream opened");
        tokio::spawn(route_replies(
            self.shared.clone(),
            auth.token_id,
            link,
            replies,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let auth = self.authenticate(&request, "Watch").await?;
        let deployer_id = auth.deployer_id.clone();
        let agent = heartbeat_of(request.into_inner().agent, None);
        let store = &self.shared.store;
        // Subscribe before reading the snapshot: every later commit is then either in
        // the snapshot or on the channel (those at or below its revision are skipped).
        let changes = store.hub().subscribe(&deployer_id);
        store
            .record_heartbeat(&deployer_id, &agent)
            .await
            .map_err(store_status)?;
        let (pages_tx, pages_rx) = mpsc::channel(PAGE_BUFFER);
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tracing::info!(deployer = %deployer_id, cluster = %agent.cluster, version = %agent.version, "watch stream opened");
        let guard = StreamGuard::new(self.shared.clone(), deployer_id);
        tokio::spawn(async move {
            // The snapshot's pages first, on their own small channel; its end lets the
            // stream go on to the changes, which start above the snapshot's revision.
            let shared = guard.shared.clone();
            let sent = paging::send_snapshot(shared.store.as_ref(), &guard.deployer_id, |page| {
                let pages_tx = &pages_tx;
                let shared = &shared;
                async move {
                    pages_tx
                        .send(Ok(event(watch_event::Event::Snapshot(page))))
                        .await
                        .map_err(|_| ())?;
                    shared.metrics.watch_events.inc();
                    Ok(())
                }
            })
            .await;
            match sent {
                Ok(revision) => {
                    drop(pages_tx);
                    tracing::debug!(deployer = %guard.deployer_id, revision, "watch snapshot sent");
                    produce(guard, auth.token_id, changes, tx, revision).await;
                }
                Err(SendError::Failed(status)) => {
                    let _ = pages_tx.send(Err(status)).await;
                }
                Err(SendError::Closed) => {}
            }
        });
        let stream = ReceiverStream::new(pages_rx).chain(ReceiverStream::new(rx));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListStream>, Status> {
        let deployer_id = self.authenticate(&request, "List").await?.deployer_id;
        let (tx, rx) = mpsc::channel(PAGE_BUFFER);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let sent = paging::send_snapshot(shared.store.as_ref(), &deployer_id, |page| {
                let tx = &tx;
                async move { tx.send(Ok(page)).await.map_err(|_| ()) }
            })
            .await;
            if let Err(SendError::Failed(status)) = sent {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_status(
        &self,
        request: Request<StatusReport>,
    ) -> Result<Response<StatusAck>, Status> {
        let deployer_id = self
            .authenticate(&request, "ReportStatus")
            .await?
            .deployer_id;
        let report = request.into_inner();
        let store = &self.shared.store;
        let revision = store
            .record_heartbeat(&deployer_id, &heartbeat_of(report.agent, report.objects))
            .await
            .map_err(store_status)?;
        let statuses: Vec<StatusRecord> = report.statuses.into_iter().map(Into::into).collect();
        let stored = store
            .put_statuses(&deployer_id, &statuses)
            .await
            .map_err(store_status)?;
        self.shared.metrics.status_reports.inc();
        if stored.len() < statuses.len() {
            // Not stored: deleted (a delete races with a report, which is no error) or
            // another deployer's, which this token must not write: refuse the report.
            let stored: HashSet<&str> = stored.iter().map(String::as_str).collect();
            let mut ignored = 0;
            for s in statuses
                .iter()
                .filter(|s| !stored.contains(s.deployment_id.as_str()))
            {
                match store.get_deployment(&s.deployment_id).await {
                    Ok(d) if d.deployer_id != deployer_id => {
                        self.shared.metrics.auth_failures.inc();
                        tracing::warn!(deployer = %deployer_id, deployment = %d.id, "refused a status report naming another deployer's deployment");
                        return Err(Status::permission_denied(format!(
                            "deployment {} is not this deployer's: its status was not stored (is the agent using another deployer's token?)",
                            d.id
                        )));
                    }
                    Ok(_) | Err(StoreError::NotFound(_)) => ignored += 1,
                    Err(e) => return Err(store_status(e)),
                }
            }
            tracing::debug!(deployer = %deployer_id, ignored, "ignored statuses of deleted deployments");
        }
        Ok(Response::new(StatusAck { revision }))
    }
}

/// Why a long-lived stream ended when its token stopped being valid.
const TOKEN_GONE: &str = "deployer token expired or revoked";

/// Whether an open stream's token is still valid, as re-checked every [`TOKEN_RECHECK`].
/// A database hiccup counts as valid (logged): it is no reason to drop a healthy agent.
async fn token_still_valid(shared: &Shared, token_id: &str, stream: &'static str) -> bool {
    match credentials::still_valid(shared.store.as_ref(), token_id).await {
        Ok(valid) => valid,
        Err(error) => {
            tracing::warn!(%error, stream, "re-checking a stream's token failed");
            true
        }
    }
}

/// Routes an Inspect stream's replies to the questions they answer until the agent goes,
/// its token is no longer valid (checked every [`TOKEN_RECHECK`], as Watch does), or the
/// gateway stops; then the link is removed and its open questions end.
async fn route_replies(
    shared: Arc<Shared>,
    token_id: String,
    link: Arc<super::inspect::AgentLink>,
    mut replies: Streaming<InspectReply>,
) {
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + TOKEN_RECHECK, TOKEN_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                link.close(Status::unavailable("gateway shutting down")).await;
                break;
            }
            _ = recheck.tick() => {
                if !token_still_valid(&shared, &token_id, "inspect").await {
                    link.close(Status::unauthenticated(TOKEN_GONE)).await;
                    break;
                }
            }
            reply = replies.message() => match reply {
                Ok(Some(reply)) => link.deliver(reply).await,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(code = ?status.code(), "inspect stream ended");
                    break;
                }
            },
        }
    }
    shared.inspectors.remove(&link);
}

/// Feeds one Watch stream: changes above `revision` in order, heartbeats when idle. Ends
/// when the client goes, the deployer is deleted, its token is no longer valid (checked
/// every [`TOKEN_RECHECK`] on a timer that events do not reset), the stream lags, or the
/// gateway stops.
async fn produce(
    guard: StreamGuard,
    token_id: String,
    mut changes: broadcast::Receiver<Change>,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
    mut last: u64,
) {
    let shared = guard.shared.clone();
    let period = shared.heartbeat_interval;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Never reset by events: a stream busy with changes is re-checked all the same.
    let check_every = TOKEN_RECHECK.min(period);
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            _ = shared.shutdown.cancelled() => {
                let _ = tx.try_send(Err(Status::unavailable("gateway shutting down")));
                break;
            }
            _ = tx.closed() => break,
            _ = recheck.tick() => {
                if !token_still_valid(&shared, &token_id, "watch").await {
                    tracing::info!(deployer = %guard.deployer_id, "ending a watch stream: its token was rotated out or revoked");
                    let _ = tx.send(Err(Status::unauthenticated(TOKEN_GONE))).await;
                    break;
                }
                continue;
            }
            _ = heartbeat.tick() => watch_event::Event::Heartbeat(Heartbeat { revision: last }),
            change = changes.recv() => match change {
                Ok(Change::DeployerDeleted) => {
                    let _ = tx.send(Err(Status::unauthenticated("deployer deleted"))).await;
                    break;
                }
                Ok(change) if change.revision() <= last => continue,
                Ok(Change::Upsert(d)) => {
                    last = d.revision;
                    heartbeat.reset();
                    watch_event::Event::Upsert(Upsert {
                        revision: d.revision,
                        deployment: Some(DeploymentRecord::clone(&d).into()),
                    })
                }
                Ok(Change::Removal { revision, id, namespace, name }) => {
                    last = revision;
                    heartbeat.reset();
                    watch_event::Event::Removal(Removal {
                        revision,
                        deployment_id: id,
                        namespace,
                        name,
                    })
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    shared.metrics.watch_lagged.inc();
                    tracing::warn!(deployer = %guard.deployer_id, missed, "watch stream fell behind; ending it");
                    let _ = tx
                        .send(Err(Status::aborted("watch fell behind; reconnect for a fresh snapshot")))
                        .await;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if tx.send(Ok(event(next))).await.is_err() {
            break;
        }
        shared.metrics.watch_events.inc();
    }
    drop(guard);
}
