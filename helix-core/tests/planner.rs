//! The handoff planner: rule by rule, then a simulation of coordinator rounds, handoffs,
//! deaths and timeouts that checks no partition ever has two live owners and that the
//! assignment converges to the target.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::wid;
use helix_core::allocation::{AllocationInput, AllocationStrategy, Assignment, BalancedSticky};
use helix_core::planner::{
    CancelReason, Cooldowns, PartitionRow, Plan, PlanChange, PlanInput, RowState, plan,
};
use helix_core::{Epoch, PartitionId, WorkerId, WorkerInfo};
use proptest::prelude::*;

const REVOKE_TIMEOUT: Duration = Duration::from_secs(30);
const COOLDOWN: Duration = Duration::from_secs(60);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

fn run(
    current: &[PartitionRow],
    target: &Assignment,
    live: &BTreeSet<WorkerId>,
    cooldowns: &Cooldowns,
    now: DateTime<Utc>,
) -> Plan {
    plan(&PlanInput { current, target, live, cooldowns, now, revoke_timeout: REVOKE_TIMEOUT })
}

#[test]
fn each_rule() {
    let (a, b, c, dead) = (wid(1), wid(2), wid(3), wid(9));
    let live = BTreeSet::from([a, b, c]);
    let now = t0() + TimeDelta::seconds(100);
    let recent = now - TimeDelta::seconds(5);
    let old = now - TimeDelta::seconds(31);
    let revoking = |owner, target, since| PartitionRow {
        owner: Some(owner),
        epoch: Epoch(7),
        state: RowState::Revoking { target, since },
    };
    let rows = [
        PartitionRow::assigned(Some(a), Epoch(1)),    // 0: in place
        PartitionRow::assigned(None, Epoch(1)),       // 1: absent owner → grant
        PartitionRow::assigned(Some(dead), Epoch(2)), // 2: dead owner → grant
        PartitionRow::assigned(Some(dead), Epoch(2)), // 3: dead owner, no target → release
        PartitionRow::assigned(Some(a), Epoch(3)),    // 4: live owner → revoke
        revoking(a, Some(b), recent),                 // 5: handing off → nothing
        revoking(a, Some(b), recent),                 // 6: target changed → retarget
        revoking(a, Some(b), recent),                 // 7: target is owner again → cancel
        revoking(a, Some(b), old),                    // 8: timed out → cancel
        revoking(dead, Some(b), recent),              // 9: owner died while handing off → grant
        revoking(a, Some(dead), recent),              // 10: target died → retarget to the new target
        PartitionRow::assigned(Some(a), Epoch(3)),    // 11: cooling down → nothing
        PartitionRow::assigned(None, Epoch(4)),       // 12: nothing and nobody → nothing
        PartitionRow { owner: None, epoch: Epoch(5), state: RowState::Failed }, // 13: failed → nothing
    ];
    let target = Assignment::from_owners([
        Some(a),
        Some(b),
        Some(b),
        None,
        Some(c),
        Some(b),
        Some(c),
        Some(a),
        Some(c),
        Some(b),
        Some(c),
        Some(b),
        None,
        Some(a),
    ]);
    let mut cooldowns = Cooldowns::new();
    cooldowns.insert(PartitionId(11), now + TimeDelta::seconds(1));
    let p = PartitionId;
    assert_eq!(
        run(&rows, &target, &live, &cooldowns, now).changes,
        [
            PlanChange::Grant { partition: p(1), expected_epoch: Epoch(1), to: b },
            PlanChange::Grant { partition: p(2), expected_epoch: Epoch(2), to: b },
            PlanChange::Release { partition: p(3), expected_epoch: Epoch(2) },
            PlanChange::Revoke { partition: p(4), expected_epoch: Epoch(3), to: Some(c) },
            PlanChange::Retarget { partition: p(6), expected_epoch: Epoch(7), to: Some(c) },
            PlanChange::CancelRevoke {
                partition: p(7),
                expected_epoch: Epoch(7),
                reason: CancelReason::NoLongerNeeded
            },
            PlanChange::CancelRevoke {
                partition: p(8),
                expected_epoch: Epoch(7),
                reason: CancelReason::TimedOut
            },
            PlanChange::Grant { partition: p(9), expected_epoch: Epoch(7), to: b },
            PlanChange::Retarget { partition: p(10), expected_epoch: Epoch(7), to: Some(c) },
        ]
    );
    // After the cool-down the partition is revoked again.
    let later = now + TimeDelta::seconds(2);
    assert!(run(&rows, &target, &live, &cooldowns, later).changes.contains(&PlanChange::Revoke {
        partition: p(11),
        expected_epoch: Epoch(3),
        to: Some(b)
    }));
}

#[test]
fn a_dead_target_is_never_granted() {
    let (a, dead) = (wid(1), wid(9));
    let rows = [PartitionRow::assigned(None, Epoch(0)), PartitionRow::assigned(Some(a), Epoch(0))];
    let target = Assignment::from_owners([Some(dead), Some(dead)]);
    let live = BTreeSet::from([a]);
    let changes = run(&rows, &target, &live, &Cooldowns::new(), t0()).changes;
    assert_eq!(
        changes,
        [PlanChange::Revoke { partition: PartitionId(1), expected_epoch: Epoch(0), to: None }]
    );
}

#[test]
fn cooldowns_are_recorded_and_pruned() {
    let mut cooldowns = Cooldowns::new();
    let plan = Plan {
        changes: vec![
            PlanChange::CancelRevoke {
                partition: PartitionId(3),
                expected_epoch: Epoch(1),
                reason: CancelReason::TimedOut,
            },
            PlanChange::CancelRevoke {
                partition: PartitionId(4),
                expected_epoch: Epoch(1),
                reason: CancelReason::NoLongerNeeded,
            },
        ],
    };
    cooldowns.record_timeouts(&plan, t0(), COOLDOWN);
    assert_eq!(cooldowns.len(), 1);
    assert!(cooldowns.is_cooling(PartitionId(3), t0() + TimeDelta::seconds(59)));
    assert!(!cooldowns.is_cooling(PartitionId(3), t0() + TimeDelta::seconds(60)));
    cooldowns.prune(t0() + TimeDelta::seconds(60));
    assert!(cooldowns.is_empty());
}

/// Something that happens to the cluster between two coordinator rounds.
#[derive(Debug, Clone)]
enum Event {
    Join,
    Kill(prop::sample::Index),
    Drain(prop::sample::Index),
    /// The worker stops handing partitions off (stuck drain), or starts again.
    ToggleStuck(prop::sample::Index),
    Advance(u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => Just(Event::Join),
        2 => any::<prop::sample::Index>().prop_map(Event::Kill),
        1 => any::<prop::sample::Index>().prop_map(Event::Drain),
        2 => any::<prop::sample::Index>().prop_map(Event::ToggleStuck),
        3 => (0u8..40).prop_map(Event::Advance),
    ]
}

struct Sim {
    rows: Vec<PartitionRow>,
    workers: BTreeMap<WorkerId, WorkerInfo>,
    live: BTreeSet<WorkerId>,
    stuck: BTreeSet<WorkerId>,
    /// What each live worker believes it owns (it learns by polling, forgets by handing off,
    /// by seeing it is no longer the owner, or by dying).
    beliefs: BTreeMap<WorkerId, BTreeSet<u32>>,
    cooldowns: Cooldowns,
    now: DateTime<Utc>,
    next_id: u64,
}

impl Sim {
    fn new(partitions: u32, workers: u64) -> Self {
        let mut sim = Self {
            rows: vec![PartitionRow::assigned(None, Epoch(0)); partitions as usize],
            workers: BTreeMap::new(),
            live: BTreeSet::new(),
            stuck: BTreeSet::new(),
            beliefs: BTreeMap::new(),
            cooldowns: Cooldowns::new(),
            now: t0(),
            next_id: 0,
        };
        for _ in 0..workers {
            sim.join();
        }
        sim
    }

    fn join(&mut self) {
        let id = wid(self.next_id);
        self.next_id += 1;
        self.workers.insert(id, WorkerInfo::new(id));
        self.live.insert(id);
    }

    fn pick(&self, index: &prop::sample::Index) -> Option<WorkerId> {
        let live: Vec<WorkerId> = self.live.iter().copied().collect();
        (!live.is_empty()).then(|| live[index.index(live.len())])
    }

    fn target(&self) -> Assignment {
        let live: Vec<WorkerInfo> = self.live.iter().map(|id| self.workers[id].clone()).collect();
        let current = Assignment::from_owners(self.rows.iter().map(|row| row.owner));
        BalancedSticky::default().allocate(&AllocationInput::new(&live, &current)).unwrap().assignment
    }

    fn check_single_owner(&self) -> Result<(), TestCaseError> {
        let mut seen = BTreeMap::new();
        for (worker, partitions) in &self.beliefs {
            prop_assert!(self.live.contains(worker), "a dead worker still runs partitions");
            for p in partitions {
                if let Some(other) = seen.insert(*p, *worker) {
                    return Err(TestCaseError::fail(format!("partition {p} run by {other} and {worker}")));
                }
            }
        }
        Ok(())
    }

    /// One coordinator round, then every live worker polls, then unstuck owners hand off.
    fn round(&mut self) -> Result<Plan, TestCaseError> {
        let target = self.target();
        let plan = run(&self.rows, &target, &self.live, &self.cooldowns, self.now);
        let mut last = None;
        for change in &plan.changes {
            let p = change.partition();
            prop_assert!(last < Some(p), "partitions must appear once, in order");
            last = Some(p);
            let row = &mut self.rows[p.0 as usize];
            prop_assert_eq!(change.expected_epoch(), row.epoch);
            match *change {
                PlanChange::Grant { to, .. } => {
                    prop_assert!(
                        row.owner.is_none_or(|owner| !self.live.contains(&owner)),
                        "grant over a live owner"
                    );
                    prop_assert!(self.live.contains(&to));
                    *row = PartitionRow::assigned(Some(to), row.epoch.next());
                }
                PlanChange::Release { .. } => {
                    prop_assert!(row.owner.is_none_or(|owner| !self.live.contains(&owner)));
                    *row = PartitionRow::assigned(None, row.epoch.next());
                }
                PlanChange::Revoke { to, .. } => {
                    prop_assert_eq!(row.state, RowState::Assigned);
                    prop_assert!(!self.cooldowns.is_cooling(p, self.now), "revoked during its cool-down");
                    row.state = RowState::Revoking { target: to, since: self.now };
                }
                PlanChange::Retarget { to, .. } => match row.state {
                    RowState::Revoking { since, .. } => row.state = RowState::Revoking { target: to, since },
                    RowState::Assigned | RowState::Failed => {
                        return Err(TestCaseError::fail("retarget of a row not revoking"));
                    }
                },
                PlanChange::CancelRevoke { .. } => row.state = RowState::Assigned,
            }
        }
        self.cooldowns.record_timeouts(&plan, self.now, COOLDOWN);
        self.cooldowns.prune(self.now);

        // Polls: every new owner learns first, old beliefs are dropped only afterwards, so a
        // grant over a live owner would show up as two owners here.
        for (p, row) in self.rows.iter().enumerate() {
            if let Some(owner) = row.owner.filter(|owner| self.live.contains(owner)) {
                self.beliefs.entry(owner).or_default().insert(p as u32);
            }
        }
        self.check_single_owner()?;
        for (worker, partitions) in &mut self.beliefs {
            partitions.retain(|&p| self.rows[p as usize].owner == Some(*worker));
        }

        // Handoffs: an owner that is not stuck hands off in one fenced update.
        for (p, row) in self.rows.iter_mut().enumerate() {
            if let (Some(owner), RowState::Revoking { target, .. }) = (row.owner, row.state)
                && self.live.contains(&owner)
                && !self.stuck.contains(&owner)
            {
                if let Some(beliefs) = self.beliefs.get_mut(&owner) {
                    beliefs.remove(&(p as u32));
                }
                *row = PartitionRow::assigned(target, row.epoch.next());
            }
        }
        self.check_single_owner()?;
        Ok(plan)
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Join => self.join(),
            Event::Kill(index) => {
                if let Some(id) = self.pick(index) {
                    self.live.remove(&id);
                    self.beliefs.remove(&id); // it fences itself before the database says it is dead
                }
            }
            Event::Drain(index) => {
                if let Some(id) = self.pick(index)
                    && let Some(worker) = self.workers.get_mut(&id)
                {
                    *worker = worker.clone().draining();
                }
            }
            Event::ToggleStuck(index) => {
                if let Some(id) = self.pick(index)
                    && !self.stuck.remove(&id)
                {
                    self.stuck.insert(id);
                }
            }
            Event::Advance(seconds) => self.now += TimeDelta::seconds(i64::from(*seconds)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever happens, no partition is ever run by two live workers, every change carries
    /// the row's epoch, and once things calm down the rows converge to the target.
    #[test]
    fn single_owner_and_convergence(
        partitions in 1u32..200,
        initial in 0u64..6,
        events in prop::collection::vec(event(), 0..30),
    ) {
        let mut sim = Sim::new(partitions, initial);
        sim.round()?;
        for event in &events {
            sim.apply(event);
            sim.round()?;
        }
        // Calm: nobody is stuck, cool-downs are over, time passes between rounds.
        // A revocation that was stuck times out, cools down, and is revoked again afterwards.
        sim.stuck.clear();
        let step = TimeDelta::from_std(COOLDOWN).unwrap() + TimeDelta::seconds(1);
        let mut converged = false;
        for _ in 0..4 {
            sim.now += step;
            let plan = sim.round()?;
            if plan.is_empty() && sim.rows.iter().all(|row| row.state == RowState::Assigned) {
                converged = true;
                break;
            }
        }
        prop_assert!(converged, "no fixed point after 4 calm rounds");
        let target = sim.target();
        for (p, row) in sim.rows.iter().enumerate() {
            prop_assert_eq!(row.state, RowState::Assigned);
            let expected = target.owner(PartitionId(p as u32));
            prop_assert_eq!(row.owner.filter(|o| sim.live.contains(o)), expected);
        }
    }
}
