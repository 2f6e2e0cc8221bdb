//! Desired deployments as the agent holds them between uses: identity inline, the spec
//! encoded.
//!
//! The agent holds every desired deployment for as long as it runs, but reads a spec only
//! to reconcile that deployment or to judge an event of its objects. A decoded
//! [`DeployedObject`] is about 800 bytes inline plus a dozen small allocations; its spec
//! encoded (JSON, its stored form) is a few hundred bytes in one allocation. With
//! thousands of deployments that is most of what the agent keeps, so the spec stays
//! encoded and [`Held::object`] decodes it where it is used (at most `--concurrency` at
//! once). What the scheduler and the prune sweep ask without building anything (the
//! name, the namespace, which kinds are wanted) is answered from the inline part.

use super::desired::{Kind, wants_kind};
use ds_core::{DeployedObject, DeploymentSpec};
use std::sync::Arc;

/// One desired deployment, its spec encoded. Equal when every field and the spec are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Gateway-assigned deployment ID; shared with the keys of the maps that hold it.
    pub id: Arc<str>,
    /// Owning deployer ID (shared between the deployments of one snapshot).
    pub deployer_id: Arc<str>,
    pub name: Box<str>,
    pub namespace: Box<str>,
    /// Deployer revision of the last change to this deployment.
    pub revision: u64,
    /// Which kinds it wants, one bit per [`Kind`] (its discriminant).
    kinds: u8,
    /// `serde_json` of the spec: deterministic (struct order, sorted maps), so equal specs
    /// encode equal.
    spec: Box<[u8]>,
}

impl Held {
    /// Holds `obj`, owned by `deployer_id` when it names no deployer itself.
    pub fn new(obj: DeployedObject, deployer_id: &Arc<str>) -> Self {
        let kinds = Kind::ALL
            .into_iter()
            .filter(|&k| wants_kind(&obj, k))
            .fold(0u8, |bits, k| bits | 1 << k as u8);
        let deployer_id = if obj.deployer_id.is_empty() || *obj.deployer_id == **deployer_id {
            deployer_id.clone()
        } else {
            obj.deployer_id.as_str().into()
        };
        Self {
            id: obj.id.into(),
            deployer_id,
            name: obj.name.into(),
            namespace: obj.namespace.into(),
            revision: obj.revision,
            kinds,
            // A spec always serializes: its maps have string keys.
            spec: serde_json::to_vec(&obj.spec)
                .unwrap_or_default()
                .into_boxed_slice(),
        }
    }

    /// The deployment decoded, for the builders and the comparison.
    pub fn object(&self) -> DeployedObject {
        DeployedObject {
            id: self.id.to_string(),
            deployer_id: self.deployer_id.to_string(),
            name: self.name.to_string(),
            namespace: self.namespace.to_string(),
            revision: self.revision,
            spec: self.spec(),
        }
    }

    /// The spec decoded.
    pub fn spec(&self) -> DeploymentSpec {
        // Encoded by `new` from the same type in this process: decoding cannot fail.
        serde_json::from_slice(&self.spec).expect("a held spec decodes")
    }

    /// Whether it wants an object of `kind` at all (see [`wants_kind`]).
    pub fn wants_kind(&self, kind: Kind) -> bool {
        self.kinds & (1 << kind as u8) != 0
    }

    /// Whether it wants an object of `kind` named `name` in `namespace`.
    pub fn wants(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        *self.name == *name && *self.namespace == *namespace && self.wants_kind(kind)
    }

    /// Gives it `deployer_id` when it names none (from a gateway that sent none).
    pub fn set_deployer_if_unset(&mut self, deployer_id: &str) {
        if self.deployer_id.is_empty() {
            self.deployer_id = deployer_id.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{test_object, wants};

    #[test]
    fn a_held_deployment_decodes_to_what_it_was_and_answers_without_decoding() {
        let mut spec = DeploymentSpec::test("iris")
            .host("iris.example.com")
            .replicas(3);
        spec.labels.insert("team".into(), "ml".into());
        spec.env.push(ds_core::EnvVar {
            name: "MODE".into(),
            value: "fast".into(),
        });
        let obj = test_object(spec);
        let owner: Arc<str> = "owner-1".into();
        let held = Held::new(obj.clone(), &owner);
        assert_eq!(held.object(), obj);
        assert!(Arc::ptr_eq(&held.deployer_id, &owner), "shared");
        for kind in Kind::ALL {
            assert_eq!(held.wants_kind(kind), wants_kind(&obj, kind), "{kind:?}");
            for (ns, name) in [("models", "iris"), ("other", "iris"), ("models", "wine")] {
                assert_eq!(held.wants(kind, ns, name), wants(&obj, kind, ns, name));
            }
        }
        assert_eq!(
            Held::new(obj.clone(), &owner),
            held,
            "equal specs encode equal"
        );
        let mut changed = obj;
        changed.spec.image = "other:2".into();
        assert_ne!(Held::new(changed, &owner), held);
    }

    #[test]
    fn a_deployment_without_a_deployer_gets_the_agents() {
        let mut obj = test_object(DeploymentSpec::test("iris"));
        obj.deployer_id.clear();
        let held = Held::new(obj, &Arc::from("d1"));
        assert_eq!(&*held.deployer_id, "d1");
        assert_eq!(held.object().deployer_id, "d1");
    }
}
