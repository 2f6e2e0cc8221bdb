//! Validation of the pod-level options (issue 16): accelerators, image pull secrets, TLS
//! and Ingress annotations, command and arguments, scheduling, probes. As in the parent
//! module, each rule is the one the API server (or the kubelet, or exec) would apply
//! later, said at `ds deployment create` with the field, the value and the rule.

use super::{
    LABEL_NAME, MAX_LABEL_LEN, MAX_SUBDOMAIN_LEN, ValidationError, check_dns1123_subdomain, cut,
};
use crate::spec::{DeploymentSpec, TOLERATION_EFFECTS};
use std::collections::{BTreeMap, HashSet};

/// Most accelerators one pod may ask for (the largest nodes have 16; more is a typo).
pub const MAX_GPUS: u32 = 64;

/// Most image pull secrets of one deployment.
pub const MAX_IMAGE_PULL_SECRETS: usize = 32;

/// Most entries of `command`, and of `args`.
pub const MAX_COMMAND_ENTRIES: usize = 256;

/// Longest entry of `command` or `args`, in bytes: Linux's `MAX_ARG_STRLEN` (128 KiB,
/// which counts the terminating NUL) less that NUL; exec refuses longer strings.
pub const MAX_COMMAND_ENTRY_BYTES: usize = 128 * 1024 - 1;

/// Most tolerations of one deployment.
pub const MAX_TOLERATIONS: usize = 64;

/// Largest Ingress annotations, keys and values together, in bytes (the API server allows
/// 256 KiB for all of an object's annotations; the spec itself is bounded by that).
pub const MAX_INGRESS_ANNOTATION_BYTES: usize = 64 * 1024;

/// Longest startup timeout: a day.
pub const MAX_STARTUP_TIMEOUT_SECONDS: u32 = 86_400;

/// Longest readiness path.
pub const MAX_READY_PATH_LEN: usize = 2048;

/// Annotation key prefixes the agent writes itself on the Ingress (revision, spec hash).
const RESERVED_ANNOTATION_PREFIXES: &[&str] = &["deployer.ds.dev/"];

/// Checks every pod-level option of `spec`.
pub(super) fn check(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    check_gpu(spec)?;
    check_image_pull_secrets(&spec.image_pull_secrets)?;
    check_tls(spec)?;
    check_ingress_annotations(&spec.ingress_annotations)?;
    check_words("command", &spec.command)?;
    check_words("args", &spec.args)?;
    for (key, value) in &spec.node_selector {
        let field = format!("node_selector[{}]", cut(key));
        check_qualified_name(&field, key, "key")?;
        check_label_value(&field, value)?;
    }
    check_tolerations(spec)?;
    if let Some(class) = spec.priority_class.as_deref().filter(|c| !c.is_empty()) {
        check_dns1123_subdomain("priority_class", class)?;
    }
    check_probes(spec)
}

fn check_gpu(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    if spec.gpu > MAX_GPUS {
        return Err(ValidationError::new(
            "gpu",
            spec.gpu.to_string(),
            format!("must be between 0 and {MAX_GPUS} accelerators per pod"),
        ));
    }
    let Some(resource) = spec.gpu_resource.as_deref().filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    if spec.gpu == 0 {
        return Err(ValidationError::new(
            "gpu_resource",
            resource,
            "names the resource that gpu counts, but gpu is 0: give gpu too, or leave gpu_resource out",
        ));
    }
    let rule = "must be an extended resource name: DOMAIN/NAME (e.g. nvidia.com/gpu, amd.com/gpu), \
                DOMAIN a DNS-1123 subdomain outside kubernetes.io, NAME 1 to 63 letters, digits, \
                '-', '_' or '.', not starting with \"requests.\"";
    let Some((domain, name)) = resource.split_once('/') else {
        return Err(ValidationError::new("gpu_resource", resource, rule));
    };
    let native = domain == "kubernetes.io" || domain.ends_with(".kubernetes.io");
    // The API server also builds the quota name `requests.NAME` from it: it must stay a
    // qualified name, so the domain leaves room for the prefix.
    let fits_quota = domain.len() + "requests.".len() <= MAX_SUBDOMAIN_LEN;
    if native
        || !fits_quota
        || resource.starts_with("requests.")
        || check_dns1123_subdomain("gpu_resource", domain).is_err()
        || name.is_empty()
        || name.len() > MAX_LABEL_LEN
        || !LABEL_NAME.is_match(name)
    {
        return Err(ValidationError::new("gpu_resource", resource, rule));
    }
    Ok(())
}

fn check_image_pull_secrets(secrets: &[String]) -> Result<(), ValidationError> {
    if secrets.len() > MAX_IMAGE_PULL_SECRETS {
        return Err(ValidationError::new(
            "image_pull_secrets",
            format!("{} entries", secrets.len()),
            format!("at most {MAX_IMAGE_PULL_SECRETS} image pull secrets are allowed"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, name) in secrets.iter().enumerate() {
        let field = format!("image_pull_secrets[{i}]");
        if name.is_empty() {
            return Err(ValidationError::new(field, name, "must not be empty"));
        }
        check_dns1123_subdomain(&field, name)?;
        if !seen.insert(name.as_str()) {
            return Err(ValidationError::new(
                field,
                name,
                "is given more than once; each secret may appear only once",
            ));
        }
    }
    Ok(())
}

fn check_tls(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    let Some(secret) = spec.tls_secret.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    check_dns1123_subdomain("tls_secret", secret)?;
    if spec.host.as_deref().is_none_or(str::is_empty) {
        return Err(ValidationError::new(
            "tls_secret",
            secret,
            "the TLS certificate is served for the Ingress host, and host is not set: give host too",
        ));
    }
    Ok(())
}

fn check_ingress_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    let mut total = 0usize;
    for (key, value) in annotations {
        let field = format!("ingress_annotations[{}]", cut(key));
        check_qualified_name(&field, key, "key")?;
        if RESERVED_ANNOTATION_PREFIXES
            .iter()
            .any(|p| key.starts_with(p))
        {
            return Err(ValidationError::new(
                &field,
                key,
                "is reserved for the annotations ds-deployer sets itself",
            ));
        }
        total += key.len() + value.len();
    }
    if total > MAX_INGRESS_ANNOTATION_BYTES {
        return Err(ValidationError::new(
            "ingress_annotations",
            format!("{total} bytes"),
            format!(
                "keys and values together must be at most 64 KiB ({MAX_INGRESS_ANNOTATION_BYTES} bytes)"
            ),
        ));
    }
    Ok(())
}

/// `command` or `args`: what exec can pass.
fn check_words(field: &str, words: &[String]) -> Result<(), ValidationError> {
    if words.len() > MAX_COMMAND_ENTRIES {
        return Err(ValidationError::new(
            field,
            format!("{} entries", words.len()),
            format!("at most {MAX_COMMAND_ENTRIES} entries are allowed"),
        ));
    }
    for (i, word) in words.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if word.contains('\0') {
            return Err(ValidationError::new(
                at,
                word,
                "must not contain NUL bytes (exec cannot pass them)",
            ));
        }
        if word.len() > MAX_COMMAND_ENTRY_BYTES {
            return Err(ValidationError::new(
                at,
                word,
                format!(
                    "must be at most {MAX_COMMAND_ENTRY_BYTES} bytes (Linux's 128 KiB limit per exec argument); it has {} bytes",
                    word.len()
                ),
            ));
        }
    }
    if field == "command" && words.first().is_some_and(|w| w.trim().is_empty()) {
        return Err(ValidationError::new(
            "command[0]",
            &words[0],
            "the program to run must not be empty",
        ));
    }
    Ok(())
}

fn check_tolerations(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    if spec.tolerations.len() > MAX_TOLERATIONS {
        return Err(ValidationError::new(
            "tolerations",
            format!("{} entries", spec.tolerations.len()),
            format!("at most {MAX_TOLERATIONS} tolerations are allowed"),
        ));
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        check_qualified_name(&format!("tolerations[{i}].key"), &t.key, "key")?;
        if let Some(value) = t.value.as_deref() {
            check_label_value(&format!("tolerations[{i}].value"), value)?;
        }
        if !TOLERATION_EFFECTS.contains(&t.effect.as_str()) {
            return Err(ValidationError::new(
                format!("tolerations[{i}].effect"),
                &t.effect,
                format!("must be one of {}", TOLERATION_EFFECTS.join(", ")),
            ));
        }
    }
    Ok(())
}

fn check_probes(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    if let Some(path) = spec.ready_path.as_deref().filter(|p| !p.is_empty()) {
        if !path.starts_with('/') {
            return Err(ValidationError::new(
                "ready_path",
                path,
                "must start with '/', e.g. /v1/models/iris",
            ));
        }
        if path.len() > MAX_READY_PATH_LEN {
            return Err(ValidationError::new(
                "ready_path",
                path,
                format!("must be at most {MAX_READY_PATH_LEN} characters"),
            ));
        }
        if path.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(ValidationError::new(
                "ready_path",
                path,
                "must be printable ASCII without spaces (percent-encode the rest)",
            ));
        }
    }
    if spec.startup_timeout_seconds > MAX_STARTUP_TIMEOUT_SECONDS {
        return Err(ValidationError::new(
            "startup_timeout_seconds",
            format!("{}s", spec.startup_timeout_seconds),
            "must be at most 24h (86400 seconds)",
        ));
    }
    Ok(())
}

/// A Kubernetes qualified name (`[prefix/]name`): label keys, annotation keys, taint keys.
fn check_qualified_name(field: &str, key: &str, what: &str) -> Result<(), ValidationError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(ValidationError::new(
                field,
                key,
                format!("the {what} prefix before '/' must not be empty"),
            ));
        }
        check_dns1123_subdomain(field, prefix).map_err(|e| ValidationError {
            value: key.to_string(),
            rule: format!("the {what} prefix {}", e.rule),
            ..e
        })?;
    }
    if name.is_empty() || name.len() > MAX_LABEL_LEN || !LABEL_NAME.is_match(name) {
        return Err(ValidationError::new(
            field,
            key,
            format!(
                "the {what} name must be 1 to {MAX_LABEL_LEN} letters, digits, '-', '_' or '.', \
                 starting and ending with a letter or digit, after an optional DNS subdomain \
                 prefix and '/'"
            ),
        ));
    }
    Ok(())
}

fn check_label_value(field: &str, value: &str) -> Result<(), ValidationError> {
    if !value.is_empty() && (value.len() > MAX_LABEL_LEN || !LABEL_NAME.is_match(value)) {
        return Err(ValidationError::new(
            field,
            value,
            format!(
                "a label value must be empty or 1 to {MAX_LABEL_LEN} letters, digits, '-', '_' \
                 or '.', starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::spec::{DeploymentSpec, Toleration};
    use crate::validate::{ValidationError, validate_deployment};

    fn spec() -> DeploymentSpec {
        DeploymentSpec::test("iris")
    }

    /// Expects `spec` rejected on `field`, the message naming it and `quoted(value)`.
    fn rejected(spec: &DeploymentSpec, field: &str) -> ValidationError {
        let err = validate_deployment("iris", "default", spec)
            .expect_err("the spec should have been rejected");
        assert_eq!(err.field, field, "wrong field in {err}");
        assert!(err.to_string().contains(field), "{err}");
        err
    }

    fn ok(spec: &DeploymentSpec) {
        validate_deployment("iris", "default", spec).unwrap_or_else(|e| panic!("{e}"));
    }

    fn with(f: impl FnOnce(&mut DeploymentSpec)) -> DeploymentSpec {
        let mut s = spec();
        f(&mut s);
        s
    }

    #[test]
    fn every_option_set_well_is_accepted() {
        ok(&with(|s| {
            s.host = Some("iris.example.com".into());
            s.gpu = 8;
            s.gpu_resource = Some("amd.com/gpu".into());
            s.image_pull_secrets = vec!["regcred".into(), "ghcr.pull".into()];
            s.tls_secret = Some("iris-tls".into());
            s.ingress_annotations.insert(
                "cert-manager.io/cluster-issuer".into(),
                "letsencrypt".into(),
            );
            s.ingress_annotations.insert(
                "nginx.ingress.kubernetes.io/proxy-body-size".into(),
                "64m with spaces and = signs".into(),
            );
            s.command = vec!["python".into(), "-m".into(), "serve".into()];
            s.args = vec!["--port=8501".into(), String::new()];
            s.node_selector.insert(
                "cloud.google.com/gke-accelerator".into(),
                "nvidia-l4".into(),
            );
            s.tolerations = vec![
                Toleration::parse("nvidia.com/gpu:NoSchedule").unwrap(),
                Toleration::parse("dedicated=ml:PreferNoSchedule").unwrap(),
            ];
            s.priority_class = Some("model-serving".into());
            s.ready_path = Some("/v1/models/iris".into());
            s.startup_timeout_seconds = 1800;
        }));
    }

    #[test]
    fn gpu_counts_are_bounded() {
        let err = rejected(&with(|s| s.gpu = 65), "gpu");
        assert!(err.rule.contains("64"), "{err}");
        rejected(&with(|s| s.gpu = u32::MAX), "gpu");
        ok(&with(|s| s.gpu = 64));
        ok(&with(|s| s.gpu = 0));
    }

    #[test]
    fn gpu_resource_must_be_an_extended_resource_name() {
        for bad in [
            "gpu",
            "nvidia.com/",
            "/gpu",
            "kubernetes.io/gpu",
            "foo.kubernetes.io/gpu",
            "requests.nvidia.com/gpu",
            "Nvidia.com/gpu",
            "nvidia.com/g pu",
            "nvidia.com/-gpu",
        ] {
            let err = rejected(
                &with(|s| {
                    s.gpu = 1;
                    s.gpu_resource = Some(bad.into());
                }),
                "gpu_resource",
            );
            assert!(err.rule.contains("extended resource"), "{bad}: {err}");
            assert_eq!(err.value, bad);
        }
        ok(&with(|s| {
            s.gpu = 1;
            s.gpu_resource = Some("gpu.intel.com/i915".into());
        }));
    }

    #[test]
    fn gpu_resource_without_gpus_is_refused() {
        let err = rejected(
            &with(|s| s.gpu_resource = Some("amd.com/gpu".into())),
            "gpu_resource",
        );
        assert!(err.rule.contains("gpu is 0"), "{err}");
    }

    #[test]
    fn image_pull_secrets_are_dns_names_given_once() {
        let err = rejected(
            &with(|s| s.image_pull_secrets = vec!["ok".into(), "Bad_Secret".into()]),
            "image_pull_secrets[1]",
        );
        assert!(err.rule.contains("DNS-1123"), "{err}");
        rejected(
            &with(|s| s.image_pull_secrets = vec![String::new()]),
            "image_pull_secrets[0]",
        );
        let err = rejected(
            &with(|s| s.image_pull_secrets = vec!["a".into(), "b".into(), "a".into()]),
            "image_pull_secrets[2]",
        );
        assert!(err.rule.contains("more than once"), "{err}");
        rejected(
            &with(|s| s.image_pull_secrets = (0..33).map(|i| format!("s{i}")).collect()),
            "image_pull_secrets",
        );
    }

    #[test]
    fn tls_secret_needs_a_host_and_a_dns_name() {
        let err = rejected(
            &with(|s| s.tls_secret = Some("iris-tls".into())),
            "tls_secret",
        );
        assert!(err.rule.contains("host"), "names both fields: {err}");
        rejected(
            &with(|s| {
                s.host = Some("iris.example.com".into());
                s.tls_secret = Some("Iris TLS".into());
            }),
            "tls_secret",
        );
    }

    #[test]
    fn ingress_annotations_follow_the_key_rules_and_a_size_bound() {
        let err = rejected(
            &with(|s| {
                s.ingress_annotations.insert("bad key".into(), "v".into());
            }),
            "ingress_annotations[bad key]",
        );
        assert!(err.rule.contains("key name"), "{err}");
        let err = rejected(
            &with(|s| {
                s.ingress_annotations
                    .insert("deployer.ds.dev/revision".into(), "1".into());
            }),
            "ingress_annotations[deployer.ds.dev/revision]",
        );
        assert!(err.rule.contains("reserved"), "{err}");
        let err = rejected(
            &with(|s| {
                s.ingress_annotations
                    .insert("example.com/a".into(), "x".repeat(40_000));
                s.ingress_annotations
                    .insert("example.com/b".into(), "x".repeat(40_000));
            }),
            "ingress_annotations",
        );
        assert!(err.rule.contains("64 KiB"), "{err}");
    }

    #[test]
    fn command_and_args_are_what_exec_can_pass() {
        let err = rejected(
            &with(|s| s.args = vec!["ok".into(), "x".repeat(128 * 1024)]),
            "args[1]",
        );
        assert!(err.rule.contains("128 KiB"), "{err}");
        assert!(err.to_string().len() < 400, "the value is cut: {err}");
        ok(&with(|s| s.args = vec!["x".repeat(128 * 1024 - 1)]));
        rejected(&with(|s| s.command = vec!["a\0b".into()]), "command[0]");
        rejected(&with(|s| s.command = vec![String::new()]), "command[0]");
        let err = rejected(&with(|s| s.args = vec!["a".into(); 257]), "args");
        assert!(err.rule.contains("256"), "{err}");
    }

    #[test]
    fn node_selector_keys_and_values_follow_label_rules() {
        let err = rejected(
            &with(|s| {
                s.node_selector.insert("bad key!".into(), "v".into());
            }),
            "node_selector[bad key!]",
        );
        assert!(err.rule.contains("key name"), "{err}");
        rejected(
            &with(|s| {
                s.node_selector
                    .insert("Bad_Prefix.com/x".into(), "v".into());
            }),
            "node_selector[Bad_Prefix.com/x]",
        );
        let err = rejected(
            &with(|s| {
                s.node_selector.insert("gpu".into(), "a100 80g".into());
            }),
            "node_selector[gpu]",
        );
        assert_eq!(err.value, "a100 80g");
    }

    #[test]
    fn tolerations_name_a_known_effect_and_a_label_key() {
        let err = rejected(
            &with(|s| s.tolerations = vec![Toleration::parse("gpu:NoWay").unwrap()]),
            "tolerations[0].effect",
        );
        assert!(
            err.rule.contains("NoSchedule, PreferNoSchedule, NoExecute"),
            "{err}"
        );
        assert_eq!(err.value, "NoWay");
        rejected(
            &with(|s| s.tolerations = vec![Toleration::parse("bad key:NoSchedule").unwrap()]),
            "tolerations[0].key",
        );
        rejected(
            &with(|s| {
                s.tolerations = vec![
                    Toleration::parse("a:NoSchedule").unwrap(),
                    Toleration::parse("b=bad value:NoSchedule").unwrap(),
                ]
            }),
            "tolerations[1].value",
        );
    }

    #[test]
    fn priority_class_is_a_dns_name() {
        rejected(
            &with(|s| s.priority_class = Some("High Priority".into())),
            "priority_class",
        );
    }

    #[test]
    fn ready_path_starts_with_a_slash() {
        let err = rejected(
            &with(|s| s.ready_path = Some("v1/models/iris".into())),
            "ready_path",
        );
        assert!(err.rule.contains("start with '/'"), "{err}");
        rejected(&with(|s| s.ready_path = Some("/a b".into())), "ready_path");
        ok(&with(|s| s.ready_path = Some(String::new())));
    }

    #[test]
    fn startup_timeout_is_at_most_a_day() {
        let err = rejected(
            &with(|s| s.startup_timeout_seconds = 86_401),
            "startup_timeout_seconds",
        );
        assert!(err.rule.contains("24h"), "{err}");
        ok(&with(|s| s.startup_timeout_seconds = 86_400));
    }
}
