//! The deployment spec: what a user asks for, independent of how it is stored or sent.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default container port (TensorFlow Serving's REST port).
pub const DEFAULT_PORT: u32 = 8501;
/// Default namespace for deployments.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Name of the model container in every deployment's pods.
pub const MODEL_CONTAINER: &str = "model";
/// Name of the model-proxy sidecar container.
pub const PROXY_CONTAINER: &str = "model-proxy";

/// One environment variable of the model container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// CPU and memory requests and limits as Kubernetes quantities; `None` means unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

/// The model-proxy sidecar settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySpec {
    pub enabled: bool,
    pub class_names: Vec<String>,
    /// The sidecar writes one JSON line per request to its stdout (the container log).
    /// Defaulted so specs stored before the field existed still load.
    #[serde(default)]
    pub query_log: bool,
    /// The model server's protocol for the sidecar ([`PROXY_PROTOCOLS`]); `None` means
    /// auto-detection by request path. Left out of the stored JSON when `None`, so specs
    /// stored before it existed load and digest as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// The values of [`ProxySpec::protocol`] (auto is `None`).
pub const PROXY_PROTOCOLS: [&str; 2] = ["v1", "v2"];

impl Default for ProxySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            class_names: Vec::new(),
            query_log: false,
            protocol: None,
        }
    }
}

/// The desired state of one deployment, minus its identity (name, namespace, IDs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    pub model_name: String,
    pub image: String,
    pub replicas: u32,
    pub port: u32,
    /// Ingress host; `None` means no Ingress.
    pub host: Option<String>,
    pub ingress_class: Option<String>,
    pub env: Vec<EnvVar>,
    pub resources: Resources,
    pub proxy: ProxySpec,
    pub labels: BTreeMap<String, String>,
    // --- pod-level options (issue 16). Each defaults to off and is left out of the stored
    // JSON when off, so specs stored before they existed load and digest as before. ---
    /// Accelerators (e.g. GPUs) of the model container, as limits and requests; 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpu: u32,
    /// The extended resource [`Self::gpu`] counts; `None` means [`DEFAULT_GPU_RESOURCE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_resource: Option<String>,
    /// Secrets (in the deployment's namespace) the kubelet pulls the image with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// TLS Secret of the Ingress for [`Self::host`]; the URL becomes `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
    /// Annotations of the Ingress only (for its controller, cert-manager…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ingress_annotations: BTreeMap<String, String>,
    /// The model container's command (its entrypoint); empty: the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The model container's arguments; empty: the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// The pods' PriorityClass name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    /// HTTP path that answers below 500 once the model is ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_path: Option<String>,
    /// How long the model may take to start (a startup probe), in seconds; 0: no probe.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub startup_timeout_seconds: u32,
    // --- the model from storage (issue 16). Off by default and left out of the stored
    // JSON when off, so specs from before serialize as before.
    /// Where the model comes from: `s3://`, `gs://`, `https://` (fetched by an init
    /// container) or `pvc://CLAIM/PATH` (mounted); see [`crate::model_source`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_uri: Option<String>,
    /// Where the model container sees the model; `None`: [`crate::model_source::DEFAULT_MODEL_PATH`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_path: Option<String>,
    /// A Secret in the namespace whose keys become the fetching init container's
    /// environment (e.g. `AWS_ACCESS_KEY_ID`); only its name is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_secret: Option<String>,
    /// The SHA-256 (hex) of a single-file download, checked before the model is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    // --- autoscaling and disruption budget (issue 16), off and left out when unset. ---
    /// Fewest replicas of the HorizontalPodAutoscaler; only with [`Self::max_replicas`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_replicas: u32,
    /// Most replicas of the HorizontalPodAutoscaler; 0: no autoscaling. While above 0 the
    /// autoscaler owns the Deployment's replica count and [`Self::replicas`] waits for
    /// autoscaling to be turned off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_replicas: u32,
    /// CPU utilization (percent of the model container's request) the autoscaler aims at;
    /// `None` means [`DEFAULT_TARGET_CPU_PERCENT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu_percent: Option<u32>,
    /// `maxUnavailable` of the PodDisruptionBudget; `None` means
    /// [`DEFAULT_MAX_UNAVAILABLE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
}

/// The CPU utilization the autoscaler aims at when none is given, in percent.
pub const DEFAULT_TARGET_CPU_PERCENT: u32 = 70;

/// The disruption budget's `maxUnavailable` when none is given.
pub const DEFAULT_MAX_UNAVAILABLE: u32 = 1;

/// The extended resource `gpu` counts when no `gpu_resource` is given.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The effects a toleration may name, as Kubernetes spells them.
pub const TOLERATION_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A taint the pods tolerate: `KEY[=VALUE]:EFFECT`. With a value the operator is
/// `Equal`, without one `Exists`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

impl Toleration {
    /// Parses `KEY[=VALUE]:EFFECT` (the syntax of `kubectl taint`); the parts are checked
    /// by validation, this only splits them.
    ///
    /// # Errors
    /// Text without `:EFFECT` or without a key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not KEY[=VALUE]:EFFECT, e.g. nvidia.com/gpu:NoSchedule or dedicated=ml:NoExecute"
            )
        };
        let (kv, effect) = text.rsplit_once(':').ok_or_else(bad)?;
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if key.is_empty() || effect.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            key: key.to_string(),
            value,
            effect: effect.to_string(),
        })
    }
}

impl std::fmt::Display for Toleration {
    /// As [`Toleration::parse`] reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}:{}", self.key, self.effect),
            None => write!(f, "{}:{}", self.key, self.effect),
        }
    }
}

impl DeploymentSpec {
    /// A minimal valid spec for tests and examples: `DeploymentSpec::test("iris")`.
    pub fn test(model: &str) -> Self {
        Self {
            model_name: model.to_string(),
            image: "tensorflow/serving:2.15.0".to_string(),
            replicas: 1,
            port: DEFAULT_PORT,
            host: None,
            ingress_class: None,
            env: Vec::new(),
            resources: Resources::default(),
            proxy: ProxySpec::default(),
            labels: BTreeMap::new(),
            gpu: 0,
            gpu_resource: None,
            image_pull_secrets: Vec::new(),
            tls_secret: None,
            ingress_annotations: BTreeMap::new(),
            command: Vec::new(),
            args: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            priority_class: None,
            ready_path: None,
            startup_timeout_seconds: 0,
            model_uri: None,
            model_path: None,
            storage_secret: None,
            model_sha256: None,
            min_replicas: 0,
            max_replicas: 0,
            target_cpu_percent: None,
            max_unavailable: None,
        }
    }

    /// Whether a HorizontalPodAutoscaler sets the replica count.
    pub fn autoscaled(&self) -> bool {
        self.max_replicas > 0
    }

    /// The autoscaler's CPU utilization target, in percent.
    pub fn target_cpu(&self) -> u32 {
        self.target_cpu_percent
            .unwrap_or(DEFAULT_TARGET_CPU_PERCENT)
    }

    /// The disruption budget's `maxUnavailable`.
    pub fn max_unavailable_pods(&self) -> u32 {
        self.max_unavailable.unwrap_or(DEFAULT_MAX_UNAVAILABLE)
    }

    /// Whether the deployment gets a PodDisruptionBudget: it always runs more than one
    /// pod (a single pod cannot be spared by any budget, and a budget on it would only
    /// block node drains).
    pub fn wants_disruption_budget(&self) -> bool {
        if self.autoscaled() {
            self.min_replicas > 1
        } else {
            self.replicas > 1
        }
    }

    /// The extended resource [`Self::gpu`] counts.
    pub fn gpu_resource_name(&self) -> &str {
        self.gpu_resource
            .as_deref()
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_GPU_RESOURCE)
    }

    /// Whether the Ingress serves TLS (a host and a TLS secret).
    pub fn serves_tls(&self) -> bool {
        self.host.as_deref().is_some_and(|h| !h.is_empty())
            && self.tls_secret.as_deref().is_some_and(|s| !s.is_empty())
    }

    /// The URL users call through the Ingress: `https://HOST/` with a TLS secret, else
    /// `http://HOST/`; `None` without a host.
    pub fn ingress_url(&self) -> Option<String> {
        let host = self.host.as_deref().filter(|h| !h.is_empty())?;
        let scheme = if self.serves_tls() { "https" } else { "http" };
        Some(format!("{scheme}://{host}/"))
    }

    /// Sets the image (test builder).
    pub fn image(mut self, image: &str) -> Self {
        self.image = image.to_string();
        self
    }

    /// Sets the replica count (test builder).
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the ingress host (test builder).
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_string());
        self
    }

    /// Turns the model-proxy sidecar on or off (test builder).
    pub fn proxy(mut self, enabled: bool) -> Self {
        self.proxy.enabled = enabled;
        self
    }

    /// Turns the model-proxy's query logs on or off (test builder).
    pub fn query_log(mut self, on: bool) -> Self {
        self.proxy.query_log = on;
        self
    }
}

/// A desired deployment as the agent receives it: identity, owner and spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedObject {
    /// Gateway-assigned deployment ID.
    pub id: String,
    /// Owning deployer ID (the agent's owner label value).
    pub deployer_id: String,
    /// Object name in the cluster.
    pub name: String,
    /// Target namespace.
    pub namespace: String,
    /// Deployer revision of the last change to this deployment.
    pub revision: u64,
    pub spec: DeploymentSpec,
}

/// A deployment as a create request names it: the name and the namespace may be left
/// empty, and the spec's port may be 0, until [`NewDeployment::normalized`] fills them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    pub name: String,
    pub namespace: String,
    pub spec: DeploymentSpec,
}

impl NewDeployment {
    /// The domain defaults, applied in this one place: port [`DEFAULT_PORT`] when 0, the
    /// name of the model when no name is given, namespace [`DEFAULT_NAMESPACE`].
    #[must_use]
    pub fn normalized(mut self) -> Self {
        if self.spec.port == 0 {
            self.spec.port = DEFAULT_PORT;
        }
        if self.name.is_empty() {
            self.name.clone_from(&self.spec.model_name);
        }
        if self.namespace.is_empty() {
            self.namespace = DEFAULT_NAMESPACE.to_string();
        }
        self
    }

    /// Normalises, then validates the result.
    ///
    /// # Errors
    /// The first field that breaks a rule (see [`crate::validate_deployment`]).
    pub fn validated(self) -> Result<Self, crate::ValidationError> {
        let d = self.normalized();
        crate::validate_deployment(&d.name, &d.namespace, &d.spec)?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_stored_before_query_logs_existed_loads_with_them_off() {
        // What gateways stored (`spec` column, change payloads) before `proxy.query_log`.
        let stored = r#"{"model_name":"iris","image":"tensorflow/serving:2.15.0","replicas":1,
            "port":8501,"host":null,"ingress_class":null,"env":[],
            "resources":{"cpu_request":null,"cpu_limit":null,"memory_request":null,"memory_limit":null},
            "proxy":{"enabled":true,"class_names":["setosa"]},"labels":{}}"#;
        let spec: DeploymentSpec = serde_json::from_str(stored).expect("old spec loads");
        assert!(spec.proxy.enabled);
        assert!(!spec.proxy.query_log);
        assert_eq!(spec.proxy.class_names, vec!["setosa".to_string()]);
    }

    #[test]
    fn an_old_spec_loads_with_the_pod_options_off_and_serializes_as_before() {
        let stored = r#"{"model_name":"iris","image":"tensorflow/serving:2.15.0","replicas":1,"port":8501,"host":null,"ingress_class":null,"env":[],"resources":{"cpu_request":null,"cpu_limit":null,"memory_request":null,"memory_limit":null},"proxy":{"enabled":true,"class_names":[],"query_log":false},"labels":{}}"#;
        let spec: DeploymentSpec = serde_json::from_str(stored).expect("old spec loads");
        assert_eq!(spec, DeploymentSpec::test("iris"));
        // Byte-identical JSON: digests and stored rows of old specs do not change.
        assert_eq!(serde_json::to_string(&spec).unwrap(), stored);
    }

    #[test]
    fn a_budget_only_for_more_than_one_pod_and_the_autoscalers_minimum_counts() {
        let spec = DeploymentSpec::test("iris");
        assert!(!spec.wants_disruption_budget(), "one replica");
        assert!(spec.clone().replicas(2).wants_disruption_budget());
        let mut scaled = spec.replicas(5);
        scaled.min_replicas = 1;
        scaled.max_replicas = 10;
        assert!(scaled.autoscaled());
        assert!(
            !scaled.wants_disruption_budget(),
            "the autoscaler may go down to one"
        );
        scaled.min_replicas = 2;
        assert!(scaled.wants_disruption_budget());
        assert_eq!(
            (scaled.target_cpu(), scaled.max_unavailable_pods()),
            (70, 1)
        );
        scaled.target_cpu_percent = Some(50);
        scaled.max_unavailable = Some(3);
        assert_eq!(
            (scaled.target_cpu(), scaled.max_unavailable_pods()),
            (50, 3)
        );
    }

    #[test]
    fn tolerations_parse_as_kubectl_taint_writes_them() {
        let t = Toleration::parse("nvidia.com/gpu:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref()),
            ("nvidia.com/gpu", None)
        );
        assert_eq!(t.effect, "NoSchedule");
        let t = Toleration::parse("dedicated=ml:NoExecute").unwrap();
        assert_eq!(t.value.as_deref(), Some("ml"));
        assert_eq!(t.to_string(), "dedicated=ml:NoExecute");
        for bad in ["dedicated", ":NoSchedule", "dedicated=ml:", "=x:NoSchedule"] {
            assert!(Toleration::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_url_is_https_with_a_tls_secret() {
        let mut spec = DeploymentSpec::test("iris");
        assert_eq!(spec.ingress_url(), None);
        spec = spec.host("iris.example.com");
        assert_eq!(
            spec.ingress_url().as_deref(),
            Some("http://iris.example.com/")
        );
        spec.tls_secret = Some("iris-tls".into());
        assert_eq!(
            spec.ingress_url().as_deref(),
            Some("https://iris.example.com/")
        );
    }

    #[test]
    fn normalized_fills_port_name_and_namespace_only_when_absent() {
        let mut spec = DeploymentSpec::test("iris");
        spec.port = 0;
        let d = NewDeployment {
            name: String::new(),
            namespace: String::new(),
            spec,
        }
        .normalized();
        assert_eq!(
            (d.name.as_str(), d.namespace.as_str(), d.spec.port),
            ("iris", DEFAULT_NAMESPACE, DEFAULT_PORT)
        );
        let mut spec = DeploymentSpec::test("iris");
        spec.port = 9000;
        let given = NewDeployment {
            name: "iris-b".into(),
            namespace: "models".into(),
            spec,
        };
        assert_eq!(given.clone().normalized(), given);
    }

    #[test]
    fn validated_names_the_field_after_the_defaults() {
        let err = NewDeployment {
            name: String::new(),
            namespace: String::new(),
            spec: DeploymentSpec::test("Not_A_DNS_Name"),
        }
        .validated()
        .unwrap_err();
        assert_eq!(err.field, "name", "{err}");
    }
}
