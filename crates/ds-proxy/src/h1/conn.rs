//! One HTTP/1.1 client connection: reads request heads, forwards each request on an
//! upstream connection and accounts for it (metrics, query log), until the client closes,
//! an exchange leaves the connection unusable, or the proxy stops.

use super::chunked::Decoder;
use super::framing::Framing;
use super::head::{MAX_HEAD, Rejected, RequestHead, RequestRewrite, parse_request, push_header};
use super::relay::{
    BodyError, RelayError, ResponseContext, ResponseState, relay_response, send_body,
    write_counting,
};
use super::reserve;
use super::timer::LazyTimer;
use crate::body::Capture;
use crate::forward::{LogPart, Outcome, Shared};
use crate::metrics::UpstreamErrorKind;
use crate::upstream::sockets::{Connections, UpConn};
use crate::upstream::{ErrorChain, UpstreamError};
use bytes::{Buf, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use std::io::Write as _;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Capacity of a client connection's read buffer to start with.
const INITIAL_BUFFER: usize = 8 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How the current request is going, for [`Shared::record`].
struct RequestState {
    start: Instant,
    error: Option<&'static str>,
    request_capture: Option<Capture>,
    response: ResponseState,
    /// A proxy-made answer's status (errors), which has no upstream head.
    local_status: Option<u16>,
    local_complete: bool,
}

/// One client connection speaking HTTP/1.1.
pub(crate) struct ClientConn {
    stream: TcpStream,
    /// Bytes read from the client and not yet handled (the next request may be here).
    buf: BytesMut,
    shared: Arc<Shared>,
    client_ip: String,
    /// The upstream connection this client used last, kept for its next request.
    parked: Option<UpConn>,
    stop: CancellationToken,
    header_timeout: std::time::Duration,
    /// The upstream request head (and a small body) being built.
    out: Vec<u8>,
    /// The client answer head (and the start of its body) being built.
    resp: Vec<u8>,
    /// Closes a connection that stays silent (or half-way through a head) too long.
    idle_timer: LazyTimer,
    /// Ends the wait for an answer's head at the request timeout.
    upstream_timer: LazyTimer,
}

impl ClientConn {
    pub(crate) fn new(
        stream: TcpStream,
        buf: BytesMut,
        client_ip: String,
        shared: Arc<Shared>,
        stop: CancellationToken,
        header_timeout: std::time::Duration,
    ) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            idle_timer: LazyTimer::new(now + header_timeout),
            upstream_timer: LazyTimer::new(now + shared.timeout),
            stream,
            buf,
            shared,
            client_ip,
            parked: None,
            stop,
            header_timeout,
            out: Vec::with_capacity(1024),
            resp: Vec::with_capacity(1024),
        }
    }

    /// A new client connection's read buffer.
    pub(crate) fn buffer() -> BytesMut {
        BytesMut::with_capacity(INITIAL_BUFFER)
    }

    /// Serves requests until the client closes, an exchange leaves the connection unusable,
    /// or the proxy stops.
    pub(crate) async fn run(mut self) {
        loop {
            let head = match self.next_request().await {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(rejected) => {
                    self.refuse(rejected).await;
                    break;
                }
            };
            if !self.exchange(head).await || self.stop.is_cancelled() {
                break;
            }
        }
        if let Some(conn) = self.parked.take() {
            self.shared.conns.put(conn);
        }
    }

    /// Answers a head the proxy cannot forward, then closes: the rest of the connection
    /// cannot be framed. Counted and logged like any request, so a client sending broken
    /// requests shows in the metrics; what could not be read is logged as `-`.
    async fn refuse(&mut self, rejected: Rejected) {
        let shared = self.shared.clone();
        shared.shard.request_started();
        let start = Instant::now();
        let time = shared.query_log.is_some().then(SystemTime::now);
        let (method, target, client_id) = match rejected.seen.as_deref() {
            Some(seen) => (
                seen.method.clone(),
                seen.target.clone(),
                seen.request_id.clone(),
            ),
            None => (
                Method::from_bytes(b"-").expect("a token"),
                "-".to_owned(),
                None,
            ),
        };
        let request_id = client_id.unwrap_or_else(|| shared.ids.next());
        let written = self.write_local(&rejected, &request_id, true).await;
        shared.record(Outcome {
            method: &method,
            start,
            request_id,
            status: written.then_some(rejected.status.as_u16()),
            error: Some(rejected.error),
            complete: written,
            count_classes: false,
            v2_path: None,
            response: None,
            log: time.map(|time| LogPart {
                time,
                path: target,
                request: Capture::default(),
            }),
        });
    }

    /// Reads the next request head; `Ok(None)` when the client closed or went quiet, or the
    /// proxy is stopping while the connection is idle.
    async fn next_request(&mut self) -> Result<Option<RequestHead>, Rejected> {
        // The idle time before a request and its whole head share one allowance, so a
        // client trickling a head byte by byte cannot hold the connection for ever.
        let deadline = tokio::time::Instant::now() + self.header_timeout;
        loop {
            if !self.buf.is_empty() {
                let shared = &self.shared;
                let cx = RequestRewrite {
                    base_path: &shared.upstream.base_path,
                    authority: shared.upstream.authority.as_str(),
                    client_ip: &self.client_ip,
                    keep_target: shared.query_log.is_some(),
                };
                match parse_request(&self.buf, &cx, || shared.ids.next(), &mut self.out)? {
                    Some((len, head)) => {
                        self.buf.advance(len);
                        return Ok(Some(head));
                    }
                    None if self.buf.len() > MAX_HEAD => return Err(Rejected::too_large()),
                    None => {}
                }
            }
            reserve(&mut self.buf);
            let Self {
                stream,
                buf,
                stop,
                idle_timer,
                ..
            } = self;
            // Between requests the connection may close for a stop; mid-head it finishes
            // the request first.
            let idle = buf.is_empty();
            let read = tokio::select! {
                biased;
                read = stream.read_buf(buf) => read,
                () = stop.cancelled(), if idle => return Ok(None),
                () = idle_timer.until(deadline) => return Ok(None),
            };
            match read {
                Ok(n) if n > 0 => {}
                _ => return Ok(None),
            }
        }
    }

    /// Forwards one request and accounts for it; returns whether the connection goes on.
    async fn exchange(&mut self, mut head: RequestHead) -> bool {
        let shared = self.shared.clone();
        shared.shard.request_started();
        let log_on = shared.query_log.is_some();
        let mut st = RequestState {
            start: Instant::now(),
            error: None,
            request_capture: log_on.then(|| Capture::new(shared.log_body_limit)),
            response: ResponseState::default(),
            local_status: None,
            local_complete: false,
        };
        let time = log_on.then(SystemTime::now);
        let keep = self.forward(&head, &mut st).await;
        let (status, complete) = match st.local_status {
            Some(status) => (Some(status), st.local_complete),
            None => (st.response.status, st.response.complete),
        };
        // A client that left before its answer's head could be written is a 499.
        let status = if st.local_status.is_none() && !st.response.head_sent {
            None
        } else {
            status
        };
        shared.record(Outcome {
            method: &head.method,
            start: st.start,
            request_id: std::mem::replace(&mut head.request_id, HeaderValue::from_static("")),
            status,
            error: st.error,
            complete,
            count_classes: st.response.count_classes,
            v2_path: head.v2_path.take(),
            response: st.response.capture.take(),
            log: time.map(|time| LogPart {
                time,
                path: std::mem::take(&mut head.path),
                request: st.request_capture.take().unwrap_or_default(),
            }),
        });
        keep
    }

    async fn forward(&mut self, head: &RequestHead, st: &mut RequestState) -> bool {
        if head.bad_target {
            let rejected = Rejected::bad("the request target must be a path (origin form)");
            return self
                .answer_locally(st, &rejected, &head.request_id, true)
                .await;
        }
        let shared = self.shared.clone();
        let deadline = tokio::time::Instant::now() + shared.timeout;
        // Is the whole body already here? Then head and body go out in one write.
        let buffered = match head.framing {
            Framing::None | Framing::Close => Some(0),
            Framing::Length(n) => usize::try_from(n).ok().filter(|&n| n <= self.buf.len()),
            Framing::Chunked => {
                let mut decoder = Decoder::new();
                match decoder.decode(&self.buf, |_| {}) {
                    Ok(used) if decoder.is_done() => Some(used),
                    Ok(_) => None,
                    Err(_) => {
                        return self.bad_body(st, head).await;
                    }
                }
            }
        };
        let cx = ResponseContext {
            head_request: head.method == Method::HEAD,
            client_http10: head.http10,
            client_keep_alive: head.keep_alive,
            request_id: &head.request_id,
            count_allowed: shared.class_limit > 0 && head.method == Method::POST,
            class_limit: shared.class_limit,
            log_limit: if shared.query_log.is_some() {
                shared.log_body_limit
            } else {
                0
            },
            deadline,
            pause: shared.timeout,
            stopping: self.stop.is_cancelled(),
        };
        match buffered {
            Some(len) => self.forward_buffered(head, len, &cx, st).await,
            None => self.forward_streaming(head, &cx, st).await,
        }
    }

    /// The request body (if any) is all here: it goes out with the head, and the request
    /// can be sent again on a fresh connection if a reused one turns out to be closed
    /// before it was written, or, for an idempotent method, before any answer byte.
    async fn forward_buffered(
        &mut self,
        head: &RequestHead,
        len: usize,
        cx: &ResponseContext<'_>,
        st: &mut RequestState,
    ) -> bool {
        let body = &self.buf[..len];
        if let Some(c) = &mut st.request_capture {
            if head.framing == Framing::Chunked {
                let _ = Decoder::new().decode(body, |range| c.push(&body[range]));
            } else {
                c.push(body);
            }
        }
        self.out.extend_from_slice(body);
        self.buf.advance(len);
        let mut up = loop {
            let up = match self.upstream(cx.deadline).await {
                Ok(up) => up,
                Err(failure) => {
                    return self
                        .upstream_failed(st, failure, &head.request_id, true)
                        .await;
                }
            };
            // A close that has already arrived is noticed before anything is written, so
            // even a request that cannot be sent twice survives the usual keep-alive race.
            // The probe costs no extra system call as a rule: the read it makes is the one
            // that would otherwise find the answer not there yet.
            if !up.reused || up.is_reusable() {
                break up;
            }
        };
        // Sent again after its bytes went out only if running it twice is harmless
        // (RFC 9110 §9.2.2): a POST to a model may already be running inference.
        let resendable = head.method.is_idempotent();
        loop {
            st.response = ResponseState::default();
            let (written, sent) = write_counting(&mut up.stream, &self.out).await;
            let result = match sent {
                Ok(()) => {
                    relay_response(
                        &mut up.stream,
                        &mut up.buf,
                        &mut self.stream,
                        &mut self.resp,
                        &mut self.upstream_timer,
                        cx,
                        &mut st.response,
                    )
                    .await
                }
                Err(_) => Err(RelayError::Upstream { nothing: true }),
            };
            match result {
                Ok(()) => {
                    if st.response.upstream_reusable {
                        self.park(up);
                    }
                    return !st.response.client_close;
                }
                Err(RelayError::Upstream { nothing: true })
                    if up.reused && (written == 0 || resendable) =>
                {
                    // Most likely the upstream closed this idle connection just now.
                    up = match self.connect(cx.deadline).await {
                        Ok(up) => up,
                        Err(failure) => {
                            return self
                                .upstream_failed(st, failure, &head.request_id, true)
                                .await;
                        }
                    };
                }
                Err(error) => {
                    return self
                        .relay_failed(st, error, &head.request_id, head.keep_alive)
                        .await;
                }
            }
        }
    }

    /// The request body is still arriving: it streams to the upstream while the answer
    /// streams back (an upstream may answer before it has read the whole body, or echo it
    /// as it reads).
    async fn forward_streaming(
        &mut self,
        head: &RequestHead,
        cx: &ResponseContext<'_>,
        st: &mut RequestState,
    ) -> bool {
        let mut up = loop {
            let up = match self.upstream(cx.deadline).await {
                Ok(up) => up,
                Err(failure) => {
                    return self
                        .upstream_failed(st, failure, &head.request_id, false)
                        .await;
                }
            };
            // The body cannot be sent twice, so a reused connection is checked first.
            if !up.reused || up.is_reusable() {
                break up;
            }
        };
        if head.expect_continue && !head.http10 && self.stream.write_all(CONTINUE).await.is_err() {
            return false;
        }
        if up.stream.write_all(&self.out).await.is_err() {
            return self
                .relay_failed(
                    st,
                    RelayError::Upstream { nothing: true },
                    &head.request_id,
                    false,
                )
                .await;
        }
        let mut body_result = None;
        let relayed = {
            let (mut client_read, mut client_write) = self.stream.split();
            let (mut up_read, mut up_write) = up.stream.split();
            let mut send = pin!(send_body(
                &mut client_read,
                &mut self.buf,
                &mut up_write,
                head.framing,
                &mut st.request_capture,
            ));
            let mut recv = pin!(relay_response(
                &mut up_read,
                &mut up.buf,
                &mut client_write,
                &mut self.resp,
                &mut self.upstream_timer,
                cx,
                &mut st.response,
            ));
            let relayed = loop {
                tokio::select! {
                    biased;
                    relayed = &mut recv => break relayed,
                    sent = &mut send, if body_result.is_none() => {
                        let client_broke = matches!(sent, Err(BodyError::Client));
                        body_result = Some(sent);
                        if client_broke {
                            break Err(RelayError::Client);
                        }
                    }
                }
            };
            if relayed.is_ok() && body_result.is_none() {
                // The model answered before it had the whole body (a 413, say): the client
                // is still sending. Take the rest (passed on, or dropped once the upstream
                // stops reading) so both connections end at a message boundary.
                body_result = tokio::time::timeout(self.shared.timeout, &mut send)
                    .await
                    .ok();
            }
            relayed
        };
        match (relayed, body_result) {
            (Ok(()), Some(Ok(()))) => {
                if st.response.upstream_reusable {
                    self.park(up);
                }
                !st.response.client_close
            }
            // The upstream stopped reading the body: its connection is done, the client's
            // goes on.
            (Ok(()), Some(Err(BodyError::Upstream))) => !st.response.client_close,
            // The client's body broke or never ended: its connection is not at a message
            // boundary any more.
            (Ok(()), _) => false,
            (Err(_), Some(Err(BodyError::Client))) => self.bad_body(st, head).await,
            (Err(error), _) => self.relay_failed(st, error, &head.request_id, false).await,
        }
    }

    /// The client's request body broke (bad chunks, or it ended early).
    async fn bad_body(&mut self, st: &mut RequestState, head: &RequestHead) -> bool {
        if !st.response.head_sent {
            let rejected = Rejected {
                status: StatusCode::BAD_REQUEST,
                error: "bad_request_body",
                message: "the request body ended early or was malformed",
                seen: None,
            };
            tracing::debug!(request_id = ?head.request_id, "request body failed");
            self.answer_locally(st, &rejected, &head.request_id, true)
                .await;
        }
        false
    }

    /// The client's parked upstream connection, else an idle one, else a new one.
    async fn upstream(&mut self, deadline: tokio::time::Instant) -> Result<UpConn, UpstreamError> {
        if let Some(up) = self.parked.take()
            && !self.shared.conns.expired(&up)
        {
            return Ok(up);
        }
        if let Some(up) = self.shared.conns.take_idle() {
            return Ok(up);
        }
        self.connect(deadline).await
    }

    async fn connect(&self, deadline: tokio::time::Instant) -> Result<UpConn, UpstreamError> {
        tokio::time::timeout_at(deadline, self.shared.conns.connect())
            .await
            .unwrap_or(Err(UpstreamError::Timeout(self.shared.timeout)))
    }

    fn park(&mut self, mut up: UpConn) {
        Connections::park(&mut up);
        if let Some(previous) = self.parked.replace(up) {
            self.shared.conns.put(previous);
        }
    }

    async fn upstream_failed(
        &mut self,
        st: &mut RequestState,
        failure: UpstreamError,
        request_id: &HeaderValue,
        keep: bool,
    ) -> bool {
        let shared = self.shared.clone();
        match failure {
            UpstreamError::Connect(_) => {
                shared.metrics.upstream_error(UpstreamErrorKind::Connect);
                tracing::warn!(request_id = ?request_id, kind = "connect", error = %ErrorChain(&failure), "upstream request failed");
                let message = format!(
                    "could not connect to the model server at {}",
                    shared.upstream.authority
                );
                self.answer_error(
                    st,
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    &message,
                    request_id,
                    keep,
                )
                .await
            }
            // Only connecting fails here; anything else after the connect deadline.
            _ => self.timed_out(st, request_id, keep).await,
        }
    }

    async fn timed_out(
        &mut self,
        st: &mut RequestState,
        request_id: &HeaderValue,
        keep: bool,
    ) -> bool {
        let timeout = self.shared.timeout;
        self.shared
            .metrics
            .upstream_error(UpstreamErrorKind::Timeout);
        tracing::warn!(request_id = ?request_id, ?timeout, "upstream timed out");
        let message = format!("the model server did not answer within {timeout:?}");
        self.answer_error(
            st,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            &message,
            request_id,
            keep,
        )
        .await
    }

    /// An answer that failed: an error of the proxy's own if nothing was sent yet, else the
    /// connection closes (the client sees a cut answer, as from the model itself).
    async fn relay_failed(
        &mut self,
        st: &mut RequestState,
        error: RelayError,
        request_id: &HeaderValue,
        keep: bool,
    ) -> bool {
        if st.response.head_sent {
            // Too late for an answer of the proxy's own: the cut answer tells the client.
            match error {
                RelayError::Upstream { .. } | RelayError::Malformed(_) => {
                    self.shared.metrics.upstream_error(UpstreamErrorKind::Other);
                }
                RelayError::Timeout => {
                    tracing::warn!(request_id = ?request_id, kind = "timeout", "the model server stopped sending its answer");
                    self.shared
                        .metrics
                        .upstream_error(UpstreamErrorKind::Timeout);
                }
                RelayError::Client => {}
            }
            return false;
        }
        st.response.status = None;
        match error {
            RelayError::Client => false,
            RelayError::Timeout => self.timed_out(st, request_id, false).await,
            RelayError::Upstream { .. } | RelayError::Malformed(_) => {
                self.shared.metrics.upstream_error(UpstreamErrorKind::Other);
                let message = match error {
                    RelayError::Malformed(what) => what,
                    _ => "the model server closed the connection without an answer",
                };
                tracing::warn!(request_id = ?request_id, kind = "other", message, "upstream request failed");
                self.answer_error(
                    st,
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    message,
                    request_id,
                    keep,
                )
                .await
            }
        }
    }

    async fn answer_error(
        &mut self,
        st: &mut RequestState,
        status: StatusCode,
        error: &'static str,
        message: &str,
        request_id: &HeaderValue,
        keep: bool,
    ) -> bool {
        st.error = Some(error);
        st.local_status = Some(status.as_u16());
        let close = !keep || self.stop.is_cancelled();
        st.local_complete = self
            .write_answer(status, error, message, request_id, close)
            .await;
        st.local_complete && !close
    }

    async fn answer_locally(
        &mut self,
        st: &mut RequestState,
        rejected: &Rejected,
        request_id: &HeaderValue,
        close: bool,
    ) -> bool {
        self.answer_error(
            st,
            rejected.status,
            rejected.error,
            rejected.message,
            request_id,
            !close,
        )
        .await
    }

    async fn write_local(
        &mut self,
        rejected: &Rejected,
        request_id: &HeaderValue,
        close: bool,
    ) -> bool {
        self.write_answer(
            rejected.status,
            rejected.error,
            rejected.message,
            request_id,
            close,
        )
        .await
    }

    /// Writes a short JSON answer made by the proxy itself; false if the client is gone.
    async fn write_answer(
        &mut self,
        status: StatusCode,
        error: &'static str,
        message: &str,
        request_id: &HeaderValue,
        close: bool,
    ) -> bool {
        let body = serde_json::json!({
            "error": error,
            "message": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        let mut body = serde_json::to_vec(&body).unwrap_or_default();
        body.push(b'\n');
        let out = &mut self.resp;
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        push_header(out, b"x-request-id", request_id.as_bytes());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        self.stream.write_all(out).await.is_ok()
    }
}
