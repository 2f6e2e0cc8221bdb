//! Whether an observed object already matches its desired one: field by field, ignoring
//! what the API server adds. Pure: used by the caches on receipt and by the reconciler after
//! a read by name, so both judge alike.

use super::desired::{BuiltObject, Kind, SpecDigest, build_kind, digest};
use ds_core::DeployedObject;
use serde_json::Value;

/// The result of comparing a received object with its deployment's desired object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Digest of the desired deployment compared against.
    pub digest: SpecDigest,
    /// Whether every desired field had the desired value.
    pub in_sync: bool,
}

/// Compares `value` (an object of `kind`) with what `obj` wants of that kind.
pub fn verdict_against(
    obj: &DeployedObject,
    kind: Kind,
    proxy_image: &str,
    value: &Value,
) -> Verdict {
    Verdict {
        digest: digest(obj),
        in_sync: is_subset(&build_kind(obj, kind, proxy_image), value),
    }
}

/// Compares `value` with a desired object already built (see [`super::desired::Built`]).
pub fn verdict_built(built: &BuiltObject, value: &Value) -> Verdict {
    Verdict {
        digest: built.digest,
        in_sync: is_subset(&built.value, value),
    }
}

/// Whether every field of `desired` has the same value in `actual`. Fields the API server
/// adds (defaults, status, managed fields) are ignored; empty desired values match absent
/// ones; lists of named elements match by name; quantities compare by value.
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    subset_at("", desired, actual)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn subset_at(key: &str, desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d.iter().all(|(k, dv)| match a.get(k) {
            Some(av) => {
                if (key == "requests" || key == "limits") && dv.is_string() {
                    quantity_eq(dv, av)
                } else {
                    subset_at(k, dv, av)
                }
            }
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(a)) => {
            let named = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
            if d.iter().all(|e| named(e).is_some()) && !d.is_empty() {
                // Merge lists keyed by name (containers, env, ports): others' extra entries
                // are theirs to keep, and SSA would not remove them anyway.
                d.iter().all(|de| {
                    let n = named(de);
                    a.iter().any(|ae| named(ae) == n && subset_at(key, de, ae))
                })
            } else {
                d.len() == a.len() && d.iter().zip(a).all(|(de, ae)| subset_at(key, de, ae))
            }
        }
        (Value::Number(d), Value::Number(a)) => d.as_f64() == a.as_f64(),
        (Value::Null, a) => is_empty(a),
        // An explicit null reads like an absent field (objects are compared as sent by the
        // API server, not re-encoded from typed structs that drop nulls).
        (d, Value::Null) => is_empty(d),
        (d, a) => d == a,
    }
}

/// Parses a Kubernetes quantity ("500m", "1Gi", "2") into a number.
fn parse_quantity(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    s.parse().ok()
}

fn quantity_eq(d: &Value, a: &Value) -> bool {
    match (d.as_str(), a.as_str()) {
        (Some(d), Some(a)) if d == a => true,
        (Some(d), Some(a)) => match (parse_quantity(d), parse_quantity(a)) {
            (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(1.0),
            _ => false,
        },
        _ => d == a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_server_defaults_and_status() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "model", "image": "a:1", "ports": [{"name": "http", "containerPort": 8501}]}
        ]}}}});
        let actual = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10, "template": {"spec": {
            "restartPolicy": "Always",
            "containers": [
                {"name": "model", "image": "a:1", "imagePullPolicy": "IfNotPresent",
                 "ports": [{"name": "http", "containerPort": 8501, "protocol": "TCP"}]},
                {"name": "injected", "image": "mesh:1"}
            ]}}}, "status": {"replicas": 2}});
        assert!(is_subset(&desired, &actual));
        let mut drifted = actual.clone();
        drifted["spec"]["template"]["spec"]["containers"][0]["image"] = json!("a:2");
        assert!(!is_subset(&desired, &drifted));
        let mut scaled = actual;
        scaled["spec"]["replicas"] = json!(5);
        assert!(!is_subset(&desired, &scaled));
    }

    #[test]
    fn subset_treats_empty_as_absent_and_quantities_by_value() {
        assert!(is_subset(&json!({"a": [], "b": {}, "c": null}), &json!({})));
        let d = json!({"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}});
        let a = json!({"resources": {"requests": {"cpu": "1000m", "memory": "1073741824"}}});
        assert!(is_subset(&d, &a));
        let b = json!({"resources": {"requests": {"cpu": "2", "memory": "1Gi"}}});
        assert!(!is_subset(&d, &b));
        // Ordered lists of unnamed elements must match exactly.
        assert!(!is_subset(
            &json!({"args": ["a", "b"]}),
            &json!({"args": ["b", "a"]})
        ));
    }
}
