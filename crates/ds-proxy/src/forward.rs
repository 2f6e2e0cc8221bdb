//! The h2c request path on hyper (forward one request to the model server), and the
//! accounting of a finished request that the HTTP/1.1 path ([`super::h1`]) shares.

use super::body::{Capture, RequestBody, ResponseBody};
use super::classes::{self, ClassNames, Protocol, Route};
use super::metrics::{MethodLabel, Metrics, Shard, UpstreamErrorKind};
use super::querylog::{BodySample, QueryLogSender, QueryRecord};
use super::upstream::client::{Conn, Pool, Slot};
use super::upstream::{ErrorChain, Upstream, UpstreamError, sockets};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The request-ID header, added to the request (and echoed on the response) when absent.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

static X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1); a proxy must not
/// forward them.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Settings and shared state of the request path.
pub(crate) struct Shared {
    /// Upstream connections of the h2c path (hyper's client connections).
    pub(crate) pool: Pool,
    /// Upstream connections of the HTTP/1.1 path (plain sockets).
    pub(crate) conns: sockets::Connections,
    pub(crate) upstream: Upstream,
    pub(crate) timeout: Duration,
    pub(crate) metrics: Arc<Metrics>,
    /// This worker's part of the per-request metrics.
    pub(crate) shard: Arc<Shard>,
    pub(crate) classes: ClassNames,
    /// Which answers are read for classes, and how.
    pub(crate) protocol: Protocol,
    /// Response bytes inspected for the predicted class; 0 turns class counting off.
    pub(crate) class_limit: usize,
    pub(crate) query_log: Option<QueryLogSender>,
    /// Body bytes kept per query-log line.
    pub(crate) log_body_limit: usize,
    pub(crate) ids: RequestIds,
}

/// Request IDs: a random prefix (one per worker thread, so unique across threads and pods)
/// and a counter; cheaper than a random UUID per request and still UUID-shaped for log
/// tooling.
pub(crate) struct RequestIds {
    /// The constant first half of every ID (`xxxxxxxx-xxxx-xxxx-`): the random prefix,
    /// formatted once.
    head: [u8; 19],
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        let mut head = [0u8; 19];
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let prefix = uuid::Uuid::new_v4().as_u64_pair().0;
        let text = uuid::Uuid::from_u64_pair(prefix, 0)
            .hyphenated()
            .encode_lower(&mut buf);
        head.copy_from_slice(&text.as_bytes()[..19]);
        Self {
            head,
            next: AtomicU64::new(1),
        }
    }

    /// The next ID: the UUID whose high half is the prefix and low half a counter, written
    /// without going through `uuid`'s formatter (this runs on every request).
    pub(crate) fn next(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        id[..19].copy_from_slice(&self.head);
        // The low 64 bits as `xxxx-xxxxxxxxxxxx`.
        let mut at = 19;
        for i in (0..16).rev() {
            if at == 23 {
                id[at] = b'-';
                at += 1;
            }
            id[at] = HEX[((n >> (i * 4)) & 0xf) as usize];
            at += 1;
        }
        HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("invalid"))
    }
}

/// Log-only state of an exchange, allocated only when the query log is on.
struct LogContext {
    time: SystemTime,
    path: String,
    request: Arc<Mutex<Capture>>,
}

/// One request from arrival to the end of its response. Dropping it records it: metrics,
/// predicted classes and the query-log line. It lives in the response body, so it is
/// recorded when the body ends, or when the client goes away first (status 499).
pub(crate) struct Exchange {
    peer: Arc<Peer>,
    start: Instant,
    method: Method,
    request_id: HeaderValue,
    status: Option<StatusCode>,
    error: Option<&'static str>,
    count_classes: bool,
    /// The request path when it is a v2 one (see [`Outcome::v2_path`]).
    v2_path: Option<Box<str>>,
    response: Option<Capture>,
    complete: bool,
    log: Option<Box<LogContext>>,
    /// The upstream connection of the answer: the response body drives it, and it is
    /// parked for reuse if the answer was read to its end.
    pub(crate) conn: Option<Conn>,
}

impl Exchange {
    pub(crate) fn set_response(&mut self, capture: Option<Capture>, complete: bool) {
        self.response = capture;
        self.complete = complete;
    }

    /// The model server broke off (`Other`) or stalled (`Timeout`) an answer it had begun:
    /// counted as an upstream error, as the HTTP/1.1 path counts it.
    pub(crate) fn upstream_broke(&self, kind: UpstreamErrorKind) {
        self.peer.shared.metrics.upstream_error(kind);
    }

    /// The longest wait for the next bytes of the answer's body (`--timeout`).
    pub(crate) fn pause(&self) -> Duration {
        self.peer.shared.timeout
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let shared = &*self.peer.shared;
        if let Some(conn) = self.conn.take()
            && self.complete
        {
            if conn.is_idle() {
                shared.pool.put(&self.peer.slot, conn);
            } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                // The request body is still going out and nothing else drives this
                // connection now: finish it on a task of its own (rare: the upstream
                // answered before reading the whole request), within the request timeout.
                let (peer, timeout) = (self.peer.clone(), shared.timeout);
                runtime.spawn(async move {
                    if let Ok(Some(conn)) = tokio::time::timeout(timeout, conn.finish()).await {
                        peer.shared.pool.put(&peer.slot, conn);
                    }
                });
            }
        }
        let log = self.log.take().map(|log| {
            let request = std::mem::take(&mut *log.request.lock());
            (log.time, log.path, request)
        });
        shared.record(Outcome {
            method: &self.method,
            start: self.start,
            request_id: std::mem::replace(&mut self.request_id, HeaderValue::from_static("")),
            status: self.status.map(|s| s.as_u16()),
            error: self.error,
            complete: self.complete,
            count_classes: self.count_classes,
            v2_path: self.v2_path.take(),
            response: self.response.take(),
            log: log.map(|(time, path, request)| LogPart {
                time,
                path,
                request,
            }),
        });
    }
}

/// How one request ended, as [`Shared::record`] accounts for it.
pub(crate) struct Outcome<'a> {
    pub(crate) method: &'a Method,
    pub(crate) start: Instant,
    pub(crate) request_id: HeaderValue,
    /// `None` when the client left before the answer began (recorded as 499).
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<&'static str>,
    /// The answer reached the client to its end.
    pub(crate) complete: bool,
    /// The answer is one whose predicted classes are counted.
    pub(crate) count_classes: bool,
    /// The request's path and query when the path starts with `/v2/` (a POST's only), for
    /// [`Protocol::route`]; `None` for every other request, which then costs nothing more.
    pub(crate) v2_path: Option<Box<str>>,
    /// The answer body's prefix (for the classes and the query log).
    pub(crate) response: Option<Capture>,
    /// What only the query log needs, when it is on.
    pub(crate) log: Option<LogPart>,
}

/// The query-log part of an [`Outcome`], moved into the log record rather than copied.
pub(crate) struct LogPart {
    pub(crate) time: SystemTime,
    /// The request target as the client sent it.
    pub(crate) path: String,
    /// The request body's prefix.
    pub(crate) request: Capture,
}

impl Shared {
    /// Accounts for a finished request: metrics, predicted classes and the query-log line.
    pub(crate) fn record(&self, outcome: Outcome<'_>) {
        let latency = outcome.start.elapsed();
        // 499 (nginx's "client closed request"): the client left before the answer began.
        let status = outcome.status.unwrap_or(499);
        self.shard
            .request_finished(MethodLabel::of(outcome.method), status, latency);
        let mut predicted = None;
        if outcome.count_classes && outcome.complete {
            let body = outcome.response.as_ref().and_then(|capture| {
                let (body, truncated) = capture.prefix(self.class_limit);
                (!truncated).then_some(body)
            });
            match self.protocol.route(outcome.v2_path.as_deref()) {
                Route::V1 => match body.and_then(classes::predicted_indices) {
                    Some(indices) => {
                        for &i in &indices {
                            self.shard.predicted(i, &self.classes);
                        }
                        predicted = Some(indices);
                    }
                    None => self.shard.unparsed(),
                },
                Route::V2 { model } => {
                    let outputs = body.and_then(classes::v2_outputs);
                    self.shard.predicted_v2(model, outputs.as_deref());
                    // The query log names the classes of the first output.
                    predicted = outputs
                        .and_then(|o| o.into_iter().next())
                        .and_then(|o| o.classes);
                }
                Route::Skip => {}
            }
        }
        let (Some(log), Some(sender)) = (outcome.log, &self.query_log) else {
            return;
        };
        let sample = |capture: Option<Capture>| {
            capture.map_or_else(BodySample::default, |c| c.into_sample(self.log_body_limit))
        };
        let error = outcome.error.or(match (outcome.status, outcome.complete) {
            (None, _) => Some("client_closed"),
            (Some(_), false) => Some("response_incomplete"),
            _ => None,
        });
        let record = QueryRecord {
            time: log.time,
            request_id: outcome.request_id,
            method: outcome.method.clone(),
            path: log.path,
            status,
            latency,
            error,
            request: sample(Some(log.request)),
            response: sample(outcome.response),
            predictions: predicted,
        };
        if !sender.send(record) {
            self.metrics.query_log_dropped();
        }
    }
}

/// True for the hop-by-hop headers of [`HOP_BY_HOP`]; standard names compare as enum
/// values, the two others by length first, so no name is hashed.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == HOP_BY_HOP[1]
        || *name == HOP_BY_HOP[2]
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, no hashing: most messages carry none of them, and the rest
    // usually just `Connection: keep-alive` (nginx's answers do).
    let mut found: [Option<&HeaderName>; 7] = [None; 7];
    let mut count = 0;
    for name in headers.keys() {
        if count < found.len() && is_hop_by_hop(name) {
            found[count] = Some(name);
            count += 1;
        }
    }
    if count == 0 {
        return;
    }
    let found: Vec<HeaderName> = found.iter().flatten().map(|&n| n.clone()).collect();
    // Other headers the `Connection` header names are hop-by-hop too; `close` and
    // `keep-alive` are options, not header names to look up.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in found.iter().chain(&named) {
        headers.remove(name);
    }
}

/// A short JSON answer made by the proxy itself.
fn local_response(
    status: StatusCode,
    error: &'static str,
    message: String,
    request_id: &HeaderValue,
    mut exchange: Option<Exchange>,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": error,
        "message": message,
        "request_id": request_id.to_str().unwrap_or_default(),
    });
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    if let Some(exchange) = &mut exchange {
        exchange.status = Some(status);
        exchange.error = Some(error);
    }
    let mut response = Response::new(ResponseBody::local(Bytes::from(bytes), exchange));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}

/// Forwards one request. Never fails: every problem becomes an HTTP answer.
pub(crate) async fn handle(
    peer: Arc<Peer>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let start = Instant::now();
    let shared = &*peer.shared;
    shared.shard.request_started();
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = shared.ids.next();
            req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    };
    let path_and_query = req.uri().path_and_query().cloned();
    let log = shared.query_log.as_ref().map(|_| {
        Box::new(LogContext {
            time: SystemTime::now(),
            path: path_and_query
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
            request: Arc::new(Mutex::new(Capture::new(shared.log_body_limit))),
        })
    });
    let request_capture = log.as_ref().map(|l| l.request.clone());
    let method = req.method().clone();
    let mut exchange = Exchange {
        peer: peer.clone(),
        start,
        method: method.clone(),
        request_id: request_id.clone(),
        status: None,
        error: None,
        count_classes: false,
        v2_path: None,
        response: None,
        complete: false,
        log,
        conn: None,
    };

    let Some(uri) = path_and_query
        .as_ref()
        .and_then(|pq| shared.upstream.target_for(pq))
    else {
        return Ok(local_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request target must be a path (origin form)".into(),
            &request_id,
            Some(exchange),
        ));
    };

    if method == Method::POST
        && let Some(pq) = &path_and_query
        && pq.path().starts_with("/v2/")
    {
        exchange.v2_path = Some(pq.as_str().into());
    }

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // HTTP/2 carries the host in the `:authority` pseudo-header; the model server should
    // see the host the client asked for, as it would over HTTP/1.1.
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    if !parts.headers.contains_key(header::HOST)
        && let Some(host) = shared.upstream.host()
    {
        // HTTP/1.1 requires a Host; without one from the client, name the upstream.
        parts.headers.insert(header::HOST, host);
    }
    append_forwarded_for(&mut parts.headers, &peer);
    parts.uri = uri;
    // The upstream pool speaks HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, RequestBody::new(body, request_capture));

    let outcome =
        tokio::time::timeout(shared.timeout, shared.pool.send(&peer.slot, upstream_req)).await;
    let mut response = match outcome {
        Ok(Ok((response, conn))) => {
            exchange.conn = Some(conn);
            response
        }
        Ok(Err(error)) if client_body_failed(&error) => {
            // The client's own body broke (bad chunking, short content): not the model's fault.
            tracing::debug!(request_id = ?request_id, error = %ErrorChain(&error), "request body failed");
            return Ok(local_response(
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                "the request body ended early or was malformed".into(),
                &request_id,
                Some(exchange),
            ));
        }
        Ok(Err(error)) => {
            let kind = if matches!(error, UpstreamError::Connect(_)) {
                UpstreamErrorKind::Connect
            } else {
                UpstreamErrorKind::Other
            };
            shared.metrics.upstream_error(kind);
            tracing::warn!(request_id = ?request_id, kind = kind.as_str(), error = %ErrorChain(&error), "upstream request failed");
            let (error, message) = match kind {
                UpstreamErrorKind::Connect => (
                    "upstream_unavailable",
                    format!(
                        "could not connect to the model server at {}",
                        shared.upstream.authority
                    ),
                ),
                _ => (
                    "upstream_error",
                    "the model server closed the connection without an answer".to_owned(),
                ),
            };
            return Ok(local_response(
                StatusCode::BAD_GATEWAY,
                error,
                message,
                &request_id,
                Some(exchange),
            ));
        }
        Err(_elapsed) => {
            shared.metrics.upstream_error(UpstreamErrorKind::Timeout);
            tracing::warn!(request_id = ?request_id, timeout = ?shared.timeout, "upstream timed out");
            return Ok(local_response(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "the model server did not answer within {:?}",
                    shared.timeout
                ),
                &request_id,
                Some(exchange),
            ));
        }
    };

    let status = response.status();
    exchange.status = Some(status);
    strip_hop_by_hop(response.headers_mut());
    if !response.headers().contains_key(&X_REQUEST_ID) {
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id);
    }
    // Predictions are answers to POSTs that succeeded; a compressed body is not inspected.
    exchange.count_classes = shared.class_limit > 0
        && method == Method::POST
        && status.is_success()
        && response
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let mut limit = 0;
    if exchange.count_classes {
        limit = shared.class_limit;
    }
    if exchange.log.is_some() {
        limit = limit.max(shared.log_body_limit);
    }
    let capture = (limit > 0).then(|| Capture::new(limit));
    Ok(response.map(|body| ResponseBody::upstream(body, capture, exchange)))
}

/// One client connection: its `X-Forwarded-For` value (made once per connection rather
/// than once per request) and the upstream connection it used last, kept for its next
/// request.
pub(crate) struct Peer {
    shared: Arc<Shared>,
    ip: HeaderValue,
    slot: Slot,
}

impl Peer {
    pub(crate) fn new(shared: Arc<Shared>, addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Self {
            shared,
            ip,
            slot: Slot::default(),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The client connection is gone: its upstream connection serves others now.
        self.shared.pool.release(&self.slot);
    }
}

/// Appends the peer to `X-Forwarded-For`, joining the client's own fields (a client may
/// send several) into one, as the HTTP/1.1 path does.
fn append_forwarded_for(headers: &mut HeaderMap, peer: &Peer) {
    let mut joined = Vec::new();
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        joined.extend_from_slice(prior.as_bytes());
        joined.extend_from_slice(b", ");
    }
    let value = if joined.is_empty() {
        peer.ip.clone()
    } else {
        joined.extend_from_slice(peer.ip.as_bytes());
        match HeaderValue::from_bytes(&joined) {
            Ok(value) => value,
            Err(_) => return,
        }
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
}

/// True when the upstream request failed because reading the client's body failed.
fn client_body_failed(error: &UpstreamError) -> bool {
    let UpstreamError::Exchange(error) = error else {
        return false;
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn request_ids_are_unique_uuids() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        let a = uuid::Uuid::parse_str(a.to_str().unwrap()).expect("a UUID");
        let b = uuid::Uuid::parse_str(b.to_str().unwrap()).expect("a UUID");
        // One random prefix per generator (worker thread), then a counter.
        assert_eq!(a.as_u64_pair().0, b.as_u64_pair().0);
        assert_eq!(a.as_u64_pair().1 + 1, b.as_u64_pair().1);
        ids.next.store(0x0123_4567_89ab_cdef, Ordering::Relaxed);
        let c = ids.next();
        assert!(c.to_str().unwrap().ends_with("-0123-456789abcdef"), "{c:?}");
    }
}
