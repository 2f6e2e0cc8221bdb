//! The one conversion path between the wire types of [`crate::proto`] and the domain types
//! of this crate, used by the gateway, the agent and the CLI alike. An absent message on the
//! wire means the domain default; an empty string means "not set".

use crate::proto;
use crate::{DeployedObject, DeploymentSpec, EnvVar, ProxySpec, Resources, Toleration};

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A wire `proxy.protocol`: "" and "auto" are both auto-detection (`None`), so the stored
/// spec does not depend on which one a client sent.
pub fn proxy_protocol(protocol: String) -> Option<String> {
    non_empty(protocol).filter(|p| p != "auto")
}

impl From<DeploymentSpec> for proto::DeploymentSpec {
    fn from(s: DeploymentSpec) -> Self {
        proto::DeploymentSpec {
            model_name: s.model_name,
            image: s.image,
            replicas: s.replicas,
            port: s.port,
            host: s.host.unwrap_or_default(),
            ingress_class: s.ingress_class.unwrap_or_default(),
            env: s
                .env
                .into_iter()
                .map(|e| proto::EnvVar {
                    name: e.name,
                    value: e.value,
                })
                .collect(),
            resources: Some(proto::Resources {
                cpu_request: s.resources.cpu_request.unwrap_or_default(),
                cpu_limit: s.resources.cpu_limit.unwrap_or_default(),
                memory_request: s.resources.memory_request.unwrap_or_default(),
                memory_limit: s.resources.memory_limit.unwrap_or_default(),
            }),
            proxy: Some(proto::ProxySpec {
                enabled: s.proxy.enabled,
                class_names: s.proxy.class_names,
                query_log: s.proxy.query_log,
                protocol: s.proxy.protocol.unwrap_or_default(),
            }),
            labels: s.labels.into_iter().collect(),
            gpu: s.gpu,
            gpu_resource: s.gpu_resource.unwrap_or_default(),
            image_pull_secrets: s.image_pull_secrets,
            tls_secret: s.tls_secret.unwrap_or_default(),
            ingress_annotations: s.ingress_annotations.into_iter().collect(),
            command: s.command,
            args: s.args,
            node_selector: s.node_selector.into_iter().collect(),
            tolerations: s.tolerations.into_iter().map(Into::into).collect(),
            priority_class: s.priority_class.unwrap_or_default(),
            ready_path: s.ready_path.unwrap_or_default(),
            startup_timeout_seconds: s.startup_timeout_seconds,
            model_uri: s.model_uri.unwrap_or_default(),
            model_path: s.model_path.unwrap_or_default(),
            storage_secret: s.storage_secret.unwrap_or_default(),
            model_sha256: s.model_sha256.unwrap_or_default(),
            min_replicas: s.min_replicas,
            max_replicas: s.max_replicas,
            target_cpu_percent: s.target_cpu_percent,
            max_unavailable: s.max_unavailable,
        }
    }
}

impl From<Toleration> for proto::Toleration {
    fn from(t: Toleration) -> Self {
        proto::Toleration {
            key: t.key,
            value: t.value.unwrap_or_default(),
            effect: t.effect,
        }
    }
}

/// An empty value means "any value" (operator Exists).
impl From<proto::Toleration> for Toleration {
    fn from(t: proto::Toleration) -> Self {
        Toleration {
            key: t.key,
            value: non_empty(t.value),
            effect: t.effect,
        }
    }
}

/// Absent `resources` means none set; absent `proxy` means the default (proxy on).
impl From<proto::DeploymentSpec> for DeploymentSpec {
    fn from(s: proto::DeploymentSpec) -> Self {
        let resources = s.resources.unwrap_or_default();
        DeploymentSpec {
            model_name: s.model_name,
            image: s.image,
            replicas: s.replicas,
            port: s.port,
            host: non_empty(s.host),
            ingress_class: non_empty(s.ingress_class),
            env: s
                .env
                .into_iter()
                .map(|e| EnvVar {
                    name: e.name,
                    value: e.value,
                })
                .collect(),
            resources: Resources {
                cpu_request: non_empty(resources.cpu_request),
                cpu_limit: non_empty(resources.cpu_limit),
                memory_request: non_empty(resources.memory_request),
                memory_limit: non_empty(resources.memory_limit),
            },
            proxy: s
                .proxy
                .map(|p| ProxySpec {
                    enabled: p.enabled,
                    class_names: p.class_names,
                    query_log: p.query_log,
                    protocol: proxy_protocol(p.protocol),
                })
                .unwrap_or_default(),
            labels: s.labels.into_iter().collect(),
            gpu: s.gpu,
            gpu_resource: non_empty(s.gpu_resource),
            image_pull_secrets: s.image_pull_secrets,
            tls_secret: non_empty(s.tls_secret),
            ingress_annotations: s.ingress_annotations.into_iter().collect(),
            command: s.command,
            args: s.args,
            node_selector: s.node_selector.into_iter().collect(),
            tolerations: s.tolerations.into_iter().map(Into::into).collect(),
            priority_class: non_empty(s.priority_class),
            ready_path: non_empty(s.ready_path),
            startup_timeout_seconds: s.startup_timeout_seconds,
            model_uri: non_empty(s.model_uri),
            model_path: non_empty(s.model_path),
            storage_secret: non_empty(s.storage_secret),
            model_sha256: non_empty(s.model_sha256),
            min_replicas: s.min_replicas,
            max_replicas: s.max_replicas,
            target_cpu_percent: s.target_cpu_percent,
            max_unavailable: s.max_unavailable,
        }
    }
}

impl From<&proto::DeploymentSpec> for DeploymentSpec {
    fn from(s: &proto::DeploymentSpec) -> Self {
        s.clone().into()
    }
}

// === deployments ===

/// What the agent reconciles from a received deployment.
impl From<proto::Deployment> for DeployedObject {
    fn from(d: proto::Deployment) -> Self {
        DeployedObject {
            id: d.id,
            deployer_id: d.deployer_id,
            name: d.name,
            namespace: d.namespace,
            revision: d.revision_of_last_change,
            spec: d.spec.unwrap_or_default().into(),
        }
    }
}

impl From<DeployedObject> for proto::Deployment {
    fn from(d: DeployedObject) -> Self {
        proto::Deployment {
            id: d.id,
            name: d.name,
            namespace: d.namespace,
            spec: Some(d.spec.into()),
            revision_of_last_change: d.revision,
            deployer_id: d.deployer_id,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }
}

// === remapping ===

impl From<crate::remap::Remap> for proto::Remap {
    fn from(r: crate::remap::Remap) -> Self {
        proto::Remap {
            env: r.env.into_iter().map(Into::into).collect(),
            secrets: r.secrets.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<proto::Remap> for crate::remap::Remap {
    fn from(r: proto::Remap) -> Self {
        crate::remap::Remap {
            env: r.env.into_iter().map(Into::into).collect(),
            secrets: r.secrets.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<crate::remap::EnvRemap> for proto::EnvRemap {
    fn from(r: crate::remap::EnvRemap) -> Self {
        proto::EnvRemap {
            name: r.name,
            from: r.from,
            to: r.to,
        }
    }
}

impl From<proto::EnvRemap> for crate::remap::EnvRemap {
    fn from(r: proto::EnvRemap) -> Self {
        crate::remap::EnvRemap {
            name: r.name,
            from: r.from,
            to: r.to,
        }
    }
}

impl From<crate::remap::SecretRemap> for proto::SecretRemap {
    fn from(r: crate::remap::SecretRemap) -> Self {
        proto::SecretRemap {
            from: r.from,
            to: r.to,
        }
    }
}

impl From<proto::SecretRemap> for crate::remap::SecretRemap {
    fn from(r: proto::SecretRemap) -> Self {
        crate::remap::SecretRemap {
            from: r.from,
            to: r.to,
        }
    }
}

impl From<crate::remap::Remapped> for proto::Remapped {
    fn from(r: crate::remap::Remapped) -> Self {
        let kind = match r.kind {
            crate::remap::RemapKind::Env => "env",
            crate::remap::RemapKind::Secret => "secret",
        };
        proto::Remapped {
            kind: kind.to_string(),
            name: r.name,
            from: r.from,
            to: r.to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_proto() {
        let mut spec = DeploymentSpec::test("iris")
            .host("iris.example.com")
            .proxy(false);
        spec.env.push(EnvVar {
            name: "A".into(),
            value: "1".into(),
        });
        spec.resources.cpu_request = Some("500m".into());
        spec.labels.insert("team".into(), "ml".into());
        let wire: proto::DeploymentSpec = spec.clone().into();
        assert_eq!(DeploymentSpec::from(wire), spec);
    }

    #[test]
    fn proxy_settings_round_trip_through_proto() {
        let mut spec = DeploymentSpec::test("iris").query_log(true);
        spec.proxy.class_names = vec!["setosa".into(), "versicolor".into()];
        let wire: proto::DeploymentSpec = spec.clone().into();
        assert!(wire.proxy.as_ref().unwrap().query_log);
        assert_eq!(DeploymentSpec::from(wire), spec);
        spec.proxy.protocol = Some("v2".into());
        let wire: proto::DeploymentSpec = spec.clone().into();
        assert_eq!(wire.proxy.as_ref().unwrap().protocol, "v2");
        assert_eq!(DeploymentSpec::from(wire), spec);
    }

    #[test]
    fn an_empty_or_auto_proxy_protocol_is_auto() {
        for auto in ["", "auto"] {
            let mut wire: proto::DeploymentSpec = DeploymentSpec::test("iris").into();
            wire.proxy.as_mut().unwrap().protocol = auto.into();
            assert_eq!(DeploymentSpec::from(wire).proxy.protocol, None, "{auto:?}");
        }
        // Anything else is kept as sent, for validation to refuse by name.
        assert_eq!(proxy_protocol("v3".into()).as_deref(), Some("v3"));
    }

    #[test]
    fn pod_options_round_trip_through_proto() {
        let mut spec = DeploymentSpec::test("iris").host("iris.example.com");
        spec.gpu = 2;
        spec.gpu_resource = Some("amd.com/gpu".into());
        spec.image_pull_secrets = vec!["regcred".into(), "other".into()];
        spec.tls_secret = Some("iris-tls".into());
        spec.ingress_annotations
            .insert("cert-manager.io/cluster-issuer".into(), "le".into());
        spec.command = vec!["python".into(), "-m".into(), "serve".into()];
        spec.args = vec!["--port=8501".into(), String::new()];
        spec.node_selector.insert("gpu".into(), "a100".into());
        spec.tolerations = vec![
            Toleration::parse("nvidia.com/gpu:NoSchedule").unwrap(),
            Toleration::parse("dedicated=ml:NoExecute").unwrap(),
        ];
        spec.priority_class = Some("high".into());
        spec.ready_path = Some("/v1/models/iris".into());
        spec.startup_timeout_seconds = 600;
        let wire: proto::DeploymentSpec = spec.clone().into();
        assert_eq!(wire.tolerations[0].value, "");
        assert_eq!(DeploymentSpec::from(wire), spec);
        // Off is the wire default: an old client's spec means none of them.
        let wire: proto::DeploymentSpec = DeploymentSpec::test("iris").into();
        assert_eq!(
            (
                wire.gpu,
                wire.tls_secret.as_str(),
                wire.startup_timeout_seconds
            ),
            (0, "", 0)
        );
    }

    #[test]
    fn autoscaling_and_budget_round_trip_through_proto() {
        let mut spec = DeploymentSpec::test("iris").replicas(3);
        spec.min_replicas = 2;
        spec.max_replicas = 8;
        spec.target_cpu_percent = Some(55);
        spec.max_unavailable = Some(2);
        let wire: proto::DeploymentSpec = spec.clone().into();
        assert_eq!((wire.min_replicas, wire.max_replicas), (2, 8));
        assert_eq!(
            (wire.target_cpu_percent, wire.max_unavailable),
            (Some(55), Some(2))
        );
        assert_eq!(DeploymentSpec::from(wire), spec);
        // An old client sends none of them: no autoscaling, the default budget.
        let old = DeploymentSpec::from(proto::DeploymentSpec::from(DeploymentSpec::test("iris")));
        assert!(!old.autoscaled());
        assert_eq!((old.target_cpu_percent, old.max_unavailable), (None, None));
    }

    #[test]
    fn absent_proxy_means_proxy_on() {
        let wire = proto::DeploymentSpec {
            image: "x".into(),
            ..Default::default()
        };
        let spec = DeploymentSpec::from(wire);
        assert!(spec.proxy.enabled);
        assert!(!spec.proxy.query_log);
        assert_eq!(spec.host, None);
    }
}
