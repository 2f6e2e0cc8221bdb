//! The in-cluster agent (`ds agent`): follows the gateway and reconciles owned objects.

pub mod builders;

/// Placeholder, replaced by the agent implementation.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {}

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("not built yet")]
    NotBuilt,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    _args: AgentArgs,
    _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    Err(AgentError::NotBuilt)
}
