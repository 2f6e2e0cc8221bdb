//! The kubectl conventions of the `ds` CLI, tested as a process against a real gateway
//! on 127.0.0.1:0: `-o name|wide`, `ls -n/-A`, `ds version`, `ds completion`,
//! `create --wait -o json`, update's flags and no-op updates, errors naming flags, and
//! the install's loopback warning.

use ds_core::proto::{self, Phase};
use ds_test_support::TestGateway;
use ds_test_support::cli::{self, Run};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Generous bound for one `ds` run on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

const IMAGE: &str = "tensorflow/serving:2.15.0";

fn ds_binary() -> PathBuf {
    std::env::var_os("DS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ds")))
}

/// `ds ARGS` with no gateway or key in the environment, a private config path.
fn bare(dir: &std::path::Path, args: &[&str]) -> Command {
    cli::bare(&ds_binary(), &dir.join("ds-config.yaml"), args)
}

async fn output(cmd: Command) -> Run {
    cli::output(cmd, DEADLINE).await
}

async fn ds(gw: &TestGateway, args: &[&str]) -> Run {
    let mut cmd = bare(gw.dir(), args);
    cmd.env("DS_GATEWAY", gw.url())
        .env("DS_API_KEY", &gw.admin_key);
    output(cmd).await
}

/// Creates a deployer; returns its token.
async fn deployer(gw: &TestGateway, name: &str) -> String {
    let created = ds(gw, &["deployer", "create", name, "-o", "json"])
        .await
        .json();
    created["token"].as_str().unwrap().to_string()
}

/// Creates a deployment; returns its JSON view.
async fn deployment(gw: &TestGateway, deployer: &str, model: &str, extra: &[&str]) -> Value {
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
    ds(gw, &args).await.json()
}

async fn get_json(gw: &TestGateway, name: &str) -> Value {
    ds(gw, &["deployment", "get", name, "-o", "json"])
        .await
        .json()
}

async fn deployer_revision(gw: &TestGateway, name: &str) -> u64 {
    ds(gw, &["deployer", "get", name, "-o", "json"])
        .await
        .json()["revision"]
        .as_u64()
        .unwrap()
}

// === output formats ===

#[tokio::test]
async fn o_name_prints_kind_slash_name_one_per_line() {
    let gw = TestGateway::start().await;
    deployer(&gw, "prod").await;
    deployer(&gw, "staging").await;
    let none = ds(&gw, &["deployment", "ls", "-o", "name"]).await;
    assert_eq!(none.ok(), "", "no deployments, no lines");
    deployment(&gw, "prod", "iris", &[]).await;
    deployment(&gw, "prod", "mnist", &[]).await;
    let run = ds(&gw, &["deployer", "ls", "-o", "name"]).await;
    assert_eq!(run.ok(), "deployer/prod\ndeployer/staging\n");
    let run = ds(&gw, &["deployer", "get", "prod", "-o", "name"]).await;
    assert_eq!(run.ok(), "deployer/prod\n");
    let run = ds(&gw, &["deployment", "ls", "-o", "name"]).await;
    assert_eq!(run.ok(), "deployment/iris\ndeployment/mnist\n");
    let run = ds(&gw, &["deployment", "get", "iris", "-o", "name"]).await;
    assert_eq!(run.ok(), "deployment/iris\n");
}

#[tokio::test]
async fn o_wide_adds_columns() {
    let gw = TestGateway::start().await;
    deployer(&gw, "prod").await;
    let created = deployment(&gw, "prod", "iris", &["--host", "iris.example.com"]).await;
    let id = created["id"].as_str().unwrap();
    let run = ds(&gw, &["deployment", "ls", "-o", "wide"]).await;
    let text = run.ok();
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "NAMESPACE",
            "DEPLOYER",
            "STAGE",
            "IMAGE",
            "REPLICAS",
            "STATUS",
            "AGE",
            "URL",
            "REVISION",
            "ID"
        ]
    );
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "iris");
    assert_eq!(row[3], "Development");
    assert_eq!(row[8], "http://iris.example.com/");
    assert_eq!(row[10], id);
    // The plain table keeps its columns.
    let plain = ds(&gw, &["deployment", "ls"]).await;
    assert!(
        !plain.ok().lines().next().unwrap().contains("URL"),
        "{}",
        plain.stdout
    );
    let run = ds(&gw, &["deployer", "ls", "-o", "wide"]).await;
    let header: Vec<&str> = run
        .ok()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STAGE",
            "DEPLOYMENTS",
            "STATUS",
            "VERSION",
            "LAST",
            "SEEN",
            "AGE",
            "CLUSTER",
            "NAMESPACES",
            "REVISION",
            "ID"
        ]
    );
}

// === namespaces ===

#[tokio::test]
async fn ls_n_filters_by_namespace_and_a_or_nothing_lists_all() {
    let gw = TestGateway::start().await;
    deployer(&gw, "prod").await;
    deployment(&gw, "prod", "iris", &["-n", "team-a"]).await;
    deployment(&gw, "prod", "mnist", &["-n", "team-b"]).await;
    let names = |run: Run| -> Vec<String> {
        run.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    let only_a = names(ds(&gw, &["deployment", "ls", "-n", "team-a", "-o", "json"]).await);
    assert_eq!(only_a, ["iris"]);
    let all = names(ds(&gw, &["deployment", "ls", "-A", "-o", "json"]).await);
    assert_eq!(all, ["iris", "mnist"]);
    let default = names(ds(&gw, &["deployment", "ls", "-o", "json"]).await);
    assert_eq!(default, all, "the default stays every namespace");
    let none = ds(&gw, &["deployment", "ls", "-n", "elsewhere", "-o", "json"]).await;
    assert_eq!(none.json(), Value::Array(vec![]));
    let both = ds(&gw, &["deployment", "ls", "-n", "team-a", "-A"]).await;
    assert!(
        both.failed().contains("cannot be used with"),
        "{}",
        both.stderr
    );
}

// === version and completion ===

#[tokio::test]
async fn version_prints_client_and_gateway_or_says_why_not() {
    let gw = TestGateway::start().await;
    let version = env!("CARGO_PKG_VERSION");
    let run = ds(&gw, &["version"]).await;
    assert_eq!(
        run.ok(),
        format!("Client Version: {version}\nGateway Version: {version}\n")
    );
    let json = ds(&gw, &["version", "-o", "json"]).await.json();
    assert_eq!(json["client_version"], version);
    assert_eq!(json["gateway_version"], version);
    // No gateway listening: the client's version, one line why, non-zero (as kubectl).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut cmd = bare(gw.dir(), &["version"]);
    cmd.env("DS_GATEWAY", &closed).env("DS_API_KEY", "x");
    let run = output(cmd).await;
    assert_eq!(run.stdout, format!("Client Version: {version}\n"));
    let stderr = run.failed();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: gateway version unknown: cannot reach the gateway"),
        "{stderr}"
    );
    // `--client` does not ask.
    let mut cmd = bare(gw.dir(), &["version", "--client", "-o", "json"]);
    cmd.env("DS_GATEWAY", &closed);
    let json = output(cmd).await.json();
    assert_eq!(json["client_version"], version);
    assert_eq!(json["gateway_version"], Value::Null);
}

#[tokio::test]
async fn completion_scripts_name_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let run = output(bare(dir.path(), &["completion", shell])).await;
        let script = run.ok();
        for word in ["deployment", "deployer", "version", "model-name"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
}

// === create and update ===

#[tokio::test]
async fn create_wait_o_json_prints_the_final_object_on_stdout() {
    let gw = TestGateway::start().await;
    let token = deployer(&gw, "prod").await;
    let mut cmd = bare(
        gw.dir(),
        &[
            "deployment",
            "create",
            "--model-name",
            "iris",
            "-d",
            "prod",
            "-i",
            IMAGE,
            "--wait",
            "-o",
            "json",
        ],
    );
    cmd.env("DS_GATEWAY", gw.url())
        .env("DS_API_KEY", &gw.admin_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Play the agent: connected first (`--wait` needs one), then, once the deployment
    // exists, it reports it Available.
    let mut agent = ds_test_support::agent_service(&gw.url(), &token);
    agent
        .report_status(proto::StatusReport {
            agent: Some(proto::AgentInfo {
                version: "test-agent".into(),
                cluster: "test".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("heartbeat accepted");
    let child = cmd.spawn().expect("ds starts");
    let control = gw.control();
    let view = ds_test_support::eventually("the deployment to exist", || {
        let mut control = control.clone();
        async move {
            control
                .get_deployment(proto::GetDeploymentRequest {
                    deployment: "iris".into(),
                    ..Default::default()
                })
                .await
                .ok()
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    let d = view.deployment.unwrap();
    agent
        .report_status(proto::StatusReport {
            agent: Some(proto::AgentInfo {
                version: "test-agent".into(),
                cluster: "test".into(),
                ..Default::default()
            }),
            statuses: vec![proto::DeploymentStatus {
                deployment_id: d.id.clone(),
                phase: Phase::Available as i32,
                ready_replicas: 1,
                available_replicas: 1,
                updated_replicas: 1,
                applied_revision: d.revision_of_last_change,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("status accepted");
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("ds finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(json["id"], d.id.as_str());
    assert_eq!(json["status"]["phase"], "Available", "{json}");
    assert_eq!(json["status"]["ready_replicas"], 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is available"),
        "progress on stderr: {stderr}"
    );
}

#[tokio::test]
async fn update_has_the_resource_flags_of_create() {
    let gw = TestGateway::start().await;
    deployer(&gw, "prod").await;
    deployment(&gw, "prod", "iris", &["--cpu", "500m", "--memory", "256Mi"]).await;
    let changes: [(&[&str], &str, Value); 7] = [
        (
            &["--cpu-limit", "2"],
            "/spec/resources/cpu_limit",
            "2".into(),
        ),
        (
            &["--memory-limit", "1Gi"],
            "/spec/resources/memory_limit",
            "1Gi".into(),
        ),
        (
            &["--class-names", "setosa,versicolor"],
            "/spec/proxy/class_names",
            serde_json::json!(["setosa", "versicolor"]),
        ),
        (
            &["--class-names", ""],
            "/spec/proxy/class_names",
            serde_json::json!([]),
        ),
        (&["--label", "team=ml"], "/spec/labels/team", "ml".into()),
        (&["--query-log"], "/spec/proxy/query_log", true.into()),
        (
            &["--model-name", "iris-v2"],
            "/spec/model_name",
            "iris-v2".into(),
        ),
    ];
    for (flags, pointer, expected) in changes {
        let mut args = vec!["deployment", "update", "iris"];
        args.extend_from_slice(flags);
        let run = ds(&gw, &args).await;
        assert!(run.ok().contains("updated (revision"), "{}", run.stdout);
        assert!(
            run.stdout.contains("URL:"),
            "update prints the URL: {}",
            run.stdout
        );
        let stored = get_json(&gw, "iris").await;
        assert_eq!(
            stored.pointer(pointer),
            Some(&expected),
            "{flags:?}: {stored}"
        );
    }
    // Requests stay as set; the limit alone changed.
    let stored = get_json(&gw, "iris").await;
    assert_eq!(stored["spec"]["resources"]["cpu_request"], "500m");
    let run = ds(
        &gw,
        &["deployment", "update", "iris", "--unset-label", "team"],
    )
    .await;
    run.ok();
    let stored = get_json(&gw, "iris").await;
    assert_eq!(stored.pointer("/spec/labels/team"), None, "{stored}");
    // The URL of a changed host.
    let run = ds(
        &gw,
        &["deployment", "update", "iris", "--host", "iris.example.com"],
    )
    .await;
    assert!(
        run.ok().contains("http://iris.example.com/"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn a_no_op_update_says_no_change_and_makes_no_revision() {
    let gw = TestGateway::start().await;
    deployer(&gw, "prod").await;
    deployment(&gw, "prod", "iris", &["--replicas", "2"]).await;
    let before = deployer_revision(&gw, "prod").await;
    let run = ds(
        &gw,
        &[
            "deployment",
            "update",
            "iris",
            "--replicas",
            "2",
            "--image",
            IMAGE,
        ],
    )
    .await;
    assert!(run.ok().contains("no change"), "{}", run.stdout);
    assert_eq!(deployer_revision(&gw, "prod").await, before);
    let json = ds(
        &gw,
        &[
            "deployment",
            "update",
            "iris",
            "--replicas",
            "2",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(json["changed"], false);
    let json = ds(
        &gw,
        &[
            "deployment",
            "update",
            "iris",
            "--replicas",
            "3",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(json["changed"], true);
    assert_eq!(deployer_revision(&gw, "prod").await, before + 1);
}

#[tokio::test]
async fn validation_errors_name_the_flag() {
    let gw = TestGateway::start().await;
    deployer(&gw, "prod").await;
    // Checked before dialing.
    let run = ds(
        &gw,
        &[
            "deployment",
            "create",
            "--model-name",
            "iris",
            "-d",
            "prod",
            "-i",
            IMAGE,
            "--cpu-limit",
            "lots",
        ],
    )
    .await;
    let stderr = run.failed();
    assert!(
        stderr.starts_with("error: invalid --cpu-limit \"lots\": "),
        "{stderr}"
    );
    assert!(!stderr.contains("resources."), "{stderr}");
    // Checked by the gateway (only it sees the whole updated spec).
    deployment(&gw, "prod", "iris", &[]).await;
    let run = ds(
        &gw,
        &[
            "deployment",
            "update",
            "iris",
            "--cpu",
            "2",
            "--cpu-limit",
            "1",
        ],
    )
    .await;
    let stderr = run.failed();
    assert!(
        stderr.starts_with("error: invalid --cpu \"2\": must not exceed the cpu limit"),
        "{stderr}"
    );
}

// === install ===

#[tokio::test]
async fn install_warns_when_the_public_url_is_loopback() {
    let gw = TestGateway::start().await;
    deployer(&gw, "prod").await;
    let run = ds(&gw, &["deployer", "install", "prod"]).await;
    assert!(run.ok().starts_with("kubectl apply -f"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("warning: the gateway's public URL is a loopback address (127.0.0.1)"),
        "{}",
        run.stderr
    );
    let gw = TestGateway::start_with(|args| {
        args.public_url = Some("https://gw.example.com".into());
    })
    .await;
    deployer(&gw, "prod").await;
    let run = ds(&gw, &["deployer", "install", "prod"]).await;
    run.ok();
    assert!(!run.stderr.contains("loopback"), "{}", run.stderr);
}

// === watch ===

/// A `ds` process whose stdout is read line by line while it runs.
struct Watching {
    _child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Watching {
    fn spawn(gw: &TestGateway, args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let mut cmd = bare(gw.dir(), args);
        cmd.env("DS_GATEWAY", gw.url())
            .env("DS_API_KEY", &gw.admin_key)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("ds starts");
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _child: child,
            stdout,
            seen: Vec::new(),
        }
    }

    /// Reads stdout until a line satisfies `hit`; returns it.
    async fn line(&mut self, what: &str, hit: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = self.stdout.next_line().await.expect("read stdout") {
                self.seen.push(line.clone());
                if hit(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no line {what}; saw: {:?}", self.seen),
        }
    }
}

#[tokio::test]
async fn get_w_prints_the_row_then_a_line_per_change() {
    let gw = TestGateway::start().await;
    deployer(&gw, "prod").await;
    deployment(&gw, "prod", "iris", &["--replicas", "1"]).await;
    let mut watching = Watching::spawn(&gw, &["deployment", "get", "iris", "-w"]);
    let header = watching
        .line("with the header", |l| l.starts_with("NAME"))
        .await;
    assert!(header.contains("REPLICAS"), "{header}");
    watching
        .line("with 0/1", |l| l.starts_with("iris") && l.contains("0/1"))
        .await;
    ds(&gw, &["deployment", "update", "iris", "--replicas", "3"])
        .await
        .ok();
    watching
        .line("with 0/3", |l| l.starts_with("iris") && l.contains("0/3"))
        .await;
    ds(&gw, &["deployment", "rm", "iris"]).await.ok();
    watching
        .line("saying Deleted", |l| {
            l.starts_with("iris") && l.contains("Deleted")
        })
        .await;
    // The header came once.
    assert_eq!(
        watching
            .seen
            .iter()
            .filter(|l| l.starts_with("NAME"))
            .count(),
        1
    );
}

#[tokio::test]
async fn ls_w_prints_new_changed_and_deleted_deployments() {
    let gw = TestGateway::start().await;
    deployer(&gw, "prod").await;
    deployment(&gw, "prod", "iris", &[]).await;
    let mut watching = Watching::spawn(&gw, &["deployment", "ls", "-w"]);
    watching.line("with iris", |l| l.starts_with("iris")).await;
    deployment(&gw, "prod", "mnist", &[]).await;
    watching
        .line("with mnist", |l| l.starts_with("mnist"))
        .await;
    ds(&gw, &["deployment", "update", "iris", "--replicas", "4"])
        .await
        .ok();
    watching
        .line("with iris at 0/4", |l| {
            l.starts_with("iris") && l.contains("0/4")
        })
        .await;
    ds(&gw, &["deployment", "rm", "mnist"]).await.ok();
    watching
        .line("with mnist Deleted", |l| {
            l.starts_with("mnist") && l.contains("Deleted")
        })
        .await;
}
