//! The reconciler: compares one desired deployment with the owned objects in the cluster
//! and writes the difference with server-side apply; a prune sweep deletes owned objects
//! nothing wants any more. [`super::scheduler`] decides what runs when.
//!
//! # Guarantees
//! - Reads go through label-selected watches ([`super::builders::owner_selector`]) kept in
//!   compact caches ([`super::cache`]); a name not found there, or whose cached comparison
//!   is stale, is read once by name (to tell "free" from "taken", or to compare again).
//! - An object without this deployer's owner label is never written or deleted: the
//!   deployment reports "name taken" instead.
//! - Nothing is pruned until a complete snapshot has been applied; afterwards an owned object
//!   is deleted only when its deployment is absent from the (complete) desired state, or that
//!   deployment no longer wants that object (renamed, moved, host removed).
//! - All writes are server-side apply with the one field manager [`FIELD_MANAGER`] (and,
//!   once per switch to autoscaling, the replica count alone under
//!   [`super::builders::HANDOVER_MANAGER`]); a deployment whose objects are unchanged costs
//!   no write call.
//! - Every write takes a permit from the [`Fence`] right before it is sent, so a replica
//!   that lost its Lease stops at its next write.

use super::AgentError;
use super::builders::{HANDOVER_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, endpoint};
use super::cache::{Cached, RolloutStatus, Slim, Stores, Written};
use super::compare::verdict_built;
use super::desired::{Built, BuiltObject, Kind, SpecDigest, digest, wanted_kinds};
use super::leader::{Fence, WritePermit};
use super::metrics::Metrics;
use super::sync::DesiredState;
use ds_core::DeployedObject;
use ds_core::proto::{self, Phase};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

/// The one field manager of every write.
pub const FIELD_MANAGER: &str = "ds-deployer";

/// An object of the memo: its kind and `namespace/name` in one allocation (neither part
/// can hold a `/`). There is one per object written and not yet seen back, so thousands
/// during a first start.
type Key = (Kind, Box<str>);

fn key(kind: Kind, namespace: &str, name: &str) -> Key {
    (kind, format!("{namespace}/{name}").into_boxed_str())
}

/// An object version known to match a desired digest. Resource versions are etcd
/// revisions, numbers in practice; a version that is not one is not remembered (the
/// object is then read again, never skipped).
#[derive(Debug, Clone)]
struct Known {
    rv: u64,
    digest: SpecDigest,
}

fn rv_number(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

// === Status ===

/// The rollout phase of an owned Deployment, from its status (`None`: none reported yet).
pub fn phase_of(want_replicas: u32, st: Option<&RolloutStatus>) -> (Phase, String) {
    let want = i32::try_from(want_replicas).unwrap_or(i32::MAX);
    let Some(st) = st else {
        return (Phase::Progressing, String::new());
    };
    if let Some(why) = &st.failure {
        return (Phase::Failed, why.clone());
    }
    if st.observed_generation >= st.generation
        && st.updated_replicas == want
        && st.available_replicas >= want
        && st.replicas == want
    {
        (Phase::Available, String::new())
    } else {
        (Phase::Progressing, String::new())
    }
}

fn as_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn status_of(
    obj: &DeployedObject,
    actual: Option<&Cached>,
    error: Option<&AgentError>,
) -> proto::DeploymentStatus {
    let mut s = proto::DeploymentStatus {
        deployment_id: obj.id.clone(),
        endpoint: endpoint(obj),
        ..Default::default()
    };
    if let Some(d) = actual {
        let st = d.rollout.as_deref().cloned().unwrap_or_default();
        s.ready_replicas = as_u32(st.ready_replicas);
        s.available_replicas = as_u32(st.available_replicas);
        s.updated_replicas = as_u32(st.updated_replicas);
        s.applied_revision = d.revision;
        // Autoscaled, the count to reach is the autoscaler's, on the Deployment itself.
        let want = if obj.spec.autoscaled() {
            d.replicas.map_or(obj.spec.min_replicas, as_u32)
        } else {
            obj.spec.replicas
        };
        let (phase, why) = phase_of(want, d.rollout.as_deref());
        s.phase = phase as i32;
        s.last_error = why;
    } else {
        s.phase = Phase::Pending as i32;
    }
    if let Some(e) = error {
        // Waiting for a prune to finish is not a failure: the next pass proceeds.
        s.phase = if matches!(e, AgentError::Waiting { .. } | AgentError::NotLeader) {
            Phase::Pending as i32
        } else {
            Phase::Failed as i32
        };
        s.last_error = e.to_string();
    }
    s
}

// === The reconciler ===

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub deployer_id: String,
    pub proxy_image: String,
    pub create_namespaces: bool,
    /// The namespaces this agent may use (`--namespaces`); empty: all of them.
    pub namespaces: Vec<String>,
    /// Deletes of one prune sweep in flight at once.
    pub concurrency: usize,
}

/// What a prune sweep did.
#[derive(Debug, Default)]
pub struct PruneOutcome {
    /// Deletes that failed.
    pub failures: usize,
    /// Of which worth a quick retry.
    pub transient_failures: usize,
    /// The fence refused a delete: this replica lost its Lease.
    pub fenced: bool,
}

/// What the reconciler remembers between runs; shared by the deployments reconciled at once.
#[derive(Default)]
struct Memo {
    /// Keyed by the desired state's own ID strings.
    digests: HashMap<Arc<str>, SpecDigest>,
    known: HashMap<Key, Known>,
    /// UIDs of objects whose delete was accepted (pruned; not sent twice).
    deleted: HashSet<String>,
}

/// Compares and writes. Nothing else in the agent writes to the API server (but the Lease).
pub struct Reconciler {
    client: kube::Client,
    config: ReconcileConfig,
    stores: Stores,
    metrics: Arc<Metrics>,
    fence: Arc<Fence>,
    memo: Mutex<Memo>,
    built: Arc<Built>,
    /// Whether each namespace exists, looked up once per pass (concurrent askers wait for
    /// the one lookup).
    namespaces: Mutex<HashMap<String, Arc<OnceCell<bool>>>>,
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Reconciler {
    /// A reconciler over `stores` (see [`super::cache::start_watches`]), writing through
    /// `fence`.
    pub fn new(
        client: kube::Client,
        config: ReconcileConfig,
        stores: Stores,
        metrics: Arc<Metrics>,
        fence: Arc<Fence>,
        built: Arc<Built>,
    ) -> Self {
        Self {
            client,
            config,
            stores,
            metrics,
            fence,
            memo: Mutex::default(),
            built,
            namespaces: Mutex::default(),
        }
    }

    /// The caches the reconciler reads.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The metrics the reconciler and its scheduler count into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// This agent's deployer.
    pub fn deployer_id(&self) -> &str {
        &self.config.deployer_id
    }

    fn memo(&self) -> parking_lot::MutexGuard<'_, Memo> {
        // Every update is a single insert or remove: a panic leaves the memo consistent.
        self.memo.lock()
    }

    fn api(&self, kind: Kind, namespace: &str) -> Api<Slim> {
        Slim::api(self.client.clone(), kind, Some(namespace))
    }

    async fn permit(&self) -> Result<WritePermit<'_>, AgentError> {
        self.fence.permit().await.ok_or(AgentError::NotLeader)
    }

    /// Starts a full pass: namespaces are looked up again and memos of deployments that are
    /// gone are dropped.
    pub fn begin_pass(&self, desired: &DesiredState) {
        self.namespaces.lock().clear();
        let live: HashSet<String> = self
            .stores
            .all()
            .iter()
            .filter_map(|a| a.uid.clone())
            .collect();
        let mut memo = self.memo();
        memo.digests
            .retain(|id, _| desired.deployments.contains_key(&**id));
        memo.deleted.retain(|uid| live.contains(uid));
        drop(memo);
        self.count_owned();
    }

    /// Sets the owned-object gauges from the caches.
    pub fn count_owned(&self) {
        for kind in Kind::ALL {
            let n = self.stores.of(kind).len();
            self.metrics
                .owned
                .get_or_create(&vec![("kind".into(), kind.as_str().into())])
                .set(n as i64);
        }
    }

    fn digest(&self, obj: &DeployedObject, desired: &DesiredState) -> SpecDigest {
        if let Some(d) = self.memo().digests.get(obj.id.as_str())
            && d.revision == obj.revision
        {
            return *d;
        }
        let d = digest(obj);
        let id = match desired.deployments.get_key_value(obj.id.as_str()) {
            Some((id, _)) => id.clone(),
            None => Arc::from(obj.id.as_str()),
        };
        self.memo().digests.insert(id, d);
        d
    }

    /// The desired object of `kind` for `obj`, shared with the watches that will judge
    /// what its write causes.
    fn build(&self, obj: &DeployedObject, kind: Kind) -> BuiltObject {
        self.built.get_or_build(obj, kind, &self.config.proxy_image)
    }

    /// Whether `actual` is a version already known to match `digest`.
    fn known_in_sync(&self, key: &Key, digest: SpecDigest, actual: &Cached) -> bool {
        let Some(seen) = actual.resource_version.as_deref().and_then(rv_number) else {
            return false;
        };
        let memo = self.memo();
        let Some(k) = memo.known.get(key) else {
            return false;
        };
        // The same version, or the store has not seen our own write yet: not drift, lag.
        k.digest == digest && seen <= k.rv
    }

    fn remember(&self, key: Key, rv: Option<&str>, digest: SpecDigest) {
        match rv.and_then(rv_number) {
            Some(rv) => self.memo().known.insert(key, Known { rv, digest }),
            None => self.memo().known.remove(&key),
        };
    }

    /// Reads one object by name, compared with what `obj` wants of it.
    async fn get_by_name(
        &self,
        kind: Kind,
        obj: &DeployedObject,
    ) -> Result<Option<Arc<Cached>>, kube::Error> {
        let found = self.api(kind, &obj.namespace).get_opt(&obj.name).await?;
        Ok(found.map(|o| {
            Arc::new(Cached::project(kind, o, |_, value| {
                Some(verdict_built(&self.build(obj, kind), &value))
            }))
        }))
    }

    /// Applies `value`; returns the resource version written.
    async fn apply(
        &self,
        kind: Kind,
        obj: &DeployedObject,
        value: &Value,
    ) -> Result<Option<String>, AgentError> {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let api = Written::api(self.client.clone(), kind, &obj.namespace);
        let _permit = self.permit().await?;
        self.metrics.write("apply", kind.as_str());
        let written = api
            .patch(&obj.name, &pp, &Patch::Apply(value))
            .await
            .map_err(|source| match &source {
                // The namespace vanished, or was never readable (`--namespaces`).
                kube::Error::Api(s) if s.code == 404 && s.message.starts_with("namespaces") => {
                    AgentError::NamespaceMissing {
                        namespace: obj.namespace.clone(),
                    }
                }
                _ => AgentError::Apply {
                    kind: kind.as_str(),
                    namespace: obj.namespace.clone(),
                    name: obj.name.clone(),
                    source: Box::new(source),
                },
            })?;
        Ok(written.metadata.resource_version)
    }

    /// Applies `replicas` alone under [`HANDOVER_MANAGER`], without force: the Deployment
    /// keeps that count when the agent's own apply leaves the field out. A conflict means
    /// another manager (the autoscaler) already holds the field with another value, which
    /// is what the handover is for: nothing to do.
    async fn hand_over_replicas(
        &self,
        obj: &DeployedObject,
        replicas: i32,
    ) -> Result<(), AgentError> {
        let body = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": obj.name, "namespace": obj.namespace},
            "spec": {"replicas": replicas},
        });
        let pp = PatchParams::apply(HANDOVER_MANAGER);
        let api = Written::api(self.client.clone(), Kind::Deployment, &obj.namespace);
        let _permit = self.permit().await?;
        self.metrics.write("handover", Kind::Deployment.as_str());
        match api.patch(&obj.name, &pp, &Patch::Apply(&body)).await {
            Ok(_) => {
                debug!(deployment = %obj.id, replicas, "replica count handed over to the autoscaler");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(deployment = %obj.id, "the autoscaler already holds the replica count");
                Ok(())
            }
            Err(source) => Err(AgentError::Apply {
                kind: Kind::Deployment.as_str(),
                namespace: obj.namespace.clone(),
                name: obj.name.clone(),
                source: Box::new(source),
            }),
        }
    }

    /// Deletes one owned object, only if it still has `uid`.
    async fn delete(&self, actual: &Cached) -> Result<(), AgentError> {
        // The UID precondition makes sure a same-named replacement is never the one deleted.
        let dp = DeleteParams {
            preconditions: actual.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        let api = self.api(actual.kind, &actual.namespace);
        let _permit = self.permit().await?;
        self.metrics.write("delete", actual.kind.as_str());
        match api.delete(&actual.name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(AgentError::Delete {
                kind: actual.kind.as_str(),
                namespace: actual.namespace.to_string(),
                name: actual.name.to_string(),
                source: Box::new(source),
            }),
        }
    }

    /// Whether `namespace` exists, creating it with `--create-namespaces`.
    async fn ensure_namespace(&self, namespace: &str) -> Result<bool, AgentError> {
        if !self.config.namespaces.is_empty() {
            // Namespaced rights cannot read Namespaces; a missing one shows as a 404 on apply.
            return Ok(true);
        }
        let cell = self
            .namespaces
            .lock()
            .entry(namespace.to_string())
            .or_default()
            .clone();
        let read_error = |source| AgentError::Read {
            kind: "Namespace",
            namespace: namespace.to_string(),
            name: namespace.to_string(),
            source: Box::new(source),
        };
        let exists = cell
            .get_or_try_init(|| async {
                let api = Api::<Namespace>::all(self.client.clone());
                if api.get_opt(namespace).await.map_err(read_error)?.is_some() {
                    return Ok(true);
                }
                if !self.config.create_namespaces {
                    return Ok(false);
                }
                self.create_namespace(&api, namespace).await?;
                Ok::<bool, AgentError>(true)
            })
            .await?;
        Ok(*exists)
    }

    async fn create_namespace(
        &self,
        api: &Api<Namespace>,
        namespace: &str,
    ) -> Result<(), AgentError> {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": namespace,
                // Labelled so people know who made it; never deleted by the agent.
                "labels": {
                    MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                    "deployer.ds.dev/created-by": self.config.deployer_id,
                },
            },
        }))
        .map_err(|e| AgentError::Read {
            kind: "Namespace",
            namespace: namespace.to_string(),
            name: namespace.to_string(),
            source: Box::new(kube::Error::SerdeError(e)),
        })?;
        let _permit = self.permit().await?;
        self.metrics.write("create", "Namespace");
        // A plain create (RBAC grants only that); someone else creating it first is fine.
        match api.create(&kube::api::PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                return Err(AgentError::Apply {
                    kind: "Namespace",
                    namespace: namespace.to_string(),
                    name: namespace.to_string(),
                    source: Box::new(source),
                });
            }
        }
        info!(namespace, "namespace created");
        Ok(())
    }

    /// Reconciles one desired deployment and returns its status.
    ///
    /// # Errors
    /// In the status (phase Failed, or Pending while waiting for a prune) and as the result,
    /// so the scheduler can back this deployment off; [`AgentError::NotLeader`] when the
    /// fence refused a write.
    pub async fn reconcile(
        &self,
        obj: &DeployedObject,
        desired: &DesiredState,
    ) -> (proto::DeploymentStatus, Result<(), AgentError>) {
        let result = self.reconcile_objects(obj, desired).await;
        let actual = self
            .stores
            .get(Kind::Deployment, &obj.namespace, &obj.name)
            .filter(|d| d.deployment_id.as_deref() == Some(obj.id.as_str()));
        let status = status_of(obj, actual.as_deref(), result.as_ref().err());
        (status, result)
    }

    /// Deletes every owned object that no deployment of `desired` wants where it is.
    pub async fn prune(&self, desired: &DesiredState) -> PruneOutcome {
        let doomed: Vec<Arc<Cached>> = self
            .stores
            .all()
            .into_iter()
            .filter(|actual| self.unwanted(actual, desired))
            .collect();
        let mut out = PruneOutcome::default();
        let mut deletes = futures::stream::iter(doomed)
            .map(|actual| async move {
                let r = self.delete(&actual).await;
                (actual, r)
            })
            .buffer_unordered(self.config.concurrency.max(1));
        while let Some((actual, r)) = deletes.next().await {
            let (kind, namespace, name) = (actual.kind.as_str(), &actual.namespace, &actual.name);
            let dep = actual.deployment_id.as_deref().unwrap_or_default();
            match r {
                Ok(()) => {
                    info!(kind, %namespace, %name, deployment = dep, "pruned");
                    let mut memo = self.memo();
                    if let Some(u) = &actual.uid {
                        memo.deleted.insert(u.clone());
                    }
                    memo.known.remove(&key(actual.kind, namespace, name));
                }
                Err(AgentError::NotLeader) => out.fenced = true,
                Err(error) => {
                    warn!(kind, %namespace, %name, %error, "prune failed");
                    out.failures += 1;
                    if error.is_transient() {
                        out.transient_failures += 1;
                    }
                }
            }
        }
        out
    }

    /// Whether `actual` is an owned object that nothing desired wants, and safe to delete.
    pub fn unwanted(&self, actual: &Cached, desired: &DesiredState) -> bool {
        // The store is label-selected, but check again: never delete what is not ours.
        if actual.owner.as_deref() != Some(self.config.deployer_id.as_str()) || actual.deleting {
            return false;
        }
        let dep_id = actual.deployment_id.as_deref().unwrap_or_default();
        let wanted = match desired.deployments.get(dep_id) {
            Some(obj) => obj.wants(actual.kind, &actual.namespace, &actual.name),
            // Safe start: absence proves nothing until the state is known complete.
            None => !desired.complete,
        };
        !wanted
            && !actual
                .uid
                .as_ref()
                .is_some_and(|u| self.memo().deleted.contains(u))
    }

    /// Refuses an object this deployment may not write: foreign, held by another deployment
    /// of ours, or being deleted.
    fn check_holder(
        &self,
        kind: Kind,
        obj: &DeployedObject,
        desired: &DesiredState,
        actual: &Cached,
    ) -> Result<(), AgentError> {
        let blocked = |waiting: bool| {
            let (kind, namespace, name) = (kind.as_str(), obj.namespace.clone(), obj.name.clone());
            if waiting {
                AgentError::Waiting {
                    kind,
                    namespace,
                    name,
                }
            } else {
                AgentError::NameTaken {
                    kind,
                    namespace,
                    name,
                }
            }
        };
        if actual.owner.as_deref() != Some(self.config.deployer_id.as_str()) {
            return Err(blocked(false));
        }
        let other = actual.deployment_id.as_deref().unwrap_or_default();
        if other != obj.id {
            // Another deployment of ours holds the name: taken while it is desired, else
            // it is being pruned and this one waits for the name.
            return Err(blocked(!desired.deployments.contains_key(other)));
        }
        if actual.deleting {
            return Err(blocked(true));
        }
        Ok(())
    }

    async fn reconcile_objects(
        &self,
        obj: &DeployedObject,
        desired: &DesiredState,
    ) -> Result<(), AgentError> {
        if !self.config.namespaces.is_empty() && !self.config.namespaces.contains(&obj.namespace) {
            return Err(AgentError::NamespaceNotWatched {
                namespace: obj.namespace.clone(),
                watched: self.config.namespaces.join(","),
            });
        }
        let digest = self.digest(obj, desired);
        // Each kind to write, with the object it replaces (none: a create).
        let mut to_write: Vec<(Kind, Option<Arc<Cached>>)> = Vec::new();
        let mut needs_namespace = false;
        for kind in wanted_kinds(obj) {
            let key = key(kind, &obj.namespace, &obj.name);
            let read_error = |source: kube::Error| AgentError::Read {
                kind: kind.as_str(),
                namespace: obj.namespace.clone(),
                name: obj.name.clone(),
                source: Box::new(source),
            };
            // Whether `actual` is a read by name, not the cache's own copy.
            let mut read = false;
            let mut actual = match self.stores.get(kind, &obj.namespace, &obj.name) {
                Some(a) => Some(a),
                // Not among ours: free, taken by someone else, or ours but not yet seen.
                None => {
                    read = true;
                    self.get_by_name(kind, obj).await.map_err(read_error)?
                }
            };
            if let Some(a) = &actual {
                self.check_holder(kind, obj, desired, a)?;
                if a.in_sync_with(digest).is_none() && !self.known_in_sync(&key, digest, a) {
                    // Compared on receipt with an older desired state: compare again.
                    read = true;
                    actual = self.get_by_name(kind, obj).await.map_err(read_error)?;
                    if let Some(a) = &actual {
                        self.check_holder(kind, obj, desired, a)?;
                    }
                }
            }
            let Some(actual) = actual else {
                needs_namespace = true;
                to_write.push((kind, None));
                continue;
            };
            if self.known_in_sync(&key, digest, &actual) {
                continue;
            }
            match actual.in_sync_with(digest) {
                // The cache's verdict is current: it answers by itself next time too, so
                // nothing needs remembering (a restart with nothing changed keeps no
                // per-object memo at all).
                Some(true) if !read => {
                    self.memo().known.remove(&key);
                }
                // A read by name is not cached: remember its version, or the next run
                // would read it again.
                Some(true) => self.remember(key, actual.resource_version.as_deref(), digest),
                _ => to_write.push((kind, Some(actual))),
            }
        }
        if to_write.is_empty() {
            return Ok(());
        }
        if needs_namespace && !self.ensure_namespace(&obj.namespace).await? {
            return Err(AgentError::NamespaceMissing {
                namespace: obj.namespace.clone(),
            });
        }
        for (kind, actual) in to_write {
            // The first write of a Deployment for an autoscaler: its replica count passes
            // to the handover manager, so leaving it out of our apply keeps it.
            let handover = kind == Kind::Deployment
                && obj.spec.autoscaled()
                && !actual.as_ref().is_some_and(|a| a.autoscaled);
            if handover && let Some(a) = &actual {
                // Its current count, as it is: the autoscaler brings it within its bounds.
                self.hand_over_replicas(obj, a.replicas.unwrap_or(1))
                    .await?;
            }
            let value = self.build(obj, kind).value;
            let written = self.apply(kind, obj, &value).await?;
            if handover && actual.is_none() {
                // Created without a count (the server's default, 1): start at the minimum
                // rather than wait for the autoscaler's first sync.
                let min = i32::try_from(obj.spec.min_replicas).unwrap_or(i32::MAX);
                self.hand_over_replicas(obj, min).await?;
            }
            debug!(deployment = %obj.id, kind = kind.as_str(), revision = obj.revision, "applied");
            self.remember(
                key(kind, &obj.namespace, &obj.name),
                written.as_deref(),
                digest,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    fn deployment(generation: i64, status: serde_json::Value) -> Option<RolloutStatus> {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "x", "generation": generation},
            "status": status,
        }))
        .unwrap();
        RolloutStatus::of(&d)
    }

    #[test]
    fn phases_from_deployment_status() {
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3, "readyReplicas": 3}),
        );
        assert_eq!(phase_of(3, d.as_ref()).0, Phase::Available);
        let d = deployment(
            3,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert_eq!(
            phase_of(3, d.as_ref()).0,
            Phase::Progressing,
            "new generation not yet observed"
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert_eq!(
            phase_of(3, d.as_ref()).0,
            Phase::Progressing,
            "old pods still running"
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "image pull failed"}
            ]}),
        );
        assert_eq!(
            phase_of(3, d.as_ref()),
            (Phase::Failed, "image pull failed".to_string())
        );
        let d = deployment(1, json!({"observedGeneration": 1}));
        assert_eq!(
            phase_of(0, d.as_ref()).0,
            Phase::Available,
            "scaled to zero"
        );
    }
}
