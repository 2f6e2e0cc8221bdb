//! Load generator for the simulated Kubernetes API server (`docs/benchmarks.md`, section
//! Simulated cluster): create and patch throughput with concurrent kube clients, list time,
//! memory held per object, and watch fan-out to many concurrent watches.
//!
//! Against a running `ds sim-cluster` (memory read from its /proc entry):
//! `cargo bench --bench kube_sim_load -- --url http://127.0.0.1:6443 --sim-pid PID`
//! or in-process (memory then includes the load generator): `cargo bench --bench kube_sim_load`.

use clap::Parser;
use ds_kube_sim::{SimCluster, SimConfig};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchParams};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// Simulator URL; without it one is started in-process.
    #[arg(long)]
    url: Option<String>,
    /// The simulator's process ID, to read its RSS.
    #[arg(long)]
    sim_pid: Option<u32>,
    /// Objects to create (and hold).
    #[arg(long, default_value_t = 100_000)]
    objects: usize,
    /// Concurrent client tasks for writes.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Merge patches to time.
    #[arg(long, default_value_t = 20_000)]
    patches: usize,
    /// Concurrent watches for the fan-out phase.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Writes made while the watches are open.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Ignored: `cargo bench` passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn configmap(name: &str, group: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench", "group": group}},
        "data": {"model": "iris", "replicas": "3", "image": "registry.example.com/models/iris:1.4.2"}
    }))
    .expect("configmap")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `n` operations over `concurrency` tasks; returns (elapsed, sorted latencies).
async fn run_ops<F, Fut>(n: usize, concurrency: usize, op: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                let t = Instant::now();
                op(i).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let elapsed = start.elapsed();
    all.sort();
    (elapsed, all)
}

fn report(what: &str, n: usize, elapsed: Duration, lat: &[Duration]) {
    println!(
        "{what}: {n} in {:.2} s = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(lat, 0.5).as_secs_f64() * 1e3,
        pct(lat, 0.99).as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let baseline = rss_kib(cli.sim_pid);
    let (url, sim) = match &cli.url {
        Some(u) => (u.clone(), None),
        None => {
            let sim = SimCluster::start(SimConfig {
                rollout_delay: Duration::ZERO,
                ..SimConfig::default()
            })
            .await?;
            (sim.url(), Some(sim))
        }
    };
    let client = kube::Client::try_from(kube::Config::new(url.parse()?))?;
    println!(
        "simulator {url} ({}), {} objects, {} writers, {} watchers",
        if sim.is_some() {
            "in-process"
        } else {
            "separate process"
        },
        cli.objects,
        cli.concurrency,
        cli.watchers
    );
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "bench"}}))?;
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench");

    // Creates.
    let api = cms.clone();
    let (elapsed, lat) = run_ops(cli.objects, cli.concurrency, move |i| {
        let api = api.clone();
        async move {
            let group = if i % 2 == 0 { "a" } else { "b" };
            api.create(
                &PostParams::default(),
                &configmap(&format!("cm-{i}"), group),
            )
            .await
            .expect("create");
        }
    })
    .await;
    report("create", cli.objects, elapsed, &lat);
    let held = rss_kib(cli.sim_pid);
    println!(
        "memory: RSS {} MiB before, {} MiB holding {} objects ({:.2} KiB per object)",
        baseline / 1024,
        held / 1024,
        cli.objects,
        held.saturating_sub(baseline) as f64 / cli.objects as f64
    );

    // Patches.
    let api = cms.clone();
    let n = cli.objects.max(1);
    let (elapsed, lat) = run_ops(cli.patches, cli.concurrency, move |i| {
        let api = api.clone();
        async move {
            api.patch(
                &format!("cm-{}", i % n),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"replicas": (i % 7).to_string()}})),
            )
            .await
            .expect("patch");
        }
    })
    .await;
    report("merge patch", cli.patches, elapsed, &lat);

    // Server-side apply (the agent's write path).
    let api = cms.clone();
    let (elapsed, lat) = run_ops(cli.patches / 2, cli.concurrency, move |i| {
        let api = api.clone();
        async move {
            api.patch(
                &format!("cm-{}", i % n),
                &PatchParams::apply("bench").force(),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("cm-{}", i % n)},
                    "data": {"applied": (i % 5).to_string()}})),
            )
            .await
            .expect("apply");
        }
    })
    .await;
    report("server-side apply", cli.patches / 2, elapsed, &lat);

    // Lists: paginated as kube's watcher does (500 per page), and a selected list.
    let t = Instant::now();
    let mut lp = ListParams::default().limit(500);
    let mut total = 0;
    loop {
        let page = cms.list(&lp).await?;
        total += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = ListParams::default().limit(500).continue_token(&c),
            None => break,
        }
    }
    println!(
        "list all {total} (pages of 500): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let sel = cms
        .list(&ListParams::default().labels("group=a,app in (bench)"))
        .await?;
    println!(
        "list with label selector ({} items): {:.2} s",
        sel.items.len(),
        t.elapsed().as_secs_f64()
    );

    // Watch fan-out: every watcher selects group=a; each write below matches.
    let before_watch = rss_kib(cli.sim_pid);
    let rv = cms
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(cli.watchers);
    let mut done = Vec::new();
    for _ in 0..cli.watchers {
        // One client (connection pool) per watcher: one connection each, like separate agents.
        let c = kube::Client::try_from(kube::Config::new(url.parse()?))?;
        let api: Api<ConfigMap> = Api::namespaced(c, "bench");
        let received = received.clone();
        let ready = ready_tx.clone();
        let rv = rv.clone();
        let want = cli.events as u64;
        done.push(tokio::spawn(async move {
            let wp = WatchParams::default().labels("group=a").timeout(290);
            let mut s = api.watch(&wp, &rv).await.expect("watch").boxed();
            let _ = ready.send(()).await;
            let mut got = 0;
            while got < want {
                match s.next().await {
                    Some(Ok(kube::core::WatchEvent::Added(_))) => {
                        got += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            Instant::now()
        }));
    }
    for _ in 0..cli.watchers {
        ready_rx.recv().await;
    }
    let with_watches = rss_kib(cli.sim_pid);
    println!(
        "memory: {} watches open: RSS {} MiB ({:.1} KiB per watch)",
        cli.watchers,
        with_watches / 1024,
        with_watches.saturating_sub(before_watch) as f64 / cli.watchers as f64
    );
    let api = cms.clone();
    let start = Instant::now();
    let (elapsed, lat) = run_ops(cli.events, 4, move |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &configmap(&format!("ev-{i}"), "a"))
                .await
                .expect("create");
        }
    })
    .await;
    report("creates while watched", cli.events, elapsed, &lat);
    let mut finish = Vec::new();
    for d in done {
        finish.push(d.await?.duration_since(start));
    }
    finish.sort();
    let total = received.load(Ordering::Relaxed);
    let last = finish.last().copied().unwrap_or_default();
    println!(
        "watch fan-out: {total} events delivered to {} watches in {:.2} s = {:.0} events/s; \
         watch caught up p50 {:.2} s, max {:.2} s after the first write",
        cli.watchers,
        last.as_secs_f64(),
        total as f64 / last.as_secs_f64(),
        pct(&finish, 0.5).as_secs_f64(),
        last.as_secs_f64()
    );
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    Ok(())
}
