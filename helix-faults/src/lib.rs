//! Multi-process fault tests and benchmarks of Helix.
//!
//! The in-process tests of `helix-actors` run every node on one actix system; the faults that
//! matter most in production happen to whole processes: a second process started under a live
//! id, a process frozen by `SIGSTOP` (a long GC-like pause, a VM suspend) or killed with
//! `SIGKILL`. This crate runs each Helix node as a real process and watches what its user code
//! does:
//!
//! - the `helix-node` binary runs one node (a worker, a coordinator candidate, or both) on a
//!   store URL (MariaDB/MySQL or a SQLite file), with a partition handler whose ticker appends
//!   one [`Tick`] per tick to the process's [tick log](ticklog), and exits cleanly on
//!   `SIGTERM`;
//! - [`process`] starts, signals and stops such processes, and [`cluster`] runs a set of them
//!   on one store and queue, reading their tick logs and the assignment rows;
//! - [`ticklog`] writes and reads the tick logs;
//! - [`proxy`] counts one node's round trips to a MySQL/MariaDB server;
//! - [`analysis`] turns ticks into tenures (who ran which partition, at which epoch, from when
//!   to when) and finds the overlaps that the ownership promise forbids;
//! - the `process_faults` tests and the `failover` benchmark use them.
//!
//! Times in the logs are read from the system-wide monotonic clock ([`clock::monotonic_ns`]),
//! which every process on one machine shares, so ticks of different processes compare.

pub mod analysis;
pub mod clock;
pub mod cluster;
pub mod process;
pub mod proxy;
pub mod ticklog;

pub use analysis::{Leadership, Overlap, Tenure};
pub use ticklog::{Lead, Record, Tick};
