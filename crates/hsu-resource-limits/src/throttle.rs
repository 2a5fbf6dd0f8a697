//! [`DutyCycle`]: holds a tree's CPU near a target without a cgroup `cpu.max`, by letting
//! it run part of every period and stopping it for the rest (SIGSTOP/SIGCONT to every
//! member, or `cgroup.freeze` where the tree has a cgroup but no cpu controller).
//!
//! The arithmetic is pure and clock-free: the supervisor polls it from a timer with the
//! current instant and applies the step it returns with whatever stops the tree (see
//! [`crate::pause_processes`] and [`crate::Cgroup::set_frozen`]). It adapts to what is
//! measured: a tree that would use `D` percent unthrottled uses about `duty × D` while
//! cycling, so each CPU sample re-estimates `D` and sets `duty = target / D`.

use std::time::{Duration, Instant};

/// The default cycle: long enough that the signals cost nothing measurable, short enough
/// that an interactive tree still answers within a tenth of a second.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(100);

/// The smallest share of a period the tree is let run, so it always makes progress and
/// handles its signals (a stop request above all).
pub const MIN_DUTY: f64 = 0.02;

/// How far each sample moves the duty towards the one it asks for: half-way, so one
/// noisy sample cannot make the tree lurch between stopped and free.
const GAIN: f64 = 0.5;

/// What to do to the tree now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleStep {
    /// Stop every member (SIGSTOP, or freeze the cgroup).
    Stop,
    /// Let every member run again (SIGCONT, or thaw the cgroup).
    Continue,
}

/// The answer of [`DutyCycle::poll`]: a step to apply now, if any, and when to poll next
/// (`None`: no timer needed until the next [`adapt`](DutyCycle::adapt)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Apply this now.
    pub step: Option<ThrottleStep>,
    /// Poll again at this instant.
    pub next: Option<Instant>,
}

/// Run/stop duty cycling of one tree towards a CPU target (see the module docs).
#[derive(Debug, Clone)]
pub struct DutyCycle {
    target: f64,
    period: Duration,
    duty: f64,
    stopped: bool,
    switch_at: Option<Instant>,
}

impl DutyCycle {
    /// A cycle aiming at `target_percent` of one core with periods of `period`. It starts
    /// letting the tree run freely; the first [`adapt`](DutyCycle::adapt) sets the duty.
    pub fn new(target_percent: f64, period: Duration) -> DutyCycle {
        DutyCycle {
            target: target_percent.max(0.0),
            period: period.max(Duration::from_millis(1)),
            duty: 1.0,
            stopped: false,
            switch_at: None,
        }
    }

    /// The CPU target, in percent of one core.
    pub fn target(&self) -> f64 {
        self.target
    }

    /// The share of each period the tree runs (1.0: not held back at all).
    pub fn duty(&self) -> f64 {
        self.duty
    }

    /// How long the tree runs in each period.
    pub fn run_time(&self) -> Duration {
        self.period.mul_f64(self.duty)
    }

    /// How long the tree is stopped in each period.
    pub fn stop_time(&self) -> Duration {
        self.period.saturating_sub(self.run_time())
    }

    /// Whether the tree is held back at all.
    pub fn is_active(&self) -> bool {
        self.duty < 1.0
    }

    /// Whether the tree is stopped right now (as far as the steps applied go).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Takes a CPU sample of the tree, measured while it cycled at the current duty, and
    /// moves the duty towards `target / demand`, where `demand = measured / duty` is what
    /// the tree would use unthrottled. A tree whose demand falls under the target is let
    /// run freely again.
    pub fn adapt(&mut self, measured_percent: f64) {
        if !measured_percent.is_finite() || measured_percent < 0.0 {
            return;
        }
        let demand = measured_percent / self.duty;
        let wanted = if demand <= self.target {
            1.0
        } else {
            (self.target / demand).clamp(MIN_DUTY, 1.0)
        };
        // From free running the first estimate is exact; after that, move half-way.
        self.duty = if self.duty >= 1.0 || wanted >= 1.0 {
            wanted
        } else {
            (self.duty + GAIN * (wanted - self.duty)).clamp(MIN_DUTY, 1.0)
        };
    }

    /// What to do at `now`, and when to be polled again.
    pub fn poll(&mut self, now: Instant) -> Tick {
        if !self.is_active() {
            self.switch_at = None;
            let step = self.stopped.then_some(ThrottleStep::Continue);
            self.stopped = false;
            return Tick { step, next: None };
        }
        let due = match self.switch_at {
            None => {
                // A new cycle starts with the tree running.
                let next = now + self.run_time();
                self.switch_at = Some(next);
                let step = self.stopped.then_some(ThrottleStep::Continue);
                self.stopped = false;
                return Tick {
                    step,
                    next: Some(next),
                };
            }
            Some(at) => at,
        };
        if now < due {
            return Tick {
                step: None,
                next: Some(due),
            };
        }
        self.stopped = !self.stopped;
        let (step, lasts) = if self.stopped {
            (ThrottleStep::Stop, self.stop_time())
        } else {
            (ThrottleStep::Continue, self.run_time())
        };
        let next = now + lasts;
        self.switch_at = Some(next);
        Tick {
            step: Some(step),
            next: Some(next),
        }
    }

    /// [`poll`](DutyCycle::poll), applying the step with `apply` (the supervisor's "stop
    /// these processes" or "freeze this cgroup"); returns when to call again.
    pub fn drive(&mut self, now: Instant, apply: impl FnOnce(ThrottleStep)) -> Option<Instant> {
        let tick = self.poll(now);
        if let Some(step) = tick.step {
            apply(step);
        }
        tick.next
    }

    /// Ends the cycling: `Continue` if the tree is stopped (apply it before anything else
    /// is done to the tree — a stopped process never sees its stop signal), and the tree
    /// runs freely until the next [`adapt`](DutyCycle::adapt) says otherwise.
    pub fn release(&mut self) -> Option<ThrottleStep> {
        self.duty = 1.0;
        self.switch_at = None;
        let was = self.stopped;
        self.stopped = false;
        was.then_some(ThrottleStep::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_sample_sets_the_duty_to_target_over_demand() {
        let mut d = DutyCycle::new(25.0, DEFAULT_PERIOD);
        assert!(!d.is_active());
        d.adapt(100.0);
        assert_eq!(d.duty(), 0.25);
        assert_eq!(d.run_time(), 25 * MS);
        assert_eq!(d.stop_time(), 75 * MS);
        // Two busy cores: an eighth of the time.
        let mut d = DutyCycle::new(25.0, DEFAULT_PERIOD);
        d.adapt(200.0);
        assert_eq!(d.duty(), 0.125);
    }

    #[test]
    fn it_converges_on_the_target_under_a_steady_demand() {
        // The tree would use 180%; measured usage is duty x 180.
        let mut d = DutyCycle::new(50.0, DEFAULT_PERIOD);
        for _ in 0..20 {
            let measured = d.duty() * 180.0;
            d.adapt(measured);
        }
        assert!((d.duty() * 180.0 - 50.0).abs() < 0.5, "{}", d.duty());
    }

    #[test]
    fn it_follows_a_demand_that_changes_and_lets_go_when_it_falls() {
        let mut d = DutyCycle::new(50.0, DEFAULT_PERIOD);
        d.adapt(100.0);
        assert_eq!(d.duty(), 0.5);
        // Demand doubles: measured at 0.5 duty is 100 -> wanted 0.25, half-way: 0.375.
        d.adapt(100.0);
        assert_eq!(d.duty(), 0.375);
        // Demand collapses under the target: free at once.
        d.adapt(1.0);
        assert_eq!(d.duty(), 1.0);
        assert!(!d.is_active());
    }

    #[test]
    fn the_duty_never_goes_under_the_floor_and_ignores_nonsense() {
        let mut d = DutyCycle::new(0.1, DEFAULT_PERIOD);
        d.adapt(400.0);
        assert_eq!(d.duty(), MIN_DUTY);
        d.adapt(f64::NAN);
        d.adapt(-3.0);
        assert_eq!(d.duty(), MIN_DUTY);
    }

    #[test]
    fn poll_alternates_run_and_stop_for_their_shares_of_the_period() {
        let t = Instant::now();
        let mut d = DutyCycle::new(30.0, DEFAULT_PERIOD);
        d.adapt(100.0);
        // A cycle starts running: no step, wake at the end of the run share.
        assert_eq!(
            d.poll(t),
            Tick {
                step: None,
                next: Some(t + 30 * MS)
            }
        );
        // Early poll: nothing yet.
        assert_eq!(d.poll(t + 10 * MS).step, None);
        let stop = d.poll(t + 30 * MS);
        assert_eq!(stop.step, Some(ThrottleStep::Stop));
        assert_eq!(stop.next, Some(t + 100 * MS));
        assert!(d.is_stopped());
        let go = d.poll(t + 100 * MS);
        assert_eq!(go.step, Some(ThrottleStep::Continue));
        assert_eq!(go.next, Some(t + 130 * MS));
    }

    #[test]
    fn drive_applies_each_step_through_the_callers_hands() {
        let t = Instant::now();
        let mut d = DutyCycle::new(50.0, DEFAULT_PERIOD);
        d.adapt(100.0);
        let mut applied = Vec::new();
        let mut next = d.drive(t, |s| applied.push(s)).unwrap();
        for _ in 0..4 {
            next = d.drive(next, |s| applied.push(s)).unwrap();
        }
        use ThrottleStep::*;
        assert_eq!(applied, [Stop, Continue, Stop, Continue]);
        assert_eq!(next, t + 250 * MS);
    }

    #[test]
    fn release_continues_a_stopped_tree_once() {
        let t = Instant::now();
        let mut d = DutyCycle::new(10.0, DEFAULT_PERIOD);
        d.adapt(100.0);
        d.poll(t);
        assert_eq!(d.poll(t + 10 * MS).step, Some(ThrottleStep::Stop));
        assert_eq!(d.release(), Some(ThrottleStep::Continue));
        assert_eq!(d.release(), None);
        assert_eq!(
            d.poll(t + 20 * MS),
            Tick {
                step: None,
                next: None
            }
        );
    }

    #[test]
    fn a_tree_stopped_when_demand_falls_is_continued_by_the_next_poll() {
        let t = Instant::now();
        let mut d = DutyCycle::new(10.0, DEFAULT_PERIOD);
        d.adapt(100.0);
        d.poll(t);
        assert_eq!(d.poll(t + 10 * MS).step, Some(ThrottleStep::Stop));
        d.adapt(0.0);
        assert_eq!(d.poll(t + 11 * MS).step, Some(ThrottleStep::Continue));
        assert!(!d.is_stopped());
    }
}
