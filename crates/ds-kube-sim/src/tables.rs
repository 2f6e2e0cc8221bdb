//! Server-side printing: `meta.k8s.io/v1` Table answers for `kubectl get`, with the columns
//! the real server prints for the common kinds.

use serde_json::{Value, json};

/// Whether the client asked for a Table (`Accept: application/json;as=Table;…`).
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    })
}

fn age(created: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn col(name: &str, ty: &str) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" },
           "description": "", "priority": 0})
}

fn columns(kind: &str) -> Vec<Value> {
    let names: &[(&str, &str)] = match kind {
        "Deployment" => &[
            ("Name", "string"),
            ("Ready", "string"),
            ("Up-to-date", "integer"),
            ("Available", "integer"),
            ("Age", "string"),
        ],
        "Pod" => &[
            ("Name", "string"),
            ("Ready", "string"),
            ("Status", "string"),
            ("Restarts", "string"),
            ("Age", "string"),
        ],
        "Service" => &[
            ("Name", "string"),
            ("Type", "string"),
            ("Cluster-IP", "string"),
            ("External-IP", "string"),
            ("Port(s)", "string"),
            ("Age", "string"),
        ],
        "ReplicaSet" => &[
            ("Name", "string"),
            ("Desired", "integer"),
            ("Current", "integer"),
            ("Ready", "integer"),
            ("Age", "string"),
        ],
        "Namespace" => &[("Name", "string"), ("Status", "string"), ("Age", "string")],
        "ConfigMap" => &[("Name", "string"), ("Data", "integer"), ("Age", "string")],
        "Secret" => &[
            ("Name", "string"),
            ("Type", "string"),
            ("Data", "integer"),
            ("Age", "string"),
        ],
        _ => &[("Name", "string"), ("Age", "string")],
    };
    names.iter().map(|(n, t)| col(n, t)).collect()
}

fn int(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn text<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn count(v: &Value, p: &str) -> usize {
    v.pointer(p)
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len)
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = json!(text(o, "/metadata/name"));
    let age = json!(age(text(o, "/metadata/creationTimestamp")));
    match kind {
        "Deployment" => vec![
            name,
            json!(format!(
                "{}/{}",
                int(o, "/status/readyReplicas"),
                int(o, "/spec/replicas")
            )),
            json!(int(o, "/status/updatedReplicas")),
            json!(int(o, "/status/availableReplicas")),
            age,
        ],
        "Pod" => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let waiting = statuses
                .iter()
                .find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str));
            let status = waiting.unwrap_or(text(o, "/status/phase"));
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!("0"),
                age,
            ]
        }
        "Service" => {
            let ports = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let np = p
                                .get("nodePort")
                                .and_then(Value::as_i64)
                                .map(|n| format!(":{n}"))
                                .unwrap_or_default();
                            format!("{}{np}/{}", int(p, "/port"), text(p, "/protocol"))
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(text(o, "/spec/type")),
                json!(text(o, "/spec/clusterIP")),
                json!("<none>"),
                json!(ports),
                age,
            ]
        }
        "ReplicaSet" => vec![
            name,
            json!(int(o, "/spec/replicas")),
            json!(int(o, "/status/replicas")),
            json!(int(o, "/status/readyReplicas")),
            age,
        ],
        "Namespace" => vec![name, json!(text(o, "/status/phase")), age],
        "ConfigMap" => vec![
            name,
            json!(count(o, "/data") + count(o, "/binaryData")),
            age,
        ],
        "Secret" => vec![name, json!(text(o, "/type")), json!(count(o, "/data")), age],
        _ => vec![name, age],
    }
}

fn row(kind: &str, o: &Value) -> Value {
    json!({
        "cells": cells(kind, o),
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or(json!({}))
        }
    })
}

/// A Table of `items` of one kind.
pub fn table<'a>(kind: &str, items: impl Iterator<Item = &'a Value>, metadata: Value) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(kind),
        "rows": items.map(|o| row(kind, o)).collect::<Vec<_>>(),
    })
}

/// A watch event line whose object is a one-row Table.
pub fn event_line(ty: &str, kind: &str, obj: &Value) -> bytes::Bytes {
    let rv = text(obj, "/metadata/resourceVersion");
    let t = table(kind, std::iter::once(obj), json!({"resourceVersion": rv}));
    crate::store::watch_line(ty, &t)
}
