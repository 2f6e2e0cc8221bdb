//! The store contract: the same tests against an `Arc<dyn Store>` of each back end,
//! SQLite on a real temporary file and PostgreSQL on the test server, so that the two
//! cannot drift apart again in what a user sees.

use crate::{DEADLINE, TestDb, hash, next_hub_change, spec};
use ds_deployer::gateway::install::{InstallCodes, InstallOptions, RedeemError};
use ds_deployer::gateway::postgres::PgStore;
use ds_deployer::gateway::sqlite::SqliteStore;
use ds_deployer::gateway::store::{Store, StoreError};
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

contract!(api_keys_are_unique_and_found_by_id,);

// === api keys ===

async fn api_keys_are_unique_and_found_by_id(b: Backend) -> Backend {
    let store = b.store();
    assert!(!store.has_api_key().await.unwrap());
    store.add_api_key("key1", hash("k1")).await.unwrap();
    assert!(store.has_api_key().await.unwrap());
    // A second key with a taken ID is refused as a duplicate, not as a database failure,
    // and the first key keeps working.
    match store.add_api_key("key1", hash("k2")).await {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("a duplicate API key ID must be AlreadyExists, got {other:?}"),
    }
    let key = store.find_api_key("key1").await.unwrap().expect("key1");
    assert_eq!(key.hash, hash("k1"));
    assert!(key.deployer_id.is_empty() && key.expires_at.is_none());
    assert!(store.find_api_key("key2").await.unwrap().is_none());
    b
}
