//! Reads a snapshot the gateway sends as pages (the first messages of Watch, or a List
//! stream) the way an agent must, checking the paging contract on the way: one revision
//! and deployer on every page, `complete` on the last page only, each message within
//! tonic's default 4 MiB decode limit.

use super::AgentService;
use ds_core::proto::{self, Snapshot, WatchEvent, watch_event};
use prost::Message;
use tonic::{Status, Streaming};

/// tonic's default limit on a decoded message: no page may need more.
pub const MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

/// A snapshot assembled from its pages, and how it came.
#[derive(Debug, Default)]
pub struct PagedSnapshot {
    /// Every page's deployments in order (unless read by ID only), `complete` set.
    pub snapshot: Snapshot,
    /// Every deployment's ID, in the order received.
    pub ids: Vec<String>,
    /// Drop each page's deployments once counted: a huge snapshot checked in little memory.
    pub ids_only: bool,
    /// How many pages carried it.
    pub pages: usize,
    /// The largest page's encoded size.
    pub largest_page: usize,
}

impl PagedSnapshot {
    /// Adds a page; `true` once it was the last.
    ///
    /// # Panics
    /// When the page breaks the paging contract.
    fn push(&mut self, page: Snapshot) -> bool {
        let len = page.encoded_len();
        assert!(
            len < MESSAGE_LIMIT,
            "page {} is {len} bytes: over the 4 MiB limit",
            self.pages
        );
        if self.pages > 0 {
            assert_eq!(
                page.revision, self.snapshot.revision,
                "one revision per snapshot"
            );
            assert_eq!(page.deployer_id, self.snapshot.deployer_id);
        } else {
            self.snapshot.revision = page.revision;
            self.snapshot.deployer_id.clone_from(&page.deployer_id);
        }
        self.pages += 1;
        self.largest_page = self.largest_page.max(len);
        self.ids
            .extend(page.deployments.iter().map(|d| d.id.clone()));
        if !self.ids_only {
            self.snapshot.deployments.extend(page.deployments);
        }
        self.snapshot.complete = page.complete;
        page.complete
    }
}

/// Calls List and reads every page. A stream that ends before its last page is an error.
///
/// # Errors
/// The call's or the stream's status.
///
/// # Panics
/// When a page breaks the paging contract.
pub async fn list_snapshot(agent: &mut AgentService) -> Result<PagedSnapshot, Status> {
    list_paged(agent, PagedSnapshot::default()).await
}

/// [`list_snapshot`] keeping only the IDs.
///
/// # Errors
/// The call's or the stream's status.
pub async fn list_ids(agent: &mut AgentService) -> Result<PagedSnapshot, Status> {
    let paged = PagedSnapshot {
        ids_only: true,
        ..PagedSnapshot::default()
    };
    list_paged(agent, paged).await
}

async fn list_paged(
    agent: &mut AgentService,
    mut paged: PagedSnapshot,
) -> Result<PagedSnapshot, Status> {
    let mut stream = agent.list(proto::ListRequest {}).await?.into_inner();
    while let Some(page) = stream.message().await? {
        if paged.push(page) {
            assert!(
                stream.message().await?.is_none(),
                "nothing follows the last page"
            );
            return Ok(paged);
        }
    }
    Err(Status::unavailable(
        "list stream ended before its last page",
    ))
}

/// Reads the snapshot a Watch stream opens with, leaving the stream at its first change;
/// with `ids_only`, the deployments are counted and dropped.
///
/// # Errors
/// The stream's status, or one for a stream ending before the last page.
///
/// # Panics
/// When a page breaks the paging contract or another event comes between pages.
pub async fn watch_snapshot(
    stream: &mut Streaming<WatchEvent>,
    ids_only: bool,
) -> Result<PagedSnapshot, Status> {
    let mut paged = PagedSnapshot {
        ids_only,
        ..PagedSnapshot::default()
    };
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(watch_event::Event::Snapshot(page)) => {
                if paged.push(page) {
                    return Ok(paged);
                }
            }
            other => panic!("only snapshot pages before the last one, got {other:?}"),
        }
    }
    Err(Status::unavailable(
        "watch stream ended before its last snapshot page",
    ))
}
