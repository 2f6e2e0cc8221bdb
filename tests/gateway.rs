//! Integration tests of `ds gateway`: a real gateway on 127.0.0.1:0 with a temporary
//! SQLite file, driven by tonic clients acting as agents and as the CLI.

use ds_core::DeploymentSpec;
use ds_core::proto::agent_service_client::AgentServiceClient;
use ds_core::proto::control_service_client::ControlServiceClient;
use ds_core::proto::{self, WatchEvent, watch_event};
use ds_gateway::{GatewayArgs, RunningGateway};
use ds_test_support::pages::list_snapshot;
use ds_test_support::{AgentService as Agent, Bearer, Control, eventually};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

// === helpers ===

struct TestGateway {
    gw: RunningGateway,
    dir: tempfile::TempDir,
}

fn args(dir: &std::path::Path) -> GatewayArgs {
    let mut args = GatewayArgs::insecure("127.0.0.1:0".parse().unwrap(), dir);
    args.heartbeat_interval = Duration::from_millis(300);
    args
}

async fn start() -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = RunningGateway::start(args(dir.path()))
        .await
        .expect("gateway starts");
    TestGateway { gw, dir }
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

impl TestGateway {
    async fn control(&self) -> Control {
        ControlServiceClient::with_interceptor(
            channel(&self.gw.url()).await,
            Bearer::from_plain(&self.gw.admin_key),
        )
    }

    async fn agent(&self, token: &str) -> Agent {
        AgentServiceClient::with_interceptor(
            channel(&self.gw.url()).await,
            Bearer::from_plain(token),
        )
    }
}

/// Creates a deployer; returns `(id, token)`.
async fn create_deployer(control: &mut Control, name: &str) -> (String, String) {
    let resp = control
        .create_deployer(proto::CreateDeployerRequest {
            name: name.to_string(),
            ..Default::default()
        })
        .await
        .expect("create deployer")
        .into_inner();
    (resp.deployer.expect("deployer").id, resp.token)
}

async fn create_deployment(
    control: &mut Control,
    deployer: &str,
    name: &str,
) -> Result<proto::DeploymentView, tonic::Status> {
    create_deployment_in(control, deployer, name, "models").await
}

async fn create_deployment_in(
    control: &mut Control,
    deployer: &str,
    name: &str,
    namespace: &str,
) -> Result<proto::DeploymentView, tonic::Status> {
    control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: deployer.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            spec: Some(DeploymentSpec::test(name).into()),
        })
        .await
        .map(|r| r.into_inner())
}

fn select(deployment: &str) -> proto::GetDeploymentRequest {
    proto::GetDeploymentRequest {
        deployment: deployment.to_string(),
        ..Default::default()
    }
}

/// The next event that is not a heartbeat.
async fn next_change(stream: &mut tonic::Streaming<WatchEvent>) -> watch_event::Event {
    loop {
        let ev = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("event within the deadline")
            .expect("stream healthy")
            .expect("stream open")
            .event
            .expect("event set");
        if !matches!(ev, watch_event::Event::Heartbeat(_)) {
            return ev;
        }
    }
}

async fn open_watch(agent: &mut Agent) -> (proto::Snapshot, tonic::Streaming<WatchEvent>) {
    let mut stream = agent
        .watch(proto::WatchRequest {
            agent: Some(proto::AgentInfo {
                version: "1.2.3".into(),
                cluster: "test-cluster".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("first message in time")
        .expect("ok")
        .expect("some")
        .event
        .expect("event");
    match first {
        watch_event::Event::Snapshot(s) => (s, stream),
        other => panic!("first message must be a snapshot, got {other:?}"),
    }
}

// === snapshot and ordering ===

#[tokio::test]
async fn watch_starts_with_a_complete_snapshot() {
    let t = start().await;
    let mut control = t.control().await;
    let (id, token) = create_deployer(&mut control, "alpha").await;
    let made = create_deployment(&mut control, "alpha", "iris")
        .await
        .expect("create");
    let mut agent = t.agent(&token).await;
    let (snap, _stream) = open_watch(&mut agent).await;
    assert!(snap.complete, "the gateway always sends complete snapshots");
    assert_eq!(snap.deployer_id, id);
    assert_eq!(snap.revision, 1);
    assert_eq!(snap.deployments.len(), 1);
    let d = &snap.deployments[0];
    assert_eq!(d.id, made.deployment.unwrap().id);
    assert_eq!((d.name.as_str(), d.namespace.as_str()), ("iris", "models"));
    assert_eq!(d.revision_of_last_change, 1);
    assert_eq!(d.spec.as_ref().unwrap().image, "tensorflow/serving:2.15.0");

    // An empty deployer still gets a complete (empty) snapshot.
    let (_, token_b) = create_deployer(&mut control, "beta").await;
    let (snap_b, _s) = open_watch(&mut t.agent(&token_b).await).await;
    assert!(snap_b.complete);
    assert!(snap_b.deployments.is_empty());
    assert_eq!(snap_b.revision, 0);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn creates_updates_and_deletes_arrive_in_revision_order() {
    let t = start().await;
    let mut control = t.control().await;
    let (_, token) = create_deployer(&mut control, "alpha").await;
    let mut agent = t.agent(&token).await;
    let (snap, mut stream) = open_watch(&mut agent).await;
    assert_eq!(snap.revision, 0);

    let a = create_deployment(&mut control, "alpha", "a").await.unwrap();
    let b = create_deployment(&mut control, "alpha", "b").await.unwrap();
    let a_id = a.deployment.unwrap().id;
    let b_id = b.deployment.unwrap().id;
    let updated = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&a_id)),
            image: Some("tensorflow/serving:2.16.0".into()),
            replicas: Some(3),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(
        updated.deployment.as_ref().unwrap().revision_of_last_change,
        3
    );
    let deleted = control
        .delete_deployment(proto::DeleteDeploymentRequest {
            selector: Some(select(&b_id)),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.revision, 4);

    let mut last = snap.revision;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (rev, what) = match next_change(&mut stream).await {
            watch_event::Event::Upsert(u) => {
                let d = u.deployment.unwrap();
                assert_eq!(d.revision_of_last_change, u.revision);
                (
                    u.revision,
                    format!("upsert {} {}", d.name, d.spec.unwrap().replicas),
                )
            }
            watch_event::Event::Removal(r) => {
                assert_eq!(r.deployment_id, b_id);
                assert_eq!((r.namespace.as_str(), r.name.as_str()), ("models", "b"));
                (r.revision, "removal b".to_string())
            }
            other => panic!("unexpected {other:?}"),
        };
        assert!(rev > last, "revision {rev} after {last}");
        last = rev;
        seen.push(what);
    }
    assert_eq!(
        seen,
        ["upsert a 1", "upsert b 1", "upsert a 3", "removal b"],
        "events in commit order"
    );
    assert_eq!(last, 4);
    t.gw.shutdown().await;
}

// Concurrent creates are committed in groups: each one still gets its own revision, a
// taken name is refused without failing its neighbours, and the stream sees every
// created deployment once, in revision order.
#[tokio::test]
async fn concurrent_creates_get_distinct_revisions_in_order() {
    let t = start().await;
    let mut control = t.control().await;
    let (_, token) = create_deployer(&mut control, "alpha").await;
    let (_, other_token) = create_deployer(&mut control, "beta").await;
    let mut agent = t.agent(&token).await;
    let (snapshot, mut stream) = open_watch(&mut agent).await;
    let (_, mut other_stream) = open_watch(&mut t.agent(&other_token).await).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let mut control = control.clone();
        // 30 creates of 20 names on alpha (the second of a pair is refused), 10 on beta.
        let (deployer, name) = match i % 4 {
            3 => ("beta", format!("b{}", i / 4)),
            _ => ("alpha", format!("m{}", i / 2)),
        };
        tasks.spawn(async move {
            let created = create_deployment(&mut control, deployer, &name).await;
            (deployer, name, created)
        });
    }
    let mut alpha: Vec<(String, u64)> = Vec::new();
    let mut beta = 0;
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            ("alpha", name, Ok(view)) => alpha.push((
                name,
                view.deployment.expect("deployment").revision_of_last_change,
            )),
            (_, _, Ok(_)) => beta += 1,
            (_, _, Err(status)) => assert_eq!(status.code(), Code::AlreadyExists, "{status}"),
        }
    }
    assert_eq!(beta, 10);
    let mut names: Vec<&str> = alpha.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), alpha.len(), "a name was created twice");
    assert_eq!(names.len(), 20, "each distinct alpha name is created once");
    let mut revisions: Vec<u64> = alpha.iter().map(|(_, r)| *r).collect();
    revisions.sort_unstable();
    let expected: Vec<u64> = (snapshot.revision + 1..=snapshot.revision + 20).collect();
    assert_eq!(
        revisions, expected,
        "one revision per created deployment, no gaps"
    );

    let mut seen = Vec::new();
    while seen.len() < alpha.len() {
        match next_change(&mut stream).await {
            watch_event::Event::Upsert(u) => seen.push(u.revision),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, expected, "published in revision order");
    let mut other_seen = 0;
    while other_seen < 10 {
        if let watch_event::Event::Upsert(u) = next_change(&mut other_stream).await {
            assert!(u.deployment.is_some_and(|d| d.name.starts_with('b')));
            other_seen += 1;
        }
    }
    t.gw.shutdown().await;
}

#[tokio::test]
async fn idle_streams_get_heartbeats_with_the_latest_revision() {
    let t = start().await;
    let mut control = t.control().await;
    let (_, token) = create_deployer(&mut control, "alpha").await;
    create_deployment(&mut control, "alpha", "a").await.unwrap();
    let (snap, mut stream) = open_watch(&mut t.agent(&token).await).await;
    let ev = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("heartbeat in time")
        .unwrap()
        .unwrap()
        .event
        .unwrap();
    match ev {
        watch_event::Event::Heartbeat(h) => assert_eq!(h.revision, snap.revision),
        other => panic!("expected a heartbeat on an idle stream, got {other:?}"),
    }
    t.gw.shutdown().await;
}

#[tokio::test]
async fn reconnect_gets_a_fresh_snapshot_and_list_matches() {
    let t = start().await;
    let mut control = t.control().await;
    let (_, token) = create_deployer(&mut control, "alpha").await;
    let mut agent = t.agent(&token).await;
    let (_, stream) = open_watch(&mut agent).await;
    create_deployment(&mut control, "alpha", "a").await.unwrap();
    drop(stream);
    create_deployment(&mut control, "alpha", "b").await.unwrap();

    let (snap, _stream) = open_watch(&mut agent).await;
    assert_eq!(snap.revision, 2);
    let names: Vec<_> = snap.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);

    let listed = list_snapshot(&mut agent).await.unwrap().snapshot;
    assert!(listed.complete);
    assert_eq!(listed.revision, snap.revision);
    assert_eq!(listed.deployments, snap.deployments);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn restart_on_the_same_database_keeps_state_and_revisions_grow() {
    let t = start().await;
    let mut control = t.control().await;
    let (id, token) = create_deployer(&mut control, "alpha").await;
    create_deployment(&mut control, "alpha", "a").await.unwrap();
    create_deployment(&mut control, "alpha", "b").await.unwrap();
    let admin_key = t.gw.admin_key.clone();
    let TestGateway { gw, dir } = t;
    gw.shutdown().await;

    let gw = RunningGateway::start(args(dir.path()))
        .await
        .expect("restart");
    assert_eq!(
        gw.admin_key, admin_key,
        "admin key read back from admin.key"
    );
    let t = TestGateway { gw, dir };
    let mut control = t.control().await;
    let deployers = control
        .list_deployers(proto::ListDeployersRequest {})
        .await
        .unwrap()
        .into_inner()
        .deployers;
    assert_eq!(deployers.len(), 1);
    assert_eq!(deployers[0].id, id);
    assert_eq!(deployers[0].deployments, 2);
    assert_eq!(deployers[0].revision, 2);

    // The same token still works and sees the same state.
    let mut agent = t.agent(&token).await;
    let (snap, mut stream) = open_watch(&mut agent).await;
    assert_eq!(snap.revision, 2);
    assert_eq!(snap.deployments.len(), 2);
    create_deployment(&mut control, "alpha", "c").await.unwrap();
    match next_change(&mut stream).await {
        watch_event::Event::Upsert(u) => assert_eq!(u.revision, 3),
        other => panic!("unexpected {other:?}"),
    }
    t.gw.shutdown().await;
}

// === credentials ===

#[tokio::test]
async fn wrong_missing_and_revoked_tokens_are_unauthenticated() {
    let t = start().await;
    let mut control = t.control().await;
    let (_, token) = create_deployer(&mut control, "alpha").await;

    // Well-formed but unknown, garbage, and a token with its secret part changed.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [
        "dst_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "garbage",
        forged.as_str(),
    ] {
        let err = t
            .agent(bad)
            .await
            .list(proto::ListRequest {})
            .await
            .expect_err("bad token refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{bad}");
        assert!(!err.message().contains(bad));
    }
    let mut no_auth = AgentServiceClient::new(channel(&t.gw.url()).await);
    let err = no_auth.list(proto::ListRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The admin API key is not a deployer token and vice versa.
    let err = t
        .agent(&t.gw.admin_key)
        .await
        .list(proto::ListRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut as_admin = ControlServiceClient::with_interceptor(
        channel(&t.gw.url()).await,
        Bearer::from_plain(&token),
    );
    let err = as_admin
        .list_deployers(proto::ListDeployersRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Deleting the deployer revokes its token and ends its open streams.
    let mut agent = t.agent(&token).await;
    let (_, mut stream) = open_watch(&mut agent).await;
    control
        .delete_deployer(proto::DeleteDeployerRequest {
            deployer: "alpha".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = agent.list(proto::ListRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let end = loop {
        match tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("stream ends")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn rotated_token_works_during_the_overlap_and_not_after() {
    let t = start().await;
    let mut control = t.control().await;
    let (_, old) = create_deployer(&mut control, "alpha").await;
    let rotated = control
        .rotate_deployer_token(proto::RotateDeployerTokenRequest {
            deployer: "alpha".into(),
            overlap_seconds: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.token, old);
    assert!(!rotated.previous_expires_at.is_empty());
    let mut old_agent = t.agent(&old).await;
    let mut new_agent = t.agent(&rotated.token).await;
    // Within the overlap both work (the window is 2 s; the first call is immediate).
    old_agent
        .list(proto::ListRequest {})
        .await
        .expect("old token valid during the overlap");
    new_agent
        .list(proto::ListRequest {})
        .await
        .expect("new token");

    eventually("the old token expires", || {
        let mut a = old_agent.clone();
        async move {
            matches!(a.list(proto::ListRequest {}).await, Err(e) if e.code() == Code::Unauthenticated)
                .then_some(())
        }
    })
    .await;
    new_agent
        .list(proto::ListRequest {})
        .await
        .expect("new token still valid");
    t.gw.shutdown().await;
}

#[tokio::test]
async fn a_stream_on_a_rotated_out_token_ends_after_the_overlap() {
    let t = start().await;
    let mut control = t.control().await;
    let (_, old) = create_deployer(&mut control, "alpha").await;
    let (_, mut stream) = open_watch(&mut t.agent(&old).await).await;
    control
        .rotate_deployer_token(proto::RotateDeployerTokenRequest {
            deployer: "alpha".into(),
            overlap_seconds: 1,
        })
        .await
        .unwrap();
    let end = loop {
        match tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("stream ends")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    t.gw.shutdown().await;
}

/// Updates deployment `id` every 300 ms until dropped (errors ignored: the deployer may
/// be gone), so that a Watch stream is never idle.
fn keep_updating(mut control: Control, id: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for replicas in (1..).map(|i| i % 5 + 1) {
            let _ = control
                .update_deployment(proto::UpdateDeploymentRequest {
                    selector: Some(select(&id)),
                    replicas: Some(replicas),
                    ..Default::default()
                })
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Reads `stream` until it ends, for at most [`DEADLINE`] in all; returns how it ended,
/// how many changes came first, and when.
async fn until_the_end(
    stream: &mut tonic::Streaming<WatchEvent>,
) -> (Result<(), tonic::Status>, usize, std::time::Instant) {
    let mut changes = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!("the stream did not end within {DEADLINE:?} ({changes} changes)")
            }) {
            Ok(Some(ev)) => {
                if !matches!(ev.event, Some(watch_event::Event::Heartbeat(_))) {
                    changes += 1;
                }
            }
            Ok(None) => return (Ok(()), changes, std::time::Instant::now()),
            Err(status) => return (Err(status), changes, std::time::Instant::now()),
        }
    }
}

#[tokio::test]
async fn a_busy_stream_ends_within_seconds_of_its_token_becoming_invalid() {
    // A heartbeat far longer than the updates' period: the stream is never idle.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = args(dir.path());
    a.heartbeat_interval = Duration::from_secs(30);
    let gw = RunningGateway::start(a).await.expect("gateway starts");
    let t = TestGateway { gw, dir };
    let mut control = t.control().await;

    // Rotated out: the old token's stream ends soon after the overlap, busy or not.
    let (_, old) = create_deployer(&mut control, "alpha").await;
    let id = create_deployment(&mut control, "alpha", "iris")
        .await
        .unwrap()
        .deployment
        .unwrap()
        .id;
    let (_, mut stream) = open_watch(&mut t.agent(&old).await).await;
    let updater = keep_updating(t.control().await, id);
    let rotated = control
        .rotate_deployer_token(proto::RotateDeployerTokenRequest {
            deployer: "alpha".into(),
            overlap_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let expired_at = std::time::Instant::now() + Duration::from_secs(1);
    let (end, changes, ended) = until_the_end(&mut stream).await;
    updater.abort();
    let err = end.expect_err("the stream ends with an error");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(changes >= 3, "the stream was busy: {changes} changes");
    let late = ended.saturating_duration_since(expired_at);
    assert!(
        late < Duration::from_secs(5),
        "ended {late:?} after the overlap"
    );

    // The new token's stream is unaffected by the same traffic.
    let (_, mut fresh) = open_watch(&mut t.agent(&rotated.token).await).await;
    let id = create_deployment(&mut control, "alpha", "iris-2")
        .await
        .unwrap()
        .deployment
        .unwrap()
        .id;
    let updater = keep_updating(t.control().await, id.clone());
    let busy_for = tokio::time::timeout(Duration::from_secs(4), until_the_end(&mut fresh)).await;
    assert!(
        busy_for.is_err(),
        "a valid token's stream stays open: {busy_for:?}"
    );

    // Revoked (the deployer deleted) while changes flow: it ends too.
    control
        .delete_deployer(proto::DeleteDeployerRequest {
            deployer: "alpha".into(),
            mode: proto::DeleteMode::Orphan as i32,
        })
        .await
        .unwrap();
    let deleted_at = std::time::Instant::now();
    let (end, _, ended) = until_the_end(&mut fresh).await;
    updater.abort();
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    assert!(ended - deleted_at < Duration::from_secs(5));
    t.gw.shutdown().await;
}

/// DeleteDeployer with `mode`.
async fn delete_deployer(
    control: &mut Control,
    deployer: &str,
    mode: proto::DeleteMode,
) -> Result<proto::DeleteDeployerResponse, tonic::Status> {
    control
        .delete_deployer(proto::DeleteDeployerRequest {
            deployer: deployer.into(),
            mode: mode as i32,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Reports, as the deployer's agent, `owned` objects left at `revision`.
async fn report_objects(agent: &mut Agent, revision: u64, owned: u32) {
    agent
        .report_status(proto::StatusReport {
            agent: None,
            statuses: vec![],
            objects: Some(proto::ClusterObjects { revision, owned }),
        })
        .await
        .expect("report accepted");
}

#[tokio::test]
async fn delete_deployer_refuses_while_it_has_deployments_unless_cascade_or_orphan() {
    use proto::DeleteMode;
    let t = start().await;
    let mut control = t.control().await;
    let (id, token) = create_deployer(&mut control, "alpha").await;
    create_deployment(&mut control, "alpha", "iris")
        .await
        .unwrap();
    create_deployment(&mut control, "alpha", "wine")
        .await
        .unwrap();
    let mut agent = t.agent(&token).await;

    // What an old client sends (no mode): refused, and nothing changes.
    let err = delete_deployer(&mut control, "alpha", DeleteMode::Unspecified)
        .await
        .expect_err("refused while it has deployments");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("2 deployments"), "{}", err.message());
    let snap = list_snapshot(&mut agent).await.unwrap().snapshot;
    assert_eq!(snap.deployments.len(), 2, "nothing deleted");

    // Cascade: the deployments go, the deployer and its token stay until the agent has
    // reported no object left at (or after) the revision of the deletions.
    let (_, mut stream) = open_watch(&mut agent).await;
    let first = delete_deployer(&mut control, "alpha", DeleteMode::Cascade)
        .await
        .unwrap();
    assert!(!first.deleted, "waits for the agent: {first:?}");
    assert_eq!(first.deployments_deleted, 2);
    assert_eq!(first.objects_left, None, "no report since the deletions");
    assert!(first.agent_connected);
    assert_eq!(first.id, id);
    assert_eq!(
        first.owner_selector,
        ds_core::ownership::owner_selector(&id)
    );
    for _ in 0..2 {
        assert!(matches!(
            next_change(&mut stream).await,
            watch_event::Event::Removal(_)
        ));
    }
    let snap = list_snapshot(&mut agent)
        .await
        .expect("token still valid")
        .snapshot;
    assert!(snap.deployments.is_empty());
    let revision = snap.revision;
    report_objects(&mut agent, revision, 3).await;
    let waiting = delete_deployer(&mut control, "alpha", DeleteMode::Cascade)
        .await
        .unwrap();
    assert!(!waiting.deleted);
    assert_eq!(waiting.deployments_deleted, 0);
    assert_eq!(waiting.objects_left, Some(3));
    // A count from before the deletions proves nothing.
    report_objects(&mut agent, revision - 1, 0).await;
    let stale = delete_deployer(&mut control, "alpha", DeleteMode::Cascade)
        .await
        .unwrap();
    assert!(!stale.deleted, "{stale:?}");
    assert_eq!(stale.objects_left, None);
    report_objects(&mut agent, revision, 0).await;
    let done = delete_deployer(&mut control, "alpha", DeleteMode::Cascade)
        .await
        .unwrap();
    assert!(done.deleted, "{done:?}");
    let err = agent.list(proto::ListRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "token revoked");
    let (end, _, _) = until_the_end(&mut stream).await;
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);

    // Orphan: deleted and revoked at once; the answer says how to clean up.
    let (beta_id, beta_token) = create_deployer(&mut control, "beta").await;
    create_deployment(&mut control, "beta", "iris")
        .await
        .unwrap();
    let mut beta = t.agent(&beta_token).await;
    let (_, _beta_stream) = open_watch(&mut beta).await;
    let orphaned = delete_deployer(&mut control, "beta", DeleteMode::Orphan)
        .await
        .unwrap();
    assert!(orphaned.deleted);
    assert_eq!(orphaned.deployments_deleted, 1);
    assert_eq!(
        orphaned.owner_selector,
        ds_core::ownership::owner_selector(&beta_id)
    );
    let err = beta.list(proto::ListRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A deployer no agent ever connected for has no objects: cascade deletes it at once;
    // one without deployments is deleted without a mode.
    create_deployer(&mut control, "gamma").await;
    create_deployment(&mut control, "gamma", "iris")
        .await
        .unwrap();
    let gone = delete_deployer(&mut control, "gamma", DeleteMode::Cascade)
        .await
        .unwrap();
    assert!(gone.deleted && gone.deployments_deleted == 1, "{gone:?}");
    create_deployer(&mut control, "delta").await;
    assert!(
        delete_deployer(&mut control, "delta", DeleteMode::Unspecified)
            .await
            .unwrap()
            .deleted
    );
    let left = control
        .list_deployers(proto::ListDeployersRequest {})
        .await
        .unwrap()
        .into_inner()
        .deployers;
    assert!(left.is_empty(), "{left:?}");
    t.gw.shutdown().await;
}

#[tokio::test]
async fn deployers_see_only_their_own_deployments() {
    let t = start().await;
    let mut control = t.control().await;
    let (a_id, a_token) = create_deployer(&mut control, "alpha").await;
    let (_, b_token) = create_deployer(&mut control, "beta").await;
    let (_, mut a_stream) = open_watch(&mut t.agent(&a_token).await).await;
    let mut b_agent = t.agent(&b_token).await;
    let (_, mut b_stream) = open_watch(&mut b_agent).await;

    let b_dep = create_deployment(&mut control, "beta", "secret-model")
        .await
        .unwrap();
    let a_dep = create_deployment(&mut control, "alpha", "iris")
        .await
        .unwrap();
    let a_dep_id = a_dep.deployment.unwrap().id;

    // A's first change is its own deployment, never B's.
    match next_change(&mut a_stream).await {
        watch_event::Event::Upsert(u) => {
            let d = u.deployment.unwrap();
            assert_eq!(d.id, a_dep_id);
            assert_eq!(d.deployer_id, a_id);
            assert_eq!(u.revision, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    match next_change(&mut b_stream).await {
        watch_event::Event::Upsert(u) => assert_eq!(u.deployment.unwrap().name, "secret-model"),
        other => panic!("unexpected {other:?}"),
    }
    let a_list = list_snapshot(&mut t.agent(&a_token).await)
        .await
        .unwrap()
        .snapshot;
    assert_eq!(a_list.deployments.len(), 1);
    assert_eq!(a_list.deployments[0].id, a_dep_id);

    // B cannot write statuses of A's deployment: the report is refused, not swallowed.
    let forged = proto::DeploymentStatus {
        deployment_id: a_dep_id.clone(),
        phase: proto::Phase::Failed as i32,
        last_error: "forged".into(),
        ..Default::default()
    };
    let err = b_agent
        .report_status(proto::StatusReport {
            agent: None,
            statuses: vec![forged.clone()],
            objects: None,
        })
        .await
        .expect_err("a status of another deployer's deployment is refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(&a_dep_id),
        "names it: {}",
        err.message()
    );
    // Also when it hides among B's own statuses.
    let b_dep_id = b_dep.deployment.unwrap().id;
    let own = proto::DeploymentStatus {
        deployment_id: b_dep_id.clone(),
        phase: proto::Phase::Available as i32,
        ..Default::default()
    };
    let err = b_agent
        .report_status(proto::StatusReport {
            agent: None,
            statuses: vec![own.clone(), forged],
            objects: None,
        })
        .await
        .expect_err("a mixed report is refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let view = control
        .get_deployment(select(&a_dep_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.status.unwrap().phase, proto::Phase::Unspecified as i32);
    // A deployment deleted while its status was on the way is not an error (deletes race
    // with reports); B's own statuses are stored.
    b_agent
        .report_status(proto::StatusReport {
            agent: None,
            statuses: vec![
                own,
                proto::DeploymentStatus {
                    deployment_id: "00000000-0000-0000-0000-000000000000".into(),
                    ..Default::default()
                },
            ],
            objects: None,
        })
        .await
        .expect("a status of a deleted deployment is ignored");
    let view = control
        .get_deployment(select(&b_dep_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.status.unwrap().phase, proto::Phase::Available as i32);
    t.gw.shutdown().await;
}

// === control service ===

#[tokio::test]
async fn invalid_specs_are_rejected_naming_the_field() {
    let t = start().await;
    let mut control = t.control().await;
    create_deployer(&mut control, "alpha").await;
    let err = create_deployment(&mut control, "alpha", "Bad_Name")
        .await
        .expect_err("bad name refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("name"), "{}", err.message());

    let mut spec: proto::DeploymentSpec = DeploymentSpec::test("iris").into();
    spec.replicas = 5000;
    let err = control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "alpha".into(),
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .expect_err("too many replicas refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("replicas"), "{}", err.message());

    let ok = create_deployment(&mut control, "alpha", "iris")
        .await
        .unwrap();
    let err = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&ok.deployment.unwrap().id)),
            port: Some(70000),
            ..Default::default()
        })
        .await
        .expect_err("bad port refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("port"), "{}", err.message());

    // Query logs need the sidecar that writes them, on create and on the merged update.
    let err = control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "alpha".into(),
            name: "logged".into(),
            spec: Some(
                DeploymentSpec::test("logged")
                    .proxy(false)
                    .query_log(true)
                    .into(),
            ),
            ..Default::default()
        })
        .await
        .expect_err("query logs without the proxy refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("proxy.query_log"),
        "{}",
        err.message()
    );
    let logged = control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "alpha".into(),
            name: "logged".into(),
            spec: Some(DeploymentSpec::test("logged").query_log(true).into()),
            ..Default::default()
        })
        .await
        .expect("query logs with the proxy accepted")
        .into_inner()
        .deployment
        .unwrap();
    assert!(
        logged
            .spec
            .as_ref()
            .unwrap()
            .proxy
            .as_ref()
            .unwrap()
            .query_log
    );
    let err = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&logged.id)),
            proxy_enabled: Some(false),
            ..Default::default()
        })
        .await
        .expect_err("turning the proxy off under query logs refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("proxy.query_log"),
        "{}",
        err.message()
    );
    let off = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&logged.id)),
            proxy_enabled: Some(false),
            proxy_query_log: Some(false),
            ..Default::default()
        })
        .await
        .expect("both off together accepted")
        .into_inner()
        .deployment
        .unwrap();
    let proxy = off.spec.unwrap().proxy.unwrap();
    assert!(!proxy.enabled && !proxy.query_log);
    assert!(off.revision_of_last_change > logged.revision_of_last_change);
    let err = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&logged.id)),
            proxy_query_log: Some(true),
            ..Default::default()
        })
        .await
        .expect_err("query logs on a deployment without the proxy refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("proxy.query_log"),
        "{}",
        err.message()
    );
    // The proxy's protocol: set, refused when unknown (naming the field), back to auto.
    let protocol_of = |d: &proto::Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .proxy
            .as_ref()
            .unwrap()
            .protocol
            .clone()
    };
    let v2 = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&logged.id)),
            proxy_enabled: Some(true),
            proxy_protocol: Some("v2".into()),
            ..Default::default()
        })
        .await
        .expect("protocol v2 accepted")
        .into_inner()
        .deployment
        .unwrap();
    assert_eq!(protocol_of(&v2), "v2");
    let err = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&logged.id)),
            proxy_protocol: Some("v3".into()),
            ..Default::default()
        })
        .await
        .expect_err("an unknown protocol refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("proxy.protocol") && err.message().contains("auto, v1 or v2"),
        "{}",
        err.message()
    );
    let auto = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&logged.id)),
            proxy_protocol: Some("auto".into()),
            ..Default::default()
        })
        .await
        .expect("auto accepted")
        .into_inner()
        .deployment
        .unwrap();
    assert_eq!(protocol_of(&auto), "", "auto is stored as no protocol");

    let err = control
        .create_deployer(proto::CreateDeployerRequest {
            name: "Not A Name".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("name"));
    t.gw.shutdown().await;
}

#[tokio::test]
async fn oversized_env_values_and_specs_are_refused_naming_the_field_and_the_limit() {
    let t = start().await;
    let mut control = t.control().await;
    create_deployer(&mut control, "alpha").await;
    let create = |spec: DeploymentSpec| proto::CreateDeploymentRequest {
        deployer: "alpha".into(),
        name: "iris".into(),
        spec: Some(spec.into()),
        ..Default::default()
    };
    let env = |values: &[usize]| {
        values
            .iter()
            .enumerate()
            .map(|(i, len)| ds_core::EnvVar {
                name: format!("V{i}"),
                value: "x".repeat(*len),
            })
            .collect::<Vec<_>>()
    };
    let refused = |err: tonic::Status, field: &str, limit: &str| {
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let m = err.message();
        assert!(m.contains(field) && m.contains(limit), "{m}");
        assert!(
            m.len() < 400,
            "the value is not repeated whole: {} bytes",
            m.len()
        );
    };

    // One env value of 1 MiB (Linux refuses env strings over 128 KiB at exec).
    let mut spec = DeploymentSpec::test("iris");
    spec.env = env(&[1 << 20]);
    let err = control.create_deployment(create(spec)).await.unwrap_err();
    refused(err, "env[0].value", "32 KiB");
    assert!(!create_deployment_exists(&mut control, "iris").await);

    // Each value fits, the whole spec (nine of 30 KiB) does not.
    let mut spec = DeploymentSpec::test("iris");
    spec.env = env(&[30 * 1024; 9]);
    let err = control.create_deployment(create(spec)).await.unwrap_err();
    refused(err, "spec", "256 KiB");

    // 1,001 variables.
    let mut spec = DeploymentSpec::test("iris");
    spec.env = env(&[1; 1001]);
    let err = control.create_deployment(create(spec)).await.unwrap_err();
    refused(err, "env", "1000");

    // An update is checked on the merged spec: growing a spec past the limit is refused
    // and changes nothing.
    let mut spec = DeploymentSpec::test("iris");
    spec.env = env(&[30 * 1024; 8]);
    let made = control
        .create_deployment(create(spec))
        .await
        .expect("240 KiB fits")
        .into_inner()
        .deployment
        .unwrap();
    let err = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&made.id)),
            set_env: vec![proto::EnvVar {
                name: "MORE".into(),
                value: "y".repeat(30 * 1024),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(err, "spec", "256 KiB");
    let err = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&made.id)),
            set_env: vec![proto::EnvVar {
                name: "V0".into(),
                value: "y".repeat(40 * 1024),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(err, "env[0].value", "32 KiB");
    let after = control
        .get_deployment(select(&made.id))
        .await
        .unwrap()
        .into_inner()
        .deployment
        .unwrap();
    assert_eq!(after.revision_of_last_change, made.revision_of_last_change);

    // Names have Kubernetes' lengths, the model name a bound.
    let mut spec = DeploymentSpec::test("iris");
    spec.model_name = "m".repeat(254);
    let err = control.create_deployment(create(spec)).await.unwrap_err();
    refused(err, "model_name", "253");
    let err = create_deployment(&mut control, "alpha", &"n".repeat(64))
        .await
        .unwrap_err();
    refused(err, "name", "63");
    t.gw.shutdown().await;
}

async fn create_deployment_exists(control: &mut Control, name: &str) -> bool {
    control
        .list_deployments(proto::ListDeploymentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .deployments
        .iter()
        .any(|d| d.deployment.as_ref().is_some_and(|d| d.name == name))
}

#[tokio::test]
async fn control_crud_and_lookups() {
    let t = start().await;
    let mut control = t.control().await;
    create_deployer(&mut control, "alpha").await;
    let err = control
        .create_deployer(proto::CreateDeployerRequest {
            name: "alpha".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Name defaults to the model name, namespace to "default".
    let mut spec: proto::DeploymentSpec =
        DeploymentSpec::test("iris").host("iris.example.com").into();
    spec.port = 0;
    let view = control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "alpha".into(),
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let d = view.deployment.clone().unwrap();
    assert_eq!((d.name.as_str(), d.namespace.as_str()), ("iris", "default"));
    assert_eq!(d.spec.as_ref().unwrap().port, 8501);
    assert_eq!(view.url, "http://iris.example.com/");
    assert_eq!(view.deployer_name, "alpha");

    let err = control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "alpha".into(),
            spec: Some(DeploymentSpec::test("iris").into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Get by name and by ID; unknown is NOT_FOUND.
    let by_name = control
        .get_deployment(select("iris"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name.deployment.unwrap().id, d.id);
    let err = control.get_deployment(select("nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Update env and proxy; a no-op update does not bump the revision.
    let updated = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select("iris")),
            set_env: vec![proto::EnvVar {
                name: "MODEL".into(),
                value: "iris".into(),
            }],
            proxy_enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deployment
        .unwrap();
    assert_eq!(updated.revision_of_last_change, 2);
    let spec = updated.spec.unwrap();
    assert_eq!(spec.env[0].name, "MODEL");
    assert!(!spec.proxy.unwrap().enabled);
    let same = control
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select("iris")),
            proxy_enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.deployment.unwrap().revision_of_last_change, 2);

    let listed = control
        .list_deployments(proto::ListDeploymentsRequest {
            deployer: "alpha".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deployments;
    assert_eq!(listed.len(), 1);
    control
        .delete_deployment(proto::DeleteDeploymentRequest {
            selector: Some(select("iris")),
        })
        .await
        .unwrap();
    let listed = control
        .list_deployments(proto::ListDeploymentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .deployments;
    assert!(listed.is_empty());
    t.gw.shutdown().await;
}

#[tokio::test]
async fn status_reports_show_in_deployer_list_and_status_watch() {
    let t = start().await;
    let mut control = t.control().await;
    let (_, token) = create_deployer(&mut control, "alpha").await;
    let before = control
        .get_deployer(proto::GetDeployerRequest {
            deployer: "alpha".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.state, proto::DeployerState::Unspecified as i32);
    assert!(before.last_seen.is_empty());

    let view = create_deployment(&mut control, "alpha", "iris")
        .await
        .unwrap();
    let id = view.deployment.unwrap().id;
    let mut watch = control
        .watch_deployment_status(select(&id))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(
        first.status.unwrap().phase,
        proto::Phase::Unspecified as i32
    );

    let mut agent = t.agent(&token).await;
    let ack = agent
        .report_status(proto::StatusReport {
            agent: Some(proto::AgentInfo {
                version: "9.9.9".into(),
                cluster: "kind".into(),
                ..Default::default()
            }),
            statuses: vec![proto::DeploymentStatus {
                deployment_id: id.clone(),
                phase: proto::Phase::Available as i32,
                ready_replicas: 1,
                available_replicas: 1,
                updated_replicas: 1,
                applied_revision: 1,
                endpoint: "http://iris.models.svc:8080".into(),
                last_error: String::new(),
                ..Default::default()
            }],
            objects: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.revision, 1);

    let next = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("status view in time")
        .unwrap()
        .unwrap();
    let status = next.status.unwrap();
    assert_eq!(status.phase, proto::Phase::Available as i32);
    assert_eq!(status.applied_revision, 1);
    assert!(!next.status_updated_at.is_empty());

    let deployers = control
        .list_deployers(proto::ListDeployersRequest {})
        .await
        .unwrap()
        .into_inner()
        .deployers;
    let d = &deployers[0];
    assert_eq!(d.state, proto::DeployerState::Online as i32);
    assert_eq!(d.agent_version, "9.9.9");
    assert_eq!(d.cluster, "kind");
    assert_eq!(d.deployments, 1);
    assert!(!d.last_seen.is_empty());

    // Deleting the deployment ends the status watch with NOT_FOUND.
    control
        .delete_deployment(proto::DeleteDeploymentRequest {
            selector: Some(select(&id)),
        })
        .await
        .unwrap();
    let end = loop {
        match tokio::time::timeout(DEADLINE, watch.message())
            .await
            .expect("ends")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(end.unwrap_err().code(), Code::NotFound);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn deployer_goes_offline_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path());
    a.offline_after = Duration::from_millis(500);
    let t = TestGateway {
        gw: RunningGateway::start(a).await.unwrap(),
        dir,
    };
    let mut control = t.control().await;
    let (_, token) = create_deployer(&mut control, "alpha").await;
    let (_, stream) = open_watch(&mut t.agent(&token).await).await;
    let state = |c: &Control| {
        let mut c = c.clone();
        async move {
            c.get_deployer(proto::GetDeployerRequest {
                deployer: "alpha".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .state
        }
    };
    assert_eq!(state(&control).await, proto::DeployerState::Online as i32);
    drop(stream);
    eventually("deployer offline", || {
        let s = state(&control);
        async move { (s.await == proto::DeployerState::Offline as i32).then_some(()) }
    })
    .await;
    t.gw.shutdown().await;
}

// === operations ===

#[tokio::test]
async fn admin_key_file_is_private_and_http_endpoints_answer() {
    let t = start().await;
    let path = t.dir.path().join("admin.key");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert_eq!(on_disk.trim(), t.gw.admin_key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let health = http_get(t.gw.addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http_get(t.gw.addr, "/metrics").await;
    assert!(metrics.contains("ds_gateway_watch_streams"), "{metrics}");
    t.gw.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A `ds gateway` child process; killed (SIGKILL) if a test fails before stopping it.
struct GatewayProcess {
    child: std::process::Child,
    /// Everything the process wrote to stderr so far (its logs).
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops terminal escape sequences (`ESC [ … letter`), in case the logs are coloured.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl GatewayProcess {
    /// Starts `ds gateway --insecure` on 127.0.0.1:0 with every log level enabled and
    /// returns it with the address from its "gateway listening" log line.
    async fn start(data_dir: &std::path::Path) -> (Self, std::net::SocketAddr) {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ds"))
            .args([
                "gateway",
                "--insecure",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .env_remove("DS_LOG_FORMAT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ds gateway");
        let pipe = child.stderr.take().expect("stderr piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = stderr.clone();
        // A thread drains the pipe to the end, so the gateway never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if line.contains("gateway listening") {
                    let addr = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
                    let _ = addr_tx.send(addr);
                }
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let mut process = Self {
            child,
            stderr,
            reader: Some(reader),
        };
        let addr = tokio::time::timeout(DEADLINE, addr_rx.recv()).await;
        match addr {
            Ok(Some(Some(addr))) => (process, addr),
            _ => {
                let _ = process.child.kill();
                panic!(
                    "no address in the gateway's logs: {}",
                    process.stderr.lock().unwrap()
                );
            }
        }
    }

    /// Stops the gateway with SIGTERM, waits for it to exit cleanly and returns its logs.
    async fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the gateway") {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The process is gone, so the pipe is closed and the reader reaches its end.
        let reader = self.reader.take().expect("reader");
        tokio::task::spawn_blocking(move || reader.join())
            .await
            .unwrap()
            .expect("stderr reader");
        let logs = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "gateway exit {status}: {logs}");
        logs
    }
}

/// The real binary as a child process at RUST_LOG=trace: every token and the admin key are
/// used (right and wrong), and none of their secret parts reaches the logs.
#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, addr) = GatewayProcess::start(dir.path()).await;
    let url = format!("http://{addr}");
    let admin_key = std::fs::read_to_string(dir.path().join("admin.key"))
        .expect("admin.key written at start")
        .trim()
        .to_string();
    let mut control =
        ControlServiceClient::with_interceptor(channel(&url).await, Bearer::from_plain(&admin_key));
    let agent_for = |token: String| {
        let url = url.clone();
        async move {
            AgentServiceClient::with_interceptor(channel(&url).await, Bearer::from_plain(&token))
        }
    };

    let (_, token) = create_deployer(&mut control, "alpha").await;
    create_deployment(&mut control, "alpha", "iris")
        .await
        .unwrap();
    let mut agent = agent_for(token.clone()).await;
    let (_, mut stream) = open_watch(&mut agent).await;
    agent.list(proto::ListRequest {}).await.unwrap();
    let rotated = control
        .rotate_deployer_token(proto::RotateDeployerTokenRequest {
            deployer: "alpha".into(),
            overlap_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    agent_for(rotated.clone())
        .await
        .list(proto::ListRequest {})
        .await
        .unwrap();
    // Same key id, wrong secret: the failure path must not echo what was presented.
    let mut wrong = token.clone();
    wrong.replace_range(wrong.len() - 4.., "AAAA");
    let denied = agent_for(wrong.clone())
        .await
        .list(proto::ListRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    let mut wrong_admin = admin_key.clone();
    wrong_admin.replace_range(wrong_admin.len() - 4.., "AAAA");
    let denied = ControlServiceClient::with_interceptor(
        channel(&url).await,
        Bearer::from_plain(&wrong_admin),
    )
    .list_deployers(proto::ListDeployersRequest {})
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    create_deployment(&mut control, "alpha", "other")
        .await
        .unwrap();
    next_change(&mut stream).await;
    drop((stream, agent, control));

    let logs = gateway.terminate().await;
    for event in [
        "gateway listening",
        "deployer created",
        "deployment created",
        "watch stream opened",
        "deployer token rotated",
        "rejected a deployer token",
        "rejected an API key",
        "gateway stopped",
    ] {
        assert!(logs.contains(event), "no {event:?} in the logs: {logs}");
    }
    for secret in [&token, &rotated, &wrong, &admin_key, &wrong_admin] {
        // PREFIX_ID_SECRET: the 43-character secret part must never show up.
        let body = secret.splitn(3, '_').nth(2).unwrap();
        assert_eq!(body.len(), 43);
        assert!(!logs.contains(body), "a secret leaked into the logs");
    }
}

// === TLS ===

struct TestPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn test_pki() -> TestPki {
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
    TestPki {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

#[tokio::test]
async fn tls_serves_grpc_with_a_test_ca_and_plaintext_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();

    let mut plain = args(dir.path());
    plain.insecure = false;
    let err = RunningGateway::start(plain.clone()).await.unwrap_err();
    assert!(err.to_string().contains("--insecure"), "{err}");

    plain.tls_cert = Some(cert);
    plain.tls_key = Some(key);
    let gw = RunningGateway::start(plain).await.expect("TLS gateway");
    assert!(gw.url().starts_with("https://"));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(gw.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connect");
    let mut control =
        ControlServiceClient::with_interceptor(channel, Bearer::from_plain(&gw.admin_key));
    let (_, token) = create_deployer(&mut control, "alpha").await;
    assert!(!token.is_empty());
    let listed = control
        .list_deployers(proto::ListDeployersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.deployers.len(), 1);

    // A client that does not trust the CA fails.
    let untrusted = Channel::from_shared(gw.url())
        .unwrap()
        .tls_config(tonic::transport::ClientTlsConfig::new().domain_name("localhost"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = untrusted {
        let mut c = ControlServiceClient::with_interceptor(ch, Bearer::from_plain(&gw.admin_key));
        assert!(
            c.list_deployers(proto::ListDeployersRequest {})
                .await
                .is_err()
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_namespaced_agent_limits_where_deployments_may_go() {
    let t = start().await;
    let mut control = t.control().await;
    let (_, token) = create_deployer(&mut control, "scoped").await;
    // Before any agent report the gateway cannot know: anything valid is accepted.
    create_deployment_in(&mut control, "scoped", "early", "anywhere")
        .await
        .expect("accepted before the agent reports");

    let mut agent = t.agent(&token).await;
    let _stream = agent
        .watch(proto::WatchRequest {
            agent: Some(proto::AgentInfo {
                version: "1.2.3".into(),
                namespaces: vec!["models".into(), "staging".into()],
                ..Default::default()
            }),
        })
        .await
        .expect("watch");
    let deployer = control
        .get_deployer(proto::GetDeployerRequest {
            deployer: "scoped".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deployer.agent_namespaces, ["models", "staging"]);

    let refused = create_deployment_in(&mut control, "scoped", "iris", "other")
        .await
        .expect_err("outside the agent's namespaces");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().starts_with("invalid namespace \"other\"")
            && refused
                .message()
                .contains("only has rights in: models, staging"),
        "{}",
        refused.message()
    );
    create_deployment_in(&mut control, "scoped", "iris", "staging")
        .await
        .expect("inside the agent's namespaces");
}

// === OIDC / JWT bearer tokens (--jwt-*) ===

const JWT_ISSUER: &str = "https://idp.example.com/realms/ds";

/// An ES256 token signed by `key` with `claims`.
fn mint_es256(key: &p256::ecdsa::SigningKey, claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&signature.to_bytes()))
}

/// Claims for `sub` from [`JWT_ISSUER`] for `ds-gateway`, expiring at `exp` (Unix seconds).
fn jwt_claims(sub: &str, exp: i64) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    serde_json::json!({
        "iss": JWT_ISSUER, "aud": "ds-gateway", "sub": sub, "iat": now, "exp": exp,
        "groups": ["ml-team"],
    })
}

/// Writes the PEM public key of a fresh P-256 key into `dir`; returns the key and the file.
fn issuer_key(dir: &std::path::Path) -> (p256::ecdsa::SigningKey, std::path::PathBuf) {
    use p256::pkcs8::EncodePublicKey as _;
    let key = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()).unwrap();
    let pem = p256::PublicKey::from(key.verifying_key())
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    let path = dir.join("issuer.pem");
    std::fs::write(&path, pem).unwrap();
    (key, path)
}

async fn control_with(url: &str, bearer: &str) -> Control {
    ControlServiceClient::with_interceptor(channel(url).await, Bearer::from_plain(bearer))
}

#[tokio::test]
async fn jwt_bearer_tokens_authenticate_control_calls() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (key, pem) = issuer_key(keys.path());
    let mut gargs = args(dir.path());
    gargs.jwt.issuer = Some(JWT_ISSUER.to_string());
    gargs.jwt.audience = Some("ds-gateway".to_string());
    gargs.jwt.public_keys = vec![pem];
    let gw = RunningGateway::start(gargs).await.expect("gateway starts");
    let url = gw.url();
    let now = chrono::Utc::now().timestamp();

    // A token's groups claim carries its roles: ml-team may deploy on dev.
    let mut admin = control_with(&url, &gw.admin_key).await;
    create_deployer(&mut admin, "dev").await;
    admin
        .create_group(proto::CreateGroupRequest {
            name: "ml-team".into(),
        })
        .await
        .expect("group");
    let token = mint_es256(&key, &jwt_claims("alice@example.com", now + 600));
    let mut alice = control_with(&url, &token).await;
    let mut unrelated = jwt_claims("bob@example.com", now + 600);
    unrelated["groups"] = serde_json::json!(["other"]);
    let mut bob = control_with(&url, &mint_es256(&key, &unrelated)).await;
    for who in [&mut alice, &mut bob] {
        let seen = who
            .list_deployers(proto::ListDeployersRequest::default())
            .await
            .expect("a valid token lists")
            .into_inner();
        assert!(seen.deployers.is_empty(), "no grant yet: nothing visible");
    }
    admin
        .grant_deployer(proto::GrantDeployerRequest {
            deployer: "dev".into(),
            group: "ml-team".into(),
            role: proto::DeployerRole::Deploy as i32,
        })
        .await
        .expect("grant");
    create_deployment(&mut alice, "dev", "iris")
        .await
        .expect("a valid token may deploy");
    let history = alice
        .get_deployment_history(select("iris"))
        .await
        .expect("history")
        .into_inner();
    let actors: Vec<&str> = history.revisions.iter().map(|r| r.actor.as_str()).collect();
    assert_eq!(actors, ["oidc:alice@example.com"]);

    // The `ds` CLI as a process takes the token where it takes an API key.
    let config = dir.path().join("ds-config.yaml");
    let mut ls = ds_test_support::cli::bare(
        std::path::Path::new(env!("CARGO_BIN_EXE_ds")),
        &config,
        &["deployer", "ls", "-o", "json"],
    );
    ls.env("DS_GATEWAY", &url).env("DS_API_KEY", &token);
    let listed = ds_test_support::cli::output(ls, DEADLINE).await.json();
    assert_eq!(listed[0]["name"], "dev", "{listed}");
    let seen = bob
        .list_deployers(proto::ListDeployersRequest::default())
        .await
        .expect("bob lists")
        .into_inner();
    assert!(
        seen.deployers.is_empty(),
        "bob's groups have no role on dev"
    );

    let refused = |status: tonic::Status| (status.code(), status.message().to_string());
    let expired = mint_es256(&key, &jwt_claims("alice@example.com", now - 3600));
    // The CLI says why, without the token.
    let mut ls = ds_test_support::cli::bare(
        std::path::Path::new(env!("CARGO_BIN_EXE_ds")),
        &config,
        &["deployer", "ls"],
    );
    ls.env("DS_GATEWAY", &url).env("DS_API_KEY", &expired);
    let run = ds_test_support::cli::output(ls, DEADLINE).await;
    let line = run.one_line_error();
    assert!(
        line.contains("rejected the API key or token (token expired)"),
        "{line}"
    );
    assert!(!status_leaks(&expired, &run.stderr));
    let status = control_with(&url, &expired)
        .await
        .list_deployers(proto::ListDeployersRequest::default())
        .await
        .expect_err("an expired token is refused");
    assert_eq!(
        refused(status),
        (Code::Unauthenticated, "token expired".to_string())
    );
    assert!(!status_leaks(&expired, "token expired"));

    let mut foreign = jwt_claims("mallory", now + 600);
    foreign["iss"] = "https://evil.example.com".into();
    let status = control_with(&url, &mint_es256(&key, &foreign))
        .await
        .list_deployers(proto::ListDeployersRequest::default())
        .await
        .expect_err("another issuer is refused");
    assert_eq!(
        refused(status),
        (
            Code::Unauthenticated,
            "token issuer not accepted".to_string()
        )
    );

    // A token signed by a key the gateway does not know.
    let stranger = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()).unwrap();
    let status = control_with(
        &url,
        &mint_es256(&stranger, &jwt_claims("alice@example.com", now + 600)),
    )
    .await
    .list_deployers(proto::ListDeployersRequest::default())
    .await
    .expect_err("a foreign signature is refused");
    assert_eq!(
        refused(status),
        (
            Code::Unauthenticated,
            "token signature not valid".to_string()
        )
    );

    // The admin API key keeps working beside tokens, and a wrong key still says so.
    let listed = admin
        .list_deployers(proto::ListDeployersRequest::default())
        .await
        .expect("the API key still works")
        .into_inner();
    assert_eq!(listed.deployers.len(), 1);
    let forged_key = ds_gateway::credentials::generate(ds_gateway::credentials::API_KEY_PREFIX);
    let status = control_with(&url, &forged_key.secret)
        .await
        .list_deployers(proto::ListDeployersRequest::default())
        .await
        .expect_err("unknown API key");
    assert_eq!(
        refused(status),
        (Code::Unauthenticated, "invalid API key".to_string())
    );
    gw.shutdown().await;
}

/// Whether a message repeats any part of the token.
fn status_leaks(token: &str, message: &str) -> bool {
    token
        .split('.')
        .any(|part| !part.is_empty() && message.contains(part))
}

#[tokio::test]
async fn bad_jwt_key_file_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("issuer.pem");
    std::fs::write(&bad, "not a key\n").unwrap();
    let mut gargs = args(&dir.path().join("data"));
    gargs.jwt.issuer = Some(JWT_ISSUER.to_string());
    gargs.jwt.public_keys = vec![bad.clone()];
    let error = RunningGateway::start(gargs)
        .await
        .expect_err("a bad key file is a start-up error")
        .to_string();
    assert_eq!(
        error,
        format!(
            "--jwt-public-key {}: is not a PEM file (no -----BEGIN/-----END block)",
            bad.display()
        )
    );

    // The same through `ds gateway` and its environment variables.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ds"));
    cmd.args(["gateway", "--insecure", "--listen", "127.0.0.1:0"])
        .env("DS_DATA_DIR", dir.path().join("data"))
        .env("DS_JWT_ISSUER", JWT_ISSUER)
        .env("DS_JWT_PUBLIC_KEY", &bad)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("ds gateway exits")
        .expect("ds runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "--jwt-public-key {}: is not a PEM file",
            bad.display()
        )),
        "{stderr}"
    );
}
