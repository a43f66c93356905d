//! The health verdict of one instance from its probe results: ready after
//! `success_threshold` consecutive successes, failed after `failure_threshold`
//! consecutive failures or when it is not ready within `start_timeout`. "Connection
//! refused" before the first success is not a failure (the process is still binding its
//! port); only the start timeout bounds it. After the instance was ready, every kind of
//! failure counts, and enough of them in a row make it lost (it leaves the route table
//! until it is ready again).

use super::settings::HealthCheck;
use serde::{Deserialize, Serialize};

/// One probe's result, or a crash reported by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// The expected status.
    Ok,
    /// Answered with another status.
    WrongStatus(u16),
    /// No answer within the timeout (or the connection broke mid-answer).
    Timeout,
    /// Nothing listens on the port yet.
    Refused,
    /// The process exited (the supervisor restarts it with backoff).
    Crashed { code: Option<i32> },
}

impl Probe {
    fn describe(&self) -> String {
        match self {
            Probe::Ok => "ok".into(),
            Probe::WrongStatus(s) => format!("answered {s}"),
            Probe::Timeout => "timed out".into(),
            Probe::Refused => "refused the connection".into(),
            Probe::Crashed { code: Some(c) } => format!("exited with code {c}"),
            Probe::Crashed { code: None } => "was killed by a signal".into(),
        }
    }
}

/// A change of verdict worth telling the deployment state machine about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Ready,
    /// Was ready, then failed `failure_threshold` checks in a row.
    Lost {
        reason: String,
    },
    /// Never became ready: the deployment cannot use it.
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Starting,
    Ready,
    Lost,
    Failed,
}

#[derive(Debug, Clone)]
pub struct HealthTracker {
    success_threshold: u32,
    failure_threshold: u32,
    start_timeout_ms: u64,
    started_at_ms: u64,
    successes: u32,
    failures: u32,
    verdict: Verdict,
}

impl HealthTracker {
    pub fn new(check: &HealthCheck, started_at_ms: u64) -> HealthTracker {
        HealthTracker {
            success_threshold: check.success_threshold.max(1),
            failure_threshold: check.failure_threshold.max(1),
            start_timeout_ms: check.start_timeout_ms,
            started_at_ms,
            successes: 0,
            failures: 0,
            verdict: Verdict::Starting,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Take one probe result observed at `now_ms`.
    pub fn observe(&mut self, probe: &Probe, now_ms: u64) -> Option<Transition> {
        if self.verdict == Verdict::Failed {
            return None;
        }
        if *probe == Probe::Ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.verdict != Verdict::Ready && self.successes >= self.success_threshold {
                self.verdict = Verdict::Ready;
                return Some(Transition::Ready);
            }
            return self.tick(now_ms);
        }
        self.successes = 0;
        let counts = match self.verdict {
            Verdict::Starting => *probe != Probe::Refused,
            _ => true,
        };
        if counts {
            self.failures = self.failures.saturating_add(1);
        }
        if self.failures >= self.failure_threshold {
            let reason = format!(
                "{} consecutive failed checks, last: {}",
                self.failures,
                probe.describe()
            );
            self.failures = 0;
            match self.verdict {
                Verdict::Starting => {
                    self.verdict = Verdict::Failed;
                    return Some(Transition::Failed { reason });
                }
                Verdict::Ready => {
                    self.verdict = Verdict::Lost;
                    return Some(Transition::Lost { reason });
                }
                Verdict::Lost | Verdict::Failed => {}
            }
        }
        self.tick(now_ms)
    }

    /// The start deadline: an instance still starting after `start_timeout` has failed.
    pub fn tick(&mut self, now_ms: u64) -> Option<Transition> {
        if self.verdict == Verdict::Starting
            && now_ms.saturating_sub(self.started_at_ms) >= self.start_timeout_ms
        {
            self.verdict = Verdict::Failed;
            return Some(Transition::Failed {
                reason: format!(
                    "not ready after {} ms (start_timeout)",
                    self.start_timeout_ms
                ),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(success: u32, failure: u32, start_timeout_ms: u64) -> HealthCheck {
        HealthCheck {
            success_threshold: success,
            failure_threshold: failure,
            start_timeout_ms,
            ..HealthCheck::default()
        }
    }

    #[test]
    fn ready_after_consecutive_successes() {
        let mut t = HealthTracker::new(&check(3, 3, 10_000), 0);
        assert_eq!(t.observe(&Probe::Refused, 10), None);
        assert_eq!(t.observe(&Probe::Ok, 20), None);
        assert_eq!(t.observe(&Probe::Ok, 30), None);
        // A failure in between restarts the count.
        assert_eq!(t.observe(&Probe::WrongStatus(500), 40), None);
        assert_eq!(t.observe(&Probe::Ok, 50), None);
        assert_eq!(t.observe(&Probe::Ok, 60), None);
        assert_eq!(t.observe(&Probe::Ok, 70), Some(Transition::Ready));
        assert_eq!(t.verdict(), Verdict::Ready);
    }

    #[test]
    fn refused_while_starting_is_bounded_by_the_start_timeout_only() {
        let mut t = HealthTracker::new(&check(1, 2, 1_000), 0);
        for i in 0..9 {
            assert_eq!(t.observe(&Probe::Refused, i * 100), None);
        }
        assert!(matches!(
            t.observe(&Probe::Refused, 1_000),
            Some(Transition::Failed { reason }) if reason.contains("start_timeout")
        ));
        assert_eq!(t.observe(&Probe::Ok, 1_100), None, "failed is final");
    }

    #[test]
    fn wrong_status_and_crashes_fail_a_starting_instance() {
        let mut t = HealthTracker::new(&check(1, 2, 60_000), 0);
        assert_eq!(t.observe(&Probe::WrongStatus(503), 1), None);
        match t.observe(&Probe::Crashed { code: Some(3) }, 2) {
            Some(Transition::Failed { reason }) => {
                assert!(reason.contains("exited with code 3"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_ready_instance_is_lost_then_ready_again() {
        let mut t = HealthTracker::new(&check(1, 2, 60_000), 0);
        assert_eq!(t.observe(&Probe::Ok, 1), Some(Transition::Ready));
        assert_eq!(t.observe(&Probe::Refused, 2), None);
        assert!(matches!(
            t.observe(&Probe::Timeout, 3),
            Some(Transition::Lost { .. })
        ));
        assert_eq!(t.observe(&Probe::Ok, 4), Some(Transition::Ready));
        // No start timeout once it has been ready.
        assert_eq!(t.tick(1_000_000), None);
    }
}
