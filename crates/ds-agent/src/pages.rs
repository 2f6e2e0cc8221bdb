//! Reassembles the snapshot the gateway sends as pages (on Watch and on List): only the
//! last page (`complete` set) of one consistent sequence makes a snapshot the agent may
//! prune from; a stream cut before it leaves nothing applied.

use super::held::Held;
use ds_core::{DeployedObject, proto};
use std::collections::HashMap;
use std::sync::Arc;

/// The deployments the agent already holds, by ID: a snapshot's unchanged deployments are
/// taken from here instead of being kept a second time.
pub type Known = Arc<HashMap<Arc<str>, Arc<Held>>>;

/// A snapshot as the agent applies it: its deployments already converted, page by page,
/// so that the pages' protobuf messages never accumulate (a restart with thousands of
/// deployments otherwise held them all, plus the vector they were gathered in, while the
/// converted map was being built).
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    /// The deployer the snapshot is of (empty from a gateway that does not say).
    pub deployer_id: String,
    /// The deployer revision it is complete at.
    pub revision: u64,
    /// Whether this is a complete snapshot (absences mean "not desired").
    pub complete: bool,
    /// Its deployments, in the gateway's order; a deployment without a deployer ID has
    /// `deployer_id` filled in.
    pub deployments: Vec<Arc<Held>>,
}

impl Assembled {
    fn empty(page: &proto::Snapshot) -> Self {
        Self {
            deployer_id: page.deployer_id.clone(),
            revision: page.revision,
            complete: false,
            deployments: Vec::new(),
        }
    }

    /// Converts and adds the deployments of `page`, consuming it. A deployment equal to
    /// one in `known` is the known one: a periodic List of thousands of unchanged
    /// deployments then costs a vector of pointers while it is assembled, not a second
    /// copy of every spec beside the one applied.
    fn add(&mut self, page: proto::Snapshot, known: Option<&Known>) {
        self.deployments.reserve(page.deployments.len());
        let owner: Arc<str> = self.deployer_id.as_str().into();
        for d in page.deployments {
            let held = Held::new(DeployedObject::from(d), &owner);
            let same = known
                .and_then(|k| k.get(&held.id))
                .filter(|k| ***k == held)
                .cloned();
            self.deployments
                .push(same.unwrap_or_else(|| Arc::new(held)));
        }
    }
}

impl From<proto::Snapshot> for Assembled {
    /// A snapshot sent as one message (a single page, or a test's).
    fn from(page: proto::Snapshot) -> Self {
        let mut whole = Self::empty(&page);
        whole.complete = page.complete;
        whole.add(page, None);
        whole
    }
}

/// What one page did to the snapshot being assembled.
#[derive(Debug, PartialEq)]
pub enum PageOutcome {
    /// More pages are due.
    Partial,
    /// The last page arrived: the whole snapshot, `complete` set.
    Complete(Assembled),
    /// The page belongs to another snapshot (revision or deployer differ) than the pages
    /// before it: what was assembled is dropped; the caller asks anew.
    Inconsistent { expected: u64, got: u64 },
}

/// The pages of one snapshot received so far.
#[derive(Debug, Default)]
pub struct SnapshotPages {
    pending: Option<Assembled>,
    known: Option<Known>,
}

impl SnapshotPages {
    /// Pages of a snapshot whose unchanged deployments are shared with `known`.
    pub fn reusing(known: Known) -> Self {
        Self {
            pending: None,
            known: Some(known),
        }
    }

    /// Whether pages arrived and the last one is still due.
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Adds a page.
    pub fn push(&mut self, page: proto::Snapshot) -> PageOutcome {
        let mut pending = match self.pending.take() {
            None => Assembled::empty(&page),
            Some(pending)
                if pending.revision != page.revision || pending.deployer_id != page.deployer_id =>
            {
                return PageOutcome::Inconsistent {
                    expected: pending.revision,
                    got: page.revision,
                };
            }
            Some(pending) => pending,
        };
        let complete = page.complete;
        pending.add(page, self.known.as_ref());
        if complete {
            pending.complete = true;
            // The caller applies it next, which takes the known map apart: not held here.
            self.known = None;
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

    fn ids(s: &Assembled) -> Vec<&str> {
        s.deployments.iter().map(|d| &*d.id).collect()
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

    #[test]
    fn unchanged_deployments_are_shared_with_what_is_known() {
        let PageOutcome::Complete(first) =
            SnapshotPages::default().push(page(5, &["a", "b"], true))
        else {
            panic!("one page");
        };
        let known: Known = Arc::new(
            first
                .deployments
                .iter()
                .map(|d| (d.id.clone(), d.clone()))
                .collect(),
        );
        let mut again = page(6, &["a", "b", "c"], true);
        again.deployments[1].revision_of_last_change = 6; // b changed since
        let mut pages = SnapshotPages::reusing(known.clone());
        let PageOutcome::Complete(second) = pages.push(again) else {
            panic!("one page");
        };
        assert!(
            Arc::ptr_eq(&second.deployments[0], &known["a"]),
            "a is shared"
        );
        assert!(!Arc::ptr_eq(&second.deployments[1], &known["b"]));
        assert_eq!(second.deployments[1].revision, 6, "b is the new one");
        assert_eq!(ids(&second), ["a", "b", "c"]);
        // Once complete the pages let go of the known map, which the caller takes apart next.
        assert_eq!(Arc::strong_count(&known), 1);
        assert!(!pages.in_progress());
    }
}
