//! Simulated controllers: Deployment rollout status and one pod per replica.

use super::resources::{DEPLOYMENTS, NAMESPACES, PODS};
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
    let t = dep
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    let digest = sha2::Sha256::digest(serde_json::to_vec(&t).unwrap_or_default());
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
    sync_pods(shared, &dep, &hash, replicas, fails, &now);
    let _ = shared.store.modify(DEPLOYMENTS, ns, name, false, |cur| {
        let Some(cur) = cur else {
            return Ok(Change::Keep);
        };
        if i(cur, "/metadata/generation") != Some(generation) {
            return Ok(Change::Keep);
        }
        let mut new = (**cur).clone();
        let rs = format!("{name}-{hash}");
        new["status"] = if fails {
            json!({
                "observedGeneration": generation,
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

/// Makes the Deployment's pods those of the current template, `replicas` of them.
fn sync_pods(shared: &Shared, dep: &Value, hash: &str, replicas: i64, fails: bool, now: &str) {
    let ns = s(dep, "/metadata/namespace");
    let name = s(dep, "/metadata/name");
    let uid = s(dep, "/metadata/uid").to_string();
    let owned = |p: &Value| {
        p.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|r| {
                r.iter()
                    .any(|o| o.get("uid").and_then(Value::as_str) == Some(&uid))
            })
    };
    // The pods this controller made are named `<deployment>-<template hash>-<suffix>`:
    // only those names need a look (a scan of the namespace made every rollout cost as
    // much as the pods already there).
    let pods = shared
        .store
        .list_prefixed(PODS, ns, &format!("{name}-"), owned);
    let mut current = 0;
    for p in &pods {
        let same = s(p, "/metadata/labels/pod-template-hash") == hash;
        if same && current < replicas {
            current += 1;
            continue;
        }
        let _ = shared.store.delete(
            PODS,
            ns,
            s(p, "/metadata/name"),
            &DeleteOptions {
                uid: None,
                resource_version: None,
                propagation: Propagation::Cascade,
                dry_run: false,
            },
            now,
        );
    }
    let template = dep.pointer("/spec/template").cloned().unwrap_or(json!({}));
    for _ in current..replicas {
        let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
        let pod_name = format!("{name}-{hash}-{suffix}");
        let mut labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        labels["pod-template-hash"] = json!(hash);
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
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name, "namespace": ns, "labels": labels,
                "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                    "uid": uid, "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": spec,
            "status": {
                "phase": if fails { "Pending" } else { "Running" },
                "conditions": [
                    {"type": "Ready", "status": ready, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
                ],
                "hostIP": "10.0.0.1", "podIP": "10.244.0.2", "startTime": now,
                "containerStatuses": statuses
            }
        });
        let _ = shared.store.create(PODS, pod, false);
    }
}
