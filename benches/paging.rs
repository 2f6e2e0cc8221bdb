//! The paging proof of issue 15: DS_PAGING_COUNT (default 10,000) deployments of about
//! 200 KiB each (about 2 GB) in one deployer reach a Watch and a List whole, in pages, and
//! `ds deployment ls` lists all of them; prints the times and peak RSS figures that
//! docs/benchmarks.md quotes. About 2 GB of disk and minutes, so a benchmark rather than a
//! test (`tests/paging.rs` runs the same code paths with 30 and 100 deployments):
//! `hack/bench-paging.sh`, or `cargo bench --bench paging`.

#[path = "../tests/paging_support/mod.rs"]
mod paging_support;

use ds_test_support::{TestGateway, agent_service, pages};
use paging_support::{assert_whole, ds_ls, populate, watch};
use std::time::{Duration, Instant};

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
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
