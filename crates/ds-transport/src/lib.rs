//! The client side of the gRPC transport to the gateway, shared by the agent, the CLI, `ds
//! dev`, the tests and the benchmarks: one rule for TLS roots, one bearer credential, one
//! secret type.
//!
//! - [`endpoint`] builds the tonic [`Endpoint`]: `https://` trusts the system roots plus
//!   the CA bundle given with `--ca-cert`; `http://` only when the caller allows clear text.
//! - [`Bearer`] adds `authorization: Bearer …` to every call, from a fixed secret or from a
//!   file re-read on every call (a rotated token in a mounted Secret is used at once).
//! - [`SecretString`] (from `secrecy`) holds tokens and keys: its `Debug` shows no secret,
//!   and header values built from it are marked sensitive.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

pub use secrecy::{ExposeSecret, SecretString};

/// What can go wrong before the first byte is sent. No variant carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("gateway URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("reading CA bundle {path}: {source}")]
    CaCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the credential is not valid header text (it must be visible ASCII)")]
    BadCredential,
    #[error("reading the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether `http://` may be used: it sends the credential in clear text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// Refused, with an error that names `hint` (the flag that allows it).
    Refuse { hint: &'static str },
    /// Allowed (local gateways, tests).
    Allow,
}

/// How to dial the gateway.
#[derive(Debug, Clone)]
pub struct ChannelOptions<'a> {
    /// A PEM bundle trusted in addition to the system roots.
    pub ca_cert: Option<&'a Path>,
    pub plaintext: Plaintext,
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive pings for long-lived streams; `None` for short-lived clients.
    pub keep_alive: Option<Duration>,
}

impl Default for ChannelOptions<'_> {
    fn default() -> Self {
        Self {
            ca_cert: None,
            plaintext: Plaintext::Allow,
            connect_timeout: Duration::from_secs(10),
            keep_alive: None,
        }
    }
}

/// Builds the endpoint for `url` (not yet connected: call `connect` or `connect_lazy`).
///
/// # Errors
/// A URL tonic cannot parse, a scheme other than `https://` (or an allowed `http://`), or
/// an unreadable CA bundle.
pub fn endpoint(url: &str, options: &ChannelOptions<'_>) -> Result<Endpoint, TransportError> {
    let bad = |reason: String| TransportError::Url {
        url: url.to_string(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad(root_cause(&e)))?;
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(path) = options.ca_cert {
            let pem = std::fs::read(path).map_err(|source| TransportError::CaCert {
                path: path.to_path_buf(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| bad(root_cause(&e)))?;
    } else if url.starts_with("http://") {
        if let Plaintext::Refuse { hint } = options.plaintext {
            return Err(bad(format!(
                "plain http sends the token in clear text; use https or {hint}"
            )));
        }
    } else {
        return Err(bad("the scheme must be https:// or http://".into()));
    }
    endpoint = endpoint
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    if let Some(interval) = options.keep_alive {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
    }
    Ok(endpoint)
}

/// The innermost cause of an error chain: for connection failures it is the useful part
/// ("Connection refused", "invalid peer certificate: UnknownIssuer").
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Where a bearer credential comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A fixed secret (a flag or `DS_TOKEN`).
    Fixed(SecretString),
    /// A file holding the token, re-read on every call and trimmed.
    File(PathBuf),
}

impl TokenSource {
    fn header(&self) -> Result<MetadataValue<Ascii>, TransportError> {
        match self {
            Self::Fixed(secret) => header(secret.expose_secret()),
            Self::File(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| TransportError::TokenFile {
                        path: path.clone(),
                        source,
                    })?;
                header(text.trim())
            }
        }
    }
}

fn header(token: &str) -> Result<MetadataValue<Ascii>, TransportError> {
    let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| TransportError::BadCredential)?;
    value.set_sensitive(true);
    Ok(value)
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Inner);

#[derive(Clone)]
enum Inner {
    /// Built once: the header of a fixed secret.
    Fixed(MetadataValue<Ascii>),
    File(Arc<TokenSource>),
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Fixed(_) => f.write_str("Bearer(fixed, redacted)"),
            Inner::File(source) => write!(f, "Bearer({source:?})"),
        }
    }
}

impl Bearer {
    /// A fixed credential.
    ///
    /// # Errors
    /// A credential that cannot be an HTTP header value.
    pub fn new(token: &SecretString) -> Result<Self, TransportError> {
        header(token.expose_secret()).map(|h| Self(Inner::Fixed(h)))
    }

    /// A fixed credential in plain text (tests, benchmarks, `ds dev`).
    ///
    /// # Panics
    /// When `token` cannot be a header value: the caller made it.
    pub fn from_plain(token: &str) -> Self {
        Self::new(&SecretString::from(token)).expect("a visible-ASCII credential")
    }

    /// A credential from `source`. A file is read on every call, not now: a token mounted
    /// a moment after the start is used once it is there.
    ///
    /// # Errors
    /// A fixed credential that cannot be a header value.
    pub fn from_source(source: TokenSource) -> Result<Self, TransportError> {
        match source {
            TokenSource::Fixed(secret) => Self::new(&secret),
            TokenSource::File(_) => Ok(Self(Inner::File(Arc::new(source)))),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = match &self.0 {
            Inner::Fixed(value) => value.clone(),
            // The message names the file at most, never the token.
            Inner::File(source) => source
                .header()
                .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?,
        };
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// Reads a secret flag value (clap `value_parser`).
///
/// # Errors
/// Never; the signature is what clap asks for.
pub fn parse_secret(text: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorization(bearer: &mut Bearer) -> Result<MetadataValue<Ascii>, tonic::Status> {
        let req = bearer.call(tonic::Request::new(()))?;
        Ok(req.metadata().get("authorization").unwrap().clone())
    }

    #[test]
    fn a_fixed_credential_is_sent_as_a_sensitive_bearer_header() {
        let mut b = Bearer::new(&SecretString::from(" hunter2 \n")).unwrap();
        let value = authorization(&mut b).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer hunter2");
        assert!(value.is_sensitive());
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    #[test]
    fn a_token_file_is_read_again_on_every_call() {
        let dir = std::env::temp_dir().join(format!("ds-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first\n").unwrap();
        let mut b = Bearer::from_source(TokenSource::File(path.clone())).unwrap();
        assert_eq!(authorization(&mut b).unwrap(), "Bearer first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(authorization(&mut b).unwrap(), "Bearer second");
        std::fs::remove_file(&path).unwrap();
        let err = authorization(&mut b).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("token"), "{}", err.message());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_credential_that_is_not_header_text_is_refused_without_showing_it() {
        let err = Bearer::new(&SecretString::from("bad\u{7f}secret")).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn plain_http_is_refused_when_the_caller_says_so() {
        let options = ChannelOptions {
            plaintext: Plaintext::Refuse { hint: "--insecure" },
            ..ChannelOptions::default()
        };
        let err = endpoint("http://gw:8800", &options).unwrap_err();
        assert!(err.to_string().contains("--insecure"), "{err}");
        assert!(endpoint("http://gw:8800", &ChannelOptions::default()).is_ok());
        let err = endpoint("ftp://gw", &ChannelOptions::default()).unwrap_err();
        assert!(err.to_string().contains("scheme"), "{err}");
    }

    #[test]
    fn https_with_an_unreadable_ca_bundle_names_the_file() {
        let options = ChannelOptions {
            ca_cert: Some(Path::new("/nonexistent/ca.pem")),
            ..ChannelOptions::default()
        };
        let err = endpoint("https://gw:8800", &options).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
