//! The model-proxy sidecar (`ds model-proxy`): metrics and query logs in front of a model.

/// Placeholder, replaced by the proxy implementation.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {}

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("not built yet")]
    NotBuilt,
}

/// Runs the proxy until `shutdown` resolves.
pub async fn run(
    _args: ProxyArgs,
    _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    Err(ProxyError::NotBuilt)
}
