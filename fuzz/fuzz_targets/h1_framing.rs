//! Feeds one HTTP/1.1 message (head and body) to the proxy's head parser and framing, and
//! to hyper, and fails when the proxy frames it differently or takes what hyper refuses.
//!
//! The first input byte picks the side: bit 0 clear, a request (the proxy's
//! `parse_request` against hyper's server); set, an answer (`parse_response` against
//! hyper's client), to a `HEAD` request when bit 1 is set. The rest is the message, followed
//! by the end of the stream. Both sides report the same thing: no message (refused, or cut
//! before its head ended), or the body's framing and what its body came to.
//!
//! The proxy may refuse more than hyper, only for the reasons [`stricter_by_design`] lists;
//! anything else it refuses, frames otherwise, or reads to other bytes is a crash.

#![no_main]

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::rc::Rc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// The proxy's own files, compiled here as they are: they import nothing of it but each
// other (`super::framing`), hence at the crate root, as siblings.
#[allow(dead_code)]
#[path = "../../crates/ds-proxy/src/h1/chunked.rs"]
mod chunked;
#[allow(dead_code)]
#[path = "../../crates/ds-proxy/src/h1/framing.rs"]
mod framing;
#[allow(dead_code)]
#[path = "../../crates/ds-proxy/src/h1/head.rs"]
mod head;

use chunked::Decoder;
use framing::Framing;

/// How a message's body is delimited, as far as both parsers can tell it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    /// No body.
    Empty,
    Exact(u64),
    /// Chunked, or until the end of the stream.
    Open,
}

#[derive(Debug, PartialEq, Eq)]
enum Body {
    /// The body ended where its framing said, with these bytes of data.
    Complete(Vec<u8>),
    /// Malformed, or the stream ended first.
    Broken,
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// No message: the head was refused, or the stream ended inside it. Holds why, for the
    /// report.
    Refused(String),
    Message {
        length: Length,
        body: Body,
    },
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, message)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check_request(message);
    } else {
        check_response(message, mode & 2 != 0);
    }
});

fn check_request(message: &[u8]) {
    let ours = ours_request(message);
    let theirs = runtime().block_on(hyper_request(message));
    compare("request", message, &ours, &theirs);
}

fn check_response(message: &[u8], head_request: bool) {
    let ours = ours_response(message, head_request);
    let theirs = runtime().block_on(hyper_response(message, head_request));
    compare("answer", message, &ours, &theirs);
}

fn compare(side: &str, message: &[u8], ours: &Seen, theirs: &Seen) {
    let agree = match (ours, theirs) {
        (Seen::Refused(why), Seen::Message { .. }) => stricter_by_design(why),
        // A body the proxy finds broken where hyper read one: only a stricter chunk rule.
        (
            Seen::Message {
                length: ours_length,
                body: Body::Broken,
            },
            Seen::Message {
                length: their_length,
                body: Body::Complete(_),
            },
        ) => ours_length == their_length && *ours_length == Length::Open,
        (Seen::Refused(_), Seen::Refused(_)) => true,
        _ => ours == theirs,
    };
    assert!(
        agree,
        "the proxy and hyper disagree on this {side}:\n{:?}\nproxy: {ours:?}\nhyper: {theirs:?}",
        String::from_utf8_lossy(message)
    );
}

/// Refusals of the proxy's where hyper lets a message through, each on purpose (see
/// docs/model-proxy.md, Framing).
fn stricter_by_design(why: &str) -> bool {
    [
        // `gzip, chunked`: hyper reads it as chunked and hands the gzip coding to the
        // application; the proxy would relay it under a bare `chunked`.
        "only the chunked transfer coding is supported",
        // `chunked, chunked`: hyper looks at the last coding only.
        "the Transfer-Encoding header is not valid",
        // `*` and authority form: meaningless to a model server.
        "the request target must be a path (origin form)",
        // hyper skips a Content-Length that comes after Transfer-Encoding, valid or not.
        "the Content-Length header is not valid",
        "the answer's Content-Length is not valid",
        // Bytes that are not visible ASCII: hyper then reads the answer to its close.
        "the answer's Transfer-Encoding is not valid",
    ]
    .iter()
    .any(|reason| why.contains(reason))
}

// === the proxy ===

fn ours_request(message: &[u8]) -> Seen {
    let cx = head::RequestRewrite {
        base_path: "",
        authority: "model:8501",
        client_ip: "10.0.0.1",
        keep_target: true,
    };
    let mut out = Vec::new();
    let new_id = || http::HeaderValue::from_static("fuzz-id");
    let (len, head) = match head::parse_request(message, &cx, new_id, &mut out) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Seen::Refused("the stream ended inside the head".into()),
        Err(rejected) => return Seen::Refused(rejected.message.into()),
    };
    if head.bad_target {
        return Seen::Refused("the request target must be a path (origin form)".into());
    }
    check_rewritten_request(&out, &head);
    framed(head.framing, &message[len..])
}

/// The head the proxy writes upstream is one any HTTP/1.1 parser takes, framed as the
/// client's was.
fn check_rewritten_request(out: &[u8], head: &head::RequestHead) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let status = req
        .parse(out)
        .unwrap_or_else(|e| panic!("the upstream head is not valid ({e}): {out:?}"));
    assert_eq!(status, httparse::Status::Complete(out.len()), "{out:?}");
    let mut names = req.headers.iter().map(|h| h.name.to_ascii_lowercase());
    let framing: Vec<String> = names
        .by_ref()
        .filter(|n| n == "content-length" || n == "transfer-encoding")
        .collect();
    let expected: &[&str] = match head.framing {
        Framing::Length(_) => &["content-length"],
        Framing::Chunked => &["transfer-encoding"],
        Framing::None | Framing::Close => &[],
    };
    assert_eq!(framing, expected, "{out:?}");
    for hop in [
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(
            !req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(hop)),
            "hop-by-hop {hop} passed on: {out:?}"
        );
    }
}

fn ours_response(message: &[u8], head_request: bool) -> Seen {
    let mut out = Vec::new();
    let mut rest = message;
    // Interim (1xx) answers come before the final one, as the relay reads them.
    loop {
        match head::parse_response(rest, head_request, &mut out) {
            Ok(Some((len, head))) if head.status == 101 => {
                let _ = len;
                return Seen::Refused("switching protocols".into());
            }
            Ok(Some((len, head))) if (100..200).contains(&head.status) => rest = &rest[len..],
            Ok(Some((len, head))) => return framed(head.framing, &rest[len..]),
            Ok(None) => return Seen::Refused("the stream ended inside the head".into()),
            Err(bad) => return Seen::Refused(bad.to_string()),
        }
    }
}

/// What the proxy's framing makes of the bytes after a head, the stream ending after them.
fn framed(framing: Framing, rest: &[u8]) -> Seen {
    let (length, body) = match framing {
        Framing::None => (Length::Empty, Body::Complete(Vec::new())),
        Framing::Length(n) => (
            Length::Exact(n),
            match usize::try_from(n) {
                Ok(n) if n <= rest.len() => Body::Complete(rest[..n].to_vec()),
                _ => Body::Broken,
            },
        ),
        Framing::Close => (Length::Open, Body::Complete(rest.to_vec())),
        Framing::Chunked => {
            let mut decoder = Decoder::new();
            let mut data = Vec::new();
            let body = match decoder.decode(rest, |range| data.extend_from_slice(&rest[range])) {
                Ok(_) if decoder.is_done() => Body::Complete(data),
                _ => Body::Broken,
            };
            (Length::Open, body)
        }
    };
    Seen::Message { length, body }
}

// === hyper ===

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

/// Room in the in-memory pipe for the whole message and hyper's answer, so no side waits.
fn pipe(message: &[u8]) -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
    tokio::io::duplex(message.len() + 64 * 1024)
}

fn length_of(body: &Incoming) -> Length {
    let hint = body.size_hint();
    match hint.exact() {
        Some(0) => Length::Empty,
        Some(n) => Length::Exact(n),
        None => Length::Open,
    }
}

async fn collect(body: Incoming) -> Body {
    match body.collect().await {
        Ok(collected) => Body::Complete(collected.to_bytes().to_vec()),
        Err(_) => Body::Broken,
    }
}

/// What hyper's server makes of the message: the first request its service sees.
async fn hyper_request(message: &[u8]) -> Seen {
    let (client, server) = pipe(message);
    let seen: Rc<RefCell<Option<Seen>>> = Rc::default();
    let record = seen.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let record = record.clone();
        async move {
            let length = length_of(req.body());
            let body = collect(req.into_body()).await;
            record
                .borrow_mut()
                .get_or_insert(Seen::Message { length, body });
            Ok::<_, std::convert::Infallible>(http::Response::new(
                http_body_util::Empty::<Bytes>::new(),
            ))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // The stream ends after the message: that must not cancel the request in flight.
        .half_close(true)
        .keep_alive(false)
        .serve_connection(TokioIo::new(server), service);
    let mut client = client;
    let feed = async {
        let _ = client.write_all(message).await;
        let _ = client.shutdown().await;
        client
    };
    let (result, _client) = tokio::join!(conn, feed);
    let taken = seen.borrow_mut().take();
    taken.unwrap_or_else(|| {
        Seen::Refused(match result {
            Err(e) => e.to_string(),
            Ok(()) => "no request".into(),
        })
    })
}

/// What hyper's client makes of the message as the answer to a `GET /` (or `HEAD /`).
async fn hyper_response(message: &[u8], head_request: bool) -> Seen {
    let (client, server) = pipe(message);
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<Bytes>,
    >(TokioIo::new(client))
    .await
    else {
        return Seen::Refused("no handshake".into());
    };
    let method = if head_request {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let request = http::Request::builder()
        .method(method)
        .uri("/")
        .header("host", "model")
        .body(http_body_util::Empty::new())
        .expect("a request");
    let exchange = async {
        match send.send_request(request).await {
            Ok(response) if response.status() == 101 => Seen::Refused("switching protocols".into()),
            Ok(response) => {
                let length = length_of(response.body());
                let body = collect(response.into_body()).await;
                Seen::Message { length, body }
            }
            Err(e) => Seen::Refused(e.to_string()),
        }
    };
    let mut server = server;
    let feed = async {
        // The answer comes after the request, as from a real server: hyper refuses bytes
        // on a connection with no request out.
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            if server.read_buf(&mut request).await.unwrap_or(0) == 0 {
                break;
            }
        }
        let _ = server.write_all(message).await;
        let _ = server.shutdown().await;
        server
    };
    // Driven on its own task; it ends once `send` is dropped, at the latest on the next run.
    tokio::spawn(conn);
    tokio::join!(exchange, feed).0
}
