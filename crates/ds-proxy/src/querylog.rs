//! Query logs: one JSON line per request, written by a background thread off the request path.
//!
//! A worker thread formats each line into a batch of its own (the record's body prefixes are
//! still in its cache, and nothing it allocated is freed by another thread) and hands whole
//! batches to the writer thread, at most an interval late. The queue is bounded in lines:
//! past the bound a line is dropped and counted, so a slow disk never slows a model answer
//! down; blocking writes (a full pipe to the container log) stall only the writer thread.

use super::classes::ClassNames;
use super::metrics::Metrics;
use parking_lot::Mutex;
use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

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
    pub(crate) bytes: Vec<u8>,
    pub(crate) truncated: bool,
    pub(crate) total: u64,
}

/// Everything one log line says, as captured on the request path.
#[derive(Debug)]
pub(crate) struct QueryRecord {
    pub(crate) time: SystemTime,
    pub(crate) request_id: http::HeaderValue,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) latency: Duration,
    pub(crate) error: Option<&'static str>,
    pub(crate) request: BodySample,
    pub(crate) response: BodySample,
    /// Predicted class indices (named by the writer, off the request path).
    pub(crate) predictions: Option<Vec<usize>>,
}

/// The JSON shape of a line; field names are the contract with the monitoring loop. Lines
/// are written by [`QueryRecord::write_json`]; this is the reference it is tested against.
#[cfg(test)]
#[derive(serde::Serialize)]
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

/// The writer's formatting state: the date and time to the second, formatted once per
/// second rather than once per line.
#[derive(Default)]
struct Clock {
    second: u64,
    text: String,
}

impl Clock {
    /// RFC 3339 in UTC with milliseconds, as `2026-12-01T14:10:03.123Z`.
    fn push(&mut self, out: &mut Vec<u8>, time: SystemTime) {
        let since_epoch = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since_epoch.as_secs();
        if self.text.is_empty() || second != self.second {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            self.text = chrono::DateTime::<chrono::Utc>::from(whole)
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string();
            self.second = second;
        }
        out.extend_from_slice(self.text.as_bytes());
        let millis = since_epoch.subsec_millis();
        out.extend_from_slice(&[
            b'.',
            b'0' + u8::try_from(millis / 100).unwrap_or(0),
            b'0' + u8::try_from(millis / 10 % 10).unwrap_or(0),
            b'0' + u8::try_from(millis % 10).unwrap_or(0),
            b'Z',
        ]);
    }
}

/// A JSON string. Escapes what JSON requires (quote, backslash, control characters) and
/// nothing else, copying the runs in between whole: bodies are most of a line, and
/// serde_json's byte-at-a-time writer was half of the writer's time. JSON bodies are full
/// of quotes, so the next byte to escape is found eight bytes at a time and jumped to.
fn push_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `run`: the first byte not copied yet; `i`: where the search goes on.
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let at = match bytes.get(i..i + 8) {
            Some(word) => {
                let mask = escape_mask(u64::from_le_bytes(word.try_into().unwrap_or([0; 8])));
                if mask == 0 {
                    i += 8;
                    continue;
                }
                i + (mask.trailing_zeros() / 8) as usize
            }
            None => match bytes[i..]
                .iter()
                .position(|&b| matches!(b, b'"' | b'\\' | 0..=0x1f))
            {
                Some(offset) => i + offset,
                None => break,
            },
        };
        out.extend_from_slice(&bytes[run..at]);
        push_escape(out, bytes[at]);
        i = at + 1;
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// One byte that JSON requires escaped, escaped as serde_json does.
fn push_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short: &[u8] = match byte {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        _ => {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
            return;
        }
    };
    out.extend_from_slice(short);
}

/// Marks the eight bytes of `word` (little-endian) that are below 0x20, a quote or a
/// backslash: the top bit of each such byte. Bit tricks from "Bit Twiddling Hacks" (a byte
/// is zero, or less than n, iff the borrow reaches its top bit). A borrow can mark bytes
/// above a true match too, never below one, so the lowest mark is exactly the first byte
/// to escape; only it is used.
fn escape_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
        | zero(word ^ (ONES * u64::from(b'"')))
        | zero(word ^ (ONES * u64::from(b'\\')))
}

fn push_field(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn push_bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

impl QueryRecord {
    /// Appends the record as one JSON line (the fields of [`Line`], in its order).
    fn write_json(
        &self,
        deployment_id: &str,
        classes: &ClassNames,
        clock: &mut Clock,
        out: &mut Vec<u8>,
    ) {
        let mut numbers = itoa::Buffer::new();
        // Room for the whole line up front: one growth check instead of one per field.
        out.reserve(384 + self.path.len() + self.request.bytes.len() + self.response.bytes.len());
        out.extend_from_slice(b"{\"time\":\"");
        clock.push(out, self.time);
        out.push(b'"');
        push_field(out, "deployment_id");
        push_str(out, deployment_id);
        push_field(out, "request_id");
        match self.request_id.to_str() {
            Ok(id) => push_str(out, id),
            Err(_) => push_str(out, &String::from_utf8_lossy(self.request_id.as_bytes())),
        }
        push_field(out, "method");
        push_str(out, self.method.as_str());
        push_field(out, "path");
        push_str(out, &self.path);
        push_field(out, "status");
        out.extend_from_slice(numbers.format(self.status).as_bytes());
        push_field(out, "latency_ms");
        // Milliseconds to the microsecond, written as digits (a float formatter cost more
        // than the rest of the numbers of a line together).
        let micros = self.latency.as_micros();
        out.extend_from_slice(numbers.format(micros / 1000).as_bytes());
        let fraction = u16::try_from(micros % 1000).unwrap_or(0);
        out.extend_from_slice(&[
            b'.',
            b'0' + u8::try_from(fraction / 100).unwrap_or(0),
            b'0' + u8::try_from(fraction / 10 % 10).unwrap_or(0),
            b'0' + u8::try_from(fraction % 10).unwrap_or(0),
        ]);
        if let Some(error) = self.error {
            push_field(out, "error");
            push_str(out, error);
        }
        for (body, truncated, total, sample) in [
            (
                "request_body",
                "request_body_truncated",
                "request_bytes",
                &self.request,
            ),
            (
                "response_body",
                "response_body_truncated",
                "response_bytes",
                &self.response,
            ),
        ] {
            push_field(out, body);
            push_str(out, &body_text(sample));
            push_field(out, truncated);
            push_bool(out, sample.truncated);
            push_field(out, total);
            out.extend_from_slice(numbers.format(sample.total).as_bytes());
        }
        if let Some(predictions) = &self.predictions {
            push_field(out, "predictions");
            out.push(b'[');
            for (n, &index) in predictions.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                push_str(out, &classes.name(index));
            }
            out.push(b']');
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Lines handed to the writer in one piece once a thread's batch reaches this size.
const BATCH_BYTES: usize = 64 * 1024;

/// Lines formatted by one thread, handed to the writer in one piece.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: usize,
}

/// What goes to the writer thread.
enum ToWriter {
    Lines(Batch),
    /// Write what came before, then end.
    Stop,
}

/// What the senders and the writer of one proxy share.
#[derive(Default)]
struct Shared {
    /// Lines formatted and not yet written, in batches being filled or handed over; the
    /// writer takes written lines off.
    queued: AtomicUsize,
    /// Emptied batch buffers the writer gives back, so a thread starting a batch does not
    /// allocate (and fault in) a fresh one.
    spare: Mutex<Vec<Vec<u8>>>,
}

/// What the senders of one proxy share.
struct Queue {
    tx: mpsc::Sender<ToWriter>,
    shared: Arc<Shared>,
    capacity: usize,
    deployment_id: String,
    classes: ClassNames,
    interval: Duration,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Hands a batch to the writer; a batch the writer can no longer take (shutdown) had
    /// its lines counted as queued, so they are taken off.
    fn hand_over(&self, batch: Batch) {
        let lines = batch.lines;
        if self.tx.send(ToWriter::Lines(batch)).is_err() {
            self.shared.queued.fetch_sub(lines, Ordering::AcqRel);
        }
    }

    /// Appends the record's line, with this proxy's deployment ID and class names.
    fn format(&self, record: &QueryRecord, clock: &mut Clock, out: &mut Vec<u8>) {
        record.write_json(&self.deployment_id, &self.classes, clock, out);
    }

    /// A batch is handed over when it is big, or holds a good part of the queue's lines
    /// (a small queue must not sit in one thread's batch while others drop lines).
    fn full(&self, batch: &Batch) -> bool {
        batch.bytes.len() >= BATCH_BYTES || batch.lines * 8 >= self.capacity
    }

    fn fresh_buffer(&self) -> Vec<u8> {
        let spare = self.shared.spare.lock().pop();
        spare.unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES + 16 * 1024))
    }
}

/// The batch being filled on a worker thread (see [`QueryLogSender::attach`]).
struct Local {
    queue: Arc<Queue>,
    batch: Batch,
    clock: Clock,
    /// Told when a batch gets its first line, so the thread's flusher only wakes when
    /// there is something to hand over.
    started: Arc<Notify>,
}

impl Local {
    fn flush(&mut self) {
        if self.batch.lines > 0 {
            let fresh = Batch {
                bytes: self.queue.fresh_buffer(),
                lines: 0,
            };
            self.queue
                .hand_over(std::mem::replace(&mut self.batch, fresh));
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// The request side of the queue.
///
/// A line is formatted where the request was served, into that worker thread's batch, and
/// whole batches go to the writer thread: a record never crosses threads, so its body
/// copies are freed where they were allocated and read while still in that core's cache,
/// and the writer only writes.
#[derive(Debug, Clone)]
pub(crate) struct QueryLogSender {
    queue: Arc<Queue>,
}

impl QueryLogSender {
    /// Logs a record without waiting; returns false when it was dropped (queue full).
    /// No syscall unless a batch is handed over (once per [`BATCH_BYTES`] or per interval).
    pub(crate) fn send(&self, record: QueryRecord) -> bool {
        let queue = &self.queue;
        let queued = &queue.shared.queued;
        if queued.fetch_add(1, Ordering::AcqRel) >= queue.capacity {
            queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let batched = LOCAL
            .try_with(|local| {
                let mut local = local.borrow_mut();
                let Some(local) = local.as_mut().filter(|l| Arc::ptr_eq(&l.queue, queue)) else {
                    return false;
                };
                let Local { batch, clock, .. } = local;
                queue.format(&record, clock, &mut batch.bytes);
                batch.lines += 1;
                if queue.full(&local.batch) {
                    local.flush();
                } else if local.batch.lines == 1 {
                    local.started.notify_one();
                }
                true
            })
            .unwrap_or(false);
        if !batched {
            // Not a worker thread of this proxy (or one that is ending): a batch of its own.
            let mut bytes = Vec::new();
            queue.format(&record, &mut Clock::default(), &mut bytes);
            queue.hand_over(Batch { bytes, lines: 1 });
        }
        true
    }

    /// Makes the calling thread batch the lines it logs until the guard is dropped, which
    /// hands the last batch over. The thread must also run [`AttachedThread::flusher`], so
    /// lines are not held longer than the interval.
    pub(crate) fn attach(&self) -> AttachedThread {
        let started = Arc::new(Notify::new());
        let local = Local {
            queue: self.queue.clone(),
            batch: Batch {
                bytes: self.queue.fresh_buffer(),
                lines: 0,
            },
            clock: Clock::default(),
            started: started.clone(),
        };
        if let Some(mut previous) = LOCAL.with(|cell| cell.borrow_mut().replace(local)) {
            previous.flush();
        }
        AttachedThread {
            started,
            interval: self.queue.interval,
        }
    }
}

/// Hands the calling thread's batch to the writer if it holds lines.
fn flush_thread() {
    let _ = LOCAL.try_with(|local| {
        if let Some(local) = local.borrow_mut().as_mut() {
            local.flush();
        }
    });
}

/// Returned by [`QueryLogSender::attach`]; dropping it hands the thread's last lines over.
#[derive(Debug)]
pub(crate) struct AttachedThread {
    started: Arc<Notify>,
    interval: Duration,
}

impl AttachedThread {
    /// A task for the attached thread's runtime (a current-thread one, so it runs on that
    /// thread): an interval after a batch gets its first line, hands the batch over. An idle
    /// worker is not woken.
    pub(crate) fn flusher(&self) -> impl Future<Output = ()> + Send + 'static {
        let (started, interval) = (self.started.clone(), self.interval);
        async move {
            loop {
                started.notified().await;
                tokio::time::sleep(interval).await;
                flush_thread();
            }
        }
    }
}

impl Drop for AttachedThread {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|local| {
            if let Some(mut local) = local.borrow_mut().take() {
                local.flush();
            }
        });
    }
}

/// The writer thread; [`QueryLogWriter::stop`] writes what is queued and ends it.
#[derive(Debug)]
pub(crate) struct QueryLogWriter {
    tx: mpsc::Sender<ToWriter>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QueryLogWriter {
    /// Asks the writer to write what is queued and stop, without waiting for it.
    pub(crate) fn signal_stop(&self) {
        // Batches handed over before this are ahead of it in the channel.
        let _ = self.tx.send(ToWriter::Stop);
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

/// Opens the target and starts the writer thread. Threads that log attach themselves
/// ([`QueryLogSender::attach`]) and hand over their batches at least every `interval`.
pub(crate) async fn start(
    target: &QueryLogTarget,
    capacity: usize,
    interval: Duration,
    deployment_id: String,
    classes: ClassNames,
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
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let queue = Arc::new(Queue {
        tx: tx.clone(),
        shared: shared.clone(),
        capacity: capacity.max(1),
        deployment_id,
        classes,
        interval,
    });
    let thread = std::thread::Builder::new()
        .name("ds-query-log".into())
        .spawn(move || write_batches(&rx, out, &shared, &metrics))?;
    Ok((
        QueryLogSender { queue },
        QueryLogWriter {
            tx,
            thread: Some(thread),
        },
    ))
}

/// Spare buffers kept; more would only hold memory.
const SPARE_BUFFERS: usize = 8;

fn write_batches(
    rx: &mpsc::Receiver<ToWriter>,
    mut out: Box<dyn Write + Send>,
    shared: &Shared,
    metrics: &Metrics,
) {
    let mut write = |mut batch: Batch| {
        if batch.lines > 0 {
            match out.write_all(&batch.bytes).and_then(|()| out.flush()) {
                Ok(()) => metrics.query_log_written(batch.lines as u64),
                Err(error) => {
                    // Part of the batch may have reached the output; counted as lost, since
                    // no line of it can be told apart as whole.
                    metrics.query_log_lost(batch.lines as u64);
                    tracing::warn!(%error, lines = batch.lines, "writing query-log lines failed");
                }
            }
            shared.queued.fetch_sub(batch.lines, Ordering::AcqRel);
        }
        if batch.bytes.capacity() > 0 {
            let mut spare = shared.spare.lock();
            if spare.len() < SPARE_BUFFERS {
                batch.bytes.clear();
                spare.push(batch.bytes);
            }
        }
    };
    while let Ok(message) = rx.recv() {
        match message {
            ToWriter::Lines(batch) => write(batch),
            ToWriter::Stop => {
                // What was handed over before the stop came ahead of it; take what is
                // left too, then end.
                while let Ok(ToWriter::Lines(batch)) = rx.try_recv() {
                    write(batch);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        path: &str,
        request: &[u8],
        response: &[u8],
        error: Option<&'static str>,
    ) -> QueryRecord {
        QueryRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_598_203_045),
            request_id: http::HeaderValue::from_static("id-\"1\""),
            method: http::Method::POST,
            path: path.to_owned(),
            status: 200,
            latency: Duration::from_micros(1234),
            error,
            request: BodySample {
                bytes: request.to_vec(),
                truncated: true,
                total: 99,
            },
            response: BodySample {
                bytes: response.to_vec(),
                truncated: false,
                total: response.len() as u64,
            },
            predictions: Some(vec![1, 7]),
        }
    }

    /// The same record through serde_json and the `Line` shape.
    fn reference(
        record: &QueryRecord,
        deployment_id: &str,
        classes: &ClassNames,
    ) -> serde_json::Value {
        let predictions: Option<Vec<String>> = record
            .predictions
            .as_ref()
            .map(|p| p.iter().map(|&i| classes.name(i).into_owned()).collect());
        let line = Line {
            time: chrono::DateTime::<chrono::Utc>::from(record.time)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            deployment_id,
            request_id: String::from_utf8_lossy(record.request_id.as_bytes()),
            method: record.method.as_str(),
            path: &record.path,
            status: record.status,
            latency_ms: record.latency.as_micros() as f64 / 1000.0,
            error: record.error,
            request_body: body_text(&record.request),
            request_body_truncated: record.request.truncated,
            request_bytes: record.request.total,
            response_body: body_text(&record.response),
            response_body_truncated: record.response.truncated,
            response_bytes: record.response.total,
            predictions: predictions.as_deref(),
        };
        serde_json::to_value(&line).unwrap()
    }

    #[test]
    fn lines_say_what_serde_would_say() {
        let classes = ClassNames::new(vec!["no".into(), "yes".into()]);
        let mut clock = Clock::default();
        for record in [
            record(
                "/v1/models/iris:predict?x=1",
                br#"{"instances": [[1, 2]]}"#,
                b"ok",
                None,
            ),
            record(
                "/a\"b\\c",
                b"tab\there\nnew\rline \x01\x1f\x7f",
                "é ü 漢".as_bytes(),
                Some("client_closed"),
            ),
            record("/", b"cut \xc3", b"bad \xff byte", None),
        ] {
            let mut out = Vec::new();
            record.write_json("dep-\"42\"", &classes, &mut clock, &mut out);
            assert_eq!(out.last(), Some(&b'\n'), "one line");
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
            let ours: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(ours, reference(&record, "dep-\"42\"", &classes));
        }
    }

    #[test]
    fn strings_escape_exactly_what_json_needs() {
        let every_byte: String = (0u8..=0x7f).map(char::from).collect::<String>() + "é漢";
        for text in [
            "",
            "plain text longer than eight bytes",
            every_byte.as_str(),
            "\"quoted\" \\ and \u{1}",
            r#"{"instances": [[5.1, 3.5, 1.4, 0.2]], "name": "café \"q\" 漢\\"}"#,
            "é\"é\"\u{7f}\u{1f}ü\"\"\"\"\"\"\"\"\"aaaaaaaa\\\\\\\\\\\\\\\\\n",
        ] {
            for start in 0..text.len().min(9) {
                let Some(text) = text.get(start..) else {
                    continue;
                };
                let mut out = Vec::new();
                push_str(&mut out, text);
                assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
            }
        }
    }

    /// An output that refuses every write, like a full disk.
    struct FullDisk;

    impl Write for FullDisk {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_that_cannot_be_written_are_counted_as_lost() {
        let classes = ClassNames::new(vec![]);
        let metrics = Arc::new(Metrics::new(&classes, 1));
        let (tx, rx) = mpsc::channel();
        let mut batch = Batch::default();
        for _ in 0..3 {
            record("/", b"", b"", None).write_json(
                "",
                &classes,
                &mut Clock::default(),
                &mut batch.bytes,
            );
            batch.lines += 1;
        }
        tx.send(ToWriter::Lines(batch)).unwrap();
        drop(tx);
        let shared = Shared::default();
        shared.queued.store(3, Ordering::Release);
        write_batches(&rx, Box::new(FullDisk), &shared, &metrics);
        let text = metrics.encode();
        assert!(text.contains("ds_proxy_query_log_lost_total 3\n"), "{text}");
        assert!(
            text.contains("ds_proxy_query_log_written_total 0\n"),
            "{text}"
        );
        assert_eq!(shared.queued.load(Ordering::Acquire), 0, "off the queue");
    }

    /// Starts a query log into a file of `dir`.
    async fn file_log(
        dir: &tempfile::TempDir,
        capacity: usize,
    ) -> (QueryLogSender, QueryLogWriter, Arc<Metrics>, PathBuf) {
        let classes = ClassNames::new(vec!["no".into(), "yes".into()]);
        let metrics = Arc::new(Metrics::new(&classes, 1));
        let path = dir.path().join("queries.jsonl");
        let (sender, writer) = start(
            &QueryLogTarget::File(path.clone()),
            capacity,
            Duration::from_millis(50),
            "dep".into(),
            classes,
            metrics.clone(),
        )
        .await
        .unwrap();
        (sender, writer, metrics, path)
    }

    fn lines_in(path: &std::path::Path) -> usize {
        std::fs::read_to_string(path).unwrap().lines().count()
    }

    #[tokio::test]
    async fn an_attached_thread_batches_until_flushed_and_hands_its_last_lines_over() {
        let dir = tempfile::tempdir().unwrap();
        let (sender, writer, metrics, path) = file_log(&dir, 64).await;
        let thread_sender = sender.clone();
        let (step, steps) = mpsc::channel::<()>();
        let (done, finished) = mpsc::channel::<usize>();
        let thread = std::thread::spawn(move || {
            let guard = thread_sender.attach();
            // Seven lines stay in this thread's batch (an eighth of 64 hands it over).
            let sent = (0..7)
                .filter(|_| thread_sender.send(record("/a", b"{}", b"{}", None)))
                .count();
            done.send(sent).unwrap();
            steps.recv().unwrap();
            flush_thread();
            done.send(0).unwrap();
            steps.recv().unwrap();
            // Batches of eight go out as they fill; the guard hands over the last three.
            let sent = (0..19)
                .filter(|_| thread_sender.send(record("/b", b"{}", b"{}", None)))
                .count();
            drop(guard);
            done.send(sent).unwrap();
        });
        assert_eq!(finished.recv().unwrap(), 7);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(lines_in(&path), 0, "held in the thread's batch");
        step.send(()).unwrap();
        finished.recv().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines_in(&path) < 7 {
            assert!(
                std::time::Instant::now() < deadline,
                "flushed lines never written"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        step.send(()).unwrap();
        assert_eq!(finished.recv().unwrap(), 19);
        thread.join().unwrap();
        writer.stop().await;
        assert_eq!(lines_in(&path), 26, "every line written");
        let text = metrics.encode();
        assert!(
            text.contains("ds_proxy_query_log_written_total 26\n"),
            "{text}"
        );
        let lines = std::fs::read_to_string(&path).unwrap();
        for line in lines.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("whole JSON lines");
            assert_eq!(value["deployment_id"], "dep");
        }
    }

    #[tokio::test]
    async fn the_flusher_hands_a_batch_over_an_interval_after_its_first_line() {
        // A current-thread runtime, as on a worker: the flusher runs on this thread.
        let dir = tempfile::tempdir().unwrap();
        let (sender, writer, _, path) = file_log(&dir, 64).await;
        let attached = sender.attach();
        let flusher = tokio::spawn(attached.flusher());
        for round in 1..=2 {
            assert!(sender.send(record("/", b"", b"", None)));
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while lines_in(&path) < round {
                assert!(
                    std::time::Instant::now() < deadline,
                    "line {round} never written"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        flusher.abort();
        drop(attached);
        writer.stop().await;
        assert_eq!(lines_in(&path), 2);
    }

    #[tokio::test]
    async fn lines_from_a_thread_that_is_not_attached_go_out_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (sender, writer, _, path) = file_log(&dir, 64).await;
        assert!(sender.send(record("/", b"", b"", None)));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines_in(&path) < 1 {
            assert!(std::time::Instant::now() < deadline, "line never written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writer.stop().await;
        assert_eq!(lines_in(&path), 1);
    }

    #[test]
    fn random_strings_escape_as_serde_does() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};
        let alphabet: Vec<char> = "ab \"\\\n\t\u{0}\u{1f}\u{7f}é漢😀{}:,".chars().collect();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..2000 {
            let text: String = (0..rng.random_range(0..40))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let mut out = Vec::new();
            push_str(&mut out, &text);
            assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        let mut clock = Clock::default();
        let mut out = Vec::new();
        clock.push(
            &mut out,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_598_203_045),
        );
        out.push(b' ');
        clock.push(
            &mut out,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_598_204_999),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2025-12-01T14:10:03.045Z 2025-12-01T14:10:04.999Z"
        );
    }
}
