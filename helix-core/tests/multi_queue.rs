//! Allocation over several queues at once: both bounds (per queue and per worker total) and
//! the fewest moves, checked against an exact oracle on small instances.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use common::{assignment, wid, workers};
use helix_core::allocation::{
    Allocation, AllocationInput, AllocationStrategy, Assignment, BalancedSticky, Constraints, RendezvousHash,
};
use helix_core::{PartitionId, WorkerId, WorkerInfo};
use proptest::prelude::*;

/// One queue of a test instance: its workers (with this queue's capacities), its current
/// owners and its constraints.
#[derive(Debug, Clone)]
struct Queue {
    workers: Vec<WorkerInfo>,
    current: Assignment,
    constraints: Constraints,
}

fn allocate_all(queues: &[Queue]) -> Vec<Allocation> {
    let inputs: Vec<AllocationInput<'_>> = queues
        .iter()
        .map(|q| AllocationInput::new(&q.workers, &q.current).with_constraints(&q.constraints))
        .collect();
    BalancedSticky::default().allocate_all(&inputs).unwrap()
}

fn moves(queues: &[Queue], result: &[Allocation]) -> usize {
    queues.iter().zip(result).map(|(q, a)| q.current.differences(&a.assignment)).sum()
}

/// The queues with their current owners replaced by `result`.
fn advanced(queues: &[Queue], result: &[Allocation]) -> Vec<Queue> {
    queues.iter().zip(result).map(|(q, a)| Queue { current: a.assignment.clone(), ..q.clone() }).collect()
}

/// An exact fraction (small instances only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fraction {
    numerator: i128,
    denominator: i128,
}

impl Fraction {
    const ZERO: Self = Self { numerator: 0, denominator: 1 };

    fn new(numerator: i128, denominator: i128) -> Self {
        let g = gcd(numerator.abs(), denominator.abs()).max(1);
        Self { numerator: numerator / g, denominator: denominator / g }
    }

    fn plus(self, other: Self) -> Self {
        Self::new(
            self.numerator * other.denominator + other.numerator * self.denominator,
            self.denominator * other.denominator,
        )
    }

    fn floor(self) -> i128 {
        self.numerator.div_euclid(self.denominator)
    }

    fn ceil(self) -> i128 {
        -(-self.numerator).div_euclid(self.denominator)
    }
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Every worker's exact share of a queue, computed here independently of the strategy: the
/// eligible workers share the partitions by capacity; with a maximum, while some worker's
/// share is above it, those workers get the maximum and the others share the rest.
fn shares(queue: &Queue) -> BTreeMap<WorkerId, Fraction> {
    let eligible: Vec<&WorkerInfo> = queue.workers.iter().filter(|w| queue.constraints.admits(w)).collect();
    let mut result: BTreeMap<WorkerId, Fraction> =
        queue.workers.iter().map(|w| (w.id, Fraction::ZERO)).collect();
    let mut capped: Vec<WorkerId> = Vec::new();
    loop {
        let free: Vec<&&WorkerInfo> = eligible.iter().filter(|w| !capped.contains(&w.id)).collect();
        let max = queue.constraints.max_partitions_per_worker.map(i128::from);
        let remaining = queue.current.len() as i128 - max.unwrap_or(0) * capped.len() as i128;
        let capacity: i128 = free.iter().map(|w| i128::from(w.capacity.get())).sum();
        if remaining <= 0 || capacity == 0 {
            for w in &free {
                result.insert(w.id, Fraction::ZERO);
            }
            break;
        }
        let over: Vec<WorkerId> = free
            .iter()
            .filter(|w| max.is_some_and(|max| remaining * i128::from(w.capacity.get()) >= max * capacity))
            .map(|w| w.id)
            .collect();
        if over.is_empty() {
            for w in &free {
                result.insert(w.id, Fraction::new(remaining * i128::from(w.capacity.get()), capacity));
            }
            break;
        }
        capped.extend(over);
    }
    for id in capped {
        let max = i128::from(queue.constraints.max_partitions_per_worker.unwrap_or(0));
        result.insert(id, Fraction::new(max, 1));
    }
    result
}

/// Both bounds: every worker's count in every queue within 1 of its share there, every
/// worker's total within 1 of the sum of its shares, every queue as full as its shares allow.
fn check_bounds(queues: &[Queue], result: &[Allocation]) -> Result<(), TestCaseError> {
    let mut totals: BTreeMap<WorkerId, (i128, Fraction)> = BTreeMap::new();
    for (queue, allocation) in queues.iter().zip(result) {
        let shares = shares(queue);
        let mut owned = 0i128;
        for (id, share) in &shares {
            let count = i128::from(allocation.assignment.load(*id));
            prop_assert!(
                share.floor() <= count && count <= share.ceil(),
                "worker {id} has {count}, its share is {share:?}"
            );
            let total = totals.entry(*id).or_insert((0, Fraction::ZERO));
            total.0 += count;
            total.1 = total.1.plus(*share);
            owned += count;
        }
        let share_sum = shares.values().fold(Fraction::ZERO, |a, b| a.plus(*b));
        prop_assert_eq!(owned, share_sum.floor(), "the queue is not as full as its shares allow");
        prop_assert_eq!(allocation.assignment.len(), queue.current.len());
        prop_assert_eq!(allocation.unassigned.len() as i128, queue.current.len() as i128 - owned);
        for (partition, owner) in allocation.assignment.iter() {
            let listed = allocation.unassigned.iter().any(|u| u.partition == partition);
            prop_assert_eq!(owner.is_none(), listed);
        }
    }
    for (id, (count, share)) in totals {
        prop_assert!(
            share.floor() <= count && count <= share.ceil(),
            "worker {id} has {count} in total, its share is {share:?}"
        );
    }
    Ok(())
}

/// Partitions that stay with an eligible current owner.
fn kept(queues: &[Queue], result: &[Allocation]) -> i128 {
    queues
        .iter()
        .zip(result)
        .map(|(queue, allocation)| {
            queue
                .current
                .iter()
                .filter(|(p, owner)| {
                    owner.is_some_and(|o| {
                        queue.workers.iter().any(|w| w.id == o && queue.constraints.admits(w))
                    }) && allocation.assignment.owner(*p) == *owner
                })
                .count() as i128
        })
        .sum()
}

/// The most partitions any assignment that meets both bounds keeps with their current owners,
/// by exhaustive search over every worker's count in every queue (⌊share⌋ or ⌈share⌉).
fn oracle_kept(queues: &[Queue]) -> i128 {
    struct Cell {
        queue: usize,
        worker: WorkerId,
        floor: i128,
        fractional: bool,
        held: i128,
    }
    let mut cells = Vec::new();
    let mut need: Vec<i128> = Vec::new();
    let mut total_share: BTreeMap<WorkerId, Fraction> = BTreeMap::new();
    for (q, queue) in queues.iter().enumerate() {
        let shares = shares(queue);
        let sum = shares.values().fold(Fraction::ZERO, |a, b| a.plus(*b));
        let mut floors = 0;
        for (id, share) in &shares {
            let eligible = queue.workers.iter().any(|w| w.id == *id && queue.constraints.admits(w));
            let held = if eligible { i128::from(queue.current.load(*id)) } else { 0 };
            cells.push(Cell {
                queue: q,
                worker: *id,
                floor: share.floor(),
                fractional: share.ceil() > share.floor(),
                held,
            });
            floors += share.floor();
            let total = total_share.entry(*id).or_insert(Fraction::ZERO);
            *total = total.plus(*share);
        }
        need.push(sum.floor() - floors);
    }
    fn search(
        cells: &[Cell],
        at: usize,
        need: &mut [i128],
        totals: &mut BTreeMap<WorkerId, i128>,
        shares: &BTreeMap<WorkerId, Fraction>,
        kept: i128,
        best: &mut i128,
    ) {
        let Some(cell) = cells.get(at) else {
            let ok = need.iter().all(|&n| n == 0)
                && totals.iter().all(|(id, &t)| shares[id].floor() <= t && t <= shares[id].ceil());
            if ok {
                *best = (*best).max(kept);
            }
            return;
        };
        let options: &[i128] = if cell.fractional { &[0, 1] } else { &[0] };
        // The fractional cells left in this queue after this one (cells are in queue order).
        let left = cells[at + 1..].iter().filter(|c| c.queue == cell.queue && c.fractional).count() as i128;
        for &extra in options {
            if extra > need[cell.queue] || need[cell.queue] - extra > left {
                continue;
            }
            let count = cell.floor + extra;
            need[cell.queue] -= extra;
            *totals.entry(cell.worker).or_default() += count;
            search(cells, at + 1, need, totals, shares, kept + count.min(cell.held), best);
            *totals.entry(cell.worker).or_default() -= count;
            need[cell.queue] += extra;
        }
    }
    let mut best = -1;
    search(&cells, 0, &mut need, &mut BTreeMap::new(), &total_share, 0, &mut best);
    best
}

/// Every worker's total over all queues, in the order of `ids`.
fn totals(result: &[Allocation], ids: &[WorkerId]) -> Vec<u32> {
    let mut totals: BTreeMap<WorkerId, u32> = BTreeMap::new();
    for allocation in result {
        for (id, count) in allocation.assignment.loads() {
            *totals.entry(id).or_default() += count;
        }
    }
    ids.iter().map(|id| totals.get(id).copied().unwrap_or(0)).collect()
}

/// Every worker's count in one queue, in the order of `ids`.
fn counts(allocation: &Allocation, ids: &[WorkerId]) -> Vec<u32> {
    let loads: BTreeMap<WorkerId, u32> = allocation.assignment.loads().into_iter().collect();
    ids.iter().map(|id| loads.get(id).copied().unwrap_or(0)).collect()
}

fn uniform(queue_count: usize, partitions: u32, list: &[WorkerInfo]) -> Vec<Queue> {
    (0..queue_count)
        .map(|_| Queue {
            workers: list.to_vec(),
            current: Assignment::unassigned(partitions),
            constraints: Constraints::default(),
        })
        .collect()
}

/// 20 queues × 10 partitions over 7 workers, then an 8th joins: 25 moves (the newcomer's
/// share, the fewest possible), every queue within one, every total 25, in one round; a second
/// round moves nothing.
#[test]
fn twenty_queues_over_seven_workers_then_a_join() {
    let list = workers(8, &[]);
    let ids: Vec<WorkerId> = list.iter().map(|w| w.id).collect();
    let start = uniform(20, 10, &list[..7]);
    let before = allocate_all(&start);
    let before_totals = totals(&before, &ids[..7]);
    assert!(before_totals.iter().all(|&t| t == 28 || t == 29), "{before_totals:?}");
    let joined_queues: Vec<Queue> =
        advanced(&start, &before).into_iter().map(|q| Queue { workers: list.clone(), ..q }).collect();
    let joined = allocate_all(&joined_queues);
    assert_eq!(moves(&joined_queues, &joined), 25, "the newcomer's 200 / 8 partitions and nothing else");
    for allocation in &joined {
        assert!(counts(allocation, &ids).iter().all(|&count| count == 1 || count == 2));
    }
    assert_eq!(totals(&joined, &ids), vec![25; 8]);
    let again = advanced(&joined_queues, &joined);
    assert_eq!(moves(&again, &allocate_all(&again)), 0);
}

/// 16 queues × 62 500 partitions over 10 000 workers, then one joins. The newcomer's share is
/// 1 000 000 / 10 001 = 99.99, so it must end with at least 99 partitions, each one a move:
/// the allocation moves exactly 99, with both bounds, and a second round moves nothing. A
/// leave then moves only the leaver's partitions.
#[test]
fn sixteen_large_queues_join_and_leave_with_the_fewest_moves() {
    let (queue_count, partitions, n) = (16usize, 62_500u32, 10_000usize);
    let list: Vec<WorkerInfo> = (0..=n as u64).map(|i| WorkerInfo::new(wid(i))).collect();
    let ids: Vec<WorkerId> = list.iter().map(|w| w.id).collect();
    let start = uniform(queue_count, partitions, &list[..n]);
    let before = allocate_all(&start);
    let joined_queues: Vec<Queue> =
        advanced(&start, &before).into_iter().map(|q| Queue { workers: list.clone(), ..q }).collect();
    let joined = allocate_all(&joined_queues);
    let total = u64::from(partitions) * queue_count as u64;
    let newcomer_floor = (total / (n as u64 + 1)) as usize;
    assert_eq!(newcomer_floor, 99);
    assert_eq!(moves(&joined_queues, &joined), newcomer_floor);
    let joined_totals = totals(&joined, &ids);
    assert_eq!(joined_totals.iter().max().unwrap() - joined_totals.iter().min().unwrap(), 1);
    for allocation in &joined {
        assert!(counts(allocation, &ids).iter().all(|&count| count == 6 || count == 7));
    }
    let settled = advanced(&joined_queues, &joined);
    assert_eq!(moves(&settled, &allocate_all(&settled)), 0);

    // Worker 5 000 leaves: its 99 or 100 partitions move, nothing else.
    let leaver = ids[n / 2];
    let held = totals(&joined, &[leaver])[0];
    let left_list: Vec<WorkerInfo> = list.iter().filter(|w| w.id != leaver).cloned().collect();
    let left_queues: Vec<Queue> =
        settled.into_iter().map(|q| Queue { workers: left_list.clone(), ..q }).collect();
    let left = allocate_all(&left_queues);
    assert_eq!(moves(&left_queues, &left), held as usize);
    let left_totals = totals(&left, &ids[..n / 2]);
    assert_eq!(
        left_totals.iter().max().unwrap() - left_totals.iter().min().unwrap(),
        0,
        "1 000 000 / 10 000"
    );
    let again = advanced(&left_queues, &left);
    assert_eq!(moves(&again, &allocate_all(&again)), 0);
}

/// Rendezvous hashing salts its scores with the queue: two queues with the same workers get
/// different placements, so with 20 queues × 10 partitions over 7 workers every worker owns
/// something.
#[test]
fn rendezvous_places_queues_with_the_same_workers_differently() {
    let list = workers(7, &[]);
    let current = Assignment::unassigned(10);
    let place = |queue: u64| {
        RendezvousHash.allocate(&AllocationInput::new(&list, &current).with_queue(queue)).unwrap().assignment
    };
    assert_ne!(place(1), place(2));
    let totals: Vec<u32> = list.iter().map(|w| (1..=20).map(|q| place(q).load(w.id)).sum()).collect();
    assert!(totals.iter().all(|&t| t > 0), "{totals:?}");
    assert_eq!(totals.iter().sum::<u32>(), 200);
}

/// A change applied to a multi-queue state.
#[derive(Debug, Clone)]
enum Change {
    Join { subscribes: Vec<bool>, capacity: u32 },
    Leave(prop::sample::Index),
    Drain(prop::sample::Index),
    Capacity { queue: prop::sample::Index, worker: prop::sample::Index, capacity: u32 },
    AddQueue { partitions: u32 },
    Nothing,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (prop::collection::vec(any::<bool>(), 4), 1u32..=3)
            .prop_map(|(subscribes, capacity)| Change::Join { subscribes, capacity }),
        any::<prop::sample::Index>().prop_map(Change::Leave),
        any::<prop::sample::Index>().prop_map(Change::Drain),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u32..=3)
            .prop_map(|(queue, worker, capacity)| Change::Capacity { queue, worker, capacity }),
        (1u32..12).prop_map(|partitions| Change::AddQueue { partitions }),
        Just(Change::Nothing),
    ]
}

/// A multi-queue state: per queue its partition count, which workers serve it with which
/// capacity, a maximum, whether it requires the `zone = a` label, and the current owner of
/// every partition (an index into the workers, or beyond for a dead owner or none).
#[derive(Debug, Clone)]
struct State {
    worker_count: usize,
    zone_a: Vec<bool>,
    queues: Vec<QueueState>,
}

/// Per worker its capacity in the queue (`None`: not subscribed), the maximum, whether the
/// queue requires `zone = a`, and the current owners.
type QueueState = (Vec<Option<u32>>, Option<u32>, bool, Vec<usize>);

fn state(max_workers: usize, max_queues: usize, max_partitions: u32) -> impl Strategy<Value = State> {
    (1..=max_workers, 1..=max_queues).prop_flat_map(move |(n, q)| {
        let queue = (
            prop::collection::vec(prop::option::weighted(0.85, 1u32..=3), n),
            prop::option::weighted(0.25, 1u32..=4),
            prop::bool::weighted(0.2),
            (0..=max_partitions).prop_flat_map(move |p| prop::collection::vec(0..n + 3, p as usize)),
        );
        (Just(n), prop::collection::vec(any::<bool>(), n), prop::collection::vec(queue, q))
            .prop_map(|(worker_count, zone_a, queues)| State { worker_count, zone_a, queues })
    })
}

impl State {
    fn worker(&self, i: usize, capacity: u32) -> WorkerInfo {
        let info = WorkerInfo::new(wid(i as u64)).with_capacity(NonZeroU32::new(capacity).unwrap());
        if self.zone_a[i] { info.with_label("zone", "a") } else { info.with_label("zone", "b") }
    }

    fn queues(&self) -> Vec<Queue> {
        let ids: Vec<WorkerId> = (0..self.worker_count as u64 + 3).map(wid).collect();
        self.queues
            .iter()
            .map(|(capacities, max, zoned, owners)| {
                let workers =
                    capacities.iter().enumerate().filter_map(|(i, c)| c.map(|c| self.worker(i, c))).collect();
                let mut constraints =
                    Constraints { max_partitions_per_worker: *max, ..Constraints::default() };
                if *zoned {
                    constraints.required_labels.insert("zone".into(), "a".into());
                }
                Queue { workers, current: assignment(&ids, owners), constraints }
            })
            .collect()
    }
}

fn apply(queues: &mut Vec<Queue>, change: &Change, worker_count: usize) {
    let next_id = wid(worker_count as u64 + 10);
    match change {
        Change::Join { subscribes, capacity } => {
            for (queue, _) in queues.iter_mut().zip(subscribes).filter(|(_, s)| **s) {
                let info = WorkerInfo::new(next_id).with_capacity(NonZeroU32::new(*capacity).unwrap());
                queue.workers.push(info.with_label("zone", "a"));
            }
        }
        Change::Leave(index) => {
            let id = wid(index.index(worker_count) as u64);
            for queue in queues.iter_mut() {
                queue.workers.retain(|w| w.id != id);
            }
        }
        Change::Drain(index) => {
            let id = wid(index.index(worker_count) as u64);
            for queue in queues.iter_mut() {
                for w in queue.workers.iter_mut().filter(|w| w.id == id) {
                    *w = w.clone().draining();
                }
            }
        }
        Change::Capacity { queue, worker, capacity } => {
            let at = queue.index(queues.len());
            let queue = &mut queues[at];
            if !queue.workers.is_empty() {
                let at = worker.index(queue.workers.len());
                queue.workers[at].capacity = NonZeroU32::new(*capacity).unwrap();
            }
        }
        Change::AddQueue { partitions } => {
            let workers = queues.first().map(|q| q.workers.clone()).unwrap_or_default();
            queues.push(Queue {
                workers,
                current: Assignment::unassigned(*partitions),
                constraints: Constraints::default(),
            });
        }
        Change::Nothing => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// From an arbitrary state (balanced by a first round, or left unbalanced) and a join,
    /// leave, drain, capacity change or new queue: one round meets both bounds, keeps exactly as
    /// many partitions as the exhaustive oracle's best, gives the same result whatever the
    /// order of the workers, and a second round moves nothing.
    #[test]
    fn one_round_meets_both_bounds_with_the_fewest_moves(
        state in state(5, 3, 12),
        balanced_first in any::<bool>(),
        change in change(),
        seed in any::<u64>(),
    ) {
        let mut queues = state.queues();
        if balanced_first {
            let first = allocate_all(&queues);
            queues = advanced(&queues, &first);
        }
        apply(&mut queues, &change, state.worker_count);
        let result = allocate_all(&queues);
        check_bounds(&queues, &result)?;
        prop_assert_eq!(kept(&queues, &result), oracle_kept(&queues), "not the fewest moves");

        // The same input with every queue's workers in another order.
        let mut shuffled = queues.clone();
        for (i, queue) in shuffled.iter_mut().enumerate() {
            let len = queue.workers.len();
            if len > 1 {
                queue.workers.rotate_left((seed as usize + i) % len);
                if seed % 2 == 0 {
                    queue.workers.reverse();
                }
            }
        }
        prop_assert_eq!(allocate_all(&shuffled), result.clone());

        let settled = advanced(&queues, &result);
        prop_assert_eq!(moves(&settled, &allocate_all(&settled)), 0, "a second round moved partitions");
    }

    /// Larger states, without the oracle: both bounds after one round and a fixed point.
    #[test]
    fn larger_states_meet_both_bounds(
        state in state(30, 8, 200),
        balanced_first in any::<bool>(),
        change in change(),
    ) {
        let mut queues = state.queues();
        if balanced_first {
            let first = allocate_all(&queues);
            queues = advanced(&queues, &first);
        }
        apply(&mut queues, &change, state.worker_count);
        let result = allocate_all(&queues);
        check_bounds(&queues, &result)?;
        let settled = advanced(&queues, &result);
        prop_assert_eq!(moves(&settled, &allocate_all(&settled)), 0, "a second round moved partitions");
    }
}

#[test]
fn oracle_agrees_on_a_hand_checked_case() {
    // 2 queues × 3 partitions over 2 workers, all on worker 0: each queue gives 1 or 2 to each
    // worker and the totals must be 3 and 3, so worker 0 keeps 2 + 1 = 3.
    let list = workers(2, &[]);
    let ids: Vec<WorkerId> = list.iter().map(|w| w.id).collect();
    let queues: Vec<Queue> = (0..2)
        .map(|_| Queue {
            workers: list.clone(),
            current: assignment(&ids, &[0, 0, 0]),
            constraints: Constraints::default(),
        })
        .collect();
    assert_eq!(oracle_kept(&queues), 3);
    let result = allocate_all(&queues);
    assert_eq!(kept(&queues, &result), 3);
    assert_eq!(totals(&result, &ids), vec![3, 3]);
    let _ = PartitionId(0);
}
