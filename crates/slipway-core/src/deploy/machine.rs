//! The state machine of one deployment. It knows two releases by slot: `Old` (what serves
//! now, possibly nothing) and `New` (what is being deployed), each with numbered
//! instances. The engine calls [`Deployment::start`] once and [`Deployment::handle`] with
//! every fact it observes; each call returns the actions to perform, in order. Actions
//! that change traffic or stop instances are acknowledged by an event (`Routed`,
//! `Stopped`), so the engine can persist the phase (with the switch in progress) before
//! acting and again after.
//!
//! Strategies:
//! - `recreate`: route nothing, stop old, start new, wait until every instance is ready,
//!   route to new.
//! - `blue-green`: start new beside old, wait until ready, run the pre-switch checks,
//!   switch all traffic at once, keep old warm for `keep_warm` (a rollback meanwhile is a
//!   switch back; a new instance lost meanwhile switches back by itself), then stop old.
//! - `canary`: like blue-green, but traffic moves by weight steps with pauses; a lost new
//!   instance or an abort sends all traffic back to old.
//! - `rolling`: Kubernetes' algorithm: at most `instances + max_surge` instances exist and
//!   at least `instances - max_unavailable` are ready and routed; an old instance leaves the
//!   route table before it is stopped. A failure stops the new release and restores the
//!   old instances already stopped.
//!
//! A release whose instances never become ready takes no traffic (except `recreate` with
//! no old release left, which has nothing to fall back to).

use super::health::Transition;
use super::settings::{Amount, CanaryStep, Strategy};
use serde::{Deserialize, Serialize};

/// Which release an instance belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    Old,
    New,
}

/// One entry of the route table: requests are spread over entries by weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub slot: Slot,
    pub index: u32,
    pub weight: u32,
}

/// What the engine must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Start these instances (answered by `Started` or `StartFailed`, then health).
    Start { slot: Slot, indices: Vec<u32> },
    /// Stop these instances (answered by `Stopped`). They are out of the route table.
    Stop { slot: Slot, indices: Vec<u32> },
    /// Replace the route table atomically (answered by `Routed`). An empty table means
    /// the environment answers 503.
    Route(Vec<RouteEntry>),
    /// Run the pre-switch checks against the new release (answered by `ChecksPassed` or
    /// `ChecksFailed`).
    RunChecks,
    /// Send a `Tick` at or after this time.
    WakeAt(u64),
}

/// A fact the engine observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Approved,
    Rejected {
        reason: String,
    },
    /// Stop trying: roll back what was done.
    Cancel,
    /// Abort from outside (a failed metric analysis): like a health failure.
    Abort {
        reason: String,
    },
    /// Continue past a canary pause without a duration, or end the keep-warm period now.
    Promote,
    Started {
        slot: Slot,
        indices: Vec<u32>,
    },
    StartFailed {
        slot: Slot,
        reason: String,
    },
    Health {
        slot: Slot,
        index: u32,
        transition: Transition,
    },
    ChecksPassed,
    ChecksFailed {
        reason: String,
    },
    Routed,
    Stopped {
        slot: Slot,
        indices: Vec<u32>,
    },
    Tick,
    /// Another deployment to the same environment took over while this one kept its old
    /// release warm; `keep_old` says whether that deployment uses the old release (a
    /// rollback to it), so it must not be stopped.
    Superseded {
        keep_old: bool,
    },
}

/// Where a deployment is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    Pending,
    AwaitingApproval,
    /// `recreate`: taking the old release down first.
    StoppingOld,
    StartingRelease,
    HealthChecking,
    PreSwitchChecks,
    SwitchingTraffic,
    /// `canary`: at this step of the list.
    Shifting {
        step: usize,
    },
    /// `canary`: paused at this step, until a time or (`None`) a promotion.
    Paused {
        step: usize,
        until: Option<u64>,
    },
    /// `rolling`: replacing instances.
    Replacing,
    /// Traffic is on the new release; the old one runs until `until`.
    KeepingOldWarm {
        until: u64,
    },
    /// Undoing after a failure or cancel: traffic back to old, new stopped.
    RollingBack,
    Succeeded,
    Failed,
    RolledBack,
    Canceled,
}

/// The coarse status kept in deployment records and shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    AwaitingApproval,
    Running,
    /// Traffic is on the new release (possibly with the old still warm).
    Success,
    Failed,
    RolledBack,
    Canceled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::AwaitingApproval => "awaiting_approval",
            Status::Running => "running",
            Status::Success => "success",
            Status::Failed => "failed",
            Status::RolledBack => "rolled_back",
            Status::Canceled => "canceled",
        }
    }
}

/// What the deployment is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub strategy: Strategy,
    /// Instances the new release should have.
    pub instances: u32,
    /// The old release's running instances (empty for a first deployment).
    pub old_instances: Vec<u32>,
    /// Wait for `Approved` before doing anything.
    pub needs_approval: bool,
    /// The new release already runs with `instances` ready instances (a rollback to a
    /// release kept warm): only traffic moves.
    pub new_is_warm: bool,
}

/// Where a rollback (after a failure or cancel) must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Ending {
    RolledBack,
    Canceled,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    plan: Plan,
    phase: Phase,
    /// Why it failed, was rolled back or canceled.
    reason: Option<String>,
    /// Old instances routed and running.
    old_serving: Vec<u32>,
    /// Old instances out of the route table, stop requested or about to be.
    old_draining: Vec<u32>,
    /// Old instances stopped during this deployment (restored on rollback).
    old_stopped: Vec<u32>,
    /// Old instances being restarted during a rollback, and those ready again.
    old_restarting: Vec<u32>,
    new_starting: Vec<u32>,
    new_ready: Vec<u32>,
    /// Stops requested and not yet acknowledged.
    stopping_new: Vec<u32>,
    /// The route table last sent, and whether its `Routed` is still awaited.
    route_sent: Option<Vec<RouteEntry>>,
    route_in_flight: bool,
    /// The route the engine confirmed last.
    route_acked: Option<Vec<RouteEntry>>,
    /// Instances to stop once the route in flight is acknowledged.
    stop_after_route: Vec<(Slot, u32)>,
    ending: Option<Ending>,
    /// Whether traffic reached the new release at all (for the rollback's outcome).
    new_took_traffic: bool,
}

impl Deployment {
    pub fn new(plan: Plan) -> Deployment {
        let old_serving = plan.old_instances.clone();
        // A warm release is ready from the start, so a loss reported while the
        // deployment waits (for approval) is not missed.
        let new_ready = if plan.new_is_warm {
            (0..plan.instances).collect()
        } else {
            Vec::new()
        };
        Deployment {
            plan,
            phase: Phase::Pending,
            reason: None,
            old_serving,
            old_draining: Vec::new(),
            old_stopped: Vec::new(),
            old_restarting: Vec::new(),
            new_starting: Vec::new(),
            new_ready,
            stopping_new: Vec::new(),
            route_sent: None,
            route_in_flight: false,
            route_acked: None,
            stop_after_route: Vec::new(),
            ending: None,
            new_took_traffic: false,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// The route table the engine confirmed last (`None` before the first switch).
    pub fn confirmed_route(&self) -> Option<&[RouteEntry]> {
        self.route_acked.as_deref()
    }

    /// Whether the machine awaits no further event.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.phase,
            Phase::Succeeded | Phase::Failed | Phase::RolledBack | Phase::Canceled
        )
    }

    pub fn status(&self) -> Status {
        match self.phase {
            Phase::Pending => Status::Pending,
            Phase::AwaitingApproval => Status::AwaitingApproval,
            Phase::KeepingOldWarm { .. } | Phase::Succeeded => Status::Success,
            Phase::Failed => Status::Failed,
            Phase::RolledBack => Status::RolledBack,
            Phase::Canceled => Status::Canceled,
            _ => Status::Running,
        }
    }

    /// Begin: wait for approval, or start working.
    pub fn start(&mut self, now: u64) -> Vec<Action> {
        if self.phase != Phase::Pending {
            return Vec::new();
        }
        if self.plan.needs_approval {
            self.phase = Phase::AwaitingApproval;
            return Vec::new();
        }
        self.begin(now)
    }

    fn begin(&mut self, now: u64) -> Vec<Action> {
        if self.plan.new_is_warm {
            return self.switch_all();
        }
        match self.plan.strategy {
            Strategy::Recreate if !self.old_serving.is_empty() => {
                self.phase = Phase::StoppingOld;
                let old = std::mem::take(&mut self.old_serving);
                self.old_draining = old.clone();
                self.stop_after_route = old.into_iter().map(|i| (Slot::Old, i)).collect();
                self.route(Vec::new())
            }
            Strategy::Rolling { .. } => {
                self.phase = Phase::Replacing;
                self.rolling_advance(now)
            }
            _ => self.start_new_release(),
        }
    }

    fn start_new_release(&mut self) -> Vec<Action> {
        self.phase = Phase::StartingRelease;
        let indices: Vec<u32> = (0..self.plan.instances).collect();
        self.new_starting = indices.clone();
        vec![Action::Start {
            slot: Slot::New,
            indices,
        }]
    }

    /// Take one observed fact at time `now` (milliseconds, any epoch, monotonic).
    pub fn handle(&mut self, event: Event, now: u64) -> Vec<Action> {
        if self.is_finished() {
            return Vec::new();
        }
        match event {
            Event::Approved => {
                if self.phase == Phase::AwaitingApproval {
                    return self.begin(now);
                }
                Vec::new()
            }
            Event::Rejected { reason } => {
                if matches!(self.phase, Phase::AwaitingApproval | Phase::Pending) {
                    self.reason = Some(reason);
                    self.phase = Phase::Canceled;
                }
                Vec::new()
            }
            Event::Cancel => match self.phase {
                Phase::Pending | Phase::AwaitingApproval => {
                    self.reason = Some("canceled before it started".into());
                    self.phase = Phase::Canceled;
                    Vec::new()
                }
                // Traffic already moved: canceling now is a rollback, done explicitly.
                Phase::KeepingOldWarm { .. } | Phase::RollingBack => Vec::new(),
                _ => self.fail(Ending::Canceled, "canceled".into(), now),
            },
            Event::Abort { reason } => self.fail(Ending::RolledBack, reason, now),
            Event::Promote => match self.phase {
                Phase::Paused { step, until: _ } => self.canary_step(step + 1, now),
                Phase::KeepingOldWarm { .. } => self.end_keep_warm(),
                _ => Vec::new(),
            },
            Event::Started { slot, indices } => self.on_started(slot, &indices),
            Event::StartFailed { slot, reason } => {
                if slot == Slot::Old {
                    // The old release could not come back during a rollback.
                    return self.finish_failed(format!(
                        "{}; restoring the old release failed: {reason}",
                        self.reason.clone().unwrap_or_default()
                    ));
                }
                self.fail(
                    Ending::Failed,
                    format!("the new release did not start: {reason}"),
                    now,
                )
            }
            Event::Health {
                slot,
                index,
                transition,
            } => self.on_health(slot, index, transition, now),
            Event::ChecksPassed => {
                if self.phase == Phase::PreSwitchChecks {
                    return self.after_checks(now);
                }
                Vec::new()
            }
            Event::ChecksFailed { reason } => {
                if self.phase == Phase::PreSwitchChecks {
                    return self.fail(
                        Ending::Failed,
                        format!("pre-switch check failed: {reason}"),
                        now,
                    );
                }
                Vec::new()
            }
            Event::Routed => self.on_routed(now),
            Event::Stopped { slot, indices } => self.on_stopped(slot, &indices, now),
            Event::Tick => match self.phase {
                Phase::Paused {
                    step,
                    until: Some(t),
                } if now >= t => self.canary_step(step + 1, now),
                Phase::KeepingOldWarm { until } if now >= until => self.end_keep_warm(),
                _ => Vec::new(),
            },
            Event::Superseded { keep_old } => {
                if let Phase::KeepingOldWarm { .. } = self.phase {
                    self.phase = Phase::Succeeded;
                    if !keep_old && !self.old_serving.is_empty() {
                        let old = std::mem::take(&mut self.old_serving);
                        return vec![Action::Stop {
                            slot: Slot::Old,
                            indices: old,
                        }];
                    }
                }
                Vec::new()
            }
        }
    }

    fn on_started(&mut self, slot: Slot, _indices: &[u32]) -> Vec<Action> {
        if slot == Slot::New && self.phase == Phase::StartingRelease {
            self.phase = Phase::HealthChecking;
        }
        Vec::new()
    }

    fn on_health(&mut self, slot: Slot, index: u32, t: Transition, now: u64) -> Vec<Action> {
        match (slot, t) {
            (Slot::New, Transition::Ready) => {
                if !self.new_starting.contains(&index) {
                    return Vec::new();
                }
                self.new_starting.retain(|i| *i != index);
                self.new_ready.push(index);
                self.new_ready.sort_unstable();
                match self.phase {
                    Phase::StartingRelease | Phase::HealthChecking => {
                        if self.phase == Phase::StartingRelease {
                            self.phase = Phase::HealthChecking;
                        }
                        if self.new_starting.is_empty() {
                            return self.after_ready(now);
                        }
                        Vec::new()
                    }
                    Phase::Replacing => self.rolling_advance(now),
                    _ => Vec::new(),
                }
            }
            (Slot::New, Transition::Failed { reason } | Transition::Lost { reason }) => {
                if !self.new_starting.contains(&index) && !self.new_ready.contains(&index) {
                    return Vec::new();
                }
                let reason = format!("instance {index} of the new release: {reason}");
                match self.phase {
                    Phase::KeepingOldWarm { .. } => {
                        // Traffic is on new and it went bad while old is still warm.
                        self.fail(Ending::RolledBack, reason, now)
                    }
                    Phase::RollingBack => Vec::new(),
                    _ => self.fail(Ending::Failed, reason, now),
                }
            }
            (Slot::Old, Transition::Ready) if self.phase == Phase::RollingBack => {
                if self.old_restarting.contains(&index) {
                    self.old_restarting.retain(|i| *i != index);
                    self.old_serving.push(index);
                    self.old_serving.sort_unstable();
                }
                self.rollback_advance()
            }
            (Slot::Old, Transition::Failed { reason }) if self.phase == Phase::RollingBack => {
                if self.old_restarting.contains(&index) {
                    let r = format!(
                        "{}; old instance {index} did not come back: {reason}",
                        self.reason.clone().unwrap_or_default()
                    );
                    self.old_restarting.retain(|i| *i != index);
                    self.reason = Some(r);
                    self.ending = Some(Ending::Failed);
                }
                self.rollback_advance()
            }
            _ => Vec::new(),
        }
    }

    /// Every new instance is ready.
    fn after_ready(&mut self, now: u64) -> Vec<Action> {
        match &self.plan.strategy {
            Strategy::BlueGreen {
                pre_switch_checks, ..
            } if !pre_switch_checks.is_empty() => {
                self.phase = Phase::PreSwitchChecks;
                vec![Action::RunChecks]
            }
            _ => self.after_checks(now),
        }
    }

    fn after_checks(&mut self, now: u64) -> Vec<Action> {
        match &self.plan.strategy {
            Strategy::Canary { .. } if !self.old_serving.is_empty() => self.canary_step(0, now),
            _ => self.switch_all(),
        }
    }

    fn switch_all(&mut self) -> Vec<Action> {
        self.phase = Phase::SwitchingTraffic;
        let table = self
            .new_ready
            .iter()
            .map(|&index| RouteEntry {
                slot: Slot::New,
                index,
                weight: 1,
            })
            .collect();
        self.route(table)
    }

    fn canary_step(&mut self, step: usize, now: u64) -> Vec<Action> {
        let steps = match &self.plan.strategy {
            Strategy::Canary { steps, .. } => steps.clone(),
            _ => Vec::new(),
        };
        match steps.get(step) {
            None => self.switch_all(),
            Some(CanaryStep::Weight(w)) => {
                self.phase = Phase::Shifting { step };
                let w = u32::from(*w).min(100);
                if w == 100 {
                    return self.switch_all();
                }
                let new_n = self.new_ready.len() as u32;
                let old_n = self.old_serving.len() as u32;
                let mut table: Vec<RouteEntry> = self
                    .old_serving
                    .iter()
                    .map(|&index| RouteEntry {
                        slot: Slot::Old,
                        index,
                        weight: (100 - w) * new_n,
                    })
                    .collect();
                table.extend(self.new_ready.iter().map(|&index| RouteEntry {
                    slot: Slot::New,
                    index,
                    weight: w * old_n,
                }));
                self.route(table)
            }
            Some(CanaryStep::Pause(d)) => {
                let until = d.map(|d| now.saturating_add(d));
                self.phase = Phase::Paused { step, until };
                match until {
                    Some(t) => vec![Action::WakeAt(t)],
                    None => Vec::new(),
                }
            }
        }
    }

    fn keep_warm_ms(&self) -> u64 {
        match self.plan.strategy {
            Strategy::BlueGreen { keep_warm_ms, .. } | Strategy::Canary { keep_warm_ms, .. } => {
                keep_warm_ms
            }
            // A warm rollback keeps the release it left warm too.
            _ if self.plan.new_is_warm => super::settings::DEFAULT_KEEP_WARM_MS,
            _ => 0,
        }
    }

    fn end_keep_warm(&mut self) -> Vec<Action> {
        self.phase = Phase::Succeeded;
        let old = std::mem::take(&mut self.old_serving);
        if old.is_empty() {
            return Vec::new();
        }
        vec![Action::Stop {
            slot: Slot::Old,
            indices: old,
        }]
    }

    fn route(&mut self, table: Vec<RouteEntry>) -> Vec<Action> {
        self.route_sent = Some(table.clone());
        self.route_in_flight = true;
        vec![Action::Route(table)]
    }

    fn on_routed(&mut self, now: u64) -> Vec<Action> {
        if !self.route_in_flight {
            return Vec::new();
        }
        self.route_in_flight = false;
        self.route_acked = self.route_sent.clone();
        if self
            .route_acked
            .as_ref()
            .is_some_and(|t| t.iter().any(|e| e.slot == Slot::New))
        {
            self.new_took_traffic = true;
        }
        let mut actions = self.flush_stops();
        match self.phase.clone() {
            Phase::StoppingOld => {}
            Phase::SwitchingTraffic => {
                let keep = self.keep_warm_ms();
                if self.old_serving.is_empty() {
                    self.phase = Phase::Succeeded;
                } else if keep == 0 {
                    actions.extend(self.end_keep_warm());
                } else {
                    let until = now.saturating_add(keep);
                    self.phase = Phase::KeepingOldWarm { until };
                    actions.push(Action::WakeAt(until));
                }
            }
            Phase::Shifting { step } => actions.extend(self.canary_step(step + 1, now)),
            Phase::Replacing => actions.extend(self.rolling_advance(now)),
            Phase::RollingBack => actions.extend(self.rollback_advance()),
            _ => {}
        }
        actions
    }

    fn flush_stops(&mut self) -> Vec<Action> {
        let pending = std::mem::take(&mut self.stop_after_route);
        let mut actions = Vec::new();
        for slot in [Slot::Old, Slot::New] {
            let indices: Vec<u32> = pending
                .iter()
                .filter(|(s, _)| *s == slot)
                .map(|(_, i)| *i)
                .collect();
            if !indices.is_empty() {
                actions.push(Action::Stop { slot, indices });
            }
        }
        actions
    }

    fn on_stopped(&mut self, slot: Slot, indices: &[u32], now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        match slot {
            Slot::Old => {
                let stopped: Vec<u32> = indices
                    .iter()
                    .copied()
                    .filter(|i| self.old_draining.contains(i))
                    .collect();
                self.old_draining.retain(|i| !stopped.contains(i));
                if self.phase == Phase::RollingBack {
                    if !stopped.is_empty() && !matches!(self.plan.strategy, Strategy::Recreate) {
                        self.old_restarting.extend(stopped.iter().copied());
                        actions.push(Action::Start {
                            slot: Slot::Old,
                            indices: stopped,
                        });
                    }
                } else {
                    self.old_stopped.extend(stopped);
                    self.old_stopped.sort_unstable();
                }
            }
            Slot::New => self.stopping_new.retain(|i| !indices.contains(i)),
        }
        actions.extend(match self.phase {
            Phase::StoppingOld if self.old_draining.is_empty() => self.start_new_release(),
            Phase::Replacing => self.rolling_advance(now),
            Phase::RollingBack => self.rollback_advance(),
            _ => Vec::new(),
        });
        actions
    }

    // --- rolling -------------------------------------------------------------------

    fn rolling_budget(&self) -> (u32, u32) {
        let n = self.plan.instances;
        let (surge, unavailable) = match self.plan.strategy {
            Strategy::Rolling {
                max_surge,
                max_unavailable,
            } => (max_surge, max_unavailable),
            _ => (Amount::Count(1), Amount::Count(0)),
        };
        let mut surge = surge.resolve(n, true);
        let unavailable = unavailable.resolve(n, false).min(n);
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        (n.saturating_add(surge), n - unavailable)
    }

    fn rolling_advance(&mut self, _now: u64) -> Vec<Action> {
        if self.route_in_flight {
            return Vec::new();
        }
        let n = self.plan.instances;
        let (max_total, min_available) = self.rolling_budget();
        let mut actions = Vec::new();

        // Take old instances out while enough others are ready.
        let available = (self.old_serving.len() + self.new_ready.len()) as u32;
        let can_stop = available.saturating_sub(min_available) as usize;
        let stop: Vec<u32> = {
            let k = can_stop.min(self.old_serving.len());
            let at = self.old_serving.len() - k;
            self.old_serving.split_off(at)
        };

        // Start new instances within the surge budget.
        let existing_old = (self.old_serving.len() + self.old_draining.len() + stop.len()) as u32;
        let new_total = (self.new_starting.len() + self.new_ready.len()) as u32;
        let allowed = n.min(max_total.saturating_sub(existing_old));
        if allowed > new_total {
            let indices: Vec<u32> = (new_total..allowed).collect();
            self.new_starting.extend(indices.iter().copied());
            actions.push(Action::Start {
                slot: Slot::New,
                indices,
            });
        }

        if !stop.is_empty() {
            self.old_draining.extend(stop.iter().copied());
            self.stop_after_route
                .extend(stop.iter().map(|&i| (Slot::Old, i)));
        }
        let table = self.rolling_table();
        if self.route_sent.as_ref() != Some(&table) {
            actions.extend(self.route(table));
        } else if !self.stop_after_route.is_empty() {
            actions.extend(self.flush_stops());
        }

        if self.old_serving.is_empty()
            && self.old_draining.is_empty()
            && self.new_ready.len() as u32 == n
            && !self.route_in_flight
        {
            self.phase = Phase::Succeeded;
        }
        actions
    }

    fn rolling_table(&self) -> Vec<RouteEntry> {
        let mut t: Vec<RouteEntry> = self
            .old_serving
            .iter()
            .map(|&index| RouteEntry {
                slot: Slot::Old,
                index,
                weight: 1,
            })
            .collect();
        t.extend(self.new_ready.iter().map(|&index| RouteEntry {
            slot: Slot::New,
            index,
            weight: 1,
        }));
        t
    }

    // --- failure and rollback ----------------------------------------------------------

    /// Something went wrong (or a cancel): put traffic back on old and stop new.
    fn fail(&mut self, ending: Ending, reason: String, _now: u64) -> Vec<Action> {
        if matches!(self.phase, Phase::RollingBack) || self.is_finished() {
            return Vec::new();
        }
        self.reason = Some(reason);
        let no_old_left = self.old_serving.is_empty()
            && self.old_draining.is_empty()
            && self.old_stopped.is_empty();
        self.ending = Some(if no_old_left && ending == Ending::RolledBack {
            Ending::Failed
        } else {
            ending
        });
        self.phase = Phase::RollingBack;
        // Old instances whose stop was still waiting for a route never stopped: they
        // serve again. Those whose stop is under way come back when it is acknowledged.
        for (slot, i) in std::mem::take(&mut self.stop_after_route) {
            if slot == Slot::Old {
                self.old_draining.retain(|d| *d != i);
                self.old_serving.push(i);
            }
        }
        self.old_serving.sort_unstable();
        let mut actions = Vec::new();
        let restart = std::mem::take(&mut self.old_stopped);
        // `recreate` never restores: old and new must not run together, by design.
        if !restart.is_empty() && !matches!(self.plan.strategy, Strategy::Recreate) {
            self.old_restarting = restart.clone();
            actions.push(Action::Start {
                slot: Slot::Old,
                indices: restart,
            });
        }
        // Traffic only on the old instances still up; new ones leave the table first.
        let new_all: Vec<u32> = self
            .new_starting
            .drain(..)
            .chain(self.new_ready.drain(..))
            .collect();
        self.stopping_new = new_all.clone();
        self.stop_after_route
            .extend(new_all.iter().map(|&i| (Slot::New, i)));
        let table = self.old_table();
        actions.extend(self.route(table));
        actions
    }

    fn old_table(&self) -> Vec<RouteEntry> {
        self.old_serving
            .iter()
            .map(|&index| RouteEntry {
                slot: Slot::Old,
                index,
                weight: 1,
            })
            .collect()
    }

    fn rollback_advance(&mut self) -> Vec<Action> {
        if self.route_in_flight {
            return Vec::new();
        }
        let table = self.old_table();
        if self.route_acked.as_ref() != Some(&table) {
            return self.route(table);
        }
        if !self.old_restarting.is_empty()
            || !self.old_draining.is_empty()
            || !self.stopping_new.is_empty()
        {
            return Vec::new();
        }
        self.phase = match self.ending.unwrap_or(Ending::Failed) {
            Ending::Canceled => Phase::Canceled,
            Ending::RolledBack if self.old_serving.is_empty() => Phase::Failed,
            Ending::RolledBack => Phase::RolledBack,
            // A failure whose new release took traffic and was undone is a rollback.
            Ending::Failed if self.new_took_traffic && !self.old_serving.is_empty() => {
                Phase::RolledBack
            }
            Ending::Failed => Phase::Failed,
        };
        Vec::new()
    }

    fn finish_failed(&mut self, reason: String) -> Vec<Action> {
        self.reason = Some(reason);
        self.old_restarting.clear();
        self.ending = Some(Ending::Failed);
        self.rollback_advance()
    }
}

#[cfg(test)]
mod tests;
