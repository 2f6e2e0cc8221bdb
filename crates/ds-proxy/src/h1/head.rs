//! Message heads of the HTTP/1.1 path: a request or answer head parsed in place by
//! `httparse`, checked (framing, connection options, target) and rewritten for the other
//! side in the same pass, without building a `HeaderMap`.
//!
//! Pure, no I/O, and nothing of the crate but [`super::framing`]: `fuzz/` compiles this
//! file on its own and compares it with hyper (fuzz/fuzz_targets/h1_framing.rs).

use super::framing::{Framing, TransferCodings, content_length, ends_chunked};
use http::{HeaderValue, Method, StatusCode};
use std::mem::MaybeUninit;

/// Header fields per message; more gets 431 (requests) or 502 (answers).
const MAX_HEADERS: usize = 100;
/// Bytes of a message head; more gets 431 (requests) or 502 (answers).
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// What the proxy needs to know of a request once its head has been turned into the
/// upstream's.
pub(crate) struct RequestHead {
    pub(crate) method: Method,
    /// The target as the client sent it, for the query log (empty when the log is off).
    pub(crate) path: String,
    /// A POST's path and query when the path starts with `/v2/`, for reading the answer as
    /// an Open Inference Protocol one; `None` otherwise, so other requests allocate nothing.
    pub(crate) v2_path: Option<Box<str>>,
    pub(crate) http10: bool,
    /// The client wants the connection kept after this exchange.
    pub(crate) keep_alive: bool,
    pub(crate) framing: Framing,
    pub(crate) expect_continue: bool,
    pub(crate) request_id: HeaderValue,
    /// The target is not a path (`*` or authority-form): answered 400.
    pub(crate) bad_target: bool,
}

/// A request head the proxy refuses before it reaches the model.
pub(crate) struct Rejected {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) message: &'static str,
    /// What could be read of the request before it was refused, for its metrics and
    /// query-log line; `None` when not even its request line could be read.
    pub(crate) seen: Option<Box<Seen>>,
}

/// The parts of a refused request that could be read.
pub(crate) struct Seen {
    pub(crate) method: Method,
    pub(crate) target: String,
    pub(crate) request_id: Option<HeaderValue>,
}

impl Rejected {
    pub(crate) const fn bad(message: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            message,
            seen: None,
        }
    }

    /// A head over [`MAX_HEAD`].
    pub(crate) const fn too_large() -> Self {
        Self {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            error: "headers_too_large",
            message: "the request head is larger than 64 KiB",
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

/// What the upstream's version of a request head is made with.
pub(crate) struct RequestRewrite<'a> {
    /// Put in front of every request path (the upstream URL's path, no trailing `/`).
    pub(crate) base_path: &'a str,
    /// The upstream's `host:port`, the `Host` of a request that has none.
    pub(crate) authority: &'a str,
    /// The client's address, the value added to `X-Forwarded-For`.
    pub(crate) client_ip: &'a str,
    /// Keep the request target for the query log.
    pub(crate) keep_target: bool,
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

/// Parses a request head at the start of `buf` and writes the upstream's version of it to
/// `out`; `new_id` makes the request ID of a request without one. `Ok(None)`: the head is
/// not complete yet.
pub(crate) fn parse_request(
    buf: &[u8],
    cx: &RequestRewrite<'_>,
    new_id: impl FnOnce() -> HeaderValue,
    out: &mut Vec<u8>,
) -> Result<Option<(usize, RequestHead)>, Rejected> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut storage) {
        // A head over the limit may arrive complete in one read.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(Rejected::too_large()),
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
        (
            Some(TransferCodings {
                chunked: 1,
                empty_field: false,
                ..
            }),
            _,
        ) => Framing::Chunked,
        // No coding at all, an empty field, or `chunked` twice (RFC 9112 §7: never applied
        // twice).
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
            Some(rest) if http::Uri::try_from(target).is_ok() => {
                (rest.find(['/', '?']).map_or("", |i| &rest[i..]), false)
            }
            Some(_) => ("", true),
            None => (target, true),
        },
    };
    // What `http::Uri` refuses, a model server on hyper (or axum, …) refuses too.
    if !bad_target && !valid_path(path.as_bytes()) {
        return Err(Rejected::bad("the request target is not a valid URI")
            .having_seen(&method, target, client_id));
    }

    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(cx.base_path.as_bytes());
    if !path.starts_with('/') {
        // `http://host` or `http://host?q`: the path is empty, which means `/`.
        out.push(b'/');
    }
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
        push_header(out, b"host", cx.authority.as_bytes());
    }
    let request_id = match request_id {
        Some(id) => id,
        None => {
            let id = new_id();
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

    let v2_path = (method == Method::POST && path.starts_with("/v2/")).then(|| path.into());
    let head = RequestHead {
        v2_path,
        path: if cx.keep_target {
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

/// Byte classes of a request target's path and query, as `http::Uri` sorts them (its
/// `path.rs`: RFC 3986 characters, plus `"`, `{` and `}` in paths as browsers send them).
const TARGET_BAD: u8 = 0;
const TARGET_OK: u8 = 1;
const TARGET_QUERY: u8 = 2;
const TARGET_FRAGMENT: u8 = 3;
const TARGET_HIGH: u8 = 4;

const fn target_classes(query: bool) -> [u8; 256] {
    let mut classes = [TARGET_BAD; 256];
    let mut b = 0;
    while b < 256 {
        classes[b] = match b as u8 {
            b'#' => TARGET_FRAGMENT,
            b'?' if !query => TARGET_QUERY,
            0x80..=0xff => TARGET_HIGH,
            0x21 | 0x24..=0x3b | 0x3d | 0x3f..=0x7e if query => TARGET_OK,
            0x21 | b'"' | 0x24..=0x3b | 0x3d | 0x40..=0x5f | 0x61..=0x7b | 0x7c | 0x7d | 0x7e
                if !query =>
            {
                TARGET_OK
            }
            _ => TARGET_BAD,
        };
        b += 1;
    }
    classes
}

const PATH_CLASSES: [u8; 256] = target_classes(false);
const QUERY_CLASSES: [u8; 256] = target_classes(true);

/// True when `http::Uri` takes this path and query (the fragment, which it drops, is not
/// looked at). A table lookup per byte, with no allocation.
fn valid_path(target: &[u8]) -> bool {
    let mut classes = &PATH_CLASSES;
    let mut high = false;
    let mut end = target.len();
    for (i, &b) in target.iter().enumerate() {
        match classes[usize::from(b)] {
            TARGET_OK => {}
            TARGET_QUERY => classes = &QUERY_CLASSES,
            TARGET_HIGH => high = true,
            TARGET_FRAGMENT => {
                end = i;
                break;
            }
            _ => return false,
        }
    }
    !high || std::str::from_utf8(&target[..end]).is_ok()
}

/// `name: n` without `fmt` machinery, which showed in the profile for two numbers a request.
pub(crate) fn push_number_header(out: &mut Vec<u8>, name: &[u8], n: u64) {
    push_header(out, name, itoa::Buffer::new().format(n).as_bytes());
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the proxy needs to know of an answer once its head has been turned into the
/// client's (all but the framing and connection headers, which the relay adds).
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The upstream will close the connection after this answer.
    pub(crate) upstream_close: bool,
    /// No content coding (the body can be read for its predicted class).
    pub(crate) identity: bool,
    pub(crate) has_request_id: bool,
}

/// Parses an answer's head at the start of `buf`, writing the client's version of it to
/// `out` without its final empty line. `Ok(None)`: not complete yet.
pub(crate) fn parse_response(
    buf: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<Option<(usize, ResponseHead)>, BadAnswer> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(BadAnswer("the answer's head is too large"));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => {
            return Err(BadAnswer("the answer's head is not valid HTTP/1.1"));
        }
    };
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(BadAnswer("the answer's head is not valid HTTP/1.1"));
    };
    if status < 100 {
        // httparse takes any three digits; written back as `33`, the status line would be
        // broken (hyper's client refuses it too).
        return Err(BadAnswer("the answer's status code is not valid"));
    }
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
                length = Some(
                    content_length(length, h.value)
                        .map_err(|()| BadAnswer("the answer's Content-Length is not valid"))?,
                );
            }
            Field::TransferEncoding => {
                chunked = Some(
                    ends_chunked(h.value)
                        .ok_or(BadAnswer("the answer's Transfer-Encoding is not valid"))?,
                );
            }
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
    // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing. With a
    // body that cannot be delimited, as hyper's client refuses it; without one, as hyper
    // too, it passes, and the connection closes after it.
    let faulty = version == 0 && chunked.is_some();
    if faulty && !no_body {
        return Err(BadAnswer(
            "the answer has Transfer-Encoding but is HTTP/1.0",
        ));
    }
    // With both framings, whoever else reads this connection may split it elsewhere:
    // RFC 9112 §6.3 item 3 says to close it after the answer.
    let upstream_close = faulty
        || (chunked.is_some() && length.is_some())
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

/// An answer head the proxy cannot relay (502 `upstream_error`): what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadAnswer(pub(crate) &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_as_http_uri_checks_them() {
        for good in [
            "/",
            "/v1/models/iris:predict",
            "/a?b=c&d=/e?f",
            "/{\"json\":1}",
            "/caf\u{e9}",
            "/a#<fragment>",
            "/a?`",
        ] {
            assert!(valid_path(good.as_bytes()), "{good}");
            assert!(http::Uri::try_from(good).is_ok(), "{good}");
        }
        for bad in [&b"/a<b"[..], b"/`", b"/a?\"", b"/a?<", b"/\xff", b"/\x7f"] {
            assert!(!valid_path(bad), "{bad:?}");
            assert!(http::Uri::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_transfer_encoding_field_after_chunked_is_refused() {
        let cx = RequestRewrite {
            base_path: "",
            authority: "model:8501",
            client_ip: "10.0.0.1",
            keep_target: true,
        };
        let parse = |message: &[u8]| {
            let mut out = Vec::new();
            parse_request(message, &cx, || HeaderValue::from_static("id"), &mut out)
                .map(|parsed| parsed.map(|(_, head)| head.framing))
                .map_err(|rejected| rejected.message)
        };
        // Found by hack/fuzz.sh: hyper refuses it (its last field is not `chunked`).
        let smuggle = b"POST /echo HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\
                        Transfer-Encoding:\r\n\r\n";
        assert_eq!(
            parse(smuggle),
            Err("the Transfer-Encoding header is not valid")
        );
        let fine = b"POST /echo HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: , chunked\r\n\r\n";
        assert_eq!(parse(fine), Ok(Some(Framing::Chunked)));
    }

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
}
