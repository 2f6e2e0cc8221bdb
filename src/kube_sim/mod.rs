//! A simulated Kubernetes API server (`ds sim-cluster`) for tests and local runs.

pub mod apply;
pub mod patch;

/// Placeholder, replaced by the simulator implementation.
#[derive(Debug, clap::Args)]
pub struct SimArgs {}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("not built yet")]
    NotBuilt,
}

/// Runs the simulator until `shutdown` resolves.
pub async fn run(
    _args: SimArgs,
    _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    Err(SimError::NotBuilt)
}
