//! The HTTP/1.1 request path: one task per client connection parses request heads with
//! `httparse` and relays bytes to a keep-alive upstream connection, as nginx's proxy module
//! does.
//!
//! hyper's server and client each turn a message into a `Request`/`Response` with a
//! `HeaderMap` and a body of frames, and back into bytes on the other side; for a proxy that
//! only adds a request ID, strips hop-by-hop headers and counts, that round trip was most
//! of its CPU time per request (callgrind: 44 k instructions per request, mostly hyper's
//! connection state machines and header maps). Here the client's head is parsed in place
//! and the upstream head written straight from it; bodies are relayed as bytes, with
//! chunked framing checked by [`super::chunked`] but passed on as it came. A small request
//! whose body has arrived goes out in one write with its head; a small answer comes back in
//! one write too.
//!
//! A connection that opens with the HTTP/2 preface is handed to hyper (h2c), see
//! [`super::serve_h2`].

use super::body::Capture;
use super::chunked::{ChunkError, Decoder};
use super::forward::{LogPart, Outcome, Shared};
use super::metrics::UpstreamErrorKind;
use super::upstream::{Connections, UpConn};
use bytes::{Buf, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// The first bytes of an HTTP/2 connection with prior knowledge (h2c).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Header fields per message; more gets 431 (requests) or 502 (answers).
const MAX_HEADERS: usize = 100;
/// Bytes of a message head; more gets 431 (requests) or 502 (answers).
const MAX_HEAD: usize = 64 * 1024;
/// Free space kept in a read buffer before each read.
const READ_SPACE: usize = 16 * 1024;
/// Capacity of a client connection's read buffer to start with.
const INITIAL_BUFFER: usize = 8 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the first bytes of a new connection are.
pub(crate) enum Sniffed {
    Http1,
    H2,
    /// Closed, failed or silent before saying anything.
    Gone,
}

/// Reads until the bytes in `buf` tell HTTP/2's preface from anything else.
pub(crate) async fn sniff(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: std::time::Duration,
) -> Sniffed {
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Sniffed::Http1;
        }
        if n == H2_PREFACE.len() {
            return Sniffed::H2;
        }
        reserve(buf);
        match tokio::time::timeout(timeout, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Sniffed::Gone,
        }
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_SPACE / 4 {
        buf.reserve(READ_SPACE);
    }
}

/// A deadline timer that is re-armed only when it fires early, so a request costs no
/// timer registration.
///
/// Registering and cancelling a tokio timer per request (what `tokio::time::timeout`
/// does) was 9% of the proxy's instructions per request. Deadlines of one connection only
/// move forward, so the timer stays armed at an earlier deadline; when it fires, the
/// current deadline is checked and the timer re-armed to it if not yet due. A timer
/// therefore fires at most once per timeout period, whatever the request rate.
pub(crate) struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
}

impl LazyTimer {
    pub(crate) fn new(deadline: tokio::time::Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Completes at `deadline` (never before it).
    pub(crate) async fn until(&mut self, deadline: tokio::time::Instant) {
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
        loop {
            self.sleep.as_mut().await;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (answers only).
    Close,
}

/// What the proxy needs to know of a request once its head has been turned into the
/// upstream's.
struct RequestHead {
    method: Method,
    /// The target as the client sent it, for the query log (empty when the log is off).
    path: String,
    http10: bool,
    /// The client wants the connection kept after this exchange.
    keep_alive: bool,
    framing: Framing,
    expect_continue: bool,
    request_id: HeaderValue,
    /// The target is not a path (`*` or authority-form): answered 400.
    bad_target: bool,
}

/// A request head the proxy refuses before it reaches the model.
struct Rejected {
    status: StatusCode,
    error: &'static str,
    message: &'static str,
    /// What could be read of the request before it was refused, for its metrics and
    /// query-log line; `None` when not even its request line could be read.
    seen: Option<Box<Seen>>,
}

/// The parts of a refused request that could be read.
struct Seen {
    method: Method,
    target: String,
    request_id: Option<HeaderValue>,
}

impl Rejected {
    const fn bad(message: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            message,
            seen: None,
        }
    }

    fn having_seen(mut self, method: &Method, target: &str, request_id: Option<&[u8]>) -> Self {
        self.seen = Some(Box::new(Seen {
            method: method.clone(),
            target: target.to_owned(),
            request_id: request_id.and_then(|id| HeaderValue::from_bytes(id).ok()),
        }));
        self
    }
}

/// Per-connection constants the head parser needs.
struct HeadContext<'a> {
    shared: &'a Shared,
    /// The client's address, the value added to `X-Forwarded-For`.
    client_ip: &'a str,
}

/// The connection header's options and the extra hop-by-hop names it lists.
#[derive(Default)]
struct ConnectionOptions<'a> {
    close: bool,
    keep_alive: bool,
    named: Vec<&'a [u8]>,
}

impl<'a> ConnectionOptions<'a> {
    fn add(&mut self, value: &'a [u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                self.named.push(token);
            }
        }
    }

    fn names(&self, name: &str) -> bool {
        self.named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// The header fields the proxy looks at; everything else passes through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Connection,
    ContentLength,
    TransferEncoding,
    ContentEncoding,
    Expect,
    Host,
    RequestId,
    ForwardedFor,
    /// Another field that describes one hop, not the message (RFC 9110 §7.6.1):
    /// `keep-alive`, `proxy-connection`, `te`, `trailer`, `upgrade`.
    Hop,
    Other,
}

impl Field {
    /// Classifies a field name by its length first, so most names take one comparison.
    fn of(name: &str) -> Self {
        let name = name.as_bytes();
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is(b"te") => Self::Hop,
            4 if is(b"host") => Self::Host,
            6 if is(b"expect") => Self::Expect,
            7 if is(b"trailer") || is(b"upgrade") => Self::Hop,
            10 if is(b"connection") => Self::Connection,
            10 if is(b"keep-alive") => Self::Hop,
            12 if is(b"x-request-id") => Self::RequestId,
            14 if is(b"content-length") => Self::ContentLength,
            15 if is(b"x-forwarded-for") => Self::ForwardedFor,
            16 if is(b"content-encoding") => Self::ContentEncoding,
            16 if is(b"proxy-connection") => Self::Hop,
            17 if is(b"transfer-encoding") => Self::TransferEncoding,
            _ => Self::Other,
        }
    }

    /// Fields the proxy never passes on as they came: hop-by-hop ones, and the framing
    /// ones it writes itself.
    fn is_dropped(self) -> bool {
        matches!(
            self,
            Self::Connection
                | Self::ContentLength
                | Self::TransferEncoding
                | Self::Expect
                | Self::Hop
        )
    }
}

/// A Content-Length value: digits only, and every copy of the header the same.
fn content_length(prior: Option<u64>, value: &[u8]) -> Result<u64, ()> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 {
        return Err(());
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(());
        }
        n = n * 10 + u64::from(b - b'0');
    }
    match prior {
        Some(p) if p != n => Err(()),
        _ => Ok(n),
    }
}

/// The transfer codings of a request's `Transfer-Encoding` fields, all of them together.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TransferCodings {
    /// `chunked` elements seen.
    chunked: u32,
    /// A coding other than `chunked` (`gzip`, `chunked;x=1`, …) was named.
    other: bool,
}

impl TransferCodings {
    fn add(&mut self, value: &[u8]) {
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked += 1;
            } else if !coding.is_empty() {
                self.other = true;
            }
        }
    }
}

/// True when the last transfer coding is `chunked`: how an answer is framed (RFC 9112
/// §6.3), whatever codings come before it.
fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Parses a request head at the start of `buf` and writes the upstream's version of it to
/// `out`. `Ok(None)`: the head is not complete yet.
fn parse_request(
    buf: &[u8],
    cx: &HeadContext<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<(usize, RequestHead)>, Rejected> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut storage) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejected {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                error: "headers_too_large",
                message: "too many header fields",
                seen: None,
            });
        }
        Err(_) => return Err(Rejected::bad("the request head is not valid HTTP/1.1")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Rejected::bad("the request head is not valid HTTP/1.1"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Rejected::bad("the request method is not valid"))?;
    let http10 = version == 0;

    let mut connection = ConnectionOptions::default();
    let mut length = None;
    let mut codings: Option<TransferCodings> = None;
    let mut expect_continue = false;
    let mut bad_length = false;
    let mut client_id = None;
    let mut fields = [Field::Other; MAX_HEADERS];
    for (h, field) in req.headers.iter().zip(&mut fields) {
        *field = Field::of(h.name);
        match field {
            Field::Connection => connection.add(h.value),
            Field::ContentLength => match content_length(length, h.value) {
                Ok(n) => length = Some(n),
                Err(()) => bad_length = true,
            },
            Field::TransferEncoding => codings.get_or_insert_default().add(h.value),
            Field::Expect => expect_continue = h.value.eq_ignore_ascii_case(b"100-continue"),
            Field::RequestId => client_id = Some(h.value),
            _ => {}
        }
    }
    if bad_length {
        return Err(Rejected::bad("the Content-Length header is not valid")
            .having_seen(&method, target, client_id));
    }
    let framing = match (codings, length) {
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing
        // (an HTTP/1.0 hop in front may not have understood it); hyper answers 400 too.
        (Some(_), _) if http10 => {
            return Err(
                Rejected::bad("Transfer-Encoding is not allowed in an HTTP/1.0 request")
                    .having_seen(&method, target, client_id),
            );
        }
        // The body is relayed as it came, so a coding the proxy does not decode would
        // reach the model under a header saying only `chunked`.
        (Some(TransferCodings { other: true, .. }), _) => {
            return Err(Rejected {
                status: StatusCode::NOT_IMPLEMENTED,
                error: "unsupported_transfer_encoding",
                message: "only the chunked transfer coding is supported",
                seen: None,
            }
            .having_seen(&method, target, client_id));
        }
        (Some(TransferCodings { chunked: 1, .. }), _) => Framing::Chunked,
        // No coding at all, or `chunked` twice (RFC 9112 §7: never applied twice).
        (Some(_), _) => {
            return Err(Rejected::bad("the Transfer-Encoding header is not valid")
                .having_seen(&method, target, client_id));
        }
        (None, Some(0) | None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    // Both framings at once is a smuggling risk: chunked wins (RFC 9112 §6.3) and the
    // connection closes after the answer.
    let keep_alive = !(codings.is_some() && length.is_some())
        && if http10 {
            connection.keep_alive
        } else {
            !connection.close
        };

    // Origin form is the rule; absolute form (`http://host/path`) is reduced to its path.
    let (path, bad_target) = match target.as_bytes().first() {
        Some(b'/') => (target, false),
        _ => match target.strip_prefix("http://") {
            Some(rest) => (rest.find('/').map_or("/", |i| &rest[i..]), false),
            None => (target, true),
        },
    };

    let shared = cx.shared;
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(shared.upstream.base_path.as_bytes());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut request_id = None;
    let mut has_host = false;
    let mut forwarded_for: Option<Vec<u8>> = None;
    for (h, &field) in req.headers.iter().zip(&fields) {
        if field.is_dropped() || (!connection.named.is_empty() && connection.names(h.name)) {
            continue;
        }
        match field {
            Field::ForwardedFor => {
                let joined = forwarded_for.get_or_insert_with(Vec::new);
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(h.value);
                continue;
            }
            Field::RequestId => request_id = HeaderValue::from_bytes(h.value).ok(),
            Field::Host => has_host = true,
            _ => {}
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    if !has_host {
        // HTTP/1.1 requires a Host; without one from the client, name the upstream.
        push_header(out, b"host", shared.upstream.authority.as_str().as_bytes());
    }
    let request_id = match request_id {
        Some(id) => id,
        None => {
            let id = shared.ids.next();
            push_header(out, b"x-request-id", id.as_bytes());
            id
        }
    };
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = forwarded_for {
        out.extend_from_slice(&prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(cx.client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    match framing {
        Framing::Length(n) => {
            push_number_header(out, b"content-length", n);
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    out.extend_from_slice(b"\r\n");

    let head = RequestHead {
        path: if shared.query_log.is_some() {
            target.to_owned()
        } else {
            String::new()
        },
        method,
        http10,
        keep_alive,
        framing,
        expect_continue,
        request_id,
        bad_target,
    };
    Ok(Some((len, head)))
}

/// `name: n` without `fmt` machinery, which showed in the profile for two numbers a request.
fn push_number_header(out: &mut Vec<u8>, name: &[u8], n: u64) {
    push_header(out, name, itoa::Buffer::new().format(n).as_bytes());
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the proxy needs to know of an answer once its head has been turned into the
/// client's (all but the framing and connection headers, which [`relay_response`] adds).
struct ResponseHead {
    status: u16,
    framing: Framing,
    /// The upstream will close the connection after this answer.
    upstream_close: bool,
    /// No content coding (the body can be read for its predicted class).
    identity: bool,
    has_request_id: bool,
}

/// Parses an answer's head at the start of `buf`, writing the client's version of it to
/// `out` without its final empty line. `Ok(None)`: not complete yet.
fn parse_response(
    buf: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<Option<(usize, ResponseHead)>, RelayError> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => {
            return Err(RelayError::Malformed(
                "the answer's head is not valid HTTP/1.1",
            ));
        }
    };
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(RelayError::Malformed(
            "the answer's head is not valid HTTP/1.1",
        ));
    };
    let mut connection = ConnectionOptions::default();
    let mut length = None;
    let mut chunked = None;
    let mut identity = true;
    let mut has_request_id = false;
    let mut fields = [Field::Other; MAX_HEADERS];
    for (h, field) in res.headers.iter().zip(&mut fields) {
        *field = Field::of(h.name);
        match field {
            Field::Connection => connection.add(h.value),
            Field::ContentLength => {
                length = Some(content_length(length, h.value).map_err(|()| {
                    RelayError::Malformed("the answer's Content-Length is not valid")
                })?);
            }
            Field::TransferEncoding => chunked = Some(ends_chunked(h.value)),
            Field::ContentEncoding => identity = h.value.eq_ignore_ascii_case(b"identity"),
            Field::RequestId => has_request_id = true,
            _ => {}
        }
    }
    // RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304, whatever the headers say.
    let no_body = head_request || status < 200 || status == 204 || status == 304;
    let framing = match (chunked, length) {
        _ if no_body => Framing::None,
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) | (None, None) => Framing::Close,
        (None, Some(0)) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    if version == 0 && chunked.is_some() {
        // RFC 9112 §6.1: faulty framing; hyper's client refuses such an answer too.
        return Err(RelayError::Malformed(
            "the answer has Transfer-Encoding but is HTTP/1.0",
        ));
    }
    // With both framings, whoever else reads this connection may split it elsewhere:
    // RFC 9112 §6.3 item 3 says to close it after the answer, as hyper does.
    let upstream_close = (chunked.is_some() && length.is_some())
        || if version == 0 {
            !connection.keep_alive
        } else {
            connection.close
        };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(res.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (h, field) in res.headers.iter().zip(fields) {
        if field.is_dropped() || (!connection.named.is_empty() && connection.names(h.name)) {
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    // What the answer said of its length also describes a HEAD or 304 answer's missing body.
    if chunked.is_none()
        && let Some(n) = length
        && (framing != Framing::None || status != 204)
    {
        push_number_header(out, b"content-length", n);
    }
    Ok(Some((
        len,
        ResponseHead {
            status,
            framing,
            upstream_close,
            identity,
            has_request_id,
        },
    )))
}

/// Why an answer did not reach the client in full.
#[derive(Debug)]
enum RelayError {
    /// No answer head within the request timeout.
    Timeout,
    /// The upstream closed or failed; `nothing` when not one byte of an answer came (the
    /// request may then be retried on a fresh connection).
    Upstream { nothing: bool },
    /// The upstream's answer was not valid HTTP/1.1.
    Malformed(&'static str),
    /// Writing to the client failed: it went away.
    Client,
}

/// Per-request settings of [`relay_response`].
struct ResponseContext<'a> {
    head_request: bool,
    client_http10: bool,
    client_keep_alive: bool,
    request_id: &'a HeaderValue,
    /// Answers to this request count predicted classes (a POST, counting on).
    count_allowed: bool,
    class_limit: usize,
    log_limit: usize,
    deadline: tokio::time::Instant,
    /// The longest wait for the next bytes of an answer's body (`--timeout`, as nginx's
    /// `proxy_read_timeout`): a model that stalls mid-answer does not hold the client for ever.
    pause: Duration,
    /// The proxy is stopping: the connection closes after this answer.
    stopping: bool,
}

/// How the answer went, filled in by [`relay_response`] as it goes, so it is known even
/// when the relay fails or is abandoned half-way.
#[derive(Default)]
struct ResponseState {
    status: Option<u16>,
    /// The final head has gone (or started to go) to the client: the proxy can no longer
    /// answer with an error of its own.
    head_sent: bool,
    complete: bool,
    count_classes: bool,
    capture: Option<Capture>,
    /// The upstream connection can take another request.
    upstream_reusable: bool,
    /// The client connection must close after this answer.
    client_close: bool,
}

/// Reads the answer from the upstream and writes it to the client.
async fn relay_response<R, W>(
    upstream: &mut R,
    ubuf: &mut BytesMut,
    client: &mut W,
    out: &mut Vec<u8>,
    timer: &mut LazyTimer,
    cx: &ResponseContext<'_>,
    st: &mut ResponseState,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut got_bytes = !ubuf.is_empty();
    let head = loop {
        if !ubuf.is_empty() {
            match parse_response(ubuf, cx.head_request, out)? {
                Some((len, head)) if (100..200).contains(&head.status) => {
                    ubuf.advance(len);
                    if head.status == 101 {
                        // The proxy never asks for an upgrade, so it cannot relay one.
                        return Err(RelayError::Malformed("the answer switched protocols"));
                    }
                    // An interim answer (103 Early Hints, say) passes on to HTTP/1.1 clients.
                    if !cx.client_http10 {
                        out.extend_from_slice(b"\r\n");
                        client
                            .write_all(out)
                            .await
                            .map_err(|_| RelayError::Client)?;
                    }
                    continue;
                }
                Some((len, head)) => {
                    ubuf.advance(len);
                    break head;
                }
                None if ubuf.len() > MAX_HEAD => {
                    return Err(RelayError::Malformed("the answer's head is too large"));
                }
                None => {}
            }
        }
        reserve(ubuf);
        let read = tokio::select! {
            biased;
            read = upstream.read_buf(ubuf) => read,
            () = timer.until(cx.deadline) => return Err(RelayError::Timeout),
        };
        match read {
            Ok(n) if n > 0 => got_bytes = true,
            _ => {
                return Err(RelayError::Upstream {
                    nothing: !got_bytes,
                });
            }
        }
    };

    st.status = Some(head.status);
    st.count_classes = cx.count_allowed && (200..300).contains(&head.status) && head.identity;
    let limit = cx
        .log_limit
        .max(if st.count_classes { cx.class_limit } else { 0 });
    if limit > 0 {
        st.capture = Some(Capture::new(limit));
    }
    // An HTTP/1.0 client cannot take chunks: it gets the data, delimited by the close.
    let dechunk = head.framing == Framing::Chunked && cx.client_http10;
    st.client_close =
        !cx.client_keep_alive || head.framing == Framing::Close || dechunk || cx.stopping;
    if head.framing == Framing::Chunked && !dechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if st.client_close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if cx.client_http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !head.has_request_id {
        push_header(out, b"x-request-id", cx.request_id.as_bytes());
    }
    out.extend_from_slice(b"\r\n");

    match head.framing {
        Framing::None => {
            st.head_sent = true;
            client
                .write_all(out)
                .await
                .map_err(|_| RelayError::Client)?;
        }
        Framing::Length(total) => {
            // The head and what has arrived of the body go out in one write.
            let mut remaining = total;
            let take = clamp(remaining, ubuf.len());
            capture(st, &ubuf[..take]);
            out.extend_from_slice(&ubuf[..take]);
            ubuf.advance(take);
            remaining -= take as u64;
            st.head_sent = true;
            client
                .write_all(out)
                .await
                .map_err(|_| RelayError::Client)?;
            while remaining > 0 {
                fill(upstream, ubuf, timer, cx.pause).await?;
                let take = clamp(remaining, ubuf.len());
                capture(st, &ubuf[..take]);
                client
                    .write_all(&ubuf[..take])
                    .await
                    .map_err(|_| RelayError::Client)?;
                ubuf.advance(take);
                remaining -= take as u64;
            }
        }
        Framing::Chunked => {
            let mut decoder = Decoder::new();
            let mut first = true;
            loop {
                if !first {
                    out.clear();
                    fill(upstream, ubuf, timer, cx.pause).await?;
                }
                let used = {
                    let data = &ubuf[..];
                    let capture_ref = &mut st.capture;
                    let out_ref = &mut *out;
                    decoder
                        .decode(data, |range| {
                            if let Some(c) = capture_ref {
                                c.push(&data[range.clone()]);
                            }
                            if dechunk {
                                out_ref.extend_from_slice(&data[range]);
                            }
                        })
                        .map_err(|_| {
                            RelayError::Malformed("the answer's chunked body is malformed")
                        })?
                };
                if !dechunk {
                    out.extend_from_slice(&ubuf[..used]);
                }
                ubuf.advance(used);
                if first {
                    st.head_sent = true;
                    first = false;
                }
                if !out.is_empty() {
                    client
                        .write_all(out)
                        .await
                        .map_err(|_| RelayError::Client)?;
                }
                if decoder.is_done() {
                    break;
                }
            }
        }
        Framing::Close => {
            st.head_sent = true;
            loop {
                capture(st, &ubuf[..]);
                out.extend_from_slice(&ubuf[..]);
                ubuf.clear();
                client
                    .write_all(out)
                    .await
                    .map_err(|_| RelayError::Client)?;
                out.clear();
                match read_body(upstream, ubuf, timer, cx.pause).await {
                    Ok(n) if n > 0 => {}
                    Err(RelayError::Timeout) => return Err(RelayError::Timeout),
                    // The upstream's close ends the body.
                    _ => break,
                }
            }
            st.complete = true;
            st.upstream_reusable = false;
            return Ok(());
        }
    }
    st.complete = true;
    // Bytes after the answer were never asked for: the connection is in an unknown state.
    st.upstream_reusable = !head.upstream_close && ubuf.is_empty();
    Ok(())
}

fn clamp(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

fn capture(st: &mut ResponseState, data: &[u8]) {
    if let Some(c) = &mut st.capture {
        c.push(data);
    }
}

/// Reads more of an answer's body; the upstream closing before its end is an error.
async fn fill<R: AsyncRead + Unpin>(
    upstream: &mut R,
    ubuf: &mut BytesMut,
    timer: &mut LazyTimer,
    pause: Duration,
) -> Result<(), RelayError> {
    match read_body(upstream, ubuf, timer, pause).await? {
        0 => Err(RelayError::Upstream { nothing: false }),
        _ => Ok(()),
    }
}

/// Reads more of an answer's body (0 bytes: the upstream closed), waiting at most `pause`.
async fn read_body<R: AsyncRead + Unpin>(
    upstream: &mut R,
    ubuf: &mut BytesMut,
    timer: &mut LazyTimer,
    pause: Duration,
) -> Result<usize, RelayError> {
    reserve(ubuf);
    let deadline = tokio::time::Instant::now() + pause;
    tokio::select! {
        biased;
        read = upstream.read_buf(ubuf) => read.map_err(|_| RelayError::Upstream { nothing: false }),
        () = timer.until(deadline) => Err(RelayError::Timeout),
    }
}

/// Writes all of `data`, returning how many bytes went out even when a write fails: a
/// request of which nothing was written can be sent on another connection.
async fn write_counting<W: AsyncWrite + Unpin>(
    stream: &mut W,
    data: &[u8],
) -> (usize, std::io::Result<()>) {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]).await {
            Ok(0) => return (written, Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(error) => return (written, Err(error)),
        }
    }
    (written, Ok(()))
}

/// Why a request body did not reach the upstream in full.
#[derive(Debug)]
enum BodyError {
    /// The client closed, failed, or sent malformed chunks: its request is broken.
    Client,
    /// Writing to the upstream failed (it may have answered early and closed).
    Upstream,
}

impl From<ChunkError> for BodyError {
    fn from(_: ChunkError) -> Self {
        Self::Client
    }
}

/// Relays a request body that has not fully arrived with its head, as it arrives. Once a
/// write to the upstream fails (it answered early and closed, say), the rest of the body is
/// still read from the client and dropped, so the client can finish sending and read the
/// answer on a connection that stays usable; the result then says the upstream failed.
async fn send_body<R, W>(
    client: &mut R,
    cbuf: &mut BytesMut,
    upstream: &mut W,
    framing: Framing,
    capture: &mut Option<Capture>,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut upstream_ok = true;
    let mut decoder = Decoder::new();
    let mut remaining = match framing {
        Framing::None | Framing::Close => return Ok(()),
        Framing::Length(n) => n,
        Framing::Chunked => 0,
    };
    loop {
        if cbuf.is_empty() {
            reserve(cbuf);
            match client.read_buf(cbuf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(BodyError::Client),
            }
        }
        let data = &cbuf[..];
        let used = if framing == Framing::Chunked {
            decoder.decode(data, |range| {
                if let Some(c) = capture.as_mut() {
                    c.push(&data[range]);
                }
            })?
        } else {
            let take = clamp(remaining, data.len());
            if let Some(c) = capture.as_mut() {
                c.push(&data[..take]);
            }
            remaining -= take as u64;
            take
        };
        if upstream_ok && upstream.write_all(&cbuf[..used]).await.is_err() {
            upstream_ok = false;
        }
        cbuf.advance(used);
        let done = if framing == Framing::Chunked {
            decoder.is_done()
        } else {
            remaining == 0
        };
        if done {
            return if upstream_ok {
                Ok(())
            } else {
                Err(BodyError::Upstream)
            };
        }
    }
}

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
                let cx = HeadContext {
                    shared: &self.shared,
                    client_ip: &self.client_ip,
                };
                match parse_request(&self.buf, &cx, &mut self.out)? {
                    Some((len, head)) => {
                        self.buf.advance(len);
                        return Ok(Some(head));
                    }
                    None if self.buf.len() > MAX_HEAD => {
                        return Err(Rejected {
                            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            error: "headers_too_large",
                            message: "the request head is larger than 64 KiB",
                            seen: None,
                        });
                    }
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
    async fn upstream(&mut self, deadline: tokio::time::Instant) -> Result<UpConn, Failure> {
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

    async fn connect(&self, deadline: tokio::time::Instant) -> Result<UpConn, Failure> {
        match tokio::time::timeout_at(deadline, self.shared.conns.connect()).await {
            Ok(Ok(up)) => Ok(up),
            Ok(Err(error)) => Err(Failure::Connect(error)),
            Err(_elapsed) => Err(Failure::Timeout),
        }
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
        failure: Failure,
        request_id: &HeaderValue,
        keep: bool,
    ) -> bool {
        let shared = self.shared.clone();
        match failure {
            Failure::Connect(error) => {
                shared.metrics.upstream_error(UpstreamErrorKind::Connect);
                tracing::warn!(request_id = ?request_id, kind = "connect", %error, "upstream request failed");
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
            Failure::Timeout => self.timed_out(st, request_id, keep).await,
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

/// Why no upstream connection was had.
enum Failure {
    Connect(std::io::Error),
    Timeout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_name_hop_by_hop_headers() {
        let mut options = ConnectionOptions::default();
        options.add(b"close, X-Hop , keep-alive");
        assert!(options.close && options.keep_alive);
        assert!(options.names("x-hop"));
        assert!(!options.names("x-other"));
    }

    #[test]
    fn fields_are_classified_whatever_their_case() {
        assert_eq!(Field::of("Content-Length"), Field::ContentLength);
        assert_eq!(Field::of("TRANSFER-ENCODING"), Field::TransferEncoding);
        assert_eq!(Field::of("X-Request-Id"), Field::RequestId);
        for hop in ["te", "Trailer", "upgrade", "Keep-Alive", "proxy-connection"] {
            assert_eq!(Field::of(hop), Field::Hop, "{hop}");
        }
        for kept in [
            "content-type",
            "x-custom",
            "content-encoding",
            "host",
            "tee",
        ] {
            assert!(!Field::of(kept).is_dropped(), "{kept}");
        }
    }

    #[test]
    fn content_lengths_must_agree_and_be_digits() {
        assert_eq!(content_length(None, b"42"), Ok(42));
        assert_eq!(content_length(Some(42), b" 42 "), Ok(42));
        assert!(content_length(Some(42), b"43").is_err());
        assert!(content_length(None, b"+4").is_err());
        assert!(content_length(None, b"").is_err());
        assert!(content_length(None, b"99999999999999999999999").is_err());
    }

    #[test]
    fn only_a_final_chunked_coding_counts() {
        assert!(ends_chunked(b"chunked"));
        assert!(ends_chunked(b"gzip, Chunked"));
        assert!(!ends_chunked(b"chunked, gzip"));
    }

    #[test]
    fn request_codings_other_than_chunked_are_noticed() {
        let codings = |values: &[&[u8]]| {
            let mut c = TransferCodings::default();
            values.iter().for_each(|v| c.add(v));
            (c.chunked, c.other)
        };
        assert_eq!(codings(&[b"Chunked"]), (1, false));
        assert_eq!(codings(&[b"gzip, chunked"]), (1, true));
        assert_eq!(codings(&[b"gzip", b"chunked"]), (1, true));
        assert_eq!(codings(&[b"chunked;ext=1"]), (0, true));
        assert_eq!(codings(&[b" , chunked, "]), (1, false));
        assert_eq!(codings(&[b"chunked", b"chunked"]), (2, false));
        assert_eq!(codings(&[b""]), (0, false));
    }
}
