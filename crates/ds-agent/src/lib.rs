//! The in-cluster agent (`ds agent`): follows the gateway and reconciles owned objects.
//!
//! # Layout
//! - [`builders`]: pure functions from a deployment to its Deployment, Service, Ingress,
//!   HorizontalPodAutoscaler and PodDisruptionBudget.
//! - `model_volume`: the model from storage in the pod (init container, volume, mount).
//! - [`desired`]: the kinds and desired objects (as JSON) of a deployment, and its digest.
//! - [`compare`]: whether an observed object matches its desired one.
//! - [`sync`]: the gateway side: Watch, List, status reports (one task each).
//! - `inspect`: answers the gateway's logs and describe questions (the Inspect stream).
//! - [`cache`]: label-selected watches into compact caches of the owned objects.
//! - [`pods`]: the watch of the owned Deployments' Pods and the failure reasons they show.
//! - [`reconcile`]: compare-and-apply of one deployment, the prune sweep, statuses.
//! - [`scheduler`]: what runs when: per-deployment tasks, bounded concurrency, backoff.
//! - [`leader`]: Lease-based leader election (`--leader-elect`) and the write fence.
//! - [`metrics`]: Prometheus metrics under `ds_agent_`.
//!
//! [`RunningAgent`] wires them together; `ds agent` runs one until a signal.

pub mod builders;
pub mod cache;
mod compare;
pub mod desired;
mod held;
mod inspect;
mod leader;
mod metrics;
mod model_volume;
mod pages;
pub mod pods;
mod reconcile;
mod scheduler;
mod sync;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use ds_transport::{Bearer, SecretString, TokenSource};
use metrics::Metrics;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use sync::{DesiredState, Statuses, SyncContext};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The default sidecar image: this very build of `ds`.
pub const DEFAULT_PROXY_IMAGE: &str = ds_core::DEFAULT_IMAGE;

/// Deployments reconciled at once unless `--concurrency` says otherwise: enough to keep
/// the API server busy (a round trip is mostly waiting), few enough that a burst of work
/// cannot flood it.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// `ds agent` flags; every one can also come from a `DS_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Gateway URL (https://…; plain http:// only with --insecure).
    #[arg(long, env = "DS_GATEWAY")]
    pub gateway: String,
    /// File holding the deployer token (re-read on every call, so rotation needs no
    /// restart). Without it the token comes from DS_TOKEN.
    #[arg(long, env = "DS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The deployer token itself (tests and embedding; the command line reads `DS_TOKEN`).
    #[arg(skip)]
    pub token: Option<SecretString>,
    /// PEM bundle of CAs trusted for the gateway (besides the system roots). Empty means
    /// none, so a manifest can always set DS_CA_CERT.
    #[arg(long, env = "DS_CA_CERT", value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from))]
    pub ca_cert: Option<PathBuf>,
    /// Kubeconfig file; default: in-cluster config, else the usual kubeconfig lookup.
    #[arg(long, env = "DS_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Cluster name reported to the gateway.
    #[arg(long, env = "DS_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,
    /// Full resync period: List from the gateway and a pass over every deployment.
    #[arg(long, env = "DS_RESYNC", default_value = "30s", value_parser = ds_core::duration::parse)]
    pub resync: Duration,
    /// How often the watches of owned objects list again from scratch. A watch resumes
    /// from the last resourceVersion it saw; a cluster restarted empty or restored from a
    /// backup (its resourceVersions behind that one) leaves it waiting silently, so objects
    /// that vanished are noticed, and re-created, within this period.
    #[arg(long, env = "DS_RELIST", default_value = "5m", value_parser = ds_core::duration::parse)]
    pub relist: Duration,
    /// Deployments reconciled at once (each with its own retry backoff).
    #[arg(long, env = "DS_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "DS_LISTEN_HEALTH", default_value = "0.0.0.0:9090")]
    pub listen_health: SocketAddr,
    /// Run for leadership over a Lease; only the leader writes.
    #[arg(long, env = "DS_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "DS_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the Lease; default `ds-agent-<deployer ID>`, so deployers never share one.
    #[arg(long, env = "DS_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// How long a lease lasts without renewal; a standby takes over after it.
    #[arg(long, env = "DS_LEASE_DURATION", default_value = "15s", value_parser = ds_core::duration::parse)]
    pub lease_duration: Duration,
    /// Create missing target namespaces (labelled, never deleted).
    #[arg(long, env = "DS_CREATE_NAMESPACES")]
    pub create_namespaces: bool,
    /// Watch and write only in these namespaces (comma-separated), for installs whose
    /// rights are Roles in those namespaces; empty: cluster-wide.
    #[arg(long, env = "DS_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Allow a plain http:// gateway URL.
    #[arg(long, env = "DS_INSECURE")]
    pub insecure: bool,
    /// Image of the model-proxy sidecar (normally the agent's own image).
    #[arg(long, env = "DS_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// Period of the agent's heartbeat to the gateway.
    #[arg(long, env = "DS_HEARTBEAT", default_value = "10s", value_parser = ds_core::duration::parse)]
    pub heartbeat: Duration,
    /// This replica's name in reports and the Lease (default: the host name).
    #[arg(long, env = "DS_INSTANCE")]
    pub instance: Option<String>,
}

impl AgentArgs {
    /// Defaults for everything but the gateway URL (tests and embedding).
    pub fn new(gateway: impl Into<String>) -> Self {
        Self {
            gateway: gateway.into(),
            token_file: None,
            token: None,
            ca_cert: None,
            kubeconfig: None,
            cluster_name: "default".into(),
            resync: Duration::from_secs(30),
            relist: Duration::from_secs(300),
            concurrency: DEFAULT_CONCURRENCY,
            listen_health: SocketAddr::from(([0, 0, 0, 0], 9090)),
            leader_elect: false,
            lease_namespace: "default".into(),
            lease_name: None,
            lease_duration: Duration::from_secs(15),
            create_namespaces: false,
            namespaces: Vec::new(),
            insecure: false,
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            heartbeat: Duration::from_secs(10),
            instance: None,
        }
    }
}

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Transport(#[from] ds_transport::TransportError),
    #[error("no deployer token: set DS_TOKEN or --token-file")]
    NoToken,
    #[error("--namespaces: {0}")]
    Namespaces(ds_core::ValidationError),
    #[error(
        "--namespaces with --create-namespaces: creating namespaces needs cluster-wide rights; create them first"
    )]
    NamespacesAndCreate,
    #[error("starting the agent's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("loading the Kubernetes config: {0}")]
    KubeConfig(String),
    #[error("binding the health address {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("name taken: {kind} {namespace}/{name} exists and is not owned by this deployment")]
    NameTaken {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error(
        "namespace {namespace} not found (create it, or run the agent with --create-namespaces)"
    )]
    NamespaceMissing { namespace: String },
    #[error(
        "namespace {namespace} is outside this agent's namespaces ({watched}): use one of them, or reinstall the agent with --namespaces including it"
    )]
    NamespaceNotWatched { namespace: String, watched: String },
    #[error("waiting for {kind} {namespace}/{name} of a removed deployment to be deleted")]
    Waiting {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        kind: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("deleting {kind} {namespace}/{name}: {source}")]
    Delete {
        kind: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("not the leader: this replica lost its Lease and writes nothing")]
    NotLeader,
}

impl AgentError {
    /// Whether a quick retry may succeed (conflicts, throttling, server errors, waits).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Read { source, .. }
            | Self::Apply { source, .. }
            | Self::Delete { source, .. } => match source.as_ref() {
                kube::Error::Api(s) => s.code == 409 || s.code == 429 || s.code >= 500,
                _ => true,
            },
            Self::Waiting { .. } => true,
            _ => false,
        }
    }
}

// === The running agent ===

#[derive(Clone)]
struct HealthState {
    ready: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<HealthState>) -> impl IntoResponse {
    if *s.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first complete snapshot\n",
        )
    }
}

async fn metrics_handler(State(s): State<HealthState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// An agent running in this process: its tasks, health server and state.
pub struct RunningAgent {
    health_addr: SocketAddr,
    cancel: CancellationToken,
    release_lease: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    ready: watch::Receiver<bool>,
    leader: watch::Receiver<bool>,
    desired: watch::Receiver<DesiredState>,
    metrics: Arc<Metrics>,
}

impl RunningAgent {
    /// Starts an agent with the Kubernetes client its arguments describe.
    ///
    /// # Errors
    /// Bad gateway URL, unreadable CA bundle, no token, no Kubernetes config, or the health
    /// address taken. Gateway and API-server outages are not errors: the agent waits.
    pub async fn start(args: AgentArgs) -> Result<Self, AgentError> {
        let config = match &args.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| AgentError::KubeConfig(e.to_string()))?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| AgentError::KubeConfig(e.to_string()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| AgentError::KubeConfig(e.to_string()))?,
        };
        let client =
            kube::Client::try_from(config).map_err(|e| AgentError::KubeConfig(e.to_string()))?;
        Self::start_with_client(args, client).await
    }

    /// Starts an agent that talks to the cluster through `client`.
    ///
    /// # Errors
    /// As [`RunningAgent::start`].
    pub async fn start_with_client(
        mut args: AgentArgs,
        client: kube::Client,
    ) -> Result<Self, AgentError> {
        // kube and tonic both use rustls with ring; make it the process default once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if args.token.is_none() && args.token_file.is_none() {
            args.token = std::env::var("DS_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(SecretString::from);
        }
        let token = match (&args.token_file, &args.token) {
            (Some(path), _) => TokenSource::File(path.clone()),
            (None, Some(t)) => TokenSource::Fixed(t.clone()),
            (None, None) => return Err(AgentError::NoToken),
        };
        args.ca_cert = args.ca_cert.filter(|p| !p.as_os_str().is_empty());
        // An empty DS_NAMESPACES (the cluster-wide manifest) means no restriction.
        args.namespaces.retain(|n| !n.trim().is_empty());
        args.namespaces.sort();
        args.namespaces.dedup();
        for (i, ns) in args.namespaces.iter().enumerate() {
            ds_core::validate::validate_namespace(&format!("namespaces[{i}]"), ns)
                .map_err(AgentError::Namespaces)?;
        }
        if !args.namespaces.is_empty() && args.create_namespaces {
            return Err(AgentError::NamespacesAndCreate);
        }
        let channel = sync::channel(&args.gateway, args.insecure, args.ca_cert.as_ref())?;
        let grpc = ds_core::proto::agent_service_client::AgentServiceClient::with_interceptor(
            channel,
            Bearer::from_source(token)?,
        );

        let cancel = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let (desired_tx, desired_rx) = watch::channel(DesiredState::default());
        let (ready_tx, ready_rx) = watch::channel(false);
        let (leader_tx, leader_rx) = watch::channel(!args.leader_elect);
        let (statuses_tx, statuses_rx) = watch::channel::<Statuses>(Arc::new(Default::default()));
        let (connected_tx, _) = watch::channel(None);
        // The owned-object caches, once synced: the status reports count them.
        let (stores_tx, stores_rx) = watch::channel(None);
        if !args.leader_elect {
            metrics.leader.set(1);
        }

        let listener = tokio::net::TcpListener::bind(args.listen_health)
            .await
            .map_err(|source| AgentError::Listen {
                addr: args.listen_health,
                source,
            })?;
        let health_addr = listener.local_addr().map_err(|source| AgentError::Listen {
            addr: args.listen_health,
            source,
        })?;
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_handler))
            .with_state(HealthState {
                ready: ready_rx.clone(),
                metrics: metrics.clone(),
            });
        let mut tasks = Vec::new();
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(c.cancelled_owned())
                .await
            {
                error!(%error, "health server failed");
            }
        }));

        let instance = args
            .instance
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "ds-agent".into());
        let ctx = SyncContext {
            client: grpc,
            desired: Arc::new(desired_tx),
            list_now: Arc::new(Notify::new()),
            connected: Arc::new(connected_tx),
            agent: ds_core::proto::AgentInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                cluster: args.cluster_name.clone(),
                connected_since: String::new(),
                instance: instance.clone(),
                namespaces: args.namespaces.clone(),
            },
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(inspect::inspect_loop(
            ctx.client.clone(),
            client.clone(),
            desired_rx.clone(),
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(sync::watch_loop(ctx.clone(), cancel.clone())));
        tasks.push(tokio::spawn(sync::list_loop(
            ctx.clone(),
            args.resync,
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(sync::status_loop(
            ctx,
            statuses_rx,
            stores_rx,
            leader_rx.clone(),
            args.heartbeat,
            args.resync,
            cancel.clone(),
        )));

        let release_lease = Arc::new(std::sync::atomic::AtomicBool::new(true));
        tasks.push(tokio::spawn(controller(
            client,
            args,
            instance,
            Controller {
                desired: desired_rx.clone(),
                leader_tx,
                leader_rx: leader_rx.clone(),
                statuses: statuses_tx,
                stores: stores_tx,
                ready: ready_tx,
                metrics: metrics.clone(),
                release_lease: release_lease.clone(),
            },
            cancel.clone(),
        )));
        info!(health = %health_addr, "agent started");
        Ok(Self {
            health_addr,
            cancel,
            release_lease,
            tasks,
            ready: ready_rx,
            leader: leader_rx,
            desired: desired_rx,
            metrics,
        })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// Ready: the first complete snapshot has been applied (or, on a standby, received).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Whether this replica may write.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// The deployer ID learned from the gateway, once known.
    pub fn deployer_id(&self) -> Option<String> {
        self.desired.borrow().deployer_id.clone()
    }

    /// The latest deployer revision applied to the desired state.
    pub fn revision(&self) -> u64 {
        self.desired.borrow().revision
    }

    /// The metrics in the text exposition format.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Stops every task, releasing the Lease if held, and waits for them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        info!("agent stopped");
    }

    /// Stops like a crash: every task ends at once and a held Lease is left to expire.
    pub async fn kill(self) {
        self.release_lease
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.cancel.cancel();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

struct Controller {
    desired: watch::Receiver<DesiredState>,
    leader_tx: watch::Sender<bool>,
    leader_rx: watch::Receiver<bool>,
    statuses: watch::Sender<Statuses>,
    stores: watch::Sender<Option<cache::Stores>>,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    release_lease: Arc<std::sync::atomic::AtomicBool>,
}

/// Waits for the deployer ID (first snapshot), then starts the watches, the Lease and the
/// reconcile loop. Before that nothing is read from or written to the cluster.
async fn controller(
    client: kube::Client,
    args: AgentArgs,
    instance: String,
    c: Controller,
    cancel: CancellationToken,
) {
    let mut desired = c.desired.clone();
    let deployer_id = loop {
        if let Some(id) = desired.borrow_and_update().deployer_id.clone() {
            break id;
        }
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            () = cancel.cancelled() => return,
        }
    };
    info!(deployer = %deployer_id, "deployer known: watching owned objects");
    let (touched_tx, touched) = tokio::sync::mpsc::unbounded_channel();
    let built = Arc::new(desired::Built::new(desired::BUILT_CAPACITY));
    let judge = cache::Judge {
        desired: c.desired.clone(),
        proxy_image: args.proxy_image.as_str().into(),
        built: built.clone(),
    };
    let (stores, watch_tasks) = cache::start_watches(
        &client,
        &args.namespaces,
        &builders::owner_selector(&deployer_id),
        judge,
        touched_tx,
        args.relist,
        &cancel,
    );
    let mut children = watch_tasks;
    let (pods_touched_tx, pods_touched) = tokio::sync::mpsc::unbounded_channel();
    let (pods, pod_task) = pods::start_watch(
        &client,
        &args.namespaces,
        &builders::owner_selector(&deployer_id),
        pods_touched_tx,
        args.relist,
        &cancel,
    );
    children.push(pod_task);
    tokio::select! {
        () = stores.ready() => {}
        () = cancel.cancelled() => return,
    }
    c.stores.send_replace(Some(stores.clone()));
    let fence = if args.leader_elect {
        leader::Fence::closed()
    } else {
        leader::Fence::open()
    };
    if args.leader_elect {
        let lease = leader::LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: args
                .lease_name
                .clone()
                .unwrap_or_else(|| format!("ds-agent-{deployer_id}")),
            identity: format!(
                "{instance}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            duration: args.lease_duration,
        };
        let lease_cancel = CancellationToken::new();
        let lc = lease_cancel.clone();
        let leader_tx = c.leader_tx;
        let metrics = c.metrics.clone();
        let lease_client = client.clone();
        let release = c.release_lease.clone();
        let outer = cancel.clone();
        let lease_fence = fence.clone();
        children.push(tokio::spawn(async move {
            let campaign = leader::run(
                lease_client,
                lease,
                leader_tx,
                lease_fence,
                metrics,
                lc.clone(),
            );
            tokio::pin!(campaign);
            tokio::select! {
                () = &mut campaign => {}
                () = outer.cancelled() => {
                    if release.load(std::sync::atomic::Ordering::SeqCst) {
                        // Graceful: let the campaign release the Lease.
                        lc.cancel();
                        campaign.await;
                    }
                }
            }
        }));
        // A standby is ready once it holds the desired state and warm caches.
        let standby_ready = c.ready.clone();
        let mut d = c.desired.clone();
        let sc = cancel.clone();
        children.push(tokio::spawn(async move {
            loop {
                if d.borrow_and_update().complete {
                    standby_ready.send_replace(true);
                    return;
                }
                tokio::select! {
                    r = d.changed() => if r.is_err() { return },
                    () = sc.cancelled() => return,
                }
            }
        }));
    }
    let config = reconcile::ReconcileConfig {
        deployer_id,
        proxy_image: args.proxy_image.clone(),
        create_namespaces: args.create_namespaces,
        namespaces: args.namespaces.clone(),
        concurrency: args.concurrency,
    };
    let rec = reconcile::Reconciler::new(client, config, stores, c.metrics.clone(), fence, built);
    let io = scheduler::LoopIo {
        desired: c.desired,
        leader: c.leader_rx,
        touched,
        statuses: c.statuses,
        ready: c.ready,
        pods,
        pods_touched,
    };
    let cfg = scheduler::SchedulerConfig {
        resync: args.resync,
        concurrency: args.concurrency,
    };
    scheduler::run(rec, io, cfg, cancel.clone()).await;
    for child in children {
        let _ = child.await;
    }
}

/// Runs the agent until `shutdown` resolves.
///
/// The agent gets a thread of its own with a single-threaded runtime. Its work is waiting
/// on the gateway and the API server, and one thread is plenty for it; what one thread
/// saves is memory: glibc gives every thread that allocates its own malloc arena, and
/// with the multi-threaded runtime each worker's arena grew to its own high-water mark
/// while the initial lists were decoded (several MiB of peak RSS with 5,000 deployments).
///
/// # Errors
/// Start-up errors (see [`RunningAgent::start`]).
pub async fn run(
    args: AgentArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ds-agent".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async move {
                    let agent = RunningAgent::start(args).await?;
                    // A dropped sender (the caller gone) stops the agent too.
                    let _ = stop_rx.await;
                    agent.shutdown().await;
                    Ok(())
                }),
                Err(source) => Err(AgentError::Runtime(source)),
            };
            let _ = done_tx.send(result);
        })
        .map_err(AgentError::Runtime)?;
    let panicked = |_| {
        Err(AgentError::Runtime(std::io::Error::other(
            "the agent thread panicked",
        )))
    };
    tokio::pin!(shutdown);
    tokio::select! {
        // Start-up failed: report it now.
        r = &mut done_rx => return r.unwrap_or_else(panicked),
        () = &mut shutdown => {}
    }
    let _ = stop_tx.send(());
    done_rx.await.unwrap_or_else(panicked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_http_needs_insecure() {
        let e = sync::channel("http://127.0.0.1:1", false, None).unwrap_err();
        assert!(e.to_string().contains("--insecure"), "{e}");
        assert!(sync::channel("ftp://x", true, None).is_err());
    }

    #[tokio::test]
    async fn bad_namespaces_flags_are_refused_at_start() {
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:1".parse().expect("a URL"),
        ))
        .expect("a client");
        let mut args = AgentArgs::new("http://127.0.0.1:1");
        args.insecure = true;
        args.token = Some("t".into());
        args.listen_health = "127.0.0.1:0".parse().expect("an address");
        args.namespaces = vec!["models".into(), "Bad_NS".into()];
        let e = RunningAgent::start_with_client(args.clone(), client.clone())
            .await
            .err()
            .expect("a bad namespace is refused");
        assert!(e.to_string().contains("namespaces[0]"), "{e}");
        assert!(e.to_string().contains("Bad_NS"), "{e}");

        args.namespaces = vec!["models".into()];
        args.create_namespaces = true;
        let e = RunningAgent::start_with_client(args.clone(), client.clone())
            .await
            .err()
            .expect("--create-namespaces needs cluster-wide rights");
        assert!(e.to_string().contains("create them first"), "{e}");

        // The cluster-wide manifest sets DS_NAMESPACES to an empty string.
        args.namespaces = vec![String::new()];
        let agent = RunningAgent::start_with_client(args, client)
            .await
            .expect("an empty list means cluster-wide");
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn run_reports_start_errors_without_waiting_for_shutdown() {
        let mut args = AgentArgs::new("http://127.0.0.1:1");
        args.insecure = true;
        args.token = Some("t".into());
        args.kubeconfig = Some("/nonexistent/kubeconfig".into());
        let e = run(args, std::future::pending()).await.unwrap_err();
        assert!(matches!(e, AgentError::KubeConfig(_)), "{e}");
    }

    #[tokio::test]
    async fn run_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"http://127.0.0.1:1\"}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\ncurrent-context: c\n",
        )
        .unwrap();
        let mut args = AgentArgs::new("http://127.0.0.1:1");
        args.insecure = true;
        args.token = Some("t".into());
        args.kubeconfig = Some(kubeconfig);
        args.listen_health = "127.0.0.1:0".parse().unwrap();
        run(args, async {}).await.unwrap();
    }

    #[test]
    fn name_taken_error_reads_clearly() {
        let e = AgentError::NameTaken {
            kind: "Service",
            namespace: "models".into(),
            name: "iris".into(),
        };
        assert!(e.to_string().starts_with("name taken: Service models/iris"));
    }
}
