//! The control plane (`ds gateway`): store, credentials, gRPC services for agents and CLI.

/// Placeholder, replaced by the gateway implementation.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {}

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("not built yet")]
    NotBuilt,
}

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    _args: GatewayArgs,
    _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    Err(GatewayError::NotBuilt)
}
