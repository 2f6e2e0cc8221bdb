//! The patch flavours the server applies (JSON merge, JSON patch, strategic merge, apply).
//!
//! Interim implementations: `patch.rs`/`apply.rs` (written on the `patch` branch) replace
//! them with the full strategic-merge and managedFields logic; the server only calls the
//! functions of this module so that swap is local.

use serde_json::{Map, Value, json};

/// A patch that cannot be applied (answered 422/400).
#[derive(Debug, Clone)]
pub struct PatchFailure(pub String);

/// A server-side apply conflict: the fields and the managers that own them.
#[derive(Debug, Clone)]
pub struct ApplyConflict {
    /// `(field path, manager)` pairs.
    pub conflicts: Vec<(String, String)>,
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch.
///
/// # Errors
/// The operation that failed.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchFailure> {
    let p: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchFailure(e.to_string()))?;
    json_patch::patch(target, &p).map_err(|e| PatchFailure(e.to_string()))
}

/// The merge key of a list under `key`, for the lists kubectl patches most.
fn merge_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        _ => return None,
    })
}

/// Strategic merge patch (interim: merge keys by field name, directives honoured and
/// stripped).
///
/// # Errors
/// Never in this interim version.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), PatchFailure> {
    smp(target, patch, None);
    Ok(())
}

fn smp(target: &mut Value, patch: &Value, parent_key: Option<&str>) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Value::Array(del)) = (t.get_mut(list), v) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(cur)), Value::Array(items)) if merge_key(k).is_some() => {
                let mk = merge_key(k).unwrap_or("name");
                for item in items {
                    let id = item.get(mk).cloned();
                    let pos = cur
                        .iter()
                        .position(|c| c.get(mk) == id.as_ref() && id.is_some());
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            cur.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => smp(&mut cur[i], item, Some(k)),
                        (None, false) => {
                            let mut fresh = Value::Object(Map::new());
                            smp(&mut fresh, item, Some(k));
                            cur.push(fresh);
                        }
                    }
                }
            }
            (Some(cur), Value::Object(_)) if cur.is_object() => smp(cur, v, Some(k)),
            _ => {
                let mut fresh = Value::Null;
                smp(&mut fresh, v, Some(k));
                if let Value::Array(items) = &mut fresh {
                    strip_directives(items);
                }
                t.insert(k.clone(), fresh);
            }
        }
    }
    let _ = parent_key;
}

fn strip_directives(items: &mut [Value]) {
    for it in items {
        if let Value::Object(m) = it {
            m.retain(|k, _| !k.starts_with('$'));
        }
    }
}

/// Server-side apply (interim: merges the applied configuration into the live object and
/// records one managedFields entry per manager, without conflict detection).
///
/// # Errors
/// Never in this interim version.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    _force: bool,
    now: &str,
) -> Result<Value, ApplyConflict> {
    let mut out = live.cloned().unwrap_or_else(|| json!({}));
    let mut a = applied.clone();
    if let Some(m) = a.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    smp(&mut out, &a, None);
    set_managed(&mut out, manager, "Apply", now);
    Ok(out)
}

/// Records a non-apply write by `manager` in managedFields.
pub fn record_update(_old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    set_managed(new, manager, "Update", now);
}

fn set_managed(obj: &mut Value, manager: &str, operation: &str, now: &str) {
    let api_version = obj
        .get("apiVersion")
        .cloned()
        .unwrap_or(Value::String("v1".into()));
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let entry = json!({
        "manager": manager, "operation": operation, "apiVersion": api_version,
        "time": now, "fieldsType": "FieldsV1", "fieldsV1": {}
    });
    let list = meta
        .entry("managedFields")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(l) = list {
        l.retain(|e| {
            !(e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some(operation))
        });
        l.push(entry);
    }
}
