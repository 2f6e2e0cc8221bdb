//! A keep-alive pool of HTTP/1.1 connections to the one upstream.
//!
//! hyper-util's pooled client spawns a background task per request to put the connection
//! back once it is idle again, and looks the pool up by scheme and authority every time.
//! Here the proxy has exactly one upstream, and it knows when an answer has been read to
//! its end (the response body says so), so the connection goes back right then: no task,
//! no key. Connections whose answer was not read to the end are dropped, never reused.

use super::body::RequestBody;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The sending half of one upstream connection (its connection task runs on its own).
pub(crate) type Conn = SendRequest<RequestBody>;

/// Why no answer came from the upstream.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// A new connection could not be opened (refused, unreachable, connect timeout).
    Connect(std::io::Error),
    /// The exchange on an open connection failed (closed early, bad answer, or the client's
    /// own body broke while being sent).
    Send(hyper::Error),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Send(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Send(e) => Some(e),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections to the upstream, most recently used last.
pub(crate) struct Pool {
    authority: Authority,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    pub(crate) fn new(
        authority: Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            authority,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends a request (origin-form target, `Host` set) on an idle connection, else on a
    /// new one. A request refused by a reused connection before it went out (the upstream
    /// closed it meanwhile) is retried on another, as hyper-util's client does.
    pub(crate) async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Conn), PoolError> {
        while let Some(mut conn) = self.take_idle() {
            match conn.try_send_request(req).await {
                Ok(response) => return Ok((response, conn)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(PoolError::Send(error.into_error())),
                },
            }
        }
        let mut conn = self.connect().await?;
        match conn.try_send_request(req).await {
            Ok(response) => Ok((response, conn)),
            Err(error) => Err(PoolError::Send(error.into_error())),
        }
    }

    /// Hands back a connection whose answer was read to its end.
    pub(crate) fn put(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used connection that is ready for a request. Closed and expired
    /// ones are dropped here (closing them); one that is not ready yet (its connection task
    /// is still finishing the previous exchange) stays for a later request.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.lock();
        let now = Instant::now();
        idle.retain(|e| !e.conn.is_closed() && now.duration_since(e.since) < self.idle_timeout);
        let at = idle.iter().rposition(|e| e.conn.is_ready())?;
        Some(idle.remove(at).conn)
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
        let host = self.authority.host();
        // IPv6 literals come bracketed in the authority; connect wants them bare.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = self.authority.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(PoolError::Connect(error)),
            Err(_elapsed) => {
                return Err(PoolError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )));
            }
        };
        // Small JSON requests and answers: Nagle's delay would dominate the added latency.
        let _ = stream.set_nodelay(true);
        let (conn, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Send)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(conn)
    }
}
