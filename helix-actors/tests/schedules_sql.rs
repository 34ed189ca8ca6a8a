//! Recurring schedules on real databases, MariaDB and SQLite, on real time: two coordinator
//! nodes, the leader paused mid-way (its link stalled, as a process stopped by `SIGSTOP`) so
//! the other takes over, then woken again as a zombie; every slot has exactly one task in the
//! database, with none missing (`docs/scheduling.md`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use helix_actors::client::{Client, ScheduleSpec};
use helix_actors::coordinator::StrategyAllocator;
use helix_actors::testing::{CutOffStore, fast_config};
use helix_core::ClusterName;
use helix_store::{Store, TaskState};
use support::{Harness, mysql, sqlite, wait_for};

/// Generous against a busy two-core machine; only a real failure exceeds it.
const DEADLINE: Duration = Duration::from_secs(60);

/// The run_at of every task of the queue, which for a schedule's tasks is their slot.
async fn slots(store: &Arc<dyn Store>, h: &Harness) -> Vec<DateTime<Utc>> {
    let mut out: Vec<DateTime<Utc>> = Vec::new();
    for state in TaskState::ALL {
        let tasks = store.list_tasks(h.queue.id, state, None, 10_000).await.expect("list");
        out.extend(tasks.iter().map(|t| t.run_at));
    }
    out.sort();
    out
}

async fn one_task_per_slot_through_a_takeover(store: Arc<dyn Store>) {
    let h = Harness::new(store, 4, fast_config()).await;
    let link = CutOffStore::new(Arc::clone(&h.store));
    let _old = h.coordinator(Arc::new(link.clone()), StrategyAllocator.start().recipient());
    let leading = {
        let store = Arc::clone(&h.store);
        move || {
            let store = Arc::clone(&store);
            async move { store.get_lease(&ClusterName::default()).await.expect("lease").is_some() }
        }
    };
    assert!(wait_for(DEADLINE, leading).await, "a leader");
    let _new = h.coordinator(Arc::clone(&h.store), StrategyAllocator.start().recipient());
    let client = Client::new(Arc::clone(&h.store));
    let spec = ScheduleSpec::every(Duration::from_secs(1)).payload("{{slot}}");
    client.create_schedule("domain_order", "food_order", "tick", spec).await.expect("create");
    let store = Arc::clone(&h.store);
    let at_least = |n: usize| {
        let store = Arc::clone(&store);
        let h = &h;
        move || {
            let store = Arc::clone(&store);
            async move { slots(&store, h).await.len() >= n }
        }
    };
    assert!(wait_for(DEADLINE, at_least(6)).await, "the first leader fires");

    link.stall();
    let term_two = {
        let store = Arc::clone(&h.store);
        move || {
            let store = Arc::clone(&store);
            async move {
                store.get_lease(&ClusterName::default()).await.expect("lease").is_some_and(|l| l.term.0 == 2)
            }
        }
    };
    assert!(wait_for(DEADLINE, term_two).await, "the other node took over");
    let before = slots(&h.store, &h).await.len();
    link.restore();
    assert!(wait_for(DEADLINE, at_least(before + 8)).await, "the new leader fires");

    let slots = slots(&h.store, &h).await;
    for pair in slots.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "one task per slot, none missing: {slots:?}"
        );
    }
    // The payload names the slot it was made for: the task is due at its slot.
    let pending = h.store.list_tasks(h.queue.id, TaskState::Pending, None, 10_000).await.expect("list");
    for task in pending {
        let named = DateTime::parse_from_rfc3339(&String::from_utf8_lossy(&task.payload)).expect("a slot");
        assert_eq!(named.with_timezone(&Utc), task.run_at);
    }
}

#[actix::test]
async fn mysql_one_task_per_slot_through_a_takeover() {
    let (store, database) = mysql().await;
    one_task_per_slot_through_a_takeover(store).await;
    database.drop_database().await;
}

#[actix::test]
async fn sqlite_one_task_per_slot_through_a_takeover() {
    let dir = tempfile::tempdir().expect("temp dir");
    one_task_per_slot_through_a_takeover(sqlite(&dir).await).await;
}
