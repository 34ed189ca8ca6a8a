//! Tick logs: what each node process's user code did, one line per record, appended by one
//! process and read by the tests.
//!
//! Each node process appends to a file of its own, opened in append mode; every record is one
//! `write` of one whole line (no buffering), so a reader never sees a record that the process
//! had not finished writing before it was killed, paused or stopped, apart from a partial last
//! line, which [`LogReader`] keeps until the rest arrives. The lines are tab-separated:
//!
//! ```text
//! tick  <pid> <worker> <queue> <partition> <epoch> <monotonic ns> <wall ns>
//! lead  <pid> <node>   <term>  <monotonic ns> <wall ns>
//! ```
//!
//! A `tick` is one run of a partition's ticker (user code running under that ownership); a
//! `lead` is one sample, taken every few tens of milliseconds, of a coordinator node that
//! believed it held the lease under `term`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use helix_core::{Epoch, PartitionId, QueueId, Term, WorkerId};

use crate::clock::{monotonic_ns, wall_ns};

/// One run of a partition's ticker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The process that ran it.
    pub pid: u32,
    /// The worker id the process runs under.
    pub worker: WorkerId,
    /// The queue.
    pub queue: QueueId,
    /// The partition.
    pub partition: PartitionId,
    /// The epoch of the ownership the ticker was started for.
    pub epoch: Epoch,
    /// When, on the system-wide monotonic clock, in nanoseconds.
    pub mono_ns: u64,
    /// When, on the wall clock, in nanoseconds since the Unix epoch.
    pub wall_ns: u64,
}

/// One sample of a coordinator node that believed it led.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lead {
    /// The process.
    pub pid: u32,
    /// The node's identity in the election.
    pub node: WorkerId,
    /// The term it led under (read from the store when it became leader).
    pub term: Term,
    /// When, on the system-wide monotonic clock, in nanoseconds.
    pub mono_ns: u64,
    /// When, on the wall clock, in nanoseconds since the Unix epoch.
    pub wall_ns: u64,
}

/// One line of a tick log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A partition's ticker ran.
    Tick(Tick),
    /// A coordinator node believed it led.
    Lead(Lead),
}

impl Tick {
    /// A tick of `partition` of `queue` at `epoch` by this process, now.
    pub fn now(worker: WorkerId, queue: QueueId, partition: PartitionId, epoch: Epoch) -> Self {
        Self {
            pid: std::process::id(),
            worker,
            queue,
            partition,
            epoch,
            mono_ns: monotonic_ns(),
            wall_ns: wall_ns(),
        }
    }
}

impl Lead {
    /// A sample of this process leading as `node` under `term`, now.
    pub fn now(node: WorkerId, term: Term) -> Self {
        Self { pid: std::process::id(), node, term, mono_ns: monotonic_ns(), wall_ns: wall_ns() }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tick(t) => write!(
                f,
                "tick\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                t.pid, t.worker, t.queue, t.partition, t.epoch, t.mono_ns, t.wall_ns
            ),
            Self::Lead(l) => {
                write!(f, "lead\t{}\t{}\t{}\t{}\t{}", l.pid, l.node, l.term, l.mono_ns, l.wall_ns)
            }
        }
    }
}

/// A line that is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a tick log record: {line:?}")]
pub struct ParseRecordError {
    /// The line.
    pub line: String,
}

impl FromStr for Record {
    type Err = ParseRecordError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let bad = || ParseRecordError { line: line.to_owned() };
        let fields: Vec<&str> = line.split('\t').collect();
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(bad);
        let id = |i: usize| fields.get(i).and_then(|f| f.parse::<WorkerId>().ok()).ok_or_else(bad);
        let pid = |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok()).ok_or_else(bad);
        match (fields.first(), fields.len()) {
            (Some(&"tick"), 8) => Ok(Self::Tick(Tick {
                pid: pid(1)?,
                worker: id(2)?,
                queue: QueueId(num(3)?),
                partition: PartitionId(u32::try_from(num(4)?).map_err(|_| bad())?),
                epoch: Epoch(num(5)?),
                mono_ns: num(6)?,
                wall_ns: num(7)?,
            })),
            (Some(&"lead"), 6) => Ok(Self::Lead(Lead {
                pid: pid(1)?,
                node: id(2)?,
                term: Term(num(3)?),
                mono_ns: num(4)?,
                wall_ns: num(5)?,
            })),
            _ => Err(bad()),
        }
    }
}

/// The appending end of a tick log: cheap to clone, shared by every ticker of a process.
#[derive(Debug, Clone)]
pub struct LogWriter {
    file: Arc<File>,
}

impl LogWriter {
    /// Opens `path` for appending, creating it when missing.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file: Arc::new(file) })
    }

    /// Appends `record` as one line, in one write.
    ///
    /// # Errors
    /// When the write fails.
    pub fn append(&self, record: &Record) -> io::Result<()> {
        let line = format!("{record}\n");
        (&*self.file).write_all(line.as_bytes())
    }
}

/// Why a tick log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A whole line was not a record.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line.
        source: ParseRecordError,
    },
}

/// Reads a tick log as it grows: each [`read_new`](Self::read_new) returns the records
/// appended since the previous one. A file that does not exist yet reads as empty.
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LogReader {
    /// A reader of `path` from its start.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), offset: 0, partial: Vec::new() }
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole records appended since the last call (a partial last line waits for the
    /// rest).
    ///
    /// # Errors
    /// [`LogError::Io`] when the file cannot be read, [`LogError::Parse`] for a whole line
    /// that is not a record.
    pub fn read_new(&mut self) -> Result<Vec<Record>, LogError> {
        let io = |source| LogError::Io { path: self.path.clone(), source };
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io(error)),
        };
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut bytes = std::mem::take(&mut self.partial);
        let read = file.read_to_end(&mut bytes).map_err(io)?;
        self.offset += read as u64;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.partial = bytes.split_off(complete);
        let mut records = Vec::new();
        for line in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.is_empty()) {
            let record =
                line.parse().map_err(|source| LogError::Parse { path: self.path.clone(), source })?;
            records.push(record);
        }
        Ok(records)
    }

    /// Every record of the file at `path`.
    ///
    /// # Errors
    /// As [`read_new`](Self::read_new).
    pub fn read_all(path: &Path) -> Result<Vec<Record>, LogError> {
        Self::new(path).read_new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let worker = WorkerId::new_v7();
        let records = [
            Record::Tick(Tick {
                pid: 42,
                worker,
                queue: QueueId(3),
                partition: PartitionId(7),
                epoch: Epoch(9),
                mono_ns: 123,
                wall_ns: 456,
            }),
            Record::Lead(Lead { pid: 43, node: worker, term: Term(5), mono_ns: 1, wall_ns: 2 }),
        ];
        for record in records {
            assert_eq!(record.to_string().parse::<Record>(), Ok(record));
        }
        assert!("tick\t1\t2".parse::<Record>().is_err());
        assert!("hello".parse::<Record>().is_err());
    }

    #[test]
    fn a_partial_line_waits_for_the_rest() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ticks");
        let mut reader = LogReader::new(&path);
        assert!(reader.read_new()?.is_empty(), "a missing file reads as empty");
        let record = Record::Lead(Lead::now(WorkerId::new_v7(), Term(1)));
        let line = format!("{record}\n");
        let (head, tail) = line.split_at(10);
        std::fs::write(&path, head)?;
        assert!(reader.read_new()?.is_empty());
        let writer = OpenOptions::new().append(true).open(&path)?;
        (&writer).write_all(tail.as_bytes())?;
        assert_eq!(reader.read_new()?, vec![record]);
        LogWriter::open(&path)?.append(&record)?;
        assert_eq!(reader.read_new()?, vec![record]);
        assert_eq!(LogReader::read_all(&path)?, vec![record, record]);
        Ok(())
    }
}
