//! Issue 15, sizes: a deployer's deployments reach its agent (Watch, List) and
//! `ds deployment ls` in pages, so that no answer depends on tonic's 4 MiB message limit.
//! Each test holds many times that limit of deployments of about 200 KiB each. The
//! 10,000-deployment proof is `ten_thousand_deployments_of_200_kib` (ignored: about 2 GB;
//! `hack/bench-paging.sh` runs it and docs/benchmarks.md has its figures).

use ds_core::proto::{self, DeploymentView};
use ds_core::{DeploymentSpec, EnvVar};
use ds_kube_sim::{SimCluster, SimConfig};
use ds_test_support::pages::{self, MESSAGE_LIMIT, PagedSnapshot};
use ds_test_support::{
    Control, DEADLINE, TestGateway, agent_args, agent_service, eventually_within, start_agent,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use prost::Message;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Each deployment's spec: about 200 KiB of env values (under the 32 KiB per value and
/// 256 KiB per spec limits).
const SPEC_BYTES: usize = 200 * 1024;
const ENV_VALUES: usize = 7;
/// Creates in flight at once: the gateway commits concurrent creates in groups.
const CREATES_IN_FLIGHT: usize = 32;

/// A valid spec of about [`SPEC_BYTES`], different for each `i`.
fn large_spec(i: usize) -> DeploymentSpec {
    let mut spec = DeploymentSpec::test("model");
    let chunk = format!("{i:06}-abcdefghijklmnopqrstuvwxyz0123456789-");
    let value: String = chunk.repeat(SPEC_BYTES / ENV_VALUES / chunk.len());
    spec.env = (0..ENV_VALUES)
        .map(|k| EnvVar {
            name: format!("BLOB_{k}"),
            value: value.clone(),
        })
        .collect();
    spec
}

fn name(i: usize) -> String {
    format!("m-{i:05}")
}

/// A deployer named `deployer` with `count` large deployments; its token.
async fn populate(control: &Control, deployer: &str, count: usize) -> String {
    let token = control
        .clone()
        .create_deployer(proto::CreateDeployerRequest {
            name: deployer.into(),
        })
        .await
        .expect("deployer created")
        .into_inner()
        .token;
    let creates = futures::stream::iter(0..count).map(|i| {
        let mut control = control.clone();
        async move {
            control
                .create_deployment(proto::CreateDeploymentRequest {
                    deployer: deployer.into(),
                    name: name(i),
                    namespace: "default".into(),
                    spec: Some(large_spec(i).into()),
                })
                .await
                .map(|_| ())
        }
    });
    let results: Vec<_> = creates.buffer_unordered(CREATES_IN_FLIGHT).collect().await;
    for r in results {
        r.expect("large deployment created");
    }
    token
}

/// Checks a snapshot holds each of the `count` deployments once, at revision `count`
/// (one create each), came in more than one page, and that its pages together exceed
/// the message limit: the old single message could not have carried it.
fn assert_whole(paged: &PagedSnapshot, count: usize, what: &str) {
    assert!(paged.snapshot.complete, "{what}: complete");
    assert_eq!(paged.ids.len(), count, "{what}: every deployment");
    let unique: HashSet<&String> = paged.ids.iter().collect();
    assert_eq!(unique.len(), count, "{what}: each once");
    assert_eq!(
        paged.snapshot.revision, count as u64,
        "{what}: one revision"
    );
    assert!(paged.pages > 1, "{what}: paged ({} pages)", paged.pages);
    assert!(
        paged.largest_page < MESSAGE_LIMIT,
        "{what}: pages within the limit"
    );
    assert!(
        count * SPEC_BYTES > MESSAGE_LIMIT,
        "{what}: the test exceeds the limit"
    );
}

/// Opens a Watch and reads its snapshot pages.
async fn watch(url: &str, token: &str, ids_only: bool) -> PagedSnapshot {
    let mut agent = agent_service(url, token);
    let mut stream = agent
        .watch(proto::WatchRequest::default())
        .await
        .expect("watch opens")
        .into_inner();
    pages::watch_snapshot(&mut stream, ids_only)
        .await
        .expect("the whole watch snapshot")
}

/// The `ds` binary cargo built for this test (`DS_TEST_BIN` overrides it, as in cli.rs).
fn ds_binary() -> PathBuf {
    std::env::var_os("DS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ds")))
}

/// Runs `ds deployment ls ARGS` against the gateway; its stdout. With `measure`, under
/// `/usr/bin/time` (when there is one), printing the process's peak RSS.
async fn ds_ls(gw: &TestGateway, args: &[&str], deadline: Duration, measure: bool) -> String {
    let time = std::path::Path::new("/usr/bin/time");
    let measure = measure && time.exists();
    let mut cmd = if measure {
        let mut cmd = tokio::process::Command::new(time);
        cmd.args(["-f", "ds deployment ls: peak RSS %M KiB"])
            .arg(ds_binary());
        cmd
    } else {
        tokio::process::Command::new(ds_binary())
    };
    cmd.args(["deployment", "ls"])
        .args(args)
        .env("DS_GATEWAY", gw.url())
        .env("DS_API_KEY", &gw.admin_key)
        .env("DS_CONFIG", gw.dir().join("ds-config.yaml"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .expect("ds finishes")
        .expect("ds runs");
    assert!(
        out.status.success(),
        "ds deployment ls failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if measure {
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{}", stderr.lines().last().unwrap_or_default());
    }
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `ds deployment ls -o json`: the names, checked to be every deployment once.
async fn assert_ls_json(gw: &TestGateway, count: usize) {
    let out = ds_ls(gw, &["-o", "json"], DEADLINE, false).await;
    let listed: serde_json::Value = serde_json::from_str(&out).expect("one JSON list");
    let names: Vec<&str> = listed
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|d| d["name"].as_str().expect("a name"))
        .collect();
    let expected: Vec<String> = (0..count).map(name).collect();
    assert_eq!(names, expected, "every deployment once, in order");
    let env = &listed[0]["spec"]["env"];
    assert_eq!(
        env.as_array().map(Vec::len),
        Some(ENV_VALUES),
        "whole specs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_large_deployments_sync_to_a_real_agent_and_list() {
    // 30 x 200 KiB = 6 MiB: one snapshot message over the limit before paging.
    const COUNT: usize = 30;
    let gw = TestGateway::start().await;
    let token = populate(&gw.control(), "big", COUNT).await;

    assert_whole(&watch(&gw.url(), &token, false).await, COUNT, "watch");
    let listed = pages::list_snapshot(&mut agent_service(&gw.url(), &token))
        .await
        .expect("list");
    assert_whole(&listed, COUNT, "list");
    let spec = listed.snapshot.deployments[0].spec.clone().expect("a spec");
    let expected = large_spec(0);
    let values: Vec<&str> = spec.env.iter().map(|e| e.value.as_str()).collect();
    let sent: Vec<&str> = expected.env.iter().map(|e| e.value.as_str()).collect();
    assert_eq!(values, sent, "specs arrive whole");
    assert_ls_json(&gw, COUNT).await;

    // A real agent syncs every deployment into the simulated cluster.
    let sim = SimCluster::start(SimConfig::default()).await.expect("sim");
    let agent = start_agent(agent_args(&gw.url(), &token), sim.client()).await;
    let api: Api<Deployment> = Api::namespaced(sim.client(), "default");
    eventually_within(
        Duration::from_secs(120),
        "the agent to create all 30 Deployments",
        || async {
            let list = api.list(&Default::default()).await.ok()?;
            (list.items.len() == COUNT).then_some(())
        },
    )
    .await;
    agent.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_large_deployments_page_through_watch_list_and_ls() {
    // 100 x 200 KiB = 20 MiB: five times the limit.
    const COUNT: usize = 100;
    let gw = TestGateway::start().await;
    let token = populate(&gw.control(), "big", COUNT).await;
    // A small deployer beside it: its snapshot stays one page, the list covers both.
    let small = gw
        .control()
        .create_deployer(proto::CreateDeployerRequest {
            name: "small".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;

    let watched = watch(&gw.url(), &token, false).await;
    assert_whole(&watched, COUNT, "watch");
    // Pages come sorted by namespace and name, without overlap.
    let names: Vec<&str> = watched
        .snapshot
        .deployments
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let expected: Vec<String> = (0..COUNT).map(name).collect();
    assert_eq!(names, expected);
    let listed = pages::list_snapshot(&mut agent_service(&gw.url(), &token))
        .await
        .expect("list");
    assert_whole(&listed, COUNT, "list");
    assert_eq!(listed.ids, watched.ids, "the same snapshot both ways");
    let empty = pages::list_snapshot(&mut agent_service(&gw.url(), &small))
        .await
        .expect("list");
    assert_eq!((empty.pages, empty.ids.len()), (1, 0), "one empty page");
    assert!(empty.snapshot.complete);

    // ListDeployments: bounded pages the CLI follows.
    let mut control = gw.control();
    let mut token_in = String::new();
    let mut seen: Vec<DeploymentView> = Vec::new();
    let mut answers = 0;
    loop {
        let page = control
            .list_deployments(proto::ListDeploymentsRequest {
                page_token: token_in,
                ..Default::default()
            })
            .await
            .expect("a page")
            .into_inner();
        answers += 1;
        assert!(page.encoded_len() < MESSAGE_LIMIT);
        seen.extend(page.deployments);
        if page.next_page_token.is_empty() {
            break;
        }
        token_in = page.next_page_token;
    }
    assert!(answers > 1, "bounded by bytes: {answers} pages");
    assert_eq!(seen.len(), COUNT);
    assert_ls_json(&gw, COUNT).await;
}

#[tokio::test]
async fn list_deployments_pages_by_count_and_refuses_a_made_up_token() {
    let gw = TestGateway::start().await;
    let mut control = gw.control();
    for deployer in ["a", "b"] {
        control
            .create_deployer(proto::CreateDeployerRequest {
                name: deployer.into(),
            })
            .await
            .unwrap();
        for i in 0..3 {
            control
                .create_deployment(proto::CreateDeploymentRequest {
                    deployer: deployer.into(),
                    name: name(i),
                    namespace: "default".into(),
                    spec: Some(DeploymentSpec::test("iris").into()),
                })
                .await
                .unwrap();
        }
    }
    let mut page_token = String::new();
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = control
            .list_deployments(proto::ListDeploymentsRequest {
                page_size: 4,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.deployments.len());
        seen.extend(page.deployments.into_iter().map(|v| {
            let d = v.deployment.unwrap();
            (v.deployer_name, d.name)
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(sizes, [4, 2]);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 6, "each deployment once: {seen:?}");

    // One deployer's list pages the same way.
    let only_b = control
        .list_deployments(proto::ListDeploymentsRequest {
            deployer: "b".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_b.deployments.len(), 2);
    let rest = control
        .list_deployments(proto::ListDeploymentsRequest {
            deployer: "b".into(),
            page_size: 2,
            page_token: only_b.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = only_b
        .deployments
        .iter()
        .chain(&rest.deployments)
        .map(|v| v.deployment.clone().unwrap().name)
        .collect();
    assert_eq!(names, [name(0), name(1), name(2)]);
    assert!(rest.next_page_token.is_empty());
    let err = control
        .list_deployments(proto::ListDeploymentsRequest {
            deployer: "a".into(),
            page_token: only_b.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("b's token for a's list");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let err = control
        .list_deployments(proto::ListDeploymentsRequest {
            page_token: "made-up".into(),
            ..Default::default()
        })
        .await
        .expect_err("a token the gateway did not issue");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("page_token:"),
        "{}",
        err.message()
    );
}

/// The peak resident memory of this process since the last reset, in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Resets the peak that [`peak_rss_mib`] reads (Linux: `5` into clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The proof: 10,000 deployments of 200 KiB (about 2 GB) in one deployer reach a
/// Watch and a List whole, and `ds deployment ls` lists all of them. About 2 GB of disk
/// and minutes: run by `hack/bench-paging.sh` (`DS_PAGING_COUNT` changes the count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 2 GB and minutes: hack/bench-paging.sh runs it"]
async fn ten_thousand_deployments_of_200_kib() {
    let count: usize = std::env::var("DS_PAGING_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let gw = TestGateway::start().await;
    let started = Instant::now();
    let token = populate(&gw.control(), "big", count).await;
    let populated = started.elapsed();
    println!("created {count} deployments in {populated:.1?}");

    // The gateway's memory while serving: this process holds the gateway and clients
    // that drop each page once counted.
    reset_peak_rss();
    let before = peak_rss_mib();
    let t = Instant::now();
    let watched = watch(&gw.url(), &token, true).await;
    assert_whole(&watched, count, "watch");
    println!(
        "watch snapshot: {} pages (largest {} KiB) in {:.1?}",
        watched.pages,
        watched.largest_page / 1024,
        t.elapsed()
    );
    let t = Instant::now();
    let listed = pages::list_ids(&mut agent_service(&gw.url(), &token))
        .await
        .expect("list");
    assert_whole(&listed, count, "list");
    println!("list: {} pages in {:.1?}", listed.pages, t.elapsed());
    println!(
        "peak RSS of gateway and clients while serving: {} MiB (before: {before} MiB)",
        peak_rss_mib()
    );

    let t = Instant::now();
    let table = ds_ls(&gw, &[], Duration::from_secs(600), true).await;
    let rows = table.lines().filter(|l| l.contains("m-")).count();
    assert_eq!(rows, count, "ds deployment ls lists every deployment");
    println!("ds deployment ls: {rows} rows in {:.1?}", t.elapsed());
    println!("total {:.1?}", started.elapsed());
}
