//! The admin port: `/metrics`, `/healthz` (the proxy is up) and `/readyz` (the upstream answers).

use super::metrics::Metrics;
use super::upstream::ready::{Probe, not_ready_message};
use super::{HEALTH_PATH, METRICS_PATH, READY_PATH};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;

/// State of the admin endpoints.
pub(crate) struct Admin {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) probe: Probe,
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
        READY_PATH => match admin.probe.check().await {
            Ok(()) => text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
            Err(error) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                format!(
                    "{}\n",
                    serde_json::json!({"error": "upstream_not_ready", "message": not_ready_message(&error)})
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
