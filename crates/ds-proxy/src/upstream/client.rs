//! Keep-alive HTTP/1.1 client connections to the upstream on hyper, driven by the task that
//! uses them (the h2c path, and the readiness probe with a pool of its own).
//!
//! hyper's client connections are usually spawned as tasks of their own, so every request
//! crosses tasks twice (the client's connection task hands the request over, the upstream
//! connection task hands the answer back), each crossing a wake-up and a trip through the
//! scheduler. Here a connection has no task: whoever sends a request on it polls its I/O
//! ([`Conn::drive`]) while waiting for the answer, and the response body polls it again
//! while the answer streams to the client. Between requests a connection is parked, first
//! on the client connection that used it last (an HTTP/1.1 client sends its next request on
//! the same connection, so it finds its upstream connection right there), else in the
//! pool's idle list. An idle connection is not polled; a close by the upstream meanwhile
//! is noticed when the next request is sent on it, and that request is retried on another.

use super::{Settings, UpstreamError};
use crate::body::RequestBody;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::net::TcpStream;

/// What a request body must be to go out on a client connection.
pub(crate) trait SendBody:
    Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> SendBody for B where
    B: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

type Driver<B> = http1::Connection<TokioIo<TcpStream>, B>;

/// One upstream connection: the sending half and the connection's I/O state machine.
pub(crate) struct Conn<B: SendBody = RequestBody> {
    send: SendRequest<B>,
    /// `None` once the connection has ended (closed by either side or broken).
    driver: Option<Pin<Box<Driver<B>>>>,
    /// When it was last parked, for the idle expiry.
    since: Instant,
}

impl<B: SendBody> Conn<B> {
    /// Runs the connection's pending I/O on the calling task (whose waker it registers).
    /// Returns false once the connection has ended.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = &mut self.driver else {
            return false;
        };
        match driver.as_mut().poll(cx) {
            Poll::Pending => return true,
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        }
        self.driver = None;
        false
    }

    fn is_open(&self) -> bool {
        self.driver.is_some() && !self.send.is_closed()
    }

    /// True when the connection is done with its exchange and takes the next request.
    pub(crate) fn is_idle(&self) -> bool {
        self.is_open() && self.send.is_ready()
    }

    /// Drives a connection whose answer was read while its request is still going out (the
    /// upstream answered before reading the whole request body) until it is idle again;
    /// `None` if it ended instead.
    pub(crate) async fn finish(mut self) -> Option<Self> {
        let open = poll_fn(|cx| {
            if !self.drive(cx) {
                Poll::Ready(false)
            } else if self.send.is_ready() {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        })
        .await;
        open.then_some(self)
    }
}

/// The connection a client connection used last, kept for its next request.
pub(crate) struct Slot<B: SendBody = RequestBody>(Mutex<Option<Conn<B>>>);

impl<B: SendBody> Default for Slot<B> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<B: SendBody> Slot<B> {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Option<Conn<B>>> {
        self.0.lock()
    }

    fn take(&self) -> Option<Conn<B>> {
        self.lock().take()
    }

    /// Parks a connection here if the slot is free; else hands it back.
    fn put(&self, conn: Conn<B>) -> Option<Conn<B>> {
        let mut slot = self.lock();
        if slot.is_some() {
            return Some(conn);
        }
        *slot = Some(conn);
        None
    }
}

/// Idle connections of one worker (or of the readiness probe), most recently used last.
pub(crate) struct Pool<B: SendBody = RequestBody> {
    settings: Settings,
    idle: Mutex<Vec<Conn<B>>>,
}

impl<B: SendBody> Pool<B> {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends a request (origin-form target, `Host` set) on the client connection's own
    /// upstream connection, else an idle one, else a new one, and drives it until the
    /// answer's head arrives. A request refused by a reused connection before it went out
    /// (the upstream closed it meanwhile) is retried on another, as hyper-util's client does.
    pub(crate) async fn send(
        &self,
        slot: &Slot<B>,
        mut req: Request<B>,
    ) -> Result<(Response<Incoming>, Conn<B>), UpstreamError> {
        while let Some(conn) = slot.take().or_else(|| self.take_idle()) {
            // Only idle connections are parked, so this fails only for one closed meanwhile
            // as far as we know (dropping it releases the socket). One the upstream closed
            // since it was last polled is noticed when the request is sent: its dispatcher
            // reads the close before writing and hands the request back for a retry, so
            // taking a connection costs no poll of its own.
            if !conn.is_idle() {
                continue;
            }
            match exchange(conn, req).await {
                Ok(answer) => return Ok(answer),
                Err((Some(unsent), _)) => req = unsent,
                Err((None, error)) => return Err(UpstreamError::Exchange(error)),
            }
        }
        let conn = self.connect().await?;
        exchange(conn, req)
            .await
            .map_err(|(_, error)| UpstreamError::Exchange(error))
    }

    /// Parks a connection whose answer was read to its end: on its client connection if
    /// that has none, else in the idle list.
    pub(crate) fn put(&self, slot: &Slot<B>, mut conn: Conn<B>) {
        if !conn.is_open() {
            return;
        }
        conn.since = Instant::now();
        if let Some(conn) = slot.put(conn) {
            self.put_idle(conn);
        }
    }

    /// Moves a client connection's parked upstream connection to the idle list (the client
    /// connection has ended).
    pub(crate) fn release(&self, slot: &Slot<B>) {
        if let Some(conn) = slot.take()
            && conn.is_open()
        {
            self.put_idle(conn);
        }
    }

    fn put_idle(&self, conn: Conn<B>) {
        let mut idle = self.lock();
        if idle.len() < self.settings.max_idle {
            idle.push(conn);
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<Conn<B>>> {
        self.idle.lock()
    }

    /// The most recently parked connection that has not expired; expired and closed ones
    /// are dropped (closing them).
    fn take_idle(&self) -> Option<Conn<B>> {
        let mut idle = self.lock();
        let now = Instant::now();
        while let Some(conn) = idle.pop() {
            if conn.is_open() && now.duration_since(conn.since) < self.settings.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn<B>, UpstreamError> {
        let stream = self.settings.dial().await?;
        let (send, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Exchange)?;
        Ok(Conn {
            send,
            driver: Some(Box::pin(driver)),
            since: Instant::now(),
        })
    }
}

/// Sends one request on a connection and drives the connection on this task until the
/// answer's head is in. On failure, the request comes back if it never went out.
async fn exchange<B: SendBody>(
    mut conn: Conn<B>,
    req: Request<B>,
) -> Result<(Response<Incoming>, Conn<B>), (Option<Request<B>>, hyper::Error)> {
    let mut answer = pin!(conn.send.try_send_request(req));
    let result = poll_fn(|cx| {
        // I/O first: it may complete the answer in this same poll.
        conn.drive(cx);
        answer.as_mut().poll(cx)
    })
    .await;
    match result {
        Ok(response) => Ok((response, conn)),
        Err(mut error) => {
            let unsent = error.take_message();
            Err((unsent, error.into_error()))
        }
    }
}
