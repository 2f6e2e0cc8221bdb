//! The store contract: the same tests against an `Arc<dyn Store>` of each back end,
//! SQLite on a real temporary file and PostgreSQL on the test server, so that the two
//! cannot drift apart again in what a user sees.

use crate::{DEADLINE, TestDb, hash, next_hub_change, spec};
use ds_gateway::install::{InstallCodes, InstallOptions, RedeemError};
use ds_gateway::postgres::PgStore;
use ds_gateway::sqlite::SqliteStore;
use ds_gateway::store::{
    AgentHeartbeat, ApiKeyRecord, AuditEvent, AuditQuery, AuditRecord, Change, ChangeBy, DeployBy,
    DeployerRecord, DeployerUpdate, DeploymentKey, DeploymentRecord, DeploymentSelector,
    GrantRecord, HookOutcome, HookPhase, HookRunRecord, HookTarget, NewHook, ObjectCount, Outcome,
    Role, SnapshotItem, StagePlace, StatusRecord, Store, StoreError, UserKind,
};
use std::sync::Arc;

/// One back end under test, and what it needs to be reopened and cleaned up.
enum Backend {
    Sqlite {
        store: Arc<SqliteStore>,
        dir: tempfile::TempDir,
    },
    Postgres {
        store: Arc<PgStore>,
        db: TestDb,
    },
}

impl Backend {
    async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open_path(&dir.path().join("gateway.db"))
            .await
            .expect("open SQLite");
        Backend::Sqlite {
            store: Arc::new(store),
            dir,
        }
    }

    async fn postgres() -> Backend {
        let db = TestDb::new().await;
        let store = PgStore::open_url(&db.url).await.expect("open PostgreSQL");
        Backend::Postgres {
            store: Arc::new(store),
            db,
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite { store, .. } => store.clone(),
            Backend::Postgres { store, .. } => store.clone(),
        }
    }

    fn codes(&self) -> Arc<dyn InstallCodes> {
        match self {
            Backend::Sqlite { store, .. } => store.clone(),
            Backend::Postgres { store, .. } => store.clone(),
        }
    }

    /// Runs `sql` on the database directly, beside the store (to make a database look as
    /// an earlier release left it).
    async fn raw(&self, sql: &'static str) {
        use sqlx::Connection;
        match self {
            Backend::Sqlite { dir, .. } => {
                let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
            Backend::Postgres { db, .. } => {
                let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
        }
    }

    /// Runs `sql` on the database directly and says whether the database took it.
    async fn raw_result(&self, sql: &'static str) -> Result<(), String> {
        use sqlx::Connection;
        match self {
            Backend::Sqlite { dir, .. } => {
                let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql)
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Backend::Postgres { db, .. } => {
                let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::raw_sql(sql)
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Closes the store and opens the same database again, as a gateway restart does.
    async fn reopen(self) -> Backend {
        match self {
            Backend::Sqlite { store, dir } => {
                store.close().await;
                drop(store);
                let store = SqliteStore::open_path(&dir.path().join("gateway.db"))
                    .await
                    .expect("reopen SQLite");
                Backend::Sqlite {
                    store: Arc::new(store),
                    dir,
                }
            }
            Backend::Postgres { store, db } => {
                store.close().await;
                drop(store);
                let store = PgStore::open_url(&db.url).await.expect("reopen PostgreSQL");
                Backend::Postgres {
                    store: Arc::new(store),
                    db,
                }
            }
        }
    }

    async fn close(self) {
        match self {
            Backend::Sqlite { store, dir } => {
                store.close().await;
                drop(dir);
            }
            Backend::Postgres { store, db } => {
                store.close().await;
                db.drop_db().await;
            }
        }
    }
}

/// Runs each named contract test (an `async fn(Backend) -> Backend`) once per back end.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::sqlite().await).await.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::postgres().await).await.close().await;
                }
            )*
        }
    };
}

contract!(
    api_keys_are_unique_and_found_by_id,
    deployers_are_registered_found_and_deleted,
    rotated_tokens_keep_working_until_their_deadline,
    deployments_change_at_increasing_revisions,
    a_snapshot_is_the_complete_state_at_its_revision,
    revisions_are_per_deployer_and_survive_a_restart,
    concurrent_creates_get_distinct_gap_free_revisions,
    of_concurrent_updates_from_one_revision_exactly_one_wins,
    deployments_are_listed_and_found_by_id_or_name,
    pages_of_deployments_cover_the_list_once_in_order,
    a_streamed_snapshot_is_the_snapshot,
    revisions_are_numbered_per_deployment_with_who_and_what_they_reached,
    an_upgraded_database_keeps_each_deployments_spec_as_revision_1,
    heartbeats_show_on_the_deployer,
    object_counts_are_kept_and_a_deployer_is_deleted_only_at_its_revision,
    a_deployer_reports_the_statuses_of_its_own_deployments,
    install_codes_are_single_use_and_expire,
    stages_are_ordered_renamed_and_removed_only_when_empty,
    every_change_writes_one_audit_row_with_its_actor,
    the_audit_log_refuses_update_and_delete,
    group_committed_creates_are_each_audited_once,
    users_are_created_once_listed_and_deleted_with_their_keys,
    api_keys_belong_to_users_and_expire,
    the_last_gateway_admin_and_its_last_key_stay,
    of_two_concurrent_removals_of_the_last_admins_one_is_refused,
    groups_have_members_and_are_deleted_with_their_grants,
    grants_are_one_role_per_group_and_deployer,
    an_upgraded_database_gives_its_api_keys_to_the_admin_user,
    team_changes_are_audited_once_with_their_actor,
    a_deployers_remapping_is_edited_audited_and_kept_with_the_revisions_it_made,
    hooks_are_added_listed_removed_and_their_runs_recorded_and_audited,
);

/// Registers deployer `name` with the token `tok-NAME`, secret `NAME`.
async fn register(store: &Arc<dyn Store>, name: &str) -> DeployerRecord {
    store
        .create_deployer(name, &format!("tok-{name}"), hash(name))
        .await
        .unwrap()
}

/// Creates deployment `name` (one replica of model `name`) in `namespace`.
async fn deploy(
    store: &Arc<dyn Store>,
    deployer_id: &str,
    namespace: &str,
    name: &str,
) -> DeploymentRecord {
    store
        .create_deployment(deployer_id, name, namespace, &spec(name, 1))
        .await
        .unwrap()
}

// === api keys ===

async fn api_keys_are_unique_and_found_by_id(b: Backend) -> Backend {
    let store = b.store();
    assert!(!store.has_api_key().await.unwrap());
    store
        .add_api_key(&ChangeBy::default(), "key1", hash("k1"))
        .await
        .unwrap();
    assert!(store.has_api_key().await.unwrap());
    // A second key with a taken ID is refused as a duplicate, not as a database failure,
    // and the first key keeps working.
    match store
        .add_api_key(&ChangeBy::default(), "key1", hash("k2"))
        .await
    {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("a duplicate API key ID must be AlreadyExists, got {other:?}"),
    }
    let key = store.find_api_key("key1").await.unwrap().expect("key1");
    assert_eq!(key.hash, hash("k1"));
    assert!(key.deployer_id.is_empty() && key.expires_at.is_none());
    assert!(store.find_api_key("key2").await.unwrap().is_none());
    b
}

// === deployers ===

async fn deployers_are_registered_found_and_deleted(b: Backend) -> Backend {
    let store = b.store();
    let beta = register(&store, "beta").await;
    let alpha = register(&store, "alpha").await;
    assert_ne!(alpha.id, beta.id);
    assert_eq!(
        (alpha.name.as_str(), alpha.revision, alpha.deployments),
        ("alpha", 0, 0)
    );
    assert!(alpha.last_seen.is_none());
    match store.create_deployer("alpha", "tok-c", hash("c")).await {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("a taken deployer name must be AlreadyExists, got {other:?}"),
    }
    assert!(
        store.find_token("tok-c").await.unwrap().is_none(),
        "a refused registration leaves no token behind"
    );
    let names = || {
        let store = store.clone();
        async move {
            let listed = store.list_deployers().await.unwrap();
            listed.into_iter().map(|d| d.name).collect::<Vec<_>>()
        }
    };
    assert_eq!(names().await, ["alpha", "beta"]);
    assert_eq!(store.get_deployer("alpha").await.unwrap(), alpha);
    assert_eq!(store.get_deployer(&alpha.id).await.unwrap(), alpha);
    assert_eq!(
        store.resolve_deployer("beta").await.unwrap(),
        (beta.id.clone(), "beta".to_string())
    );
    // An ID wins over another deployer's name that happens to equal it.
    let impostor = store
        .create_deployer(&alpha.id, "tok-i", hash("i"))
        .await
        .unwrap();
    assert_eq!(store.get_deployer(&alpha.id).await.unwrap().name, "alpha");
    assert_eq!(store.resolve_deployer(&alpha.id).await.unwrap().1, "alpha");
    store
        .delete_deployer(&ChangeBy::default(), &impostor.id)
        .await
        .unwrap();
    for unknown in [
        store.get_deployer("gamma").await.err(),
        store.resolve_deployer("gamma").await.err(),
    ] {
        assert!(
            matches!(unknown, Some(StoreError::NotFound(_))),
            "{unknown:?}"
        );
    }

    // Deleting a deployer ends its watchers and takes its deployments and tokens along.
    let x = deploy(&store, &alpha.id, "models", "x").await;
    assert_eq!(store.get_deployer("alpha").await.unwrap().deployments, 1);
    let mut watch = store.hub().subscribe(&alpha.id);
    store
        .delete_deployer(&ChangeBy::default(), &alpha.id)
        .await
        .unwrap();
    assert_eq!(next_hub_change(&mut watch).await, Change::DeployerDeleted);
    assert!(matches!(
        store.get_deployer("alpha").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get_deployment(&x.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.find_token("tok-alpha").await.unwrap().is_none());
    assert!(matches!(
        store.delete_deployer(&ChangeBy::default(), &alpha.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(names().await, ["beta"]);
    b
}

// === tokens ===

async fn rotated_tokens_keep_working_until_their_deadline(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let t1 = store
        .find_token("tok-alpha")
        .await
        .unwrap()
        .expect("its token");
    assert_eq!(
        (t1.deployer_id.as_str(), t1.hash),
        (d.id.as_str(), hash("alpha"))
    );
    assert!(t1.expires_at.is_none());
    // Per token of the deployer: None when gone, Some(None) while current, Some(Some(ms))
    // while it works until that deadline.
    let tokens = || {
        let store = store.clone();
        async move {
            let mut states = Vec::new();
            for token in ["tok-alpha", "tok2", "tok3", "tok4"] {
                let found = store.find_token(token).await.unwrap();
                states.push(found.map(|t| t.expires_at.map(|e| e.timestamp_millis())));
            }
            states
        }
    };
    let rotate = |token: &'static str, deadline: chrono::DateTime<chrono::Utc>| {
        let store = store.clone();
        let deployer = d.id.clone();
        async move {
            store
                .rotate_token(
                    &ChangeBy::default(),
                    &deployer,
                    token,
                    hash(token),
                    deadline,
                )
                .await
                .unwrap()
        }
    };
    let now = chrono::Utc::now();
    let soon = now + chrono::Duration::minutes(10);
    let later = now + chrono::Duration::minutes(20);
    let (soon_ms, later_ms) = (soon.timestamp_millis(), later.timestamp_millis());
    rotate("tok2", soon).await;
    assert_eq!(
        tokens().await,
        [Some(Some(soon_ms)), Some(None), None, None]
    );
    // A second rotation within the window keeps the first deadline.
    rotate("tok3", later).await;
    assert_eq!(
        tokens().await,
        [Some(Some(soon_ms)), Some(Some(later_ms)), Some(None), None]
    );
    // A rotation without overlap revokes the current token at once; the others keep
    // their windows.
    rotate("tok4", now - chrono::Duration::seconds(1)).await;
    assert_eq!(
        tokens().await,
        [Some(Some(soon_ms)), Some(Some(later_ms)), None, Some(None)]
    );
    assert!(matches!(
        store
            .rotate_token(&ChangeBy::default(), "no-such", "tok5", hash("t5"), soon)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.find_token("tok5").await.unwrap().is_none());
    b
}

// === deployments ===

async fn deployments_change_at_increasing_revisions(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let mut changes = store.hub().subscribe(&d.id);
    let a = deploy(&store, &d.id, "models", "a").await;
    let b2 = deploy(&store, &d.id, "models", "b").await;
    assert_eq!((a.revision, b2.revision), (1, 2));
    assert_eq!(
        (a.deployer_id.as_str(), a.namespace.as_str()),
        (d.id.as_str(), "models")
    );
    assert!(matches!(
        store
            .create_deployment(&d.id, "a", "models", &spec("a", 1))
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    // The same name in another namespace is another deployment.
    let c = deploy(&store, &d.id, "other", "a").await;
    assert_eq!(c.revision, 3, "a refused create does not use up a revision");
    assert!(matches!(
        store
            .create_deployment("no-such", "x", "models", &spec("x", 1))
            .await,
        Err(StoreError::NotFound(_))
    ));

    assert!(matches!(
        store.update_deployment(&a.id, 2, &spec("a", 3)).await,
        Err(StoreError::Conflict(_))
    ));
    let a2 = store
        .update_deployment(&a.id, 1, &spec("a", 3))
        .await
        .unwrap();
    assert_eq!((a2.revision, a2.spec.replicas), (4, 3));
    assert_eq!(a2.created_at, a.created_at);
    assert!(a2.updated_at >= a.updated_at);
    assert_eq!(store.get_deployment(&a.id).await.unwrap(), a2);
    let (removed, revision) = store
        .delete_deployment(&ChangeBy::default(), &b2.id)
        .await
        .unwrap();
    assert_eq!((removed, revision), (b2.clone(), 5));
    for gone in [
        store
            .delete_deployment(&ChangeBy::default(), &b2.id)
            .await
            .err(),
        store.get_deployment(&b2.id).await.err(),
        store
            .update_deployment(&b2.id, 2, &spec("b", 2))
            .await
            .err(),
    ] {
        assert!(matches!(gone, Some(StoreError::NotFound(_))), "{gone:?}");
    }

    // Watchers saw every change once, in revision order, with what changed.
    assert_eq!(
        next_hub_change(&mut changes).await,
        Change::Upsert(Arc::new(a.clone()))
    );
    for expected in [2, 3] {
        assert_eq!(next_hub_change(&mut changes).await.revision(), expected);
    }
    assert_eq!(
        next_hub_change(&mut changes).await,
        Change::Upsert(Arc::new(a2.clone()))
    );
    assert_eq!(
        next_hub_change(&mut changes).await,
        Change::Removal {
            revision: 5,
            id: b2.id.clone(),
            namespace: "models".into(),
            name: "b".into(),
        }
    );
    let deployer = store.get_deployer(&d.id).await.unwrap();
    assert_eq!((deployer.revision, deployer.deployments), (5, 2));
    b
}

async fn a_snapshot_is_the_complete_state_at_its_revision(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    assert_eq!(store.snapshot(&d.id).await.unwrap(), (0, Vec::new()));
    let z = deploy(&store, &d.id, "models", "z").await;
    let a = deploy(&store, &d.id, "zeta", "a").await;
    let m = deploy(&store, &d.id, "models", "m").await;
    store
        .delete_deployment(&ChangeBy::default(), &m.id)
        .await
        .unwrap();
    let z2 = store
        .update_deployment(&z.id, z.revision, &spec("z", 2))
        .await
        .unwrap();
    // By namespace, then name; each at the revision of its last change.
    assert_eq!(store.snapshot(&d.id).await.unwrap(), (5, vec![z2, a]));
    assert!(matches!(
        store.snapshot("no-such").await,
        Err(StoreError::NotFound(_))
    ));
    b
}

async fn revisions_are_per_deployer_and_survive_a_restart(b: Backend) -> Backend {
    let store = b.store();
    let alpha = register(&store, "alpha").await;
    let beta = register(&store, "beta").await;
    let x = deploy(&store, &alpha.id, "models", "x").await;
    let y = deploy(&store, &beta.id, "models", "y").await;
    assert_eq!((x.revision, y.revision), (1, 1));
    store
        .update_deployment(&x.id, 1, &spec("x", 2))
        .await
        .unwrap();
    let z = deploy(&store, &beta.id, "models", "z").await;
    assert_eq!(z.revision, 2);
    assert_eq!(
        store
            .delete_deployment(&ChangeBy::default(), &y.id)
            .await
            .unwrap()
            .1,
        3
    );
    assert_eq!(store.snapshot(&alpha.id).await.unwrap().0, 2);
    assert_eq!(store.snapshot(&beta.id).await.unwrap().0, 3);

    // A restarted gateway continues each deployer's revisions where they were.
    let b = b.reopen().await;
    let store = b.store();
    assert_eq!(store.snapshot(&beta.id).await.unwrap(), (3, vec![z]));
    assert_eq!(store.get_deployer(&alpha.id).await.unwrap().revision, 2);
    let w = deploy(&store, &alpha.id, "models", "w").await;
    assert_eq!(w.revision, 3);
    b
}

async fn concurrent_creates_get_distinct_gap_free_revisions(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let mut changes = store.hub().subscribe(&d.id);
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..24 {
        let store = store.clone();
        let deployer = d.id.clone();
        // The last one takes a name another racer also creates.
        let name = format!("m{}", i % 23);
        racers.spawn(async move {
            store
                .create_deployment(&deployer, &name, "models", &spec(&name, 1))
                .await
        });
    }
    let mut revisions = Vec::new();
    let mut taken = 0;
    while let Some(outcome) = racers.join_next().await {
        match outcome.unwrap() {
            Ok(created) => revisions.push(created.revision),
            Err(StoreError::AlreadyExists(_)) => taken += 1,
            Err(other) => panic!("unexpected create outcome {other:?}"),
        }
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=23).collect::<Vec<u64>>());
    assert_eq!(taken, 1);
    let mut seen = Vec::new();
    for _ in 0..23 {
        seen.push(next_hub_change(&mut changes).await.revision());
    }
    assert_eq!(
        seen,
        (1..=23).collect::<Vec<u64>>(),
        "published in revision order"
    );
    let (revision, deployments) = store.snapshot(&d.id).await.unwrap();
    assert_eq!((revision, deployments.len()), (23, 23));
    b
}

async fn of_concurrent_updates_from_one_revision_exactly_one_wins(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let x = deploy(&store, &d.id, "models", "x").await;
    let mut changes = store.hub().subscribe(&d.id);
    let mut racers = tokio::task::JoinSet::new();
    for replicas in 2..10 {
        let store = store.clone();
        let id = x.id.clone();
        racers.spawn(async move { store.update_deployment(&id, 1, &spec("x", replicas)).await });
    }
    let mut won = Vec::new();
    let mut conflicts = 0;
    while let Some(outcome) = racers.join_next().await {
        match outcome.unwrap() {
            Ok(updated) => won.push(updated),
            Err(StoreError::Conflict(_)) => conflicts += 1,
            Err(other) => panic!("unexpected update outcome {other:?}"),
        }
    }
    assert_eq!(
        (won.len(), conflicts),
        (1, 7),
        "one writer wins, the others must re-read"
    );
    let winner = won.pop().unwrap();
    assert_eq!(winner.revision, 2, "refused updates use up no revision");
    assert_eq!(
        store.snapshot(&d.id).await.unwrap(),
        (2, vec![winner.clone()])
    );
    assert_eq!(
        next_hub_change(&mut changes).await,
        Change::Upsert(Arc::new(winner))
    );
    b
}

async fn deployments_are_listed_and_found_by_id_or_name(b: Backend) -> Backend {
    let store = b.store();
    let alpha = register(&store, "alpha").await;
    let beta = register(&store, "beta").await;
    let mut made = Vec::new();
    for (deployer, namespace, name) in [
        (&beta.id, "models", "iris"),
        (&alpha.id, "prod", "iris"),
        (&alpha.id, "models", "wine"),
        (&alpha.id, "models", "iris"),
    ] {
        made.push(deploy(&store, deployer, namespace, name).await);
    }
    let key = |d: &DeploymentRecord| (d.deployer_id.clone(), d.namespace.clone(), d.name.clone());
    let mut expected = made.clone();
    expected.sort_by_key(key);
    assert_eq!(store.list_deployments(None).await.unwrap(), expected);
    let of_alpha: Vec<_> = expected
        .iter()
        .filter(|d| d.deployer_id == alpha.id)
        .cloned()
        .collect();
    assert_eq!(
        store.list_deployments(Some(&alpha.id)).await.unwrap(),
        of_alpha
    );

    let find = |deployment: &str, deployer_id: Option<&str>, namespace: Option<&str>| {
        let store = store.clone();
        let selector = DeploymentSelector {
            deployment: deployment.to_string(),
            deployer_id: deployer_id.map(str::to_string),
            namespace: namespace.map(str::to_string),
        };
        async move { store.find_deployments(&selector).await.unwrap() }
    };
    assert_eq!(find(&made[2].id, None, None).await, [made[2].clone()]);
    assert_eq!(find("iris", None, None).await.len(), 3);
    assert_eq!(find("iris", Some(&alpha.id), None).await.len(), 2);
    assert_eq!(
        find("iris", Some(&alpha.id), Some("prod")).await,
        [made[1].clone()]
    );
    assert_eq!(find("iris", None, Some("models")).await.len(), 2);
    assert!(find("iris", Some(&beta.id), Some("prod")).await.is_empty());
    assert!(find("nothing", None, None).await.is_empty());
    b
}

/// The key after which the next page starts: the last deployment of a page.
fn key_of(d: &DeploymentRecord) -> DeploymentKey {
    DeploymentKey {
        deployer_id: d.deployer_id.clone(),
        namespace: d.namespace.clone(),
        name: d.name.clone(),
    }
}

/// Reads every page of `limit` deployments (of `deployer_id`, or all) the way the gateway
/// does, each page after the last key of the one before.
async fn read_pages(
    store: &Arc<dyn Store>,
    deployer_id: Option<&str>,
    limit: u32,
) -> Vec<Vec<DeploymentRecord>> {
    let mut pages = Vec::new();
    let mut after: Option<DeploymentKey> = None;
    loop {
        let page = store
            .list_deployments_page(deployer_id, after.as_ref(), limit)
            .await
            .unwrap();
        assert!(
            page.len() <= limit as usize,
            "a page holds at most its limit"
        );
        let Some(last) = page.last() else { break };
        after = Some(key_of(last));
        let short = page.len() < limit as usize;
        pages.push(page);
        if short {
            break;
        }
    }
    pages
}

async fn pages_of_deployments_cover_the_list_once_in_order(b: Backend) -> Backend {
    let store = b.store();
    let alpha = register(&store, "alpha").await;
    let beta = register(&store, "beta").await;
    // Names and namespaces that sort differently as strings and by creation order, and
    // a name repeated across namespaces and deployers.
    for (deployer, namespace, name) in [
        (&beta.id, "models", "iris"),
        (&alpha.id, "prod", "iris"),
        (&alpha.id, "models", "wine"),
        (&alpha.id, "models", "iris"),
        (&alpha.id, "a", "zeta"),
        (&beta.id, "a", "b"),
        (&alpha.id, "models", "iris2"),
    ] {
        deploy(&store, deployer, namespace, name).await;
    }
    let all = store.list_deployments(None).await.unwrap();
    for limit in [1, 2, 3, 7, 100] {
        let pages = read_pages(&store, None, limit).await;
        assert_eq!(pages.concat(), all, "pages of {limit}");
        let of_alpha = read_pages(&store, Some(&alpha.id), limit).await.concat();
        assert_eq!(
            of_alpha,
            store.list_deployments(Some(&alpha.id)).await.unwrap(),
            "alpha's pages of {limit}"
        );
    }
    // A page after the very last key is empty; a deployment created meanwhile that sorts
    // after the key is on the next page, one that sorts before it is not (keyset paging).
    let first = store.list_deployments_page(None, None, 3).await.unwrap();
    let last_key = key_of(first.last().unwrap());
    // (Deployer IDs are random: both new ones go to the last key's deployer.)
    let early = deploy(&store, &last_key.deployer_id, "0-first", "early").await;
    let late = deploy(&store, &last_key.deployer_id, "zz", "late").await;
    let rest = read_pages(&store, None, 100).await.concat();
    let after: Vec<_> = store
        .list_deployments_page(None, Some(&last_key), 100)
        .await
        .unwrap();
    assert!(!after.contains(&early), "sorts before the key");
    assert!(after.contains(&late), "sorts after the key");
    assert!(rest.contains(&early) && rest.contains(&late));
    let end = key_of(rest.last().unwrap());
    assert!(
        store
            .list_deployments_page(None, Some(&end), 10)
            .await
            .unwrap()
            .is_empty()
    );
    b
}

async fn a_streamed_snapshot_is_the_snapshot(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let other = register(&store, "beta").await;
    deploy(&store, &other.id, "models", "not-mine").await;
    for i in 0..25 {
        deploy(&store, &d.id, "models", &format!("m{i:02}")).await;
    }
    let gone = deploy(&store, &d.id, "models", "gone").await;
    store
        .delete_deployment(&ChangeBy::default(), &gone.id)
        .await
        .unwrap();
    // A channel smaller than the snapshot: the read waits for the reader.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn(async move {
        let mut items = Vec::new();
        while let Some(item) = rx.recv().await {
            items.push(item);
        }
        items
    });
    store.stream_snapshot(&d.id, tx).await.unwrap();
    let items = reader.await.unwrap();
    let (revision, deployments) = store.snapshot(&d.id).await.unwrap();
    let mut streamed = Vec::new();
    let mut revisions = Vec::new();
    for item in items {
        match item {
            SnapshotItem::Revision(r) => revisions.push(r),
            SnapshotItem::Deployment(dep) => {
                assert_eq!(revisions.len(), 1, "the revision comes first, once");
                streamed.push(*dep);
            }
        }
    }
    assert_eq!(revisions, [revision]);
    assert_eq!(streamed, deployments);
    assert_eq!(streamed.len(), 25);
    let (tx, _) = tokio::sync::mpsc::channel(1);
    assert!(matches!(
        store.stream_snapshot("no-such", tx).await,
        Err(StoreError::NotFound(_))
    ));
    b
}

fn by(actor: &str) -> ChangeBy {
    ChangeBy::new(actor, format!("req-{actor}"))
}

async fn revisions_are_numbered_per_deployment_with_who_and_what_they_reached(
    b: Backend,
) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let iris = store
        .create_deployment_by(&by("key aaaa"), &d.id, "iris", "models", &spec("iris", 1))
        .await
        .unwrap();
    let other = deploy(&store, &d.id, "models", "other").await;
    let mut current = iris.clone();
    for (actor, replicas) in [("key bbbb", 2), ("key cccc", 3)] {
        current = store
            .update_deployment_by(
                &by(actor),
                &iris.id,
                current.revision,
                &spec("iris", replicas),
            )
            .await
            .unwrap();
    }
    let revisions = store.list_revisions(&iris.id).await.unwrap();
    let seen: Vec<_> = revisions
        .iter()
        .map(|r| (r.number, r.actor.as_str(), r.spec.replicas, r.phase))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "key aaaa", 1, None),
            (2, "key bbbb", 2, None),
            (3, "key cccc", 3, None)
        ]
    );
    assert_eq!(revisions[0].deployer_revision, iris.revision);
    assert_eq!(revisions[2].deployer_revision, current.revision);
    assert!(
        revisions
            .windows(2)
            .all(|w| w[0].created_at <= w[1].created_at)
    );
    // Numbered per deployment: the other one has its own revision 1, by nobody known.
    let theirs = store.list_revisions(&other.id).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!((theirs[0].number, theirs[0].actor.as_str()), (1, ""));

    // What a revision reached: the first final status reported at its deployer revision.
    let mut available = status(&iris.id, 3);
    available.applied_revision = current.revision;
    store.put_statuses(&d.id, &[available]).await.unwrap();
    let mut failed = status(&iris.id, 4);
    failed.applied_revision = current.revision;
    store.put_statuses(&d.id, &[failed]).await.unwrap();
    let mut progressing = status(&iris.id, 2);
    progressing.applied_revision = revisions[1].deployer_revision;
    store.put_statuses(&d.id, &[progressing]).await.unwrap();
    let phases: Vec<_> = store
        .list_revisions(&iris.id)
        .await
        .unwrap()
        .iter()
        .map(|r| r.phase)
        .collect();
    assert_eq!(phases, [None, None, Some(3)]);

    // Only the newest are kept once a limit is set; numbering goes on.
    store.set_revision_history(2);
    let latest = store
        .update_deployment_by(
            &by("key dddd"),
            &iris.id,
            current.revision,
            &spec("iris", 4),
        )
        .await
        .unwrap();
    let kept: Vec<u64> = store
        .list_revisions(&iris.id)
        .await
        .unwrap()
        .iter()
        .map(|r| r.number)
        .collect();
    assert_eq!(kept, [3, 4]);
    // A failed update makes no revision.
    assert!(matches!(
        store
            .update_deployment_by(
                &by("key eeee"),
                &iris.id,
                current.revision,
                &spec("iris", 9)
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.list_revisions(&iris.id).await.unwrap().len(), 2);
    // Gone with the deployment.
    store
        .delete_deployment(&ChangeBy::default(), &latest.id)
        .await
        .unwrap();
    assert!(matches!(
        store.list_revisions(&iris.id).await,
        Err(StoreError::NotFound(_))
    ));
    b
}

async fn an_upgraded_database_keeps_each_deployments_spec_as_revision_1(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let iris = deploy(&store, &d.id, "models", "iris").await;
    let iris = store
        .update_deployment(&iris.id, iris.revision, &spec("iris", 5))
        .await
        .unwrap();
    drop(store);
    // As the release before revisions left it: no table, its migration not applied, nor
    // remapping's, which came later and adds a column to that table.
    b.raw(
        "DROP TABLE deployment_revisions; \
         ALTER TABLE deployers DROP COLUMN remap; \
         DELETE FROM _sqlx_migrations WHERE description IN ('revisions', 'remap')",
    )
    .await;
    let b = b.reopen().await;
    let store = b.store();
    let revisions = store.list_revisions(&iris.id).await.unwrap();
    assert_eq!(revisions.len(), 1);
    let r = &revisions[0];
    assert_eq!((r.number, r.spec.replicas), (1, 5));
    assert_eq!(r.deployer_revision, iris.revision);
    assert_eq!(r.note, "the spec when revisions began to be kept");
    // And it goes on from there.
    store
        .update_deployment(&iris.id, iris.revision, &spec("iris", 6))
        .await
        .unwrap();
    assert_eq!(store.list_revisions(&iris.id).await.unwrap()[1].number, 2);
    b
}

// === agents: heartbeats and statuses ===

async fn object_counts_are_kept_and_a_deployer_is_deleted_only_at_its_revision(
    b: Backend,
) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    assert_eq!(d.objects, None, "never reported");
    let counted = AgentHeartbeat {
        objects: Some(ObjectCount {
            revision: 0,
            owned: 3,
        }),
        ..Default::default()
    };
    store.record_heartbeat(&d.id, &counted).await.unwrap();
    let seen = store.get_deployer(&d.id).await.unwrap();
    assert_eq!(seen.objects, counted.objects);
    // A report without a count (a Watch opening) keeps the stored one.
    store
        .record_heartbeat(&d.id, &AgentHeartbeat::default())
        .await
        .unwrap();
    assert_eq!(
        store.get_deployer(&d.id).await.unwrap().objects,
        counted.objects
    );
    assert_eq!(
        store.list_deployers().await.unwrap()[0].objects,
        counted.objects
    );

    // Deleting at a revision it no longer has is a conflict and deletes nothing.
    deploy(&store, &d.id, "models", "x").await;
    assert!(matches!(
        store
            .delete_deployer_at(&ChangeBy::default(), &d.id, 0)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let now = store.get_deployer(&d.id).await.unwrap();
    assert_eq!(now.revision, 1);
    store
        .delete_deployer_at(&ChangeBy::default(), &d.id, now.revision)
        .await
        .unwrap();
    assert!(matches!(
        store
            .delete_deployer_at(&ChangeBy::default(), &d.id, now.revision)
            .await,
        Err(StoreError::NotFound(_))
    ));
    b
}

async fn heartbeats_show_on_the_deployer(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let beat = AgentHeartbeat {
        version: "1.2.3".into(),
        cluster: "kind".into(),
        instance: "pod-0".into(),
        namespaces: vec!["a".into(), "b".into()],
        objects: None,
    };
    assert_eq!(store.record_heartbeat(&d.id, &beat).await.unwrap(), 0);
    let seen = store.get_deployer(&d.id).await.unwrap();
    assert_eq!(
        (
            seen.agent_version.as_str(),
            seen.cluster.as_str(),
            seen.instance.as_str()
        ),
        ("1.2.3", "kind", "pod-0")
    );
    assert_eq!(seen.agent_namespaces, ["a", "b"]);
    assert!(seen.last_seen.is_some());
    // The answer carries the latest revision, for the agent to detect a gap.
    deploy(&store, &d.id, "models", "x").await;
    let cluster_wide = AgentHeartbeat {
        namespaces: Vec::new(),
        ..beat
    };
    assert_eq!(
        store.record_heartbeat(&d.id, &cluster_wide).await.unwrap(),
        1
    );
    assert!(
        store.list_deployers().await.unwrap()[0]
            .agent_namespaces
            .is_empty()
    );
    assert!(matches!(
        store.record_heartbeat("no-such", &cluster_wide).await,
        Err(StoreError::NotFound(_))
    ));
    b
}

fn status(id: &str, phase: i32) -> StatusRecord {
    StatusRecord {
        deployment_id: id.to_string(),
        phase,
        ready_replicas: 2,
        available_replicas: 2,
        updated_replicas: 1,
        applied_revision: 1,
        endpoint: "http://x.models.svc:8080".into(),
        last_error: String::new(),
        reason: String::new(),
        pods: Vec::new(),
        updated_at: None,
    }
}

async fn a_deployer_reports_the_statuses_of_its_own_deployments(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let other = register(&store, "beta").await;
    let x = deploy(&store, &d.id, "models", "x").await;
    let y = deploy(&store, &other.id, "models", "y").await;
    assert!(store.get_status(&x.id).await.unwrap().is_none());
    assert!(store.put_statuses(&d.id, &[]).await.unwrap().is_empty());

    let mut touched = store.hub().subscribe_touched();
    let stored = store
        .put_statuses(
            &d.id,
            &[status(&x.id, 3), status(&y.id, 3), status("no-such", 3)],
        )
        .await
        .unwrap();
    assert_eq!(stored, std::slice::from_ref(&x.id));
    let woken = tokio::time::timeout(DEADLINE, touched.recv())
        .await
        .expect("status watchers woken in time")
        .unwrap();
    assert_eq!(woken, x.id);
    let got = store.get_status(&x.id).await.unwrap().expect("stored");
    assert!(got.updated_at.is_some());
    assert_eq!(
        got,
        StatusRecord {
            updated_at: got.updated_at,
            ..status(&x.id, 3)
        }
    );
    assert!(store.get_status(&y.id).await.unwrap().is_none());

    // A later report replaces the earlier one.
    let pod = ds_core::proto::PodStatus {
        name: "x-1".into(),
        phase: "Pending".into(),
        containers: vec![ds_core::proto::ContainerState {
            name: "model".into(),
            state: "waiting".into(),
            reason: "ImagePullBackOff".into(),
            message: "Back-off pulling image \"nope:1\"".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let newer = StatusRecord {
        last_error: "image pull failed".into(),
        reason: "ImagePullBackOff: pod x-1: Back-off pulling image \"nope:1\"".into(),
        pods: vec![pod.clone()],
        ..status(&x.id, 5)
    };
    store.put_statuses(&d.id, &[newer]).await.unwrap();
    let all = store.list_statuses().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[&x.id].phase, all[&x.id].last_error.as_str()),
        (5, "image pull failed")
    );
    // The pods' reason and states come back as reported.
    assert!(all[&x.id].reason.starts_with("ImagePullBackOff: pod x-1"));
    assert_eq!(all[&x.id].pods, vec![pod]);
    // A deleted deployment's status goes with it.
    store
        .delete_deployment(&ChangeBy::default(), &x.id)
        .await
        .unwrap();
    assert!(store.get_status(&x.id).await.unwrap().is_none());
    assert!(store.list_statuses().await.unwrap().is_empty());
    b
}

// === install codes ===

/// Lets `racers` fetches race for one code, spread over the `replicas`, and checks that
/// exactly one wins and only the winner's token was issued; returns what it won.
pub(crate) async fn race_for_code(
    replicas: &[Arc<dyn InstallCodes>],
    store: &Arc<dyn Store>,
    code: [u8; 32],
    racers: usize,
) -> (String, InstallOptions) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..racers {
        let codes = replicas[i % replicas.len()].clone();
        set.spawn(async move {
            codes
                .redeem_code(
                    &ChangeBy::default(),
                    code,
                    &format!("issued{i}"),
                    hash(&format!("s{i}")),
                )
                .await
                .map(|won| (won, i))
        });
    }
    let mut won = Vec::new();
    let mut used = 0;
    while let Some(outcome) = set.join_next().await {
        match outcome.unwrap() {
            Ok(x) => won.push(x),
            Err(RedeemError::Used) => used += 1,
            Err(other) => panic!("unexpected redeem outcome {other:?}"),
        }
    }
    assert_eq!(
        (won.len(), used),
        (1, racers - 1),
        "exactly one fetch gets the manifest"
    );
    let ((deployer_id, options), winner) = won.pop().unwrap();
    let token = store
        .find_token(&format!("issued{winner}"))
        .await
        .unwrap()
        .expect("the winner's token");
    assert_eq!(
        (token.deployer_id.as_str(), token.hash, token.expires_at),
        (deployer_id.as_str(), hash(&format!("s{winner}")), None)
    );
    for i in (0..racers).filter(|i| *i != winner) {
        let token = store.find_token(&format!("issued{i}")).await.unwrap();
        assert!(token.is_none(), "a losing fetch issued no token");
    }
    (deployer_id, options)
}

async fn install_codes_are_single_use_and_expire(b: Backend) -> Backend {
    let store = b.store();
    let codes = b.codes();
    let d = register(&store, "alpha").await;
    let options = InstallOptions {
        namespace: "ds-system".into(),
        cluster_name: "kind-1".into(),
        create_namespaces: false,
        target_namespaces: vec!["models".into()],
    };
    let now = chrono::Utc::now();
    let soon = now + chrono::Duration::minutes(5);
    codes
        .create_code(&ChangeBy::default(), hash("code"), &d.id, soon, &options)
        .await
        .unwrap();
    assert!(matches!(
        codes
            .create_code(
                &ChangeBy::default(),
                hash("other"),
                "no-such",
                soon,
                &options
            )
            .await,
        Err(StoreError::NotFound(_))
    ));

    let won = race_for_code(std::slice::from_ref(&codes), &store, hash("code"), 8).await;
    assert_eq!(won, (d.id.clone(), options.clone()));
    assert!(
        store.find_token("tok-alpha").await.unwrap().is_some(),
        "an install adds a token, it does not rotate"
    );

    codes
        .create_code(
            &ChangeBy::default(),
            hash("stale"),
            &d.id,
            now - chrono::Duration::seconds(1),
            &options,
        )
        .await
        .unwrap();
    assert!(matches!(
        codes
            .redeem_code(&ChangeBy::default(), hash("stale"), "t9", hash("t9"))
            .await,
        Err(RedeemError::Expired)
    ));
    assert!(matches!(
        codes
            .redeem_code(&ChangeBy::default(), hash("never"), "t9", hash("t9"))
            .await,
        Err(RedeemError::Unknown)
    ));
    assert!(store.find_token("t9").await.unwrap().is_none());

    // Deleting the deployer voids its unused codes.
    codes
        .create_code(&ChangeBy::default(), hash("orphan"), &d.id, soon, &options)
        .await
        .unwrap();
    store
        .delete_deployer(&ChangeBy::default(), &d.id)
        .await
        .unwrap();
    assert!(matches!(
        codes
            .redeem_code(&ChangeBy::default(), hash("orphan"), "t10", hash("t10"))
            .await,
        Err(RedeemError::Unknown)
    ));
    b
}

// === stages ===

fn names(stages: &[ds_gateway::store::StageRecord]) -> Vec<&str> {
    stages.iter().map(|s| s.name.as_str()).collect()
}

async fn stages_are_ordered_renamed_and_removed_only_when_empty(b: Backend) -> Backend {
    let store = b.store();
    let admin = by("key a1");
    let stages = store.list_stages().await.unwrap();
    assert_eq!(names(&stages), ["Development", "Test", "Production"]);
    assert!(stages.iter().all(|s| s.deploy_by == DeployBy::Anyone));

    // A deployer is in the first stage unless told otherwise.
    let dev = register(&store, "dev1").await;
    assert_eq!(dev.stage, "Development");
    let prod = store
        .create_deployer_by(&admin, "prod1", "Production", "tok-p", hash("p"))
        .await
        .unwrap();
    assert_eq!(prod.stage, "Production");
    assert_eq!(
        store.get_deployer("prod1").await.unwrap().stage,
        "Production"
    );
    assert!(matches!(
        store
            .create_deployer_by(&admin, "nowhere", "Nowhere", "tok-n", hash("n"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.get_deployer("nowhere").await.is_err());

    // Placed after a stage, at a place, or last; names are unique.
    store
        .create_stage(
            &admin,
            "Staging",
            &StagePlace::After("Test".into()),
            DeployBy::Anyone,
        )
        .await
        .unwrap();
    store
        .create_stage(&admin, "Sandbox", &StagePlace::At(1), DeployBy::Anyone)
        .await
        .unwrap();
    let archive = store
        .create_stage(
            &admin,
            "Archive",
            &StagePlace::Last,
            DeployBy::ServiceAccounts,
        )
        .await
        .unwrap();
    assert_eq!(archive.deploy_by, DeployBy::ServiceAccounts);
    assert_eq!(
        names(&store.list_stages().await.unwrap()),
        [
            "Sandbox",
            "Development",
            "Test",
            "Staging",
            "Production",
            "Archive"
        ]
    );
    assert!(matches!(
        store
            .create_stage(&admin, "Test", &StagePlace::Last, DeployBy::Anyone)
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store
            .create_stage(
                &admin,
                "X",
                &StagePlace::After("Nope".into()),
                DeployBy::Anyone
            )
            .await,
        Err(StoreError::NotFound(_))
    ));

    // Deployers move between stages; an unknown stage changes nothing.
    let moved = store
        .update_deployer(
            &admin,
            &dev.id,
            &DeployerUpdate {
                stage: Some("Staging".into()),
                ..DeployerUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(moved.stage, "Staging");
    assert!(matches!(
        store
            .update_deployer(
                &admin,
                &dev.id,
                &DeployerUpdate {
                    stage: Some("Nope".into()),
                    ..DeployerUpdate::default()
                },
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.get_deployer(&dev.id).await.unwrap().stage, "Staging");

    // A stage with deployers is not removed, and the refusal names them.
    match store.delete_stage(&admin, "Staging").await {
        Err(StoreError::InUse(why)) => assert!(why.contains("dev1"), "{why}"),
        other => panic!("deleting a stage with deployers must be InUse, got {other:?}"),
    }
    assert_eq!(
        store.get_stage("Staging").await.unwrap().deployers,
        ["dev1"]
    );

    // Renamed, its deployers follow; a taken name is refused.
    let renamed = store
        .rename_stage(&admin, "Staging", "PreProd")
        .await
        .unwrap();
    assert_eq!(renamed.deployers, ["dev1"]);
    assert_eq!(store.get_deployer(&dev.id).await.unwrap().stage, "PreProd");
    assert!(matches!(
        store.get_stage("Staging").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.rename_stage(&admin, "PreProd", "Test").await,
        Err(StoreError::AlreadyExists(_))
    ));

    // The policy is kept.
    store
        .update_stage(&admin, "Production", DeployBy::ServiceAccounts)
        .await
        .unwrap();
    assert_eq!(
        store.get_stage("Production").await.unwrap().deploy_by,
        DeployBy::ServiceAccounts
    );

    // Empty again, it goes; the order of the rest stays.
    store
        .update_deployer(
            &admin,
            &dev.id,
            &DeployerUpdate {
                stage: Some("Test".into()),
                ..DeployerUpdate::default()
            },
        )
        .await
        .unwrap();
    store.delete_stage(&admin, "PreProd").await.unwrap();
    assert_eq!(
        names(&store.list_stages().await.unwrap()),
        ["Sandbox", "Development", "Test", "Production", "Archive"]
    );
    // Never the last stage.
    for name in ["Sandbox", "Development", "Archive"] {
        store.delete_stage(&admin, name).await.unwrap();
    }
    store
        .update_deployer(
            &admin,
            &prod.id,
            &DeployerUpdate {
                stage: Some("Test".into()),
                ..DeployerUpdate::default()
            },
        )
        .await
        .unwrap();
    store.delete_stage(&admin, "Production").await.unwrap();
    store.delete_deployer(&admin, &dev.id).await.unwrap();
    store.delete_deployer(&admin, &prod.id).await.unwrap();
    assert!(matches!(
        store.delete_stage(&admin, "Test").await,
        Err(StoreError::InUse(_))
    ));
    assert_eq!(names(&store.list_stages().await.unwrap()), ["Test"]);
    b
}

// === the audit log ===

async fn audit_all(store: &Arc<dyn Store>) -> Vec<AuditRecord> {
    store
        .list_audit(&AuditQuery {
            limit: 10_000,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

/// `(actor, action, object)` of every row.
fn summary(rows: &[AuditRecord]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|r| (r.actor.clone(), r.action.clone(), r.object.clone()))
        .collect()
}

fn row(actor: &str, action: &str, object: &str) -> (String, String, String) {
    (actor.into(), action.into(), object.into())
}

async fn every_change_writes_one_audit_row_with_its_actor(b: Backend) -> Backend {
    let store = b.store();
    let codes = b.codes();
    let (a, c) = (by("key aaaa"), by("key cccc"));
    let secret = "dst_0123456789abcdef_THE-SECRET-PART-OF-THE-TOKEN-xxxxxxxxxxxxx";
    store
        .add_api_key(&a, "0123abcd0123abcd", hash("the-api-key-secret"))
        .await
        .unwrap();
    let d = store
        .create_deployer_by(&a, "alpha", "Test", "0123456789abcdef", hash(secret))
        .await
        .unwrap();
    store
        .rotate_token(
            &c,
            &d.id,
            "fedcba9876543210",
            hash("rotated"),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let soon = chrono::Utc::now() + chrono::Duration::minutes(5);
    codes
        .create_code(
            &a,
            hash("the-install-code"),
            &d.id,
            soon,
            &InstallOptions::default(),
        )
        .await
        .unwrap();
    codes
        .redeem_code(
            &by("install-code x"),
            hash("the-install-code"),
            "1111222233334444",
            hash("t"),
        )
        .await
        .unwrap();
    let iris = store
        .create_deployment_by(&a, &d.id, "iris", "models", &spec("iris", 1))
        .await
        .unwrap();
    let iris2 = store
        .update_deployment_by(&c, &iris.id, iris.revision, &spec("iris", 2))
        .await
        .unwrap();
    let rollback = ChangeBy {
        action: Some("deployment.rollback"),
        ..a.with_note("rollback to revision 1")
    };
    store
        .update_deployment_by(&rollback, &iris.id, iris2.revision, &spec("iris", 1))
        .await
        .unwrap();
    store
        .update_deployer(
            &c,
            &d.id,
            &DeployerUpdate {
                stage: Some("Production".into()),
                ..DeployerUpdate::default()
            },
        )
        .await
        .unwrap();
    // Failed changes write nothing: a taken name, a stale revision, a stage in use.
    assert!(
        store
            .create_deployer_by(&a, "alpha", "", "x1", hash("x"))
            .await
            .is_err()
    );
    assert!(
        store
            .update_deployment_by(&a, &iris.id, iris.revision, &spec("iris", 7))
            .await
            .is_err()
    );
    assert!(store.delete_stage(&a, "Production").await.is_err());
    // Setting what is set already changes nothing either.
    store
        .update_deployer(
            &c,
            &d.id,
            &DeployerUpdate {
                stage: Some("Production".into()),
                ..DeployerUpdate::default()
            },
        )
        .await
        .unwrap();
    store.delete_deployment(&c, &iris.id).await.unwrap();
    store.delete_deployer(&a, &d.id).await.unwrap();
    store
        .record_denied(
            &ChangeBy::new("unknown", "req-x"),
            &AuditEvent::new("authenticate", "rpc", "ListDeployers"),
            "invalid API key",
        )
        .await
        .unwrap();

    let rows = audit_all(&store).await;
    assert_eq!(
        summary(&rows),
        [
            row("key aaaa", "api-key.create", "0123abcd0123abcd"),
            row("key aaaa", "deployer.create", "alpha"),
            row("key cccc", "deployer.rotate-token", "alpha"),
            row("key aaaa", "install-code.create", &rows[3].object),
            row("install-code x", "install-code.redeem", &rows[3].object),
            row("key aaaa", "deployment.create", "models/iris"),
            row("key cccc", "deployment.update", "models/iris"),
            row("key aaaa", "deployment.rollback", "models/iris"),
            row("key cccc", "deployer.update", "alpha"),
            row("key cccc", "deployment.delete", "models/iris"),
            row("key aaaa", "deployer.delete", "alpha"),
            row("unknown", "authenticate", "ListDeployers"),
        ]
    );
    assert!(
        rows.windows(2)
            .all(|w| w[0].id < w[1].id && w[0].at <= w[1].at)
    );
    assert!(rows[..11].iter().all(|r| r.outcome == Outcome::Ok));
    assert_eq!(rows[11].outcome, Outcome::Denied);
    assert_eq!(rows[11].reason, "invalid API key");
    assert_eq!(rows[7].reason, "rollback to revision 1");
    assert_eq!(rows[1].request_id, "req-key aaaa");
    // Before and after: what changed, as JSON.
    let json = |s: &Option<String>| -> serde_json::Value {
        serde_json::from_str(s.as_deref().expect("json")).unwrap()
    };
    assert_eq!(json(&rows[1].after)["stage"], "Test");
    assert_eq!(json(&rows[1].after)["token_id"], "0123456789abcdef");
    assert!(rows[1].before.is_none());
    assert_eq!(json(&rows[6].before)["spec"]["replicas"], 1);
    assert_eq!(json(&rows[6].after)["spec"]["replicas"], 2);
    assert_eq!(json(&rows[8].before)["stage"], "Test");
    assert_eq!(json(&rows[8].after)["stage"], "Production");
    assert!(rows[10].after.is_none());
    // Of the deployer, and kept after it is gone.
    let of_alpha = store
        .list_audit(&AuditQuery {
            deployer_id: Some(d.id.clone()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(of_alpha.len(), 10, "{:?}", summary(&of_alpha));
    let of_c = store
        .list_audit(&AuditQuery {
            actor: Some("key cccc".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(of_c.len(), 4);
    // Pages: after an ID, at most a limit.
    let page = store
        .list_audit(&AuditQuery {
            after_id: rows[2].id,
            limit: 2,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        [rows[3].id, rows[4].id]
    );
    let later = store
        .list_audit(&AuditQuery {
            since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert!(later.is_empty());
    // No secret, nor a hash of one, in any row.
    let all = format!("{rows:?}");
    for hidden in [
        secret.to_string(),
        hex::encode(hash(secret)),
        hex::encode(hash("the-api-key-secret")),
        "the-install-code".to_string(),
        hex::encode(hash("the-install-code")),
    ] {
        assert!(!all.contains(&hidden), "the audit log holds {hidden}");
    }
    b
}

async fn the_audit_log_refuses_update_and_delete(b: Backend) -> Backend {
    let store = b.store();
    register(&store, "alpha").await;
    let before = audit_all(&store).await;
    assert_eq!(before.len(), 1);
    for sql in [
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
    ] {
        let refused = b.raw_result(sql).await;
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("append-only")),
            "{sql}: {refused:?}"
        );
    }
    if let Backend::Postgres { .. } = b {
        assert!(b.raw_result("TRUNCATE audit_log").await.is_err());
    }
    assert_eq!(audit_all(&store).await, before);
    b
}

async fn group_committed_creates_are_each_audited_once(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "alpha").await;
    let creates = (0..24).map(|i| {
        let store = store.clone();
        let id = d.id.clone();
        async move {
            let name = format!("m{i}");
            store
                .create_deployment_by(
                    &ChangeBy::new(format!("key {i:04}"), format!("req-{i}")),
                    &id,
                    &name,
                    "models",
                    &spec(&name, 1),
                )
                .await
        }
    });
    let results = futures::future::join_all(creates).await;
    // Two creates of one name in a burst: exactly one is audited.
    let again = store
        .create_deployment_by(&by("key dup"), &d.id, "m0", "models", &spec("m0", 1))
        .await;
    assert!(matches!(again, Err(StoreError::AlreadyExists(_))));
    assert!(results.iter().all(Result::is_ok));
    let rows: Vec<AuditRecord> = audit_all(&store)
        .await
        .into_iter()
        .filter(|r| r.action == "deployment.create")
        .collect();
    assert_eq!(rows.len(), 24);
    let mut seen: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.object.clone(), r.actor.clone(), r.request_id.clone()))
        .collect();
    seen.sort();
    let mut want: Vec<(String, String, String)> = (0..24)
        .map(|i| {
            (
                format!("models/m{i}"),
                format!("key {i:04}"),
                format!("req-{i}"),
            )
        })
        .collect();
    want.sort();
    assert_eq!(seen, want);
    assert!(
        rows.iter()
            .all(|r| r.deployer_id.as_deref() == Some(d.id.as_str()))
    );
    b
}

// === upgrades ===

/// A deployer, a token and a deployment, as the release before stages wrote them;
/// `bytes` is the dialect's literal of a 32-byte hash.
fn before_stages(bytes: &str) -> sqlx::AssertSqlSafe<String> {
    let spec = serde_json::to_string(&spec("iris", 1)).unwrap();
    sqlx::AssertSqlSafe(format!(
        "INSERT INTO deployers (id, name, created_at, revision) VALUES ('d-old', 'old', 1, 1); \
         INSERT INTO tokens (id, deployer_id, hash, created_at) VALUES ('tok-old', 'd-old', {bytes}, 1); \
         INSERT INTO deployments (id, deployer_id, name, namespace, spec, revision, created_at, updated_at) \
         VALUES ('x-old', 'd-old', 'iris', 'models', '{spec}', 1, 1, 1);"
    ))
}

async fn check_upgraded(store: Arc<dyn Store>) {
    let old = store.get_deployer("old").await.unwrap();
    assert_eq!(old.stage, "Development");
    assert_eq!(old.deployments, 1);
    assert!(store.find_token("tok-old").await.unwrap().is_some());
    let stages = store.list_stages().await.unwrap();
    assert_eq!(names(&stages), ["Development", "Test", "Production"]);
    assert_eq!(stages[0].deployers, ["old"]);
    assert_eq!(
        store.list_deployments(Some("d-old")).await.unwrap().len(),
        1
    );
    // And it goes on from there: moved, audited.
    store
        .update_deployer(
            &by("key 1"),
            "d-old",
            &DeployerUpdate {
                stage: Some("Production".into()),
                ..DeployerUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(audit_all(&store).await.len(), 1);
}

#[tokio::test]
async fn sqlite_a_database_of_the_release_before_stages_opens_with_its_deployers_in_development() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/ds-gateway/src/migrations");
        let migrator = sqlx::migrate::Migrator::new(migrations).await.unwrap();
        // 0007 is the last migration of the release before; 0008 is not there yet.
        migrator.run_to(7, &mut conn).await.unwrap();
        sqlx::raw_sql(before_stages(&format!("X'{}'", "00".repeat(32))))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = Arc::new(
        SqliteStore::open_path(&path)
            .await
            .expect("open the old database"),
    );
    check_upgraded(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_a_database_of_the_release_before_stages_opens_with_its_deployers_in_development()
{
    use sqlx::Connection;
    let db = TestDb::new().await;
    {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/ds-gateway/src/migrations_pg");
        let migrator = sqlx::migrate::Migrator::new(migrations).await.unwrap();
        // 0004 is the last migration of the release before; 0005 is not there yet.
        migrator.run_to(4, &mut conn).await.unwrap();
        sqlx::raw_sql(before_stages(&format!("'\\x{}'::bytea", "00".repeat(32))))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = Arc::new(
        PgStore::open_url(&db.url)
            .await
            .expect("open the old database"),
    );
    check_upgraded(store.clone()).await;
    store.close().await;
    db.drop_db().await;
}

// === teams: users, API keys, groups, grants ===

async fn users_are_created_once_listed_and_deleted_with_their_keys(b: Backend) -> Backend {
    let store = b.store();
    // The migration made the built-in admin.
    let admin = store.get_user("admin").await.unwrap();
    assert!(admin.admin && admin.kind == UserKind::User);
    let ci = store
        .create_user(&ChangeBy::default(), "ci", UserKind::ServiceAccount, false)
        .await
        .unwrap();
    assert_eq!((ci.kind, ci.admin), (UserKind::ServiceAccount, false));
    match store
        .create_user(&ChangeBy::default(), "ci", UserKind::User, true)
        .await
    {
        Err(StoreError::AlreadyExists(what)) => assert_eq!(what, "user ci"),
        other => panic!("a taken user name must be AlreadyExists, got {other:?}"),
    }
    // The refused duplicate changed nothing.
    let again = store.get_user("ci").await.unwrap();
    assert_eq!((again.kind, again.admin), (UserKind::ServiceAccount, false));
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["admin", "ci"]);
    store
        .create_api_key(
            &ChangeBy::default(),
            "cikey0000000001",
            hash("ci-secret"),
            "ci",
            None,
        )
        .await
        .unwrap();
    store.delete_user(&ChangeBy::default(), "ci").await.unwrap();
    assert!(matches!(
        store.get_user("ci").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store
            .find_key_owner("cikey0000000001")
            .await
            .unwrap()
            .is_none(),
        "a deleted user's keys go with it"
    );
    assert!(matches!(
        store.delete_user(&ChangeBy::default(), "ci").await,
        Err(StoreError::NotFound(_))
    ));
    b
}

async fn api_keys_belong_to_users_and_expire(b: Backend) -> Backend {
    let store = b.store();
    store
        .create_user(&ChangeBy::default(), "alice", UserKind::User, false)
        .await
        .unwrap();
    let soon = chrono::Utc::now() + chrono::Duration::days(90);
    let key = store
        .create_api_key(
            &ChangeBy::default(),
            "a1",
            hash("a1-secret"),
            "alice",
            Some(soon),
        )
        .await
        .unwrap();
    assert_eq!(key.user, "alice");
    assert_eq!(
        key.expires_at.map(|t| t.timestamp_millis()),
        Some(soon.timestamp_millis())
    );
    store
        .create_api_key(&ChangeBy::default(), "a2", hash("a2-secret"), "alice", None)
        .await
        .unwrap();
    match store
        .create_api_key(&ChangeBy::default(), "a3", hash("x"), "nobody", None)
        .await
    {
        Err(StoreError::NotFound(what)) => assert_eq!(what, "user nobody"),
        other => panic!("a key of an unknown user must be NotFound, got {other:?}"),
    }
    match store
        .create_api_key(&ChangeBy::default(), "a1", hash("x"), "alice", None)
        .await
    {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("a taken key ID must be AlreadyExists, got {other:?}"),
    }
    let owner = store.find_key_owner("a1").await.unwrap().expect("a1");
    assert_eq!(owner.hash, hash("a1-secret"));
    assert_eq!(owner.user.name, "alice");
    assert_eq!(owner.key, key);
    let ids = |keys: Vec<ApiKeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_api_keys(Some("alice")).await.unwrap()),
        ["a1", "a2"]
    );
    // The bootstrap key belongs to the built-in admin.
    store
        .add_api_key(&ChangeBy::default(), "boot", hash("boot"))
        .await
        .unwrap();
    assert_eq!(
        store
            .find_key_owner("boot")
            .await
            .unwrap()
            .unwrap()
            .user
            .name,
        "admin"
    );
    assert_eq!(
        ids(store.list_api_keys(None).await.unwrap()),
        ["boot", "a1", "a2"]
    );
    assert_eq!(
        store
            .delete_api_key(&ChangeBy::default(), "a1")
            .await
            .unwrap()
            .id,
        "a1"
    );
    assert!(store.find_key_owner("a1").await.unwrap().is_none());
    assert!(matches!(
        store.delete_api_key(&ChangeBy::default(), "a1").await,
        Err(StoreError::NotFound(_))
    ));
    b
}

async fn the_last_gateway_admin_and_its_last_key_stay(b: Backend) -> Backend {
    let store = b.store();
    store
        .add_api_key(&ChangeBy::default(), "boot", hash("boot"))
        .await
        .unwrap();
    match store.delete_api_key(&ChangeBy::default(), "boot").await {
        Err(StoreError::Refused(why)) => assert!(why.contains("last valid key"), "{why}"),
        other => panic!("the last admin key must be refused, got {other:?}"),
    }
    match store.delete_user(&ChangeBy::default(), "admin").await {
        Err(StoreError::Refused(why)) => assert!(why.contains("last gateway admin"), "{why}"),
        other => panic!("the last admin must be refused, got {other:?}"),
    }
    // Both still work.
    assert!(store.find_key_owner("boot").await.unwrap().is_some());
    // An expired key of another admin does not count as a way in.
    store
        .create_user(&ChangeBy::default(), "root", UserKind::User, true)
        .await
        .unwrap();
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    store
        .create_api_key(&ChangeBy::default(), "old", hash("old"), "root", Some(past))
        .await
        .unwrap();
    assert!(matches!(
        store.delete_api_key(&ChangeBy::default(), "boot").await,
        Err(StoreError::Refused(_))
    ));
    // With another admin's valid key, the first admin may go.
    store
        .create_api_key(&ChangeBy::default(), "new", hash("new"), "root", None)
        .await
        .unwrap();
    store
        .delete_user(&ChangeBy::default(), "admin")
        .await
        .unwrap();
    assert!(store.find_key_owner("boot").await.unwrap().is_none());
    b
}

async fn of_two_concurrent_removals_of_the_last_admins_one_is_refused(b: Backend) -> Backend {
    let store = b.store();
    store
        .add_api_key(&ChangeBy::default(), "boot", hash("boot"))
        .await
        .unwrap();
    // Rounds of two admins removed together: each alone would be fine (the other stays),
    // together one must be refused. Several rounds, so that the two interleave.
    for round in 0..8 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        for name in [&x, &y] {
            store
                .create_user(&ChangeBy::default(), name, UserKind::User, true)
                .await
                .unwrap();
            store
                .create_api_key(
                    &ChangeBy::default(),
                    &format!("k-{name}"),
                    hash(name),
                    name,
                    None,
                )
                .await
                .unwrap();
        }
        // The admins of the rounds before leave: x and y are the only ones.
        let admins: Vec<String> = store
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .filter(|u| u.admin && u.name != x && u.name != y)
            .map(|u| u.name)
            .collect();
        for other in admins {
            store
                .delete_user(&ChangeBy::default(), &other)
                .await
                .unwrap();
        }
        let (a, r) = tokio::join!(
            tokio::spawn({
                let store = store.clone();
                let x = x.clone();
                async move { store.delete_user(&ChangeBy::default(), &x).await }
            }),
            tokio::spawn({
                let store = store.clone();
                let y = y.clone();
                async move { store.delete_user(&ChangeBy::default(), &y).await }
            })
        );
        let (a, r) = (a.unwrap(), r.unwrap());
        let refused = [&a, &r]
            .iter()
            .filter(|x| matches!(x, Err(StoreError::Refused(_))))
            .count();
        assert_eq!((refused, a.is_ok() || r.is_ok()), (1, true), "{a:?} {r:?}");
        let admins = store
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .filter(|u| u.admin)
            .count();
        assert_eq!(admins, 1, "round {round}");
    }
    b
}

async fn groups_have_members_and_are_deleted_with_their_grants(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "prod").await;
    store
        .create_user(&ChangeBy::default(), "alice", UserKind::User, false)
        .await
        .unwrap();
    store
        .create_user(&ChangeBy::default(), "bob", UserKind::User, false)
        .await
        .unwrap();
    store
        .create_group(&ChangeBy::default(), "ml")
        .await
        .unwrap();
    match store.create_group(&ChangeBy::default(), "ml").await {
        Err(StoreError::AlreadyExists(what)) => assert_eq!(what, "group ml"),
        other => panic!("a taken group name must be AlreadyExists, got {other:?}"),
    }
    let ml = store
        .add_group_member(&ChangeBy::default(), "ml", "bob")
        .await
        .unwrap();
    assert_eq!(ml.members, ["bob"]);
    let ml = store
        .add_group_member(&ChangeBy::default(), "ml", "alice")
        .await
        .unwrap();
    assert_eq!(ml.members, ["alice", "bob"]);
    assert!(matches!(
        store
            .add_group_member(&ChangeBy::default(), "ml", "alice")
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    match store
        .add_group_member(&ChangeBy::default(), "ml", "nobody")
        .await
    {
        Err(StoreError::NotFound(what)) => assert_eq!(what, "user nobody"),
        other => panic!("an unknown user must be NotFound, got {other:?}"),
    }
    match store
        .add_group_member(&ChangeBy::default(), "nogroup", "alice")
        .await
    {
        Err(StoreError::NotFound(what)) => assert_eq!(what, "group nogroup"),
        other => panic!("an unknown group must be NotFound, got {other:?}"),
    }
    assert_eq!(store.get_user("alice").await.unwrap().groups, ["ml"]);
    let ml = store
        .remove_group_member(&ChangeBy::default(), "ml", "bob")
        .await
        .unwrap();
    assert_eq!(ml.members, ["alice"]);
    assert!(matches!(
        store
            .remove_group_member(&ChangeBy::default(), "ml", "bob")
            .await,
        Err(StoreError::NotFound(_))
    ));
    store
        .grant_deployer(&ChangeBy::default(), &d.id, "ml", Role::View)
        .await
        .unwrap();
    let listed = store.list_groups().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), &listed[0].members[..]),
        ("ml", &["alice".to_string()][..])
    );
    store
        .delete_group(&ChangeBy::default(), "ml")
        .await
        .unwrap();
    assert!(store.list_groups().await.unwrap().is_empty());
    assert!(store.get_user("alice").await.unwrap().groups.is_empty());
    assert!(
        store.list_grants(Some(&d.id)).await.unwrap().is_empty(),
        "its grants go with it"
    );
    assert!(matches!(
        store.delete_group(&ChangeBy::default(), "ml").await,
        Err(StoreError::NotFound(_))
    ));
    b
}

async fn grants_are_one_role_per_group_and_deployer(b: Backend) -> Backend {
    let store = b.store();
    let prod = register(&store, "prod").await;
    let dev = register(&store, "dev").await;
    store
        .create_group(&ChangeBy::default(), "ml")
        .await
        .unwrap();
    store
        .create_group(&ChangeBy::default(), "ops")
        .await
        .unwrap();
    store
        .grant_deployer(&ChangeBy::default(), &prod.id, "ml", Role::View)
        .await
        .unwrap();
    store
        .grant_deployer(&ChangeBy::default(), &prod.id, "ops", Role::Admin)
        .await
        .unwrap();
    store
        .grant_deployer(&ChangeBy::default(), &dev.id, "ml", Role::Deploy)
        .await
        .unwrap();
    // A second grant replaces the group's role there.
    store
        .grant_deployer(&ChangeBy::default(), &prod.id, "ml", Role::Deploy)
        .await
        .unwrap();
    let of = |grants: Vec<GrantRecord>| {
        grants
            .into_iter()
            .map(|g| (g.group, g.role))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(store.list_grants(Some(&prod.id)).await.unwrap()),
        [
            ("ml".to_string(), Role::Deploy),
            ("ops".to_string(), Role::Admin)
        ]
    );
    assert_eq!(store.list_grants(None).await.unwrap().len(), 3);
    match store
        .grant_deployer(&ChangeBy::default(), &prod.id, "nogroup", Role::View)
        .await
    {
        Err(StoreError::NotFound(what)) => assert_eq!(what, "group nogroup"),
        other => panic!("an unknown group must be NotFound, got {other:?}"),
    }
    assert!(matches!(
        store
            .grant_deployer(&ChangeBy::default(), "no-such-id", "ml", Role::View)
            .await,
        Err(StoreError::NotFound(_))
    ));
    store
        .revoke_deployer(&ChangeBy::default(), &prod.id, "ml")
        .await
        .unwrap();
    assert!(matches!(
        store
            .revoke_deployer(&ChangeBy::default(), &prod.id, "ml")
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        of(store.list_grants(Some(&prod.id)).await.unwrap()),
        [("ops".to_string(), Role::Admin)]
    );
    // A deleted deployer's grants go with it.
    store
        .delete_deployer(&ChangeBy::default(), &prod.id)
        .await
        .unwrap();
    assert_eq!(
        of(store.list_grants(None).await.unwrap()),
        [("ml".to_string(), Role::Deploy)]
    );
    b
}

async fn an_upgraded_database_gives_its_api_keys_to_the_admin_user(b: Backend) -> Backend {
    let store = b.store();
    store
        .add_api_key(&ChangeBy::default(), "oldkey", hash("old"))
        .await
        .unwrap();
    drop(store);
    // As the release before teams left it: api_keys(id, hash, created_at) with the key,
    // no users, no groups, the migration not applied.
    b.raw(
        "CREATE TABLE api_keys_old AS SELECT id, hash, created_at FROM api_keys; \
         DROP TABLE deployer_grants; DROP TABLE group_members; DROP TABLE user_groups; \
         DROP TABLE api_keys; DROP TABLE users; \
         ALTER TABLE api_keys_old RENAME TO api_keys; \
         DELETE FROM _sqlx_migrations WHERE description = 'teams'",
    )
    .await;
    let b = b.reopen().await;
    let store = b.store();
    let owner = store
        .find_key_owner("oldkey")
        .await
        .unwrap()
        .expect("the old key");
    assert_eq!(owner.hash, hash("old"), "the same key still matches");
    assert_eq!(owner.user.name, "admin");
    assert!(owner.user.admin);
    assert_eq!(owner.key.expires_at, None);
    b
}

async fn team_changes_are_audited_once_with_their_actor(b: Backend) -> Backend {
    let store = b.store();
    let by = by("alice (key 0123456789abcdef)");
    let d = store
        .create_deployer_by(&by, "teamed", "Test", "00112233aabbccdd", hash("t"))
        .await
        .unwrap();
    store
        .create_user(&by, "bob", UserKind::ServiceAccount, false)
        .await
        .unwrap();
    store
        .create_api_key(&by, "bobkey0000000001", hash("bob-secret"), "bob", None)
        .await
        .unwrap();
    store.create_group(&by, "ml").await.unwrap();
    // A refused change writes no row.
    assert!(matches!(
        store.create_group(&by, "ml").await,
        Err(StoreError::AlreadyExists(_))
    ));
    store.add_group_member(&by, "ml", "bob").await.unwrap();
    store
        .grant_deployer(&by, &d.id, "ml", Role::Deploy)
        .await
        .unwrap();
    store.revoke_deployer(&by, &d.id, "ml").await.unwrap();
    store.remove_group_member(&by, "ml", "bob").await.unwrap();
    store.delete_group(&by, "ml").await.unwrap();
    store.delete_api_key(&by, "bobkey0000000001").await.unwrap();
    store.delete_user(&by, "bob").await.unwrap();
    let rows = store
        .list_audit(&AuditQuery {
            actor: Some(by.actor.clone()),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.action.as_str(), r.object.as_str()))
        .collect();
    let grant = format!("{}/ml", d.id);
    assert_eq!(
        seen,
        [
            ("deployer.create", "teamed"),
            ("user.create", "bob"),
            ("api-key.create", "bobkey0000000001"),
            ("group.create", "ml"),
            ("group.add-member", "ml"),
            ("deployer.grant", grant.as_str()),
            ("deployer.revoke", grant.as_str()),
            ("group.remove-member", "ml"),
            ("group.delete", "ml"),
            ("api-key.delete", "bobkey0000000001"),
            ("user.delete", "bob"),
        ]
    );
    assert!(rows.iter().all(|r| r.request_id == by.request_id));
    let grants: Vec<_> = rows
        .iter()
        .filter(|r| r.action == "deployer.grant")
        .collect();
    assert_eq!(grants[0].deployer_id.as_deref(), Some(d.id.as_str()));
    assert!(
        grants[0]
            .after
            .as_ref()
            .unwrap()
            .to_string()
            .contains("deploy")
    );
    let everything = format!("{rows:?}");
    assert!(!everything.contains("bob-secret"), "no secret in the log");
    b
}

// === remapping ===

async fn a_deployers_remapping_is_edited_audited_and_kept_with_the_revisions_it_made(
    b: Backend,
) -> Backend {
    use ds_core::remap::{EnvRemap, RemapEdit, RemapKind, Remapped, SecretRemap};
    let store = b.store();
    let by = by("alice (key 0123456789abcdef)");
    let d = register(&store, "prod").await;
    assert!(d.remap.is_empty(), "a new deployer maps nothing");
    let edit = RemapEdit {
        set_env: vec![EnvRemap {
            name: "DB_CONN".into(),
            from: "sql-dev".into(),
            to: "sql-prod".into(),
        }],
        set_secrets: vec![SecretRemap {
            from: "creds-dev".into(),
            to: "creds-prod".into(),
        }],
        ..RemapEdit::default()
    };
    let update = DeployerUpdate {
        remap: Some(edit),
        ..DeployerUpdate::default()
    };
    let mapped = store.update_deployer(&by, &d.id, &update).await.unwrap();
    assert_eq!(mapped.remap.env[0].to, "sql-prod");
    assert_eq!(mapped.remap.secrets[0].to, "creds-prod");
    // Read back on its own, and in the list.
    assert_eq!(
        store.get_deployer("prod").await.unwrap().remap,
        mapped.remap
    );
    assert_eq!(store.list_deployers().await.unwrap()[0].remap, mapped.remap);
    // An edit applies to the map as stored: this one removes the env entry only.
    let removal = DeployerUpdate {
        remap: Some(RemapEdit {
            remove_env: vec!["DB_CONN".into()],
            ..RemapEdit::default()
        }),
        ..DeployerUpdate::default()
    };
    let after = store.update_deployer(&by, &d.id, &removal).await.unwrap();
    assert!(after.remap.env.is_empty());
    assert_eq!(after.remap.secrets, mapped.remap.secrets);
    // An edit whose result breaks a rule changes nothing and writes no row.
    let bad = DeployerUpdate {
        remap: Some(RemapEdit {
            set_secrets: vec![SecretRemap {
                from: "x".into(),
                to: "x".into(),
            }],
            ..RemapEdit::default()
        }),
        ..DeployerUpdate::default()
    };
    match store.update_deployer(&by, &d.id, &bad).await {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, "--secret"),
        other => panic!("an invalid map must be Invalid, got {other:?}"),
    }
    assert_eq!(store.get_deployer(&d.id).await.unwrap().remap, after.remap);
    let rows = store
        .list_audit(&AuditQuery {
            actor: Some(by.actor.clone()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let remaps: Vec<_> = rows
        .iter()
        .filter(|r| r.action == "deployer.remap")
        .collect();
    assert_eq!(remaps.len(), 2, "one row per change: {rows:?}");
    assert_eq!(remaps[0].object, "prod");
    assert_eq!(remaps[0].deployer_id.as_deref(), Some(d.id.as_str()));
    assert!(remaps[0].after.as_ref().unwrap().contains("sql-prod"));
    assert!(remaps[1].before.as_ref().unwrap().contains("sql-prod"));

    // What a create and an update remapped is kept with their revisions; a change that
    // remapped nothing keeps nothing.
    let replaced = vec![Remapped {
        kind: RemapKind::Secret,
        name: "image_pull_secrets".into(),
        from: "creds-dev".into(),
        to: "creds-prod".into(),
    }];
    let with = ChangeBy {
        remapped: replaced.clone(),
        ..by.clone()
    };
    let iris = store
        .create_deployment_by(&with, &d.id, "iris", "default", &spec("iris", 1))
        .await
        .unwrap();
    let iris2 = store
        .update_deployment_by(&by, &iris.id, iris.revision, &spec("iris", 2))
        .await
        .unwrap();
    store
        .update_deployment_by(&with, &iris.id, iris2.revision, &spec("iris", 3))
        .await
        .unwrap();
    let revisions = store.list_revisions(&iris.id).await.unwrap();
    let kept: Vec<&[Remapped]> = revisions.iter().map(|r| r.remapped.as_slice()).collect();
    assert_eq!(kept, [&replaced[..], &[][..], &replaced[..]]);
    b
}

// === hooks ===

async fn hooks_are_added_listed_removed_and_their_runs_recorded_and_audited(b: Backend) -> Backend {
    let store = b.store();
    let d = register(&store, "hooked").await;
    let other = register(&store, "other").await;
    let alice = by("alice (key 0123456789abcdef)");
    let pre = store
        .create_hook(
            &alice,
            &d.id,
            &NewHook {
                phase: HookPhase::Pre,
                target: HookTarget::Command("check.sh".into()),
                timeout_ms: 5_000,
            },
        )
        .await
        .unwrap();
    let post = store
        .create_hook(
            &alice,
            &d.id,
            &NewHook {
                phase: HookPhase::Post,
                target: HookTarget::Url("https://hooks.example.com/services/SECRET".into()),
                timeout_ms: 60_000,
            },
        )
        .await
        .unwrap();
    store
        .create_hook(
            &alice,
            &other.id,
            &NewHook {
                phase: HookPhase::Post,
                target: HookTarget::Command("notify".into()),
                timeout_ms: 1_000,
            },
        )
        .await
        .unwrap();
    assert_ne!(pre.id, post.id);
    assert_eq!(pre.created_by, alice.actor);
    assert!(matches!(
        store
            .create_hook(
                &alice,
                "no-such-deployer",
                &NewHook {
                    phase: HookPhase::Pre,
                    target: HookTarget::Command("x".into()),
                    timeout_ms: 1,
                },
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
    // Pre before post, then by ID; only the deployer's own.
    let listed = store.list_hooks(Some(&d.id)).await.unwrap();
    assert_eq!(listed, vec![pre.clone(), post.clone()]);
    assert_eq!(store.list_hooks(None).await.unwrap().len(), 3);
    assert_eq!(store.get_hook(post.id).await.unwrap(), post);

    // Runs: kept oldest first, the latest `limit`, with an exit code or none.
    let dep = deploy(&store, &d.id, "default", "iris").await;
    let run = |n: u64, outcome: HookOutcome, exit_code: Option<i32>| HookRunRecord {
        id: 0,
        hook_id: pre.id,
        deployer_id: d.id.clone(),
        deployment_id: dep.id.clone(),
        deployment: "default/iris".into(),
        revision: n,
        phase: HookPhase::Pre,
        target: "check.sh".into(),
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        outcome,
        exit_code,
        output_tail: format!("run {n}"),
        actor: alice.actor.clone(),
    };
    let first = store
        .record_hook_run(&alice, &run(1, HookOutcome::Ok, Some(0)))
        .await
        .unwrap();
    assert!(first.id > 0);
    store
        .record_hook_run(&alice, &run(2, HookOutcome::Failed, Some(1)))
        .await
        .unwrap();
    store
        .record_hook_run(&by("gateway"), &run(3, HookOutcome::NoSlot, None))
        .await
        .unwrap();
    let runs = store.list_hook_runs(&dep.id, 2).await.unwrap();
    let seen: Vec<(u64, HookOutcome, Option<i32>)> = runs
        .iter()
        .map(|r| (r.revision, r.outcome, r.exit_code))
        .collect();
    assert_eq!(
        seen,
        [
            (2, HookOutcome::Failed, Some(1)),
            (3, HookOutcome::NoSlot, None)
        ]
    );
    assert_eq!(runs[0].output_tail, "run 2");
    assert_eq!(runs[0].actor, alice.actor);

    let removed = store.delete_hook(&alice, pre.id).await.unwrap();
    assert_eq!(removed, pre);
    assert!(matches!(
        store.delete_hook(&alice, pre.id).await,
        Err(StoreError::NotFound(_))
    ));
    // A removed hook's runs stay.
    assert_eq!(store.list_hook_runs(&dep.id, 10).await.unwrap().len(), 3);

    let rows = store
        .list_audit(&AuditQuery {
            deployer_id: Some(d.id.clone()),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let hook_rows: Vec<(&str, &str, &str)> = rows
        .iter()
        .filter(|r| r.object_kind == "hook")
        .map(|r| (r.action.as_str(), r.actor.as_str(), r.reason.as_str()))
        .collect();
    let a = alice.actor.as_str();
    assert_eq!(
        hook_rows,
        [
            ("hook.add", a, ""),
            ("hook.add", a, ""),
            ("hook.run", a, "ok (exit 0)"),
            ("hook.run", a, "failed (exit 1)"),
            ("hook.run", "gateway", "no_slot"),
            ("hook.remove", a, ""),
        ]
    );
    let everything = format!("{rows:?}");
    assert!(
        !everything.contains("SECRET"),
        "a webhook URL's path stays out of the audit log"
    );
    // The deployer's hooks and runs go with it.
    store.delete_deployer(&alice, &d.id).await.unwrap();
    assert!(store.list_hooks(Some(&d.id)).await.unwrap().is_empty());
    assert!(store.list_hook_runs(&dep.id, 10).await.unwrap().is_empty());
    b
}
