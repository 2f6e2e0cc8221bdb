//! Integration tests of `ds agent`: a real gateway and agents in this process on loopback
//! ports, against a Kubernetes API server. One test per rule of DESIGN.md's "Ownership and
//! safety" contract, plus the behaviours issue 4 lists.
//!
//! The contract runs twice with the same bodies: `sim::` on the simulated API server (a
//! fresh one per test) and `real::` on the real kube-apiserver and controller manager of
//! `real_kube` (one per binary, a namespace per test). Writes are counted by the
//! simulator's counters or the real server's audit log. Fault injection stays simulator
//! only.

mod real_kube;

use ds_agent::builders::{
    DEPLOYMENT_ID_LABEL, MANAGED_BY_LABEL, OWNER_LABEL, PROXY_CONTAINER, REVISION_ANNOTATION,
};
use ds_agent::{AgentArgs, RunningAgent};
use ds_core::DeploymentSpec;
use ds_core::proto::control_service_client::ControlServiceClient;
use ds_core::proto::{self, Phase};
use ds_gateway::RunningGateway;
use ds_kube_sim::{SimCluster, SimConfig};
use ds_test_support::{
    Bearer, Control, DEADLINE, TestGateway as Gateway, eventually, gateway_args,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

const NS: &str = "default";

/// Which API server a contract test runs against.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Sim,
    Real,
}

/// Generates `sim::NAME` and `real::NAME` for each contract test body `NAME(Backend)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sim {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Sim).await
            })*
        }
        mod real {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Real).await
            })*
        }
    };
}

on_both!(
    create_makes_owned_objects_and_reports_available,
    image_and_replica_change_update_the_same_deployment_in_place,
    delete_removes_the_objects,
    removing_the_host_deletes_only_the_ingress,
    proxy_toggle_updates_the_deployment_in_place,
    query_log_toggle_updates_the_sidecar_in_place,
    proxy_protocol_updates_the_sidecar_in_place,
    foreign_object_with_the_desired_name_is_never_touched,
    safe_start_prunes_nothing_while_the_gateway_is_down_then_catches_up,
    restart_prunes_only_owned_objects_absent_from_the_snapshot,
    two_deployers_in_one_cluster_stay_apart,
    unchanged_resync_makes_zero_writes,
    drift_is_corrected_within_one_resync,
    gateway_restart_leaves_workloads_and_the_agent_catches_up,
    leader_election_one_writer_and_failover,
    missing_namespace_is_reported_unless_create_namespaces,
    token_rotation_orphans_nothing,
    deployer_rm_cascade_removes_every_object_then_revokes_the_token,
    describe_shows_the_pods_and_only_this_deployments_events,
    logs_merge_the_pods_and_follow_picks_up_new_ones,
    unpullable_image_fails_the_wait_with_the_pull_reason,
    history_diff_and_rollback_restore_a_spec_in_place,
    pod_options_are_applied_in_place_and_removed_when_turned_off,
    model_from_storage_is_an_init_container_or_a_claim_applied_in_place,
    autoscaling_leaves_replicas_to_the_hpa_and_the_budget_follows_the_pod_count,
);
const PROXY_IMAGE: &str = "ds:test";

// === helpers ===

/// The API server of one test.
enum Cluster {
    Sim(SimCluster),
    Real {
        admin: kube::Client,
        agent: kube::Client,
        writes: real_kube::AuditCounter,
    },
}

/// Write counts of the agents: the simulator's counters, or the real server's audit log
/// for the agents' user in the test's namespaces.
enum Counts<'a> {
    Sim(&'a ds_kube_sim::Counters),
    Real(&'a real_kube::AuditCounter),
}

impl Counts<'_> {
    fn get(&self, verb: &str, resource: &str) -> u64 {
        match self {
            Counts::Sim(c) => c.get(verb, resource),
            Counts::Real(c) => c.get(verb, resource),
        }
    }
    fn writes(&self) -> u64 {
        match self {
            Counts::Sim(c) => c.writes(),
            Counts::Real(c) => c.writes(),
        }
    }
    fn reset(&self) {
        match self {
            Counts::Sim(c) => c.reset(),
            Counts::Real(c) => c.reset(),
        }
    }
}

impl Cluster {
    /// The test's own client (admin).
    fn client(&self) -> kube::Client {
        match self {
            Cluster::Sim(sim) => sim.client(),
            Cluster::Real { admin, .. } => admin.clone(),
        }
    }
    /// The agents' client.
    fn agent_client(&self) -> kube::Client {
        match self {
            Cluster::Sim(sim) => sim.client(),
            Cluster::Real { agent, .. } => agent.clone(),
        }
    }
    fn counters(&self) -> Counts<'_> {
        match self {
            Cluster::Sim(sim) => Counts::Sim(sim.counters()),
            Cluster::Real { writes, .. } => Counts::Real(writes),
        }
    }
}

struct Env {
    gw: Gateway,
    cluster: Cluster,
    control: Control,
    /// The namespace of this test's deployments.
    ns: String,
}

impl Env {
    /// The simulator, for the tests that inject faults.
    fn sim(&self) -> &SimCluster {
        match &self.cluster {
            Cluster::Sim(sim) => sim,
            Cluster::Real { .. } => panic!("a simulator-only test ran on the real API server"),
        }
    }
}

async fn env_with(config: SimConfig) -> Env {
    ds::telemetry::init_logging();
    let gw = Gateway::start().await;
    let sim = SimCluster::start(config).await.expect("sim starts");
    let control = gw.control();
    Env {
        gw,
        cluster: Cluster::Sim(sim),
        control,
        ns: NS.to_string(),
    }
}

async fn env(backend: Backend) -> Env {
    match backend {
        Backend::Sim => {
            env_with(SimConfig {
                rollout_delay: Duration::from_millis(200),
                ..Default::default()
            })
            .await
        }
        Backend::Real => {
            ds::telemetry::init_logging();
            let kube = real_kube::shared();
            let ns = kube.namespace("agent").await;
            let gw = Gateway::start().await;
            let control = gw.control();
            Env {
                gw,
                cluster: Cluster::Real {
                    admin: kube.client().await,
                    agent: kube.agent_client().await,
                    writes: kube.audit(real_kube::AGENT_USER, &ns),
                },
                control,
                ns,
            }
        }
    }
}

fn select(id: &str) -> proto::GetDeploymentRequest {
    proto::GetDeploymentRequest {
        deployment: id.to_string(),
        ..Default::default()
    }
}

impl Env {
    /// Creates a Service named `name` that is not the agent's (another team's).
    async fn foreign_service(&self, ns: &str, name: &str) -> Service {
        let foreign: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"team": "other"}},
            "spec": {"ports": [{"port": 80}], "selector": {"app": "other"}},
        }))
        .unwrap();
        self.services(ns)
            .create(&PostParams::default(), &foreign)
            .await
            .unwrap()
    }

    /// Creates a deployer; returns `(id, token)`.
    async fn deployer(&mut self, name: &str) -> (String, String) {
        let r = self
            .control
            .create_deployer(proto::CreateDeployerRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("create deployer")
            .into_inner();
        (r.deployer.expect("deployer").id, r.token)
    }

    /// Creates a deployment; returns its ID.
    async fn deploy(
        &mut self,
        deployer: &str,
        name: &str,
        ns: &str,
        spec: DeploymentSpec,
    ) -> String {
        let view = self
            .control
            .create_deployment(proto::CreateDeploymentRequest {
                deployer: deployer.into(),
                name: name.into(),
                namespace: ns.into(),
                spec: Some(spec.into()),
            })
            .await
            .expect("create deployment")
            .into_inner();
        view.deployment.expect("deployment").id
    }

    async fn update(&mut self, id: &str, f: impl FnOnce(&mut proto::UpdateDeploymentRequest)) {
        let mut req = proto::UpdateDeploymentRequest {
            selector: Some(select(id)),
            ..Default::default()
        };
        f(&mut req);
        self.control
            .update_deployment(req)
            .await
            .expect("update deployment");
    }

    async fn delete(&mut self, id: &str) {
        self.control
            .delete_deployment(proto::DeleteDeploymentRequest {
                selector: Some(select(id)),
            })
            .await
            .expect("delete deployment");
    }

    async fn status(&mut self, id: &str) -> proto::DeploymentStatus {
        self.control
            .get_deployment(select(id))
            .await
            .expect("get deployment")
            .into_inner()
            .status
            .unwrap_or_default()
    }

    /// Waits until the gateway's status for the deployment satisfies `f`.
    async fn wait_status(
        &mut self,
        id: &str,
        what: &str,
        f: impl Fn(&proto::DeploymentStatus) -> bool,
    ) -> proto::DeploymentStatus {
        let start = tokio::time::Instant::now();
        loop {
            let s = self.status(id).await;
            if f(&s) {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; last status {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the gateway shows `phase` for the deployment.
    async fn wait_phase(&mut self, id: &str, phase: Phase) -> proto::DeploymentStatus {
        let start = tokio::time::Instant::now();
        loop {
            let s = self.status(id).await;
            if s.phase == phase as i32 {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {phase:?}; last status {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn args(&self, token: &str) -> AgentArgs {
        let mut a = ds_test_support::agent_args(&self.gw.url(), token);
        a.proxy_image = PROXY_IMAGE.into();
        a
    }

    async fn agent(&self, token: &str) -> RunningAgent {
        self.agent_with(self.args(token)).await
    }

    async fn agent_with(&self, args: AgentArgs) -> RunningAgent {
        ds_test_support::start_agent(args, self.cluster.agent_client()).await
    }

    fn deployments(&self, ns: &str) -> Api<Deployment> {
        Api::namespaced(self.cluster.client(), ns)
    }

    fn services(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.cluster.client(), ns)
    }

    fn ingresses(&self, ns: &str) -> Api<Ingress> {
        Api::namespaced(self.cluster.client(), ns)
    }

    async fn wait_deployment(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        f: impl Fn(&Deployment) -> bool,
    ) -> Deployment {
        let api = self.deployments(ns);
        eventually(what, || async {
            api.get_opt(name).await.ok().flatten().filter(|d| f(d))
        })
        .await
    }

    async fn wait_gone(&self, ns: &str, name: &str) {
        let (d, s, i) = (self.deployments(ns), self.services(ns), self.ingresses(ns));
        eventually("objects to be deleted", || async {
            let gone = matches!(d.get_opt(name).await, Ok(None))
                && matches!(s.get_opt(name).await, Ok(None))
                && matches!(i.get_opt(name).await, Ok(None));
            gone.then_some(())
        })
        .await;
    }
}

/// What one `ds` run printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Env {
    /// `ds ARGS` against the test's gateway, with a private config path.
    fn ds(&self, args: &[&str]) -> tokio::process::Command {
        let bin = std::env::var_os("DS_TEST_BIN")
            .map_or_else(|| env!("CARGO_BIN_EXE_ds").into(), std::path::PathBuf::from);
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args)
            .env("DS_GATEWAY", self.gw.url())
            .env("DS_API_KEY", &self.gw.admin_key)
            .env("DS_CONFIG", self.gw.dir().join("ds-config.yaml"))
            .env("NO_COLOR", "1")
            .env_remove("DS_CA_CERT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run_ds(&self, args: &[&str]) -> Ran {
        let out = tokio::time::timeout(DEADLINE * 2, self.ds(args).output())
            .await
            .unwrap_or_else(|_| panic!("ds {args:?} did not finish"))
            .expect("ds runs");
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Ran {
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "ds failed: {}{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }
}

/// The pod template's containers, the model's first.
fn containers(d: &Deployment) -> &[Container] {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
}

fn image_of(d: &Deployment) -> String {
    containers(d)[0].image.clone().unwrap_or_default()
}

/// The model-proxy sidecar, when the pod has one.
fn sidecar(d: &Deployment) -> Option<&Container> {
    containers(d).iter().find(|c| c.name == PROXY_CONTAINER)
}

fn labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> std::collections::BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn uid(d: &Deployment) -> String {
    d.metadata.uid.clone().unwrap()
}

/// Waits until the agent has run at least `n` more reconcile passes.
async fn passes(agent: &RunningAgent, n: u64) {
    let count = |text: String| {
        text.lines()
            .find(|l| l.starts_with("ds_agent_reconcile_runs_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let start = count(agent.metrics_text());
    eventually("more reconcile passes", || async {
        (count(agent.metrics_text()) >= start + n).then_some(())
    })
    .await;
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect health");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

// === create, update, delete ===

async fn create_makes_owned_objects_and_reports_available(b: Backend) {
    // Rule 1: every object carries managed-by, the owner (deployer ID) and deployment ID.
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (deployer, token) = e.deployer("c1").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy(
            "c1",
            "iris",
            ns,
            DeploymentSpec::test("iris")
                .replicas(2)
                .host("iris.example.com"),
        )
        .await;
    let d = e
        .wait_deployment(ns, "iris", "the Deployment", |_| true)
        .await;
    // The agent applies the three objects one after the other.
    let s = eventually("the Service", || async {
        e.services(ns).get_opt("iris").await.ok().flatten()
    })
    .await;
    let i = eventually("the Ingress", || async {
        e.ingresses(ns).get_opt("iris").await.ok().flatten()
    })
    .await;
    for meta in [&d.metadata, &s.metadata, &i.metadata] {
        let l = labels(meta);
        assert_eq!(l[MANAGED_BY_LABEL], "ds-deployer");
        assert_eq!(l[OWNER_LABEL], deployer);
        assert_eq!(l[DEPLOYMENT_ID_LABEL], id);
    }
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    let status = e.wait_phase(&id, Phase::Available).await;
    assert_eq!(status.available_replicas, 2);
    assert_eq!(status.endpoint, "http://iris.example.com/");
    assert!(status.applied_revision > 0);
    assert!(agent.is_ready());
    // The agent's heartbeat: `ds deployer ls` shows it online with version and cluster.
    let shown = eventually("the deployer online", || {
        let mut control = e.control.clone();
        async move {
            let d = control
                .get_deployer(proto::GetDeployerRequest {
                    deployer: "c1".into(),
                })
                .await
                .ok()?
                .into_inner();
            (d.state == proto::DeployerState::Online as i32).then_some(d)
        }
    })
    .await;
    assert_eq!(shown.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(shown.cluster, "test");
    agent.shutdown().await;
}

async fn image_and_replica_change_update_the_same_deployment_in_place(b: Backend) {
    // Rule 6: in-place rolling update through server-side apply, never delete-and-recreate.
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("u1").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy("u1", "iris", ns, DeploymentSpec::test("iris"))
        .await;
    let before = e
        .wait_deployment(ns, "iris", "the Deployment", |_| true)
        .await;
    e.wait_phase(&id, Phase::Available).await;
    e.update(&id, |r| {
        r.image = Some("tensorflow/serving:2.16.0".into());
        r.replicas = Some(3);
    })
    .await;
    let after = e
        .wait_deployment(ns, "iris", "the new image", |d| {
            image_of(d) == "tensorflow/serving:2.16.0"
        })
        .await;
    assert_eq!(uid(&after), uid(&before), "same object, updated in place");
    assert_eq!(after.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(e.cluster.counters().get("delete", "deployments"), 0);
    assert_eq!(
        e.cluster.counters().get("create", "deployments"),
        0,
        "writes are server-side apply"
    );
    // Controllers record their own Update entries (the deployment controller's revision
    // annotation, status); every apply is the agent's, under one manager.
    let managers: Vec<String> = after
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(
        managers,
        vec!["ds-deployer".to_string()],
        "one field manager"
    );
    // The rollout of the new template completes: Available with the new replica count.
    e.wait_status(&id, "Available with 3 replicas", |s| {
        s.phase == Phase::Available as i32 && s.available_replicas == 3 && s.updated_replicas == 3
    })
    .await;
    agent.shutdown().await;
}

async fn delete_removes_the_objects(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("d1").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy(
            "d1",
            "iris",
            ns,
            DeploymentSpec::test("iris").host("iris.example.com"),
        )
        .await;
    e.wait_deployment(ns, "iris", "the Deployment", |_| true)
        .await;
    eventually("the Ingress", || async {
        e.ingresses(ns).get_opt("iris").await.ok().flatten()
    })
    .await;
    e.delete(&id).await;
    e.wait_gone(ns, "iris").await;
    agent.shutdown().await;
}

async fn removing_the_host_deletes_only_the_ingress(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("h1").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy(
            "h1",
            "iris",
            ns,
            DeploymentSpec::test("iris").host("iris.example.com"),
        )
        .await;
    let d = e
        .wait_deployment(ns, "iris", "the Deployment", |_| true)
        .await;
    eventually("the Ingress", || async {
        e.ingresses(ns).get_opt("iris").await.ok().flatten()
    })
    .await;
    e.update(&id, |r| r.host = Some(String::new())).await;
    eventually("the Ingress to go", || async {
        matches!(e.ingresses(ns).get_opt("iris").await, Ok(None)).then_some(())
    })
    .await;
    let still = e.deployments(ns).get("iris").await.unwrap();
    assert_eq!(uid(&still), uid(&d));
    assert!(e.services(ns).get_opt("iris").await.unwrap().is_some());
    agent.shutdown().await;
}

async fn proxy_toggle_updates_the_deployment_in_place(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("p1").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy("p1", "iris", ns, DeploymentSpec::test("iris").proxy(true))
        .await;
    let has_proxy = |d: &Deployment| sidecar(d).is_some();
    let before = e
        .wait_deployment(ns, "iris", "the Deployment with the proxy", has_proxy)
        .await;
    let target = |s: &Service| {
        s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .target_port
            .clone()
    };
    let svc = eventually("the Service", || async {
        e.services(ns).get_opt("iris").await.ok().flatten()
    })
    .await;
    assert_eq!(
        target(&svc),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9501))
    );
    e.update(&id, |r| r.proxy_enabled = Some(false)).await;
    let after = e
        .wait_deployment(ns, "iris", "the proxy to go", |d| !has_proxy(d))
        .await;
    assert_eq!(uid(&after), uid(&before));
    let svc = eventually("the Service to target the model port", || async {
        e.services(ns).get("iris").await.ok().filter(|s| {
            target(s) == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8501))
        })
    })
    .await;
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8501);
    agent.shutdown().await;
}

async fn query_log_toggle_updates_the_sidecar_in_place(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("q1").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy("q1", "iris", ns, DeploymentSpec::test("iris").proxy(true))
        .await;
    let sidecar_args = |d: &Deployment| sidecar(d).and_then(|c| c.args.clone()).unwrap_or_default();
    let logs_to_stdout = |d: &Deployment| {
        sidecar_args(d)
            .windows(2)
            .any(|w| w == ["--query-log", "-"])
    };
    let before = e
        .wait_deployment(ns, "iris", "the Deployment with the proxy", |d| {
            !sidecar_args(d).is_empty()
        })
        .await;
    assert!(!logs_to_stdout(&before), "query logs are off by default");
    e.wait_phase(&id, Phase::Available).await;
    let service_before = e.services(ns).get("iris").await.unwrap().spec;

    e.update(&id, |r| r.proxy_query_log = Some(true)).await;
    let after = e
        .wait_deployment(ns, "iris", "the sidecar to log queries", logs_to_stdout)
        .await;
    assert_eq!(uid(&after), uid(&before), "same object, updated in place");
    let mut args = sidecar_args(&after);
    let at = args.iter().position(|a| a == "--query-log").unwrap();
    args.drain(at..at + 2);
    assert_eq!(args, sidecar_args(&before), "only --query-log was added");
    assert_eq!(e.cluster.counters().get("delete", "deployments"), 0);
    assert_eq!(e.cluster.counters().get("create", "deployments"), 0);
    // The new pods roll out behind the same Service (only its revision annotation moves).
    let revision: u64 = after.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION]
        .parse()
        .unwrap();
    e.wait_status(&id, "Available with the new template", |s| {
        s.applied_revision >= revision && s.phase == Phase::Available as i32
    })
    .await;
    assert_eq!(
        e.services(ns).get("iris").await.unwrap().spec,
        service_before
    );

    e.update(&id, |r| r.proxy_query_log = Some(false)).await;
    let off = e
        .wait_deployment(ns, "iris", "query logs to stop", |d| !logs_to_stdout(d))
        .await;
    assert_eq!(uid(&off), uid(&before));
    assert_eq!(sidecar_args(&off), sidecar_args(&before));
    agent.shutdown().await;
}

async fn proxy_protocol_updates_the_sidecar_in_place(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("p2").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy("p2", "iris", ns, DeploymentSpec::test("iris").proxy(true))
        .await;
    let sidecar_args = |d: &Deployment| sidecar(d).and_then(|c| c.args.clone()).unwrap_or_default();
    let speaks_v2 = |d: &Deployment| {
        sidecar_args(d)
            .windows(2)
            .any(|w| w == ["--protocol", "v2"])
    };
    let before = e
        .wait_deployment(ns, "iris", "the Deployment with the proxy", |d| {
            !sidecar_args(d).is_empty()
        })
        .await;
    assert!(
        !sidecar_args(&before).contains(&"--protocol".to_string()),
        "auto adds no flag"
    );

    e.update(&id, |r| r.proxy_protocol = Some("v2".into()))
        .await;
    let after = e
        .wait_deployment(ns, "iris", "the sidecar to speak v2", speaks_v2)
        .await;
    assert_eq!(uid(&after), uid(&before), "same object, updated in place");
    let mut args = sidecar_args(&after);
    let at = args.iter().position(|a| a == "--protocol").unwrap();
    args.drain(at..at + 2);
    assert_eq!(args, sidecar_args(&before), "only --protocol was added");
    assert_eq!(e.cluster.counters().get("delete", "deployments"), 0);
    assert_eq!(e.cluster.counters().get("create", "deployments"), 0);

    e.update(&id, |r| r.proxy_protocol = Some("auto".into()))
        .await;
    let back = e
        .wait_deployment(ns, "iris", "the flag to go", |d| !speaks_v2(d))
        .await;
    assert_eq!(uid(&back), uid(&before));
    assert_eq!(sidecar_args(&back), sidecar_args(&before));
    agent.shutdown().await;
}

// === the contract ===

async fn foreign_object_with_the_desired_name_is_never_touched(b: Backend) {
    // Rule 2: no owner label (or another's) → never modified or deleted; "name taken".
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("f1").await;
    let foreign = e.foreign_service(ns, "iris").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy("f1", "iris", ns, DeploymentSpec::test("iris"))
        .await;
    let status = e.wait_phase(&id, Phase::Failed).await;
    assert!(
        status.last_error.contains("name taken"),
        "{}",
        status.last_error
    );
    passes(&agent, 3).await;
    let now = e.services(ns).get("iris").await.unwrap();
    assert_eq!(
        now.metadata.resource_version, foreign.metadata.resource_version,
        "untouched"
    );
    assert_eq!(e.cluster.counters().get("patch", "services"), 0);
    // Deleting the deployment does not delete the foreign object either.
    e.delete(&id).await;
    passes(&agent, 3).await;
    let now = e.services(ns).get("iris").await.unwrap();
    assert_eq!(now.metadata.uid, foreign.metadata.uid);
    assert_eq!(e.cluster.counters().get("delete", "services"), 0);
    agent.shutdown().await;
}

async fn safe_start_prunes_nothing_while_the_gateway_is_down_then_catches_up(b: Backend) {
    // Rule 3 and rule 8: no complete snapshot, no prune; catching up when it comes.
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("s1").await;
    let first = e.agent(&token).await;
    let keep = e
        .deploy("s1", "keep", ns, DeploymentSpec::test("keep"))
        .await;
    let gone = e
        .deploy("s1", "gone", ns, DeploymentSpec::test("gone"))
        .await;
    let kept = e.wait_deployment(ns, "keep", "keep", |_| true).await;
    e.wait_deployment(ns, "gone", "gone", |_| true).await;
    first.shutdown().await;
    // While no agent runs: one deployment is removed, another added.
    e.delete(&gone).await;
    let added = e
        .deploy("s1", "added", ns, DeploymentSpec::test("added"))
        .await;
    e.gw.stop().await;
    e.cluster.counters().reset();
    let agent = e.agent(&token).await;
    // The agent keeps retrying the gateway; the cluster sees no write meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!agent.is_ready());
    assert_eq!(
        e.cluster.counters().writes(),
        0,
        "nothing written or pruned without a snapshot"
    );
    assert!(e.deployments(ns).get_opt("gone").await.unwrap().is_some());
    e.gw.restart().await;
    e.wait_gone(ns, "gone").await;
    e.wait_deployment(ns, "added", "the deployment added meanwhile", |_| true)
        .await;
    let still = e.deployments(ns).get("keep").await.unwrap();
    assert_eq!(uid(&still), uid(&kept));
    let _ = (keep, added);
    agent.shutdown().await;
}

async fn restart_prunes_only_owned_objects_absent_from_the_snapshot(b: Backend) {
    // Rule 4: prune removes an owned object only when its deployment is absent from a
    // complete snapshot; others' objects stay.
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("r1").await;
    let a = e.agent(&token).await;
    let one = e.deploy("r1", "one", ns, DeploymentSpec::test("one")).await;
    let two = e.deploy("r1", "two", ns, DeploymentSpec::test("two")).await;
    e.wait_phase(&one, Phase::Available).await;
    e.wait_phase(&two, Phase::Available).await;
    let one_before = e.deployments(ns).get("one").await.unwrap();
    a.shutdown().await;
    // A labelled-but-unowned object (someone copied our managed-by label).
    let stranger: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stranger", "labels": {MANAGED_BY_LABEL: "ds-deployer"}},
        "spec": {"selector": {"matchLabels": {"app": "s"}}, "template": {
            "metadata": {"labels": {"app": "s"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    e.deployments(ns)
        .create(&PostParams::default(), &stranger)
        .await
        .unwrap();
    e.delete(&two).await;
    e.cluster.counters().reset();
    let b = e.agent(&token).await;
    e.wait_gone(ns, "two").await;
    eventually("ready", || async { b.is_ready().then_some(()) }).await;
    passes(&b, 2).await;
    let one_after = e.deployments(ns).get("one").await.unwrap();
    assert_eq!(
        one_after.metadata.resource_version, one_before.metadata.resource_version,
        "untouched"
    );
    assert!(
        e.deployments(ns)
            .get_opt("stranger")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        e.cluster.counters().get("patch", "*"),
        0,
        "nothing re-applied"
    );
    b.shutdown().await;
}

async fn two_deployers_in_one_cluster_stay_apart(b: Backend) {
    // Rule 5.
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (x_id, x_token) = e.deployer("x").await;
    let (y_id, y_token) = e.deployer("y").await;
    let ax = e.agent(&x_token).await;
    let ay = e.agent(&y_token).await;
    let x1 = e
        .deploy("x", "x-model", ns, DeploymentSpec::test("x-model"))
        .await;
    let y1 = e
        .deploy("y", "y-model", ns, DeploymentSpec::test("y-model"))
        .await;
    let yd = e
        .wait_deployment(ns, "y-model", "y's deployment", |_| true)
        .await;
    let xd = e
        .wait_deployment(ns, "x-model", "x's deployment", |_| true)
        .await;
    assert_eq!(labels(&xd.metadata)[OWNER_LABEL], x_id);
    assert_eq!(labels(&yd.metadata)[OWNER_LABEL], y_id);
    // The same name in the same namespace for y: x's object is not y's to take.
    let clash = e
        .deploy(
            "y",
            "x-model",
            ns,
            DeploymentSpec::test("x-model").image("clash:1"),
        )
        .await;
    let status = e.wait_phase(&clash, Phase::Failed).await;
    assert!(
        status.last_error.contains("name taken"),
        "{}",
        status.last_error
    );
    // x removes everything it has: y's objects stay.
    e.delete(&x1).await;
    e.wait_gone(ns, "x-model").await;
    passes(&ay, 2).await;
    let y_after = e.deployments(ns).get("y-model").await.unwrap();
    assert_eq!(uid(&y_after), uid(&yd));
    assert_eq!(
        y_after.metadata.resource_version,
        e.deployments(ns)
            .get("y-model")
            .await
            .unwrap()
            .metadata
            .resource_version
    );
    let _ = y1;
    ax.shutdown().await;
    ay.shutdown().await;
}

async fn unchanged_resync_makes_zero_writes(b: Backend) {
    // Rule 7.
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("z1").await;
    let agent = e.agent(&token).await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push(
            e.deploy(
                "z1",
                name,
                ns,
                DeploymentSpec::test(name).host(&format!("{name}.example.com")),
            )
            .await,
        );
    }
    for id in &ids {
        e.wait_phase(id, Phase::Available).await;
    }
    passes(&agent, 2).await;
    let before = e.cluster.counters().writes();
    // Several full passes (resync is 500 ms here), each with a List from the gateway.
    passes(&agent, 4).await;
    assert_eq!(
        e.cluster.counters().writes(),
        before,
        "a resync with nothing changed writes nothing"
    );
    agent.shutdown().await;
}

async fn drift_is_corrected_within_one_resync(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("dr").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy("dr", "iris", ns, DeploymentSpec::test("iris").replicas(2))
        .await;
    e.wait_phase(&id, Phase::Available).await;
    // Someone scales it by hand with their own field manager.
    let patch = serde_json::json!({"spec": {"replicas": 5}});
    e.deployments(ns)
        .patch("iris", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    e.wait_deployment(ns, "iris", "the replica count restored", |d| {
        d.spec.as_ref().unwrap().replicas == Some(2)
    })
    .await;
    agent.shutdown().await;
}

async fn gateway_restart_leaves_workloads_and_the_agent_catches_up(b: Backend) {
    // Rule 8: gateway unreachable → workloads untouched; reconnect and catch up.
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("g1").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy("g1", "iris", ns, DeploymentSpec::test("iris"))
        .await;
    let before = e
        .wait_deployment(ns, "iris", "the Deployment", |_| true)
        .await;
    e.wait_phase(&id, Phase::Available).await;
    e.gw.stop().await;
    e.cluster.counters().reset();
    passes(&agent, 3).await;
    assert_eq!(
        e.cluster.counters().writes(),
        0,
        "nothing touched while the gateway is away"
    );
    e.gw.restart().await;
    e.control = e.gw.control();
    e.update(&id, |r| r.image = Some("tensorflow/serving:2.17.0".into()))
        .await;
    let after = e
        .wait_deployment(ns, "iris", "the change made after the restart", |d| {
            image_of(d) == "tensorflow/serving:2.17.0"
        })
        .await;
    assert_eq!(uid(&after), uid(&before));
    agent.shutdown().await;
}

async fn leader_election_one_writer_and_failover(b: Backend) {
    // Rule 9.
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("le").await;
    let mut args = e.args(&token);
    args.leader_elect = true;
    args.lease_duration = Duration::from_secs(2);
    let mut a1 = args.clone();
    a1.instance = Some("one".into());
    let mut a2 = args;
    a2.instance = Some("two".into());
    let one = e.agent_with(a1).await;
    let two = e.agent_with(a2).await;
    let id = e
        .deploy("le", "iris", ns, DeploymentSpec::test("iris"))
        .await;
    e.wait_deployment(ns, "iris", "the Deployment", |_| true)
        .await;
    eventually("exactly one leader", || async {
        (one.is_leader() != two.is_leader()).then_some(())
    })
    .await;
    let (leader, standby) = if one.is_leader() {
        (one, two)
    } else {
        (two, one)
    };
    assert!(!standby.is_leader());
    let writes = |a: &RunningAgent| {
        a.metrics_text()
            .lines()
            .filter(|l| l.starts_with("ds_agent_writes_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert_eq!(writes(&standby), 0, "the standby never writes");
    // The leader dies without releasing the Lease; the standby takes over after it expires.
    leader.kill().await;
    eventually("the standby to lead", || async {
        standby.is_leader().then_some(())
    })
    .await;
    e.update(&id, |r| r.image = Some("tensorflow/serving:2.18.0".into()))
        .await;
    e.wait_deployment(ns, "iris", "the new leader's write", |d| {
        image_of(d) == "tensorflow/serving:2.18.0"
    })
    .await;
    assert!(writes(&standby) > 0);
    standby.shutdown().await;
}

// === failures and faults ===

#[tokio::test]
async fn failing_image_reports_failed() {
    let mut e = env_with(SimConfig {
        rollout_delay: Duration::from_millis(200),
        failing_image: Some("^broken/".into()),
        ..Default::default()
    })
    .await;
    let (_, token) = e.deployer("fi").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy(
            "fi",
            "iris",
            NS,
            DeploymentSpec::test("iris").image("broken/model:1"),
        )
        .await;
    let status = e.wait_phase(&id, Phase::Failed).await;
    assert!(!status.last_error.is_empty());
    agent.shutdown().await;
}

async fn missing_namespace_is_reported_unless_create_namespaces(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let models = format!("{ns}-models");
    let (_, token) = e.deployer("ns").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy("ns", "iris", &models, DeploymentSpec::test("iris"))
        .await;
    let status = e.wait_phase(&id, Phase::Failed).await;
    assert!(
        status
            .last_error
            .contains(&format!("namespace {models} not found")),
        "{}",
        status.last_error
    );
    agent.shutdown().await;
    let mut args = e.args(&token);
    args.create_namespaces = true;
    let agent = e.agent_with(args).await;
    e.wait_deployment(
        &models,
        "iris",
        "the Deployment in the new namespace",
        |_| true,
    )
    .await;
    e.wait_phase(&id, Phase::Available).await;
    agent.shutdown().await;
}

#[tokio::test]
async fn api_errors_and_dropped_watches_still_converge() {
    use ds_kube_sim::faults::{FaultAnswer, Limit};
    let mut e = env(Backend::Sim).await;
    let (_, token) = e.deployer("ft").await;
    let f = e.sim().faults();
    f.fail(
        "patch",
        "deployments",
        FaultAnswer::Conflict,
        Limit::Count(2),
    );
    f.fail("patch", "services", FaultAnswer::Internal, Limit::Count(2));
    f.fail(
        "patch",
        "deployments",
        FaultAnswer::TooManyRequests {
            retry_after_secs: 0,
        },
        Limit::Count(2),
    );
    f.drop_watches_after_events(3);
    let agent = e.agent(&token).await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ids.push(e.deploy("ft", name, NS, DeploymentSpec::test(name)).await);
    }
    for id in &ids {
        e.wait_phase(id, Phase::Available).await;
    }
    e.sim().faults().gone_on_next_watch();
    e.update(&ids[0], |r| {
        r.image = Some("tensorflow/serving:2.19.0".into())
    })
    .await;
    e.wait_deployment(NS, "a", "the change through faults", |d| {
        image_of(d) == "tensorflow/serving:2.19.0"
    })
    .await;
    agent.shutdown().await;
}

/// A container that keeps crashing fails the deployment with `CrashLoopBackOff` and its
/// restarts, on the real API server (the fake node crash-loops `…/crashes:…` images).
#[tokio::test]
async fn real_crash_loop_fails_with_its_reason_and_restarts() {
    let mut e = env(Backend::Real).await;
    let ns = e.ns.clone();
    let (_, token) = e.deployer("crashy").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy(
            "crashy",
            "iris",
            &ns,
            DeploymentSpec::test("iris").image("example.com/models/crashes:1"),
        )
        .await;
    let s = e.wait_phase(&id, Phase::Failed).await;
    assert!(s.reason.starts_with("CrashLoopBackOff: pod iris-"), "{s:?}");
    assert!(s.reason.contains("last exit: Error, code 1"), "{s:?}");
    let pod = s.pods.first().expect("its pod is reported");
    assert!(pod.restarts > 0 && !pod.ready, "{pod:?}");
    agent.shutdown().await;
}

/// The gateway's status matches the cluster again within one resync period, through
/// dropped watches and a relist, even when the agent believes it already sent the current
/// status: here a stale report (as a lost, reordered or restored one leaves it) is written
/// with the deployer's token, and only the agent's periodic full report replaces it.
#[tokio::test]
async fn gateway_status_converges_within_a_resync_after_faults() {
    let mut e = env(Backend::Sim).await;
    let (_, token) = e.deployer("cv").await;
    let mut args = e.args(&token);
    args.resync = Duration::from_secs(2);
    let agent = e.agent_with(args).await;
    let id = e
        .deploy("cv", "iris", NS, DeploymentSpec::test("iris"))
        .await;
    let good = e.wait_phase(&id, Phase::Available).await;
    let f = e.sim().faults();
    f.drop_watches_after_events(2);
    f.gone_on_next_watch();
    let mut stale = ds_test_support::agent_service(&e.gw.url(), &token);
    stale
        .report_status(proto::StatusReport {
            agent: Some(proto::AgentInfo {
                version: "stale".into(),
                cluster: "default".into(),
                ..Default::default()
            }),
            statuses: vec![proto::DeploymentStatus {
                deployment_id: id.clone(),
                phase: Phase::Progressing as i32,
                applied_revision: good.applied_revision,
                ..Default::default()
            }],
            objects: None,
        })
        .await
        .expect("stale report stored");
    assert_eq!(e.status(&id).await.phase, Phase::Progressing as i32);
    let back = e.wait_phase(&id, Phase::Available).await;
    assert_eq!(back.updated_replicas, good.updated_replicas);
    assert_eq!(back.endpoint, good.endpoint);
    agent.shutdown().await;
}

async fn token_rotation_orphans_nothing(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("tr").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let mut args = e.args("");
    args.token = None;
    args.token_file = Some(token_file.clone());
    let agent = e.agent_with(args.clone()).await;
    let id = e
        .deploy("tr", "iris", ns, DeploymentSpec::test("iris"))
        .await;
    e.wait_phase(&id, Phase::Available).await;
    let before = e.deployments(ns).get("iris").await.unwrap();
    agent.shutdown().await;
    let rotated = e
        .control
        .rotate_deployer_token(proto::RotateDeployerTokenRequest {
            deployer: "tr".into(),
            overlap_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    std::fs::write(&token_file, &rotated.token).unwrap();
    e.cluster.counters().reset();
    let agent = e.agent_with(args).await;
    eventually("ready with the new token", || async {
        agent.is_ready().then_some(())
    })
    .await;
    passes(&agent, 2).await;
    assert_eq!(
        e.cluster.counters().writes(),
        0,
        "same owner: nothing pruned or rewritten"
    );
    let after = e.deployments(ns).get("iris").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    agent.shutdown().await;
}

/// The deployer's objects anywhere in the cluster, as `kubectl get -A -l` lists them.
async fn owned_anywhere(client: &kube::Client, deployer_id: &str) -> Vec<String> {
    let lp =
        kube::api::ListParams::default().labels(&ds_core::ownership::owner_selector(deployer_id));
    let mut names = Vec::new();
    for d in Api::<Deployment>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
    {
        names.push(format!(
            "deployment/{}",
            d.metadata.name.unwrap_or_default()
        ));
    }
    for s in Api::<Service>::all(client.clone()).list(&lp).await.unwrap() {
        names.push(format!("service/{}", s.metadata.name.unwrap_or_default()));
    }
    for i in Api::<Ingress>::all(client.clone()).list(&lp).await.unwrap() {
        names.push(format!("ingress/{}", i.metadata.name.unwrap_or_default()));
    }
    names
}

/// `ds_gateway_auth_failures_total` from the gateway's `/metrics`.
async fn gateway_auth_failures(gw: &Gateway) -> u64 {
    let (_, body) = http_get(gw.addr, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with("ds_gateway_auth_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn deployer_rm_cascade_removes_every_object_then_revokes_the_token(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (id, token) = e.deployer("leaving").await;
    // Another deployer's objects in the same cluster are none of its business.
    let (_, other_token) = e.deployer("staying").await;
    let agent = e.agent(&token).await;
    let other = e.agent(&other_token).await;
    let a = e
        .deploy(
            "leaving",
            "iris",
            ns,
            DeploymentSpec::test("iris").host("iris.example.com"),
        )
        .await;
    let b2 = e
        .deploy("leaving", "wine", ns, DeploymentSpec::test("wine"))
        .await;
    let kept = e
        .deploy("staying", "kept", ns, DeploymentSpec::test("kept"))
        .await;
    for id in [&a, &b2, &kept] {
        e.wait_phase(id, Phase::Available).await;
    }
    let client = e.cluster.client();
    let before = owned_anywhere(&client, &id).await;
    assert_eq!(
        before.len(),
        5,
        "two Deployments, two Services, one Ingress: {before:?}"
    );

    let mut rm = tokio::process::Command::new(
        std::env::var_os("DS_TEST_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_ds").into()),
    );
    rm.args(["deployer", "rm", "leaving", "--cascade"])
        .env("DS_GATEWAY", e.gw.url())
        .env("DS_API_KEY", &e.gw.admin_key)
        .env("DS_CONFIG", e.gw.dir().join("no-config.yaml"))
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(DEADLINE * 2, rm.output())
        .await
        .expect("ds deployer rm --cascade finishes")
        .expect("ds runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("waiting for the agent"),
        "progress shown: {stderr}"
    );
    assert!(stdout.contains("deleted"), "{stdout}");

    // Gone from the cluster before the deployer went, and its token refused now.
    let left = owned_anywhere(&client, &id).await;
    assert!(left.is_empty(), "the deployer's objects are left: {left:?}");
    let err = ds_test_support::agent_service(&e.gw.url(), &token)
        .list(proto::ListRequest {})
        .await
        .expect_err("the token is refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(e.deployments(ns).get_opt("kept").await.unwrap().is_some());
    assert_eq!(e.status(&kept).await.phase, Phase::Available as i32);

    // The refused agent backs off to a long interval instead of retrying fast.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refusals = gateway_auth_failures(&e.gw).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        gateway_auth_failures(&e.gw).await,
        refusals,
        "the agent of a deleted deployer kept retrying"
    );
    agent.shutdown().await;
    other.shutdown().await;
}

// === operations ===

#[tokio::test]
async fn health_ready_and_metrics_endpoints() {
    let mut e = env(Backend::Sim).await;
    let (_, token) = e.deployer("op").await;
    e.gw.stop().await;
    let agent = e.agent(&token).await;
    let addr = agent.health_addr();
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(
        http_get(addr, "/readyz").await.0,
        503,
        "not ready before a snapshot"
    );
    e.gw.restart().await;
    eventually("ready", || async {
        (http_get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "ds_agent_reconcile_runs_total",
        "ds_agent_reconcile_failures_total",
        "ds_agent_reconcile_duration_seconds",
        "ds_agent_gateway_connected 1",
        "ds_agent_desired_deployments",
        "ds_agent_owned_objects",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn tls_gateway_with_a_ca_bundle() {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    ds::telemetry::init_logging();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf
        .signed_by(&leaf_key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_file) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    std::fs::write(&cert, leaf_cert.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let mut gargs = gateway_args(dir.path(), "127.0.0.1:0".parse().unwrap());
    gargs.insecure = false;
    gargs.tls_cert = Some(cert);
    gargs.tls_key = Some(key);
    let gw = RunningGateway::start(gargs).await.expect("TLS gateway");
    let url = format!("https://localhost:{}", gw.addr.port());
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    let bearer = Bearer::from_plain(&gw.admin_key);
    let mut control = ControlServiceClient::with_interceptor(channel, bearer);
    let token = control
        .create_deployer(proto::CreateDeployerRequest {
            name: "tls".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "tls".into(),
            name: "iris".into(),
            namespace: NS.into(),
            spec: Some(DeploymentSpec::test("iris").into()),
        })
        .await
        .unwrap();
    let sim = SimCluster::start(SimConfig::default()).await.unwrap();
    let mut args = AgentArgs::new(url);
    args.token = Some(token.into());
    args.ca_cert = Some(ca_file);
    args.listen_health = "127.0.0.1:0".parse().unwrap();
    let agent = RunningAgent::start_with_client(args, sim.client())
        .await
        .expect("agent starts");
    let api: Api<Deployment> = Api::namespaced(sim.client(), NS);
    eventually("the Deployment over TLS", || async {
        api.get_opt("iris").await.ok().flatten()
    })
    .await;
    agent.shutdown().await;
    sim.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn namespaced_agent_needs_rights_only_in_its_namespaces() {
    let mut e = env(Backend::Sim).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(e.sim().client());
    for ns in ["models", "other"] {
        let n = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        namespaces
            .create(&Default::default(), &n)
            .await
            .expect("create namespace");
    }
    // From here on the API server answers like namespaced RBAC: 403 outside these.
    e.sim()
        .faults()
        .restrict_to_namespaces(Some(vec!["models".into(), "staging".into()]));
    let (_, token) = e.deployer("scoped").await;
    // Created before the agent first reported its namespaces (as after a reinstall with
    // narrower rights): the gateway could not refuse it, so the agent reports it.
    let outside = e
        .deploy("scoped", "wine", "other", DeploymentSpec::test("wine"))
        .await;
    let mut args = e.args(&token);
    args.namespaces = vec!["models".into(), "staging".into()];
    let agent = e.agent_with(args).await;

    let inside = e
        .deploy("scoped", "iris", "models", DeploymentSpec::test("iris"))
        .await;
    let missing = e
        .deploy(
            "scoped",
            "digits",
            "staging",
            DeploymentSpec::test("digits"),
        )
        .await;
    e.wait_phase(&inside, Phase::Available).await;
    let s = e.wait_phase(&outside, Phase::Failed).await;
    assert!(
        s.last_error
            .contains("namespace other is outside this agent's namespaces (models,staging)"),
        "{}",
        s.last_error
    );
    let s = e.wait_phase(&missing, Phase::Failed).await;
    assert!(
        s.last_error.contains("namespace staging not found"),
        "{}",
        s.last_error
    );

    // Once the agent has reported, the gateway refuses new ones outside up front.
    let refused = e
        .control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "scoped".into(),
            name: "beer".into(),
            namespace: "other".into(),
            spec: Some(DeploymentSpec::test("beer").into()),
        })
        .await
        .expect_err("the gateway knows the agent's namespaces");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // Still level-triggered inside its namespaces: a delete prunes.
    e.delete(&inside).await;
    e.wait_gone("models", "iris").await;
    e.sim().faults().restrict_to_namespaces(None);
    assert!(matches!(
        e.deployments("other").get_opt("wine").await,
        Ok(None)
    ));
    agent.shutdown().await;
}

// === issue 14: fencing and per-deployment scheduling (simulator only) ===

/// Write calls the simulator served, Leases left out (the Lease is how the test takes
/// leadership away, and the campaign is not the reconciler).
fn object_writes(sim: &SimCluster) -> u64 {
    let leases: u64 = ["create", "update", "patch", "delete"]
        .iter()
        .map(|v| sim.counters().get(v, "leases"))
        .sum();
    sim.counters().writes() - leases
}

#[tokio::test]
async fn a_replica_that_loses_its_lease_mid_pass_writes_nothing_more() {
    // Rule 9, fencing: the loss stops writes at the next write, not at the end of a pass.
    let mut e = env(Backend::Sim).await;
    let (_, token) = e.deployer("fence").await;
    for i in 0..200 {
        let name = format!("f{i:03}");
        e.deploy("fence", &name, NS, DeploymentSpec::test(&name))
            .await;
    }
    // A slow API server and few workers: the first pass takes seconds.
    e.sim().faults().set_latency(Duration::from_millis(25));
    let mut args = e.args(&token);
    args.leader_elect = true;
    args.lease_name = Some("fence-lease".into());
    args.lease_namespace = NS.into();
    args.lease_duration = Duration::from_secs(3);
    args.concurrency = 4;
    args.resync = Duration::from_secs(300);
    let agent = e.agent_with(args).await;
    eventually("the leader's first writes", || async {
        (agent.is_leader() && object_writes(e.sim()) > 0).then_some(())
    })
    .await;
    // Another holder takes the Lease over and keeps renewing it (a replica on the other side
    // of a partition would).
    let leases: Api<Lease> = Api::namespaced(e.sim().client(), NS);
    let thief = {
        let leases = leases.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(mut l) = leases.get("fence-lease").await {
                    let spec = l.spec.get_or_insert_with(Default::default);
                    spec.holder_identity = Some("thief".into());
                    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
                    let _ = leases
                        .replace("fence-lease", &PostParams::default(), &l)
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    eventually("the agent to observe the loss", || async {
        (!agent.is_leader()).then_some(())
    })
    .await;
    let at_loss = object_writes(e.sim());
    // Long enough for the rest of the pass to have been written, had it gone on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = object_writes(e.sim()) - at_loss;
    thief.abort();
    assert!(
        at_loss < 400,
        "the Lease was lost in the middle of the pass ({at_loss} of 400 writes done)"
    );
    assert_eq!(after, 0, "writes after the loss was observed");
    assert!(agent.metrics_text().contains("ds_agent_leader 0"));
    agent.kill().await;
}

#[tokio::test]
async fn one_broken_deployment_never_slows_the_others() {
    // Per-deployment backoff: a deployment that keeps failing retries on its own schedule
    // while the others are created and updated at once.
    let mut e = env(Backend::Sim).await;
    let (deployer, token) = e.deployer("bk").await;
    // "stuck": held by an object of this deployer whose deployment is gone and whose delete
    // a finalizer holds, so its deployment waits (a transient error) until it goes.
    let stuck: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stuck", "finalizers": ["test.ds.dev/hold"], "labels": {
            MANAGED_BY_LABEL: "ds-deployer", OWNER_LABEL: deployer, DEPLOYMENT_ID_LABEL: "gone"}},
        "spec": {"selector": {"matchLabels": {"app": "stuck"}}, "template": {
            "metadata": {"labels": {"app": "stuck"}},
            "spec": {"containers": [{"name": "c", "image": "old:1"}]}}},
    }))
    .unwrap();
    e.deployments(NS)
        .create(&PostParams::default(), &stuck)
        .await
        .unwrap();
    e.deployments(NS)
        .delete("stuck", &Default::default())
        .await
        .unwrap();
    // "taken": a foreign object (a permanent error, name taken).
    let foreign = e.foreign_service(NS, "taken").await;
    let mut args = e.args(&token);
    // No resync within the test: only each deployment's own retries run it again.
    args.resync = Duration::from_secs(300);
    let agent = e.agent_with(args).await;
    let stuck_id = e
        .deploy("bk", "stuck", NS, DeploymentSpec::test("stuck"))
        .await;
    let taken_id = e
        .deploy("bk", "taken", NS, DeploymentSpec::test("taken"))
        .await;
    let s = e
        .wait_status(&stuck_id, "stuck waiting", |s| {
            s.last_error.contains("waiting for Deployment")
        })
        .await;
    assert_eq!(s.phase, Phase::Pending as i32, "{s:?}");
    e.wait_status(&taken_id, "name taken", |s| {
        s.phase == Phase::Failed as i32 && s.last_error.contains("name taken")
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        let name = format!("ok{i:02}");
        ids.push(e.deploy("bk", &name, NS, DeploymentSpec::test(&name)).await);
    }
    for i in 0..20 {
        e.wait_deployment(NS, &format!("ok{i:02}"), "created", |_| true)
            .await;
    }
    for id in &ids {
        e.update(id, |r| r.image = Some("tensorflow/serving:2.19.0".into()))
            .await;
    }
    for i in 0..20 {
        e.wait_deployment(NS, &format!("ok{i:02}"), "updated", |d| {
            image_of(d) == "tensorflow/serving:2.19.0"
        })
        .await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "20 creates and 20 updates took {took:?} next to two broken deployments"
    );
    let now = e.services(NS).get("taken").await.unwrap();
    assert_eq!(
        now.metadata.resource_version, foreign.metadata.resource_version,
        "the foreign object is untouched"
    );
    // Once the finalizer lets go, the stuck deployment's own retry creates it (the resync
    // is minutes away).
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    e.deployments(NS)
        .patch("stuck", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    e.wait_deployment(
        NS,
        "stuck",
        "the stuck deployment created by its retry",
        |d| labels(&d.metadata).get(DEPLOYMENT_ID_LABEL) == Some(&stuck_id),
    )
    .await;
    agent.shutdown().await;
}

// === logs and describe ===

/// An event about `kind/name` in `ns`, as a controller would record it.
async fn record_event(e: &Env, ns: &str, kind: &str, name: &str, reason: &str) {
    let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "ds-test-"},
        "involvedObject": {"kind": kind, "name": name, "namespace": ns, "apiVersion": "apps/v1"},
        "reason": reason,
        "message": format!("{reason} of {name}"),
        "type": "Warning",
        "count": 2,
        "source": {"component": "ds-test"},
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z",
    }))
    .unwrap();
    Api::namespaced(e.cluster.client(), ns)
        .create(&PostParams::default(), &event)
        .await
        .expect("create event");
}

/// A deployer `c1` with its agent running, and its deployment `iris` of two replicas
/// Available in the test's namespace; the deployment's ID.
async fn two_iris_pods(b: Backend) -> (Env, RunningAgent, String) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let (_, token) = e.deployer("c1").await;
    let agent = e.agent(&token).await;
    let id = e
        .deploy("c1", "iris", &ns, DeploymentSpec::test("iris").replicas(2))
        .await;
    e.wait_phase(&id, Phase::Available).await;
    (e, agent, id)
}

/// `ds deployment describe` shows the deployment's pods and the events of its own objects
/// (not those of a deployment whose name merely starts the same), read by the agent; with
/// no agent connected it still shows the deployment and says why the rest is missing.
async fn describe_shows_the_pods_and_only_this_deployments_events(b: Backend) {
    let (e, agent, id) = two_iris_pods(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    record_event(&e, ns, "Deployment", "iris", "TestOurs").await;
    record_event(&e, ns, "Deployment", "iris-v2", "TestTheirs").await;

    let described = e
        .run_ds(&["deployment", "describe", "iris", "-n", ns, "-o", "json"])
        .await;
    let v: serde_json::Value = serde_json::from_str(described.ok()).expect("JSON");
    assert_eq!(v["deployment"]["id"], id.as_str());
    let pods = v["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 2, "{v}");
    for p in pods {
        assert!(p["name"].as_str().unwrap().starts_with("iris-"), "{p}");
        assert_eq!(p["status"], "Running", "{p}");
        let (ready, of) = p["ready"].as_str().unwrap().split_once('/').unwrap();
        assert_eq!(ready, of, "every container ready: {p}");
    }
    let reasons: Vec<&str> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"TestOurs"), "{reasons:?}");
    assert!(!reasons.contains(&"TestTheirs"), "{reasons:?}");
    if matches!(b, Backend::Real) {
        // The real controllers record the rollout.
        assert!(reasons.contains(&"ScalingReplicaSet"), "{reasons:?}");
    }
    let text = e
        .run_ds(&["deployment", "describe", "iris", "-n", ns])
        .await;
    let text = text.ok();
    assert!(text.contains("Pods:") && text.contains("Events:"), "{text}");
    assert!(text.contains("TestOurs of iris (x2)"), "{text}");

    agent.shutdown().await;
    let offline = e
        .run_ds(&["deployment", "describe", "iris", "-n", ns])
        .await;
    let text = offline.ok();
    assert!(text.contains("iris"), "{text}");
    assert!(
        text.contains("Pods and events: unavailable: deployer c1 has no agent connected"),
        "{text}"
    );
}

/// `ds deployment logs` prints every pod's lines prefixed with the pod; `-f` keeps going,
/// picks up the pods a scale-up adds, and ends cleanly on Ctrl-C. Bad flags and a missing
/// agent are one line each.
async fn logs_merge_the_pods_and_follow_picks_up_new_ones(b: Backend) {
    use tokio::io::AsyncBufReadExt;
    let (mut e, agent, id) = two_iris_pods(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();

    let logs = e.run_ds(&["deployment", "logs", "iris", "-n", ns]).await;
    let out = logs.ok();
    let prefixed: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("[pod/iris-") && l.contains("/model] "))
        .collect();
    // What each pod logged: the simulator's two lines, or the fake kubelet's.
    let (per_pod, text) = match b {
        Backend::Sim => (2, format!("/model] simulated log of pod {ns}/iris-")),
        Backend::Real => (
            real_kube::LOG_LINES,
            format!("/model] fake kubelet: {ns}/iris-"),
        ),
    };
    assert_eq!(prefixed.len(), 2 * per_pod, "{out}");
    assert!(out.contains(&text), "{out}");
    if matches!(b, Backend::Real) {
        // --tail reaches the kubelet through the API server.
        let tail = e
            .run_ds(&["deployment", "logs", "iris", "-n", ns, "--tail", "1"])
            .await;
        let last = format!("line {}", real_kube::LOG_LINES);
        let lines: Vec<&str> = tail.ok().lines().collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.ends_with(&last)), "{lines:?}");
    }

    let bad = e
        .run_ds(&[
            "deployment",
            "logs",
            "iris",
            "-n",
            ns,
            "--container",
            "sidecar",
        ])
        .await;
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr.contains("container") && bad.stderr.contains("must be model or proxy"),
        "{}",
        bad.stderr
    );

    let mut follow = e
        .ds(&["deployment", "logs", "iris", "-n", ns, "-f"])
        .spawn()
        .expect("ds runs");
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut pods = std::collections::BTreeSet::new();
    let mut read_pods = async |want: usize, pods: &mut std::collections::BTreeSet<String>| {
        while pods.len() < want {
            let line = tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .expect("a line in time")
                .expect("read")
                .expect("ds logs -f ended early");
            if let Some(pod) = line.strip_prefix("[pod/").and_then(|l| l.split('/').next()) {
                pods.insert(pod.to_string());
            }
        }
    };
    read_pods(2, &mut pods).await;
    e.update(&id, |r| r.replicas = Some(3)).await;
    read_pods(3, &mut pods).await;
    // Ctrl-C ends it cleanly.
    let pid = follow.id().expect("running");
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    let status = tokio::time::timeout(DEADLINE, follow.wait())
        .await
        .expect("ds exits on Ctrl-C")
        .expect("wait");
    assert_eq!(status.code(), Some(0));

    agent.shutdown().await;
    let offline = e.run_ds(&["deployment", "logs", "iris", "-n", ns]).await;
    assert_ne!(offline.code, Some(0));
    assert!(
        offline
            .stderr
            .contains("deployer c1 has no agent connected to this gateway"),
        "{}",
        offline.stderr
    );
}

// === a cluster that lost its state ===

/// A cluster restarted empty (its resourceVersions start again from 1) gets the agent's
/// objects back and the gateway's status follows, and so does the cluster restored from
/// its saved state afterwards (its resourceVersions jump ahead again): the agent's watches
/// list again every `--relist`, since a watch resuming from a resourceVersion the server
/// has not reached learns nothing (tests/kube_sim_diff.rs shows the real server does so).
#[tokio::test]
async fn a_cluster_restarted_empty_then_restored_gets_its_objects_and_status_back() {
    ds::telemetry::init_logging();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let state = tempfile::tempdir().expect("tempdir");
    let config = |state_file: Option<std::path::PathBuf>| SimConfig {
        listen,
        rollout_delay: Duration::from_millis(200),
        state_file,
        ..Default::default()
    };
    let saved = state.path().join("sim.json");
    let gw = Gateway::start().await;
    let mut control = gw.control();
    let token = control
        .create_deployer(proto::CreateDeployerRequest {
            name: "r1".into(),
            ..Default::default()
        })
        .await
        .expect("create deployer")
        .into_inner()
        .token;
    let sim = SimCluster::start(config(Some(saved.clone())))
        .await
        .expect("sim");
    let client = sim.client();
    let mut args = ds_test_support::agent_args(&gw.url(), &token);
    args.relist = Duration::from_secs(2);
    let agent = ds_test_support::start_agent(args, client.clone()).await;
    let id = control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "r1".into(),
            name: "iris".into(),
            namespace: NS.into(),
            spec: Some(DeploymentSpec::test("iris").replicas(2).into()),
        })
        .await
        .expect("create deployment")
        .into_inner()
        .deployment
        .expect("deployment")
        .id;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let uid_now = || async {
        deployments
            .get_opt("iris")
            .await
            .ok()
            .flatten()
            .and_then(|d| d.metadata.uid)
    };
    let available = |control: Control| {
        let id = id.clone();
        async move {
            eventually("the gateway to show the deployment Available", || {
                let mut control = control.clone();
                let id = id.clone();
                async move {
                    let view = control.get_deployment(select(&id)).await.ok()?.into_inner();
                    let s = view.status?;
                    (s.phase == Phase::Available as i32 && s.available_replicas == 2).then_some(())
                }
            })
            .await;
        }
    };
    available(control.clone()).await;
    let first = eventually("the Deployment", &uid_now).await;

    // Restarted empty, at the same address: its resourceVersions start again from 1.
    sim.shutdown().await;
    let sim = SimCluster::start(config(None))
        .await
        .expect("sim restarts empty");
    let recreated = eventually("the Deployment re-created", || async {
        uid_now().await.filter(|u| *u != first)
    })
    .await;
    available(control.clone()).await;

    // Restored from the state saved before: the first objects again, resourceVersions
    // ahead of what the agent last saw.
    sim.shutdown().await;
    let sim = SimCluster::start(config(Some(saved)))
        .await
        .expect("sim restored");
    eventually("the restored Deployment", || async {
        uid_now().await.filter(|u| *u == first)
    })
    .await;
    assert_ne!(recreated, first);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    eventually("the restored Service", || async {
        services.get_opt("iris").await.ok().flatten()
    })
    .await;
    available(control.clone()).await;
    agent.shutdown().await;
    sim.shutdown().await;
}

// === status from the pods ===

/// An image that cannot be pulled fails `create --wait` with the pods' reason, long
/// before the Deployment's progress deadline (600 s on the real controller manager, whose
/// Deployment still says Progressing), and `get` shows Failed with that reason. On the
/// simulator the image fails by `failing_image` (`ds sim-cluster --failing-image`).
async fn unpullable_image_fails_the_wait_with_the_pull_reason(b: Backend) {
    let mut e = match b {
        Backend::Sim => {
            env_with(SimConfig {
                rollout_delay: Duration::from_millis(200),
                // real_kube::UNPULLABLE_REGISTRY as a regex.
                failing_image: Some(r"^registry\.invalid/".into()),
                ..Default::default()
            })
            .await
        }
        Backend::Real => env(b).await,
    };
    let ns = e.ns.clone();
    let (_, token) = e.deployer("pulls").await;
    let agent = e.agent(&token).await;
    eventually("the agent is ready", || async {
        agent.is_ready().then_some(())
    })
    .await;
    let image = format!("{}nope:1", real_kube::UNPULLABLE_REGISTRY);
    let started = tokio::time::Instant::now();
    // The CLI's own timeout: a wait that only the progress deadline could end fails
    // with "timed out", not with the pull reason.
    let out = e
        .run_ds(&[
            "deployment",
            "create",
            "--model-name",
            "iris",
            "-d",
            "pulls",
            "-n",
            &ns,
            "-i",
            &image,
            "--wait",
            "--timeout",
            "30s",
        ])
        .await;
    let stderr = &out.stderr;
    // For the record (not asserted): how long the failure took to reach the CLI.
    eprintln!("{b:?}: create --wait failed after {:?}", started.elapsed());
    assert_ne!(out.code, Some(0), "{stderr}");
    assert!(
        stderr.contains("ImagePullBackOff") || stderr.contains("ErrImagePull"),
        "the pull failure is the reason: {stderr}"
    );
    assert!(stderr.contains(&image), "names the image: {stderr}");
    assert!(!stderr.contains("error: timed out after"), "{stderr}");

    let got = e
        .run_ds(&["deployment", "get", "iris", "-d", "pulls", "-n", &ns])
        .await;
    let text = got.ok();
    assert!(text.contains("Failed"), "{text}");
    assert!(
        text.contains("Reason:") && text.contains("pod iris-"),
        "{text}"
    );
    assert!(text.contains("model: waiting ("), "per-pod state: {text}");
    agent.shutdown().await;
}

async fn history_diff_and_rollback_restore_a_spec_in_place(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("h1").await;
    let _agent = e.agent(&token).await;
    e.run_ds(&[
        "deployment",
        "create",
        "--model-name",
        "iris",
        "--deployer",
        "h1",
        "--namespace",
        ns,
        "--image",
        "tensorflow/serving:2.15.0",
        "--cpu",
        "250m",
        "--wait",
    ])
    .await
    .ok();
    let before = e
        .wait_deployment(ns, "iris", "the Deployment", |_| true)
        .await;
    for change in [
        &["--image", "tensorflow/serving:2.16.0", "--memory", "1Gi"][..],
        &["--env", "DEBUG=1", "--replicas", "2"][..],
    ] {
        let mut args = vec!["deployment", "update", "iris", "-n", ns, "--wait"];
        args.extend_from_slice(change);
        e.run_ds(&args).await.ok();
    }
    e.wait_deployment(ns, "iris", "the second change", |d| {
        image_of(d).ends_with("2.16.0")
    })
    .await;

    // History: one revision per change, who made it, what changed, what each reached.
    let history: serde_json::Value = serde_json::from_str(
        e.run_ds(&["deployment", "history", "iris", "-n", ns, "-o", "json"])
            .await
            .ok(),
    )
    .unwrap();
    let revisions = history.as_array().unwrap();
    assert_eq!(revisions.len(), 3, "{history}");
    let key_id = e.gw.admin_key.split('_').nth(1).unwrap();
    for (i, r) in revisions.iter().enumerate() {
        assert_eq!(r["revision"], i as u64 + 1);
        assert_eq!(
            r["by"],
            format!("admin (key {key_id})"),
            "who: the admin user and its key's ID"
        );
        assert_eq!(r["status"], "Available", "each reached Available: {r}");
        assert_eq!(r["current"], i == 2);
    }
    assert!(
        !history.to_string().contains(&e.gw.admin_key),
        "no secret in the history"
    );
    assert_eq!(revisions[0]["change"], "created");
    let second = revisions[1]["change"].as_str().unwrap();
    assert!(
        second.contains("image tensorflow/serving:2.15.0 → tensorflow/serving:2.16.0")
            && second.contains("resources.memory"),
        "{second}"
    );
    let table = e.run_ds(&["deployment", "history", "iris", "-n", ns]).await;
    let table = table.ok();
    assert!(
        table.starts_with("REVISION") && table.contains("3 (current)"),
        "{table}"
    );

    // Diff between two revisions, field by field.
    let diff = e
        .run_ds(&[
            "deployment",
            "diff",
            "iris",
            "-n",
            ns,
            "--from",
            "1",
            "--to",
            "3",
        ])
        .await;
    let diff = diff.ok();
    for line in [
        "revision 1 → revision 3",
        "image: tensorflow/serving:2.15.0 → tensorflow/serving:2.16.0",
        "env[DEBUG]: (none) → 1",
        "replicas: 1 → 2",
    ] {
        assert!(diff.contains(line), "{line:?} in {diff}");
    }
    let missing = e
        .run_ds(&["deployment", "diff", "iris", "-n", ns, "--from", "9"])
        .await;
    assert_ne!(missing.code, Some(0));
    assert!(
        missing.stderr.contains("no revision 9") && missing.stderr.contains("revisions 1 to 3"),
        "{}",
        missing.stderr
    );

    // Rollback to 1: a new revision equal to 1, applied in place (same Deployment).
    e.run_ds(&[
        "deployment",
        "rollback",
        "iris",
        "-n",
        ns,
        "--to",
        "1",
        "--wait",
    ])
    .await
    .ok();
    let after = e
        .wait_deployment(ns, "iris", "revision 1's spec again", |d| {
            let c = &containers(d)[0];
            image_of(d) == "tensorflow/serving:2.15.0"
                && c.env
                    .as_ref()
                    .is_none_or(|env| env.iter().all(|v| v.name != "DEBUG"))
                && d.spec.as_ref().unwrap().replicas == Some(1)
        })
        .await;
    assert_eq!(uid(&after), uid(&before), "rolled back in place");
    let model = &containers(&after)[0];
    let limits = model.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert!(
        !limits.contains_key("memory"),
        "revision 1 had no memory limit: {limits:?}"
    );
    let history: serde_json::Value = serde_json::from_str(
        e.run_ds(&["deployment", "history", "iris", "-n", ns, "-o", "json"])
            .await
            .ok(),
    )
    .unwrap();
    let last = &history.as_array().unwrap()[3];
    assert_eq!(last["revision"], 4);
    assert!(
        last["change"]
            .as_str()
            .unwrap()
            .starts_with("rollback to revision 1: "),
        "{last}"
    );
    // Rolling back to what is current changes nothing.
    let again = e
        .run_ds(&["deployment", "rollback", "iris", "-n", ns, "--to", "4"])
        .await;
    assert!(again.ok().contains("no change"));
    // describe shows the recent history.
    let described = e
        .run_ds(&["deployment", "describe", "iris", "-n", ns])
        .await;
    let described = described.ok();
    assert!(
        described.contains("Recent revisions:") && described.contains("rollback to revision 1"),
        "{described}"
    );
}

// === pod-level options (issue 16) ===

/// The PriorityClass the pod-options test names: the real API server's Priority admission
/// refuses pods naming a class that does not exist (the simulator has no such kind).
const TEST_PRIORITY_CLASS: &str = "ds-test-model-serving";

async fn ensure_priority_class(client: kube::Client) {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let api: Api<PriorityClass> = Api::all(client);
    let class: PriorityClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": TEST_PRIORITY_CLASS},
        "value": 1000,
        "description": "ds-deployer tests",
    }))
    .unwrap();
    match api.create(&PostParams::default(), &class).await {
        Ok(_) => {}
        // Cluster-scoped and the real API server is shared by the tests of this binary.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating the PriorityClass: {e}"),
    }
}

fn pod_spec(d: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn model(d: &Deployment) -> &Container {
    containers(d).iter().find(|c| c.name == "model").unwrap()
}

fn gpu_limit(d: &Deployment) -> Option<String> {
    let limits = model(d).resources.as_ref()?.limits.as_ref()?;
    limits.get("nvidia.com/gpu").map(|q| q.0.clone())
}

async fn pod_options_are_applied_in_place_and_removed_when_turned_off(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    if let Cluster::Real { admin, .. } = &e.cluster {
        ensure_priority_class(admin.clone()).await;
    }
    let (_, token) = e.deployer("pods").await;
    let agent = e.agent(&token).await;
    let mut spec = DeploymentSpec::test("iris")
        .host("iris.example.com")
        .proxy(true);
    spec.gpu = 1;
    spec.image_pull_secrets = vec!["regcred".into()];
    spec.tls_secret = Some("iris-tls".into());
    spec.ingress_annotations.insert(
        "cert-manager.io/cluster-issuer".into(),
        "letsencrypt".into(),
    );
    spec.command = vec!["python".into(), "-m".into(), "serve".into()];
    spec.args = vec!["--port=8501".into()];
    spec.node_selector
        .insert("kubernetes.io/os".into(), "linux".into());
    spec.tolerations = vec![
        ds_core::Toleration::parse("nvidia.com/gpu:NoSchedule").unwrap(),
        ds_core::Toleration::parse("dedicated=ml:NoExecute").unwrap(),
    ];
    spec.priority_class = Some(TEST_PRIORITY_CLASS.into());
    spec.ready_path = Some("/v1/models/iris".into());
    spec.startup_timeout_seconds = 600;
    let id = e.deploy("pods", "iris", ns, spec).await;

    // What the API server accepted and stored.
    let before = e
        .wait_deployment(ns, "iris", "the Deployment with the pod options", |d| {
            pod_spec(d).priority_class_name.is_some()
        })
        .await;
    let p = pod_spec(&before);
    let secrets: Vec<&str> = p
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(secrets, ["regcred"]);
    assert_eq!(
        p.node_selector.as_ref().unwrap()["kubernetes.io/os"],
        "linux"
    );
    let tolerations = p.tolerations.as_ref().unwrap();
    assert_eq!(tolerations.len(), 2);
    assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
    assert_eq!(tolerations[1].value.as_deref(), Some("ml"));
    assert_eq!(tolerations[1].effect.as_deref(), Some("NoExecute"));
    assert_eq!(p.priority_class_name.as_deref(), Some(TEST_PRIORITY_CLASS));
    let m = model(&before);
    assert_eq!(gpu_limit(&before).as_deref(), Some("1"));
    let requests = m.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(requests["nvidia.com/gpu"].0, "1");
    assert_eq!(
        m.command.as_deref(),
        Some(&["python".to_string(), "-m".into(), "serve".into()][..])
    );
    assert_eq!(m.args.as_deref(), Some(&["--port=8501".to_string()][..]));
    let startup = m.startup_probe.as_ref().expect("a startup probe");
    let get = startup.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/v1/models/iris"));
    let covered = startup.period_seconds.unwrap() * startup.failure_threshold.unwrap();
    assert!(covered >= 600, "{startup:?}");
    let proxy = sidecar(&before).unwrap();
    assert!(
        proxy
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()
            .get("nvidia.com/gpu")
            .is_none()
    );
    let proxy_args = proxy.args.clone().unwrap();
    assert!(
        proxy_args
            .windows(2)
            .any(|w| w == ["--ready-path", "/v1/models/iris"]),
        "{proxy_args:?}"
    );
    let ingress = eventually("the Ingress with TLS", || async {
        e.ingresses(ns).get_opt("iris").await.ok().flatten()
    })
    .await;
    let tls = ingress.spec.as_ref().unwrap().tls.clone().unwrap();
    assert_eq!(tls[0].hosts, Some(vec!["iris.example.com".to_string()]));
    assert_eq!(tls[0].secret_name.as_deref(), Some("iris-tls"));
    let annotations = ingress.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["cert-manager.io/cluster-issuer"], "letsencrypt");
    let status = e
        .wait_status(&id, "the https endpoint", |s| s.applied_revision > 0)
        .await;
    assert_eq!(status.endpoint, "https://iris.example.com/");
    // As the API server keeps them, the objects match what the agent wants: resyncs of an
    // unchanged deployment with every option set write nothing.
    passes(&agent, 2).await;
    let writes = e.cluster.counters().writes();
    passes(&agent, 4).await;
    assert_eq!(
        e.cluster.counters().writes(),
        writes,
        "a resync with nothing changed writes nothing"
    );

    // Changed: the same Deployment, patched in place.
    e.update(&id, |r| {
        r.gpu = Some(2);
        r.tolerations = Some(proto::TolerationList {
            values: vec![
                ds_core::Toleration::parse("spot:PreferNoSchedule")
                    .unwrap()
                    .into(),
            ],
        });
    })
    .await;
    let changed = e
        .wait_deployment(ns, "iris", "two GPUs", |d| {
            gpu_limit(d).as_deref() == Some("2")
        })
        .await;
    assert_eq!(uid(&changed), uid(&before));
    let tolerations = pod_spec(&changed).tolerations.clone().unwrap();
    assert_eq!(tolerations.len(), 1, "{tolerations:?}");
    assert_eq!(tolerations[0].key.as_deref(), Some("spot"));

    // Off: every option leaves the objects, still in place.
    let none = || Some(proto::StringList { values: vec![] });
    e.update(&id, |r| {
        r.gpu = Some(0);
        r.image_pull_secrets = none();
        r.tls_secret = Some(String::new());
        r.unset_ingress_annotations = vec!["cert-manager.io/cluster-issuer".into()];
        r.command = none();
        r.args = none();
        r.unset_node_selector = vec!["kubernetes.io/os".into()];
        r.tolerations = Some(proto::TolerationList { values: vec![] });
        r.priority_class = Some(String::new());
        r.ready_path = Some(String::new());
        r.startup_timeout_seconds = Some(0);
    })
    .await;
    let off = e
        .wait_deployment(ns, "iris", "the pod options gone", |d| {
            pod_spec(d).priority_class_name.is_none()
                && pod_spec(d).tolerations.as_ref().is_none_or(Vec::is_empty)
                && gpu_limit(d).is_none()
        })
        .await;
    assert_eq!(uid(&off), uid(&before));
    let p = pod_spec(&off);
    assert!(
        p.image_pull_secrets.as_ref().is_none_or(Vec::is_empty),
        "{p:?}"
    );
    assert!(
        p.node_selector.as_ref().is_none_or(|m| m.is_empty()),
        "{p:?}"
    );
    let m = model(&off);
    assert!(m.command.as_ref().is_none_or(Vec::is_empty), "{m:?}");
    assert!(m.args.as_ref().is_none_or(Vec::is_empty), "{m:?}");
    assert!(m.startup_probe.is_none(), "{m:?}");
    let requests = m
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .unwrap_or_default();
    assert!(!requests.contains_key("nvidia.com/gpu"), "{requests:?}");
    let proxy_args = sidecar(&off).unwrap().args.clone().unwrap();
    assert!(
        !proxy_args.contains(&"--ready-path".to_string()),
        "{proxy_args:?}"
    );
    let ingress = eventually("the Ingress without TLS and annotations", || async {
        e.ingresses(ns)
            .get_opt("iris")
            .await
            .ok()
            .flatten()
            .filter(|i| {
                i.spec
                    .as_ref()
                    .unwrap()
                    .tls
                    .as_ref()
                    .is_none_or(Vec::is_empty)
                    && !i
                        .metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key("cert-manager.io/cluster-issuer"))
            })
    })
    .await;
    assert_eq!(
        ingress.spec.unwrap().rules.unwrap()[0].host.as_deref(),
        Some("iris.example.com")
    );
    e.wait_status(&id, "the http endpoint", |s| {
        s.endpoint == "http://iris.example.com/"
    })
    .await;
    agent.shutdown().await;
}

// === autoscaling and disruption budgets (issue 16) ===

fn replicas_of(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

/// Whether the agent's own apply (field manager `ds-deployer`) claims `spec.replicas`.
fn agent_owns_replicas(d: &Deployment) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some("ds-deployer")
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:spec"].get("f:replicas").is_some())
    })
}

fn autoscaled_annotation(d: &Deployment) -> bool {
    d.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ds_agent::builders::AUTOSCALED_ANNOTATION))
}

async fn autoscaling_leaves_replicas_to_the_hpa_and_the_budget_follows_the_pod_count(b: Backend) {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(e.cluster.client(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(e.cluster.client(), ns);
    let (_, token) = e.deployer("hpa").await;
    let agent = e.agent(&token).await;

    // Three fixed replicas: a budget (two may go at once), no autoscaler.
    let mut spec = DeploymentSpec::test("iris").replicas(3);
    spec.resources.cpu_request = Some("100m".into());
    spec.max_unavailable = Some(2);
    let id = e.deploy("hpa", "iris", ns, spec).await;
    let before = e
        .wait_deployment(ns, "iris", "three replicas", |d| replicas_of(d) == Some(3))
        .await;
    assert!(agent_owns_replicas(&before));
    let pdb = eventually("the disruption budget", || async {
        pdbs.get_opt("iris").await.ok().flatten()
    })
    .await;
    let ps = pdb.spec.clone().unwrap();
    assert_eq!(ps.max_unavailable, Some(IntOrString::Int(2)));
    assert_eq!(
        ps.selector.unwrap().match_labels,
        before.spec.as_ref().unwrap().selector.match_labels,
        "the budget covers the Deployment's pods"
    );
    assert_eq!(
        labels(&pdb.metadata)[OWNER_LABEL],
        labels(&before.metadata)[OWNER_LABEL]
    );
    assert!(hpas.get_opt("iris").await.unwrap().is_none());
    e.wait_phase(&id, Phase::Available).await;

    // Autoscaling on: an autoscaler the API server accepts; the Deployment keeps its three
    // replicas (handed over, not dropped to the default of 1) and our apply no longer
    // claims the count.
    e.update(&id, |r| {
        r.min_replicas = Some(2);
        r.max_replicas = Some(6);
        r.target_cpu_percent = Some(60);
    })
    .await;
    let hpa = eventually("the autoscaler", || async {
        hpas.get_opt("iris").await.ok().flatten()
    })
    .await;
    let hs = hpa.spec.clone().unwrap();
    assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 6));
    assert_eq!(hs.scale_target_ref.kind, "Deployment");
    assert_eq!(hs.scale_target_ref.name, "iris");
    let metric = &hs.metrics.unwrap()[0];
    let cpu = metric.container_resource.as_ref().unwrap();
    assert_eq!(
        (cpu.name.as_str(), cpu.container.as_str()),
        ("cpu", "model")
    );
    assert_eq!(cpu.target.average_utilization, Some(60));
    assert_eq!(labels(&hpa.metadata)[DEPLOYMENT_ID_LABEL], id);
    let handed = e
        .wait_deployment(
            ns,
            "iris",
            "the Deployment applied for the autoscaler",
            |d| autoscaled_annotation(d) && !agent_owns_replicas(d),
        )
        .await;
    assert_eq!(
        replicas_of(&handed),
        Some(3),
        "the count survives the handover"
    );
    assert_eq!(uid(&handed), uid(&before));
    assert!(
        pdbs.get_opt("iris").await.unwrap().is_some(),
        "min 2: still a budget"
    );

    // The autoscaler scales (its controller writes spec.replicas under its own manager):
    // across resyncs the agent writes nothing, to spec.replicas or anything else.
    passes(&agent, 2).await;
    let counts = e.cluster.counters();
    let writes = counts.writes();
    let scaler = PatchParams {
        field_manager: Some("horizontal-pod-autoscaler".into()),
        ..Default::default()
    };
    e.deployments(ns)
        .patch(
            "iris",
            &scaler,
            &Patch::Merge(&serde_json::json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    passes(&agent, 4).await;
    // The simulator counts every client's writes (the scale above is one of them); the
    // audit log only the agent's.
    let scale_itself = match b {
        Backend::Sim => 1,
        Backend::Real => 0,
    };
    assert_eq!(
        counts.writes(),
        writes + scale_itself,
        "no write of the agent while the autoscaler scales"
    );
    let scaled = e.deployments(ns).get("iris").await.unwrap();
    assert_eq!(
        replicas_of(&scaled),
        Some(5),
        "the autoscaler's count stands"
    );
    assert!(!agent_owns_replicas(&scaled));
    e.wait_status(&id, "Available at the autoscaler's count", |s| {
        s.phase == Phase::Available as i32 && s.available_replicas == 5
    })
    .await;

    // Off: the autoscaler goes and --replicas (3) applies again, ours again.
    e.update(&id, |r| r.max_replicas = Some(0)).await;
    eventually("the autoscaler to go", || async {
        matches!(hpas.get_opt("iris").await, Ok(None)).then_some(())
    })
    .await;
    let restored = e
        .wait_deployment(ns, "iris", "--replicas restored", |d| {
            replicas_of(d) == Some(3) && !autoscaled_annotation(d)
        })
        .await;
    assert!(agent_owns_replicas(&restored));
    assert_eq!(uid(&restored), uid(&before));

    // One replica: no budget.
    e.update(&id, |r| r.replicas = Some(1)).await;
    eventually("the disruption budget to go", || async {
        matches!(pdbs.get_opt("iris").await, Ok(None)).then_some(())
    })
    .await;

    // Created autoscaled: it starts at the autoscaler's minimum, with a budget.
    let mut spec = DeploymentSpec::test("wine");
    spec.resources.cpu_request = Some("100m".into());
    spec.min_replicas = 2;
    spec.max_replicas = 4;
    let wine = e.deploy("hpa", "wine", ns, spec).await;
    let d = e
        .wait_deployment(ns, "wine", "two replicas", |d| replicas_of(d) == Some(2))
        .await;
    assert!(!agent_owns_replicas(&d), "{:?}", d.metadata.managed_fields);
    eventually("wine's autoscaler and budget", || async {
        let h = hpas.get_opt("wine").await.ok().flatten()?;
        let p = pdbs.get_opt("wine").await.ok().flatten()?;
        Some((h, p))
    })
    .await;
    e.wait_phase(&wine, Phase::Available).await;

    // Deleting the deployment prunes its autoscaler and budget with the rest.
    e.delete(&wine).await;
    e.wait_gone(ns, "wine").await;
    eventually("wine's autoscaler and budget pruned", || async {
        let gone = matches!(hpas.get_opt("wine").await, Ok(None))
            && matches!(pdbs.get_opt("wine").await, Ok(None));
        gone.then_some(())
    })
    .await;
    agent.shutdown().await;
}

async fn model_from_storage_is_an_init_container_or_a_claim_applied_in_place(b: Backend) {
    let mut e = env(b).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let (_, token) = e.deployer("storage").await;
    let agent = e.agent(&token).await;
    let mut spec = DeploymentSpec::test("iris");
    spec.model_uri = Some("s3://models/iris.onnx".into());
    spec.model_path = Some("/mnt/model".into());
    spec.storage_secret = Some("s3-creds".into());
    spec.model_sha256 = Some("ab".repeat(32));
    let id = e.deploy("storage", "iris", ns, spec).await;

    // What admission accepted and stored: the init container with the agent's image,
    // the Secret as its environment, the emptyDir, the read-only mount.
    let before = e
        .wait_deployment(
            ns,
            "iris",
            "the Deployment with the model-fetch init container",
            |d| pod_spec(d).init_containers.is_some(),
        )
        .await;
    let p = pod_spec(&before);
    let init = &p.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, "model-fetch");
    assert_eq!(init.image.as_deref(), Some(PROXY_IMAGE));
    let args = init.args.clone().unwrap();
    assert_eq!(
        args[..4],
        ["--uri", "s3://models/iris.onnx", "--dest", "/models"]
    );
    assert_eq!(
        init.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "s3-creds"
    );
    assert_eq!(
        init.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    let volume = &p.volumes.as_ref().unwrap()[0];
    assert!(volume.empty_dir.is_some(), "{volume:?}");
    let mount = &model(&before).volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (
            mount.name.as_str(),
            mount.mount_path.as_str(),
            mount.read_only
        ),
        ("model", "/mnt/model", Some(true))
    );

    // To a claim: no init container, the PVC mounted read-only with its subPath, in place.
    e.update(&id, |r| {
        r.model_uri = Some("pvc://weights/iris/v1".into());
        r.storage_secret = Some(String::new());
        r.model_sha256 = Some(String::new());
    })
    .await;
    let claimed = e
        .wait_deployment(ns, "iris", "the model on a claim", |d| {
            pod_spec(d)
                .init_containers
                .as_ref()
                .is_none_or(Vec::is_empty)
        })
        .await;
    assert_eq!(uid(&claimed), uid(&before));
    let claim = pod_spec(&claimed).volumes.as_ref().unwrap()[0]
        .persistent_volume_claim
        .clone()
        .expect("a claim volume");
    assert_eq!(claim.claim_name, "weights");
    let mount = &model(&claimed).volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.sub_path.as_deref(), Some("iris/v1"));
    assert_eq!(mount.read_only, Some(true));

    // Off: no volume, no mount, still the same Deployment.
    e.update(&id, |r| r.model_uri = Some(String::new())).await;
    let off = e
        .wait_deployment(ns, "iris", "the model volume gone", |d| {
            pod_spec(d).volumes.as_ref().is_none_or(Vec::is_empty)
        })
        .await;
    assert_eq!(uid(&off), uid(&before));
    assert!(
        model(&off).volume_mounts.as_ref().is_none_or(Vec::is_empty),
        "{:?}",
        model(&off)
    );
    agent.shutdown().await;
}

// === the model from storage, end to end (issue 16) ===

/// The origin the tests' `https://` model URIs name; the kubelet the test plays fetches
/// from the local server instead.
const MODEL_ORIGIN: &str = "https://models.example.com";
/// A presigned URL's signature: refused by the gateway, never repeated.
const SIGNATURE: &str = "X-Amz-Signature=5ec12e7deadbeef";
/// The storage Secret's secret access key: never part of a reported reason.
const SECRET_KEY: &str = "wJalrXUtnFEMI-s3cr3t-k3y";

/// Serves `/models/iris.onnx` (`model`); any other path is S3's `NoSuchKey`.
async fn serve_models(model: Vec<u8>) -> String {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let model = bytes::Bytes::from(model);
    let app = axum::Router::new()
        .route(
            "/models/iris.onnx",
            axum::routing::get(move || async move { model.clone() }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code>\
                 <Message>The specified key does not exist.</Message></Error>",
            )
                .into_response()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

impl Env {
    /// Plays the kubelet for the `model-fetch` init container of the pod of deployment
    /// `name`'s current template: runs the real `ds model-fetch` with the command and
    /// arguments the agent put in the Deployment (the URI's [`MODEL_ORIGIN`] pointed at
    /// `server`, `--dest` at a scratch emptyDir) and the storage Secret's keys as its only
    /// environment, then writes how it ended into the pod's status as the kubelet does.
    /// Returns the exit code and the termination message.
    async fn kubelet_runs_model_fetch(&self, ns: &str, name: &str, server: &str) -> (i32, String) {
        use k8s_openapi::api::core::v1::{Pod, Secret};
        let d = self
            .wait_deployment(ns, name, "the Deployment", |_| true)
            .await;
        let init = pod_spec(&d)
            .init_containers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == "model-fetch")
            .expect("the model-fetch init container");
        let selector = d
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Api<Pod> = Api::namespaced(self.cluster.client(), ns);
        // The pod of the current template: its init container runs the current arguments.
        let pod = eventually("the pod of the current template", || async {
            let list = pods
                .list(&kube::api::ListParams::default().labels(&selector))
                .await
                .ok()?;
            list.items.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.spec
                        .as_ref()
                        .and_then(|s| s.init_containers.as_ref())
                        .and_then(|i| i.iter().find(|c| c.name == init.name))
                        .is_some_and(|c| c.args == init.args)
            })
        })
        .await;

        // What the kubelet gives the container: the Secret's keys (envFrom), a volume.
        let mut env = Vec::new();
        for from in init.env_from.iter().flatten() {
            let secret = from.secret_ref.as_ref().expect("a Secret reference");
            let s: Secret = Api::namespaced(self.cluster.client(), ns)
                .get(&secret.name)
                .await
                .expect("the storage Secret");
            for (k, v) in s.data.unwrap_or_default() {
                env.push((k, String::from_utf8(v.0).unwrap()));
            }
        }
        let scratch = tempfile::tempdir().unwrap();
        let dest = scratch.path().join("models");
        let log = scratch.path().join("termination-log");
        let command = init.command.clone().expect("a command");
        assert_eq!(command[0], "ds");
        let mut args: Vec<String> = command[1..].to_vec();
        let mut given = init.args.clone().unwrap_or_default().into_iter();
        while let Some(a) = given.next() {
            let value = given.next().expect("a flag's value");
            let value = match a.as_str() {
                "--dest" => dest.to_str().unwrap().to_string(),
                "--uri" => value.replace(MODEL_ORIGIN, server),
                _ => value,
            };
            args.extend([a, value]);
        }
        args.extend([
            "--termination-log".to_string(),
            log.to_str().unwrap().to_string(),
        ]);
        let bin = std::env::var_os("DS_TEST_BIN")
            .map_or_else(|| env!("CARGO_BIN_EXE_ds").into(), std::path::PathBuf::from);
        let out = tokio::time::timeout(
            DEADLINE,
            tokio::process::Command::new(bin)
                .args(&args)
                .env_clear()
                .envs(env)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("ds model-fetch finishes")
        .expect("ds model-fetch runs");
        let code = out.status.code().expect("an exit code");
        let message = std::fs::read_to_string(&log).unwrap_or_default();

        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let reason = if code == 0 { "Completed" } else { "Error" };
        let waiting: Vec<_> = pod
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .map(|c| {
                serde_json::json!({"name": c.name, "image": c.image, "imageID": "",
                    "ready": false, "restartCount": 0, "started": false,
                    "state": {"waiting": {"reason": "PodInitializing"}}})
            })
            .collect();
        let status = serde_json::json!({"status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized",
                 "lastTransitionTime": now},
            ],
            "initContainerStatuses": [{"name": init.name, "image": init.image, "imageID": "",
                "ready": false, "restartCount": 0, "started": false,
                "state": {"terminated": {"exitCode": code, "reason": reason, "message": message,
                    "startedAt": now, "finishedAt": now}}}],
            "containerStatuses": waiting,
        }});
        pods.patch_status(
            pod.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .expect("the pod's status is written");
        (code, message)
    }
}

/// A model download that fails (a wrong checksum, a missing object) fails the deployment
/// with `ds model-fetch`'s reason, shown by `ds deployment get`, with no secret in it; the
/// right checksum then lets the pod start. The test plays the kubelet for the init
/// container (no kubelet runs here): the real `ds model-fetch`, run as the pod spec says.
#[tokio::test]
async fn real_a_failed_model_fetch_fails_the_deployment_with_its_reason() {
    use k8s_openapi::api::core::v1::Secret;
    let mut e = env(Backend::Real).await;
    let ns = e.ns.clone();
    let ns = ns.as_str();
    let model = b"onnx model bytes, version 1".repeat(1_000);
    let server = serve_models(model.clone()).await;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s3-creds"},
        "stringData": {
            "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": server,
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(e.cluster.client(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the storage Secret");
    let (_, token) = e.deployer("fetch").await;
    let agent = e.agent(&token).await;
    let no_secret_in = |what: &str, text: &str| {
        for secret in [SIGNATURE, "5ec12e7deadbeef", SECRET_KEY] {
            assert!(!text.contains(secret), "{what} shows {secret}: {text}");
        }
    };

    // A presigned https:// URL is refused at the gateway: it would be stored and shown.
    let mut spec = DeploymentSpec::test("iris");
    spec.model_uri = Some(format!("{MODEL_ORIGIN}/models/iris.onnx?{SIGNATURE}"));
    let refused = e
        .control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "fetch".into(),
            name: "iris".into(),
            namespace: ns.into(),
            spec: Some(spec.into()),
        })
        .await
        .expect_err("a presigned URL is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("model_uri"), "{refused:?}");
    no_secret_in("the refusal", refused.message());

    // An https:// URL and a checksum the object does not have.
    let uri = format!("{MODEL_ORIGIN}/models/iris.onnx");
    let wrong = sha256_hex(b"another model");
    let mut spec = DeploymentSpec::test("iris");
    spec.model_uri = Some(uri);
    spec.model_sha256 = Some(wrong.clone());
    let iris = e.deploy("fetch", "iris", ns, spec).await;
    let (code, message) = e.kubelet_runs_model_fetch(ns, "iris", &server).await;
    assert_eq!(code, 1, "{message}");
    let s = e.wait_phase(&iris, Phase::Failed).await;
    let mismatch = format!(
        "sha256 mismatch: expected {wrong}, got {}",
        sha256_hex(&model)
    );
    assert!(
        s.reason.starts_with("Init:Error: pod iris-")
            && s.reason.contains("init container model-fetch: ")
            && s.reason.contains(&mismatch),
        "{s:?}"
    );
    no_secret_in("the status", &format!("{s:?}"));
    let got = e
        .run_ds(&[
            "deployment",
            "get",
            "iris",
            "-d",
            "fetch",
            "-n",
            ns,
            "-o",
            "json",
        ])
        .await;
    let got: serde_json::Value = serde_json::from_str(got.ok()).expect("JSON");
    assert_eq!(got["status"]["phase"], "Failed", "{got}");
    let reason = got["status"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&mismatch), "{got}");
    no_secret_in("ds deployment get", &got["status"].to_string());

    // s3:// with the Secret's credentials and endpoint: the object is not there.
    let mut spec = DeploymentSpec::test("wine");
    spec.model_uri = Some("s3://models/absent/wine.onnx".into());
    spec.storage_secret = Some("s3-creds".into());
    let wine = e.deploy("fetch", "wine", ns, spec).await;
    let (code, message) = e.kubelet_runs_model_fetch(ns, "wine", &server).await;
    assert_eq!(code, 1, "{message}");
    let s = e.wait_phase(&wine, Phase::Failed).await;
    assert!(
        s.reason.contains(
            "model-fetch: s3://models/absent/wine.onnx: NoSuchKey (HTTP 404): \
             The specified key does not exist."
        ),
        "{s:?}"
    );
    no_secret_in("the status", &format!("{s:?}"));
    let got = e
        .run_ds(&["deployment", "get", "wine", "-d", "fetch", "-n", ns])
        .await;
    let text = got.ok();
    assert!(
        text.contains("Failed") && text.contains("NoSuchKey"),
        "{text}"
    );
    no_secret_in("ds deployment get", text);

    // The right checksum: the new pod's download succeeds and it starts.
    e.update(&iris, |r| r.model_sha256 = Some(sha256_hex(&model)))
        .await;
    e.wait_deployment(ns, "iris", "the new checksum", |d| {
        pod_spec(d).init_containers.as_ref().is_some_and(|i| {
            i[0].args
                .as_ref()
                .is_some_and(|a| a.contains(&sha256_hex(&model)))
        })
    })
    .await;
    let (code, message) = e.kubelet_runs_model_fetch(ns, "iris", &server).await;
    assert_eq!((code, message.as_str()), (0, ""));
    e.wait_phase(&iris, Phase::Available).await;
    agent.shutdown().await;
}
