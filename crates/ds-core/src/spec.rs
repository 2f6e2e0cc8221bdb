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
}

impl Default for ProxySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            class_names: Vec::new(),
            query_log: false,
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
        }
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
