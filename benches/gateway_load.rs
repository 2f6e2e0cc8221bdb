//! Load generator for `ds gateway`, run as its own process against a running gateway
//! (see `docs/benchmarks.md`, section Gateway):
//!
//! - `fanout`: opens N agent Watch streams on one deployer, then times each update RPC
//!   until its Upsert reached every stream, and reads the gateway's RSS per stream.
//! - `create`: CreateDeployment RPCs per second with concurrent clients.
//!
//! `cargo bench --bench gateway_load -- fanout --url http://127.0.0.1:8800 --api-key KEY
//! --streams 1000 --gateway-pid PID`

use clap::{Parser, Subcommand};
use ds_core::DeploymentSpec;
use ds_core::proto::agent_service_client::AgentServiceClient;
use ds_core::proto::control_service_client::ControlServiceClient;
use ds_core::proto::{self, watch_event};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Ignored: `cargo bench` passes `--bench`.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// Watch-stream fan-out latency and memory.
    Fanout {
        #[arg(long)]
        url: String,
        #[arg(long)]
        api_key: String,
        /// Number of Watch streams.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Streams per HTTP/2 connection (1 = one connection per agent, as in production).
        #[arg(long, default_value_t = 1)]
        per_conn: usize,
        /// Update RPCs to time.
        #[arg(long, default_value_t = 30)]
        updates: u32,
        /// The gateway's process ID, to read its RSS from /proc.
        #[arg(long)]
        gateway_pid: Option<u32>,
    },
    /// CreateDeployment throughput.
    Create {
        #[arg(long)]
        url: String,
        #[arg(long)]
        api_key: String,
        /// Concurrent callers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP/2 connections shared by the callers.
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// How long to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

use ds_test_support::{Bearer, Control};

async fn connect(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = cli.bench;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match cli.mode {
            Mode::Fanout {
                url,
                api_key,
                streams,
                per_conn,
                updates,
                gateway_pid,
            } => {
                fanout(
                    &url,
                    &api_key,
                    streams,
                    per_conn.max(1),
                    updates,
                    gateway_pid,
                )
                .await
            }
            Mode::Create {
                url,
                api_key,
                concurrency,
                conns,
                seconds,
            } => create(&url, &api_key, concurrency, conns.max(1), seconds).await,
        }
    })
}

async fn fanout(
    url: &str,
    api_key: &str,
    streams: usize,
    per_conn: usize,
    updates: u32,
    gateway_pid: Option<u32>,
) -> anyhow::Result<()> {
    let mut control: Control =
        ControlServiceClient::with_interceptor(connect(url).await?, Bearer::from_plain(api_key));
    let name = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let created = control
        .create_deployer(proto::CreateDeployerRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let token = created.token;
    let view = control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: name.clone(),
            name: "fanout".into(),
            namespace: "bench".into(),
            spec: Some(DeploymentSpec::test("fanout").into()),
        })
        .await?
        .into_inner();
    let deployment_id = view.deployment.map(|d| d.id).unwrap_or_default();

    let rss_before = gateway_pid.and_then(rss_kib);
    let (arrivals_tx, mut arrivals_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let ready = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let connect_limit = Arc::new(tokio::sync::Semaphore::new(256));
    let opening = Instant::now();
    let conns = streams.div_ceil(per_conn);
    for c in 0..conns {
        let channel = {
            let _permit = connect_limit.acquire().await?;
            let mut attempt = 0;
            loop {
                match connect(url).await {
                    Ok(ch) => break ch,
                    Err(e) if attempt < 5 => {
                        attempt += 1;
                        eprintln!("connect {c}: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let n = per_conn.min(streams - c * per_conn);
        for _ in 0..n {
            let mut agent =
                AgentServiceClient::with_interceptor(channel.clone(), Bearer::from_plain(&token));
            let tx = arrivals_tx.clone();
            let ready = ready.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let mut stream = match agent.watch(proto::WatchRequest::default()).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        eprintln!("watch: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                let mut counted = false;
                while let Ok(Some(ev)) = stream.message().await {
                    match ev.event {
                        Some(watch_event::Event::Snapshot(_)) if !counted => {
                            counted = true;
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(watch_event::Event::Upsert(u)) => {
                            let _ = tx.send((u.revision, Instant::now()));
                        }
                        _ => {}
                    }
                }
                failed.fetch_add(1, Ordering::Relaxed);
            });
        }
    }
    drop(arrivals_tx);
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < streams as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_time = opening.elapsed();
    let ok = ready.load(Ordering::Relaxed) as usize;
    eprintln!(
        "{ok} streams ready ({} failed) in {}",
        streams - ok,
        ms(open_time)
    );
    // Let allocations settle before reading the RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = gateway_pid.and_then(rss_kib);

    let mut per_stream = Vec::new();
    let mut to_all = Vec::new();
    let mut pending: HashMap<u64, Vec<Instant>> = HashMap::new();
    for k in 0..updates {
        let t0 = Instant::now();
        let updated = control
            .update_deployment(proto::UpdateDeploymentRequest {
                selector: Some(proto::GetDeploymentRequest {
                    deployment: deployment_id.clone(),
                    ..Default::default()
                }),
                replicas: Some(2 + k % 2),
                ..Default::default()
            })
            .await?
            .into_inner();
        let revision = updated
            .deployment
            .map(|d| d.revision_of_last_change)
            .unwrap_or_default();
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let have = pending.get(&revision).map_or(0, Vec::len);
            if have >= ok {
                break;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, arrivals_rx.recv()).await {
                Ok(Some((rev, at))) => pending.entry(rev).or_default().push(at),
                _ => break,
            }
        }
        let arrived = pending.remove(&revision).unwrap_or_default();
        if arrived.len() < ok {
            eprintln!(
                "update {k}: only {} of {ok} streams got revision {revision}",
                arrived.len()
            );
        }
        let lat: Vec<Duration> = arrived.iter().map(|a| a.duration_since(t0)).collect();
        if let Some(max) = lat.iter().max() {
            to_all.push(*max);
        }
        per_stream.extend(lat);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    per_stream.sort();
    to_all.sort();
    println!("fan-out: {ok} streams on {conns} connections, {updates} updates");
    println!("  streams opened (snapshot received) in {}", ms(open_time));
    println!(
        "  update RPC -> arrival at one stream: p50 {}, p99 {}",
        ms(percentile(&per_stream, 0.50)),
        ms(percentile(&per_stream, 0.99))
    );
    println!(
        "  update RPC -> arrival at all streams: p50 {}, p99 {}, max {}",
        ms(percentile(&to_all, 0.50)),
        ms(percentile(&to_all, 0.99)),
        ms(to_all.last().copied().unwrap_or_default())
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per = (after.saturating_sub(before) as f64) / ok.max(1) as f64;
        println!(
            "  gateway RSS: {before} KiB before, {after} KiB with streams: {per:.1} KiB per stream"
        );
    }
    Ok(())
}

async fn create(
    url: &str,
    api_key: &str,
    concurrency: usize,
    conns: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for _ in 0..conns {
        channels.push(connect(url).await?);
    }
    let mut control: Control =
        ControlServiceClient::with_interceptor(channels[0].clone(), Bearer::from_plain(api_key));
    let name = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    control
        .create_deployer(proto::CreateDeployerRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = ControlServiceClient::with_interceptor(
            channels[w % conns].clone(),
            Bearer::from_plain(api_key),
        );
        let done = done.clone();
        let errors = errors.clone();
        let deployer = name.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < end {
                let model = format!("m-{w}-{i}");
                i += 1;
                let t = Instant::now();
                let r = client
                    .create_deployment(proto::CreateDeploymentRequest {
                        deployer: deployer.clone(),
                        name: model.clone(),
                        namespace: "bench".into(),
                        spec: Some(DeploymentSpec::test(&model).into()),
                    })
                    .await;
                lat.push(t.elapsed());
                match r {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("create: {e}");
                        }
                        0
                    }
                };
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let elapsed = start.elapsed();
    lat.sort();
    let n = done.load(Ordering::Relaxed);
    println!(
        "create: {n} deployments in {:.1} s with {concurrency} callers on {conns} connections: {:.0}/s ({} errors)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        errors.load(Ordering::Relaxed)
    );
    println!(
        "  latency p50 {}, p99 {}",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99))
    );
    Ok(())
}
