//! The commands: each parses nothing (clap did), calls the client or the store, and prints
//! one answer.

mod cluster;
mod queues;
mod schedules;
mod tasks;

use helix_actors::client::Client;
use helix_store::{QueueRecord, StoreUrl};
use serde::Serialize;

use crate::cli::{Cli, Command, QueuePath};
use crate::error::{CliError, CliResult};
use crate::output::Out;

/// Runs the command `cli` names against its database.
pub(crate) async fn run(cli: Cli) -> CliResult {
    let out = Out { json: cli.json };
    let url = StoreUrl::parse(&cli.database_url)
        .map_err(|e| CliError::Usage(format!("{e}; set it with --database-url or HELIX_DATABASE_URL")))?;
    let client = Client::new(helix_store::connect(&cli.database_url).await?);
    match cli.command {
        Command::Migrate => migrate(out, &url),
        Command::Domain(command) => queues::domain(&client, out, command).await,
        Command::Queue(command) => queues::queue(&client, out, command).await,
        Command::Status(args) => cluster::status(&client, out, &args).await,
        Command::Assignments { queue } => cluster::assignments(&client, out, &queue).await,
        Command::Events(args) => cluster::events(&client, out, &args).await,
        Command::Partition(command) => cluster::partition(&client, out, command).await,
        Command::Worker(command) => cluster::worker(&client, out, command).await,
        Command::Enqueue(args) => tasks::enqueue(&client, out, args).await,
        Command::Task(command) => tasks::task(&client, out, command).await,
        Command::Schedule(command) => schedules::schedule(&client, out, command).await,
        // Run by `main` in an actix system before any of this.
        Command::Serve(_) => Err(CliError::Failed("serve runs in an actix system of its own".into())),
    }
}

/// What `migrate` answers.
#[derive(Debug, Serialize)]
struct Migrated {
    /// The database, its password redacted.
    database: String,
    /// The schema version it is at; `None` for the in-memory store.
    schema_version: Option<String>,
}

/// `helixctl migrate`: connecting applied the pending migrations (or refused a database
/// newer than this binary); says where the schema is now.
fn migrate(out: Out, url: &StoreUrl) -> CliResult {
    let answer = Migrated { database: url.redacted(), schema_version: helix_store::schema_version(url) };
    out.print(&answer, |a| match &a.schema_version {
        Some(version) => {
            format!("{} is at schema version {version}, the newest this binary knows", a.database)
        }
        None => format!("{} has no schema to migrate (the in-memory store)", a.database),
    })
}

/// The queue `path`, or a not-found error that says how to create it.
async fn find_queue(client: &Client, path: &QueuePath) -> CliResult<QueueRecord> {
    client
        .queue(path.domain.as_str(), path.queue.as_str())
        .await
        .map_err(|e| CliError::from(e).when_not_found(|| queue_not_found(path)))
}

/// The message for a queue that does not exist.
fn queue_not_found(path: &QueuePath) -> String {
    format!(
        "queue {path} not found; create it with `helixctl queue create {path} --partitions 8`, \
         or list the queues with `helixctl queue list`"
    )
}
