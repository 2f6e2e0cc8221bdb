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
//!
//! # Layout
//! As pingora's `protocols/http/v1`: the pure parts first, which `fuzz/` compiles alone.
//! - [`head`]: request and answer heads, parsed, checked and rewritten (pure).
//! - [`framing`]: the `Content-Length` and `Transfer-Encoding` rules (pure).
//! - [`chunked`]: the incremental chunked-body decoder (pure).
//! - [`relay`]: an answer's bytes to the client, a request body's to the upstream.
//! - [`conn`]: the client connection's loop: requests, retries, errors, accounting.
//! - [`timer`]: the per-connection deadline timer.

mod chunked;
mod conn;
mod framing;
mod head;
mod relay;
mod timer;

pub(crate) use conn::ClientConn;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The first bytes of an HTTP/2 connection with prior knowledge (h2c).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Free space kept in a read buffer before each read.
const READ_SPACE: usize = 16 * 1024;

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
