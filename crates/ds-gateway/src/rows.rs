//! What both store back ends share below the statements: value conversions, error
//! classification, and the decoding of every row the store reads, written once for the
//! rows of any `sqlx` database with the store's column types.

use super::store::{
    ApiKeyRecord, AuditRecord, DeployBy, DeployerRecord, DeploymentRecord, GrantRecord,
    HookOutcome, HookPhase, HookRecord, HookRunRecord, HookTarget, ObjectCount, Outcome,
    RevisionRecord, Role, StatusRecord, StoreError, TokenRecord, UserKind, UserRecord,
};
use chrono::{DateTime, Utc};
use ds_core::DeploymentSpec;
use sqlx::{ColumnIndex, Database, Decode, Row, Type};

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(super) fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn spec_json(spec: &DeploymentSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(format!("deployment spec: {e}")))
}

// === error classification ===

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub(super) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Whether PostgreSQL gave up on a transaction for a deadlock or serialization failure
/// between replicas: a conflict the caller may retry, not a database failure. (SQLite
/// never reports these codes.)
pub(super) fn is_retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// Maps a retryable failure (see [`is_retryable`]) to [`StoreError::Conflict`].
pub(super) fn retryable(what: &str) -> impl Fn(StoreError) -> StoreError + '_ {
    move |e| {
        if is_retryable(&e) {
            StoreError::Conflict(what.to_string())
        } else {
            e
        }
    }
}

// === rows ===

/// A row of either back end, read by column name in the types the schemas use: TEXT,
/// 64-bit integers (SQLite INTEGER, PostgreSQL BIGINT) and bytes (BLOB, BYTEA).
pub(super) trait StoreRow: Row {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error>;
}

impl<R: Row> StoreRow for R
where
    for<'a> &'a str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    R::Database: Database,
{
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.try_get(column)
    }
    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.try_get(column)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(column)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error> {
        self.try_get(column)
    }
}

/// A deployer row joined with its deployment count `n`.
pub(super) fn deployer_from_row(row: &impl StoreRow) -> Result<DeployerRecord, StoreError> {
    Ok(DeployerRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        created_at: ts(row.int("created_at")?),
        revision: to_u64(row.int("revision")?),
        agent_version: row.text("agent_version")?,
        cluster: row.text("cluster")?,
        instance: row.text("instance")?,
        agent_namespaces: row
            .text("agent_namespaces")?
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect(),
        last_seen: row.opt_int("last_seen")?.map(ts),
        deployments: u32::try_from(row.int("n")?).unwrap_or(u32::MAX),
        objects: match (
            row.opt_int("objects_revision")?,
            row.opt_int("objects_owned")?,
        ) {
            (Some(revision), Some(owned)) => Some(ObjectCount {
                revision: to_u64(revision),
                owned: u32::try_from(owned).unwrap_or(u32::MAX),
            }),
            _ => None,
        },
        stage: row.text("stage")?,
        remap: remap_from(&row.text("remap")?)?,
    })
}

/// A stored remapping: JSON, or '' for none.
pub(super) fn remap_from(text: &str) -> Result<ds_core::remap::Remap, StoreError> {
    if text.is_empty() {
        return Ok(ds_core::remap::Remap::default());
    }
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("deployer remap: {e}")))
}

/// A remapping as stored: '' for none, so unmapped deployers keep their rows as before.
pub(super) fn remap_json(remap: &ds_core::remap::Remap) -> Result<String, StoreError> {
    if remap.is_empty() {
        return Ok(String::new());
    }
    serde_json::to_string(remap).map_err(|e| StoreError::Corrupt(format!("deployer remap: {e}")))
}

/// What a revision's remapping replaced, as stored: a JSON list, '' for none.
pub(super) fn remapped_json(remapped: &[ds_core::remap::Remapped]) -> Result<String, StoreError> {
    if remapped.is_empty() {
        return Ok(String::new());
    }
    serde_json::to_string(remapped)
        .map_err(|e| StoreError::Corrupt(format!("revision remapped: {e}")))
}

pub(super) fn deployment_from_row(row: &impl StoreRow) -> Result<DeploymentRecord, StoreError> {
    let spec: DeploymentSpec = serde_json::from_str(&row.text("spec")?)
        .map_err(|e| StoreError::Corrupt(format!("deployment spec: {e}")))?;
    Ok(DeploymentRecord {
        id: row.text("id")?,
        deployer_id: row.text("deployer_id")?,
        name: row.text("name")?,
        namespace: row.text("namespace")?,
        spec,
        revision: to_u64(row.int("revision")?),
        created_at: ts(row.int("created_at")?),
        updated_at: ts(row.int("updated_at")?),
    })
}

/// The `pods` column: a DeploymentStatus holding only its pods, protobuf-encoded (empty:
/// none), so the pods' schema is the proto's and needs no table of its own.
pub(super) fn encode_pods(pods: &[ds_core::proto::PodStatus]) -> Vec<u8> {
    use prost::Message;
    if pods.is_empty() {
        return Vec::new();
    }
    ds_core::proto::DeploymentStatus {
        pods: pods.to_vec(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn decode_pods(bytes: &[u8]) -> Result<Vec<ds_core::proto::PodStatus>, StoreError> {
    use prost::Message;
    ds_core::proto::DeploymentStatus::decode(bytes)
        .map(|s| s.pods)
        .map_err(|e| StoreError::Corrupt(format!("stored pods: {e}")))
}

/// A `deployment_revisions` row.
pub(super) fn revision_from_row(row: &impl StoreRow) -> Result<RevisionRecord, StoreError> {
    let spec: DeploymentSpec = serde_json::from_str(&row.text("spec")?)
        .map_err(|e| StoreError::Corrupt(format!("revision spec: {e}")))?;
    Ok(RevisionRecord {
        deployment_id: row.text("deployment_id")?,
        number: to_u64(row.int("number")?),
        deployer_revision: to_u64(row.int("deployer_revision")?),
        spec,
        actor: row.text("actor")?,
        note: row.text("note")?,
        created_at: ts(row.int("created_at")?),
        phase: row.opt_int("phase")?.map(|p| i32::try_from(p).unwrap_or(0)),
        remapped: match row.text("remapped")?.as_str() {
            "" => Vec::new(),
            text => serde_json::from_str(text)
                .map_err(|e| StoreError::Corrupt(format!("revision remapped: {e}")))?,
        },
    })
}

pub(super) fn status_from_row(row: &impl StoreRow) -> Result<StatusRecord, StoreError> {
    let count =
        |name: &str| -> Result<u32, StoreError> { Ok(u32::try_from(row.int(name)?).unwrap_or(0)) };
    Ok(StatusRecord {
        deployment_id: row.text("deployment_id")?,
        phase: i32::try_from(row.int("phase")?).unwrap_or(0),
        ready_replicas: count("ready_replicas")?,
        available_replicas: count("available_replicas")?,
        updated_replicas: count("updated_replicas")?,
        applied_revision: to_u64(row.int("applied_revision")?),
        endpoint: row.text("endpoint")?,
        last_error: row.text("last_error")?,
        reason: row.text("reason")?,
        pods: decode_pods(&row.bytes("pods")?)?,
        updated_at: Some(ts(row.int("updated_at")?)),
    })
}

fn hash_from(row: &impl StoreRow) -> Result<[u8; 32], StoreError> {
    row.bytes("hash")?
        .try_into()
        .map_err(|_| StoreError::Corrupt("token hash is not 32 bytes".into()))
}

/// A `tokens` row: `deployer_id, hash, expires_at`.
pub(super) fn token_from_row(row: &impl StoreRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        deployer_id: row.text("deployer_id")?,
        hash: hash_from(row)?,
        expires_at: row.opt_int("expires_at")?.map(ts),
    })
}

/// An `api_keys` row as a token: API keys belong to no deployer.
pub(super) fn api_key_from_row(row: &impl StoreRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        deployer_id: String::new(),
        hash: hash_from(row)?,
        expires_at: row.opt_int("expires_at")?.map(ts),
    })
}

/// An `api_keys` row as listed (`id, user_name, created_at, expires_at`).
pub(super) fn key_from_row(row: &impl StoreRow) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: row.text("id")?,
        user: row.text("user_name")?,
        created_at: ts(row.int("created_at")?),
        expires_at: row.opt_int("expires_at")?.map(ts),
    })
}

/// A `users` row, without its groups.
pub(super) fn user_from_row(row: &impl StoreRow) -> Result<UserRecord, StoreError> {
    let kind = row.text("kind")?;
    Ok(UserRecord {
        name: row.text("name")?,
        kind: UserKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("user kind {kind:?}")))?,
        admin: row.int("admin")? != 0,
        created_at: ts(row.int("created_at")?),
        groups: Vec::new(),
    })
}

/// A `deployer_grants` row.
pub(super) fn grant_from_row(row: &impl StoreRow) -> Result<GrantRecord, StoreError> {
    let role = row.text("role")?;
    Ok(GrantRecord {
        deployer_id: row.text("deployer_id")?,
        group: row.text("group_name")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
    })
}

/// An `audit_log` row.
pub(super) fn audit_from_row(row: &impl StoreRow) -> Result<AuditRecord, StoreError> {
    let outcome = match row.text("outcome")?.as_str() {
        "ok" => Outcome::Ok,
        "denied" => Outcome::Denied,
        other => return Err(StoreError::Corrupt(format!("audit outcome {other:?}"))),
    };
    Ok(AuditRecord {
        id: to_u64(row.int("id")?),
        at: ts(row.int("at")?),
        actor: row.text("actor")?,
        action: row.text("action")?,
        object_kind: row.text("object_kind")?,
        object: row.text("object")?,
        deployer_id: row.opt_text("deployer_id")?,
        before: row.opt_text("before")?,
        after: row.opt_text("after")?,
        request_id: row.text("request_id")?,
        outcome,
        reason: row.text("reason")?,
    })
}

/// A stored `deploy_by`.
pub(super) fn deploy_by_from(stored: &str) -> Result<DeployBy, StoreError> {
    DeployBy::parse(stored)
        .ok_or_else(|| StoreError::Corrupt(format!("stage deploy_by {stored:?}")))
}

/// A stored hook phase.
fn hook_phase_from(stored: &str) -> Result<HookPhase, StoreError> {
    HookPhase::parse(stored).ok_or_else(|| StoreError::Corrupt(format!("hook phase {stored:?}")))
}

/// A `hooks` row.
pub(super) fn hook_from_row(row: &impl StoreRow) -> Result<HookRecord, StoreError> {
    let target = match (row.opt_text("command")?, row.opt_text("url")?) {
        (Some(command), None) => HookTarget::Command(command),
        (None, Some(url)) => HookTarget::Url(url),
        _ => return Err(StoreError::Corrupt("hook with no or two targets".into())),
    };
    Ok(HookRecord {
        id: to_u64(row.int("id")?),
        deployer_id: row.text("deployer_id")?,
        phase: hook_phase_from(&row.text("phase")?)?,
        target,
        timeout_ms: to_u64(row.int("timeout_ms")?),
        created_at: ts(row.int("created_at")?),
        created_by: row.text("created_by")?,
    })
}

/// A `hook_runs` row.
pub(super) fn hook_run_from_row(row: &impl StoreRow) -> Result<HookRunRecord, StoreError> {
    let outcome = row.text("outcome")?;
    Ok(HookRunRecord {
        id: to_u64(row.int("id")?),
        hook_id: to_u64(row.int("hook_id")?),
        deployer_id: row.text("deployer_id")?,
        deployment_id: row.text("deployment_id")?,
        deployment: row.text("deployment")?,
        revision: to_u64(row.int("revision")?),
        phase: hook_phase_from(&row.text("phase")?)?,
        target: row.text("target")?,
        started_at: ts(row.int("started_at")?),
        finished_at: ts(row.int("finished_at")?),
        outcome: HookOutcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("hook outcome {outcome:?}")))?,
        exit_code: row
            .opt_int("exit_code")?
            .map(|c| i32::try_from(c).unwrap_or(i32::MIN)),
        output_tail: row.text("output_tail")?,
        actor: row.text("actor")?,
    })
}
