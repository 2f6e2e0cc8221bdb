//! Validation of deployment specs at the gateway: each rejection names the field, the
//! value and the rule, before anything reaches a cluster.
//!
//! The rules mirror what the Kubernetes API server would later enforce on the objects the
//! agent builds (Deployment, Service, Ingress), so a bad spec fails at `ds deployment
//! create` with a clear message instead of as a "Failed" status minutes later.

use super::spec::DeploymentSpec;
use regex::Regex;
use std::collections::HashSet;
use std::sync::LazyLock;

pub mod model_rules;
pub mod pod_rules;
pub mod scaling_rules;

/// A rejected field. Its message never repeats a huge value: the value, and the user input
/// in a field's name (`labels[KEY]`), are cut after [`SHOWN_CHARS`] characters and say
/// their size (see [`quoted`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {}: {rule}", quoted(value))]
pub struct ValidationError {
    /// The field's name as the user knows it (`name`, `image`, `env[2].name`…).
    pub field: String,
    /// The rejected value, whole (the message shows it cut).
    pub value: String,
    /// The rule it breaks, in words.
    pub rule: String,
}

impl ValidationError {
    pub(crate) fn new(
        field: impl Into<String>,
        value: impl Into<String>,
        rule: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.into(),
            rule: rule.into(),
        }
    }
}

/// How many characters of a value an error message repeats.
pub const SHOWN_CHARS: usize = 64;

/// `value` as an error message shows it: quoted, and when longer than [`SHOWN_CHARS`]
/// characters cut there with its size, `"aaaa…"… (1048576 bytes)`.
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &value[..end], value.len()),
    }
}

/// `text` unquoted, cut like [`quoted`] (for user input in field names and messages).
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
    }
}

/// Most replicas a deployment may ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// Kubernetes' limit for DNS-1123 labels, label names and label values.
pub const MAX_LABEL_LEN: usize = 63;

/// Kubernetes' limit for DNS-1123 subdomains (hosts, ingress classes, label prefixes).
pub const MAX_SUBDOMAIN_LEN: usize = 253;

/// Longest model name (informational, but stored and shown everywhere).
pub const MAX_MODEL_NAME_LEN: usize = 253;

/// Largest value of one environment variable, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;

/// Most environment variables of one deployment.
pub const MAX_ENV_ENTRIES: usize = 1000;

/// Largest deployment spec, serialized (protobuf encoding), in bytes.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// Suffixes appended to a deployment's name to name the objects made for it. The
/// Deployment, Service and Ingress all use the bare name today; an agent that derives
/// further names (e.g. `NAME-tls`) adds the suffix here so the gateway refuses names
/// whose derived objects could not be created.
pub const DERIVED_NAME_SUFFIXES: &[&str] = &[""];

/// Label keys the agent sets itself (ownership, selection); users may not set them.
/// (`deployer.ds.dev/` is the agent's: owner and deployment-ID labels, its annotations.)
pub const RESERVED_LABEL_PREFIXES: &[&str] = &[
    "app.kubernetes.io/managed-by",
    "deployer.ds.dev/",
    "ds-deployer.io/",
];

// === patterns ===

/// One DNS-1123 label (no length check).
static DNS1123_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("valid regex"));

/// A Kubernetes environment variable name.
static ENV_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$").expect("valid regex"));

/// The name part of a label key, and a non-empty label value.
static LABEL_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$").expect("valid regex")
});

/// A Kubernetes quantity: sign, number, then a binary-SI, decimal-SI or exponent suffix.
static QUANTITY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^([+-]?)([0-9]+\.?[0-9]*|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$",
    )
    .expect("valid regex")
});

/// One image path component: lowercase alphanumerics joined by `.`, `_`, `__` or dashes.
static IMAGE_PATH_COMPONENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$").expect("valid regex"));

/// One component of a registry host name (upper case allowed, as Docker does).
static REGISTRY_HOST_COMPONENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$").expect("valid regex"));

/// An image tag.
static IMAGE_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("valid regex"));

/// An image digest: only sha256 is accepted, as lowercase hex.
static IMAGE_DIGEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^sha256:[a-f0-9]{64}$").expect("valid regex"));

// === entry points ===

/// Checks a deployment's name, namespace and spec.
///
/// Empty optional strings (host, ingress class, resources) count as unset, as they do
/// in the protocol.
///
/// # Errors
/// The first rule broken, naming the field, the value and the rule.
pub fn validate_deployment(
    name: &str,
    namespace: &str,
    spec: &DeploymentSpec,
) -> Result<(), ValidationError> {
    validate_object_name(name)?;
    check_dns1123_label("namespace", namespace)?;
    if spec.model_name.trim().is_empty() {
        return Err(ValidationError::new(
            "model_name",
            &spec.model_name,
            "must not be empty",
        ));
    }
    if spec.model_name.chars().count() > MAX_MODEL_NAME_LEN {
        return Err(ValidationError::new(
            "model_name",
            &spec.model_name,
            format!("must be at most {MAX_MODEL_NAME_LEN} characters"),
        ));
    }
    check_image(&spec.image)?;
    if spec.replicas > MAX_REPLICAS {
        return Err(ValidationError::new(
            "replicas",
            spec.replicas.to_string(),
            format!("must be between 0 and {MAX_REPLICAS}"),
        ));
    }
    if spec.port == 0 || spec.port > 65535 {
        return Err(ValidationError::new(
            "port",
            spec.port.to_string(),
            "must be between 1 and 65535",
        ));
    }
    if let Some(host) = spec.host.as_deref().filter(|h| !h.is_empty()) {
        check_host(host)?;
    }
    if let Some(class) = spec.ingress_class.as_deref().filter(|c| !c.is_empty()) {
        check_dns1123_subdomain("ingress_class", class)?;
    }
    check_env(spec)?;
    check_resources(spec)?;
    for (i, class) in spec.proxy.class_names.iter().enumerate() {
        if class.trim().is_empty() {
            return Err(ValidationError::new(
                format!("proxy.class_names[{i}]"),
                class,
                "class names must not be empty",
            ));
        }
    }
    if let Some(protocol) = spec.proxy.protocol.as_deref()
        && !crate::spec::PROXY_PROTOCOLS.contains(&protocol)
    {
        return Err(ValidationError::new(
            "proxy.protocol",
            protocol,
            "the proxy's protocol must be auto, v1 or v2",
        ));
    }
    if spec.proxy.query_log && !spec.proxy.enabled {
        // The sidecar writes the query logs: without it they would silently never appear.
        return Err(ValidationError::new(
            "proxy.query_log",
            "true",
            "query logs are written by the model-proxy sidecar, which is off (proxy.enabled is false): turn the proxy on or query logs off",
        ));
    }
    for (key, value) in &spec.labels {
        check_label(key, value)?;
    }
    pod_rules::check(spec)?;
    model_rules::check(spec)?;
    scaling_rules::check(spec)?;
    check_spec_size(spec)
}

/// The whole spec, serialized as the protocol carries it, within [`MAX_SPEC_BYTES`]: a
/// deployer's snapshot holds many of them.
fn check_spec_size(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    use prost::Message as _;
    let size = crate::proto::DeploymentSpec::from(spec.clone()).encoded_len();
    if size > MAX_SPEC_BYTES {
        return Err(ValidationError::new(
            "spec",
            format!("{size} bytes"),
            format!(
                "must be at most 256 KiB ({MAX_SPEC_BYTES} bytes) serialized, env values, labels and class names together"
            ),
        ));
    }
    Ok(())
}

/// Checks a deployer's name: a DNS-1123 label (it appears in the install manifest's
/// object names and in the CLI's tables).
///
/// # Errors
/// The rule broken, with `field` = `name`.
pub fn validate_deployer_name(name: &str) -> Result<(), ValidationError> {
    check_dns1123_label("name", name)
}

/// Checks the name of a user or service account given in `field`: a DNS-1123 label (it
/// shows in who made a change, and in tables).
///
/// # Errors
/// The rule broken, naming `field`.
pub fn validate_user_name(field: &str, name: &str) -> Result<(), ValidationError> {
    check_dns1123_label(field, name)
}

/// Checks the name of a group given in `field`: a DNS-1123 label.
///
/// # Errors
/// The rule broken, naming `field`.
pub fn validate_group_name(field: &str, name: &str) -> Result<(), ValidationError> {
    check_dns1123_label(field, name)
}

/// The longest lifetime of an API key: ten years.
pub const MAX_API_KEY_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(10 * 366 * 86_400);

/// Checks an API key's lifetime given in `field`: a positive duration of at most
/// [`MAX_API_KEY_LIFETIME`] (`None`: it never expires).
///
/// # Errors
/// The rule broken, naming `field`.
pub fn validate_api_key_lifetime(
    field: &str,
    lifetime: Option<std::time::Duration>,
) -> Result<(), ValidationError> {
    match lifetime {
        Some(d) if d.is_zero() => Err(ValidationError::new(
            field,
            "0s",
            "must be a positive duration such as 90d or 12h (leave it out for a key that does not expire)",
        )),
        Some(d) if d > MAX_API_KEY_LIFETIME => Err(ValidationError::new(
            field,
            crate::duration::format(d),
            "must be at most 10 years (3660d)",
        )),
        _ => Ok(()),
    }
}

/// The longest stage name.
pub const MAX_STAGE_NAME_LEN: usize = 63;

/// Checks a lifecycle stage's name given in `field`: 1 to 63 ASCII letters, digits, `-`,
/// `_` or `.`, starting with a letter or digit (`Production`, `pre-prod`, `eu.test`).
///
/// # Errors
/// The rule broken, naming `field`.
pub fn validate_stage_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new(field, name, "must not be empty"));
    }
    if name.len() > MAX_STAGE_NAME_LEN {
        return Err(ValidationError::new(
            field,
            name,
            format!("must be at most {MAX_STAGE_NAME_LEN} characters"),
        ));
    }
    let first_ok = name.as_bytes()[0].is_ascii_alphanumeric();
    let all_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !first_ok || !all_ok {
        return Err(ValidationError::new(
            field,
            name,
            "must be letters, digits, '-', '_' or '.', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// Checks a namespace name given in `field` (a DNS-1123 label), e.g. install options.
///
/// # Errors
/// The rule broken, naming `field`.
pub fn validate_namespace(field: &str, namespace: &str) -> Result<(), ValidationError> {
    check_dns1123_label(field, namespace)
}

/// Whether `name` is a Kubernetes environment variable name (the rule of `env[i].name`).
pub(crate) fn env_name_ok(name: &str) -> bool {
    ENV_NAME.is_match(name) && name != "." && name != ".."
}

/// Checks a Secret's name given in `field`: a DNS-1123 subdomain.
pub(crate) fn check_secret_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new(field, name, "must not be empty"));
    }
    check_dns1123_subdomain(field, name)
}

// === names ===

/// A deployment's name becomes the name of its Deployment, Service and Ingress. A Service
/// name must be a DNS-1035 label (a DNS-1123 label that starts with a letter), so the
/// stricter rule applies.
fn validate_object_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new("name", name, "must not be empty"));
    }
    if name.len() > MAX_LABEL_LEN {
        return Err(ValidationError::new(
            "name",
            name,
            format!(
                "must be at most {MAX_LABEL_LEN} characters (a DNS-1035 label: the Service named after it requires it)"
            ),
        ));
    }
    if !DNS1123_LABEL.is_match(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(ValidationError::new(
            "name",
            name,
            "must be a DNS-1035 label (the Service named after it requires it): lowercase \
             letters, digits and '-', starting with a letter and ending with a letter or digit",
        ));
    }
    for suffix in DERIVED_NAME_SUFFIXES {
        let derived = format!("{name}{suffix}");
        if derived.len() > MAX_LABEL_LEN {
            return Err(ValidationError::new(
                "name",
                name,
                format!(
                    "the derived object name {} would exceed {MAX_LABEL_LEN} characters",
                    quoted(&derived)
                ),
            ));
        }
    }
    Ok(())
}

fn check_dns1123_label(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, value, "must not be empty"));
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(ValidationError::new(
            field,
            value,
            format!("must be at most {MAX_LABEL_LEN} characters (DNS-1123 label)"),
        ));
    }
    if !DNS1123_LABEL.is_match(value) {
        return Err(ValidationError::new(
            field,
            value,
            "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending \
             with a letter or digit",
        ));
    }
    Ok(())
}

fn check_dns1123_subdomain(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.len() > MAX_SUBDOMAIN_LEN {
        return Err(ValidationError::new(
            field,
            value,
            format!("must be at most {MAX_SUBDOMAIN_LEN} characters (DNS-1123 subdomain)"),
        ));
    }
    for label in value.split('.') {
        if label.len() > MAX_LABEL_LEN || !DNS1123_LABEL.is_match(label) {
            return Err(ValidationError::new(
                field,
                value,
                format!(
                    "must be a DNS-1123 subdomain: dot-separated parts of lowercase letters, \
                     digits and '-', each 1 to {MAX_LABEL_LEN} characters starting and ending \
                     with a letter or digit (bad part {})",
                    quoted(label)
                ),
            ));
        }
    }
    Ok(())
}

/// An Ingress host: an RFC 1123 subdomain, optionally starting with the `*.` wildcard
/// Ingress rules allow; IP addresses are refused as the Ingress API refuses them.
fn check_host(host: &str) -> Result<(), ValidationError> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Err(ValidationError::new(
            "host",
            host,
            "must be a DNS name, not an IP address (Ingress hosts cannot be IPs)",
        ));
    }
    if bare.contains('*') {
        return Err(ValidationError::new(
            "host",
            host,
            "a wildcard is only allowed as the whole first label (\"*.example.com\")",
        ));
    }
    if bare.contains(':') || bare.contains('/') {
        return Err(ValidationError::new(
            "host",
            host,
            "must be a bare host name, without scheme, port or path",
        ));
    }
    check_dns1123_subdomain("host", host.strip_prefix("*.").unwrap_or(host)).map_err(|e| {
        ValidationError {
            value: host.to_string(),
            ..e
        }
    })
}

// === image ===

/// Checks an image reference: `[registry[:port]/]path[:tag][@sha256:HEX]`, the grammar
/// of the distribution reference library that containerd and Docker use.
fn check_image(image: &str) -> Result<(), ValidationError> {
    let fail = |rule: String| Err(ValidationError::new("image", image, rule));
    if image.is_empty() {
        return fail("must not be empty".into());
    }
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(digest) = digest
        && !IMAGE_DIGEST.is_match(digest)
    {
        return fail(format!(
            "digest {} must be \"sha256:\" followed by 64 lowercase hex digits",
            quoted(digest)
        ));
    }
    // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    let last_slash = name_tag.rfind('/');
    let (name, tag) = match name_tag.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&name_tag[..colon], Some(&name_tag[colon + 1..]))
        }
        _ => (name_tag, None),
    };
    if let Some(tag) = tag
        && !IMAGE_TAG.is_match(tag)
    {
        return fail(format!(
            "tag {} must be 1 to 128 letters, digits, '_', '.' or '-', not starting \
                 with '.' or '-'",
            quoted(tag)
        ));
    }
    if name.len() > 255 {
        return fail("the repository name must be at most 255 characters".into());
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // Docker's rule: the first component is a registry when it has a '.' or ':', is
    // "localhost", or has upper case (which repository paths cannot).
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':'])
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase())
        {
            if let Some(rule) = registry_error(first) {
                return fail(rule);
            }
            components.remove(0);
        }
    }
    for component in components {
        if !IMAGE_PATH_COMPONENT.is_match(component) {
            return fail(format!(
                "path component {} must be lowercase letters and digits, \
                 separated by '.', '_', '__' or '-'",
                quoted(component)
            ));
        }
    }
    Ok(())
}

/// Why a registry `host[:port]` is malformed, or `None` if it is fine.
fn registry_error(registry: &str) -> Option<String> {
    let (host, port) = match registry.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    if let Some(port) = port
        && (!matches!(port.parse::<u32>(), Ok(1..=65535)) || port.starts_with('+'))
    {
        return Some(format!(
            "registry port {} must be a number from 1 to 65535",
            quoted(port)
        ));
    }
    if host.is_empty() || !host.split('.').all(|c| REGISTRY_HOST_COMPONENT.is_match(c)) {
        return Some(format!(
            "registry {} must be a host name of letters, digits, '-' and '.'",
            quoted(host)
        ));
    }
    None
}

// === env ===

fn check_env(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    if spec.env.len() > MAX_ENV_ENTRIES {
        return Err(ValidationError::new(
            "env",
            format!("{} entries", spec.env.len()),
            format!("at most {MAX_ENV_ENTRIES} environment variables are allowed"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, var) in spec.env.iter().enumerate() {
        let field = format!("env[{i}].name");
        if var.name.is_empty() {
            return Err(ValidationError::new(field, &var.name, "must not be empty"));
        }
        if !ENV_NAME.is_match(&var.name) || var.name == "." || var.name == ".." {
            return Err(ValidationError::new(
                field,
                &var.name,
                "must consist of letters, digits, '_', '-' or '.', and not start with a digit",
            ));
        }
        if !seen.insert(var.name.as_str()) {
            return Err(ValidationError::new(
                field,
                &var.name,
                "is set more than once; each variable may appear only once",
            ));
        }
        if var.value.len() > MAX_ENV_VALUE_BYTES {
            return Err(ValidationError::new(
                format!("env[{i}].value"),
                &var.value,
                format!(
                    "must be at most 32 KiB ({MAX_ENV_VALUE_BYTES} bytes); it has {} bytes",
                    var.value.len()
                ),
            ));
        }
    }
    Ok(())
}

// === resources ===

fn check_resources(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    let r = &spec.resources;
    let cpu_request = quantity("resources.cpu_request", r.cpu_request.as_deref())?;
    let cpu_limit = quantity("resources.cpu_limit", r.cpu_limit.as_deref())?;
    let memory_request = quantity("resources.memory_request", r.memory_request.as_deref())?;
    let memory_limit = quantity("resources.memory_limit", r.memory_limit.as_deref())?;
    request_within_limit("cpu", cpu_request, cpu_limit, r.cpu_request.as_deref())?;
    request_within_limit(
        "memory",
        memory_request,
        memory_limit,
        r.memory_request.as_deref(),
    )?;
    Ok(())
}

fn request_within_limit(
    resource: &str,
    request: Option<f64>,
    limit: Option<f64>,
    request_text: Option<&str>,
) -> Result<(), ValidationError> {
    if let (Some(request), Some(limit)) = (request, limit)
        && request > limit
    {
        return Err(ValidationError::new(
            format!("resources.{resource}_request"),
            request_text.unwrap_or_default(),
            format!("must not exceed the {resource} limit"),
        ));
    }
    Ok(())
}

/// Parses an optional quantity field; empty means unset.
fn quantity(field: &str, value: Option<&str>) -> Result<Option<f64>, ValidationError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => parse_quantity(v)
            .map(Some)
            .map_err(|rule| ValidationError::new(field, v, rule)),
    }
}

/// Parses a Kubernetes quantity (`500m`, `1.5`, `2Gi`, `1e3`, `128M`) into its value in
/// base units; resources cannot be negative.
///
/// # Errors
/// The rule broken, in words.
pub fn parse_quantity(value: &str) -> Result<f64, String> {
    let Some(caps) = QUANTITY.captures(value) else {
        return Err(
            "must be a Kubernetes quantity: a number with an optional suffix \
                    (m, k, M, G, T, Ki, Mi, Gi, Ti, or an exponent like e3), e.g. \
                    \"500m\", \"1.5\", \"2Gi\""
                .to_string(),
        );
    };
    if &caps[1] == "-" {
        return Err("must not be negative".to_string());
    }
    let number: f64 = caps[2]
        .parse()
        .map_err(|_| "the number part is malformed".to_string())?;
    let suffix = caps.get(3).map_or("", |m| m.as_str());
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let exp: i32 = exponent[1..]
                .parse()
                .map_err(|_| "the exponent is out of range".to_string())?;
            10f64.powi(exp)
        }
    };
    Ok(number * multiplier)
}

// === labels ===

/// A label key (`[prefix/]name`) and value, per Kubernetes' rules.
fn check_label(key: &str, value: &str) -> Result<(), ValidationError> {
    let field = format!("labels[{}]", cut(key));
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(ValidationError::new(
                &field,
                key,
                "the key prefix before '/' must not be empty",
            ));
        }
        check_dns1123_subdomain(&field, prefix).map_err(|e| ValidationError {
            value: key.to_string(),
            rule: format!("the key prefix {}", e.rule),
            ..e
        })?;
    }
    if name.is_empty() || name.len() > MAX_LABEL_LEN || !LABEL_NAME.is_match(name) {
        return Err(ValidationError::new(
            &field,
            key,
            format!(
                "the key name must be 1 to {MAX_LABEL_LEN} letters, digits, '-', '_' or '.', \
                 starting and ending with a letter or digit, after an optional DNS subdomain \
                 prefix and '/'"
            ),
        ));
    }
    if RESERVED_LABEL_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Err(ValidationError::new(
            &field,
            key,
            "is reserved for the labels ds-deployer sets itself",
        ));
    }
    if !value.is_empty() && (value.len() > MAX_LABEL_LEN || !LABEL_NAME.is_match(value)) {
        return Err(ValidationError::new(
            &field,
            value,
            format!(
                "a label value must be empty or 1 to {MAX_LABEL_LEN} letters, digits, '-', '_' \
                 or '.', starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// The container `ds deployment logs --container` names, as its pods call it: `model`
/// (also when empty) or `model-proxy` (also `proxy`).
///
/// # Errors
/// Any other name, naming the flag's field.
pub fn logs_container(value: &str) -> Result<&'static str, ValidationError> {
    use super::spec::{MODEL_CONTAINER, PROXY_CONTAINER};
    match value {
        "" | MODEL_CONTAINER => Ok(MODEL_CONTAINER),
        "proxy" | PROXY_CONTAINER => Ok(PROXY_CONTAINER),
        _ => Err(ValidationError::new(
            "container",
            value,
            "must be model or proxy (the model-proxy sidecar)",
        )),
    }
}

/// The line selection of `ds deployment logs`: `tail` lines (at least 0) and lines newer
/// than `since_seconds` (at least 1), as Kubernetes' log options take them.
///
/// # Errors
/// A negative tail or a since below one second.
pub fn logs_window(tail: Option<i64>, since_seconds: Option<i64>) -> Result<(), ValidationError> {
    if let Some(n) = tail.filter(|n| *n < 0) {
        return Err(ValidationError::new(
            "tail",
            n.to_string(),
            "must be 0 or more",
        ));
    }
    if let Some(s) = since_seconds.filter(|s| *s < 1) {
        return Err(ValidationError::new(
            "since",
            format!("{s}s"),
            "must be at least one second",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::EnvVar;

    fn spec() -> DeploymentSpec {
        DeploymentSpec::test("iris")
    }

    #[test]
    fn stage_names_are_short_plain_words() {
        for ok in ["Production", "pre-prod", "eu.test", "Stage_2", "a"] {
            assert!(validate_stage_name("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-dev", "two words", "prod/eu", &"x".repeat(64)] {
            let e = validate_stage_name("name", bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad}");
        }
    }

    /// Validates `spec` as deployment `iris` in `default` and expects a rejection of
    /// `field`; the message must name the field too.
    fn rejected(spec: &DeploymentSpec, field: &str) -> ValidationError {
        rejected_named("iris", "default", spec, field)
    }

    fn rejected_named(
        name: &str,
        namespace: &str,
        spec: &DeploymentSpec,
        field: &str,
    ) -> ValidationError {
        let err = validate_deployment(name, namespace, spec)
            .expect_err("the spec should have been rejected");
        assert_eq!(err.field, field, "wrong field in {err}");
        assert!(
            err.to_string().contains(field),
            "message does not name the field: {err}"
        );
        err
    }

    fn with_env(names: &[&str]) -> DeploymentSpec {
        let mut s = spec();
        s.env = names
            .iter()
            .map(|n| EnvVar {
                name: n.to_string(),
                value: "v".into(),
            })
            .collect();
        s
    }

    #[test]
    fn a_typical_spec_is_accepted() {
        let mut s = spec()
            .image("registry.example.com:5000/team/iris-model:v1.2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
            .replicas(3)
            .host("iris.models.example.com");
        s.ingress_class = Some("nginx".into());
        s.env = vec![EnvVar {
            name: "MODEL_NAME".into(),
            value: "iris".into(),
        }];
        s.resources.cpu_request = Some("500m".into());
        s.resources.cpu_limit = Some("2".into());
        s.resources.memory_request = Some("512Mi".into());
        s.resources.memory_limit = Some("1Gi".into());
        s.proxy.class_names = vec!["setosa".into(), "versicolor".into()];
        s.labels.insert("team".into(), "ml".into());
        s.labels.insert("example.com/tier".into(), "gold".into());
        validate_deployment("iris", "models", &s).unwrap();
    }

    #[test]
    fn empty_optionals_count_as_unset() {
        let mut s = spec();
        s.host = Some(String::new());
        s.ingress_class = Some(String::new());
        s.resources.cpu_request = Some(String::new());
        validate_deployment("iris", "default", &s).unwrap();
    }

    // --- name and namespace ---

    #[test]
    fn name_must_be_a_dns_label() {
        let err = rejected_named("Iris_Model", "default", &spec(), "name");
        assert!(err.rule.contains("DNS-1035"), "{err}");
        rejected_named("iris-", "default", &spec(), "name");
        rejected_named("", "default", &spec(), "name");
    }

    #[test]
    fn name_must_fit_63_characters() {
        let long = "a".repeat(64);
        let err = rejected_named(&long, "default", &spec(), "name");
        assert!(err.rule.contains("63"), "{err}");
        validate_deployment(&"a".repeat(63), "default", &spec()).unwrap();
    }

    #[test]
    fn name_must_start_with_a_letter_for_the_service() {
        let err = rejected_named("1iris", "default", &spec(), "name");
        assert!(err.rule.contains("letter"), "{err}");
    }

    #[test]
    fn namespace_must_be_a_dns1123_label() {
        rejected_named("iris", "Models", &spec(), "namespace");
        rejected_named("iris", &"n".repeat(64), &spec(), "namespace");
        rejected_named("iris", "", &spec(), "namespace");
    }

    #[test]
    fn deployer_name_must_be_a_dns1123_label() {
        let err = validate_deployer_name("Prod Cluster").unwrap_err();
        assert_eq!(err.field, "name");
        assert!(err.to_string().contains("name"), "{err}");
        assert!(validate_deployer_name(&"d".repeat(64)).is_err());
        validate_deployer_name("prod-eu-1").unwrap();
    }

    #[test]
    fn model_name_must_not_be_empty() {
        let mut s = spec();
        s.model_name = String::new();
        rejected(&s, "model_name");
    }

    // --- image ---

    #[test]
    fn image_references_of_every_shape_are_accepted() {
        for image in [
            "nginx",
            "nginx:1.27",
            "library/nginx:latest",
            "ghcr.io/org/team/model:2024.01_rc-1",
            "localhost:5000/iris",
            "localhost/iris:dev",
            "Registry.Example.com/a__b/c-d--e:tag",
            "iris@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            validate_deployment("iris", "default", &spec().image(image))
                .unwrap_or_else(|e| panic!("{image} rejected: {e}"));
        }
    }

    #[test]
    fn image_must_not_be_empty() {
        rejected(&spec().image(""), "image");
    }

    #[test]
    fn image_path_components_must_be_lowercase() {
        let err = rejected(&spec().image("tensorflow/Serving:2.15"), "image");
        assert!(err.rule.contains("Serving"), "{err}");
        rejected(&spec().image("team/-model"), "image");
        rejected(&spec().image("team//model"), "image");
    }

    #[test]
    fn image_tag_must_follow_the_tag_grammar() {
        let err = rejected(&spec().image("iris:.hidden"), "image");
        assert!(err.rule.contains("tag"), "{err}");
        rejected(&spec().image("iris:"), "image");
        let long_tag = format!("iris:{}", "t".repeat(129));
        rejected(&spec().image(&long_tag), "image");
        validate_deployment(
            "iris",
            "default",
            &spec().image(&format!("iris:{}", "t".repeat(128))),
        )
        .unwrap();
    }

    #[test]
    fn image_digest_must_be_sha256_with_64_hex_digits() {
        let err = rejected(&spec().image("iris@sha256:abc"), "image");
        assert!(err.rule.contains("sha256"), "{err}");
        rejected(
            &spec().image("iris@md5:0123456789abcdef0123456789abcdef"),
            "image",
        );
    }

    #[test]
    fn image_registry_port_must_be_a_port() {
        let err = rejected(&spec().image("reg.example.com:99999/iris"), "image");
        assert!(err.rule.contains("port"), "{err}");
        rejected(&spec().image("reg_bad.example.com/iris"), "image");
    }

    // --- numbers ---

    #[test]
    fn replicas_must_be_at_most_1000() {
        let err = rejected(&spec().replicas(1001), "replicas");
        assert!(err.rule.contains("1000"), "{err}");
        validate_deployment("iris", "default", &spec().replicas(0)).unwrap();
        validate_deployment("iris", "default", &spec().replicas(1000)).unwrap();
    }

    #[test]
    fn port_must_be_between_1_and_65535() {
        let mut s = spec();
        s.port = 0;
        rejected(&s, "port");
        s.port = 65536;
        let err = rejected(&s, "port");
        assert!(err.rule.contains("65535"), "{err}");
    }

    // --- host and ingress class ---

    #[test]
    fn host_must_be_an_rfc1123_name() {
        let err = rejected(&spec().host("Iris.Example.com"), "host");
        assert!(err.rule.contains("DNS-1123"), "{err}");
        rejected(&spec().host("iris..example.com"), "host");
        rejected(&spec().host("https://iris.example.com"), "host");
        rejected(&spec().host("iris.example.com:8080"), "host");
        let long_label = format!("{}.example.com", "a".repeat(64));
        rejected(&spec().host(&long_label), "host");
        let too_long = vec!["abcdefghij"; 24].join(".");
        assert!(too_long.len() > 253);
        rejected(&spec().host(&too_long), "host");
    }

    #[test]
    fn host_may_be_a_wildcard_but_not_an_ip() {
        validate_deployment("iris", "default", &spec().host("*.models.example.com")).unwrap();
        rejected(&spec().host("iris.*.example.com"), "host");
        rejected(&spec().host("10.0.0.1"), "host");
    }

    #[test]
    fn ingress_class_must_be_a_dns1123_subdomain() {
        let mut s = spec();
        s.ingress_class = Some("Nginx Internal".into());
        rejected(&s, "ingress_class");
    }

    // --- env ---

    #[test]
    fn env_names_follow_kubernetes_rules() {
        validate_deployment(
            "iris",
            "default",
            &with_env(&["MODEL", "my.env-name", "_x", "-x"]),
        )
        .unwrap();
        let err = rejected(&with_env(&["OK", "1BAD"]), "env[1].name");
        assert!(err.value == "1BAD", "{err}");
        rejected(&with_env(&["HAS SPACE"]), "env[0].name");
        rejected(&with_env(&["A=B"]), "env[0].name");
        rejected(&with_env(&[""]), "env[0].name");
        rejected(&with_env(&[".."]), "env[0].name");
    }

    #[test]
    fn duplicate_env_names_are_rejected() {
        let err = rejected(&with_env(&["A", "B", "A"]), "env[2].name");
        assert!(err.rule.contains("more than once"), "{err}");
    }

    // --- resources ---

    #[test]
    fn quantities_of_every_shape_parse() {
        for (text, value) in [
            ("500m", 0.5),
            ("1.5", 1.5),
            ("2Gi", 2.0 * 1024f64.powi(3)),
            ("1e3", 1000.0),
            ("128M", 128e6),
            (".5", 0.5),
            ("+1", 1.0),
            ("1E-3", 0.001),
        ] {
            let parsed = parse_quantity(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!((parsed - value).abs() < 1e-9 * value.max(1.0), "{text}");
        }
    }

    #[test]
    fn cpu_must_be_a_quantity() {
        let mut s = spec();
        s.resources.cpu_request = Some("half".into());
        let err = rejected(&s, "resources.cpu_request");
        assert!(err.rule.contains("quantity"), "{err}");
        s.resources.cpu_request = None;
        s.resources.cpu_limit = Some("2 cores".into());
        rejected(&s, "resources.cpu_limit");
    }

    #[test]
    fn memory_must_be_a_quantity() {
        let mut s = spec();
        s.resources.memory_request = Some("2GB".into());
        rejected(&s, "resources.memory_request");
        s.resources.memory_request = None;
        s.resources.memory_limit = Some("1gi".into());
        rejected(&s, "resources.memory_limit");
    }

    #[test]
    fn quantities_must_not_be_negative() {
        let mut s = spec();
        s.resources.memory_limit = Some("-1Gi".into());
        let err = rejected(&s, "resources.memory_limit");
        assert!(err.rule.contains("negative"), "{err}");
    }

    #[test]
    fn request_must_not_exceed_limit() {
        let mut s = spec();
        s.resources.cpu_request = Some("1500m".into());
        s.resources.cpu_limit = Some("1".into());
        rejected(&s, "resources.cpu_request");
        s.resources.cpu_request = Some("1".into());
        s.resources.memory_request = Some("2Gi".into());
        s.resources.memory_limit = Some("2G".into());
        let err = rejected(&s, "resources.memory_request");
        assert!(err.rule.contains("limit"), "{err}");
        s.resources.memory_limit = Some("2048Mi".into());
        validate_deployment("iris", "default", &s).unwrap();
    }

    // --- proxy ---

    #[test]
    fn class_names_must_not_be_empty() {
        let mut s = spec();
        s.proxy.class_names = vec!["setosa".into(), " ".into()];
        rejected(&s, "proxy.class_names[1]");
    }

    #[test]
    fn the_proxy_protocol_is_v1_or_v2() {
        for bad in ["v3", "V2", "auto", " v1", "grpc"] {
            let mut s = spec();
            s.proxy.protocol = Some(bad.into());
            let err = rejected(&s, "proxy.protocol");
            assert!(err.rule.contains("auto, v1 or v2"), "{err}");
            assert_eq!(err.value, bad);
        }
        for good in [None, Some("v1"), Some("v2")] {
            let mut s = spec();
            s.proxy.protocol = good.map(Into::into);
            validate_deployment("iris", "default", &s).unwrap();
        }
    }

    #[test]
    fn query_logs_need_the_proxy() {
        let s = spec().proxy(false).query_log(true);
        let err = rejected(&s, "proxy.query_log");
        assert!(err.rule.contains("proxy.enabled"), "{err}");
        validate_deployment("iris", "default", &spec().proxy(true).query_log(true)).unwrap();
        validate_deployment("iris", "default", &spec().proxy(false).query_log(false)).unwrap();
    }

    // --- labels ---

    #[test]
    fn label_keys_follow_kubernetes_rules() {
        let mut s = spec();
        s.labels.insert("bad key".into(), "v".into());
        rejected(&s, "labels[bad key]");
        let mut s = spec();
        s.labels.insert("Bad_Prefix.com/x".into(), "v".into());
        let err = rejected(&s, "labels[Bad_Prefix.com/x]");
        assert!(err.rule.contains("prefix"), "{err}");
        let mut s = spec();
        s.labels.insert("k".repeat(64), "v".into());
        rejected(&s, &format!("labels[{}]", "k".repeat(64)));
    }

    #[test]
    fn label_values_follow_kubernetes_rules() {
        let mut s = spec();
        s.labels.insert("team".into(), "ml team".into());
        let err = rejected(&s, "labels[team]");
        assert_eq!(err.value, "ml team");
        let mut s = spec();
        s.labels.insert("team".into(), "v".repeat(64));
        rejected(&s, "labels[team]");
        let mut s = spec();
        s.labels.insert("empty-ok".into(), String::new());
        validate_deployment("iris", "default", &s).unwrap();
    }

    // --- sizes ---

    #[test]
    fn name_is_a_dns1035_label_because_it_names_a_service() {
        let err = rejected_named("1iris", "default", &spec(), "name");
        assert!(err.rule.contains("DNS-1035"), "{err}");
        let err = rejected_named(&"a".repeat(64), "default", &spec(), "name");
        assert!(
            err.rule.contains("DNS-1035") && err.rule.contains("63"),
            "{err}"
        );
        let err = rejected_named("iris.v1", "default", &spec(), "name");
        assert!(err.rule.contains("DNS-1035"), "{err}");
    }

    #[test]
    fn model_name_is_at_most_253_characters() {
        let mut s = spec();
        s.model_name = "m".repeat(MAX_MODEL_NAME_LEN);
        validate_deployment("iris", "default", &s).unwrap();
        s.model_name.push('m');
        let err = rejected(&s, "model_name");
        assert!(err.rule.contains("253"), "{err}");
    }

    fn with_values(values: &[usize]) -> DeploymentSpec {
        let mut s = spec();
        s.env = values
            .iter()
            .enumerate()
            .map(|(i, len)| EnvVar {
                name: format!("V{i}"),
                value: "x".repeat(*len),
            })
            .collect();
        s
    }

    #[test]
    fn an_env_value_is_at_most_32_kib() {
        validate_deployment("iris", "default", &with_values(&[1, MAX_ENV_VALUE_BYTES])).unwrap();
        let err = rejected(&with_values(&[1, MAX_ENV_VALUE_BYTES + 1]), "env[1].value");
        assert!(err.rule.contains("32 KiB"), "{err}");
        // Bytes count, not characters: 16,385 two-byte characters are 32,770 bytes.
        let mut s = spec();
        s.env = vec![EnvVar {
            name: "UTF8".into(),
            value: "é".repeat(MAX_ENV_VALUE_BYTES / 2 + 1),
        }];
        rejected(&s, "env[0].value");
    }

    #[test]
    fn at_most_1000_env_entries() {
        validate_deployment("iris", "default", &with_values(&[1; MAX_ENV_ENTRIES])).unwrap();
        let err = rejected(&with_values(&[1; MAX_ENV_ENTRIES + 1]), "env");
        assert!(err.rule.contains("1000"), "{err}");
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn a_whole_spec_is_at_most_256_kib_serialized() {
        // Eight values of 30 KiB fit; nine (270 KiB) do not, though each value is fine.
        validate_deployment("iris", "default", &with_values(&[30 * 1024; 8])).unwrap();
        let err = rejected(&with_values(&[30 * 1024; 9]), "spec");
        assert!(err.rule.contains("256 KiB"), "{err}");
        assert!(
            err.to_string().len() < 300,
            "the spec is not repeated: {err}"
        );
        // Labels and class names count too.
        let mut s = spec();
        s.proxy.class_names = (0..30_000).map(|i| format!("class-{i}")).collect();
        rejected(&s, "spec");
    }

    #[test]
    fn errors_never_repeat_a_huge_value() {
        let huge = "a".repeat(1 << 20);
        let check_of = |err: ValidationError, c: &str| {
            let text = err.to_string();
            assert!(text.len() < 600, "{} bytes: {}", text.len(), &text[..600]);
            assert!(
                text.contains(&c.repeat(64)),
                "starts with the value: {text}"
            );
            assert!(!text.contains(&c.repeat(65)), "cut after 64: {text}");
            assert!(text.contains("bytes)"), "says how long it was: {text}");
        };
        let check = |err: ValidationError| check_of(err, "a");
        let err = rejected(&with_values(&[1 << 20]), "env[0].value");
        assert!(err.to_string().contains("(1048576 bytes)"), "{err}");
        check_of(err, "x");
        check(rejected_named(&huge, "default", &spec(), "name"));
        check(rejected_named("iris", &huge, &spec(), "namespace"));
        check(rejected(&spec().image(&format!("iris:{huge}")), "image"));
        check(rejected(
            &spec().image(&huge.to_uppercase().to_lowercase()),
            "image",
        ));
        check(rejected(
            &spec().host(&format!("{huge}.example.com")),
            "host",
        ));
        let mut s = spec();
        s.model_name.clone_from(&huge);
        check(rejected(&s, "model_name"));
        let mut s = spec();
        s.labels.insert("team".into(), huge.clone());
        check(rejected(&s, "labels[team]"));
        // A huge key is the field name itself: cut there too.
        let mut s = spec();
        s.labels.insert(huge.clone(), "v".into());
        let err = validate_deployment("iris", "default", &s).unwrap_err();
        check(err);
        let mut s = spec();
        s.env = vec![EnvVar {
            name: format!("{huge}!"),
            value: String::new(),
        }];
        check(validate_deployment("iris", "default", &s).unwrap_err());
        // Short values are shown whole, multi-byte characters are never split.
        let err = rejected(&with_env(&["1BAD"]), "env[0].name");
        assert!(err.to_string().contains("\"1BAD\":"), "{err}");
        let mut s = spec();
        s.labels.insert("team".into(), "é".repeat(100));
        let text = rejected(&s, "labels[team]").to_string();
        assert!(
            text.contains(&"é".repeat(64)) && !text.contains(&"é".repeat(65)),
            "{text}"
        );
    }

    #[test]
    fn label_keys_and_values_have_kubernetes_lengths() {
        let mut s = spec();
        s.labels
            .insert(format!("{}/x", "p".repeat(254)), "v".into());
        let err = validate_deployment("iris", "default", &s).unwrap_err();
        assert!(err.rule.contains("253"), "{err}");
        let mut s = spec();
        s.labels.insert(
            format!("{}/{}", "p".repeat(63), "n".repeat(63)),
            "v".repeat(63),
        );
        validate_deployment("iris", "default", &s).unwrap();
        let mut s = spec();
        s.labels.insert("k".repeat(63), "v".repeat(64));
        let err = rejected(&s, &format!("labels[{}]", "k".repeat(63)));
        assert!(err.rule.contains("63"), "{err}");
    }

    #[test]
    fn the_agents_own_label_prefix_is_reserved() {
        let mut s = spec();
        s.labels
            .insert("deployer.ds.dev/owner".into(), "someone-else".into());
        let err = rejected(&s, "labels[deployer.ds.dev/owner]");
        assert!(err.rule.contains("reserved"), "{err}");
    }

    #[test]
    fn reserved_label_keys_are_rejected() {
        let mut s = spec();
        s.labels
            .insert("app.kubernetes.io/managed-by".into(), "me".into());
        let err = rejected(&s, "labels[app.kubernetes.io/managed-by]");
        assert!(err.rule.contains("reserved"), "{err}");
    }

    #[test]
    fn logs_options_name_the_flag_and_the_rule() {
        assert_eq!(logs_container(""), Ok("model"));
        assert_eq!(logs_container("proxy"), Ok("model-proxy"));
        assert_eq!(logs_container("model-proxy"), Ok("model-proxy"));
        let e = logs_container("sidecar").unwrap_err();
        assert_eq!(e.field, "container");
        assert!(e.to_string().contains("must be model or proxy"), "{e}");
        assert!(logs_window(Some(0), Some(1)).is_ok());
        assert_eq!(logs_window(Some(-1), None).unwrap_err().field, "tail");
        assert_eq!(logs_window(None, Some(0)).unwrap_err().field, "since");
    }
}
