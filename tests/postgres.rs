//! Integration tests of the gateway on PostgreSQL: the store contract against a real
//! server, and several gateway replicas sharing one database (LISTEN/NOTIFY fan-out).
//!
//! They need `DS_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`, a
//! role allowed to create databases); `hack/test.sh` starts a throwaway server and sets
//! it. Without it these tests fail, on purpose: a skipped test would look like a pass.
//! Each test creates its own database, so they run in parallel.

use ds_core::DeploymentSpec;
use ds_core::proto::{self, WatchEvent, watch_event};
use ds_gateway::install::{InstallCodes, InstallOptions};
use ds_gateway::postgres::PgStore;
use ds_gateway::store::{Change, ChangeBy, Store, StoreError};
use ds_gateway::{GatewayArgs, RunningGateway};
use ds_test_support::{AgentService as Agent, Control, eventually};
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;

mod store_contract;

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

// === a database per test ===

/// A fresh database on the test server, dropped by [`TestDb::drop_db`].
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let admin_url = std::env::var("DS_TEST_POSTGRES_URL").unwrap_or_default();
        assert!(
            !admin_url.is_empty(),
            "DS_TEST_POSTGRES_URL is not set: these tests need a PostgreSQL server \
             (e.g. postgres://postgres@127.0.0.1:5432/postgres, a role that may CREATE DATABASE). \
             Run them with `bash hack/test.sh`, which starts a throwaway server, or set the variable."
        );
        let name = format!("ds_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to DS_TEST_POSTGRES_URL: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        conn.close().await.ok();
        let mut url = url::Url::parse(&admin_url).expect("DS_TEST_POSTGRES_URL is a URL");
        url.set_path(&format!("/{name}"));
        TestDb {
            admin_url,
            name,
            url: url.to_string(),
        }
    }

    /// Drops the database (best effort; the throwaway server goes away anyway).
    async fn drop_db(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
            conn.close().await.ok();
        }
    }
}

fn hash(s: &str) -> [u8; 32] {
    ds_gateway::credentials::hash(s)
}

fn spec(model: &str, replicas: u32) -> DeploymentSpec {
    let mut s = DeploymentSpec::test(model);
    s.replicas = replicas;
    s
}

/// The next change on a hub subscription, within the deadline.
async fn next_hub_change(rx: &mut tokio::sync::broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("a change within the deadline")
        .expect("subscription healthy")
}

// === the store contract: see store_contract, run on both back ends ===

// Two stores on one database stand for two replicas: a code is redeemed exactly once
// however many fetches race for it on either of them.
#[tokio::test]
async fn install_codes_are_single_use_across_replicas() {
    let db = TestDb::new().await;
    let a = Arc::new(PgStore::open_url(&db.url).await.expect("open a"));
    let b = Arc::new(PgStore::open_url(&db.url).await.expect("open b"));
    let d = a
        .create_deployer("alpha", "tok1", hash("t1"))
        .await
        .unwrap();
    let options = InstallOptions {
        namespace: "ds-system".into(),
        target_namespaces: vec!["models".into()],
        ..Default::default()
    };
    let expires = chrono::Utc::now() + chrono::Duration::minutes(5);
    a.create_code(&ChangeBy::default(), hash("code"), &d.id, expires, &options)
        .await
        .unwrap();
    let replicas: [Arc<dyn InstallCodes>; 2] = [a.clone(), b.clone()];
    let store: Arc<dyn Store> = a.clone();
    let won = store_contract::race_for_code(&replicas, &store, hash("code"), 16).await;
    assert_eq!(won, (d.id.clone(), options));
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

// Writers on two replicas race on one deployer (creates are committed in groups):
// revisions stay distinct and gap-free, taken names are refused, and
// each replica's hub publishes all of them, its own and the other's, in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_publish_every_change_in_revision_order() {
    let db = TestDb::new().await;
    let a = Arc::new(PgStore::open_url(&db.url).await.expect("open a"));
    let b = Arc::new(PgStore::open_url(&db.url).await.expect("open b"));
    let d = a
        .create_deployer("alpha", "tok1", hash("t1"))
        .await
        .unwrap();
    let mut on_a = a.hub().subscribe(&d.id);
    let mut on_b = b.hub().subscribe(&d.id);
    let mut writers = tokio::task::JoinSet::new();
    const N: u64 = 40;
    for i in 0..N {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = d.id.clone();
        writers.spawn(async move {
            store
                .create_deployment(&id, &format!("m{i}"), "models", &spec("m", 1))
                .await
                .map(|r| r.revision)
        });
    }
    // A second create of a taken name is refused without failing its batch neighbours.
    for i in 0..10 {
        let store = if i % 2 == 0 { b.clone() } else { a.clone() };
        let id = d.id.clone();
        writers.spawn(async move {
            store
                .create_deployment(&id, &format!("m{i}"), "models", &spec("m", 1))
                .await
                .map(|r| r.revision)
        });
    }
    let mut revisions = Vec::new();
    let mut refused = 0;
    while let Some(r) = writers.join_next().await {
        match r.unwrap() {
            Ok(revision) => revisions.push(revision),
            Err(StoreError::AlreadyExists(_)) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(refused, 10);
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=N).collect::<Vec<_>>());
    for rx in [&mut on_a, &mut on_b] {
        let mut seen = Vec::new();
        for _ in 0..N {
            match next_hub_change(rx).await {
                Change::Upsert(d) => seen.push(d.revision),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    }
    // A deletion through one replica ends the watchers on the other.
    a.delete_deployer(&ChangeBy::default(), &d.id)
        .await
        .unwrap();
    assert_eq!(next_hub_change(&mut on_b).await, Change::DeployerDeleted);
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

// The change log does not grow without bound, and a replica that finds changes pruned
// before it published them makes the watchers start over from a snapshot.
#[tokio::test]
async fn old_changes_are_pruned_and_a_gap_resyncs_watchers() {
    let db = TestDb::new().await;
    let a = PgStore::open_url(&db.url).await.expect("open a");
    let d = a
        .create_deployer("alpha", "tok1", hash("t1"))
        .await
        .unwrap();
    let x = a
        .create_deployment(&d.id, "x", "models", &spec("x", 1))
        .await
        .unwrap();
    let mut revision = x.revision;
    let total = ds_gateway::postgres::KEEP_CHANGES as u64 + 50;
    while revision < total {
        revision = a
            .update_deployment(&x.id, revision, &spec("x", (revision % 5) as u32 + 1))
            .await
            .unwrap()
            .revision;
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (rows, oldest): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), MIN(revision) FROM changes WHERE deployer_id = $1")
            .bind(&d.id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(rows, ds_gateway::postgres::KEEP_CHANGES);
    assert_eq!(oldest as u64, total - rows as u64 + 1);

    // Replica B is behind: the next two changes reach the log, but the first is pruned
    // before B reads it (written here by hand in one transaction, as a far-ahead
    // replica would). B must end its watchers rather than feed them a gap.
    let b = PgStore::open_url(&db.url).await.expect("open b");
    let mut on_b = b.hub().subscribe(&d.id);
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("UPDATE deployers SET revision = revision + 2 WHERE id = $1")
        .bind(&d.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO changes (deployer_id, revision, kind, payload) VALUES ($1, $2, 'removal', $3)",
    )
    .bind(&d.id)
    .bind((total + 2) as i64)
    .bind(r#"{"id":"gone","namespace":"models","name":"gone"}"#)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('ds_changes', $1)")
        .bind(format!("{} {}", d.id, total + 2))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    match tokio::time::timeout(DEADLINE, on_b.recv())
        .await
        .expect("B reacts in time")
    {
        Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
        other => panic!("the watchers must be ended, got {other:?}"),
    }
    conn.close().await.ok();
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

/// Terminates the listener connections of the replicas on database `name`.
async fn cut_listeners(conn: &mut sqlx::PgConnection, name: &str) -> u64 {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(conn)
    .await
    .unwrap()
    .rows_affected()
}

/// How many listener connections are open on database `name`.
async fn listeners(conn: &mut sqlx::PgConnection, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(name)
    .fetch_one(conn)
    .await
    .unwrap()
}

// A replica whose listener connection is cut misses the notifications sent meanwhile,
// but not the changes: after reconnecting it re-scans and publishes them in order.
#[tokio::test]
async fn a_replica_whose_listener_was_cut_catches_up_in_order() {
    let db = TestDb::new().await;
    let a = PgStore::open_url(&db.url).await.expect("open a");
    let b = PgStore::open_url(&db.url).await.expect("open b");
    let d = a
        .create_deployer("alpha", "tok1", hash("t1"))
        .await
        .unwrap();
    let mut on_b = b.hub().subscribe(&d.id);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    assert!(
        cut_listeners(&mut conn, &db.name).await >= 2,
        "both listeners were connected"
    );
    for name in ["x", "y", "z"] {
        a.create_deployment(&d.id, name, "models", &spec(name, 1))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_hub_change(&mut on_b).await.revision());
    }
    assert_eq!(seen, [1, 2, 3]);

    // A deletion while cut off still ends the watchers once the listener is back.
    let start = tokio::time::Instant::now();
    while listeners(&mut conn, &db.name).await < 2 {
        assert!(
            start.elapsed() < DEADLINE,
            "the listeners reconnect in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cut_listeners(&mut conn, &db.name).await;
    a.delete_deployer(&ChangeBy::default(), &d.id)
        .await
        .unwrap();
    assert_eq!(next_hub_change(&mut on_b).await, Change::DeployerDeleted);
    conn.close().await.ok();
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

// === two gateway replicas ===

/// A gateway replica on the test database; all replicas share the data directory, so
/// they share the admin key file too.
async fn replica(db: &TestDb, dir: &std::path::Path) -> RunningGateway {
    let mut args = GatewayArgs::insecure("127.0.0.1:0".parse().unwrap(), dir);
    args.heartbeat_interval = Duration::from_millis(300);
    args.database = Some(db.url.clone());
    RunningGateway::start(args).await.expect("gateway starts")
}

async fn control(gw: &RunningGateway) -> Control {
    ds_test_support::control_client(&gw.url(), &gw.admin_key)
}

async fn agent(gw: &RunningGateway, token: &str) -> Agent {
    ds_test_support::agent_service(&gw.url(), token)
}

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

async fn create_deployment(control: &mut Control, deployer: &str, name: &str) -> String {
    control
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: deployer.to_string(),
            name: name.to_string(),
            namespace: "models".to_string(),
            spec: Some(DeploymentSpec::test(name).into()),
        })
        .await
        .expect("create deployment")
        .into_inner()
        .deployment
        .expect("deployment")
        .id
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

/// `upsert NAME REPLICAS` or `removal NAME`, with the revision.
fn describe(ev: watch_event::Event) -> (u64, String) {
    match ev {
        watch_event::Event::Upsert(u) => {
            let d = u.deployment.expect("deployment");
            assert_eq!(d.revision_of_last_change, u.revision);
            (
                u.revision,
                format!("upsert {} {}", d.name, d.spec.expect("spec").replicas),
            )
        }
        watch_event::Event::Removal(r) => (r.revision, format!("removal {}", r.name)),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn an_agent_on_replica_b_sees_changes_made_through_replica_a_in_order() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&db, dir.path()).await;
    let b = replica(&db, dir.path()).await;
    assert!(!b.admin_key.is_empty(), "replicas share the admin key file");
    let mut control_a = control(&a).await;
    let (_, token) = create_deployer(&mut control_a, "alpha").await;
    let first = create_deployment(&mut control_a, "alpha", "first").await;

    let mut agent_b = agent(&b, &token).await;
    let (snap, mut stream) = open_watch(&mut agent_b).await;
    assert_eq!(snap.revision, 1);
    assert_eq!(snap.deployments.len(), 1);
    assert_eq!(snap.deployments[0].id, first);

    let second = create_deployment(&mut control_a, "alpha", "second").await;
    control_a
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&first)),
            replicas: Some(3),
            ..Default::default()
        })
        .await
        .expect("update");
    control_a
        .delete_deployment(proto::DeleteDeploymentRequest {
            selector: Some(select(&second)),
        })
        .await
        .expect("delete");
    // A change through B itself interleaves in the same order.
    let mut control_b = control(&b).await;
    create_deployment(&mut control_b, "alpha", "third").await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(describe(next_change(&mut stream).await));
    }
    assert_eq!(
        seen,
        [
            (2, "upsert second 1".to_string()),
            (3, "upsert first 3".to_string()),
            (4, "removal second".to_string()),
            (5, "upsert third 1".to_string()),
        ]
    );

    // Deleting the deployer through A ends B's stream.
    control_a
        .delete_deployer(proto::DeleteDeployerRequest {
            deployer: "alpha".into(),
            mode: proto::DeleteMode::Orphan as i32,
        })
        .await
        .expect("delete deployer");
    let end = loop {
        match tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("stream ends in time")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(
        end.is_err(),
        "the stream ends with an error, got {end:?} instead"
    );
    a.shutdown().await;
    b.shutdown().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_status_reported_through_b_shows_through_a() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&db, dir.path()).await;
    let b = replica(&db, dir.path()).await;
    let mut control_a = control(&a).await;
    let (_, token) = create_deployer(&mut control_a, "alpha").await;
    let id = create_deployment(&mut control_a, "alpha", "iris").await;
    let mut watch = control_a
        .watch_deployment_status(select(&id))
        .await
        .expect("status watch")
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("first view")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.status.unwrap_or_default().phase,
        proto::Phase::Unspecified as i32
    );

    let ack = agent(&b, &token)
        .await
        .report_status(proto::StatusReport {
            agent: Some(proto::AgentInfo {
                version: "9.9.9".into(),
                cluster: "kind".into(),
                namespaces: vec!["models".into()],
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
        .expect("report")
        .into_inner();
    assert_eq!(ack.revision, 1);

    // A's status watcher wakes up from B's report.
    let next = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("a status view through A in time")
        .unwrap()
        .unwrap();
    let status = next.status.unwrap();
    assert_eq!(status.phase, proto::Phase::Available as i32);
    assert_eq!(status.endpoint, "http://iris.models.svc:8080");

    let deployer = control_a
        .get_deployer(proto::GetDeployerRequest {
            deployer: "alpha".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deployer.state, proto::DeployerState::Online as i32);
    assert_eq!(deployer.agent_version, "9.9.9");
    assert_eq!(deployer.cluster, "kind");
    assert_eq!(deployer.agent_namespaces, ["models"]);
    a.shutdown().await;
    b.shutdown().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_restarted_replica_keeps_state_and_its_changes_reach_the_other() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&db, dir.path()).await;
    let b = replica(&db, dir.path()).await;
    let mut control_a = control(&a).await;
    let (_, token) = create_deployer(&mut control_a, "alpha").await;
    create_deployment(&mut control_a, "alpha", "one").await;
    create_deployment(&mut control_a, "alpha", "two").await;
    let mut agent_b = agent(&b, &token).await;
    let (snap, mut stream) = open_watch(&mut agent_b).await;
    assert_eq!(snap.revision, 2);
    drop(control_a);
    a.shutdown().await;

    // A comes back on the same database: same state, same admin key, same token.
    let a = replica(&db, dir.path()).await;
    let mut control_a = control(&a).await;
    let listed = control_a
        .list_deployments(proto::ListDeploymentsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .deployments;
    assert_eq!(listed.len(), 2);
    let (snap_a, _s) = open_watch(&mut agent(&a, &token).await).await;
    assert_eq!(snap_a.revision, 2);

    create_deployment(&mut control_a, "alpha", "three").await;
    assert_eq!(
        describe(next_change(&mut stream).await),
        (3, "upsert three 1".to_string())
    );
    a.shutdown().await;
    b.shutdown().await;
    db.drop_db().await;
}

#[tokio::test]
async fn unknown_database_schemes_are_refused_naming_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = GatewayArgs::insecure("127.0.0.1:0".parse().unwrap(), dir.path());
    args.database = Some("mysql://localhost/ds".into());
    let err = RunningGateway::start(args)
        .await
        .expect_err("mysql is not supported")
        .to_string();
    assert!(err.contains("\"mysql\""), "{err}");
    assert!(err.contains("postgres://"), "{err}");
}

// === end to end: gateway replicas on PostgreSQL, the simulator and an agent ===

// The agent talks to replica B only; the user talks to replica A only. Creates, updates
// and deletes through A reach the cluster, and the agent's statuses show through A.
#[tokio::test]
async fn an_agent_on_one_replica_deploys_what_the_other_replica_is_told() {
    use ds_kube_sim::{SimCluster, SimConfig};
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::Api;

    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&db, dir.path()).await;
    let b = replica(&db, dir.path()).await;
    let sim = SimCluster::start(SimConfig {
        rollout_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("sim starts");
    let mut control_a = control(&a).await;
    let (_, token) = create_deployer(&mut control_a, "e2e").await;
    let mut args = ds_test_support::agent_args(&b.url(), &token);
    args.proxy_image = "ds:test".into();
    let agent = ds_test_support::start_agent(args, sim.client()).await;

    let id = control_a
        .create_deployment(proto::CreateDeploymentRequest {
            deployer: "e2e".into(),
            name: "iris".into(),
            namespace: "default".into(),
            spec: Some(DeploymentSpec::test("iris").replicas(2).into()),
        })
        .await
        .expect("create")
        .into_inner()
        .deployment
        .expect("deployment")
        .id;
    let deployments: Api<Deployment> = Api::namespaced(sim.client(), "default");
    eventually("the Deployment in the cluster", || async {
        deployments.get_opt("iris").await.ok().flatten()
    })
    .await;
    let status = eventually("Available through replica A", || {
        let mut control = control_a.clone();
        let id = id.clone();
        async move {
            let s = control
                .get_deployment(select(&id))
                .await
                .ok()?
                .into_inner()
                .status?;
            (s.phase == proto::Phase::Available as i32).then_some(s)
        }
    })
    .await;
    assert_eq!(status.available_replicas, 2);

    control_a
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(select(&id)),
            image: Some("tensorflow/serving:2.16.0".into()),
            ..Default::default()
        })
        .await
        .expect("update");
    eventually("the new image in the cluster", || async {
        let d = deployments.get_opt("iris").await.ok().flatten()?;
        let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
        (image == "tensorflow/serving:2.16.0").then_some(())
    })
    .await;

    control_a
        .delete_deployment(proto::DeleteDeploymentRequest {
            selector: Some(select(&id)),
        })
        .await
        .expect("delete");
    eventually("the Deployment gone", || async {
        matches!(deployments.get_opt("iris").await, Ok(None)).then_some(())
    })
    .await;
    agent.shutdown().await;
    sim.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_db().await;
}

/// `GET path` over plain HTTP/1.0; returns the status code and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

// An install link made through one replica is served once, by whichever replica the
// fetch reaches; a second fetch through the other replica is refused.
#[tokio::test]
async fn an_install_link_from_one_replica_works_once_on_any() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&db, dir.path()).await;
    let b = replica(&db, dir.path()).await;
    let mut control_a = control(&a).await;
    create_deployer(&mut control_a, "alpha").await;
    let link = control_a
        .create_install_code(proto::CreateInstallCodeRequest {
            deployer: "alpha".into(),
            ..Default::default()
        })
        .await
        .expect("install code")
        .into_inner()
        .url;
    let path = &link[link.find("/install/").expect("an install URL")..];
    let (code, manifest) = http_get(b.addr, path).await;
    assert_eq!(code, 200, "{manifest}");
    assert!(manifest.contains("kind: Secret"), "{manifest}");
    let (code, body) = http_get(a.addr, path).await;
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("already used"), "{body}");
    a.shutdown().await;
    b.shutdown().await;
    db.drop_db().await;
}
