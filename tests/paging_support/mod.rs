//! What the paging tests (`tests/paging.rs`) and the paging benchmark
//! (`benches/paging.rs`, run by `hack/bench-paging.sh`) share: a deployer full of
//! deployments of about 200 KiB, and the readers that check a paged snapshot and list.
// Each user takes its own subset.
#![allow(dead_code)]

use ds_core::proto;
use ds_core::{DeploymentSpec, EnvVar};
use ds_test_support::pages::{self, MESSAGE_LIMIT, PagedSnapshot};
use ds_test_support::{Control, TestGateway, agent_service};
use futures::StreamExt;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// Each deployment's spec: about 200 KiB of env values (under the 32 KiB per value and
/// 256 KiB per spec limits).
pub const SPEC_BYTES: usize = 200 * 1024;
pub const ENV_VALUES: usize = 7;
/// Creates in flight at once: the gateway commits concurrent creates in groups.
const CREATES_IN_FLIGHT: usize = 32;

/// A valid spec of about [`SPEC_BYTES`], different for each `i`.
pub fn large_spec(i: usize) -> DeploymentSpec {
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

pub fn name(i: usize) -> String {
    format!("m-{i:05}")
}

/// A deployer named `deployer` with `count` large deployments; its token.
pub async fn populate(control: &Control, deployer: &str, count: usize) -> String {
    let token = control
        .clone()
        .create_deployer(proto::CreateDeployerRequest {
            name: deployer.into(),
            ..Default::default()
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
pub fn assert_whole(paged: &PagedSnapshot, count: usize, what: &str) {
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
pub async fn watch(url: &str, token: &str, ids_only: bool) -> PagedSnapshot {
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
pub fn ds_binary() -> PathBuf {
    std::env::var_os("DS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ds")))
}

/// Runs `ds deployment ls ARGS` against the gateway; its stdout. With `measure`, under
/// `/usr/bin/time` (when there is one), printing the process's peak RSS.
pub async fn ds_ls(gw: &TestGateway, args: &[&str], deadline: Duration, measure: bool) -> String {
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
