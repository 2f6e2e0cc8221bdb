//! Query logs: one JSON line per request, written by a background task off the request path.
//!
//! The request path only hands a [`QueryRecord`] (body prefixes already copied, so a queued
//! record never pins a connection's read buffer) to a bounded queue with `try_send`; when the
//! queue is full the record is dropped and counted, so a slow disk never slows a model answer
//! down. A dedicated thread drains the queue on an interval, encodes and writes in batches:
//! blocking writes (a full pipe to the container log) stall only that thread.

use super::metrics::Metrics;
use bytes::Bytes;
use serde::Serialize;
use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime};

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
    tx: mpsc::SyncSender<QueryRecord>,
}

impl QueryLogSender {
    /// Queues a record without waiting; returns false when it was dropped (queue full).
    ///
    /// The writer polls the queue on an interval instead of sleeping on it, so a send
    /// never wakes a thread: the request path pays a few atomic operations, no syscall.
    pub(crate) fn send(&self, record: QueryRecord) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => true,
            Err(mpsc::TrySendError::Full(_)) => false,
            // Disconnected only during shutdown, after the writer drained: nothing to count.
            Err(mpsc::TrySendError::Disconnected(_)) => true,
        }
    }
}

/// The writer thread; [`QueryLogWriter::stop`] writes what is queued and ends it.
#[derive(Debug)]
pub(crate) struct QueryLogWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QueryLogWriter {
    /// Asks the writer to write what is queued and stop, without waiting for it.
    pub(crate) fn signal_stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// Writes what is queued, then stops the thread.
    pub(crate) async fn stop(mut self) {
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::warn!("the query-log writer thread failed");
            }
        }
    }
}

impl Drop for QueryLogWriter {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Opens the target and starts the writer thread, which drains the queue every
/// `interval` into one write.
pub(crate) async fn start(
    target: &QueryLogTarget,
    capacity: usize,
    interval: Duration,
    deployment_id: String,
    metrics: Arc<Metrics>,
) -> std::io::Result<(QueryLogSender, QueryLogWriter)> {
    let out: Box<dyn Write + Send> = match target {
        QueryLogTarget::Stdout => Box::new(std::io::stdout()),
        QueryLogTarget::File(path) => {
            let path = path.clone();
            // Opening can block (a FIFO waits for its reader): keep it off the runtime.
            let file = tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            })
            .await
            .map_err(std::io::Error::other)??;
            Box::new(file)
        }
    };
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ds-query-log".into())
        .spawn(move || write_lines(&rx, out, &deployment_id, &metrics, &thread_stop, interval))?;
    Ok((
        QueryLogSender { tx },
        QueryLogWriter {
            stop,
            thread: Some(thread),
        },
    ))
}

/// Batches up to this many bytes into one write.
const BATCH_BYTES: usize = 1024 * 1024;

fn write_lines(
    rx: &mpsc::Receiver<QueryRecord>,
    mut out: Box<dyn Write + Send>,
    deployment_id: &str,
    metrics: &Metrics,
    stop: &AtomicBool,
    interval: Duration,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut lines = 0u64;
    let mut flush = |buf: &mut Vec<u8>, lines: &mut u64| {
        if buf.is_empty() {
            return;
        }
        match out.write_all(buf).and_then(|()| out.flush()) {
            Ok(()) => metrics.query_log_written(*lines),
            Err(error) => tracing::warn!(%error, lines = *lines, "writing query-log lines failed"),
        }
        buf.clear();
        *lines = 0;
    };
    loop {
        // Read the flag before draining: a stop that lands during the drain gets one more
        // round, so nothing queued before `stop` is lost.
        let stopping = stop.load(Ordering::Acquire);
        let mut disconnected = false;
        loop {
            match rx.try_recv() {
                Ok(record) => {
                    match record.write_json(deployment_id, &mut buf) {
                        Ok(()) => lines += 1,
                        Err(error) => tracing::warn!(%error, "encoding a query-log line failed"),
                    }
                    if buf.len() >= BATCH_BYTES {
                        flush(&mut buf, &mut lines);
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        flush(&mut buf, &mut lines);
        if stopping || disconnected {
            return;
        }
        std::thread::park_timeout(interval);
    }
}
