//! The PostgreSQL back end of [`Store`], for several gateway replicas on one database.
//!
//! # How replicas see each other's changes
//! Every change of a deployer's deployments is written, in the transaction that bumps
//! the deployer's revision, to the `changes` table and announced with `NOTIFY` (delivered
//! at commit). Each replica LISTENs; on a notification it reads that deployer's changes
//! above the last revision it published and publishes them on its own [`ChangeHub`] in
//! revision order. Local changes are published directly when they are the next revision,
//! so the common single-writer path costs no extra query. Because the table, not the
//! notification, carries the change, a lost notification or a reconnect of the listener
//! loses nothing: after a reconnect the listener re-scans every deployer's revision.
//! Old change rows are pruned per deployer ([`KEEP_CHANGES`]); a replica that finds a
//! gap ends that deployer's watchers, which reconnect for a fresh snapshot.
//!
//! Concurrent creates are committed in groups, as on SQLite: one transaction (one WAL
//! flush) for every create queued meanwhile, with one NOTIFY per deployer.
//!
//! Status reports are announced the same way (`NOTIFY` with the deployment IDs) so that
//! status watchers on every replica wake up; they are not logged, a missed one only
//! delays a status view until the next report.

use super::install::{InstallCodes, InstallOptions, RedeemError};
use super::store::{
    AgentHeartbeat, Change, ChangeHub, DeployerRecord, DeploymentRecord, DeploymentSelector,
    StatusRecord, Store, StoreError, TokenRecord,
};
use crate::core::DeploymentSpec;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The columns of a deployment, in the order [`deployment_from_row`] reads them.
const DEPLOYMENT_COLUMNS: &str =
    "id, deployer_id, name, namespace, spec, revision, created_at, updated_at";
/// NOTIFY channel of deployment changes: payload `DEPLOYER_ID REVISION` or
/// `DEPLOYER_ID deleted`.
const CHANGES_CHANNEL: &str = "ds_changes";
/// NOTIFY channel of status reports: payload `REPLICA_ID ID,ID,…`.
const STATUS_CHANNEL: &str = "ds_status";
/// Change rows kept per deployer: as many as a watcher may lag before it must reconnect.
pub const KEEP_CHANGES: i64 = 1024;
/// NOTIFY payloads must stay below 8000 bytes; status IDs are sent in chunks below this.
const MAX_NOTIFY_PAYLOAD: usize = 7000;
/// Pause before rebuilding a failed listener connection.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// A [`Store`] on a PostgreSQL database shared by any number of gateway replicas.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    fanout: Arc<Fanout>,
    /// Stops the listener task.
    shutdown: CancellationToken,
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held by whoever commits the queued creates; see [`PgStore::commit_pending_creates`].
    committer: tokio::sync::Mutex<()>,
    /// Creates waiting to be committed together (group commit).
    pending_creates: std::sync::Mutex<Vec<CreateJob>>,
}

/// The rows of a create batch, column by column (bound as arrays, inserted with UNNEST).
#[derive(Debug, Default)]
struct BatchColumns {
    ids: Vec<String>,
    deployers: Vec<String>,
    names: Vec<String>,
    namespaces: Vec<String>,
    specs: Vec<String>,
    revisions: Vec<i64>,
    created: Vec<i64>,
    kinds: Vec<String>,
    payloads: Vec<String>,
}

impl BatchColumns {
    fn push(
        &mut self,
        r: &DeploymentRecord,
        spec: &str,
        revision: i64,
        kind: &str,
        payload: String,
    ) {
        self.ids.push(r.id.clone());
        self.deployers.push(r.deployer_id.clone());
        self.names.push(r.name.clone());
        self.namespaces.push(r.namespace.clone());
        self.specs.push(spec.to_string());
        self.revisions.push(revision);
        self.created.push(r.created_at.timestamp_millis());
        self.kinds.push(kind.to_string());
        self.payloads.push(payload);
    }
}

/// One queued CreateDeployment: the row to insert (its revision is assigned in the
/// batch) and where to send the outcome once the batch is committed.
#[derive(Debug)]
struct CreateJob {
    record: DeploymentRecord,
    json: String,
    reply: tokio::sync::oneshot::Sender<Result<DeploymentRecord, StoreError>>,
}

/// Publishes committed changes on the local hub, per deployer in revision order,
/// whichever replica made them.
#[derive(Debug)]
struct Fanout {
    pool: PgPool,
    hub: ChangeHub,
    /// This replica's random ID, to skip its own status notifications.
    replica: String,
    /// Per deployer: the last revision published on the hub. Held while publishing, so
    /// the listener and local writers publish one deployer's changes in order.
    published: tokio::sync::Mutex<HashMap<String, u64>>,
}

/// The stored form of an upsert in the `changes` table.
#[derive(serde::Serialize, serde::Deserialize)]
struct UpsertPayload {
    id: String,
    deployer_id: String,
    name: String,
    namespace: String,
    spec: DeploymentSpec,
    created_at: i64,
    updated_at: i64,
}

/// The stored form of a removal in the `changes` table.
#[derive(serde::Serialize, serde::Deserialize)]
struct RemovalPayload {
    id: String,
    namespace: String,
    name: String,
}

impl PgStore {
    /// Connects to a `postgres://` or `postgresql://` URL, applies the migrations and
    /// starts listening for other replicas' changes.
    ///
    /// # Errors
    /// The URL is invalid, or the database cannot be reached or migrated.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        // Concurrent starts of several replicas are safe: sqlx takes an advisory lock.
        sqlx::migrate!("src/gateway/migrations_pg")
            .run(&pool)
            .await?;
        // The listener keeps its own one-connection pool so that closing the main pool
        // does not wait for it, and its reconnects do not compete with queries.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options)
            .await?;
        let fanout = Arc::new(Fanout {
            pool: pool.clone(),
            hub: ChangeHub::default(),
            replica: uuid::Uuid::new_v4().to_string(),
            published: tokio::sync::Mutex::new(HashMap::new()),
        });
        // LISTEN before reading the baseline: every change after the baseline is then
        // announced to us.
        let listener = new_listener(&listen_pool).await?;
        {
            let mut published = fanout.published.lock().await;
            for row in sqlx::query("SELECT id, revision FROM deployers")
                .fetch_all(&pool)
                .await?
            {
                published.insert(row.try_get("id")?, to_u64(row.try_get("revision")?));
            }
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(listen(
            fanout.clone(),
            listen_pool,
            listener,
            shutdown.clone(),
        ));
        Ok(Self {
            pool,
            fanout,
            shutdown,
            listener: std::sync::Mutex::new(Some(task)),
            committer: tokio::sync::Mutex::new(()),
            pending_creates: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Stops the listener and closes the connection pool.
    pub async fn close(&self) {
        self.shutdown.cancel();
        let task = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "the PostgreSQL listener task ended abnormally");
        }
        self.pool.close().await;
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Without close(): the listener must not outlive the store.
        self.shutdown.cancel();
    }
}

async fn new_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([CHANGES_CHANNEL, STATUS_CHANNEL])
        .await?;
    Ok(listener)
}

/// The listener task: applies notifications until `shutdown`; rebuilds the connection
/// after failures and re-scans after any reconnect, so no change is lost.
async fn listen(
    fanout: Arc<Fanout>,
    listen_pool: PgPool,
    listener: PgListener,
    shutdown: CancellationToken,
) {
    let mut listener = Some(listener);
    loop {
        let Some(current) = listener.as_mut() else {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(LISTEN_RETRY) => {}
            }
            match new_listener(&listen_pool).await {
                Ok(l) => {
                    listener = Some(l);
                    tracing::info!(
                        "PostgreSQL listener reconnected; re-scanning for missed changes"
                    );
                    fanout.rescan().await;
                }
                Err(error) => tracing::warn!(%error, "reconnecting the PostgreSQL listener"),
            }
            continue;
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = current.try_recv() => next,
        };
        match next {
            Ok(Some(notification)) => {
                fanout
                    .apply(notification.channel(), notification.payload())
                    .await;
            }
            Ok(None) => {
                // The connection was lost and re-established: notifications in between
                // are gone, the table still has the changes.
                tracing::warn!(
                    "PostgreSQL listener connection lost; re-scanning for missed changes"
                );
                fanout.rescan().await;
            }
            Err(error) => {
                tracing::warn!(%error, "PostgreSQL listener failed; reconnecting");
                listener = None;
            }
        }
    }
    drop(listener);
    listen_pool.close().await;
}

// === impl Fanout ===

impl Fanout {
    /// Handles one notification.
    async fn apply(&self, channel: &str, payload: &str) {
        match channel {
            CHANGES_CHANNEL => {
                let Some((deployer_id, what)) = payload.split_once(' ') else {
                    return;
                };
                if what == "deleted" {
                    self.published.lock().await.remove(deployer_id);
                    self.hub.publish(deployer_id, Change::DeployerDeleted);
                    return;
                }
                let Ok(revision) = what.parse::<u64>() else {
                    return;
                };
                let mut published = self.published.lock().await;
                self.catch_up(&mut published, deployer_id, revision).await;
            }
            STATUS_CHANNEL => {
                let Some((replica, ids)) = payload.split_once(' ') else {
                    return;
                };
                // Our own reports were announced on the hub when they were stored.
                if replica != self.replica {
                    for id in ids.split(',').filter(|id| !id.is_empty()) {
                        self.hub.touch(id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Publishes a change this replica committed: directly when it is the next revision,
    /// else after the changes of other replicas it has not published yet.
    async fn publish_local(&self, deployer_id: &str, change: Change) {
        let mut published = self.published.lock().await;
        let last = published.get(deployer_id).copied().unwrap_or(0);
        let revision = change.revision();
        if revision <= last {
            // The listener read it from the table already.
        } else if revision == last + 1 {
            published.insert(deployer_id.to_string(), revision);
            self.hub.publish(deployer_id, change);
        } else {
            self.catch_up(&mut published, deployer_id, revision).await;
        }
    }

    /// Publishes, in order, a deployer's logged changes above the last one published, up
    /// to at least `target` (a committed revision).
    async fn catch_up(&self, published: &mut HashMap<String, u64>, deployer_id: &str, target: u64) {
        let last = published.get(deployer_id).copied().unwrap_or(0);
        if last >= target {
            return;
        }
        if !self.hub.has_watchers(deployer_id) {
            // Nobody would receive them; a watcher that subscribes later reads a
            // snapshot, which includes these committed changes.
            published.insert(deployer_id.to_string(), target);
            return;
        }
        let rows = sqlx::query(
            "SELECT revision, kind, payload FROM changes \
             WHERE deployer_id = $1 AND revision > $2 ORDER BY revision",
        )
        .bind(deployer_id)
        .bind(to_i64(last))
        .fetch_all(&self.pool)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                // Their order cannot be guaranteed now: watchers start over from a snapshot.
                tracing::warn!(deployer = %deployer_id, %error, "reading changes of other replicas failed; watchers will resync");
                self.hub.resync(deployer_id);
                return;
            }
        };
        let mut expected = last + 1;
        for row in rows {
            let change = match change_from_row(deployer_id, &row) {
                Ok(change) => change,
                Err(error) => {
                    tracing::error!(deployer = %deployer_id, %error, "undecodable change row; watchers will resync");
                    self.hub.resync(deployer_id);
                    break;
                }
            };
            let revision = change.revision();
            if revision != expected {
                // Pruned: the watchers cannot get these in order any more.
                tracing::warn!(deployer = %deployer_id, from = expected, to = revision, "changes were pruned before this replica published them; watchers will resync");
                self.hub.resync(deployer_id);
            }
            self.hub.publish(deployer_id, change);
            published.insert(deployer_id.to_string(), revision);
            expected = revision + 1;
        }
    }

    /// After the listener (re)connected: publishes every change not published yet, and
    /// ends the watchers of deployers deleted meanwhile.
    async fn rescan(&self) {
        // Held across the read so that a deployer created and changed meanwhile is not
        // mistaken for a deleted one.
        let mut published = self.published.lock().await;
        let rows = match sqlx::query("SELECT id, revision FROM deployers")
            .fetch_all(&self.pool)
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "re-scanning deployers failed; every watcher will resync");
                let ids: Vec<String> = published.keys().cloned().collect();
                for id in ids {
                    self.hub.resync(&id);
                }
                return;
            }
        };
        let mut current = HashMap::with_capacity(rows.len());
        for row in &rows {
            let (Ok(id), Ok(revision)) = (
                row.try_get::<String, _>("id"),
                row.try_get::<i64, _>("revision"),
            ) else {
                continue;
            };
            current.insert(id, to_u64(revision));
        }
        let gone: Vec<String> = published
            .keys()
            .filter(|id| !current.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            published.remove(&id);
            self.hub.publish(&id, Change::DeployerDeleted);
        }
        for (id, revision) in current {
            self.catch_up(&mut published, &id, revision).await;
        }
    }
}

fn change_from_row(deployer_id: &str, row: &PgRow) -> Result<Change, StoreError> {
    let revision = to_u64(row.try_get("revision")?);
    let kind: String = row.try_get("kind")?;
    let payload: String = row.try_get("payload")?;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("change payload: {e}"));
    match kind.as_str() {
        "upsert" => {
            let p: UpsertPayload = serde_json::from_str(&payload).map_err(corrupt)?;
            Ok(Change::Upsert(Arc::new(DeploymentRecord {
                id: p.id,
                deployer_id: p.deployer_id,
                name: p.name,
                namespace: p.namespace,
                spec: p.spec,
                revision,
                created_at: ts(p.created_at),
                updated_at: ts(p.updated_at),
            })))
        }
        "removal" => {
            let p: RemovalPayload = serde_json::from_str(&payload).map_err(corrupt)?;
            Ok(Change::Removal {
                revision,
                id: p.id,
                namespace: p.namespace,
                name: p.name,
            })
        }
        other => Err(StoreError::Corrupt(format!(
            "change of deployer {deployer_id}: unknown kind {other:?}"
        ))),
    }
}

/// The `changes` row of a change: its kind and JSON payload (`None` for a deleted
/// deployer, which is announced but not logged).
fn change_row(change: &Change) -> Result<Option<(&'static str, String)>, StoreError> {
    let (kind, payload) = match change {
        Change::Upsert(d) => (
            "upsert",
            serde_json::to_string(&UpsertPayload {
                id: d.id.clone(),
                deployer_id: d.deployer_id.clone(),
                name: d.name.clone(),
                namespace: d.namespace.clone(),
                spec: d.spec.clone(),
                created_at: d.created_at.timestamp_millis(),
                updated_at: d.updated_at.timestamp_millis(),
            }),
        ),
        Change::Removal {
            id,
            namespace,
            name,
            ..
        } => (
            "removal",
            serde_json::to_string(&RemovalPayload {
                id: id.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            }),
        ),
        Change::DeployerDeleted => return Ok(None),
    };
    let payload = payload.map_err(|e| StoreError::Corrupt(format!("change payload: {e}")))?;
    Ok(Some((kind, payload)))
}

/// Inserts one `changes` row in `tx`.
async fn insert_change(
    tx: &mut Transaction<'static, Postgres>,
    deployer_id: &str,
    revision: u64,
    change: &Change,
) -> Result<(), StoreError> {
    let Some((kind, payload)) = change_row(change)? else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO changes (deployer_id, revision, kind, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(deployer_id)
    .bind(to_i64(revision))
    .bind(kind)
    .bind(payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Prunes a deployer's old changes and announces its new revision (delivered at commit).
async fn announce(
    tx: &mut Transaction<'static, Postgres>,
    deployer_id: &str,
    revision: u64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM changes WHERE deployer_id = $1 AND revision <= $2")
        .bind(deployer_id)
        .bind(to_i64(revision) - KEEP_CHANGES)
        .execute(&mut **tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGES_CHANNEL)
        .bind(format!("{deployer_id} {revision}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Logs a change in `tx`, prunes the deployer's old ones and announces it (at commit).
async fn log_change(
    tx: &mut Transaction<'static, Postgres>,
    deployer_id: &str,
    change: &Change,
) -> Result<(), StoreError> {
    let revision = change.revision();
    insert_change(tx, deployer_id, revision, change).await?;
    announce(tx, deployer_id, revision).await
}

use super::rows::{
    hash_from, is_unique_violation, now_ms, row_decoders, spec_json, to_i64, to_u64, ts,
};

row_decoders!(PgRow);

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Whether the database gave up on a transaction for a deadlock or serialization
/// failure between replicas: a conflict the caller may retry, not a database failure.
fn is_retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// Maps a retryable failure (see [`is_retryable`]) to [`StoreError::Conflict`].
fn retryable(what: &str) -> impl Fn(StoreError) -> StoreError + '_ {
    move |e| {
        if is_retryable(&e) {
            StoreError::Conflict(what.to_string())
        } else {
            e
        }
    }
}

/// Bumps a deployer's revision inside `tx` (locking its row until the commit, which
/// orders all writers of one deployer) and returns the new value.
async fn bump_revision(
    tx: &mut Transaction<'static, Postgres>,
    deployer_id: &str,
) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "UPDATE deployers SET revision = revision + 1 WHERE id = $1 RETURNING revision",
    )
    .bind(deployer_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("deployer {deployer_id}")))?;
    Ok(to_u64(row.try_get("revision")?))
}

// === impl PgStore: the writes (the trait methods map their errors) ===

impl PgStore {
    /// Commits every queued create in one transaction (one WAL flush for the batch),
    /// then publishes and answers them in revision order. The caller holds `committer`.
    async fn commit_pending_creates(&self) {
        let batch = std::mem::take(
            &mut *self
                .pending_creates
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if batch.is_empty() {
            return;
        }
        match self.insert_batch(&batch).await {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let outcome = match outcome {
                        Ok(revision) => {
                            let mut record = job.record;
                            record.revision = revision;
                            let change = Change::Upsert(Arc::new(record.clone()));
                            self.fanout.publish_local(&record.deployer_id, change).await;
                            Ok(record)
                        }
                        Err(e) => Err(e),
                    };
                    // The caller may have gone away (RPC cancelled); the row stays created.
                    let _ = job.reply.send(outcome);
                }
            }
            Err(error) => {
                // Nothing of the batch was committed: every caller gets the failure.
                let conflict = is_retryable(&error);
                let message = error.to_string();
                for job in batch {
                    let r = &job.record;
                    let _ = job.reply.send(Err(if conflict {
                        StoreError::Conflict(format!("deployment {}/{}", r.namespace, r.name))
                    } else {
                        StoreError::Database(sqlx::Error::Protocol(format!(
                            "group commit failed: {message}"
                        )))
                    }));
                }
            }
        }
    }

    /// Inserts a batch of creates in one transaction. The deployers involved are locked
    /// once, in ID order (no deadlock with another replica's batch); each one's revision
    /// is advanced per inserted row and written back before the commit, with the change
    /// rows and one notification per deployer. Per job: the new revision, or why that
    /// one job was refused (unknown deployer, name taken); the others still commit.
    async fn insert_batch(
        &self,
        batch: &[CreateJob],
    ) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let mut ids: Vec<String> = batch.iter().map(|j| j.record.deployer_id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut tx = self.pool.begin().await?;
        // deployer id -> (revision now, revision at the start of the batch)
        let mut revisions: HashMap<String, (u64, u64)> = HashMap::new();
        for row in sqlx::query(
            "SELECT id, revision FROM deployers WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        {
            let rev = to_u64(row.try_get("revision")?);
            revisions.insert(row.try_get("id")?, (rev, rev));
        }
        // Names already taken. Reliable without ON CONFLICT: every insert of a deployment
        // holds its deployer's row lock, and we hold all of this batch's.
        let mut taken: std::collections::HashSet<(String, String, String)> = sqlx::query(
            "SELECT d.deployer_id, d.namespace, d.name FROM deployments d \
             JOIN UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) AS q(deployer_id, namespace, name) \
             ON d.deployer_id = q.deployer_id AND d.namespace = q.namespace AND d.name = q.name",
        )
        .bind(
            batch
                .iter()
                .map(|j| j.record.deployer_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|j| j.record.namespace.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|j| j.record.name.clone())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect::<Result<_, sqlx::Error>>()?;
        // Column arrays of the rows to insert: one statement each for all deployments and
        // all change rows, whatever the batch size.
        let mut cols = BatchColumns::default();
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch {
            let r = &job.record;
            let Some(&(current, start)) = revisions.get(&r.deployer_id) else {
                outcomes.push(Err(StoreError::NotFound(format!(
                    "deployer {}",
                    r.deployer_id
                ))));
                continue;
            };
            // Also catches the second of two creates of one name in this batch.
            if !taken.insert((r.deployer_id.clone(), r.namespace.clone(), r.name.clone())) {
                outcomes.push(Err(StoreError::AlreadyExists(format!(
                    "deployment {}/{} on this deployer",
                    r.namespace, r.name
                ))));
                continue;
            }
            let revision = current + 1;
            let Some((kind, payload)) = change_row(&Change::Upsert(Arc::new(r.clone())))? else {
                continue;
            };
            cols.push(r, &job.json, to_i64(revision), kind, payload);
            revisions.insert(r.deployer_id.clone(), (revision, start));
            outcomes.push(Ok(revision));
        }
        if !cols.ids.is_empty() {
            let inserted = sqlx::query(
                "INSERT INTO deployments (id, deployer_id, name, namespace, spec, revision, created_at, updated_at) \
                 SELECT id, deployer_id, name, namespace, spec, revision, created_at, created_at \
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], $7::BIGINT[]) \
                 AS q(id, deployer_id, name, namespace, spec, revision, created_at)",
            )
            .bind(&cols.ids)
            .bind(&cols.deployers)
            .bind(&cols.names)
            .bind(&cols.namespaces)
            .bind(&cols.specs)
            .bind(&cols.revisions)
            .bind(&cols.created)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() != cols.ids.len() as u64 {
                return Err(StoreError::Corrupt(
                    "group commit inserted fewer deployments than planned".into(),
                ));
            }
            sqlx::query(
                "INSERT INTO changes (deployer_id, revision, kind, payload) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[])",
            )
            .bind(&cols.deployers)
            .bind(&cols.revisions)
            .bind(&cols.kinds)
            .bind(&cols.payloads)
            .execute(&mut *tx)
            .await?;
        }
        for (deployer_id, (now, start)) in &revisions {
            if now != start {
                sqlx::query("UPDATE deployers SET revision = $1 WHERE id = $2")
                    .bind(to_i64(*now))
                    .bind(deployer_id)
                    .execute(&mut *tx)
                    .await?;
                announce(&mut tx, deployer_id, *now).await?;
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn try_update_deployment(
        &self,
        id: &str,
        expected_revision: u64,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError> {
        let json = spec_json(spec)?;
        let deployer_id: String = sqlx::query("SELECT deployer_id FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?
            .try_get("deployer_id")?;
        let mut tx = self.pool.begin().await?;
        // The deployer row first, then the deployment: every writer locks in this order.
        let revision = bump_revision(&mut tx, &deployer_id).await?;
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1");
        let current = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        let mut record = deployment_from_row(&current)?;
        if record.revision != expected_revision {
            return Err(StoreError::Conflict(format!("deployment {id}")));
        }
        let now = now_ms();
        sqlx::query(
            "UPDATE deployments SET spec = $1, revision = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(&json)
        .bind(to_i64(revision))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        record.spec = spec.clone();
        record.revision = revision;
        record.updated_at = ts(now);
        let change = Change::Upsert(Arc::new(record.clone()));
        log_change(&mut tx, &deployer_id, &change).await?;
        tx.commit().await?;
        self.fanout.publish_local(&deployer_id, change).await;
        Ok(record)
    }

    async fn try_delete_deployment(&self, id: &str) -> Result<(DeploymentRecord, u64), StoreError> {
        let deployer_id: String = sqlx::query("SELECT deployer_id FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?
            .try_get("deployer_id")?;
        let mut tx = self.pool.begin().await?;
        let revision = bump_revision(&mut tx, &deployer_id).await?;
        let sql = format!("DELETE FROM deployments WHERE id = $1 RETURNING {DEPLOYMENT_COLUMNS}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        let record = deployment_from_row(&row)?;
        let change = Change::Removal {
            revision,
            id: record.id.clone(),
            namespace: record.namespace.clone(),
            name: record.name.clone(),
        };
        log_change(&mut tx, &deployer_id, &change).await?;
        tx.commit().await?;
        self.fanout.publish_local(&deployer_id, change).await;
        Ok((record, revision))
    }

    async fn try_put_statuses(
        &self,
        deployer_id: &str,
        statuses: &[StatusRecord],
    ) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut stored = Vec::with_capacity(statuses.len());
        for s in statuses {
            // The join on deployer_id keeps a deployer from writing another's statuses.
            let done = sqlx::query(
                "INSERT INTO deployment_status (deployment_id, phase, ready_replicas, \
                 available_replicas, updated_replicas, applied_revision, endpoint, last_error, updated_at) \
                 SELECT id, $1, $2, $3, $4, $5, $6, $7, $8 FROM deployments WHERE id = $9 AND deployer_id = $10 \
                 ON CONFLICT (deployment_id) DO UPDATE SET phase = excluded.phase, \
                 ready_replicas = excluded.ready_replicas, available_replicas = excluded.available_replicas, \
                 updated_replicas = excluded.updated_replicas, applied_revision = excluded.applied_revision, \
                 endpoint = excluded.endpoint, last_error = excluded.last_error, updated_at = excluded.updated_at",
            )
            .bind(i64::from(s.phase))
            .bind(i64::from(s.ready_replicas))
            .bind(i64::from(s.available_replicas))
            .bind(i64::from(s.updated_replicas))
            .bind(to_i64(s.applied_revision))
            .bind(&s.endpoint)
            .bind(&s.last_error)
            .bind(now)
            .bind(&s.deployment_id)
            .bind(deployer_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                stored.push(s.deployment_id.clone());
            }
        }
        // Wake the status watchers of the other replicas (at commit).
        let prefix = format!("{} ", self.fanout.replica);
        let mut payload = prefix.clone();
        for id in &stored {
            if payload.len() + id.len() + 1 > MAX_NOTIFY_PAYLOAD {
                notify_status(&mut tx, &payload).await?;
                payload.clone_from(&prefix);
            }
            if payload.len() > prefix.len() {
                payload.push(',');
            }
            payload.push_str(id);
        }
        if payload.len() > prefix.len() {
            notify_status(&mut tx, &payload).await?;
        }
        tx.commit().await?;
        for id in &stored {
            self.fanout.hub.touch(id);
        }
        Ok(stored)
    }
}

async fn notify_status(
    tx: &mut Transaction<'static, Postgres>,
    payload: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(STATUS_CHANNEL)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// === impl Store for PgStore ===

#[async_trait::async_trait]
impl Store for PgStore {
    fn hub(&self) -> &ChangeHub {
        &self.fanout.hub
    }

    async fn create_deployer(
        &self,
        name: &str,
        token_id: &str,
        token_hash: [u8; 32],
    ) -> Result<DeployerRecord, StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO deployers (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(&id)
        .bind(name)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            return Err(StoreError::AlreadyExists(format!("deployer {name}")));
        }
        sqlx::query(
            "INSERT INTO tokens (id, deployer_id, hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_id)
        .bind(&id)
        .bind(&token_hash[..])
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DeployerRecord::registered(id, name, ts(now)))
    }

    async fn list_deployers(&self) -> Result<Vec<DeployerRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.*, (SELECT COUNT(*) FROM deployments x WHERE x.deployer_id = d.id) AS n \
             FROM deployers d ORDER BY d.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployer_from_row).collect()
    }

    async fn get_deployer(&self, id_or_name: &str) -> Result<DeployerRecord, StoreError> {
        let row = sqlx::query(
            "SELECT d.*, (SELECT COUNT(*) FROM deployments x WHERE x.deployer_id = d.id) AS n \
             FROM deployers d WHERE d.id = $1 OR d.name = $1 ORDER BY d.id = $1 DESC LIMIT 1",
        )
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployer {id_or_name}")))?;
        deployer_from_row(&row)
    }

    async fn resolve_deployer(&self, id_or_name: &str) -> Result<(String, String), StoreError> {
        let row = sqlx::query(
            "SELECT id, name FROM deployers WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1",
        )
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployer {id_or_name}")))?;
        Ok((row.try_get("id")?, row.try_get("name")?))
    }

    async fn delete_deployer(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM deployers WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)
            .map_err(retryable(&format!("deployer {id}")))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("deployer {id}")));
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(format!("{id} deleted"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.fanout.published.lock().await.remove(id);
        self.fanout.hub.publish(id, Change::DeployerDeleted);
        Ok(())
    }

    async fn rotate_token(
        &self,
        deployer_id: &str,
        token_id: &str,
        token_hash: [u8; 32],
        old_expire: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Tokens already expiring keep their earlier deadline; only current ones get one.
        sqlx::query(
            "UPDATE tokens SET expires_at = $1 WHERE deployer_id = $2 AND expires_at IS NULL",
        )
        .bind(old_expire.timestamp_millis())
        .bind(deployer_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM tokens WHERE deployer_id = $1 AND expires_at <= $2")
            .bind(deployer_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO tokens (id, deployer_id, hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_id)
        .bind(deployer_id)
        .bind(&token_hash[..])
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::NotFound(format!("deployer {deployer_id}")));
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(())
    }

    async fn find_token(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT deployer_id, hash, expires_at FROM tokens WHERE id = $1")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(TokenRecord {
                deployer_id: row.try_get("deployer_id")?,
                hash: hash_from(row.try_get("hash")?)?,
                expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(ts),
            })
        })
        .transpose()
    }

    async fn has_api_key(&self) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(n > 0)
    }

    async fn add_api_key(&self, key_id: &str, hash: [u8; 32]) -> Result<(), StoreError> {
        let inserted =
            sqlx::query("INSERT INTO api_keys (id, hash, created_at) VALUES ($1, $2, $3)")
                .bind(key_id)
                .bind(&hash[..])
                .bind(now_ms())
                .execute(&self.pool)
                .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::AlreadyExists(format!("API key {key_id}")))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT hash FROM api_keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(TokenRecord {
                deployer_id: String::new(),
                hash: hash_from(row.try_get("hash")?)?,
                expires_at: None,
            })
        })
        .transpose()
    }

    async fn create_deployment(
        &self,
        deployer_id: &str,
        name: &str,
        namespace: &str,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError> {
        let json = spec_json(spec)?;
        let now = ts(now_ms());
        let record = DeploymentRecord {
            id: uuid::Uuid::new_v4().to_string(),
            deployer_id: deployer_id.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            spec: spec.clone(),
            revision: 0,
            created_at: now,
            updated_at: now,
        };
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.pending_creates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(CreateJob {
                record,
                json,
                reply,
            });
        {
            // Creates queued while the previous holder was committing go together; ours
            // may already have been committed by then, leaving nothing to do here.
            let _c = self.committer.lock().await;
            self.commit_pending_creates().await;
        }
        outcome.await.unwrap_or_else(|_| {
            Err(StoreError::Database(sqlx::Error::Protocol(
                "the create was abandoned before its commit".into(),
            )))
        })
    }

    async fn update_deployment(
        &self,
        id: &str,
        expected_revision: u64,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError> {
        self.try_update_deployment(id, expected_revision, spec)
            .await
            .map_err(retryable(&format!("deployment {id}")))
    }

    async fn delete_deployment(&self, id: &str) -> Result<(DeploymentRecord, u64), StoreError> {
        self.try_delete_deployment(id)
            .await
            .map_err(retryable(&format!("deployment {id}")))
    }

    async fn get_deployment(&self, id: &str) -> Result<DeploymentRecord, StoreError> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        deployment_from_row(&row)
    }

    async fn find_deployments(
        &self,
        selector: &DeploymentSelector,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        if let Ok(found) = self.get_deployment(&selector.deployment).await {
            return Ok(vec![found]);
        }
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE name = $1 \
             AND ($2::TEXT IS NULL OR deployer_id = $2) AND ($3::TEXT IS NULL OR namespace = $3) \
             ORDER BY deployer_id, namespace"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&selector.deployment)
            .bind(&selector.deployer_id)
            .bind(&selector.namespace)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn list_deployments(
        &self,
        deployer_id: Option<&str>,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE ($1::TEXT IS NULL OR deployer_id = $1) \
             ORDER BY deployer_id, namespace, name"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(deployer_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn snapshot(
        &self,
        deployer_id: &str,
    ) -> Result<(u64, Vec<DeploymentRecord>), StoreError> {
        // One repeatable-read transaction: the revision and the rows come from the same
        // state, whatever other replicas commit meanwhile.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let row = sqlx::query("SELECT revision FROM deployers WHERE id = $1")
            .bind(deployer_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployer {deployer_id}")))?;
        let revision = to_u64(row.try_get("revision")?);
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE deployer_id = $1 ORDER BY namespace, name"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(deployer_id)
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        let deployments = rows
            .iter()
            .map(deployment_from_row)
            .collect::<Result<_, _>>()?;
        Ok((revision, deployments))
    }

    async fn record_heartbeat(
        &self,
        deployer_id: &str,
        agent: &AgentHeartbeat,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "UPDATE deployers SET agent_version = $1, cluster = $2, instance = $3, \
             agent_namespaces = $4, last_seen = $5 WHERE id = $6 RETURNING revision",
        )
        .bind(&agent.version)
        .bind(&agent.cluster)
        .bind(&agent.instance)
        .bind(agent.namespaces.join(","))
        .bind(now_ms())
        .bind(deployer_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)
        .map_err(retryable(&format!("deployer {deployer_id}")))?
        .ok_or_else(|| StoreError::NotFound(format!("deployer {deployer_id}")))?;
        Ok(to_u64(row.try_get("revision")?))
    }

    async fn put_statuses(
        &self,
        deployer_id: &str,
        statuses: &[StatusRecord],
    ) -> Result<Vec<String>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        self.try_put_statuses(deployer_id, statuses)
            .await
            .map_err(retryable(&format!("statuses of deployer {deployer_id}")))
    }

    async fn get_status(&self, deployment_id: &str) -> Result<Option<StatusRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM deployment_status WHERE deployment_id = $1")
            .bind(deployment_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(status_from_row).transpose()
    }

    async fn list_statuses(&self) -> Result<HashMap<String, StatusRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM deployment_status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| status_from_row(r).map(|s| (s.deployment_id.clone(), s)))
            .collect()
    }
}

// === impl InstallCodes for PgStore ===

/// Expired codes older than this are deleted when a new code is created.
const KEEP_EXPIRED: chrono::Duration = chrono::Duration::days(1);

#[async_trait::async_trait]
impl InstallCodes for PgStore {
    async fn create_code(
        &self,
        hash: [u8; 32],
        deployer_id: &str,
        expires_at: DateTime<Utc>,
        options: &InstallOptions,
    ) -> Result<(), StoreError> {
        let options = serde_json::to_string(options)
            .map_err(|e| StoreError::Corrupt(format!("install options: {e}")))?;
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM install_codes WHERE expires_at < $1")
            .bind((now - KEEP_EXPIRED).timestamp_millis())
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO install_codes (hash, deployer_id, created_at, expires_at, options) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&hash[..])
        .bind(deployer_id)
        .bind(now.timestamp_millis())
        .bind(expires_at.timestamp_millis())
        .bind(options)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::NotFound(format!("deployer {deployer_id}")));
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(())
    }

    async fn redeem_code(
        &self,
        hash: [u8; 32],
        token_id: &str,
        token_hash: [u8; 32],
    ) -> Result<(String, InstallOptions), RedeemError> {
        let now = Utc::now().timestamp_millis();
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        // One statement claims the code: a concurrent claim on any replica waits for our
        // row lock, then re-checks `used_at IS NULL` and finds nothing.
        let claimed = sqlx::query(
            "UPDATE install_codes SET used_at = $1 \
             WHERE hash = $2 AND used_at IS NULL AND expires_at > $1 \
             RETURNING deployer_id, options",
        )
        .bind(now)
        .bind(&hash[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let Some(row) = claimed else {
            let row = sqlx::query("SELECT used_at FROM install_codes WHERE hash = $1")
                .bind(&hash[..])
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            let used_at = match row {
                None => None,
                Some(row) => Some(
                    row.try_get::<Option<i64>, _>("used_at")
                        .map_err(StoreError::from)?,
                ),
            };
            return Err(RedeemError::of_unclaimed(used_at));
        };
        let deployer_id: String = row.try_get("deployer_id").map_err(StoreError::from)?;
        let options = InstallOptions::from_stored(
            &row.try_get::<String, _>("options")
                .map_err(StoreError::from)?,
        )?;
        sqlx::query(
            "INSERT INTO tokens (id, deployer_id, hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_id)
        .bind(&deployer_id)
        .bind(&token_hash[..])
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok((deployer_id, options))
    }
}
