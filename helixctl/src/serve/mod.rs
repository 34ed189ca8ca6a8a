//! `helixctl serve`: a ready-made scheduler node. One process takes part in the coordinator
//! election ([`CoordinatorNode`]), runs a worker that delivers the configured queues' tasks
//! with the built-in [`WebhookHandler`], and serves the HTTP API of [`api`]. Several such
//! processes on one database (a SQLite file on one host, or MySQL/MariaDB) form a cluster.
//!
//! Everything runs inside the actix system of the calling thread (see
//! [`helix_actors::node`]): the coordinator on that thread, the worker on its two arbiters, the
//! HTTP server on [`HTTP_WORKERS`] threads of its own.
//!
//! The modules are split by concern so that more can be added beside them: [`config`] (the
//! TOML file and its validation), [`api`] (routes and handlers), [`error`] (the JSON errors), [`schedules`] (the schedule endpoints).

pub mod api;
pub mod config;
pub mod error;
pub mod schedules;

use std::net::SocketAddr;
use std::path::Path;

use actix_web::{App, HttpServer};
use helix_actors::client::Client;
use helix_actors::node::{CoordinatorHandle, CoordinatorNode, NodeError, Worker, WorkerHandle};
use helix_actors::tasks::TaskPolicy;
use helix_actors::tasks::webhook::WebhookHandler;

use self::api::ApiState;
use self::config::{Access, ServeConfig, Validated};

/// How many threads serve HTTP requests.
pub const HTTP_WORKERS: usize = 2;

/// How long the HTTP server waits for requests in flight when it stops.
pub const HTTP_SHUTDOWN_TIMEOUT_S: u64 = 5;

/// Why `serve` could not start or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration could not be read or does not validate (exit 2).
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// The store could not be reached or refused the queues.
    #[error("{0}")]
    Store(String),
    /// The coordinator or the worker could not start, or the worker ended by itself.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The webhook handler's HTTP client could not be built.
    #[error("webhook handler: {0}")]
    Webhook(String),
    /// The HTTP API could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl ServeError {
    /// The process's exit code: 2 for a bad configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            _ => 1,
        }
    }
}

/// A running `serve` node.
pub struct Running {
    addr: SocketAddr,
    client: Client,
    http: actix_web::dev::ServerHandle,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
    worker: WorkerHandle,
    coordinator: CoordinatorHandle,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .field("worker", &self.worker.id())
            .finish_non_exhaustive()
    }
}

/// Connects to the store, creates the configured domains and queues when missing, starts the
/// coordinator node, the worker (every configured queue, the webhook handler) and the HTTP
/// API. Must run inside an actix system.
///
/// # Errors
/// [`ServeError`] saying which step failed; whatever had started is stopped.
pub async fn start(config: &Validated) -> Result<Running, ServeError> {
    let client = Client::connect(config.database_url_raw.expose())
        .await
        .map_err(|e| ServeError::Store(format!("connecting to {}: {e}", config.database_url)))?;
    let webhook =
        WebhookHandler::new(config.webhook.clone()).map_err(|e| ServeError::Webhook(e.to_string()))?;
    let mut builder = Worker::builder(client.store(), config.cluster.clone());
    for (domain, name, partitions, capacity) in &config.queues {
        let queue = client
            .ensure_queue(domain.as_str(), name.as_str(), *partitions)
            .await
            .map_err(|e| ServeError::Store(format!("queue {domain}/{name}: {e}")))?;
        builder = builder.tasks(queue.id, webhook.clone(), TaskPolicy::default()).serve(queue.id, *capacity);
    }
    let coordinator = CoordinatorNode::new(client.store(), config.cluster.clone()).start()?;
    let worker = match builder.start().await {
        Ok(worker) => worker,
        Err(e) => {
            coordinator.stop().await;
            return Err(e.into());
        }
    };
    let state = ApiState::new(client.clone(), config.access.clone(), config.max_body_bytes);
    let server = HttpServer::new(move || App::new().configure(api::routes(state.clone())))
        .workers(HTTP_WORKERS)
        .disable_signals()
        .shutdown_timeout(HTTP_SHUTDOWN_TIMEOUT_S)
        .bind(config.bind);
    let server = match server {
        Ok(server) => server,
        Err(source) => {
            let _ = worker.leave().await;
            coordinator.stop().await;
            return Err(ServeError::Bind { addr: config.bind, source });
        }
    };
    let addr = server.addrs().first().copied().unwrap_or(config.bind);
    let server = server.run();
    let http = server.handle();
    let http_task = actix_rt::spawn(server);
    tracing::info!(
        database = %config.database_url,
        %addr,
        worker = %worker.id(),
        queues = config.queues.len(),
        mutations = match config.access { Access::Token(_) => "token", Access::ReadOnly => "refused", Access::Open => "open" },
        "helixctl serve started"
    );
    Ok(Running { addr, client, http, http_task, worker, coordinator })
}

impl Running {
    /// The address the HTTP API listens on (the real port when the configuration said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client of the cluster's store this node uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The worker's handle.
    pub fn worker(&self) -> &WorkerHandle {
        &self.worker
    }

    /// Stops gracefully: the HTTP server first (requests in flight finish), then the worker
    /// leaves (drains and hands over its partitions, deregisters), then the coordinator
    /// resigns its lease.
    ///
    /// # Errors
    /// [`ServeError::Node`] when the worker had already stopped (it was superseded).
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.http.stop(true).await;
        match self.http_task.await {
            Ok(Err(error)) => tracing::warn!(%error, "the http server ended with an error"),
            Err(error) => tracing::warn!(%error, "the http server task failed"),
            Ok(Ok(())) => {}
        }
        let left = self.worker.leave().await;
        self.coordinator.stop().await;
        let outcome = left?;
        tracing::info!(?outcome, "helixctl serve stopped");
        Ok(())
    }
}

/// `helixctl serve`: reads and validates the configuration (`fallback_database_url` when it
/// names no database), starts, prints `listening on http://ADDR` on stdout, runs until
/// SIGTERM or Ctrl-C (or until the worker is superseded by another process under its id), then
/// stops gracefully. Must run inside an actix system.
///
/// # Errors
/// [`ServeError`] when the configuration is wrong or a step fails.
pub async fn run(config_path: Option<&Path>, fallback_database_url: &str) -> Result<(), ServeError> {
    let config = ServeConfig::load(config_path)?.validate(fallback_database_url)?;
    let running = start(&config).await?;
    println!("listening on http://{}", running.local_addr());
    let worker = running.worker.clone();
    let superseded = tokio::select! {
        () = shutdown_signal() => None,
        end = worker.ended() => Some(end),
    };
    if let Some(end) = superseded {
        tracing::error!(?end, "the worker ended by itself; stopping");
        running.http.stop(true).await;
        running.coordinator.stop().await;
        return Err(ServeError::Node(NodeError::Stopped));
    }
    tracing::info!("stopping: leaving the cluster gracefully");
    running.shutdown().await
}

/// Resolves on Ctrl-C, or on SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for sigterm, listening for ctrl-c only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
