//! Allocation and planning benchmarks: full allocation from scratch and incremental (one
//! join, one leave) at 10k × 100, 100k × 1k and 1M × 10k; one round over many queues after a
//! join (16 queues × 62 500 partitions over 10 000 workers, 1 000 queues × 64 over 100); and
//! the planner at 100k × 1k.
//!
//! Run with `cargo bench -p helix-core`. Before measuring, the benchmark prints, for every
//! strategy, how many partitions one join moves at 100k × 1k and the spread of the loads.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use helix_core::allocation::{
    AllocationInput, AllocationStrategy, Assignment, BalancedSticky, RendezvousHash, RoundRobin,
};
use helix_core::planner::{Cooldowns, PartitionRow, PlanInput, plan};
use helix_core::{Epoch, WorkerId, WorkerInfo};
use uuid::Uuid;

const SIZES: [(u32, usize); 3] = [(10_000, 100), (100_000, 1_000), (1_000_000, 10_000)];

fn workers(n: usize) -> Vec<WorkerInfo> {
    // v7-like ids: a time prefix, then a counter, so they sort in creation order.
    (0..n as u128)
        .map(|i| WorkerInfo::new(WorkerId::from_uuid(Uuid::from_u128((i << 80) | (0x7 << 76) | 0xdead_beef))))
        .collect()
}

fn allocate(strategy: &dyn AllocationStrategy, workers: &[WorkerInfo], current: &Assignment) -> Assignment {
    strategy.allocate(&AllocationInput::new(workers, current)).unwrap().assignment
}

fn label(partitions: u32, workers: usize) -> String {
    let short = |n: u64| match n {
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    };
    format!("{}x{}", short(u64::from(partitions)), short(workers as u64))
}

/// Partitions moved by one join at 100k × 1k, and max − min load afterwards.
fn print_join_figures() {
    let (partitions, n) = (100_000, 1_000);
    let before = workers(n);
    let after = workers(n + 1);
    let strategies: [Box<dyn AllocationStrategy>; 3] =
        [Box::new(BalancedSticky::default()), Box::new(RendezvousHash), Box::new(RoundRobin)];
    eprintln!("one join at 100k partitions x 1k workers:");
    for strategy in &strategies {
        let base = allocate(strategy.as_ref(), &before, &Assignment::unassigned(partitions));
        let joined = allocate(strategy.as_ref(), &after, &base);
        let loads: Vec<u32> = after.iter().map(|w| joined.load(w.id)).collect();
        let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
        let before_loads: Vec<u32> = before.iter().map(|w| base.load(w.id)).collect();
        let before_spread = before_loads.iter().max().unwrap() - before_loads.iter().min().unwrap();
        eprintln!(
            "  {:<16} moved {:>6} partitions (newcomer got {:>4}), max-min load {:>3} after (was {:>3} before)",
            strategy.name(),
            base.differences(&joined),
            joined.load(after[n].id),
            spread,
            before_spread,
        );
    }
}

fn configure(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("allocation");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    group
}

fn bench_strategies(c: &mut Criterion) {
    print_join_figures();
    let mut group = configure(c);
    let strategies: [(Box<dyn AllocationStrategy>, usize); 3] = [
        (Box::new(BalancedSticky::default()), SIZES.len()),
        (Box::new(RoundRobin), SIZES.len()),
        // O(P × N) hashes: 10^10 at 1M × 10k is out of reach, so the largest size is skipped.
        (Box::new(RendezvousHash), 2),
    ];
    for (strategy, sizes) in &strategies {
        for &(partitions, n) in &SIZES[..*sizes] {
            let all = workers(n + 1);
            let before = &all[..n];
            let mut left = before.to_vec();
            left.remove(n / 2);
            let empty = Assignment::unassigned(partitions);
            let base = allocate(strategy.as_ref(), before, &empty);
            let size = label(partitions, n);
            let name = strategy.name();
            group.bench_function(BenchmarkId::new(format!("{name}/from-scratch"), &size), |b| {
                b.iter(|| black_box(allocate(strategy.as_ref(), before, black_box(&empty))))
            });
            group.bench_function(BenchmarkId::new(format!("{name}/join"), &size), |b| {
                b.iter(|| black_box(allocate(strategy.as_ref(), &all, black_box(&base))))
            });
            group.bench_function(BenchmarkId::new(format!("{name}/leave"), &size), |b| {
                b.iter(|| black_box(allocate(strategy.as_ref(), &left, black_box(&base))))
            });
        }
    }
    group.finish();
}

fn bench_planner(c: &mut Criterion) {
    let (partitions, n) = (100_000, 1_000);
    let all = workers(n + 1);
    let before = &all[..n];
    let base = allocate(&BalancedSticky::default(), before, &Assignment::unassigned(partitions));
    let rows: Vec<PartitionRow> =
        base.iter().map(|(_, owner)| PartitionRow::assigned(owner, Epoch(1))).collect();
    let now = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let cooldowns = Cooldowns::new();
    let mut group = c.benchmark_group("planner");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));

    let mut scenario = |name: &str, live: &[WorkerInfo]| {
        let target = allocate(&BalancedSticky::default(), live, &base);
        let live: BTreeSet<WorkerId> = live.iter().map(|w| w.id).collect();
        let input = PlanInput {
            current: &rows,
            target: &target,
            live: &live,
            cooldowns: &cooldowns,
            now,
            revoke_timeout: Duration::from_secs(30),
        };
        let changes = plan(&input).changes.len();
        eprintln!("planner {name} at 100k x 1k: {changes} changes");
        group.bench_function(BenchmarkId::new(name, "100kx1k"), |b| {
            b.iter(|| black_box(plan(black_box(&input))))
        });
    };
    scenario("steady", before);
    scenario("join", &all);
    let mut killed = before.to_vec();
    killed.remove(n / 2);
    scenario("death", &killed);
    group.finish();
}

/// Every queue's target after one round over `workers`: one allocation over all the queues.
fn multi_round(workers: &[WorkerInfo], current: &[Assignment]) -> Vec<Assignment> {
    let inputs: Vec<AllocationInput<'_>> = current.iter().map(|a| AllocationInput::new(workers, a)).collect();
    BalancedSticky::default().allocate_all(&inputs).unwrap().into_iter().map(|a| a.assignment).collect()
}

fn moves(before: &[Assignment], after: &[Assignment]) -> usize {
    before.iter().zip(after).map(|(a, b)| a.differences(b)).sum()
}

/// Many queues over one set of workers: one round after a join (the moves, the spread of the
/// totals and what a second round moves are printed first).
fn bench_multi_queue(c: &mut Criterion) {
    let mut group = configure(c);
    for (queues, partitions, n) in [(16usize, 62_500u32, 10_000usize), (1_000, 64, 100)] {
        let all = workers(n + 1);
        let before = &all[..n];
        let empty: Vec<Assignment> = (0..queues).map(|_| Assignment::unassigned(partitions)).collect();
        let base = multi_round(before, &empty);
        let joined = multi_round(&all, &base);
        let again = multi_round(&all, &joined);
        let totals: Vec<u32> = all.iter().map(|w| joined.iter().map(|a| a.load(w.id)).sum()).collect();
        eprintln!(
            "{queues} queues x {partitions} over {n} workers, one join: moved {}, total spread {}, second round moved {}",
            moves(&base, &joined),
            totals.iter().max().unwrap() - totals.iter().min().unwrap(),
            moves(&joined, &again),
        );
        let size = format!("{queues}qx{}", label(partitions, n));
        group.bench_function(BenchmarkId::new("balanced-sticky/multi-queue-join", &size), |b| {
            b.iter(|| black_box(multi_round(&all, black_box(&base))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_strategies, bench_multi_queue, bench_planner);
criterion_main!(benches);
