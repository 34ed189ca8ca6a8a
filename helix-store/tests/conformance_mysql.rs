//! The store conformance suite on MySQL / MariaDB, on the database clock.
//!
//! Every case gets a database of its own (`helix_t_<random>`) on the server of
//! `HELIX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`, a server URL without a
//! database), dropped afterwards. When no server answers the cases fail, saying how to start
//! one; they are never skipped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use helix_store::conformance::{Backend, ScratchMysql};
use helix_store::{ConnectOptions, MysqlStore, Store};

struct Mysql {
    store: Arc<MysqlStore>,
    database: ScratchMysql,
}

async fn setup() -> Mysql {
    let database = ScratchMysql::create().await;
    let store = MysqlStore::connect(database.url(), &ConnectOptions::default())
        .await
        .expect("connect to the test database");
    Mysql { store: Arc::new(store), database }
}

#[async_trait]
impl Backend for Mysql {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn advance(&self, by: Duration) {
        // Lease time passes on the database clock: let it pass for real.
        tokio::time::sleep(by).await;
    }

    fn real_time(&self) -> bool {
        true
    }

    async fn teardown(&self) {
        self.database.drop_database().await;
    }
}

helix_store::conformance_tests!(setup());
helix_store::task_conformance_tests!(setup());
helix_store::schedule_conformance_tests!(setup());
