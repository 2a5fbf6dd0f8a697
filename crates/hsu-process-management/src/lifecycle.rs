//! Restart policy: when an ended process runs again, after how long, and when to give up
//! for a while (the circuit breaker).
//!
//! Pure arithmetic over instants the caller passes in, so it is tested with a made-up
//! clock and no waiting. The process actor asks [`RestartTracker::on_exit`] what to do
//! after every exit and tells it about starts, uptime milestones and cooldowns.
//!
//! Each trigger (an exit, failed health checks, a resource violation) has its own budget:
//! its own consecutive-failure count for the backoff and its own restarts-in-window count
//! for the breaker, with `retry_delay`/`backoff_rate`/`max_retries` overridable per trigger.

pub use hsu_managed_process::Circuit;
use hsu_managed_process::{RestartPolicy, RestartTuning, TriggerOverride};
use hsu_process_file::{BudgetRecord, RestartRecord};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What caused a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The process exited (or could not be spawned).
    Exit,
    /// Its health checks failed `failure_threshold` times in a row.
    HealthFailure,
    /// It crossed a resource limit whose policy restarts it.
    ResourceViolation,
}

impl Trigger {
    /// The trigger's name as shown in the journal: `exit`, `health_failure` or
    /// `resource_violation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Exit => "exit",
            Trigger::HealthFailure => "health_failure",
            Trigger::ResourceViolation => "resource_violation",
        }
    }

    fn index(self) -> usize {
        match self {
            Trigger::Exit => 0,
            Trigger::HealthFailure => 1,
            Trigger::ResourceViolation => 2,
        }
    }
}

/// What to do after a process ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The policy does not restart this exit: the process is done.
    Stay {
        /// The exit was clean (code 0): the process is `stopped` as completed, not `failed`.
        completed: bool,
    },
    /// Start again after `delay`.
    Restart {
        /// How long to wait before the start.
        delay: Duration,
        /// Which restart in a row this is for the trigger, counted from 1.
        attempt: u32,
        /// What caused the restart (the budget it counts against).
        trigger: Trigger,
    },
    /// Too many restarts in the window (or the half-open trial failed): the breaker opens.
    /// `cooldown` is when the trial start comes; `None` = only a start by hand.
    OpenCircuit {
        /// Restarts counted inside the window when the breaker opened.
        restarts: u32,
        /// How long the breaker stays open before the trial start; `None`: until a start by hand.
        cooldown: Option<Duration>,
    },
}

/// Backoff and breaker bookkeeping for one trigger.
#[derive(Debug, Clone, Default)]
struct Budget {
    /// Restarts since the last reset (drives the backoff).
    consecutive: u32,
    /// When recent restarts happened (drives the breaker).
    recent: VecDeque<Instant>,
}

/// The restart bookkeeping of one process.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    tuning: RestartTuning,
    budgets: [Budget; 3],
    circuit: Circuit,
    started_at: Option<Instant>,
    /// Bumped by every change of what [`Self::snapshot`] records.
    changes: u64,
}

/// The effective tuning for one trigger after its overrides.
struct Effective {
    retry_delay: Duration,
    backoff_rate: f64,
    max_retries: u32,
}

impl RestartTracker {
    /// Bookkeeping for a process that has not started yet, breaker closed.
    pub fn new(policy: RestartPolicy, tuning: RestartTuning) -> Self {
        RestartTracker {
            policy,
            tuning,
            budgets: Default::default(),
            circuit: Circuit::Closed,
            started_at: None,
            changes: 0,
        }
    }

    /// Grows with every change worth recording (see [`Self::snapshot`]).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The bookkeeping as `state.json` keeps it: instants become wall-clock times
    /// (`now` and `wall` are the same moment on both clocks).
    pub fn snapshot(&self, now: Instant, wall: SystemTime) -> RestartRecord {
        let to_ms = |t: Instant| {
            let at = wall
                .checked_sub(now.saturating_duration_since(t))
                .unwrap_or(UNIX_EPOCH);
            at.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        RestartRecord {
            circuit: self.circuit.as_str().to_owned(),
            budgets: self
                .budgets
                .iter()
                .map(|b| BudgetRecord {
                    consecutive: b.consecutive,
                    recent_ms: b.recent.iter().map(|&t| to_ms(t)).collect(),
                })
                .collect(),
            next_start_at_ms: None,
            trial: false,
        }
    }

    /// Takes back what [`Self::snapshot`] recorded (an earlier manager's bookkeeping).
    /// Restarts older than the window are dropped by the next exit as usual.
    pub fn restore(&mut self, record: &RestartRecord, now: Instant, wall: SystemTime) {
        let to_instant = |ms: u64| {
            let at = UNIX_EPOCH + Duration::from_millis(ms);
            let ago = wall.duration_since(at).unwrap_or_default();
            now.checked_sub(ago).unwrap_or(now)
        };
        self.circuit = match record.circuit.as_str() {
            "open" => Circuit::Open,
            "half_open" => Circuit::HalfOpen,
            _ => Circuit::Closed,
        };
        for (budget, saved) in self.budgets.iter_mut().zip(&record.budgets) {
            budget.consecutive = saved.consecutive;
            budget.recent = saved.recent_ms.iter().map(|&ms| to_instant(ms)).collect();
        }
        self.changes += 1;
    }

    /// The breaker's position.
    pub fn circuit(&self) -> Circuit {
        self.circuit
    }

    /// The backoff and breaker tuning it applies.
    pub fn tuning(&self) -> &RestartTuning {
        &self.tuning
    }

    /// The process was started (spawned successfully) at `now`.
    pub fn on_start(&mut self, now: Instant) {
        self.changes += 1;
        self.started_at = Some(now);
    }

    /// Called when the process has been up `reset_after` (the caller's timer): forgets
    /// earlier failures. Returns true when this closes a half-open breaker.
    pub fn on_stable(&mut self, now: Instant) -> bool {
        let Some(started) = self.started_at else {
            return false;
        };
        if now.saturating_duration_since(started) < self.tuning.reset_after {
            return false;
        }
        self.forget();
        self.changes += 1;
        let closed = self.circuit == Circuit::HalfOpen;
        if closed {
            self.circuit = Circuit::Closed;
        }
        closed
    }

    /// The open breaker's cooldown has passed: the next start is the one trial.
    pub fn on_cooldown_elapsed(&mut self) {
        self.changes += 1;
        if self.circuit == Circuit::Open {
            self.circuit = Circuit::HalfOpen;
        }
    }

    /// A start by hand (or `restart --force`): a clean slate, breaker closed.
    pub fn reset(&mut self) {
        self.changes += 1;
        self.forget();
        self.circuit = Circuit::Closed;
    }

    fn forget(&mut self) {
        self.budgets = Default::default();
    }

    /// Whether the restart policy restarts this kind of end at all.
    pub fn policy_restarts(&self, trigger: Trigger, success: bool) -> bool {
        match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => trigger != Trigger::Exit || !success,
        }
    }

    /// The process ended at `now` (an exit, a spawn error counted as a failed exit, or a
    /// health/resource stop). `success` is a clean exit (code 0).
    pub fn on_exit(&mut self, now: Instant, trigger: Trigger, success: bool) -> Decision {
        self.changes += 1;
        let uptime = self
            .started_at
            .take()
            .map(|s| now.saturating_duration_since(s));
        if !self.policy_restarts(trigger, success) {
            return Decision::Stay { completed: success };
        }
        if uptime.is_some_and(|u| u >= self.tuning.reset_after) {
            self.forget();
            if self.circuit == Circuit::HalfOpen {
                self.circuit = Circuit::Closed;
            }
        }
        let eff = self.effective(trigger);
        let window = self.tuning.window;
        let budget = &mut self.budgets[trigger.index()];
        while budget
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            budget.recent.pop_front();
        }
        let in_window = budget.recent.len() as u32;
        if self.circuit == Circuit::HalfOpen || in_window >= eff.max_retries {
            self.circuit = Circuit::Open;
            return Decision::OpenCircuit {
                restarts: in_window,
                cooldown: (!self.tuning.cooldown.is_zero()).then_some(self.tuning.cooldown),
            };
        }
        budget.recent.push_back(now);
        let delay = backoff_delay(
            eff.retry_delay,
            eff.backoff_rate,
            self.tuning.max_delay,
            budget.consecutive,
        );
        budget.consecutive += 1;
        Decision::Restart {
            delay,
            attempt: budget.consecutive,
            trigger,
        }
    }

    fn effective(&self, trigger: Trigger) -> Effective {
        let base = Effective {
            retry_delay: self.tuning.retry_delay,
            backoff_rate: self.tuning.backoff_rate,
            max_retries: self.tuning.max_retries,
        };
        let over: &TriggerOverride = match trigger {
            Trigger::Exit => return base,
            Trigger::HealthFailure => &self.tuning.health_failures,
            Trigger::ResourceViolation => &self.tuning.resource_violations,
        };
        Effective {
            retry_delay: over.retry_delay.unwrap_or(base.retry_delay),
            backoff_rate: over.backoff_rate.unwrap_or(base.backoff_rate),
            max_retries: over.max_retries.unwrap_or(base.max_retries),
        }
    }
}

/// `retry_delay * backoff_rate^n`, capped at `max_delay` (and safe for huge `n`).
pub fn backoff_delay(retry_delay: Duration, rate: f64, max_delay: Duration, n: u32) -> Duration {
    let factor = rate.max(1.0).powi(n.min(1000) as i32);
    let secs = retry_delay.as_secs_f64() * factor;
    if !secs.is_finite() || secs >= max_delay.as_secs_f64() {
        max_delay.max(retry_delay.min(max_delay))
    } else {
        Duration::from_secs_f64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tuning() -> RestartTuning {
        RestartTuning {
            retry_delay: ms(100),
            backoff_rate: 2.0,
            max_delay: ms(1000),
            reset_after: ms(5000),
            max_retries: 3,
            window: ms(10_000),
            cooldown: ms(30_000),
            ..RestartTuning::default()
        }
    }

    /// Runs one start + quick crash at `t`; returns the decision.
    fn crash(t: &mut RestartTracker, at: Instant) -> Decision {
        t.on_start(at);
        t.on_exit(at + ms(10), Trigger::Exit, false)
    }

    fn delay_of(d: &Decision) -> Duration {
        match d {
            Decision::Restart { delay, .. } => *delay,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn backoff_grows_by_rate_and_caps() {
        assert_eq!(backoff_delay(ms(100), 2.0, ms(1000), 0), ms(100));
        assert_eq!(backoff_delay(ms(100), 2.0, ms(1000), 1), ms(200));
        assert_eq!(backoff_delay(ms(100), 2.0, ms(1000), 3), ms(800));
        assert_eq!(backoff_delay(ms(100), 2.0, ms(1000), 4), ms(1000));
        assert_eq!(backoff_delay(ms(100), 2.0, ms(1000), u32::MAX), ms(1000));
        assert_eq!(backoff_delay(ms(100), 1.5, ms(1000), 2), ms(225));
        // A rate below one is treated as constant delay.
        assert_eq!(backoff_delay(ms(100), 0.5, ms(1000), 3), ms(100));
    }

    #[test]
    fn consecutive_delays_and_attempts() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(
            RestartPolicy::OnFailure,
            RestartTuning {
                max_retries: 10,
                ..tuning()
            },
        );
        let mut at = t0;
        let mut delays = vec![];
        for attempt in 1..=5 {
            let d = crash(&mut t, at);
            assert!(
                matches!(d, Decision::Restart { attempt: a, trigger: Trigger::Exit, .. } if a == attempt)
            );
            delays.push(delay_of(&d));
            at += ms(1);
        }
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(800), ms(1000)]);
    }

    #[test]
    fn on_failure_exit_zero_completes_and_never_never_restarts() {
        let now = Instant::now();
        let mut t = RestartTracker::new(RestartPolicy::OnFailure, tuning());
        t.on_start(now);
        assert_eq!(
            t.on_exit(now, Trigger::Exit, true),
            Decision::Stay { completed: true }
        );
        let mut t = RestartTracker::new(RestartPolicy::Never, tuning());
        t.on_start(now);
        assert_eq!(
            t.on_exit(now, Trigger::Exit, false),
            Decision::Stay { completed: false }
        );
        let mut t = RestartTracker::new(RestartPolicy::Always, tuning());
        t.on_start(now);
        assert!(matches!(
            t.on_exit(now, Trigger::Exit, true),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn uptime_past_reset_after_forgets_failures() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(RestartPolicy::Always, tuning());
        assert_eq!(delay_of(&crash(&mut t, t0)), ms(100));
        assert_eq!(delay_of(&crash(&mut t, t0 + ms(200))), ms(200));
        // Up for longer than reset_after: back to the first delay.
        t.on_start(t0 + ms(1000));
        let d = t.on_exit(t0 + ms(7000), Trigger::Exit, false);
        assert_eq!(
            d,
            Decision::Restart {
                delay: ms(100),
                attempt: 1,
                trigger: Trigger::Exit
            }
        );
        // on_stable does the same while the process is still running.
        crash(&mut t, t0 + ms(7200));
        t.on_start(t0 + ms(8000));
        assert!(!t.on_stable(t0 + ms(9000)), "too early");
        t.on_stable(t0 + ms(13_000));
        assert_eq!(
            delay_of(&t.on_exit(t0 + ms(14_000), Trigger::Exit, false)),
            ms(100)
        );
    }

    #[test]
    fn breaker_opens_after_max_retries_in_window() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(RestartPolicy::OnFailure, tuning());
        for i in 0..3 {
            assert!(matches!(
                crash(&mut t, t0 + ms(i * 100)),
                Decision::Restart { .. }
            ));
        }
        assert_eq!(
            crash(&mut t, t0 + ms(300)),
            Decision::OpenCircuit {
                restarts: 3,
                cooldown: Some(ms(30_000))
            }
        );
        assert_eq!(t.circuit(), Circuit::Open);
    }

    #[test]
    fn restarts_outside_the_window_do_not_count() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(RestartPolicy::OnFailure, tuning());
        crash(&mut t, t0);
        crash(&mut t, t0 + ms(100));
        // 10 s later the first two have left the window (uptime is short, so the backoff
        // still grows, but the breaker counts only what is inside the window).
        for i in 0..3 {
            assert!(matches!(
                crash(&mut t, t0 + ms(20_000 + i * 100)),
                Decision::Restart { .. }
            ));
        }
        assert!(matches!(
            crash(&mut t, t0 + ms(20_300)),
            Decision::OpenCircuit { restarts: 3, .. }
        ));
    }

    #[test]
    fn half_open_trial_closes_when_stable_and_reopens_on_failure() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(RestartPolicy::OnFailure, tuning());
        for i in 0..4 {
            crash(&mut t, t0 + ms(i * 100));
        }
        assert_eq!(t.circuit(), Circuit::Open);
        // Trial fails quickly: open again, no restart.
        t.on_cooldown_elapsed();
        assert_eq!(t.circuit(), Circuit::HalfOpen);
        assert!(matches!(
            crash(&mut t, t0 + ms(40_000)),
            Decision::OpenCircuit { .. }
        ));
        assert_eq!(t.circuit(), Circuit::Open);
        // Trial stays up reset_after: closes, and the next failure restarts afresh.
        t.on_cooldown_elapsed();
        t.on_start(t0 + ms(80_000));
        assert!(t.on_stable(t0 + ms(85_000)));
        assert_eq!(t.circuit(), Circuit::Closed);
        assert_eq!(
            t.on_exit(t0 + ms(90_000), Trigger::Exit, false),
            Decision::Restart {
                delay: ms(100),
                attempt: 1,
                trigger: Trigger::Exit
            }
        );
    }

    #[test]
    fn zero_cooldown_waits_for_a_start_by_hand() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(
            RestartPolicy::OnFailure,
            RestartTuning {
                max_retries: 0,
                cooldown: Duration::ZERO,
                ..tuning()
            },
        );
        assert_eq!(
            crash(&mut t, t0),
            Decision::OpenCircuit {
                restarts: 0,
                cooldown: None
            }
        );
        t.reset();
        assert_eq!(t.circuit(), Circuit::Closed);
    }

    #[test]
    fn each_trigger_has_its_own_budget_and_overrides() {
        let t0 = Instant::now();
        let mut tune = tuning();
        tune.health_failures = TriggerOverride {
            retry_delay: Some(ms(50)),
            backoff_rate: Some(3.0),
            max_retries: Some(1),
        };
        let mut t = RestartTracker::new(RestartPolicy::OnFailure, tune);
        // Exit failures advance the exit budget only.
        crash(&mut t, t0);
        crash(&mut t, t0 + ms(10));
        t.on_start(t0 + ms(20));
        let d = t.on_exit(t0 + ms(30), Trigger::HealthFailure, false);
        assert_eq!(
            d,
            Decision::Restart {
                delay: ms(50),
                attempt: 1,
                trigger: Trigger::HealthFailure
            }
        );
        t.on_start(t0 + ms(40));
        // The health budget allows one restart in the window.
        assert!(matches!(
            t.on_exit(t0 + ms(50), Trigger::HealthFailure, false),
            Decision::OpenCircuit { restarts: 1, .. }
        ));
        // A health restart is a failure even under on_failure with a clean exit.
        let mut t = RestartTracker::new(RestartPolicy::OnFailure, tuning());
        t.on_start(t0);
        assert!(matches!(
            t.on_exit(t0 + ms(5), Trigger::ResourceViolation, true),
            Decision::Restart {
                trigger: Trigger::ResourceViolation,
                ..
            }
        ));
    }

    #[test]
    fn the_bookkeeping_survives_a_snapshot_on_another_clock() {
        let t0 = Instant::now();
        let mut a = RestartTracker::new(RestartPolicy::OnFailure, tuning());
        let d1 = crash(&mut a, t0);
        let d2 = crash(&mut a, t0 + ms(200));
        assert_eq!((delay_of(&d1), delay_of(&d2)), (ms(100), ms(200)));
        let wall = SystemTime::now();
        let record = a.snapshot(t0 + ms(300), wall);
        assert_eq!(record.circuit, "closed");
        assert_eq!(record.budgets[0].consecutive, 2);
        // A new manager, its monotonic clock elsewhere, 1 s later on the wall clock.
        let later = t0 + ms(50_000);
        let mut b = RestartTracker::new(RestartPolicy::OnFailure, tuning());
        let changes = b.changes();
        b.restore(&record, later, wall + ms(1000));
        assert!(b.changes() > changes);
        // The backoff goes on where it was, and the breaker counts the earlier restarts.
        assert_eq!(delay_of(&crash(&mut b, later)), ms(400));
        assert!(matches!(
            crash(&mut b, later + ms(100)),
            Decision::OpenCircuit { restarts: 3, .. }
        ));
        let open = b.snapshot(later + ms(200), wall + ms(1200));
        assert_eq!(open.circuit, "open");
        let mut c = RestartTracker::new(RestartPolicy::OnFailure, tuning());
        c.restore(&open, t0, wall + ms(2000));
        assert_eq!(c.circuit(), Circuit::Open);
    }
}
