//! A deployment's revisions as the CLI shows them: each with what changed from the one
//! before it, who made it and what the deployment reached.

use super::convert::rfc3339;
use super::store::RevisionRecord;
use ds_core::diff::{spec_changes, summary};
use ds_core::proto::{DeploymentRevision, Phase};

/// The revisions of `DescribeDeployment`'s history.
pub(crate) const DESCRIBE_HISTORY: usize = 10;

/// `records` (oldest first, as the store keeps them) as the CLI shows them; the last is
/// the current one. Specs are left out: a history of large specs would not fit one answer.
pub(crate) fn to_proto(records: &[RevisionRecord]) -> Vec<DeploymentRevision> {
    let last = records.last().map(|r| r.number);
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let diff = match (i, r.number) {
                (_, 1) => "created".to_string(),
                (0, _) => "(the revisions before it are no longer kept)".to_string(),
                _ => {
                    let line = summary(&spec_changes(&records[i - 1].spec, &r.spec));
                    if line.is_empty() {
                        "no change".to_string()
                    } else {
                        line
                    }
                }
            };
            let change = match (r.number, r.note.is_empty()) {
                (_, true) => diff,
                // A first revision with a note was not a create (see the migration).
                (1, false) => r.note.clone(),
                _ => format!("{}: {diff}", r.note),
            };
            DeploymentRevision {
                number: r.number,
                created_at: rfc3339(r.created_at),
                actor: r.actor.clone(),
                change,
                phase: r.phase.unwrap_or(Phase::Unspecified as i32),
                deployer_revision: r.deployer_revision,
                current: Some(r.number) == last,
                spec: None,
            }
        })
        .collect()
}
