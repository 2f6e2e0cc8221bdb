//! Install codes: `CreateInstallCode` hands out a short-lived, single-use code, and
//! `GET /install/CODE.yaml` serves the rendered agent manifest for it exactly once.
//!
//! # Guarantees
//! - The code is 128 random bits; the database keeps only its SHA-256.
//! - The deployer token is issued when the manifest is fetched, in the same transaction
//!   that marks the code used: an unused code never produced a token, and the plaintext
//!   token exists only in the one response (inside the Secret), never in a URL or the DB.
//! - The fetch *adds* a token instead of rotating: agents already running with an older
//!   token of this deployer (other clusters of a group, or the agent being reinstalled)
//!   keep working. `ds deployer rotate-token` or deleting the deployer still revokes all
//!   of them, install-issued ones included.

use super::Shared;
use super::convert::rfc3339;
use super::credentials;
use super::rpc::store_status;
use super::store::{ChangeBy, StoreError};
use crate::manifest::{AgentManifest, DEFAULT_AGENT_NAMESPACE, render_agent_manifest};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use ds_core::ValidationError;
use ds_core::proto::{CreateInstallCodeRequest, CreateInstallCodeResponse};
use ds_core::validate::validate_namespace;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// How long an install link works unless the request says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest lifetime a request may ask for: a link is meant to be used right away.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default agent image: this very build of `ds`.
pub const DEFAULT_AGENT_IMAGE: &str = ds_core::DEFAULT_IMAGE;
/// Hex digits of a code (128 bits).
const CODE_LEN: usize = 32;
/// Expired codes older than this are deleted when a new code is created.
pub(super) const KEEP_EXPIRED: chrono::Duration = chrono::Duration::days(1);

/// What the install endpoint needs besides the store.
#[derive(Debug, Clone)]
pub struct InstallSettings {
    /// The gateway URL the agent dials and the install URL starts with (no trailing `/`).
    pub public_url: String,
    /// The agent image written into the manifest.
    pub agent_image: String,
    /// PEM bundle the agents should trust for the gateway (`None`: the system roots).
    pub ca_bundle: Option<String>,
}

/// How the manifest of one install link is rendered; chosen by `ds deployer install`
/// and stored with the code.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct InstallOptions {
    /// Namespace the agent runs in (empty: [`DEFAULT_AGENT_NAMESPACE`]).
    pub namespace: String,
    /// Cluster name the agent reports (empty: the deployer's name).
    pub cluster_name: String,
    /// Whether the agent may create missing target namespaces.
    pub create_namespaces: bool,
    /// Empty: cluster-wide rights. Otherwise Roles in these namespaces only.
    pub target_namespaces: Vec<String>,
}

impl InstallOptions {
    /// The options as a code's row stores them (JSON).
    ///
    /// # Errors
    /// The stored text is not the JSON of install options.
    pub(super) fn from_stored(json: &str) -> Result<Self, StoreError> {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("install options: {e}")))
    }

    /// The options of a request, checked: namespaces must be DNS-1123 labels.
    ///
    /// # Errors
    /// The first invalid field, named as the request names it.
    fn from_request(req: &CreateInstallCodeRequest) -> Result<Self, ValidationError> {
        if !req.namespace.is_empty() {
            validate_namespace("namespace", &req.namespace)?;
        }
        for (i, ns) in req.target_namespaces.iter().enumerate() {
            validate_namespace(&format!("target_namespaces[{i}]"), ns)?;
        }
        if req.cluster_name.chars().count() > 253 || req.cluster_name.contains(char::is_control) {
            return Err(ValidationError {
                field: "cluster_name".into(),
                value: req.cluster_name.clone(),
                rule: "must be at most 253 printable characters".into(),
            });
        }
        if req.create_namespaces && !req.target_namespaces.is_empty() {
            return Err(ValidationError {
                field: "create_namespaces".into(),
                value: "true".into(),
                rule: "cannot be combined with target_namespaces: creating namespaces needs cluster-wide rights, so create the listed namespaces first".into(),
            });
        }
        let mut target_namespaces = req.target_namespaces.clone();
        target_namespaces.sort();
        target_namespaces.dedup();
        Ok(Self {
            namespace: req.namespace.clone(),
            cluster_name: req.cluster_name.clone(),
            create_namespaces: req.create_namespaces,
            target_namespaces,
        })
    }
}

/// Why a code could not be redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// No such code (never issued, or its deployer was deleted).
    #[error("unknown install link")]
    Unknown,
    /// The code was used already.
    #[error("install link already used")]
    Used,
    /// The code expired unused.
    #[error("install link expired")]
    Expired,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RedeemError {
    /// Why a code that could not be claimed was refused, from its `used_at` column:
    /// `None` when no row has the code at all.
    pub(super) fn of_unclaimed(used_at: Option<Option<i64>>) -> Self {
        match used_at {
            None => Self::Unknown,
            Some(Some(_)) => Self::Used,
            Some(None) => Self::Expired,
        }
    }
}

/// Storage of install codes (hashes only).
#[async_trait::async_trait]
pub trait InstallCodes: Send + Sync + 'static {
    /// Stores a new code's hash for `deployer_id`, valid until `expires_at`, issued `by`.
    async fn create_code(
        &self,
        by: &ChangeBy,
        hash: [u8; 32],
        deployer_id: &str,
        expires_at: DateTime<Utc>,
        options: &InstallOptions,
    ) -> Result<(), StoreError>;
    /// Marks the code used and adds the token `(token_id, token_hash)` to its deployer,
    /// atomically, audited as `by`; returns the deployer ID and the options the code was
    /// created with.
    async fn redeem_code(
        &self,
        by: &ChangeBy,
        hash: [u8; 32],
        token_id: &str,
        token_hash: [u8; 32],
    ) -> Result<(String, InstallOptions), RedeemError>;
}

/// SHA-256 of a code.
fn code_hash(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

/// Whether `code` has the shape of an issued code (checked before any database lookup).
fn well_formed(code: &str) -> bool {
    code.len() == CODE_LEN && code.bytes().all(|b| b.is_ascii_hexdigit())
}

// === the RPC ===

/// `CreateInstallCode`: a new code for the deployer and the URL that redeems it. The
/// caller has been authorized already.
///
/// # Errors
/// INVALID_ARGUMENT for a missing deployer or a lifetime above [`MAX_TTL`], NOT_FOUND for
/// an unknown deployer, INTERNAL for store failures.
pub(crate) async fn create_install_code(
    shared: &Shared,
    by: &ChangeBy,
    req: CreateInstallCodeRequest,
) -> Result<CreateInstallCodeResponse, tonic::Status> {
    if req.deployer.is_empty() {
        return Err(tonic::Status::invalid_argument(
            "deployer: an ID or name is required",
        ));
    }
    let ttl = match req.ttl_seconds {
        0 => DEFAULT_TTL,
        s => Duration::from_secs(u64::from(s)),
    };
    if ttl > MAX_TTL {
        return Err(tonic::Status::invalid_argument(format!(
            "ttl_seconds: at most {} (an install link is meant to be used right away)",
            MAX_TTL.as_secs()
        )));
    }
    let options = InstallOptions::from_request(&req)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let deployer = shared
        .store
        .get_deployer(&req.deployer)
        .await
        .map_err(store_status)?;
    let code = hex::encode(rand::random::<[u8; 16]>());
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(KEEP_EXPIRED);
    shared
        .install_codes
        .create_code(by, code_hash(&code), &deployer.id, expires_at, &options)
        .await
        .map_err(store_status)?;
    // The code is a credential for one manifest: log who and until when, never the code.
    tracing::info!(deployer = %deployer.id, name = %deployer.name, expires_at = %rfc3339(expires_at), "install code created");
    Ok(CreateInstallCodeResponse {
        url: format!("{}/install/{code}.yaml", shared.install.public_url),
        expires_at: rfc3339(expires_at),
    })
}

// === the HTTP endpoint ===

/// The `/install/{file}` route.
pub(crate) fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/install/{file}", axum::routing::get(serve_manifest))
        .with_state(shared)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `GET /install/CODE.yaml`: the manifest once; 410 for a used or expired code, 404 for
/// anything else.
async fn serve_manifest(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(code) = file.strip_suffix(".yaml").filter(|c| well_formed(c)) else {
        return text(StatusCode::NOT_FOUND, "unknown install link\n");
    };
    let token = credentials::generate(credentials::TOKEN_PREFIX);
    let hash = code_hash(code);
    // Whoever holds the link fetches it: the audit log names the link, by its hash prefix.
    let request_id = headers
        .get(crate::request_id::HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| crate::request_id::acceptable(id))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let by = ChangeBy::new(
        format!("install-code {}", crate::audit::code_id(&hash)),
        request_id,
    );
    let (deployer_id, options) = match shared
        .install_codes
        .redeem_code(&by, hash, &token.id, token.hash)
        .await
    {
        Ok(id) => id,
        Err(RedeemError::Unknown) => return text(StatusCode::NOT_FOUND, "unknown install link\n"),
        Err(RedeemError::Used) => {
            tracing::warn!("install link fetched again after its first use");
            return text(
                StatusCode::GONE,
                "this install link was already used; run `ds deployer install NAME` for a new one\n",
            );
        }
        Err(RedeemError::Expired) => {
            return text(
                StatusCode::GONE,
                "this install link has expired; run `ds deployer install NAME` for a new one\n",
            );
        }
        Err(RedeemError::Store(error)) => {
            tracing::error!(%error, "redeeming an install code");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    let deployer = match shared.store.get_deployer(&deployer_id).await {
        Ok(d) => d,
        Err(error) => {
            tracing::error!(deployer = %deployer_id, %error, "reading the deployer of an install code");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    let manifest = render_agent_manifest(&AgentManifest {
        deployer_name: deployer.name.clone(),
        gateway_url: shared.install.public_url.clone(),
        token: token.secret,
        image: shared.install.agent_image.clone(),
        namespace: non_empty_or(options.namespace, DEFAULT_AGENT_NAMESPACE),
        cluster_name: non_empty_or(options.cluster_name, &deployer.name),
        ca_bundle: shared.install.ca_bundle.clone(),
        create_namespaces: options.create_namespaces,
        target_namespaces: options.target_namespaces,
    });
    tracing::info!(deployer = %deployer.id, name = %deployer.name, token_id = %token.id, "install manifest served; a new deployer token was issued");
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/yaml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        manifest,
    )
        .into_response()
}

fn non_empty_or(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value
    }
}

/// The public URL: `--public-url` without a trailing `/`, else `http(s)://` and the bound
/// address (loopback instead of an unspecified address, so the URL is at least usable on
/// this machine).
pub(crate) fn public_url(
    configured: Option<&str>,
    addr: std::net::SocketAddr,
    tls: bool,
) -> String {
    if let Some(url) = configured.filter(|u| !u.is_empty()) {
        return url.trim_end_matches('/').to_string();
    }
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        addr.set_ip(loopback);
    }
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_codes_reach_the_database() {
        let code = hex::encode(rand::random::<[u8; 16]>());
        assert!(well_formed(&code));
        assert!(!well_formed("abc"));
        assert!(!well_formed(&format!("{}z", &code[1..])));
        assert!(!well_formed(""));
    }

    #[test]
    fn public_url_defaults_to_a_usable_address() {
        let any: std::net::SocketAddr = "0.0.0.0:8800".parse().unwrap();
        assert_eq!(public_url(None, any, false), "http://127.0.0.1:8800");
        assert_eq!(public_url(None, any, true), "https://127.0.0.1:8800");
        assert_eq!(
            public_url(Some("https://gw.example.com/"), any, true),
            "https://gw.example.com"
        );
    }
}
