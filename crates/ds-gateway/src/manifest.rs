//! Renders the agent install manifest (`deploy/agent.yaml`, embedded in the binary) that
//! the gateway serves once per install code.
//!
//! The template stays valid YAML as written so the schema checker can read the file
//! itself: placeholders sit inside double-quoted strings (`"{{NAME}}"`) and documents are
//! selected by a leading comment, `# ds:when cond…` (all conditions must hold). A document
//! marked `namespaced` is repeated once per target namespace with `{{TARGET_NAMESPACE}}`.

/// The agent manifest template.
pub const AGENT_TEMPLATE: &str = include_str!("../../../deploy/agent.yaml");
/// The gateway manifest (not a template), checked beside the agent's by the tests.
#[cfg(test)]
pub const GATEWAY_MANIFEST: &str = include_str!("../../../deploy/gateway.yaml");
/// Namespace the agent is installed into unless told otherwise.
pub const DEFAULT_AGENT_NAMESPACE: &str = "ds-deployer";
/// Where the agent finds the token Secret's files.
pub const TOKEN_MOUNT_DIR: &str = "/var/run/secrets/ds-deployer";

/// Everything that varies between two installs.
#[derive(Debug, Clone)]
pub struct AgentManifest {
    /// The deployer's name (DNS-1123 label); names the agent's objects.
    pub deployer_name: String,
    /// Gateway URL the agent dials, e.g. `https://gateway.example.com:8800`.
    pub gateway_url: String,
    /// The deployer token; lands only in the Secret.
    pub token: String,
    /// Agent (and model-proxy) image.
    pub image: String,
    /// Namespace the agent runs in.
    pub namespace: String,
    /// Cluster name the agent reports.
    pub cluster_name: String,
    /// PEM bundle the agent trusts for the gateway; `None` uses the system roots.
    pub ca_bundle: Option<String>,
    /// Whether the agent may create missing target namespaces.
    pub create_namespaces: bool,
    /// Empty: cluster-wide rights (a ClusterRole). Otherwise Roles in these namespaces only.
    pub target_namespaces: Vec<String>,
}

/// Renders the agent manifest as a multi-document YAML string.
pub fn render_agent_manifest(params: &AgentManifest) -> String {
    let ca_path = if params.ca_bundle.is_some() {
        format!("{TOKEN_MOUNT_DIR}/ca.crt")
    } else {
        String::new()
    };
    // A plain-http gateway (local development) needs the agent's explicit consent.
    let insecure = if params.gateway_url.starts_with("http://") {
        "true"
    } else {
        "false"
    };
    let target_namespaces = params.target_namespaces.join(",");
    let common: [(&str, &str); 11] = [
        ("DEPLOYER_NAME", &params.deployer_name),
        ("GATEWAY_URL", &params.gateway_url),
        ("TOKEN", &params.token),
        ("IMAGE", &params.image),
        ("NAMESPACE", &params.namespace),
        ("CLUSTER_NAME", &params.cluster_name),
        ("CA_BUNDLE", params.ca_bundle.as_deref().unwrap_or("")),
        ("CA_CERT_PATH", &ca_path),
        ("INSECURE", insecure),
        ("TARGET_NAMESPACES", &target_namespaces),
        (
            "CREATE_NAMESPACES",
            if params.create_namespaces {
                "true"
            } else {
                "false"
            },
        ),
    ];
    let cluster_scope = params.target_namespaces.is_empty();
    let mut docs = Vec::new();
    for doc in split_documents(AGENT_TEMPLATE) {
        let conditions = when_conditions(doc);
        let holds = |c: &str| match c {
            "cluster_scope" => cluster_scope,
            "namespaced" => !cluster_scope,
            "create_namespaces" => params.create_namespaces,
            _ => false,
        };
        if !conditions.iter().all(|c| holds(c)) {
            continue;
        }
        let body = substitute(doc, &common);
        if conditions.contains(&"namespaced") {
            for ns in &params.target_namespaces {
                docs.push(substitute(&body, &[("TARGET_NAMESPACE", ns)]));
            }
        } else {
            docs.push(body);
        }
    }
    docs.join("---\n")
}

/// Splits a multi-document YAML text on `---` lines, dropping empty documents.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .collect()
}

/// The conditions of a document's `# ds:when a b` comment, if any.
fn when_conditions(doc: &str) -> Vec<&str> {
    doc.lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .find_map(|l| l.strip_prefix("# ds:when "))
        .map(|rest| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// Replaces `{{KEY}}` by the value escaped for a YAML double-quoted string (the JSON
/// string escapes are valid there), so a PEM bundle or odd URL cannot break the document.
fn substitute(doc: &str, values: &[(&str, &str)]) -> String {
    let mut out = doc.to_string();
    for (key, value) in values {
        let quoted = serde_json::to_string(value).unwrap_or_default();
        let escaped = &quoted[1..quoted.len() - 1];
        out = out.replace(&format!("{{{{{key}}}}}"), escaped);
    }
    out
}

#[cfg(test)]
mod tests;
