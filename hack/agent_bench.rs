//! Agent benchmark (issue 4): propagation latency and cold restart, against an in-process
//! gateway and simulated cluster, with the agent as a separate `ds agent` process (so its
//! RSS is its own). Run through `hack/bench-agent.sh`, which builds in release first.
//!
//! - Propagation: time from the gateway's UpdateDeployment RPC to the changed Deployment
//!   seen by a watch on the simulated cluster, over N changes; next to it, the simulator's
//!   own write latency (a server-side apply round trip) measured in the same run.
//! - First start: M new deployments (created through the gateway while no agent runs), a
//!   fresh agent: time until all are applied (Deployment and Service each), as applies per
//!   second next to the simulator's own server-side-apply rate in the same run (the same
//!   number of applies of the same objects, straight from a kube client, as many at once
//!   as the agent's default concurrency).
//! - Cold restart: with M owned deployments and nothing changed, a fresh agent process:
//!   time until `/readyz` answers 200, write calls it made (target 0), its peak RSS.

// The simulator and the gateway run in this process. Under glibc malloc a third of the
// simulator's CPU went to malloc and free, and with two cores shared with the agent the
// simulator was the limit of every first start; mimalloc makes it ~1.3× faster. The agent
// (`ds agent`, a child process) keeps the system allocator, as in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ds_agent::builders::{desired_deployment, desired_service};
use ds_agent::cache::Slim;
use ds_agent::desired::Kind;
use ds_core::proto;
use ds_core::{DeployedObject, DeploymentSpec};
use ds_gateway::{GatewayArgs, RunningGateway};
use ds_kube_sim::{SimCluster, SimConfig};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Starts `ds agent` as a child process.
fn spawn_agent(
    ds: &Path,
    gateway: &str,
    token: &str,
    kubeconfig: &Path,
    health: SocketAddr,
    wrap: Option<&str>,
) -> Child {
    // AGENT_WRAP (e.g. "heaptrack -o /tmp/agent") runs the restarted agent under a profiler.
    let mut cmd = match wrap {
        Some(w) => {
            let mut words = w.split_whitespace();
            let mut c = Command::new(words.next().expect("AGENT_WRAP command"));
            c.args(words).arg(ds);
            c
        }
        None => Command::new(ds),
    };
    cmd.arg("agent")
        .args(["--gateway", gateway, "--insecure"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--listen-health", &health.to_string(), "--resync", "30s"])
        .env("DS_TOKEN", token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ds agent")
}

fn stop(child: &mut Child) {
    // Under a wrapper (AGENT_WRAP) the agent is the wrapper's child: signal it, not the
    // wrapper (a profiler must see its process end to finish its output), then wait for
    // the wrapper. Without one, `agents` is the child itself.
    for pid in agents(child.id()) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    let _ = child.wait();
}

/// `pid` if it is the `ds agent` process, else its direct children that are.
fn agents(pid: u32) -> Vec<u32> {
    let is_agent = |p: u32| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"agent".as_slice()))
    };
    if is_agent(pid) {
        return vec![pid];
    }
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .filter(|c| is_agent(*c))
        .collect()
}

fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
    ))
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let changes = env_usize("CHANGES", 1000);
    let cold = env_usize("DEPLOYMENTS", 5000);
    let ds: PathBuf = std::env::var("DS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let exe = std::env::current_exe().expect("exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .join("ds")
        });
    assert!(ds.exists(), "build `ds` first: {}", ds.display());

    let dir = tempfile::tempdir().expect("tempdir");
    let mut gargs = GatewayArgs::insecure("127.0.0.1:0".parse().unwrap(), dir.path());
    gargs.heartbeat_interval = Duration::from_secs(5);
    let gw = RunningGateway::start(gargs).await.expect("gateway");
    let sim = SimCluster::start(SimConfig {
        rollout_delay: Duration::from_millis(10),
        ..Default::default()
    })
    .await
    .expect("sim");
    // SIM_ONLY=1 measures the simulator's own apply rate alone (to profile it).
    if std::env::var_os("SIM_ONLY").is_some() {
        let (took, rate) = sim_apply_rate(&sim, cold).await;
        println!(
            "simulator alone: {} applies in {:.2} s, {rate:.0}/s",
            2 * cold,
            took.as_secs_f64()
        );
        std::process::exit(0);
    }
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig()).unwrap();
    let mut control = ds_test_support::control_client(&gw.url(), &gw.admin_key);
    let created = control
        .create_deployer(proto::CreateDeployerRequest {
            name: "bench".into(),
            ..Default::default()
        })
        .await
        .expect("deployer")
        .into_inner();
    let token = created.token;

    // === Propagation ===
    let health = free_port();
    let mut agent = spawn_agent(&ds, &gw.url(), &token, &kubeconfig, health, None);
    let spec = DeploymentSpec::test("prop");
    let view = control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "bench".into(),
            name: "prop".into(),
            namespace: "default".into(),
            spec: Some(spec.into()),
        })
        .await
        .expect("create")
        .into_inner();
    let id = view.deployment.unwrap().id;
    let api: Api<Deployment> = Api::namespaced(sim.client(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch_api = api.clone();
    tokio::spawn(async move {
        let stream = watcher(
            watch_api,
            watcher::Config::default().labels("app.kubernetes.io/name=prop"),
        );
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = ev {
                let image = d
                    .spec
                    .and_then(|s| s.template.spec)
                    .map(|p| p.containers[0].image.clone().unwrap_or_default());
                let _ = tx.send((image.unwrap_or_default(), Instant::now()));
            }
        }
    });
    // Wait for the first version.
    loop {
        let (image, _) = rx.recv().await.expect("watch");
        if image == "tensorflow/serving:2.15.0" {
            break;
        }
    }
    let mut lat = Vec::with_capacity(changes);
    let mut rpc = Vec::with_capacity(changes);
    for i in 0..changes {
        let image = format!("bench/model:{i}");
        let t0 = Instant::now();
        control
            .update_deployment(proto::UpdateDeploymentRequest {
                selector: Some(proto::GetDeploymentRequest {
                    deployment: id.clone(),
                    ..Default::default()
                }),
                image: Some(image.clone()),
                ..Default::default()
            })
            .await
            .expect("update");
        rpc.push(t0.elapsed());
        loop {
            let (seen, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("change within 30 s")
                .expect("watch");
            if seen == image {
                lat.push(at - t0);
                break;
            }
        }
    }
    lat.sort();
    rpc.sort();
    // The simulator's own write latency: a server-side apply round trip on another object.
    let probe = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "probe"},
        "spec": {"selector": {"matchLabels": {"app": "probe"}}, "template": {
            "metadata": {"labels": {"app": "probe"}},
            "spec": {"containers": [{"name": "c", "image": "probe:0"}]}}}
    });
    let pp = PatchParams::apply("bench").force();
    api.patch("probe", &pp, &Patch::Apply(&probe))
        .await
        .expect("probe");
    let mut sim_lat = Vec::with_capacity(changes);
    for i in 0..changes {
        let mut p = probe.clone();
        p["spec"]["template"]["spec"]["containers"][0]["image"] =
            serde_json::json!(format!("probe:{i}"));
        let t0 = Instant::now();
        api.patch("probe", &pp, &Patch::Apply(&p))
            .await
            .expect("probe");
        sim_lat.push(t0.elapsed());
    }
    sim_lat.sort();
    println!("## propagation over {changes} changes (ms)");
    println!("| measure | p50 | p99 | max |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| gateway UpdateDeployment → Deployment changed in the cluster | {} | {} | {} |",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    println!(
        "| of which the UpdateDeployment RPC itself (gateway store commit) | {} | {} | {} |",
        ms(percentile(&rpc, 0.5)),
        ms(percentile(&rpc, 0.99)),
        ms(*rpc.last().unwrap())
    );
    println!(
        "| simulator's own write (server-side apply round trip) | {} | {} | {} |",
        ms(percentile(&sim_lat, 0.5)),
        ms(percentile(&sim_lat, 0.99)),
        ms(*sim_lat.last().unwrap())
    );

    // === First start ===
    // No agent while the gateway takes the new deployments: the agent's part is timed alone.
    stop(&mut agent);
    let t0 = Instant::now();
    let mut pending = futures::stream::iter(0..cold)
        .map(|i| {
            let mut c = control.clone();
            async move {
                c.create_deployment(proto::CreateDeploymentRequest {
                    deployer: "bench".into(),
                    name: format!("m{i:05}"),
                    namespace: "default".into(),
                    spec: Some(DeploymentSpec::test(&format!("m{i:05}")).into()),
                })
                .await
                .expect("create")
            }
        })
        .buffer_unordered(16);
    while pending.next().await.is_some() {}
    let created = t0.elapsed();
    sim.counters().reset();
    let applies =
        || sim.counters().get("patch", "deployments") + sim.counters().get("patch", "services");
    let want = 2 * cold as u64;
    let health = free_port();
    let t0 = Instant::now();
    // FIRST_START_WRAP (like AGENT_WRAP) runs this agent under a profiler.
    let first_wrap = std::env::var("FIRST_START_WRAP").ok();
    let mut agent = spawn_agent(
        &ds,
        &gw.url(),
        &token,
        &kubeconfig,
        health,
        first_wrap.as_deref(),
    );
    // When the first apply arrives says how much of the time is start-up (process, gateway
    // snapshot, initial lists), the rest is the applies themselves.
    let mut first_apply = None;
    wait_until(
        "every new deployment applied",
        Duration::from_secs(1800),
        || {
            let n = applies();
            if n > 0 && first_apply.is_none() {
                first_apply = Some(t0.elapsed());
            }
            async move { n >= want }
        },
    )
    .await;
    let first_start = t0.elapsed();
    let first_apply = first_apply.unwrap_or(first_start);
    // What the agent asked of the API server meanwhile (watches count once per stream).
    let requests = sim.counters().snapshot();
    let agent_rate = want as f64 / first_start.as_secs_f64();
    let steady_rss = peak_rss_kib(agent.id());
    stop(&mut agent);
    let (sim_took, sim_rate) = sim_apply_rate(&sim, cold).await;
    println!();
    println!("## first start with {cold} new deployments");
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| creating {cold} through the gateway (no agent running) | {:.1} s |",
        created.as_secs_f64()
    );
    println!(
        "| **agent: start until all {cold} applied** (Deployment + Service each) | **{:.2} s** |",
        first_start.as_secs_f64()
    );
    println!(
        "| of which start-up: agent start until its first apply | {:.2} s |",
        first_apply.as_secs_f64()
    );
    println!("| agent: server-side applies per second | **{agent_rate:.0}/s** |");
    println!(
        "| simulator alone: {want} applies of the same objects, {SIM_CONCURRENCY} at once from one kube client | {:.2} s, **{sim_rate:.0}/s** |",
        sim_took.as_secs_f64()
    );
    println!(
        "| agent rate / simulator rate | **{:.2}** |",
        agent_rate / sim_rate
    );
    println!(
        "| agent's peak RSS after applying them | {:.1} MiB |",
        steady_rss as f64 / 1024.0
    );
    let per_deployment: Vec<String> = requests
        .iter()
        .map(|((verb, resource), n)| format!("{verb} {resource} {n}"))
        .collect();
    println!(
        "| agent: API requests until all applied ({:.2} per deployment) | {} |",
        requests.values().sum::<u64>() as f64 / cold as f64,
        per_deployment.join(", ")
    );
    println!();
    println!("## cold restart with {cold} owned deployments, nothing changed");
    println!("| measure | value |");
    println!("| --- | --- |");
    // RESTARTS=n restarts n times; with DS_BIN_ALT set they alternate between DS_BIN and
    // that binary (A/B in one run, same cluster and gateway state).
    let restarts = env_usize("RESTARTS", 1);
    let alt = std::env::var("DS_BIN_ALT").ok().map(PathBuf::from);
    let wrap = std::env::var("AGENT_WRAP").ok();
    for n in 0..restarts {
        let bin = match &alt {
            Some(b) if n % 2 == 1 => b.clone(),
            _ => ds.clone(),
        };
        let r = restart(&bin, &sim, &gw.url(), &token, &kubeconfig, wrap.as_deref()).await;
        println!(
            "| restart {} (`{}`): time to ready (`/readyz` 200) | {:.2} s |",
            n + 1,
            bin.display(),
            r.ready.as_secs_f64()
        );
        println!(
            "| restart {}: write calls to the API server | {} |",
            n + 1,
            r.writes
        );
        println!(
            "| restart {}: agent peak RSS (of which file-backed at the end) | {:.1} MiB ({:.1} MiB) |",
            n + 1,
            r.peak_kib as f64 / 1024.0,
            r.file_kib as f64 / 1024.0
        );
    }
    // Bounded: a slow drain must not keep the benchmark (and its CPU use) alive.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        sim.shutdown().await;
        gw.shutdown().await;
    })
    .await;
    std::process::exit(0);
}

/// Applies in flight at once when the simulator's own rate is measured: the agent's
/// default concurrency, so both figures come from the same number of requests in flight.
const SIM_CONCURRENCY: usize = ds_agent::DEFAULT_CONCURRENCY;

/// The simulator's own server-side-apply rate: the Deployment and Service of `n` new
/// deployments (the objects the agent builds, under another owner so the agent's watches
/// never see them), applied straight from a kube client. Returns (elapsed, applies/s).
async fn sim_apply_rate(sim: &SimCluster, n: usize) -> (Duration, f64) {
    let client = sim.client();
    let pp = PatchParams::apply("ds-deployer").force();
    let objects: Vec<(Kind, String, serde_json::Value)> = (0..n)
        .flat_map(|i| {
            let name = format!("ssa{i:05}");
            let obj = DeployedObject {
                id: format!("ssa-{i}"),
                deployer_id: "ssa-bench".into(),
                name: name.clone(),
                namespace: "default".into(),
                revision: 1,
                spec: DeploymentSpec::test(&name),
            };
            let d = serde_json::to_value(desired_deployment(&obj, "ds:bench")).expect("json");
            let s = serde_json::to_value(desired_service(&obj)).expect("json");
            [
                (Kind::Deployment, name.clone(), d),
                (Kind::Service, name, s),
            ]
        })
        .collect();
    let total = objects.len();
    let t0 = Instant::now();
    let mut applies = futures::stream::iter(objects)
        .map(|(kind, name, value)| {
            let (client, pp) = (client.clone(), pp.clone());
            async move {
                Slim::api(client, kind, Some("default"))
                    .patch(&name, &pp, &Patch::Apply(&value))
                    .await
                    .expect("apply");
            }
        })
        .buffer_unordered(SIM_CONCURRENCY);
    while applies.next().await.is_some() {}
    let took = t0.elapsed();
    (took, total as f64 / took.as_secs_f64())
}

struct Restart {
    ready: Duration,
    writes: u64,
    peak_kib: u64,
    file_kib: u64,
}

/// Starts a fresh agent process on the existing state; measures until ready and one more
/// full pass.
async fn restart(
    ds: &Path,
    sim: &SimCluster,
    gateway: &str,
    token: &str,
    kubeconfig: &Path,
    wrap: Option<&str>,
) -> Restart {
    sim.counters().reset();
    let health2 = free_port();
    let t0 = Instant::now();
    let mut agent = spawn_agent(ds, gateway, token, kubeconfig, health2, wrap);
    // RSS timeline of the restarted agent: when the peak happens says what causes it.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pid, on) = (agent.id(), sampling.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((
                    t0.elapsed(),
                    status_kib(pid, "VmRSS:"),
                    status_kib(pid, "RssFile:"),
                ));
                std::thread::sleep(Duration::from_millis(1));
            }
            samples
        })
    };
    wait_until("ready", Duration::from_secs(600), || async {
        http_get(health2, "/readyz")
            .await
            .is_some_and(|(c, _)| c == 200)
    })
    .await;
    let ready = t0.elapsed();
    // One more full pass after ready, so late writes would be counted too.
    let runs = |body: &str| metric(body, "ds_agent_reconcile_runs_total");
    let start_runs = runs(&http_get(health2, "/metrics").await.unwrap().1);
    wait_until("another pass", Duration::from_secs(120), || async {
        http_get(health2, "/metrics")
            .await
            .is_some_and(|(_, b)| runs(&b) > start_runs)
    })
    .await;
    let writes = sim.counters().writes();
    let peak_kib = peak_rss_kib(agent.id());
    let file_kib = status_kib(agent.id(), "RssFile:");
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    stop(&mut agent);
    if std::env::var_os("RSS_TIMELINE").is_some() {
        // Every 50 ms, the highest RSS seen in that window.
        let mut window = Duration::ZERO;
        let mut high = (0, 0);
        eprintln!(
            "restart RSS timeline (s, MiB of which file-backed), ready at {:.2} s:",
            ready.as_secs_f64()
        );
        for (t, kib, file) in &samples {
            if *kib > high.0 {
                high = (*kib, *file);
            }
            if *t >= window + Duration::from_millis(50) {
                eprintln!(
                    "{:6.2} {:6.1} {:6.1}",
                    t.as_secs_f64(),
                    high.0 as f64 / 1024.0,
                    high.1 as f64 / 1024.0
                );
                window = *t;
                high = (0, 0);
            }
        }
    }
    Restart {
        ready,
        writes,
        peak_kib,
        file_kib,
    }
}
