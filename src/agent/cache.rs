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
use super::reconcile::{Kind, SpecDigest, build_kind, digest, is_subset, wanted_kinds};
use super::sync::DesiredState;
use crate::core::DeployedObject;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Objects per page of a watch's initial list. kube's default (500) decodes 500 objects
/// at once for each of the three watches; small pages keep that transient small, at the
/// cost of a few more round trips (50 per 5,000 objects).
pub const LIST_PAGE_SIZE: u32 = 100;

/// An object of kind `K` as the agent reads it: the metadata it uses, `spec` and `status`
/// as JSON, nothing else.
///
/// Decoding straight into this skips what the agent never looks at, above all
/// `metadata.managedFields` (the biggest part of an object the API server returns, and the
/// biggest allocation of a list page when decoded into `k8s-openapi` types). Its
/// [`Resource`] impl borrows `K`'s, so `Api<Slim<Deployment>>` reads Deployments.
#[derive(Debug, Clone)]
pub struct Slim<K> {
    pub metadata: ObjectMeta,
    pub spec: Value,
    pub status: Value,
    kind: PhantomData<fn() -> K>,
}

impl<K> Slim<K> {
    /// A slim object from its parts (tests).
    pub fn new(metadata: ObjectMeta, spec: Value, status: Value) -> Self {
        Self {
            metadata,
            spec,
            status,
            kind: PhantomData,
        }
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Slim<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn url_path(dt: &(), namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de, K> Deserialize<'de> for Slim<K> {
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

impl<K: Resource<DynamicType = ()>> Slim<K> {
    /// The object as JSON, as far as a desired object can ask about it: kind, name,
    /// namespace, labels, annotations and spec (moved, not copied).
    fn into_json(self) -> Value {
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
            Value::String(K::api_version(&()).into()),
        );
        o.insert("kind".into(), Value::String(K::kind(&()).into()));
        o.insert("metadata".into(), Value::Object(metadata));
        o.insert("spec".into(), self.spec);
        Value::Object(o)
    }
}

/// The result of comparing a received object with its deployment's desired object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Digest of the desired deployment compared against (see `reconcile::digest`).
    pub digest: SpecDigest,
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
    pub name: String,
    pub namespace: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// Value of the owner label (the deployer ID), if any.
    /// Shared between the objects of one watch (they all carry the same value).
    pub owner: Option<Arc<str>>,
    /// Value of the deployment-ID label, if any.
    pub deployment_id: Option<String>,
    /// The deployer revision the object was last applied with (0 if unknown).
    pub revision: u64,
    /// The object is being deleted.
    pub deleting: bool,
    /// Deployments only (boxed: Services and Ingresses do not pay for it).
    pub rollout: Option<Box<RolloutStatus>>,
    pub verdict: Option<Verdict>,
}

impl Cached {
    /// Projects a received object. `verdict_of` compares it (as JSON) with what is desired;
    /// the object is consumed, so its JSON is built by moving, not copying.
    pub fn project<K: Resource<DynamicType = ()>>(
        kind: Kind,
        object: Slim<K>,
        verdict_of: impl FnOnce(&Cached, Value) -> Option<Verdict>,
    ) -> Self {
        let meta = &object.metadata;
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
        let rollout = (kind == Kind::Deployment)
            .then(|| RolloutStatus::from_json(meta.generation, &object.status))
            .flatten()
            .map(Box::new);
        let mut cached = Self {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            owner: label(OWNER_LABEL).map(Arc::from),
            deployment_id: label(DEPLOYMENT_ID_LABEL),
            revision: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            deleting: meta.deletion_timestamp.is_some(),
            rollout,
            verdict: None,
        };
        cached.verdict = verdict_of(&cached, object.into_json());
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

/// Compares `value` (an object of `kind`) with what `obj` wants of that kind.
pub fn verdict_against(
    obj: &DeployedObject,
    kind: Kind,
    proxy_image: &str,
    value: &serde_json::Value,
) -> Verdict {
    Verdict {
        digest: digest(obj),
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
    fn verdict(&self, kind: Kind, cached: &Cached, value: Value) -> Option<Verdict> {
        let id = cached.deployment_id.as_deref()?;
        let obj = self.desired.borrow().deployments.get(id)?.clone();
        let wanted = cached.name == obj.name
            && cached.namespace == obj.namespace
            && wanted_kinds(&obj).contains(&kind);
        wanted.then(|| verdict_against(&obj, kind, &self.proxy_image, &value))
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
    apis: Vec<(Option<String>, Api<Slim<K>>)>,
    kind: Kind,
    selector: &str,
    judge: Judge,
    trigger: Arc<Notify>,
    cancel: CancellationToken,
) -> (Cache, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let map: Arc<RwLock<Map>> = Arc::default();
    let (ready_tx, ready) = watch::channel(false);
    let cache = Cache {
        map: map.clone(),
        ready,
    };
    // Every object of the watch carries the same owner label: keep one copy of it.
    let mut owner: Option<Arc<str>> = None;
    let mut project = move |o: Slim<K>| -> ((String, String), Arc<Cached>) {
        let mut c = Cached::project(kind, o, |c, value| judge.verdict(kind, c, value));
        match (&c.owner, &owner) {
            (Some(new), Some(known)) if new == known => c.owner = Some(known.clone()),
            (Some(new), _) => owner = Some(new.clone()),
            (None, _) => {}
        }
        ((c.namespace.clone(), c.name.clone()), Arc::new(c))
    };
    let key = |o: &Slim<K>| {
        let m = o.meta();
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let scopes: Vec<Option<String>> = apis.iter().map(|(ns, _)| ns.clone()).collect();
    let streams: Vec<_> = apis
        .into_iter()
        .enumerate()
        .map(|(i, (_, api))| {
            let config = watcher::Config::default()
                .labels(selector)
                .page_size(LIST_PAGE_SIZE);
            watcher(api, config)
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
                    let (k, v) = project(o);
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
                    let (k, v) = project(o);
                    map.write().unwrap_or_else(|e| e.into_inner()).insert(k, v);
                }
                watcher::Event::Delete(o) => {
                    map.write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key(&o));
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
fn scoped_apis<K>(
    client: &kube::Client,
    namespaces: &[String],
) -> Vec<(Option<String>, Api<Slim<K>>)>
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
        trigger.clone(),
        cancel.clone(),
    );
    let (services, b) = spawn_watch::<Service>(
        scoped_apis(client, namespaces),
        Kind::Service,
        selector,
        judge.clone(),
        trigger.clone(),
        cancel.clone(),
    );
    let (ingresses, c) = spawn_watch::<Ingress>(
        scoped_apis(client, namespaces),
        Kind::Ingress,
        selector,
        judge,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::builders::desired_deployment;
    use crate::core::DeploymentSpec;
    use serde_json::json;

    fn obj() -> DeployedObject {
        DeployedObject {
            id: "dep-1".into(),
            deployer_id: "owner-1".into(),
            name: "iris".into(),
            namespace: "models".into(),
            revision: 3,
            spec: DeploymentSpec::test("iris"),
        }
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
        let slim: Slim<Deployment> = serde_json::from_value(served).unwrap();
        assert!(slim.metadata.managed_fields.is_none(), "never decoded");
        Cached::project(Kind::Deployment, slim, |_, v| {
            Some(verdict_against(o, Kind::Deployment, "proxy:1", &v))
        })
    }

    #[test]
    fn slim_objects_keep_what_the_agent_uses() {
        let o = obj();
        let c = judge(&o, as_served(&o));
        assert_eq!((c.name.as_str(), c.namespace.as_str()), ("iris", "models"));
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
