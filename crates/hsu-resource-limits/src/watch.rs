//! [`LimitWatch`]: turns successive usage samples of one run into findings — a warning
//! once per crossing of the warning level, a violation once per crossing of the limit (for
//! CPU only once usage has stayed above it for `sustained_for`), and a recovery when a
//! violated limit is left again. Pure logic: no clock, no I/O, no process.

use crate::limits::{LimitPolicy, Limits, Resource};
use std::time::{Duration, Instant};

/// How far below a level usage must fall before a crossing of it counts again, as a
/// fraction of the level (for memory and CPU; counts are exact and re-arm at the level).
/// Without it a tree hovering at its limit — a throttled one does exactly that — would
/// report a crossing every other sample.
pub const REARM_BAND: f64 = 0.05;

/// One sample of a tree's usage; `None` where the resource was not measured (the first
/// CPU sample of a run has no rate yet; descriptors are only counted when needed).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// Resident memory, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU use, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Open file descriptors.
    pub fds: Option<u64>,
    /// Processes.
    pub processes: Option<u64>,
}

impl Usage {
    /// The value for `resource`, in its unit.
    pub fn get(&self, resource: Resource) -> Option<f64> {
        match resource {
            Resource::Memory => self.memory_bytes.map(|v| v as f64),
            Resource::Cpu => self.cpu_percent,
            Resource::FileDescriptors => self.fds.map(|v| v as f64),
            Resource::Processes => self.processes.map(|v| v as f64),
        }
    }
}

/// What a sample means for the limits. Values and limits are in the resource's unit
/// (bytes, percent of one core, counts); `limit` is always the limit of this run (raised
/// by `restart_adjusted` where it applies), never the warning level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Finding {
    /// Usage reached the warning level (`warning_threshold` percent of the limit). Only
    /// ever a `resource_warning` event; never a reason to act.
    Warning {
        /// The resource.
        resource: Resource,
        /// The usage that crossed the level.
        value: f64,
        /// The limit.
        limit: f64,
        /// The warning level, in the resource's unit.
        level: f64,
    },
    /// Usage went over the limit: a `resource_violation` event with `action` =
    /// `policy`, and the supervisor applies the policy.
    Violation {
        /// The resource.
        resource: Resource,
        /// The usage that crossed the limit.
        value: f64,
        /// The limit.
        limit: f64,
        /// What to do about it.
        policy: LimitPolicy,
    },
    /// The kernel's OOM killer killed members of the tree (the cgroup's `memory.max`):
    /// a `resource_violation` event with `action` = `oom_killed`. The tree is gone, or
    /// going (`memory.oom.group` kills all of it); the exit that follows is
    /// resource-triggered.
    OomKilled {
        /// How many processes the kernel killed since the last report.
        kills: u64,
        /// The memory limit, if one is set.
        limit: Option<f64>,
    },
    /// A violated limit is respected again (for `alert` and `throttle`: the status's
    /// alert can be cleared).
    Recovered {
        /// The resource.
        resource: Resource,
        /// The usage now.
        value: f64,
        /// The limit.
        limit: f64,
    },
}

impl Finding {
    /// The resource the finding is about.
    pub fn resource(&self) -> Resource {
        match *self {
            Finding::Warning { resource, .. }
            | Finding::Violation { resource, .. }
            | Finding::Recovered { resource, .. } => resource,
            Finding::OomKilled { .. } => Resource::Memory,
        }
    }

    /// The `action` field of its `resource_violation` event: the policy's name, or
    /// `oom_killed`; `None` for findings that are not violations.
    pub fn action(&self) -> Option<&'static str> {
        match self {
            Finding::Violation { policy, .. } => Some(policy.name()),
            Finding::OomKilled { .. } => Some("oom_killed"),
            _ => None,
        }
    }
}

/// One level (a warning level or a limit) of one resource, and whether usage is past it.
#[derive(Debug, Clone)]
struct Level {
    /// The level, in the resource's unit.
    at: f64,
    /// Usage at or below this re-arms the level after a crossing.
    rearm_at: f64,
    /// Whether reaching `at` exactly counts as crossing it (warnings) or only going over
    /// it does (limits).
    inclusive: bool,
    /// How long usage must stay past `at` before the crossing counts.
    sustain: Duration,
    /// When usage was first seen past `at` without a dip since.
    past_since: Option<Instant>,
    /// Whether the crossing was reported and the level is not re-armed yet.
    crossed: bool,
}

enum Edge {
    Crossed,
    Rearmed,
}

impl Level {
    fn new(at: f64, band: f64, inclusive: bool, sustain: Duration) -> Level {
        Level {
            at,
            rearm_at: at * (1.0 - band),
            inclusive,
            sustain,
            past_since: None,
            crossed: false,
        }
    }

    fn step(&mut self, now: Instant, value: f64) -> Option<Edge> {
        let past = if self.inclusive {
            value >= self.at
        } else {
            value > self.at
        };
        if past {
            let since = *self.past_since.get_or_insert(now);
            if !self.crossed && now.saturating_duration_since(since) >= self.sustain {
                self.crossed = true;
                return Some(Edge::Crossed);
            }
            return None;
        }
        // Any dip restarts the sustain clock: a spike must be one unbroken stretch.
        self.past_since = None;
        if self.crossed && value <= self.rearm_at {
            self.crossed = false;
            return Some(Edge::Rearmed);
        }
        None
    }
}

#[derive(Debug, Clone)]
struct Watched {
    resource: Resource,
    limit: f64,
    policy: LimitPolicy,
    warning: Option<Level>,
    violation: Level,
}

/// Judges one run's usage against its limits. Create one per run from the run's
/// effective limits (`limits.adjusted(&adjustments)`); feed it every sample with
/// [`observe`](LimitWatch::observe) and every OOM-kill count with
/// [`observe_oom_kills`](LimitWatch::observe_oom_kills).
///
/// * A warning level (`warning_threshold` percent of the limit) counts as crossed when
///   usage reaches it; a limit when usage goes over it.
/// * For CPU, a level counts as crossed only once usage has stayed past it for
///   `sustained_for` without a dip (the sample that first saw it past starts the clock);
///   a shorter spike is ignored, for the warning as for the limit.
/// * Each crossing is reported once. A level is re-armed when usage falls back to
///   [`REARM_BAND`] below it (memory, CPU) or to it (counts); a re-armed limit is
///   reported as [`Finding::Recovered`].
/// * A limit whose policy is `none` reports no violation (its warning level still warns).
/// * A resource missing from a sample leaves its state as it was.
#[derive(Debug, Clone)]
pub struct LimitWatch {
    watched: Vec<Watched>,
    oom_kills: u64,
    memory_limit: Option<f64>,
}

impl LimitWatch {
    /// A watch over `limits` (the run's effective limits).
    pub fn new(limits: &Limits) -> LimitWatch {
        let mut watched = Vec::new();
        if let Some(m) = &limits.memory {
            watched.push(watch(
                Resource::Memory,
                m.max_rss as f64,
                m.warning_threshold,
                m.policy,
                REARM_BAND,
                Duration::ZERO,
            ));
        }
        if let Some(c) = &limits.cpu {
            watched.push(watch(
                Resource::Cpu,
                c.max_percent,
                c.warning_threshold,
                c.policy,
                REARM_BAND,
                c.sustained_for,
            ));
        }
        for (resource, count) in [
            (Resource::FileDescriptors, &limits.file_descriptors),
            (Resource::Processes, &limits.processes),
        ] {
            if let Some(c) = count {
                watched.push(watch(
                    resource,
                    c.max as f64,
                    None,
                    c.policy,
                    0.0,
                    Duration::ZERO,
                ));
            }
        }
        LimitWatch {
            watched,
            oom_kills: 0,
            memory_limit: limits.limit(Resource::Memory),
        }
    }

    /// Whether there is anything to watch.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// The findings of one sample taken at `now`, in resource order, a warning before a
    /// violation of the same resource.
    pub fn observe(&mut self, now: Instant, usage: &Usage) -> Vec<Finding> {
        let mut out = Vec::new();
        for w in &mut self.watched {
            let Some(value) = usage.get(w.resource).filter(|v| v.is_finite()) else {
                continue;
            };
            if let Some(level) = w.warning.as_mut() {
                if let Some(Edge::Crossed) = level.step(now, value) {
                    out.push(Finding::Warning {
                        resource: w.resource,
                        value,
                        limit: w.limit,
                        level: level.at,
                    });
                }
            }
            match w.violation.step(now, value) {
                Some(Edge::Crossed) if w.policy != LimitPolicy::None => {
                    out.push(Finding::Violation {
                        resource: w.resource,
                        value,
                        limit: w.limit,
                        policy: w.policy,
                    })
                }
                Some(Edge::Rearmed) if w.policy != LimitPolicy::None => {
                    out.push(Finding::Recovered {
                        resource: w.resource,
                        value,
                        limit: w.limit,
                    })
                }
                _ => {}
            }
        }
        out
    }

    /// The cgroup's total OOM-kill count (`memory.events`), from a sample or read at the
    /// run's exit: a [`Finding::OomKilled`] when it grew since the last call. Feeding the
    /// same total twice reports it once.
    pub fn observe_oom_kills(&mut self, total: u64) -> Option<Finding> {
        if total <= self.oom_kills {
            return None;
        }
        let kills = total - self.oom_kills;
        self.oom_kills = total;
        Some(Finding::OomKilled {
            kills,
            limit: self.memory_limit,
        })
    }

    /// Whether `resource` is over its limit as last reported (violated, not recovered).
    pub fn is_violated(&self, resource: Resource) -> bool {
        self.watched
            .iter()
            .any(|w| w.resource == resource && w.violation.crossed)
    }
}

fn watch(
    resource: Resource,
    limit: f64,
    warning_percent: Option<f64>,
    policy: LimitPolicy,
    band: f64,
    sustain: Duration,
) -> Watched {
    Watched {
        resource,
        limit,
        policy,
        warning: warning_percent
            .filter(|p| *p > 0.0)
            .map(|p| Level::new(limit * p / 100.0, band, true, sustain)),
        violation: Level::new(limit, band, false, sustain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CountLimit, CpuLimit, MemoryLimit};

    const MIB: u64 = 1 << 20;

    fn memory(policy: LimitPolicy) -> Limits {
        Limits {
            memory: Some(MemoryLimit {
                max_rss: 100 * MIB,
                warning_threshold: Some(80.0),
                policy,
            }),
            ..Limits::default()
        }
    }

    fn cpu(sustained: u64) -> Limits {
        Limits {
            cpu: Some(CpuLimit {
                max_percent: 50.0,
                warning_threshold: Some(80.0),
                policy: LimitPolicy::Log,
                sustained_for: Duration::from_secs(sustained),
            }),
            ..Limits::default()
        }
    }

    fn mem(mib: u64) -> Usage {
        Usage {
            memory_bytes: Some(mib * MIB),
            ..Usage::default()
        }
    }

    fn cpu_at(p: f64) -> Usage {
        Usage {
            cpu_percent: Some(p),
            ..Usage::default()
        }
    }

    /// Feeds one sample a second and names each finding: W(arning), V(iolation),
    /// R(ecovered).
    fn run(watch: &mut LimitWatch, samples: &[Usage]) -> Vec<String> {
        let t0 = Instant::now();
        samples
            .iter()
            .enumerate()
            .map(|(i, u)| {
                watch
                    .observe(t0 + Duration::from_secs(i as u64), u)
                    .iter()
                    .map(|f| match f {
                        Finding::Warning { .. } => "W",
                        Finding::Violation { .. } => "V",
                        Finding::Recovered { .. } => "R",
                        Finding::OomKilled { .. } => "O",
                    })
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn a_warning_is_once_per_crossing_not_once_per_sample() {
        let mut w = LimitWatch::new(&memory(LimitPolicy::Log));
        let got = run(
            &mut w,
            &[
                mem(10),
                mem(80),
                mem(85),
                mem(90),
                mem(79),
                mem(70),
                mem(81),
            ],
        );
        // 80 MiB is the level (reached = crossed); 79 is inside the re-arm band, 70 is not.
        assert_eq!(got, ["", "W", "", "", "", "", "W"]);
    }

    #[test]
    fn a_violation_is_once_per_crossing_and_recovers() {
        let mut w = LimitWatch::new(&memory(LimitPolicy::Restart));
        let got = run(
            &mut w,
            &[
                mem(100),
                mem(101),
                mem(150),
                mem(99),
                mem(96),
                mem(95),
                mem(101),
            ],
        );
        // Exactly at the limit is allowed; 99 and 96 are inside the band, 95 re-arms.
        assert_eq!(got, ["W", "V", "", "", "", "R", "V"]);
        assert!(w.is_violated(Resource::Memory));
    }

    #[test]
    fn a_jump_past_both_levels_reports_both_warning_first() {
        let mut w = LimitWatch::new(&memory(LimitPolicy::Alert));
        let t = Instant::now();
        let f = w.observe(t, &mem(500));
        assert_eq!(
            f,
            [
                Finding::Warning {
                    resource: Resource::Memory,
                    value: (500 * MIB) as f64,
                    limit: (100 * MIB) as f64,
                    level: (80 * MIB) as f64,
                },
                Finding::Violation {
                    resource: Resource::Memory,
                    value: (500 * MIB) as f64,
                    limit: (100 * MIB) as f64,
                    policy: LimitPolicy::Alert,
                },
            ]
        );
        assert_eq!(f[1].action(), Some("alert"));
    }

    #[test]
    fn cpu_must_stay_above_for_sustained_for() {
        let mut w = LimitWatch::new(&cpu(3));
        // A 3 s spike (samples at 1, 2, 3 s) is ignored; the dip at 4 s resets the clock;
        // above from 5 s: the violation at 8 s, three seconds after it was first seen.
        let got = run(
            &mut w,
            &[
                cpu_at(10.0),
                cpu_at(90.0),
                cpu_at(90.0),
                cpu_at(90.0),
                cpu_at(10.0),
                cpu_at(90.0),
                cpu_at(90.0),
                cpu_at(90.0),
                cpu_at(90.0),
                cpu_at(90.0),
                cpu_at(10.0),
            ],
        );
        assert_eq!(got, ["", "", "", "", "", "", "", "", "WV", "", "R"]);
    }

    #[test]
    fn a_dip_between_the_limit_and_the_band_resets_the_clock_but_does_not_rearm() {
        let mut w = LimitWatch::new(&cpu(1));
        let got = run(
            &mut w,
            &[
                cpu_at(60.0),
                cpu_at(60.0), // V (warning level 40 crossed too)
                cpu_at(49.0), // below the limit, inside the band: no R
                cpu_at(60.0),
                cpu_at(60.0), // still the same crossing: nothing
                cpu_at(30.0), // R, and under the warning band
            ],
        );
        assert_eq!(got, ["", "WV", "", "", "", "R"]);
    }

    #[test]
    fn sustained_for_zero_acts_on_the_first_sample() {
        let mut w = LimitWatch::new(&cpu(0));
        assert_eq!(run(&mut w, &[cpu_at(51.0)]), ["WV"]);
    }

    #[test]
    fn counts_rearm_at_the_limit_and_none_reports_nothing() {
        let mut limits = Limits {
            processes: Some(CountLimit {
                max: 2,
                policy: LimitPolicy::Log,
            }),
            file_descriptors: Some(CountLimit {
                max: 2,
                policy: LimitPolicy::None,
            }),
            ..Limits::default()
        };
        let u = |n| Usage {
            fds: Some(n),
            processes: Some(n),
            ..Usage::default()
        };
        let mut w = LimitWatch::new(&limits);
        assert_eq!(run(&mut w, &[u(2), u(3), u(2), u(3)]), ["", "V", "R", "V"]);
        limits.processes = None;
        let mut w = LimitWatch::new(&limits);
        assert!(!w.is_empty());
        assert_eq!(run(&mut w, &[u(3), u(1), u(3)]), ["", "", ""]);
    }

    #[test]
    fn missing_values_change_nothing() {
        let mut w = LimitWatch::new(&cpu(2));
        let none = Usage::default();
        let nan = cpu_at(f64::NAN);
        // The clock started at 0 s keeps running across the gaps.
        let got = run(&mut w, &[cpu_at(90.0), none, nan, cpu_at(90.0)]);
        assert_eq!(got, ["", "", "", "WV"]);
    }

    #[test]
    fn oom_kills_are_reported_once_per_new_kill() {
        let mut w = LimitWatch::new(&memory(LimitPolicy::ImmediateKill));
        assert_eq!(w.observe_oom_kills(0), None);
        let f = w.observe_oom_kills(2).unwrap();
        assert_eq!(
            f,
            Finding::OomKilled {
                kills: 2,
                limit: Some((100 * MIB) as f64)
            }
        );
        assert_eq!(f.action(), Some("oom_killed"));
        assert_eq!(w.observe_oom_kills(2), None);
        assert!(matches!(
            w.observe_oom_kills(3),
            Some(Finding::OomKilled { kills: 1, .. })
        ));
    }

    /// A small deterministic generator: the property test below needs no dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// For random walks of usage around the levels: violations and recoveries alternate
    /// starting with a violation, every violation is of a value over the limit, every
    /// recovery of one in the re-arm band's floor or below, and a CPU violation comes
    /// only after an unbroken stretch above the limit of at least `sustained_for`.
    #[test]
    fn random_walks_keep_the_invariants() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for case in 0..500 {
            let sustain = rng.next() % 4;
            let mut w = LimitWatch::new(&cpu(sustain));
            let t0 = Instant::now();
            let mut above_since: Option<u64> = None;
            let mut warn_since: Option<u64> = None;
            let mut violated = false;
            let mut warned = false;
            let mut value = 50.0f64;
            for s in 0..200u64 {
                value = (value + (rng.next() % 21) as f64 - 10.0).clamp(0.0, 120.0);
                let findings = w.observe(t0 + Duration::from_secs(s), &cpu_at(value));
                if value > 50.0 {
                    above_since.get_or_insert(s);
                } else {
                    above_since = None;
                }
                if value >= 40.0 {
                    warn_since.get_or_insert(s);
                } else {
                    warn_since = None;
                }
                for f in findings {
                    match f {
                        Finding::Violation { value: v, .. } => {
                            assert!(!violated, "case {case}: two violations in a row");
                            assert!(v > 50.0);
                            let since = above_since.expect("violation while below");
                            assert!(s - since >= sustain, "case {case}: spike acted on");
                            violated = true;
                        }
                        Finding::Recovered { value: v, .. } => {
                            assert!(violated, "case {case}: recovery without violation");
                            assert!(v <= 50.0 * (1.0 - REARM_BAND));
                            violated = false;
                        }
                        Finding::Warning { value: v, .. } => {
                            assert!(!warned, "case {case}: two warnings in a row");
                            assert!(v >= 40.0);
                            let since = warn_since.expect("warning while below");
                            assert!(s - since >= sustain, "case {case}: spike warned of");
                            warned = true;
                        }
                        Finding::OomKilled { .. } => unreachable!(),
                    }
                }
                if value <= 40.0 * (1.0 - REARM_BAND) {
                    warned = false;
                }
            }
        }
    }
}
