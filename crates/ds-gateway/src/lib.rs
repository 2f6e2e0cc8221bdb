//! The control plane (`ds gateway`): store, credentials, gRPC services for agents and CLI.
//!
//! # Layout
//! - [`store`]: the storage trait, its records, and the change hub watchers read from.
//! - `sql`: the one implementation of the store for both back ends, `rows` its row
//!   decoding, `group_commit` the batching of concurrent creates.
//! - [`sqlite`]: the SQLite back end (default), with built-in migrations.
//! - [`postgres`]: the PostgreSQL back end, for several replicas on one database.
//! - [`credentials`]: deployer tokens and API keys (hashed, constant-time checks).
//! - `access`: who a caller is (a principal), its roles per deployer, and the table of
//!   what each ControlService RPC needs.
//! - [`convert`]: `proto` ⇄ `core` conversions.
//! - [`agent_service`] / [`control_service`]: the two gRPC services.
//! - `inspect`: the agents' Inspect streams behind `ds deployment logs|describe`.
//! - [`install`]: install codes and the `/install/CODE.yaml` endpoint.
//! - [`manifest`]: the agent install manifest it renders (`deploy/agent.yaml`).
//! - [`server`]: one listener for gRPC and HTTP (`/healthz`, `/metrics`), TLS by rustls.
//! - [`rpc`]: credential extraction and error mapping shared by the services.
//! - `audit`: what the audit log records of each change, and refused attempts.
//! - `request_id`: the `x-request-id` of every gRPC call.
//! - `stages`: the stage policy (who may deploy on a stage).
//! - `hooks`: pre- and post-deployment hooks, run with a gateway-wide limit of slots.
//! - `jwt`: OIDC / JWT bearer tokens (`--jwt-*`), checked against the issuer's keys.
//! - [`metrics`]: Prometheus metrics under the `ds_gateway_` prefix.
//! - [`presence`]: whether a deployer's agent is connected; Unknown phases of offline deployers.

mod access;
mod agent_service;
mod audit;
mod control_service;
mod convert;
pub mod credentials;
mod group_commit;
mod history;
mod hooks;
mod inspect;
pub mod install;
mod jwt;
mod manifest;
mod metrics;
mod model_update;
mod paging;
mod pod_update;
pub mod postgres;
mod presence;
mod request_id;
mod rows;
mod rpc;
mod scale_update;
mod server;
mod sql;
pub mod sqlite;
mod stages;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use jwt::JwtArgs;

/// Flags of `ds gateway`; each also reads a `DS_*` environment variable.
#[derive(clap::Args, Clone, Debug)]
pub struct GatewayArgs {
    /// Address to serve gRPC and HTTP on.
    #[arg(long, env = "DS_LISTEN", default_value = "127.0.0.1:8800")]
    pub listen: SocketAddr,
    /// Directory of the SQLite database and `admin.key`.
    #[arg(long, env = "DS_DATA_DIR", default_value = "./ds-data")]
    pub data_dir: PathBuf,
    /// Database URL: `sqlite:///var/lib/ds/gateway.db`, or `postgres://USER@HOST/DB` for
    /// several gateway replicas sharing one database; overrides the SQLite file in the
    /// data directory.
    #[arg(long, env = "DS_DATABASE")]
    pub database: Option<String>,
    /// Serve plaintext (no TLS). Only for local development and tests.
    #[arg(long, env = "DS_INSECURE")]
    pub insecure: bool,
    /// PEM certificate chain for TLS.
    #[arg(long, env = "DS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "DS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Heartbeat period on idle Watch streams (e.g. `10s`).
    #[arg(long, env = "DS_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = ds_core::duration::parse)]
    pub heartbeat_interval: Duration,
    /// A deployer is offline when no agent reported for this long (e.g. `60s`).
    #[arg(long, env = "DS_OFFLINE_AFTER", default_value = "60s", value_parser = ds_core::duration::parse)]
    pub offline_after: Duration,
    /// How long a rotated-out token keeps working (e.g. `10m`).
    #[arg(long, env = "DS_TOKEN_OVERLAP", default_value = "10m", value_parser = ds_core::duration::parse)]
    pub token_overlap: Duration,
    /// The gateway's public URL, used in install URLs (default: derived from --listen).
    #[arg(long, env = "DS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Agent image written into install manifests.
    #[arg(long, env = "DS_AGENT_IMAGE", default_value = install::DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// PEM bundle that installed agents trust for the gateway (when its certificate is
    /// not signed by a public CA); written into the install manifest's Secret.
    #[arg(long, env = "DS_AGENT_CA_CERT")]
    pub agent_ca_cert: Option<PathBuf>,
    /// Revisions kept per deployment (`ds deployment history`); older ones are dropped.
    #[arg(long, env = "DS_REVISION_HISTORY", default_value_t = store::DEFAULT_REVISION_HISTORY,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub revision_history: u32,
    /// Directory of the executables command hooks may name (`ds hook add --command
    /// NAME`); without it, command hooks are refused (URL hooks still work).
    #[arg(long, env = "DS_HOOKS_DIR")]
    pub hooks_dir: Option<PathBuf>,
    /// Hooks running at once on this gateway; more wait for a free slot.
    #[arg(long, env = "DS_HOOK_SLOTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub hook_slots: u32,
    /// How long a pre-deployment hook waits for a free slot before the change is refused.
    #[arg(long, env = "DS_HOOK_PRE_WAIT", default_value = "10s", value_parser = ds_core::duration::parse)]
    pub hook_pre_wait: Duration,
    /// How long a post-deployment hook waits for a free slot before its run fails.
    #[arg(long, env = "DS_HOOK_POST_WAIT", default_value = "60s", value_parser = ds_core::duration::parse)]
    pub hook_post_wait: Duration,
    /// How long a post-deployment hook waits for the agent to report the change's revision
    /// Available or Failed; at the end its run is recorded as failed, not run. The default
    /// is a Kubernetes Deployment's progress deadline (10 minutes) plus a margin.
    #[arg(long, env = "DS_HOOK_POST_STATUS_WAIT", default_value = "11m", value_parser = ds_core::duration::parse)]
    pub hook_post_status_wait: Duration,
    /// The longest timeout a hook may be given (`ds hook add --timeout`).
    #[arg(long, env = "DS_HOOK_MAX_TIMEOUT", default_value = "10m", value_parser = ds_core::duration::parse)]
    pub hook_max_timeout: Duration,
    /// OIDC / JWT bearer tokens on the control API (`--jwt-*`).
    #[command(flatten)]
    pub jwt: JwtArgs,
}

impl GatewayArgs {
    /// Settings for a test or an embedded gateway: plaintext, on `listen`, data in
    /// `data_dir`, default timings.
    pub fn insecure(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            database: None,
            insecure: true,
            tls_cert: None,
            tls_key: None,
            heartbeat_interval: Duration::from_secs(10),
            offline_after: Duration::from_secs(60),
            token_overlap: Duration::from_secs(600),
            public_url: None,
            agent_image: install::DEFAULT_AGENT_IMAGE.to_string(),
            agent_ca_cert: None,
            revision_history: store::DEFAULT_REVISION_HISTORY,
            hooks_dir: None,
            hook_slots: 3,
            hook_pre_wait: Duration::from_secs(10),
            hook_post_wait: Duration::from_secs(60),
            hook_post_status_wait: Duration::from_secs(11 * 60),
            hook_max_timeout: Duration::from_secs(600),
            jwt: JwtArgs::default(),
        }
    }
}

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("creating the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("opening the store: {0}")]
    Store(#[from] store::StoreError),
    #[error("setting up the admin API key: {0}")]
    AdminKey(#[from] credentials::AdminKeyError),
    #[error("TLS is required: give --tls-cert and --tls-key, or --insecure for plaintext")]
    TlsRequired,
    #[error("loading TLS material: {0}")]
    Tls(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{flag}: {reason}")]
    JwtConfig { flag: &'static str, reason: String },
    #[error("{flag} {path}: {reason}")]
    JwtKey {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("the server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Settings and state shared by the gRPC services.
pub(crate) struct Shared {
    pub store: Arc<dyn store::Store>,
    pub metrics: Arc<metrics::Metrics>,
    pub presence: agent_service::Presence,
    /// The agents' Inspect streams, for logs and describe.
    pub inspectors: inspect::Inspectors,
    pub heartbeat_interval: Duration,
    pub offline_after: Duration,
    pub token_overlap: Duration,
    /// Install codes (the store again, as its other trait) and what the install manifest needs.
    pub install_codes: Arc<dyn install::InstallCodes>,
    pub install: install::InstallSettings,
    /// Checks JWT bearer tokens on the control API; `None` when `--jwt-issuer` is not set.
    pub jwt: Option<jwt::Verifier>,
    /// Cancelled at shutdown: long-lived streams end so connections can close.
    pub shutdown: CancellationToken,
    /// The deployment hooks' runner and slots.
    pub hooks: Arc<hooks::Hooks>,
}

/// A gateway serving in the background (in tests, or embedded in `ds dev`).
pub struct RunningGateway {
    /// The bound address (the real port when `--listen` had port 0).
    pub addr: SocketAddr,
    /// The admin API key: newly created, or read back from `admin.key`; empty when that
    /// file is missing on a later start.
    pub admin_key: String,
    tls: bool,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    store: Backend,
}

/// The opened store, to close it on the way out.
enum Backend {
    Sqlite(Arc<sqlite::SqliteStore>),
    Postgres(Arc<postgres::PgStore>),
}

impl Backend {
    /// Opens the back end a database URL names (SQLite in `data_dir` without one).
    async fn open(url: Option<&str>, data_dir: &std::path::Path) -> Result<Self, GatewayError> {
        Ok(match url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Backend::Postgres(Arc::new(postgres::PgStore::open_url(url).await?))
            }
            Some(url) => Backend::Sqlite(Arc::new(sqlite::SqliteStore::open_url(url).await?)),
            None => Backend::Sqlite(Arc::new(
                sqlite::SqliteStore::open_path(&data_dir.join("gateway.db")).await?,
            )),
        })
    }

    fn store(&self) -> Arc<dyn store::Store> {
        match self {
            Backend::Sqlite(s) => s.clone(),
            Backend::Postgres(s) => s.clone(),
        }
    }

    fn install_codes(&self) -> Arc<dyn install::InstallCodes> {
        match self {
            Backend::Sqlite(s) => s.clone(),
            Backend::Postgres(s) => s.clone(),
        }
    }

    async fn close(&self) {
        match self {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(s) => s.close().await,
        }
    }
}

impl std::fmt::Debug for RunningGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningGateway")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl RunningGateway {
    /// Opens the store, makes sure an admin key exists, binds and starts serving.
    ///
    /// # Errors
    /// The data directory, database, TLS material or listen address is unusable.
    pub async fn start(args: GatewayArgs) -> Result<RunningGateway, GatewayError> {
        server::install_crypto_provider();
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(server::tls_config(cert, key)?),
            _ if args.insecure => None,
            _ => return Err(GatewayError::TlsRequired),
        };
        let jwt = jwt::Verifier::from_args(&args.jwt)?;
        if let Some(verifier) = &jwt {
            tracing::info!(
                issuer = verifier.issuer(),
                keys = verifier.key_count(),
                "accepting JWT bearer tokens"
            );
            if !verifier.checks_audience() {
                // Until permissions come, any token of this issuer is as good as the admin key.
                tracing::warn!(
                    issuer = verifier.issuer(),
                    "no --jwt-audience: tokens this issuer made for any application are accepted"
                );
            }
        }
        std::fs::create_dir_all(&args.data_dir).map_err(|source| GatewayError::DataDir {
            path: args.data_dir.display().to_string(),
            source,
        })?;
        let agent_ca = match args
            .agent_ca_cert
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                GatewayError::Tls(format!("agent CA bundle {}: {e}", path.display()))
            })?),
            None => None,
        };
        let backend = Backend::open(args.database.as_deref(), &args.data_dir).await?;
        backend.store().set_revision_history(args.revision_history);
        let (admin_key, created) =
            credentials::ensure_admin_key(backend.store().as_ref(), &args.data_dir).await?;
        if created {
            // Shown once, on purpose outside the logs: the file keeps the only other copy.
            println!(
                "Admin API key (shown once; also saved 0600 in {}): {admin_key}",
                args.data_dir.join(credentials::ADMIN_KEY_FILE).display()
            );
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: args.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            addr: args.listen,
            source,
        })?;
        if tls.is_none() {
            tracing::warn!(%addr, "serving plaintext without TLS (--insecure): tokens cross the network in clear");
        }
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(metrics::Metrics::new());
        let shared = Arc::new(Shared {
            store: backend.store(),
            metrics: metrics.clone(),
            presence: agent_service::Presence::default(),
            inspectors: inspect::Inspectors::default(),
            heartbeat_interval: args.heartbeat_interval,
            offline_after: args.offline_after,
            token_overlap: args.token_overlap,
            install_codes: backend.install_codes(),
            install: install::InstallSettings {
                public_url: install::public_url(args.public_url.as_deref(), addr, tls.is_some()),
                agent_image: args.agent_image.clone(),
                ca_bundle: agent_ca,
            },
            jwt,
            shutdown: shutdown.clone(),
            hooks: Arc::new(hooks::Hooks::new(hooks::HookSettings {
                dir: args.hooks_dir.clone().filter(|d| !d.as_os_str().is_empty()),
                slots: args.hook_slots,
                pre_wait: args.hook_pre_wait,
                post_wait: args.hook_post_wait,
                post_status_wait: args.hook_post_status_wait,
                max_timeout: args.hook_max_timeout,
            })),
        });
        let app = server::router(shared.clone()).merge(install::router(shared));
        let is_tls = tls.is_some();
        let task = tokio::spawn(server::serve(listener, app, tls, shutdown.clone()));
        tracing::info!(%addr, tls = is_tls, data_dir = %args.data_dir.display(), "gateway listening");
        Ok(RunningGateway {
            addr,
            admin_key,
            tls: is_tls,
            shutdown,
            task,
            store: backend,
        })
    }

    /// The URL clients dial: `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, ends open streams, waits for connections to close (bounded), and
    /// closes the database.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "gateway server task ended abnormally");
        }
        self.store.close().await;
        tracing::info!("gateway stopped");
    }
}

/// Runs the gateway until `shutdown` resolves, then stops gracefully.
///
/// # Errors
/// Start-up failures (see [`RunningGateway::start`]).
pub async fn run(
    args: GatewayArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let running = RunningGateway::start(args).await?;
    shutdown.await;
    running.shutdown().await;
    Ok(())
}
