//! Query logs: one JSON line per request, written by a background task off the request path.
//!
//! The request path only hands a [`QueryRecord`] (body prefixes already copied, so a queued
//! record never pins a connection's read buffer) to a bounded queue with `try_send`; when the
//! queue is full the record is dropped and counted, so a slow disk never slows a model answer
//! down. A dedicated thread drains the queue on an interval, encodes and writes in batches:
//! blocking writes (a full pipe to the container log) stall only that thread.

use super::classes::ClassNames;
use super::metrics::Metrics;
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
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ds-query-log".into())
        .spawn(move || {
            let line = LineContext {
                deployment_id,
                classes,
                capacity: capacity.max(1),
            };
            write_lines(&rx, out, &line, &metrics, &thread_stop, interval);
        })?;
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

/// What every line of one proxy shares.
struct LineContext {
    deployment_id: String,
    classes: ClassNames,
    /// The queue's capacity: a drain that finds it a quarter full shortens the next wait.
    capacity: usize,
}

fn write_lines(
    rx: &mpsc::Receiver<QueryRecord>,
    mut out: Box<dyn Write + Send>,
    line: &LineContext,
    metrics: &Metrics,
    stop: &AtomicBool,
    interval: Duration,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut lines = 0u64;
    let mut clock = Clock::default();
    let mut flush = |buf: &mut Vec<u8>, lines: &mut u64| {
        if buf.is_empty() {
            return;
        }
        match out.write_all(buf).and_then(|()| out.flush()) {
            Ok(()) => metrics.query_log_written(*lines),
            Err(error) => {
                // Part of the batch may have reached the output; counted as lost, since no
                // line of it can be told apart as whole.
                metrics.query_log_lost(*lines);
                tracing::warn!(%error, lines = *lines, "writing query-log lines failed");
            }
        }
        buf.clear();
        *lines = 0;
    };
    loop {
        // Read the flag before draining: a stop that lands during the drain gets one more
        // round, so nothing queued before `stop` is lost.
        let stopping = stop.load(Ordering::Acquire);
        let mut disconnected = false;
        let mut drained = 0;
        loop {
            match rx.try_recv() {
                Ok(record) => {
                    record.write_json(&line.deployment_id, &line.classes, &mut clock, &mut buf);
                    lines += 1;
                    drained += 1;
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
        // At high request rates the queue would fill within one interval and lines would be
        // dropped: drain more often while it fills fast (no cost on the request path).
        if drained * 4 > line.capacity {
            std::thread::park_timeout(interval / 8);
        } else {
            std::thread::park_timeout(interval);
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
        let metrics = Metrics::new(&classes, 1);
        let (tx, rx) = mpsc::sync_channel(8);
        for _ in 0..3 {
            tx.send(record("/", b"", b"", None)).unwrap();
        }
        drop(tx);
        let line = LineContext {
            deployment_id: String::new(),
            classes,
            capacity: 8,
        };
        let stop = AtomicBool::new(false);
        write_lines(
            &rx,
            Box::new(FullDisk),
            &line,
            &metrics,
            &stop,
            Duration::ZERO,
        );
        let text = metrics.encode();
        assert!(text.contains("ds_proxy_query_log_lost_total 3\n"), "{text}");
        assert!(
            text.contains("ds_proxy_query_log_written_total 0\n"),
            "{text}"
        );
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
