//! The admin port: `/metrics`, `/healthz` (the proxy is up) and `/readyz` (the upstream answers).

use super::forward::{ErrorChain, Upstream};
use super::metrics::Metrics;
use super::{HEALTH_PATH, METRICS_PATH, READY_PATH};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::Arc;
use std::time::Duration;

/// State of the admin endpoints.
pub(crate) struct Admin {
    pub(crate) metrics: Arc<Metrics>,
    /// A client of its own: probes must not queue behind (or take) request-path connections.
    pub(crate) client: Client<HttpConnector, Empty<Bytes>>,
    pub(crate) upstream: Upstream,
    pub(crate) ready_path: String,
    pub(crate) ready_timeout: Duration,
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves one admin request.
pub(crate) async fn handle(
    admin: Arc<Admin>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        ));
    }
    let response = match req.uri().path() {
        METRICS_PATH => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            admin.metrics.encode(),
        ),
        HEALTH_PATH => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        READY_PATH => match admin.probe().await {
            Ok(()) => text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                format!(
                    "{}\n",
                    serde_json::json!({"error": "upstream_not_ready", "message": reason})
                ),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    };
    Ok(response)
}

impl Admin {
    /// Asks the upstream for the readiness path; any answer below 500 means a server is
    /// listening and working (TensorFlow Serving answers 404 on `/`, and that is fine).
    async fn probe(&self) -> Result<(), String> {
        let uri = self
            .upstream
            .uri_for_str(&self.ready_path)
            .ok_or_else(|| format!("invalid readiness path {:?}", self.ready_path))?;
        let request = Request::get(uri)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.ready_timeout, self.client.request(request)).await {
            Ok(Ok(response)) if response.status().as_u16() < 500 => Ok(()),
            Ok(Ok(response)) => Err(format!("upstream answered {}", response.status())),
            Ok(Err(error)) => Err(format!("upstream unreachable: {}", ErrorChain(&error))),
            Err(_) => Err(format!(
                "upstream did not answer within {:?}",
                self.ready_timeout
            )),
        }
    }
}
