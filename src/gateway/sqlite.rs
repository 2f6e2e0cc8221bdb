//! The SQLite back end of [`Store`]: one file, WAL journal, built-in migrations.

use super::store::{
    AgentHeartbeat, Change, ChangeHub, DeployerRecord, DeploymentRecord, DeploymentSelector,
    StatusRecord, Store, StoreError, TokenRecord,
};
use crate::core::DeploymentSpec;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The columns of a deployment, in the order [`deployment_from_row`] reads them.
const DEPLOYMENT_COLUMNS: &str =
    "id, deployer_id, name, namespace, spec, revision, created_at, updated_at";

/// A [`Store`] on one SQLite database file.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    hub: ChangeHub,
    /// Serializes writers: SQLite has one writer anyway, and publishing while holding
    /// this lock keeps each deployer's changes in revision order on the hub.
    writer: tokio::sync::Mutex<()>,
    /// Creates waiting to be committed; whoever holds `writer` next commits all of them in
    /// one transaction (group commit), so a burst of creates costs one BEGIN/COMMIT.
    pending_creates: std::sync::Mutex<Vec<CreateJob>>,
}

/// One queued CreateDeployment: the row to insert (its revision is assigned in the
/// batch) and where to send the outcome once the batch is committed.
#[derive(Debug)]
struct CreateJob {
    record: DeploymentRecord,
    json: String,
    reply: tokio::sync::oneshot::Sender<Result<DeploymentRecord, StoreError>>,
}

impl SqliteStore {
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
        sqlx::migrate!("src/gateway/migrations").run(&pool).await?;
        Ok(Self {
            pool,
            hub: ChangeHub::default(),
            writer: tokio::sync::Mutex::new(()),
            pending_creates: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Commits every queued create in one transaction, then publishes and answers them in
    /// revision order. The caller holds the writer lock.
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
                    let outcome = outcome.map(|revision| {
                        let mut record = job.record;
                        record.revision = revision;
                        // Published after the commit and under the writer lock: agents
                        // only see durable changes, in revision order.
                        self.hub.publish(
                            &record.deployer_id,
                            Change::Upsert(Arc::new(record.clone())),
                        );
                        record
                    });
                    // The caller may have gone away (RPC cancelled); the row stays created.
                    let _ = job.reply.send(outcome);
                }
            }
            Err(error) => {
                // Nothing of the batch was committed: every caller gets the failure.
                let message = error.to_string();
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(StoreError::Database(sqlx::Error::Protocol(format!(
                            "group commit failed: {message}"
                        )))));
                }
            }
        }
    }

    /// Inserts a batch of creates in one transaction. Each deployer's revision is read
    /// once, advanced per inserted row and written back before the commit, so every row
    /// and its revision bump commit together. Per job: the new revision, or why that one
    /// job was refused (unknown deployer, name taken); the others still commit.
    async fn insert_batch(
        &self,
        batch: &[CreateJob],
    ) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // deployer id -> (revision now, revision at the start of the batch)
        let mut revisions: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch {
            let r = &job.record;
            let current = match revisions.get(r.deployer_id.as_str()) {
                Some(&(now, _)) => now,
                None => {
                    let row = sqlx::query("SELECT revision FROM deployers WHERE id = ?")
                        .bind(&r.deployer_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(row) = row else {
                        outcomes.push(Err(StoreError::NotFound(format!(
                            "deployer {}",
                            r.deployer_id
                        ))));
                        continue;
                    };
                    let rev = to_u64(row.try_get("revision")?);
                    revisions.insert(&r.deployer_id, (rev, rev));
                    rev
                }
            };
            let revision = current + 1;
            let created = r.created_at.timestamp_millis();
            // A unique violation undoes only this statement; the transaction goes on.
            let inserted = sqlx::query(
                "INSERT INTO deployments (id, deployer_id, name, namespace, spec, revision, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&r.id)
            .bind(&r.deployer_id)
            .bind(&r.name)
            .bind(&r.namespace)
            .bind(&job.json)
            .bind(to_i64(revision))
            .bind(created)
            .bind(created)
            .execute(&mut *tx)
            .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    outcomes.push(Err(StoreError::AlreadyExists(format!(
                        "deployment {}/{} on this deployer",
                        r.namespace, r.name
                    ))));
                }
                Err(e) => return Err(e.into()),
                Ok(_) => {
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
                sqlx::query("UPDATE deployers SET revision = ? WHERE id = ?")
                    .bind(to_i64(now))
                    .bind(deployer_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// The connection pool, for tables owned by other gateway modules (install codes).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the connection pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

use super::rows::{
    hash_from, is_unique_violation, now_ms, row_decoders, spec_json, to_i64, to_u64, ts,
};

row_decoders!(SqliteRow);

/// Bumps a deployer's revision inside `tx` and returns the new value.
async fn bump_revision(
    tx: &mut Transaction<'static, Sqlite>,
    deployer_id: &str,
) -> Result<u64, StoreError> {
    let row =
        sqlx::query("UPDATE deployers SET revision = revision + 1 WHERE id = ? RETURNING revision")
            .bind(deployer_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployer {deployer_id}")))?;
    Ok(to_u64(row.try_get("revision")?))
}

// === impl Store for SqliteStore ===

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn hub(&self) -> &ChangeHub {
        &self.hub
    }

    async fn create_deployer(
        &self,
        name: &str,
        token_id: &str,
        token_hash: [u8; 32],
    ) -> Result<DeployerRecord, StoreError> {
        let _w = self.writer.lock().await;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query("INSERT INTO deployers (id, name, created_at) VALUES (?, ?, ?)")
            .bind(&id)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!("deployer {name}")));
            }
            other => other?,
        };
        sqlx::query("INSERT INTO tokens (id, deployer_id, hash, created_at) VALUES (?, ?, ?, ?)")
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
             FROM deployers d WHERE d.id = ? OR d.name = ? ORDER BY d.id = ? DESC LIMIT 1",
        )
        .bind(id_or_name)
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployer {id_or_name}")))?;
        deployer_from_row(&row)
    }

    async fn resolve_deployer(&self, id_or_name: &str) -> Result<(String, String), StoreError> {
        let row = sqlx::query(
            "SELECT id, name FROM deployers WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
        )
        .bind(id_or_name)
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployer {id_or_name}")))?;
        Ok((row.try_get("id")?, row.try_get("name")?))
    }

    async fn delete_deployer(&self, id: &str) -> Result<(), StoreError> {
        let _w = self.writer.lock().await;
        let done = sqlx::query("DELETE FROM deployers WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("deployer {id}")));
        }
        self.hub.publish(id, Change::DeployerDeleted);
        Ok(())
    }

    async fn rotate_token(
        &self,
        deployer_id: &str,
        token_id: &str,
        token_hash: [u8; 32],
        old_expire: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _w = self.writer.lock().await;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let expire = old_expire.timestamp_millis();
        // Tokens already expiring keep their earlier deadline; only current ones get one.
        sqlx::query(
            "UPDATE tokens SET expires_at = ? WHERE deployer_id = ? AND expires_at IS NULL",
        )
        .bind(expire)
        .bind(deployer_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM tokens WHERE deployer_id = ? AND expires_at <= ?")
            .bind(deployer_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO tokens (id, deployer_id, hash, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(token_id)
        .bind(deployer_id)
        .bind(&token_hash[..])
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_foreign_key_violation()) =>
            {
                return Err(StoreError::NotFound(format!("deployer {deployer_id}")));
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(())
    }

    async fn find_token(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT deployer_id, hash, expires_at FROM tokens WHERE id = ?")
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
        let _w = self.writer.lock().await;
        sqlx::query("INSERT INTO api_keys (id, hash, created_at) VALUES (?, ?, ?)")
            .bind(key_id)
            .bind(&hash[..])
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT hash FROM api_keys WHERE id = ?")
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
        let (reply, outcome) = tokio::sync::oneshot::channel();
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
            let _w = self.writer.lock().await;
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
        let json = spec_json(spec)?;
        let _w = self.writer.lock().await;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?");
        let current = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        let mut record = deployment_from_row(&current)?;
        if record.revision != expected_revision {
            return Err(StoreError::Conflict(format!("deployment {id}")));
        }
        let revision = bump_revision(&mut tx, &record.deployer_id).await?;
        sqlx::query("UPDATE deployments SET spec = ?, revision = ?, updated_at = ? WHERE id = ?")
            .bind(&json)
            .bind(to_i64(revision))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        record.spec = spec.clone();
        record.revision = revision;
        record.updated_at = ts(now);
        self.hub.publish(
            &record.deployer_id,
            Change::Upsert(Arc::new(record.clone())),
        );
        Ok(record)
    }

    async fn delete_deployment(&self, id: &str) -> Result<(DeploymentRecord, u64), StoreError> {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let sql = format!("DELETE FROM deployments WHERE id = ? RETURNING {DEPLOYMENT_COLUMNS}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        let record = deployment_from_row(&row)?;
        let revision = bump_revision(&mut tx, &record.deployer_id).await?;
        tx.commit().await?;
        self.hub.publish(
            &record.deployer_id,
            Change::Removal {
                revision,
                id: record.id.clone(),
                namespace: record.namespace.clone(),
                name: record.name.clone(),
            },
        );
        Ok((record, revision))
    }

    async fn get_deployment(&self, id: &str) -> Result<DeploymentRecord, StoreError> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?");
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
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE name = ? \
             AND (? IS NULL OR deployer_id = ?) AND (? IS NULL OR namespace = ?) \
             ORDER BY deployer_id, namespace"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&selector.deployment)
            .bind(&selector.deployer_id)
            .bind(&selector.deployer_id)
            .bind(&selector.namespace)
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
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE (? IS NULL OR deployer_id = ?) \
             ORDER BY deployer_id, namespace, name"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(deployer_id)
            .bind(deployer_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn snapshot(
        &self,
        deployer_id: &str,
    ) -> Result<(u64, Vec<DeploymentRecord>), StoreError> {
        // One read transaction: the revision and the rows come from the same state.
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT revision FROM deployers WHERE id = ?")
            .bind(deployer_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployer {deployer_id}")))?;
        let revision = to_u64(row.try_get("revision")?);
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE deployer_id = ? ORDER BY namespace, name"
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
        let _w = self.writer.lock().await;
        let row = sqlx::query(
            "UPDATE deployers SET agent_version = ?, cluster = ?, instance = ?, \
             agent_namespaces = ?, last_seen = ? WHERE id = ? RETURNING revision",
        )
        .bind(&agent.version)
        .bind(&agent.cluster)
        .bind(&agent.instance)
        .bind(agent.namespaces.join(","))
        .bind(now_ms())
        .bind(deployer_id)
        .fetch_optional(&self.pool)
        .await?
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
        let _w = self.writer.lock().await;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut stored = Vec::with_capacity(statuses.len());
        for s in statuses {
            // The join on deployer_id keeps a deployer from writing another's statuses.
            let done = sqlx::query(
                "INSERT INTO deployment_status (deployment_id, phase, ready_replicas, \
                 available_replicas, updated_replicas, applied_revision, endpoint, last_error, updated_at) \
                 SELECT id, ?, ?, ?, ?, ?, ?, ?, ? FROM deployments WHERE id = ? AND deployer_id = ? \
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
        tx.commit().await?;
        for id in &stored {
            self.hub.touch(id);
        }
        Ok(stored)
    }

    async fn get_status(&self, deployment_id: &str) -> Result<Option<StatusRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM deployment_status WHERE deployment_id = ?")
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
