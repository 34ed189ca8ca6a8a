//! Shared pieces of the helixctl tests: running the built binary against a database, and the
//! end-to-end scenario every backend goes through.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use helix_core::{ClusterName, Epoch, PartitionId, QueueId, WorkerId};
use helix_store::{
    CoordinatorFence, OwnerFence, PlanChange, Subscription, TaskFailure, TaskId, WorkerRegistration,
};
use serde_json::Value;

/// The path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_helixctl");

/// What one run of helixctl did.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: i32,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn code(self, expected: i32) -> Self {
        assert_eq!(self.code, expected, "exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Asserts success and parses stdout as one JSON document.
    #[track_caller]
    pub fn json(self) -> Value {
        let run = self.code(0);
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", run.stdout))
    }

    /// Asserts that stderr contains every one of `parts`.
    #[track_caller]
    pub fn stderr_has(self, parts: &[&str]) -> Self {
        for part in parts {
            assert!(self.stderr.contains(part), "stderr lacks {part:?}:\n{}", self.stderr);
        }
        self
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// helixctl bound to one database URL (through `HELIX_DATABASE_URL`).
#[derive(Debug, Clone)]
pub struct Helixctl {
    /// The database URL.
    pub url: String,
}

impl Helixctl {
    /// helixctl on `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }

    /// A command of the binary, with the database set through the environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).env("HELIX_DATABASE_URL", &self.url).env_remove("RUST_LOG");
        command
    }

    /// Runs helixctl with `args` and waits for it.
    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("helixctl runs").into()
    }

    /// Runs helixctl with `--json` and `args`, expecting success and one JSON document.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.run(&all).json()
    }
}

/// The event kinds in an `events --json` answer, in order.
pub fn event_kinds(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .expect("events is an array")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_owned())
        .collect()
}

/// The end-to-end scenario: migrate, domains, queues, tasks, status, assignments, events and
/// partition reset, against the database at `url`, with a worker and a coordinator lease
/// made through the Store API half-way to see them in `status` and `assignments`.
pub async fn scenario(url: &str) {
    let ctl = Helixctl::new(url);

    // migrate says where the schema is.
    let migrated = ctl.json(&["migrate"]);
    let version = migrated["schema_version"].as_str().expect("a schema version");
    assert!(version.len() >= 14 && version.bytes().all(|b| b.is_ascii_digit()), "{migrated}");
    assert!(!migrated["database"].as_str().expect("database").is_empty());
    let text = ctl.run(&["migrate"]).code(0);
    assert!(text.stdout.contains(version), "{}", text.stdout);

    // An empty cluster: no leader, no worker, no domain.
    let status = ctl.json(&["status"]);
    assert_eq!(status["leader"], Value::Null);
    assert_eq!(status["workers"], serde_json::json!([]));
    assert!(status["now"].is_string());
    assert!(ctl.run(&["status"]).code(0).stdout.contains("none elected"));
    assert_eq!(ctl.json(&["domain", "list"]), serde_json::json!([]));

    // Domains.
    assert_eq!(ctl.json(&["domain", "create", "shop"])["name"], "shop");
    ctl.run(&["domain", "create", "shop"]).code(1).stderr_has(&["domain shop exists"]);
    assert_eq!(ctl.json(&["domain", "list"])[0]["name"], "shop");

    // Queues.
    ctl.run(&["queue", "create", "nowhere/orders", "--partitions", "4"])
        .code(1)
        .stderr_has(&["domain nowhere not found", "helixctl domain create nowhere"]);
    let queue = ctl.json(&["queue", "create", "shop/orders", "--partitions", "4"]);
    assert_eq!(queue["partition_count"], 4);
    assert_eq!(queue["allocator"], "balanced-sticky");
    let queue_id = QueueId(queue["id"].as_u64().expect("queue id"));
    let other = ctl.json(&["queue", "create", "shop/refunds", "-p", "2", "--allocator", "round-robin"]);
    assert_eq!(other["allocator"], "round-robin");
    ctl.run(&["queue", "create", "shop/orders", "--partitions", "4"])
        .code(1)
        .stderr_has(&["queue shop/orders exists"]);
    let listed = ctl.json(&["queue", "list"]);
    let names: Vec<&str> =
        listed.as_array().expect("array").iter().map(|q| q["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["orders", "refunds"]);
    assert_eq!(ctl.json(&["queue", "list", "shop"]).as_array().map(Vec::len), Some(2));
    ctl.run(&["queue", "list", "nowhere"]).code(1).stderr_has(&["domain nowhere not found"]);
    let table = ctl.run(&["queue", "list"]).code(0);
    assert!(table.stdout.starts_with("QUEUE") && table.stdout.contains("shop/orders"), "{}", table.stdout);

    // Tasks: enqueue with a key, with a dedup key (twice), delayed, at an instant.
    let first = ctl.json(&["enqueue", "shop/orders", "--payload", "hello", "--key", "customer-7"]);
    assert_eq!(first["created"], true);
    assert_eq!(first["queue"], "shop/orders");
    let first_id = first["id"].as_u64().expect("id");
    let deduped =
        ["enqueue", "shop/orders", "--payload-json", r#"{ "order": 42 }"#, "--dedup-key", "order-42"];
    let second = ctl.json(&deduped);
    assert_eq!(second["created"], true);
    let again = ctl.json(&deduped);
    assert_eq!((again["created"].clone(), again["id"].clone()), (Value::Bool(false), second["id"].clone()));
    let delayed =
        ctl.json(&["enqueue", "shop/orders", "--delay", "1h", "--partition", "2", "--priority", "-5"]);
    let at =
        ctl.json(&["enqueue", "shop/orders", "--run-at", "2030-01-01T00:00:00+01:00", "--partition", "1"]);
    assert!(
        ctl.run(&["enqueue", "shop/orders", "--payload", "x", "--partition", "3"])
            .code(0)
            .stdout
            .contains("enqueued task")
    );
    ctl.run(&["enqueue", "shop/orders", "--max-attempts", "0"]).code(2).stderr_has(&["attempts"]);
    ctl.run(&["enqueue", "shop/orders", "--partition", "9"]).code(2).stderr_has(&["partition"]);
    ctl.run(&["enqueue", "shop/missing", "--payload", "x"])
        .code(1)
        .stderr_has(&["queue shop/missing not found", "helixctl queue create shop/missing --partitions 8"]);

    let task = ctl.json(&["task", "get", &first_id.to_string()]);
    assert_eq!(task["payload"], "hello");
    assert_eq!(task["state"], "PENDING");
    assert_eq!(task["queue"], "shop/orders");
    assert_eq!(task["attempts"], 0);
    assert_eq!(ctl.json(&["task", "get", &second["id"].to_string()])["payload"], r#"{"order":42}"#);
    let delayed_task = ctl.json(&["task", "get", &delayed["id"].to_string()]);
    assert_eq!(
        (delayed_task["partition"].clone(), delayed_task["priority"].clone()),
        (2.into(), (-5).into())
    );
    let at_task = ctl.json(&["task", "get", &at["id"].to_string()]);
    assert!(at_task["run_at"].as_str().expect("run_at").starts_with("2029-12-31T23:00:00"), "{at_task}");
    assert!(ctl.run(&["task", "get", &first_id.to_string()]).code(0).stdout.contains("\"hello\""));
    ctl.run(&["task", "get", "999999"])
        .code(1)
        .stderr_has(&["task 999999 not found", "helixctl task list DOMAIN/QUEUE"]);

    let pending = ctl.json(&["task", "list", "shop/orders", "--state", "pending"]);
    assert_eq!(pending["tasks"].as_array().map(Vec::len), Some(5));
    assert_eq!(pending["next_after"], Value::Null);
    let page = ctl.json(&["task", "list", "shop/orders", "--limit", "2"]);
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(2));
    let next = page["next_after"].as_u64().expect("a next page");
    let rest = ctl.json(&["task", "list", "shop/orders", "--after", &next.to_string()]);
    assert_eq!(rest["tasks"].as_array().map(Vec::len), Some(3));

    // Cancel, then retry refused (only a dead task is retried).
    let cancelled = ctl.json(&["task", "cancel", &first_id.to_string()]);
    assert_eq!(cancelled["outcome"], "cancelled");
    assert_eq!(ctl.json(&["task", "get", &first_id.to_string()])["state"], "CANCELLED");
    assert_eq!(ctl.json(&["task", "cancel", &first_id.to_string()])["outcome"], "already_finished");
    let listed = ctl.json(&["task", "list", "shop/orders", "--state", "cancelled"]);
    assert_eq!(listed["tasks"][0]["id"].as_u64(), Some(first_id));
    ctl.run(&["task", "retry", &first_id.to_string()]).code(1).stderr_has(&["cannot be retried", "dead"]);
    ctl.run(&["task", "cancel", "999999"]).code(1).stderr_has(&["task 999999 not found"]);

    // Describe: partitions, allocator, constraints, task counts.
    let described = ctl.json(&["queue", "describe", "shop/orders"]);
    assert_eq!(described["partition_count"], 4);
    assert_eq!(described["allocator"], "balanced-sticky");
    assert_eq!(described["constraints"]["required_labels"], serde_json::json!({}));
    assert_eq!(described["tasks"]["PENDING"], 4);
    assert_eq!(described["tasks"]["CANCELLED"], 1);
    let partitions = described["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 4);
    assert!(partitions.iter().all(|p| p["owner"].is_null() && p["state"] == "ASSIGNED" && p["epoch"] == 0));
    // Per partition counts add up to the queue's; the delayed task is on partition 2.
    let pending: u64 = partitions.iter().map(|p| p["tasks"]["PENDING"].as_u64().unwrap_or(0)).sum();
    assert_eq!(pending, 4, "{described}");
    assert!(partitions[2]["tasks"]["PENDING"].as_u64() >= Some(1), "{described}");
    let text = ctl.run(&["queue", "describe", "shop/orders"]).code(0).stdout;
    assert!(text.contains("balanced-sticky") && text.contains("PENDING") && text.contains("...."), "{text}");

    let assignments = ctl.json(&["assignments", "shop/orders"]);
    assert_eq!(assignments["unowned"], 4);
    assert_eq!(assignments["partitions"].as_array().map(Vec::len), Some(4));

    // A worker and a leader, made through the Store API: a dead task to retry, and a cluster
    // for status and assignments to show.
    let store = helix_store::connect(url).await.expect("connect");
    let worker = WorkerId::new_v7();
    let registration = WorkerRegistration {
        id: worker,
        host: "test-host".into(),
        pid: 4242,
        labels: BTreeMap::new(),
        subscriptions: vec![Subscription { queue_id, capacity: 1 }],
        session_timeout: Duration::from_secs(300),
    };
    store.register_worker(&registration).await.expect("register");
    let cluster = ClusterName::default();
    let term =
        store.acquire_lease(&cluster, worker, Duration::from_secs(300)).await.expect("lease").expect("term");
    let fence = CoordinatorFence { cluster, holder: worker, term };
    let grant = PlanChange::Grant { partition: PartitionId(0), expected_epoch: Epoch(0), to: worker };
    let applied = store.apply_plan(&fence, queue_id, &[grant]).await.expect("plan");
    assert_eq!(applied.applied, 1);
    let doomed = ctl.json(&["enqueue", "shop/orders", "--partition", "0", "--max-attempts", "1"]);
    let doomed_id = doomed["id"].as_u64().expect("id");
    let owner = OwnerFence { queue: queue_id, partition: PartitionId(0), worker, epoch: Epoch(1) };
    let claimed = store.claim_tasks(&owner, 10).await.expect("claim");
    assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [TaskId(doomed_id)]);
    let failure = TaskFailure { id: TaskId(doomed_id), error: "boom".into(), retry_in: None };
    store.fail_tasks(&owner, &[failure]).await.expect("fail");

    let dead = ctl.json(&["task", "get", &doomed_id.to_string()]);
    assert_eq!((dead["state"].clone(), dead["last_error"].clone()), ("DEAD".into(), "boom".into()));
    let retried = ctl.json(&["task", "retry", &doomed_id.to_string()]);
    assert_eq!((retried["state"].clone(), retried["attempts"].clone()), ("PENDING".into(), 0.into()));
    assert_eq!(retried["last_error"], "boom");

    let status = ctl.json(&["status"]);
    assert_eq!(status["leader"]["holder"], worker.to_string());
    assert_eq!(status["leader"]["term"], term.0);
    assert_eq!(status["leader"]["expired"], false);
    assert!(status["leader"]["lease_remaining_ms"].as_i64().expect("remaining") > 0);
    let workers = status["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["id"], worker.to_string());
    assert_eq!(workers[0]["status"], "ACTIVE");
    assert_eq!(workers[0]["live"], true);
    assert_eq!(workers[0]["partitions"], 1);
    assert_eq!(workers[0]["owned"]["shop/orders"], serde_json::json!([0]));
    assert!(workers[0]["lease_remaining_ms"].as_i64().expect("remaining") > 0);
    let text = ctl.run(&["status"]).code(0).stdout;
    assert!(
        text.contains(&worker.to_string()) && text.contains("test-host") && text.contains("shop/orders: 1"),
        "{text}"
    );

    let assignments = ctl.json(&["assignments", "shop/orders"]);
    assert_eq!(assignments["partitions"][0]["owner"], worker.to_string());
    assert_eq!(assignments["partitions"][0]["epoch"], 1);
    assert_eq!(assignments["unowned"], 3);
    assert_eq!(assignments["owners"][worker.to_string()], 1);

    // Draining through the CLI moves the worker's status.
    assert_eq!(ctl.json(&["worker", "drain", &worker.to_string()])["status"], "DRAINING");
    assert_eq!(ctl.json(&["status"])["workers"][0]["status"], "DRAINING");
    assert_eq!(ctl.json(&["worker", "activate", &worker.to_string()])["status"], "ACTIVE");
    let unknown = WorkerId::new_v7().to_string();
    ctl.run(&["worker", "drain", &unknown]).code(1).stderr_has(&["not found", "helixctl status --all"]);

    // Events: the history of all that, paged.
    let events = ctl.json(&["events", "--limit", "1000"]);
    let kinds = event_kinds(&events);
    for kind in ["domain_created", "queue_created", "worker_joined", "leader_elected", "partition_granted"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
    }
    let granted =
        events["events"].as_array().expect("events").iter().find(|e| e["kind"] == "partition_granted");
    assert_eq!(granted.map(|e| e["queue"].clone()), Some("shop/orders".into()));
    let first_two = ctl.json(&["events", "--limit", "2"]);
    assert_eq!(first_two["events"].as_array().map(Vec::len), Some(2));
    let after = first_two["next_after"].as_u64().expect("next_after");
    let rest = ctl.json(&["events", "--after", &after.to_string(), "--limit", "1000"]);
    assert_eq!(event_kinds(&rest).len() + 2, kinds.len());
    assert!(ctl.run(&["events"]).code(0).stdout.contains("queue_created"));

    // Partition reset: a partition that has not failed is left alone; one out of range is
    // not found.
    let reset = ctl.json(&["partition", "reset", "shop/orders", "1"]);
    assert_eq!(reset["was_failed"], false);
    ctl.run(&["partition", "reset", "shop/orders", "9"]).code(1).stderr_has(&["no partition 9", "0 to 3"]);

    // Deletes: a domain with queues is refused; queues then the domain go.
    ctl.run(&["domain", "delete", "shop"])
        .code(1)
        .stderr_has(&["still has queues", "helixctl queue list shop"]);
    ctl.run(&["schedule", "list", "shop/missing"]).code(1).stderr_has(&["queue shop/missing not found"]);
    assert_eq!(ctl.json(&["queue", "delete", "shop/orders"])["deleted"], "shop/orders");
    ctl.run(&["queue", "describe", "shop/orders"])
        .code(1)
        .stderr_has(&["queue shop/orders not found", "helixctl queue create shop/orders --partitions 8"]);
    ctl.run(&["queue", "delete", "shop/orders"]).code(1).stderr_has(&["queue shop/orders not found"]);
    ctl.run(&["queue", "delete", "shop/refunds"]).code(0);
    ctl.run(&["domain", "delete", "shop"]).code(0);
    ctl.run(&["domain", "delete", "shop"])
        .code(1)
        .stderr_has(&["domain shop not found", "helixctl domain list"]);
}
