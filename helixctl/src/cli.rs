//! The command line, as clap reads it: every command, flag and value parser. Input that a
//! parser here refuses is a usage error (exit 2) before anything touches the store.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use helix_core::{DomainName, QueueName, WorkerId};
use helix_store::{MAX_EVENTS_PER_READ, MissedSlots, TaskState};

pub(crate) use helixctl::DEFAULT_DATABASE_URL;

/// The most tasks one `task list` reads (the store's batch bound).
const MAX_TASK_PAGE: u32 = 10_000;

/// Operate a Helix cluster: domains, queues, tasks, schedules, and who owns what.
///
/// Every command is one or a few reads or writes of the cluster's database; helixctl keeps no
/// state of its own. Pending migrations are applied on connect, as every Helix process does.
///
/// Exit codes: 0 success; 1 failure (the store refused or failed, something was not found,
/// a conflict); 2 bad usage (unknown command, a missing or malformed argument).
#[derive(Debug, Parser)]
#[command(name = "helixctl", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    /// The cluster's database: mysql://USER:PASSWORD@HOST:3306/DATABASE (or mariadb://),
    /// sqlite://PATH/TO/FILE.db, sqlite::memory: or memory://. The default is a SQLite file
    /// helix.db in the current directory, created on first use. Passwords are never printed.
    #[arg(
        long,
        global = true,
        env = "HELIX_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub(crate) database_url: String,

    /// Print one JSON document on stdout instead of tables (`events --follow`: one JSON
    /// document per line, per event).
    #[arg(long, global = true, help_heading = "Global options")]
    pub(crate) json: bool,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Apply pending migrations and print the schema version the database is at.
    Migrate,
    /// Create, list and delete domains (the namespaces of queues).
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Create, list, describe and delete queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// The coordinator (leader, term, lease) and the workers (state, lease, partitions owned).
    Status(StatusArgs),
    /// Who owns each partition of a queue: owner, epoch, state, revocation target.
    Assignments {
        /// The queue, as DOMAIN/QUEUE.
        queue: QueuePath,
    },
    /// The cluster's history: elections, joins, deaths, grants, revocations, handoffs.
    Events(EventsArgs),
    /// Enqueue one task and print its id (or the id of the task that holds its dedup key).
    Enqueue(EnqueueArgs),
    /// Read, list, cancel and retry tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Create, list, pause, resume and delete recurring schedules.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Operator actions on one partition.
    #[command(subcommand)]
    Partition(PartitionCommand),
    /// Operator actions on one worker.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Run a scheduler node: take part in the coordinator election, deliver the configured
    /// queues' webhooks, and serve the HTTP API (`/v1`) until SIGTERM or Ctrl-C, then leave
    /// gracefully. Several processes on one database form a cluster.
    Serve(ServeArgs),
}

/// `helixctl serve`
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The TOML configuration (database_url, [http], [[queues]], [webhook], [cluster]);
    /// `HELIX_SERVE__SECTION__KEY` environment variables override it. Without one: the
    /// defaults (127.0.0.1:8080, read-only API, queue default/webhooks of 16 partitions).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
}

/// `helixctl domain …`
#[derive(Debug, Subcommand)]
pub(crate) enum DomainCommand {
    /// Create a domain.
    Create {
        /// The domain's name (1 to 64 characters from A-Z a-z 0-9 _ - . :).
        name: DomainName,
    },
    /// List every domain.
    List,
    /// Delete an empty domain (delete its queues first).
    Delete {
        /// The domain's name.
        name: DomainName,
    },
}

/// `helixctl queue …`
#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Create a queue in an existing domain, with a fixed number of partitions.
    Create {
        /// The queue, as DOMAIN/QUEUE.
        queue: QueuePath,
        /// How many partitions (1 to 65536); it never changes afterwards.
        #[arg(long, short = 'p', value_name = "N")]
        partitions: u64,
        /// The allocation strategy that places its partitions on workers.
        #[arg(long, value_name = "NAME", default_value = helix_store::DEFAULT_ALLOCATOR,
              value_parser = clap::builder::PossibleValuesParser::new(helix_core::allocation::STRATEGY_NAMES))]
        allocator: String,
    },
    /// List the queues of one domain, or of all.
    List {
        /// Only this domain's queues.
        domain: Option<DomainName>,
    },
    /// A queue in full: allocator, constraints, and per partition its owner, epoch, state and
    /// task counts.
    Describe {
        /// The queue, as DOMAIN/QUEUE.
        queue: QueuePath,
    },
    /// Delete a queue with its assignments.
    Delete {
        /// The queue, as DOMAIN/QUEUE.
        queue: QueuePath,
    },
}

/// `helixctl status`
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Also list workers that left or were declared dead.
    #[arg(long)]
    pub(crate) all: bool,
}

/// `helixctl events`
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only events with an id above this one (0: from the first).
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub(crate) after: u64,
    /// At most this many events (1 to 1000); with --follow, per poll.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_EVENTS_PER_READ)))]
    pub(crate) limit: u32,
    /// Keep polling for new events every 500 ms and print them as they come; Ctrl-C stops.
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
}

/// A task's payload: text, a file, or a JSON value.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub(crate) struct PayloadArgs {
    /// The payload as text.
    #[arg(long, value_name = "STR")]
    pub(crate) payload: Option<String>,
    /// The payload read from a file, as bytes (at most 1 MiB).
    #[arg(long, value_name = "PATH")]
    pub(crate) payload_file: Option<PathBuf>,
    /// The payload as a JSON value, checked and stored compact.
    #[arg(long, value_name = "JSON")]
    pub(crate) payload_json: Option<String>,
}

/// `helixctl enqueue`
#[derive(Debug, Args)]
pub(crate) struct EnqueueArgs {
    /// The queue, as DOMAIN/QUEUE.
    pub(crate) queue: QueuePath,
    #[command(flatten)]
    pub(crate) payload: PayloadArgs,
    /// Route by this key: tasks with one key go to one partition and run in order.
    #[arg(long, value_name = "K", conflicts_with = "partition")]
    pub(crate) key: Option<String>,
    /// Put the task in this partition (from 0, below the queue's partition count).
    #[arg(long, value_name = "P")]
    pub(crate) partition: Option<u32>,
    /// Due at this instant, RFC 3339 (2026-12-24T18:00:00Z); at once when in the past.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339, conflicts_with = "delay")]
    pub(crate) run_at: Option<DateTime<Utc>>,
    /// Due this long after the enqueue, on the database's clock (30s, 5m, 1h 30m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) delay: Option<Duration>,
    /// Claim order within the partition: smaller runs first.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i32,
    /// Attempts in all, 1 to 1000 (default 10).
    #[arg(long, value_name = "N")]
    pub(crate) max_attempts: Option<u32>,
    /// The longest one attempt may run, 1ms to 24h (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// At most one unfinished task of the queue holds this key (1 to 255 bytes): enqueuing
    /// again answers the holder's id, not created.
    #[arg(long, value_name = "K")]
    pub(crate) dedup_key: Option<String>,
    /// Deliver the task as a webhook: a POST of the payload (`--payload-json`, else the text
    /// payload as a JSON string, else `null`) to this http(s) URL, by a worker whose queue
    /// runs the webhook handler. The URL is checked now (scheme, host, no credentials, at
    /// most 2,048 bytes); see docs/scheduling.md, "Webhooks".
    #[arg(long, value_name = "URL", conflicts_with = "payload_file")]
    pub(crate) webhook: Option<String>,
}

/// `helixctl task …`
#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// One task, unfinished or finished: state, attempts, last error, timestamps, payload.
    Get {
        /// The task's id.
        id: u64,
    },
    /// The tasks of a queue in one state, in id order (page on with --after).
    List {
        /// The queue, as DOMAIN/QUEUE.
        queue: QueuePath,
        /// Which state.
        #[arg(long, value_enum, default_value_t = StateArg::Pending)]
        state: StateArg,
        /// Only tasks with an id above this one: the last id of the previous page.
        #[arg(long, value_name = "ID")]
        after: Option<u64>,
        /// At most this many tasks (1 to 10000).
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_TASK_PAGE)))]
        limit: u32,
    },
    /// Cancel a task: a pending one will not run; a running one ends cancelled when its
    /// attempt ends; a finished one is left alone.
    Cancel {
        /// The task's id.
        id: u64,
    },
    /// Retry a dead task: pending again, due now, attempts reset, last error kept.
    Retry {
        /// The task's id.
        id: u64,
    },
}

/// A task state, as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StateArg {
    /// Waiting for its run_at and a claim.
    Pending,
    /// Claimed by a partition's owner.
    Running,
    /// Running, and cancelled meanwhile.
    Cancelling,
    /// Completed.
    Done,
    /// Out of attempts (a dead letter).
    Dead,
    /// Cancelled.
    Cancelled,
}

impl From<StateArg> for TaskState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Pending => Self::Pending,
            StateArg::Running => Self::Running,
            StateArg::Cancelling => Self::Cancelling,
            StateArg::Done => Self::Done,
            StateArg::Dead => Self::Dead,
            StateArg::Cancelled => Self::Cancelled,
        }
    }
}

/// `helixctl schedule …`
#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Create a recurring schedule: each of its slots becomes exactly one task, due at the
    /// slot. A running coordinator materializes the slots.
    Create(Box<ScheduleCreateArgs>),
    /// List the schedules of a queue.
    List {
        /// The queue, as DOMAIN/QUEUE.
        queue: QueuePath,
    },
    /// Pause a schedule: no task until resumed; tasks of slots still ahead are cancelled.
    Pause(ScheduleRef),
    /// Resume a paused schedule from its next slot; the slots of the pause are skipped.
    Resume(ScheduleRef),
    /// Delete a schedule; tasks of its slots still ahead are cancelled.
    Delete(ScheduleRef),
}

/// A schedule by queue and name.
#[derive(Debug, Args)]
pub(crate) struct ScheduleRef {
    /// The queue, as DOMAIN/QUEUE.
    pub(crate) queue: QueuePath,
    /// The schedule's name.
    pub(crate) name: String,
}

/// `helixctl schedule create`
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("recurrence").required(true).args(["cron", "every"]))]
pub(crate) struct ScheduleCreateArgs {
    /// The queue, as DOMAIN/QUEUE.
    pub(crate) queue: QueuePath,
    /// The schedule's name, unique in its queue.
    pub(crate) name: String,
    /// Slots at the instants of a cron expression: 5 fields (minute first) or 6 (second
    /// first), read in --time-zone ("30 7 * * MON-FRI").
    #[arg(long, value_name = "EXPR")]
    pub(crate) cron: Option<String>,
    /// Slots every this long (1s to 366 days), on its multiples since the Unix epoch.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) every: Option<Duration>,
    /// The IANA time zone the cron expression is read in (Europe/Berlin).
    #[arg(long, value_name = "TZ", default_value = "UTC")]
    pub(crate) time_zone: String,
    #[command(flatten)]
    pub(crate) payload: PayloadArgs,
    /// Put the tasks on this key's partition (default: the schedule name's).
    #[arg(long, value_name = "K", conflicts_with = "partition")]
    pub(crate) key: Option<String>,
    /// Put the tasks on this partition.
    #[arg(long, value_name = "P")]
    pub(crate) partition: Option<u32>,
    /// Each task's priority: smaller runs first.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i32,
    /// Each task's attempts, 1 to 1000 (default 10).
    #[arg(long, value_name = "N")]
    pub(crate) max_attempts: Option<u32>,
    /// Each attempt's longest run, 1ms to 24h (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// What becomes of slots found later than --grace: skip them, or run the latest once.
    #[arg(long, value_enum, default_value_t = MissedArg::Skip)]
    pub(crate) missed: MissedArg,
    /// How late a slot may still make its task before it counts as missed (at most 1 day;
    /// default 60s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) grace: Option<Duration>,
    /// Create it paused: no task until `schedule resume`.
    #[arg(long)]
    pub(crate) paused: bool,
}

/// A missed-slot policy, as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MissedArg {
    /// Missed slots make no task.
    Skip,
    /// The latest missed slot makes one task, due at once.
    RunLatest,
}

impl From<MissedArg> for MissedSlots {
    fn from(policy: MissedArg) -> Self {
        match policy {
            MissedArg::Skip => Self::Skip,
            MissedArg::RunLatest => Self::RunLatest,
        }
    }
}

/// `helixctl partition …`
#[derive(Debug, Subcommand)]
pub(crate) enum PartitionCommand {
    /// Reset a failed partition: unowned again, for the coordinator to grant on its next
    /// round. A partition that has not failed is left alone.
    Reset {
        /// The queue, as DOMAIN/QUEUE.
        queue: QueuePath,
        /// The partition, from 0.
        partition: u32,
    },
}

/// `helixctl worker …`
#[derive(Debug, Subcommand)]
pub(crate) enum WorkerCommand {
    /// Drain a live worker: it keeps its session but gets no new partitions, and the
    /// coordinator moves its partitions to other workers.
    Drain {
        /// The worker's id (a UUID, as `helixctl status` prints it).
        id: WorkerId,
    },
    /// Make a draining worker eligible for partitions again.
    Activate {
        /// The worker's id.
        id: WorkerId,
    },
}

/// A queue named on the command line as `DOMAIN/QUEUE`, both names checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueuePath {
    /// The domain.
    pub(crate) domain: DomainName,
    /// The queue.
    pub(crate) queue: QueueName,
}

impl FromStr for QueuePath {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let Some((domain, queue)) = raw.split_once('/') else {
            return Err(format!("expected DOMAIN/QUEUE, as in shop/orders, not {raw:?}"));
        };
        let domain = DomainName::new(domain).map_err(|e| format!("in {raw:?}: {e}"))?;
        let queue = QueueName::new(queue).map_err(|e| format!("in {raw:?}: {e}"))?;
        Ok(Self { domain, queue })
    }
}

impl std::fmt::Display for QueuePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.domain, self.queue)
    }
}

/// A duration as people write it: `30s`, `500ms`, `5m`, `1h 30m`.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration ({e}); write it as 30s, 500ms, 5m or 1h 30m"))
}

/// An instant in RFC 3339: `2026-12-24T18:00:00Z`, `2026-12-24T19:00:00+01:00`.
fn parse_rfc3339(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| format!("{raw:?} is not an RFC 3339 instant ({e}); write it as 2026-12-24T18:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn queue_paths_parse_and_refuse_bad_forms() {
        let path: QueuePath = "shop/orders".parse().expect("parses");
        assert_eq!(path.to_string(), "shop/orders");
        for bad in ["shop", "shop/", "/orders", "shop/or ders", "sh op/orders"] {
            assert!(bad.parse::<QueuePath>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_instants_parse() {
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err_and(|e| e.contains("30s")));
        assert_eq!(
            parse_rfc3339("2026-12-24T19:00:00+01:00").map(|t| t.to_rfc3339()),
            Ok("2026-12-24T18:00:00+00:00".to_owned())
        );
        assert!(parse_rfc3339("tomorrow").is_err_and(|e| e.contains("RFC 3339")));
    }
}
