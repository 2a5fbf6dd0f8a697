//! Health of supervised processes: the health model every check reports into, and the
//! checks themselves.
//!
//! The `process` check (liveness) needs no probing: a process is alive until the kernel
//! reports its exit. The probes (HTTP, gRPC, TCP, exec) each produce one
//! [`ProbeOutcome`]; a [`HealthTracker`] per run turns the outcomes into a verdict with
//! the thresholds of `health_check`. This crate never changes a process's state: an
//! unhealthy verdict is the supervisor's to act on.

use std::time::{Duration, SystemTime};

/// The verdict shown in status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// The latest checks passed.
    Healthy,
    /// The checks failed `failure_threshold` times in a row.
    Unhealthy,
    /// Not checked (not running, or no verdict yet).
    Unknown,
}

impl HealthStatus {
    /// The verdict's name as shown in status, e.g. `healthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        }
    }
}

/// What the health checks of one process have found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The current verdict.
    pub status: HealthStatus,
    /// Failed checks in a row since the last success.
    pub consecutive_failures: u32,
    /// When a check last completed; `None` until one has actually run.
    pub last_check_at: Option<SystemTime>,
    /// The error the last check reported, when it failed.
    pub last_error: Option<String>,
    /// How long the last check took.
    pub last_latency: Option<Duration>,
}

impl HealthReport {
    /// Nothing measured: `unknown`.
    pub fn unknown() -> Self {
        HealthReport {
            status: HealthStatus::Unknown,
            consecutive_failures: 0,
            last_check_at: None,
            last_error: None,
            last_latency: None,
        }
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// `Ok` when the check passed, else what failed, in words (e.g. `HTTP 503`,
    /// `timed out after 2s`, `connection refused`).
    pub result: Result<(), String>,
    /// How long the probe took (up to its timeout).
    pub latency: Duration,
    /// When it completed.
    pub at: SystemTime,
}

/// A change of verdict, as [`HealthTracker::record`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The verdict before.
    pub from: HealthStatus,
    /// The verdict now.
    pub to: HealthStatus,
}

/// The verdict of one run's checks, from its outcomes and the thresholds.
///
/// * `unknown` until a check has run; the first success makes it `healthy` (a process
///   waiting for it is `starting` until then).
/// * `failure_threshold` failures in a row make it `unhealthy` (whatever it was).
/// * From `unhealthy`, `success_threshold` successes in a row make it `healthy` again.
/// * A failure that does not `count` (inside the startup grace period) is shown as the
///   last error but neither counts nor changes the verdict.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    failure_threshold: u32,
    success_threshold: u32,
    report: HealthReport,
    successes: u32,
}

impl HealthTracker {
    /// A tracker for a new run: `unknown`, nothing measured.
    pub fn new(failure_threshold: u32, success_threshold: u32) -> Self {
        HealthTracker {
            failure_threshold: failure_threshold.max(1),
            success_threshold: success_threshold.max(1),
            report: HealthReport::unknown(),
            successes: 0,
        }
    }

    /// What has been found so far.
    pub fn report(&self) -> &HealthReport {
        &self.report
    }

    /// Takes one probe's outcome; `counts` is false for a failure inside the startup
    /// grace period. Returns the change of verdict, if any.
    pub fn record(&mut self, outcome: ProbeOutcome, counts: bool) -> Option<Change> {
        let from = self.report.status;
        self.report.last_check_at = Some(outcome.at);
        self.report.last_latency = Some(outcome.latency);
        match outcome.result {
            Ok(()) => {
                self.report.consecutive_failures = 0;
                self.report.last_error = None;
                self.successes = self.successes.saturating_add(1);
                let enough = match from {
                    HealthStatus::Unhealthy => self.successes >= self.success_threshold,
                    _ => true,
                };
                if enough {
                    self.report.status = HealthStatus::Healthy;
                }
            }
            Err(e) => {
                self.successes = 0;
                self.report.last_error = Some(e);
                if counts {
                    self.report.consecutive_failures =
                        self.report.consecutive_failures.saturating_add(1);
                    if self.report.consecutive_failures >= self.failure_threshold {
                        self.report.status = HealthStatus::Unhealthy;
                    }
                }
            }
        }
        let to = self.report.status;
        (from != to).then_some(Change { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ProbeOutcome {
        ProbeOutcome {
            result: Ok(()),
            latency: Duration::from_millis(3),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    fn fail(e: &str) -> ProbeOutcome {
        ProbeOutcome {
            result: Err(e.into()),
            latency: Duration::from_millis(5),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn unknown_until_measured_then_healthy_on_first_success() {
        let mut t = HealthTracker::new(3, 2);
        assert_eq!(t.report().status, HealthStatus::Unknown);
        assert_eq!(t.report().last_check_at, None);
        let c = t.record(ok(), true).unwrap();
        assert_eq!(
            (c.from, c.to),
            (HealthStatus::Unknown, HealthStatus::Healthy)
        );
        assert_eq!(t.report().last_latency, Some(Duration::from_millis(3)));
        assert_eq!(t.record(ok(), true), None);
    }

    #[test]
    fn threshold_failures_in_a_row_make_it_unhealthy() {
        let mut t = HealthTracker::new(3, 1);
        t.record(ok(), true);
        assert_eq!(t.record(fail("HTTP 503"), true), None);
        assert_eq!(t.record(fail("HTTP 503"), true), None);
        // A success in between starts the count again.
        t.record(ok(), true);
        assert_eq!(t.record(fail("a"), true), None);
        assert_eq!(t.record(fail("b"), true), None);
        let c = t.record(fail("c"), true).unwrap();
        assert_eq!(
            (c.from, c.to),
            (HealthStatus::Healthy, HealthStatus::Unhealthy)
        );
        assert_eq!(t.report().consecutive_failures, 3);
        assert_eq!(t.report().last_error.as_deref(), Some("c"));
    }

    #[test]
    fn never_measured_and_failing_goes_unknown_to_unhealthy() {
        let mut t = HealthTracker::new(2, 1);
        assert_eq!(t.record(fail("refused"), true), None);
        let c = t.record(fail("refused"), true).unwrap();
        assert_eq!(
            (c.from, c.to),
            (HealthStatus::Unknown, HealthStatus::Unhealthy)
        );
    }

    #[test]
    fn success_threshold_applies_on_the_way_back() {
        let mut t = HealthTracker::new(1, 2);
        t.record(fail("x"), true);
        assert_eq!(t.report().status, HealthStatus::Unhealthy);
        assert_eq!(t.record(ok(), true), None);
        assert_eq!(t.report().consecutive_failures, 0);
        let c = t.record(ok(), true).unwrap();
        assert_eq!(c.to, HealthStatus::Healthy);
    }

    #[test]
    fn failures_inside_the_grace_period_do_not_count() {
        let mut t = HealthTracker::new(1, 1);
        assert_eq!(t.record(fail("booting"), false), None);
        assert_eq!(t.report().status, HealthStatus::Unknown);
        assert_eq!(t.report().consecutive_failures, 0);
        assert_eq!(t.report().last_error.as_deref(), Some("booting"));
        assert!(t.report().last_check_at.is_some());
        assert_eq!(
            t.record(fail("down"), true).map(|c| c.to),
            Some(HealthStatus::Unhealthy)
        );
    }
}
