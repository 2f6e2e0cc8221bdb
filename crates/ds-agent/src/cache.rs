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

use super::builders::{
    AUTOSCALED_ANNOTATION, DEPLOYMENT_ID_LABEL, OWNER_LABEL, REVISION_ANNOTATION,
};
use super::compare::{Verdict, verdict_against, verdict_built};
use super::desired::{Built, KINDS, Kind, SpecDigest};
use super::sync::DesiredState;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::api::Api;
use kube::core::{ApiResource, DynamicResourceScope};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Objects per page of a watch's initial list. kube's default (500) decodes 500 objects
/// at once for each of the watches (one per kind); small pages keep that transient small, at the
/// cost of a few more round trips (50 per 5,000 objects).
pub const LIST_PAGE_SIZE: u32 = 100;

/// An object of any of the agent's kinds as the agent reads it: the metadata it uses,
/// `spec` and `status` as JSON, nothing else.
///
/// Decoding straight into this skips what the agent never looks at, above all
/// `metadata.managedFields` (the biggest part of an object the API server returns, and the
/// biggest allocation of a list page when decoded into `k8s-openapi` types). It is a
/// dynamic resource ([`Kind::api_resource`] says which), so one `Api<Slim>` code path reads,
/// applies, deletes and watches every kind.
#[derive(Debug, Clone)]
pub struct Slim {
    pub metadata: ObjectMeta,
    pub spec: Value,
    pub status: Value,
}

impl Slim {
    /// A slim object from its parts (tests).
    pub fn new(metadata: ObjectMeta, spec: Value, status: Value) -> Self {
        Self {
            metadata,
            spec,
            status,
        }
    }

    /// An API handle for `kind` in `namespace`, or cluster-wide.
    pub fn api(client: kube::Client, kind: Kind, namespace: Option<&str>) -> Api<Slim> {
        match namespace {
            Some(ns) => Api::namespaced_with(client, ns, kind.api_resource()),
            None => Api::all_with(client, kind.api_resource()),
        }
    }
}

/// A dynamic resource (any of the agent's kinds, [`Kind::api_resource`] says which) over
/// a type with `metadata: ObjectMeta`.
macro_rules! dynamic_resource {
    ($t:ty) => {
        impl Resource for $t {
            type DynamicType = ApiResource;
            type Scope = DynamicResourceScope;

            fn kind(dt: &ApiResource) -> Cow<'_, str> {
                dt.kind.as_str().into()
            }
            fn group(dt: &ApiResource) -> Cow<'_, str> {
                dt.group.as_str().into()
            }
            fn version(dt: &ApiResource) -> Cow<'_, str> {
                dt.version.as_str().into()
            }
            fn api_version(dt: &ApiResource) -> Cow<'_, str> {
                dt.api_version.as_str().into()
            }
            fn plural(dt: &ApiResource) -> Cow<'_, str> {
                dt.plural.as_str().into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

dynamic_resource!(Slim);

/// The answer to a write as the agent reads it: the resource version written, nothing
/// else. The rest of the answer (the whole object, managed fields and all) is skipped by
/// the decoder without being built: a first start writes thousands of objects, as many at
/// once as the concurrency allows.
#[derive(Debug, Clone)]
pub struct Written {
    pub metadata: ObjectMeta,
}

impl Written {
    /// An API handle for writes of `kind` in `namespace`.
    pub fn api(client: kube::Client, kind: Kind, namespace: &str) -> Api<Written> {
        Api::namespaced_with(client, namespace, kind.api_resource())
    }
}

dynamic_resource!(Written);

impl<'de> Deserialize<'de> for Written {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            metadata: Meta,
        }
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct Meta {
            resource_version: Option<String>,
        }
        let Raw { metadata } = Raw::deserialize(d)?;
        Ok(Self {
            metadata: ObjectMeta {
                resource_version: metadata.resource_version,
                ..Default::default()
            },
        })
    }
}

impl<'de> Deserialize<'de> for Slim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Unknown fields (apiVersion, kind, managedFields, ownerReferences, ...) are skipped
        // by the decoder without being built.
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            metadata: Meta,
            #[serde(default)]
            spec: Value,
            #[serde(default)]
            status: Value,
        }
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
            generation: Option<i64>,
            labels: Option<BTreeMap<String, String>>,
            annotations: Option<BTreeMap<String, String>>,
            deletion_timestamp: Option<Time>,
        }
        let Raw {
            metadata: m,
            spec,
            status,
        } = Raw::deserialize(d)?;
        Ok(Self::new(
            ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                generation: m.generation,
                labels: m.labels,
                annotations: m.annotations,
                deletion_timestamp: m.deletion_timestamp,
                ..Default::default()
            },
            spec,
            status,
        ))
    }
}

impl Slim {
    /// The object (of `kind`) as JSON, as far as a desired object can ask about it: kind,
    /// name, namespace, labels, annotations and spec (moved, not copied).
    fn into_json(self, kind: Kind) -> Value {
        fn strings(m: Option<BTreeMap<String, String>>) -> Value {
            Value::Object(
                m.unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            )
        }
        let meta = self.metadata;
        let mut metadata = serde_json::Map::new();
        metadata.insert("name".into(), meta.name.map_or(Value::Null, Value::String));
        if let Some(ns) = meta.namespace {
            metadata.insert("namespace".into(), Value::String(ns));
        }
        metadata.insert("labels".into(), strings(meta.labels));
        metadata.insert("annotations".into(), strings(meta.annotations));
        let mut o = serde_json::Map::new();
        o.insert(
            "apiVersion".into(),
            Value::String(kind.api_resource().api_version.clone()),
        );
        o.insert("kind".into(), Value::String(kind.as_str().into()));
        o.insert("metadata".into(), Value::Object(metadata));
        o.insert("spec".into(), self.spec);
        Value::Object(o)
    }
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
        let status = serde_json::to_value(d.status.as_ref()?).ok()?;
        Self::from_json(d.metadata.generation, &status)
    }

    /// The rollout status from a Deployment's `metadata.generation` and `status` (JSON);
    /// `None` while the controller has not reported any.
    pub fn from_json(generation: Option<i64>, st: &Value) -> Option<Self> {
        let st = st.as_object()?;
        let int = |k: &str| st.get(k).and_then(Value::as_i64).unwrap_or(0);
        let replicas = |k: &str| i32::try_from(int(k)).unwrap_or(0);
        let text = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
        let conditions = st.get("conditions").and_then(Value::as_array);
        let failure = conditions.into_iter().flatten().find_map(|c| {
            let is = |k: &str, v: &str| c.get(k).and_then(Value::as_str) == Some(v);
            let failed_progress = is("type", "Progressing")
                && is("status", "False")
                && is("reason", "ProgressDeadlineExceeded");
            let replica_failure = is("type", "ReplicaFailure") && is("status", "True");
            (failed_progress || replica_failure).then(|| {
                text(c, "message")
                    .or_else(|| text(c, "reason"))
                    .unwrap_or_default()
            })
        });
        Some(Self {
            generation: generation.unwrap_or(0),
            observed_generation: int("observedGeneration"),
            replicas: replicas("replicas"),
            updated_replicas: replicas("updatedReplicas"),
            ready_replicas: replicas("readyReplicas"),
            available_replicas: replicas("availableReplicas"),
            failure,
        })
    }
}

/// What the agent keeps of one object of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub kind: Kind,
    /// Shared with the key of the cache's map.
    pub name: Arc<str>,
    /// Shared between the objects of one namespace (and with the cache's map).
    pub namespace: Arc<str>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// Value of the owner label (the deployer ID), if any.
    /// Shared between the objects of one watch (they all carry the same value).
    pub owner: Option<Arc<str>>,
    /// Value of the deployment-ID label, if any (shared with the desired state's key
    /// when that deployment is desired).
    pub deployment_id: Option<Arc<str>>,
    /// The deployer revision the object was last applied with (0 if unknown).
    pub revision: u64,
    /// The object is being deleted.
    pub deleting: bool,
    /// Deployments only (boxed: Services and Ingresses do not pay for it).
    pub rollout: Option<Box<RolloutStatus>>,
    /// A Deployment's `spec.replicas` (the autoscaler's count while autoscaled).
    pub replicas: Option<i32>,
    /// A Deployment last applied for an autoscaler ([`AUTOSCALED_ANNOTATION`]): the
    /// autoscaler, not the agent, holds its replica count.
    pub autoscaled: bool,
    pub verdict: Option<Verdict>,
}

impl Cached {
    /// Projects a received object. `verdict_of` compares it (as JSON) with what is desired;
    /// the object is consumed, so its JSON is built by moving, not copying.
    pub fn project(
        kind: Kind,
        object: Slim,
        verdict_of: impl FnOnce(&Cached, Value) -> Option<Verdict>,
    ) -> Self {
        let meta = &object.metadata;
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
        let rollout = (kind == Kind::Deployment)
            .then(|| RolloutStatus::from_json(meta.generation, &object.status))
            .flatten()
            .map(Box::new);
        let deployment = kind == Kind::Deployment;
        let mut cached = Self {
            kind,
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            owner: label(OWNER_LABEL).map(Arc::from),
            deployment_id: label(DEPLOYMENT_ID_LABEL).map(Arc::from),
            revision: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            deleting: meta.deletion_timestamp.is_some(),
            rollout,
            replicas: object
                .spec
                .get("replicas")
                .and_then(Value::as_i64)
                .and_then(|n| i32::try_from(n).ok())
                .filter(|_| deployment),
            autoscaled: deployment
                && meta
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(AUTOSCALED_ANNOTATION))
                    .is_some_and(|v| v == "true"),
            verdict: None,
        };
        cached.verdict = verdict_of(&cached, object.into_json(kind));
        cached
    }

    /// Whether the verdict was computed against `digest`, and if so its answer.
    pub fn in_sync_with(&self, digest: SpecDigest) -> Option<bool> {
        self.verdict
            .as_ref()
            .filter(|v| v.digest == digest)
            .map(|v| v.in_sync)
    }
}

/// Judges received objects against the desired state current at receipt.
#[derive(Clone)]
pub struct Judge {
    pub desired: watch::Receiver<DesiredState>,
    pub proxy_image: Arc<str>,
    /// What the reconciler built last: the objects its own writes are compared with.
    pub built: Arc<Built>,
}

impl Judge {
    fn verdict(&self, kind: Kind, cached: &Cached, value: Value) -> Option<Verdict> {
        let id = cached.deployment_id.as_deref()?;
        let held = self.desired.borrow().deployments.get(id)?.clone();
        if !held.wants(kind, &cached.namespace, &cached.name) {
            return None;
        }
        // Not kept when built here: on a restart every object is judged once, and keeping
        // them would only hold memory.
        Some(match self.built.get(&held.id, held.revision, kind) {
            Some(b) => verdict_built(&b, &value),
            None => verdict_against(&held.object(), kind, &self.proxy_image, &value),
        })
    }
}

/// The objects of one namespace, by name.
type Names = HashMap<Arc<str>, Arc<Cached>>;

/// By namespace, then name: looked up by `&str` without building a key, and each name and
/// namespace is held once (the keys share the objects' own).
type Map = HashMap<Arc<str>, Names>;

fn insert(map: &mut Map, c: Arc<Cached>) {
    map.entry(c.namespace.clone())
        .or_default()
        .insert(c.name.clone(), c);
}

/// The cached objects of one kind, by (namespace, name).
#[derive(Clone)]
pub struct Cache {
    map: Arc<RwLock<Map>>,
    ready: watch::Receiver<bool>,
}

impl Cache {
    fn read(&self) -> parking_lot::RwLockReadGuard<'_, Map> {
        // A panic while holding the lock leaves a consistent map (single inserts/swaps).
        self.map.read()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Cached>> {
        self.read().get(namespace)?.get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Cached>> {
        self.read()
            .values()
            .flat_map(|names| names.values().cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().values().map(Names::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.read().values().all(Names::is_empty)
    }

    /// Waits until the first complete list is in.
    pub async fn ready(&self) {
        let mut r = self.ready.clone();
        let _ = r.wait_for(|ready| *ready).await;
    }
}

/// A `watcher` (with the default backoff) that also starts over from a fresh list every
/// `relist`. A watch resumes from the last resourceVersion it saw, and kube-apiserver
/// answers a watch from a resourceVersion it has not reached (a cluster restarted empty,
/// or restored from an older backup) with silence rather than 410 Gone, so without a
/// relist the cache would keep objects that no longer exist, for ever.
pub(crate) fn relisting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    relist: Duration,
) -> futures::stream::BoxStream<'static, watcher::Result<watcher::Event<K>>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let fresh = move || {
        watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed()
    };
    let next = tokio::time::Instant::now() + relist;
    futures::stream::unfold(
        (fresh(), fresh, next),
        move |(mut inner, fresh, mut next)| async move {
            loop {
                tokio::select! {
                    item = inner.next() => return Some((item?, (inner, fresh, next))),
                    () = tokio::time::sleep_until(next) => {
                        debug!("listing the watched objects again");
                        inner = fresh();
                        next = tokio::time::Instant::now() + relist;
                    }
                }
            }
        },
    )
    .boxed()
}

/// The owned objects the watches saw change: the reconciler schedules their deployments.
pub type Touched = mpsc::UnboundedSender<Arc<Cached>>;

/// What the watches of every kind share.
struct Watches<'a> {
    client: &'a kube::Client,
    /// One per watched namespace, or `None` once for the whole cluster.
    scopes: Vec<Option<String>>,
    selector: &'a str,
    judge: Judge,
    touched: Touched,
    relist: Duration,
    cancel: &'a CancellationToken,
}

/// Watches `kind` in each of the scopes (label-selected; one per watched namespace, or one
/// cluster-wide) into one [`Cache`]; every change after the initial lists is sent on
/// `touched`.
fn spawn_watch(w: &Watches<'_>, kind: Kind) -> (Cache, tokio::task::JoinHandle<()>) {
    let (client, selector, relist) = (w.client, w.selector, w.relist);
    let (scopes, judge, touched) = (w.scopes.clone(), w.judge.clone(), w.touched.clone());
    let cancel = w.cancel.clone();
    let map: Arc<RwLock<Map>> = Arc::default();
    let (ready_tx, ready) = watch::channel(false);
    let cache = Cache {
        map: map.clone(),
        ready,
    };
    // Every object of the watch carries the same owner label: keep one copy of it; and
    // one copy of each namespace's name.
    let mut owner: Option<Arc<str>> = None;
    let mut namespaces: std::collections::HashSet<Arc<str>> = Default::default();
    let mut project = move |o: Slim| -> Arc<Cached> {
        let mut c = Cached::project(kind, o, |c, value| judge.verdict(kind, c, value));
        match (&c.owner, &owner) {
            (Some(new), Some(known)) if new == known => c.owner = Some(known.clone()),
            (Some(new), _) => owner = Some(new.clone()),
            (None, _) => {}
        }
        match namespaces.get(&c.namespace) {
            Some(ns) => c.namespace = ns.clone(),
            None => {
                namespaces.insert(c.namespace.clone());
            }
        }
        if let Some(id) = &c.deployment_id
            && let Some((key, _)) = judge.desired.borrow().deployments.get_key_value(&**id)
        {
            c.deployment_id = Some(key.clone());
        }
        Arc::new(c)
    };
    let streams: Vec<_> = scopes
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let config = watcher::Config::default()
                .labels(selector)
                .page_size(LIST_PAGE_SIZE);
            relisting_watcher(
                Slim::api(client.clone(), kind, ns.as_deref()),
                config,
                relist,
            )
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
            match event {
                watcher::Event::Init => {
                    relists[i] = Some(Map::new());
                }
                watcher::Event::InitApply(o) => {
                    insert(relists[i].get_or_insert_with(Map::new), project(o));
                }
                watcher::Event::InitDone => {
                    let fresh = relists[i].take().unwrap_or_default();
                    let mut m = map.write();
                    let old: Map = match &scopes[i] {
                        None => std::mem::replace(&mut *m, fresh),
                        Some(ns) => {
                            // This scope's list holds this one namespace only.
                            let old = m.remove(ns.as_str());
                            m.extend(fresh);
                            old.map(|names| (Arc::from(ns.as_str()), names))
                                .into_iter()
                                .collect()
                        }
                    };
                    drop(m);
                    // A relist after a watch gap: what vanished meanwhile needs a look, and
                    // a full pass follows anyway. The first list is followed by one too.
                    if listed[i] {
                        for gone in old.into_values().flat_map(Names::into_values) {
                            let _ = touched.send(gone);
                        }
                    }
                    listed[i] = true;
                    if listed.iter().all(|l| *l) {
                        ready_tx.send_replace(true);
                    }
                }
                watcher::Event::Apply(o) => {
                    let v = project(o);
                    insert(&mut map.write(), v.clone());
                    let _ = touched.send(v);
                }
                watcher::Event::Delete(o) => {
                    let m = o.meta();
                    let (ns, name) = (
                        m.namespace.as_deref().unwrap_or_default(),
                        m.name.as_deref().unwrap_or_default(),
                    );
                    let mut map = map.write();
                    let gone = map.get_mut(ns).and_then(|names| names.remove(name));
                    if map.get(ns).is_some_and(Names::is_empty) {
                        map.remove(ns);
                    }
                    drop(map);
                    if let Some(gone) = gone {
                        let _ = touched.send(gone);
                    }
                }
            }
        }
    });
    (cache, handle)
}

/// The caches of the kinds the agent writes, indexed by [`Kind`].
#[derive(Clone)]
pub struct Stores([Cache; KINDS]);

impl Stores {
    pub fn of(&self, kind: Kind) -> &Cache {
        &self.0[kind as usize]
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Cached>> {
        self.of(kind).get(namespace, name)
    }

    pub fn all(&self) -> Vec<Arc<Cached>> {
        self.0.iter().flat_map(Cache::all).collect()
    }

    /// Waits until every cache has its first complete list.
    pub async fn ready(&self) {
        for c in &self.0 {
            c.ready().await;
        }
    }
}

/// Starts the label-selected watches of every kind (per namespace when `namespaces`
/// is not empty, so namespaced RBAC suffices); every change is sent on `touched`.
pub fn start_watches(
    client: &kube::Client,
    namespaces: &[String],
    selector: &str,
    judge: Judge,
    touched: Touched,
    relist: Duration,
    cancel: &CancellationToken,
) -> (Stores, Vec<tokio::task::JoinHandle<()>>) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let watches = Watches {
        client,
        scopes,
        selector,
        judge,
        touched,
        relist,
        cancel,
    };
    let (caches, tasks): (Vec<_>, Vec<_>) = Kind::ALL
        .iter()
        .map(|&kind| spawn_watch(&watches, kind))
        .unzip();
    let caches: [Cache; KINDS] = caches
        .try_into()
        .unwrap_or_else(|_| unreachable!("one cache per kind"));
    (Stores(caches), tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::desired_deployment;
    use crate::desired::test_object;
    use ds_core::DeployedObject;
    use ds_core::DeploymentSpec;
    use serde_json::json;

    fn obj() -> DeployedObject {
        test_object(DeploymentSpec::test("iris"))
    }

    /// The desired Deployment as an API server returns it: defaults, status, managed fields.
    fn as_served(o: &DeployedObject) -> Value {
        let mut v = serde_json::to_value(desired_deployment(o, "proxy:1")).unwrap();
        let m = &mut v["metadata"];
        m["uid"] = json!("u-1");
        m["resourceVersion"] = json!("42");
        m["generation"] = json!(2);
        m["managedFields"] = json!([{"manager": "ds-deployer", "operation": "Apply",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]);
        v["spec"]["revisionHistoryLimit"] = json!(10);
        v["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
        v["status"] = json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1});
        v
    }

    fn judge(o: &DeployedObject, served: Value) -> Cached {
        let slim: Slim = serde_json::from_value(served).unwrap();
        assert!(slim.metadata.managed_fields.is_none(), "never decoded");
        Cached::project(Kind::Deployment, slim, |_, v| {
            Some(verdict_against(o, Kind::Deployment, "proxy:1", &v))
        })
    }

    #[test]
    fn slim_objects_keep_what_the_agent_uses() {
        let o = obj();
        let c = judge(&o, as_served(&o));
        assert_eq!((&*c.name, &*c.namespace), ("iris", "models"));
        assert_eq!(c.uid.as_deref(), Some("u-1"));
        assert_eq!(c.resource_version.as_deref(), Some("42"));
        assert_eq!(c.owner.as_deref(), Some("owner-1"));
        assert_eq!(c.deployment_id.as_deref(), Some("dep-1"));
        assert_eq!(c.revision, 3);
        assert!(!c.deleting);
        let r = c.rollout.expect("status read");
        assert_eq!((r.generation, r.observed_generation), (2, 2));
        assert_eq!(r.available_replicas, 1);
        assert_eq!(c.verdict.map(|v| v.in_sync), Some(true), "served = desired");
    }

    #[test]
    fn slim_objects_still_show_drift() {
        let o = obj();
        let mut served = as_served(&o);
        served["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other:2");
        assert_eq!(judge(&o, served).verdict.map(|v| v.in_sync), Some(false));
        let mut served = as_served(&o);
        served["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(OWNER_LABEL);
        let c = judge(&o, served);
        assert_eq!(c.owner, None);
        assert_eq!(c.verdict.map(|v| v.in_sync), Some(false), "label removed");
    }
}
