//! The one conversion path between the wire types of [`crate::proto`] and the domain types
//! of this crate, used by the gateway, the agent and the CLI alike. An absent message on the
//! wire means the domain default; an empty string means "not set".

use crate::proto;
use crate::{DeployedObject, DeploymentSpec, EnvVar, ProxySpec, Resources};

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
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
            }),
            labels: s.labels.into_iter().collect(),
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
                })
                .unwrap_or_default(),
            labels: s.labels.into_iter().collect(),
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
