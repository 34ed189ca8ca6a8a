//! The default strategy: exact balance with the least movement.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::allocation::flow::Network;
use crate::allocation::{
    Allocation, AllocationError, AllocationInput, AllocationStrategy, Assignment, Prepared, Unassigned,
};
use crate::ids::PartitionId;

const NONE: u32 = Assignment::NO_OWNER;

/// Exact balance, minimal movement, balanced across queues. The default strategy.
///
/// Guarantees (each one is a property test in `helix-core/tests/`):
///
/// - **Balance.** Every eligible worker's quota is within 1 of its exact share
///   `P × capacity / total capacity`; with equal capacities every worker gets ⌊P/N⌋ or ⌈P/N⌉.
///   With `max_partitions_per_worker`, workers whose share exceeds the maximum get the maximum
///   and the rest is shared out among the others the same way.
/// - **Stickiness.** A partition stays with its owner unless that owner is dead, ineligible
///   or above its quota. One worker joining moves exactly the partitions the newcomer
///   receives, one worker leaving moves only its orphans, unchanged input moves nothing.
/// - **Across queues.** The partitions left over after ⌊share⌋ (the "+1"s) go to the workers
///   with the least load from the other queues (relative to capacity), so with equal
///   capacities and queues allocated one after another, every worker's total over all queues
///   is within 1 of every other's. Among equally loaded workers the +1s go to the workers that
///   hold them already, which is what keeps movement minimal.
/// - **Move cap.** With a [`MoveCap`], at most that many partitions move away from a live
///   owner per round (orphans of dead workers are always placed); repeated rounds converge to
///   the uncapped result.
///
/// Cost: `O(P + N log N)` with flat arrays; one join or leave at 100 000 partitions touches
/// each partition once, with no hashing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BalancedSticky {
    /// The optional per-round limit on partitions moved away from a live owner.
    pub move_cap: Option<MoveCap>,
}

/// A per-round limit on how many partitions may move away from a live owner, like Akka's
/// `rebalance-absolute-limit` and `rebalance-relative-limit`. When both are set the smaller
/// one applies; the limit is never below 1, so rounds always make progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoveCap {
    /// At most this many partitions per round.
    pub absolute: Option<u32>,
    /// At most this fraction of the queue's partitions per round (0.1 = 10 %).
    pub relative: Option<f64>,
}

impl MoveCap {
    /// The number of moves allowed in one round for a queue of `partition_count` partitions.
    ///
    /// ```
    /// use helix_core::allocation::MoveCap;
    /// let cap = MoveCap { absolute: Some(100), relative: Some(0.05) };
    /// assert_eq!(cap.limit(1000), 50);
    /// assert_eq!(cap.limit(1_000_000), 100);
    /// assert_eq!(MoveCap { absolute: None, relative: Some(0.0) }.limit(10), 1);
    /// assert_eq!(MoveCap::default().limit(10), u32::MAX);
    /// ```
    pub fn limit(&self, partition_count: u32) -> u32 {
        let relative = self.relative.map(|fraction| {
            let allowed = (f64::from(partition_count) * fraction).floor();
            if allowed.is_nan() || allowed < 0.0 {
                0
            } else if allowed >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                allowed as u32
            }
        });
        match (self.absolute, relative) {
            (None, None) => u32::MAX,
            (Some(limit), None) | (None, Some(limit)) => limit.max(1),
            (Some(a), Some(b)) => a.min(b).max(1),
        }
    }
}

impl BalancedSticky {
    /// The strategy's name in a queue's `allocator` column.
    pub const NAME: &'static str = "balanced-sticky";

    /// The strategy with a per-round move cap.
    pub fn with_move_cap(move_cap: MoveCap) -> Self {
        Self { move_cap: Some(move_cap) }
    }
}

impl AllocationStrategy for BalancedSticky {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn allocate(&self, input: &AllocationInput<'_>) -> Result<Allocation, AllocationError> {
        let prepared = Prepared::new(input)?;
        Ok(allocate(&prepared, input, self.move_cap))
    }

    fn allocate_all(&self, queues: &[AllocationInput<'_>]) -> Result<Vec<Allocation>, AllocationError> {
        allocate_joint(queues, self.move_cap)
    }
}

/// Every eligible worker's share of a queue, split into what it surely gets and what is left
/// to decide: the base quota (⌊share⌋, or the maximum for a worker whose share reaches it),
/// the fractional part of the share, and how many "+1"s the fractional parts add up to.
#[derive(Clone)]
struct Shares {
    /// ⌊share⌋ of every worker (0 for ineligible ones, the maximum for capped ones).
    quota: Vec<u32>,
    /// The fractional part of every worker's share, as a numerator over `denominator`.
    remainder: Vec<u64>,
    /// The common denominator of the fractional parts (the uncapped workers' capacity).
    denominator: u64,
    /// The eligible workers below the maximum, the only ones that may get a "+1".
    uncapped: Vec<u32>,
    /// How many "+1"s there are: the sum of the fractional parts.
    extra: usize,
}

fn shares(prepared: &Prepared<'_>, input: &AllocationInput<'_>) -> Shares {
    let n = prepared.ids.len();
    let mut quota = vec![0u32; n];
    let mut remainder = vec![0u64; n];
    let capacity: Vec<u64> = prepared.workers.iter().map(|w| u64::from(w.capacity.get())).collect();
    let mut remaining = u64::from(input.partition_count());
    let mut remaining_capacity: u64 = prepared.eligible_indices.iter().map(|&i| capacity[i as usize]).sum();
    let mut uncapped = prepared.eligible_indices.clone();

    if let Some(max) = input.constraints.max_partitions_per_worker {
        // Water-filling: a worker whose share is at least the maximum gets the maximum, and
        // the others share what is left. Shares only shrink for smaller capacities, so the
        // capped workers are a prefix of the workers sorted by capacity, largest first.
        uncapped.sort_unstable_by(|&a, &b| capacity[b as usize].cmp(&capacity[a as usize]).then(a.cmp(&b)));
        let mut capped = 0;
        for &index in &uncapped {
            let c = capacity[index as usize];
            if u128::from(remaining) * u128::from(c) < u128::from(max) * u128::from(remaining_capacity) {
                break;
            }
            quota[index as usize] = max;
            remaining -= u64::from(max).min(remaining);
            remaining_capacity -= c;
            capped += 1;
        }
        uncapped.drain(..capped);
        uncapped.sort_unstable();
    }
    if uncapped.is_empty() || remaining_capacity == 0 {
        return Shares { quota, remainder, denominator: 1, uncapped: Vec::new(), extra: 0 };
    }

    // Shares in u64: a partition count and a capacity are both u32, so their product fits.
    let mut given: u64 = 0;
    for &index in &uncapped {
        let share = remaining * capacity[index as usize];
        quota[index as usize] = (share / remaining_capacity) as u32;
        remainder[index as usize] = share % remaining_capacity;
        given += share / remaining_capacity;
    }
    Shares {
        quota,
        remainder,
        denominator: remaining_capacity,
        uncapped,
        extra: (remaining - given) as usize,
    }
}

/// The quota of every worker (0 for ineligible ones), for a queue allocated on its own.
fn quotas(prepared: &Prepared<'_>, input: &AllocationInput<'_>, current: &[u32]) -> Vec<u32> {
    let n = prepared.ids.len();
    let capacity: Vec<u64> = prepared.workers.iter().map(|w| u64::from(w.capacity.get())).collect();
    let Shares { mut quota, remainder, mut uncapped, extra, .. } = shares(prepared, input);
    if extra == 0 {
        return quota;
    }
    let fractional: Vec<bool> = remainder.iter().map(|&r| r != 0).collect();

    // The "+1"s: workers with a fractional share first (so every quota stays within 1 of its
    // share), then the least load from other queues per unit of capacity, then the workers
    // that already hold more than their base (stickiness), then by id.
    let load: Vec<u64> =
        prepared.ids.iter().map(|id| input.other_load.get(id).copied().unwrap_or(0)).collect();
    let holds_more: Vec<bool> = (0..n).map(|i| current[i] > quota[i]).collect();
    if extra < uncapped.len() {
        let first_capacity = uncapped.first().map(|&i| capacity[i as usize]);
        if uncapped.iter().all(|&i| Some(capacity[i as usize]) == first_capacity) {
            // Equal capacities: the order is that of one packed integer key, which selects
            // several times faster than the general comparison.
            let key = |i: &u32| -> u128 {
                let i = *i as usize;
                (u128::from(!fractional[i]) << 127)
                    | (u128::from(load[i]) << 33)
                    | (u128::from(!holds_more[i]) << 32)
                    | i as u128
            };
            uncapped.select_nth_unstable_by_key(extra - 1, key);
        } else {
            let order = |a: &u32, b: &u32| -> Ordering {
                let (a, b) = (*a as usize, *b as usize);
                fractional[b]
                    .cmp(&fractional[a])
                    .then_with(|| {
                        (u128::from(load[a]) * u128::from(capacity[b]))
                            .cmp(&(u128::from(load[b]) * u128::from(capacity[a])))
                    })
                    .then_with(|| holds_more[b].cmp(&holds_more[a]))
                    .then_with(|| a.cmp(&b))
            };
            uncapped.select_nth_unstable_by(extra - 1, order);
        }
    }
    for &index in &uncapped[..extra.min(uncapped.len())] {
        quota[index as usize] += 1;
    }
    quota
}

/// The eligible workers below their quota, in id order, handing out one slot at a time.
struct Receivers {
    /// The workers with a deficit, ascending.
    order: Vec<u32>,
    /// The position of the worker being filled in `order`.
    position: usize,
    /// How many more partitions that worker takes.
    left: u32,
}

impl Receivers {
    fn new(order: Vec<u32>, deficit: &[u32]) -> Self {
        let left = order.first().map_or(0, |&first| deficit[first as usize]);
        Self { order, position: 0, left }
    }

    /// The worker that takes the next partition, if any worker still has room.
    fn take(&mut self, deficit: &[u32]) -> Option<u32> {
        loop {
            let to = *self.order.get(self.position)?;
            if self.left > 0 {
                self.left -= 1;
                return Some(to);
            }
            self.position += 1;
            self.left = self.order.get(self.position).map_or(0, |&next| deficit[next as usize]);
        }
    }

    /// Up to `most` slots of one worker at once: the worker and how many it takes.
    fn take_run(&mut self, deficit: &[u32], most: u64) -> Option<(u32, u32)> {
        let to = self.take(deficit)?;
        let run = u64::from(self.left).min(most.saturating_sub(1)) as u32;
        self.left -= run;
        Some((to, run + 1))
    }
}

/// How many partitions of the queue each live worker holds now.
fn current_counts(prepared: &Prepared<'_>, input: &AllocationInput<'_>) -> Vec<u32> {
    let mut count = vec![0u32; prepared.ids.len()];
    for (&target, &held) in prepared.remap.iter().zip(input.current.counts()) {
        if target != NONE {
            count[target as usize] += held;
        }
    }
    count
}

fn allocate(prepared: &Prepared<'_>, input: &AllocationInput<'_>, move_cap: Option<MoveCap>) -> Allocation {
    let count = current_counts(prepared, input);
    let quota = quotas(prepared, input, &count);
    place(prepared, input, move_cap, count, &quota)
}

/// Keeps every partition whose owner is eligible and within its quota, and moves the others
/// to the workers below their quota (orphans first, then partitions of ineligible workers,
/// then the excess of others).
fn place(
    prepared: &Prepared<'_>,
    input: &AllocationInput<'_>,
    move_cap: Option<MoveCap>,
    mut count: Vec<u32>,
    quota: &[u32],
) -> Allocation {
    let n = prepared.ids.len();
    let partition_count = input.partition_count();
    let current = input.current;

    // How many partitions each worker must give up (everything for an ineligible worker,
    // what is above its quota for an eligible one) and how many it must receive, in one pass.
    let mut excess: Vec<u32> = Vec::with_capacity(n);
    let mut deficit: Vec<u32> = Vec::with_capacity(n);
    let (mut held_by_live, mut to_release) = (0u64, 0u64);
    for ((&held, &quota), &eligible) in count.iter().zip(quota).zip(&prepared.eligible) {
        let over = if eligible { held.saturating_sub(quota) } else { held };
        held_by_live += u64::from(held);
        to_release += u64::from(over);
        excess.push(over);
        deficit.push(quota.saturating_sub(held));
    }
    let orphans = u64::from(partition_count) - held_by_live;

    // Start from the current owners, renumbered (a plain copy when the numbering is the same,
    // as when the previous result is fed back and workers joined at the end of the id order).
    let identity = prepared.remap.iter().enumerate().all(|(i, &to)| to as usize == i);
    let mut owners: Vec<u32> = if held_by_live == 0 {
        vec![NONE; partition_count as usize]
    } else if identity {
        current.owner_indices().to_vec()
    } else {
        current
            .owner_indices()
            .iter()
            .map(|&slot| prepared.remap.get(slot as usize).copied().unwrap_or(NONE))
            .collect()
    };

    // Find the partitions to take away, from the end, so the scan stops as soon as every one
    // is found (a join takes one or two partitions from some workers).
    let mut from_ineligible = Vec::new();
    let mut from_excess = Vec::new();
    for (partition, &owner) in owners.iter().enumerate().rev() {
        if to_release == 0 {
            break;
        }
        if owner != NONE && excess[owner as usize] > 0 {
            excess[owner as usize] -= 1;
            to_release -= 1;
            if prepared.eligible[owner as usize] {
                from_excess.push(partition as u32);
            } else {
                from_ineligible.push(partition as u32);
            }
        }
    }
    from_ineligible.reverse();
    from_excess.reverse();

    // Fill every eligible worker up to its quota: orphans first (placing them moves nothing
    // that runs), then partitions of ineligible workers, then the excess of others.
    let order: Vec<u32> =
        prepared.eligible_indices.iter().copied().filter(|&i| deficit[i as usize] > 0).collect();
    let mut receivers = Receivers::new(order, &deficit);
    // Every partition a worker takes is counted as it is handed out.
    let reason = prepared.unassigned_reason();
    let mut unassigned = Vec::new();

    // Orphans, found by a forward scan for partitions without a live owner; each receiver
    // takes a run of them at once, so the scan is a tight loop.
    let mut orphans_left = orphans;
    let mut cursor = 0;
    while orphans_left > 0 {
        let Some((to, run)) = receivers.take_run(&deficit, orphans_left) else { break };
        count[to as usize] += run;
        let mut wanted = run;
        for slot in &mut owners[cursor..] {
            cursor += 1;
            if *slot == NONE {
                *slot = to;
                wanted -= 1;
                if wanted == 0 {
                    break;
                }
            }
        }
        orphans_left -= u64::from(run - wanted);
        if wanted > 0 {
            break; // no orphan left to find (only if the counts were inconsistent)
        }
    }
    if orphans_left > 0 {
        for (partition, &owner) in owners.iter().enumerate().skip(cursor) {
            if owner == NONE {
                unassigned.push(Unassigned { partition: PartitionId(partition as u32), reason });
            }
        }
    }

    // Moves away from live owners, up to the cap.
    let mut moves_left = move_cap.map_or(u32::MAX, |cap| cap.limit(partition_count));
    for partition in from_ineligible.into_iter().chain(from_excess) {
        if moves_left == 0 {
            break; // capped: the rest stays with its current owner this round
        }
        moves_left -= 1;
        let slot = &mut owners[partition as usize];
        count[*slot as usize] -= 1;
        match receivers.take(&deficit) {
            Some(to) => {
                *slot = to;
                count[to as usize] += 1;
            }
            None => {
                *slot = NONE;
                unassigned.push(Unassigned { partition: PartitionId(partition), reason });
            }
        }
    }
    unassigned.sort_unstable();
    Allocation { assignment: Assignment::from_trusted_parts(prepared.ids.clone(), owners, count), unassigned }
}

/// The sum of a worker's fractional shares over several queues, exact while the common
/// denominator fits in 128 bits, and as a float alongside for when it does not.
#[derive(Debug, Clone, Copy)]
struct FractionSum {
    whole: u64,
    numerator: u128,
    /// 0 until the first fraction is added.
    denominator: u128,
    approximate: f64,
    exact: bool,
}

impl FractionSum {
    const ZERO: Self = Self { whole: 0, numerator: 0, denominator: 0, approximate: 0.0, exact: true };

    /// Adds `numerator / denominator`, a fraction below 1, `times` times over: the same sum
    /// as adding it once that many times (the float is added once per time, in order, so it
    /// is the same to the bit), with the exact part added in one step.
    fn add_times(&mut self, numerator: u64, denominator: u64, times: usize) {
        if times == 0 {
            return;
        }
        let fraction = numerator as f64 / denominator as f64;
        for _ in 0..times {
            self.approximate += fraction;
        }
        if !self.exact {
            return;
        }
        self.add_exact(numerator, denominator);
        let rest = times - 1;
        if rest == 0 || !self.exact {
            return;
        }
        let more = u128::try_from(rest).ok().and_then(|rest| rest.checked_mul(u128::from(numerator)));
        match more {
            Some(more) if self.denominator == u128::from(denominator) => {
                // numerator < denominator < 2⁶⁴ and more < 2¹²⁸ − 2⁶⁴ (rest < 2⁶⁴), so no
                // overflow; the quotient is at most `rest`, which fits in a u64.
                let total = self.numerator + more;
                self.whole += (total / self.denominator) as u64;
                self.numerator = total % self.denominator;
            }
            _ => {
                for _ in 0..rest {
                    self.add_exact(numerator, denominator);
                    if !self.exact {
                        return;
                    }
                }
            }
        }
    }

    /// Adds `numerator / denominator` to the exact part once.
    fn add_exact(&mut self, numerator: u64, denominator: u64) {
        let (n, d) = (u128::from(numerator), u128::from(denominator));
        if self.denominator == 0 {
            (self.numerator, self.denominator) = (n, d);
        } else if self.denominator == d {
            self.numerator += n;
        } else {
            let common = (self.denominator / gcd(self.denominator, d)).checked_mul(d);
            let sum = common.and_then(|common| {
                let left = self.numerator.checked_mul(common / self.denominator)?;
                let right = n.checked_mul(common / d)?;
                Some((left.checked_add(right)?, common))
            });
            match sum {
                Some((numerator, denominator)) => {
                    (self.numerator, self.denominator) = (numerator, denominator)
                }
                None => {
                    self.exact = false;
                    return;
                }
            }
        }
        // Both fractions are below 1, so this subtracts once at most (no 128-bit division).
        while self.numerator >= self.denominator {
            self.whole += 1;
            self.numerator -= self.denominator;
        }
    }

    /// ⌊sum⌋ and ⌈sum⌉; when the sum could not be kept exact, an interval around the float
    /// that surely holds it (of width 2 only when the float is within 10⁻⁹ of an integer).
    fn bounds(&self) -> (u64, u64) {
        if self.exact {
            (self.whole, self.whole + u64::from(self.numerator > 0))
        } else {
            let low = (self.approximate - 1e-9).floor().max(0.0) as u64;
            let high = (self.approximate + 1e-9).ceil().max(0.0) as u64;
            (low, high)
        }
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Whether two queues number their workers and current owners alike: the same workers in the
/// same order, the same constraints and the same worker table.
fn numbered_alike(a: &AllocationInput<'_>, b: &AllocationInput<'_>) -> bool {
    (std::ptr::eq(a.workers, b.workers) || a.workers == b.workers)
        && (std::ptr::eq(a.constraints, b.constraints) || a.constraints == b.constraints)
        && a.current.worker_table() == b.current.worker_table()
}

/// Allocates several queues at once: every queue's quotas within 1 of its shares, every
/// worker's total within 1 of the sum of its shares, and among those quotas the ones that keep
/// the most partitions with their current owners (a min-cost flow over the "+1"s).
pub(crate) fn allocate_joint(
    inputs: &[AllocationInput<'_>],
    move_cap: Option<MoveCap>,
) -> Result<Vec<Allocation>, AllocationError> {
    if let [input] = inputs {
        // One queue: the per-queue bound is the per-worker bound.
        let prepared = Prepared::new(input)?;
        let input = AllocationInput { other_load: &super::NO_LOAD, ..*input };
        return Ok(vec![allocate(&prepared, &input, move_cap)]);
    }

    // Queues with the same workers, constraints and worker table as the queue before them
    // (the usual case: every queue served by every worker) share its numbering.
    let mut distinct: Vec<Prepared<'_>> = Vec::new();
    let mut of_queue: Vec<usize> = Vec::with_capacity(inputs.len());
    for (queue, input) in inputs.iter().enumerate() {
        match queue.checked_sub(1) {
            Some(before) if numbered_alike(&inputs[before], input) => of_queue.push(of_queue[before]),
            _ => {
                distinct.push(Prepared::new(input)?);
                of_queue.push(distinct.len() - 1);
            }
        }
    }
    let prepared: Vec<&Prepared<'_>> = of_queue.iter().map(|&i| &distinct[i]).collect();

    // One numbering of every worker of every queue (the queues' own when they all agree).
    let same = distinct.iter().all(|p| p.ids == distinct[0].ids);
    let key = |id: &crate::ids::WorkerId| id.as_uuid().as_u128();
    let (worker_count, maps): (usize, Vec<Vec<u32>>) = if same {
        (distinct.first().map_or(0, |p| p.ids.len()), Vec::new())
    } else {
        let mut all: Vec<u128> = distinct.iter().flat_map(|p| p.ids.iter().map(key)).collect();
        all.sort_unstable();
        all.dedup();
        let maps = distinct
            .iter()
            .map(|p| {
                let mut next = 0;
                p.ids
                    .iter()
                    .map(|id| {
                        let wanted = key(id);
                        while all[next] < wanted {
                            next += 1;
                        }
                        next as u32
                    })
                    .collect()
            })
            .collect();
        (all.len(), maps)
    };
    let global = |queue: usize, local: u32| -> usize {
        if same { local as usize } else { maps[of_queue[queue]][local as usize] as usize }
    };

    let counts: Vec<Vec<u32>> =
        prepared.iter().zip(inputs).map(|(p, input)| current_counts(p, input)).collect();
    // Shares depend on the numbering, the constraints and the partition count only: a run of
    // queues alike in these (its first queue and its length) has one `Shares`, and only the
    // quotas, which the "+1"s change, are per queue.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut run_shares: Vec<Shares> = Vec::new();
    for (queue, input) in inputs.iter().enumerate() {
        match (queue.checked_sub(1), runs.last_mut()) {
            (Some(before), Some(run))
                if of_queue[before] == of_queue[queue]
                    && inputs[before].partition_count() == input.partition_count() =>
            {
                run.1 += 1;
            }
            _ => {
                runs.push((queue, 1));
                run_shares.push(self::shares(prepared[queue], input));
            }
        }
    }
    let mut quotas: Vec<Vec<u32>> = Vec::with_capacity(inputs.len());
    for (&(_, run), share) in runs.iter().zip(&run_shares) {
        quotas.extend(std::iter::repeat_n(&share.quota, run).cloned());
    }
    // A run adds the same fractions to the same workers: each worker's fraction is added
    // once for the whole run.
    let mut sums = vec![FractionSum::ZERO; worker_count];
    for (&(first, run), share) in runs.iter().zip(&run_shares) {
        for &local in &share.uncapped {
            let remainder = share.remainder[local as usize];
            if remainder > 0 {
                sums[global(first, local)].add_times(remainder, share.denominator, run);
            }
        }
    }

    // The network: source → queue (its number of "+1"s) → worker (one "+1" per queue where
    // its share is fractional; cost −1 where that keeps a partition with its current owner)
    // → sink (at least ⌊total share⌋ − Σ⌊share⌋ "+1"s, forced by a cost that outweighs every
    // kept partition, and at most one more).
    let wanted: i64 = runs.iter().zip(&run_shares).map(|(&(_, run), s)| s.extra as i64 * run as i64).sum();
    if wanted > 0 {
        let queues = inputs.len();
        let (source, sink) = (0, 1);
        let worker_node = |w: usize| 2 + queues + w;
        // Every run's cells, the same for each of its queues: the workers whose share is
        // fractional, by local number and by node.
        let cells: Vec<Vec<(u32, usize)>> = runs
            .iter()
            .zip(&run_shares)
            .map(|(&(first, _), share)| {
                share
                    .uncapped
                    .iter()
                    .filter(|&&local| share.remainder[local as usize] != 0)
                    .map(|&local| (local, worker_node(global(first, local))))
                    .collect()
            })
            .collect();
        // Every node's number of edges first, so the network is written straight in place.
        let nodes = 2 + queues + worker_count;
        let mut degrees = vec![0u32; nodes];
        for (&(first, run), cells) in runs.iter().zip(&cells) {
            degrees[2 + first..2 + first + run].fill(1 + cells.len() as u32);
            for &(_, node) in cells {
                degrees[node] += run as u32;
            }
        }
        degrees[source] = queues as u32;
        let bounds: Vec<(i64, i64)> = sums
            .iter()
            .map(|sum| {
                let (low, high) = sum.bounds();
                (low as i64, high as i64)
            })
            .collect();
        for (w, &(low, high)) in bounds.iter().enumerate() {
            let edges = u32::from(low > 0) + u32::from(high > low);
            degrees[worker_node(w)] += edges;
            degrees[sink] += edges;
        }
        let mut network = Network::with_degrees(&degrees);
        let mut potential = vec![0i64; nodes];
        for ((&(first, run), share), cells) in runs.iter().zip(&run_shares).zip(&cells) {
            for queue in first..first + run {
                network.add_edge(source, 2 + queue, share.extra as i64, 0);
                let (count, quota) = (&counts[queue], &quotas[queue]);
                for &(local, w) in cells {
                    let keeps = count[local as usize] > quota[local as usize];
                    network.add_edge(2 + queue, w, 1, -i64::from(keeps));
                    if keeps {
                        potential[w] = -1;
                    }
                }
            }
        }
        let forced = wanted + 1;
        let mut sink_potential = 0i64;
        for (w, &(low, high)) in bounds.iter().enumerate() {
            let node = worker_node(w);
            if low > 0 {
                network.add_edge(node, sink, low, -forced);
                sink_potential = sink_potential.min(potential[node] - forced);
            }
            if high > low {
                network.add_edge(node, sink, high - low, 0);
                sink_potential = sink_potential.min(potential[node]);
            }
        }
        potential[sink] = sink_potential;
        // The potentials are the exact distances from the source (the network is layered).
        let sent = network.min_cost_flow(source, sink, wanted, potential, true);
        for ((&(first, run), share), cells) in runs.iter().zip(&run_shares).zip(&cells) {
            for queue in first..first + run {
                // A queue's arcs are the twin of its edge from the source, then its cells in
                // the order they were added, read in a row: a cell (of capacity 1) carries a
                // "+1" when it has no residual capacity left.
                let quota = &mut quotas[queue];
                let mut given = 0;
                let mut left = Vec::new();
                for (&(local, _), residual) in cells.iter().zip(network.residuals(2 + queue).skip(1)) {
                    if residual == 0 {
                        quota[local as usize] += 1;
                        given += 1;
                    } else if sent < wanted {
                        left.push(local);
                    }
                }
                if sent < wanted {
                    // Only if the bounds were inconsistent: keep every queue's own bound at
                    // least.
                    let mut missing = share.extra - given;
                    left.sort_by_key(|&local| counts[queue][local as usize] <= quota[local as usize]);
                    for local in left {
                        if missing == 0 {
                            break;
                        }
                        quota[local as usize] += 1;
                        missing -= 1;
                    }
                }
            }
        }
    }

    Ok(prepared
        .iter()
        .zip(inputs)
        .zip(counts)
        .zip(quotas)
        .map(|(((prepared, input), count), quota)| place(prepared, input, move_cap, count, &quota))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::FractionSum;

    #[test]
    fn adding_a_fraction_many_times_at_once_is_adding_it_one_by_one() {
        for (fractions, times) in [
            (vec![(1, 3), (2, 3)], 7),
            (vec![(5, 7), (1, 2), (3, 10)], 5),
            (vec![(u64::MAX - 1, u64::MAX), (1, u64::MAX - 2)], 3),
        ] {
            let (mut at_once, mut one_by_one) = (FractionSum::ZERO, FractionSum::ZERO);
            for &(numerator, denominator) in &fractions {
                at_once.add_times(numerator, denominator, times);
                for _ in 0..times {
                    one_by_one.add_times(numerator, denominator, 1);
                }
            }
            assert_eq!(at_once.bounds(), one_by_one.bounds());
            assert_eq!(
                (at_once.whole, at_once.numerator, at_once.denominator, at_once.exact),
                (one_by_one.whole, one_by_one.numerator, one_by_one.denominator, one_by_one.exact)
            );
            assert_eq!(at_once.approximate.to_bits(), one_by_one.approximate.to_bits());
        }
    }
}
