//! Streaming bodies (h2c path) that tee a bounded prefix of what passes through them, and
//! the prefix itself ([`Capture`], used by both paths).
//!
//! Frames are handed on as soon as they arrive; the tee copies at most `limit` bytes, so
//! memory stays flat whatever the body size.

use super::forward::Exchange;
use super::metrics::UpstreamErrorKind;
use super::querylog::BodySample;
use super::upstream::UpstreamError;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::time::Sleep;

/// The first `limit` bytes of a body, and how many bytes passed in total.
///
/// The prefix is copied: it is small (a query-log excerpt, or the part of an answer read
/// for its predicted class), and a copy does not pin a connection's read buffer.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    kept: Vec<u8>,
    limit: usize,
    total: u64,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.limit - self.kept.len();
        if room > 0 && !data.is_empty() {
            self.kept.extend_from_slice(&data[..room.min(data.len())]);
        }
    }

    /// The first `limit` bytes as a query-log sample: moved when that is all that was
    /// kept, copied when more was kept (for the classes), so a queued record holds no more
    /// than `limit` bytes.
    pub(crate) fn into_sample(self, limit: usize) -> BodySample {
        let truncated = self.total > limit as u64;
        let mut bytes = self.kept;
        if bytes.len() > limit {
            // A prefix kept for the classes is longer: keep the queue's memory bounded.
            bytes.truncate(limit);
            bytes.shrink_to_fit();
        }
        BodySample {
            bytes,
            truncated,
            total: self.total,
        }
    }

    /// The first `n` bytes (at most what was kept) and whether the body was longer.
    pub(crate) fn prefix(&self, n: usize) -> (&[u8], bool) {
        let truncated = self.total > n as u64;
        (&self.kept[..n.min(self.kept.len())], truncated)
    }
}

/// A request body on its way to the upstream, optionally teed for the query log.
pub(crate) struct RequestBody {
    inner: Incoming,
    /// Shared with the [`Exchange`], which reads it when the response ends; the lock is
    /// uncontended in practice (the upstream has read the request by then).
    capture: Option<Arc<Mutex<Capture>>>,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, capture: Option<Arc<Mutex<Capture>>>) -> Self {
        Self { inner, capture }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let (Some(Ok(frame)), Some(capture)) = (&frame, &this.capture)
            && let Some(data) = frame.data_ref()
        {
            capture.lock().push(data);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Source {
    Upstream(Incoming),
    /// A response the proxy made itself (errors); `None` once sent.
    Local(Option<Bytes>),
}

/// A response body on its way to the client. It owns the request's [`Exchange`] and ends it
/// (metrics, classes, query log) when the body ends or is dropped.
pub(crate) struct ResponseBody {
    source: Source,
    capture: Option<Capture>,
    exchange: Option<Exchange>,
    /// Armed while the body waits for the model; reset when bytes come.
    stall: Option<Pin<Box<Sleep>>>,
    /// A frame came since the stall timer was last armed.
    progressed: bool,
}

impl ResponseBody {
    pub(crate) fn upstream(inner: Incoming, capture: Option<Capture>, exchange: Exchange) -> Self {
        Self {
            source: Source::Upstream(inner),
            capture,
            exchange: Some(exchange),
            stall: None,
            progressed: false,
        }
    }

    pub(crate) fn local(bytes: Bytes, exchange: Option<Exchange>) -> Self {
        Self {
            source: Source::Local(Some(bytes)),
            capture: None,
            exchange,
            stall: None,
            progressed: false,
        }
    }

    /// The model has sent nothing more yet: waits at most `--timeout` (from the last
    /// frame) before the answer is given up as stalled, as the HTTP/1.1 path does.
    fn poll_stall(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, <Self as Body>::Error>>> {
        let Some(pause) = self.exchange.as_ref().map(Exchange::pause) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::now() + pause;
        match &mut self.stall {
            None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            Some(sleep) if self.progressed => sleep.as_mut().reset(deadline),
            Some(_) => {}
        }
        self.progressed = false;
        let sleep = self.stall.as_mut().expect("armed above");
        ready!(sleep.as_mut().poll(cx));
        if let Some(exchange) = &self.exchange {
            exchange.upstream_broke(UpstreamErrorKind::Timeout);
        }
        self.finish(false);
        // The client sees a reset stream.
        Poll::Ready(Some(Err(UpstreamError::Stalled)))
    }

    fn finish(&mut self, complete: bool) {
        if let Some(mut exchange) = self.exchange.take() {
            exchange.set_response(self.capture.take(), complete);
            // Dropping the exchange records it.
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match &mut this.source {
            Source::Upstream(inner) => {
                let mut polled = Pin::new(&mut *inner).poll_frame(cx);
                // The upstream connection has no task of its own: when the body has nothing
                // yet, run the connection's I/O here (it reads the next bytes into the body)
                // and look again, rather than waiting for a wake-up of this same task.
                if polled.is_pending()
                    && let Some(conn) = this.exchange.as_mut().and_then(|e| e.conn.as_mut())
                {
                    conn.drive(cx);
                    polled = Pin::new(inner).poll_frame(cx);
                }
                if polled.is_pending() {
                    return this.poll_stall(cx);
                }
                let frame = ready!(polled);
                match &frame {
                    Some(Ok(f)) => {
                        this.progressed = true;
                        if let (Some(capture), Some(data)) = (&mut this.capture, f.data_ref()) {
                            capture.push(data);
                        }
                    }
                    Some(Err(_)) => {
                        if let Some(exchange) = &this.exchange {
                            exchange.upstream_broke(UpstreamErrorKind::Other);
                        }
                        this.finish(false);
                    }
                    None => this.finish(true),
                }
                Poll::Ready(frame.map(|f| f.map_err(UpstreamError::Exchange)))
            }
            Source::Local(bytes) => match bytes.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => {
                    this.finish(true);
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(inner) => inner.is_end_stream(),
            Source::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(inner) => inner.size_hint(),
            Source::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The server stops polling once a sized body is fully written, so a body dropped at
        // its end counts as complete; anything else means the client went away mid-body.
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}
