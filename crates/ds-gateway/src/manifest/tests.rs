//! Checks of the shipped manifests: rendering, the semantic rules a schema cannot express,
//! and the official schemas through `kubernetes-validate`.

use super::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

/// Oldest and newest Kubernetes versions we support.
const KUBE_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];
const TOKEN: &str = "c2VjcmV0LXRva2VuLXZhbHVlLTEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI";

fn params() -> AgentManifest {
    AgentManifest {
        deployer_name: "prod-eu".into(),
        gateway_url: "https://gateway.example.com:8800".into(),
        token: TOKEN.into(),
        image: "ds-deployer/ds:0.1.0".into(),
        namespace: DEFAULT_AGENT_NAMESPACE.into(),
        cluster_name: "eu-1".into(),
        ca_bundle: None,
        create_namespaces: false,
        target_namespaces: vec![],
    }
}

/// Every variant the gateway can render, with a label for messages.
fn variants() -> Vec<(&'static str, String)> {
    let cluster = params();
    let create = AgentManifest {
        create_namespaces: true,
        ca_bundle: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
        ..params()
    };
    let namespaced = AgentManifest {
        target_namespaces: vec!["models".into(), "staging".into()],
        ..params()
    };
    vec![
        ("cluster-wide", render_agent_manifest(&cluster)),
        ("create-namespaces", render_agent_manifest(&create)),
        ("namespaced", render_agent_manifest(&namespaced)),
    ]
}

fn parse(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .expect("manifest parses as YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

// === rendering ===

#[test]
fn cluster_variant_has_every_piece_the_issue_lists() {
    let docs = parse(&render_agent_manifest(&params()));
    let kinds: BTreeSet<String> = kinds(&docs).into_iter().collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "Role",
        "RoleBinding",
    ] {
        assert!(kinds.contains(kind), "missing {kind} in {kinds:?}");
    }
    let deploy = find(&docs, "Deployment")[0];
    assert_eq!(deploy["spec"]["replicas"], 2);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert!(container["livenessProbe"].is_object() && container["readinessProbe"].is_object());
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"DS_LEADER_ELECT"), "{env:?}");
    // The ClusterRole never grants namespace creation unless asked.
    let all_verbs_on_namespaces: Vec<&Value> = find(&docs, "ClusterRole")
        .iter()
        .flat_map(|r| r["rules"].as_array().unwrap())
        .filter(|rule| {
            rule["resources"]
                .as_array()
                .unwrap()
                .contains(&"namespaces".into())
        })
        .flat_map(|rule| rule["verbs"].as_array().unwrap())
        .collect();
    assert!(!all_verbs_on_namespaces.contains(&&Value::from("create")));
}

#[test]
fn token_only_in_the_secret() {
    let yaml = render_agent_manifest(&params());
    assert_eq!(yaml.matches(TOKEN).count(), 1, "token appears once");
    let docs = parse(&yaml);
    let secret = find(&docs, "Secret")[0];
    assert_eq!(secret["stringData"]["token"], TOKEN);
    let deploy = find(&docs, "Deployment")[0];
    assert!(!deploy.to_string().contains(TOKEN));
}

#[test]
fn namespaced_variant_has_roles_per_namespace_and_no_cluster_role() {
    let (_, yaml) = variants().remove(2);
    let docs = parse(&yaml);
    assert!(find(&docs, "ClusterRole").is_empty());
    assert!(find(&docs, "ClusterRoleBinding").is_empty());
    let namespaces: BTreeSet<&str> = find(&docs, "RoleBinding")
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["models", "staging", DEFAULT_AGENT_NAMESPACE])
    );
}

#[test]
fn create_namespaces_grants_create_and_mounts_the_ca() {
    let (_, yaml) = variants().remove(1);
    let docs = parse(&yaml);
    let grants_create = find(&docs, "ClusterRole").iter().any(|r| {
        r["rules"].as_array().unwrap().iter().any(|rule| {
            rule["resources"] == serde_json::json!(["namespaces"])
                && rule["verbs"] == serde_json::json!(["create"])
        })
    });
    assert!(grants_create);
    let secret = find(&docs, "Secret")[0];
    assert!(
        secret["stringData"]["ca.crt"]
            .as_str()
            .unwrap()
            .contains("-----\nMIIB\n")
    );
    let env = &find(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    let ca = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DS_CA_CERT")
        .unwrap();
    assert_eq!(ca["value"], format!("{TOKEN_MOUNT_DIR}/ca.crt"));
}

#[test]
fn odd_values_cannot_break_the_yaml() {
    let p = AgentManifest {
        cluster_name: "quote\" and: colon\n- list".into(),
        ..params()
    };
    let docs = parse(&render_agent_manifest(&p));
    let env = &find(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    let cluster = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DS_CLUSTER_NAME")
        .unwrap();
    assert_eq!(cluster["value"], "quote\" and: colon\n- list");
}

#[test]
fn every_placeholder_is_inside_double_quotes_and_filled() {
    for line in AGENT_TEMPLATE
        .lines()
        .filter(|l| l.contains("{{") && !l.trim_start().starts_with('#'))
    {
        let before = &line[..line.find("{{").unwrap()];
        assert!(
            before.matches('"').count() % 2 == 1,
            "placeholder outside quotes: {line}"
        );
    }
    for (name, yaml) in variants() {
        let unfilled = yaml
            .lines()
            .find(|l| l.contains("{{") && !l.trim_start().starts_with('#'));
        assert_eq!(unfilled, None, "{name}: unfilled placeholder");
    }
}

// === semantic checks (what the schema cannot see) ===

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("selector is a map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Checks the rules below and returns every violation, naming the object.
fn semantic_problems(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .collect();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or("");
        let name = doc["metadata"]["name"].as_str().unwrap_or("");
        let at = format!("{kind}/{name}");
        if !is_dns_subdomain(name) {
            problems.push(format!("{at}: name is not a DNS-1123 subdomain"));
        }
        if let Some(ns) = doc["metadata"]["namespace"].as_str()
            && !is_dns_label(ns)
        {
            problems.push(format!("{at}: namespace {ns:?} is not a DNS-1123 label"));
        }
        let pod_labels = &doc["spec"]["template"]["metadata"]["labels"];
        match kind {
            "Deployment" | "StatefulSet" => {
                if !labels_match(&doc["spec"]["selector"]["matchLabels"], pod_labels) {
                    problems.push(format!("{at}: selector does not match template labels"));
                }
                let pod = &doc["spec"]["template"]["spec"];
                let port_names: Vec<Value> = pod["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                    .map(|p| p["name"].clone())
                    .collect();
                for c in pod["containers"].as_array().unwrap() {
                    for p in c["ports"].as_array().unwrap_or(&vec![]) {
                        let n = p["containerPort"].as_u64().unwrap_or(0);
                        if !(1..=65535).contains(&n) {
                            problems.push(format!("{at}: containerPort {n} out of range"));
                        }
                    }
                    for probe in ["livenessProbe", "readinessProbe"] {
                        let port = &c[probe]["httpGet"]["port"];
                        if port.is_string() && !port_names.contains(port) {
                            problems.push(format!("{at}: {probe} port {port} is not named"));
                        }
                    }
                }
            }
            "Service" => {
                let selector = &doc["spec"]["selector"];
                if !workloads
                    .iter()
                    .any(|w| labels_match(selector, &w["spec"]["template"]["metadata"]["labels"]))
                {
                    problems.push(format!("{at}: selector matches no workload"));
                }
                for p in doc["spec"]["ports"].as_array().unwrap() {
                    let n = p["port"].as_u64().unwrap_or(0);
                    if !(1..=65535).contains(&n) {
                        problems.push(format!("{at}: port {n} out of range"));
                    }
                }
            }
            "PodDisruptionBudget" => {
                let selector = &doc["spec"]["selector"]["matchLabels"];
                if !workloads
                    .iter()
                    .any(|w| labels_match(selector, &w["spec"]["template"]["metadata"]["labels"]))
                {
                    problems.push(format!("{at}: selector matches no workload"));
                }
            }
            "ClusterRole" | "Role" => problems.extend(rbac_problems(&at, doc)),
            "ClusterRoleBinding" | "RoleBinding" => {
                let role = &doc["roleRef"]["name"];
                let role_kind = &doc["roleRef"]["kind"];
                if !docs
                    .iter()
                    .any(|d| &d["kind"] == role_kind && &d["metadata"]["name"] == role)
                {
                    problems.push(format!(
                        "{at}: binds {role_kind} {role} not in the manifest"
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

/// The agent may do only this: (group, resource) → verbs allowed.
fn allowed_verbs(group: &str, resource: &str) -> &'static [&'static str] {
    const RW: &[&str] = &[
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    match (group, resource) {
        ("apps", "deployments")
        | ("", "services")
        | ("networking.k8s.io", "ingresses")
        | ("autoscaling", "horizontalpodautoscalers")
        | ("policy", "poddisruptionbudgets") => RW,
        ("coordination.k8s.io", "leases") => &["get", "create", "update", "patch"],
        // Its own events, and reading those of its objects for `ds deployment describe`.
        ("", "events") => &["get", "list", "create", "patch"],
        ("", "pods") => &["get", "list", "watch"],
        ("", "pods/log") => &["get"],
        ("", "namespaces") => &["get", "list", "watch", "create"],
        _ => &[],
    }
}

fn rbac_problems(at: &str, role: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let strings = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        let verbs = strings("verbs");
        for group in strings("apiGroups") {
            for resource in strings("resources") {
                let allowed = allowed_verbs(&group, &resource);
                for verb in &verbs {
                    if !allowed.contains(&verb.as_str()) {
                        problems.push(format!(
                            "{at}: grants {verb} on {group}/{resource} beyond what the agent uses"
                        ));
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn rendered_and_shipped_manifests_pass_the_semantic_checks() {
    let mut all = variants();
    all.push(("gateway", GATEWAY_MANIFEST.to_string()));
    for (name, yaml) in all {
        let problems = semantic_problems(&parse(&yaml));
        assert!(problems.is_empty(), "{name}: {problems:#?}");
    }
}

#[test]
fn semantic_checks_catch_what_they_claim() {
    let mut docs = parse(&render_agent_manifest(&params()));
    for doc in docs.iter_mut() {
        match doc["kind"].as_str().unwrap() {
            "Deployment" => {
                doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "other".into()
            }
            "ClusterRole" => {
                doc["rules"][0]["resources"] = serde_json::json!(["secrets"]);
                doc["rules"][1]["verbs"] = serde_json::json!(["*"]);
            }
            "Service" => doc["spec"]["ports"][0]["port"] = 70000.into(),
            _ => {}
        }
    }
    let problems = semantic_problems(&docs).join("\n");
    assert!(
        problems.contains("selector does not match template labels"),
        "{problems}"
    );
    assert!(problems.contains("get on apps/secrets"), "{problems}");
    assert!(problems.contains("grants * on /services"), "{problems}");
    assert!(problems.contains("port 70000 out of range"), "{problems}");
}

// === the official schemas ===

#[test]
fn manifests_pass_kubernetes_validate_strict_for_oldest_and_newest_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/agent.yaml").to_string(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/gateway.yaml").to_string(),
    ];
    for (name, yaml) in variants() {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        files.push(path.display().to_string());
    }
    for version in KUBE_VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", version])
            .args(&files)
            .output()
            .expect(
                "kubernetes-validate is not installed: `pip install kubernetes-validate` \
                 (.ci/run installs it)",
            );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubernetes {version}:\n{text}");
        // Warnings (a removed apiVersion, say) count as failures.
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("INFO"))
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(bad.is_empty(), "kubernetes {version}: {bad:#?}");
        let passed = text.lines().filter(|l| l.contains(" passed ")).count();
        assert!(
            passed >= 40,
            "kubernetes {version}: only {passed} documents checked"
        );
    }
}

#[test]
fn the_agent_is_told_the_namespaces_its_roles_cover() {
    let namespaces_env = |yaml: &str| -> String {
        let docs = parse(yaml);
        let env = &find(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "DS_NAMESPACES")
            .map(|e| e["value"].as_str().unwrap().to_string())
            .expect("DS_NAMESPACES is set")
    };
    let variants = variants();
    assert_eq!(
        namespaces_env(&variants[0].1),
        "",
        "cluster-wide: no restriction"
    );
    assert_eq!(namespaces_env(&variants[2].1), "models,staging");
}

#[test]
fn every_variant_lets_the_agent_read_pods_and_only_read_them() {
    for (variant, yaml) in variants() {
        let docs = parse(&yaml);
        let roles: Vec<&Value> = find(&docs, "ClusterRole")
            .into_iter()
            .chain(find(&docs, "Role"))
            .filter(|r| {
                // The agent's own role of each scope (not the extra namespace-create one).
                !r["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("-namespaces")
            })
            .filter(|r| {
                r["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|rule| rule["resources"] == serde_json::json!(["deployments"]))
            })
            .collect();
        assert!(!roles.is_empty(), "{variant}: no role of the agent");
        for role in roles {
            let verbs: Vec<&Value> = role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|rule| rule["resources"] == serde_json::json!(["pods"]))
                .flat_map(|rule| rule["verbs"].as_array().unwrap())
                .collect();
            assert_eq!(
                verbs,
                ["get", "list", "watch"]
                    .map(Value::from)
                    .iter()
                    .collect::<Vec<_>>(),
                "{variant}: {}",
                role["metadata"]["name"]
            );
        }
    }
}

#[test]
fn every_variant_lets_the_agent_write_every_kind_it_owns() {
    // The agent watches and applies these (crates/ds-agent/src/desired.rs): a missing
    // rule is a watch that fails for ever with 403.
    let owned = [
        ("apps", "deployments"),
        ("", "services"),
        ("networking.k8s.io", "ingresses"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("policy", "poddisruptionbudgets"),
    ];
    for (variant, yaml) in variants() {
        let docs = parse(&yaml);
        let roles: Vec<&Value> = find(&docs, "ClusterRole")
            .into_iter()
            .chain(find(&docs, "Role"))
            .filter(|r| {
                !r["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("-namespaces")
            })
            // The roles over the target namespaces (not the one for the agent's Lease).
            .filter(|r| {
                r["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|rule| rule["resources"] == serde_json::json!(["deployments"]))
            })
            .collect();
        assert!(!roles.is_empty(), "{variant}: no role of the agent");
        for role in roles {
            for (group, resource) in owned {
                let verbs: BTreeSet<&str> = role["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|rule| {
                        rule["apiGroups"]
                            .as_array()
                            .unwrap()
                            .contains(&group.into())
                            && rule["resources"]
                                .as_array()
                                .unwrap()
                                .contains(&resource.into())
                    })
                    .flat_map(|rule| rule["verbs"].as_array().unwrap())
                    .filter_map(Value::as_str)
                    .collect();
                for verb in ["get", "list", "watch", "patch", "delete"] {
                    assert!(
                        verbs.contains(verb),
                        "{variant}: {} may not {verb} {group}/{resource}",
                        role["metadata"]["name"]
                    );
                }
            }
        }
    }
}
