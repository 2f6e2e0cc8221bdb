//! The bytes of one exchange: the answer from the upstream to the client (its head
//! rewritten, its body relayed as framed, chunks checked as they pass), and a request body
//! still arriving from the client on its way to the upstream.

use super::chunked::{ChunkError, Decoder};
use super::framing::Framing;
use super::head::{BadAnswer, MAX_HEAD, parse_response, push_header};
use super::reserve;
use super::timer::LazyTimer;
use crate::body::Capture;
use bytes::{Buf, BytesMut};
use http::HeaderValue;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why an answer did not reach the client in full.
#[derive(Debug)]
pub(super) enum RelayError {
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
pub(super) struct ResponseContext<'a> {
    pub(super) head_request: bool,
    pub(super) client_http10: bool,
    pub(super) client_keep_alive: bool,
    pub(super) request_id: &'a HeaderValue,
    /// Answers to this request count predicted classes (a POST, counting on).
    pub(super) count_allowed: bool,
    pub(super) class_limit: usize,
    pub(super) log_limit: usize,
    pub(super) deadline: tokio::time::Instant,
    /// The longest wait for the next bytes of an answer's body (`--timeout`, as nginx's
    /// `proxy_read_timeout`): a model that stalls mid-answer does not hold the client for ever.
    pub(super) pause: Duration,
    /// The proxy is stopping: the connection closes after this answer.
    pub(super) stopping: bool,
}

/// How the answer went, filled in by [`relay_response`] as it goes, so it is known even
/// when the relay fails or is abandoned half-way.
#[derive(Default)]
pub(super) struct ResponseState {
    pub(super) status: Option<u16>,
    /// The final head has gone (or started to go) to the client: the proxy can no longer
    /// answer with an error of its own.
    pub(super) head_sent: bool,
    pub(super) complete: bool,
    pub(super) count_classes: bool,
    pub(super) capture: Option<Capture>,
    /// The upstream connection can take another request.
    pub(super) upstream_reusable: bool,
    /// The client connection must close after this answer.
    pub(super) client_close: bool,
}

/// Reads the answer from the upstream and writes it to the client.
pub(super) async fn relay_response<R, W>(
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
            match parse_response(ubuf, cx.head_request, out)
                .map_err(|BadAnswer(what)| RelayError::Malformed(what))?
            {
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
pub(super) async fn write_counting<W: AsyncWrite + Unpin>(
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
pub(super) enum BodyError {
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
pub(super) async fn send_body<R, W>(
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
