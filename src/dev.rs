//! `ds dev`: a gateway, a simulated cluster and an agent in one process, for a first try
//! and for local loops (`hack/local-loop.sh`).
//!
//! Everything lives in one data directory (default `./ds-data`): the gateway's SQLite
//! database and admin key, the deployer `local`'s token, the simulated cluster's state
//! and a kubeconfig for it. A second run reuses all of it.

use ds_agent::{AgentArgs, AgentError, RunningAgent};
use ds_core::proto::control_service_client::ControlServiceClient;
use ds_core::proto::{CreateDeployerRequest, GetDeployerRequest, RotateDeployerTokenRequest};
use ds_gateway::{GatewayArgs, GatewayError, RunningGateway};
use ds_kube_sim::{SimCluster, SimConfig, SimError};
use ds_transport::{Bearer, ChannelOptions};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The deployer `ds dev` registers and runs the agent for.
pub const DEV_DEPLOYER: &str = "local";
/// File of the deployer token in the data directory.
pub const TOKEN_FILE: &str = "local.token";
/// File of the simulated cluster's kubeconfig in the data directory.
pub const KUBECONFIG_FILE: &str = "kubeconfig";
/// File of the simulated cluster's objects in the data directory.
pub const CLUSTER_STATE_FILE: &str = "cluster.json";

/// Flags of `ds dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Directory for the database, keys, the cluster's state and its kubeconfig.
    #[arg(long, env = "DS_DEV_DATA_DIR", default_value = "./ds-data")]
    pub data_dir: PathBuf,
    /// Address of the gateway (gRPC and HTTP).
    #[arg(long, env = "DS_DEV_LISTEN", default_value = "127.0.0.1:8800")]
    pub listen: SocketAddr,
    /// Address of the simulated Kubernetes API server.
    #[arg(long, env = "DS_DEV_CLUSTER_LISTEN", default_value = "127.0.0.1:6443")]
    pub cluster_listen: SocketAddr,
    /// Address of the agent's `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "DS_DEV_AGENT_HEALTH", default_value = "127.0.0.1:9090")]
    pub agent_health: SocketAddr,
    /// Seconds a simulated rollout takes.
    #[arg(long, env = "DS_DEV_ROLLOUT_DELAY", default_value_t = 1.0)]
    pub rollout_delay: f64,
}

/// Errors of `ds dev`.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("creating the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the simulated cluster: {0}")]
    Cluster(#[from] SimError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the gateway: {0}")]
    Gateway(#[from] GatewayError),
    #[error(
        "the admin key file {0} is missing or stale; move the data directory away to start afresh"
    )]
    NoAdminKey(PathBuf),
    #[error("registering the deployer {DEV_DEPLOYER}: {0}")]
    Register(String),
    #[error("starting the agent: {0}")]
    Agent(#[from] AgentError),
}

/// Everything `ds dev` runs, for tests and for [`run`].
pub struct DevEnv {
    /// The gateway.
    pub gateway: RunningGateway,
    /// The simulated cluster.
    pub cluster: SimCluster,
    /// The agent of the deployer `local`.
    pub agent: RunningAgent,
    /// The admin API key (the `DS_API_KEY` to export).
    pub api_key: String,
    /// Where the kubeconfig of the simulated cluster was written.
    pub kubeconfig: PathBuf,
}

impl std::fmt::Debug for DevEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevEnv")
            .field("gateway", &self.gateway.url())
            .field("cluster", &self.cluster.url())
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl DevEnv {
    /// Starts the simulated cluster, the gateway and the agent, registering the deployer
    /// `local` on the first run and reusing it (and its token file) afterwards.
    ///
    /// # Errors
    /// The data directory is unusable, an address is taken, or registration fails.
    pub async fn start(args: &DevArgs) -> Result<DevEnv, DevError> {
        let dir = &args.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| DevError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let cluster = SimCluster::start(SimConfig {
            listen: args.cluster_listen,
            rollout_delay: Duration::from_secs_f64(args.rollout_delay.max(0.0)),
            state_file: Some(dir.join(CLUSTER_STATE_FILE)),
            ..SimConfig::default()
        })
        .await?;
        let kubeconfig = dir.join(KUBECONFIG_FILE);
        std::fs::write(&kubeconfig, cluster.kubeconfig()).map_err(|source| DevError::Write {
            path: kubeconfig.clone(),
            source,
        })?;
        let gateway = match RunningGateway::start(GatewayArgs::insecure(args.listen, dir)).await {
            Ok(g) => g,
            Err(e) => {
                cluster.shutdown().await;
                return Err(e.into());
            }
        };
        let api_key = gateway.admin_key.clone();
        let token_path = dir.join(TOKEN_FILE);
        let registered = if api_key.is_empty() {
            Err(DevError::NoAdminKey(
                dir.join(ds_gateway::credentials::ADMIN_KEY_FILE),
            ))
        } else {
            ensure_deployer(&gateway.url(), &api_key, &token_path).await
        };
        if let Err(e) = registered {
            gateway.shutdown().await;
            cluster.shutdown().await;
            return Err(e);
        }
        let mut agent_args = AgentArgs::new(gateway.url());
        agent_args.insecure = true;
        agent_args.token_file = Some(token_path);
        agent_args.cluster_name = "dev".into();
        agent_args.listen_health = args.agent_health;
        agent_args.create_namespaces = true;
        agent_args.instance = Some("ds-dev".into());
        let agent = match RunningAgent::start_with_client(agent_args, cluster.client()).await {
            Ok(a) => a,
            Err(e) => {
                gateway.shutdown().await;
                cluster.shutdown().await;
                return Err(e.into());
            }
        };
        Ok(DevEnv {
            gateway,
            cluster,
            agent,
            api_key,
            kubeconfig,
        })
    }

    /// What `ds dev` prints once everything runs: the exports and what to try next.
    pub fn banner(&self) -> String {
        let kubeconfig = self.kubeconfig.display();
        format!(
            "ds dev is running: gateway {gw}, simulated cluster {cluster}, agent of deployer \"{DEV_DEPLOYER}\".\n\
             \n\
             In another shell:\n\
             \n\
             export DS_GATEWAY={gw}\n\
             export DS_API_KEY={key}\n\
             \n\
             Then try:\n\
             \n  ds deployment create --deployer {DEV_DEPLOYER} --model-name iris --image tensorflow/serving:2.15.0 --wait\n\
             \x20 ds deployment ls\n\
             \x20 kubectl --kubeconfig {kubeconfig} get deploy\n\
             \n\
             Press Ctrl-C to stop; a second run keeps what this one created.",
            gw = self.gateway.url(),
            cluster = self.cluster.url(),
            key = self.api_key,
        )
    }

    /// Stops the agent, then the gateway, then the cluster (saving its state).
    ///
    /// # Errors
    /// The cluster's state file cannot be written.
    pub async fn shutdown(self) -> Result<(), DevError> {
        self.agent.shutdown().await;
        self.gateway.shutdown().await;
        self.cluster.stop().await?;
        Ok(())
    }
}

/// Makes sure the deployer `local` exists and `token_path` holds a valid token for it:
/// creates the deployer on the first run; rotates its token (no overlap needed: no other
/// agent uses it) only when the token file was lost.
async fn ensure_deployer(url: &str, api_key: &str, token_path: &Path) -> Result<(), DevError> {
    let err = |e: tonic::Status| DevError::Register(e.message().to_string());
    let bearer = Bearer::new(&api_key.into())
        .map_err(|e| DevError::Register(format!("the admin key: {e}")))?;
    let channel = ds_transport::endpoint(url, &ChannelOptions::default())
        .map_err(|e| DevError::Register(e.to_string()))?
        .connect_lazy();
    let mut control = ControlServiceClient::with_interceptor(channel, bearer);
    let existing = control
        .get_deployer(GetDeployerRequest {
            deployer: DEV_DEPLOYER.into(),
        })
        .await;
    let token = match existing {
        Ok(_) if token_path.exists() => {
            tracing::info!(
                deployer = DEV_DEPLOYER,
                "reusing the deployer and its token file"
            );
            return Ok(());
        }
        Ok(_) => {
            tracing::warn!(path = %token_path.display(), "token file missing: issuing a new token");
            control
                .rotate_deployer_token(RotateDeployerTokenRequest {
                    deployer: DEV_DEPLOYER.into(),
                    overlap_seconds: 1,
                })
                .await
                .map_err(err)?
                .into_inner()
                .token
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            control
                .create_deployer(CreateDeployerRequest {
                    name: DEV_DEPLOYER.into(),
                    ..Default::default()
                })
                .await
                .map_err(err)?
                .into_inner()
                .token
        }
        Err(status) => return Err(err(status)),
    };
    write_private(token_path, &format!("{token}\n")).map_err(|source| DevError::Write {
        path: token_path.to_path_buf(),
        source,
    })
}

/// Writes a file readable only by its owner (it holds a token).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Runs `ds dev` until `shutdown` resolves.
///
/// # Errors
/// Start-up failures (see [`DevEnv::start`]) or an unsaved cluster state at the end.
pub async fn run(
    args: DevArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DevError> {
    let env = DevEnv::start(&args).await?;
    println!("{}", env.banner());
    shutdown.await;
    env.shutdown().await?;
    println!(
        "ds dev stopped; the data stays in {}",
        args.data_dir.display()
    );
    Ok(())
}
