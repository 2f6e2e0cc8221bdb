//! Pure builders: the desired Deployment, Service, Ingress, HorizontalPodAutoscaler and
//! PodDisruptionBudget of one deployment.
//!
//! Nothing here talks to an API server; the reconciler compares what these return with
//! what the cluster holds and writes the difference.
//!
//! # Labels (the ownership contract)
//! Every object carries:
//! - [`MANAGED_BY_LABEL`]`: `[`MANAGED_BY_VALUE`] (`app.kubernetes.io/managed-by: ds-deployer`),
//! - [`OWNER_LABEL`]`: <deployer ID>` (`deployer.ds.dev/owner`): the deployer ID, not a token
//!   hash, so rotating a token orphans nothing,
//! - [`DEPLOYMENT_ID_LABEL`]`: <deployment ID>` (`deployer.ds.dev/deployment-id`), also the
//!   pod selector (stable for the deployment's life, so the immutable selector never changes),
//! - `app.kubernetes.io/name: <object name>`, and the user's own labels (which cannot
//!   override the ones above).
//!
//! The Deployment's metadata also carries [`REVISION_ANNOTATION`] (the deployer revision
//! applied) and [`SPEC_HASH_ANNOTATION`] (a digest of everything else built here), so a field
//! the user removed from the spec still triggers a write.

use ds_core::{DeployedObject, EnvVar};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec as KDeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricSource, CrossVersionObjectReference, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar as KEnvVar, HTTPGetAction, LocalObjectReference, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, Service, ServicePort, ServiceSpec,
    TCPSocketAction, Toleration as KToleration,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

// The ownership labels and selector, defined once in ds-core (the gateway and the CLI
// print the selector for cleaning up by hand).
pub use ds_core::ownership::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_LABEL, owner_selector};
/// The deployment-ID label; also the pod selector.
pub const DEPLOYMENT_ID_LABEL: &str = "deployer.ds.dev/deployment-id";
/// `app.kubernetes.io/name`: the object name, for humans and dashboards.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Annotation: the deployer revision (`revision_of_last_change`) these objects were built from.
pub const REVISION_ANNOTATION: &str = "deployer.ds.dev/revision";
/// Annotation: digest of the desired object, so removing a field from the spec still writes.
pub const SPEC_HASH_ANNOTATION: &str = "deployer.ds.dev/spec-hash";
/// Annotation of the Deployment while a HorizontalPodAutoscaler sets its replica count:
/// the agent leaves `spec.replicas` out of what it applies (see [`HANDOVER_MANAGER`]).
pub const AUTOSCALED_ANNOTATION: &str = "deployer.ds.dev/autoscaled";
/// The field manager that holds `spec.replicas` while the agent hands it to the autoscaler.
///
/// Server-side apply deletes a field its only manager stops applying (the Deployment
/// would drop to 1 replica until the autoscaler's next sync); so before leaving
/// `replicas` out the agent applies the current count under this manager, as the
/// Kubernetes documentation's "transferring ownership" recipe does. The autoscaler's first
/// scale takes the field over and this manager then owns nothing.
pub const HANDOVER_MANAGER: &str = "ds-deployer-handover";
/// The CPU the autoscaler measures is the model container's (not the proxy sidecar's).
pub const AUTOSCALED_CONTAINER: &str = MODEL_CONTAINER;

pub use ds_core::spec::{MODEL_CONTAINER, PROXY_CONTAINER};
/// Port the model-proxy serves traffic on.
pub const PROXY_PORT: u16 = 9501;
/// Port of the model-proxy's admin server (`/metrics`, `/healthz`, `/readyz`).
pub const PROXY_ADMIN_PORT: u16 = 9502;
/// Name of the Service port (and of the container port it targets); the Ingress uses it.
pub const HTTP_PORT_NAME: &str = "http";

/// The labels of every object of `obj`: the user's, then ours on top.
pub fn object_labels(obj: &DeployedObject) -> BTreeMap<String, String> {
    let mut labels = obj.spec.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(OWNER_LABEL.into(), obj.deployer_id.clone());
    labels.insert(DEPLOYMENT_ID_LABEL.into(), obj.id.clone());
    labels.insert(NAME_LABEL.into(), obj.name.clone());
    labels
}

/// The pod selector of the Deployment and the Service.
pub fn selector_labels(obj: &DeployedObject) -> BTreeMap<String, String> {
    BTreeMap::from([(DEPLOYMENT_ID_LABEL.to_string(), obj.id.clone())])
}

fn metadata(obj: &DeployedObject) -> ObjectMeta {
    ObjectMeta {
        name: Some(obj.name.clone()),
        namespace: Some(obj.namespace.clone()),
        labels: Some(object_labels(obj)),
        ..Default::default()
    }
}

/// Puts the revision and the digest of the rest into `meta.annotations`.
fn stamp<T: serde::Serialize>(
    obj: &DeployedObject,
    object: &mut T,
    meta: fn(&mut T) -> &mut ObjectMeta,
) {
    // The digest covers the object before it is stamped: it changes exactly when something
    // this module builds changes, whatever the revision says.
    let hash = match serde_json::to_vec(object) {
        Ok(bytes) => hex::encode(&Sha256::digest(&bytes)[..12]),
        // Serializing k8s-openapi types cannot fail; an empty hash would only cost a write.
        Err(_) => String::new(),
    };
    let annotations = meta(object).annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(REVISION_ANNOTATION.into(), obj.revision.to_string());
    annotations.insert(SPEC_HASH_ANNOTATION.into(), hash);
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    // The API server drops empty lists; sending none keeps desired and actual comparable.
    if v.is_empty() { None } else { Some(v) }
}

fn env(vars: &[EnvVar]) -> Option<Vec<KEnvVar>> {
    non_empty(
        vars.iter()
            .map(|v| KEnvVar {
                name: v.name.clone(),
                value: Some(v.value.clone()).filter(|s| !s.is_empty()),
                ..Default::default()
            })
            .collect(),
    )
}

fn quantities(pairs: [(&str, &Option<String>); 2]) -> Option<BTreeMap<String, Quantity>> {
    let map: BTreeMap<String, Quantity> = pairs
        .into_iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .filter(|s| !s.is_empty())
                .map(|s| (k.to_string(), Quantity(s.clone())))
        })
        .collect();
    if map.is_empty() { None } else { Some(map) }
}

fn model_resources(obj: &DeployedObject) -> Option<ResourceRequirements> {
    let r = &obj.spec.resources;
    let requests = quantities([("cpu", &r.cpu_request), ("memory", &r.memory_request)]);
    let limits = quantities([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]);
    let (requests, limits) = with_gpus(obj, requests, limits);
    if requests.is_none() && limits.is_none() {
        return None;
    }
    Some(ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    })
}

/// Resource names to quantities, as requests and limits hold them.
type Quantities = BTreeMap<String, Quantity>;

/// Accelerators as extended resources: Kubernetes wants them in limits, and a request, if
/// given, equal to the limit (they cannot be overcommitted); we give both so quota that
/// counts `requests.` sees them. Nothing is added without GPUs.
fn with_gpus(
    obj: &DeployedObject,
    mut requests: Option<Quantities>,
    mut limits: Option<Quantities>,
) -> (Option<Quantities>, Option<Quantities>) {
    if obj.spec.gpu > 0 {
        let resource = obj.spec.gpu_resource_name().to_string();
        for map in [&mut requests, &mut limits] {
            map.get_or_insert_with(BTreeMap::new)
                .insert(resource.clone(), Quantity(obj.spec.gpu.to_string()));
        }
    }
    (requests, limits)
}

fn ready_path(obj: &DeployedObject) -> Option<&str> {
    obj.spec.ready_path.as_deref().filter(|p| !p.is_empty())
}

/// The model container's readiness probe: `GET ready_path` when the model is reached
/// directly (proxy off) and has one, else a TCP check (with the proxy on, the proxy's
/// `/readyz` asks the ready path instead).
fn model_readiness(obj: &DeployedObject, port: i32) -> Probe {
    match ready_path(obj).filter(|_| !obj.spec.proxy.enabled) {
        Some(path) => http_probe(path, port, 5),
        None => tcp_probe(port, 5),
    }
}

/// The startup probe for a slow model load: until it passes the kubelet runs neither the
/// readiness nor the liveness probe, so a model that takes minutes to load is not
/// restarted. `period × failureThreshold` covers the timeout.
fn startup_probe(obj: &DeployedObject, port: i32) -> Option<Probe> {
    let timeout = obj.spec.startup_timeout_seconds;
    if timeout == 0 {
        return None;
    }
    let period = timeout.min(10);
    let failures = timeout.div_ceil(period);
    let mut probe = match ready_path(obj) {
        Some(path) => http_probe(path, port, 0),
        None => tcp_probe(port, 0),
    };
    probe.initial_delay_seconds = None;
    probe.period_seconds = Some(i32::try_from(period).unwrap_or(10));
    probe.failure_threshold = Some(i32::try_from(failures).unwrap_or(i32::MAX));
    Some(probe)
}

fn tcp_probe(port: i32, initial_delay: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            host: None,
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: i32, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn model_port(obj: &DeployedObject) -> i32 {
    i32::try_from(obj.spec.port).unwrap_or(i32::MAX)
}

fn model_container(obj: &DeployedObject) -> Container {
    let port = model_port(obj);
    let proxied = obj.spec.proxy.enabled;
    Container {
        name: MODEL_CONTAINER.into(),
        image: Some(obj.spec.image.clone()),
        ports: Some(vec![ContainerPort {
            // With the proxy on, "http" names the proxy's port: only one container may use it.
            name: Some(if proxied {
                "model".into()
            } else {
                HTTP_PORT_NAME.into()
            }),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: env(&obj.spec.env),
        resources: model_resources(obj),
        // A model may take a while to load: readiness gates traffic, liveness only restarts
        // a server that stopped accepting connections altogether.
        readiness_probe: Some(model_readiness(obj, port)),
        liveness_probe: Some(tcp_probe(port, 30)),
        startup_probe: startup_probe(obj, port),
        command: non_empty(obj.spec.command.clone()),
        args: non_empty(obj.spec.args.clone()),
        volume_mounts: super::model_volume::model_mount(obj).map(|m| vec![m]),
        ..Default::default()
    }
}

/// The model-proxy sidecar (issue 5): same image as the agent, `ds model-proxy`.
fn proxy_container(obj: &DeployedObject, proxy_image: &str) -> Container {
    let mut args = vec![
        "--listen".to_string(),
        format!("0.0.0.0:{PROXY_PORT}"),
        "--upstream".to_string(),
        format!("http://127.0.0.1:{}", obj.spec.port),
        "--admin-listen".to_string(),
        format!("0.0.0.0:{PROXY_ADMIN_PORT}"),
        "--deployment-id".to_string(),
        obj.id.clone(),
    ];
    if !obj.spec.proxy.class_names.is_empty() {
        args.push("--class-names".into());
        args.push(obj.spec.proxy.class_names.join(","));
    }
    if obj.spec.proxy.query_log {
        // Stdout is the container log, which the cluster's log pipeline already collects;
        // nothing is added when off, so existing Deployments stay byte-for-byte the same.
        args.push("--query-log".into());
        args.push("-".into());
    }
    if let Some(protocol) = &obj.spec.proxy.protocol {
        // Auto (`None`) is the proxy's default: nothing is added, so existing Deployments
        // stay byte-for-byte the same.
        args.push("--protocol".into());
        args.push(protocol.clone());
    }
    if let Some(path) = ready_path(obj) {
        // The proxy's `/readyz` (its readiness probe) asks the model on this path.
        args.push("--ready-path".into());
        args.push(path.to_string());
    }
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(proxy_image.to_string()),
        command: Some(vec!["ds".into(), "model-proxy".into()]),
        args: Some(args),
        ports: Some(vec![
            ContainerPort {
                name: Some(HTTP_PORT_NAME.into()),
                container_port: i32::from(PROXY_PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: i32::from(PROXY_ADMIN_PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("256Mi".into()),
            )])),
            ..Default::default()
        }),
        // `/readyz` answers only while the model behind it does: the pod is ready when both are.
        readiness_probe: Some(http_probe("/readyz", i32::from(PROXY_ADMIN_PORT), 2)),
        liveness_probe: Some(http_probe("/healthz", i32::from(PROXY_ADMIN_PORT), 10)),
        ..Default::default()
    }
}

/// The desired Deployment: model container, optional model-proxy sidecar, rolling updates.
///
/// `proxy_image` is the sidecar's image: the agent's own (`--proxy-image`).
pub fn desired_deployment(obj: &DeployedObject, proxy_image: &str) -> Deployment {
    let mut containers = vec![model_container(obj)];
    let mut pod_annotations = BTreeMap::new();
    if obj.spec.proxy.enabled {
        containers.push(proxy_container(obj, proxy_image));
        pod_annotations.insert("prometheus.io/scrape".to_string(), "true".to_string());
        pod_annotations.insert(
            "prometheus.io/port".to_string(),
            PROXY_ADMIN_PORT.to_string(),
        );
        pod_annotations.insert("prometheus.io/path".to_string(), "/metrics".to_string());
    }
    let mut d = Deployment {
        metadata: metadata(obj),
        spec: Some(KDeploymentSpec {
            // While autoscaled the autoscaler's field manager owns the count: applying one
            // here would take it back at every write.
            replicas: (!obj.spec.autoscaled())
                .then(|| i32::try_from(obj.spec.replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(obj)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // Surge first, never drop below the desired count: a model swap is seamless.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(object_labels(obj)),
                    annotations: if pod_annotations.is_empty() {
                        None
                    } else {
                        Some(pod_annotations)
                    },
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers,
                    image_pull_secrets: non_empty(
                        obj.spec
                            .image_pull_secrets
                            .iter()
                            .map(|name| LocalObjectReference { name: name.clone() })
                            .collect(),
                    ),
                    node_selector: Some(obj.spec.node_selector.clone()).filter(|m| !m.is_empty()),
                    tolerations: non_empty(obj.spec.tolerations.iter().map(toleration).collect()),
                    priority_class_name: obj.spec.priority_class.clone().filter(|c| !c.is_empty()),
                    // The model from storage: downloaded first, or a mounted claim.
                    init_containers: super::model_volume::fetch_container(obj, proxy_image)
                        .map(|c| vec![c]),
                    volumes: super::model_volume::volume(obj).map(|v| vec![v]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    if obj.spec.autoscaled() {
        d.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(AUTOSCALED_ANNOTATION.into(), "true".into());
    }
    stamp(obj, &mut d, |d| &mut d.metadata);
    d
}

fn int32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The desired `autoscaling/v2` HorizontalPodAutoscaler, or `None` without autoscaling:
/// the Deployment of the same name between `min_replicas` and `max_replicas`, on the
/// model container's CPU utilization (a sidecar's idle CPU would skew a pod average).
pub fn desired_autoscaler(obj: &DeployedObject) -> Option<HorizontalPodAutoscaler> {
    if !obj.spec.autoscaled() {
        return None;
    }
    let mut h = HorizontalPodAutoscaler {
        metadata: metadata(obj),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: obj.name.clone(),
            },
            min_replicas: Some(int32(obj.spec.min_replicas)),
            max_replicas: int32(obj.spec.max_replicas),
            metrics: Some(vec![MetricSpec {
                type_: "ContainerResource".into(),
                container_resource: Some(ContainerResourceMetricSource {
                    name: "cpu".into(),
                    container: AUTOSCALED_CONTAINER.into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(int32(obj.spec.target_cpu())),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: None,
        }),
        status: None,
    };
    stamp(obj, &mut h, |h| &mut h.metadata);
    Some(h)
}

/// The desired `policy/v1` PodDisruptionBudget, or `None` when the deployment may run a
/// single pod (see [`ds_core::DeploymentSpec::wants_disruption_budget`]).
pub fn desired_disruption_budget(obj: &DeployedObject) -> Option<PodDisruptionBudget> {
    if !obj.spec.wants_disruption_budget() {
        return None;
    }
    let mut b = PodDisruptionBudget {
        metadata: metadata(obj),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(int32(obj.spec.max_unavailable_pods()))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(obj)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    stamp(obj, &mut b, |b| &mut b.metadata);
    Some(b)
}

/// A toleration: operator `Equal` with a value, `Exists` without.
fn toleration(t: &ds_core::Toleration) -> KToleration {
    KToleration {
        key: Some(t.key.clone()),
        operator: Some(if t.value.is_some() { "Equal" } else { "Exists" }.into()),
        value: t.value.clone(),
        effect: Some(t.effect.clone()),
        toleration_seconds: None,
    }
}

/// The port the Service forwards to: the proxy's when it is on, else the model's.
pub fn service_target_port(obj: &DeployedObject) -> i32 {
    if obj.spec.proxy.enabled {
        i32::from(PROXY_PORT)
    } else {
        model_port(obj)
    }
}

/// The desired ClusterIP Service. Its port is the model port whatever the proxy does, so
/// the in-cluster URL stays the same when the proxy is toggled.
pub fn desired_service(obj: &DeployedObject) -> Service {
    let mut s = Service {
        metadata: metadata(obj),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(obj)),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: model_port(obj),
                target_port: Some(IntOrString::Int(service_target_port(obj))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    stamp(obj, &mut s, |s| &mut s.metadata);
    s
}

/// The desired Ingress, or `None` when the spec has no host.
pub fn desired_ingress(obj: &DeployedObject) -> Option<Ingress> {
    let host = obj.spec.host.as_ref().filter(|h| !h.is_empty())?;
    let mut meta = metadata(obj);
    if !obj.spec.ingress_annotations.is_empty() {
        // Ours (revision, spec hash) are stamped over these; validation reserves their prefix.
        meta.annotations = Some(obj.spec.ingress_annotations.clone());
    }
    let tls = obj
        .spec
        .tls_secret
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|secret| {
            vec![IngressTLS {
                hosts: Some(vec![host.clone()]),
                secret_name: Some(secret.clone()),
            }]
        });
    let mut i = Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            tls,
            ingress_class_name: obj.spec.ingress_class.clone().filter(|c| !c.is_empty()),
            rules: Some(vec![IngressRule {
                host: Some(host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: obj.name.clone(),
                                port: Some(ServiceBackendPort {
                                    name: Some(HTTP_PORT_NAME.into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        status: None,
    };
    stamp(obj, &mut i, |i| &mut i.metadata);
    Some(i)
}

/// Where users reach the deployment: the Ingress URL (`https://` with a TLS secret), else
/// the in-cluster Service URL.
pub fn endpoint(obj: &DeployedObject) -> String {
    match obj.spec.ingress_url() {
        Some(url) => url,
        None => format!(
            "http://{}.{}.svc.cluster.local:{}",
            obj.name, obj.namespace, obj.spec.port
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_core::{DeploymentSpec, EnvVar};

    const IMAGE: &str = "ghcr.io/ds/ds:1.0";

    fn obj(spec: DeploymentSpec) -> DeployedObject {
        DeployedObject {
            id: "dep-1".into(),
            deployer_id: "owner-1".into(),
            name: "iris".into(),
            namespace: "models".into(),
            revision: 7,
            spec,
        }
    }

    fn container<'a>(d: &'a Deployment, name: &str) -> Option<&'a Container> {
        d.spec
            .as_ref()?
            .template
            .spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == name)
    }

    #[test]
    fn ownership_labels_on_every_object_and_user_labels_cannot_override_them() {
        let mut spec = DeploymentSpec::test("iris").host("iris.example.com");
        spec.labels.insert("team".into(), "ml".into());
        spec.labels
            .insert(OWNER_LABEL.into(), "someone-else".into());
        let o = obj(spec);
        let d = desired_deployment(&o, IMAGE);
        let s = desired_service(&o);
        let i = desired_ingress(&o).expect("host set");
        for labels in [
            d.metadata.labels.as_ref(),
            s.metadata.labels.as_ref(),
            i.metadata.labels.as_ref(),
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref(),
        ] {
            let labels = labels.expect("labels");
            assert_eq!(labels[MANAGED_BY_LABEL], "ds-deployer");
            assert_eq!(labels[OWNER_LABEL], "owner-1");
            assert_eq!(labels[DEPLOYMENT_ID_LABEL], "dep-1");
            assert_eq!(labels["team"], "ml");
        }
        for meta in [&d.metadata, &s.metadata, &i.metadata] {
            assert_eq!(meta.name.as_deref(), Some("iris"));
            assert_eq!(meta.namespace.as_deref(), Some("models"));
            let ann = meta.annotations.as_ref().expect("annotations");
            assert_eq!(ann[REVISION_ANNOTATION], "7");
            assert!(!ann[SPEC_HASH_ANNOTATION].is_empty());
        }
        assert_eq!(
            owner_selector("owner-1"),
            "app.kubernetes.io/managed-by=ds-deployer,deployer.ds.dev/owner=owner-1"
        );
    }

    #[test]
    fn deployment_fields() {
        let mut spec = DeploymentSpec::test("iris")
            .image("reg.io/iris:2")
            .replicas(3);
        spec.env = vec![
            EnvVar {
                name: "A".into(),
                value: "1".into(),
            },
            EnvVar {
                name: "B".into(),
                value: String::new(),
            },
        ];
        spec.resources.cpu_request = Some("500m".into());
        spec.resources.memory_limit = Some("1Gi".into());
        let d = desired_deployment(&obj(spec.proxy(false)), IMAGE);
        let ds = d.spec.as_ref().unwrap();
        assert_eq!(ds.replicas, Some(3));
        assert_eq!(
            ds.selector.match_labels,
            Some(BTreeMap::from([(
                DEPLOYMENT_ID_LABEL.to_string(),
                "dep-1".to_string()
            )]))
        );
        let strategy = ds.strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let ru = strategy.rolling_update.as_ref().unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
        let pod = ds.template.spec.as_ref().unwrap();
        assert_eq!(pod.containers.len(), 1, "proxy off: model container only");
        let m = container(&d, MODEL_CONTAINER).unwrap();
        assert_eq!(m.image.as_deref(), Some("reg.io/iris:2"));
        let ports = m.ports.as_ref().unwrap();
        assert_eq!(ports[0].container_port, 8501);
        assert_eq!(ports[0].name.as_deref(), Some(HTTP_PORT_NAME));
        let env = m.env.as_ref().unwrap();
        assert_eq!(env[0].name, "A");
        assert_eq!(env[0].value.as_deref(), Some("1"));
        assert_eq!(env[1].name, "B");
        assert_eq!(env[1].value, None);
        let res = m.resources.as_ref().unwrap();
        assert_eq!(
            res.requests.as_ref().unwrap()["cpu"],
            Quantity("500m".into())
        );
        assert!(!res.requests.as_ref().unwrap().contains_key("memory"));
        assert_eq!(
            res.limits.as_ref().unwrap()["memory"],
            Quantity("1Gi".into())
        );
        let rp = m.readiness_probe.as_ref().unwrap();
        assert_eq!(rp.tcp_socket.as_ref().unwrap().port, IntOrString::Int(8501));
        assert!(m.liveness_probe.is_some());
        // Proxy off: no scrape annotations on the pods.
        assert!(ds.template.metadata.as_ref().unwrap().annotations.is_none());
    }

    #[test]
    fn empty_optional_fields_are_left_out() {
        let d = desired_deployment(&obj(DeploymentSpec::test("iris")), IMAGE);
        let m = container(&d, MODEL_CONTAINER).unwrap();
        assert!(m.env.is_none());
        assert!(m.resources.is_none());
    }

    #[test]
    fn proxy_sidecar_when_enabled() {
        let mut spec = DeploymentSpec::test("iris").proxy(true);
        spec.proxy.class_names = vec!["setosa".into(), "versicolor".into()];
        let o = obj(spec);
        let d = desired_deployment(&o, IMAGE);
        let p = container(&d, PROXY_CONTAINER).expect("sidecar");
        assert_eq!(p.image.as_deref(), Some(IMAGE));
        assert_eq!(
            p.command,
            Some(vec!["ds".to_string(), "model-proxy".to_string()])
        );
        let args = p.args.as_ref().unwrap().join(" ");
        assert!(args.contains("--listen 0.0.0.0:9501"), "{args}");
        assert!(args.contains("--upstream http://127.0.0.1:8501"), "{args}");
        assert!(args.contains("--admin-listen 0.0.0.0:9502"), "{args}");
        assert!(args.contains("--deployment-id dep-1"), "{args}");
        assert!(args.contains("--class-names setosa,versicolor"), "{args}");
        let rp = p
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(rp.path.as_deref(), Some("/readyz"));
        assert_eq!(rp.port, IntOrString::Int(9502));
        let ports = p.ports.as_ref().unwrap();
        assert_eq!(ports[0].container_port, 9501);
        assert_eq!(ports[0].name.as_deref(), Some(HTTP_PORT_NAME));
        assert_eq!(ports[1].container_port, 9502);
        let m = container(&d, MODEL_CONTAINER).unwrap();
        assert_eq!(m.ports.as_ref().unwrap()[0].name.as_deref(), Some("model"));
        let ann = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        let ann = ann.annotations.as_ref().unwrap();
        assert_eq!(ann["prometheus.io/scrape"], "true");
        assert_eq!(ann["prometheus.io/port"], "9502");
        assert_eq!(ann["prometheus.io/path"], "/metrics");
        let s = desired_service(&o);
        let port = &s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 8501);
        assert_eq!(port.target_port, Some(IntOrString::Int(9501)));
    }

    #[test]
    fn the_proxy_protocol_goes_to_the_sidecar_and_auto_adds_nothing() {
        let args_of = |o: &DeployedObject| {
            container(&desired_deployment(o, IMAGE), PROXY_CONTAINER)
                .expect("sidecar")
                .args
                .clone()
                .unwrap()
        };
        let auto = args_of(&obj(DeploymentSpec::test("iris").proxy(true)));
        assert!(!auto.contains(&"--protocol".to_string()), "{auto:?}");
        for protocol in ["v1", "v2"] {
            let mut spec = DeploymentSpec::test("iris").proxy(true);
            spec.proxy.protocol = Some(protocol.into());
            let mut args = args_of(&obj(spec));
            let at = args
                .iter()
                .position(|a| a == "--protocol")
                .expect("--protocol passed");
            assert_eq!(args[at + 1], protocol);
            // Nothing else changes in the sidecar's arguments.
            args.drain(at..at + 2);
            assert_eq!(args, auto);
        }
    }

    #[test]
    fn query_log_writes_to_the_sidecars_stdout() {
        let off = obj(DeploymentSpec::test("iris").proxy(true));
        let on = obj(DeploymentSpec::test("iris").proxy(true).query_log(true));
        let args_of = |o: &DeployedObject| {
            container(&desired_deployment(o, IMAGE), PROXY_CONTAINER)
                .expect("sidecar")
                .args
                .clone()
                .unwrap()
        };
        let with_log = args_of(&on);
        let at = with_log
            .iter()
            .position(|a| a == "--query-log")
            .expect("--query-log passed");
        assert_eq!(
            with_log[at + 1],
            "-",
            "stdout, for the cluster's log pipeline"
        );
        assert!(!args_of(&off).contains(&"--query-log".to_string()));
        // Only the sidecar's arguments differ: the toggle is a pod-template change that the
        // Deployment rolls out in place, and the Service and Ingress stay as they are.
        let mut without_log = with_log.clone();
        without_log.drain(at..at + 2);
        assert_eq!(without_log, args_of(&off));
        let mut d_on = desired_deployment(&on, IMAGE);
        let mut d_off = desired_deployment(&off, IMAGE);
        for d in [&mut d_on, &mut d_off] {
            d.metadata
                .annotations
                .as_mut()
                .unwrap()
                .remove(SPEC_HASH_ANNOTATION);
            let pod = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
            pod.containers.iter_mut().for_each(|c| c.args = None);
        }
        assert_eq!(d_on, d_off);
        assert_eq!(desired_service(&on), desired_service(&off));
    }

    #[test]
    fn query_logs_off_builds_the_objects_built_before_the_setting_existed() {
        // Pinned from the builders before `proxy.query_log` existed: agents upgraded to a
        // version with the setting must see no difference on deployments that leave it off,
        // or every resync after the upgrade would rewrite (and roll) every Deployment.
        // Change these pins only for a change meant to roll every model.
        let o = obj(DeploymentSpec::test("iris"));
        let d = desired_deployment(&o, IMAGE);
        let args = container(&d, PROXY_CONTAINER)
            .unwrap()
            .args
            .clone()
            .unwrap();
        assert_eq!(
            args,
            [
                "--listen",
                "0.0.0.0:9501",
                "--upstream",
                "http://127.0.0.1:8501",
                "--admin-listen",
                "0.0.0.0:9502",
                "--deployment-id",
                "dep-1",
            ]
        );
        let hash = |ann: &Option<BTreeMap<String, String>>| {
            ann.as_ref().unwrap()[SPEC_HASH_ANNOTATION].clone()
        };
        assert_eq!(hash(&d.metadata.annotations), "23e3e72fec31cb60c9481289");
        assert_eq!(
            hash(&desired_service(&o).metadata.annotations),
            "d610b5b7203d6b1eeb7d9d0a"
        );
    }

    #[test]
    fn service_targets_model_port_when_proxy_off() {
        let o = obj(DeploymentSpec::test("iris").proxy(false));
        let s = desired_service(&o);
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector, Some(selector_labels(&o)));
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(port.name.as_deref(), Some(HTTP_PORT_NAME));
        assert_eq!(port.port, 8501);
        assert_eq!(port.target_port, Some(IntOrString::Int(8501)));
    }

    #[test]
    fn ingress_only_with_host() {
        assert!(desired_ingress(&obj(DeploymentSpec::test("iris"))).is_none());
        let mut spec = DeploymentSpec::test("iris").host("iris.example.com");
        spec.ingress_class = Some("nginx".into());
        let o = obj(spec);
        let i = desired_ingress(&o).unwrap();
        let spec = i.spec.as_ref().unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rule = &spec.rules.as_ref().unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("iris.example.com"));
        let path = &rule.http.as_ref().unwrap().paths[0];
        assert_eq!(path.path.as_deref(), Some("/"));
        assert_eq!(path.path_type, "Prefix");
        let backend = path.backend.service.as_ref().unwrap();
        assert_eq!(backend.name, "iris");
        assert_eq!(
            backend.port.as_ref().unwrap().name.as_deref(),
            Some(HTTP_PORT_NAME)
        );
        assert_eq!(endpoint(&o), "http://iris.example.com/");
        assert_eq!(
            endpoint(&obj(DeploymentSpec::test("iris"))),
            "http://iris.models.svc.cluster.local:8501"
        );
    }

    #[test]
    fn spec_hash_changes_with_the_spec_not_the_revision() {
        let a = obj(DeploymentSpec::test("iris"));
        let mut b = a.clone();
        b.revision = 8;
        let hash =
            |d: &Deployment| d.metadata.annotations.as_ref().unwrap()[SPEC_HASH_ANNOTATION].clone();
        assert_eq!(
            hash(&desired_deployment(&a, IMAGE)),
            hash(&desired_deployment(&b, IMAGE))
        );
        b.spec.image = "other:1".into();
        assert_ne!(
            hash(&desired_deployment(&a, IMAGE)),
            hash(&desired_deployment(&b, IMAGE))
        );
    }

    // --- pod-level options (issue 16) ---

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn gpus_are_limits_and_requests_of_the_model_container_only() {
        let mut spec = DeploymentSpec::test("iris").proxy(true);
        spec.gpu = 2;
        spec.resources.cpu_request = Some("1".into());
        let d = desired_deployment(&obj(spec.clone()), IMAGE);
        let res = container(&d, MODEL_CONTAINER)
            .unwrap()
            .resources
            .clone()
            .unwrap();
        let (requests, limits) = (res.requests.unwrap(), res.limits.unwrap());
        assert_eq!(requests["nvidia.com/gpu"], Quantity("2".into()));
        assert_eq!(limits["nvidia.com/gpu"], Quantity("2".into()));
        assert_eq!(
            requests["cpu"],
            Quantity("1".into()),
            "kept beside the GPUs"
        );
        let proxy = container(&d, PROXY_CONTAINER)
            .unwrap()
            .resources
            .clone()
            .unwrap();
        for map in [proxy.requests.unwrap(), proxy.limits.unwrap()] {
            assert!(!map.keys().any(|k| k.contains("gpu")), "{map:?}");
        }
        spec.gpu_resource = Some("amd.com/gpu".into());
        spec.resources.cpu_request = None;
        let d = desired_deployment(&obj(spec), IMAGE);
        let res = container(&d, MODEL_CONTAINER)
            .unwrap()
            .resources
            .clone()
            .unwrap();
        assert_eq!(
            res.limits.unwrap(),
            BTreeMap::from([("amd.com/gpu".to_string(), Quantity("2".into()))])
        );
        assert_eq!(
            res.requests.unwrap(),
            BTreeMap::from([("amd.com/gpu".to_string(), Quantity("2".into()))])
        );
    }

    #[test]
    fn pull_secrets_and_scheduling_go_on_the_pod() {
        let mut spec = DeploymentSpec::test("iris");
        spec.image_pull_secrets = vec!["regcred".into(), "mirror".into()];
        spec.node_selector.insert("gpu".into(), "a100".into());
        spec.tolerations = vec![
            ds_core::Toleration::parse("nvidia.com/gpu:NoSchedule").unwrap(),
            ds_core::Toleration::parse("dedicated=ml:NoExecute").unwrap(),
        ];
        spec.priority_class = Some("model-serving".into());
        let d = desired_deployment(&obj(spec), IMAGE);
        let p = pod(&d);
        let secrets: Vec<&str> = p
            .image_pull_secrets
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(secrets, ["regcred", "mirror"]);
        assert_eq!(
            p.node_selector,
            Some(BTreeMap::from([("gpu".to_string(), "a100".to_string())]))
        );
        let t = p.tolerations.as_ref().unwrap();
        assert_eq!(t[0].key.as_deref(), Some("nvidia.com/gpu"));
        assert_eq!(t[0].operator.as_deref(), Some("Exists"));
        assert_eq!(t[0].value, None);
        assert_eq!(t[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(t[1].operator.as_deref(), Some("Equal"));
        assert_eq!(t[1].value.as_deref(), Some("ml"));
        assert_eq!(t[1].effect.as_deref(), Some("NoExecute"));
        assert_eq!(p.priority_class_name.as_deref(), Some("model-serving"));
        let off = desired_deployment(&obj(DeploymentSpec::test("iris")), IMAGE);
        let p = pod(&off);
        assert!(p.image_pull_secrets.is_none() && p.node_selector.is_none());
        assert!(p.tolerations.is_none() && p.priority_class_name.is_none());
    }

    #[test]
    fn command_and_args_are_the_model_containers_only() {
        let mut spec = DeploymentSpec::test("iris").proxy(true);
        spec.command = vec!["python".into(), "-m".into(), "serve".into()];
        spec.args = vec!["--port".into(), "8501".into()];
        let d = desired_deployment(&obj(spec), IMAGE);
        let m = container(&d, MODEL_CONTAINER).unwrap();
        assert_eq!(
            m.command,
            Some(vec!["python".into(), "-m".into(), "serve".into()])
        );
        assert_eq!(m.args, Some(vec!["--port".into(), "8501".into()]));
        let p = container(&d, PROXY_CONTAINER).unwrap();
        assert_eq!(p.command, Some(vec!["ds".into(), "model-proxy".into()]));
        let off = desired_deployment(&obj(DeploymentSpec::test("iris")), IMAGE);
        let m = container(&off, MODEL_CONTAINER).unwrap();
        assert!(m.command.is_none() && m.args.is_none(), "the image's own");
    }

    #[test]
    fn tls_and_annotations_go_on_the_ingress_only() {
        let mut spec = DeploymentSpec::test("iris").host("iris.example.com");
        spec.tls_secret = Some("iris-tls".into());
        spec.ingress_annotations
            .insert("cert-manager.io/cluster-issuer".into(), "le".into());
        let o = obj(spec);
        let i = desired_ingress(&o).unwrap();
        let tls = i.spec.as_ref().unwrap().tls.as_ref().unwrap();
        assert_eq!(tls.len(), 1);
        assert_eq!(tls[0].hosts, Some(vec!["iris.example.com".to_string()]));
        assert_eq!(tls[0].secret_name.as_deref(), Some("iris-tls"));
        let ann = i.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann["cert-manager.io/cluster-issuer"], "le");
        assert_eq!(ann[REVISION_ANNOTATION], "7", "ours stay beside the user's");
        assert!(ann.contains_key(SPEC_HASH_ANNOTATION));
        for meta in [
            &desired_deployment(&o, IMAGE).metadata,
            &desired_service(&o).metadata,
        ] {
            let ann = meta.annotations.as_ref().unwrap();
            assert!(
                !ann.contains_key("cert-manager.io/cluster-issuer"),
                "{ann:?}"
            );
        }
        assert_eq!(endpoint(&o), "https://iris.example.com/");
        let plain =
            desired_ingress(&obj(DeploymentSpec::test("iris").host("iris.example.com"))).unwrap();
        assert!(plain.spec.unwrap().tls.is_none());
        assert_eq!(plain.metadata.annotations.unwrap().len(), 2, "ours only");
    }

    #[test]
    fn ready_path_goes_to_the_proxy_or_becomes_the_models_readiness_probe() {
        let mut spec = DeploymentSpec::test("iris").proxy(true);
        spec.ready_path = Some("/v1/models/iris".into());
        let d = desired_deployment(&obj(spec.clone()), IMAGE);
        let args = container(&d, PROXY_CONTAINER)
            .unwrap()
            .args
            .clone()
            .unwrap();
        let at = args
            .iter()
            .position(|a| a == "--ready-path")
            .expect("passed");
        assert_eq!(args[at + 1], "/v1/models/iris");
        // The proxy asks the path: the model keeps its TCP check.
        let m = container(&d, MODEL_CONTAINER).unwrap();
        assert!(m.readiness_probe.as_ref().unwrap().tcp_socket.is_some());
        let d = desired_deployment(&obj(spec.proxy(false)), IMAGE);
        let m = container(&d, MODEL_CONTAINER).unwrap();
        let get = m
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .clone()
            .unwrap();
        assert_eq!(get.path.as_deref(), Some("/v1/models/iris"));
        assert_eq!(get.port, IntOrString::Int(8501));
        assert!(m.liveness_probe.as_ref().unwrap().tcp_socket.is_some());
        assert!(
            m.startup_probe.is_none(),
            "no startup timeout, no startup probe"
        );
    }

    #[test]
    fn the_startup_probe_covers_the_timeout() {
        let mut spec = DeploymentSpec::test("iris").proxy(false);
        spec.startup_timeout_seconds = 600;
        let d = desired_deployment(&obj(spec.clone()), IMAGE);
        let probe = container(&d, MODEL_CONTAINER)
            .unwrap()
            .startup_probe
            .clone()
            .unwrap();
        assert_eq!(
            probe.tcp_socket.as_ref().unwrap().port,
            IntOrString::Int(8501)
        );
        assert_eq!(
            (probe.period_seconds, probe.failure_threshold),
            (Some(10), Some(60))
        );
        spec.ready_path = Some("/healthz".into());
        for (timeout, period, failures) in [(601, 10, 61), (5, 5, 1), (1, 1, 1), (86_400, 10, 8640)]
        {
            spec.startup_timeout_seconds = timeout;
            let d = desired_deployment(&obj(spec.clone()), IMAGE);
            let probe = container(&d, MODEL_CONTAINER)
                .unwrap()
                .startup_probe
                .clone()
                .unwrap();
            assert_eq!(
                probe.http_get.as_ref().unwrap().path.as_deref(),
                Some("/healthz")
            );
            assert_eq!(
                (probe.period_seconds, probe.failure_threshold),
                (Some(period), Some(failures))
            );
            let covered = u32::try_from(period * failures).unwrap();
            assert!(covered >= timeout, "{timeout}: {covered}");
            assert!(covered < timeout + 10, "{timeout}: {covered}");
        }
        // Only the model container: the proxy starts at once.
        let d = desired_deployment(&obj(spec.proxy(true)), IMAGE);
        assert!(
            container(&d, PROXY_CONTAINER)
                .unwrap()
                .startup_probe
                .is_none()
        );
    }

    #[test]
    fn an_object_store_model_is_fetched_by_an_init_container_into_a_shared_volume() {
        let mut spec = DeploymentSpec::test("iris");
        spec.model_uri = Some("s3://models/iris.onnx".into());
        spec.model_path = Some("/mnt/model".into());
        spec.storage_secret = Some("s3-creds".into());
        spec.model_sha256 = Some("AB".repeat(32));
        let d = desired_deployment(&obj(spec), IMAGE);
        let p = pod(&d);
        let init = &p.init_containers.as_ref().expect("an init container")[0];
        assert_eq!(init.name, "model-fetch");
        assert_eq!(init.image.as_deref(), Some(IMAGE), "the agent's own image");
        assert_eq!(
            init.command.as_deref(),
            Some(&["ds".to_string(), "model-fetch".to_string()][..])
        );
        assert_eq!(
            init.args.clone().unwrap(),
            [
                "--uri",
                "s3://models/iris.onnx",
                "--dest",
                "/models",
                "--sha256",
                &"ab".repeat(32)
            ]
        );
        let from = &init.env_from.as_ref().unwrap()[0];
        assert_eq!(from.secret_ref.as_ref().unwrap().name, "s3-creds");
        assert_eq!(
            init.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let init_mount = &init.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (init_mount.name.as_str(), init_mount.read_only),
            ("model", None)
        );
        let vols = p.volumes.as_ref().unwrap();
        assert_eq!(vols.len(), 1);
        assert!(vols[0].empty_dir.is_some() && vols[0].name == "model");
        let model = container(&d, MODEL_CONTAINER).unwrap();
        let m = &model.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (
                m.name.as_str(),
                m.mount_path.as_str(),
                m.read_only,
                m.sub_path.as_deref()
            ),
            ("model", "/mnt/model", Some(true), None)
        );
        // Not the proxy's: the sidecar does not see the model.
        let proxy = container(&d, PROXY_CONTAINER).unwrap();
        assert!(proxy.volume_mounts.is_none());
    }

    #[test]
    fn a_pvc_model_is_mounted_read_only_with_its_sub_path_and_no_init_container() {
        let mut spec = DeploymentSpec::test("iris");
        spec.model_uri = Some("pvc://weights/iris/v1".into());
        let d = desired_deployment(&obj(spec), IMAGE);
        let p = pod(&d);
        assert!(p.init_containers.is_none());
        let claim = p.volumes.as_ref().unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("weights", Some(true))
        );
        let m = &container(&d, MODEL_CONTAINER)
            .unwrap()
            .volume_mounts
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (m.mount_path.as_str(), m.read_only, m.sub_path.as_deref()),
            ("/models", Some(true), Some("iris/v1"))
        );
    }

    #[test]
    fn without_a_model_uri_the_pod_has_no_volumes_and_no_secret_reference() {
        let d = desired_deployment(&obj(DeploymentSpec::test("iris")), IMAGE);
        let p = pod(&d);
        assert!(p.init_containers.is_none() && p.volumes.is_none());
        assert!(
            container(&d, MODEL_CONTAINER)
                .unwrap()
                .volume_mounts
                .is_none()
        );
    }
    fn autoscaled(min: u32, max: u32) -> DeploymentSpec {
        let mut spec = DeploymentSpec::test("iris").replicas(3);
        spec.resources.cpu_request = Some("500m".into());
        spec.min_replicas = min;
        spec.max_replicas = max;
        spec
    }

    #[test]
    fn the_autoscaler_scales_the_deployment_of_the_same_name_on_the_models_cpu() {
        assert!(desired_autoscaler(&obj(DeploymentSpec::test("iris"))).is_none());
        let mut spec = autoscaled(2, 7);
        spec.target_cpu_percent = Some(55);
        let o = obj(spec);
        let h = desired_autoscaler(&o).expect("autoscaled");
        assert_eq!(h.metadata.name.as_deref(), Some("iris"));
        assert_eq!(h.metadata.namespace.as_deref(), Some("models"));
        let labels = h.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[OWNER_LABEL], "owner-1");
        assert_eq!(labels[DEPLOYMENT_ID_LABEL], "dep-1");
        assert_eq!(
            h.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION],
            "7"
        );
        let spec = h.spec.as_ref().unwrap();
        assert_eq!(
            spec.scale_target_ref.api_version.as_deref(),
            Some("apps/v1")
        );
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!(spec.scale_target_ref.name, "iris");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 7));
        let metrics = spec.metrics.as_ref().unwrap();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].type_, "ContainerResource");
        let cpu = metrics[0].container_resource.as_ref().unwrap();
        assert_eq!(
            (cpu.name.as_str(), cpu.container.as_str()),
            ("cpu", MODEL_CONTAINER)
        );
        assert_eq!(cpu.target.type_, "Utilization");
        assert_eq!(cpu.target.average_utilization, Some(55));
        // No target given: 70 %.
        let h = desired_autoscaler(&obj(autoscaled(1, 3))).unwrap();
        let m = &h.spec.unwrap().metrics.unwrap()[0];
        assert_eq!(
            m.container_resource
                .as_ref()
                .unwrap()
                .target
                .average_utilization,
            Some(70)
        );
    }

    #[test]
    fn an_autoscaled_deployment_leaves_replicas_to_the_autoscaler() {
        let plain = desired_deployment(&obj(DeploymentSpec::test("iris").replicas(3)), IMAGE);
        assert_eq!(plain.spec.as_ref().unwrap().replicas, Some(3));
        assert!(
            !plain
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(AUTOSCALED_ANNOTATION)
        );
        let d = desired_deployment(&obj(autoscaled(2, 5)), IMAGE);
        assert_eq!(d.spec.as_ref().unwrap().replicas, None);
        let json = serde_json::to_value(&d).unwrap();
        assert!(
            json["spec"].get("replicas").is_none(),
            "not even null: {json}"
        );
        let ann = d.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[AUTOSCALED_ANNOTATION], "true");
        // Turning it off is a change the spec hash sees.
        assert_ne!(
            ann[SPEC_HASH_ANNOTATION],
            plain.metadata.annotations.as_ref().unwrap()[SPEC_HASH_ANNOTATION]
        );
    }

    #[test]
    fn a_disruption_budget_for_more_than_one_pod() {
        assert!(desired_disruption_budget(&obj(DeploymentSpec::test("iris"))).is_none());
        let mut spec = DeploymentSpec::test("iris").replicas(4);
        let o = obj(spec.clone());
        let b = desired_disruption_budget(&o).expect("4 replicas");
        assert_eq!(b.metadata.name.as_deref(), Some("iris"));
        assert_eq!(b.metadata.labels.as_ref().unwrap()[OWNER_LABEL], "owner-1");
        let bs = b.spec.as_ref().unwrap();
        assert_eq!(bs.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(bs.min_available, None);
        // The Deployment's own pod selector.
        let d = desired_deployment(&o, IMAGE);
        assert_eq!(
            bs.selector.as_ref().unwrap().match_labels,
            d.spec.unwrap().selector.match_labels
        );
        spec.max_unavailable = Some(2);
        let b = desired_disruption_budget(&obj(spec)).unwrap();
        assert_eq!(b.spec.unwrap().max_unavailable, Some(IntOrString::Int(2)));
        // Autoscaled: the autoscaler's minimum decides, not --replicas.
        assert!(desired_disruption_budget(&obj(autoscaled(1, 5))).is_none());
        assert!(desired_disruption_budget(&obj(autoscaled(2, 5))).is_some());
    }
}
