//! The audit log: what each audited change records (the objects as JSON, without
//! secrets), and the recording of refused attempts. The store writes a change's row in
//! the change's own transaction; adding an audited mutation is one
//! `self.audit(&mut tx, by, event)` line in `sql.rs`.

use super::store::{
    AuditEvent, ChangeBy, DeploymentRecord, HookRecord, HookRunRecord, HookTarget, StageRecord,
    Store,
};
use serde_json::{Value, json};

/// Object kinds as the audit log names them.
pub const DEPLOYER: &str = "deployer";
pub const DEPLOYMENT: &str = "deployment";
pub const STAGE: &str = "stage";
pub const API_KEY: &str = "api-key";
pub const INSTALL_CODE: &str = "install-code";
pub const RPC: &str = "rpc";
pub const USER: &str = "user";
pub const GROUP: &str = "group";
pub const GRANT: &str = "grant";
pub const HOOK: &str = "hook";

/// The actor of a credential that named nobody (malformed, or no credential at all).
pub const UNKNOWN_ACTOR: &str = "unknown";

/// A deployer as the audit log shows it.
pub fn deployer_json(id: &str, name: &str, stage: &str) -> Value {
    json!({ "id": id, "name": name, "stage": stage })
}

/// A deployment as the audit log shows it: identity and spec.
pub fn deployment_json(d: &DeploymentRecord) -> Value {
    json!({
        "id": d.id,
        "deployer_id": d.deployer_id,
        "namespace": d.namespace,
        "name": d.name,
        "spec": serde_json::to_value(&d.spec).unwrap_or(Value::Null),
    })
}

/// A deployment's `namespace/name`, its audit object.
pub fn deployment_object(d: &DeploymentRecord) -> String {
    format!("{}/{}", d.namespace, d.name)
}

/// A stage as the audit log shows it.
pub fn stage_json(s: &StageRecord) -> Value {
    json!({ "name": s.name, "position": s.position, "deploy_by": s.deploy_by.as_str() })
}

/// A hook as the audit log shows it.
pub fn hook_json(h: &HookRecord) -> Value {
    let (kind, target) = match &h.target {
        HookTarget::Command(c) => ("command", c.clone()),
        // Without the path and query: they may hold the webhook's secret.
        HookTarget::Url(u) => ("url", super::hooks::shown_url(u)),
    };
    let mut value = json!({
        "id": h.id,
        "deployer_id": h.deployer_id,
        "phase": h.phase.as_str(),
        "timeout_ms": h.timeout_ms,
    });
    value[kind] = json!(target);
    value
}

/// A hook run as the audit log shows it (its output stays in `hook_runs`).
pub fn hook_run_json(r: &HookRunRecord) -> Value {
    json!({
        "run": r.id,
        "hook": r.hook_id,
        "phase": r.phase.as_str(),
        "target": r.target,
        "deployment": r.deployment,
        "deployment_id": r.deployment_id,
        "revision": r.revision,
        "outcome": r.outcome.as_str(),
        "exit_code": r.exit_code,
        "change_by": r.actor,
    })
}

/// The reason column of a `hook.run` row: its outcome, with the exit code if any.
pub fn hook_run_reason(r: &HookRunRecord) -> String {
    match r.exit_code {
        Some(code) => format!("{} (exit {code})", r.outcome.as_str()),
        None => r.outcome.as_str().to_string(),
    }
}

/// The public prefix of an install code's hash: enough to tell codes apart in the log,
/// nothing to redeem one with (the code itself is never stored).
pub fn code_id(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..6])
}

/// Records a refused attempt. A failure to record is logged and does not change the
/// answer the caller gets (the refusal).
pub async fn audit_denied(store: &dyn Store, by: &ChangeBy, event: AuditEvent, reason: &str) {
    if let Err(error) = store.record_denied(by, &event, reason).await {
        tracing::error!(%error, action = %event.action, actor = %by.actor, "recording a denied attempt in the audit log failed");
    }
}
