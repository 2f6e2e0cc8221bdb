//! Reassembles the snapshot the gateway sends as pages (on Watch and on List): only the
//! last page (`complete` set) of one consistent sequence makes a snapshot the agent may
//! prune from; a stream cut before it leaves nothing applied.

use ds_core::proto;

/// What one page did to the snapshot being assembled.
#[derive(Debug, PartialEq)]
pub enum PageOutcome {
    /// More pages are due.
    Partial,
    /// The last page arrived: the whole snapshot, `complete` set.
    Complete(proto::Snapshot),
    /// The page belongs to another snapshot (revision or deployer differ) than the pages
    /// before it: what was assembled is dropped; the caller asks anew.
    Inconsistent { expected: u64, got: u64 },
}

/// The pages of one snapshot received so far.
#[derive(Debug, Default)]
pub struct SnapshotPages {
    pending: Option<proto::Snapshot>,
}

impl SnapshotPages {
    /// Whether pages arrived and the last one is still due.
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Adds a page.
    pub fn push(&mut self, page: proto::Snapshot) -> PageOutcome {
        let Some(mut pending) = self.pending.take() else {
            if page.complete {
                return PageOutcome::Complete(page);
            }
            self.pending = Some(page);
            return PageOutcome::Partial;
        };
        if pending.revision != page.revision || pending.deployer_id != page.deployer_id {
            return PageOutcome::Inconsistent {
                expected: pending.revision,
                got: page.revision,
            };
        }
        pending.deployments.extend(page.deployments);
        if page.complete {
            pending.complete = true;
            PageOutcome::Complete(pending)
        } else {
            self.pending = Some(pending);
            PageOutcome::Partial
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(rev: u64, ids: &[&str], complete: bool) -> proto::Snapshot {
        proto::Snapshot {
            deployer_id: "dep".into(),
            revision: rev,
            deployments: ids
                .iter()
                .map(|id| proto::Deployment {
                    id: (*id).to_string(),
                    ..Default::default()
                })
                .collect(),
            complete,
        }
    }

    fn ids(s: &proto::Snapshot) -> Vec<&str> {
        s.deployments.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn pages_make_one_snapshot_only_at_the_last() {
        let mut pages = SnapshotPages::default();
        assert_eq!(
            pages.push(page(7, &["a", "b"], false)),
            PageOutcome::Partial
        );
        assert!(pages.in_progress());
        assert_eq!(pages.push(page(7, &["c"], false)), PageOutcome::Partial);
        let PageOutcome::Complete(s) = pages.push(page(7, &["d"], true)) else {
            panic!("the last page completes the snapshot");
        };
        assert_eq!(ids(&s), ["a", "b", "c", "d"]);
        assert!(s.complete);
        assert_eq!(s.revision, 7);
        assert!(!pages.in_progress());
        // A one-page snapshot (the common case) passes straight through.
        let PageOutcome::Complete(s) = pages.push(page(8, &[], true)) else {
            panic!("one complete page is a snapshot");
        };
        assert!(s.deployments.is_empty() && s.complete);
    }

    #[test]
    fn a_page_of_another_revision_drops_what_was_assembled() {
        let mut pages = SnapshotPages::default();
        pages.push(page(3, &["a"], false));
        assert_eq!(
            pages.push(page(4, &["b"], true)),
            PageOutcome::Inconsistent {
                expected: 3,
                got: 4
            }
        );
        assert!(!pages.in_progress(), "nothing partial is kept");
    }
}
