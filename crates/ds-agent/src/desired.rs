//! What a deployment should produce in the cluster: its kinds, their desired objects as
//! JSON, and a compact digest of the whole. Pure: no API server, no cache.
//!
//! The builders ([`super::builders`]) make the typed objects; this module is the one place
//! that turns them into the JSON the comparison ([`super::compare`]) and the writes use, so
//! the cache's verdicts and the reconciler's writes can never disagree about what is wanted.

use super::builders::{
    desired_autoscaler, desired_deployment, desired_disruption_budget, desired_ingress,
    desired_service,
};
use ds_core::DeployedObject;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::ApiResource;
use serde_json::Value;
use sha2::Digest;
use std::sync::LazyLock;

/// The kinds the agent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Deployment,
    Service,
    Ingress,
    HorizontalPodAutoscaler,
    PodDisruptionBudget,
}

/// How many kinds there are (the caches hold one store per kind).
pub const KINDS: usize = 5;

/// Group, version and plural of each kind, built once (they are read on every request).
static API_RESOURCES: LazyLock<[ApiResource; KINDS]> = LazyLock::new(|| {
    [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<Ingress>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
    ]
});

impl Kind {
    /// Every kind, in the order a deployment's objects are written (the index of each is
    /// its discriminant).
    pub const ALL: [Kind; KINDS] = [
        Kind::Deployment,
        Kind::Service,
        Kind::Ingress,
        Kind::HorizontalPodAutoscaler,
        Kind::PodDisruptionBudget,
    ];

    /// The kind's name as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::Service => "Service",
            Self::Ingress => "Ingress",
            Self::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            Self::PodDisruptionBudget => "PodDisruptionBudget",
        }
    }

    /// Where the kind lives in the API, for [`kube::Api`]s over [`super::cache::Slim`].
    pub fn api_resource(self) -> &'static ApiResource {
        &API_RESOURCES[self as usize]
    }
}

/// The kinds a deployment wants, in write order.
pub fn wanted_kinds(obj: &DeployedObject) -> impl Iterator<Item = Kind> + '_ {
    Kind::ALL.into_iter().filter(|&k| wants_kind(obj, k))
}

/// Whether `obj` wants an object of `kind` at all: a Deployment and a Service always; an
/// Ingress with a host, an autoscaler when autoscaled, a disruption budget for more than
/// one pod.
pub fn wants_kind(obj: &DeployedObject, kind: Kind) -> bool {
    match kind {
        Kind::Deployment | Kind::Service => true,
        Kind::Ingress => obj.spec.host.as_ref().is_some_and(|h| !h.is_empty()),
        Kind::HorizontalPodAutoscaler => obj.spec.autoscaled(),
        Kind::PodDisruptionBudget => obj.spec.wants_disruption_budget(),
    }
}

/// Whether `obj` wants an object of `kind` named `name` in `namespace`.
pub fn wants(obj: &DeployedObject, kind: Kind, namespace: &str, name: &str) -> bool {
    obj.name == name && obj.namespace == namespace && wants_kind(obj, kind)
}

/// The desired object of one kind (`Null` for a kind the deployment does not want).
pub fn build_kind(obj: &DeployedObject, kind: Kind, proxy_image: &str) -> Value {
    fn optional<T: serde::Serialize>(o: Option<T>) -> serde_json::Result<Value> {
        o.map_or(Ok(Value::Null), serde_json::to_value)
    }
    let v = match kind {
        Kind::Deployment => serde_json::to_value(desired_deployment(obj, proxy_image)),
        Kind::Service => serde_json::to_value(desired_service(obj)),
        Kind::Ingress => optional(desired_ingress(obj)),
        Kind::HorizontalPodAutoscaler => optional(desired_autoscaler(obj)),
        Kind::PodDisruptionBudget => optional(desired_disruption_budget(obj)),
    };
    // The builders' types always serialize; Null would only ever compare as "not in sync".
    v.unwrap_or(Value::Null)
}

/// A compact identity of what a deployment wants: equal digests, equal desired objects.
/// Two words, so verdicts and memos hold it inline (no allocation per object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecDigest {
    /// The deployer revision of the deployment's last change.
    pub revision: u64,
    /// The first 8 bytes of the SHA-256 of name, namespace and spec.
    pub hash: u64,
}

/// The [`SpecDigest`] of `obj`.
pub fn digest(obj: &DeployedObject) -> SpecDigest {
    let bytes = serde_json::to_vec(&(&obj.name, &obj.namespace, &obj.spec)).unwrap_or_default();
    let sum = sha2::Sha256::digest(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&sum[..8]);
    SpecDigest {
        revision: obj.revision,
        hash: u64::from_le_bytes(first),
    }
}

/// How many deployments' desired objects [`Built`] keeps: enough to span the time between
/// a write and the last watch events it causes (the rollout's status writes) at thousands
/// of writes a second, small enough not to matter to the agent's memory (a few MiB).
pub const BUILT_CAPACITY: usize = 256;

/// The desired objects built last, shared by the reconciler (which builds one to write
/// it) and the watches (which compare every event the write causes with the same object):
/// without it a first start builds each Deployment's desired object about four times.
///
/// Per deployment ID, one slot per kind, valid for one deployment revision (a deployment's
/// revision changes with every change of its spec); the oldest deployments go first.
pub struct Built {
    inner: parking_lot::Mutex<BuiltInner>,
    capacity: usize,
}

#[derive(Default)]
struct BuiltInner {
    /// Looked up by `&str` on every watch event: no key is built to ask.
    map: std::collections::HashMap<String, [Option<BuiltObject>; KINDS]>,
    order: std::collections::VecDeque<String>,
}

/// One built desired object with the digest of the deployment it was built from.
#[derive(Clone)]
pub struct BuiltObject {
    pub digest: SpecDigest,
    pub value: std::sync::Arc<Value>,
}

impl Built {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: parking_lot::Mutex::default(),
            capacity,
        }
    }

    /// The desired object of `kind` for deployment `id`, if built at `revision`.
    pub fn get(&self, id: &str, revision: u64, kind: Kind) -> Option<BuiltObject> {
        let inner = self.inner.lock();
        let b = inner.map.get(id)?[kind as usize].as_ref()?;
        (b.digest.revision == revision).then(|| b.clone())
    }

    /// The desired object of `kind` for `obj`: the one built at its revision, or built now
    /// and kept.
    pub fn get_or_build(&self, obj: &DeployedObject, kind: Kind, proxy_image: &str) -> BuiltObject {
        if let Some(b) = self.get(&obj.id, obj.revision, kind) {
            return b;
        }
        // Built outside the lock: the watches' lookups never wait for a build.
        let b = BuiltObject {
            digest: digest(obj),
            value: std::sync::Arc::new(build_kind(obj, kind, proxy_image)),
        };
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let slots = match inner.map.get_mut(obj.id.as_str()) {
            Some(slots) => slots,
            None => {
                while inner.order.len() >= self.capacity {
                    let Some(old) = inner.order.pop_front() else {
                        break;
                    };
                    inner.map.remove(&old);
                }
                inner.order.push_back(obj.id.clone());
                inner.map.entry(obj.id.clone()).or_default()
            }
        };
        // Another revision's objects of this deployment are stale now.
        if slots
            .iter()
            .flatten()
            .any(|s| s.digest.revision != obj.revision)
        {
            *slots = Default::default();
        }
        slots[kind as usize] = Some(b.clone());
        b
    }

    /// How many objects are kept (tests).
    pub fn len(&self) -> usize {
        self.inner.lock().map.values().flatten().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The deployment "iris" in "models" of deployer "owner-1" (unit tests of the agent).
#[cfg(test)]
pub(crate) fn test_object(spec: ds_core::DeploymentSpec) -> DeployedObject {
    DeployedObject {
        id: "dep-1".into(),
        deployer_id: "owner-1".into(),
        name: "iris".into(),
        namespace: "models".into(),
        revision: 3,
        spec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_core::DeploymentSpec;

    fn obj(host: Option<&str>) -> DeployedObject {
        let spec = DeploymentSpec::test("iris");
        test_object(match host {
            Some(h) => spec.host(h),
            None => spec,
        })
    }

    fn kinds(o: &DeployedObject) -> Vec<Kind> {
        wanted_kinds(o).collect()
    }

    #[test]
    fn an_ingress_only_with_a_host() {
        assert_eq!(kinds(&obj(None)), [Kind::Deployment, Kind::Service]);
        assert_eq!(
            kinds(&obj(Some("iris.example.com"))),
            [Kind::Deployment, Kind::Service, Kind::Ingress]
        );
        assert_eq!(build_kind(&obj(None), Kind::Ingress, "p:1"), Value::Null);
        assert!(!wants(&obj(None), Kind::Ingress, "models", "iris"));
        assert!(wants(&obj(None), Kind::Service, "models", "iris"));
        assert!(!wants(&obj(None), Kind::Service, "other", "iris"));
    }

    #[test]
    fn api_resources_match_the_kinds() {
        for kind in Kind::ALL {
            assert_eq!(kind.api_resource().kind, kind.as_str());
        }
        assert_eq!(Kind::Ingress.api_resource().group, "networking.k8s.io");
        assert_eq!(Kind::Deployment.api_resource().plural, "deployments");
        let hpa = Kind::HorizontalPodAutoscaler.api_resource();
        assert_eq!(
            (hpa.api_version.as_str(), hpa.plural.as_str()),
            ("autoscaling/v2", "horizontalpodautoscalers")
        );
        let pdb = Kind::PodDisruptionBudget.api_resource();
        assert_eq!(
            (pdb.api_version.as_str(), pdb.plural.as_str()),
            ("policy/v1", "poddisruptionbudgets")
        );
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "ALL is in discriminant order");
        }
    }

    #[test]
    fn an_autoscaler_when_autoscaled_and_a_budget_for_more_than_one_pod() {
        let mut o = obj(None);
        o.spec.replicas = 3;
        assert_eq!(
            kinds(&o),
            [Kind::Deployment, Kind::Service, Kind::PodDisruptionBudget]
        );
        o.spec.min_replicas = 1;
        o.spec.max_replicas = 4;
        assert_eq!(
            kinds(&o),
            [
                Kind::Deployment,
                Kind::Service,
                Kind::HorizontalPodAutoscaler
            ]
        );
        assert!(!wants(&o, Kind::PodDisruptionBudget, "models", "iris"));
        assert_eq!(
            build_kind(&o, Kind::PodDisruptionBudget, "p:1"),
            Value::Null
        );
        o.spec.min_replicas = 2;
        assert_eq!(kinds(&o).len(), 4);
        assert_eq!(
            build_kind(&o, Kind::HorizontalPodAutoscaler, "p:1")["kind"],
            "HorizontalPodAutoscaler"
        );
    }

    #[test]
    fn built_objects_are_reused_for_one_revision_and_the_oldest_go_first() {
        let built = Built::new(2);
        let a = obj(None);
        let first = built.get_or_build(&a, Kind::Deployment, "p:1");
        assert_eq!(*first.value, build_kind(&a, Kind::Deployment, "p:1"));
        assert_eq!(first.digest, digest(&a));
        let again = built
            .get(&a.id, a.revision, Kind::Deployment)
            .expect("kept");
        assert!(
            std::sync::Arc::ptr_eq(&first.value, &again.value),
            "not rebuilt"
        );
        assert!(
            built.get(&a.id, a.revision, Kind::Service).is_none(),
            "per kind"
        );

        // A new revision of the deployment is built again, in the same slot.
        let mut changed = a.clone();
        changed.revision += 1;
        changed.spec = changed.spec.replicas(4);
        assert!(
            built
                .get(&changed.id, changed.revision, Kind::Deployment)
                .is_none()
        );
        let rebuilt = built.get_or_build(&changed, Kind::Deployment, "p:1");
        assert_eq!(rebuilt.value["spec"]["replicas"], 4);
        assert_eq!(built.len(), 1);

        // Beyond the capacity the oldest entry goes.
        built.get_or_build(&a, Kind::Service, "p:1");
        let mut other = a.clone();
        other.id = "dep-2".into();
        built.get_or_build(&other, Kind::Deployment, "p:1");
        assert_eq!(built.len(), 2);
        assert!(
            built
                .get(&changed.id, changed.revision, Kind::Deployment)
                .is_none(),
            "oldest evicted"
        );
        assert!(
            built
                .get(&other.id, other.revision, Kind::Deployment)
                .is_some()
        );
    }

    #[test]
    fn digests_follow_the_spec() {
        let a = obj(None);
        let mut b = a.clone();
        assert_eq!(digest(&a), digest(&b));
        b.spec = b.spec.replicas(4);
        assert_ne!(digest(&a).hash, digest(&b).hash);
    }
}
