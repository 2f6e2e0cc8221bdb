//! A simulated Kubernetes API server (`ds sim-cluster`) for tests and local runs.
//!
//! # Layout
//! - [`resources`]: the served resource types and their discovery facts.
//! - `store`: objects in memory, one cluster-wide resourceVersion, watch history.
//! - `server`: the HTTP routes and the API semantics (CRUD, patch, apply, watch).
//! - [`patch`], [`apply`]: strategic merge patch and server-side apply with managedFields;
//!   `patching` adapts them (and JSON merge/JSON patch) to the server.
//! - `defaults`, `controllers`: server-side defaulting and simulated controllers.
//! - [`faults`]: fault injection and request counters for tests.
//!
//! - `validate`, `tables`: schema checks with the `k8s-openapi` types, `kubectl get` tables.
//! - `protobuf`: decodes the protobuf bodies of `kubectl create namespace|deployment|…`.
//!
//! Kubernetes clients (kubectl, `kube::Client`) talk to it unchanged over plain HTTP on
//! loopback; nothing in production code knows it is a simulator.
//!
//! # Use from tests
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ds_kube_sim::{FaultAnswer, Limit, SimCluster, SimConfig};
//! let sim = SimCluster::start(SimConfig::default()).await?;
//! let client = sim.client(); // a plain kube::Client
//! sim.faults().fail("patch", "deployments", FaultAnswer::Internal, Limit::Count(2));
//! sim.counters().reset();
//! // … run the code under test …
//! assert_eq!(sim.counters().writes(), 0);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Fidelity
//! `tests/kube_sim_diff.rs` sends the same requests through `kube::Client` to the simulator
//! and to a real kube-apiserver + kube-controller-manager (`tests/real_kube`) and compares
//! status codes, `Status` reasons and details, and the answered objects (defaults,
//! managedFields, watch events, what a delete leaves). Where the two differ on purpose, the
//! difference is listed below and that test asserts it explicitly, so the list stays true.
//!
//! # What the simulator knowingly does not do
//! - **Namespace content**: a new namespace gets no `kube-root-ca.crt` ConfigMap and no
//!   `default` ServiceAccount (the real controllers publish both); pods are not refused for
//!   a missing ServiceAccount, though they get its token volume as from the real admission
//!   plugin.
//! - **No kubelet**: a deleted pod is gone at once (the DELETE answers it stamped with
//!   `deletionTimestamp` and the grace period), instead of Terminating until its node
//!   confirms.
//! - **Controllers are synchronous and partial**: a rollout's ReplicaSet and pods appear
//!   when it finishes (after `rollout_delay`), not step by step; a ReplicaSet is not a
//!   controller of its own (deleting one of its pods or scaling it directly changes
//!   nothing); the pod-template-hash is not the real one. Garbage collection runs within the
//!   DELETE: dependents are gone (or orphaned) when it answers, and a Foreground or Orphan
//!   delete's finalizer is removed at once. The simulated controllers' writes leave no
//!   managedFields entries.
//! - **Malformed strategic-merge directives** (`$patch: frobnicate`) answer 400 BadRequest
//!   naming the directive; the real server answers 500 without a reason.
//! - **Validation** is the schema (unknown fields, types) plus the rules clients meet
//!   most: names, Deployment replicas and selector/template agreement, container names,
//!   images and ports, Service ports. Other semantic rules (immutable fields, resource
//!   quantities, probes, …) are not checked.
//! - **Watch history** is a count of events (`watch_history`), not etcd's compaction: an old
//!   resourceVersion may still be served where the real server answers 410, and the reverse.
//! - Protobuf bodies are decoded for Namespace, Deployment, Service, ConfigMap, Secret and
//!   ServiceAccount (what `kubectl create <kind>` sends); others get 415 naming what is not
//!   understood, and `kubectl create … --dry-run=client -o yaml | kubectl apply -f -` works.
//! - Authentication and admission control: every request is allowed. Authorization only as
//!   `Faults::restrict_to_namespaces` (403 outside a namespace list, like namespaced RBAC).
//! - Continue tokens are not snapshot-consistent; aggregated discovery is not offered
//!   (kubectl falls back to the legacy documents).

pub mod apply;
mod controllers;
mod defaults;
mod discovery;
pub mod faults;
pub mod patch;
mod patching;
mod protobuf;
pub mod resources;
mod selector;
mod server;
mod status;
mod store;
mod tables;
mod validate;

pub use faults::{Counters, FaultAnswer, Faults, Limit};

use server::Shared;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Settings of a simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on (default `127.0.0.1:0`: any free port).
    pub listen: SocketAddr,
    /// Time a Deployment rollout takes to become available (default 1 s; zero: at once).
    pub rollout_delay: Duration,
    /// Images matching this regex never become available: their pods wait in
    /// `ImagePullBackOff` (with the kubelet's message) instead of running, and rollouts
    /// end in ProgressDeadlineExceeded after `rollout_delay`.
    pub failing_image: Option<String>,
    /// Objects are loaded from this JSON file on start and saved to it on shutdown.
    pub state_file: Option<PathBuf>,
    /// Events kept for resuming watches from a resourceVersion (older: 410 Gone).
    pub watch_history: usize,
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            rollout_delay: Duration::from_secs(1),
            failing_image: None,
            state_file: None,
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(10),
        }
    }
}

/// Command-line arguments of `ds sim-cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, env = "DS_SIM_LISTEN", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for this cluster to this file.
    #[arg(long, env = "DS_SIM_KUBECONFIG_OUT")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Seconds a Deployment rollout takes (fractions allowed).
    #[arg(long, env = "DS_SIM_ROLLOUT_DELAY", default_value_t = 1.0)]
    pub rollout_delay: f64,
    /// Images matching this regex never become available: their pods wait in
    /// ImagePullBackOff. Repeatable (any pattern matching is enough).
    #[arg(long, env = "DS_SIM_FAILING_IMAGE")]
    pub failing_image: Vec<String>,
    /// Load objects from this file on start, save them on shutdown.
    #[arg(long, env = "DS_SIM_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// Added latency per request, in milliseconds.
    #[arg(long, env = "DS_SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Injected errors, `VERB:RESOURCE:CODE:LIMIT` (CODE 409, 500 or 429; LIMIT a count
    /// like `3` or a rate like `0.1`; `*` for any verb or resource). Repeatable.
    #[arg(long = "fail", env = "DS_SIM_FAIL", value_delimiter = ',')]
    pub fail: Vec<String>,
    /// End every watch after this many events.
    #[arg(long, env = "DS_SIM_DROP_WATCHES_AFTER_EVENTS")]
    pub drop_watches_after_events: Option<u64>,
    /// End every watch after this many seconds.
    #[arg(long, env = "DS_SIM_DROP_WATCHES_AFTER_SECS")]
    pub drop_watches_after_secs: Option<u64>,
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address cannot be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// `failing_image` is not a valid regex.
    #[error("failing image pattern: {0}")]
    FailingImage(#[from] regex::Error),
    /// The state file cannot be read or written.
    #[error("state file {path}: {source}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state file is not a state dump.
    #[error("state file {path}: {source}")]
    StateFormat {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The kubeconfig cannot be written.
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The in-process kube client cannot be built.
    #[error("building the kube client: {0}")]
    Client(#[from] kube::Error),
    /// The server URL does not parse (cannot happen for a socket address).
    #[error("server url: {0}")]
    Url(#[from] http::uri::InvalidUri),
    /// A `--fail` flag does not parse.
    #[error(
        "invalid --fail {0:?}: expected VERB:RESOURCE:CODE:LIMIT, e.g. patch:deployments:500:2"
    )]
    FaultSpec(String),
}

/// A running simulated cluster. Dropping it stops the server (without saving state);
/// [`SimCluster::shutdown`] stops it gracefully and saves state.
pub struct SimCluster {
    shared: Arc<Shared>,
    client: kube::Client,
    state_file: Option<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("addr", &self.shared.addr)
            .finish()
    }
}

const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

impl SimCluster {
    /// Binds, restores state (if configured) and starts serving.
    ///
    /// # Errors
    /// Bind failures, a bad `failing_image` regex, an unreadable state file.
    pub async fn start(config: SimConfig) -> Result<SimCluster, SimError> {
        let failing_image = config
            .failing_image
            .as_deref()
            .map(regex::Regex::new)
            .transpose()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            store: store::Store::new(config.watch_history),
            faults: Faults::default(),
            counters: Counters::default(),
            addr,
            shutdown: CancellationToken::new(),
            bookmark_interval: config.bookmark_interval,
            next_ip: AtomicU32::new(0),
        });
        if let Some(path) = &config.state_file
            && path.exists()
        {
            let text = std::fs::read(path).map_err(|source| SimError::StateFile {
                path: path.clone(),
                source,
            })?;
            let dump: serde_json::Value =
                serde_json::from_slice(&text).map_err(|source| SimError::StateFormat {
                    path: path.clone(),
                    source,
                })?;
            let n = shared.store.restore(&dump);
            tracing::info!(objects = n, path = %path.display(), "restored state");
        }
        seed(&shared);
        let url: http::Uri = format!("http://{addr}").parse()?;
        let client = kube::Client::try_from(kube::Config::new(url))?;
        let router = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let token = shared.shutdown.clone();
        let serve = tokio::spawn(async move {
            let r = axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
            if let Err(error) = r {
                tracing::error!(%error, "simulated API server stopped");
            }
        });
        let ctl = tokio::spawn(controllers::run(
            shared.clone(),
            controllers::ControllerConfig {
                rollout_delay: config.rollout_delay,
                failing_image,
            },
        ));
        tracing::info!(%addr, "simulated Kubernetes API server listening");
        Ok(SimCluster {
            shared,
            client,
            state_file: config.state_file,
            tasks: vec![serve, ctl],
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A plain `kube::Client` for this cluster.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig (YAML) for kubectl and kube, context `ds-sim`, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: ds-sim\n  cluster:\n    server: {}\ncontexts:\n- name: ds-sim\n  context:\n    cluster: ds-sim\n    user: ds-sim\n    namespace: default\ncurrent-context: ds-sim\nusers:\n- name: ds-sim\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Request counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.current_rv()
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.shared.store.object_count()
    }

    /// Stops serving (open watches end), stops the controllers and saves state if a state
    /// file is configured (a failure to save is logged).
    pub async fn shutdown(self) {
        if let Err(error) = self.stop().await {
            tracing::error!(%error, "saving the simulated cluster's state");
        }
    }

    /// [`SimCluster::shutdown`], answering the state-file error.
    ///
    /// # Errors
    /// The state file cannot be written.
    pub async fn stop(mut self) -> Result<(), SimError> {
        self.shared.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(path) = &self.state_file {
            let dump = serde_json::to_vec(&self.shared.store.dump()).map_err(|source| {
                SimError::StateFormat {
                    path: path.clone(),
                    source,
                }
            })?;
            std::fs::write(path, dump).map_err(|source| SimError::StateFile {
                path: path.clone(),
                source,
            })?;
            tracing::info!(path = %path.display(), "saved state");
        }
        Ok(())
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// The namespaces every cluster has.
fn seed(shared: &Shared) {
    let now = server::now();
    for ns in SYSTEM_NAMESPACES {
        if shared.store.namespace_exists(ns) {
            continue;
        }
        let obj = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": now, "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        });
        let _ = shared.store.create(resources::NAMESPACES, obj, false);
    }
}

fn parse_fault(spec: &str) -> Result<(String, String, FaultAnswer, Limit), SimError> {
    let bad = || SimError::FaultSpec(spec.to_string());
    let parts: Vec<&str> = spec.split(':').collect();
    let [verb, resource, code, limit] = parts.as_slice() else {
        return Err(bad());
    };
    let answer = match *code {
        "409" => FaultAnswer::Conflict,
        "500" => FaultAnswer::Internal,
        "429" => FaultAnswer::TooManyRequests {
            retry_after_secs: 1,
        },
        _ => return Err(bad()),
    };
    let limit = if limit.contains('.') {
        Limit::Rate(limit.parse().map_err(|_| bad())?)
    } else {
        Limit::Count(limit.parse().map_err(|_| bad())?)
    };
    Ok((verb.to_string(), resource.to_string(), answer, limit))
}

/// Runs `ds sim-cluster` until `shutdown` resolves.
///
/// # Errors
/// Start-up failures, an unwritable kubeconfig or state file.
pub async fn run(
    args: SimArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    // Each pattern alone first, so a bad one is named in the error.
    for p in &args.failing_image {
        regex::Regex::new(p)?;
    }
    let faults = args
        .fail
        .iter()
        .map(|f| parse_fault(f))
        .collect::<Result<Vec<_>, _>>()?;
    let cluster = SimCluster::start(SimConfig {
        listen: args.listen,
        rollout_delay: Duration::from_secs_f64(args.rollout_delay.max(0.0)),
        failing_image: any_of(&args.failing_image),
        state_file: args.state_file,
        ..SimConfig::default()
    })
    .await?;
    for (verb, resource, answer, limit) in faults {
        cluster.faults().fail(&verb, &resource, answer, limit);
    }
    if args.latency_ms > 0 {
        cluster
            .faults()
            .set_latency(Duration::from_millis(args.latency_ms));
    }
    if let Some(n) = args.drop_watches_after_events {
        cluster.faults().drop_watches_after_events(n);
    }
    if let Some(s) = args.drop_watches_after_secs {
        cluster.faults().drop_watches_after(Duration::from_secs(s));
    }
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, cluster.kubeconfig()).map_err(|source| SimError::Kubeconfig {
            path: path.clone(),
            source,
        })?;
        tracing::info!(path = %path.display(), "wrote kubeconfig");
    }
    println!("{}", cluster.url());
    shutdown.await;
    cluster.stop().await
}

/// One regex matching what any of `patterns` matches; `None` for none.
fn any_of(patterns: &[String]) -> Option<String> {
    match patterns {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(
            many.iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_flags_parse() {
        let (v, r, a, l) = parse_fault("patch:deployments:429:0.5").unwrap();
        assert_eq!((v.as_str(), r.as_str()), ("patch", "deployments"));
        assert_eq!(
            a,
            FaultAnswer::TooManyRequests {
                retry_after_secs: 1
            }
        );
        assert_eq!(l, Limit::Rate(0.5));
        assert!(parse_fault("patch:deployments:418:1").is_err());
    }

    #[test]
    fn failing_image_patterns_combine() {
        assert_eq!(any_of(&[]), None);
        let re =
            regex::Regex::new(&any_of(&["^broken/".into(), "nope:1$".into()]).unwrap()).unwrap();
        assert!(re.is_match("broken/model:1") && re.is_match("registry.invalid/nope:1"));
        assert!(!re.is_match("tensorflow/serving:2.15.0"));
    }
}
