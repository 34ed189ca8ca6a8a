//! `helixctl domain …` and `helixctl queue …`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use helix_actors::client::{Client, PartitionMap};
use helix_actors::coordinator::queue_constraints;
use helix_core::allocation::Constraints;
use helix_core::{Epoch, PartitionCount, PartitionId, Term, WorkerId};
use helix_store::{AssignmentRecord, QueueRecord, QueueSpec, TaskState};
use serde::Serialize;

use super::{find_queue, queue_not_found};
use crate::cli::{DomainCommand, QueueCommand, QueuePath};
use crate::error::{CliError, CliResult};
use crate::output::{Out, instant, or_dash, table, table_text};

/// `helixctl domain …`
pub(super) async fn domain(client: &Client, out: Out, command: DomainCommand) -> CliResult {
    let store = client.store();
    match command {
        DomainCommand::Create { name } => {
            let domain = store.create_domain(&name).await.map_err(|e| match e {
                helix_store::StoreError::Conflict(_) => CliError::Failed(format!("domain {name} exists")),
                other => other.into(),
            })?;
            out.print(&domain, |d| format!("created domain {}", d.name))
        }
        DomainCommand::List => {
            let domains = store.list_domains().await?;
            out.print(&domains, |domains| {
                let mut t = table(["DOMAIN", "CREATED"]);
                for d in domains {
                    t.add_row([d.name.to_string(), instant(d.created_at)]);
                }
                table_text(&t)
            })
        }
        DomainCommand::Delete { name } => {
            store.delete_domain(&name).await.map_err(|e| match e {
                helix_store::StoreError::NotFound(_) => CliError::NotFound(format!(
                    "domain {name} not found; list the domains with `helixctl domain list`"
                )),
                helix_store::StoreError::Conflict(_) => CliError::Failed(format!(
                    "domain {name} still has queues; list them with `helixctl queue list {name}` \
                     and delete them first"
                )),
                other => other.into(),
            })?;
            out.print(&Deleted { deleted: name.to_string() }, |d| format!("deleted domain {}", d.deleted))
        }
    }
}

/// What a delete answers.
#[derive(Debug, Serialize)]
struct Deleted {
    /// What was deleted.
    deleted: String,
}

/// `helixctl queue …`
pub(super) async fn queue(client: &Client, out: Out, command: QueueCommand) -> CliResult {
    let store = client.store();
    match command {
        QueueCommand::Create { queue: path, partitions, allocator } => {
            let count = PartitionCount::new(partitions)?;
            let mut spec = QueueSpec::new(path.domain.clone(), path.queue.clone(), count);
            spec.allocator = allocator;
            let queue = store.create_queue(&spec).await.map_err(|e| match e {
                helix_store::StoreError::NotFound(_) => CliError::NotFound(format!(
                    "domain {} not found; create it with `helixctl domain create {}`",
                    path.domain, path.domain
                )),
                helix_store::StoreError::Conflict(_) => CliError::Failed(format!(
                    "queue {path} exists; see it with `helixctl queue describe {path}`"
                )),
                other => other.into(),
            })?;
            out.print(&queue, |q| {
                format!(
                    "created queue {}/{} with {} partitions ({})",
                    q.domain, q.name, q.partition_count, q.allocator
                )
            })
        }
        QueueCommand::List { domain } => {
            if let Some(name) = &domain {
                store.get_domain(name).await.map_err(|e| {
                    CliError::from(e).when_not_found(|| {
                        format!("domain {name} not found; list the domains with `helixctl domain list`")
                    })
                })?;
            }
            let queues = store.list_queues(domain).await?;
            out.print(&queues, |queues| {
                let mut t = table(["QUEUE", "ID", "PARTITIONS", "ALLOCATOR", "CREATED"]);
                for q in queues {
                    t.add_row([
                        format!("{}/{}", q.domain, q.name),
                        q.id.to_string(),
                        q.partition_count.to_string(),
                        q.allocator.clone(),
                        instant(q.created_at),
                    ]);
                }
                table_text(&t)
            })
        }
        QueueCommand::Describe { queue: path } => describe(client, out, &path).await,
        QueueCommand::Delete { queue: path } => {
            store
                .delete_queue(&path.domain, &path.queue)
                .await
                .map_err(|e| CliError::from(e).when_not_found(|| queue_not_found(&path)))?;
            out.print(&Deleted { deleted: path.to_string() }, |d| format!("deleted queue {}", d.deleted))
        }
    }
}

/// One partition's row, as `assignments` and `queue describe` show it.
#[derive(Debug, Serialize)]
pub(super) struct PartitionView {
    partition: PartitionId,
    owner: Option<WorkerId>,
    epoch: Epoch,
    state: &'static str,
    target: Option<WorkerId>,
    coordinator_term: Term,
    updated_at: DateTime<Utc>,
    /// Task counts by state (absent states are zero); only in `queue describe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<BTreeMap<&'static str, u64>>,
}

impl PartitionView {
    fn of(row: &AssignmentRecord) -> Self {
        Self {
            partition: row.partition,
            owner: row.owner,
            epoch: row.epoch,
            state: row.state.as_str(),
            target: row.target,
            coordinator_term: row.coordinator_term,
            updated_at: row.updated_at,
            tasks: None,
        }
    }
}

/// What `assignments` answers.
#[derive(Debug, Serialize)]
pub(super) struct AssignmentsView {
    queue: String,
    assignment_version: u64,
    /// How many partitions each worker owns.
    owners: BTreeMap<WorkerId, usize>,
    unowned: usize,
    failed: Vec<PartitionId>,
    partitions: Vec<PartitionView>,
    #[serde(skip)]
    map: String,
}

impl AssignmentsView {
    pub(super) fn of(path: &QueuePath, map: &PartitionMap) -> Self {
        Self {
            queue: path.to_string(),
            assignment_version: map.assignment_version,
            owners: map.counts(),
            unowned: map.unowned(),
            failed: map.failed(),
            partitions: map.rows.iter().map(PartitionView::of).collect(),
            map: map.to_string(),
        }
    }

    /// The partition map, then one row per partition.
    pub(super) fn render(&self) -> String {
        let mut t = table(["PARTITION", "OWNER", "EPOCH", "STATE", "TARGET", "TERM", "UPDATED"]);
        for p in &self.partitions {
            t.add_row([
                p.partition.to_string(),
                or_dash(p.owner),
                p.epoch.to_string(),
                p.state.to_owned(),
                or_dash(p.target),
                p.coordinator_term.to_string(),
                instant(p.updated_at),
            ]);
        }
        format!(
            "{} at assignment version {}\n{}\n\n{}",
            self.queue,
            self.assignment_version,
            self.map,
            table_text(&t)
        )
    }
}

/// What `queue describe` answers.
#[derive(Debug, Serialize)]
struct DescribeView {
    #[serde(flatten)]
    queue: QueueRecord,
    /// The queue's constraints (`{"invalid": reason}` when its settings hold bad ones).
    constraints: serde_json::Value,
    owners: BTreeMap<WorkerId, usize>,
    unowned: usize,
    failed: Vec<PartitionId>,
    /// Task counts of the whole queue, by state.
    tasks: BTreeMap<&'static str, u64>,
    partitions: Vec<PartitionView>,
    #[serde(skip)]
    map: String,
}

/// `helixctl queue describe`
async fn describe(client: &Client, out: Out, path: &QueuePath) -> CliResult {
    let queue = find_queue(client, path).await?;
    let map = client.partition_map(queue.id).await?;
    let counts = client.task_counts(path.domain.as_str(), path.queue.as_str()).await?;
    let constraints = match queue_constraints(&queue) {
        Ok(constraints) => serde_json::to_value(constraints).unwrap_or(serde_json::Value::Null),
        Err(e) => serde_json::json!({ "invalid": e.to_string() }),
    };
    let mut per_partition: BTreeMap<PartitionId, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    for count in &counts {
        *per_partition.entry(count.partition).or_default().entry(count.state.as_str()).or_default() +=
            count.count;
        *totals.entry(count.state.as_str()).or_default() += count.count;
    }
    let partitions = map
        .rows
        .iter()
        .map(|row| PartitionView {
            tasks: Some(per_partition.remove(&row.partition).unwrap_or_default()),
            ..PartitionView::of(row)
        })
        .collect();
    let view = DescribeView {
        queue,
        constraints,
        owners: map.counts(),
        unowned: map.unowned(),
        failed: map.failed(),
        tasks: totals,
        partitions,
        map: map.to_string(),
    };
    out.print(&view, render_describe)
}

fn render_describe(v: &DescribeView) -> String {
    let q = &v.queue;
    let constraints = match &v.constraints {
        serde_json::Value::Object(o) if o.contains_key("invalid") => {
            format!("invalid: {}", v.constraints["invalid"])
        }
        other if *other == serde_json::to_value(Constraints::default()).unwrap_or_default() => {
            "none".to_owned()
        }
        other => other.to_string(),
    };
    let totals: Vec<String> = TaskState::ALL
        .iter()
        .map(|s| format!("{} {}", s.as_str().to_lowercase(), count(&v.tasks, *s)))
        .collect();
    let mut head = vec![
        ("queue", format!("{}/{} (id {})", q.domain, q.name, q.id)),
        ("partitions", q.partition_count.to_string()),
        ("allocator", q.allocator.clone()),
        ("constraints", constraints),
        ("settings", q.settings.to_string()),
        ("assignment version", q.assignment_version.to_string()),
        ("created", instant(q.created_at)),
        ("tasks", totals.join(", ")),
    ];
    if !v.failed.is_empty() {
        let failed: Vec<String> = v.failed.iter().map(ToString::to_string).collect();
        head.push(("failed partitions", failed.join(" ")));
    }
    let width = head.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let head: Vec<String> = head.iter().map(|(k, val)| format!("{k:<width$}  {val}")).collect();
    let mut t = table([
        "PARTITION",
        "OWNER",
        "EPOCH",
        "STATE",
        "TARGET",
        "PENDING",
        "RUNNING",
        "CANCELLING",
        "DONE",
        "DEAD",
        "CANCELLED",
    ]);
    for p in &v.partitions {
        let tasks = p.tasks.clone().unwrap_or_default();
        let mut row = vec![
            p.partition.to_string(),
            or_dash(p.owner),
            p.epoch.to_string(),
            p.state.to_owned(),
            or_dash(p.target),
        ];
        row.extend(TaskState::ALL.iter().map(|s| count(&tasks, *s).to_string()));
        t.add_row(row);
    }
    format!("{}\n\n{}\n\n{}", head.join("\n"), v.map, table_text(&t))
}

fn count(counts: &BTreeMap<&'static str, u64>, state: TaskState) -> u64 {
    counts.get(state.as_str()).copied().unwrap_or(0)
}
