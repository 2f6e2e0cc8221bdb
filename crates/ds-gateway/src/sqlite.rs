//! The SQLite back end of [`Store`](super::store::Store): one file, WAL journal,
//! built-in migrations. Its writes are serialized in the process, so a committed change
//! is published on the hub directly.

use super::audit::{self, deployment_json, deployment_object};
use super::group_commit::{BatchOutcome, CommitBatch, CreateJob};
use super::rows::{StoreRow, is_unique_violation, remapped_json, to_i64, to_u64};
use super::sql::{Backend, INSERT_REVISION, SELECT_REVISION, SET_REVISION, SqlStore, write_audit};
use super::store::{AuditEvent, Change, ChangeHub, Outcome, StoreError};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// A [`Store`](super::store::Store) on one SQLite database file.
pub type SqliteStore = SqlStore<SqliteBackend>;

/// SQLite's part of [`SqliteStore`].
#[derive(Debug)]
pub struct SqliteBackend {
    pool: SqlitePool,
    hub: ChangeHub,
}

impl SqlStore<SqliteBackend> {
    /// Opens (creating if missing) the database at a `sqlite:` URL.
    ///
    /// # Errors
    /// The URL is not `sqlite:`, or the database cannot be opened or migrated.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        if !url.starts_with("sqlite:") {
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(StoreError::Unsupported(scheme.to_string()));
        }
        Self::open(SqliteConnectOptions::from_str(url)?).await
    }

    /// Opens (creating if missing) the database file at `path`.
    ///
    /// # Errors
    /// The database cannot be opened or migrated.
    pub async fn open_path(path: &std::path::Path) -> Result<Self, StoreError> {
        Self::open(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL survives process crashes; only an OS crash may lose the
            // last transactions, which agents recover from with a fresh snapshot.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("src/migrations").run(&pool).await?;
        Ok(SqlStore::new(SqliteBackend {
            pool,
            hub: ChangeHub::default(),
        }))
    }
}

#[async_trait::async_trait]
impl Backend for SqliteBackend {
    type Db = Sqlite;
    const SERIAL_WRITES: bool = true;
    // Deferred: the read transaction's snapshot is taken at its first read, and WAL keeps
    // it while writers commit.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN";
    // One writer at a time already.
    const LOCK_ADMINS: Option<&'static str> = None;

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn hub(&self) -> &ChangeHub {
        &self.hub
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn log_change(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _deployer_id: &str,
        _change: &Change,
    ) -> Result<(), StoreError> {
        // One process owns the file: the hub is the only reader of changes.
        Ok(())
    }

    async fn log_statuses(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _ids: &[String],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait::async_trait]
impl CommitBatch for SqliteBackend {
    /// Each deployer's revision is read once, advanced per inserted row and written back
    /// before the commit, so every row and its revision bump commit together.
    async fn insert_batch(&self, batch: &[CreateJob]) -> Result<BatchOutcome, StoreError> {
        // IMMEDIATE: the write lock from the start, not an upgrade that may find the
        // snapshot stale.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // deployer id -> (revision now, revision at the start of the batch)
        let mut revisions: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch {
            let r = &job.record;
            let current = match revisions.get(r.deployer_id.as_str()) {
                Some(&(now, _)) => now,
                None => {
                    let row = sqlx::query(SELECT_REVISION)
                        .bind(&r.deployer_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(row) = row else {
                        outcomes.push(Err(job.unknown_deployer()));
                        continue;
                    };
                    let rev = to_u64(row.int("revision")?);
                    revisions.insert(&r.deployer_id, (rev, rev));
                    rev
                }
            };
            let revision = current + 1;
            let created = r.created_at.timestamp_millis();
            // A unique violation undoes only this statement; the transaction goes on.
            let inserted = sqlx::query(
                "INSERT INTO deployments (id, deployer_id, name, namespace, spec, revision, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(&r.id)
            .bind(&r.deployer_id)
            .bind(&r.name)
            .bind(&r.namespace)
            .bind(&job.json)
            .bind(to_i64(revision))
            .bind(created)
            .execute(&mut *tx)
            .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    outcomes.push(Err(job.name_taken()));
                }
                Err(e) => return Err(e.into()),
                Ok(_) => {
                    sqlx::query(INSERT_REVISION)
                        .bind(&r.id)
                        .bind(1_i64)
                        .bind(to_i64(revision))
                        .bind(&job.json)
                        .bind(&job.by.actor)
                        .bind(&job.by.note)
                        .bind(created)
                        .bind(remapped_json(&job.by.remapped)?)
                        .execute(&mut *tx)
                        .await?;
                    let event = AuditEvent::new(
                        job.by.action_or("deployment.create"),
                        audit::DEPLOYMENT,
                        deployment_object(r),
                    )
                    .of_deployer(&r.deployer_id)
                    .after(deployment_json(r));
                    write_audit(&mut tx, &job.by, &event, Outcome::Ok, &job.by.note).await?;
                    revisions.insert(
                        &r.deployer_id,
                        (revision, revisions[r.deployer_id.as_str()].1),
                    );
                    outcomes.push(Ok(revision));
                }
            }
        }
        for (deployer_id, (now, start)) in revisions {
            if now != start {
                sqlx::query(SET_REVISION)
                    .bind(to_i64(now))
                    .bind(deployer_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn publish(&self, deployer_id: &str, change: Change) {
        // Called under the writer lock: in revision order.
        self.hub.publish(deployer_id, change);
    }
}
