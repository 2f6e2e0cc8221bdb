//! The HTTP(S) client of `ds model-fetch`: rustls with the ring provider, the system's
//! roots (webpki-roots when the image has none), and retries of connection errors and
//! 5xx answers with backoff. 4xx answers are final: retrying cannot fix them.

use crate::FetchError;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

/// Attempts after the first one, on connection errors and 5xx answers.
const RETRIES: u32 = 3;
/// The first pause before a retry; doubled each time.
const BACKOFF: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an answer may wait before its headers arrive.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(120);

/// A client for GETs (every request `ds model-fetch` makes has an empty body).
#[derive(Clone)]
pub(crate) struct Http {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Http {
    pub(crate) fn new() -> Result<Self, FetchError> {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable certificates are skipped: one bad file must not stop the download.
        let native = rustls_native_certs::load_native_certs();
        let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Setup(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// Sends the request `make` builds (again for each attempt, so a signature carries a
    /// fresh date), retrying connection errors and 5xx answers.
    pub(crate) async fn send(
        &self,
        make: impl Fn() -> Result<Request<Empty<Bytes>>, FetchError>,
    ) -> Result<Response<Incoming>, FetchError> {
        let mut pause = BACKOFF;
        let mut attempt = 0;
        loop {
            let request = make()?;
            let outcome = tokio::time::timeout(HEADERS_TIMEOUT, self.client.request(request)).await;
            let retry_reason = match outcome {
                Ok(Ok(response)) if !response.status().is_server_error() => return Ok(response),
                Ok(Ok(response)) if attempt >= RETRIES => return Ok(response),
                Ok(Ok(response)) => format!("HTTP {}", response.status().as_u16()),
                Ok(Err(e)) if attempt >= RETRIES => {
                    return Err(FetchError::Connect(request_error(&e)));
                }
                Ok(Err(e)) => request_error(&e),
                Err(_) if attempt >= RETRIES => {
                    return Err(FetchError::Connect(format!(
                        "no answer within {}s",
                        HEADERS_TIMEOUT.as_secs()
                    )));
                }
                Err(_) => "no answer in time".to_string(),
            };
            attempt += 1;
            tracing::warn!(attempt, reason = %retry_reason, "retrying");
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
}

/// Runs a whole download again (a new request) when its body was cut off or stalled;
/// `send` already retries failures before the answer.
pub(crate) async fn retry_interrupted<T, F, Fut>(mut attempt: F) -> Result<T, FetchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    let mut pause = BACKOFF;
    let mut retries = 0;
    loop {
        match attempt().await {
            Err(FetchError::Interrupted(reason)) if retries < RETRIES => {
                retries += 1;
                tracing::warn!(attempt = retries, %reason, "retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
}

/// A failed request in plain words: "cannot connect: tcp connect error: Connection refused".
fn request_error(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        // The top level only says "client error (Connect)"; the causes say why.
        Some(cause) if e.is_connect() => format!("cannot connect: {}", chain(cause)),
        _ => chain(e),
    }
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: …"):
/// hyper's own message alone says too little.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Reads at most `limit` bytes of a body (error documents, listings): a hostile or
/// broken server cannot make us hold more.
pub(crate) async fn read_limited(body: Incoming, limit: usize) -> Result<Vec<u8>, FetchError> {
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FetchError::Connect(chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
            if out.len() > limit {
                return Err(FetchError::Protocol(format!(
                    "answer larger than {limit} bytes"
                )));
            }
        }
    }
    Ok(out)
}
