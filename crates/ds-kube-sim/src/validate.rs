//! Schema checks with the Kubernetes types of `k8s-openapi`: bodies that do not decode are
//! rejected, and unknown fields are reported per `fieldValidation` (Strict: 400, Warn: a
//! `Warning` header, Ignore: nothing), as the real server does.

use super::resources::ResourceType;
use super::status::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What `fieldValidation` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Unknown fields fail the request (kubectl's choice).
    Strict,
    /// Unknown fields become warnings (the server's default).
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

impl FieldValidation {
    /// From the query parameter.
    pub fn from_param(p: Option<&str>) -> Self {
        match p {
            Some("Strict") => Self::Strict,
            Some("Ignore") => Self::Ignore,
            _ => Self::Warn,
        }
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// The object as the typed model sees it (unknown fields gone).
fn typed(rt: &ResourceType, v: &Value) -> Result<Value, String> {
    use k8s_openapi::api::{apps, autoscaling, coordination, core, networking, policy, rbac};
    match rt.resource {
        "namespaces" => roundtrip::<core::v1::Namespace>(v),
        "services" => roundtrip::<core::v1::Service>(v),
        "secrets" => roundtrip::<core::v1::Secret>(v),
        "configmaps" => roundtrip::<core::v1::ConfigMap>(v),
        "serviceaccounts" => roundtrip::<core::v1::ServiceAccount>(v),
        "events" => roundtrip::<core::v1::Event>(v),
        "pods" => roundtrip::<core::v1::Pod>(v),
        "deployments" => roundtrip::<apps::v1::Deployment>(v),
        "ingresses" => roundtrip::<networking::v1::Ingress>(v),
        "leases" => roundtrip::<coordination::v1::Lease>(v),
        "poddisruptionbudgets" => roundtrip::<policy::v1::PodDisruptionBudget>(v),
        "roles" => roundtrip::<rbac::v1::Role>(v),
        "rolebindings" => roundtrip::<rbac::v1::RoleBinding>(v),
        "clusterroles" => roundtrip::<rbac::v1::ClusterRole>(v),
        "clusterrolebindings" => roundtrip::<rbac::v1::ClusterRoleBinding>(v),
        "horizontalpodautoscalers" => roundtrip::<autoscaling::v2::HorizontalPodAutoscaler>(v),
        _ => Ok(v.clone()),
    }
}

/// Paths present (non-null) in `input` but absent from `model`.
fn unknown(input: &Value, model: &Value, path: &str, out: &mut Vec<String>) {
    match (input, model) {
        (Value::Object(i), Value::Object(m)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match m.get(k) {
                    Some(mv) => unknown(v, mv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(m)) => {
            for (n, (iv, mv)) in i.iter().zip(m).enumerate() {
                unknown(iv, mv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Removes what the model does not have (the real server's decoder drops unknown fields).
fn prune(input: &mut Value, model: &Value) {
    match (input, model) {
        (Value::Object(i), Value::Object(m)) => {
            i.retain(|k, v| v.is_null() || m.contains_key(k));
            for (k, v) in i.iter_mut() {
                if let Some(mv) = m.get(k) {
                    prune(v, mv);
                }
            }
        }
        (Value::Array(i), Value::Array(m)) => {
            for (iv, mv) in i.iter_mut().zip(m) {
                prune(iv, mv);
            }
        }
        _ => {}
    }
}

/// Checks `obj` against the kind's schema; outside Strict mode unknown fields are removed
/// from `obj`. Answers the warnings to send (Warn mode).
///
/// # Errors
/// 400 BadRequest when the object does not decode or, in Strict mode, has unknown fields.
pub fn check(
    rt: &ResourceType,
    obj: &mut Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let model = typed(rt, obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            rt.kind, rt.version, rt.kind
        ))
    })?;
    let mut fields = Vec::new();
    unknown(obj, &model, "", &mut fields);
    if fields.is_empty() {
        return Ok(Vec::new());
    }
    if mode != FieldValidation::Strict {
        prune(obj, &model);
    }
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let msgs: Vec<String> = fields
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match mode {
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            rt.kind,
            rt.version,
            rt.kind,
            msgs.join(", ")
        ))),
        _ => Ok(msgs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{DEPLOYMENTS, RESOURCES};
    use serde_json::json;

    fn dep(extra: Value) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"any.thing/x": "y"}},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx",
                        "resources": {"limits": {"cpu": "500m"}}}]}}}
        });
        json_patch::merge(&mut d, &extra);
        d
    }

    #[test]
    fn unknown_fields_are_found_by_path() {
        let rt = &RESOURCES[DEPLOYMENTS];
        let good = dep(json!({}));
        let mut same = good.clone();
        assert!(check(rt, &mut same, FieldValidation::Strict).is_ok());
        assert_eq!(same, good);
        let bad = dep(json!({"spec": {"replicaz": 2}}));
        let err = check(rt, &mut bad.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("unknown field \"spec.replicaz\""),
            "{}",
            err.message
        );
        let mut warned = bad.clone();
        let warns = check(rt, &mut warned, FieldValidation::Warn).unwrap();
        assert_eq!(warns, vec!["unknown field \"spec.replicaz\"".to_string()]);
        assert_eq!(warned, good, "unknown fields are dropped");
        assert!(
            check(rt, &mut bad.clone(), FieldValidation::Ignore)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn undecodable_objects_are_bad_requests() {
        let rt = &RESOURCES[DEPLOYMENTS];
        let bad = dep(json!({"spec": {"replicas": "two"}}));
        assert_eq!(
            check(rt, &mut bad.clone(), FieldValidation::Ignore)
                .unwrap_err()
                .code,
            400
        );
    }
}
