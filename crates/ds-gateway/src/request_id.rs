//! The request ID of every gRPC call: the client's `x-request-id` when it is a sane one,
//! else a new UUID; seen by the services in the request metadata, written to the audit
//! log, and returned in the response metadata so a caller can quote it.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The metadata key.
pub const HEADER: &str = "x-request-id";
/// The longest client-chosen ID kept; a longer one is replaced.
pub const MAX_LEN: usize = 128;

/// Whether a client's ID is kept: 1 to [`MAX_LEN`] characters of letters, digits and
/// `-_.:/+=` (what UUIDs, trace IDs and CI job IDs use; nothing that could forge a log
/// line or a table column).
pub fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
}

/// The RPC a call is of (the method of its path, e.g. `CreateDeployer`), for the audit
/// rows of refused calls; set by [`layer`] in the request's extensions.
#[derive(Debug, Clone)]
pub struct Rpc(pub String);

/// The middleware: settles the ID before the service runs and answers with it.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let rpc = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    request.extensions_mut().insert(Rpc(rpc));
    let kept = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| acceptable(id))
        .map(str::to_string);
    let id = kept.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // Acceptable IDs and UUIDs are visible ASCII: always a valid header value.
    let Ok(value) = HeaderValue::from_str(&id) else {
        return next.run(request).await;
    };
    request.headers_mut().insert(HEADER, value.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(HEADER, value);
    response
}

/// The RPC of a call that went through [`layer`] (empty if it did not).
pub fn rpc_of<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<Rpc>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// The request ID of a call that went through [`layer`] (empty if it did not).
pub fn of<T>(request: &tonic::Request<T>) -> String {
    request
        .metadata()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| acceptable(id))
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn only_bounded_plain_ids_are_kept() {
        assert!(acceptable("3f2b9c1e-5d4a-4b7e-9f00-1234567890ab"));
        assert!(acceptable("ci:job/42+retry=1"));
        assert!(!acceptable(""));
        assert!(!acceptable(&"a".repeat(super::MAX_LEN + 1)));
        assert!(acceptable(&"a".repeat(super::MAX_LEN)));
        assert!(!acceptable("two words"));
        assert!(!acceptable("line\nbreak"));
        assert!(!acceptable("quote\"d"));
    }
}
