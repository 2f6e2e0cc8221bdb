//! Schema checks with the Kubernetes types of `k8s-openapi`: bodies that do not decode are
//! rejected, and unknown fields are reported per `fieldValidation` (Strict: 400, Warn: a
//! `Warning` header, Ignore: nothing), as the real server does.

use super::resources::ResourceType;
use super::status::{ApiError, Cause};
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
    // Decoded from the borrowed value: a clone of the whole object first was a third of
    // the check.
    let typed = T::deserialize(v).map_err(|e| e.to_string())?;
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
        "replicasets" => roundtrip::<apps::v1::ReplicaSet>(v),
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

/// Paths present (non-null) in `input` but absent from `model`. `path` is a buffer the
/// walk extends and truncates in place: a path is only formatted for a field that is
/// missing, not for each of the thousands that are there.
fn unknown(input: &Value, model: &Value, path: &mut String, out: &mut Vec<String>) {
    let len = path.len();
    match (input, model) {
        (Value::Object(i), Value::Object(m)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                if len > 0 {
                    path.push('.');
                }
                path.push_str(k);
                match m.get(k) {
                    Some(mv) => unknown(v, mv, path, out),
                    None => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(m)) => {
            use std::fmt::Write;
            for (n, (iv, mv)) in i.iter().zip(m).enumerate() {
                let _ = write!(path, "[{n}]");
                unknown(iv, mv, path, out);
                path.truncate(len);
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
    unknown(obj, &model, &mut String::new(), &mut fields);
    let causes = semantic(rt, obj);
    if !causes.is_empty() {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(ApiError::invalid_causes(rt, name, causes));
    }
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

// === semantic rules ===

/// The real server's semantic rules that clients meet most (a subset of its validation):
/// Deployment replicas and selector/template agreement, container names, images and ports,
/// Service ports. One cause per violation, in the real server's order.
pub fn semantic(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    match rt.resource {
        "deployments" | "replicasets" => workload(obj, &mut out),
        "pods" => {
            if let Some(spec) = obj.get("spec") {
                pod_spec(spec, "spec", &mut out);
            }
        }
        "services" => service(obj, &mut out),
        _ => {}
    }
    out
}

fn rt_is_rs(obj: &Value) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some("ReplicaSet")
}

fn port_range(v: &Value, field: String, out: &mut Vec<Cause>) {
    if let Some(n) = v.as_i64()
        && !(1..=65535).contains(&n)
    {
        out.push(Cause::invalid(
            field,
            v,
            "must be between 1 and 65535, inclusive",
        ));
    }
}

fn workload(obj: &Value, out: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        return;
    };
    if let Some(r) = spec
        .get("replicas")
        .filter(|r| r.as_i64().is_some_and(|r| r < 0))
    {
        out.push(Cause::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    let labels = spec
        .pointer("/template/metadata/labels")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    match spec.get("selector").filter(|s| !s.is_null()) {
        None => out.push(Cause::required("spec.selector", "")),
        Some(sel) => {
            let empty = sel
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
                && sel
                    .get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
            if empty {
                out.push(Cause::invalid(
                    "spec.selector",
                    sel,
                    if rt_is_rs(obj) {
                        "empty selector is invalid for replicaset"
                    } else {
                        "empty selector is invalid for deployment"
                    },
                ));
            } else if !selector_matches(sel, &labels) {
                out.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    &labels,
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    if let Some(pod) = spec.pointer("/template/spec") {
        pod_spec(pod, "spec.template.spec", out);
    }
}

/// Whether a LabelSelector (`matchLabels`, `matchExpressions`) selects these labels.
fn selector_matches(sel: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let by_expressions = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

fn pod_spec(spec: &Value, at: &str, out: &mut Vec<Cause>) {
    for list in ["initContainers", "containers"] {
        let Some(cs) = spec.get(list).and_then(Value::as_array) else {
            if list == "containers" {
                out.push(Cause::required(format!("{at}.containers"), ""));
            }
            continue;
        };
        if list == "containers" && cs.is_empty() {
            out.push(Cause::required(format!("{at}.containers"), ""));
        }
        for (i, c) in cs.iter().enumerate() {
            let here = format!("{at}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                None => out.push(Cause::required(format!("{here}.name"), "")),
                Some(n) if !is_dns_label(n) => out.push(Cause::invalid(
                    format!("{here}.name"),
                    &Value::String(n.to_string()),
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                )),
                Some(_) => {}
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|i| i.trim().is_empty())
            {
                out.push(Cause::required(format!("{here}.image"), ""));
            }
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(v) = p.get("containerPort") {
                    port_range(v, format!("{here}.ports[{j}].containerPort"), out);
                }
            }
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn service(obj: &Value, out: &mut Vec<Cause>) {
    let ports = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, p) in ports.enumerate() {
        if let Some(v) = p.get("port") {
            port_range(v, format!("spec.ports[{i}].port"), out);
        }
        if let Some(v) = p.get("targetPort").filter(|v| v.is_i64()) {
            port_range(v, format!("spec.ports[{i}].targetPort"), out);
        }
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
