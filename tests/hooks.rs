//! Deployment hooks end to end: the `ds` CLI as a process against a real gateway (with a
//! temporary SQLite file and a real --hooks-dir of shell scripts), checking what a user
//! sees — a refused change, the stored deployments, and the runs `describe` shows.

use ds_gateway::{GatewayArgs, RunningGateway};
use ds_test_support::cli::{self, Run};
use ds_test_support::eventually;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;

/// Generous bound for a `ds` run on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

const IMAGE: &str = "tensorflow/serving:2.15.0";

struct TestGateway {
    gw: RunningGateway,
    dir: tempfile::TempDir,
}

impl TestGateway {
    /// A gateway with `hooks/` of its directory as --hooks-dir, after `change`.
    async fn start(change: impl FnOnce(&mut GatewayArgs)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        let mut args =
            GatewayArgs::insecure("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
        args.hooks_dir = Some(dir.path().join("hooks"));
        change(&mut args);
        let gw = RunningGateway::start(args).await.expect("gateway starts");
        Self { gw, dir }
    }

    fn hooks_dir(&self) -> PathBuf {
        self.dir.path().join("hooks")
    }

    /// An executable script `name` in the hooks directory.
    fn script(&self, name: &str, body: &str) {
        let path = self.hooks_dir().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    async fn run(&self, args: &[&str]) -> Run {
        let mut cmd: Command = cli::bare(
            &PathBuf::from(env!("CARGO_BIN_EXE_ds")),
            &self.dir.path().join("ds-config.yaml"),
            args,
        );
        cmd.env("DS_GATEWAY", self.gw.url())
            .env("DS_API_KEY", &self.gw.admin_key);
        cli::output(cmd, DEADLINE).await
    }

    /// `ds deployment create` of `model` on `deployer`, to run in the background.
    fn create_command(&self, deployer: &str, model: &str) -> Command {
        let mut cmd: Command = cli::bare(
            &PathBuf::from(env!("CARGO_BIN_EXE_ds")),
            &self.dir.path().join("ds-config.yaml"),
            &[
                "deployment",
                "create",
                "--model-name",
                model,
                "-d",
                deployer,
                "-i",
                IMAGE,
            ],
        );
        cmd.env("DS_GATEWAY", self.gw.url())
            .env("DS_API_KEY", &self.gw.admin_key);
        cmd
    }

    /// `ds_gateway_hooks_waiting` of the gateway's /metrics.
    async fn hooks_waiting(&self) -> Option<u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.gw.addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.lines()
            .find_map(|l| l.strip_prefix("ds_gateway_hooks_waiting "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `ds ARGS` with another API key.
    async fn run_as(&self, key: &str, args: &[&str]) -> Run {
        let mut cmd: Command = cli::bare(
            &PathBuf::from(env!("CARGO_BIN_EXE_ds")),
            &self.dir.path().join("ds-config.yaml"),
            args,
        );
        cmd.env("DS_GATEWAY", self.gw.url()).env("DS_API_KEY", key);
        cli::output(cmd, DEADLINE).await
    }

    /// Deployer "prod" with an agent on `sim`, running until dropped.
    async fn prod_with_agent(&self, sim: &ds_kube_sim::SimCluster) -> ds_agent::RunningAgent {
        let deployer = self
            .run(&["deployer", "create", "prod", "-o", "json"])
            .await
            .json();
        ds_test_support::start_agent(
            ds_test_support::agent_args(&self.gw.url(), deployer["token"].as_str().unwrap()),
            sim.client(),
        )
        .await
    }

    /// `ds hook add -d prod --phase PHASE --command NAME`.
    async fn add_hook(&self, phase: &str, command: &str) -> Run {
        self.run(&[
            "hook",
            "add",
            "-d",
            "prod",
            "--phase",
            phase,
            "--command",
            command,
        ])
        .await
    }

    async fn create(&self, deployer: &str, model: &str) -> Run {
        self.run(&[
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
        ])
        .await
    }

    async fn deployments(&self) -> Value {
        self.run(&["deployment", "ls", "-o", "json"]).await.json()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_hook_refuses_the_create_with_its_output_and_stores_nothing() {
    use ds_kube_sim::{SimCluster, SimConfig};
    let t = TestGateway::start(|_| {}).await;
    let sim = SimCluster::start(SimConfig::default())
        .await
        .expect("simulated cluster");
    t.script(
        "quota.sh",
        "echo 'checking quota'; echo 'team ml is over its GPU quota' >&2; exit 1",
    );
    let _agent = t.prod_with_agent(&sim).await;
    let hook = t
        .run(&[
            "hook",
            "add",
            "-d",
            "prod",
            "--phase",
            "pre",
            "--command",
            "quota.sh",
            "-o",
            "json",
        ])
        .await
        .json();
    let hook_id = hook["id"].to_string();

    let refused = t.create("prod", "iris").await;
    let message = refused.failed();
    assert!(
        message.contains("team ml is over its GPU quota"),
        "{message}"
    );
    assert!(message.contains("quota.sh"), "{message}");
    assert!(message.contains("exit 1"), "{message}");

    assert_eq!(
        t.deployments().await,
        serde_json::json!([]),
        "nothing stored"
    );
    t.run(&["deployment", "get", "iris"]).await.failed();

    // Without the hook, a create passes: it was the hook that refused. The agent applies
    // changes in order, so once the later one is in the cluster, the refused one would be
    // there too had the agent been sent it.
    t.run(&["hook", "rm", &hook_id]).await.ok();
    t.create("prod", "wine").await.ok();
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::all(sim.client());
    let names = eventually("the agent applies the later create", || async {
        let names: Vec<String> = deployments
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|d| d.metadata.name)
            .collect();
        names.iter().any(|n| n.contains("wine")).then_some(names)
    })
    .await;
    assert!(!names.iter().any(|n| n.contains("iris")), "{names:?}");
    let listed = t.deployments().await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_hook_whose_revision_gets_no_status_is_recorded_as_not_run() {
    let t = TestGateway::start(|a| a.hook_post_status_wait = Duration::from_secs(1)).await;
    let marker = t.dir.path().join("post-ran");
    t.script("notify.sh", &format!("touch {}", marker.display()));
    t.run(&["deployer", "create", "prod"]).await.ok();
    t.add_hook("post", "notify.sh").await.ok();
    // No agent: nothing ever reports the revision Available or Failed.
    t.create("prod", "iris").await.ok();

    let run = eventually("the post-hook's run is shown by describe", || async {
        let described = t
            .run(&["deployment", "describe", "iris", "-o", "json"])
            .await
            .json();
        described["hook_runs"]
            .as_array()
            .and_then(|runs| runs.first().cloned())
    })
    .await;
    assert_eq!(run["phase"], "post", "{run}");
    assert_eq!(run["outcome"], "failed", "{run}");
    assert_eq!(run["revision"], 1, "{run}");
    let tail = run["output_tail"].as_str().unwrap();
    assert!(
        tail.contains("no Available or Failed status for revision 1 within 1s"),
        "{tail}"
    );
    assert!(tail.contains("--hook-post-status-wait"), "{tail}");
    assert!(!marker.exists(), "the hook did not run");

    let audit = t.run(&["audit", "ls", "-o", "json"]).await.json();
    let row = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "hook.run")
        .cloned()
        .expect("the run is in the audit log");
    assert_eq!(row["actor"], "gateway", "{row}");
    assert_eq!(row["after"]["outcome"], "failed", "{row}");
    assert_eq!(row["after"]["phase"], "post", "{row}");
    assert_eq!(row["after"]["deployment"], "default/iris", "{row}");
}

/// `ds hook add -d prod --phase pre --command NAME`: what it printed.
async fn add_command(t: &TestGateway, name: &str) -> Run {
    t.add_hook("pre", name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_add_refuses_what_is_not_an_executable_of_the_hooks_dir_and_says_why() {
    let t = TestGateway::start(|_| {}).await;
    t.run(&["deployer", "create", "prod"]).await.ok();
    let outside = t.dir.path().join("outside.sh");
    std::fs::write(&outside, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&outside, t.hooks_dir().join("link.sh")).unwrap();
    t.script(".hidden.sh", "exit 0");
    t.script("plain.sh", "exit 0");
    std::fs::set_permissions(
        t.hooks_dir().join("plain.sh"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    for (name, rule) in [
        ("../outside.sh", "without '/'"),
        ("sub/x.sh", "without '/'"),
        ("..", "must not contain '..'"),
        (".hidden.sh", "must not be a hidden file"),
        (
            "link.sh",
            "a symlink to a file outside the gateway's hooks directory",
        ),
        ("plain.sh", "is not executable"),
        (
            "missing.sh",
            "no such file in the gateway's hooks directory",
        ),
    ] {
        let refused = add_command(&t, name).await;
        let message = refused.failed();
        assert!(message.contains("--command"), "{name}: {message}");
        assert!(message.contains(rule), "{name}: {message}");
    }
    let listed = t
        .run(&["hook", "ls", "-d", "prod", "-o", "json"])
        .await
        .json();
    assert_eq!(listed, serde_json::json!([]), "none added");

    // A user with Deploy on the deployer may deploy, not change its hooks.
    t.script("ok.sh", "exit 0");
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
    let denied = t
        .run_as(
            ci_key,
            &[
                "hook",
                "add",
                "-d",
                "prod",
                "--phase",
                "pre",
                "--command",
                "ok.sh",
            ],
        )
        .await;
    let message = denied.failed();
    assert!(message.to_lowercase().contains("permission"), "{message}");
    assert!(!message.contains(ci_key), "no secret in the message");
    // The same request as the admin passes: it was the role that was refused.
    add_command(&t, "ok.sh").await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_add_of_a_command_is_refused_on_a_gateway_without_hooks_dir() {
    let t = TestGateway::start(|a| a.hooks_dir = None).await;
    t.run(&["deployer", "create", "prod"]).await.ok();
    let refused = add_command(&t, "ok.sh").await;
    let message = refused.failed();
    assert!(message.contains("--hooks-dir"), "{message}");
    assert!(message.contains("command hooks are off"), "{message}");
}

/// What a URL hook's server received: (content type, JSON body) of each request.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver on a loopback port answering `answer`'s status code.
async fn receiver(answer: Arc<AtomicU16>) -> (String, Received) {
    let received: Received = Arc::default();
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                let answer = answer.clone();
                async move {
                    let content_type = headers
                        .get(axum::http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    seen.lock().unwrap().push((content_type, json));
                    axum::http::StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_hook_receives_the_documented_json_and_a_non_2xx_answer_refuses() {
    let t = TestGateway::start(|_| {}).await;
    let answer = Arc::new(AtomicU16::new(200));
    let (url, received) = receiver(answer.clone()).await;
    let deployer = t
        .run(&["deployer", "create", "prod", "-o", "json"])
        .await
        .json();
    t.run(&["hook", "add", "-d", "prod", "--phase", "pre", "--url", &url])
        .await
        .ok();

    t.create("prod", "iris").await.ok();
    let (content_type, body) = received
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("a request");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(body["phase"], "pre", "{body}");
    assert_eq!(body["deployer"]["id"], deployer["id"], "{body}");
    assert_eq!(body["deployer"]["name"], "prod", "{body}");
    // A create: nothing is stored before the pre-hooks pass, so no ID yet.
    assert_eq!(body["deployment"]["id"], "", "{body}");
    assert_eq!(body["deployment"]["name"], "iris", "{body}");
    assert_eq!(body["deployment"]["namespace"], "default", "{body}");
    assert_eq!(body["revision"], 1, "{body}");
    assert!(
        body["actor"].as_str().is_some_and(|a| !a.is_empty()),
        "{body}"
    );
    assert_eq!(body["spec"]["model_name"], "iris", "{body}");
    assert_eq!(body["spec"]["image"], IMAGE, "{body}");
    assert!(
        body.get("status").is_none(),
        "a pre-hook has no status: {body}"
    );

    answer.store(503, Ordering::SeqCst);
    let refused = t.create("prod", "wine").await;
    let message = refused.failed();
    assert!(message.contains("503"), "{message}");
    assert_eq!(received.lock().unwrap().len(), 2);
    let names: Vec<Value> = t
        .deployments()
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, [Value::from("iris")], "wine not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_hook_slots_hooks_run_at_once_and_a_change_without_a_slot_is_refused() {
    let t = TestGateway::start(|a| {
        a.hook_slots = 3;
        // Long enough that the waiting change surely gets the slot released for it (the
        // release takes a poll of the hook's loop), short enough to wait out once.
        a.hook_pre_wait = Duration::from_secs(6);
    })
    .await;
    let files = t.dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let f = files.display();
    // Runs until the test releases its deployment.
    t.script(
        "hold.sh",
        &format!(
            "touch {f}/running-$DS_HOOK_DEPLOYMENT\n\
             while [ ! -e {f}/release-$DS_HOOK_DEPLOYMENT ]; do sleep 0.1; done"
        ),
    );
    t.run(&["deployer", "create", "prod"]).await.ok();
    t.run(&[
        "hook",
        "add",
        "-d",
        "prod",
        "--phase",
        "pre",
        "--command",
        "hold.sh",
        "--timeout",
        "5m",
    ])
    .await
    .ok();
    let running = || {
        let mut names: Vec<String> = std::fs::read_dir(&files)
            .unwrap()
            .filter_map(|e| {
                e.unwrap()
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("running-"))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    };
    let release = |name: &str| std::fs::write(files.join(format!("release-{name}")), "").unwrap();
    let start = |name: &str| tokio::spawn(cli::output(t.create_command("prod", name), DEADLINE));

    let held: Vec<_> = ["a", "b", "c"].into_iter().map(|n| (n, start(n))).collect();
    eventually("three hooks run", || async {
        (running().len() == 3).then_some(())
    })
    .await;

    // A fourth change finds every slot taken: it waits for its --hook-pre-wait, then the
    // change is refused, its hook never started.
    let e = start("e").await.unwrap();
    let message = e.failed();
    assert!(message.contains("no free hook slot within 6s"), "{message}");
    assert!(message.contains("--hook-slots 3"), "{message}");
    assert_eq!(running(), ["a", "b", "c"]);

    // Another one waits — and runs once a slot comes free.
    let d = start("d");
    eventually("the fourth change waits for a slot", || async {
        (t.hooks_waiting().await == Some(1)).then_some(())
    })
    .await;
    assert_eq!(running(), ["a", "b", "c"], "still three at once");
    release("a");
    eventually("the waiting hook runs", || async {
        running().contains(&"d".to_string()).then_some(())
    })
    .await;
    for name in ["b", "c", "d"] {
        release(name);
    }
    d.await.unwrap().ok();
    for (name, handle) in held {
        let run = handle.await.unwrap();
        assert_eq!(run.code, Some(0), "{name}: {}", run.stderr);
    }
    let mut stored: Vec<String> = t
        .deployments()
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    stored.sort();
    assert_eq!(stored, ["a", "b", "c", "d"], "e was refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_hook_runs_after_the_agent_reports_available_on_a_simulated_cluster() {
    use ds_kube_sim::{SimCluster, SimConfig};
    let t = TestGateway::start(|_| {}).await;
    let sim = SimCluster::start(SimConfig {
        rollout_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("simulated cluster");
    let out = t.dir.path().join("post");
    std::fs::create_dir(&out).unwrap();
    let o = out.display();
    // Writes what it received; the last file written tells the test it is done.
    t.script(
        "notify.sh",
        &format!("cat > {o}/stdin.json\nenv > {o}/env.txt\necho notified\ntouch {o}/done"),
    );
    let _agent = t.prod_with_agent(&sim).await;
    t.add_hook("post", "notify.sh").await.ok();
    let created = t.create("prod", "iris").await.json();

    eventually("the post-hook ran", || async {
        out.join("done").exists().then_some(())
    })
    .await;
    let body: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stdin.json")).unwrap()).unwrap();
    assert_eq!(body["phase"], "post", "{body}");
    assert_eq!(body["status"], "available", "{body}");
    assert_eq!(body["deployment"]["id"], created["id"], "{body}");
    assert_eq!(body["revision"], 1, "{body}");
    let env = std::fs::read_to_string(out.join("env.txt")).unwrap();
    assert!(
        env.lines().any(|l| l == "DS_HOOK_STATUS=available"),
        "{env}"
    );
    assert!(env.lines().any(|l| l == "DS_HOOK_PHASE=post"), "{env}");
    let status = t
        .run(&["deployment", "get", "iris", "-o", "json"])
        .await
        .json();
    assert!(
        status.to_string().to_lowercase().contains("available"),
        "{status}"
    );

    let run = eventually("describe shows the run", || async {
        let described = t
            .run(&["deployment", "describe", "iris", "-o", "json"])
            .await
            .json();
        described["hook_runs"]
            .as_array()
            .and_then(|runs| runs.iter().find(|r| r["phase"] == "post").cloned())
    })
    .await;
    assert_eq!(run["outcome"], "ok", "{run}");
    assert_eq!(run["exit_code"], 0, "{run}");
    assert!(
        run["output_tail"].as_str().unwrap().contains("notified"),
        "{run}"
    );
    let text = t.run(&["deployment", "describe", "iris"]).await;
    assert!(text.ok().contains("notify.sh"), "{}", text.stdout);

    let audit = t.run(&["audit", "ls", "-o", "json"]).await.json();
    let row = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "hook.run")
        .cloned()
        .expect("the run is in the audit log");
    assert_eq!(row["after"]["outcome"], "ok", "{row}");
    assert_eq!(row["after"]["phase"], "post", "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_hook_gets_failed_when_the_rollout_fails() {
    use ds_kube_sim::{SimCluster, SimConfig};
    let t = TestGateway::start(|_| {}).await;
    let sim = SimCluster::start(SimConfig {
        rollout_delay: Duration::from_millis(200),
        failing_image: Some("^tensorflow/".into()),
        ..Default::default()
    })
    .await
    .expect("simulated cluster");
    let out = t.dir.path().join("status");
    t.script(
        "notify.sh",
        &format!(
            "echo $DS_HOOK_STATUS > {}.tmp; mv {0}.tmp {0}",
            out.display()
        ),
    );
    let _agent = t.prod_with_agent(&sim).await;
    t.add_hook("post", "notify.sh").await.ok();
    t.create("prod", "iris").await.ok();
    let status = eventually("the post-hook ran", || async {
        std::fs::read_to_string(&out).ok()
    })
    .await;
    assert_eq!(status.trim(), "failed");
}

/// The image of the cluster's Deployment whose name contains `model`, with its uid, once
/// the agent has applied a spec whose env has `MARK=mark`.
async fn applied_with_mark(
    sim: &ds_kube_sim::SimCluster,
    model: &str,
    mark: &str,
) -> (String, String) {
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::all(sim.client());
    eventually("the agent applies the marked revision", || async {
        let list = deployments.list(&Default::default()).await.ok()?;
        let d = list.items.into_iter().find(|d| {
            d.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains(model))
        })?;
        let container = d.spec?.template.spec?.containers.into_iter().next()?;
        let marked = container
            .env
            .unwrap_or_default()
            .iter()
            .any(|e| e.name == "MARK" && e.value.as_deref() == Some(mark));
        marked.then(|| (container.image.unwrap_or_default(), d.metadata.uid.unwrap()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_hooks_gate_updates_and_rollbacks_and_a_refused_one_never_reaches_the_cluster() {
    use ds_kube_sim::{SimCluster, SimConfig};
    let t = TestGateway::start(|_| {}).await;
    let sim = SimCluster::start(SimConfig::default())
        .await
        .expect("simulated cluster");
    let seen = t.dir.path().join("seen");
    std::fs::create_dir(&seen).unwrap();
    let s = seen.display();
    // A change freeze (the file `freeze`) and an unapproved image refuse; every change the
    // hook is asked about is kept as `<revision>.json`.
    t.script(
        "gate.sh",
        &format!(
            "body=$(cat)\n\
             rev=$(printf '%s' \"$DS_HOOK_REVISION\")\n\
             printf '%s' \"$body\" > {s}/$rev.json\n\
             if [ -e {s}/freeze ]; then echo 'change freeze until Monday' >&2; exit 1; fi\n\
             case \"$body\" in *serving:2.16.0*) echo 'image 2.16.0 is not approved' >&2; exit 1;; esac"
        ),
    );
    let _agent = t.prod_with_agent(&sim).await;
    t.run(&[
        "deployment",
        "create",
        "--model-name",
        "iris",
        "-d",
        "prod",
        "-i",
        IMAGE,
        "-e",
        "MARK=r1",
    ])
    .await
    .ok();
    let (image, uid) = applied_with_mark(&sim, "iris", "r1").await;
    assert_eq!(image, IMAGE);
    t.add_hook("pre", "gate.sh").await.ok();
    let hook_input = |revision: u32| -> Value {
        let path = seen.join(format!("{revision}.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("the pre-hook was not asked about revision {revision}: {e}")
        }))
        .unwrap()
    };

    // An approved update passes the hook, which sees the new spec as revision 2.
    let new = "tensorflow/serving:2.17.0";
    t.run(&["deployment", "update", "iris", "-i", new, "-e", "MARK=r2"])
        .await
        .ok();
    let body = hook_input(2);
    assert_eq!(body["phase"], "pre", "{body}");
    assert_eq!(body["revision"], 2, "{body}");
    assert!(body.to_string().contains(new), "{body}");
    assert_eq!(
        applied_with_mark(&sim, "iris", "r2").await,
        (new.into(), uid.clone())
    );

    // An unapproved image is refused with the hook's words, and makes no revision.
    let refused = t
        .run(&[
            "deployment",
            "update",
            "iris",
            "-i",
            "tensorflow/serving:2.16.0",
            "-e",
            "MARK=bad",
        ])
        .await;
    let message = refused.failed();
    assert!(
        message.contains("image 2.16.0 is not approved"),
        "{message}"
    );
    assert!(message.contains("gate.sh"), "{message}");
    let history = t
        .run(&["deployment", "history", "iris", "-o", "json"])
        .await
        .json();
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");

    // A rollback is a change like any other: the hook sees revision 1's spec as revision 3.
    t.run(&["deployment", "rollback", "iris", "--to", "1"])
        .await
        .ok();
    let body = hook_input(3);
    assert!(body.to_string().contains(IMAGE), "{body}");
    assert!(!body.to_string().contains("MARK=bad") && !body.to_string().contains("2.16.0"));
    assert_eq!(
        applied_with_mark(&sim, "iris", "r1").await,
        (IMAGE.into(), uid.clone())
    );

    // Under a freeze the hook refuses a rollback too, and the deployment keeps revision 3.
    std::fs::write(seen.join("freeze"), "").unwrap();
    let refused = t
        .run(&["deployment", "rollback", "iris", "--to", "2"])
        .await;
    assert!(refused.failed().contains("change freeze until Monday"));
    std::fs::remove_file(seen.join("freeze")).unwrap();

    // The agent applies revisions in order: once a later one is in the cluster, neither
    // refused change (2.16.0, or revision 2's 2.17.0) was ever sent.
    t.run(&["deployment", "update", "iris", "-e", "MARK=r4"])
        .await
        .ok();
    assert_eq!(
        applied_with_mark(&sim, "iris", "r4").await,
        (IMAGE.into(), uid)
    );
    let history = t
        .run(&["deployment", "history", "iris", "-o", "json"])
        .await
        .json();
    assert_eq!(history.as_array().map(Vec::len), Some(4), "{history}");
    let runs = t
        .run(&["deployment", "describe", "iris", "-o", "json"])
        .await
        .json();
    let refusals = runs["hook_runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["phase"] == "pre" && r["outcome"] != "ok")
        .count();
    assert_eq!(refusals, 2, "{runs}");
}
