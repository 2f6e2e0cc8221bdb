//! Inspection (logs, describe): the gateway's questions to agents over the Inspect stream
//! each agent opens, and the routing of their answers back to the CLI call that asked.
//!
//! The gateway cannot dial into a cluster, so an agent keeps one Inspect stream open next
//! to its Watch; a question goes down it with a request ID and the agent's replies come
//! back tagged with that ID. A question is asked of the agent that connected most
//! recently (with leader election every replica can read). The links live in this
//! gateway process only: with several gateway replicas, the CLI must reach the replica
//! the agent is connected to, and is told so otherwise.

use ds_core::proto::{InspectReply, InspectRequest, inspect_reply, inspect_request};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tonic::Status;

/// Questions buffered per agent before the asker waits.
const REQUEST_BUFFER: usize = 16;
/// Replies buffered per question before the agent's stream waits for the asker.
const REPLY_BUFFER: usize = 64;

/// Why a question could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no agent of this deployer is connected to this gateway")]
    NoAgent,
}

/// The agents connected for inspection, by deployer.
#[derive(Default)]
pub struct Inspectors {
    links: Mutex<HashMap<String, Vec<Arc<AgentLink>>>>,
    next_id: AtomicU64,
}

/// One agent's open Inspect stream.
pub struct AgentLink {
    id: u64,
    deployer_id: String,
    tx: mpsc::Sender<Result<InspectRequest, Status>>,
    pending: Mutex<HashMap<String, mpsc::Sender<inspect_reply::Answer>>>,
}

/// The answers to one question. Dropping it cancels the question at the agent.
pub struct Asked {
    pub answers: mpsc::Receiver<inspect_reply::Answer>,
    link: Arc<AgentLink>,
    request_id: String,
}

impl Drop for Asked {
    fn drop(&mut self) {
        if self.link.pending.lock().remove(&self.request_id).is_some() {
            // Still open at the agent (a followed log): tell it to stop. A full buffer
            // means the agent is gone or swamped; its replies are dropped here anyway.
            let _ = self.link.tx.try_send(Ok(InspectRequest {
                request_id: self.request_id.clone(),
                query: Some(inspect_request::Query::Cancel(Default::default())),
            }));
        }
    }
}

impl Inspectors {
    /// Registers a new Inspect stream of `deployer_id`'s agent; the returned receiver
    /// is the stream's body. The link ends with [`Inspectors::remove`].
    pub fn add(
        &self,
        deployer_id: &str,
    ) -> (
        Arc<AgentLink>,
        mpsc::Receiver<Result<InspectRequest, Status>>,
    ) {
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        let link = Arc::new(AgentLink {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            deployer_id: deployer_id.to_string(),
            tx,
            pending: Mutex::default(),
        });
        self.links
            .lock()
            .entry(deployer_id.to_string())
            .or_default()
            .push(link.clone());
        (link, rx)
    }

    /// Ends a link: its open questions see their answers end.
    pub fn remove(&self, link: &AgentLink) {
        let mut links = self.links.lock();
        if let Some(list) = links.get_mut(&link.deployer_id) {
            list.retain(|l| l.id != link.id);
            if list.is_empty() {
                links.remove(&link.deployer_id);
            }
        }
        link.pending.lock().clear();
    }

    /// Asks the deployer's most recently connected agent.
    ///
    /// # Errors
    /// [`InspectError::NoAgent`] when none is connected to this gateway.
    pub async fn ask(
        &self,
        deployer_id: &str,
        query: inspect_request::Query,
    ) -> Result<Asked, InspectError> {
        let link = self
            .links
            .lock()
            .get(deployer_id)
            .and_then(|l| l.last().cloned())
            .ok_or(InspectError::NoAgent)?;
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, answers) = mpsc::channel(REPLY_BUFFER);
        link.pending.lock().insert(request_id.clone(), tx);
        let asked = Asked {
            answers,
            link: link.clone(),
            request_id: request_id.clone(),
        };
        let request = InspectRequest {
            request_id,
            query: Some(query),
        };
        if link.tx.send(Ok(request)).await.is_err() {
            // The stream closed meanwhile: the answers end at once.
            link.pending.lock().clear();
        }
        Ok(asked)
    }
}

impl AgentLink {
    /// Hands one reply to the question it answers; the last reply (`end`, `error`, or a
    /// description) closes the question. Replies to cancelled questions are dropped.
    pub async fn deliver(&self, reply: InspectReply) {
        let Some(answer) = reply.answer else { return };
        let last = !matches!(answer, inspect_reply::Answer::Lines(_));
        let tx = {
            let mut pending = self.pending.lock();
            if last {
                pending.remove(&reply.request_id)
            } else {
                pending.get(&reply.request_id).cloned()
            }
        };
        if let Some(tx) = tx {
            // A slow reader holds up this agent's replies rather than losing lines.
            let _ = tx.send(answer).await;
        }
    }

    /// Ends the stream with `status` (the token became invalid, the gateway stops).
    pub async fn close(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }
}
