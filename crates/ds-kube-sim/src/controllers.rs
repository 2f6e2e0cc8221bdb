//! Simulated controllers: Deployment rollout status and one pod per replica.

use super::resources::{DEPLOYMENTS, NAMESPACES, PODS, REPLICASETS};
use super::server::{Shared, now};
use super::store::{Change, DeleteOptions, EventType, Propagation};
use regex::Regex;
use serde_json::{Value, json};
use sha2::Digest as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How long a deleted namespace stays Terminating before its content and itself are gone
/// (`kubectl delete -f` deletes the namespace's objects after the namespace itself).
const NAMESPACE_CLEANUP_DELAY: Duration = Duration::from_millis(1000);

/// Settings of the simulated controllers.
#[derive(Clone)]
pub(crate) struct ControllerConfig {
    pub rollout_delay: Duration,
    pub failing_image: Option<Regex>,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn i(v: &Value, p: &str) -> Option<i64> {
    v.pointer(p).and_then(Value::as_i64)
}

/// Short stable hash of the pod template (like `pod-template-hash`).
fn template_hash(dep: &Value) -> String {
    let t = dep.pointer("/spec/template").unwrap_or(&Value::Null);
    let digest = sha2::Sha256::digest(serde_json::to_vec(t).unwrap_or_default());
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    digest[..10]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn failing(cfg: &ControllerConfig, dep: &Value) -> bool {
    let Some(re) = &cfg.failing_image else {
        return false;
    };
    dep.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("image")
                    .and_then(Value::as_str)
                    .is_some_and(|i| re.is_match(i))
            })
        })
}

fn condition(ty: &str, status: bool, reason: &str, message: String, now: &str) -> Value {
    json!({
        "type": ty, "status": if status { "True" } else { "False" },
        "lastUpdateTime": now, "lastTransitionTime": now,
        "reason": reason, "message": message
    })
}

/// Runs until shutdown: reacts to Deployment changes.
pub(crate) async fn run(shared: Arc<Shared>, cfg: ControllerConfig) {
    let mut rx = shared.store.subscribe();
    // Deployments restored from a state file or created before the subscription.
    reconcile_all(&shared, &cfg);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            ev = rx.recv() => match ev {
                Ok(ev) if ev.rt == DEPLOYMENTS && ev.ty != EventType::Deleted => {
                    reconcile(&shared, &cfg, &ev.obj);
                }
                Ok(ev) if ev.rt == NAMESPACES
                    && ev.ty == EventType::Modified
                    && ev.obj.pointer("/metadata/deletionTimestamp").is_some()
                    && ev.prev.as_ref().is_some_and(|p| p.pointer("/metadata/deletionTimestamp").is_none()) =>
                {
                    let name = s(&ev.obj, "/metadata/name").to_string();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = shared.shutdown.cancelled() => {}
                            _ = tokio::time::sleep(NAMESPACE_CLEANUP_DELAY) => {
                                shared.store.purge_namespace(&name);
                            }
                        }
                    });
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => reconcile_all(&shared, &cfg),
                Err(RecvError::Closed) => return,
            }
        }
    }
}

fn reconcile_all(shared: &Arc<Shared>, cfg: &ControllerConfig) {
    let page = shared.store.list(DEPLOYMENTS, None, |_| true, None, None);
    for d in page.items {
        reconcile(shared, cfg, &d);
    }
}

/// Starts a rollout when the Deployment's generation is not yet observed.
fn reconcile(shared: &Arc<Shared>, cfg: &ControllerConfig, dep: &Value) {
    let generation = i(dep, "/metadata/generation").unwrap_or(1);
    if i(dep, "/status/observedGeneration") == Some(generation)
        || dep.pointer("/metadata/deletionTimestamp").is_some()
    {
        return;
    }
    let ns = s(dep, "/metadata/namespace").to_string();
    let name = s(dep, "/metadata/name").to_string();
    let hash = template_hash(dep);
    tracing::debug!(%ns, %name, generation, "simulated rollout starts");
    if cfg.rollout_delay.is_zero() {
        finish(shared, cfg, &ns, &name, generation);
        return;
    }
    // Progressing: the new ReplicaSet is scaled up; old pods still serve.
    let now = now();
    let _ = shared.store.modify(DEPLOYMENTS, &ns, &name, false, |cur| {
        let Some(cur) = cur else {
            return Ok(Change::Keep);
        };
        if i(cur, "/metadata/generation") != Some(generation) {
            return Ok(Change::Keep);
        }
        let replicas = i(cur, "/spec/replicas").unwrap_or(1);
        let ready = i(cur, "/status/readyReplicas").unwrap_or(0).min(replicas);
        let available = i(cur, "/status/availableReplicas")
            .unwrap_or(0)
            .min(replicas);
        let mut new = (**cur).clone();
        let available_cond = condition(
            "Available",
            available >= replicas,
            if available >= replicas {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            if available >= replicas {
                "Deployment has minimum availability.".into()
            } else {
                "Deployment does not have minimum availability.".into()
            },
            &now,
        );
        // The new ReplicaSet has no pods yet: clients (kubectl rollout status) wait.
        let mut status = json!({
            "observedGeneration": generation,
            "terminatingReplicas": 0,
            "replicas": replicas,
            "conditions": [
                available_cond,
                condition("Progressing", true, "ReplicaSetUpdated",
                    format!("ReplicaSet \"{name}-{hash}\" is progressing."), &now),
            ]
        });
        if ready > 0 {
            status["readyReplicas"] = json!(ready);
        }
        if available > 0 {
            status["availableReplicas"] = json!(available);
        }
        if replicas > available {
            status["unavailableReplicas"] = json!(replicas - available);
        }
        new["status"] = status;
        Ok(Change::Put(new))
    });
    let shared = shared.clone();
    let cfg = cfg.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {}
            _ = tokio::time::sleep(cfg.rollout_delay) => finish(&shared, &cfg, &ns, &name, generation),
        }
    });
}

/// Ends a rollout: pods of the new template replace the old ones, status converges (or,
/// for a failing image, reports ProgressDeadlineExceeded).
fn finish(shared: &Shared, cfg: &ControllerConfig, ns: &str, name: &str, generation: i64) {
    let Some(dep) = shared.store.get(DEPLOYMENTS, ns, name) else {
        return;
    };
    if i(&dep, "/metadata/generation") != Some(generation) {
        return; // A newer rollout has taken over.
    }
    let replicas = i(&dep, "/spec/replicas").unwrap_or(1).max(0);
    let hash = template_hash(&dep);
    let fails = failing(cfg, &dep);
    let now = now();
    let revision = sync_pods(shared, &dep, &hash, replicas, fails, &now);
    let _ = shared.store.modify(DEPLOYMENTS, ns, name, false, |cur| {
        let Some(cur) = cur else {
            return Ok(Change::Keep);
        };
        if i(cur, "/metadata/generation") != Some(generation) {
            return Ok(Change::Keep);
        }
        let mut new = (**cur).clone();
        // As the real controller (through the status subresource: no new generation).
        if !new["metadata"]["annotations"].is_object() {
            new["metadata"]["annotations"] = json!({});
        }
        new["metadata"]["annotations"][REVISION] = json!(revision.to_string());
        let rs = format!("{name}-{hash}");
        new["status"] = if fails {
            json!({
                "observedGeneration": generation,
            "terminatingReplicas": 0,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "unavailableReplicas": replicas,
                "conditions": [
                    condition("Available", false, "MinimumReplicasUnavailable",
                        "Deployment does not have minimum availability.".into(), &now),
                    condition("Progressing", false, "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{rs}\" has timed out progressing."), &now),
                ]
            })
        } else {
            json!({
                "observedGeneration": generation,
            "terminatingReplicas": 0,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [
                    condition("Available", true, "MinimumReplicasAvailable",
                        "Deployment has minimum availability.".into(), &now),
                    condition("Progressing", true, "NewReplicaSetAvailable",
                        format!("ReplicaSet \"{rs}\" has successfully progressed."), &now),
                ]
            })
        };
        if replicas == 0
            && let Some(st) = new["status"].as_object_mut()
        {
            st.remove("readyReplicas");
            st.remove("availableReplicas");
        }
        Ok(Change::Put(new))
    });
}

const REVISION: &str = "deployment.kubernetes.io/revision";

fn owned_by(uid: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| {
        v.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|r| {
                r.iter()
                    .any(|o| o.get("uid").and_then(Value::as_str) == Some(uid))
            })
    }
}

fn revision_of(rs: &Value) -> i64 {
    rs.pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn delete_now(shared: &Shared, rt: usize, ns: &str, name: &str, now: &str) {
    let _ = shared.store.delete(
        rt,
        ns,
        name,
        &DeleteOptions {
            uid: None,
            resource_version: None,
            propagation: Propagation::Cascade,
            dry_run: false,
        },
        now,
    );
}

/// The rolling update's surge in pods (`maxSurge`: a count or a percentage, rounded up).
fn max_surge(dep: &Value, replicas: i64) -> i64 {
    if s(dep, "/spec/strategy/type") == "Recreate" {
        return 0;
    }
    match dep.pointer("/spec/strategy/rollingUpdate/maxSurge") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(p)) => p
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map_or(0, |p| (p * replicas + 99) / 100),
        _ => (25 * replicas + 99) / 100,
    }
}

fn owner_ref(kind: &str, name: &str, uid: &str) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid,
        "controller": true, "blockOwnerDeletion": true}])
}

/// Makes the Deployment's ReplicaSets and pods those of the current template, as the real
/// deployment and replicaset controllers leave them once a rollout is done: the ReplicaSet
/// `NAME-HASH` (owned by the Deployment) with `replicas` pods (owned by it), older
/// ReplicaSets scaled to zero and kept up to `revisionHistoryLimit`. Answers the revision.
fn sync_pods(
    shared: &Shared,
    dep: &Value,
    hash: &str,
    replicas: i64,
    fails: bool,
    now: &str,
) -> i64 {
    let ns = s(dep, "/metadata/namespace");
    let name = s(dep, "/metadata/name");
    let dep_uid = s(dep, "/metadata/uid").to_string();
    // What a Deployment owns, and what its ReplicaSets own, is only ever made here and
    // named after its owner (`NAME-HASH`, `NAME-HASH-SUFFIX`): each lookup below is a range
    // of the store's keys, not a scan of the namespace (which made every rollout cost as
    // much as the pods already there, under the lock every request takes).
    let prefix = format!("{name}-");
    // Pods an earlier simulator owned by the Deployment directly.
    for p in shared
        .store
        .list_prefixed(PODS, ns, &prefix, owned_by(&dep_uid))
    {
        delete_now(shared, PODS, ns, s(&p, "/metadata/name"), now);
    }
    let rs_name = format!("{name}-{hash}");
    let rss = shared
        .store
        .list_prefixed(REPLICASETS, ns, &prefix, owned_by(&dep_uid));
    let template = dep.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    labels["pod-template-hash"] = json!(hash);
    let current = rss
        .iter()
        .find(|r| s(r, "/metadata/name") == rs_name)
        .cloned();
    let revision = match &current {
        Some(r) => revision_of(r),
        None => rss.iter().map(|r| revision_of(r)).max().unwrap_or(0) + 1,
    };
    // Older ReplicaSets: scaled to zero (their pods go), the oldest beyond the history limit
    // deleted.
    let mut old: Vec<&Arc<Value>> = rss
        .iter()
        .filter(|r| s(r, "/metadata/name") != rs_name)
        .collect();
    old.sort_by_key(|r| revision_of(r));
    let limit = i(dep, "/spec/revisionHistoryLimit").unwrap_or(10).max(0) as usize;
    let excess = old.len().saturating_sub(limit);
    for (n, r) in old.iter().enumerate() {
        let rs = s(r, "/metadata/name");
        if n < excess {
            delete_now(shared, REPLICASETS, ns, rs, now);
            continue;
        }
        let uid = s(r, "/metadata/uid").to_string();
        for p in shared
            .store
            .list_prefixed(PODS, ns, &format!("{rs}-"), owned_by(&uid))
        {
            delete_now(shared, PODS, ns, s(&p, "/metadata/name"), now);
        }
        let _ = shared.store.modify(REPLICASETS, ns, rs, false, |cur| {
            let Some(cur) = cur else {
                return Ok(Change::Keep);
            };
            let mut new = (**cur).clone();
            new["spec"]["replicas"] = json!(0);
            new["status"] = json!({"replicas": 0, "terminatingReplicas": 0,
                "observedGeneration": i(cur, "/metadata/generation").unwrap_or(1)});
            Ok(Change::Put(new))
        });
    }
    // The current ReplicaSet.
    let ready = if fails { 0 } else { replicas };
    let rs_status = |generation: i64| {
        let mut st = json!({"replicas": replicas, "fullyLabeledReplicas": replicas,
            "observedGeneration": generation, "terminatingReplicas": 0});
        if ready > 0 {
            st["readyReplicas"] = json!(ready);
            st["availableReplicas"] = json!(ready);
        }
        st
    };
    let annotations = json!({
        "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
        "deployment.kubernetes.io/max-replicas": (replicas + max_surge(dep, replicas)).to_string(),
        REVISION: revision.to_string(),
    });
    let rs_uid = match &current {
        Some(r) => {
            let _ = shared
                .store
                .modify(REPLICASETS, ns, &rs_name, false, |cur| {
                    let Some(cur) = cur else {
                        return Ok(Change::Keep);
                    };
                    let mut new = (**cur).clone();
                    let generation = i(cur, "/metadata/generation").unwrap_or(1);
                    let generation = if i(cur, "/spec/replicas") == Some(replicas) {
                        generation
                    } else {
                        generation + 1
                    };
                    new["metadata"]["generation"] = json!(generation);
                    new["metadata"]["annotations"] = annotations.clone();
                    new["spec"]["replicas"] = json!(replicas);
                    new["status"] = rs_status(generation);
                    Ok(Change::Put(new))
                });
            s(r, "/metadata/uid").to_string()
        }
        None => {
            let uid = uuid::Uuid::new_v4().to_string();
            let mut selector = dep.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"] = labels.clone();
            let mut rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns,
                    "uid": uid, "creationTimestamp": now, "generation": 1},
                "spec": {"replicas": replicas},
            });
            rs["metadata"]["labels"] = labels.clone();
            rs["metadata"]["annotations"] = annotations;
            rs["metadata"]["ownerReferences"] = owner_ref("Deployment", name, &dep_uid);
            rs["spec"]["selector"] = selector;
            rs["spec"]["template"] = rs_template;
            rs["status"] = rs_status(1);
            let _ = shared.store.create(REPLICASETS, rs, false);
            uid
        }
    };
    sync_replicaset_pods(
        shared, ns, &rs_name, &rs_uid, &template, &labels, replicas, fails, now,
    );
    revision
}

/// `replicas` pods of the template, owned by the ReplicaSet.
#[allow(clippy::too_many_arguments)]
fn sync_replicaset_pods(
    shared: &Shared,
    ns: &str,
    rs_name: &str,
    rs_uid: &str,
    template: &Value,
    labels: &Value,
    replicas: i64,
    fails: bool,
    now: &str,
) {
    let pods = shared
        .store
        .list_prefixed(PODS, ns, &format!("{rs_name}-"), owned_by(rs_uid));
    let mut current = 0;
    for p in &pods {
        if current < replicas {
            current += 1;
            continue;
        }
        delete_now(shared, PODS, ns, s(p, "/metadata/name"), now);
    }
    for _ in current..replicas {
        let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
        let pod_name = format!("{rs_name}-{suffix}");
        let containers = template
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                let state = if fails {
                    json!({"waiting": {"reason": "ImagePullBackOff",
                        "message": format!("Back-off pulling image \"{}\"", s(c, "/image"))}})
                } else {
                    json!({"running": {"startedAt": now}})
                };
                json!({"name": c["name"], "image": c["image"], "imageID": "",
                       "ready": !fails, "started": !fails, "restartCount": 0, "state": state})
            })
            .collect();
        let ready = if fails { "False" } else { "True" };
        let mut spec = template.pointer("/spec").cloned().unwrap_or(json!({}));
        spec["nodeName"] = json!("sim-node");
        // Values built elsewhere are moved in after `json!`, which would copy each of them
        // through the serializer.
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name, "namespace": ns,
                "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now,
                "generation": 1,
            },
            "status": {
                "phase": if fails { "Pending" } else { "Running" },
                "conditions": [
                    {"type": "Ready", "status": ready, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
                ],
                "hostIP": "10.0.0.1", "podIP": "10.244.0.2", "startTime": now,
            }
        });
        pod["metadata"]["labels"] = labels.clone();
        pod["metadata"]["ownerReferences"] = owner_ref("ReplicaSet", rs_name, rs_uid);
        pod["spec"] = spec;
        pod["status"]["containerStatuses"] = Value::Array(statuses);
        super::defaults::admit_pod(&mut pod);
        pod["spec"]["enableServiceLinks"] = json!(true);
        pod["status"]["qosClass"] = json!(super::defaults::qos_class(&pod));
        let _ = shared.store.create(PODS, pod, false);
    }
}
