//! `helixctl schedule …`.

use chrono::{DateTime, Utc};
use helix_actors::client::{Client, ScheduleSpec};
use helix_core::{PartitionId, QueueId};
use helix_store::{ScheduleId, ScheduleRecord, StoreError, TaskId};
use serde::Serialize;

use super::find_queue;
use super::tasks::payload;
use crate::cli::{QueuePath, ScheduleCommand, ScheduleCreateArgs, ScheduleRef};
use crate::error::{CliError, CliResult};
use crate::output::{Out, instant, millis, or_dash, table, table_text};

/// A schedule as helixctl shows it.
#[derive(Debug, Serialize)]
struct ScheduleView {
    id: ScheduleId,
    queue: String,
    queue_id: QueueId,
    name: String,
    /// `cron "EXPR"` or `every N ms`.
    recurrence: String,
    time_zone: String,
    partition: PartitionId,
    priority: i32,
    max_attempts: u32,
    timeout_ms: u64,
    /// The payload template, as text (lossy when it is not UTF-8).
    payload: String,
    missed_slots: &'static str,
    grace_ms: u64,
    paused: bool,
    next_slot_at: DateTime<Utc>,
    last_slot_at: Option<DateTime<Utc>>,
    last_task_id: Option<TaskId>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl ScheduleView {
    fn of(path: &QueuePath, s: ScheduleRecord) -> Self {
        Self {
            id: s.id,
            queue: path.to_string(),
            queue_id: s.queue_id,
            recurrence: s.spec.recurrence.to_string(),
            time_zone: s.spec.time_zone,
            partition: s.spec.partition,
            priority: s.spec.priority,
            max_attempts: s.spec.max_attempts,
            timeout_ms: millis(s.spec.timeout),
            payload: String::from_utf8_lossy(&s.spec.payload).into_owned(),
            missed_slots: s.spec.missed_slots.as_str(),
            grace_ms: millis(s.spec.grace),
            paused: s.spec.paused,
            name: s.spec.name,
            next_slot_at: s.next_slot_at,
            last_slot_at: s.last_slot_at,
            last_task_id: s.last_task_id,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }

    fn line(&self) -> String {
        format!(
            "schedule {} of {}: {} ({}), {}, next slot {}",
            self.name,
            self.queue,
            self.recurrence,
            self.time_zone,
            if self.paused { "paused" } else { "running" },
            instant(self.next_slot_at)
        )
    }
}

fn schedule_not_found(path: &QueuePath, name: &str) -> String {
    format!("queue {path} has no schedule {name:?}; list its schedules with `helixctl schedule list {path}`")
}

/// `helixctl schedule …`
pub(super) async fn schedule(client: &Client, out: Out, command: ScheduleCommand) -> CliResult {
    match command {
        ScheduleCommand::Create(args) => create(client, out, *args).await,
        ScheduleCommand::List { queue: path } => {
            find_queue(client, &path).await?;
            let schedules = client.schedules(path.domain.as_str(), path.queue.as_str()).await?;
            let views: Vec<ScheduleView> =
                schedules.into_iter().map(|s| ScheduleView::of(&path, s)).collect();
            out.print(&views, |views| {
                let mut t = table([
                    "NAME",
                    "RECURRENCE",
                    "TIME ZONE",
                    "PARTITION",
                    "STATE",
                    "NEXT SLOT",
                    "LAST TASK",
                ]);
                for s in views {
                    t.add_row([
                        s.name.clone(),
                        s.recurrence.clone(),
                        s.time_zone.clone(),
                        s.partition.to_string(),
                        (if s.paused { "paused" } else { "running" }).to_owned(),
                        instant(s.next_slot_at),
                        or_dash(s.last_task_id),
                    ]);
                }
                table_text(&t)
            })
        }
        ScheduleCommand::Pause(r) => set_paused(client, out, r, true).await,
        ScheduleCommand::Resume(r) => set_paused(client, out, r, false).await,
        ScheduleCommand::Delete(ScheduleRef { queue: path, name }) => {
            find_queue(client, &path).await?;
            client
                .delete_schedule(path.domain.as_str(), path.queue.as_str(), &name)
                .await
                .map_err(|e| CliError::from(e).when_not_found(|| schedule_not_found(&path, &name)))?;
            let view = serde_json::json!({ "queue": path.to_string(), "deleted": name });
            out.print(&view, |_| format!("deleted schedule {name} of {path}"))
        }
    }
}

async fn create(client: &Client, out: Out, args: ScheduleCreateArgs) -> CliResult {
    let mut spec = match (args.cron, args.every) {
        (Some(expression), _) => ScheduleSpec::cron(expression),
        (None, Some(every)) => ScheduleSpec::every(every),
        // clap requires one of the two.
        (None, None) => return Err(CliError::Usage("give --cron EXPR or --every DURATION".to_owned())),
    };
    spec = spec
        .time_zone(args.time_zone)
        .payload(payload(&args.payload)?)
        .priority(args.priority)
        .missed_slots(args.missed.into());
    if let Some(key) = args.key {
        spec = spec.key(key);
    }
    if let Some(partition) = args.partition {
        spec = spec.partition(partition);
    }
    if let Some(attempts) = args.max_attempts {
        spec = spec.max_attempts(attempts);
    }
    if let Some(timeout) = args.timeout {
        spec = spec.timeout(timeout);
    }
    if let Some(grace) = args.grace {
        spec = spec.grace(grace);
    }
    if args.paused {
        spec = spec.paused();
    }
    let path = args.queue;
    find_queue(client, &path).await?;
    let schedule = client
        .create_schedule(path.domain.as_str(), path.queue.as_str(), &args.name, spec)
        .await
        .map_err(|e| match e {
            helix_actors::client::ClientError::Store(StoreError::Conflict(_)) => CliError::Failed(format!(
                "queue {path} already has a schedule {:?}; see `helixctl schedule list {path}`",
                args.name
            )),
            other => other.into(),
        })?;
    out.print(&ScheduleView::of(&path, schedule), |v| format!("created {}", v.line()))
}

async fn set_paused(client: &Client, out: Out, r: ScheduleRef, paused: bool) -> CliResult {
    let ScheduleRef { queue: path, name } = r;
    find_queue(client, &path).await?;
    let (domain, queue) = (path.domain.as_str(), path.queue.as_str());
    let answer = if paused {
        client.pause_schedule(domain, queue, &name).await
    } else {
        client.resume_schedule(domain, queue, &name).await
    };
    let schedule =
        answer.map_err(|e| CliError::from(e).when_not_found(|| schedule_not_found(&path, &name)))?;
    out.print(&ScheduleView::of(&path, schedule), ScheduleView::line)
}
