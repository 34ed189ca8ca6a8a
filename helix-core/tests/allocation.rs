//! Property tests of the allocation strategies.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use common::{assignment, live_moves, loads, optimal_live_moves, wid, workers};
use helix_core::allocation::{
    AllocationInput, AllocationStrategy, Assignment, BalancedSticky, Constraints, MoveCap, RendezvousHash,
    RoundRobin, UnassignedReason,
};
use helix_core::{PartitionId, WorkerInfo};
use proptest::prelude::*;

fn strategies() -> [Box<dyn AllocationStrategy>; 3] {
    [Box::new(BalancedSticky::default()), Box::new(RendezvousHash), Box::new(RoundRobin)]
}

fn sticky(workers: &[WorkerInfo], current: &Assignment) -> Assignment {
    BalancedSticky::default().allocate(&AllocationInput::new(workers, current)).unwrap().assignment
}

/// A queue: partition count, worker count, capacities and the current owner of every
/// partition (indices ≥ the worker count are dead workers or no owner).
fn queue(
    max_partitions: u32,
    max_workers: usize,
) -> impl Strategy<Value = (u32, usize, Vec<u32>, Vec<usize>)> {
    (1..=max_partitions, 1..=max_workers).prop_flat_map(|(p, n)| {
        (Just(p), Just(n), prop::collection::vec(1u32..=5, n), prop::collection::vec(0..n + 4, p as usize))
    })
}

/// Ids of the workers in `0..n`, then of 3 dead workers.
fn ids_with_dead(n: usize) -> Vec<helix_core::WorkerId> {
    (0..n as u64 + 3).map(wid).collect()
}

fn assert_balanced(counts: &[u32], p: u32) -> Result<(), TestCaseError> {
    let n = counts.len() as u32;
    let (floor, ceil) = (p / n, p.div_ceil(n));
    for &count in counts {
        prop_assert!(count == floor || count == ceil, "count {count} not in [{floor}, {ceil}]");
    }
    prop_assert_eq!(counts.iter().sum::<u32>(), p);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// With equal capacities every worker gets ⌊P/N⌋ or ⌈P/N⌉, from any starting point.
    #[test]
    fn balance_bound((p, n, _, owners) in queue(2000, 40)) {
        let workers = workers(n, &[]);
        let current = assignment(&ids_with_dead(n), &owners);
        let result = BalancedSticky::default().allocate(&AllocationInput::new(&workers, &current)).unwrap();
        prop_assert!(result.unassigned.is_empty());
        assert_balanced(&loads(&result.assignment, &workers), p)?;
        // Round-robin balances exactly too, with or without a (non-binding) maximum.
        let plain = RoundRobin.allocate(&AllocationInput::new(&workers, &current)).unwrap();
        assert_balanced(&loads(&plain.assignment, &workers), p)?;
        let constraints = Constraints { max_partitions_per_worker: Some(p.div_ceil(n as u32)), ..Constraints::default() };
        let limited = RoundRobin.allocate(&AllocationInput::new(&workers, &current).with_constraints(&constraints)).unwrap();
        prop_assert_eq!(limited, plain);
    }

    /// With capacities every worker's count is within 1 of its exact share (⌊share⌋ or
    /// ⌈share⌉), and the fewest partitions possible leave a live owner.
    #[test]
    fn capacity_proportionality_and_minimal_movement((p, n, caps, owners) in queue(2000, 40)) {
        let workers = workers(n, &caps);
        let current = assignment(&ids_with_dead(n), &owners);
        let result = sticky(&workers, &current);
        let total: u64 = caps.iter().map(|&c| u64::from(c)).sum();
        for (w, count) in workers.iter().zip(loads(&result, &workers)) {
            let share = u64::from(p) * u64::from(w.capacity.get());
            let (floor, ceil) = (share / total, share.div_ceil(total));
            prop_assert!(u64::from(count) == floor || u64::from(count) == ceil,
                "count {} not within 1 of share {}/{}", count, share, total);
        }
        prop_assert_eq!(live_moves(&current, &result, &workers), optimal_live_moves(p, &current, &workers));
    }

    /// Unchanged input moves nothing: the result of a round is a fixed point.
    #[test]
    fn unchanged_input_moves_nothing((_, n, caps, owners) in queue(2000, 40)) {
        let workers = workers(n, &caps);
        let current = assignment(&ids_with_dead(n), &owners);
        for strategy in strategies() {
            let first = strategy.allocate(&AllocationInput::new(&workers, &current)).unwrap().assignment;
            let second = strategy.allocate(&AllocationInput::new(&workers, &first)).unwrap().assignment;
            prop_assert_eq!(first.differences(&second), 0, "{} moved partitions", strategy.name());
        }
    }

    /// One join moves exactly the partitions the newcomer receives, and it receives its
    /// share; nothing moves between the other workers.
    #[test]
    fn one_join_moves_exactly_the_newcomers_share((p, n, _, owners) in queue(3000, 40)) {
        let before_workers = workers(n, &[]);
        let balanced = sticky(&before_workers, &assignment(&ids_with_dead(n), &owners));
        let after_workers = workers(n + 1, &[]);
        let newcomer = after_workers[n].id;
        let after = sticky(&after_workers, &balanced);
        assert_balanced(&loads(&after, &after_workers), p)?;
        let moved = balanced.differences(&after);
        prop_assert_eq!(moved, after.load(newcomer) as usize);
        for (partition, owner) in after.iter() {
            prop_assert!(owner == balanced.owner(partition) || owner == Some(newcomer));
        }
    }

    /// One join with capacities moves the fewest partitions a balanced result allows.
    #[test]
    fn one_join_with_capacities_is_optimal((p, n, caps, owners) in queue(3000, 30), newcomer_capacity in 1u32..=5) {
        let before_workers = workers(n, &caps);
        let balanced = sticky(&before_workers, &assignment(&ids_with_dead(n), &owners));
        let mut caps = caps;
        caps.push(newcomer_capacity);
        let after_workers = workers(n + 1, &caps);
        let after = sticky(&after_workers, &balanced);
        prop_assert_eq!(live_moves(&balanced, &after, &after_workers), optimal_live_moves(p, &balanced, &after_workers));
    }

    /// One leave moves only the leaver's partitions (with equal capacities).
    #[test]
    fn one_leave_moves_only_orphans((p, n, _, owners) in queue(3000, 40), leaver in any::<prop::sample::Index>()) {
        let n = n + 1;
        let all = workers(n, &[]);
        let balanced = sticky(&all, &assignment(&ids_with_dead(n), &owners));
        let leaver = leaver.index(n);
        let mut rest = all.clone();
        let gone = rest.remove(leaver).id;
        let after = sticky(&rest, &balanced);
        assert_balanced(&loads(&after, &rest), p)?;
        prop_assert_eq!(balanced.differences(&after), balanced.load(gone) as usize);
        prop_assert_eq!(live_moves(&balanced, &after, &rest), 0);
    }

    /// Rendezvous hashing: a join moves partitions only to the newcomer and a leave moves
    /// only the leaver's partitions.
    #[test]
    fn rendezvous_moves_only_what_changed((_, n, caps, _) in queue(1000, 20)) {
        let none = Assignment::unassigned(1000);
        let before = workers(n, &caps);
        let after = workers(n + 1, &caps);
        let a = RendezvousHash.allocate(&AllocationInput::new(&before, &none)).unwrap().assignment;
        let b = RendezvousHash.allocate(&AllocationInput::new(&after, &none)).unwrap().assignment;
        for ((_, x), (_, y)) in a.iter().zip(b.iter()) {
            prop_assert!(x == y || y == Some(after[n].id));
        }
    }

    /// Every strategy gives the same result whatever the order of the workers.
    #[test]
    fn deterministic_under_shuffled_workers(
        (workers, owners) in queue(1000, 30).prop_flat_map(|(_, n, caps, owners)| {
            let mut list = workers(n, &caps);
            for (i, w) in list.iter_mut().enumerate() {
                if i % 5 == 4 { *w = w.clone().draining(); }
                if i % 3 == 0 { *w = w.clone().with_label("zone", "a"); }
            }
            (Just(list).prop_shuffle(), Just(owners))
        }),
        max in prop::option::of(1u32..100),
        labels in any::<bool>(),
        load in prop::collection::vec(0u64..50, 30),
    ) {
        let n = workers.len();
        let current = assignment(&ids_with_dead(n), &owners);
        let mut sorted = workers.clone();
        sorted.sort_by_key(|w| w.id);
        let constraints = Constraints {
            required_labels: if labels { BTreeMap::from([("zone".to_owned(), "a".to_owned())]) } else { BTreeMap::new() },
            max_partitions_per_worker: max,
        };
        let other_load: BTreeMap<_, _> = (0..n).map(|i| (wid(i as u64), load[i])).collect();
        for strategy in strategies() {
            let run = |list: &[WorkerInfo]| {
                strategy.allocate(&AllocationInput::new(list, &current).with_constraints(&constraints).with_other_load(&other_load)).unwrap()
            };
            let (shuffled, ordered) = (run(&workers), run(&sorted));
            prop_assert_eq!(shuffled.assignment.to_owners(), ordered.assignment.to_owners());
            prop_assert_eq!(shuffled.unassigned, ordered.unassigned);
        }
    }

    /// No strategy ever breaks a constraint: only active workers with the required labels get
    /// partitions, nobody gets more than the maximum, and every partition left without owner
    /// is reported with the right reason.
    #[test]
    fn constraints_never_violated(
        (p, n, caps, owners) in queue(1500, 30),
        draining in prop::collection::vec(any::<bool>(), 30),
        labelled in prop::collection::vec(any::<bool>(), 30),
        max in prop::option::of(0u32..120),
        require in any::<bool>(),
    ) {
        let list: Vec<WorkerInfo> = workers(n, &caps).into_iter().enumerate().map(|(i, w)| {
            let w = if labelled[i] { w.with_label("gpu", "yes") } else { w };
            if draining[i] { w.draining() } else { w }
        }).collect();
        let constraints = Constraints {
            required_labels: if require { BTreeMap::from([("gpu".to_owned(), "yes".to_owned())]) } else { BTreeMap::new() },
            max_partitions_per_worker: max,
        };
        let eligible: Vec<&WorkerInfo> = list.iter().filter(|w| constraints.admits(w)).collect();
        let current = assignment(&ids_with_dead(n), &owners);
        for strategy in strategies() {
            let result = strategy.allocate(&AllocationInput::new(&list, &current).with_constraints(&constraints)).unwrap();
            for w in &list {
                let load = result.assignment.load(w.id);
                if !constraints.admits(w) {
                    prop_assert_eq!(load, 0, "{} gave partitions to an ineligible worker", strategy.name());
                }
                if let Some(max) = max {
                    prop_assert!(load <= max, "{} exceeded the maximum", strategy.name());
                }
            }
            let expected_assigned = match max {
                Some(max) => (p as usize).min(eligible.len() * max as usize),
                None if eligible.is_empty() => 0,
                None => p as usize,
            };
            prop_assert_eq!(result.assignment.len() - result.assignment.unowned(), expected_assigned, "{}", strategy.name());
            prop_assert_eq!(result.unassigned.len(), result.assignment.unowned());
            for unassigned in &result.unassigned {
                prop_assert_eq!(result.assignment.owner(unassigned.partition), None);
                let reason = if eligible.is_empty() { UnassignedReason::NoEligibleWorker } else { UnassignedReason::WorkerLimitReached };
                prop_assert_eq!(unassigned.reason, reason);
            }
        }
    }

    /// Queues allocated one after another, each with the load of the others: with equal
    /// capacities every worker's total over all queues is within 1 of every other's, and a
    /// second round over every queue changes nothing.
    #[test]
    fn cross_queue_totals_within_one(
        sizes in prop::collection::vec(1u32..300, 2..6),
        n in 1usize..25,
    ) {
        let list = workers(n, &[]);
        let mut queues: Vec<Assignment> = sizes.iter().map(|&p| Assignment::unassigned(p)).collect();
        let other_load = |queues: &[Assignment], skip: usize| -> BTreeMap<_, _> {
            list.iter().map(|w| {
                let load = queues.iter().enumerate().filter(|(q, _)| *q != skip).map(|(_, a)| u64::from(a.load(w.id))).sum();
                (w.id, load)
            }).collect()
        };
        for round in 0..2 {
            for q in 0..queues.len() {
                let load = other_load(&queues, q);
                let next = BalancedSticky::default()
                    .allocate(&AllocationInput::new(&list, &queues[q]).with_other_load(&load)).unwrap().assignment;
                if round == 1 {
                    prop_assert_eq!(next.differences(&queues[q]), 0, "second round moved partitions");
                }
                queues[q] = next;
                let totals: Vec<u64> = list.iter().map(|w| queues[..=q].iter().map(|a| u64::from(a.load(w.id))).sum()).collect();
                let spread = totals.iter().max().unwrap() - totals.iter().min().unwrap();
                prop_assert!(spread <= 1, "totals {totals:?} after queue {q}");
            }
        }
    }

    /// With a move cap, no round moves more partitions away from live owners than the cap,
    /// and repeated rounds converge to a balanced fixed point.
    #[test]
    fn move_cap_bounds_each_round_and_converges((p, n, _, owners) in queue(1500, 25), cap in 1u32..40) {
        let list = workers(n, &[]);
        let strategy = BalancedSticky::with_move_cap(MoveCap { absolute: Some(cap), relative: None });
        let mut current = assignment(&ids_with_dead(n), &owners);
        let needed = live_moves(&current, &sticky(&list, &current), &list);
        let rounds = needed.div_ceil(cap as usize) + 2;
        for _ in 0..rounds {
            let next = strategy.allocate(&AllocationInput::new(&list, &current)).unwrap().assignment;
            prop_assert!(live_moves(&current, &next, &list) <= cap as usize);
            prop_assert_eq!(next.unowned(), 0, "orphans are always placed");
            current = next;
        }
        assert_balanced(&loads(&current, &list), p)?;
        prop_assert_eq!(strategy.allocate(&AllocationInput::new(&list, &current)).unwrap().assignment.differences(&current), 0);
    }
}

#[test]
fn fifty_partitions_over_three_then_four_workers() {
    let three = workers(3, &[]);
    let first = sticky(&three, &Assignment::unassigned(50));
    let mut counts = loads(&first, &three);
    counts.sort_unstable();
    assert_eq!(counts, [16, 17, 17]);
    let four = workers(4, &[]);
    let second = sticky(&four, &first);
    assert_eq!(second.load(four[3].id), 12);
    assert_eq!(first.differences(&second), 12);
}

#[test]
fn draining_worker_hands_everything_over_and_nothing_else_moves() {
    let list = workers(4, &[]);
    let first = sticky(&list, &Assignment::unassigned(40));
    let mut drained = list.clone();
    drained[1] = drained[1].clone().draining();
    let second = sticky(&drained, &first);
    assert_eq!(second.load(list[1].id), 0);
    assert_eq!(first.differences(&second), 10);
    assert_eq!(live_moves(&first, &second, &[list[0].clone(), list[2].clone(), list[3].clone()]), 0);
}

#[test]
fn no_worker_leaves_everything_unassigned_with_a_reason() {
    let result =
        BalancedSticky::default().allocate(&AllocationInput::new(&[], &Assignment::unassigned(3))).unwrap();
    assert_eq!(result.unassigned.len(), 3);
    assert!(result.unassigned.iter().all(|u| u.reason == UnassignedReason::NoEligibleWorker));
    assert_eq!(result.unassigned[2].partition, PartitionId(2));
}

#[test]
fn duplicate_workers_are_refused() {
    let w = WorkerInfo::new(wid(1));
    let list = [w.clone(), w.with_capacity(NonZeroU32::MIN)];
    for strategy in strategies() {
        assert!(strategy.allocate(&AllocationInput::new(&list, &Assignment::unassigned(3))).is_err());
    }
}

#[test]
fn strategies_are_found_by_name_and_shared_across_threads() {
    for name in helix_core::allocation::STRATEGY_NAMES {
        let strategy: std::sync::Arc<dyn AllocationStrategy> =
            helix_core::allocation::strategy_by_name(name).expect("known name").into();
        assert_eq!(strategy.name(), name);
        let handle = std::thread::spawn(move || strategy.name().to_owned());
        assert_eq!(handle.join().expect("thread"), name);
    }
    assert_eq!(helix_core::allocation::DEFAULT_STRATEGY, "balanced-sticky");
}

#[test]
fn move_cap_limits() {
    assert_eq!(MoveCap { absolute: Some(10), relative: Some(0.5) }.limit(100), 10);
    assert_eq!(MoveCap { absolute: None, relative: Some(0.1) }.limit(1000), 100);
    assert_eq!(MoveCap { absolute: Some(0), relative: None }.limit(1000), 1);
}
