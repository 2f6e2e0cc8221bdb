//! The model-proxy sidecar (`ds model-proxy`): metrics and query logs in front of a model.
//!
//! Ingress → Service → model-proxy → model server on localhost. The proxy streams requests
//! and responses both ways (HTTP/1.1 and h2c in, a keep-alive HTTP/1.1 pool out), counts
//! requests, latency and predicted classes for Prometheus on a separate admin port, and can
//! write one JSON line per query for a monitoring loop.
//!
//! # Layout
//! - `h1`: the HTTP/1.1 request path (parse in place, relay bytes, chunked framing).
//! - `forward`: the h2c request path on hyper (headers, timeouts, 502/504), and the
//!   accounting of a finished request (metrics, classes, query-log line) both paths use.
//! - `upstream`: the model server: its URL, the one way a connection to it is opened, the
//!   connections kept open for either path, the readiness probe, and their errors.
//! - `body`: hyper bodies that tee a bounded prefix (h2c), and the prefix itself.
//! - `rewind`: replays the bytes read to tell h2c from HTTP/1.1.
//! - `classes`: model answers (TensorFlow-Serving/KServe v1, Open Inference Protocol v2)
//!   → predicted classes.
//! - `metrics`: the `ds_proxy_*` metrics.
//! - `querylog`: the bounded queue and its writer task.
//! - `admin`: `/metrics`, `/healthz`, `/readyz`.

mod admin;
mod body;
pub mod classes;
mod forward;
mod h1;
mod metrics;
pub mod querylog;
mod rewind;
mod upstream;

pub use forward::REQUEST_ID_HEADER;
pub use querylog::QueryLogTarget;

use classes::ClassNames;
use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The port the proxy serves model traffic on (the Service targets it).
pub const DEFAULT_PORT: u16 = 9501;
/// The admin port: metrics and probes (Prometheus scrapes it, the kubelet probes it).
pub const DEFAULT_ADMIN_PORT: u16 = 9502;
/// Prometheus metrics on the admin port.
pub const METRICS_PATH: &str = "/metrics";
/// Liveness on the admin port: the proxy process answers.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness on the admin port: the model server behind the proxy answers.
pub const READY_PATH: &str = "/readyz";
/// The default upstream: TensorFlow Serving's REST port in the same pod.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8501";
/// The upstream path `/readyz` asks by default.
const DEFAULT_READY_PATH: &str = "/";
/// The upstream path `/readyz` asks by default with `--protocol v2`: the Open Inference
/// Protocol's readiness, 200 when the server is ready.
const V2_READY_PATH: &str = "/v2/health/ready";

/// How long in-flight requests get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle upstream connections older than this are closed rather than reused.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// hyper's default time a client gets to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of one readiness probe to the upstream.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The environment variables behind the flags, for whoever builds the sidecar container.
pub mod env {
    /// `--listen`.
    pub const LISTEN: &str = "DS_PROXY_LISTEN";
    /// `--admin-listen`.
    pub const ADMIN_LISTEN: &str = "DS_PROXY_ADMIN_LISTEN";
    /// `--upstream`.
    pub const UPSTREAM: &str = "DS_PROXY_UPSTREAM";
    /// `--class-names` (comma-separated).
    pub const CLASS_NAMES: &str = "DS_PROXY_CLASS_NAMES";
    /// `--deployment-id`.
    pub const DEPLOYMENT_ID: &str = "DS_PROXY_DEPLOYMENT_ID";
    /// `--timeout`.
    pub const TIMEOUT: &str = "DS_PROXY_TIMEOUT";
    /// `--ready-path`.
    pub const READY_PATH: &str = "DS_PROXY_READY_PATH";
    /// `--protocol`.
    pub const PROTOCOL: &str = "DS_PROXY_PROTOCOL";
    /// `--class-body-limit`.
    pub const CLASS_BODY_LIMIT: &str = "DS_PROXY_CLASS_BODY_LIMIT";
    /// `--query-log`.
    pub const QUERY_LOG: &str = "DS_PROXY_QUERY_LOG";
    /// `--query-log-body-limit`.
    pub const QUERY_LOG_BODY_LIMIT: &str = "DS_PROXY_QUERY_LOG_BODY_LIMIT";
    /// `--query-log-queue`.
    pub const QUERY_LOG_QUEUE: &str = "DS_PROXY_QUERY_LOG_QUEUE";
    /// `--query-log-interval`.
    pub const QUERY_LOG_INTERVAL: &str = "DS_PROXY_QUERY_LOG_INTERVAL";
    /// `--upstream-max-idle`.
    pub const UPSTREAM_MAX_IDLE: &str = "DS_PROXY_UPSTREAM_MAX_IDLE";
    /// `--worker-threads`.
    pub const WORKER_THREADS: &str = "DS_PROXY_WORKER_THREADS";
}

/// `ds model-proxy`: every flag can also come from a `DS_PROXY_*` environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Address for model traffic (HTTP/1.1 and h2c).
    #[arg(long, env = env::LISTEN, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = env::ADMIN_LISTEN, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT)))]
    pub admin_listen: SocketAddr,

    /// The model server (plain HTTP, usually on localhost).
    #[arg(long, env = env::UPSTREAM, default_value = DEFAULT_UPSTREAM)]
    pub upstream: String,

    /// Class names in model output order, comma-separated (argmax index → name).
    #[arg(long, env = env::CLASS_NAMES, value_delimiter = ',')]
    pub class_names: Vec<String>,

    /// Deployment ID written in every query-log line.
    #[arg(long, env = env::DEPLOYMENT_ID, default_value = "")]
    pub deployment_id: String,

    /// Time the upstream gets to start answering (e.g. 30s, 500ms); then 504. Also the
    /// longest pause allowed within an answer's body; then the answer is cut.
    #[arg(long, env = env::TIMEOUT, default_value = "60s", value_parser = ds_core::duration::parse)]
    pub timeout: Duration,

    /// Upstream path asked by /readyz [default: / (v1, auto), /v2/health/ready (v2)].
    /// With v1 and auto any answer below 500 means ready; with v2 only a 2xx answer (the
    /// Open Inference Protocol says 200 means ready).
    #[arg(long, env = env::READY_PATH)]
    pub ready_path: Option<String>,

    /// The model server's protocol: `auto` reads v2 answers by their path
    /// (`/v2/models/NAME[/versions/V]/infer`) and others as v1; `v1` reads every answer as
    /// v1; `v2` reads only v2 answers and makes /readyz ask `/v2/health/ready`.
    #[arg(long, env = env::PROTOCOL, value_enum, default_value_t = classes::Protocol::Auto)]
    pub protocol: classes::Protocol,

    /// Response bytes inspected for the predicted class; 0 turns class counting off.
    #[arg(long, env = env::CLASS_BODY_LIMIT, default_value_t = 64 * 1024)]
    pub class_body_limit: usize,

    /// Write query logs: `-` or `stdout` for standard output, else a file path (appended);
    /// absent or empty: off.
    #[arg(long, env = env::QUERY_LOG)]
    pub query_log: Option<String>,

    /// Request and response body bytes kept per query-log line (longer ones are truncated
    /// and flagged).
    #[arg(long, env = env::QUERY_LOG_BODY_LIMIT, default_value_t = 4096)]
    pub query_log_body_limit: usize,

    /// Query-log lines queued for the writer; when full, lines are dropped and counted.
    #[arg(long, env = env::QUERY_LOG_QUEUE, default_value_t = 4096)]
    pub query_log_queue: usize,

    /// How often worker threads hand their batched query-log lines to the writer (e.g.
    /// 50ms): lines reach the log at most this late.
    #[arg(long, env = env::QUERY_LOG_INTERVAL, default_value = "50ms", value_parser = ds_core::duration::parse)]
    pub query_log_interval: Duration,

    /// Idle keep-alive connections kept to the upstream (per worker thread).
    #[arg(long, env = env::UPSTREAM_MAX_IDLE, default_value_t = 512)]
    pub upstream_max_idle: usize,

    /// Threads serving model traffic, each with its own event loop, like nginx's worker
    /// processes; 0: one per CPU core available to the process.
    #[arg(long, env = env::WORKER_THREADS, default_value_t = 0)]
    pub worker_threads: usize,
}

impl ProxyArgs {
    /// Parses flags as the command line would (environment fallbacks included), e.g.
    /// `ProxyArgs::from_flags(["--upstream", "http://127.0.0.1:8080"])`.
    ///
    /// # Errors
    /// An unknown flag or an invalid value.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{Args as _, FromArgMatches as _};
        let command = Self::augment_args(clap::Command::new("model-proxy").no_binary_name(true));
        let matches = command.try_get_matches_from(flags)?;
        Self::from_arg_matches(&matches)
    }
}

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid upstream {upstream:?}: {reason}")]
    InvalidUpstream { upstream: String, reason: String },
    #[error("invalid readiness path {0:?}: it must start with '/'")]
    InvalidReadyPath(String),
    #[error("opening the query log {target:?}: {source}")]
    QueryLogOpen {
        target: QueryLogTarget,
        source: std::io::Error,
    },
    #[error("starting worker thread {index}: {source}")]
    Worker {
        index: usize,
        source: std::io::Error,
    },
}

/// A started proxy: both ports bound and serving.
#[derive(Debug)]
pub struct RunningProxy {
    /// Where model traffic is served.
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub admin_addr: SocketAddr,
    stop_servers: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    /// One per worker thread, answered when that worker has drained and stopped.
    workers: Vec<oneshot::Receiver<()>>,
    log_writer: Option<querylog::QueryLogWriter>,
}

impl RunningProxy {
    /// Binds both ports and starts serving.
    ///
    /// # Errors
    /// An invalid upstream or readiness path, a port that cannot be bound, or a query-log
    /// file that cannot be opened.
    pub async fn start(args: ProxyArgs) -> Result<Self, ProxyError> {
        let upstream = upstream::Upstream::parse(&args.upstream)?;
        // An empty value (a manifest clearing the variable) means the default, like an
        // absent one.
        let ready_path = match (
            args.ready_path.as_deref().filter(|p| !p.is_empty()),
            args.protocol,
        ) {
            (Some(path), _) => path.to_owned(),
            (None, classes::Protocol::V2) => V2_READY_PATH.to_owned(),
            (None, _) => DEFAULT_READY_PATH.to_owned(),
        };
        if !ready_path.starts_with('/') {
            return Err(ProxyError::InvalidReadyPath(ready_path));
        }
        let classes = ClassNames::new(args.class_names.clone());
        let worker_count = match args.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        };
        let metrics = Arc::new(metrics::Metrics::new(&classes, worker_count));

        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: args.listen,
                source,
            })?;
        let admin_listener = TcpListener::bind(args.admin_listen)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: args.admin_listen,
                source,
            })?;
        let addr = local_addr(&listener, args.listen)?;
        let admin_addr = local_addr(&admin_listener, args.admin_listen)?;

        // An empty value (a manifest clearing the variable) means off, like an absent one.
        let (query_log, log_writer) = match args.query_log.as_deref().filter(|t| !t.is_empty()) {
            Some(target) => {
                let target = QueryLogTarget::parse(target);
                let (sender, writer) = querylog::start(
                    &target,
                    args.query_log_queue,
                    args.query_log_interval,
                    args.deployment_id.clone(),
                    classes.clone(),
                    metrics.clone(),
                )
                .await
                .map_err(|source| ProxyError::QueryLogOpen { target, source })?;
                (Some(sender), Some(writer))
            }
            None => (None, None),
        };

        // Each worker has its own state: its upstream connections are registered with its
        // own event loop, and nothing on the request path is shared between threads but the
        // metrics and the query-log queue.
        let settings = upstream::Settings {
            authority: upstream.authority.clone(),
            connect_timeout: args.timeout,
            idle_timeout: UPSTREAM_IDLE_TIMEOUT,
            max_idle: args.upstream_max_idle,
        };
        let make_shared = |index: usize| {
            Arc::new(forward::Shared {
                conns: upstream::sockets::Connections::new(settings.clone()),
                pool: upstream::client::Pool::new(settings.clone()),
                upstream: upstream.clone(),
                timeout: args.timeout,
                shard: metrics.shard(index),
                metrics: metrics.clone(),
                classes: classes.clone(),
                protocol: args.protocol,
                class_limit: args.class_body_limit,
                query_log: query_log.clone(),
                log_body_limit: args.query_log_body_limit,
                ids: forward::RequestIds::new(),
            })
        };
        let stop_servers = CancellationToken::new();
        let listener = listener.into_std().map_err(|source| ProxyError::Bind {
            addr: args.listen,
            source,
        })?;
        let (balancer, mut handoffs) = Balancer::new(worker_count);
        let mut workers = Vec::with_capacity(worker_count);
        for (index, handoff) in handoffs.drain(..).enumerate() {
            let started = listener
                .try_clone()
                .map_err(|source| ProxyError::Worker { index, source })
                .and_then(|listener| {
                    Worker {
                        index,
                        header_timeout: header_read_timeout(args.timeout),
                        listener,
                        shared: make_shared(index),
                        // A token of its own: waiting on the shared one would touch a lock
                        // both workers share on every request.
                        stop: stop_servers.child_token(),
                        balancer: balancer.clone(),
                        handoff,
                    }
                    .start()
                });
            match started {
                Ok(stopped) => workers.push(stopped),
                Err(error) => {
                    // The workers already running must not outlive a failed start.
                    stop_servers.cancel();
                    return Err(error);
                }
            }
        }
        drop(listener);
        let admin = Arc::new(admin::Admin {
            metrics,
            probe: upstream::ready::Probe::new(
                &upstream,
                &ready_path,
                settings,
                READY_TIMEOUT.min(args.timeout),
                args.protocol == classes::Protocol::V2,
            ),
        });

        let admin_server = tokio::spawn(serve(
            admin_listener,
            stop_servers.clone(),
            HEADER_READ_TIMEOUT,
            move |_| {
                let admin = admin.clone();
                service_fn(move |req: Request<Incoming>| admin::handle(admin.clone(), req))
            },
        ));
        tracing::info!(%addr, %admin_addr, upstream = %args.upstream, protocol = ?args.protocol, %ready_path, query_log = ?args.query_log, workers = worker_count, "model proxy listening");
        Ok(Self {
            addr,
            admin_addr,
            stop_servers,
            servers: vec![admin_server],
            workers,
            log_writer,
        })
    }

    /// Stops accepting, lets in-flight requests finish (up to 10 s), then writes the
    /// queued query-log lines and returns.
    pub async fn shutdown(mut self) {
        self.stop_servers.cancel();
        for server in self.servers.drain(..) {
            if let Err(error) = server.await {
                tracing::warn!(%error, "a proxy server task failed");
            }
        }
        for worker in self.workers.drain(..) {
            // An error means the worker thread ended without saying so (it panicked).
            if worker.await.is_err() {
                tracing::warn!("a proxy worker thread failed");
            }
        }
        if let Some(writer) = self.log_writer.take() {
            writer.stop().await;
        }
        tracing::info!("model proxy stopped");
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        // A proxy dropped without `shutdown` must not keep serving in the background.
        self.stop_servers.cancel();
        // The writer (if still here) ends on its own after a last drain.
    }
}

/// One thread serving model traffic on its own single-threaded runtime, accepting from
/// the shared listening socket (the kernel wakes the workers; whichever accepts first takes
/// the connection, and hands it to a less busy worker if there is one). A client
/// connection and its upstream connection live on one thread and, within it, in one task:
/// no request crosses threads or tasks.
struct Worker {
    index: usize,
    header_timeout: Duration,
    listener: std::net::TcpListener,
    shared: Arc<forward::Shared>,
    stop: CancellationToken,
    balancer: Arc<Balancer>,
    handoff: mpsc::UnboundedReceiver<Handoff>,
}

/// A connection accepted by one worker for another.
type Handoff = (std::net::TcpStream, SocketAddr, OpenConnection);

/// Spreads client connections over the workers, each on the worker of the CPU its packets
/// arrive on as long as that keeps the workers about even.
///
/// Whichever worker wakes first accepts, and a worker that wakes to a burst of connections
/// (a load balancer opening its pool) would take them all: measured with 16 connections
/// opened at once, one of two workers got every one and the other stayed idle. So the
/// accepting worker passes a connection on when another worker should have it. Connections
/// last long (keep-alive), so this happens rarely.
///
/// Which worker should: the one numbered after the CPU that took the connection's packets
/// (`SO_INCOMING_CPU`: a NIC queue's CPU, or on loopback the CPU the client ran on). Handing
/// out connections in turn instead mixed each worker's connections across the client's
/// threads, and every answer then woke a thread on the other CPU: with `wrk -t2 -c16` on two
/// cores, 55 k requests/s against 64 k grouped this way (docs/benchmarks.md). Evenness
/// still wins: a worker more than a quarter (and one) above the least busy one gets no more.
struct Balancer {
    open: Vec<Arc<AtomicUsize>>,
    handoff: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Balancer {
    fn new(workers: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (senders, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balancer = Self {
            open: (0..workers)
                .map(|_| Arc::new(AtomicUsize::new(0)))
                .collect(),
            handoff: senders,
        };
        (Arc::new(balancer), receivers)
    }

    /// The worker that should serve a connection `accepting` has just accepted, whose
    /// packets arrive on CPU `cpu` (when known), counted as open there.
    fn assign(&self, accepting: usize, cpu: Option<usize>) -> (usize, OpenConnection) {
        let load = |i: usize| self.open[i].load(Ordering::Acquire);
        let workers = self.open.len();
        let least = (0..workers).min_by_key(|&i| load(i)).unwrap_or(accepting);
        // Without a CPU to go by, nothing is gained by leaving the workers uneven.
        let (preferred, slack) = match cpu {
            Some(cpu) => (cpu % workers, 1 + load(least) / 4),
            None => (accepting, 0),
        };
        let target = if load(preferred) <= load(least) + slack {
            preferred
        } else {
            least
        };
        (target, OpenConnection::new(&self.open[target]))
    }
}

/// The CPU that processed the connection's incoming packets, when the system says.
fn incoming_cpu(stream: &TcpStream) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        socket2::SockRef::from(stream).cpu_affinity().ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}

impl Worker {
    fn start(self) -> Result<oneshot::Receiver<()>, ProxyError> {
        let index = self.index;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ProxyError::Worker { index, source })?;
        let (done, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("ds-proxy-{index}"))
            .spawn(move || {
                runtime.block_on(self.run());
                // Dropping the runtime cancels connections still open after the drain.
                drop(runtime);
                let _ = done.send(());
            })
            .map_err(|source| ProxyError::Worker { index, source })?;
        Ok(stopped)
    }

    /// Accepts connections until the stop, then gives open ones the drain time to finish
    /// their current request (idle ones close at once).
    async fn run(self) {
        let Self {
            index,
            header_timeout,
            listener,
            shared,
            stop,
            balancer,
            mut handoff,
        } = self;
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(worker = index, %error, "worker cannot listen");
                return;
            }
        };
        // Query-log lines are batched on this thread and handed over at most an interval
        // late; the guard hands over the last ones when the worker ends.
        let batching = shared
            .query_log
            .as_ref()
            .map(querylog::QueryLogSender::attach);
        let flusher = batching
            .as_ref()
            .map(|batching| tokio::spawn(batching.flusher()));
        let spawn = |stream: TcpStream, peer: SocketAddr, open: OpenConnection| {
            let _ = stream.set_nodelay(true);
            let (shared, stop) = (shared.clone(), stop.clone());
            tokio::spawn(async move {
                let _open = open;
                serve_client(stream, peer, shared, stop, header_timeout).await;
            });
        };
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
                Some((stream, peer, open)) = handoff.recv() => {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => spawn(stream, peer, open),
                        Err(error) => tracing::warn!(%error, "taking over a connection failed"),
                    }
                    continue;
                }
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if accept_failed(&error, &stop).await => continue,
                Err(_) => break,
            };
            let (target, open) = balancer.assign(index, incoming_cpu(&stream));
            if target == index {
                spawn(stream, peer, open);
            } else if let Ok(stream) = stream.into_std() {
                // A worker that has stopped drops what it is sent (and the count with it).
                let _ = balancer.handoff[target].send((stream, peer, open));
            }
        }
        drop(listener);
        // Connections handed over but not yet taken are closed, not waited for.
        handoff.close();
        while handoff.try_recv().is_ok() {}
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        let open = &balancer.open[index];
        while open.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("connections still open after the drain timeout; closing them");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(flusher) = flusher {
            flusher.abort();
        }
    }
}

/// After a failed accept (usually EMFILE): waits a moment rather than spinning, and keeps
/// serving. False when the stop came meanwhile.
async fn accept_failed(error: &std::io::Error, stop: &CancellationToken) -> bool {
    tracing::warn!(%error, "accept failed");
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(Duration::from_millis(100)) => true,
    }
}

/// Counts a client connection as open on its worker while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Self(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one client connection: HTTP/1.1 on the proxy's own path, h2c (which opens with
/// the HTTP/2 preface) on hyper's.
async fn serve_client(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<forward::Shared>,
    stop: CancellationToken,
    header_timeout: Duration,
) {
    let mut buf = h1::ClientConn::buffer();
    match h1::sniff(&mut stream, &mut buf, header_timeout).await {
        h1::Sniffed::Http1 => {
            let ip = peer.ip().to_string();
            h1::ClientConn::new(stream, buf, ip, shared, stop, header_timeout)
                .run()
                .await;
        }
        h1::Sniffed::H2 => serve_h2(rewind::Rewind::new(buf, stream), peer, shared, stop).await,
        h1::Sniffed::Gone => {}
    }
}

/// Serves an h2c connection with hyper; on stop, it lets open streams finish.
async fn serve_h2(
    io: rewind::Rewind<TcpStream>,
    peer: SocketAddr,
    shared: Arc<forward::Shared>,
    stop: CancellationToken,
) {
    let peer_state = Arc::new(forward::Peer::new(shared, peer));
    let service =
        service_fn(move |req: Request<Incoming>| forward::handle(peer_state.clone(), req));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Malformed requests and clients that vanish end here, not in a crash.
        tracing::debug!(%peer, %error, "h2c connection ended with an error");
    }
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
    listener
        .local_addr()
        .map_err(|source| ProxyError::Bind { addr, source })
}

/// The time a client gets to send a request's head, and an idle keep-alive connection
/// lasts: 30 s, or the request timeout if longer.
///
/// Both are timers registered per request on the worker's timer wheel, and the wheel wakes
/// its event loop through an eventfd (a system call) whenever a new timer is due before every
/// pending one. With all per-request timers of one length, a new timer is never the earliest,
/// so this costs no system call; a header timeout shorter than the request timeout cost one
/// on most requests (0.7 `write(eventfd)` per request measured with strace).
fn header_read_timeout(request_timeout: Duration) -> Duration {
    HEADER_READ_TIMEOUT.max(request_timeout)
}

/// Serves the admin port with hyper until `stop` fires, then drains its connections.
async fn serve<M, S, B>(
    listener: TcpListener,
    stop: CancellationToken,
    header_timeout: Duration,
    make_service: M,
) where
    M: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = hyper::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer enables hyper's header-read timeout, which closes idle half-open clients.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // A client may send its request and half-close (as `curl --data @- < file` or
        // netcat do): it still gets its answer.
        .half_close(true)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if accept_failed(&error, &stop).await => continue,
            Err(_) => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = builder
            .serve_connection(TokioIo::new(stream), make_service(peer))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // Malformed requests and clients that vanish end here, not in a crash.
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("connections still open after the drain timeout; closing them");
        }
    }
}

/// Runs the proxy until `shutdown` resolves.
///
/// # Errors
/// See [`RunningProxy::start`]; once serving, problems become HTTP answers, not errors.
pub async fn run(
    args: ProxyArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    let proxy = RunningProxy::start(args).await?;
    shutdown.await;
    proxy.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_worker_of_their_cpu_while_the_workers_stay_even() {
        let (balancer, _receivers) = Balancer::new(2);
        let count = |b: &Balancer| -> Vec<usize> {
            b.open.iter().map(|o| o.load(Ordering::Acquire)).collect()
        };
        // Two clients' connections, arriving on CPUs 0 and 1 in any order, whoever accepts:
        // each worker serves one client's.
        let mut held = Vec::new();
        for (i, cpu) in [0, 1, 1, 0, 1, 0, 0, 1].into_iter().enumerate() {
            let (target, open) = balancer.assign(i % 2, Some(cpu));
            assert_eq!(target, cpu, "connection {i}");
            held.push(open);
        }
        assert_eq!(count(&balancer), [4, 4]);
        // A burst all on CPU 2 (worker 0's) is not all taken by worker 0.
        for _ in 0..8 {
            held.push(balancer.assign(1, Some(2)).1);
        }
        let spread = count(&balancer);
        assert_eq!(spread.iter().sum::<usize>(), 16);
        assert!(spread[0] <= spread[1] + 1 + spread[1] / 4, "{spread:?}");
        assert!(
            spread[0] > spread[1],
            "the CPU's worker took its share: {spread:?}"
        );
        // Unknown CPU: the accepting worker keeps it while even; closed ones stop counting.
        let (balancer, _receivers) = Balancer::new(3);
        let burst: Vec<_> = (0..6).map(|_| balancer.assign(0, None)).collect();
        assert_eq!(count(&balancer), [2, 2, 2]);
        drop(burst);
        assert_eq!(count(&balancer), [0, 0, 0]);
        assert_eq!(balancer.assign(2, None).0, 2);
    }

    #[test]
    fn defaults_match_the_constants() {
        let args = ProxyArgs::from_flags(Vec::<String>::new()).unwrap();
        assert_eq!(args.listen.port(), DEFAULT_PORT);
        assert_eq!(args.admin_listen.port(), DEFAULT_ADMIN_PORT);
        assert_eq!(args.upstream, DEFAULT_UPSTREAM);
        let args = ProxyArgs::from_flags(["--class-names", "a,b,c", "--timeout", "5s"]).unwrap();
        assert_eq!(args.class_names, ["a", "b", "c"]);
        assert_eq!(args.timeout, Duration::from_secs(5));
    }
}
