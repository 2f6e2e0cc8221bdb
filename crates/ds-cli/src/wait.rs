//! `--wait`: follows a deployment's status stream until the agent reports it Available
//! for the change just made, it Failed, its deployer has no connected agent (said as soon
//! as the gateway's view says so: nobody would ever report), or the timeout passes. A spinner with a replica
//! bar on a terminal, plain lines otherwise (CI logs); both on stderr, so stdout keeps
//! only the command's answer.

use super::CliError;
use super::client::{Control, status_error};
use chrono::{DateTime, Utc};
use ds_core::duration::format as format_duration;
use ds_core::proto;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;
use tokio::time::{Instant, timeout_at};
use tonic::Code;

/// Pause before re-opening a status stream the gateway closed or lost.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What one status report means for the wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The agent applied the change and the rollout is complete.
    Available,
    /// The agent reported this change as failed; the last error.
    Failed(String),
    /// The deployer has no agent connected; when one last reported (RFC 3339), if ever.
    NoAgent(Option<String>),
    /// Still rolling out (or the report is about an earlier revision).
    Waiting,
}

/// Decides on a report, given the change being waited for.
///
/// A report counts only when it is about this change: its applied revision reached the
/// change's revision, or (for a failure the agent could not tie to a revision, such as a
/// name already taken) it arrived after the change, or the change was the creation.
pub fn judge(
    view: &proto::DeploymentView,
    target_revision: u64,
    changed_at: Option<DateTime<Utc>>,
    is_create: bool,
) -> Verdict {
    let Some(status) = &view.status else {
        return Verdict::Waiting;
    };
    let applied = status.applied_revision >= target_revision;
    let reported_after_change = match (parse_time(&view.status_updated_at), changed_at) {
        (Some(reported), Some(changed)) => reported > changed,
        _ => false,
    };
    match proto::Phase::try_from(status.phase) {
        Ok(proto::Phase::Available) if applied => Verdict::Available,
        _ if !view.agent_connected => {
            Verdict::NoAgent(Some(view.agent_last_seen.clone()).filter(|t| !t.is_empty()))
        }
        Ok(proto::Phase::Failed) if applied || reported_after_change || is_create => {
            Verdict::Failed(
                match (status.last_error.is_empty(), status.reason.is_empty()) {
                    (false, true) => status.last_error.clone(),
                    // The pods' reason says what to fix; the error says what it led to.
                    (false, false) => format!("{}; {}", status.reason, status.last_error),
                    (true, false) => status.reason.clone(),
                    (true, true) => "the agent reported the rollout as Failed".to_string(),
                },
            )
        }
        _ => Verdict::Waiting,
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One line describing where the rollout stands.
fn progress_line(view: &proto::DeploymentView, target_revision: u64) -> String {
    let desired = desired_replicas(view);
    let status = view.status.clone().unwrap_or_default();
    let mut line = format!(
        "{}, {}/{} ready",
        super::output::phase_word(status.phase),
        status.ready_replicas,
        desired
    );
    if status.applied_revision < target_revision {
        line.push_str(&format!(
            " (waiting for the agent to apply revision {target_revision})"
        ));
    }
    if !status.last_error.is_empty() {
        line.push_str(&format!("; last error: {}", status.last_error));
    }
    if !status.reason.is_empty() {
        line.push_str(&format!("; {}", status.reason));
    }
    line
}

fn desired_replicas(view: &proto::DeploymentView) -> u32 {
    view.deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .map_or(0, |s| s.replicas)
}

/// Shows progress on a terminal (bar) or as plain lines when something changed.
enum Progress {
    Bar(ProgressBar),
    Lines { last: String },
}

impl Progress {
    fn new(name: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress::Lines {
                last: String::new(),
            };
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:24}] {pos}/{len} ready  {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress::Bar(bar)
    }

    fn update(&mut self, name: &str, view: &proto::DeploymentView, target_revision: u64) {
        match self {
            Progress::Bar(bar) => {
                let status = view.status.clone().unwrap_or_default();
                bar.set_length(u64::from(desired_replicas(view)));
                bar.set_position(u64::from(status.ready_replicas));
                let mut msg = super::output::phase_word(status.phase).to_string();
                if status.applied_revision < target_revision {
                    msg.push_str(&format!(", applying revision {target_revision}"));
                }
                if !status.last_error.is_empty() {
                    msg.push_str(&format!(": {}", status.last_error));
                }
                if !status.reason.is_empty() {
                    msg.push_str(&format!(": {}", status.reason));
                }
                bar.set_message(msg);
            }
            Progress::Lines { last } => {
                let line = progress_line(view, target_revision);
                if *last != line {
                    eprintln!("{name}: {line}");
                    *last = line;
                }
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Waits for the change that produced `start` (a create or update answer).
///
/// # Errors
/// [`CliError::RolloutFailed`] with the agent's last error, [`CliError::WaitTimeout`]
/// with the progress so far, or the gateway's refusal (e.g. the deployment was deleted).
pub async fn until_available(
    control: &mut Control,
    url: &str,
    start: &proto::DeploymentView,
    timeout: Duration,
) -> Result<(), CliError> {
    let deployment = start.deployment.clone().unwrap_or_default();
    let name = format!("{}/{}", deployment.namespace, deployment.name);
    let target = deployment.revision_of_last_change;
    let changed_at = parse_time(&deployment.updated_at);
    let is_create = deployment.created_at == deployment.updated_at;
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::new(&name);
    let mut latest = start.clone();
    let result = follow(control, url, &deployment.id, deadline, |view| {
        latest = view.clone();
        progress.update(&name, view, target);
        judge(view, target, changed_at, is_create)
    })
    .await;
    progress.finish();
    match result {
        Ok(Verdict::Available) => {
            let status = latest.status.clone().unwrap_or_default();
            eprintln!(
                "deployment {name} is available ({}/{} ready)",
                status.ready_replicas,
                desired_replicas(&latest)
            );
            Ok(())
        }
        Ok(Verdict::Failed(error)) => Err(CliError::RolloutFailed { name, error }),
        Ok(Verdict::NoAgent(last_seen)) => Err(CliError::NoAgent {
            deployer: latest.deployer_name.clone(),
            last_seen: last_seen.map_or_else(|| "never".to_string(), |t| format!("last seen {t}")),
        }),
        Ok(Verdict::Waiting) => Err(CliError::WaitTimeout {
            name,
            timeout: format_duration(timeout),
            progress: progress_line(&latest, target),
        }),
        Err(e) => Err(e),
    }
}

/// Reads status views until `judge` says Available or Failed; `Waiting` at the deadline.
/// A stream the gateway ends or loses is reopened: the first message after reopening is
/// the current view, so nothing is missed.
async fn follow(
    control: &mut Control,
    url: &str,
    id: &str,
    deadline: Instant,
    mut on_view: impl FnMut(&proto::DeploymentView) -> Verdict,
) -> Result<Verdict, CliError> {
    let selector = proto::GetDeploymentRequest {
        deployment: id.to_string(),
        ..Default::default()
    };
    loop {
        let opened = timeout_at(deadline, control.watch_deployment_status(selector.clone())).await;
        let mut stream = match opened {
            Err(_elapsed) => return Ok(Verdict::Waiting),
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if transient(&status) => {
                tokio::time::sleep_until(deadline.min(Instant::now() + RECONNECT_DELAY)).await;
                if Instant::now() >= deadline {
                    return Ok(Verdict::Waiting);
                }
                continue;
            }
            Ok(Err(status)) => return Err(status_error(status, url)),
        };
        loop {
            match timeout_at(deadline, stream.message()).await {
                Err(_elapsed) => return Ok(Verdict::Waiting),
                Ok(Ok(Some(view))) => match on_view(&view) {
                    Verdict::Waiting => {}
                    done => return Ok(done),
                },
                Ok(Ok(None)) => break,
                Ok(Err(status)) if transient(&status) => break,
                Ok(Err(status)) => return Err(status_error(status, url)),
            }
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + RECONNECT_DELAY)).await;
        if Instant::now() >= deadline {
            return Ok(Verdict::Waiting);
        }
    }
}

/// Errors after which reopening the stream may help (gateway restart, dropped link).
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(phase: proto::Phase, applied: u64, reported_at: &str) -> proto::DeploymentView {
        proto::DeploymentView {
            deployment: Some(proto::Deployment {
                id: "d1".into(),
                name: "iris".into(),
                namespace: "default".into(),
                revision_of_last_change: 7,
                spec: Some(proto::DeploymentSpec {
                    replicas: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(proto::DeploymentStatus {
                phase: phase as i32,
                ready_replicas: 1,
                applied_revision: applied,
                last_error: "image pull failed".into(),
                ..Default::default()
            }),
            status_updated_at: reported_at.into(),
            agent_connected: true,
            ..Default::default()
        }
    }

    fn at(text: &str) -> Option<DateTime<Utc>> {
        parse_time(text)
    }

    #[test]
    fn available_counts_only_for_the_awaited_revision() {
        let changed = at("2026-11-22T10:00:00Z");
        let old = view(proto::Phase::Available, 6, "2026-11-22T09:00:00Z");
        assert_eq!(judge(&old, 7, changed, false), Verdict::Waiting);
        let new = view(proto::Phase::Available, 7, "2026-11-22T10:00:05Z");
        assert_eq!(judge(&new, 7, changed, false), Verdict::Available);
    }

    #[test]
    fn a_stale_failure_is_not_this_changes_failure() {
        let changed = at("2026-11-22T10:00:00Z");
        let stale = view(proto::Phase::Failed, 6, "2026-11-22T09:00:00Z");
        assert_eq!(judge(&stale, 7, changed, false), Verdict::Waiting);
        let fresh = view(proto::Phase::Failed, 6, "2026-11-22T10:00:01Z");
        assert_eq!(
            judge(&fresh, 7, changed, false),
            Verdict::Failed("image pull failed".into())
        );
        // On a create every report is about this deployment.
        assert!(matches!(
            judge(&stale, 7, changed, true),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn no_connected_agent_ends_the_wait_unless_already_available() {
        let changed = at("2026-11-22T10:00:00Z");
        let mut v = view(proto::Phase::Unspecified, 0, "");
        v.agent_connected = false;
        assert_eq!(judge(&v, 7, changed, true), Verdict::NoAgent(None));
        v.agent_last_seen = "2026-11-22T09:00:00Z".into();
        v.status.as_mut().unwrap().phase = proto::Phase::Unknown as i32;
        assert_eq!(
            judge(&v, 7, changed, true),
            Verdict::NoAgent(Some("2026-11-22T09:00:00Z".into()))
        );
        let mut done = view(proto::Phase::Available, 7, "2026-11-22T10:00:05Z");
        done.agent_connected = false;
        assert_eq!(judge(&done, 7, changed, false), Verdict::Available);
    }

    #[test]
    fn a_failure_from_the_pods_gives_their_reason() {
        let mut v = view(proto::Phase::Failed, 7, "2026-11-22T10:00:05Z");
        let s = v.status.as_mut().unwrap();
        s.last_error.clear();
        s.reason = "ImagePullBackOff: pod iris-1: Back-off pulling image \"nope:1\"".into();
        assert_eq!(
            judge(&v, 7, at("2026-11-22T10:00:00Z"), true),
            Verdict::Failed(
                "ImagePullBackOff: pod iris-1: Back-off pulling image \"nope:1\"".into()
            )
        );
    }

    #[test]
    fn progress_lines_say_what_is_missing() {
        let v = view(proto::Phase::Progressing, 6, "");
        let line = progress_line(&v, 7);
        assert!(line.starts_with("Progressing, 1/3 ready"), "{line}");
        assert!(line.contains("revision 7"), "{line}");
        assert!(line.contains("image pull failed"), "{line}");
    }
}
