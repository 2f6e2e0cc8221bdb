//! Plain keep-alive TCP connections to the upstream for the HTTP/1.1 path.
//!
//! Each worker thread has its own list; a client connection keeps the upstream connection
//! it used last for its next request (an HTTP/1.1 client sends it on the same connection),
//! and hands it to the worker's list when it closes. An idle connection is not watched: a
//! close by the upstream meanwhile is found by [`UpConn::is_reusable`] just before the next
//! request is written on it, and [`crate::h1`] then takes a fresh connection.

use super::{Settings, UpstreamError};
use bytes::BytesMut;
use parking_lot::Mutex;
use std::time::Instant;
use tokio::net::TcpStream;

/// Read-buffer capacity of a new upstream connection: a model answer's head and a small
/// JSON body fit in one read.
const INITIAL_BUFFER: usize = 8 * 1024;

/// One connection to the upstream and the bytes read from it but not yet relayed.
pub(crate) struct UpConn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
    /// True when it carried a request before: a failure before any answer byte may then be
    /// the upstream's idle close, and the request is worth one retry on a fresh connection.
    pub(crate) reused: bool,
    since: Instant,
}

impl UpConn {
    /// False when the upstream has closed the connection (or sent bytes nobody asked for)
    /// while it was idle. Costs one non-blocking read at most: tokio skips the system call
    /// when the socket is known not to be readable, and otherwise the read is the one the
    /// wait for the answer would make first.
    pub(crate) fn is_reusable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Idle connections of one worker, most recently used last.
pub(crate) struct Connections {
    settings: Settings,
    idle: Mutex<Vec<UpConn>>,
}

impl Connections {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<UpConn>> {
        self.idle.lock()
    }

    /// The most recently parked connection that has not expired (expired ones are closed).
    pub(crate) fn take_idle(&self) -> Option<UpConn> {
        let mut idle = self.lock();
        let now = Instant::now();
        while let Some(conn) = idle.pop() {
            if now.duration_since(conn.since) < self.settings.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// Parks a connection whose last answer was read to its end.
    pub(crate) fn put(&self, mut conn: UpConn) {
        conn.since = Instant::now();
        conn.reused = true;
        let mut idle = self.lock();
        if idle.len() < self.settings.max_idle {
            idle.push(conn);
        }
    }

    /// Marks a connection kept by a client connection as used, for the idle expiry.
    pub(crate) fn park(conn: &mut UpConn) {
        conn.since = Instant::now();
        conn.reused = true;
    }

    /// True when a connection parked on a client connection has been idle too long to use.
    pub(crate) fn expired(&self, conn: &UpConn) -> bool {
        conn.since.elapsed() >= self.settings.idle_timeout
    }

    /// Opens a new connection (within the connect timeout).
    pub(crate) async fn connect(&self) -> Result<UpConn, UpstreamError> {
        let stream = self.settings.dial().await?;
        Ok(UpConn {
            stream,
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
            reused: false,
            since: Instant::now(),
        })
    }
}
