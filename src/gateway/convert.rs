//! Conversions between the wire types of [`crate::proto`] and the domain types of
//! [`crate::core`] and the store. The agent uses the `proto → core` direction too.

use super::store::{DeployerRecord, DeploymentRecord, StatusRecord};
use crate::core::{self, DeployedObject};
use crate::proto;
use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 with seconds precision, UTC (`2026-11-22T02:00:00Z`).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

// === spec ===

impl From<core::DeploymentSpec> for proto::DeploymentSpec {
    fn from(s: core::DeploymentSpec) -> Self {
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
impl From<proto::DeploymentSpec> for core::DeploymentSpec {
    fn from(s: proto::DeploymentSpec) -> Self {
        let resources = s.resources.unwrap_or_default();
        core::DeploymentSpec {
            model_name: s.model_name,
            image: s.image,
            replicas: s.replicas,
            port: s.port,
            host: non_empty(s.host),
            ingress_class: non_empty(s.ingress_class),
            env: s
                .env
                .into_iter()
                .map(|e| core::EnvVar {
                    name: e.name,
                    value: e.value,
                })
                .collect(),
            resources: core::Resources {
                cpu_request: non_empty(resources.cpu_request),
                cpu_limit: non_empty(resources.cpu_limit),
                memory_request: non_empty(resources.memory_request),
                memory_limit: non_empty(resources.memory_limit),
            },
            proxy: s
                .proxy
                .map(|p| core::ProxySpec {
                    enabled: p.enabled,
                    class_names: p.class_names,
                    query_log: p.query_log,
                })
                .unwrap_or_default(),
            labels: s.labels.into_iter().collect(),
        }
    }
}

// === deployments ===

impl From<DeploymentRecord> for proto::Deployment {
    fn from(d: DeploymentRecord) -> Self {
        proto::Deployment {
            id: d.id,
            name: d.name,
            namespace: d.namespace,
            spec: Some(d.spec.into()),
            revision_of_last_change: d.revision,
            deployer_id: d.deployer_id,
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
        }
    }
}

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

// === statuses ===

impl From<proto::DeploymentStatus> for StatusRecord {
    fn from(s: proto::DeploymentStatus) -> Self {
        StatusRecord {
            deployment_id: s.deployment_id,
            phase: s.phase,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            updated_replicas: s.updated_replicas,
            applied_revision: s.applied_revision,
            endpoint: s.endpoint,
            last_error: s.last_error,
            updated_at: None,
        }
    }
}

impl From<StatusRecord> for proto::DeploymentStatus {
    fn from(s: StatusRecord) -> Self {
        proto::DeploymentStatus {
            deployment_id: s.deployment_id,
            phase: s.phase,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            updated_replicas: s.updated_replicas,
            applied_revision: s.applied_revision,
            endpoint: s.endpoint,
            last_error: s.last_error,
        }
    }
}

/// A deployer as the CLI sees it; `online` is decided by the caller from heartbeats.
pub fn deployer_to_proto(d: DeployerRecord, online: bool) -> proto::Deployer {
    let state = if online {
        proto::DeployerState::Online
    } else if d.last_seen.is_some() {
        proto::DeployerState::Offline
    } else {
        proto::DeployerState::Unspecified
    };
    proto::Deployer {
        id: d.id,
        name: d.name,
        state: state as i32,
        agent_version: d.agent_version,
        cluster: d.cluster,
        last_seen: d.last_seen.map(rfc3339).unwrap_or_default(),
        created_at: rfc3339(d.created_at),
        deployments: d.deployments,
        revision: d.revision,
        agent_namespaces: d.agent_namespaces,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_proto() {
        let mut spec = core::DeploymentSpec::test("iris")
            .host("iris.example.com")
            .proxy(false);
        spec.env.push(core::EnvVar {
            name: "A".into(),
            value: "1".into(),
        });
        spec.resources.cpu_request = Some("500m".into());
        spec.labels.insert("team".into(), "ml".into());
        let wire: proto::DeploymentSpec = spec.clone().into();
        assert_eq!(core::DeploymentSpec::from(wire), spec);
    }

    #[test]
    fn proxy_settings_round_trip_through_proto() {
        let mut spec = core::DeploymentSpec::test("iris").query_log(true);
        spec.proxy.class_names = vec!["setosa".into(), "versicolor".into()];
        let wire: proto::DeploymentSpec = spec.clone().into();
        assert!(wire.proxy.as_ref().unwrap().query_log);
        assert_eq!(core::DeploymentSpec::from(wire), spec);
    }

    #[test]
    fn absent_proxy_means_proxy_on() {
        let wire = proto::DeploymentSpec {
            image: "x".into(),
            ..Default::default()
        };
        let spec = core::DeploymentSpec::from(wire);
        assert!(spec.proxy.enabled);
        assert!(!spec.proxy.query_log);
        assert_eq!(spec.host, None);
    }
}
