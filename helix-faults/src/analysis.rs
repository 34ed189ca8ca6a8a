//! From tick logs to verdicts: tenures of partitions and leaderships of coordinators, and the
//! overlaps between them that the ownership promise forbids.
//!
//! A tenure is what one process did under one ownership: the ticks of one partition at one
//! epoch by one process, from the first to the last. The ticks are samples of the time user
//! code ran, so a tenure is a lower bound of the time the process acted as owner; an overlap of
//! two tenures is therefore always a real overlap, never an artefact of sampling.
//!
//! The promise, per partition (`docs/protocol.md`): ownerships follow one another in epoch
//! order and never overlap in time. So for two tenures of one partition:
//! - with epochs `e1 < e2`, the last tick at `e1` comes before the first at `e2`
//!   ([`Overlap::Stale`] otherwise: user code ran under an ownership that had already ended);
//! - at one epoch, two processes never tick at the same time ([`Overlap::Shared`] otherwise:
//!   one ownership, two processes).

use std::collections::BTreeMap;
use std::fmt;

use helix_core::{Epoch, PartitionId, QueueId, Term, WorkerId};
use helix_store::{AssignmentRecord, AssignmentState};

use crate::ticklog::{Lead, Tick};

/// The ticks of one partition at one epoch by one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenure {
    /// The queue.
    pub queue: QueueId,
    /// The partition.
    pub partition: PartitionId,
    /// The epoch.
    pub epoch: Epoch,
    /// The process.
    pub pid: u32,
    /// The worker id it ran under.
    pub worker: WorkerId,
    /// Its first tick, monotonic nanoseconds.
    pub first_ns: u64,
    /// Its last tick, monotonic nanoseconds.
    pub last_ns: u64,
    /// How many ticks.
    pub ticks: usize,
}

/// Two tenures of one partition that overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// User code of an older epoch ran after that of a newer one had started.
    Stale {
        /// The tenure under the older epoch.
        older: Tenure,
        /// The tenure under the newer epoch.
        newer: Tenure,
    },
    /// Two processes ran the partition at one epoch at the same time.
    Shared {
        /// One of them.
        first: Tenure,
        /// The other.
        second: Tenure,
    },
}

impl Overlap {
    /// How long the two ran at once, in nanoseconds: for [`Overlap::Stale`] how long after
    /// the newer owner's first tick the older one last ticked.
    pub fn overlap_ns(&self) -> u64 {
        match self {
            Self::Stale { older, newer } => older.last_ns.saturating_sub(newer.first_ns),
            Self::Shared { first, second } => {
                first.last_ns.min(second.last_ns).saturating_sub(first.first_ns.max(second.first_ns))
            }
        }
    }
}

impl fmt::Display for Tenure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} (worker {}) at epoch {}: {} ticks, {:.3} s – {:.3} s",
            self.pid,
            self.worker,
            self.epoch,
            self.ticks,
            secs(self.first_ns),
            secs(self.last_ns)
        )
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.overlap_ns() as f64 / 1e6;
        match self {
            Self::Stale { older, newer } => write!(
                f,
                "queue {} partition {}: epoch {} ticked {ms:.1} ms after epoch {} started [{older}] vs [{newer}]",
                older.queue, older.partition, older.epoch, newer.epoch
            ),
            Self::Shared { first, second } => write!(
                f,
                "queue {} partition {}: two processes ticked epoch {} at once for {ms:.1} ms [{first}] vs [{second}]",
                first.queue, first.partition, first.epoch
            ),
        }
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The tenures of `ticks`, sorted by (queue, partition, first tick).
pub fn tenures<'a>(ticks: impl IntoIterator<Item = &'a Tick>) -> Vec<Tenure> {
    let mut by_key: BTreeMap<(QueueId, PartitionId, Epoch, u32), Tenure> = BTreeMap::new();
    for t in ticks {
        by_key
            .entry((t.queue, t.partition, t.epoch, t.pid))
            .and_modify(|tenure| {
                tenure.first_ns = tenure.first_ns.min(t.mono_ns);
                tenure.last_ns = tenure.last_ns.max(t.mono_ns);
                tenure.ticks += 1;
            })
            .or_insert(Tenure {
                queue: t.queue,
                partition: t.partition,
                epoch: t.epoch,
                pid: t.pid,
                worker: t.worker,
                first_ns: t.mono_ns,
                last_ns: t.mono_ns,
                ticks: 1,
            });
    }
    let mut out: Vec<Tenure> = by_key.into_values().collect();
    out.sort_by_key(|t| (t.queue, t.partition, t.first_ns));
    out
}

/// Every pair of `tenures` that breaks the promise (see the module's documentation).
pub fn overlaps(tenures: &[Tenure]) -> Vec<Overlap> {
    let mut per_partition: BTreeMap<(QueueId, PartitionId), Vec<&Tenure>> = BTreeMap::new();
    for t in tenures {
        per_partition.entry((t.queue, t.partition)).or_default().push(t);
    }
    let mut found = Vec::new();
    for list in per_partition.values() {
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                let (a, b) = (**a, **b);
                if a.epoch != b.epoch {
                    let (older, newer) = if a.epoch < b.epoch { (a, b) } else { (b, a) };
                    if older.last_ns >= newer.first_ns {
                        found.push(Overlap::Stale { older, newer });
                    }
                } else if a.pid != b.pid && a.first_ns <= b.last_ns && b.first_ns <= a.last_ns {
                    found.push(Overlap::Shared { first: a, second: b });
                }
            }
        }
    }
    found
}

/// The last tick of each ownership (queue, partition, worker, epoch) in `ticks`, monotonic
/// nanoseconds.
pub fn last_ticks<'a>(
    ticks: impl IntoIterator<Item = &'a Tick>,
) -> BTreeMap<(QueueId, PartitionId, WorkerId, Epoch), u64> {
    let mut last = BTreeMap::new();
    for t in ticks {
        let at = last.entry((t.queue, t.partition, t.worker, t.epoch)).or_insert(t.mono_ns);
        *at = (*at).max(t.mono_ns);
    }
    last
}

/// The rows of `rows` that do not run on their owner: not settled (`ASSIGNED` with an owner),
/// or without a tick by the owner at the row's epoch since `since_ns` (monotonic) in `last`
/// (from [`last_ticks`]).
pub fn not_running_on_owner<'a>(
    rows: &'a [AssignmentRecord],
    last: &BTreeMap<(QueueId, PartitionId, WorkerId, Epoch), u64>,
    since_ns: u64,
) -> Vec<&'a AssignmentRecord> {
    rows.iter()
        .filter(|r| {
            let ticked = |owner: WorkerId| {
                last.get(&(r.queue_id, r.partition, owner, r.epoch)).is_some_and(|at| *at >= since_ns)
            };
            r.state != AssignmentState::Assigned || !r.owner.is_some_and(ticked)
        })
        .collect()
}

/// The samples of one process leading under one term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The process.
    pub pid: u32,
    /// Its identity in the election.
    pub node: WorkerId,
    /// The term.
    pub term: Term,
    /// The first sample, monotonic nanoseconds.
    pub first_ns: u64,
    /// The last sample, monotonic nanoseconds.
    pub last_ns: u64,
    /// How many samples.
    pub samples: usize,
}

impl fmt::Display for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} (node {}) term {}: {} samples, {:.3} s – {:.3} s",
            self.pid,
            self.node,
            self.term,
            self.samples,
            secs(self.first_ns),
            secs(self.last_ns)
        )
    }
}

/// The leaderships of `leads`, one per (process, term), sorted by first sample.
pub fn leaderships<'a>(leads: impl IntoIterator<Item = &'a Lead>) -> Vec<Leadership> {
    let mut by_key: BTreeMap<(u32, Term), Leadership> = BTreeMap::new();
    for l in leads {
        by_key
            .entry((l.pid, l.term))
            .and_modify(|s| {
                s.first_ns = s.first_ns.min(l.mono_ns);
                s.last_ns = s.last_ns.max(l.mono_ns);
                s.samples += 1;
            })
            .or_insert(Leadership {
                pid: l.pid,
                node: l.node,
                term: l.term,
                first_ns: l.mono_ns,
                last_ns: l.mono_ns,
                samples: 1,
            });
    }
    let mut out: Vec<Leadership> = by_key.into_values().collect();
    out.sort_by_key(|l| l.first_ns);
    out
}

/// Every pair of leaderships of two processes that share a term or lead at the same time:
/// each term is one process's, and there is one leader at a time.
pub fn leader_conflicts(leaderships: &[Leadership]) -> Vec<(Leadership, Leadership)> {
    let mut found = Vec::new();
    for (i, a) in leaderships.iter().enumerate() {
        for b in &leaderships[i + 1..] {
            let concurrent = a.first_ns <= b.last_ns && b.first_ns <= a.last_ns;
            if a.pid != b.pid && (a.term == b.term || concurrent) {
                found.push((*a, *b));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(pid: u32, epoch: u64, at: u64) -> Tick {
        Tick {
            pid,
            worker: WorkerId::from_slice(&u128::from(pid).to_be_bytes()).expect("16 bytes"),
            queue: QueueId(1),
            partition: PartitionId(0),
            epoch: Epoch(epoch),
            mono_ns: at,
            wall_ns: at,
        }
    }

    #[test]
    fn handovers_in_epoch_order_do_not_overlap() {
        let ticks = [tick(1, 1, 10), tick(1, 1, 20), tick(2, 2, 30), tick(2, 2, 40), tick(1, 3, 50)];
        let t = tenures(&ticks);
        assert_eq!(t.len(), 3);
        assert!(overlaps(&t).is_empty());
    }

    #[test]
    fn a_late_tick_of_an_older_epoch_is_stale() {
        let ticks = [tick(1, 1, 10), tick(2, 2, 30), tick(2, 2, 40), tick(1, 1, 35)];
        let found = overlaps(&tenures(&ticks));
        assert_eq!(found.len(), 1);
        assert!(matches!(found[0], Overlap::Stale { older, newer } if older.pid == 1 && newer.pid == 2));
        assert_eq!(found[0].overlap_ns(), 5);
    }

    #[test]
    fn two_processes_at_one_epoch_at_once_share_it() {
        let ticks = [tick(1, 4, 10), tick(1, 4, 50), tick(2, 4, 30)];
        let found = overlaps(&tenures(&ticks));
        assert!(matches!(found.as_slice(), [Overlap::Shared { .. }]));
        // One after the other at one epoch is not an overlap in time.
        let ticks = [tick(1, 4, 10), tick(2, 4, 30)];
        assert!(overlaps(&tenures(&ticks)).is_empty());
    }

    #[test]
    fn leaders_may_neither_share_a_term_nor_lead_at_once() {
        let node = WorkerId::new_v7();
        let lead = |pid, term, at| Lead { pid, node, term: Term(term), mono_ns: at, wall_ns: at };
        let clean = leaderships(&[lead(1, 1, 10), lead(1, 1, 20), lead(2, 2, 30)]);
        assert!(leader_conflicts(&clean).is_empty());
        let shared = leaderships(&[lead(1, 1, 10), lead(2, 1, 30)]);
        assert_eq!(leader_conflicts(&shared).len(), 1);
        let concurrent = leaderships(&[lead(1, 1, 10), lead(1, 1, 40), lead(2, 2, 30)]);
        assert_eq!(leader_conflicts(&concurrent).len(), 1);
    }
}
