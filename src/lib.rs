//! `ds`: the one binary of ds-deployer. It parses the command line and hands over to the
//! component crates:
//! - `ds-core`: domain types, validation and the generated gRPC types;
//! - `ds-gateway`: the control plane (`ds gateway`);
//! - `ds-agent`: the in-cluster agent (`ds agent`);
//! - `ds-cli`: the kubectl-like commands (`ds deployer …`, `ds deployment …`, `ds login`);
//! - `ds-proxy`: the model-proxy sidecar (`ds model-proxy`);
//! - `ds-fetch`: the model download of the model-from-storage init container
//!   (`ds model-fetch`);
//! - `ds-kube-sim`: the simulated Kubernetes API server (`ds sim-cluster`), only with the
//!   `dev` feature (on by default), which also brings [`dev`] (`ds dev`).
//!
//! [`telemetry`] holds the logging set-up and the shutdown signal the commands share.

#[cfg(feature = "dev")]
pub mod dev;
pub mod telemetry;

use ds_agent as agent;
use ds_cli as cli;
use ds_gateway as gateway;
#[cfg(feature = "dev")]
use ds_kube_sim as kube_sim;
use ds_proxy as proxy;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The `ds` command line.
#[derive(Debug, Parser)]
#[command(
    name = "ds",
    version,
    about = "Deploy model servers into many Kubernetes clusters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The `ds` subcommands.
// Parsed once per process: boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane.
    Gateway(gateway::GatewayArgs),
    /// Run the in-cluster agent.
    Agent(agent::AgentArgs),
    /// Run the model-proxy sidecar.
    ModelProxy(proxy::ProxyArgs),
    /// Download a model from S3, GCS or HTTP(S) into a directory (the init container of
    /// a deployment with `--model-uri`).
    ModelFetch(ds_fetch::FetchArgs),
    /// Run a simulated Kubernetes API server (for tests and `ds dev`).
    #[cfg(feature = "dev")]
    SimCluster(kube_sim::SimArgs),
    /// Manage deployers (one per cluster or group of clusters).
    Deployer(cli::DeployerArgs),
    /// Manage deployments.
    Deployment(cli::DeploymentArgs),
    /// Manage users and service accounts (gateway admins).
    User(cli::UserArgs),
    /// Manage API keys: your own, or anyone's as a gateway admin.
    Apikey(cli::ApikeyArgs),
    /// Manage groups and their members (gateway admins).
    Group(cli::GroupArgs),
    /// Manage lifecycle stages (Development, Test, Production…).
    Stage(cli::StageArgs),
    /// Manage a deployer's pre- and post-deployment hooks.
    Hook(cli::HookArgs),
    /// Read the audit log.
    Audit(cli::AuditArgs),
    /// Save the gateway address and API key to the CLI config file.
    Login(cli::LoginArgs),
    /// Print the client's version and the gateway's.
    Version(cli::VersionArgs),
    /// Print a shell completion script: `source <(ds completion bash)`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run a gateway, a simulated cluster and an agent in one process, to try things out.
    #[cfg(feature = "dev")]
    Dev(dev::DevArgs),
}

/// Runs a parsed command line and turns any error into one line on stderr.
pub fn main_with(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Its own failure report: one line naming the object, also in the termination log.
    let cli = match cli.command {
        Command::ModelFetch(args) => {
            telemetry::init_logging();
            return runtime.block_on(ds_fetch::run(args));
        }
        command => Cli { command },
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gateway(args) => {
            telemetry::init_logging();
            gateway::run(args, telemetry::shutdown_signal()).await?
        }
        Command::Agent(args) => {
            telemetry::init_logging();
            agent::run(args, telemetry::shutdown_signal()).await?
        }
        Command::ModelProxy(args) => {
            telemetry::init_logging();
            proxy::run(args, telemetry::shutdown_signal()).await?
        }
        #[cfg(feature = "dev")]
        Command::SimCluster(args) => {
            telemetry::init_logging();
            kube_sim::run(args, telemetry::shutdown_signal()).await?
        }
        Command::ModelFetch(args) => {
            telemetry::init_logging();
            if ds_fetch::run(args).await != ExitCode::SUCCESS {
                anyhow::bail!("model-fetch failed");
            }
        }
        Command::Deployer(args) => cli::deployer(args).await?,
        Command::User(args) => cli::user(args).await?,
        Command::Apikey(args) => cli::apikey(args).await?,
        Command::Group(args) => cli::group(args).await?,
        Command::Deployment(args) => cli::deployment(args).await?,
        Command::Stage(args) => cli::stage(args).await?,
        Command::Hook(args) => cli::hook(args).await?,
        Command::Audit(args) => cli::audit(args).await?,
        Command::Login(args) => cli::login(args).await?,
        Command::Version(args) => cli::version(args).await?,
        Command::Completion { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "ds", &mut std::io::stdout());
        }
        #[cfg(feature = "dev")]
        Command::Dev(args) => {
            telemetry::init_logging();
            dev::run(args, telemetry::shutdown_signal()).await?
        }
    }
    Ok(())
}
