//! The machine driven by a simulated engine that checks, after every step, the promises
//! the strategies make: traffic only reaches ready instances, an instance leaves the
//! route table before it is stopped, rolling stays within its surge and availability
//! budget, and every run ends.

use super::*;
use crate::deploy::health::Transition;
use crate::deploy::settings::{Amount, CanaryStep, HttpCheck, Strategy};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How the simulated instances behave.
#[derive(Clone)]
struct World {
    /// New instances whose index is listed here never become ready.
    new_failing: BTreeSet<u32>,
    checks_pass: bool,
    /// Reorder queued events with this seed (0: FIFO).
    seed: u64,
}

impl Default for World {
    fn default() -> World {
        World {
            new_failing: BTreeSet::new(),
            checks_pass: true,
            seed: 0,
        }
    }
}

struct Sim {
    m: Deployment,
    world: World,
    now: u64,
    queue: VecDeque<Event>,
    running: BTreeSet<(Slot, u32)>,
    ready: BTreeSet<(Slot, u32)>,
    route: Vec<RouteEntry>,
    routes: Vec<Vec<RouteEntry>>,
    wake: Option<u64>,
    max_running: usize,
    min_routed_after_start: usize,
    steps: usize,
    rng: u64,
}

impl Sim {
    fn new(plan: Plan, world: World) -> Sim {
        let mut running = BTreeSet::new();
        let mut ready = BTreeSet::new();
        for &i in &plan.old_instances {
            running.insert((Slot::Old, i));
            ready.insert((Slot::Old, i));
        }
        if plan.new_is_warm {
            for i in 0..plan.instances {
                running.insert((Slot::New, i));
                ready.insert((Slot::New, i));
            }
        }
        let route = plan
            .old_instances
            .iter()
            .map(|&index| RouteEntry {
                slot: Slot::Old,
                index,
                weight: 1,
            })
            .collect();
        let rng = world.seed;
        Sim {
            max_running: running.len(),
            min_routed_after_start: usize::MAX,
            m: Deployment::new(plan),
            world,
            now: 0,
            queue: VecDeque::new(),
            running,
            ready,
            route,
            routes: Vec::new(),
            wake: None,
            steps: 0,
            rng,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Start { slot, indices } => {
                    for &i in &indices {
                        assert!(
                            !self.running.contains(&(slot, i)),
                            "started {slot:?} {i} twice"
                        );
                        self.running.insert((slot, i));
                    }
                    self.max_running = self.max_running.max(self.running.len());
                    self.queue.push_back(Event::Started {
                        slot,
                        indices: indices.clone(),
                    });
                    for i in indices {
                        let transition = if slot == Slot::New && self.world.new_failing.contains(&i)
                        {
                            Transition::Failed {
                                reason: "answered 500".into(),
                            }
                        } else {
                            // Ready for routing only once the event is delivered.
                            Transition::Ready
                        };
                        self.queue.push_back(Event::Health {
                            slot,
                            index: i,
                            transition,
                        });
                    }
                }
                Action::Stop { slot, indices } => {
                    for &i in &indices {
                        assert!(
                            !self.route.iter().any(|e| e.slot == slot && e.index == i),
                            "stopped {slot:?} {i} while it was in the route table"
                        );
                        self.running.remove(&(slot, i));
                        self.ready.remove(&(slot, i));
                    }
                    self.queue.push_back(Event::Stopped { slot, indices });
                }
                Action::Route(table) => {
                    for e in &table {
                        assert!(
                            self.ready.contains(&(e.slot, e.index)),
                            "routed to {:?} {} before it was ready (table {table:?})",
                            e.slot,
                            e.index
                        );
                        assert!(e.weight > 0, "zero weight in {table:?}");
                    }
                    self.route = table.clone();
                    self.routes.push(table);
                    // The engine applies a route before it handles the next event.
                    self.queue.push_front(Event::Routed);
                }
                Action::RunChecks => self.queue.push_back(if self.world.checks_pass {
                    Event::ChecksPassed
                } else {
                    Event::ChecksFailed {
                        reason: "/smoke answered 500".into(),
                    }
                }),
                Action::WakeAt(t) => self.wake = Some(t),
            }
        }
    }

    fn deliver(&mut self, ev: Event) {
        if let Event::Health {
            slot,
            index,
            transition: Transition::Ready,
        } = &ev
        {
            if self.running.contains(&(*slot, *index)) {
                self.ready.insert((*slot, *index));
            }
        }
        let actions = self.m.handle(ev, self.now);
        self.apply(actions);
    }

    /// Run until the machine awaits something outside (approval, promotion) or ends.
    fn run(&mut self) {
        let actions = self.m.start(self.now);
        self.apply(actions);
        self.settle();
    }

    fn settle(&mut self) {
        loop {
            self.steps += 1;
            assert!(self.steps < 10_000, "did not settle: {:?}", self.m.phase());
            if self.m.phase() != &Phase::Pending
                && self.m.phase() != &Phase::AwaitingApproval
                && matches!(self.m.plan().strategy, Strategy::Rolling { .. })
                && !self.m.is_finished()
                && self.m.phase() != &Phase::RollingBack
            {
                let routed = self.route.len();
                self.min_routed_after_start = self.min_routed_after_start.min(routed);
            }
            let ev = if self.world.seed != 0 && self.queue.len() > 1 {
                // Any event but a pending Routed (always first) may come in any order.
                let start = usize::from(matches!(self.queue.front(), Some(Event::Routed)));
                if start >= self.queue.len() {
                    self.queue.pop_front()
                } else {
                    let span = (self.queue.len() - start) as u64;
                    let pick = start + (self.next_random() % span) as usize;
                    self.queue.remove(pick)
                }
            } else {
                self.queue.pop_front()
            };
            match ev {
                Some(ev) => self.deliver(ev),
                None => match self.wake.take() {
                    Some(t) => {
                        self.now = self.now.max(t);
                        self.deliver(Event::Tick);
                    }
                    None => return,
                },
            }
        }
    }

    fn serving(&self) -> BTreeSet<Slot> {
        self.route.iter().map(|e| e.slot).collect()
    }
}

fn plan(strategy: Strategy, instances: u32, old: u32) -> Plan {
    Plan {
        strategy,
        instances,
        old_instances: (0..old).collect(),
        needs_approval: false,
        new_is_warm: false,
    }
}

fn blue_green(keep_warm_ms: u64) -> Strategy {
    Strategy::BlueGreen {
        keep_warm_ms,
        pre_switch_checks: Vec::new(),
    }
}

fn rolling(surge: u32, unavailable: u32) -> Strategy {
    Strategy::Rolling {
        max_surge: Amount::Count(surge),
        max_unavailable: Amount::Count(unavailable),
    }
}

#[test]
fn blue_green_switches_once_then_stops_old_after_keep_warm() {
    let mut s = Sim::new(plan(blue_green(60_000), 2, 2), World::default());
    let first = s.m.start(0);
    assert_eq!(
        first,
        vec![Action::Start {
            slot: Slot::New,
            indices: vec![0, 1]
        }]
    );
    assert_eq!(s.m.phase(), &Phase::StartingRelease);
    s.apply(first);
    s.settle();
    // One switch: straight from all-old to all-new.
    assert_eq!(s.routes.len(), 1);
    assert!(s.routes[0].iter().all(|e| e.slot == Slot::New));
    assert_eq!(s.m.phase(), &Phase::Succeeded);
    assert_eq!(s.now, 60_000, "old stopped at the end of keep-warm");
    assert!(s.running.iter().all(|(slot, _)| *slot == Slot::New));
    assert_eq!(s.m.status(), Status::Success);
}

#[test]
fn blue_green_keeps_old_warm_and_a_lost_new_instance_switches_back() {
    let mut s = Sim::new(plan(blue_green(60_000), 1, 1), World::default());
    let a = s.m.start(0);
    s.apply(a);
    // Deliver events without the timer.
    while let Some(ev) = s.queue.pop_front() {
        s.deliver(ev);
    }
    assert_eq!(s.m.phase(), &Phase::KeepingOldWarm { until: 60_000 });
    assert_eq!(s.m.status(), Status::Success);
    assert!(s.running.contains(&(Slot::Old, 0)), "old still warm");
    s.now = 5_000;
    s.deliver(Event::Health {
        slot: Slot::New,
        index: 0,
        transition: Transition::Lost {
            reason: "3 consecutive failed checks".into(),
        },
    });
    s.settle();
    assert_eq!(s.m.phase(), &Phase::RolledBack);
    assert_eq!(s.serving(), BTreeSet::from([Slot::Old]));
    assert!(!s.running.contains(&(Slot::New, 0)));
    assert!(s
        .m
        .reason()
        .is_some_and(|r| r.contains("instance 0 of the new release")));
}

#[test]
fn an_unhealthy_release_never_takes_traffic() {
    for strategy in [
        blue_green(1000),
        Strategy::Canary {
            steps: vec![CanaryStep::Weight(50)],
            keep_warm_ms: 0,
        },
    ] {
        let world = World {
            new_failing: BTreeSet::from([1]),
            ..World::default()
        };
        let mut s = Sim::new(plan(strategy.clone(), 2, 2), world);
        s.run();
        assert_eq!(s.m.phase(), &Phase::Failed, "{strategy:?}");
        assert!(
            s.routes.iter().flatten().all(|e| e.slot == Slot::Old),
            "{:?}",
            s.routes
        );
        assert_eq!(s.serving(), BTreeSet::from([Slot::Old]));
        assert!(s.running.iter().all(|(slot, _)| *slot == Slot::Old));
        assert!(s.m.reason().is_some_and(|r| r.contains("instance 1")));
    }
}

#[test]
fn first_deployment_that_fails_leaves_nothing_routed() {
    let world = World {
        new_failing: BTreeSet::from([0]),
        ..World::default()
    };
    let mut s = Sim::new(plan(blue_green(0), 1, 0), world);
    s.run();
    assert_eq!(s.m.phase(), &Phase::Failed);
    assert!(s.route.is_empty());
    assert!(s.running.is_empty());
}

#[test]
fn pre_switch_checks_gate_the_switch() {
    let strategy = Strategy::BlueGreen {
        keep_warm_ms: 0,
        pre_switch_checks: vec![HttpCheck {
            path: "/smoke".into(),
            status: None,
        }],
    };
    let mut ok = Sim::new(plan(strategy.clone(), 1, 1), World::default());
    ok.run();
    assert_eq!(ok.m.phase(), &Phase::Succeeded);
    assert_eq!(ok.serving(), BTreeSet::from([Slot::New]));

    let world = World {
        checks_pass: false,
        ..World::default()
    };
    let mut bad = Sim::new(plan(strategy, 1, 1), world);
    bad.run();
    assert_eq!(bad.m.phase(), &Phase::Failed);
    assert!(bad
        .m
        .reason()
        .is_some_and(|r| r.contains("/smoke answered 500")));
    assert_eq!(bad.serving(), BTreeSet::from([Slot::Old]));
}

#[test]
fn recreate_stops_old_before_starting_new() {
    let mut s = Sim::new(plan(Strategy::Recreate, 2, 2), World::default());
    let a = s.m.start(0);
    assert_eq!(a, vec![Action::Route(Vec::new())]);
    s.apply(a);
    s.deliver(Event::Routed);
    s.queue.clear();
    // The stop of old is out; nothing new starts before it is acknowledged.
    assert!(s.running.iter().all(|(slot, _)| *slot == Slot::New));
    assert_eq!(s.m.phase(), &Phase::StoppingOld);
    let a = s.m.handle(
        Event::Stopped {
            slot: Slot::Old,
            indices: vec![0, 1],
        },
        1,
    );
    assert_eq!(
        a,
        vec![Action::Start {
            slot: Slot::New,
            indices: vec![0, 1]
        }]
    );
    s.apply(a);
    s.settle();
    assert_eq!(s.m.phase(), &Phase::Succeeded);
    assert_eq!(s.serving(), BTreeSet::from([Slot::New]));
    assert_eq!(s.max_running, 2, "never more than the instance count");
}

#[test]
fn recreate_failure_is_final() {
    let world = World {
        new_failing: BTreeSet::from([0]),
        ..World::default()
    };
    let mut s = Sim::new(plan(Strategy::Recreate, 1, 1), world);
    s.run();
    assert_eq!(s.m.phase(), &Phase::Failed);
    assert!(s.running.is_empty());
    assert!(s.route.is_empty());
}

#[test]
fn rolling_respects_surge_and_unavailability() {
    for (n, surge, unavailable) in [
        (1, 1, 0),
        (4, 1, 0),
        (4, 0, 1),
        (4, 2, 1),
        (5, 1, 2),
        (3, 3, 3),
    ] {
        for seed in [0, 7, 99, 12345] {
            let world = World {
                seed,
                ..World::default()
            };
            let mut s = Sim::new(plan(rolling(surge, unavailable), n, n), world);
            s.run();
            assert_eq!(
                s.m.phase(),
                &Phase::Succeeded,
                "n={n} s={surge} u={unavailable}"
            );
            assert!(
                s.max_running as u32 <= n + surge,
                "n={n} s={surge}: {} running at once",
                s.max_running
            );
            assert!(
                s.min_routed_after_start as u32 >= n - unavailable,
                "n={n} u={unavailable}: only {} routed",
                s.min_routed_after_start
            );
            assert_eq!(s.route.len() as u32, n);
            assert_eq!(s.serving(), BTreeSet::from([Slot::New]));
            assert_eq!(s.running.len() as u32, n);
        }
    }
}

#[test]
fn rolling_percentages_replace_one_instance_without_downtime() {
    let mut s = Sim::new(plan(Strategy::default_rolling(), 1, 1), World::default());
    s.run();
    assert_eq!(s.m.phase(), &Phase::Succeeded);
    assert_eq!(s.max_running, 2);
    assert_eq!(s.min_routed_after_start, 1);
}

#[test]
fn rolling_failure_restores_the_old_instances() {
    let world = World {
        new_failing: BTreeSet::from([2]),
        ..World::default()
    };
    let mut s = Sim::new(plan(rolling(1, 1), 4, 4), world);
    s.run();
    assert_eq!(s.m.phase(), &Phase::RolledBack);
    assert_eq!(s.serving(), BTreeSet::from([Slot::Old]));
    assert_eq!(s.route.len(), 4, "all four old instances serve again");
    assert!(s.running.iter().all(|(slot, _)| *slot == Slot::Old));
}

#[test]
fn canary_walks_weights_and_pauses() {
    let strategy = Strategy::Canary {
        steps: vec![
            CanaryStep::Weight(10),
            CanaryStep::Pause(Some(1_000)),
            CanaryStep::Weight(50),
            CanaryStep::Pause(None),
        ],
        keep_warm_ms: 500,
    };
    let mut s = Sim::new(plan(strategy, 2, 1), World::default());
    s.run();
    assert_eq!(
        s.m.phase(),
        &Phase::Paused {
            step: 3,
            until: None
        }
    );
    let share = |t: &[RouteEntry], slot: Slot| -> f64 {
        let total: u32 = t.iter().map(|e| e.weight).sum();
        let part: u32 = t.iter().filter(|e| e.slot == slot).map(|e| e.weight).sum();
        f64::from(part) / f64::from(total)
    };
    assert_eq!(s.routes.len(), 2);
    assert!((share(&s.routes[0], Slot::New) - 0.10).abs() < 1e-9);
    assert!((share(&s.routes[1], Slot::New) - 0.50).abs() < 1e-9);
    assert_eq!(s.now, 1_000, "the timed pause waited");
    s.deliver(Event::Promote);
    s.settle();
    assert_eq!(s.m.phase(), &Phase::Succeeded);
    assert!((share(&s.route, Slot::New) - 1.0).abs() < 1e-9);
    assert_eq!(s.now, 1_500, "old kept warm after the last step");
}

#[test]
fn canary_abort_sends_traffic_back() {
    let strategy = Strategy::Canary {
        steps: vec![CanaryStep::Weight(20), CanaryStep::Pause(None)],
        keep_warm_ms: 0,
    };
    let mut s = Sim::new(plan(strategy, 1, 1), World::default());
    s.run();
    s.deliver(Event::Abort {
        reason: "error rate 12% > 5%".into(),
    });
    s.settle();
    assert_eq!(s.m.phase(), &Phase::RolledBack);
    assert_eq!(s.serving(), BTreeSet::from([Slot::Old]));
    assert_eq!(s.m.status(), Status::RolledBack);
}

#[test]
fn approval_gates_everything_and_rejection_cancels() {
    let mut p = plan(blue_green(0), 1, 1);
    p.needs_approval = true;
    let mut s = Sim::new(p.clone(), World::default());
    s.run();
    assert_eq!(s.m.phase(), &Phase::AwaitingApproval);
    assert_eq!(s.m.status(), Status::AwaitingApproval);
    assert_eq!(s.max_running, 1, "nothing started before approval");
    s.deliver(Event::Approved);
    s.settle();
    assert_eq!(s.m.phase(), &Phase::Succeeded);

    let mut r = Sim::new(p, World::default());
    r.run();
    r.deliver(Event::Rejected {
        reason: "rejected by alice".into(),
    });
    assert_eq!(r.m.phase(), &Phase::Canceled);
    assert_eq!(r.m.reason(), Some("rejected by alice"));
    assert!(
        r.m.handle(Event::Approved, 1).is_empty(),
        "finished for good"
    );
}

#[test]
fn cancel_while_health_checking_stops_the_new_release() {
    let mut s = Sim::new(plan(blue_green(0), 2, 1), World::default());
    let a = s.m.start(0);
    s.apply(a);
    s.queue.clear();
    s.deliver(Event::Started {
        slot: Slot::New,
        indices: vec![0, 1],
    });
    assert_eq!(s.m.phase(), &Phase::HealthChecking);
    s.deliver(Event::Cancel);
    s.settle();
    assert_eq!(s.m.phase(), &Phase::Canceled);
    assert!(s.running.iter().all(|(slot, _)| *slot == Slot::Old));
}

#[test]
fn rollback_to_a_warm_release_is_one_switch() {
    let mut p = plan(blue_green(30_000), 1, 1);
    p.new_is_warm = true;
    let mut s = Sim::new(p, World::default());
    let a = s.m.start(0);
    assert_eq!(
        a,
        vec![Action::Route(vec![RouteEntry {
            slot: Slot::New,
            index: 0,
            weight: 1
        }])]
    );
    assert_eq!(s.m.phase(), &Phase::SwitchingTraffic);
    s.apply(a);
    s.settle();
    assert_eq!(s.m.phase(), &Phase::Succeeded);
    assert_eq!(s.max_running, 2, "nothing was started");
    assert_eq!(s.routes.len(), 1);
}

#[test]
fn a_warm_release_lost_while_awaiting_approval_is_not_routed() {
    // Found by the fuzzer: the loss arrived before approval and was forgotten.
    let mut p = plan(blue_green(1_000), 2, 1);
    p.new_is_warm = true;
    p.needs_approval = true;
    let mut s = Sim::new(p, World::default());
    s.run();
    assert_eq!(s.m.phase(), &Phase::AwaitingApproval);
    s.ready.remove(&(Slot::New, 0));
    s.deliver(Event::Health {
        slot: Slot::New,
        index: 0,
        transition: Transition::Lost {
            reason: "3 consecutive failed checks".into(),
        },
    });
    s.settle();
    assert_eq!(s.m.phase(), &Phase::Failed);
    assert_eq!(s.serving(), BTreeSet::from([Slot::Old]));
    assert!(s.m.handle(Event::Approved, 1).is_empty());
}

#[test]
fn superseded_while_warm() {
    let mut s = Sim::new(plan(blue_green(30_000), 1, 1), World::default());
    let a = s.m.start(0);
    s.apply(a);
    while let Some(ev) = s.queue.pop_front() {
        s.deliver(ev);
    }
    assert!(matches!(s.m.phase(), Phase::KeepingOldWarm { .. }));
    // A rollback to the warm release takes it over: nothing is stopped.
    let mut keep = s.m.clone();
    assert!(keep
        .handle(Event::Superseded { keep_old: true }, 10)
        .is_empty());
    assert_eq!(keep.phase(), &Phase::Succeeded);
    // Any other deployment: the warm release goes.
    assert_eq!(
        s.m.handle(Event::Superseded { keep_old: false }, 10),
        vec![Action::Stop {
            slot: Slot::Old,
            indices: vec![0]
        }]
    );
}

#[test]
fn random_orders_and_failures_always_end_cleanly() {
    let strategies = [
        Strategy::Recreate,
        blue_green(100),
        rolling(1, 0),
        rolling(0, 1),
        rolling(2, 2),
        Strategy::Canary {
            steps: vec![CanaryStep::Weight(30), CanaryStep::Pause(Some(10))],
            keep_warm_ms: 10,
        },
    ];
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut endings: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..600 {
        let strategy = strategies[round % strategies.len()].clone();
        let n = (next() % 5 + 1) as u32;
        let old = (next() % 5) as u32;
        let failing: BTreeSet<u32> = (0..n).filter(|_| next() % 6 == 0).collect();
        let world = World {
            new_failing: failing.clone(),
            checks_pass: true,
            seed: next() | 1,
        };
        let mut s = Sim::new(plan(strategy.clone(), n, old), world);
        s.run();
        let phase = s.m.phase().clone();
        assert!(
            s.m.is_finished(),
            "{strategy:?} n={n} old={old} ended in {phase:?}"
        );
        match phase {
            Phase::Succeeded => {
                assert!(failing.is_empty() || s.m.plan().new_is_warm);
                assert_eq!(s.serving(), BTreeSet::from([Slot::New]));
                assert!(s.running.iter().all(|(slot, _)| *slot == Slot::New));
            }
            Phase::Failed | Phase::RolledBack => {
                assert!(!failing.is_empty());
                assert!(s.running.iter().all(|(slot, _)| *slot == Slot::Old));
                if !matches!(strategy, Strategy::Recreate) {
                    assert_eq!(
                        s.route.len() as u32,
                        old,
                        "{strategy:?}: every old instance serves again"
                    );
                }
            }
            other => panic!("unexpected end {other:?}"),
        }
        *endings.entry(format!("{phase:?}")).or_default() += 1;
    }
    assert!(endings.len() >= 2, "{endings:?}");
}
