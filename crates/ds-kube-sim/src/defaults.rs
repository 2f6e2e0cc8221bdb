//! Server-side defaulting that clients depend on (Service clusterIP/type, Deployment strategy…).

use super::resources::RESOURCES;
use super::server::Shared;
use base64::Engine as _;
use serde_json::{Map, Value, json};
use std::sync::atomic::Ordering;

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    match v.get_mut(key) {
        Some(Value::Object(m)) => m,
        // Just made an object above.
        _ => unreachable!("key set to an object"),
    }
}

fn default(m: &mut Map<String, Value>, key: &str, v: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), v);
    }
}

/// Fills the defaults of resource `rt` into `obj`: what the real server's defaulting
/// functions set while decoding, before managedFields are computed (so the writer owns them).
pub(crate) fn apply(rt: usize, obj: &mut Value) {
    match RESOURCES[rt].resource {
        "namespaces" => namespace(obj),
        "services" => service(obj),
        "deployments" => deployment(obj),
        "replicasets" => {
            let spec = obj_mut(obj, "spec");
            default(spec, "replicas", json!(1));
            if let Some(pod) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                pod_spec(pod);
            }
        }
        "secrets" => secret(obj),
        "pods" => {
            if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
                pod_spec(spec);
                if let Some(p) = spec.as_object_mut() {
                    default(p, "enableServiceLinks", json!(true));
                }
            }
        }
        _ => {}
    }
}

/// What the real registry sets after managedFields are computed (so no manager owns it):
/// a Service's allocated clusterIP(s), IP families and node ports, a Namespace's finalizer.
/// On updates (`old`) the allocated values are carried over.
pub(crate) fn allocate(shared: &Shared, rt: usize, obj: &mut Value, old: Option<&Value>) {
    match RESOURCES[rt].resource {
        "namespaces" => {
            default(obj_mut(obj, "spec"), "finalizers", json!(["kubernetes"]));
        }
        "services" => service_allocations(shared, obj, old),
        "pods" if old.is_none() => {
            admit_pod(obj);
            let qos = qos_class(obj);
            let status = obj_mut(obj, "status");
            default(status, "phase", json!("Pending"));
            default(status, "qosClass", json!(qos));
        }
        _ => {}
    }
}

/// What the real server's default admission plugins add to a new pod: `Priority` (priority
/// 0, PreemptLowerPriority), `ServiceAccount` (the `default` account and its projected
/// token volume, mounted into every container) and `DefaultTolerationSeconds`.
pub(crate) fn admit_pod(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    default(spec, "priority", json!(0));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    default(spec, "serviceAccountName", json!("default"));
    let account = spec.get("serviceAccountName").cloned().unwrap_or_default();
    default(spec, "serviceAccount", account);
    const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    if spec.get("automountServiceAccountToken") != Some(&json!(false)) {
        let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
        let volume = format!("kube-api-access-{suffix}");
        let mut mounted = false;
        for list in ["initContainers", "containers"] {
            for c in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object_mut)
            {
                let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
                let Some(mounts) = mounts.as_array_mut() else {
                    continue;
                };
                if mounts.iter().any(|m| m["mountPath"] == MOUNT) {
                    continue;
                }
                mounts.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT}));
                mounted = true;
            }
        }
        if mounted {
            let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
            if let Some(v) = volumes.as_array_mut() {
                v.push(
                    json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace",
                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ]}}),
                );
            }
        }
    }
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !t
                .iter()
                .any(|x| x["key"] == key && x["effect"] == "NoExecute")
            {
                t.push(
                    json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": 300}),
                );
            }
        }
    }
}

/// A pod's QoS class from its containers' requests and limits.
pub(crate) fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| pod.pointer(&format!("/spec/{l}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let get =
        |c: &Value, what: &str, res: &str| c.pointer(&format!("/resources/{what}/{res}")).cloned();
    let any = containers.iter().any(|c| {
        ["requests", "limits"].iter().any(|w| {
            c.pointer(&format!("/resources/{w}"))
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = get(c, "limits", r);
            limit.is_some() && get(c, "requests", r).is_none_or(|q| Some(q) == limit)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn namespace(obj: &mut Value) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let labels = obj_mut(&mut obj["metadata"], "labels");
    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    default(obj_mut(obj, "status"), "phase", json!("Active"));
}

fn service_type(spec: &Map<String, Value>) -> String {
    spec.get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string()
}

fn service(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default(spec, "type", json!("ClusterIP"));
    let ty = service_type(spec);
    if ty != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    default(spec, "sessionAffinity", json!("None"));
    if ty == "NodePort" || ty == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut() {
            let Some(p) = p.as_object_mut() else { continue };
            default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default(p, "targetPort", port);
            }
        }
    }
    default(obj_mut(obj, "status"), "loadBalancer", json!({}));
}

fn service_allocations(shared: &Shared, obj: &mut Value, old: Option<&Value>) {
    let spec = obj_mut(obj, "spec");
    let ty = service_type(spec);
    if ty != "ExternalName" {
        let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).cloned();
        if spec.get("clusterIP").is_none_or(|v| v.is_null() || v == "") {
            let ip = old_ip.unwrap_or_else(|| {
                let n = shared.next_ip.fetch_add(1, Ordering::Relaxed) + 10;
                json!(format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff))
            });
            spec.insert("clusterIP".into(), ip);
        }
        let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
        default(spec, "clusterIPs", json!([ip]));
        default(spec, "ipFamilies", json!(["IPv4"]));
        default(spec, "ipFamilyPolicy", json!("SingleStack"));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(p) = p.as_object_mut() else { continue };
            if (ty == "NodePort" || ty == "LoadBalancer") && p.get("nodePort").is_none() {
                let old_np = old
                    .and_then(|o| o.pointer(&format!("/spec/ports/{i}/nodePort")))
                    .cloned();
                let np = old_np.unwrap_or_else(|| {
                    json!(30000 + shared.next_ip.fetch_add(1, Ordering::Relaxed) % 2768)
                });
                p.insert("nodePort".into(), np);
            }
        }
    }
}

fn deployment(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
    if let Some(s) = strategy.as_object_mut() {
        default(s, "type", json!("RollingUpdate"));
        if s.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
            let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
            if let Some(ru) = ru.as_object_mut() {
                default(ru, "maxUnavailable", json!("25%"));
                default(ru, "maxSurge", json!("25%"));
            }
        }
    }
    if let Some(pod) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        pod_spec(pod);
    }
}

fn pod_spec(pod: &mut Value) {
    let Some(p) = pod.as_object_mut() else { return };
    default(p, "restartPolicy", json!("Always"));
    default(p, "terminationGracePeriodSeconds", json!(30));
    default(p, "dnsPolicy", json!("ClusterFirst"));
    default(p, "securityContext", json!({}));
    default(p, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = p.get_mut(list) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                default(c, "terminationMessagePath", json!("/dev/termination-log"));
                default(c, "terminationMessagePolicy", json!("File"));
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                let last = image.rsplit('/').next().unwrap_or(image);
                let latest = !last.contains(':') || last.ends_with(":latest");
                let policy = if latest && !image.contains('@') {
                    "Always"
                } else {
                    "IfNotPresent"
                };
                default(c, "imagePullPolicy", json!(policy));
                default(c, "resources", json!({}));
                if let Some(Value::Array(ports)) = c.get_mut("ports") {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        default(port, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

fn secret(obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else { return };
    default(m, "type", json!("Opaque"));
    if let Some(Value::Object(sd)) = m.remove("stringData") {
        let data = m.entry("data").or_insert_with(|| json!({}));
        if let Some(d) = data.as_object_mut() {
            for (k, v) in sd {
                let s = v.as_str().unwrap_or("");
                d.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
}
