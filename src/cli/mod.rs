//! The kubectl-like commands: `ds deployer …`, `ds deployment …`, `ds login`.

/// Placeholder.
#[derive(Debug, clap::Args)]
pub struct DeployerArgs {}
/// Placeholder.
#[derive(Debug, clap::Args)]
pub struct DeploymentArgs {}
/// Placeholder.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {}

/// Errors of the CLI.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("not built yet")]
    NotBuilt,
}

/// `ds deployer …`
pub async fn deployer(_args: DeployerArgs) -> Result<(), CliError> {
    Err(CliError::NotBuilt)
}
/// `ds deployment …`
pub async fn deployment(_args: DeploymentArgs) -> Result<(), CliError> {
    Err(CliError::NotBuilt)
}
/// `ds login`
pub async fn login(_args: LoginArgs) -> Result<(), CliError> {
    Err(CliError::NotBuilt)
}
