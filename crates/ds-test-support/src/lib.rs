//! What the integration tests, benchmarks and `hack/` tools share, written once: polling
//! until something holds ([`eventually`]), gRPC clients with the bearer credential, a
//! gateway on a temporary SQLite database ([`TestGateway`]), and an agent set up for tests
//! ([`agent_args`]). A dev-dependency only: nothing here ships.

use ds_agent::{AgentArgs, RunningAgent};
use ds_core::proto::agent_service_client::AgentServiceClient;
use ds_core::proto::control_service_client::ControlServiceClient;
use ds_gateway::{GatewayArgs, RunningGateway};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use ds_transport::Bearer;

pub mod cli;
pub mod pages;

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The CLI's service with a credential.
pub type Control = ControlServiceClient<InterceptedService<Channel, Bearer>>;
/// The agents' service with a credential.
pub type AgentService = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// Polls `f` every 50 ms until it answers `Some`, and fails the test naming `what` after
/// [`DEADLINE`].
///
/// # Panics
/// When the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(DEADLINE, what, f).await
}

/// [`eventually`] with another deadline (processes such as `kubectl` take longer).
///
/// # Panics
/// When the deadline passes.
pub async fn eventually_within<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A lazily connecting channel to a gateway URL (`http://` or `https://` without a CA).
///
/// # Panics
/// When `url` is not a URL.
pub fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("a gateway URL")
        .connect_lazy()
}

/// The ControlService at `url` with the API key `key`.
pub fn control_client(url: &str, key: &str) -> Control {
    ControlServiceClient::with_interceptor(channel(url), Bearer::from_plain(key))
}

/// The AgentService at `url` with the deployer token `token`.
pub fn agent_service(url: &str, token: &str) -> AgentService {
    AgentServiceClient::with_interceptor(channel(url), Bearer::from_plain(token))
}

/// Gateway flags for tests: plain HTTP on `listen`, data in `dir`, a fast heartbeat.
pub fn gateway_args(dir: &Path, listen: SocketAddr) -> GatewayArgs {
    let mut args = GatewayArgs::insecure(listen, dir);
    args.heartbeat_interval = Duration::from_millis(500);
    args
}

/// A gateway on a temporary SQLite database, on a loopback port; it can be stopped and
/// started again on the same address and data.
pub struct TestGateway {
    gw: Option<RunningGateway>,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub admin_key: String,
}

impl TestGateway {
    /// Starts a gateway with [`gateway_args`].
    ///
    /// # Panics
    /// When it does not start.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a gateway with [`gateway_args`] changed by `configure`.
    ///
    /// # Panics
    /// When it does not start.
    pub async fn start_with(configure: impl FnOnce(&mut GatewayArgs)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut args = gateway_args(dir.path(), "127.0.0.1:0".parse().unwrap());
        configure(&mut args);
        let gw = RunningGateway::start(args).await.expect("gateway starts");
        Self {
            addr: gw.addr,
            admin_key: gw.admin_key.clone(),
            gw: Some(gw),
            dir,
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The data directory (database, admin key file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The ControlService with the admin key.
    pub fn control(&self) -> Control {
        control_client(&self.url(), &self.admin_key)
    }

    /// The running gateway, while it runs.
    ///
    /// # Panics
    /// After [`TestGateway::stop`].
    pub fn running(&self) -> &RunningGateway {
        self.gw.as_ref().expect("the gateway is running")
    }

    /// Shuts the gateway down (its data stays).
    pub async fn stop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }

    /// Starts again on the same address and data (a gateway restart).
    pub async fn restart(&mut self) {
        self.stop().await;
        let gw = eventually("the gateway to bind its old address again", || async {
            RunningGateway::start(gateway_args(self.dir.path(), self.addr))
                .await
                .ok()
        })
        .await;
        self.gw = Some(gw);
    }
}

/// Agent flags for tests: `gateway` over plain HTTP with `token`, the health server on a
/// loopback port, fast resync and heartbeat.
pub fn agent_args(gateway: &str, token: &str) -> AgentArgs {
    let mut a = AgentArgs::new(gateway);
    a.insecure = true;
    a.token = Some(token.into());
    a.listen_health = "127.0.0.1:0".parse().unwrap();
    a.resync = Duration::from_millis(500);
    a.heartbeat = Duration::from_millis(500);
    a.cluster_name = "test".into();
    a
}

/// Starts an agent on `client` (a simulator's or a real API server's).
///
/// # Panics
/// When it does not start.
pub async fn start_agent(args: AgentArgs, client: kube::Client) -> RunningAgent {
    RunningAgent::start_with_client(args, client)
        .await
        .expect("agent starts")
}
