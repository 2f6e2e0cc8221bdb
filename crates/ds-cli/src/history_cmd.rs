//! `ds deployment history|diff|rollback`: a deployment's revisions, what changed between
//! two of them, and going back to one.

use super::client::{Control, request, status_error};
use super::deployment_cmd::selector;
use super::output::{self, OutputFormat, print};
use super::{CliError, DiffArgs, RollbackArgs, SelectArgs};
use ds_core::diff::{FieldChange, show, spec_changes};
use ds_core::proto;
use serde::Serialize;

/// One revision as `history -o json|yaml` (and `describe`) print it.
#[derive(Debug, Clone, Serialize)]
pub struct RevisionView {
    pub revision: u64,
    pub created_at: String,
    /// Who made it ("alice (key <API key ID>)"); empty when not known.
    pub by: String,
    pub change: String,
    /// What the deployment reached at it: Available, Failed, or empty.
    pub status: String,
    pub current: bool,
}

impl From<&proto::DeploymentRevision> for RevisionView {
    fn from(r: &proto::DeploymentRevision) -> Self {
        let status = match proto::Phase::try_from(r.phase) {
            Ok(proto::Phase::Available | proto::Phase::Failed) => {
                output::phase_word(r.phase).to_string()
            }
            _ => String::new(),
        };
        Self {
            revision: r.number,
            created_at: r.created_at.clone(),
            by: r.actor.clone(),
            change: r.change.clone(),
            status,
            current: r.current,
        }
    }
}

/// The revisions as a table: REVISION, WHEN, WHO, STATUS, CHANGE (the current one marked).
pub fn table(revisions: &[RevisionView]) -> String {
    let rows: Vec<Vec<String>> = revisions
        .iter()
        .map(|r| {
            vec![
                if r.current {
                    format!("{} (current)", r.revision)
                } else {
                    r.revision.to_string()
                },
                format!("{} ago", output::format_age(&r.created_at)),
                if r.by.is_empty() {
                    "<unknown>".into()
                } else {
                    r.by.clone()
                },
                if r.status.is_empty() {
                    "-".into()
                } else {
                    r.status.clone()
                },
                r.change.clone(),
            ]
        })
        .collect();
    output::table(&["REVISION", "WHEN", "WHO", "STATUS", "CHANGE"], &rows)
}

/// `ds deployment history NAME`.
pub async fn history(
    control: &mut Control,
    url: &str,
    select: &SelectArgs,
    format: OutputFormat,
) -> Result<(), CliError> {
    let answer = control
        .get_deployment_history(request(selector(select)))
        .await
        .map_err(|s| status_error(s, url))?
        .into_inner();
    let revisions: Vec<RevisionView> = answer.revisions.iter().map(RevisionView::from).collect();
    print(format, &revisions, || table(&revisions))
}

/// What `diff -o json|yaml` prints.
#[derive(Serialize)]
struct DiffView {
    deployment: String,
    from: u64,
    to: u64,
    changes: Vec<FieldChange>,
}

/// `ds deployment diff NAME --from N [--to M]`: the fields that differ, one per line.
pub async fn diff(
    control: &mut Control,
    url: &str,
    args: &DiffArgs,
    format: OutputFormat,
) -> Result<(), CliError> {
    let mut revision = async |number: u64| {
        let r = control
            .get_deployment_revision(request(proto::GetDeploymentRevisionRequest {
                selector: Some(selector(&args.select)),
                number,
            }))
            .await
            .map_err(|s| status_error(s, url))?
            .into_inner();
        Ok::<_, CliError>((
            r.number,
            ds_core::DeploymentSpec::from(r.spec.unwrap_or_default()),
        ))
    };
    let (from, old) = revision(args.from).await?;
    let (to, new) = revision(args.to.unwrap_or(0)).await?;
    let view = DiffView {
        deployment: args.select.deployment.clone(),
        from,
        to,
        changes: spec_changes(&old, &new),
    };
    print(format, &view, || {
        let mut out = format!(
            "deployment {}: revision {from} → revision {to}\n",
            view.deployment
        );
        if view.changes.is_empty() {
            out.push_str("  no difference\n");
        }
        for c in &view.changes {
            out.push_str(&format!(
                "  {}: {} → {}\n",
                c.path,
                show(c.old.as_ref()),
                show(c.new.as_ref())
            ));
        }
        out
    })
}

/// `ds deployment rollback NAME [--to N]`: the gateway makes a new revision equal to N.
pub async fn rollback(
    control: &mut Control,
    url: &str,
    args: &RollbackArgs,
) -> Result<proto::DeploymentView, CliError> {
    Ok(control
        .rollback_deployment(request(proto::RollbackDeploymentRequest {
            selector: Some(selector(&args.select)),
            to_revision: args.to.unwrap_or(0),
        }))
        .await
        .map_err(|s| status_error(s, url))?
        .into_inner())
}
