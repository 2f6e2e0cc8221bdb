//! Group commit of `CreateDeployment`: creates that arrive while a batch is committing
//! wait for the next one, so a burst of creates costs one transaction (one WAL flush)
//! instead of one each. The back end supplies the batch insert and the publishing.

use super::rows::is_retryable;
use super::store::{Change, ChangeBy, DeploymentRecord, StoreError};
use std::sync::Arc;
use tokio::sync::oneshot;

/// One queued create: the row to insert (its revision is assigned in the batch) and
/// where its outcome goes once the batch is committed.
#[derive(Debug)]
pub struct CreateJob {
    pub record: DeploymentRecord,
    /// The spec as stored (JSON), encoded before queueing.
    pub json: String,
    /// Who creates it: recorded with its revision 1.
    pub by: ChangeBy,
    reply: oneshot::Sender<Result<DeploymentRecord, StoreError>>,
}

impl CreateJob {
    /// The refusal of a job whose deployer does not exist (any more).
    pub fn unknown_deployer(&self) -> StoreError {
        StoreError::NotFound(format!("deployer {}", self.record.deployer_id))
    }

    /// The refusal of a job whose name is taken in its namespace on its deployer.
    pub fn name_taken(&self) -> StoreError {
        let r = &self.record;
        StoreError::AlreadyExists(format!(
            "deployment {}/{} on this deployer",
            r.namespace, r.name
        ))
    }
}

/// Per job of a batch: its new revision, or why that one job was refused while the
/// others commit.
pub type BatchOutcome = Vec<Result<u64, StoreError>>;

/// What a back end does for a batch.
#[async_trait::async_trait]
pub trait CommitBatch: Sync {
    /// Inserts every job of the batch in one transaction, each at its deployer's next
    /// revision; an `Err` means nothing of the batch was committed.
    async fn insert_batch(&self, batch: &[CreateJob]) -> Result<BatchOutcome, StoreError>;
    /// Publishes a committed change (called in revision order, under the commit lock).
    async fn publish(&self, deployer_id: &str, change: Change);
}

/// The queue of creates waiting for a commit.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    pending: parking_lot::Mutex<Vec<CreateJob>>,
}

impl GroupCommit {
    /// Queues a create and returns once a batch with it committed (or failed). Whoever
    /// holds `lock` next commits everything queued meanwhile.
    pub(super) async fn create(
        &self,
        lock: &tokio::sync::Mutex<()>,
        backend: &impl CommitBatch,
        record: DeploymentRecord,
        json: String,
        by: ChangeBy,
    ) -> Result<DeploymentRecord, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.pending.lock().push(CreateJob {
            record,
            json,
            by,
            reply,
        });
        {
            // Ours may have been committed by the previous holder already, leaving
            // nothing to do here.
            let _held = lock.lock().await;
            self.commit_pending(backend).await;
        }
        outcome.await.unwrap_or_else(|_| {
            Err(StoreError::Database(sqlx::Error::Protocol(
                "the create was abandoned before its commit".into(),
            )))
        })
    }

    /// Commits every queued create in one batch, then publishes and answers them in
    /// revision order. The caller holds the commit lock.
    async fn commit_pending(&self, backend: &impl CommitBatch) {
        let batch = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return;
        }
        match backend.insert_batch(&batch).await {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let outcome = match outcome {
                        Ok(revision) => {
                            let mut record = job.record;
                            record.revision = revision;
                            // After the commit: watchers only see durable changes.
                            let change = Change::Upsert(Arc::new(record.clone()));
                            backend.publish(&record.deployer_id, change).await;
                            Ok(record)
                        }
                        Err(e) => Err(e),
                    };
                    // The caller may have gone away (RPC cancelled); the row stays created.
                    let _ = job.reply.send(outcome);
                }
            }
            Err(error) => {
                // Nothing of the batch was committed: every caller gets the failure, as a
                // conflict to retry when the database gave up on a race between replicas.
                let conflict = is_retryable(&error);
                let message = error.to_string();
                for job in batch {
                    let r = &job.record;
                    let _ = job.reply.send(Err(if conflict {
                        StoreError::Conflict(format!("deployment {}/{}", r.namespace, r.name))
                    } else {
                        StoreError::Database(sqlx::Error::Protocol(format!(
                            "group commit failed: {message}"
                        )))
                    }));
                }
            }
        }
    }
}
