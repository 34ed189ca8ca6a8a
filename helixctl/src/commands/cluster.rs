//! The cluster's state and history, and operators' actions on partitions and workers:
//! `status`, `assignments`, `events`, `partition …`, `worker …`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_actors::client::Client;
use helix_core::{ClusterName, PartitionId, QueueId, SessionEpoch, Term, WorkerId};
use helix_store::{Event, StoreError, WorkerFilter, WorkerRecord, WorkerStatus};
use serde::Serialize;

use super::find_queue;
use super::queues::AssignmentsView;
use crate::cli::{EventsArgs, PartitionCommand, QueuePath, StatusArgs, WorkerCommand};
use crate::error::{CliError, CliResult};
use crate::output::{Out, instant, millis_until, or_dash, relative, span, table, table_text};

/// How often `events --follow` asks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// What `status` answers.
#[derive(Debug, Serialize)]
struct StatusView {
    /// The store's clock, which every lease is measured on.
    now: DateTime<Utc>,
    /// The coordinator lease; `None` before any coordinator was ever elected.
    leader: Option<LeaderView>,
    workers: Vec<WorkerView>,
}

#[derive(Debug, Serialize)]
struct LeaderView {
    cluster: ClusterName,
    holder: Option<WorkerId>,
    term: Term,
    expires_at: DateTime<Utc>,
    /// Whether the lease has run out (nobody leads until a candidate takes it).
    expired: bool,
    /// Milliseconds until the lease runs out; negative when it has.
    lease_remaining_ms: i64,
}

#[derive(Debug, Serialize)]
struct WorkerView {
    id: WorkerId,
    host: String,
    pid: u32,
    status: WorkerStatus,
    /// In session (ACTIVE or DRAINING) with a lease still running on the store's clock.
    live: bool,
    session_epoch: SessionEpoch,
    registered_at: DateTime<Utc>,
    /// Milliseconds since the worker's session started.
    session_age_ms: i64,
    lease_expires_at: DateTime<Utc>,
    /// Milliseconds until its lease runs out; negative when it has.
    lease_remaining_ms: i64,
    labels: BTreeMap<String, String>,
    /// How many partitions it owns, across queues.
    partitions: usize,
    /// The partitions it owns, by queue (`domain/queue`).
    owned: BTreeMap<String, Vec<PartitionId>>,
}

/// `helixctl status`
pub(super) async fn status(client: &Client, out: Out, args: &StatusArgs) -> CliResult {
    let store = client.store();
    let now = store.now().await?;
    let names = queue_names(client).await?;
    let leader = client.leader().await?.map(|lease| LeaderView {
        lease_remaining_ms: millis_until(lease.expires_at, now),
        cluster: lease.cluster,
        holder: lease.holder,
        term: lease.term,
        expires_at: lease.expires_at,
        expired: lease.expired,
    });
    let mut workers = Vec::new();
    for worker in client.workers(WorkerFilter::All).await? {
        if !args.all && !worker.status.in_session() {
            continue;
        }
        let mut owned: BTreeMap<String, Vec<PartitionId>> = BTreeMap::new();
        let rows = store.assignments_of(worker.id).await?;
        for row in &rows {
            owned.entry(queue_name(&names, row.queue_id)).or_default().push(row.partition);
        }
        workers.push(worker_view(worker, now, rows.len(), owned));
    }
    out.print(&StatusView { now, leader, workers }, render_status)
}

fn worker_view(
    w: WorkerRecord,
    now: DateTime<Utc>,
    partitions: usize,
    owned: BTreeMap<String, Vec<PartitionId>>,
) -> WorkerView {
    WorkerView {
        live: w.status.in_session() && w.lease_expires_at > now,
        session_age_ms: (now - w.registered_at).num_milliseconds(),
        lease_remaining_ms: millis_until(w.lease_expires_at, now),
        id: w.id,
        host: w.host,
        pid: w.pid,
        status: w.status,
        session_epoch: w.session_epoch,
        registered_at: w.registered_at,
        lease_expires_at: w.lease_expires_at,
        labels: w.labels,
        partitions,
        owned,
    }
}

fn render_status(v: &StatusView) -> String {
    let leader = match &v.leader {
        None => "leader: none elected yet (start a coordinator node)".to_owned(),
        Some(l) if l.expired || l.holder.is_none() => format!(
            "leader: none (term {} lease {} {}); a candidate takes over with term {}",
            l.term,
            if l.holder.is_none() { "released" } else { "ran out" },
            relative(l.expires_at, v.now),
            l.term.0 + 1
        ),
        Some(l) => format!(
            "leader: {} term {}, lease expires {} ({})",
            or_dash(l.holder),
            l.term,
            relative(l.expires_at, v.now),
            instant(l.expires_at)
        ),
    };
    if v.workers.is_empty() {
        return format!("{leader}\nworkers: none live (workers join with a WorkerNode)");
    }
    let mut t = table(["WORKER", "HOST", "PID", "STATUS", "SESSION", "UP", "LEASE", "PARTITIONS"]);
    for w in &v.workers {
        let remaining = Duration::from_millis(w.lease_remaining_ms.unsigned_abs());
        let lease = match (w.status.in_session(), w.lease_remaining_ms >= 0) {
            (false, _) => "-".to_owned(),
            (true, true) => format!("expires in {}", span(remaining)),
            (true, false) => format!("expired {} ago", span(remaining)),
        };
        let up = span(Duration::from_millis(w.session_age_ms.unsigned_abs()));
        let owned: Vec<String> = w.owned.iter().map(|(q, p)| format!("{q}: {}", p.len())).collect();
        let partitions = if owned.is_empty() {
            "0".to_owned()
        } else {
            format!("{} ({})", w.partitions, owned.join(", "))
        };
        t.add_row([
            w.id.to_string(),
            w.host.clone(),
            w.pid.to_string(),
            w.status.to_string(),
            w.session_epoch.to_string(),
            up,
            lease,
            partitions,
        ]);
    }
    format!("{leader}\n\n{}", table_text(&t))
}

/// Queue id → `domain/queue`, for showing rows and events that carry ids.
async fn queue_names(client: &Client) -> CliResult<BTreeMap<QueueId, String>> {
    Ok(client
        .store()
        .list_queues(None)
        .await?
        .into_iter()
        .map(|q| (q.id, format!("{}/{}", q.domain, q.name)))
        .collect())
}

fn queue_name(names: &BTreeMap<QueueId, String>, id: QueueId) -> String {
    names.get(&id).cloned().unwrap_or_else(|| format!("queue #{id}"))
}

/// `helixctl assignments`
pub(super) async fn assignments(client: &Client, out: Out, path: &QueuePath) -> CliResult {
    let queue = find_queue(client, path).await?;
    let map = client.partition_map(queue.id).await?;
    out.print(&AssignmentsView::of(path, &map), AssignmentsView::render)
}

/// An event with its queue's name.
#[derive(Debug, Serialize)]
struct EventView {
    #[serde(flatten)]
    event: Event,
    /// `domain/queue`, when the event concerns a queue that still exists.
    queue: Option<String>,
}

/// What `events` answers (without `--follow`).
#[derive(Debug, Serialize)]
struct EventsView {
    events: Vec<EventView>,
    /// The id to pass as `--after` for the next page (the last one read, or `--after`).
    next_after: u64,
}

/// `helixctl events`
pub(super) async fn events(client: &Client, out: Out, args: &EventsArgs) -> CliResult {
    let mut names = queue_names(client).await?;
    let read = client.events_since(args.after, args.limit).await?;
    if !args.follow {
        let next_after = read.last().map_or(args.after, |e| e.id);
        let events = read.into_iter().map(|e| with_name(&names, e)).collect();
        return out.print(&EventsView { events, next_after }, render_events);
    }
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut after = args.after;
    let mut batch = read;
    loop {
        // A queue created since the last read gets its name.
        if batch.iter().any(|e| e.queue_id.is_some_and(|q| !names.contains_key(&q))) {
            names = queue_names(client).await?;
        }
        let full = batch.len() >= usize::try_from(args.limit).unwrap_or(usize::MAX);
        for event in batch {
            after = event.id;
            out.print_line(&with_name(&names, event), event_line)?;
        }
        if !full {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                () = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
        batch = client.events_since(after, args.limit).await?;
    }
}

fn with_name(names: &BTreeMap<QueueId, String>, event: Event) -> EventView {
    EventView { queue: event.queue_id.and_then(|q| names.get(&q).cloned()), event }
}

fn render_events(v: &EventsView) -> String {
    if v.events.is_empty() {
        return format!("no events after {}", v.next_after);
    }
    let mut t = table(["ID", "AT", "KIND", "QUEUE", "PARTITION", "WORKER", "TERM", "EPOCH", "DETAIL"]);
    for e in &v.events {
        let ev = &e.event;
        t.add_row([
            ev.id.to_string(),
            instant(ev.at),
            ev.kind.as_str().to_owned(),
            e.queue.clone().or_else(|| ev.queue_id.map(|q| format!("#{q}"))).unwrap_or_else(|| "-".into()),
            or_dash(ev.partition),
            or_dash(ev.worker),
            or_dash(ev.term),
            or_dash(ev.epoch),
            detail(&ev.detail),
        ]);
    }
    format!("{}\n(next page: --after {})", table_text(&t), v.next_after)
}

fn event_line(e: &EventView) -> String {
    let ev = &e.event;
    let mut line = format!("{} {} {}", ev.id, instant(ev.at), ev.kind.as_str());
    if let Some(queue) = e.queue.clone().or_else(|| ev.queue_id.map(|q| format!("#{q}"))) {
        line.push_str(&format!(" queue={queue}"));
    }
    for (name, value) in [
        ("partition", ev.partition.map(|p| p.to_string())),
        ("worker", ev.worker.map(|w| w.to_string())),
        ("term", ev.term.map(|t| t.to_string())),
        ("epoch", ev.epoch.map(|x| x.to_string())),
    ] {
        if let Some(value) = value {
            line.push_str(&format!(" {name}={value}"));
        }
    }
    let detail = detail(&ev.detail);
    if detail != "-" {
        line.push(' ');
        line.push_str(&detail);
    }
    line
}

fn detail(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::Object(o) if o.is_empty() => "-".to_owned(),
        other => other.to_string(),
    }
}

/// What `partition reset` answers.
#[derive(Debug, Serialize)]
struct ResetView {
    queue: String,
    partition: PartitionId,
    /// Whether the partition was failed (a reset of one that is not changes nothing).
    was_failed: bool,
}

/// `helixctl partition …`
pub(super) async fn partition(client: &Client, out: Out, command: PartitionCommand) -> CliResult {
    match command {
        PartitionCommand::Reset { queue: path, partition } => {
            let queue = find_queue(client, &path).await?;
            let partition = PartitionId(partition);
            let was_failed = client.store().reset_partition(queue.id, partition).await.map_err(|e| {
                CliError::from(e).when_not_found(|| {
                    format!(
                        "queue {path} has no partition {partition}; its partitions are 0 to {}",
                        queue.partition_count.get().saturating_sub(1)
                    )
                })
            })?;
            out.print(&ResetView { queue: path.to_string(), partition, was_failed }, |v| {
                if v.was_failed {
                    format!("partition {} of {} reset: the coordinator grants it again", v.partition, v.queue)
                } else {
                    format!("partition {} of {} had not failed; nothing changed", v.partition, v.queue)
                }
            })
        }
    }
}

/// What `worker drain|activate` answers.
#[derive(Debug, Serialize)]
struct WorkerStatusView {
    worker: WorkerId,
    status: WorkerStatus,
}

/// `helixctl worker …`
pub(super) async fn worker(client: &Client, out: Out, command: WorkerCommand) -> CliResult {
    let (id, status) = match command {
        WorkerCommand::Drain { id } => (id, WorkerStatus::Draining),
        WorkerCommand::Activate { id } => (id, WorkerStatus::Active),
    };
    let store = client.store();
    let worker = store.get_worker(id).await.map_err(|e| {
        CliError::from(e).when_not_found(|| {
            format!("worker {id} not found; list the workers with `helixctl status --all`")
        })
    })?;
    if !worker.status.in_session() {
        return Err(CliError::Failed(format!(
            "worker {id} has no session (it is {}); only a live worker can change status",
            worker.status
        )));
    }
    store.set_worker_status(id, worker.session_epoch, status).await.map_err(|e| match e {
        StoreError::Fenced(_) => CliError::Failed(format!(
            "worker {id}'s session {} ended meanwhile; see `helixctl status`",
            worker.session_epoch
        )),
        other => other.into(),
    })?;
    out.print(&WorkerStatusView { worker: id, status }, |v| format!("worker {} is {}", v.worker, v.status))
}
