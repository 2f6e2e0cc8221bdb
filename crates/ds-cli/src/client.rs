//! The gRPC connection to the gateway's ControlService, and the translation of its
//! errors into one line that says what to do.

use super::CliError;
use super::config::Connection;
use ds_core::proto;
use ds_core::proto::control_service_client::ControlServiceClient;
use ds_transport::{Bearer, ChannelOptions, Plaintext, TransportError, root_cause};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The control client with the API key attached to every call.
pub type Control = ControlServiceClient<InterceptedService<Channel, Bearer>>;

/// How long dialing may take before the gateway counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-call limit for unary calls; streams (`--wait`) have their own deadline.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `host:port` → `https://host:port`; checks the scheme and drops a trailing `/`.
///
/// # Errors
/// Not an `http://` or `https://` URL with a host.
pub fn normalize_url(raw: &str) -> Result<String, CliError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let bad = |reason: &str| CliError::BadGatewayUrl {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// Dials the gateway and returns an authenticated client.
///
/// # Errors
/// A bad URL or CA file, or the gateway cannot be reached.
pub async fn connect(connection: &Connection) -> Result<Control, CliError> {
    let url = &connection.url;
    let bearer = Bearer::new(&connection.api_key).map_err(|_| CliError::BadApiKey)?;
    let options = ChannelOptions {
        ca_cert: connection.ca_cert.as_deref(),
        // `ds login --gateway http://…` is the user's explicit choice (a local gateway).
        plaintext: Plaintext::Allow,
        connect_timeout: CONNECT_TIMEOUT,
        keep_alive: None,
    };
    let endpoint = ds_transport::endpoint(url, &options).map_err(|e| match e {
        TransportError::CaCert { path, source } => CliError::ReadCaCert {
            path: path.display().to_string(),
            cause: source,
        },
        TransportError::Url { reason, .. } => CliError::BadGatewayUrl {
            url: url.clone(),
            reason,
        },
        TransportError::BadCredential | TransportError::TokenFile { .. } => CliError::BadApiKey,
    })?;
    let channel = endpoint.connect().await.map_err(|e| {
        let detail = root_cause(&e);
        // A certificate problem is not an outage: say which flag fixes it.
        if detail.to_lowercase().contains("certificate") {
            CliError::UntrustedGateway {
                url: url.clone(),
                detail,
            }
        } else {
            CliError::Unreachable {
                url: url.clone(),
                detail: format!(" ({detail})"),
            }
        }
    })?;
    Ok(ControlServiceClient::with_interceptor(channel, bearer))
}

/// A unary request with the standard per-call deadline.
pub fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// One line for a gateway error: the server's own message where it explains the
/// problem (not found, invalid argument), a hint of what to do otherwise.
pub fn status_error(status: Status, url: &str) -> CliError {
    let message = one_line(status.message());
    match status.code() {
        Code::Unauthenticated if message == "API key expired" => CliError::ExpiredKey,
        Code::Unauthenticated => CliError::Unauthenticated(message.to_string()),
        Code::Unavailable => CliError::Unreachable {
            url: url.to_string(),
            detail: if message.is_empty() {
                String::new()
            } else {
                format!(" ({message})")
            },
        },
        Code::PermissionDenied => CliError::PermissionDenied(message),
        Code::NotFound
        | Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Aborted => CliError::Rejected(if message.is_empty() {
            code_words(status.code()).to_string()
        } else {
            message
        }),
        Code::Unimplemented => CliError::Unimplemented {
            url: url.to_string(),
            what: "this command".into(),
            hint: "upgrade the gateway".into(),
        },
        Code::DeadlineExceeded => CliError::Timeout,
        code => CliError::Gateway {
            code: code_words(code).to_string(),
            message,
        },
    }
}

/// Keeps an error on one line whatever the server sent.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn code_words(code: Code) -> &'static str {
    match code {
        Code::NotFound => "not found",
        Code::InvalidArgument => "invalid argument",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "failed precondition",
        Code::OutOfRange => "out of range",
        Code::Aborted => "aborted, try again",
        Code::ResourceExhausted => "resource exhausted",
        Code::Internal => "internal error",
        Code::Unknown => "unknown error",
        Code::DataLoss => "data loss",
        Code::Cancelled => "cancelled",
        _ => "error",
    }
}

/// Every deployment ListDeployments has for `req`'s filters, following its pages
/// (one answer never has to fit a whole list in one message), each passed through `map`
/// as its page arrives so that only the mapped list is ever held whole.
pub async fn list_all_deployments<T>(
    control: &mut Control,
    mut req: proto::ListDeploymentsRequest,
    mut map: impl FnMut(proto::DeploymentView) -> T,
) -> Result<Vec<T>, Status> {
    let mut all = Vec::new();
    loop {
        let page = control
            .list_deployments(request(req.clone()))
            .await?
            .into_inner();
        all.extend(page.deployments.into_iter().map(&mut map));
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        req.page_token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme_and_lose_the_trailing_slash() {
        assert_eq!(
            normalize_url("gw.example.com:8800/").unwrap(),
            "https://gw.example.com:8800"
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:8800").unwrap(),
            "http://127.0.0.1:8800"
        );
        assert!(normalize_url("ftp://gw").is_err());
        assert!(normalize_url("http://").is_err());
    }

    #[test]
    fn gateway_codes_become_advice() {
        let url = "http://127.0.0.1:1";
        let unauth = status_error(Status::unauthenticated("bad token"), url).to_string();
        assert!(unauth.contains("ds login"), "{unauth}");
        assert!(unauth.contains("DS_API_KEY"), "{unauth}");
        let down = status_error(Status::unavailable(""), url).to_string();
        assert!(down.contains(url) && down.contains("ds gateway"), "{down}");
        let missing =
            status_error(Status::not_found("deployer \"prod\" not found"), url).to_string();
        assert_eq!(missing, "deployer \"prod\" not found");
        let invalid = status_error(
            Status::invalid_argument("invalid image \"X\":\nmust be lowercase"),
            url,
        )
        .to_string();
        assert_eq!(invalid, "invalid image \"X\": must be lowercase");
    }
}
