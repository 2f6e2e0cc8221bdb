//! Query logs: one JSON line per request, written by a background task off the request path.
//!
//! The request path only hands a [`QueryRecord`] (cheap: the captured bodies are
//! reference-counted `Bytes`) to a bounded queue with `try_send`; when the queue is full the
//! record is dropped and counted, so a slow disk never slows a model answer down.

use super::metrics::Metrics;
use bytes::Bytes;
use serde::Serialize;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where query-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryLogTarget {
    /// Standard output (the container log).
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

impl QueryLogTarget {
    /// `-` or `stdout` mean standard output; anything else is a file path.
    pub fn parse(value: &str) -> Self {
        match value {
            "-" | "stdout" => Self::Stdout,
            path => Self::File(PathBuf::from(path)),
        }
    }
}

/// A body prefix kept for the log, with whether the body was longer than the prefix.
#[derive(Debug, Default)]
pub(crate) struct BodySample {
    pub(crate) bytes: Bytes,
    pub(crate) truncated: bool,
    pub(crate) total: u64,
}

/// Everything one log line says, as captured on the request path.
#[derive(Debug)]
pub(crate) struct QueryRecord {
    pub(crate) time: SystemTime,
    pub(crate) request_id: Bytes,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) latency: Duration,
    pub(crate) error: Option<&'static str>,
    pub(crate) request: BodySample,
    pub(crate) response: BodySample,
    pub(crate) predictions: Option<Vec<String>>,
}

/// The JSON shape of a line; field names are the contract with the monitoring loop.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    deployment_id: &'a str,
    request_id: Cow<'a, str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    request_body: Cow<'a, str>,
    request_body_truncated: bool,
    request_bytes: u64,
    response_body: Cow<'a, str>,
    response_body_truncated: bool,
    response_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    predictions: Option<&'a [String]>,
}

/// Text of a body prefix. A prefix cut inside a multi-byte character loses that partial
/// character rather than ending in a replacement character; other invalid UTF-8 is
/// replaced (the log is for humans and monitoring, not for replaying bytes).
fn body_text(sample: &BodySample) -> Cow<'_, str> {
    match std::str::from_utf8(&sample.bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&sample.bytes[..e.valid_up_to()])
        }
        Err(_) => String::from_utf8_lossy(&sample.bytes),
    }
}

impl QueryRecord {
    fn write_json(&self, deployment_id: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let time = chrono::DateTime::<chrono::Utc>::from(self.time)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let line = Line {
            time,
            deployment_id,
            request_id: String::from_utf8_lossy(&self.request_id),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            latency_ms: self.latency.as_secs_f64() * 1000.0,
            error: self.error,
            request_body: body_text(&self.request),
            request_body_truncated: self.request.truncated,
            request_bytes: self.request.total,
            response_body: body_text(&self.response),
            response_body_truncated: self.response.truncated,
            response_bytes: self.response.total,
            predictions: self.predictions.as_deref(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.push(b'\n');
        Ok(())
    }
}

/// The request side of the queue.
#[derive(Debug, Clone)]
pub(crate) struct QueryLogSender {
    tx: mpsc::Sender<QueryRecord>,
}

impl QueryLogSender {
    /// Queues a record without waiting; returns false when it was dropped (queue full).
    pub(crate) fn send(&self, record: QueryRecord) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            // Closed only during shutdown, after the writer drained: nothing to count.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }
}

/// Opens the target and returns the queue's sender and the writer future, which runs until
/// `stop` fires and then writes what is still queued.
pub(crate) async fn start(
    target: &QueryLogTarget,
    capacity: usize,
    deployment_id: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<(
    QueryLogSender,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let out: Box<dyn AsyncWrite + Send + Unpin> = match target {
        QueryLogTarget::Stdout => Box::new(tokio::io::stdout()),
        QueryLogTarget::File(path) => Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await?,
        ),
    };
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let writer = write_lines(rx, BufWriter::new(out), deployment_id, metrics, stop);
    Ok((QueryLogSender { tx }, writer))
}

async fn write_lines(
    mut rx: mpsc::Receiver<QueryRecord>,
    mut out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    deployment_id: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let first = tokio::select! {
            record = rx.recv() => record,
            () = stop.cancelled() => {
                // Refuse new records, then write what is already queued.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        // Batch whatever is queued already into one write and one flush.
        let mut lines = 0u64;
        let mut next = Some(first);
        while let Some(record) = next {
            match record.write_json(&deployment_id, &mut buf) {
                Ok(()) => lines += 1,
                Err(error) => tracing::warn!(%error, "encoding a query-log line failed"),
            }
            next = if buf.len() < 1024 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let result = async {
            out.write_all(&buf).await?;
            out.flush().await
        }
        .await;
        buf.clear();
        match result {
            Ok(()) => metrics.query_log_written(lines),
            Err(error) => tracing::warn!(%error, lines, "writing query-log lines failed"),
        }
    }
    if let Err(error) = out.flush().await {
        tracing::warn!(%error, "flushing the query log failed");
    }
}
