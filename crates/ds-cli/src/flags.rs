//! Which CLI flag sets which spec field: validation (ds-core, local or at the gateway)
//! names the spec's field paths (`resources.cpu_limit`), users typed flags (`--cpu-limit`).

use super::CliError;
use ds_core::ValidationError;

/// The `create`/`update` flag that sets the value validation names `field`, if any.
pub fn for_field(field: &str) -> Option<&'static str> {
    let flag = match field {
        "name" => "--name",
        "namespace" => "--namespace",
        "model_name" => "--model-name",
        "image" => "--image",
        "replicas" => "--replicas",
        "port" => "--port",
        "host" => "--host",
        "ingress_class" => "--ingress-class",
        "resources.cpu_request" => "--cpu",
        "resources.cpu_limit" => "--cpu-limit",
        "resources.memory_request" => "--memory",
        "resources.memory_limit" => "--memory-limit",
        "proxy.query_log" => "--query-log",
        "proxy.protocol" => "--proxy-protocol",
        "env" => "--env",
        f if f.starts_with("env[") => "--env",
        f if f.starts_with("proxy.class_names") => "--class-names",
        f if f.starts_with("labels[") => "--label",
        // The pod-level options (issue 16).
        "gpu" => "--gpu",
        "gpu_resource" => "--gpu-resource",
        "tls_secret" => "--tls-secret",
        "priority_class" => "--priority-class",
        "ready_path" => "--ready-path",
        "startup_timeout_seconds" => "--startup-timeout",
        // Autoscaling and the disruption budget (issue 16).
        "min_replicas" => "--min-replicas",
        "max_replicas" => "--max-replicas",
        "target_cpu_percent" => "--target-cpu",
        "max_unavailable" => "--max-unavailable",
        "image_pull_secrets" => "--image-pull-secret",
        "ingress_annotations" => "--ingress-annotation",
        "command" => "--command",
        "args" => "--arg",
        "tolerations" => "--toleration",
        // The model from storage (issue 16).
        "model_uri" => "--model-uri",
        "model_path" => "--model-path",
        "storage_secret" => "--storage-secret",
        "model_sha256" => "--model-sha256",
        f if f.starts_with("image_pull_secrets[") => "--image-pull-secret",
        f if f.starts_with("ingress_annotations[") => "--ingress-annotation",
        f if f.starts_with("command[") => "--command",
        f if f.starts_with("args[") => "--arg",
        f if f.starts_with("node_selector[") => "--node-selector",
        f if f.starts_with("tolerations[") => "--toleration",
        _ => return None,
    };
    Some(flag)
}

/// A local validation error, said with its flag where one sets the field.
pub fn local(e: ValidationError) -> CliError {
    match for_field(&e.field) {
        Some(flag) => CliError::InvalidFlag {
            flag: flag.to_string(),
            value: ds_core::validate::quoted(&e.value),
            rule: e.rule,
        },
        None => CliError::Invalid(e),
    }
}

/// The gateway's validation message (`invalid FIELD VALUE: RULE`, [`ValidationError`]'s
/// display) with the field replaced by its flag; other messages unchanged.
pub fn in_message(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid ") else {
        return message.to_string();
    };
    // A label key may hold spaces: its path ends at `] ` (so do annotation and node
    // selector keys).
    let keyed = ["labels[", "ingress_annotations[", "node_selector["];
    let end = if keyed.iter().any(|p| rest.starts_with(p)) {
        rest.find("] ").map(|i| i + 1)
    } else {
        rest.find(' ')
    };
    let Some(end) = end else {
        return message.to_string();
    };
    match for_field(&rest[..end]) {
        Some(flag) => format!("invalid {flag}{}", &rest[end..]),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_core::{DeploymentSpec, EnvVar};

    fn spec() -> DeploymentSpec {
        DeploymentSpec::test("iris")
    }

    /// Every field validation can name, produced by ds-core's validation itself.
    #[test]
    fn every_field_validation_names_has_a_flag() {
        let mut cases: Vec<(&str, &str, DeploymentSpec, &str)> = Vec::new();
        let bad = |f: &dyn Fn(&mut DeploymentSpec)| {
            let mut s = spec();
            f(&mut s);
            s
        };
        cases.push(("Bad_Name", "default", spec(), "--name"));
        cases.push(("iris", "Bad_NS", spec(), "--namespace"));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.model_name = " ".into()),
            "--model-name",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.image = "UPPER:1".into()),
            "--image",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.replicas = 100_000),
            "--replicas",
        ));
        cases.push(("iris", "default", bad(&|s| s.port = 0), "--port"));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.host = Some("10.0.0.1".into())),
            "--host",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.ingress_class = Some("Bad_Class".into())),
            "--ingress-class",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| {
                s.env = vec![EnvVar {
                    name: "1BAD".into(),
                    value: String::new(),
                }]
            }),
            "--env",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| {
                s.env = vec![EnvVar {
                    name: "BIG".into(),
                    value: "x".repeat(40_000),
                }]
            }),
            "--env",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.resources.cpu_request = Some("lots".into())),
            "--cpu",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.resources.cpu_limit = Some("lots".into())),
            "--cpu-limit",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.resources.memory_request = Some("lots".into())),
            "--memory",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.resources.memory_limit = Some("lots".into())),
            "--memory-limit",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| {
                s.resources.cpu_request = Some("2".into());
                s.resources.cpu_limit = Some("1".into());
            }),
            "--cpu",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.proxy.class_names = vec![" ".into()]),
            "--class-names",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| {
                s.proxy.enabled = false;
                s.proxy.query_log = true;
            }),
            "--query-log",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| s.proxy.protocol = Some("v3".into())),
            "--proxy-protocol",
        ));
        cases.push((
            "iris",
            "default",
            bad(&|s| {
                s.labels.insert("bad key".into(), "v".into());
            }),
            "--label",
        ));
        // The pod-level options.
        let pod_cases: Vec<(DeploymentSpec, &str)> = vec![
            (bad(&|s| s.gpu = 1000), "--gpu"),
            (
                bad(&|s| {
                    s.gpu = 1;
                    s.gpu_resource = Some("kubernetes.io/gpu".into());
                }),
                "--gpu-resource",
            ),
            (
                bad(&|s| s.image_pull_secrets = vec!["Bad Secret".into()]),
                "--image-pull-secret",
            ),
            (
                bad(&|s| s.image_pull_secrets = (0..40).map(|i| format!("s{i}")).collect()),
                "--image-pull-secret",
            ),
            (bad(&|s| s.tls_secret = Some("tls".into())), "--tls-secret"),
            (
                bad(&|s| {
                    s.ingress_annotations.insert("bad key".into(), "v".into());
                }),
                "--ingress-annotation",
            ),
            (
                bad(&|s| {
                    s.ingress_annotations
                        .insert("a.io/x".into(), "v".repeat(70_000));
                }),
                "--ingress-annotation",
            ),
            (bad(&|s| s.command = vec![String::new()]), "--command"),
            (bad(&|s| s.command = vec!["x".into(); 300]), "--command"),
            (bad(&|s| s.args = vec!["a\0b".into()]), "--arg"),
            (bad(&|s| s.args = vec!["x".into(); 300]), "--arg"),
            (
                bad(&|s| {
                    s.node_selector.insert("bad key".into(), "v".into());
                }),
                "--node-selector",
            ),
            (
                bad(&|s| {
                    s.tolerations = vec![ds_core::Toleration {
                        key: "k".into(),
                        value: None,
                        effect: "Sometimes".into(),
                    }]
                }),
                "--toleration",
            ),
            (
                bad(&|s| {
                    s.tolerations = vec![ds_core::Toleration::parse("k:NoSchedule").unwrap(); 100]
                }),
                "--toleration",
            ),
            (
                bad(&|s| s.priority_class = Some("Bad Class".into())),
                "--priority-class",
            ),
            (
                bad(&|s| s.ready_path = Some("ready".into())),
                "--ready-path",
            ),
            (
                bad(&|s| s.startup_timeout_seconds = 1_000_000),
                "--startup-timeout",
            ),
            // Autoscaling and the disruption budget.
            (
                bad(&|s| {
                    s.resources.cpu_request = Some("1".into());
                    s.min_replicas = 5;
                    s.max_replicas = 2;
                }),
                "--min-replicas",
            ),
            (
                bad(&|s| {
                    s.resources.cpu_request = Some("1".into());
                    s.min_replicas = 1;
                    s.max_replicas = 2000;
                }),
                "--max-replicas",
            ),
            (
                bad(&|s| {
                    s.resources.cpu_request = Some("1".into());
                    s.min_replicas = 1;
                    s.max_replicas = 2;
                    s.target_cpu_percent = Some(0);
                }),
                "--target-cpu",
            ),
            (
                bad(&|s| {
                    s.min_replicas = 1;
                    s.max_replicas = 2;
                }),
                "--cpu",
            ),
            (bad(&|s| s.max_unavailable = Some(0)), "--max-unavailable"),
        ];
        cases.extend(
            pod_cases
                .into_iter()
                .map(|(s, f)| ("iris", "default", s, f)),
        );
        for (name, namespace, spec, flag) in cases {
            let e = ds_core::validate_deployment(name, namespace, &spec)
                .expect_err("the spec is invalid");
            assert_eq!(for_field(&e.field), Some(flag), "{e}");
            let local = local(e.clone()).to_string();
            assert!(local.starts_with(&format!("invalid {flag} ")), "{local}");
            let remote = in_message(&e.to_string());
            assert!(remote.starts_with(&format!("invalid {flag} ")), "{remote}");
            assert!(remote.ends_with(&e.rule), "{remote}");
        }
    }

    #[test]
    fn other_messages_pass_unchanged() {
        assert_eq!(
            in_message("deployment x not found"),
            "deployment x not found"
        );
        assert_eq!(
            in_message("invalid spec \"300000 bytes\": too big"),
            "invalid spec \"300000 bytes\": too big"
        );
    }
}
