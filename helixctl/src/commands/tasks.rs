//! `helixctl enqueue` and `helixctl task …`.

use chrono::{DateTime, Utc};
use helix_actors::client::{Client, TaskSpec};
use helix_core::{Epoch, PartitionId, QueueId, WorkerId};
use helix_store::{CancelOutcome, StoreError, TaskId, TaskRecord, TaskState};
use serde::Serialize;

use super::{find_queue, queue_not_found};
use crate::cli::{EnqueueArgs, PayloadArgs, TaskCommand};
use crate::error::{CliError, CliResult};
use crate::output::{Out, instant, millis, or_dash, span, table, table_text};

/// The payload the flags give: text, a file's bytes, or a JSON value made compact; empty
/// when none is given.
pub(super) fn payload(args: &PayloadArgs) -> CliResult<Vec<u8>> {
    if let Some(text) = &args.payload {
        return Ok(text.clone().into_bytes());
    }
    if let Some(path) = &args.payload_file {
        return std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("cannot read the payload file {}: {e}", path.display())));
    }
    if let Some(json) = &args.payload_json {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| CliError::Usage(format!("--payload-json is not valid JSON: {e}")))?;
        return serde_json::to_vec(&value).map_err(|e| CliError::Usage(format!("--payload-json: {e}")));
    }
    Ok(Vec::new())
}

/// What `enqueue` answers.
#[derive(Debug, Serialize)]
struct EnqueuedView {
    queue: String,
    id: TaskId,
    /// False when an unfinished task holds the dedup key: `id` is that task's.
    created: bool,
}

/// `helixctl enqueue`
pub(super) async fn enqueue(client: &Client, out: Out, args: EnqueueArgs) -> CliResult {
    let mut spec = match &args.webhook {
        Some(url) => {
            let body = match (&args.payload.payload_json, &args.payload.payload) {
                (Some(json), _) => serde_json::from_str(json)
                    .map_err(|e| CliError::Usage(format!("--payload-json is not valid JSON: {e}")))?,
                (None, Some(text)) => serde_json::Value::String(text.clone()),
                (None, None) => serde_json::Value::Null,
            };
            TaskSpec::webhook(url, &body).map_err(CliError::from)?
        }
        None => TaskSpec::new(payload(&args.payload)?),
    }
    .priority(args.priority);
    if let Some(key) = args.key {
        spec = spec.key(key);
    }
    if let Some(partition) = args.partition {
        spec = spec.partition(partition);
    }
    if let Some(at) = args.run_at {
        spec = spec.run_at(at);
    }
    if let Some(delay) = args.delay {
        spec = spec.delay(delay);
    }
    if let Some(attempts) = args.max_attempts {
        spec = spec.max_attempts(attempts);
    }
    if let Some(timeout) = args.timeout {
        spec = spec.timeout(timeout);
    }
    if let Some(key) = args.dedup_key {
        spec = spec.dedup_key(key);
    }
    let path = args.queue;
    let answer = client
        .enqueue(path.domain.as_str(), path.queue.as_str(), spec)
        .await
        .map_err(|e| CliError::from(e).when_not_found(|| queue_not_found(&path)))?;
    let view = EnqueuedView { queue: path.to_string(), id: answer.id, created: answer.created };
    out.print(&view, |v| {
        if v.created {
            format!("enqueued task {} in {}", v.id, v.queue)
        } else {
            format!("not created: task {} of {} holds the dedup key", v.id, v.queue)
        }
    })
}

/// A task as helixctl shows it: the payload as text when it is UTF-8 (else in hex), the
/// timeout in milliseconds.
#[derive(Debug, Serialize)]
struct TaskView {
    id: TaskId,
    /// `domain/queue`, when the queue still exists.
    queue: Option<String>,
    queue_id: QueueId,
    partition: PartitionId,
    state: TaskState,
    priority: i32,
    run_at: DateTime<Utc>,
    attempts: u32,
    max_attempts: u32,
    timeout_ms: u64,
    dedup_key: Option<String>,
    /// The payload, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    /// The payload in hex, when it is not UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
    claimed_epoch: Option<Epoch>,
    claimed_by: Option<WorkerId>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    deadline_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

impl TaskView {
    fn of(t: TaskRecord, queue: Option<String>) -> Self {
        let (payload, payload_hex) = match String::from_utf8(t.payload) {
            Ok(text) => (Some(text), None),
            Err(e) => (None, Some(e.as_bytes().iter().map(|b| format!("{b:02x}")).collect())),
        };
        Self {
            id: t.id,
            queue,
            queue_id: t.queue_id,
            partition: t.partition,
            state: t.state,
            priority: t.priority,
            run_at: t.run_at,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            timeout_ms: millis(t.timeout),
            dedup_key: t.dedup_key,
            payload,
            payload_hex,
            claimed_epoch: t.claimed_epoch,
            claimed_by: t.claimed_by,
            created_at: t.created_at,
            started_at: t.started_at,
            deadline_at: t.deadline_at,
            finished_at: t.finished_at,
            last_error: t.last_error,
        }
    }

    fn render(&self) -> String {
        let payload = match (&self.payload, &self.payload_hex) {
            (Some(text), _) => format!("{text:?}"),
            (None, Some(hex)) => format!("0x{hex}"),
            (None, None) => "-".to_owned(),
        };
        let lines = [
            ("task", self.id.to_string()),
            ("queue", self.queue.clone().unwrap_or_else(|| format!("#{} (deleted)", self.queue_id))),
            ("partition", self.partition.to_string()),
            ("state", self.state.to_string()),
            ("priority", self.priority.to_string()),
            ("run at", instant(self.run_at)),
            ("attempts", format!("{} of {}", self.attempts, self.max_attempts)),
            ("timeout", span(std::time::Duration::from_millis(self.timeout_ms))),
            ("dedup key", or_dash(self.dedup_key.as_ref())),
            (
                "claimed",
                match (self.claimed_by, self.claimed_epoch) {
                    (Some(w), Some(e)) => format!("by {w} at epoch {e}"),
                    _ => "-".to_owned(),
                },
            ),
            ("created", instant(self.created_at)),
            ("started", or_dash(self.started_at.map(instant))),
            ("deadline", or_dash(self.deadline_at.map(instant))),
            ("finished", or_dash(self.finished_at.map(instant))),
            ("last error", or_dash(self.last_error.as_ref())),
            ("payload", payload),
        ];
        let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        lines.iter().map(|(k, v)| format!("{k:<width$}  {v}")).collect::<Vec<_>>().join("\n")
    }
}

fn task_not_found(id: TaskId) -> String {
    format!(
        "task {id} not found (never enqueued, or pruned after it finished); list a queue's tasks \
         with `helixctl task list DOMAIN/QUEUE --state pending`"
    )
}

/// The `domain/queue` name of a queue id, when it still exists.
async fn queue_label(client: &Client, id: QueueId) -> CliResult<Option<String>> {
    match client.store().get_queue_by_id(id).await {
        Ok(q) => Ok(Some(format!("{}/{}", q.domain, q.name))),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What `task cancel` answers.
#[derive(Debug, Serialize)]
struct CancelView {
    id: TaskId,
    /// `cancelled` (it will not run), `requested` (running: it ends cancelled when its attempt
    /// ends) or `already_finished`.
    outcome: &'static str,
    /// The state of a task that had already finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<TaskState>,
}

/// What `task list` answers.
#[derive(Debug, Serialize)]
struct TaskPage {
    tasks: Vec<TaskView>,
    /// The id to pass as `--after` for the next page; `None` when this page is the last.
    next_after: Option<TaskId>,
}

/// `helixctl task …`
pub(super) async fn task(client: &Client, out: Out, command: TaskCommand) -> CliResult {
    match command {
        TaskCommand::Get { id } => {
            let id = TaskId(id);
            let task =
                client.task(id).await.map_err(|e| CliError::from(e).when_not_found(|| task_not_found(id)))?;
            let label = queue_label(client, task.queue_id).await?;
            out.print(&TaskView::of(task, label), TaskView::render)
        }
        TaskCommand::List { queue: path, state, after, limit } => {
            find_queue(client, &path).await?;
            let tasks = client
                .list_tasks(path.domain.as_str(), path.queue.as_str(), state.into(), after.map(TaskId), limit)
                .await
                .map_err(|e| CliError::from(e).when_not_found(|| queue_not_found(&path)))?;
            let full = tasks.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
            let next_after = if full { tasks.last().map(|t| t.id) } else { None };
            let label = path.to_string();
            let tasks = tasks.into_iter().map(|t| TaskView::of(t, Some(label.clone()))).collect();
            out.print(&TaskPage { tasks, next_after }, |page| {
                let mut t = table([
                    "ID",
                    "PARTITION",
                    "STATE",
                    "PRIORITY",
                    "RUN AT",
                    "ATTEMPTS",
                    "DEDUP KEY",
                    "LAST ERROR",
                ]);
                for task in &page.tasks {
                    t.add_row([
                        task.id.to_string(),
                        task.partition.to_string(),
                        task.state.to_string(),
                        task.priority.to_string(),
                        instant(task.run_at),
                        format!("{}/{}", task.attempts, task.max_attempts),
                        or_dash(task.dedup_key.as_ref()),
                        or_dash(task.last_error.as_ref()),
                    ]);
                }
                match page.next_after {
                    Some(next) => format!("{}\n(next page: --after {next})", table_text(&t)),
                    None => table_text(&t),
                }
            })
        }
        TaskCommand::Cancel { id } => {
            let id = TaskId(id);
            let outcome = client
                .cancel_task(id)
                .await
                .map_err(|e| CliError::from(e).when_not_found(|| task_not_found(id)))?;
            let view = match outcome {
                CancelOutcome::Cancelled => CancelView { id, outcome: "cancelled", state: None },
                CancelOutcome::Requested => CancelView { id, outcome: "requested", state: None },
                CancelOutcome::AlreadyFinished(state) => {
                    CancelView { id, outcome: "already_finished", state: Some(state) }
                }
            };
            out.print(&view, |v| match (v.outcome, v.state) {
                ("cancelled", _) => format!("task {} cancelled", v.id),
                ("requested", _) => {
                    format!("task {} is running: it ends cancelled when its attempt ends", v.id)
                }
                (_, state) => {
                    format!("task {} had already finished ({}); nothing changed", v.id, or_dash(state))
                }
            })
        }
        TaskCommand::Retry { id } => {
            let id = TaskId(id);
            let task = client.retry_task(id).await.map_err(|e| match e {
                helix_actors::client::ClientError::Store(StoreError::Conflict(reason)) => CliError::Failed(format!(
                    "task {id} cannot be retried: {reason}; only a dead task can (see `helixctl task get {id}`)"
                )),
                other => CliError::from(other).when_not_found(|| task_not_found(id)),
            })?;
            let label = queue_label(client, task.queue_id).await?;
            out.print(&TaskView::of(task, label), |t| format!("task {} is pending again, due now", t.id))
        }
    }
}
