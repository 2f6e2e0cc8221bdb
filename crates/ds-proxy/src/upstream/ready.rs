//! The readiness probe behind `/readyz`: `GET <upstream><ready-path>` on the proxy's own
//! client connections ([`super::client`]), in a pool of its own, so probes neither queue
//! behind nor take request-path connections.

use super::client::{Conn, Pool, Slot};
use super::{ErrorChain, Settings, Upstream, UpstreamError};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::Empty;
use hyper::body::{Body, Incoming};
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

/// Idle connections the probe keeps (the kubelet probes one at a time).
const MAX_IDLE: usize = 4;
/// Answer body bytes read so the probe's connection can be reused; a longer body closes it.
const DRAIN_LIMIT: u64 = 64 * 1024;

type ProbeBody = Empty<Bytes>;

/// The upstream's readiness, asked on demand.
pub(crate) struct Probe {
    /// The readiness path as given, for the error when it makes no valid URL.
    path: String,
    /// What is sent for `GET <upstream><ready-path>`: the origin-form target and the `Host`
    /// of that URL, as an HTTP client sends it; `None` if the URL is invalid.
    request: Option<(Uri, HeaderValue)>,
    timeout: Duration,
    /// Only a 2xx answer means ready (the Open Inference Protocol's health endpoints
    /// answer 200 when ready, 4xx when not); otherwise anything below 500 does.
    success_only: bool,
    pool: Pool<ProbeBody>,
    slot: Slot<ProbeBody>,
}

impl Probe {
    /// A probe of `ready_path` that waits at most `timeout` for the answer's head; with
    /// `success_only`, only a 2xx answer means ready.
    pub(crate) fn new(
        upstream: &Upstream,
        ready_path: &str,
        mut settings: Settings,
        timeout: Duration,
        success_only: bool,
    ) -> Self {
        let request = upstream.uri_for_str(ready_path).and_then(|url| {
            let host = HeaderValue::from_str(url.authority()?.as_str()).ok()?;
            Some((Uri::from(url.path_and_query()?.clone()), host))
        });
        settings.max_idle = MAX_IDLE;
        Self {
            path: ready_path.to_owned(),
            request,
            timeout,
            success_only,
            pool: Pool::new(settings),
            slot: Slot::default(),
        }
    }

    /// Asks the upstream; any answer below 500 means a server is listening and working
    /// (TensorFlow Serving answers 404 on `/`, and that is fine), or with `success_only`
    /// only a 2xx answer does (a v2 server answers 4xx while its models load).
    pub(crate) async fn check(&self) -> Result<(), UpstreamError> {
        let (target, host) = self
            .request
            .clone()
            .ok_or_else(|| UpstreamError::ReadyPath(self.path.clone()))?;
        let mut request = Request::new(Empty::new());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = target;
        request.headers_mut().insert(header::HOST, host);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (response, conn) =
            match tokio::time::timeout_at(deadline, self.pool.send(&self.slot, request)).await {
                Ok(answer) => answer?,
                Err(_elapsed) => return Err(UpstreamError::Timeout(self.timeout)),
            };
        let status = response.status();
        // Read a short answer to its end (within the same time) to keep the connection.
        if let Ok(Some(conn)) =
            tokio::time::timeout_at(deadline, drain(response.into_body(), conn)).await
        {
            self.pool.put(&self.slot, conn);
        }
        let ready = if self.success_only {
            status.is_success()
        } else {
            status.as_u16() < 500
        };
        if ready {
            Ok(())
        } else {
            Err(UpstreamError::Status(status))
        }
    }
}

/// The `message` of `/readyz`'s 503 for why the upstream is not ready.
pub(crate) fn not_ready_message(error: &UpstreamError) -> String {
    match error {
        UpstreamError::Status(_) | UpstreamError::ReadyPath(_) => error.to_string(),
        UpstreamError::Timeout(timeout) => format!("upstream did not answer within {timeout:?}"),
        _ => format!("upstream unreachable: {}", ErrorChain(error)),
    }
}

/// Reads an answer body of at most [`DRAIN_LIMIT`] bytes to its end, driving its
/// connection; the connection when it can take another request.
async fn drain(mut body: Incoming, mut conn: Conn<ProbeBody>) -> Option<Conn<ProbeBody>> {
    let mut read = 0u64;
    let ended = poll_fn(|cx| {
        loop {
            let mut polled = Pin::new(&mut body).poll_frame(cx);
            if polled.is_pending() {
                // The connection has no task of its own: its I/O feeds the body.
                conn.drive(cx);
                polled = Pin::new(&mut body).poll_frame(cx);
            }
            match ready!(polled) {
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > DRAIN_LIMIT {
                        return Poll::Ready(false);
                    }
                }
                Some(Err(_)) => return Poll::Ready(false),
                None => return Poll::Ready(true),
            }
        }
    })
    .await;
    if !ended {
        return None;
    }
    conn.finish().await
}
