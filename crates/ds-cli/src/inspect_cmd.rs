//! `ds deployment logs|describe`: what the deployment's pods say and how they are doing,
//! read by its deployer's agent and relayed by the gateway.

use super::client::{Control, request, status_error};
use super::history_cmd::{self, RevisionView};
use super::hook_cmd::{self, HookRunView};
use super::output::{self, DeploymentView, OutputFormat, print};
use super::{CliError, LogsArgs, SelectArgs};
use ds_core::proto;
use serde::Serialize;
use std::io::Write;

/// One log line as `-o json|yaml` prints it (one document per line).
#[derive(Serialize)]
struct LineView<'a> {
    pod: &'a str,
    container: &'a str,
    line: &'a str,
}

/// What `describe -o json|yaml` prints.
#[derive(Serialize)]
struct DescriptionView {
    deployment: DeploymentView,
    pods: Vec<PodView>,
    events: Vec<EventView>,
    /// Why pods and events are missing (no agent connected, the agent's error).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_error: Option<String>,
    /// Its most recent revisions, oldest first.
    history: Vec<RevisionView>,
    /// Its most recent hook runs, oldest first.
    hook_runs: Vec<HookRunView>,
    /// What its deployer's remapping replaced when it was created or promoted there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    remapped: Vec<RemappedView>,
}

/// One replacement of a deployer's remapping, as `-o json|yaml` shows it.
#[derive(Serialize)]
pub(crate) struct RemappedView {
    /// `env` or `secret`.
    pub kind: String,
    /// The variable's name (env) or the spec field naming the Secret.
    pub name: String,
    pub from: String,
    pub to: String,
}

impl From<&proto::Remapped> for RemappedView {
    fn from(r: &proto::Remapped) -> Self {
        Self {
            kind: r.kind.clone(),
            name: r.name.clone(),
            from: r.from.clone(),
            to: r.to.clone(),
        }
    }
}

impl std::fmt::Display for RemappedView {
    /// `env DB_CONN sql-dev → sql-prod`, `secret creds-dev → creds-prod (tls_secret)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == "env" {
            write!(f, "env {} {} → {}", self.name, self.from, self.to)
        } else {
            write!(
                f,
                "{} {} → {} ({})",
                self.kind, self.from, self.to, self.name
            )
        }
    }
}

/// Replacements as one line: `env DB_CONN sql-dev → sql-prod; secret …`.
pub(crate) fn remapped_line(remapped: &[RemappedView]) -> String {
    remapped
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Serialize)]
struct PodView {
    name: String,
    phase: String,
    ready: String,
    status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    restarts: u32,
    node: String,
    created_at: String,
}

#[derive(Serialize)]
struct EventView {
    #[serde(rename = "type")]
    kind: String,
    reason: String,
    object: String,
    message: String,
    count: u32,
    last_seen: String,
}

/// `ds deployment logs`: prints every line as `[pod/NAME/CONTAINER] line` (kubectl's
/// `--prefix`) until the gateway ends the stream, or with `-f` until Ctrl-C, which ends it
/// cleanly (exit 0).
pub async fn logs(
    control: &mut Control,
    url: &str,
    args: LogsArgs,
    format: OutputFormat,
) -> Result<(), CliError> {
    let since_seconds = args
        .since
        .map(|d| i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX));
    let req = proto::DeploymentLogsRequest {
        selector: Some(super::deployment_cmd::selector(&args.select)),
        container: args.container.clone(),
        follow: args.follow,
        tail_lines: args.tail,
        since_seconds,
        pod: args.pod.clone().unwrap_or_default(),
    };
    // One listener for the whole command: a Ctrl-C that arrives while lines are being
    // written (no listener polled then) is still seen; one made anew in each turn of the
    // loop would miss it, and the installed handler would swallow it.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // No call deadline: a followed log lasts as long as the user wants it.
    let opened = control.deployment_logs(tonic::Request::new(req));
    let mut stream = tokio::select! {
        r = opened => r.map_err(|s| status_error(s, url))?.into_inner(),
        _ = &mut ctrl_c => return Ok(()),
    };
    loop {
        let next = tokio::select! {
            m = stream.message() => m.map_err(|s| status_error(s, url))?,
            _ = &mut ctrl_c => return Ok(()),
        };
        let Some(batch) = next else { return Ok(()) };
        if !write_lines(&batch.lines, format)? {
            // stdout closed (`| head`): nothing more to show.
            return Ok(());
        }
    }
}

/// Writes a batch of lines; `false` once stdout is closed.
fn write_lines(lines: &[proto::LogLine], format: OutputFormat) -> Result<bool, CliError> {
    let mut out = std::io::stdout().lock();
    let mut result = Ok(());
    for l in lines {
        let view = LineView {
            pod: &l.pod,
            container: &l.container,
            line: &l.line,
        };
        let text = match format {
            // Lines have no wider or shorter form.
            OutputFormat::Table | OutputFormat::Wide | OutputFormat::Name => {
                format!("[pod/{}/{}] {}", l.pod, l.container, l.line)
            }
            OutputFormat::Json => {
                serde_json::to_string(&view).map_err(|e| CliError::Output(e.to_string()))?
            }
            OutputFormat::Yaml => format!(
                "---\n{}",
                serde_saphyr::to_string(&view).map_err(|e| CliError::Output(e.to_string()))?
            ),
        };
        result = writeln!(out, "{}", text.trim_end_matches('\n'));
        if result.is_err() {
            break;
        }
    }
    match result.and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Output(e.to_string())),
    }
}

/// `ds deployment describe`: `get`'s fields, then the pods and events the agent read.
pub async fn describe(
    control: &mut Control,
    url: &str,
    select: &SelectArgs,
    format: OutputFormat,
) -> Result<(), CliError> {
    let answer = control
        .describe_deployment(request(super::deployment_cmd::selector(select)))
        .await
        .map_err(|s| status_error(s, url))?
        .into_inner();
    let view = DeploymentView::from(&answer.view.unwrap_or_default());
    let cluster = answer.cluster.unwrap_or_default();
    let described = DescriptionView {
        deployment: view,
        pods: cluster.pods.into_iter().map(pod_view).collect(),
        events: cluster
            .events
            .into_iter()
            .map(|e| EventView {
                kind: e.r#type,
                reason: e.reason,
                object: e.object,
                message: e.message,
                count: e.count,
                last_seen: e.last_seen,
            })
            .collect(),
        cluster_error: (!answer.cluster_error.is_empty()).then_some(answer.cluster_error),
        history: answer.history.iter().map(RevisionView::from).collect(),
        hook_runs: answer.hook_runs.iter().map(HookRunView::from).collect(),
        remapped: answer.remapped.iter().map(RemappedView::from).collect(),
    };
    print(format, &described, || description_text(&described))
}

fn pod_view(p: proto::PodDescription) -> PodView {
    PodView {
        ready: format!("{}/{}", p.ready, p.containers),
        name: p.name,
        phase: p.phase,
        status: p.status,
        message: p.message,
        restarts: p.restarts,
        node: p.node,
        created_at: p.created_at,
    }
}

fn description_text(d: &DescriptionView) -> String {
    let mut out = output::deployment_fields(&d.deployment);
    if !d.remapped.is_empty() {
        out.push_str(&format!("Remapped: {}\n", remapped_line(&d.remapped)));
    }
    out.push_str("\nRecent revisions:\n");
    out.extend(
        history_cmd::table(&d.history)
            .lines()
            .map(|l| format!("  {l}\n")),
    );
    out.push_str("\nRecent hook runs:\n");
    out.extend(
        hook_cmd::runs_table(&d.hook_runs)
            .lines()
            .map(|l| format!("  {l}\n")),
    );
    out.push('\n');
    if let Some(why) = &d.cluster_error {
        out.push_str(&format!("Pods and events: unavailable: {why}\n"));
        return out;
    }
    out.push_str("Pods:\n");
    if d.pods.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .pods
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.ready.clone(),
                    p.status.clone(),
                    p.restarts.to_string(),
                    output::format_age(&p.created_at),
                    if p.node.is_empty() {
                        "<none>".into()
                    } else {
                        p.node.clone()
                    },
                ]
            })
            .collect();
        let table = output::table(
            &["NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE"],
            &rows,
        );
        out.extend(table.lines().map(|l| format!("  {l}\n")));
        for p in d.pods.iter().filter(|p| !p.message.is_empty()) {
            out.push_str(&format!("  {}: {}\n", p.name, p.message));
        }
    }
    out.push_str("\nEvents:\n");
    if d.events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .events
            .iter()
            .map(|e| {
                vec![
                    output::format_age(&e.last_seen),
                    e.kind.clone(),
                    e.reason.clone(),
                    e.object.clone(),
                    if e.count > 1 {
                        format!("{} (x{})", e.message, e.count)
                    } else {
                        e.message.clone()
                    },
                ]
            })
            .collect();
        let table = output::table(&["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], &rows);
        out.extend(table.lines().map(|l| format!("  {l}\n")));
    }
    out
}
