//! Compact caches of the owned objects, fed by label-selected watches.
//!
//! A reflector store would keep every owned object whole (a typed `k8s-openapi` Deployment
//! with its pod template is several KiB in memory); with thousands of deployments that was
//! most of the agent's memory. Here each object is reduced on receipt to a [`Cached`]
//! projection: the metadata the contract needs (name, namespace, UID, resource version,
//! owner and deployment-ID labels, revision annotation, deletion mark), the Deployment
//! status fields the phase is computed from, and a [`Verdict`]: the desired object of its
//! deployment (as known at receipt) compared field by field with the received one, kept as
//! the desired digest plus one bit. The full object is then dropped.
//!
//! The reconciler trusts a verdict only while the desired digest it was computed against is
//! still current; otherwise it reads the object once by name and compares again, so drift
//! detection and "no write when nothing changed" are exactly those of a full comparison.

use super::builders::{DEPLOYMENT_ID_LABEL, OWNER_LABEL, REVISION_ANNOTATION};
use super::reconcile::{Kind, build_kind, digest, is_subset, wanted_kinds};
use super::sync::DesiredState;
use crate::core::DeployedObject;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The result of comparing a received object with its deployment's desired object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Digest of the desired deployment compared against (see `reconcile::digest`).
    pub digest: Arc<str>,
    /// Whether every desired field had the desired value.
    pub in_sync: bool,
}

/// The Deployment status fields the phase and the reported status come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutStatus {
    pub generation: i64,
    pub observed_generation: i64,
    pub replicas: i32,
    pub updated_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    /// Message (or reason) of a condition saying the rollout failed.
    pub failure: Option<String>,
}

impl RolloutStatus {
    /// The rollout status of `d`; `None` while the controller has not reported any.
    pub fn of(d: &Deployment) -> Option<Self> {
        let st = d.status.as_ref()?;
        let failure = st.conditions.iter().flatten().find_map(|c| {
            let failed_progress = c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded");
            let replica_failure = c.type_ == "ReplicaFailure" && c.status == "True";
            (failed_progress || replica_failure).then(|| {
                c.message
                    .clone()
                    .or_else(|| c.reason.clone())
                    .unwrap_or_default()
            })
        });
        Some(Self {
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: st.observed_generation.unwrap_or(0),
            replicas: st.replicas.unwrap_or(0),
            updated_replicas: st.updated_replicas.unwrap_or(0),
            ready_replicas: st.ready_replicas.unwrap_or(0),
            available_replicas: st.available_replicas.unwrap_or(0),
            failure,
        })
    }
}

/// What the agent keeps of one object of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub kind: Kind,
    pub name: String,
    pub namespace: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// Value of the owner label (the deployer ID), if any.
    pub owner: Option<String>,
    /// Value of the deployment-ID label, if any.
    pub deployment_id: Option<String>,
    /// The deployer revision the object was last applied with (0 if unknown).
    pub revision: u64,
    /// The object is being deleted.
    pub deleting: bool,
    /// Deployments only.
    pub rollout: Option<RolloutStatus>,
    pub verdict: Option<Verdict>,
}

impl Cached {
    /// Projects a received object. `verdict_of` compares it (as JSON) with what is desired.
    pub fn project<K: serde::Serialize>(
        kind: Kind,
        meta: &ObjectMeta,
        object: &K,
        rollout: Option<RolloutStatus>,
        verdict_of: impl FnOnce(&ObjectMeta, &dyn Fn() -> serde_json::Value) -> Option<Verdict>,
    ) -> Self {
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
        let value = || serde_json::to_value(object).unwrap_or(serde_json::Value::Null);
        Self {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            owner: label(OWNER_LABEL),
            deployment_id: label(DEPLOYMENT_ID_LABEL),
            revision: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            deleting: meta.deletion_timestamp.is_some(),
            rollout,
            verdict: verdict_of(meta, &value),
        }
    }

    /// Whether the verdict was computed against `digest`, and if so its answer.
    pub fn in_sync_with(&self, digest: &str) -> Option<bool> {
        self.verdict
            .as_ref()
            .filter(|v| *v.digest == *digest)
            .map(|v| v.in_sync)
    }
}

/// Compares `value` (an object of `kind`) with what `obj` wants of that kind.
pub fn verdict_against(
    obj: &DeployedObject,
    kind: Kind,
    proxy_image: &str,
    value: &serde_json::Value,
) -> Verdict {
    Verdict {
        digest: digest(obj).into(),
        in_sync: is_subset(&build_kind(obj, kind, proxy_image), value),
    }
}

/// Judges received objects against the desired state current at receipt.
#[derive(Clone)]
pub struct Judge {
    pub desired: watch::Receiver<DesiredState>,
    pub proxy_image: Arc<str>,
}

impl Judge {
    fn verdict(
        &self,
        kind: Kind,
        meta: &ObjectMeta,
        value: &dyn Fn() -> serde_json::Value,
    ) -> Option<Verdict> {
        let id = meta.labels.as_ref()?.get(DEPLOYMENT_ID_LABEL)?;
        let obj = self.desired.borrow().deployments.get(id)?.clone();
        let wanted = meta.name.as_deref() == Some(obj.name.as_str())
            && meta.namespace.as_deref() == Some(obj.namespace.as_str())
            && wanted_kinds(&obj).contains(&kind);
        wanted.then(|| verdict_against(&obj, kind, &self.proxy_image, &value()))
    }
}

type Map = HashMap<(String, String), Arc<Cached>>;

/// The cached objects of one kind, by (namespace, name).
#[derive(Clone)]
pub struct Cache {
    map: Arc<RwLock<Map>>,
    ready: watch::Receiver<bool>,
}

impl Cache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        // A panic while holding the lock leaves a consistent map (single inserts/swaps).
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Cached>> {
        self.read()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Cached>> {
        self.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Waits until the first complete list is in.
    pub async fn ready(&self) {
        let mut r = self.ready.clone();
        let _ = r.wait_for(|ready| *ready).await;
    }
}

/// Watches each of `apis` (label-selected; one per watched namespace, or one cluster-wide)
/// into one [`Cache`]; every change wakes `trigger`.
pub fn spawn_watch<K>(
    apis: Vec<(Option<String>, Api<K>)>,
    kind: Kind,
    selector: &str,
    judge: Judge,
    rollout: fn(&K) -> Option<RolloutStatus>,
    trigger: Arc<Notify>,
    cancel: CancellationToken,
) -> (Cache, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let map: Arc<RwLock<Map>> = Arc::default();
    let (ready_tx, ready) = watch::channel(false);
    let cache = Cache {
        map: map.clone(),
        ready,
    };
    let project = move |o: &K| -> ((String, String), Arc<Cached>) {
        let c = Cached::project(kind, o.meta(), o, rollout(o), |meta, value| {
            judge.verdict(kind, meta, value)
        });
        ((c.namespace.clone(), c.name.clone()), Arc::new(c))
    };
    let scopes: Vec<Option<String>> = apis.iter().map(|(ns, _)| ns.clone()).collect();
    let streams: Vec<_> = apis
        .into_iter()
        .enumerate()
        .map(|(i, (_, api))| {
            watcher(api, watcher::Config::default().labels(selector))
                .default_backoff()
                .map(move |e| (i, e))
                .boxed()
        })
        .collect();
    let handle = tokio::spawn(async move {
        let mut stream = futures::stream::select_all(streams);
        // A relist of one scope fills a fresh map, swapped in for that scope when complete.
        let mut relists: Vec<Option<Map>> = vec![None; scopes.len()];
        let mut listed = vec![false; scopes.len()];
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                () = cancel.cancelled() => return,
            };
            let (i, event) = match next {
                Some((i, Ok(e))) => (i, e),
                Some((i, Err(error))) => {
                    warn!(%error, kind = kind.as_str(), namespace = scopes[i].as_deref().unwrap_or("*"), "watch failed; retrying");
                    continue;
                }
                None => return,
            };
            let mut changed = true;
            match event {
                watcher::Event::Init => {
                    relists[i] = Some(Map::new());
                    changed = false;
                }
                watcher::Event::InitApply(o) => {
                    let (k, v) = project(&o);
                    relists[i].get_or_insert_with(Map::new).insert(k, v);
                    changed = false;
                }
                watcher::Event::InitDone => {
                    let fresh = relists[i].take().unwrap_or_default();
                    let mut m = map.write().unwrap_or_else(|e| e.into_inner());
                    match &scopes[i] {
                        None => *m = fresh,
                        Some(ns) => {
                            m.retain(|(n, _), _| n != ns);
                            m.extend(fresh);
                        }
                    }
                    drop(m);
                    listed[i] = true;
                    if listed.iter().all(|l| *l) {
                        ready_tx.send_replace(true);
                    }
                }
                watcher::Event::Apply(o) => {
                    let (k, v) = project(&o);
                    map.write().unwrap_or_else(|e| e.into_inner()).insert(k, v);
                }
                watcher::Event::Delete(o) => {
                    let (k, _) = project(&o);
                    map.write().unwrap_or_else(|e| e.into_inner()).remove(&k);
                }
            }
            if changed {
                trigger.notify_one();
            }
        }
    });
    (cache, handle)
}

/// The caches of the three kinds the agent writes.
#[derive(Clone)]
pub struct Stores {
    pub deployments: Cache,
    pub services: Cache,
    pub ingresses: Cache,
}

impl Stores {
    pub fn of(&self, kind: Kind) -> &Cache {
        match kind {
            Kind::Deployment => &self.deployments,
            Kind::Service => &self.services,
            Kind::Ingress => &self.ingresses,
        }
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Cached>> {
        self.of(kind).get(namespace, name)
    }

    pub fn all(&self) -> Vec<Arc<Cached>> {
        let mut v = self.deployments.all();
        v.extend(self.services.all());
        v.extend(self.ingresses.all());
        v
    }

    /// Waits until every cache has its first complete list.
    pub async fn ready(&self) {
        self.deployments.ready().await;
        self.services.ready().await;
        self.ingresses.ready().await;
    }
}

/// One API handle per watched scope: each of `namespaces`, or cluster-wide when empty.
fn scoped_apis<K>(client: &kube::Client, namespaces: &[String]) -> Vec<(Option<String>, Api<K>)>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    if namespaces.is_empty() {
        return vec![(None, Api::all(client.clone()))];
    }
    namespaces
        .iter()
        .map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns)))
        .collect()
}

/// Starts the label-selected watches of the three kinds (per namespace when `namespaces`
/// is not empty, so namespaced RBAC suffices); every event wakes the reconciler.
pub fn start_watches(
    client: &kube::Client,
    namespaces: &[String],
    selector: &str,
    judge: Judge,
    trigger: Arc<Notify>,
    cancel: &CancellationToken,
) -> (Stores, Vec<tokio::task::JoinHandle<()>>) {
    let (deployments, a) = spawn_watch::<Deployment>(
        scoped_apis(client, namespaces),
        Kind::Deployment,
        selector,
        judge.clone(),
        RolloutStatus::of,
        trigger.clone(),
        cancel.clone(),
    );
    let (services, b) = spawn_watch::<Service>(
        scoped_apis(client, namespaces),
        Kind::Service,
        selector,
        judge.clone(),
        |_| None,
        trigger.clone(),
        cancel.clone(),
    );
    let (ingresses, c) = spawn_watch::<Ingress>(
        scoped_apis(client, namespaces),
        Kind::Ingress,
        selector,
        judge,
        |_| None,
        trigger,
        cancel.clone(),
    );
    (
        Stores {
            deployments,
            services,
            ingresses,
        },
        vec![a, b, c],
    )
}
