//! Everything that reaches the model server, and the one way the proxy connects to it.
//!
//! - [`Upstream`]: where it is (the `--upstream` URL: authority and base path).
//! - [`Settings`]: how a connection is opened ([`Settings::dial`]: a TCP connection with
//!   `TCP_NODELAY` within the connect timeout) and how long idle ones are kept. Every
//!   connection to the model server is opened there.
//! - [`sockets`]: the plain keep-alive sockets of the HTTP/1.1 path, which relays bytes.
//! - [`client`]: hyper's HTTP/1.1 client connections, driven by the task that uses them,
//!   for the h2c path and the readiness probe.
//! - [`ready`]: the readiness probe (`/readyz`), on client connections of its own.
//! - [`UpstreamError`]: why the model server gave no answer, for all of them.
//!
//! Each worker thread has its own [`sockets::Connections`] and [`client::Pool`]; the admin
//! port has its own [`ready::Probe`], so probes neither queue behind nor take request-path
//! connections.

pub(crate) mod client;
pub(crate) mod ready;
pub(crate) mod sockets;

use http::StatusCode;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use std::time::Duration;
use tokio::net::TcpStream;

/// Where requests go: the upstream's authority and an optional base path (the scheme is
/// always `http`).
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub(crate) authority: Authority,
    /// The upstream's path without a trailing slash; empty when it is `/`.
    pub(crate) base_path: String,
}

impl Upstream {
    /// Parses `--upstream`.
    pub(crate) fn parse(value: &str) -> Result<Self, crate::ProxyError> {
        let invalid = |reason: String| crate::ProxyError::InvalidUpstream {
            upstream: value.to_owned(),
            reason,
        };
        let uri: Uri = value
            .parse()
            .map_err(|e| invalid(format!("not a URL: {e}")))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(invalid(
                "only http:// upstreams are supported (the model is on localhost)".into(),
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid("missing host".into()))?;
        if uri.query().is_some() {
            return Err(invalid("must not have a query".into()));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            authority,
            base_path,
        })
    }

    /// The upstream URL for a request path (and query).
    pub(crate) fn uri_for(&self, path_and_query: &PathAndQuery) -> Option<Uri> {
        let target = self.target_for(path_and_query)?;
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(target.into_parts().path_and_query?)
            .build()
            .ok()
    }

    /// The origin-form target (path and query only) sent on an upstream connection.
    pub(crate) fn target_for(&self, path_and_query: &PathAndQuery) -> Option<Uri> {
        // Only origin-form targets make sense here; `*` and authority-form (CONNECT) do not.
        if !path_and_query.as_str().starts_with('/') {
            return None;
        }
        if self.base_path.is_empty() {
            // A cheap clone: the parsed request target shares its buffer.
            return Some(Uri::from(path_and_query.clone()));
        }
        let pq: PathAndQuery = format!("{}{}", self.base_path, path_and_query)
            .parse()
            .ok()?;
        Some(Uri::from(pq))
    }

    /// [`Self::uri_for`] for a path given as text (the readiness path).
    pub(crate) fn uri_for_str(&self, path: &str) -> Option<Uri> {
        self.uri_for(&path.parse().ok()?)
    }

    /// The `Host` a request gets when its client sent none: the upstream's `host:port`.
    pub(crate) fn host(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(self.authority.as_str()).ok()
    }
}

/// How connections to the upstream are opened and kept; one copy per pool.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) authority: Authority,
    /// The longest wait for a TCP connection (`--timeout`).
    pub(crate) connect_timeout: Duration,
    /// Idle connections older than this are closed rather than reused.
    pub(crate) idle_timeout: Duration,
    /// Idle connections kept (per pool).
    pub(crate) max_idle: usize,
}

impl Settings {
    /// A TCP connection to the upstream, with `TCP_NODELAY`, within the connect timeout.
    /// Every connection the proxy makes to the model server is opened here.
    pub(crate) async fn dial(&self) -> Result<TcpStream, UpstreamError> {
        let host = self.authority.host();
        // IPv6 literals come bracketed in the authority; connect wants them bare.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = self.authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
            .and_then(|connected| connected)
            .map_err(UpstreamError::Connect)?;
        // Small JSON requests and answers: Nagle's delay would dominate the added latency.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Why the model server gave no (usable) answer. Its `Display` leaves the cause to
/// `source()`; [`ErrorChain`] shows both.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be opened (refused, unreachable, connect timeout).
    #[error("connect")]
    Connect(#[source] std::io::Error),
    /// No answer head within the time allowed, connecting included.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The exchange on an open connection failed: closed early, a bad answer, or the
    /// client's own body broke while being sent (h2c, hyper's client connection).
    #[error(transparent)]
    Exchange(hyper::Error),
    /// An answer that had begun stopped coming for longer than `--timeout` (h2c body).
    #[error("the model server stopped sending its answer")]
    Stalled,
    /// The readiness probe's answer was not a ready one (a server error; with
    /// `--protocol v2`, anything but 2xx).
    #[error("upstream answered {0}")]
    Status(StatusCode),
    /// The readiness path makes no valid request target.
    #[error("invalid readiness path {0:?}")]
    ReadyPath(String),
}

/// Displays an error with its sources, which is where hyper and the OS put the useful part.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_paths_join_the_base_path() {
        let up = Upstream::parse("http://127.0.0.1:8501").unwrap();
        assert_eq!(
            up.uri_for_str("/v1/models/iris:predict?x=1")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:8501/v1/models/iris:predict?x=1"
        );
        let up = Upstream::parse("http://localhost:9000/base/").unwrap();
        assert_eq!(
            up.uri_for_str("/a").unwrap().to_string(),
            "http://localhost:9000/base/a"
        );
        assert!(up.uri_for_str("*").is_none());
        assert!(up.uri_for_str("").is_none());
    }

    #[test]
    fn only_plain_http_upstreams() {
        assert!(Upstream::parse("https://model:8501").is_err());
        assert!(Upstream::parse("model:8501").is_err());
        assert!(Upstream::parse("http://model:8501/?q=1").is_err());
    }

    #[test]
    fn errors_show_their_cause_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = UpstreamError::Connect(refused);
        assert_eq!(
            ErrorChain(&error).to_string(),
            format!(
                "connect: {}",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
            )
        );
    }
}
