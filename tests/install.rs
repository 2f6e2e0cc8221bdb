//! Install and `ds dev`, end to end: `ds deployer install` (the CLI as a process) prints
//! the one-line `kubectl apply`, the real kubectl applies the served manifest to the
//! simulated cluster, and an agent with the Secret's token reconciles; install links work
//! once and expire. `ds dev` runs as a process: start, deploy, SIGTERM, restart.
//!
//! The `real_rbac_*` tests apply the served manifest to the real kube-apiserver of
//! `real_kube` and run the agent with a TokenRequest token of the manifest's own
//! ServiceAccount, so the real RBAC authorizer judges our ClusterRole and Roles.

mod real_kube;

use ds_agent::{AgentArgs, RunningAgent};
use ds_core::DeploymentSpec;
use ds_core::proto::{self};
use ds_gateway::{GatewayArgs, RunningGateway};
use ds_kube_sim::{SimCluster, SimConfig};
use ds_test_support::Control;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
const KUBECTL: &str = "/usr/bin/kubectl";
const AGENT_NS: &str = "ds-deployer";

// === helpers ===

/// The real kubectl, or a failure that says how to get it.
fn kubectl() -> &'static str {
    assert!(
        Path::new(KUBECTL).exists(),
        "these tests drive the real kubectl at {KUBECTL}, which is missing: install it \
         (e.g. `curl -LO https://dl.k8s.io/release/v1.32.0/bin/linux/amd64/kubectl && \
         install -m 0755 kubectl /usr/bin/kubectl`)"
    );
    KUBECTL
}

/// The `ds` binary cargo built for this test (`DS_TEST_BIN` overrides it, see tests/cli.rs).
fn ds_binary() -> PathBuf {
    std::env::var_os("DS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ds")))
}

/// `ds ARGS` with a private config path and no inherited gateway settings.
fn ds(config_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(ds_binary());
    cmd.args(args)
        .env_remove("DS_GATEWAY")
        .env_remove("DS_API_KEY")
        .env_remove("DS_CA_CERT")
        .env("DS_CONFIG", config_dir.join("ds-config.yaml"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn output(mut cmd: Command) -> Run {
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("the command finishes")
        .expect("the command runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// [`ds_test_support::eventually`] with this file's longer deadline.
async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    ds_test_support::eventually_within(DEADLINE, what, f).await
}

/// A gateway, a simulated cluster with its kubeconfig on disk, and an admin client.
struct Env {
    gw: RunningGateway,
    /// The simulated cluster, unless this runs on the real API server.
    sim: Option<SimCluster>,
    /// The cluster's admin client.
    client: kube::Client,
    dir: tempfile::TempDir,
    /// The cluster's admin kubeconfig.
    kubeconfig: PathBuf,
    control: Control,
}

fn start_gateway_args(dir: &Path) -> GatewayArgs {
    GatewayArgs::insecure("127.0.0.1:0".parse().unwrap(), dir.join("gateway"))
}

fn admin(gw: &RunningGateway) -> Control {
    ds_test_support::control_client(&gw.url(), &gw.admin_key)
}

/// A gateway and the shared real API server (admin kubeconfig).
async fn real_env() -> Env {
    ds::telemetry::init_logging();
    let kube = real_kube::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = RunningGateway::start(start_gateway_args(dir.path()))
        .await
        .expect("gateway starts");
    let control = admin(&gw);
    Env {
        gw,
        sim: None,
        client: kube.client().await,
        dir,
        kubeconfig: kube.kubeconfig.clone(),
        control,
    }
}

async fn env() -> Env {
    ds::telemetry::init_logging();
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = RunningGateway::start(start_gateway_args(dir.path()))
        .await
        .expect("gateway starts");
    let sim = SimCluster::start(SimConfig {
        rollout_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("sim starts");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig()).expect("write kubeconfig");
    let control = admin(&gw);
    Env {
        gw,
        client: sim.client(),
        sim: Some(sim),
        dir,
        kubeconfig,
        control,
    }
}

impl Env {
    /// The simulator, for the tests that inject its faults.
    fn sim(&self) -> &SimCluster {
        self.sim.as_ref().expect("a simulator test")
    }

    async fn create_deployer(&mut self, name: &str) -> String {
        self.control
            .create_deployer(proto::CreateDeployerRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("create deployer")
            .into_inner()
            .deployer
            .expect("deployer")
            .id
    }

    /// `ds deployer install NAME` as a process; returns the URL of its one line.
    async fn install_url(&self, deployer: &str) -> String {
        self.install_url_with(deployer, &[]).await
    }

    /// `ds deployer install NAME EXTRA…` as a process; returns the URL of its one line.
    /// Runs the `ds` CLI against this gateway as its admin.
    async fn ds_cli(&self, args: &[&str]) -> Run {
        let mut cmd = ds(self.dir.path(), args);
        cmd.env("DS_GATEWAY", self.gw.url())
            .env("DS_API_KEY", &self.gw.admin_key);
        output(cmd).await
    }

    async fn install_url_with(&self, deployer: &str, extra: &[&str]) -> String {
        let mut args = vec!["deployer", "install", deployer];
        args.extend_from_slice(extra);
        let run = self.ds_cli(&args).await;
        assert!(run.ok, "ds deployer install failed: {}", run.stderr);
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one line: {:?}", run.stdout);
        let url = lines[0]
            .strip_prefix("kubectl apply -f \"")
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or_else(|| panic!("not a kubectl apply line: {}", lines[0]));
        let prefix = format!("{}/install/", self.gw.url());
        let code = url
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".yaml"))
            .unwrap_or_else(|| panic!("unexpected install URL {url}"));
        assert!(
            code.len() >= 32 && code.bytes().all(|b| b.is_ascii_alphanumeric()),
            "code {code:?} is long and URL-safe"
        );
        url.to_string()
    }

    /// Runs `ds agent` with exactly the manifest's env (plus the token file and health
    /// address a pod would have) and waits until it reports ready.
    async fn agent_process(
        &self,
        vars: &[(String, String)],
        token_file: &Path,
        health: std::net::SocketAddr,
        kubeconfig: &Path,
    ) -> tokio::process::Child {
        let log = self.dir.path().join("agent.log");
        let mut cmd = Command::new(ds_binary());
        cmd.arg("agent")
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("DS_TOKEN_FILE", token_file)
            .env("DS_LISTEN_HEALTH", health.to_string())
            .env("DS_KUBECONFIG", kubeconfig)
            .env("DS_LEASE_DURATION", "5s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("ds agent starts");
        let start = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("ds agent exited ({status}) with the manifest's env:\n{stderr}");
            }
            if tokio::net::TcpStream::connect(health).await.is_ok()
                && http_get(&format!("http://{health}/readyz")).await.0 == 200
            {
                return child;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for the agent process to report ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn kubectl(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(kubectl());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        output(cmd).await
    }

    /// The token the applied manifest's Secret holds.
    async fn secret_token(&self, deployer: &str) -> String {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), AGENT_NS);
        let secret = secrets
            .get(&format!("ds-agent-{deployer}-token"))
            .await
            .expect("the token Secret exists");
        let data = secret.data.expect("the Secret has data");
        String::from_utf8(data["token"].0.clone()).expect("the token is text")
    }

    async fn deploy(&mut self, deployer: &str, name: &str) {
        self.deploy_in(deployer, name, "default").await;
    }

    async fn deploy_in(&mut self, deployer: &str, name: &str, namespace: &str) {
        self.control
            .create_deployment(proto::CreateDeploymentRequest {
                deployer: deployer.into(),
                name: name.into(),
                namespace: namespace.into(),
                spec: Some(DeploymentSpec::test(name).into()),
            })
            .await
            .expect("create deployment");
    }

    async fn wait_for_deployment(&self, name: &str) -> Deployment {
        self.wait_for_deployment_in(name, "default").await
    }

    async fn wait_for_deployment_in(&self, name: &str, namespace: &str) -> Deployment {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        eventually(
            &format!("Deployment {namespace}/{name} in the cluster"),
            || {
                let api = api.clone();
                async move { api.get_opt(name).await.ok().flatten() }
            },
        )
        .await
    }
}

/// A loopback address nobody listens on, for an agent's health endpoint.
fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr")
}

/// A plain HTTP/1.1 GET; returns the status code and body.
async fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .expect("the answer arrives")
        .expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The agent Deployment's env as `(name, value)`; `valueFrom` entries get what the
/// kubelet would put there (the pod's namespace).
fn manifest_env(deployment: &Deployment) -> Vec<(String, String)> {
    let container = &deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
        .containers[0];
    container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let value = match (e.value, e.value_from) {
                (Some(v), _) => v,
                (None, Some(_)) => AGENT_NS.to_string(),
                (None, None) => String::new(),
            };
            (e.name, value)
        })
        .collect()
}

// === install ===

#[tokio::test]
async fn install_link_applies_with_kubectl_and_the_agent_reconciles() {
    let mut env = env().await;
    let deployer_id = env.create_deployer("edge").await;
    let url = env.install_url("edge").await;

    let applied = env.kubectl(&["apply", "-f", &url]).await;
    assert!(
        applied.ok,
        "kubectl apply -f URL failed:\n{}\n{}",
        applied.stdout, applied.stderr
    );
    for object in [
        "namespace/ds-deployer",
        "serviceaccount/ds-agent-edge",
        "clusterrole.rbac.authorization.k8s.io/ds-agent-edge",
        "secret/ds-agent-edge-token",
        "deployment.apps/ds-agent-edge",
        "poddisruptionbudget.policy/ds-agent-edge",
        "service/ds-agent-edge-metrics",
    ] {
        assert!(
            applied.stdout.contains(&format!("{object} created")),
            "{object} created: {}",
            applied.stdout
        );
    }

    // The agent Deployment dials this gateway; the token is only in the Secret.
    let agents: Api<Deployment> = Api::namespaced(env.client.clone(), AGENT_NS);
    let agent_deploy = agents.get("ds-agent-edge").await.expect("agent Deployment");
    let vars = manifest_env(&agent_deploy);
    let var = |name: &str| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} is set: {vars:?}"))
    };
    assert_eq!(var("DS_GATEWAY"), env.gw.url());
    assert_eq!(var("DS_INSECURE"), "true", "a plain-http gateway needs it");
    let token = env.secret_token("edge").await;
    assert!(token.starts_with("dst_"), "a deployer token");
    assert!(!url.contains(&token), "the token never appears in the URL");
    let get = env
        .kubectl(&[
            "get",
            "deployment",
            "ds-agent-edge",
            "-n",
            AGENT_NS,
            "-o",
            "json",
        ])
        .await;
    assert!(get.ok, "{}", get.stderr);
    assert!(
        !get.stdout.contains(&token),
        "the Deployment does not carry the token"
    );

    // An agent with the Secret's token connects and reconciles.
    let mut args = AgentArgs::new(env.gw.url());
    args.insecure = true;
    args.token = Some(token.into());
    args.listen_health = "127.0.0.1:0".parse().unwrap();
    args.proxy_image = "ds:test".into();
    let agent = RunningAgent::start_with_client(args, env.client.clone())
        .await
        .expect("agent starts");
    eventually("the agent to learn its deployer", || async {
        (agent.deployer_id().as_deref() == Some(deployer_id.as_str())).then_some(())
    })
    .await;
    env.deploy("edge", "iris").await;
    let deployment = env.wait_for_deployment("iris").await;
    let labels = deployment.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("ds-deployer")
    );

    // The link worked once: a second fetch is 410, and kubectl says so.
    let (status, body) = http_get(&url).await;
    assert_eq!(status, 410, "second fetch: {body}");
    assert!(body.contains("already used"), "{body}");
    let again = env.kubectl(&["apply", "-f", &url]).await;
    assert!(!again.ok, "a second kubectl apply of the link fails");
    assert!(again.stderr.contains("410"), "{}", again.stderr);

    agent.shutdown().await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn the_manifest_env_starts_the_agent_binary() {
    // The env the template sets must be what `ds agent` reads: run the binary with exactly
    // that env (token file and health address as the pod would have them) and wait for
    // it to become ready, which needs a complete snapshot from the gateway.
    let mut env = env().await;
    env.create_deployer("proc").await;
    let url = env.install_url("proc").await;
    let applied = env.kubectl(&["apply", "-f", &url]).await;
    assert!(applied.ok, "{}", applied.stderr);
    let agents: Api<Deployment> = Api::namespaced(env.client.clone(), AGENT_NS);
    let vars = manifest_env(&agents.get("ds-agent-proc").await.expect("agent Deployment"));
    let token_file = env.dir.path().join("token");
    std::fs::write(&token_file, env.secret_token("proc").await).expect("write token");
    let health = free_addr();
    let mut child = env
        .agent_process(&vars, &token_file, health, &env.kubeconfig)
        .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn expired_and_unknown_install_links_are_refused() {
    let mut env = env().await;
    env.create_deployer("late").await;
    let response = env
        .control
        .create_install_code(proto::CreateInstallCodeRequest {
            deployer: "late".into(),
            ttl_seconds: 1,
            ..Default::default()
        })
        .await
        .expect("install code")
        .into_inner();
    // Expiry is wall-clock: waiting past it can only leave the link more expired.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = http_get(&response.url).await;
    assert_eq!(status, 410, "expired link: {body}");
    assert!(body.contains("expired"), "{body}");

    let unknown = format!("{}/install/{}.yaml", env.gw.url(), "0".repeat(32));
    assert_eq!(http_get(&unknown).await.0, 404);
    let garbage = format!("{}/install/not-a-code.yaml", env.gw.url());
    assert_eq!(http_get(&garbage).await.0, 404);

    // The default lifetime is 15 minutes; an unknown deployer is NOT_FOUND.
    let fresh = env
        .control
        .create_install_code(proto::CreateInstallCodeRequest {
            deployer: "late".into(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .expect("install code")
        .into_inner();
    let expires = chrono::DateTime::parse_from_rfc3339(&fresh.expires_at).expect("RFC 3339");
    let left = expires.signed_duration_since(chrono::Utc::now());
    assert!(
        left > chrono::Duration::minutes(13) && left <= chrono::Duration::minutes(15),
        "about 15 minutes left: {left}"
    );
    let missing = env
        .control
        .create_install_code(proto::CreateInstallCodeRequest {
            deployer: "nobody".into(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .expect_err("unknown deployer");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    env.gw.shutdown().await;
}

#[tokio::test]
async fn install_options_choose_the_namespaced_variant() {
    let mut env = env().await;
    env.create_deployer("restricted").await;
    let url = env
        .install_url_with(
            "restricted",
            &[
                "--namespaces",
                "models,staging",
                "--agent-namespace",
                "ds-agents",
                "--cluster-name",
                "eu-1",
            ],
        )
        .await;
    let (status, manifest) = http_get(&url).await;
    assert_eq!(status, 200, "{manifest}");
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&manifest).expect("the manifest is YAML");
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    };
    assert!(of_kind("ClusterRole").is_empty(), "no cluster-wide rights");
    let mut role_namespaces: Vec<&str> = of_kind("Role")
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    role_namespaces.sort_unstable();
    // The two target namespaces, plus the agent's own Lease Role.
    assert_eq!(role_namespaces, ["ds-agents", "models", "staging"]);
    let deployment = of_kind("Deployment")[0];
    assert_eq!(deployment["metadata"]["namespace"], "ds-agents");
    let env_vars = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let cluster = env_vars
        .iter()
        .find(|e| e["name"] == "DS_CLUSTER_NAME")
        .unwrap();
    assert_eq!(cluster["value"], "eu-1");

    // A bad namespace is refused at the gateway, naming the field, in one line.
    let run = env
        .ds_cli(&[
            "deployer",
            "install",
            "restricted",
            "--namespaces",
            "Bad_NS",
        ])
        .await;
    assert!(!run.ok, "a bad namespace must fail");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("target_namespaces[0]"),
        "{}",
        run.stderr
    );

    // Creating namespaces needs cluster-wide rights: refused with the namespaced variant.
    let run = env
        .ds_cli(&[
            "deployer",
            "install",
            "restricted",
            "--namespaces",
            "models",
            "--create-namespaces",
        ])
        .await;
    assert!(!run.ok, "--create-namespaces with --namespaces must fail");
    assert!(run.stderr.contains("create_namespaces"), "{}", run.stderr);
    env.gw.shutdown().await;
}

#[tokio::test]
async fn namespaced_install_runs_with_rights_only_in_its_namespaces() {
    let mut env = env().await;
    env.create_deployer("scoped").await;
    // The namespaces a Role goes into exist before the install (kubectl would refuse).
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    for ns in ["models", "staging"] {
        let n = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        namespaces
            .create(&Default::default(), &n)
            .await
            .expect("create namespace");
    }
    let url = env
        .install_url_with("scoped", &["--namespaces", "models,staging"])
        .await;
    let applied = env.kubectl(&["apply", "-f", &url]).await;
    assert!(applied.ok, "{}\n{}", applied.stdout, applied.stderr);
    assert!(
        !applied.stdout.contains("clusterrole"),
        "no cluster-wide rights: {}",
        applied.stdout
    );
    let agents: Api<Deployment> = Api::namespaced(env.client.clone(), AGENT_NS);
    let vars = manifest_env(
        &agents
            .get("ds-agent-scoped")
            .await
            .expect("agent Deployment"),
    );
    let token_file = env.dir.path().join("token");
    std::fs::write(&token_file, env.secret_token("scoped").await).expect("write token");

    // From here the API server answers as those Roles allow: 403 anywhere else.
    env.sim().faults().restrict_to_namespaces(Some(vec![
        AGENT_NS.into(),
        "models".into(),
        "staging".into(),
    ]));
    let health = free_addr();
    let mut child = env
        .agent_process(&vars, &token_file, health, &env.kubeconfig)
        .await;
    env.deploy_in("scoped", "iris", "models").await;
    env.wait_for_deployment_in("iris", "models").await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn two_concurrent_fetches_of_one_link_serve_it_once() {
    let mut env = env().await;
    env.create_deployer("race").await;
    let url = env.install_url("race").await;
    let (a, b) = tokio::join!(http_get(&url), http_get(&url));
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 410], "exactly one fetch gets the manifest");
    let manifest = if a.0 == 200 { a.1 } else { b.1 };
    assert!(manifest.contains("kind: Secret"), "{manifest}");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn an_install_keeps_the_running_agents_token_valid() {
    // The install issues an additional token: an agent already running with the
    // deployer's first token keeps its access.
    let mut env = env().await;
    let created = env
        .control
        .create_deployer(proto::CreateDeployerRequest {
            name: "shared".into(),
            ..Default::default()
        })
        .await
        .expect("create deployer")
        .into_inner();
    let url = env.install_url("shared").await;
    let (status, manifest) = http_get(&url).await;
    assert_eq!(status, 200);
    assert!(
        !manifest.contains(&created.token),
        "a new token, not the first"
    );
    let mut args = AgentArgs::new(env.gw.url());
    args.insecure = true;
    args.token = Some(created.token.into());
    args.listen_health = "127.0.0.1:0".parse().unwrap();
    let agent = RunningAgent::start_with_client(args, env.client.clone())
        .await
        .expect("agent starts");
    eventually("the first token's agent to connect", || async {
        agent.is_ready().then_some(())
    })
    .await;
    agent.shutdown().await;
    env.gw.shutdown().await;
}

// === under the real API server's RBAC ===

impl Env {
    /// Applies the deployer's install link to the cluster with kubectl.
    async fn apply_install(&self, deployer: &str, extra: &[&str]) {
        let url = self.install_url_with(deployer, extra).await;
        let mut applied = self.kubectl(&["apply", "-f", &url]).await;
        // These tests share one API server and run at once: two applies can both find the
        // agent's namespace missing and race to create it; the loser's AlreadyExists is
        // answered, as a user would, by applying a new link again (a link is single-use).
        if !applied.ok && applied.stderr.contains("AlreadyExists") {
            let again = self.install_url_with(deployer, extra).await;
            applied = self.kubectl(&["apply", "-f", &again]).await;
        }
        assert!(
            applied.ok,
            "kubectl apply -f URL failed:\n{}\n{}",
            applied.stdout, applied.stderr
        );
    }

    /// A kubeconfig holding a token of the manifest's own ServiceAccount (a TokenRequest,
    /// as the kubelet mounts one), never the admin's.
    async fn service_account_kubeconfig(&self, deployer: &str) -> PathBuf {
        let sa = format!("ds-agent-{deployer}");
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), AGENT_NS);
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        });
        let answer: serde_json::Value = accounts
            .create_subresource("token", &sa, &Default::default(), &request)
            .await
            .expect("a TokenRequest for the manifest's ServiceAccount");
        let token = answer["status"]["token"].as_str().expect("a token");
        let user = format!("system:serviceaccount:{AGENT_NS}:{sa}");
        let path = self.dir.path().join(format!("{sa}.kubeconfig"));
        std::fs::write(
            &path,
            real_kube::shared().kubeconfig_for_token(&user, token),
        )
        .expect("write kubeconfig");
        path
    }

    /// Runs `ds agent` as the manifest configures it, with the ServiceAccount's token.
    async fn agent_as_service_account(&self, deployer: &str) -> tokio::process::Child {
        let agents: Api<Deployment> = Api::namespaced(self.client.clone(), AGENT_NS);
        let vars = manifest_env(
            &agents
                .get(&format!("ds-agent-{deployer}"))
                .await
                .expect("agent Deployment"),
        );
        let token_file = self.dir.path().join(format!("{deployer}.token"));
        std::fs::write(&token_file, self.secret_token(deployer).await).expect("write token");
        let health = free_addr();
        let kubeconfig = self.service_account_kubeconfig(deployer).await;
        self.agent_process(&vars, &token_file, health, &kubeconfig)
            .await
    }

    /// Waits until the gateway shows the deployment in `phase`; returns its last error.
    async fn wait_phase(&self, deployer: &str, name: &str, phase: proto::Phase) -> String {
        let control = self.control.clone();
        eventually(&format!("{name} to be {phase:?}"), || {
            let mut control = control.clone();
            async move {
                let view = control
                    .get_deployment(proto::GetDeploymentRequest {
                        deployment: name.into(),
                        deployer: deployer.into(),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                let status = view.status.unwrap_or_default();
                (status.phase == phase as i32).then_some(status.last_error)
            }
        })
        .await
    }
}

/// The API server's answer code to a request, 0 when it succeeded.
fn api_code<T>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Ok(_) => 0,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("expected an API answer, got {e}"),
    }
}

#[tokio::test]
async fn real_rbac_cluster_wide_install_runs_with_its_service_account() {
    let mut env = real_env().await;
    let kube = real_kube::shared();
    env.create_deployer("wide").await;
    env.apply_install("wide", &[]).await;
    let ns = kube.namespace("wide").await;
    let mut agent = env.agent_as_service_account("wide").await;

    // Everything the agent does to one deployment, each a verb our ClusterRole must grant.
    env.control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "wide".into(),
            name: "iris".into(),
            namespace: ns.clone(),
            spec: Some(DeploymentSpec::test("iris").host("iris.example.com").into()),
        })
        .await
        .expect("create deployment");
    env.wait_phase("wide", "iris", proto::Phase::Available)
        .await;
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> =
        Api::namespaced(env.client.clone(), &ns);
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(env.client.clone(), &ns);
    assert!(ingresses.get_opt("iris").await.unwrap().is_some());
    assert!(services.get_opt("iris").await.unwrap().is_some());
    // `logs` and `describe` read pods, their logs and events with the same rights.
    let iris = proto::GetDeploymentRequest {
        deployment: "iris".into(),
        deployer: "wide".into(),
        ..Default::default()
    };
    let described = eventually("describe through the agent", || async {
        let d = env
            .control
            .clone()
            .describe_deployment(iris.clone())
            .await
            .ok()?
            .into_inner();
        d.cluster.filter(|c| !c.pods.is_empty())
    })
    .await;
    assert_eq!(described.pods[0].status, "Running", "{described:?}");
    assert!(
        described
            .events
            .iter()
            .any(|e| e.reason == "ScalingReplicaSet"),
        "{:?}",
        described.events
    );
    let mut lines = env
        .control
        .deployment_logs(proto::DeploymentLogsRequest {
            selector: Some(iris.clone()),
            ..Default::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let first = lines.message().await.expect("a batch").expect("lines");
    assert!(
        first.lines[0].line.starts_with("fake kubelet: "),
        "{first:?}"
    );
    env.control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(proto::GetDeploymentRequest {
                deployment: "iris".into(),
                deployer: "wide".into(),
                ..Default::default()
            }),
            image: Some("tensorflow/serving:2.16.0".into()),
            host: Some(String::new()),
            ..Default::default()
        })
        .await
        .expect("update deployment");
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns);
    eventually("the new image and no Ingress", || async {
        let d = deployments.get_opt("iris").await.ok()??;
        let image = d.spec?.template.spec?.containers[0].image.clone()?;
        let no_ingress = matches!(ingresses.get_opt("iris").await, Ok(None));
        (image == "tensorflow/serving:2.16.0" && no_ingress).then_some(())
    })
    .await;
    env.control
        .delete_deployment(proto::DeleteDeploymentRequest {
            selector: Some(proto::GetDeploymentRequest {
                deployment: "iris".into(),
                deployer: "wide".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("delete deployment");
    eventually("the objects to be deleted", || async {
        let gone = matches!(deployments.get_opt("iris").await, Ok(None))
            && matches!(services.get_opt("iris").await, Ok(None));
        gone.then_some(())
    })
    .await;

    // The token is the ServiceAccount's, with only what the ClusterRole grants.
    let sa = real_kube::client_from(&env.service_account_kubeconfig("wide").await).await;
    let secrets: Api<Secret> = Api::all(sa.clone());
    assert_eq!(api_code(secrets.list(&Default::default()).await), 403);
    // Pods are read, never written.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(sa, &ns);
    assert_eq!(
        api_code(
            pods.delete_collection(&Default::default(), &Default::default())
                .await
        ),
        403
    );
    let _ = agent.start_kill();
    let _ = agent.wait().await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn real_rbac_namespaced_install_is_refused_outside_its_namespaces() {
    let mut env = real_env().await;
    let kube = real_kube::shared();
    let (inside, also, outside) = (
        kube.namespace("narrow-in").await,
        kube.namespace("narrow-also").await,
        kube.namespace("narrow-out").await,
    );
    env.create_deployer("narrow").await;
    // Created before the agent reported its namespaces: the gateway cannot refuse it yet.
    env.deploy_in("narrow", "wine", &outside).await;
    env.apply_install("narrow", &["--namespaces", &format!("{inside},{also}")])
        .await;
    let mut agent = env.agent_as_service_account("narrow").await;

    env.deploy_in("narrow", "iris", &inside).await;
    env.wait_phase("narrow", "iris", proto::Phase::Available)
        .await;
    let error = env.wait_phase("narrow", "wine", proto::Phase::Failed).await;
    assert!(
        error.contains(&format!(
            "namespace {outside} is outside this agent's namespaces"
        )),
        "{error}"
    );

    // The real authorizer refuses the ServiceAccount everywhere else.
    let sa = real_kube::client_from(&env.service_account_kubeconfig("narrow").await).await;
    let elsewhere: Api<Deployment> = Api::namespaced(sa.clone(), &outside);
    let probe: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe"},
        "spec": {"selector": {"matchLabels": {"app": "p"}}, "template": {
            "metadata": {"labels": {"app": "p"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    assert_eq!(
        api_code(elsewhere.create(&Default::default(), &probe).await),
        403
    );
    let everywhere: Api<Deployment> = Api::all(sa);
    assert_eq!(api_code(everywhere.list(&Default::default()).await), 403);
    let admin_view: Api<Deployment> = Api::namespaced(env.client.clone(), &outside);
    assert!(
        admin_view
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was written outside"
    );
    let _ = agent.start_kill();
    let _ = agent.wait().await;
    env.gw.shutdown().await;
}

// === ds dev ===

/// A running `ds dev` process and what it printed.
struct DevProcess {
    child: tokio::process::Child,
    gateway: String,
    api_key: String,
}

async fn start_dev(data: &Path) -> DevProcess {
    let log = std::fs::File::create(data.with_extension("log")).expect("log file");
    let mut cmd = Command::new(ds_binary());
    cmd.args(["dev", "--data-dir"])
        .arg(data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--agent-health",
            "127.0.0.1:0",
            "--rollout-delay",
            "0.2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("ds dev starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut gateway, mut api_key) = (None, None);
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(v) = line.trim().strip_prefix("export DS_GATEWAY=") {
                gateway = Some(v.to_string());
            }
            if let Some(v) = line.trim().strip_prefix("export DS_API_KEY=") {
                api_key = Some(v.to_string());
            }
            if gateway.is_some() && api_key.is_some() {
                return true;
            }
        }
        false
    };
    let found = tokio::time::timeout(DEADLINE, read).await.unwrap_or(false);
    assert!(
        found,
        "ds dev printed both exports; its log:\n{}",
        std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
    );
    // Keep reading so that a full pipe never blocks the process.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    DevProcess {
        child,
        gateway: gateway.unwrap_or_default(),
        api_key: api_key.unwrap_or_default(),
    }
}

impl DevProcess {
    fn ds(&self, config_dir: &Path, args: &[&str]) -> Command {
        let mut cmd = ds(config_dir, args);
        cmd.env("DS_GATEWAY", &self.gateway)
            .env("DS_API_KEY", &self.api_key);
        cmd
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("ds dev stops after SIGTERM")
            .expect("wait")
    }
}

async fn kubectl_sees(kubeconfig: &Path, name: &str) -> bool {
    let mut cmd = Command::new(kubectl());
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "deployment", name, "-n", "default", "-o", "name"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let run = output(cmd).await;
    run.ok && run.stdout.trim() == format!("deployment.apps/{name}")
}

#[tokio::test]
async fn ds_dev_runs_the_loop_stops_on_sigterm_and_keeps_its_state() {
    kubectl();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("ds-data");
    let dev = start_dev(&data).await;
    assert!(
        dev.gateway.starts_with("http://127.0.0.1:"),
        "{}",
        dev.gateway
    );
    assert!(dev.api_key.starts_with("dsk_"), "an admin key");

    let created = output(dev.ds(
        dir.path(),
        &[
            "deployment",
            "create",
            "--deployer",
            "local",
            "--model-name",
            "iris",
            "--image",
            "tensorflow/serving:2.15.0",
        ],
    ))
    .await;
    assert!(created.ok, "ds deployment create: {}", created.stderr);
    let kubeconfig = data.join("kubeconfig");
    eventually(
        "kubectl to see deployment iris in the simulated cluster",
        || {
            let kubeconfig = kubeconfig.clone();
            async move { kubectl_sees(&kubeconfig, "iris").await.then_some(()) }
        },
    )
    .await;
    let first_key = dev.api_key.clone();
    let status = dev.terminate().await;
    assert!(status.success(), "ds dev exits 0 on SIGTERM: {status}");

    // A second run keeps the deployer, its token, the deployment and the cluster state.
    let dev = start_dev(&data).await;
    assert_eq!(dev.api_key, first_key, "the same admin key");
    let listed = output(dev.ds(dir.path(), &["deployment", "get", "iris", "-o", "json"])).await;
    assert!(listed.ok, "ds deployment get iris: {}", listed.stderr);
    let deployers = output(dev.ds(dir.path(), &["deployer", "ls", "-o", "json"])).await;
    assert!(deployers.ok, "{}", deployers.stderr);
    assert_eq!(
        deployers.stdout.matches("\"local\"").count(),
        1,
        "one deployer local: {}",
        deployers.stdout
    );
    let kubeconfig = data.join("kubeconfig");
    eventually("the restarted cluster to still hold iris", || {
        let kubeconfig = kubeconfig.clone();
        async move { kubectl_sees(&kubeconfig, "iris").await.then_some(()) }
    })
    .await;
    let status = dev.terminate().await;
    assert!(status.success(), "ds dev exits 0 on SIGTERM: {status}");
}

/// The installed rights suffice for the pod watch behind the status: an agent running as
/// the manifest's service account on the real API server (RBAC enforced) reports the
/// `ImagePullBackOff` of an image that cannot be pulled. Without `pods` read rights the
/// API server refuses the watch and no such reason ever shows.
#[tokio::test]
async fn real_rbac_lets_the_agent_report_pod_failures() {
    let mut env = real_env().await;
    let kube = real_kube::shared();
    env.create_deployer("podread").await;
    env.apply_install("podread", &[]).await;
    let ns = kube.namespace("podread").await;
    let mut agent = env.agent_as_service_account("podread").await;
    let image = format!("{}nope:1", real_kube::UNPULLABLE_REGISTRY);
    env.control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "podread".into(),
            name: "iris".into(),
            namespace: ns.clone(),
            spec: Some(DeploymentSpec::test("iris").image(&image).into()),
        })
        .await
        .expect("create deployment");
    env.wait_phase("podread", "iris", proto::Phase::Failed)
        .await;
    let view = env
        .control
        .get_deployment(proto::GetDeploymentRequest {
            deployment: "iris".into(),
            deployer: "podread".into(),
            ..Default::default()
        })
        .await
        .expect("get deployment")
        .into_inner();
    let status = view.status.unwrap_or_default();
    assert!(
        status.reason.contains("Back-off pulling image") || status.reason.contains("ErrImagePull"),
        "{status:?}"
    );
    assert!(status.reason.contains(&image), "{status:?}");
    // Read rights only: the ServiceAccount cannot delete pods.
    let sa = real_kube::client_from(&env.service_account_kubeconfig("podread").await).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(sa, &ns);
    assert_eq!(
        api_code(
            pods.delete_collection(&Default::default(), &Default::default())
                .await
        ),
        403
    );
    let _ = agent.start_kill();
    let _ = agent.wait().await;
    env.gw.shutdown().await;
}
