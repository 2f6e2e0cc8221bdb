//! `ds hook add|ls|rm`: a deployer's pre- and post-deployment hooks, and how their runs
//! show in `ds deployment describe`.

use super::client::{self, request, status_error};
use super::output::{self, print};
use super::{CliError, HookArgs, HookCommand, HookPhaseArg, config};
use ds_core::proto;
use serde::Serialize;

/// A hook as `ls`, `add` and `rm` print it.
#[derive(Debug, Serialize)]
pub struct HookView {
    pub id: u64,
    pub deployer: String,
    pub deployer_id: String,
    pub phase: &'static str,
    /// `command` or `url`.
    pub kind: &'static str,
    /// The command name, or the URL's scheme and host.
    pub target: String,
    pub timeout: String,
    pub created_at: String,
    pub created_by: String,
}

fn phase_word(phase: i32) -> &'static str {
    match proto::HookPhase::try_from(phase) {
        Ok(proto::HookPhase::Pre) => "pre",
        Ok(proto::HookPhase::Post) => "post",
        _ => "unknown",
    }
}

impl From<&proto::Hook> for HookView {
    fn from(h: &proto::Hook) -> Self {
        let (kind, target) = match &h.target {
            Some(proto::hook::Target::Command(c)) => ("command", c.clone()),
            Some(proto::hook::Target::Url(u)) => ("url", u.clone()),
            None => ("unknown", String::new()),
        };
        Self {
            id: h.id,
            deployer: h.deployer_name.clone(),
            deployer_id: h.deployer_id.clone(),
            phase: phase_word(h.phase),
            kind,
            target,
            timeout: short_duration(h.timeout_ms),
            created_at: h.created_at.clone(),
            created_by: h.created_by.clone(),
        }
    }
}

/// `60s`, `2m`, `1m30s`, `250ms`.
fn short_duration(ms: u64) -> String {
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    match (ms / 60_000, (ms / 1000) % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// A hook run as `describe` shows it.
#[derive(Debug, Serialize)]
pub struct HookRunView {
    pub phase: &'static str,
    pub hook: u64,
    pub target: String,
    pub revision: u64,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub started_at: String,
    pub finished_at: String,
    pub actor: String,
    pub output_tail: String,
}

impl From<&proto::HookRun> for HookRunView {
    fn from(r: &proto::HookRun) -> Self {
        Self {
            phase: phase_word(r.phase),
            hook: r.hook_id,
            target: r.target.clone(),
            revision: r.revision,
            outcome: r.outcome.clone(),
            exit_code: r.exit_code,
            started_at: r.started_at.clone(),
            finished_at: r.finished_at.clone(),
            actor: r.actor.clone(),
            output_tail: r.output_tail.clone(),
        }
    }
}

/// The hooks table.
fn hooks_table(hooks: &[HookView]) -> String {
    let rows: Vec<Vec<String>> = hooks
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                h.deployer.clone(),
                h.phase.to_string(),
                format!("{} {}", h.kind, h.target),
                h.timeout.clone(),
                output::format_age(&h.created_at),
                h.created_by.clone(),
            ]
        })
        .collect();
    output::table(
        &["ID", "DEPLOYER", "PHASE", "RUNS", "TIMEOUT", "AGE", "BY"],
        &rows,
    )
}

/// The recent hook runs of `describe`: phase, hook, revision, outcome, when, and the
/// first line of the output's tail.
pub fn runs_table(runs: &[HookRunView]) -> String {
    if runs.is_empty() {
        return "<none>".to_string();
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let outcome = match r.exit_code {
                Some(code) if r.outcome != "ok" => format!("{} ({code})", r.outcome),
                _ => r.outcome.clone(),
            };
            vec![
                r.phase.to_string(),
                format!("{} {}", r.hook, r.target),
                r.revision.to_string(),
                outcome,
                output::format_age(&r.started_at),
                r.output_tail
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    output::table(
        &["PHASE", "HOOK", "REVISION", "OUTCOME", "WHEN", "OUTPUT"],
        &rows,
    )
}

pub async fn run(args: HookArgs) -> Result<(), CliError> {
    let format = args.global.output;
    if let HookCommand::Add {
        command: Some(name),
        ..
    } = &args.command
        && (name.is_empty() || name.contains('/'))
    {
        return Err(CliError::BadFlag {
            flag: "--command".into(),
            value: name.clone(),
            reason:
                "must be the file name of an executable in the gateway's --hooks-dir, without '/'"
                    .into(),
        });
    }
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let err = |status| status_error(status, &url);
    match args.command {
        HookCommand::Add {
            deployer,
            phase,
            command,
            url: hook_url,
            timeout,
        } => {
            let target = match (command, hook_url) {
                (Some(c), _) => proto::add_hook_request::Target::Command(c),
                (None, Some(u)) => proto::add_hook_request::Target::Url(u),
                (None, None) => {
                    return Err(CliError::BadFlag {
                        flag: "--command".into(),
                        value: String::new(),
                        reason: "give --command NAME or --url URL".into(),
                    });
                }
            };
            let phase = match phase {
                HookPhaseArg::Pre => proto::HookPhase::Pre,
                HookPhaseArg::Post => proto::HookPhase::Post,
            };
            let hook = control
                .add_hook(request(proto::AddHookRequest {
                    deployer,
                    phase: phase as i32,
                    target: Some(target),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                }))
                .await
                .map_err(err)?
                .into_inner();
            let view = HookView::from(&hook);
            print(format, &view, || hooks_table(std::slice::from_ref(&view)))?;
        }
        HookCommand::Ls { deployer } => {
            let hooks = control
                .list_hooks(request(proto::ListHooksRequest {
                    deployer: deployer.unwrap_or_default(),
                }))
                .await
                .map_err(err)?
                .into_inner()
                .hooks;
            let views: Vec<HookView> = hooks.iter().map(HookView::from).collect();
            if views.is_empty() && format.is_human() {
                eprintln!("No hooks found.");
                return Ok(());
            }
            print(format, &views, || hooks_table(&views))?;
        }
        HookCommand::Rm { id } => {
            let removed = control
                .remove_hook(request(proto::RemoveHookRequest { id }))
                .await
                .map_err(err)?
                .into_inner();
            let view = HookView::from(&removed);
            print(format, &view, || {
                format!("hook {} ({} {}) removed", view.id, view.phase, view.target)
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_short() {
        assert_eq!(short_duration(60_000), "1m");
        assert_eq!(short_duration(90_000), "1m30s");
        assert_eq!(short_duration(5_000), "5s");
        assert_eq!(short_duration(250), "250ms");
    }

    #[test]
    fn the_runs_table_shows_the_first_line_of_the_output() {
        let runs = [HookRunView {
            phase: "pre",
            hook: 3,
            target: "check.sh".into(),
            revision: 2,
            outcome: "failed".into(),
            exit_code: Some(1),
            started_at: String::new(),
            finished_at: String::new(),
            actor: "alice".into(),
            output_tail: "\nimage not allowed\nsecond line".into(),
        }];
        let table = runs_table(&runs);
        let row = table.lines().nth(1).unwrap();
        assert!(row.contains("3 check.sh"), "{table}");
        assert!(row.contains("failed (1)"), "{table}");
        assert!(row.ends_with("image not allowed"), "{table}");
        assert_eq!(runs_table(&[]), "<none>");
    }
}
