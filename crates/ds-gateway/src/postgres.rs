//! The PostgreSQL back end of [`Store`](super::store::Store), for several gateway
//! replicas on one database.
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
//! Concurrent creates are committed in groups ([`super::group_commit`]): one
//! transaction (one WAL flush) for every create queued meanwhile, with one NOTIFY per
//! deployer.
//!
//! Status reports are announced the same way (`NOTIFY` with the deployment IDs) so that
//! status watchers on every replica wake up; they are not logged, a missed one only
//! delays a status view until the next report.

use super::audit;
use super::group_commit::{BatchOutcome, CommitBatch, CreateJob};
use super::rows::{self, StoreRow, to_i64, to_u64, ts};
use super::sql::{Backend, SET_REVISION, SqlStore};
use super::store::{Change, ChangeBy, ChangeHub, DeploymentRecord, StoreError};
use ds_core::DeploymentSpec;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

/// A [`Store`](super::store::Store) on a PostgreSQL database shared by any number of
/// gateway replicas.
pub type PgStore = SqlStore<PgBackend>;

/// PostgreSQL's part of [`PgStore`]: the change log, LISTEN/NOTIFY and the listener task.
#[derive(Debug)]
pub struct PgBackend {
    pool: PgPool,
    fanout: Arc<Fanout>,
    /// Stops the listener task.
    shutdown: CancellationToken,
    listener: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
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
    actors: Vec<String>,
    notes: Vec<String>,
    /// The audit row of each: its action, object, after (JSON) and request.
    actions: Vec<String>,
    objects: Vec<String>,
    afters: Vec<String>,
    request_ids: Vec<String>,
    /// What each create's remapping replaced (JSON, '' for none).
    remapped: Vec<String>,
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

    /// Who creates the deployment last pushed (recorded with its revision 1 and in its
    /// audit row).
    fn push_by(&mut self, r: &DeploymentRecord, by: &ChangeBy) {
        self.actors.push(by.actor.clone());
        self.notes.push(by.note.clone());
        self.remapped
            .push(rows::remapped_json(&by.remapped).unwrap_or_default());
        self.actions
            .push(by.action_or("deployment.create").to_string());
        self.objects.push(audit::deployment_object(r));
        self.afters.push(audit::deployment_json(r).to_string());
        self.request_ids.push(by.request_id.clone());
    }
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

impl SqlStore<PgBackend> {
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
        sqlx::migrate!("src/migrations_pg").run(&pool).await?;
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
                published.insert(row.text("id")?, to_u64(row.int("revision")?));
            }
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(listen(
            fanout.clone(),
            listen_pool,
            listener,
            shutdown.clone(),
        ));
        Ok(SqlStore::new(PgBackend {
            pool,
            fanout,
            shutdown,
            listener: parking_lot::Mutex::new(Some(task)),
        }))
    }
}

impl Drop for PgBackend {
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
                    self.deleted(deployer_id).await;
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

    /// Ends a deleted deployer's watchers; nothing of it is published after this.
    async fn deleted(&self, deployer_id: &str) {
        self.published.lock().await.remove(deployer_id);
        self.hub.publish(deployer_id, Change::DeployerDeleted);
    }

    /// Publishes a change this replica committed: directly when it is the next revision,
    /// else after the changes of other replicas it has not published yet.
    async fn publish_local(&self, deployer_id: &str, change: Change) {
        if let Change::DeployerDeleted = change {
            return self.deleted(deployer_id).await;
        }
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
            let (Ok(id), Ok(revision)) = (row.text("id"), row.int("revision")) else {
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
    let revision = to_u64(row.int("revision")?);
    let kind = row.text("kind")?;
    let payload = row.text("payload")?;
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

// === impl Backend for PgBackend ===

#[async_trait::async_trait]
impl Backend for PgBackend {
    type Db = Postgres;
    const SERIAL_WRITES: bool = false;
    // The revision and the rows from one state, whatever other replicas commit meanwhile.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    // In name order, as every such removal takes them: no deadlock between two. The next
    // statement of the transaction (READ COMMITTED) then sees what the other committed.
    const LOCK_ADMINS: Option<&'static str> =
        Some("SELECT name FROM users WHERE admin <> 0 ORDER BY name FOR UPDATE");

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn hub(&self) -> &ChangeHub {
        &self.fanout.hub
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    /// Logs the change, prunes the deployer's old ones and announces it (at commit); a
    /// deleted deployer is only announced.
    async fn log_change(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        deployer_id: &str,
        change: &Change,
    ) -> Result<(), StoreError> {
        if let Change::DeployerDeleted = change {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(format!("{deployer_id} deleted"))
                .execute(&mut **tx)
                .await?;
            return Ok(());
        }
        let revision = change.revision();
        insert_change(tx, deployer_id, revision, change).await?;
        announce(tx, deployer_id, revision).await
    }

    /// Wakes the status watchers of the other replicas (at commit).
    async fn log_statuses(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let prefix = format!("{} ", self.fanout.replica);
        let mut payload = prefix.clone();
        for id in ids {
            if payload.len() + id.len() + 1 > MAX_NOTIFY_PAYLOAD {
                notify_status(tx, &payload).await?;
                payload.clone_from(&prefix);
            }
            if payload.len() > prefix.len() {
                payload.push(',');
            }
            payload.push_str(id);
        }
        if payload.len() > prefix.len() {
            notify_status(tx, &payload).await?;
        }
        Ok(())
    }

    async fn close(&self) {
        self.shutdown.cancel();
        let task = self.listener.lock().take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "the PostgreSQL listener task ended abnormally");
        }
        self.pool.close().await;
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

#[async_trait::async_trait]
impl CommitBatch for PgBackend {
    /// The deployers involved are locked once, in ID order (no deadlock with another
    /// replica's batch); each one's revision is advanced per inserted row and written
    /// back before the commit, with the change rows and one notification per deployer.
    async fn insert_batch(&self, batch: &[CreateJob]) -> Result<BatchOutcome, StoreError> {
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
            let rev = to_u64(row.int("revision")?);
            revisions.insert(row.text("id")?, (rev, rev));
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
                outcomes.push(Err(job.unknown_deployer()));
                continue;
            };
            // Also catches the second of two creates of one name in this batch.
            if !taken.insert((r.deployer_id.clone(), r.namespace.clone(), r.name.clone())) {
                outcomes.push(Err(job.name_taken()));
                continue;
            }
            let revision = current + 1;
            let Some((kind, payload)) = change_row(&Change::Upsert(Arc::new(r.clone())))? else {
                continue;
            };
            cols.push(r, &job.json, to_i64(revision), kind, payload);
            cols.push_by(r, &job.by);
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
                "INSERT INTO deployment_revisions \
                 (deployment_id, number, deployer_revision, spec, actor, note, created_at, remapped) \
                 SELECT id, 1, revision, spec, actor, note, created_at, remapped \
                 FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], $7::TEXT[]) \
                 AS q(id, revision, spec, actor, note, created_at, remapped)",
            )
            .bind(&cols.ids)
            .bind(&cols.revisions)
            .bind(&cols.specs)
            .bind(&cols.actors)
            .bind(&cols.notes)
            .bind(&cols.created)
            .bind(&cols.remapped)
            .execute(&mut *tx)
            .await?;
            // Each create's audit row, in the same transaction as the create.
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, object_kind, object, deployer_id, after, request_id, outcome, reason) \
                 SELECT at, actor, action, 'deployment', object, deployer_id, after, request_id, 'ok', reason \
                 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[]) \
                 AS q(at, actor, action, object, deployer_id, after, request_id, reason)",
            )
            .bind(&cols.created)
            .bind(&cols.actors)
            .bind(&cols.actions)
            .bind(&cols.objects)
            .bind(&cols.deployers)
            .bind(&cols.afters)
            .bind(&cols.request_ids)
            .bind(&cols.notes)
            .execute(&mut *tx)
            .await?;
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
                sqlx::query(SET_REVISION)
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

    async fn publish(&self, deployer_id: &str, change: Change) {
        self.fanout.publish_local(deployer_id, change).await;
    }
}
