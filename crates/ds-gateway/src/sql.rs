//! The store written once for both back ends: every [`Store`] and [`InstallCodes`]
//! operation over any `sqlx` database, with the few differences (transaction modes, the
//! batch insert, how changes reach other replicas) left to a small [`Backend`].
//!
//! The statements are the same text on SQLite and PostgreSQL: `$N` placeholders (SQLite
//! reads them as numbered parameters), `CAST(… AS TEXT)` for a parameter that may be
//! NULL, and the `ON CONFLICT` and `RETURNING` clauses both dialects share.

use super::audit::{self, deployer_json, deployment_json, deployment_object, stage_json};
use super::group_commit::{CommitBatch, GroupCommit};
use super::install::{InstallCodes, InstallOptions, KEEP_EXPIRED, RedeemError};
use super::rows::{
    StoreRow, api_key_from_row, audit_from_row, deploy_by_from, deployer_from_row,
    deployment_from_row, encode_pods, grant_from_row, hook_from_row, hook_run_from_row,
    is_foreign_key_violation, is_unique_violation, key_from_row, now_ms, remap_from, remap_json,
    remapped_json, retryable, revision_from_row, spec_json, status_from_row, to_i64, to_u64,
    token_from_row, ts, user_from_row,
};
use super::store::{
    AgentHeartbeat, ApiKeyRecord, AuditEvent, AuditQuery, AuditRecord, Change, ChangeBy, ChangeHub,
    DEFAULT_REVISION_HISTORY, DeployBy, DeployerRecord, DeployerUpdate, DeploymentKey,
    DeploymentRecord, DeploymentSelector, GrantRecord, GroupRecord, HookRecord, HookRunRecord,
    HookTarget, KeyOwner, NewHook, Outcome, RevisionRecord, Role, SnapshotItem, StagePlace,
    StageRecord, StatusRecord, Store, StoreError, TokenRecord, UserKind, UserRecord,
};
use chrono::{DateTime, Utc};
use ds_core::DeploymentSpec;
use serde_json::json;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Transaction, Type,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

// === the statements ===

const DEPLOYMENT_COLUMNS: &str =
    "id, deployer_id, name, namespace, spec, revision, created_at, updated_at";
/// A deployer with its deployment count `n`, as [`deployer_from_row`] reads it.
const SELECT_DEPLOYER: &str = "SELECT d.*, \
     (SELECT COUNT(*) FROM deployments x WHERE x.deployer_id = d.id) AS n FROM deployers d";
const INSERT_TOKEN: &str =
    "INSERT INTO tokens (id, deployer_id, hash, created_at) VALUES ($1, $2, $3, $4)";
pub(super) const SELECT_REVISION: &str = "SELECT revision FROM deployers WHERE id = $1";
/// Writes back a revision a batch advanced.
pub(super) const SET_REVISION: &str = "UPDATE deployers SET revision = $1 WHERE id = $2";
/// Records a revision of a deployment's spec.
pub(super) const INSERT_REVISION: &str = "INSERT INTO deployment_revisions \
     (deployment_id, number, deployer_revision, spec, actor, note, created_at, remapped) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Writes one audit row.
pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit_log \
     (at, actor, action, object_kind, object, deployer_id, before, after, request_id, outcome, reason) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// Writes the audit row of `event`, made `by`, in `tx`: the transaction of the change
/// itself, so that a change and its row commit or fail together.
pub(super) async fn write_audit<DB>(
    tx: &mut Transaction<'static, DB>,
    by: &ChangeBy,
    event: &AuditEvent,
    outcome: Outcome,
    reason: &str,
) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> Option<&'a str>: Encode<'a, DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
{
    let before = event.before.as_ref().map(ToString::to_string);
    let after = event.after.as_ref().map(ToString::to_string);
    sqlx::query(INSERT_AUDIT)
        .bind(now_ms())
        .bind(by.actor.as_str())
        .bind(event.action.as_str())
        .bind(event.object_kind.as_str())
        .bind(event.object.as_str())
        .bind(event.deployer_id.as_deref())
        .bind(before.as_deref())
        .bind(after.as_deref())
        .bind(by.request_id.as_str())
        .bind(outcome.as_str())
        .bind(reason)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The phases a revision can be said to have reached: Available and Failed.
const FINAL_PHASES: [i32; 2] = [
    ds_core::proto::Phase::Available as i32,
    ds_core::proto::Phase::Failed as i32,
];

fn deployment_sql(rest: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments {rest}"
    ))
}

// === the back end's part ===

/// What differs between the back ends; everything else is in [`SqlStore`].
#[async_trait::async_trait]
pub trait Backend: CommitBatch + Send + Sync + std::fmt::Debug + 'static {
    type Db: Database;
    /// Whether every write takes the store's writer lock: SQLite has one writer anyway,
    /// and publishing under the lock keeps each deployer's changes in revision order.
    /// PostgreSQL orders the writers of a deployer by its row lock instead.
    const SERIAL_WRITES: bool;
    /// How a snapshot's read transaction begins: one state for the revision and rows.
    const BEGIN_SNAPSHOT: &'static str;
    /// Locks the gateway admins' rows in a transaction that removes an admin or an
    /// admin's key, so that two such removals (on two replicas) cannot each count the
    /// other's admin as the one left; `None` where writes are serial anyway.
    const LOCK_ADMINS: Option<&'static str>;

    fn pool(&self) -> &Pool<Self::Db>;
    fn hub(&self) -> &ChangeHub;
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;
    /// Records a change in the transaction that makes it, for other replicas to read.
    async fn log_change(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        deployer_id: &str,
        change: &Change,
    ) -> Result<(), StoreError>;
    /// Announces stored statuses in their transaction, for other replicas' watchers.
    async fn log_statuses(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        ids: &[String],
    ) -> Result<(), StoreError>;
    /// Stops what the back end runs in the background and closes the pool.
    async fn close(&self);
}

/// A [`Store`] on one database of back end `B`.
#[derive(Debug)]
pub struct SqlStore<B> {
    backend: B,
    /// Held while a batch of creates commits, and by every write when
    /// [`Backend::SERIAL_WRITES`].
    writer: tokio::sync::Mutex<()>,
    creates: GroupCommit,
    /// Revisions kept per deployment.
    revision_history: AtomicU32,
}

impl<B: Backend> SqlStore<B> {
    pub(super) fn new(backend: B) -> Self {
        Self {
            backend,
            writer: tokio::sync::Mutex::new(()),
            creates: GroupCommit::default(),
            revision_history: AtomicU32::new(DEFAULT_REVISION_HISTORY),
        }
    }

    /// Closes the store: background tasks end, the connection pool closes.
    pub async fn close(&self) {
        self.backend.close().await;
    }

    /// The writer lock when this back end serializes writes.
    async fn serial(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if B::SERIAL_WRITES {
            Some(self.writer.lock().await)
        } else {
            None
        }
    }
}

// The column and value types the statements use, for the database of `B`. Repeated on
// each impl block below: Rust does not carry such bounds over from a trait.
impl<B> SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    <B::Db as Database>::Arguments: IntoArguments<B::Db>,
    for<'a> &'a str: Encode<'a, B::Db> + Type<B::Db> + ColumnIndex<<B::Db as Database>::Row>,
    for<'a> &'a [u8]: Encode<'a, B::Db> + Type<B::Db>,
    for<'a> Option<&'a str>: Encode<'a, B::Db>,
    i64: for<'a> Encode<'a, B::Db> + for<'r> Decode<'r, B::Db> + Type<B::Db>,
    String: for<'r> Decode<'r, B::Db> + Type<B::Db>,
    Vec<u8>: for<'r> Decode<'r, B::Db> + Type<B::Db>,
{
    fn pool(&self) -> &Pool<B::Db> {
        self.backend.pool()
    }

    /// Writes the audit row of a change made `by` in its transaction `tx`.
    async fn audit(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        by: &ChangeBy,
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        write_audit(tx, by, &event, Outcome::Ok, &by.note).await
    }

    /// The name of stage `stage` (empty: the first one) if it exists.
    async fn existing_stage(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        stage: &str,
    ) -> Result<String, StoreError> {
        let row = if stage.is_empty() {
            sqlx::query("SELECT name FROM stages ORDER BY position, name LIMIT 1")
                .fetch_optional(&mut **tx)
                .await?
        } else {
            sqlx::query("SELECT name FROM stages WHERE name = $1")
                .bind(stage)
                .fetch_optional(&mut **tx)
                .await?
        };
        match row {
            Some(row) => Ok(row.text("name")?),
            None => Err(StoreError::NotFound(format!("stage {stage}"))),
        }
    }

    /// A stage with its deployers, read in `tx`.
    async fn stage_in(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        name: &str,
    ) -> Result<StageRecord, StoreError> {
        let row = sqlx::query("SELECT name, position, deploy_by FROM stages WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("stage {name}")))?;
        let deployers = sqlx::query("SELECT name FROM deployers WHERE stage = $1 ORDER BY name")
            .bind(name)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| r.text("name"))
            .collect::<Result<_, _>>()?;
        Ok(StageRecord {
            name: row.text("name")?,
            position: row.int("position")?,
            deploy_by: deploy_by_from(&row.text("deploy_by")?)?,
            deployers,
        })
    }

    async fn try_update_deployer(
        &self,
        by: &ChangeBy,
        id: &str,
        update: &DeployerUpdate,
    ) -> Result<(), StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query("SELECT name, stage, remap FROM deployers WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployer {id}")))?;
        let (name, current) = (row.text("name")?, row.text("stage")?);
        if let Some(edit) = &update.remap {
            // Edited here, on the map as this transaction reads it: two admins' edits
            // of one deployer both count.
            let before = remap_from(&row.text("remap")?)?;
            let after = edit.apply_to(&before);
            ds_core::remap::validate(&after)?;
            if after != before {
                sqlx::query("UPDATE deployers SET remap = $1 WHERE id = $2")
                    .bind(remap_json(&after)?.as_str())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let event = AuditEvent::new("deployer.remap", audit::DEPLOYER, name.as_str())
                    .of_deployer(id)
                    .before(json!({ "remap": before }))
                    .after(json!({ "remap": after }));
                self.audit(&mut tx, by, event).await?;
            }
        }
        if let Some(stage) = &update.stage {
            let stage = self.existing_stage(&mut tx, stage).await?;
            if stage != current {
                let moved = sqlx::query("UPDATE deployers SET stage = $1 WHERE id = $2")
                    .bind(stage.as_str())
                    .bind(id)
                    .execute(&mut *tx)
                    .await;
                match moved {
                    // PostgreSQL's foreign key: the stage was removed meanwhile.
                    Err(e) if is_foreign_key_violation(&e) => {
                        return Err(StoreError::NotFound(format!("stage {stage}")));
                    }
                    other => other?,
                };
                let event = AuditEvent::new("deployer.update", audit::DEPLOYER, name.as_str())
                    .of_deployer(id)
                    .before(json!({ "stage": current }))
                    .after(json!({ "stage": stage }));
                self.audit(&mut tx, by, event).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn try_create_stage(
        &self,
        by: &ChangeBy,
        name: &str,
        place: &StagePlace,
        deploy_by: DeployBy,
    ) -> Result<StageRecord, StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let taken = sqlx::query("SELECT name FROM stages WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::AlreadyExists(format!("stage {name}")));
        }
        let last = sqlx::query("SELECT COALESCE(MAX(position), 0) AS p FROM stages")
            .fetch_one(&mut *tx)
            .await?
            .int("p")?;
        // The position it takes; the stages from there on move down one.
        let position = match place {
            StagePlace::Last => None,
            StagePlace::After(after) => {
                let row = sqlx::query("SELECT position FROM stages WHERE name = $1")
                    .bind(after.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("stage {after}")))?;
                Some(row.int("position")? + 1)
            }
            StagePlace::At(n) => {
                sqlx::query("SELECT position FROM stages ORDER BY position, name LIMIT 1 OFFSET $1")
                    .bind(i64::from(n.saturating_sub(1)))
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| row.int("position"))
                    .transpose()?
            }
        };
        let position = match position {
            Some(p) if p <= last => {
                sqlx::query("UPDATE stages SET position = position + 1 WHERE position >= $1")
                    .bind(p)
                    .execute(&mut *tx)
                    .await?;
                p
            }
            _ => last + 1,
        };
        let inserted =
            sqlx::query("INSERT INTO stages (name, position, deploy_by) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(position)
                .bind(deploy_by.as_str())
                .execute(&mut *tx)
                .await;
        match inserted {
            // Created meanwhile by another replica.
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!("stage {name}")));
            }
            other => other?,
        };
        let stage = self.stage_in(&mut tx, name).await?;
        let event = AuditEvent::new("stage.create", audit::STAGE, name).after(stage_json(&stage));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(stage)
    }

    async fn try_delete_stage(&self, by: &ChangeBy, name: &str) -> Result<(), StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let stage = self.stage_in(&mut tx, name).await?;
        if !stage.deployers.is_empty() {
            return Err(StoreError::InUse(format!(
                "stage {name} has deployers: {}; move them to another stage first (`ds deployer update NAME --stage OTHER`)",
                stage.deployers.join(", ")
            )));
        }
        let count = sqlx::query("SELECT COUNT(*) AS n FROM stages")
            .fetch_one(&mut *tx)
            .await?
            .int("n")?;
        if count <= 1 {
            return Err(StoreError::InUse(format!(
                "stage {name} is the only stage: every deployer needs one; create another first"
            )));
        }
        let deleted = sqlx::query("DELETE FROM stages WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await;
        match deleted {
            // PostgreSQL's foreign key: a deployer moved in meanwhile, on another replica.
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::InUse(format!(
                    "stage {name} has deployers; move them to another stage first"
                )));
            }
            other => other?,
        };
        let event = AuditEvent::new("stage.delete", audit::STAGE, name).before(stage_json(&stage));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn try_rename_stage(
        &self,
        by: &ChangeBy,
        name: &str,
        new_name: &str,
    ) -> Result<StageRecord, StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let before = self.stage_in(&mut tx, name).await?;
        if name == new_name {
            return Ok(before);
        }
        let taken = sqlx::query("SELECT name FROM stages WHERE name = $1")
            .bind(new_name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::AlreadyExists(format!("stage {new_name}")));
        }
        let renamed = sqlx::query("UPDATE stages SET name = $1 WHERE name = $2")
            .bind(new_name)
            .bind(name)
            .execute(&mut *tx)
            .await;
        match renamed {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!("stage {new_name}")));
            }
            other => other?,
        };
        // PostgreSQL's foreign key moved them already (ON UPDATE CASCADE); SQLite has none.
        sqlx::query("UPDATE deployers SET stage = $1 WHERE stage = $2")
            .bind(new_name)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let after = self.stage_in(&mut tx, new_name).await?;
        let event = AuditEvent::new("stage.rename", audit::STAGE, new_name)
            .before(stage_json(&before))
            .after(stage_json(&after));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn try_update_stage(
        &self,
        by: &ChangeBy,
        name: &str,
        deploy_by: DeployBy,
    ) -> Result<StageRecord, StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let before = self.stage_in(&mut tx, name).await?;
        if before.deploy_by == deploy_by {
            return Ok(before);
        }
        sqlx::query("UPDATE stages SET deploy_by = $1 WHERE name = $2")
            .bind(deploy_by.as_str())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let after = StageRecord {
            deploy_by,
            ..before.clone()
        };
        let event = AuditEvent::new("stage.update", audit::STAGE, name)
            .before(stage_json(&before))
            .after(stage_json(&after));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Starts a change of deployment `id`: a transaction in which the revision of its
    /// deployer is bumped already, that deployer and the new revision. One statement
    /// finds the deployer and bumps it, so on PostgreSQL the deployer's row is locked
    /// before the deployment's, the order every writer locks in, and the lock orders the
    /// deployer's writers until the commit.
    async fn begin_change(
        &self,
        id: &str,
    ) -> Result<(String, Transaction<'static, B::Db>, u64), StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "UPDATE deployers SET revision = revision + 1 \
             WHERE id = (SELECT deployer_id FROM deployments WHERE id = $1) \
             RETURNING id, revision",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        Ok((row.text("id")?, tx, to_u64(row.int("revision")?)))
    }

    /// Logs `change` in `tx`, commits, and only then publishes it: watchers see durable
    /// changes only.
    async fn commit_change(
        &self,
        mut tx: Transaction<'static, B::Db>,
        deployer_id: &str,
        change: Change,
    ) -> Result<(), StoreError> {
        self.backend
            .log_change(&mut tx, deployer_id, &change)
            .await?;
        tx.commit().await?;
        self.backend.publish(deployer_id, change).await;
        Ok(())
    }

    /// A user with its groups, in `tx`; `None` when there is none.
    async fn user_in(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        name: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(None);
        };
        let mut user = user_from_row(&row)?;
        let groups = sqlx::query(
            "SELECT group_name FROM group_members WHERE user_name = $1 ORDER BY group_name",
        )
        .bind(name)
        .fetch_all(&mut **tx)
        .await?;
        user.groups = groups
            .iter()
            .map(|r| r.text("group_name"))
            .collect::<Result<_, _>>()?;
        Ok(Some(user))
    }

    /// `NotFound` unless group `name` exists.
    async fn group_exists(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        name: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT name FROM user_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .map(|_| ())
            .ok_or_else(|| StoreError::NotFound(format!("group {name}")))
    }

    /// A group with its members, in `tx`.
    async fn group_in(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        name: &str,
    ) -> Result<GroupRecord, StoreError> {
        let row = sqlx::query("SELECT name, created_at FROM user_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("group {name}")))?;
        let members = sqlx::query(
            "SELECT user_name FROM group_members WHERE group_name = $1 ORDER BY user_name",
        )
        .bind(name)
        .fetch_all(&mut **tx)
        .await?;
        Ok(GroupRecord {
            name: row.text("name")?,
            created_at: ts(row.int("created_at")?),
            members: members
                .iter()
                .map(|r| r.text("user_name"))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Takes [`Backend::LOCK_ADMINS`] in `tx`.
    async fn lock_admins(&self, tx: &mut Transaction<'static, B::Db>) -> Result<(), StoreError> {
        if let Some(sql) = B::LOCK_ADMINS {
            sqlx::query(sql).fetch_all(&mut **tx).await?;
        }
        Ok(())
    }

    /// How many unexpired API keys gateway admins hold, leaving out user `but_user`'s and
    /// key `but_key` (either may be empty): whether someone could still manage the gateway.
    async fn other_admin_keys(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        but_user: &str,
        but_key: &str,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM api_keys k JOIN users u ON u.name = k.user_name \
             WHERE u.admin <> 0 AND u.name <> $1 AND k.id <> $2 \
             AND (k.expires_at IS NULL OR k.expires_at > $3)",
        )
        .bind(but_user)
        .bind(but_key)
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.int("n")?)
    }

    async fn try_update_deployment(
        &self,
        by: &ChangeBy,
        id: &str,
        expected_revision: u64,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError> {
        let json = spec_json(spec)?;
        let _w = self.serial().await;
        let (deployer_id, mut tx, revision) = self.begin_change(id).await?;
        let current = sqlx::query(deployment_sql("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        let mut record = deployment_from_row(&current)?;
        if record.revision != expected_revision {
            return Err(StoreError::Conflict(format!("deployment {id}")));
        }
        let before = deployment_json(&record);
        let now = now_ms();
        sqlx::query(
            "UPDATE deployments SET spec = $1, revision = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(json.as_str())
        .bind(to_i64(revision))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let number = sqlx::query(
            "SELECT COALESCE(MAX(number), 0) AS n FROM deployment_revisions WHERE deployment_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .int("n")?
            + 1;
        sqlx::query(INSERT_REVISION)
            .bind(id)
            .bind(number)
            .bind(to_i64(revision))
            .bind(json.as_str())
            .bind(by.actor.as_str())
            .bind(by.note.as_str())
            .bind(now)
            .bind(remapped_json(&by.remapped)?.as_str())
            .execute(&mut *tx)
            .await?;
        let keep = i64::from(self.revision_history.load(Ordering::Relaxed).max(1));
        sqlx::query("DELETE FROM deployment_revisions WHERE deployment_id = $1 AND number <= $2")
            .bind(id)
            .bind(number - keep)
            .execute(&mut *tx)
            .await?;
        record.spec = spec.clone();
        record.revision = revision;
        record.updated_at = ts(now);
        let event = AuditEvent::new(
            by.action_or("deployment.update"),
            audit::DEPLOYMENT,
            deployment_object(&record),
        )
        .of_deployer(&deployer_id)
        .before(before)
        .after(deployment_json(&record));
        self.audit(&mut tx, by, event).await?;
        let change = Change::Upsert(Arc::new(record.clone()));
        self.commit_change(tx, &deployer_id, change).await?;
        Ok(record)
    }

    async fn try_delete_deployment(
        &self,
        by: &ChangeBy,
        id: &str,
    ) -> Result<(DeploymentRecord, u64), StoreError> {
        let _w = self.serial().await;
        let (deployer_id, mut tx, revision) = self.begin_change(id).await?;
        let sql = format!("DELETE FROM deployments WHERE id = $1 RETURNING {DEPLOYMENT_COLUMNS}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        let record = deployment_from_row(&row)?;
        let event = AuditEvent::new(
            by.action_or("deployment.delete"),
            audit::DEPLOYMENT,
            deployment_object(&record),
        )
        .of_deployer(&deployer_id)
        .before(deployment_json(&record));
        self.audit(&mut tx, by, event).await?;
        let change = Change::Removal {
            revision,
            id: record.id.clone(),
            namespace: record.namespace.clone(),
            name: record.name.clone(),
        };
        self.commit_change(tx, &deployer_id, change).await?;
        Ok((record, revision))
    }

    /// Deletes a deployer; with `revision`, only while it is still at that revision.
    async fn try_delete_deployer(
        &self,
        by: &ChangeBy,
        id: &str,
        revision: Option<u64>,
    ) -> Result<(), StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let count = sqlx::query("SELECT COUNT(*) AS n FROM deployments WHERE deployer_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .int("n")?;
        let done =
            match revision {
                None => {
                    sqlx::query("DELETE FROM deployers WHERE id = $1 RETURNING name, stage")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?
                }
                Some(revision) => sqlx::query(
                    "DELETE FROM deployers WHERE id = $1 AND revision = $2 RETURNING name, stage",
                )
                .bind(id)
                .bind(to_i64(revision))
                .fetch_optional(&mut *tx)
                .await?,
            };
        let Some(done) = done else {
            let exists = sqlx::query(SELECT_REVISION)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            return Err(if exists {
                StoreError::Conflict(format!("deployer {id}"))
            } else {
                StoreError::NotFound(format!("deployer {id}"))
            });
        };
        let name = done.text("name")?;
        let mut before = deployer_json(id, &name, &done.text("stage")?);
        before["deployments"] = json!(count);
        let event = AuditEvent::new("deployer.delete", audit::DEPLOYER, name)
            .of_deployer(id)
            .before(before);
        self.audit(&mut tx, by, event).await?;
        self.commit_change(tx, id, Change::DeployerDeleted).await
    }

    async fn try_record_heartbeat(
        &self,
        deployer_id: &str,
        agent: &AgentHeartbeat,
    ) -> Result<u64, StoreError> {
        let _w = self.serial().await;
        // A report without an object count keeps the stored one.
        let sql = if agent.objects.is_some() {
            "UPDATE deployers SET agent_version = $1, cluster = $2, instance = $3, \
             agent_namespaces = $4, last_seen = $5, objects_revision = $7, objects_owned = $8 \
             WHERE id = $6 RETURNING revision"
        } else {
            "UPDATE deployers SET agent_version = $1, cluster = $2, instance = $3, \
             agent_namespaces = $4, last_seen = $5 WHERE id = $6 RETURNING revision"
        };
        let mut query = sqlx::query(sql)
            .bind(agent.version.as_str())
            .bind(agent.cluster.as_str())
            .bind(agent.instance.as_str())
            .bind(agent.namespaces.join(",").as_str())
            .bind(now_ms())
            .bind(deployer_id);
        if let Some(objects) = agent.objects {
            query = query
                .bind(to_i64(objects.revision))
                .bind(i64::from(objects.owned));
        }
        let row = query
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployer {deployer_id}")))?;
        Ok(to_u64(row.int("revision")?))
    }

    async fn try_put_statuses(
        &self,
        deployer_id: &str,
        statuses: &[StatusRecord],
    ) -> Result<Vec<String>, StoreError> {
        let _w = self.serial().await;
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let mut stored = Vec::with_capacity(statuses.len());
        for s in statuses {
            let pods = encode_pods(&s.pods);
            // The join on deployer_id keeps a deployer from writing another's statuses.
            let done = sqlx::query(
                "INSERT INTO deployment_status (deployment_id, phase, ready_replicas, \
                 available_replicas, updated_replicas, applied_revision, endpoint, last_error, updated_at, \
                 reason, pods) \
                 SELECT id, $1, $2, $3, $4, $5, $6, $7, $8, $11, $12 FROM deployments WHERE id = $9 AND deployer_id = $10 \
                 ON CONFLICT (deployment_id) DO UPDATE SET phase = excluded.phase, \
                 ready_replicas = excluded.ready_replicas, available_replicas = excluded.available_replicas, \
                 updated_replicas = excluded.updated_replicas, applied_revision = excluded.applied_revision, \
                 endpoint = excluded.endpoint, last_error = excluded.last_error, updated_at = excluded.updated_at, \
                 reason = excluded.reason, pods = excluded.pods",
            )
            .bind(i64::from(s.phase))
            .bind(i64::from(s.ready_replicas))
            .bind(i64::from(s.available_replicas))
            .bind(i64::from(s.updated_replicas))
            .bind(to_i64(s.applied_revision))
            .bind(s.endpoint.as_str())
            .bind(s.last_error.as_str())
            .bind(now)
            .bind(s.deployment_id.as_str())
            .bind(deployer_id)
            .bind(s.reason.as_str())
            .bind(&pods[..])
            .execute(&mut *tx)
            .await?;
            if B::rows_affected(&done) > 0 {
                stored.push(s.deployment_id.clone());
                if FINAL_PHASES.contains(&s.phase) {
                    // The first final status at a revision is what that revision reached.
                    sqlx::query(
                        "UPDATE deployment_revisions SET phase = $1 \
                         WHERE deployment_id = $2 AND deployer_revision = $3 AND phase IS NULL",
                    )
                    .bind(i64::from(s.phase))
                    .bind(s.deployment_id.as_str())
                    .bind(to_i64(s.applied_revision))
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        self.backend.log_statuses(&mut tx, &stored).await?;
        tx.commit().await?;
        for id in &stored {
            self.backend.hub().touch(id);
        }
        Ok(stored)
    }
}

// === impl Store for SqlStore ===

#[async_trait::async_trait]
impl<B> Store for SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    <B::Db as Database>::Arguments: IntoArguments<B::Db>,
    for<'a> &'a str: Encode<'a, B::Db> + Type<B::Db> + ColumnIndex<<B::Db as Database>::Row>,
    for<'a> &'a [u8]: Encode<'a, B::Db> + Type<B::Db>,
    for<'a> Option<&'a str>: Encode<'a, B::Db>,
    i64: for<'a> Encode<'a, B::Db> + for<'r> Decode<'r, B::Db> + Type<B::Db>,
    String: for<'r> Decode<'r, B::Db> + Type<B::Db>,
    Vec<u8>: for<'r> Decode<'r, B::Db> + Type<B::Db>,
{
    fn hub(&self) -> &ChangeHub {
        self.backend.hub()
    }

    async fn create_deployer_by(
        &self,
        by: &ChangeBy,
        name: &str,
        stage: &str,
        token_id: &str,
        token_hash: [u8; 32],
    ) -> Result<DeployerRecord, StoreError> {
        let _w = self.serial().await;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let stage = self.existing_stage(&mut tx, stage).await?;
        // DO NOTHING rather than a unique violation: PostgreSQL would abort the
        // transaction on one, and the name is the only identity that can be taken.
        let inserted = sqlx::query(
            "INSERT INTO deployers (id, name, created_at, stage) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(now)
        .bind(stage.as_str())
        .fetch_optional(&mut *tx)
        .await;
        let inserted = match inserted {
            // PostgreSQL's foreign key: the stage was removed meanwhile.
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::NotFound(format!("stage {stage}")));
            }
            other => other?,
        };
        if inserted.is_none() {
            return Err(StoreError::AlreadyExists(format!("deployer {name}")));
        }
        sqlx::query(INSERT_TOKEN)
            .bind(token_id)
            .bind(id.as_str())
            .bind(&token_hash[..])
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let mut after = deployer_json(&id, name, &stage);
        after["token_id"] = json!(token_id);
        let event = AuditEvent::new("deployer.create", audit::DEPLOYER, name)
            .of_deployer(&id)
            .after(after);
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(DeployerRecord::registered(id, name, &stage, ts(now)))
    }

    async fn update_deployer(
        &self,
        by: &ChangeBy,
        id: &str,
        update: &DeployerUpdate,
    ) -> Result<DeployerRecord, StoreError> {
        self.try_update_deployer(by, id, update)
            .await
            .map_err(retryable(&format!("deployer {id}")))?;
        self.get_deployer(id).await
    }

    async fn list_deployers(&self) -> Result<Vec<DeployerRecord>, StoreError> {
        let sql = format!("{SELECT_DEPLOYER} ORDER BY d.name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(deployer_from_row).collect()
    }

    async fn get_deployer(&self, id_or_name: &str) -> Result<DeployerRecord, StoreError> {
        let sql = format!(
            "{SELECT_DEPLOYER} WHERE d.id = $1 OR d.name = $1 ORDER BY d.id = $1 DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id_or_name)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployer {id_or_name}")))?;
        deployer_from_row(&row)
    }

    async fn resolve_deployer(&self, id_or_name: &str) -> Result<(String, String), StoreError> {
        let row = sqlx::query(
            "SELECT id, name FROM deployers WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1",
        )
        .bind(id_or_name)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployer {id_or_name}")))?;
        Ok((row.text("id")?, row.text("name")?))
    }

    async fn delete_deployer(&self, by: &ChangeBy, id: &str) -> Result<(), StoreError> {
        self.try_delete_deployer(by, id, None)
            .await
            .map_err(retryable(&format!("deployer {id}")))
    }

    async fn delete_deployer_at(
        &self,
        by: &ChangeBy,
        id: &str,
        revision: u64,
    ) -> Result<(), StoreError> {
        self.try_delete_deployer(by, id, Some(revision))
            .await
            .map_err(retryable(&format!("deployer {id}")))
    }

    async fn rotate_token(
        &self,
        by: &ChangeBy,
        deployer_id: &str,
        token_id: &str,
        token_hash: [u8; 32],
        old_expire: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _w = self.serial().await;
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
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
        let inserted = sqlx::query(INSERT_TOKEN)
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
        let name = sqlx::query("SELECT name FROM deployers WHERE id = $1")
            .bind(deployer_id)
            .fetch_one(&mut *tx)
            .await?
            .text("name")?;
        let event = AuditEvent::new("deployer.rotate-token", audit::DEPLOYER, name)
            .of_deployer(deployer_id)
            .after(json!({
                "token_id": token_id,
                "previous_tokens_expire_at": super::convert::rfc3339(old_expire),
            }));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_token(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT deployer_id, hash, expires_at FROM tokens WHERE id = $1")
            .bind(token_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn has_api_key(&self) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
            .fetch_one(self.pool())
            .await?;
        Ok(row.int("n")? > 0)
    }

    async fn add_api_key(
        &self,
        by: &ChangeBy,
        key_id: &str,
        hash: [u8; 32],
    ) -> Result<(), StoreError> {
        let _w = self.serial().await;
        // The built-in admin, made by the migration, owns the bootstrap key.
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO api_keys (id, hash, created_at, user_name) VALUES ($1, $2, $3, 'admin')",
        )
        .bind(key_id)
        .bind(&hash[..])
        .bind(now_ms())
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!("API key {key_id}")));
            }
            other => other?,
        };
        let event = AuditEvent::new("api-key.create", audit::API_KEY, key_id)
            .after(json!({ "id": key_id }));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT hash, expires_at FROM api_keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn create_user(
        &self,
        by: &ChangeBy,
        name: &str,
        kind: UserKind,
        admin: bool,
    ) -> Result<UserRecord, StoreError> {
        let _w = self.serial().await;
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        // DO NOTHING rather than a unique violation: PostgreSQL would abort on one.
        let inserted = sqlx::query(
            "INSERT INTO users (name, kind, admin, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING RETURNING name",
        )
        .bind(name)
        .bind(kind.as_str())
        .bind(i64::from(admin))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            return Err(StoreError::AlreadyExists(format!("user {name}")));
        }
        let event = AuditEvent::new("user.create", audit::USER, name)
            .after(serde_json::json!({"name": name, "kind": kind.as_str(), "admin": admin}));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(UserRecord {
            name: name.to_string(),
            kind,
            admin,
            created_at: ts(now),
            groups: Vec::new(),
        })
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query("SELECT * FROM users ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        let members = sqlx::query(
            "SELECT group_name, user_name FROM group_members ORDER BY user_name, group_name",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for m in &members {
            groups
                .entry(m.text("user_name")?)
                .or_default()
                .push(m.text("group_name")?);
        }
        rows.iter()
            .map(|r| {
                let mut user = user_from_row(r)?;
                user.groups = groups.remove(&user.name).unwrap_or_default();
                Ok(user)
            })
            .collect()
    }

    async fn get_user(&self, name: &str) -> Result<UserRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        let user = self.user_in(&mut tx, name).await?;
        tx.commit().await?;
        user.ok_or_else(|| StoreError::NotFound(format!("user {name}")))
    }

    async fn delete_user(&self, by: &ChangeBy, name: &str) -> Result<(), StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        self.lock_admins(&mut tx).await?;
        let row = sqlx::query("SELECT admin FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {name}")))?;
        if row.int("admin")? != 0 && self.other_admin_keys(&mut tx, name, "").await? == 0 {
            return Err(StoreError::Refused(format!(
                "user {name} is the last gateway admin with a valid API key: make another user admin and give it a key first (`ds user create NAME --admin`, `ds apikey create --user NAME`)"
            )));
        }
        sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let event = AuditEvent::new("user.delete", audit::USER, name)
            .before(serde_json::json!({"name": name, "admin": row.int("admin")? != 0}));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_api_key(
        &self,
        by: &ChangeBy,
        key_id: &str,
        hash: [u8; 32],
        user: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<ApiKeyRecord, StoreError> {
        let _w = self.serial().await;
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let exists = sqlx::query("SELECT name FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        let inserted = sqlx::query(
            "INSERT INTO api_keys (id, hash, created_at, user_name, expires_at) \
             VALUES ($1, $2, $3, $4, NULLIF($5, -1)) ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(key_id)
        .bind(&hash[..])
        .bind(now)
        .bind(user)
        // -1 for "never" (NULL): an optional integer has no encoding in these bounds.
        .bind(expires_at.map_or(-1, |t| t.timestamp_millis()))
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            return Err(StoreError::AlreadyExists(format!("API key {key_id}")));
        }
        // The key by its public ID only: never its secret or hash.
        let event = AuditEvent::new("api-key.create", audit::API_KEY, key_id).after(
            serde_json::json!({"id": key_id, "user": user, "expires_at": expires_at.map(|t| t.to_rfc3339())}),
        );
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(ApiKeyRecord {
            id: key_id.to_string(),
            user: user.to_string(),
            created_at: ts(now),
            expires_at: expires_at.map(|t| ts(t.timestamp_millis())),
        })
    }

    async fn list_api_keys(&self, user: Option<&str>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_name, created_at, expires_at FROM api_keys \
             WHERE (CAST($1 AS TEXT) IS NULL OR user_name = $1) ORDER BY user_name, created_at, id",
        )
        .bind(user)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn find_key_owner(&self, key_id: &str) -> Result<Option<KeyOwner>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let Some(row) = sqlx::query(
            "SELECT id, user_name, created_at, expires_at, hash FROM api_keys WHERE id = $1",
        )
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let key = key_from_row(&row)?;
        let hash = api_key_from_row(&row)?.hash;
        let user = self.user_in(&mut tx, &key.user).await?;
        tx.commit().await?;
        // The foreign key deletes a user's keys with it: a key always has its user.
        let user =
            user.ok_or_else(|| StoreError::Corrupt(format!("API key {key_id} without its user")))?;
        Ok(Some(KeyOwner { key, hash, user }))
    }

    async fn delete_api_key(
        &self,
        by: &ChangeBy,
        key_id: &str,
    ) -> Result<ApiKeyRecord, StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        self.lock_admins(&mut tx).await?;
        let row = sqlx::query(
            "SELECT k.id, k.user_name, k.created_at, k.expires_at, u.admin \
             FROM api_keys k JOIN users u ON u.name = k.user_name WHERE k.id = $1",
        )
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("API key {key_id}")))?;
        let key = key_from_row(&row)?;
        if row.int("admin")? != 0 && self.other_admin_keys(&mut tx, "", key_id).await? == 0 {
            return Err(StoreError::Refused(format!(
                "API key {key_id} is the last valid key of a gateway admin: create another admin key first (`ds apikey create --user {}`)",
                key.user
            )));
        }
        sqlx::query("DELETE FROM api_keys WHERE id = $1")
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        let event = AuditEvent::new("api-key.delete", audit::API_KEY, key_id)
            .before(serde_json::json!({"id": key_id, "user": key.user}));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(key)
    }

    async fn create_group(&self, by: &ChangeBy, name: &str) -> Result<GroupRecord, StoreError> {
        let _w = self.serial().await;
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO user_groups (name, created_at) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING RETURNING name",
        )
        .bind(name)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            return Err(StoreError::AlreadyExists(format!("group {name}")));
        }
        let event = AuditEvent::new("group.create", audit::GROUP, name)
            .after(serde_json::json!({"name": name}));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(GroupRecord {
            name: name.to_string(),
            created_at: ts(now),
            members: Vec::new(),
        })
    }

    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query("SELECT name, created_at FROM user_groups ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        let members = sqlx::query(
            "SELECT group_name, user_name FROM group_members ORDER BY group_name, user_name",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut by_group: HashMap<String, Vec<String>> = HashMap::new();
        for m in &members {
            by_group
                .entry(m.text("group_name")?)
                .or_default()
                .push(m.text("user_name")?);
        }
        rows.iter()
            .map(|r| {
                let name = r.text("name")?;
                Ok(GroupRecord {
                    members: by_group.remove(&name).unwrap_or_default(),
                    name,
                    created_at: ts(r.int("created_at")?),
                })
            })
            .collect()
    }

    async fn delete_group(&self, by: &ChangeBy, name: &str) -> Result<(), StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("DELETE FROM user_groups WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if B::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound(format!("group {name}")));
        }
        let event = AuditEvent::new("group.delete", audit::GROUP, name)
            .before(serde_json::json!({"name": name}));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_group_member(
        &self,
        by: &ChangeBy,
        group: &str,
        user: &str,
    ) -> Result<GroupRecord, StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        self.group_exists(&mut tx, group).await?;
        if self.user_in(&mut tx, user).await?.is_none() {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        let inserted = sqlx::query(
            "INSERT INTO group_members (group_name, user_name) VALUES ($1, $2) \
             ON CONFLICT (group_name, user_name) DO NOTHING RETURNING user_name",
        )
        .bind(group)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            return Err(StoreError::AlreadyExists(format!(
                "membership of user {user} in group {group}"
            )));
        }
        let found = self.group_in(&mut tx, group).await?;
        let event = AuditEvent::new("group.add-member", audit::GROUP, group)
            .after(serde_json::json!({"group": group, "user": user}));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn remove_group_member(
        &self,
        by: &ChangeBy,
        group: &str,
        user: &str,
    ) -> Result<GroupRecord, StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        self.group_exists(&mut tx, group).await?;
        let done =
            sqlx::query("DELETE FROM group_members WHERE group_name = $1 AND user_name = $2")
                .bind(group)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        if B::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound(format!(
                "membership of user {user} in group {group}"
            )));
        }
        let found = self.group_in(&mut tx, group).await?;
        let event = AuditEvent::new("group.remove-member", audit::GROUP, group)
            .before(serde_json::json!({"group": group, "user": user}));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn grant_deployer(
        &self,
        by: &ChangeBy,
        deployer_id: &str,
        group: &str,
        role: Role,
    ) -> Result<(), StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let deployer = sqlx::query(SELECT_REVISION)
            .bind(deployer_id)
            .fetch_optional(&mut *tx)
            .await?;
        if deployer.is_none() {
            return Err(StoreError::NotFound(format!("deployer {deployer_id}")));
        }
        self.group_exists(&mut tx, group).await?;
        sqlx::query(
            "INSERT INTO deployer_grants (deployer_id, group_name, role) VALUES ($1, $2, $3) \
             ON CONFLICT (deployer_id, group_name) DO UPDATE SET role = excluded.role",
        )
        .bind(deployer_id)
        .bind(group)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
        let event = AuditEvent::new(
            "deployer.grant",
            audit::GRANT,
            format!("{deployer_id}/{group}"),
        )
        .of_deployer(deployer_id)
        .after(serde_json::json!({"group": group, "role": role.as_str()}));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_deployer(
        &self,
        by: &ChangeBy,
        deployer_id: &str,
        group: &str,
    ) -> Result<(), StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let done =
            sqlx::query("DELETE FROM deployer_grants WHERE deployer_id = $1 AND group_name = $2")
                .bind(deployer_id)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        if B::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound(format!(
                "grant of deployer {deployer_id} to group {group}"
            )));
        }
        let event = AuditEvent::new(
            "deployer.revoke",
            audit::GRANT,
            format!("{deployer_id}/{group}"),
        )
        .of_deployer(deployer_id)
        .before(serde_json::json!({"group": group}));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_grants(&self, deployer_id: Option<&str>) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT deployer_id, group_name, role FROM deployer_grants \
             WHERE (CAST($1 AS TEXT) IS NULL OR deployer_id = $1) ORDER BY deployer_id, group_name",
        )
        .bind(deployer_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(grant_from_row).collect()
    }

    async fn create_deployment_by(
        &self,
        by: &ChangeBy,
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
        self.creates
            .create(&self.writer, &self.backend, record, json, by.clone())
            .await
    }

    async fn update_deployment_by(
        &self,
        by: &ChangeBy,
        id: &str,
        expected_revision: u64,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError> {
        self.try_update_deployment(by, id, expected_revision, spec)
            .await
            .map_err(retryable(&format!("deployment {id}")))
    }

    async fn list_revisions(&self, deployment_id: &str) -> Result<Vec<RevisionRecord>, StoreError> {
        // One read: the deployment's existence and its revisions agree.
        let mut tx = self.pool().begin().await?;
        let exists = sqlx::query("SELECT id FROM deployments WHERE id = $1")
            .bind(deployment_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("deployment {deployment_id}")));
        }
        let rows = sqlx::query(
            "SELECT * FROM deployment_revisions WHERE deployment_id = $1 ORDER BY number",
        )
        .bind(deployment_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(revision_from_row).collect()
    }

    fn set_revision_history(&self, keep: u32) {
        self.revision_history.store(keep.max(1), Ordering::Relaxed);
    }

    async fn delete_deployment(
        &self,
        by: &ChangeBy,
        id: &str,
    ) -> Result<(DeploymentRecord, u64), StoreError> {
        self.try_delete_deployment(by, id)
            .await
            .map_err(retryable(&format!("deployment {id}")))
    }

    async fn get_deployment(&self, id: &str) -> Result<DeploymentRecord, StoreError> {
        let row = sqlx::query(deployment_sql("WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
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
        let rows = sqlx::query(deployment_sql(
            "WHERE name = $1 AND (CAST($2 AS TEXT) IS NULL OR deployer_id = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR namespace = $3) ORDER BY deployer_id, namespace",
        ))
        .bind(selector.deployment.as_str())
        .bind(selector.deployer_id.as_deref())
        .bind(selector.namespace.as_deref())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn list_deployments(
        &self,
        deployer_id: Option<&str>,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let rows = sqlx::query(deployment_sql(
            "WHERE (CAST($1 AS TEXT) IS NULL OR deployer_id = $1) \
             ORDER BY deployer_id, namespace, name",
        ))
        .bind(deployer_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn snapshot(
        &self,
        deployer_id: &str,
    ) -> Result<(u64, Vec<DeploymentRecord>), StoreError> {
        let mut tx = self.pool().begin_with(B::BEGIN_SNAPSHOT).await?;
        let row = sqlx::query(SELECT_REVISION)
            .bind(deployer_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployer {deployer_id}")))?;
        let revision = to_u64(row.int("revision")?);
        let rows = sqlx::query(deployment_sql(
            "WHERE deployer_id = $1 ORDER BY namespace, name",
        ))
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

    async fn list_deployments_page(
        &self,
        deployer_id: Option<&str>,
        after: Option<&DeploymentKey>,
        limit: u32,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        // One statement per case, each a range of the (deployer_id, namespace, name)
        // index with a row-value comparison: an `OR $n IS NULL` would make SQLite scan
        // and sort every row, large specs included, for each page.
        let limit = i64::from(limit);
        let query = match (deployer_id, after) {
            (None, None) => sqlx::query(deployment_sql(
                "ORDER BY deployer_id, namespace, name LIMIT $1",
            ))
            .bind(limit),
            (Some(deployer_id), None) => sqlx::query(deployment_sql(
                "WHERE deployer_id = $1 ORDER BY deployer_id, namespace, name LIMIT $2",
            ))
            .bind(deployer_id)
            .bind(limit),
            (None, Some(after)) => sqlx::query(deployment_sql(
                "WHERE (deployer_id, namespace, name) > ($1, $2, $3) \
                 ORDER BY deployer_id, namespace, name LIMIT $4",
            ))
            .bind(after.deployer_id.as_str())
            .bind(after.namespace.as_str())
            .bind(after.name.as_str())
            .bind(limit),
            (Some(deployer_id), Some(after)) => sqlx::query(deployment_sql(
                // `after` is of this deployer's list (the service checks it).
                "WHERE deployer_id = $1 AND (namespace, name) > ($2, $3) \
                 ORDER BY deployer_id, namespace, name LIMIT $4",
            ))
            .bind(deployer_id)
            .bind(after.namespace.as_str())
            .bind(after.name.as_str())
            .bind(limit),
        };
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn stream_snapshot(
        &self,
        deployer_id: &str,
        out: tokio::sync::mpsc::Sender<SnapshotItem>,
    ) -> Result<(), StoreError> {
        use futures::TryStreamExt;
        // One read transaction, as in `snapshot`: the revision and every row are of one
        // state, however long the client takes to read the pages.
        let mut tx = self.pool().begin_with(B::BEGIN_SNAPSHOT).await?;
        let row = sqlx::query(SELECT_REVISION)
            .bind(deployer_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployer {deployer_id}")))?;
        let revision = to_u64(row.int("revision")?);
        if out.send(SnapshotItem::Revision(revision)).await.is_err() {
            return Ok(());
        }
        {
            let mut rows = sqlx::query(deployment_sql(
                "WHERE deployer_id = $1 ORDER BY namespace, name",
            ))
            .bind(deployer_id)
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                let deployment = deployment_from_row(&row)?;
                if out
                    .send(SnapshotItem::Deployment(Box::new(deployment)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        tx.rollback().await?;
        Ok(())
    }

    async fn record_heartbeat(
        &self,
        deployer_id: &str,
        agent: &AgentHeartbeat,
    ) -> Result<u64, StoreError> {
        self.try_record_heartbeat(deployer_id, agent)
            .await
            .map_err(retryable(&format!("deployer {deployer_id}")))
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
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(status_from_row).transpose()
    }

    async fn list_statuses(&self) -> Result<HashMap<String, StatusRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM deployment_status")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| status_from_row(r).map(|s| (s.deployment_id.clone(), s)))
            .collect()
    }

    async fn list_stages(&self) -> Result<Vec<StageRecord>, StoreError> {
        // One read: the stages and their deployers agree.
        let mut tx = self.pool().begin().await?;
        let rows =
            sqlx::query("SELECT name, position, deploy_by FROM stages ORDER BY position, name")
                .fetch_all(&mut *tx)
                .await?;
        let members = sqlx::query("SELECT name, stage FROM deployers ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut stages = rows
            .iter()
            .map(|row| {
                Ok(StageRecord {
                    name: row.text("name")?,
                    position: row.int("position")?,
                    deploy_by: deploy_by_from(&row.text("deploy_by")?)?,
                    deployers: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        for row in &members {
            let stage = row.text("stage")?;
            if let Some(s) = stages.iter_mut().find(|s| s.name == stage) {
                s.deployers.push(row.text("name")?);
            }
        }
        Ok(stages)
    }

    async fn get_stage(&self, name: &str) -> Result<StageRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        let stage = self.stage_in(&mut tx, name).await;
        tx.commit().await?;
        stage
    }

    async fn create_stage(
        &self,
        by: &ChangeBy,
        name: &str,
        place: &StagePlace,
        deploy_by: DeployBy,
    ) -> Result<StageRecord, StoreError> {
        self.try_create_stage(by, name, place, deploy_by)
            .await
            .map_err(retryable(&format!("stage {name}")))
    }

    async fn delete_stage(&self, by: &ChangeBy, name: &str) -> Result<(), StoreError> {
        self.try_delete_stage(by, name)
            .await
            .map_err(retryable(&format!("stage {name}")))
    }

    async fn rename_stage(
        &self,
        by: &ChangeBy,
        name: &str,
        new_name: &str,
    ) -> Result<StageRecord, StoreError> {
        self.try_rename_stage(by, name, new_name)
            .await
            .map_err(retryable(&format!("stage {name}")))
    }

    async fn update_stage(
        &self,
        by: &ChangeBy,
        name: &str,
        deploy_by: DeployBy,
    ) -> Result<StageRecord, StoreError> {
        self.try_update_stage(by, name, deploy_by)
            .await
            .map_err(retryable(&format!("stage {name}")))
    }

    async fn create_hook(
        &self,
        by: &ChangeBy,
        deployer_id: &str,
        hook: &NewHook,
    ) -> Result<HookRecord, StoreError> {
        let _w = self.serial().await;
        let now = now_ms();
        let (command, url) = match &hook.target {
            HookTarget::Command(c) => (Some(c.as_str()), None),
            HookTarget::Url(u) => (None, Some(u.as_str())),
        };
        let mut tx = self.pool().begin().await?;
        let deployer = sqlx::query(SELECT_REVISION)
            .bind(deployer_id)
            .fetch_optional(&mut *tx)
            .await?;
        if deployer.is_none() {
            return Err(StoreError::NotFound(format!("deployer {deployer_id}")));
        }
        let row = sqlx::query(
            "INSERT INTO hooks (deployer_id, phase, command, url, timeout_ms, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(deployer_id)
        .bind(hook.phase.as_str())
        .bind(command)
        .bind(url)
        .bind(to_i64(hook.timeout_ms))
        .bind(now)
        .bind(by.actor.as_str())
        .fetch_one(&mut *tx)
        .await;
        let row = match row {
            // PostgreSQL's foreign key: the deployer was deleted meanwhile.
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::NotFound(format!("deployer {deployer_id}")));
            }
            other => other?,
        };
        let record = HookRecord {
            id: to_u64(row.int("id")?),
            deployer_id: deployer_id.to_string(),
            phase: hook.phase,
            target: hook.target.clone(),
            timeout_ms: hook.timeout_ms,
            created_at: ts(now),
            created_by: by.actor.clone(),
        };
        let event = AuditEvent::new("hook.add", audit::HOOK, record.id.to_string())
            .of_deployer(deployer_id)
            .after(audit::hook_json(&record));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn list_hooks(&self, deployer_id: Option<&str>) -> Result<Vec<HookRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM hooks WHERE (CAST($1 AS TEXT) IS NULL OR deployer_id = $1) \
             ORDER BY deployer_id, phase DESC, id",
        )
        .bind(deployer_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(hook_from_row).collect()
    }

    async fn get_hook(&self, id: u64) -> Result<HookRecord, StoreError> {
        let row = sqlx::query("SELECT * FROM hooks WHERE id = $1")
            .bind(to_i64(id))
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("hook {id}")))?;
        hook_from_row(&row)
    }

    async fn delete_hook(&self, by: &ChangeBy, id: u64) -> Result<HookRecord, StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query("DELETE FROM hooks WHERE id = $1 RETURNING *")
            .bind(to_i64(id))
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("hook {id}")))?;
        let record = hook_from_row(&row)?;
        let event = AuditEvent::new("hook.remove", audit::HOOK, id.to_string())
            .of_deployer(&record.deployer_id)
            .before(audit::hook_json(&record));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn record_hook_run(
        &self,
        by: &ChangeBy,
        run: &HookRunRecord,
    ) -> Result<HookRunRecord, StoreError> {
        let _w = self.serial().await;
        // The exit code is the one nullable integer the store writes: NULL is spelled in
        // the statement rather than bound, so the back ends need no extra bound.
        let exit_code = if run.exit_code.is_some() {
            "$13"
        } else {
            "NULL"
        };
        let sql = format!(
            "INSERT INTO hook_runs (hook_id, deployer_id, deployment_id, deployment, revision, \
             phase, target, started_at, finished_at, outcome, output_tail, actor, exit_code) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, {exit_code}) RETURNING id"
        );
        let mut tx = self.pool().begin().await?;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(run.hook_id))
            .bind(run.deployer_id.as_str())
            .bind(run.deployment_id.as_str())
            .bind(run.deployment.as_str())
            .bind(to_i64(run.revision))
            .bind(run.phase.as_str())
            .bind(run.target.as_str())
            .bind(run.started_at.timestamp_millis())
            .bind(run.finished_at.timestamp_millis())
            .bind(run.outcome.as_str())
            .bind(run.output_tail.as_str())
            .bind(run.actor.as_str());
        if let Some(code) = run.exit_code {
            query = query.bind(i64::from(code));
        }
        let row = match query.fetch_one(&mut *tx).await {
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::NotFound(format!(
                    "deployer {}",
                    run.deployer_id
                )));
            }
            other => other?,
        };
        let recorded = HookRunRecord {
            id: to_u64(row.int("id")?),
            ..run.clone()
        };
        let event = AuditEvent::new("hook.run", audit::HOOK, run.hook_id.to_string())
            .of_deployer(&run.deployer_id)
            .after(audit::hook_run_json(&recorded));
        write_audit(
            &mut tx,
            by,
            &event,
            Outcome::Ok,
            &audit::hook_run_reason(&recorded),
        )
        .await?;
        tx.commit().await?;
        Ok(recorded)
    }

    async fn list_hook_runs(
        &self,
        deployment_id: &str,
        limit: u32,
    ) -> Result<Vec<HookRunRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM hook_runs WHERE deployment_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(deployment_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut runs = rows
            .iter()
            .map(hook_run_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        runs.reverse();
        Ok(runs)
    }

    async fn record_denied(
        &self,
        by: &ChangeBy,
        event: &AuditEvent,
        reason: &str,
    ) -> Result<(), StoreError> {
        let _w = self.serial().await;
        let mut tx = self.pool().begin().await?;
        write_audit(&mut tx, by, event, Outcome::Denied, reason).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let since = query.since.map_or(i64::MIN, |t| t.timestamp_millis());
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE id > $1 AND at >= $2 \
             AND (CAST($3 AS TEXT) IS NULL OR actor = $3) \
             AND (CAST($4 AS TEXT) IS NULL OR deployer_id = $4) \
             ORDER BY id LIMIT $5",
        )
        .bind(to_i64(query.after_id))
        .bind(since)
        .bind(query.actor.as_deref())
        .bind(query.deployer_id.as_deref())
        .bind(i64::from(query.limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(audit_from_row).collect()
    }
}

// === impl InstallCodes for SqlStore ===

#[async_trait::async_trait]
impl<B> InstallCodes for SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    <B::Db as Database>::Arguments: IntoArguments<B::Db>,
    for<'a> &'a str: Encode<'a, B::Db> + Type<B::Db> + ColumnIndex<<B::Db as Database>::Row>,
    for<'a> &'a [u8]: Encode<'a, B::Db> + Type<B::Db>,
    for<'a> Option<&'a str>: Encode<'a, B::Db>,
    i64: for<'a> Encode<'a, B::Db> + for<'r> Decode<'r, B::Db> + Type<B::Db>,
    String: for<'r> Decode<'r, B::Db> + Type<B::Db>,
    Vec<u8>: for<'r> Decode<'r, B::Db> + Type<B::Db>,
{
    async fn create_code(
        &self,
        by: &ChangeBy,
        hash: [u8; 32],
        deployer_id: &str,
        expires_at: DateTime<Utc>,
        options: &InstallOptions,
    ) -> Result<(), StoreError> {
        let options_json = serde_json::to_value(options)
            .map_err(|e| StoreError::Corrupt(format!("install options: {e}")))?;
        let options = serde_json::to_string(options)
            .map_err(|e| StoreError::Corrupt(format!("install options: {e}")))?;
        let now = Utc::now();
        let mut tx = self.pool().begin().await?;
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
        .bind(options.as_str())
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::NotFound(format!("deployer {deployer_id}")));
            }
            other => other?,
        };
        let event = AuditEvent::new(
            "install-code.create",
            audit::INSTALL_CODE,
            audit::code_id(&hash),
        )
        .of_deployer(deployer_id)
        .after(json!({
            "expires_at": super::convert::rfc3339(expires_at),
            "options": options_json,
        }));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn redeem_code(
        &self,
        by: &ChangeBy,
        hash: [u8; 32],
        token_id: &str,
        token_hash: [u8; 32],
    ) -> Result<(String, InstallOptions), RedeemError> {
        let now = Utc::now().timestamp_millis();
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        // One statement claims the code, and it writes first: SQLite holds its write
        // lock from here, PostgreSQL makes a concurrent claim on any replica wait for
        // the row lock and then find `used_at` set. Two fetches cannot both succeed.
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
                Some(row) => Some(row.opt_int("used_at").map_err(StoreError::from)?),
            };
            return Err(RedeemError::of_unclaimed(used_at));
        };
        let deployer_id = row.text("deployer_id").map_err(StoreError::from)?;
        let options = InstallOptions::from_stored(&row.text("options").map_err(StoreError::from)?)?;
        sqlx::query(INSERT_TOKEN)
            .bind(token_id)
            .bind(deployer_id.as_str())
            .bind(&token_hash[..])
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let event = AuditEvent::new(
            "install-code.redeem",
            audit::INSTALL_CODE,
            audit::code_id(&hash),
        )
        .of_deployer(&deployer_id)
        .after(json!({ "token_id": token_id }));
        self.audit(&mut tx, by, event).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok((deployer_id, options))
    }
}
