//! The store conformance suite on the in-memory store, driven by a manual clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use helix_core::ManualClock;
use helix_store::conformance::Backend;
use helix_store::{MemStore, Store};

struct Mem {
    store: Arc<MemStore>,
    clock: ManualClock,
}

#[async_trait]
impl Backend for Mem {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
    fn real_time(&self) -> bool {
        false
    }
    async fn teardown(&self) {}
}

async fn setup() -> Mem {
    let clock = ManualClock::default();
    Mem { store: Arc::new(MemStore::new(Arc::new(clock.clone()))), clock }
}

helix_store::conformance_tests!(setup());
helix_store::task_conformance_tests!(setup());
helix_store::schedule_conformance_tests!(setup());
