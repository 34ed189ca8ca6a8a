//! The store conformance suite on SQLite: each case gets a fresh database file in a temporary
//! directory of its own, and time passes for real (leases run on SQLite's clock).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use helix_store::conformance::Backend;
use helix_store::{ConnectOptions, SqliteStore, Store};
use tempfile::TempDir;

struct Sqlite {
    store: Arc<SqliteStore>,
    // Removed (with the database, its WAL and shared-memory files) when the case ends.
    _dir: TempDir,
}

#[async_trait]
impl Backend for Sqlite {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
    async fn advance(&self, by: Duration) {
        // The store runs on the database clock: the only way to let lease time pass is to wait.
        tokio::time::sleep(by).await;
    }
    fn real_time(&self) -> bool {
        true
    }
    async fn teardown(&self) {}
}

async fn setup() -> Sqlite {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("helix.db");
    let store = SqliteStore::open(Some(&path), &ConnectOptions::default()).await.expect("open sqlite store");
    Sqlite { store: Arc::new(store), _dir: dir }
}

helix_store::conformance_tests!(setup());
helix_store::task_conformance_tests!(setup());
helix_store::schedule_conformance_tests!(setup());
