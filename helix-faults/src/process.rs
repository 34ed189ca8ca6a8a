//! Starting, signalling and stopping `helix-node` processes.
//!
//! A [`NodeProcess`] is one child process running the `helix-node` binary with
//! [`NodeOptions`]; its standard output and error go to files next to its tick log, so a
//! chatty child never blocks on a full pipe and a failed test can show what it said. Dropping
//! a `NodeProcess` kills the child (`SIGKILL` also ends a stopped one) and reaps it, so no
//! test leaves processes behind, whatever assertion failed.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use helix_core::{ClusterConfig, WorkerId};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// How often [`NodeProcess::wait_exit`] looks whether the child has exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// What one `helix-node` process runs: a worker, a coordinator candidate, or both, on one
/// queue of one store.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The store URL (`mysql://…/database` or `sqlite:///path`).
    pub database_url: String,
    /// The queue's domain.
    pub domain: String,
    /// The queue's name.
    pub queue: String,
    /// The queue's partition count (the node creates the queue when it does not exist).
    pub partitions: u64,
    /// Run a worker under this id.
    pub worker: Option<WorkerId>,
    /// The worker's capacity for the queue.
    pub capacity: u32,
    /// Run a coordinator candidate under this id.
    pub coordinator: Option<WorkerId>,
    /// The cluster's timings.
    pub config: ClusterConfig,
    /// How often each partition's ticker ticks.
    pub tick_interval: Duration,
    /// How long the handler's `revoked` takes (its drain of in-flight work).
    pub drain_time: Duration,
    /// The node's connection pool size.
    pub pool_size: u32,
}

impl NodeOptions {
    /// A node on `database_url` serving the queue `faults/q` of `partitions` partitions, with
    /// the default timings, ticking every 20 ms, running nothing yet (see
    /// [`worker`](Self::worker) and [`coordinator`](Self::coordinator)).
    pub fn new(database_url: impl Into<String>, partitions: u64) -> Self {
        Self {
            database_url: database_url.into(),
            domain: "faults".into(),
            queue: "q".into(),
            partitions,
            worker: None,
            capacity: 1,
            coordinator: None,
            config: ClusterConfig::default(),
            tick_interval: Duration::from_millis(20),
            drain_time: Duration::ZERO,
            pool_size: 4,
        }
    }

    /// The same node running a worker under `id`.
    #[must_use]
    pub fn worker(mut self, id: WorkerId) -> Self {
        self.worker = Some(id);
        self
    }

    /// The same node running a coordinator candidate under `id`.
    #[must_use]
    pub fn coordinator(mut self, id: WorkerId) -> Self {
        self.coordinator = Some(id);
        self
    }

    /// The command-line arguments of `helix-node` for these options, logging ticks to
    /// `tick_log`.
    pub fn args(&self, tick_log: &Path) -> Vec<OsString> {
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let c = &self.config;
        let mut args: Vec<OsString> = [
            ("--database-url", self.database_url.clone()),
            ("--domain", self.domain.clone()),
            ("--queue", self.queue.clone()),
            ("--partitions", self.partitions.to_string()),
            ("--capacity", self.capacity.to_string()),
            ("--tick-interval", duration(self.tick_interval)),
            ("--drain-time", duration(self.drain_time)),
            ("--pool-size", self.pool_size.to_string()),
            ("--heartbeat-interval", duration(c.heartbeat_interval)),
            ("--session-timeout", duration(c.session_timeout)),
            ("--coordinator-lease", duration(c.coordinator_lease)),
            ("--coordinator-renew-interval", duration(c.coordinator_renew_interval)),
            ("--safety-margin", duration(c.safety_margin)),
            ("--reconcile-interval", duration(c.reconcile_interval)),
            ("--full-reevaluation-interval", duration(c.full_reevaluation_interval)),
            ("--drain-timeout", duration(c.drain_timeout)),
            ("--revoke-timeout", duration(c.revoke_timeout)),
            ("--revoke-cooldown", duration(c.revoke_cooldown)),
            ("--rejoin-delay", duration(c.rejoin_delay)),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [OsString::from(flag), OsString::from(value)])
        .collect();
        args.push("--tick-log".into());
        args.push(tick_log.into());
        if let Some(id) = self.worker {
            args.push("--worker-id".into());
            args.push(id.to_string().into());
        }
        if let Some(id) = self.coordinator {
            args.push("--coordinator-id".into());
            args.push(id.to_string().into());
        }
        args
    }
}

/// A running (or exited) `helix-node` process.
#[derive(Debug)]
pub struct NodeProcess {
    name: String,
    child: Child,
    tick_log: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

/// Why a process could not be signalled.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The process has already exited (its pid may belong to another process by now).
    #[error("{name} has already exited ({status})")]
    Exited {
        /// The process's name.
        name: String,
        /// How it exited.
        status: ExitStatus,
    },
    /// `kill(2)` failed.
    #[error("signalling {name}: {source}")]
    Kill {
        /// The process's name.
        name: String,
        /// The cause.
        source: nix::Error,
    },
    /// Waiting for the process failed.
    #[error("waiting for {name}: {source}")]
    Wait {
        /// The process's name.
        name: String,
        /// The cause.
        source: io::Error,
    },
}

impl NodeProcess {
    /// Starts `binary` (the `helix-node` executable) as the node `name`: its tick log is
    /// `dir/<name>.ticks`, its standard output and error `dir/<name>.out` and `.err`. The
    /// child's log level is `HELIX_NODE_LOG` when set, else `info`.
    ///
    /// # Errors
    /// When the files cannot be created or the process cannot be started.
    pub fn spawn(binary: &Path, dir: &Path, name: &str, options: &NodeOptions) -> io::Result<Self> {
        let tick_log = dir.join(format!("{name}.ticks"));
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let level = std::env::var("HELIX_NODE_LOG").unwrap_or_else(|_| "info".to_owned());
        let child = Command::new(binary)
            .args(options.args(&tick_log))
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()?;
        Ok(Self { name: name.to_owned(), child, tick_log, stdout, stderr, status: None })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's tick log.
    pub fn tick_log(&self) -> &Path {
        &self.tick_log
    }

    /// Sends `signal` to the process.
    ///
    /// # Errors
    /// [`SignalError::Exited`] when it has already exited (and been reaped),
    /// [`SignalError::Kill`] when `kill(2)` fails.
    pub fn signal(&mut self, signal: Signal) -> Result<(), SignalError> {
        if let Some(status) = self.try_status().map_err(|source| self.wait_error(source))? {
            return Err(SignalError::Exited { name: self.name.clone(), status });
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap_or(i32::MAX));
        kill(pid, signal).map_err(|source| SignalError::Kill { name: self.name.clone(), source })
    }

    /// Kills the process with `SIGKILL` (also when it is stopped) and reaps it.
    ///
    /// # Errors
    /// When it cannot be killed or waited for.
    pub fn kill(&mut self) -> Result<ExitStatus, SignalError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        // Fails only when it has already exited; `wait` tells how.
        let _ = self.child.kill();
        let status = self.child.wait().map_err(|source| self.wait_error(source))?;
        self.status = Some(status);
        Ok(status)
    }

    /// How the process exited, `None` while it runs.
    ///
    /// # Errors
    /// When waiting fails.
    pub fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `within` for the process to exit; `None` when it still runs then.
    ///
    /// # Errors
    /// When waiting fails.
    pub async fn wait_exit(&mut self, within: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            sleep(EXIT_POLL).await;
        }
    }

    /// Asks the process to stop with `SIGTERM` and waits up to `within` for it to exit;
    /// kills it when it has not by then. Returns how it exited, and whether it stopped by
    /// itself.
    ///
    /// # Errors
    /// When it cannot be signalled or waited for.
    pub async fn terminate(&mut self, within: Duration) -> Result<(ExitStatus, bool), SignalError> {
        match self.signal(Signal::SIGTERM) {
            Ok(()) => {}
            Err(SignalError::Exited { status, .. }) => return Ok((status, true)),
            Err(error) => return Err(error),
        }
        match self.wait_exit(within).await.map_err(|source| self.wait_error(source))? {
            Some(status) => Ok((status, true)),
            None => Ok((self.kill()?, false)),
        }
    }

    /// What the process wrote to its standard error so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// What the process wrote to its standard output so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The last `lines` lines of its standard error, for a report.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = self.stderr_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn wait_error(&self, source: io::Error) -> SignalError {
        SignalError::Wait { name: self.name.clone(), source }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
