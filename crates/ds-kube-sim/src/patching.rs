//! Adapts the patch flavours ([`super::patch`]) and server-side apply ([`super::apply`]) to
//! the server's error answers, so the request handlers see one small interface.

use super::apply::{self, ApplyError};
use super::patch::{self, PatchError};
use super::resources::ResourceType;
use super::status::ApiError;
use serde_json::{Value, json};

fn patch_error(r: &ResourceType, name: &str, e: &PatchError) -> ApiError {
    match e {
        // The real server drops the operation's error: 422 with a generic message.
        PatchError::JsonPatchOperation { .. } => ApiError::patch_unprocessable(),
        _ if e.status_code() == 400 => ApiError::bad_request(e.to_string()),
        _ => ApiError::invalid(r, name, "", &e.to_string()),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, p: &Value) {
    patch::json_merge_patch(target, p);
}

/// RFC 6902 JSON patch.
///
/// # Errors
/// 400/422 as the real server answers a malformed or failing patch.
pub fn json_patch(
    r: &ResourceType,
    name: &str,
    target: &mut Value,
    p: &Value,
) -> Result<(), ApiError> {
    patch::json_patch(target, p).map_err(|e| patch_error(r, name, &e))
}

/// Strategic merge patch with kubectl's directives.
///
/// # Errors
/// 400/422 as the real server answers a malformed or failing patch.
pub fn strategic_merge(
    r: &ResourceType,
    name: &str,
    target: &mut Value,
    p: &Value,
) -> Result<(), ApiError> {
    patch::strategic_merge_patch(target, p).map_err(|e| patch_error(r, name, &e))
}

/// Server-side apply by `manager`.
///
/// # Errors
/// 409 Conflict naming fields and managers, 400 for a bad configuration.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    apply::apply(live, applied, manager, force, now).map_err(|e| match &e {
        ApplyError::Conflict { message, .. } => {
            let causes: Vec<Value> = e
                .causes()
                .into_iter()
                .map(|(message, field)| {
                    json!({"reason": "FieldManagerConflict", "message": message, "field": field})
                })
                .collect();
            ApiError::apply_conflict(message.clone(), Value::Array(causes))
        }
        ApplyError::InvalidConfig(_) => ApiError::bad_request(e.to_string()),
        ApplyError::InvalidManagedFields(_) => ApiError::internal(e.to_string()),
    })
}

/// Records a non-apply write by `manager` in managedFields.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    apply::record_update(old, new, manager, now);
}
