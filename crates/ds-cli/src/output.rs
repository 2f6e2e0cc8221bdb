//! What the commands print: kubectl-style tables by default, or `-o json|yaml` of stable
//! view structs (not the wire types, so scripts survive protocol changes).

use super::CliError;
use chrono::{DateTime, Utc};
use ds_core::DeploymentSpec;
use ds_core::proto;
use serde::Serialize;
use std::io::Write;

/// `-o/--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// JSON, one document.
    Json,
    /// YAML, one document.
    Yaml,
    /// The table with more columns (deployers and deployments; others print their table).
    Wide,
    /// `KIND/NAME`, one per line (deployers and deployments; others print their table).
    Name,
}

impl OutputFormat {
    /// Whether a person reads it (hints on stderr make sense), not a script.
    pub fn is_human(self) -> bool {
        matches!(self, Self::Table | Self::Wide)
    }
}

// === printing ===

/// Prints `value` as JSON or YAML, or the text `table` builds.
///
/// # Errors
/// Serialization or stdout failures (a closed pipe is not one: `ds … | head` is fine).
pub fn print<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let text = match format {
        OutputFormat::Table | OutputFormat::Wide | OutputFormat::Name => table(),
        OutputFormat::Json => {
            serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))?
        }
        OutputFormat::Yaml => {
            serde_saphyr::to_string(value).map_err(|e| CliError::Output(e.to_string()))?
        }
    };
    print_text(&text)
}

/// Prints deployers or deployments: like [`print`], with `-o wide` and `-o name` too.
///
/// # Errors
/// As [`print`].
pub fn print_resource<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce() -> String,
    wide: impl FnOnce() -> String,
    names: impl FnOnce() -> String,
) -> Result<(), CliError> {
    match format {
        OutputFormat::Wide => print_text(&wide()),
        OutputFormat::Name => {
            let names = names();
            // No objects, no lines (not an empty one), as kubectl.
            if names.is_empty() {
                Ok(())
            } else {
                print_text(&names)
            }
        }
        _ => print(format, value, table),
    }
}

/// Writes `text` to stdout with exactly one trailing newline.
///
/// # Errors
/// stdout failures other than a closed pipe.
pub fn print_text(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let result = writeln!(out, "{}", text.trim_end_matches('\n')).and_then(|()| out.flush());
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Output(e.to_string()))
        }
        _ => Ok(()),
    }
}

/// Aligns columns kubectl-style: upper-case headers, three spaces between columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 3;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    }
    out
}

/// `Key:   value` lines, kubectl-describe style.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    pairs
        .iter()
        .map(|(k, v)| format!("{:width$}{v}\n", format!("{k}:")))
        .collect()
}

// === ages ===

/// The age of an RFC 3339 timestamp as kubectl shows it: `5s`, `3m`, `2h`, `4d`, `1y`;
/// `<unknown>` when empty or unparsable.
pub fn format_age(timestamp: &str) -> String {
    age_at(timestamp, Utc::now())
}

fn age_at(timestamp: &str, now: DateTime<Utc>) -> String {
    let Ok(then) = DateTime::parse_from_rfc3339(timestamp) else {
        return "<unknown>".to_string();
    };
    let secs = (now - then.with_timezone(&Utc)).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s if s < 365 * 86_400 => format!("{}d", s / 86_400),
        s => format!("{}y", s / (365 * 86_400)),
    }
}

// === views ===

fn none_if_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

/// A deployer as `-o json|yaml` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeployerView {
    pub id: String,
    pub name: String,
    /// `Online`, `Offline` or `Unknown` (never connected).
    pub status: &'static str,
    pub agent_version: Option<String>,
    pub cluster: Option<String>,
    /// The namespaces its agent is limited to; empty: cluster-wide (or not reported).
    pub agent_namespaces: Vec<String>,
    pub last_seen: Option<String>,
    pub created_at: String,
    pub deployments: u32,
    pub revision: u64,
    /// The groups with a role on it (`ds deployer get` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<super::teams_cmd::GrantView>,
    /// The lifecycle stage it is in.
    pub stage: String,
    /// Its remapping: env values and Secret names replaced in deployments created on or
    /// promoted to it. Left out when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remap: Option<RemapView>,
}

/// A deployer's remapping as `-o json|yaml` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RemapView {
    pub env: Vec<ds_core::remap::EnvRemap>,
    pub secrets: Vec<ds_core::remap::SecretRemap>,
}

/// A remapping as `ds deployer get` shows it: `env DB_CONN sql-dev → sql-prod; secret
/// creds-dev → creds-prod`, or `<none>`.
pub fn remap_text(remap: Option<&RemapView>) -> String {
    let Some(r) = remap else {
        return "<none>".to_string();
    };
    let env = r
        .env
        .iter()
        .map(|e| format!("env {} {} → {}", e.name, e.from, e.to));
    let secrets = r
        .secrets
        .iter()
        .map(|s| format!("secret {} → {}", s.from, s.to));
    let all: Vec<String> = env.chain(secrets).collect();
    if all.is_empty() {
        "<none>".to_string()
    } else {
        all.join("; ")
    }
}

impl From<&proto::Deployer> for DeployerView {
    fn from(d: &proto::Deployer) -> Self {
        let status = match proto::DeployerState::try_from(d.state) {
            Ok(proto::DeployerState::Online) => "Online",
            Ok(proto::DeployerState::Offline) => "Offline",
            _ => "Unknown",
        };
        Self {
            id: d.id.clone(),
            name: d.name.clone(),
            status,
            agent_version: none_if_empty(&d.agent_version),
            cluster: none_if_empty(&d.cluster),
            agent_namespaces: d.agent_namespaces.clone(),
            last_seen: none_if_empty(&d.last_seen),
            created_at: d.created_at.clone(),
            deployments: d.deployments,
            revision: d.revision,
            grants: d
                .grants
                .iter()
                .map(super::teams_cmd::GrantView::from)
                .collect(),
            stage: d.stage.clone(),
            remap: d.remap.clone().map(|r| {
                let r = ds_core::remap::Remap::from(r);
                RemapView {
                    env: r.env,
                    secrets: r.secrets,
                }
            }),
        }
    }
}

/// The `ds deployer ls` table.
pub fn deployers_table(deployers: &[DeployerView]) -> String {
    deployers_table_of(deployers, false)
}

/// The `ds deployer ls -o wide` table: also the cluster, the agent's namespaces, the
/// revision and the ID.
pub fn deployers_wide_table(deployers: &[DeployerView]) -> String {
    deployers_table_of(deployers, true)
}

/// `deployer/NAME` lines, as kubectl's `-o name`.
pub fn deployer_names(deployers: &[DeployerView]) -> String {
    deployers
        .iter()
        .map(|d| format!("deployer/{}\n", d.name))
        .collect()
}

fn deployers_table_of(deployers: &[DeployerView], wide: bool) -> String {
    let rows: Vec<Vec<String>> = deployers
        .iter()
        .map(|d| {
            let mut row = vec![
                d.name.clone(),
                d.stage.clone(),
                d.deployments.to_string(),
                d.status.to_string(),
                d.agent_version.clone().unwrap_or_else(|| "<none>".into()),
                d.last_seen
                    .as_deref()
                    .map_or_else(|| "<never>".into(), format_age),
                format_age(&d.created_at),
            ];
            if wide {
                row.extend([
                    or_none(d.cluster.as_deref().unwrap_or("")),
                    if d.agent_namespaces.is_empty() {
                        "<all>".to_string()
                    } else {
                        d.agent_namespaces.join(",")
                    },
                    d.revision.to_string(),
                    d.id.clone(),
                ]);
            }
            row
        })
        .collect();
    let mut headers = vec![
        "NAME",
        "STAGE",
        "DEPLOYMENTS",
        "STATUS",
        "VERSION",
        "LAST SEEN",
        "AGE",
    ];
    if wide {
        headers.extend(["CLUSTER", "NAMESPACES", "REVISION", "ID"]);
    }
    table(&headers, &rows)
}

/// The `ds deployer get` text.
pub fn deployer_fields(d: &DeployerView) -> String {
    fields(&[
        ("ID", d.id.clone()),
        ("Name", d.name.clone()),
        ("Stage", d.stage.clone()),
        ("Status", d.status.to_string()),
        ("Version", or_none(d.agent_version.as_deref().unwrap_or(""))),
        ("Cluster", or_none(d.cluster.as_deref().unwrap_or(""))),
        (
            "Namespaces",
            if d.agent_namespaces.is_empty() {
                "<all>".to_string()
            } else {
                d.agent_namespaces.join(",")
            },
        ),
        (
            "Last seen",
            d.last_seen.as_deref().map_or_else(
                || "<never>".to_string(),
                |t| format!("{t} ({} ago)", format_age(t)),
            ),
        ),
        ("Deployments", d.deployments.to_string()),
        ("Revision", d.revision.to_string()),
        ("Grants", super::teams_cmd::grants_text(&d.grants)),
        ("Remap", remap_text(d.remap.as_ref())),
        (
            "Created",
            format!("{} ({} ago)", d.created_at, format_age(&d.created_at)),
        ),
    ])
}

/// A deployment's reported status as `-o json|yaml` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// `Pending`, `Progressing`, `Available`, `Failed` or `Unknown` (no report yet, or
    /// the deployer is offline: see `reason`).
    pub phase: &'static str,
    pub ready_replicas: u32,
    pub available_replicas: u32,
    pub updated_replicas: u32,
    pub desired_replicas: u32,
    pub applied_revision: u64,
    pub endpoint: Option<String>,
    pub last_error: Option<String>,
    /// Why it is not available, from its pods (`ImagePullBackOff: pod …: …`), or
    /// "deployer offline since …" when the phase is Unknown for that.
    pub reason: Option<String>,
    /// Its pods as the agent last reported them.
    pub pods: Vec<PodView>,
    /// Whether the deployer has an agent connected.
    pub agent_connected: bool,
    /// When its agent last reported; absent if never.
    pub agent_last_seen: Option<String>,
    pub reported_at: Option<String>,
}

/// One pod of a deployment as `-o json|yaml` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    pub name: String,
    pub phase: String,
    pub ready: bool,
    pub restarts: u32,
    /// Per container: `name: state (reason: message)`.
    pub containers: Vec<String>,
    pub unschedulable: Option<String>,
}

impl From<&proto::PodStatus> for PodView {
    fn from(p: &proto::PodStatus) -> Self {
        let containers = p
            .containers
            .iter()
            .map(|c| {
                let mut line = format!("{}: {}", c.name, or_none(&c.state));
                match (c.reason.is_empty(), c.message.is_empty()) {
                    (true, _) => {}
                    (false, true) => line.push_str(&format!(" ({})", c.reason)),
                    (false, false) => line.push_str(&format!(" ({}: {})", c.reason, c.message)),
                }
                line
            })
            .collect();
        Self {
            name: p.name.clone(),
            phase: p.phase.clone(),
            ready: p.ready,
            restarts: p.restarts,
            containers,
            unschedulable: none_if_empty(&p.unschedulable),
        }
    }
}

/// The STATUS column: the phase, with the deployer's absence for Unknown and the
/// failure's reason word (`ImagePullBackOff`) for Failed.
pub fn status_column(st: &StatusView) -> String {
    match (st.phase, st.reason.as_deref()) {
        ("Unknown", Some(reason)) => format!("Unknown ({reason})"),
        ("Failed", Some(reason)) => {
            let word = reason.split(':').next().unwrap_or(reason);
            format!("Failed ({word})")
        }
        (phase, _) => phase.to_string(),
    }
}

/// A deployment as `-o json|yaml` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub deployer: String,
    pub deployer_id: String,
    /// Its deployer's lifecycle stage.
    pub stage: String,
    pub url: Option<String>,
    pub revision: u64,
    pub created_at: String,
    pub updated_at: String,
    pub spec: DeploymentSpec,
    pub status: StatusView,
    /// Only in `update`'s answer: whether it changed anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
}

/// The word for a phase.
pub fn phase_word(phase: i32) -> &'static str {
    match proto::Phase::try_from(phase) {
        Ok(proto::Phase::Pending) => "Pending",
        Ok(proto::Phase::Progressing) => "Progressing",
        Ok(proto::Phase::Available) => "Available",
        Ok(proto::Phase::Failed) => "Failed",
        // PHASE_UNKNOWN (deployer offline) and no report yet alike.
        _ => "Unknown",
    }
}

impl From<&proto::DeploymentView> for DeploymentView {
    fn from(v: &proto::DeploymentView) -> Self {
        let d = v.deployment.clone().unwrap_or_default();
        let spec = DeploymentSpec::from(d.spec.unwrap_or_default());
        let s = v.status.clone().unwrap_or_default();
        Self {
            id: d.id,
            name: d.name,
            namespace: d.namespace,
            deployer: v.deployer_name.clone(),
            deployer_id: d.deployer_id,
            stage: v.deployer_stage.clone(),
            url: none_if_empty(&v.url),
            revision: d.revision_of_last_change,
            created_at: d.created_at,
            updated_at: d.updated_at,
            status: StatusView {
                phase: phase_word(s.phase),
                ready_replicas: s.ready_replicas,
                available_replicas: s.available_replicas,
                updated_replicas: s.updated_replicas,
                desired_replicas: spec.replicas,
                applied_revision: s.applied_revision,
                endpoint: none_if_empty(&s.endpoint),
                last_error: none_if_empty(&s.last_error),
                reason: none_if_empty(&s.reason),
                pods: s.pods.iter().map(PodView::from).collect(),
                agent_connected: v.agent_connected,
                agent_last_seen: none_if_empty(&v.agent_last_seen),
                reported_at: none_if_empty(&v.status_updated_at),
            },
            spec,
            changed: v.changed,
        }
    }
}

/// The `ds deployment ls` table.
pub fn deployments_table(deployments: &[DeploymentView]) -> String {
    deployments_table_of(deployments, false)
}

/// The `ds deployment ls -o wide` table: also the URL, the revision and the ID.
pub fn deployments_wide_table(deployments: &[DeploymentView]) -> String {
    deployments_table_of(deployments, true)
}

/// `deployment/NAME` lines, as kubectl's `-o name`.
pub fn deployment_names(deployments: &[DeploymentView]) -> String {
    deployments
        .iter()
        .map(|d| format!("deployment/{}\n", d.name))
        .collect()
}

fn deployments_table_of(deployments: &[DeploymentView], wide: bool) -> String {
    let rows: Vec<Vec<String>> = deployments
        .iter()
        .map(|d| deployment_row(d, wide))
        .collect();
    table(&deployment_headers(wide), &rows)
}

/// The column headers of the deployments table.
pub fn deployment_headers(wide: bool) -> Vec<&'static str> {
    let mut headers = vec![
        "NAME",
        "NAMESPACE",
        "DEPLOYER",
        "STAGE",
        "IMAGE",
        "REPLICAS",
        "STATUS",
        "AGE",
    ];
    if wide {
        headers.extend(["URL", "REVISION", "ID"]);
    }
    headers
}

/// One row of the deployments table.
pub fn deployment_row(d: &DeploymentView, wide: bool) -> Vec<String> {
    let mut row = vec![
        d.name.clone(),
        d.namespace.clone(),
        d.deployer.clone(),
        or_none(&d.stage),
        d.spec.image.clone(),
        format!("{}/{}", d.status.ready_replicas, d.spec.replicas),
        status_column(&d.status),
        format_age(&d.created_at),
    ];
    if wide {
        row.extend([
            d.url.clone().unwrap_or_else(|| "<none>".into()),
            d.revision.to_string(),
            d.id.clone(),
        ]);
    }
    row
}

/// The short answer to `create`/`update`: ID, namespace, name, URL.
pub fn deployment_summary(d: &DeploymentView) -> String {
    fields(&[
        ("ID", d.id.clone()),
        ("Namespace", d.namespace.clone()),
        ("Name", d.name.clone()),
        ("URL", d.url.clone().unwrap_or_else(|| "<none>".into())),
    ])
}

/// The `ds deployment get` text: the spec, then the status the agent reported.
pub fn deployment_fields(d: &DeploymentView) -> String {
    let s = &d.spec;
    let r = &s.resources;
    let quantity = |req: &Option<String>, lim: &Option<String>| match (req, lim) {
        (None, None) => "<none>".to_string(),
        _ => format!(
            "request {}, limit {}",
            req.as_deref().unwrap_or("<none>"),
            lim.as_deref().unwrap_or("<none>")
        ),
    };
    let env = if s.env.is_empty() {
        "<none>".to_string()
    } else {
        s.env
            .iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let labels = if s.labels.is_empty() {
        "<none>".to_string()
    } else {
        s.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let proxy = if s.proxy.enabled {
        let mut details = Vec::new();
        if !s.proxy.class_names.is_empty() {
            details.push(format!("classes: {}", s.proxy.class_names.join(", ")));
        }
        if s.proxy.query_log {
            details.push("query logs to stdout".to_string());
        }
        if let Some(protocol) = &s.proxy.protocol {
            details.push(format!("protocol: {protocol}"));
        }
        if details.is_empty() {
            "on".to_string()
        } else {
            format!("on ({})", details.join("; "))
        }
    } else {
        "off".to_string()
    };
    let st = &d.status;
    let mut pairs = vec![
        ("ID", d.id.clone()),
        ("Name", d.name.clone()),
        ("Namespace", d.namespace.clone()),
        ("Deployer", format!("{} ({})", d.deployer, d.deployer_id)),
        ("Model", s.model_name.clone()),
        ("Image", s.image.clone()),
        ("Replicas", s.replicas.to_string()),
        ("Port", s.port.to_string()),
        ("Host", s.host.clone().unwrap_or_else(|| "<none>".into())),
        (
            "Ingress class",
            s.ingress_class
                .clone()
                .unwrap_or_else(|| "<cluster default>".into()),
        ),
        ("URL", d.url.clone().unwrap_or_else(|| "<none>".into())),
        ("Proxy", proxy),
        ("Env", env),
        ("CPU", quantity(&r.cpu_request, &r.cpu_limit)),
        ("Memory", quantity(&r.memory_request, &r.memory_limit)),
        ("Labels", labels),
    ];
    // The pod-level options, only those that are set.
    pairs.extend(super::pod_flags::shown(s));
    pairs.extend(super::storage_flags::shown(s));
    pairs.extend(super::scale_flags::shown(s));
    pairs.extend([
        ("Revision", d.revision.to_string()),
        (
            "Created",
            format!("{} ({} ago)", d.created_at, format_age(&d.created_at)),
        ),
    ]);
    let mut text = fields(&pairs);
    text.push_str("Status:\n");
    let status = fields(&[
        ("Phase", status_column(st)),
        (
            "Reason",
            st.reason.clone().unwrap_or_else(|| "<none>".into()),
        ),
        (
            "Replicas",
            format!(
                "{}/{} ready, {} available, {} updated",
                st.ready_replicas, st.desired_replicas, st.available_replicas, st.updated_replicas
            ),
        ),
        (
            "Applied revision",
            if st.applied_revision == 0 {
                "<none>".to_string()
            } else {
                st.applied_revision.to_string()
            },
        ),
        (
            "Endpoint",
            st.endpoint.clone().unwrap_or_else(|| "<none>".into()),
        ),
        (
            "Last error",
            st.last_error.clone().unwrap_or_else(|| "<none>".into()),
        ),
        (
            "Reported",
            st.reported_at.as_deref().map_or_else(
                || "<never>".to_string(),
                |t| format!("{} ago", format_age(t)),
            ),
        ),
    ]);
    for line in status.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    if !st.pods.is_empty() {
        text.push_str("Pods:\n");
        for p in &st.pods {
            let ready = if p.ready { "ready" } else { "not ready" };
            text.push_str(&format!(
                "  {}  {}, {ready}, {} restarts\n",
                p.name, p.phase, p.restarts
            ));
            if let Some(why) = &p.unschedulable {
                text.push_str(&format!("    unschedulable: {why}\n"));
            }
            for c in &p.containers {
                text.push_str(&format!("    {c}\n"));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(age_at("2026-11-22T11:59:55Z", now), "5s");
        assert_eq!(age_at("2026-11-22T11:57:00Z", now), "3m");
        assert_eq!(age_at("2026-11-22T10:00:00Z", now), "2h");
        assert_eq!(age_at("2026-11-18T12:00:00Z", now), "4d");
        assert_eq!(age_at("2024-11-22T12:00:00Z", now), "2y");
        // Clock skew never shows a negative age.
        assert_eq!(age_at("2026-11-22T12:00:30Z", now), "0s");
        assert_eq!(age_at("", now), "<unknown>");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["NAME", "STATUS"],
            &[
                vec!["iris".into(), "Online".into()],
                vec!["a-longer-name".into(), "Offline".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME            STATUS");
        assert_eq!(lines[1], "iris            Online");
        assert_eq!(lines[2], "a-longer-name   Offline");
    }

    #[test]
    fn a_deployment_without_status_reads_unknown() {
        let view = proto::DeploymentView {
            deployment: Some(proto::Deployment {
                id: "d1".into(),
                name: "iris".into(),
                namespace: "default".into(),
                spec: Some(proto::DeploymentSpec {
                    model_name: "iris".into(),
                    image: "tensorflow/serving:2.15.0".into(),
                    replicas: 3,
                    port: 8501,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            deployer_name: "prod".into(),
            ..Default::default()
        };
        let view = DeploymentView::from(&view);
        assert_eq!(view.status.phase, "Unknown");
        assert!(view.spec.proxy.enabled, "an absent proxy spec means on");
        let text = deployments_table(std::slice::from_ref(&view));
        assert!(text.contains("0/3"), "{text}");
        let get = deployment_fields(&view);
        assert!(get.contains("Phase:") && get.contains("Unknown"), "{get}");
    }

    #[test]
    fn failed_and_offline_deployments_say_why() {
        let mut view = proto::DeploymentView {
            deployment: Some(proto::Deployment {
                name: "iris".into(),
                spec: Some(proto::DeploymentSpec {
                    replicas: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(proto::DeploymentStatus {
                phase: proto::Phase::Failed as i32,
                reason: "ImagePullBackOff: pod iris-1: Back-off pulling image \"nope:1\"".into(),
                pods: vec![proto::PodStatus {
                    name: "iris-1".into(),
                    phase: "Pending".into(),
                    containers: vec![proto::ContainerState {
                        name: "model".into(),
                        state: "waiting".into(),
                        reason: "ImagePullBackOff".into(),
                        message: "Back-off pulling image \"nope:1\"".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            agent_connected: true,
            ..Default::default()
        };
        let v = DeploymentView::from(&view);
        let table = deployments_table(std::slice::from_ref(&v));
        assert!(table.contains("Failed (ImagePullBackOff)"), "{table}");
        let get = deployment_fields(&v);
        assert!(
            get.contains("Reason:") && get.contains("pod iris-1: Back-off pulling image"),
            "{get}"
        );
        assert!(
            get.contains("model: waiting (ImagePullBackOff: Back-off pulling image"),
            "{get}"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["status"]["pods"][0]["name"], "iris-1");

        let status = view.status.as_mut().unwrap();
        status.phase = proto::Phase::Unknown as i32;
        status.reason = "deployer offline since 2026-12-02T10:00:00Z".into();
        view.agent_connected = false;
        let v = DeploymentView::from(&view);
        let table = deployments_table(std::slice::from_ref(&v));
        assert!(
            table.contains("Unknown (deployer offline since 2026-12-02T10:00:00Z)"),
            "{table}"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["status"]["phase"], "Unknown");
        assert_eq!(json["status"]["agent_connected"], false);
    }

    #[test]
    fn the_proxy_line_and_json_show_query_logs_and_the_protocol() {
        let view = proto::DeploymentView {
            deployment: Some(proto::Deployment {
                spec: Some(proto::DeploymentSpec {
                    proxy: Some(proto::ProxySpec {
                        enabled: true,
                        class_names: vec!["setosa".into(), "versicolor".into()],
                        query_log: true,
                        protocol: "v2".into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let view = DeploymentView::from(&view);
        let get = deployment_fields(&view);
        let line = get
            .lines()
            .find(|l| l.starts_with("Proxy:"))
            .unwrap_or_else(|| panic!("no Proxy line in {get}"));
        assert!(
            line.ends_with("on (classes: setosa, versicolor; query logs to stdout; protocol: v2)"),
            "{line}"
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["spec"]["proxy"]["query_log"], true);
        assert_eq!(json["spec"]["proxy"]["protocol"], "v2");
    }
}

// === stages and the audit log ===

/// A stage as `-o json|yaml` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StageView {
    pub name: String,
    pub position: u32,
    /// `anyone` or `service-accounts`.
    pub deploy_by: &'static str,
    pub deployers: Vec<String>,
}

/// The word of a DeployBy.
pub fn deploy_by_word(value: i32) -> &'static str {
    match proto::DeployBy::try_from(value) {
        Ok(proto::DeployBy::ServiceAccounts) => "service-accounts",
        _ => "anyone",
    }
}

impl From<&proto::Stage> for StageView {
    fn from(s: &proto::Stage) -> Self {
        Self {
            name: s.name.clone(),
            position: s.position,
            deploy_by: deploy_by_word(s.deploy_by),
            deployers: s.deployers.clone(),
        }
    }
}

/// The `ds stage ls` table.
pub fn stages_table(stages: &[StageView]) -> String {
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|s| {
            vec![
                s.position.to_string(),
                s.name.clone(),
                s.deploy_by.to_string(),
                if s.deployers.is_empty() {
                    "<none>".to_string()
                } else {
                    s.deployers.join(",")
                },
            ]
        })
        .collect();
    table(&["POSITION", "NAME", "DEPLOY BY", "DEPLOYERS"], &rows)
}

/// The text of one stage.
pub fn stage_fields(s: &StageView) -> String {
    fields(&[
        ("Name", s.name.clone()),
        ("Position", s.position.to_string()),
        ("Deploy by", s.deploy_by.to_string()),
        ("Deployers", or_none(&s.deployers.join(","))),
    ])
}

/// An audit entry as `-o json|yaml` shows it: before and after as JSON values.
#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    pub id: u64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub object_kind: String,
    pub object: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    pub request_id: String,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&proto::AuditEntry> for AuditView {
    fn from(a: &proto::AuditEntry) -> Self {
        let json = |s: &str| {
            (!s.is_empty()).then(|| {
                serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.into()))
            })
        };
        Self {
            id: a.id,
            at: a.at.clone(),
            actor: a.actor.clone(),
            action: a.action.clone(),
            object_kind: a.object_kind.clone(),
            object: a.object.clone(),
            deployer_id: none_if_empty(&a.deployer_id),
            before: json(&a.before),
            after: json(&a.after),
            request_id: a.request_id.clone(),
            outcome: a.outcome.clone(),
            reason: none_if_empty(&a.reason),
        }
    }
}

/// The `ds audit ls` table.
pub fn audit_table(entries: &[AuditView]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|a| {
            vec![
                a.at.clone(),
                a.actor.clone(),
                a.action.clone(),
                format!("{}/{}", a.object_kind, a.object),
                a.outcome.clone(),
            ]
        })
        .collect();
    table(&["TIME", "ACTOR", "ACTION", "OBJECT", "OUTCOME"], &rows)
}
