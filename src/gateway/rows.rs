//! What both store back ends share: value conversions, error classification, and the
//! decoding of deployer, deployment and status rows (one macro, instantiated per row type,
//! since SQLite's and PostgreSQL's rows are distinct types with the same columns).

use super::store::StoreError;
use crate::core::DeploymentSpec;
use chrono::{DateTime, Utc};

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

pub(super) fn hash_from(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("token hash is not 32 bytes".into()))
}

pub(super) fn spec_json(spec: &DeploymentSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(format!("deployment spec: {e}")))
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Defines `deployer_from_row`, `deployment_from_row` and `status_from_row` for `$row`.
macro_rules! row_decoders {
    ($row:ty) => {
        fn deployer_from_row(row: &$row) -> Result<DeployerRecord, StoreError> {
            Ok(DeployerRecord {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                created_at: ts(row.try_get("created_at")?),
                revision: to_u64(row.try_get("revision")?),
                agent_version: row.try_get("agent_version")?,
                cluster: row.try_get("cluster")?,
                instance: row.try_get("instance")?,
                agent_namespaces: row
                    .try_get::<String, _>("agent_namespaces")?
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect(),
                last_seen: row.try_get::<Option<i64>, _>("last_seen")?.map(ts),
                deployments: u32::try_from(row.try_get::<i64, _>("n")?).unwrap_or(u32::MAX),
            })
        }

        fn deployment_from_row(row: &$row) -> Result<DeploymentRecord, StoreError> {
            let spec: String = row.try_get("spec")?;
            let spec: DeploymentSpec = serde_json::from_str(&spec)
                .map_err(|e| StoreError::Corrupt(format!("deployment spec: {e}")))?;
            Ok(DeploymentRecord {
                id: row.try_get("id")?,
                deployer_id: row.try_get("deployer_id")?,
                name: row.try_get("name")?,
                namespace: row.try_get("namespace")?,
                spec,
                revision: to_u64(row.try_get("revision")?),
                created_at: ts(row.try_get("created_at")?),
                updated_at: ts(row.try_get("updated_at")?),
            })
        }

        fn status_from_row(row: &$row) -> Result<StatusRecord, StoreError> {
            let u = |name: &str| -> Result<u32, StoreError> {
                Ok(u32::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
            };
            Ok(StatusRecord {
                deployment_id: row.try_get("deployment_id")?,
                phase: i32::try_from(row.try_get::<i64, _>("phase")?).unwrap_or(0),
                ready_replicas: u("ready_replicas")?,
                available_replicas: u("available_replicas")?,
                updated_replicas: u("updated_replicas")?,
                applied_revision: to_u64(row.try_get("applied_revision")?),
                endpoint: row.try_get("endpoint")?,
                last_error: row.try_get("last_error")?,
                updated_at: Some(ts(row.try_get("updated_at")?)),
            })
        }
    };
}
pub(super) use row_decoders;
