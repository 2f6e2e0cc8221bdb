//! The `ds` CLI tested as a process (`CARGO_BIN_EXE_ds`) against a real gateway running
//! in the test on 127.0.0.1:0, with a temporary SQLite file. Where a status is needed
//! (`--wait`), the test plays the agent with a tonic client and the deployer's token;
//! the promotion test across clusters runs real agents on `ds-kube-sim` clusters instead.

use ds_core::proto::{self, Phase};
use ds_gateway::{GatewayArgs, RunningGateway};
use ds_test_support::cli::{self, Run};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

const IMAGE: &str = "tensorflow/serving:2.15.0";

// === helpers ===

struct TestGateway {
    gw: RunningGateway,
    dir: tempfile::TempDir,
}

async fn start() -> TestGateway {
    start_with(|_| {}).await
}

/// A gateway whose arguments `change` adjusts first.
async fn start_with(change: impl FnOnce(&mut GatewayArgs)) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = GatewayArgs::insecure("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    change(&mut args);
    let gw = RunningGateway::start(args).await.expect("gateway starts");
    TestGateway { gw, dir }
}

/// What a finished `ds` run printed.
impl TestGateway {
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("ds-config.yaml")
    }

    /// `ds ARGS` with the gateway and key in the environment, and a private config path
    /// so the user's own config never leaks into the test.
    fn ds(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare(args);
        cmd.env("DS_GATEWAY", self.gw.url())
            .env("DS_API_KEY", &self.gw.admin_key);
        cmd
    }

    /// `ds ARGS` with no gateway or key, only the test's config path.
    fn bare(&self, args: &[&str]) -> Command {
        cli::bare(&ds_binary(), &self.config_path(), args)
    }

    async fn run(&self, args: &[&str]) -> Run {
        output(self.ds(args)).await
    }

    /// Creates a deployer through the CLI; returns its ID and token.
    async fn deployer(&self, name: &str) -> (String, String) {
        let created = self
            .run(&["deployer", "create", name, "-o", "json"])
            .await
            .json();
        (
            created["id"].as_str().unwrap().to_string(),
            created["token"].as_str().unwrap().to_string(),
        )
    }

    /// `ds deployment get NAME -o json`, parsed.
    async fn get_json(&self, name: &str) -> Value {
        self.run(&["deployment", "get", name, "-o", "json"])
            .await
            .json()
    }

    /// Creates a deployment through the CLI; returns its JSON view.
    async fn deployment(&self, deployer: &str, model: &str, extra: &[&str]) -> Value {
        let mut args = vec![
            "deployment",
            "create",
            "--model-name",
            model,
            "-d",
            deployer,
            "-i",
            IMAGE,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        self.run(&args).await.json()
    }

    /// Plays the deployer's agent; it reports once at once, as a starting agent does, so
    /// the deployer counts as connected (`--wait` gives up on a deployer without one).
    async fn agent(&self, token: &str) -> FakeAgent {
        let mut agent = FakeAgent(ds_test_support::agent_service(&self.gw.url(), token));
        agent.heartbeat().await;
        agent
    }
}

/// The `ds` binary cargo built for this test. `DS_TEST_BIN` overrides it: with a target
/// directory shared by several checkouts, another checkout's build can replace
/// `target/debug/ds` while these tests run, so a copy taken right after the build is used.
fn ds_binary() -> PathBuf {
    std::env::var_os("DS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ds")))
}

async fn output(cmd: Command) -> Run {
    cli::output(cmd, DEADLINE).await
}

/// The test acting as a deployer's agent: it reports statuses like `ds agent` would.
struct FakeAgent(ds_test_support::AgentService);

impl FakeAgent {
    async fn report(&mut self, id: &str, phase: Phase, ready: u32, applied: u64, error: &str) {
        self.0
            .report_status(proto::StatusReport {
                agent: Some(proto::AgentInfo {
                    version: "test-agent".into(),
                    cluster: "test".into(),
                    connected_since: "2026-11-22T00:00:00Z".into(),
                    instance: "t".into(),
                    namespaces: vec![],
                }),
                statuses: vec![proto::DeploymentStatus {
                    deployment_id: id.to_string(),
                    phase: phase as i32,
                    ready_replicas: ready,
                    available_replicas: ready,
                    updated_replicas: ready,
                    applied_revision: applied,
                    endpoint: String::new(),
                    last_error: error.to_string(),
                    ..Default::default()
                }],
                objects: None,
            })
            .await
            .expect("status accepted");
    }
}

impl FakeAgent {
    /// A report with no statuses: the agent's heartbeat.
    async fn heartbeat(&mut self) {
        self.0
            .report_status(proto::StatusReport {
                agent: Some(proto::AgentInfo {
                    version: "test-agent".into(),
                    cluster: "test".into(),
                    ..Default::default()
                }),
                statuses: vec![],
                objects: None,
            })
            .await
            .expect("heartbeat accepted");
    }

    /// Reports `owned` of the deployer's objects left in the cluster at `revision`.
    async fn objects(&mut self, revision: u64, owned: u32) {
        self.0
            .report_status(proto::StatusReport {
                agent: Some(proto::AgentInfo {
                    version: "test-agent".into(),
                    cluster: "test".into(),
                    ..Default::default()
                }),
                statuses: vec![],
                objects: Some(proto::ClusterObjects { revision, owned }),
            })
            .await
            .expect("report accepted");
    }

    /// The deployer's snapshot, as the agent lists it.
    async fn list(&mut self) -> Result<proto::Snapshot, tonic::Status> {
        ds_test_support::pages::list_snapshot(&mut self.0)
            .await
            .map(|paged| paged.snapshot)
    }
}

/// A `ds` process whose stderr is read line by line while it runs.
struct Running {
    child: Child,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ds starts");
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Self {
            child,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Reads stderr until a line contains `needle`.
    async fn wait_for_line(&mut self, needle: &str) {
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = self.stderr.next_line().await.expect("read stderr") {
                let hit = line.contains(needle);
                self.seen.push(line);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "no stderr line with {needle:?}; saw: {:?}",
            self.seen
        );
    }

    /// Waits for the exit; returns the code and the rest of stderr.
    async fn finish(mut self) -> (Option<i32>, String) {
        let rest = tokio::time::timeout(DEADLINE, async {
            let mut rest = self.seen.join("\n");
            while let Some(line) = self.stderr.next_line().await.expect("read stderr") {
                rest.push('\n');
                rest.push_str(&line);
            }
            rest
        })
        .await
        .expect("stderr closes");
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("ds exits")
            .expect("wait");
        (status.code(), rest)
    }
}

// === deployers ===

#[tokio::test]
async fn deployer_create_ls_get_rotate_rm() {
    let t = start().await;

    let created = t.run(&["deployer", "create", "prod-eu"]).await;
    let text = created.ok();
    assert!(text.contains("Name:") && text.contains("prod-eu"), "{text}");
    let token_line = text
        .lines()
        .find(|l| l.starts_with("Token:"))
        .expect("token line");
    let token = token_line.trim_start_matches("Token:").trim();
    assert!(token.len() >= 32, "{token_line}");
    assert!(
        created.stderr.contains("shown only once"),
        "{}",
        created.stderr
    );

    let ls = t.run(&["deployer", "ls"]).await;
    let table = ls.ok();
    let header = table.lines().next().unwrap();
    for column in [
        "NAME",
        "DEPLOYMENTS",
        "STATUS",
        "VERSION",
        "LAST SEEN",
        "AGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table.lines().nth(1).expect("one row");
    assert!(row.starts_with("prod-eu"), "{row}");
    assert!(row.contains("<never>"), "never seen: {row}");

    let listed = t.run(&["deployer", "ls", "-o", "json"]).await.json();
    let list = listed.as_array().expect("a JSON list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "prod-eu");
    assert_eq!(list[0]["status"], "Unknown");
    let id = list[0]["id"].as_str().unwrap().to_string();

    // By ID and by name, in YAML.
    let by_id = t.run(&["deployer", "get", &id, "-o", "yaml"]).await;
    let yaml: Value = serde_saphyr::from_str(by_id.ok()).expect("YAML parses");
    assert_eq!(yaml["name"], "prod-eu");
    let by_name = t.run(&["deployer", "get", "prod-eu"]).await;
    assert!(by_name.ok().contains(&id));

    let rotated = t
        .run(&[
            "deployer",
            "rotate-token",
            "prod-eu",
            "--overlap",
            "1m",
            "-o",
            "json",
        ])
        .await
        .json();
    let new_token = rotated["token"].as_str().unwrap();
    assert_ne!(new_token, token);
    assert!(!rotated["previous_expires_at"].as_str().unwrap().is_empty());

    t.run(&["deployer", "rm", "prod-eu"]).await.ok();
    let gone = t.run(&["deployer", "get", "prod-eu"]).await;
    let line = gone.one_line_error();
    assert!(
        line.contains("prod-eu") && line.contains("not found"),
        "{line}"
    );
    t.gw.shutdown().await;
}

#[tokio::test]
async fn deployer_rm_refuses_while_it_has_deployments_and_orphan_prints_the_cleanup() {
    let t = start().await;
    let (id, token) = t.deployer("orph").await;
    t.deployment("orph", "iris", &[]).await;
    t.deployment("orph", "wine", &[]).await;

    let refused = t.run(&["deployer", "rm", "orph"]).await;
    assert_eq!(
        refused.one_line_error(),
        "error: deployer orph has 2 deployments: delete them first, or use --cascade \
         (delete them and wait for the agent to remove their objects) or --orphan (leave \
         the objects in the cluster)"
    );
    let mut agent = t.agent(&token).await;
    assert_eq!(
        agent
            .list()
            .await
            .expect("token still valid")
            .deployments
            .len(),
        2,
        "nothing deleted"
    );
    let both = t
        .run(&["deployer", "rm", "orph", "--cascade", "--orphan"])
        .await;
    assert_ne!(both.code, Some(0), "the two are exclusive");

    let orphaned = t.run(&["deployer", "rm", "orph", "--orphan"]).await;
    let cleanup = format!(
        "kubectl delete deployment,service,ingress -A -l \
         app.kubernetes.io/managed-by=ds-deployer,deployer.ds.dev/owner={id}"
    );
    assert_eq!(orphaned.ok().trim(), cleanup, "stdout is the command");
    assert!(
        orphaned.stderr.contains("2 deployments") && orphaned.stderr.contains("revoked"),
        "{}",
        orphaned.stderr
    );
    let err = agent.list().await.expect_err("token revoked at once");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let gone = t.run(&["deployer", "get", "orph"]).await;
    assert!(gone.one_line_error().contains("not found"));

    // The same in JSON, for scripts.
    let (id, _) = t.deployer("orph-json").await;
    t.deployment("orph-json", "iris", &[]).await;
    let json = t
        .run(&["deployer", "rm", "orph-json", "--orphan", "-o", "json"])
        .await
        .json();
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["deleted"], true);
    assert_eq!(json["deployments_deleted"], 1);
    assert!(
        json["cleanup"]
            .as_str()
            .unwrap()
            .ends_with(&format!("deployer.ds.dev/owner={id}")),
        "{json}"
    );
    t.gw.shutdown().await;
}

#[tokio::test]
async fn deployer_rm_cascade_waits_with_progress_until_the_agent_reports_the_objects_gone() {
    let t = start().await;
    let (_, token) = t.deployer("casc").await;
    t.deployment("casc", "iris", &[]).await;
    t.deployment("casc", "wine", &[]).await;
    let mut agent = t.agent(&token).await;
    let before = agent.list().await.unwrap().revision;
    agent.objects(before, 4).await;

    let mut rm = Running::spawn(t.ds(&["deployer", "rm", "casc", "--cascade"]));
    rm.wait_for_line("waiting for the agent").await;
    let revision = ds_test_support::eventually("the deployments deleted", || {
        let mut a = FakeAgent(agent.0.clone());
        async move {
            let snap = a.list().await.ok()?;
            snap.deployments.is_empty().then_some(snap.revision)
        }
    })
    .await;
    assert!(revision > before);
    // The token works while the agent has objects to remove.
    agent.objects(revision, 2).await;
    rm.wait_for_line("2 objects left").await;
    agent.objects(revision, 0).await;
    let (code, stderr) = rm.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    let err = agent
        .list()
        .await
        .expect_err("token revoked after the cascade");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let gone = t.run(&["deployer", "get", "casc"]).await;
    assert!(gone.one_line_error().contains("not found"));
    t.gw.shutdown().await;
}

#[tokio::test]
async fn deployer_rm_cascade_gives_up_after_its_timeout_saying_what_is_left() {
    let t = start().await;
    let (_, token) = t.deployer("stuck").await;
    t.deployment("stuck", "iris", &[]).await;
    let mut agent = t.agent(&token).await;
    agent.objects(0, 3).await;
    let run = t
        .run(&["deployer", "rm", "stuck", "--cascade", "--timeout", "2s"])
        .await;
    let line = run.stderr.lines().last().unwrap_or_default().to_string();
    assert_ne!(run.code, Some(0));
    assert!(
        line.starts_with("error: ") && line.contains("stuck") && line.contains("--orphan"),
        "{}",
        run.stderr
    );
    // The deployments are gone, the deployer and its token remain for the agent.
    let snap = agent.list().await.expect("token still valid");
    assert!(snap.deployments.is_empty());
    t.run(&["deployer", "get", "stuck"]).await.ok();
    t.gw.shutdown().await;
}

#[tokio::test]
async fn deployer_install_prints_one_line_or_says_it_is_unsupported() {
    let t = start().await;
    t.deployer("prod").await;
    let install = t.run(&["deployer", "install", "prod"]).await;
    if install.code == Some(0) {
        let lines: Vec<&str> = install.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{}", install.stdout);
        assert!(lines[0].starts_with("kubectl apply -f \""), "{}", lines[0]);
    } else {
        let line = install.one_line_error();
        assert!(line.contains("does not support install links"), "{line}");
    }
    t.gw.shutdown().await;
}

#[tokio::test]
async fn invalid_deployer_name_is_one_line_naming_the_field() {
    let t = start().await;
    let run = t.run(&["deployer", "create", "Prod_EU"]).await;
    let line = run.one_line_error();
    assert!(line.contains("invalid name \"Prod_EU\""), "{line}");
    assert!(line.contains("DNS-1123"), "{line}");
    t.gw.shutdown().await;
}

// === deployments ===

#[tokio::test]
async fn deployment_create_ls_get_update_rm() {
    let t = start().await;
    t.deployer("prod").await;

    let created = t
        .run(&[
            "deployment",
            "create",
            "--model-name",
            "iris",
            "-d",
            "prod",
            "-i",
            IMAGE,
            "-r",
            "2",
            "--host",
            "iris.models.example.com",
            "--namespace",
            "models",
            "--env",
            "MODEL_NAME=iris",
            "--cpu",
            "500m",
            "--memory",
            "1Gi",
            "--class-names",
            "setosa,versicolor,virginica",
        ])
        .await;
    let text = created.ok();
    for field in ["ID:", "Namespace:", "Name:", "URL:"] {
        assert!(text.contains(field), "{text}");
    }
    assert!(
        text.contains("models") && text.contains("iris.models.example.com"),
        "{text}"
    );

    let ls = t.run(&["deployment", "ls"]).await;
    let table = ls.ok();
    let header = table.lines().next().unwrap();
    for column in [
        "NAME",
        "NAMESPACE",
        "DEPLOYER",
        "IMAGE",
        "REPLICAS",
        "STATUS",
        "AGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table.lines().nth(1).expect("one row");
    for cell in ["iris", "models", "prod", IMAGE, "0/2", "Unknown"] {
        assert!(row.contains(cell), "{cell} missing in {row}");
    }

    let got = t.get_json("iris").await;
    assert_eq!(got["name"], "iris");
    assert_eq!(got["namespace"], "models");
    assert_eq!(got["deployer"], "prod");
    assert_eq!(got["spec"]["replicas"], 2);
    assert_eq!(got["spec"]["resources"]["cpu_request"], "500m");
    assert_eq!(got["spec"]["resources"]["memory_limit"], "1Gi");
    assert_eq!(got["spec"]["env"][0]["name"], "MODEL_NAME");
    assert_eq!(got["spec"]["proxy"]["enabled"], true);
    assert_eq!(got["spec"]["proxy"]["class_names"][2], "virginica");
    assert_eq!(got["status"]["phase"], "Unknown");
    let id = got["id"].as_str().unwrap().to_string();
    let revision = got["revision"].as_u64().unwrap();

    let described = t.run(&["deployment", "get", &id]).await;
    let text = described.ok();
    for part in [
        "Image:",
        IMAGE,
        "Status:",
        "Phase:",
        "Applied revision:",
        "Last error:",
    ] {
        assert!(text.contains(part), "{part} missing in {text}");
    }

    let updated = t
        .run(&[
            "deployment",
            "update",
            "iris",
            "-n",
            "models",
            "--image",
            "tensorflow/serving:2.16.1",
            "--replicas",
            "3",
            "--env",
            "BATCH=8",
            "--unset-env",
            "MODEL_NAME",
            "--no-proxy",
        ])
        .await;
    assert!(updated.ok().contains("updated"), "{}", updated.stdout);
    let got = t.get_json(&id).await;
    assert_eq!(got["spec"]["image"], "tensorflow/serving:2.16.1");
    assert_eq!(got["spec"]["replicas"], 3);
    assert_eq!(got["spec"]["env"].as_array().unwrap().len(), 1);
    assert_eq!(got["spec"]["env"][0]["name"], "BATCH");
    assert_eq!(got["spec"]["proxy"]["enabled"], false);
    assert!(got["revision"].as_u64().unwrap() > revision);

    let yaml = t
        .run(&["deployment", "ls", "-d", "prod", "-o", "yaml"])
        .await;
    let list: Value = serde_saphyr::from_str(yaml.ok()).expect("YAML parses");
    assert_eq!(list[0]["spec"]["replicas"], 3);

    t.run(&["deployment", "rm", &id]).await.ok();
    let empty = t.run(&["deployment", "ls", "-o", "json"]).await.json();
    assert_eq!(empty, Value::Array(vec![]));
    let empty = t.run(&["deployment", "ls"]).await;
    assert_eq!(empty.ok(), "", "no table for nothing");
    assert!(empty.stderr.contains("No deployments found"));
    let gone = t.run(&["deployment", "get", &id]).await;
    assert!(gone.one_line_error().contains("not found"));
    t.gw.shutdown().await;
}

#[tokio::test]
async fn query_logs_are_switched_on_and_off_with_the_proxy() {
    let t = start().await;
    t.deployer("prod").await;
    let created = t.deployment("prod", "iris", &["--query-log"]).await;
    assert_eq!(created["spec"]["proxy"]["enabled"], true);
    assert_eq!(created["spec"]["proxy"]["query_log"], true);
    let got = t.run(&["deployment", "get", "iris"]).await;
    assert!(
        got.ok().contains("on (query logs to stdout)"),
        "{}",
        got.stdout
    );
    let yaml = t.run(&["deployment", "get", "iris", "-o", "yaml"]).await;
    let doc: Value = serde_saphyr::from_str(yaml.ok()).expect("YAML parses");
    assert_eq!(doc["spec"]["proxy"]["query_log"], true);

    // Without the proxy nothing would write them: refused, naming the field.
    let run = t.run(&["deployment", "update", "iris", "--no-proxy"]).await;
    let line = run.one_line_error();
    assert!(line.contains("invalid --query-log"), "{line}");
    let run = t
        .run(&[
            "deployment",
            "create",
            "--model-name",
            "other",
            "-d",
            "prod",
            "-i",
            IMAGE,
            "--no-proxy",
            "--query-log",
        ])
        .await;
    let line = run.one_line_error();
    assert!(line.contains("invalid --query-log"), "{line}");

    t.run(&["deployment", "update", "iris", "--no-query-log"])
        .await
        .ok();
    let got = t.get_json("iris").await;
    assert_eq!(got["spec"]["proxy"]["query_log"], false);
    assert_eq!(got["spec"]["proxy"]["enabled"], true);
    let got = t.run(&["deployment", "get", "iris"]).await;
    assert!(!got.ok().contains("query logs"), "{}", got.stdout);
    t.run(&["deployment", "update", "iris", "--query-log"])
        .await
        .ok();
    let got = t.get_json("iris").await;
    assert_eq!(got["spec"]["proxy"]["query_log"], true);

    let both = t
        .run(&[
            "deployment",
            "update",
            "iris",
            "--query-log",
            "--no-query-log",
        ])
        .await;
    assert_eq!(both.code, Some(2), "a usage error: {}", both.stderr);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn the_proxy_protocol_is_set_shown_refused_when_unknown_and_reset_to_auto() {
    let t = start().await;
    t.deployer("prod").await;
    let created = t
        .deployment("prod", "iris", &["--proxy-protocol", "v2"])
        .await;
    assert_eq!(created["spec"]["proxy"]["protocol"], "v2");
    let got = t.run(&["deployment", "get", "iris"]).await;
    assert!(got.ok().contains("on (protocol: v2)"), "{}", got.stdout);

    // Refused before anything is sent on create, by the gateway on update; both name the
    // flag and the rule.
    let run = t
        .run(&[
            "deployment",
            "create",
            "--model-name",
            "other",
            "-d",
            "prod",
            "-i",
            IMAGE,
            "--proxy-protocol",
            "v3",
        ])
        .await;
    let line = run.one_line_error();
    assert!(
        line.contains(
            r#"invalid --proxy-protocol "v3": the proxy's protocol must be auto, v1 or v2"#
        ),
        "{line}"
    );
    let run = t
        .run(&["deployment", "update", "iris", "--proxy-protocol", "grpc"])
        .await;
    let line = run.one_line_error();
    assert!(line.contains("invalid --proxy-protocol"), "{line}");
    assert_eq!(t.get_json("iris").await["spec"]["proxy"]["protocol"], "v2");

    t.run(&["deployment", "update", "iris", "--proxy-protocol", "auto"])
        .await
        .ok();
    let got = t.get_json("iris").await;
    assert!(got["spec"]["proxy"].get("protocol").is_none(), "{got}");
    let got = t.run(&["deployment", "get", "iris"]).await;
    assert!(!got.ok().contains("protocol"), "{}", got.stdout);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn bad_specs_are_rejected_in_one_line_naming_the_flag() {
    let t = start().await;
    t.deployer("prod").await;
    let base = ["deployment", "create", "--model-name", "iris", "-d", "prod"];
    let cases: [(&[&str], &str); 6] = [
        (&["-i", "tensorflow/Serving:2.15"], "invalid --image"),
        (&["-i", IMAGE, "-r", "5000"], "invalid --replicas"),
        (&["-i", IMAGE, "--port", "70000"], "invalid --port"),
        (&["-i", IMAGE, "--host", "not a host"], "invalid --host"),
        (&["-i", IMAGE, "--cpu", "lots"], "invalid --cpu \"lots\""),
        (&["-i", IMAGE, "-e", "1BAD=x"], "invalid --env"),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let run = t.run(&args).await;
        let line = run.one_line_error();
        assert!(line.contains(expected), "{extra:?}: {line}");
    }
    // The gateway's own validation, reached through update (the CLI cannot check an
    // update's image against the rest of the spec).
    t.deployment("prod", "iris", &[]).await;
    let run = t
        .run(&["deployment", "update", "iris", "--image", "UPPER/Case"])
        .await;
    let line = run.one_line_error();
    assert!(line.contains("invalid --image"), "{line}");
    // A deployer that does not exist: the gateway's message, as is.
    let run = t
        .run(&[
            "deployment",
            "create",
            "--model-name",
            "x",
            "-d",
            "nope",
            "-i",
            IMAGE,
        ])
        .await;
    assert!(run.one_line_error().contains("nope"), "{}", run.stderr);
    // A second deployment of the same name in the same place.
    let run = t
        .run(&[
            "deployment",
            "create",
            "--model-name",
            "iris",
            "-d",
            "prod",
            "-i",
            IMAGE,
        ])
        .await;
    assert!(run.one_line_error().contains("iris"), "{}", run.stderr);
    // Nothing to change.
    let run = t.run(&["deployment", "update", "iris"]).await;
    assert!(run.one_line_error().contains("nothing to change"));
    t.gw.shutdown().await;
}

// === credentials and connection errors ===

#[tokio::test]
async fn missing_api_key_says_what_to_do() {
    let t = start().await;
    let mut cmd = t.bare(&["deployer", "ls"]);
    cmd.env("DS_GATEWAY", t.gw.url());
    let run = output(cmd).await;
    let line = run.one_line_error();
    assert!(line.contains("--api-key"), "{line}");
    assert!(line.contains("DS_API_KEY"), "{line}");
    assert!(line.contains("ds login"), "{line}");

    let run = output(t.bare(&["deployment", "ls"])).await;
    assert!(run.one_line_error().contains("no gateway address"));
    t.gw.shutdown().await;
}

#[tokio::test]
async fn wrong_api_key_is_rejected_without_echoing_it() {
    let t = start().await;
    let mut cmd = t.bare(&["deployer", "ls"]);
    cmd.env("DS_GATEWAY", t.gw.url())
        .env("DS_API_KEY", "not-the-key-4a1f");
    let run = output(cmd).await;
    let line = run.one_line_error();
    assert!(line.contains("rejected the API key"), "{line}");
    assert!(!run.stderr.contains("not-the-key-4a1f"));
    t.gw.shutdown().await;
}

#[tokio::test]
async fn unreachable_gateway_is_one_line() {
    let t = start().await;
    // A port that was just free: nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let mut cmd = t.bare(&["deployer", "ls"]);
    cmd.env("DS_GATEWAY", &url).env("DS_API_KEY", "k");
    let run = output(cmd).await;
    let line = run.one_line_error();
    assert!(line.contains("cannot reach the gateway"), "{line}");
    assert!(line.contains(&url) && line.contains("ds gateway"), "{line}");
    t.gw.shutdown().await;
}

#[tokio::test]
async fn login_saves_a_private_config_that_later_commands_use() {
    let t = start().await;
    let url = t.gw.url();

    // A wrong key is refused and nothing is saved.
    let run = output(t.bare(&["login", "--gateway", &url, "--api-key", "wrong"])).await;
    assert!(run.one_line_error().contains("rejected the API key"));
    assert!(!t.config_path().exists());

    // The key from stdin keeps it out of the process list.
    let mut cmd = t.bare(&["login", "--gateway", &url, "--api-key", "-"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("ds starts");
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, format!("{}\n", t.gw.admin_key).as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let run = Run::from(
        tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .expect("ds finishes")
            .unwrap(),
    );
    assert!(run.ok().contains("Logged in"), "{}", run.stdout);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.config_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "config file mode {mode:o}");
    }
    assert!(!run.stdout.contains(&t.gw.admin_key), "the key was echoed");

    // No flags, no environment: the config file answers.
    output(t.bare(&["deployer", "create", "from-config"]))
        .await
        .ok();
    let listed = output(t.bare(&["deployer", "ls", "-o", "json"]))
        .await
        .json();
    assert_eq!(listed[0]["name"], "from-config");

    // The saved key is never sent to another gateway.
    let mut cmd = t.bare(&["deployer", "ls"]);
    cmd.env("DS_GATEWAY", "http://127.0.0.1:9");
    let run = output(cmd).await;
    assert!(
        run.one_line_error().contains("no API key"),
        "{}",
        run.stderr
    );
    t.gw.shutdown().await;
}

// === --wait ===

/// `create --wait`: plain progress lines (stderr is not a terminal), exit 0 once the
/// agent reports the deployment Available at its revision.
#[tokio::test]
async fn create_wait_follows_progress_until_available() {
    let t = start().await;
    let (_, token) = t.deployer("prod").await;
    let mut agent = t.agent(&token).await;
    let mut running = Running::spawn(t.ds(&[
        "deployment",
        "create",
        "--model-name",
        "iris",
        "-d",
        "prod",
        "-i",
        IMAGE,
        "-r",
        "2",
        "--wait",
        "--timeout",
        "2m",
    ]));
    running
        .wait_for_line("default/iris: Unknown, 0/2 ready")
        .await;
    let got = t.get_json("iris").await;
    let id = got["id"].as_str().unwrap().to_string();
    let revision = got["revision"].as_u64().unwrap();

    agent.report(&id, Phase::Progressing, 1, revision, "").await;
    running
        .wait_for_line("default/iris: Progressing, 1/2 ready")
        .await;
    agent.report(&id, Phase::Available, 2, revision, "").await;
    let (code, stderr) = running.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("is available (2/2 ready)"), "{stderr}");

    // What the agent reported shows in `get` and, for the deployer, in `ls`.
    let got = t.run(&["deployment", "get", "iris"]).await;
    let text = got.ok();
    assert!(text.contains("Available"), "{text}");
    assert!(text.contains("2/2 ready"), "{text}");
    let deployers = t.run(&["deployer", "ls"]).await;
    let row = deployers
        .ok()
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains("Online") && row.contains("test-agent"),
        "{row}"
    );
    let ls = t.run(&["deployment", "ls"]).await;
    let row = ls.ok().lines().nth(1).unwrap_or_default().to_string();
    assert!(row.contains("2/2") && row.contains("Available"), "{row}");
    t.gw.shutdown().await;
}

/// `create --wait` for a deployer whose agent never connected fails at once, saying so,
/// instead of waiting out its timeout (5 minutes by default) for a report nobody sends.
#[tokio::test]
async fn wait_without_a_connected_agent_fails_saying_so() {
    let t = start().await;
    t.deployer("lonely").await;
    let run = t
        .run(&[
            "deployment",
            "create",
            "--model-name",
            "iris",
            "-d",
            "lonely",
            "-i",
            IMAGE,
            "--wait",
        ])
        .await;
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("error: deployer lonely has no connected agent (never)"),
        "{}",
        run.stderr
    );
    // The deployment itself was created; only the wait gave up.
    assert_eq!(t.get_json("iris").await["name"], "iris");
    t.gw.shutdown().await;
}

/// A deployer whose agent stopped reporting for `--offline-after` shows its deployments
/// as `Unknown (deployer offline since …)` in `ls`, `get` and JSON, instead of the last
/// Available; `update --wait` then fails naming when the agent was last seen.
#[tokio::test]
async fn an_offline_deployers_deployments_are_unknown() {
    let t = start_with(|args| args.offline_after = Duration::from_secs(1)).await;
    let (_, token) = t.deployer("gone").await;
    let mut agent = t.agent(&token).await;
    let created = t.deployment("gone", "iris", &[]).await;
    let id = created["id"].as_str().unwrap().to_string();
    let revision = created["revision"].as_u64().unwrap();
    agent.report(&id, Phase::Available, 1, revision, "").await;
    let got = t.get_json("iris").await;
    assert_eq!(got["status"]["phase"], "Available", "{got}");
    assert_eq!(got["status"]["agent_connected"], true, "{got}");

    // The agent reports no more.
    drop(agent);
    let row = ds_test_support::eventually("the deployment shows Unknown", || async {
        let ls = t.run(&["deployment", "ls"]).await;
        let row = ls.ok().lines().nth(1).unwrap_or_default().to_string();
        row.contains("Unknown (deployer offline since ")
            .then_some(row)
    })
    .await;
    assert!(!row.contains("Available"), "{row}");
    let got = t.get_json("iris").await;
    assert_eq!(got["status"]["phase"], "Unknown", "{got}");
    assert_eq!(got["status"]["agent_connected"], false, "{got}");
    let reason = got["status"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("deployer offline since 20"), "{got}");
    let text = t.run(&["deployment", "get", "iris"]).await;
    assert!(
        text.ok().contains("Unknown (deployer offline since "),
        "{}",
        text.stdout
    );

    let run = t
        .run(&["deployment", "update", "iris", "--replicas", "2", "--wait"])
        .await;
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("error: deployer gone has no connected agent (last seen 20"),
        "{}",
        run.stderr
    );
    t.gw.shutdown().await;
}

/// An agent that goes away during `--wait` ends the wait once the gateway counts it
/// offline, saying so, rather than at `--timeout`.
#[tokio::test]
async fn wait_ends_when_the_agent_goes_away() {
    let t = start_with(|args| args.offline_after = Duration::from_secs(1)).await;
    let (_, token) = t.deployer("flaky").await;
    let mut agent = t.agent(&token).await;
    let created = t.deployment("flaky", "iris", &[]).await;
    let id = created["id"].as_str().unwrap().to_string();
    let revision = created["revision"].as_u64().unwrap();
    // Reporting faster than the 1 s offline window until the wait is under way.
    agent.report(&id, Phase::Progressing, 1, revision, "").await;
    let beating = tokio::spawn(async move {
        loop {
            agent.heartbeat().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut running = Running::spawn(t.ds(&[
        "deployment",
        "update",
        &id,
        "--replicas",
        "2",
        "--wait",
        "--timeout",
        "5m",
    ]));
    running.wait_for_line("default/iris: Progressing").await;
    // The agent stops.
    beating.abort();
    let _ = beating.await;
    let (code, stderr) = running.finish().await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("error: deployer flaky has no connected agent (last seen 20"),
        "{stderr}"
    );
    t.gw.shutdown().await;
}

/// `update --wait` ignores the Available status of the previous revision and fails
/// with the agent's error when the new revision fails.
#[tokio::test]
async fn update_wait_ignores_the_old_revision_and_reports_failure() {
    let t = start().await;
    let (_, token) = t.deployer("prod").await;
    let mut agent = t.agent(&token).await;
    let created = t.deployment("prod", "iris", &[]).await;
    let id = created["id"].as_str().unwrap().to_string();
    let first = created["revision"].as_u64().unwrap();
    agent.report(&id, Phase::Available, 1, first, "").await;

    let mut running = Running::spawn(t.ds(&[
        "deployment",
        "update",
        &id,
        "--image",
        "tensorflow/serving:9.9.9",
        "--wait",
    ]));
    // The first view still shows the old revision Available: not done yet.
    running
        .wait_for_line("waiting for the agent to apply revision")
        .await;
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "exited on the previous revision's status"
    );
    let updated = t.get_json(&id).await;
    let second = updated["revision"].as_u64().unwrap();
    assert!(second > first);
    agent
        .report(
            &id,
            Phase::Failed,
            0,
            second,
            "image tensorflow/serving:9.9.9 not found",
        )
        .await;
    let (code, stderr) = running.finish().await;
    assert_ne!(code, Some(0));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: deployment default/iris failed"),
        "{stderr}"
    );
    assert!(last.contains("9.9.9 not found"), "{stderr}");
    t.gw.shutdown().await;
}

/// With an agent that reports nothing, nothing becomes Available: `--wait` gives up at
/// `--timeout` and says how far it got.
#[tokio::test]
async fn wait_times_out_with_the_progress_so_far() {
    let t = start().await;
    let (_, token) = t.deployer("prod").await;
    let _agent = t.agent(&token).await;
    let run = t
        .run(&[
            "deployment",
            "create",
            "--model-name",
            "iris",
            "-d",
            "prod",
            "-i",
            IMAGE,
            "--wait",
            "--timeout",
            "2s",
        ])
        .await;
    assert_ne!(run.code, Some(0));
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: timed out after 2s"),
        "{}",
        run.stderr
    );
    assert!(last.contains("0/1 ready"), "{last}");
    t.gw.shutdown().await;
}

// === TLS ===

/// A test CA and a `localhost` server certificate it signed.
fn test_pki() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

/// Over TLS the CLI trusts the CA given by `--ca-cert` (or `DS_CA_CERT`), and without it
/// fails in one line that names the gateway.
#[tokio::test]
async fn tls_gateway_is_trusted_through_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert_pem, key_pem) = test_pki();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    );
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let mut args = GatewayArgs::insecure("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    args.insecure = false;
    args.tls_cert = Some(cert);
    args.tls_key = Some(key);
    let gw = RunningGateway::start(args)
        .await
        .expect("TLS gateway starts");
    let t = TestGateway { gw, dir };
    let url = format!("https://localhost:{}", t.gw.addr.port());

    let mut cmd = t.bare(&["deployer", "create", "tls-ok", "--ca-cert"]);
    cmd.arg(&ca)
        .env("DS_GATEWAY", &url)
        .env("DS_API_KEY", &t.gw.admin_key);
    output(cmd).await.ok();

    let mut cmd = t.bare(&["deployer", "ls", "-o", "json"]);
    cmd.env("DS_GATEWAY", &url)
        .env("DS_API_KEY", &t.gw.admin_key)
        .env("DS_CA_CERT", &ca);
    assert_eq!(output(cmd).await.json()[0]["name"], "tls-ok");

    // The test CA is in no system store.
    let mut cmd = t.bare(&["deployer", "ls"]);
    cmd.env("DS_GATEWAY", &url)
        .env("DS_API_KEY", &t.gw.admin_key);
    let run = output(cmd).await;
    let line = run.one_line_error();
    assert!(line.contains(&url), "{line}");
    assert!(line.contains("--ca-cert"), "{line}");
    t.gw.shutdown().await;
}

/// `--wait` survives a gateway restart: the status stream is reopened and the wait ends
/// when the restarted gateway (same database) reports the deployment Available.
#[tokio::test]
async fn wait_survives_a_gateway_restart() {
    let t = start().await;
    let (_, token) = t.deployer("prod").await;
    // Connected before the restart: the stored heartbeat says so to the restarted one.
    drop(t.agent(&token).await);
    let created = t.deployment("prod", "iris", &[]).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut running = Running::spawn(t.ds(&[
        "deployment",
        "update",
        &id,
        "--replicas",
        "2",
        "--wait",
        "--timeout",
        "2m",
    ]));
    running
        .wait_for_line("default/iris: Unknown, 0/2 ready")
        .await;

    let TestGateway { gw, dir } = t;
    let addr = gw.addr;
    gw.shutdown().await;
    // The same address and data directory: the CLI's URL stays valid.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let gw = loop {
        match RunningGateway::start(GatewayArgs::insecure(addr, dir.path().join("data"))).await {
            Ok(gw) => break gw,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("restart not possible yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("gateway restart: {e}"),
        }
    };
    let t = TestGateway { gw, dir };
    let updated = t.get_json(&id).await;
    assert_eq!(
        updated["spec"]["replicas"], 2,
        "the update survived the restart"
    );
    let revision = updated["revision"].as_u64().unwrap();
    let mut agent = t.agent(&token).await;
    agent.report(&id, Phase::Available, 2, revision, "").await;
    let (code, stderr) = running.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("is available (2/2 ready)"), "{stderr}");
    t.gw.shutdown().await;
}

// === pod-level options (issue 16) ===

#[tokio::test]
async fn pod_options_are_created_shown_updated_and_cleared() {
    let t = start().await;
    t.deployer("prod").await;
    let created = t
        .deployment(
            "prod",
            "iris",
            &[
                "--host",
                "iris.example.com",
                "--gpu",
                "2",
                "--gpu-resource",
                "amd.com/gpu",
                "--image-pull-secret",
                "regcred",
                "--image-pull-secret",
                "mirror",
                "--tls-secret",
                "iris-tls",
                "--ingress-annotation",
                "cert-manager.io/cluster-issuer=letsencrypt",
                "--command",
                "python",
                "--command",
                "-m",
                "--command",
                "serve",
                "--arg",
                "--port=8501",
                "--arg",
                "two words",
                "--node-selector",
                "gpu=a100",
                "--toleration",
                "nvidia.com/gpu:NoSchedule",
                "--toleration",
                "dedicated=ml:NoExecute",
                "--priority-class",
                "model-serving",
                "--ready-path",
                "/v1/models/iris",
                "--startup-timeout",
                "10m",
            ],
        )
        .await;
    assert_eq!(created["url"], "https://iris.example.com/", "TLS: https");
    let got = t.get_json("iris").await;
    let spec = &got["spec"];
    assert_eq!(spec["gpu"], 2);
    assert_eq!(spec["gpu_resource"], "amd.com/gpu");
    assert_eq!(
        spec["image_pull_secrets"],
        serde_json::json!(["regcred", "mirror"])
    );
    assert_eq!(spec["tls_secret"], "iris-tls");
    assert_eq!(
        spec["ingress_annotations"]["cert-manager.io/cluster-issuer"],
        "letsencrypt"
    );
    assert_eq!(
        spec["command"],
        serde_json::json!(["python", "-m", "serve"])
    );
    assert_eq!(
        spec["args"],
        serde_json::json!(["--port=8501", "two words"])
    );
    assert_eq!(spec["node_selector"]["gpu"], "a100");
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([
            {"key": "nvidia.com/gpu", "effect": "NoSchedule"},
            {"key": "dedicated", "value": "ml", "effect": "NoExecute"},
        ])
    );
    assert_eq!(spec["priority_class"], "model-serving");
    assert_eq!(spec["ready_path"], "/v1/models/iris");
    assert_eq!(spec["startup_timeout_seconds"], 600);
    assert_eq!(got["url"], "https://iris.example.com/");
    let text = t.run(&["deployment", "get", "iris"]).await;
    for line in [
        "GPUs:",
        "2 amd.com/gpu",
        "regcred, mirror",
        "iris-tls",
        "python -m serve",
        "--port=8501 \"two words\"",
        "gpu=a100",
        "nvidia.com/gpu:NoSchedule, dedicated=ml:NoExecute",
        "model-serving",
        "/v1/models/iris",
        "10m",
        "https://iris.example.com/",
    ] {
        assert!(text.ok().contains(line), "{line:?} in {}", text.stdout);
    }

    // Changed: lists replaced whole, maps merged by key, scalars replaced.
    t.run(&[
        "deployment",
        "update",
        "iris",
        "--gpu",
        "4",
        "--arg",
        "--workers=2",
        "--node-selector",
        "zone=eu",
        "--toleration",
        "spot:PreferNoSchedule",
        "--startup-timeout",
        "90s",
    ])
    .await
    .ok();
    let spec = t.get_json("iris").await["spec"].clone();
    assert_eq!(spec["gpu"], 4);
    assert_eq!(spec["gpu_resource"], "amd.com/gpu", "kept");
    assert_eq!(spec["args"], serde_json::json!(["--workers=2"]));
    assert_eq!(
        spec["command"],
        serde_json::json!(["python", "-m", "serve"])
    );
    assert_eq!(
        spec["node_selector"],
        serde_json::json!({"gpu": "a100", "zone": "eu"})
    );
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([{"key": "spot", "effect": "PreferNoSchedule"}])
    );
    assert_eq!(spec["startup_timeout_seconds"], 90);

    // Cleared, each its own way: off again, as a spec that never had them.
    let cleared = t
        .run(&[
            "deployment",
            "update",
            "iris",
            "--gpu",
            "0",
            "--clear-image-pull-secrets",
            "--tls-secret",
            "",
            "--unset-ingress-annotation",
            "cert-manager.io/cluster-issuer",
            "--clear-command",
            "--clear-args",
            "--unset-node-selector",
            "gpu",
            "--unset-node-selector",
            "zone",
            "--clear-tolerations",
            "--priority-class",
            "",
            "--ready-path",
            "",
            "--startup-timeout",
            "0",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(cleared["url"], "http://iris.example.com/");
    let spec = t.get_json("iris").await["spec"].clone();
    for key in [
        "gpu",
        "gpu_resource",
        "image_pull_secrets",
        "tls_secret",
        "ingress_annotations",
        "command",
        "args",
        "node_selector",
        "tolerations",
        "priority_class",
        "ready_path",
        "startup_timeout_seconds",
    ] {
        assert!(spec.get(key).is_none(), "{key} left: {spec}");
    }
    let text = t.run(&["deployment", "get", "iris"]).await;
    assert!(!text.ok().contains("GPUs:"), "{}", text.stdout);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn bad_pod_options_are_refused_naming_the_flag() {
    let t = start().await;
    t.deployer("prod").await;
    let base = [
        "deployment",
        "create",
        "--model-name",
        "iris",
        "-d",
        "prod",
        "-i",
        IMAGE,
    ];
    let cases: [(&[&str], &str); 9] = [
        (&["--gpu", "500"], "invalid --gpu \"500\""),
        (
            &["--gpu", "1", "--gpu-resource", "gpu"],
            "invalid --gpu-resource",
        ),
        (
            &["--image-pull-secret", "Bad_Secret"],
            "invalid --image-pull-secret",
        ),
        (&["--tls-secret", "iris-tls"], "invalid --tls-secret"),
        (
            &[
                "--host",
                "a.example.com",
                "--ingress-annotation",
                "bad key=v",
            ],
            "invalid --ingress-annotation",
        ),
        (&["--node-selector", "bad key=v"], "invalid --node-selector"),
        (&["--toleration", "gpu:Sometimes"], "invalid --toleration"),
        (&["--ready-path", "ready"], "invalid --ready-path"),
        (&["--startup-timeout", "2d"], "invalid --startup-timeout"),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let line = t.run(&args).await.one_line_error().to_string();
        assert!(line.contains(expected), "{extra:?}: {line}");
    }
    // tls-secret without a host names both.
    let run = t
        .run(&[base.as_slice(), &["--tls-secret", "iris-tls"]].concat())
        .await;
    assert!(run.one_line_error().contains("host"), "{}", run.stderr);
    // Syntax errors are clap's, naming the flag.
    let run = t
        .run(&[base.as_slice(), &["--toleration", "gpu"]].concat())
        .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--toleration"), "{}", run.stderr);
    let run = t.run(&[base.as_slice(), &["--gpu=-1"]].concat()).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--gpu"), "{}", run.stderr);
    // The gateway's validation, reached through update.
    t.deployment("prod", "iris", &[]).await;
    let run = t
        .run(&["deployment", "update", "iris", "--toleration", "gpu:Never"])
        .await;
    let line = run.one_line_error();
    assert!(line.contains("invalid --toleration \"Never\""), "{line}");
    let run = t
        .run(&["deployment", "update", "iris", "--tls-secret", "iris-tls"])
        .await;
    assert!(
        run.one_line_error().contains("invalid --tls-secret"),
        "{}",
        run.stderr
    );
    let run = t
        .run(&[
            "deployment",
            "update",
            "iris",
            "--ingress-annotation",
            "bad key=v",
            "--host",
            "a.example.com",
        ])
        .await;
    assert!(
        run.one_line_error()
            .contains("invalid --ingress-annotation"),
        "{}",
        run.stderr
    );
    t.gw.shutdown().await;
}

// === autoscaling and disruption budget (issue 16) ===

#[tokio::test]
async fn autoscaling_and_the_budget_are_created_shown_updated_and_turned_off() {
    let t = start().await;
    t.deployer("prod").await;
    t.deployment(
        "prod",
        "iris",
        &[
            "--replicas",
            "3",
            "--cpu",
            "500m",
            "--max-replicas",
            "6",
            "--target-cpu",
            "60",
            "--max-unavailable",
            "2",
        ],
    )
    .await;
    let spec = t.get_json("iris").await["spec"].clone();
    assert_eq!(spec["min_replicas"], 1, "--min-replicas defaults to 1");
    assert_eq!(spec["max_replicas"], 6);
    assert_eq!(spec["target_cpu_percent"], 60);
    assert_eq!(spec["max_unavailable"], 2);
    assert_eq!(spec["replicas"], 3, "kept for when autoscaling is off");
    let text = t.run(&["deployment", "get", "iris"]).await;
    assert!(
        text.ok()
            .contains("1 to 6 replicas at 60% CPU (--replicas 3 when off)"),
        "{}",
        text.stdout
    );
    // The autoscaler may go down to one pod: no budget yet.
    assert!(
        !text.stdout.contains("Disruption budget:"),
        "{}",
        text.stdout
    );

    t.run(&["deployment", "update", "iris", "--min-replicas", "2"])
        .await
        .ok();
    let text = t.run(&["deployment", "get", "iris"]).await;
    assert!(text.ok().contains("2 to 6 replicas"), "{}", text.stdout);
    assert!(
        text.stdout.contains("at most 2 unavailable"),
        "{}",
        text.stdout
    );

    // Off: the autoscaler's settings go, --replicas and the budget stay.
    t.run(&["deployment", "update", "iris", "--no-autoscale"])
        .await
        .ok();
    let spec = t.get_json("iris").await["spec"].clone();
    for key in ["min_replicas", "max_replicas", "target_cpu_percent"] {
        assert!(spec.get(key).is_none(), "{key} left: {spec}");
    }
    assert_eq!(
        (spec["replicas"].clone(), spec["max_unavailable"].clone()),
        (3.into(), 2.into())
    );
    let text = t.run(&["deployment", "get", "iris"]).await;
    assert!(!text.ok().contains("Autoscaling:"), "{}", text.stdout);
    assert!(
        text.stdout.contains("Disruption budget:"),
        "{}",
        text.stdout
    );

    // On again through update alone, then off with --max-replicas 0.
    t.run(&["deployment", "update", "iris", "--max-replicas", "4"])
        .await
        .ok();
    let spec = t.get_json("iris").await["spec"].clone();
    assert_eq!(
        (spec["min_replicas"].clone(), spec["max_replicas"].clone()),
        (1.into(), 4.into())
    );
    t.run(&["deployment", "update", "iris", "--max-replicas", "0"])
        .await
        .ok();
    assert!(
        t.get_json("iris").await["spec"]
            .get("max_replicas")
            .is_none()
    );
    t.gw.shutdown().await;
}

#[tokio::test]
async fn bad_autoscaling_values_are_refused_naming_the_flag() {
    let t = start().await;
    t.deployer("prod").await;
    let base = [
        "deployment",
        "create",
        "--model-name",
        "iris",
        "-d",
        "prod",
        "-i",
        IMAGE,
        "--cpu",
        "500m",
    ];
    let cases: [(&[&str], &str); 6] = [
        (
            &["--min-replicas", "5", "--max-replicas", "3"],
            "invalid --min-replicas \"5\": must not be above max_replicas (3)",
        ),
        (
            &["--min-replicas", "0", "--max-replicas", "3"],
            "invalid --min-replicas \"0\"",
        ),
        (
            &["--max-replicas", "3", "--target-cpu", "0"],
            "invalid --target-cpu \"0\": must be between 1 and 100",
        ),
        (
            &["--max-replicas", "3", "--target-cpu", "101"],
            "invalid --target-cpu \"101\"",
        ),
        (&["--min-replicas", "2"], "give max_replicas too"),
        (
            &["--max-unavailable", "0"],
            "invalid --max-unavailable \"0\"",
        ),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let line = t.run(&args).await.one_line_error().to_string();
        assert!(line.contains(expected), "{extra:?}: {line}");
    }
    // Without a CPU request the autoscaler would measure nothing.
    let run = t
        .run(&[&base[..8], &["--max-replicas", "3"][..]].concat())
        .await;
    assert!(
        run.one_line_error().contains("invalid --cpu"),
        "{}",
        run.stderr
    );
    // --no-autoscale with a bound is a contradiction clap refuses.
    t.deployment("prod", "iris", &["--cpu", "1"]).await;
    let run = t
        .run(&[
            "deployment",
            "update",
            "iris",
            "--no-autoscale",
            "--max-replicas",
            "3",
        ])
        .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    // The gateway's validation, reached through update: min above the stored max.
    t.run(&["deployment", "update", "iris", "--max-replicas", "3"])
        .await
        .ok();
    let run = t
        .run(&["deployment", "update", "iris", "--min-replicas", "9"])
        .await;
    let line = run.one_line_error();
    assert!(line.contains("invalid --min-replicas \"9\""), "{line}");
    assert!(line.contains("min_replicas > max_replicas"), "{line}");
    t.gw.shutdown().await;
}

// === stages and the audit log ===

/// The ID of the gateway's admin key.
fn admin_key_id(t: &TestGateway) -> String {
    ds_gateway::credentials::parse_id(ds_gateway::credentials::API_KEY_PREFIX, &t.gw.admin_key)
        .expect("a well-formed admin key")
        .to_string()
}

/// The actor the audit log names for the gateway's admin key: `admin (key <its ID>)`.
fn admin_actor(t: &TestGateway) -> String {
    format!("admin (key {})", admin_key_id(t))
}

/// Fetches an install URL of this (plaintext) gateway over HTTP/1.1; returns the body.
async fn fetch_install(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let parsed = url::Url::parse(url).unwrap();
    let addr = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap());
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n",
        parsed.path()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// `(actor, action, kind/object, outcome)` of every audit entry, through `ds audit ls`.
async fn audit_summary(t: &TestGateway, extra: &[&str]) -> Vec<(String, String, String, String)> {
    let mut args = vec!["audit", "ls", "-o", "json"];
    args.extend_from_slice(extra);
    let entries = t.run(&args).await.json();
    entries
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    e["object_kind"].as_str().unwrap(),
                    e["object"].as_str().unwrap()
                ),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn entry(
    actor: &str,
    action: &str,
    object: &str,
    outcome: &str,
) -> (String, String, String, String) {
    (actor.into(), action.into(), object.into(), outcome.into())
}

#[tokio::test]
async fn every_audited_action_appears_once_with_the_right_actor() {
    let t = start().await;
    let admin = admin_actor(&t);
    t.run(&["stage", "create", "Staging", "--after", "Test"])
        .await
        .ok();
    let created = t
        .run(&[
            "deployer", "create", "edge", "--stage", "Test", "-o", "json",
        ])
        .await
        .json();
    assert_eq!(created["stage"], "Test");
    let first_token = created["token"].as_str().unwrap().to_string();
    let edge_id = created["id"].as_str().unwrap().to_string();
    t.run(&["deployer", "update", "edge", "--stage", "Staging"])
        .await
        .ok();
    let rotated = t
        .run(&["deployer", "rotate-token", "edge", "-o", "json"])
        .await
        .json();
    let second_token = rotated["token"].as_str().unwrap().to_string();
    let install = t
        .run(&["deployer", "install", "edge", "-o", "json"])
        .await
        .json();
    let install_url = install["url"].as_str().unwrap().to_string();
    let manifest = fetch_install(&install_url).await;
    t.deployment("edge", "iris", &[]).await;
    t.run(&["deployment", "update", "iris", "--replicas", "2"])
        .await
        .ok();
    t.run(&["deployment", "rollback", "iris"]).await.ok();
    t.run(&["deployment", "rm", "iris"]).await.ok();
    t.run(&["stage", "rename", "Staging", "PreProd"]).await.ok();
    t.run(&[
        "stage",
        "update",
        "PreProd",
        "--deploy-by",
        "service-accounts",
    ])
    .await
    .ok();
    t.run(&["deployer", "rm", "edge"]).await.ok();
    t.run(&["stage", "rm", "PreProd"]).await.ok();
    // Refused: a well-formed key nobody issued, and something that is no key at all.
    let forged = format!("dsk_0123456789abcdef_{}", "A".repeat(43));
    for key in [forged.as_str(), "not-a-key"] {
        let mut cmd = t.bare(&["deployer", "ls"]);
        cmd.env("DS_GATEWAY", t.gw.url()).env("DS_API_KEY", key);
        output(cmd).await.failed();
    }

    let code_object = {
        let rows = audit_summary(&t, &[]).await;
        rows.iter()
            .find(|r| r.1 == "install-code.create")
            .expect("the install code is audited")
            .2
            .clone()
    };
    let redeemer = format!(
        "install-code {}",
        code_object.trim_start_matches("install-code/")
    );
    assert_eq!(
        audit_summary(&t, &[]).await,
        [
            entry(
                "gateway",
                "api-key.create",
                &format!("api-key/{}", admin_key_id(&t)),
                "ok"
            ),
            entry(&admin, "stage.create", "stage/Staging", "ok"),
            entry(&admin, "deployer.create", "deployer/edge", "ok"),
            entry(&admin, "deployer.update", "deployer/edge", "ok"),
            entry(&admin, "deployer.rotate-token", "deployer/edge", "ok"),
            entry(&admin, "install-code.create", &code_object, "ok"),
            entry(&redeemer, "install-code.redeem", &code_object, "ok"),
            entry(&admin, "deployment.create", "deployment/default/iris", "ok"),
            entry(&admin, "deployment.update", "deployment/default/iris", "ok"),
            entry(
                &admin,
                "deployment.rollback",
                "deployment/default/iris",
                "ok"
            ),
            entry(&admin, "deployment.delete", "deployment/default/iris", "ok"),
            entry(&admin, "stage.rename", "stage/PreProd", "ok"),
            entry(&admin, "stage.update", "stage/PreProd", "ok"),
            entry(&admin, "deployer.delete", "deployer/edge", "ok"),
            entry(&admin, "stage.delete", "stage/PreProd", "ok"),
            entry(
                "key 0123456789abcdef",
                "authenticate",
                "rpc/ListDeployers",
                "denied"
            ),
            entry("unknown", "authenticate", "rpc/ListDeployers", "denied"),
        ]
    );
    // Filters: one actor; one deployer, by ID after it is gone.
    let refused = audit_summary(&t, &["--actor", "key 0123456789abcdef"]).await;
    assert_eq!(refused.len(), 1);
    let of_edge = audit_summary(&t, &["--deployer", &edge_id]).await;
    assert_eq!(of_edge.len(), 10, "{of_edge:?}");
    assert!(audit_summary(&t, &["--since", "1h"]).await.len() == 17);
    let bad = t.run(&["audit", "ls", "--since", "last tuesday"]).await;
    assert!(bad.one_line_error().contains("--since"), "{}", bad.stderr);
    // The table.
    let table = t.run(&["audit", "ls"]).await;
    let header: Vec<&str> = table
        .ok()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["TIME", "ACTOR", "ACTION", "OBJECT", "OUTCOME"]);
    // No secret anywhere in the log: keys, tokens, the install code, the manifest's token.
    let all = t.run(&["audit", "ls", "-o", "json"]).await.ok().to_string();
    let code = install_url
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".yaml")
        .to_string();
    let manifest_token = manifest
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .find(|w| w.starts_with("dst_"))
        .expect("the manifest carries a token")
        .to_string();
    for (i, secret) in [
        t.gw.admin_key.clone(),
        first_token,
        second_token,
        code,
        manifest_token,
        forged,
    ]
    .into_iter()
    .enumerate()
    {
        // The random part: after `PREFIX_ID_` (base64url may hold `_` itself).
        let body = secret.splitn(3, '_').last().unwrap().to_string();
        assert!(body.len() >= 32, "secret #{i} is not what the test expects");
        assert!(!all.contains(&body), "the audit log holds secret #{i}");
    }
    t.gw.shutdown().await;
}

#[tokio::test]
async fn the_stage_policy_refuses_a_person_and_admits_a_service_account() {
    let t = start().await;
    let created = t
        .run(&[
            "deployer",
            "create",
            "prod",
            "--stage",
            "Production",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(created["stage"], "Production");
    t.deployer("dev").await;
    t.deployment("prod", "iris", &[]).await;
    t.deployment("dev", "wine", &[]).await;
    // The STAGE columns, and the filter.
    let ls = t.run(&["deployment", "ls"]).await;
    let header: Vec<&str> = ls.ok().lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[3], "STAGE");
    let prod_only = t
        .run(&["deployment", "ls", "--stage", "Production", "-o", "json"])
        .await
        .json();
    let names: Vec<&str> = prod_only
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["iris"]);
    assert_eq!(prod_only[0]["stage"], "Production");
    let unknown = t.run(&["deployment", "ls", "--stage", "Prod"]).await;
    let line = unknown.one_line_error();
    assert!(
        line.contains("--stage") && line.contains("Production"),
        "{line}"
    );
    let deployers = t.run(&["deployer", "ls"]).await;
    assert!(deployers.ok().lines().next().unwrap().contains("STAGE"));
    assert!(
        deployers.ok().contains("Production"),
        "{}",
        deployers.stdout
    );

    t.run(&[
        "stage",
        "update",
        "Production",
        "--deploy-by",
        "service-accounts",
    ])
    .await
    .ok();
    let stages = t.run(&["stage", "ls", "-o", "json"]).await.json();
    assert_eq!(stages[2]["deploy_by"], "service-accounts");
    assert_eq!(stages[2]["deployers"][0], "prod");
    // Every change of a deployment there is refused, saying what to do; nothing changes.
    for args in [
        vec!["deployment", "update", "iris", "--replicas", "3"],
        vec!["deployment", "rm", "iris"],
        vec!["deployment", "rollback", "iris"],
        vec![
            "deployment",
            "create",
            "--model-name",
            "other",
            "-d",
            "prod",
            "-i",
            IMAGE,
        ],
    ] {
        let refused = t.run(&args).await;
        let line = refused.one_line_error();
        assert!(line.contains("service accounts only"), "{args:?}: {line}");
        assert!(
            line.contains("ds stage update Production --deploy-by anyone"),
            "{line}"
        );
    }
    assert_eq!(t.get_json("iris").await["spec"]["replicas"], 1);
    let listed = t.run(&["deployment", "ls", "-o", "json"]).await.json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    // The other stages are not concerned.
    t.run(&["deployment", "update", "wine", "--replicas", "2"])
        .await
        .ok();
    let denied: Vec<_> = audit_summary(&t, &[])
        .await
        .into_iter()
        .filter(|e| e.3 == "denied")
        .collect();
    assert_eq!(
        denied.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
        [
            "deployment.update",
            "deployment.delete",
            "deployment.rollback",
            "deployment.create"
        ]
    );
    assert!(denied.iter().all(|e| e.0 == admin_actor(&t)));
    // A service account with Deploy on the deployer is what the policy admits.
    t.run(&["user", "create", "ci", "--service-account"])
        .await
        .ok();
    t.run(&["group", "create", "release"]).await.ok();
    t.run(&["group", "add-member", "release", "ci"]).await.ok();
    t.run(&[
        "deployer", "grant", "prod", "--group", "release", "--role", "deploy",
    ])
    .await
    .ok();
    let key = t
        .run(&["apikey", "create", "--user", "ci", "-o", "json"])
        .await
        .json();
    let ci_key = key["secret"].as_str().expect("the key, shown once");
    let mut as_ci = t.bare(&["deployment", "update", "iris", "--replicas", "4"]);
    as_ci
        .env("DS_GATEWAY", t.gw.url())
        .env("DS_API_KEY", ci_key);
    output(as_ci).await.ok();
    assert_eq!(t.get_json("iris").await["spec"]["replicas"], 4);
    let history = t
        .run(&["deployment", "history", "iris", "-o", "json"])
        .await
        .json();
    let last = history
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert!(
        last.to_string().contains("ci (key "),
        "the service account made the revision: {last}"
    );
    // Back to anyone: a person may deploy again.
    t.run(&["stage", "update", "Production", "--deploy-by", "anyone"])
        .await
        .ok();
    t.run(&["deployment", "update", "iris", "--replicas", "3"])
        .await
        .ok();
    assert_eq!(t.get_json("iris").await["spec"]["replicas"], 3);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn removing_a_stage_that_has_deployers_is_refused_and_changes_nothing() {
    let t = start().await;
    t.run(&["deployer", "create", "alpha", "--stage", "Test"])
        .await
        .ok();
    let before = t.run(&["stage", "ls", "-o", "json"]).await.json();
    let refused = t.run(&["stage", "rm", "Test"]).await;
    let line = refused.one_line_error();
    assert!(line.contains("alpha") && line.contains("--stage"), "{line}");
    assert_eq!(t.run(&["stage", "ls", "-o", "json"]).await.json(), before);
    let alpha = t
        .run(&["deployer", "get", "alpha", "-o", "json"])
        .await
        .json();
    assert_eq!(alpha["stage"], "Test");
    assert!(
        !audit_summary(&t, &[])
            .await
            .iter()
            .any(|e| e.1 == "stage.delete"),
        "a refused removal is no change"
    );
    // Unknown stages and bad names are refused naming the flag.
    let unknown = t
        .run(&["deployer", "create", "beta", "--stage", "QA"])
        .await;
    assert!(
        unknown.one_line_error().contains("--stage"),
        "{}",
        unknown.stderr
    );
    let moved = t
        .run(&["deployer", "update", "alpha", "--stage", "QA"])
        .await;
    assert!(
        moved.one_line_error().contains("--stage"),
        "{}",
        moved.stderr
    );
    let bad = t.run(&["stage", "create", "two words"]).await;
    assert!(bad.one_line_error().contains("NAME"), "{}", bad.stderr);
    let table = t.run(&["stage", "ls"]).await;
    let header: Vec<&str> = table
        .ok()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["POSITION", "NAME", "DEPLOY", "BY", "DEPLOYERS"]);
    // Emptied, it goes.
    t.run(&["deployer", "update", "alpha", "--stage", "Production"])
        .await
        .ok();
    t.run(&["stage", "rm", "Test"]).await.ok();
    let after = t.run(&["stage", "ls", "-o", "json"]).await.json();
    let names: Vec<&str> = after
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Development", "Production"]);
    t.gw.shutdown().await;
}

// A caller's x-request-id comes back and is in the audit log; without one the gateway
// makes one up and says which.
#[tokio::test]
async fn request_ids_are_returned_and_audited() {
    let t = start().await;
    let mut control = ds_test_support::control_client(&t.gw.url(), &t.gw.admin_key);
    let mut req = tonic::Request::new(proto::CreateDeployerRequest {
        name: "traced".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-id", "ci-run-42".parse().unwrap());
    let answer = control.create_deployer(req).await.unwrap();
    assert_eq!(answer.metadata().get("x-request-id").unwrap(), "ci-run-42");
    let mut req = tonic::Request::new(proto::ListStagesRequest {});
    req.metadata_mut()
        .insert("x-request-id", "has spaces".parse().unwrap());
    let generated = control.list_stages(req).await.unwrap();
    let id = generated
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let entries = t.run(&["audit", "ls", "-o", "json"]).await.json();
    let created = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "deployer.create")
        .unwrap();
    assert_eq!(created["request_id"], "ci-run-42");
    t.gw.shutdown().await;
}

#[tokio::test]
async fn bad_model_storage_options_are_refused_naming_the_flag() {
    let t = start().await;
    t.deployer("prod").await;
    let base = [
        "deployment",
        "create",
        "--model-name",
        "iris",
        "-d",
        "prod",
        "-i",
        IMAGE,
    ];
    let sum = "ab".repeat(32);
    let cases: [(&[&str], &str); 5] = [
        (
            &["--model-uri", "ftp://host/iris.onnx"],
            "invalid --model-uri",
        ),
        (
            &["--model-uri", "s3://models/iris/", "--model-path", "models"],
            "invalid --model-path",
        ),
        (
            &[
                "--model-uri",
                "s3://models/iris.onnx",
                "--model-sha256",
                "abc",
            ],
            "invalid --model-sha256",
        ),
        (
            &["--model-uri", "pvc://weights", "--storage-secret", "creds"],
            "invalid --storage-secret",
        ),
        (&["--model-sha256", &sum], "invalid --model-sha256"),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let line = t.run(&args).await.one_line_error().to_string();
        assert!(line.contains(expected), "{extra:?}: {line}");
    }
    // The unknown scheme's error lists the schemes there are.
    let run = t
        .run(&[base.as_slice(), &["--model-uri", "ftp://host/iris.onnx"]].concat())
        .await;
    let line = run.one_line_error();
    assert!(line.contains("s3://") && line.contains("pvc://"), "{line}");
    // Accepted, and shown by get.
    t.run(
        &[
            base.as_slice(),
            &[
                "--model-uri",
                "s3://models/iris/",
                "--storage-secret",
                "s3-creds",
            ],
        ]
        .concat(),
    )
    .await
    .ok();
    let text = t.run(&["deployment", "get", "iris"]).await;
    let out = text.ok();
    assert!(
        out.contains("s3://models/iris/") && out.contains("/models"),
        "{out}"
    );
    assert!(out.contains("s3-creds"), "{out}");
    t.gw.shutdown().await;
}

// === remapping and promotion ===

/// `ds deployment get NAME -d DEPLOYER -o json`, parsed.
async fn get_on(t: &TestGateway, name: &str, deployer: &str) -> Value {
    t.run(&["deployment", "get", name, "-d", deployer, "-o", "json"])
        .await
        .json()
}

fn env_value(view: &Value, name: &str) -> String {
    view["spec"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no env {name} in {view}"))
}

#[tokio::test]
async fn remapping_applies_on_create_and_promote_never_retroactively_and_describe_shows_it() {
    let t = start().await;
    t.deployer("dev").await;
    t.run(&["deployer", "create", "prod", "--stage", "Production"])
        .await
        .ok();
    let set = t
        .run(&[
            "deployer",
            "remap",
            "prod",
            "--env",
            "DB_CONN=sql-dev:sql-prod",
            "--secret",
            "creds-dev:creds-prod",
        ])
        .await;
    assert!(
        set.ok().contains("env DB_CONN sql-dev → sql-prod"),
        "{}",
        set.stdout
    );
    let got = t.run(&["deployer", "get", "prod"]).await;
    assert!(
        got.ok()
            .contains("env DB_CONN sql-dev → sql-prod; secret creds-dev → creds-prod"),
        "{}",
        got.stdout
    );
    let spec_flags = [
        "--env",
        "DB_CONN=sql-dev",
        "--env",
        "OTHER=sql-dev",
        "--image-pull-secret",
        "creds-dev",
    ];
    t.deployment("dev", "iris", &spec_flags).await;
    // Created on dev (no map): as given.
    let dev = get_on(&t, "iris", "dev").await;
    assert_eq!(env_value(&dev, "DB_CONN"), "sql-dev");

    // Created on prod directly: remapped there too.
    let direct = t.deployment("prod", "wine", &spec_flags).await;
    assert_eq!(env_value(&direct, "DB_CONN"), "sql-prod");
    assert_eq!(
        env_value(&direct, "OTHER"),
        "sql-dev",
        "only the mapped name"
    );
    assert_eq!(direct["spec"]["image_pull_secrets"][0], "creds-prod");

    // Promoted: the source's spec with the target's map.
    let promoted = t
        .run(&["deployment", "promote", "iris", "-d", "dev", "--to", "prod"])
        .await;
    let line = promoted.ok();
    assert!(
        line.contains("promoted to prod (created")
            && line.contains("remapped: env DB_CONN sql-dev → sql-prod"),
        "{line}"
    );
    let prod = get_on(&t, "iris", "prod").await;
    assert_eq!(env_value(&prod, "DB_CONN"), "sql-prod");
    assert_eq!(prod["spec"]["image_pull_secrets"][0], "creds-prod");
    assert_eq!(prod["spec"]["image"], dev["spec"]["image"]);
    assert_eq!(
        env_value(&get_on(&t, "iris", "dev").await, "DB_CONN"),
        "sql-dev",
        "the source is untouched"
    );
    let described = t
        .run(&["deployment", "describe", "iris", "-d", "prod"])
        .await;
    assert!(
        described.ok().contains(
            "Remapped: env DB_CONN sql-dev → sql-prod; secret creds-dev → creds-prod (image_pull_secrets)"
        ),
        "{}",
        described.stdout
    );
    let history = t
        .run(&["deployment", "history", "iris", "-d", "prod"])
        .await;
    assert!(
        history.ok().contains("promoted from dev revision 1"),
        "{}",
        history.stdout
    );

    // Changing the map touches no existing deployment.
    t.run(&[
        "deployer",
        "remap",
        "prod",
        "--env",
        "DB_CONN=sql-dev:sql-other",
    ])
    .await
    .ok();
    let unchanged = get_on(&t, "iris", "prod").await;
    assert_eq!(env_value(&unchanged, "DB_CONN"), "sql-prod");
    assert_eq!(unchanged["revision"], prod["revision"]);
    // An update is not remapped.
    let updated = t
        .run(&[
            "deployment",
            "update",
            "wine",
            "-d",
            "prod",
            "--env",
            "DB_CONN=sql-dev",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(env_value(&updated, "DB_CONN"), "sql-dev");
    // Promoting again changes the one there, with the map as it is now.
    let again = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to",
            "prod",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(again[0]["outcome"], "promoted");
    assert_eq!(again[0]["created"], false);
    assert_eq!(
        env_value(&get_on(&t, "iris", "prod").await, "DB_CONN"),
        "sql-other"
    );
    let audit = audit_summary(&t, &[]).await;
    let actions: Vec<&str> = audit.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "deployer.remap").count(),
        2
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "deployment.promote")
            .count(),
        2
    );
}

#[tokio::test]
async fn remap_flag_errors_name_the_flag() {
    let t = start().await;
    t.deployer("prod").await;
    for (args, flag, rule) in [
        (vec!["--env", "DB_CONN"], "--env", "NAME=FROM:TO"),
        (vec!["--env", "DB_CONN=a:a"], "--env", "the same"),
        (
            vec!["--env", "1X=a:b"],
            "--env",
            "environment variable name",
        ),
        (vec!["--secret", "creds"], "--secret", "FROM:TO"),
        (
            vec!["--secret", "Creds_Dev:creds"],
            "--secret",
            "Secret names",
        ),
        (vec!["--remove-env", "NOPE"], "--remove-env", "no env entry"),
        (vec![], "--env", "nothing to change"),
    ] {
        let mut all = vec!["deployer", "remap", "prod"];
        all.extend(args.iter().copied());
        let run = t.run(&all).await;
        let line = run.one_line_error();
        assert!(
            line.contains(flag) && line.contains(rule),
            "{args:?}: {line}"
        );
    }
    let got = t
        .run(&["deployer", "get", "prod", "-o", "json"])
        .await
        .json();
    assert!(got.get("remap").is_none(), "nothing was stored: {got}");
}

#[tokio::test]
async fn promote_to_a_stage_goes_target_by_target_and_stops_at_the_first_refusal() {
    let t = start().await;
    t.deployer("dev").await;
    let mut tokens = Vec::new();
    for name in ["prod-a", "prod-b", "prod-c"] {
        let created = t
            .run(&[
                "deployer",
                "create",
                name,
                "--stage",
                "Production",
                "-o",
                "json",
            ])
            .await
            .json();
        tokens.push(created["token"].as_str().unwrap().to_string());
    }
    // prod-b's agent has rights in one other namespace only: the gateway refuses there.
    let mut agent = ds_test_support::agent_service(&t.gw.url(), &tokens[1]);
    agent
        .report_status(proto::StatusReport {
            agent: Some(proto::AgentInfo {
                version: "test-agent".into(),
                cluster: "test".into(),
                namespaces: vec!["restricted".into()],
                ..Default::default()
            }),
            statuses: vec![],
            objects: None,
        })
        .await
        .expect("heartbeat accepted");
    t.deployment("dev", "iris", &[]).await;
    let run = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to-stage",
            "Production",
            "-o",
            "json",
        ])
        .await;
    let line = run.one_line_error();
    assert!(
        line.contains("stopped at deployer prod-b")
            && line.contains("restricted")
            && line.contains("done: prod-a")
            && line.contains("not run: prod-c"),
        "{line}"
    );
    let results: Value = serde_json::from_str(&run.stdout).expect("per-target results");
    let outcomes: Vec<(&str, &str)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["deployer"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("prod-a", "promoted"),
            ("prod-b", "failed"),
            ("prod-c", "not-run")
        ]
    );
    assert_eq!(get_on(&t, "iris", "prod-a").await["name"], "iris");
    for untouched in ["prod-b", "prod-c"] {
        let ls = t
            .run(&["deployment", "ls", "-d", untouched, "-o", "json"])
            .await;
        let listed: Value = serde_json::from_str(&ls.stdout).unwrap_or(Value::Array(vec![]));
        assert_eq!(listed, Value::Array(vec![]), "{untouched}: {}", ls.stdout);
    }
    let unknown = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to-stage",
            "Prod",
        ])
        .await;
    assert!(
        unknown.one_line_error().contains("--to-stage"),
        "{}",
        unknown.stderr
    );
}

/// The model container's `DB_CONN` value and the pod's image pull secrets, as the
/// simulated cluster at `client` stores the Deployment `iris` in `default`.
async fn sim_pod(client: kube::Client, what: &str) -> (String, Vec<String>) {
    use k8s_openapi::api::apps::v1::Deployment;
    let api: kube::Api<Deployment> = kube::Api::namespaced(client, "default");
    ds_test_support::eventually(what, || {
        let api = api.clone();
        async move {
            let d = api.get_opt("iris").await.ok()??;
            let pod = d.spec?.template.spec?;
            let model = pod.containers.iter().find(|c| c.name == "model")?;
            let conn = model
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "DB_CONN")?
                .value
                .clone()?;
            let secrets = pod
                .image_pull_secrets
                .iter()
                .flatten()
                .map(|s| s.name.clone())
                .collect();
            Some((conn, secrets))
        }
    })
    .await
}

#[tokio::test]
async fn promote_with_wait_across_two_agents_on_two_simulated_clusters_remaps_in_the_target_cluster()
 {
    use ds_kube_sim::{SimCluster, SimConfig};
    let t = start().await;
    let sim_config = |failing: Option<&str>| SimConfig {
        rollout_delay: Duration::from_millis(200),
        failing_image: failing.map(str::to_string),
        ..Default::default()
    };
    let dev_sim = SimCluster::start(sim_config(None)).await.expect("dev sim");
    let prod_sim = SimCluster::start(sim_config(None)).await.expect("prod sim");
    // The image of the deployment fails in this cluster only.
    let broken_sim = SimCluster::start(sim_config(Some("^tensorflow/")))
        .await
        .expect("broken sim");
    let (_, dev_token) = t.deployer("dev").await;
    let prod = t
        .run(&[
            "deployer",
            "create",
            "prod",
            "--stage",
            "Production",
            "-o",
            "json",
        ])
        .await
        .json();
    let (_, broken_token) = t.deployer("broken").await;
    let url = t.gw.url();
    let dev_agent = ds_test_support::start_agent(
        ds_test_support::agent_args(&url, &dev_token),
        dev_sim.client(),
    )
    .await;
    let prod_agent = ds_test_support::start_agent(
        ds_test_support::agent_args(&url, prod["token"].as_str().unwrap()),
        prod_sim.client(),
    )
    .await;
    let broken_agent = ds_test_support::start_agent(
        ds_test_support::agent_args(&url, &broken_token),
        broken_sim.client(),
    )
    .await;
    t.run(&[
        "deployer",
        "remap",
        "prod",
        "--env",
        "DB_CONN=sql-dev:sql-prod",
        "--secret",
        "creds-dev:creds-prod",
    ])
    .await
    .ok();

    let created = t
        .run(&[
            "deployment",
            "create",
            "--model-name",
            "iris",
            "-d",
            "dev",
            "-i",
            IMAGE,
            "--env",
            "DB_CONN=sql-dev",
            "--image-pull-secret",
            "creds-dev",
            "--wait",
        ])
        .await;
    assert!(
        created.ok().contains("Name:      iris")
            && created
                .stderr
                .contains("deployment default/iris is available"),
        "{}\n{}",
        created.stdout,
        created.stderr
    );

    let promoted = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to",
            "prod",
            "--wait",
        ])
        .await;
    let line = promoted.ok();
    assert!(
        line.contains("promoted to prod (created")
            && line.contains("remapped: env DB_CONN sql-dev → sql-prod"),
        "{line}"
    );
    assert!(
        promoted
            .stderr
            .contains("waiting for deployment default/iris on prod")
            && promoted
                .stderr
                .contains("default/iris: Available, 1/1 ready")
            && promoted
                .stderr
                .contains("deployment default/iris is available"),
        "{}",
        promoted.stderr
    );
    assert_eq!(
        get_on(&t, "iris", "prod").await["status"]["phase"],
        "Available"
    );

    // What each agent applied to its own cluster.
    let (conn, secrets) = sim_pod(prod_sim.client(), "the Deployment on the prod cluster").await;
    assert_eq!(conn, "sql-prod");
    assert_eq!(secrets, ["creds-prod"]);
    let (conn, secrets) = sim_pod(dev_sim.client(), "the Deployment on the dev cluster").await;
    assert_eq!(conn, "sql-dev", "the source's cluster is untouched");
    assert_eq!(secrets, ["creds-dev"]);

    // A target whose cluster fails the image: --wait reports it and names the target.
    let failed = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to",
            "broken",
            "--wait",
        ])
        .await;
    let stderr = failed.failed();
    let error = stderr.lines().last().unwrap_or_default();
    assert!(
        stderr.contains("default/iris: Failed")
            && error.starts_with("error: promotion of default/iris stopped at deployer broken")
            && error.contains("Back-off pulling image"),
        "{stderr}"
    );
    assert_eq!(
        get_on(&t, "iris", "broken").await["status"]["phase"],
        "Failed"
    );
    // No map on that deployer: its cluster got the source's values.
    let (conn, secrets) =
        sim_pod(broken_sim.client(), "the Deployment on the broken cluster").await;
    assert_eq!(
        (conn.as_str(), secrets),
        ("sql-dev", vec!["creds-dev".to_string()])
    );
    // The cluster the failing one came after keeps what it had.
    let (conn, _) = sim_pod(prod_sim.client(), "the Deployment on the prod cluster").await;
    assert_eq!(conn, "sql-prod");

    for agent in [dev_agent, prod_agent, broken_agent] {
        agent.shutdown().await;
    }
}

/// The deployments on `deployer`, by name.
async fn names_on(t: &TestGateway, deployer: &str) -> Vec<String> {
    let listed = t
        .run(&["deployment", "ls", "-d", deployer, "-o", "json"])
        .await
        .json();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

/// Each target's `(deployer, outcome)` in `promote -o json`'s output.
fn outcomes(run: &Run) -> Vec<(String, String)> {
    let results: Value = serde_json::from_str(&run.stdout).expect("per-target results");
    results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["deployer"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn promote_is_refused_by_the_target_stage_policy_and_needs_deploy_on_the_target() {
    let t = start().await;
    t.deployer("dev").await;
    for name in ["prod-a", "prod-b"] {
        t.run(&["deployer", "create", name, "--stage", "Production"])
            .await
            .ok();
    }
    t.deployment("dev", "iris", &["--replicas", "2"]).await;
    t.run(&[
        "stage",
        "update",
        "Production",
        "--deploy-by",
        "service-accounts",
    ])
    .await
    .ok();
    let policy = |line: &str| {
        line.contains("stage Production allows deployments by service accounts only")
            && line.contains("ds stage update Production --deploy-by anyone")
    };

    // A person (the admin) promoting to a service-accounts stage: refused, saying what
    // to do, nothing created there, the refusal audited.
    let refused = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to",
            "prod-a",
        ])
        .await;
    let line = refused.one_line_error();
    assert!(policy(line), "{line}");
    assert!(names_on(&t, "prod-a").await.is_empty());
    let denied: Vec<_> = audit_summary(&t, &[])
        .await
        .into_iter()
        .filter(|e| e.3 == "denied")
        .collect();
    assert_eq!(
        denied,
        [(
            admin_actor(&t),
            "deployment.promote".to_string(),
            "deployment/default/iris".to_string(),
            "denied".to_string()
        )]
    );

    // To the whole stage: the first target refuses, so it stops there, names it and
    // runs none of the rest.
    let refused = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to-stage",
            "Production",
            "-o",
            "json",
        ])
        .await;
    let line = refused.one_line_error();
    assert!(
        line.contains("stopped at deployer prod-a") && line.contains("not run: prod-b"),
        "{line}"
    );
    assert!(policy(line), "{line}");
    assert_eq!(
        outcomes(&refused),
        [
            ("prod-a".to_string(), "failed".to_string()),
            ("prod-b".to_string(), "not-run".to_string())
        ]
    );
    for target in ["prod-a", "prod-b"] {
        assert!(names_on(&t, target).await.is_empty(), "{target}");
    }

    // A service account, as the policy wants, with Deploy on prod-a and only View on
    // prod-b (and View on the source).
    t.run(&["user", "create", "ci", "--service-account"])
        .await
        .ok();
    t.run(&["group", "create", "release"]).await.ok();
    t.run(&["group", "add-member", "release", "ci"]).await.ok();
    for (deployer, role) in [("dev", "view"), ("prod-a", "deploy"), ("prod-b", "view")] {
        t.run(&[
            "deployer", "grant", deployer, "--group", "release", "--role", role,
        ])
        .await
        .ok();
    }
    let key = t
        .run(&["apikey", "create", "--user", "ci", "-o", "json"])
        .await
        .json();
    let ci_key = key["secret"].as_str().expect("the key, shown once");
    let as_ci = |args: &[&str]| {
        let mut cmd = t.bare(args);
        cmd.env("DS_GATEWAY", t.gw.url()).env("DS_API_KEY", ci_key);
        output(cmd)
    };

    // View on the target is not enough.
    let denied = as_ci(&[
        "deployment",
        "promote",
        "iris",
        "-d",
        "dev",
        "--to",
        "prod-b",
    ])
    .await;
    let line = denied.one_line_error();
    assert!(
        line.contains("stopped at deployer prod-b: permission denied: ")
            && line.contains("needs the Deploy role; you have View"),
        "{line}"
    );
    assert!(!policy(line), "{line}");
    assert!(names_on(&t, "prod-b").await.is_empty());

    // To the stage: prod-a is promoted, prod-b refuses; the error names it and what was
    // done, and prod-a keeps its promotion.
    let run = as_ci(&[
        "deployment",
        "promote",
        "iris",
        "-d",
        "dev",
        "--to-stage",
        "Production",
        "-o",
        "json",
    ])
    .await;
    let line = run.one_line_error();
    assert!(
        line.contains("stopped at deployer prod-b") && line.contains("done: prod-a"),
        "{line}"
    );
    assert_eq!(
        outcomes(&run),
        [
            ("prod-a".to_string(), "promoted".to_string()),
            ("prod-b".to_string(), "failed".to_string())
        ]
    );
    let promoted = get_on(&t, "iris", "prod-a").await;
    assert_eq!(promoted["spec"]["replicas"], 2, "{promoted}");
    assert!(names_on(&t, "prod-b").await.is_empty());

    // The admin promoting a change onto the deployment now there: refused as well, and
    // the one there keeps its spec.
    t.run(&[
        "deployment",
        "update",
        "iris",
        "-d",
        "dev",
        "--replicas",
        "3",
    ])
    .await
    .ok();
    let refused = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to",
            "prod-a",
        ])
        .await;
    let line = refused.one_line_error();
    assert!(policy(line), "{line}");
    let kept = get_on(&t, "iris", "prod-a").await;
    assert_eq!(kept["spec"]["replicas"], 2, "{kept}");
    assert_eq!(kept["revision"], promoted["revision"], "{kept}");
    t.gw.shutdown().await;
}

#[tokio::test]
async fn promote_to_a_stage_stops_at_a_target_whose_pre_hook_refuses_and_keeps_the_first() {
    use std::os::unix::fs::PermissionsExt as _;
    let hooks = tempfile::tempdir().unwrap();
    let script = hooks.path().join("change-freeze");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"change freeze on $DS_HOOK_DEPLOYER until Monday\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = hooks.path().to_path_buf();
    let t = start_with(move |a| a.hooks_dir = Some(dir)).await;
    t.deployer("dev").await;
    for name in ["prod-a", "prod-b"] {
        t.run(&["deployer", "create", name, "--stage", "Production"])
            .await
            .ok();
    }
    t.run(&[
        "hook",
        "add",
        "--deployer",
        "prod-b",
        "--phase",
        "pre",
        "--command",
        "change-freeze",
    ])
    .await
    .ok();
    t.deployment("dev", "iris", &["--replicas", "2"]).await;

    let run = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to-stage",
            "Production",
            "-o",
            "json",
        ])
        .await;
    let line = run.one_line_error();
    assert!(
        line.contains("stopped at deployer prod-b")
            && line.contains("change freeze on prod-b until Monday")
            && line.contains("done: prod-a"),
        "{line}"
    );
    assert_eq!(
        outcomes(&run),
        [
            ("prod-a".to_string(), "promoted".to_string()),
            ("prod-b".to_string(), "failed".to_string())
        ]
    );
    assert_eq!(get_on(&t, "iris", "prod-a").await["spec"]["replicas"], 2);
    assert!(names_on(&t, "prod-b").await.is_empty());

    // Straight to it: refused the same way, still nothing there.
    let refused = t
        .run(&[
            "deployment",
            "promote",
            "iris",
            "-d",
            "dev",
            "--to",
            "prod-b",
        ])
        .await;
    assert!(
        refused
            .one_line_error()
            .contains("change freeze on prod-b until Monday"),
        "{}",
        refused.stderr
    );
    assert!(names_on(&t, "prod-b").await.is_empty());
    t.gw.shutdown().await;
}
