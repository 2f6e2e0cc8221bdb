//! Pages of answers that may be larger than one gRPC message: a deployer's snapshot sent
//! as a sequence of `Snapshot` pages read in one consistent store read, and the page
//! tokens of ListDeployments. No answer depends on tonic's 4 MiB message limit.

use super::rpc::store_status;
use super::store::{DeploymentKey, SnapshotItem, Store};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ds_core::proto::{Deployment, Snapshot};
use prost::Message;
use std::future::Future;
use tokio::sync::mpsc;
use tonic::Status;

/// Most encoded bytes of deployments in one page: a quarter of the 4 MiB a client decodes
/// by default, and at least one deployment fits (a spec is at most 256 KiB).
pub const PAGE_BYTES: usize = 1024 * 1024;
/// Most deployments in one snapshot page, whatever their size.
pub const SNAPSHOT_PAGE_COUNT: usize = 1000;
/// ListDeployments' page size when the request names none.
pub const DEFAULT_LIST_PAGE: u32 = 500;
/// ListDeployments' largest page size.
pub const MAX_LIST_PAGE: u32 = 1000;
/// Rows a ListDeployments page reads first; later reads are sized by the room left.
pub const FIRST_LIST_BATCH: usize = 8;
/// Most rows a ListDeployments page reads at once.
const MAX_LIST_BATCH: usize = 256;

/// Deployments read ahead of the page being built: bounds what a snapshot holds in memory.
const READ_AHEAD: usize = 16;

/// Why a snapshot was not sent in full.
#[derive(Debug)]
pub enum SendError {
    /// The client went away; nothing more to do.
    Closed,
    /// Reading the store failed: tell the client.
    Failed(Status),
}

/// Sends deployer `deployer_id`'s snapshot as pages, each passed to `send` (which fails
/// when the client is gone); every page but the last has `complete` unset. Rows stream
/// from one read transaction, so memory stays at a few pages whatever the snapshot's size.
/// Returns the snapshot's revision.
pub async fn send_snapshot<F, Fut>(
    store: &dyn Store,
    deployer_id: &str,
    mut send: F,
) -> Result<u64, SendError>
where
    F: FnMut(Snapshot) -> Fut,
    Fut: Future<Output = Result<(), ()>>,
{
    let (items_tx, mut items) = mpsc::channel(READ_AHEAD);
    let read = store.stream_snapshot(deployer_id, items_tx);
    let send_full = &mut send;
    let pages = async move {
        let mut revision = None;
        let mut page: Vec<Deployment> = Vec::new();
        let mut bytes = 0;
        while let Some(item) = items.recv().await {
            let deployment: Deployment = match item {
                SnapshotItem::Revision(r) => {
                    revision = Some(r);
                    continue;
                }
                SnapshotItem::Deployment(d) => (*d).into(),
            };
            let len = deployment.encoded_len();
            if !page.is_empty() && (bytes + len > PAGE_BYTES || page.len() >= SNAPSHOT_PAGE_COUNT) {
                let full = Snapshot {
                    deployer_id: deployer_id.to_string(),
                    revision: revision.unwrap_or_default(),
                    deployments: std::mem::take(&mut page),
                    complete: false,
                };
                // Returning drops `items`: the store's read ends at its next row.
                send_full(full).await.map_err(|()| SendError::Closed)?;
                bytes = 0;
            }
            bytes += len;
            page.push(deployment);
        }
        Ok::<_, SendError>((revision, page))
    };
    let (read, pages) = tokio::join!(read, pages);
    let (revision, page) = pages?;
    read.map_err(|e| SendError::Failed(store_status(e)))?;
    // The reader sends the revision first, or fails (returned above).
    let revision = revision.ok_or_else(|| {
        SendError::Failed(Status::internal("snapshot read ended without a revision"))
    })?;
    let last = Snapshot {
        deployer_id: deployer_id.to_string(),
        revision,
        deployments: page,
        complete: true,
    };
    send(last).await.map_err(|()| SendError::Closed)?;
    Ok(revision)
}

/// The page token that continues after `key`: opaque to clients.
pub fn page_token(key: &DeploymentKey) -> String {
    let raw = format!("{}\n{}\n{}", key.deployer_id, key.namespace, key.name);
    URL_SAFE_NO_PAD.encode(raw)
}

/// How many rows to read next for a ListDeployments page with `room` bytes left, its
/// deployments `average` bytes each so far: enough to fill it, one more to overflow it.
pub fn next_list_batch(room: usize, average: usize) -> usize {
    (room / average.max(1) + 1).clamp(1, MAX_LIST_BATCH)
}

/// The key a page token continues after; `None` for an empty token.
pub fn parse_page_token(token: &str) -> Result<Option<DeploymentKey>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Status::invalid_argument(
            "page_token: not a token this gateway issued (pass next_page_token as it came)",
        )
    };
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let mut parts = raw.split('\n');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(deployer_id), Some(namespace), Some(name), None) => Ok(Some(DeploymentKey {
            deployer_id: deployer_id.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        })),
        _ => Err(invalid()),
    }
}

/// The page size a ListDeployments request asks for, within the gateway's bounds.
pub fn list_page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_LIST_PAGE,
        n => n.min(MAX_LIST_PAGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_garbage() {
        let key = DeploymentKey {
            deployer_id: "d-1".into(),
            namespace: "ns".into(),
            name: "llama".into(),
        };
        assert_eq!(parse_page_token(&page_token(&key)).unwrap(), Some(key));
        assert_eq!(parse_page_token("").unwrap(), None);
        let err = parse_page_token("not base64!").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("page_token:"));
        let two_parts = URL_SAFE_NO_PAD.encode("a\nb");
        assert!(parse_page_token(&two_parts).is_err());
    }

    #[test]
    fn list_batches_fill_the_room_left() {
        // Small deployments: the largest batch; large ones: what fits, plus one.
        assert_eq!(next_list_batch(PAGE_BYTES, 100), MAX_LIST_BATCH);
        assert_eq!(next_list_batch(PAGE_BYTES, 200 * 1024), 6);
        assert_eq!(next_list_batch(0, 200 * 1024), 1);
        assert_eq!(next_list_batch(10, 0), 11);
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(list_page_size(0), DEFAULT_LIST_PAGE);
        assert_eq!(list_page_size(7), 7);
        assert_eq!(list_page_size(1_000_000), MAX_LIST_PAGE);
    }
}
