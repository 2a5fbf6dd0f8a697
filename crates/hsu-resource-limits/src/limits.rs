//! The limits of one process tree, as this crate sees them, and the `restart_adjusted`
//! arithmetic.
//!
//! The types mirror `hsu_managed_process::Limits` field for field (that crate sits above
//! this one, so it cannot be named here); the supervisor converts one into the other with
//! a plain field-by-field copy.

use std::fmt;
use std::time::Duration;

/// A resource a limit is about, named as in the config and in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// Resident memory of the tree, in bytes.
    Memory,
    /// CPU use of the tree, in percent of one core (200 = two cores).
    Cpu,
    /// Open file descriptors of the tree.
    FileDescriptors,
    /// Processes in the tree.
    Processes,
}

impl Resource {
    /// Every resource, in the order findings are reported.
    pub const ALL: [Resource; 4] = [
        Resource::Memory,
        Resource::Cpu,
        Resource::FileDescriptors,
        Resource::Processes,
    ];

    /// The name used in the config and in events: `memory`, `cpu`, `file_descriptors`,
    /// `processes`.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Cpu => "cpu",
            Resource::FileDescriptors => "file_descriptors",
            Resource::Processes => "processes",
        }
    }

    /// The unit of its values and limits: `bytes`, `percent` or `count`.
    pub fn unit(self) -> &'static str {
        match self {
            Resource::Memory => "bytes",
            Resource::Cpu => "percent",
            Resource::FileDescriptors | Resource::Processes => "count",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to do when a limit is crossed (mirrors `hsu_managed_process::LimitPolicy`). The
/// supervisor acts on it; this crate only reports and, for `throttle` and
/// `immediate_kill`, asks the kernel for help where it can (see [`crate::Plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LimitPolicy {
    /// `none`: nothing; no violation is reported.
    None,
    /// `log`: a warning in the manager log and a `resource_violation` event.
    #[default]
    Log,
    /// `alert`: also an `alert` event, counted in metrics and shown in status.
    Alert,
    /// `throttle`: hold the tree at the limit instead of stopping it.
    Throttle,
    /// `graceful_shutdown`: stop the tree gracefully, no restart.
    GracefulShutdown,
    /// `immediate_kill`: SIGKILL the tree, no restart.
    ImmediateKill,
    /// `restart`: restart gracefully, counted against the `resource_violations` budget.
    Restart,
    /// `restart_adjusted`: restart, and give the next run a raised limit.
    RestartAdjusted,
}

impl LimitPolicy {
    /// The name as written in the config and in the `action` field of events.
    pub fn name(self) -> &'static str {
        match self {
            LimitPolicy::None => "none",
            LimitPolicy::Log => "log",
            LimitPolicy::Alert => "alert",
            LimitPolicy::Throttle => "throttle",
            LimitPolicy::GracefulShutdown => "graceful_shutdown",
            LimitPolicy::ImmediateKill => "immediate_kill",
            LimitPolicy::Restart => "restart",
            LimitPolicy::RestartAdjusted => "restart_adjusted",
        }
    }

    /// Whether acting on it ends the run (a stop, a kill or a restart).
    pub fn ends_run(self) -> bool {
        matches!(
            self,
            LimitPolicy::GracefulShutdown
                | LimitPolicy::ImmediateKill
                | LimitPolicy::Restart
                | LimitPolicy::RestartAdjusted
        )
    }
}

impl fmt::Display for LimitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `limits.memory`: a cap on the tree's resident memory.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryLimit {
    /// Bytes, for the whole tree.
    pub max_rss: u64,
    /// Percent of `max_rss` at which a warning is reported.
    pub warning_threshold: Option<f64>,
    /// What to do when `max_rss` is crossed.
    pub policy: LimitPolicy,
}

/// `limits.cpu`: a cap on the tree's CPU use.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuLimit {
    /// Percent of one core (200 = two cores), for the whole tree.
    pub max_percent: f64,
    /// Percent of `max_percent` at which a warning is reported.
    pub warning_threshold: Option<f64>,
    /// What to do when usage stays above `max_percent` for `sustained_for`.
    pub policy: LimitPolicy,
    /// How long usage must stay above a level before it counts as crossed.
    pub sustained_for: Duration,
}

/// `limits.file_descriptors` or `limits.processes`: a cap on a count.
#[derive(Debug, Clone, PartialEq)]
pub struct CountLimit {
    /// The highest count allowed.
    pub max: u64,
    /// What to do when `max` is crossed.
    pub policy: LimitPolicy,
}

/// The limits of one process tree (mirrors `hsu_managed_process::Limits`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    /// `memory`.
    pub memory: Option<MemoryLimit>,
    /// `cpu`.
    pub cpu: Option<CpuLimit>,
    /// `file_descriptors`.
    pub file_descriptors: Option<CountLimit>,
    /// `processes`.
    pub processes: Option<CountLimit>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none()
            && self.cpu.is_none()
            && self.file_descriptors.is_none()
            && self.processes.is_none()
    }

    /// The limit on `resource` in its unit, if one is set.
    pub fn limit(&self, resource: Resource) -> Option<f64> {
        match resource {
            Resource::Memory => self.memory.as_ref().map(|m| m.max_rss as f64),
            Resource::Cpu => self.cpu.as_ref().map(|c| c.max_percent),
            Resource::FileDescriptors => self.file_descriptors.as_ref().map(|c| c.max as f64),
            Resource::Processes => self.processes.as_ref().map(|c| c.max as f64),
        }
    }

    /// The policy of the limit on `resource`, if one is set.
    pub fn policy(&self, resource: Resource) -> Option<LimitPolicy> {
        match resource {
            Resource::Memory => self.memory.as_ref().map(|m| m.policy),
            Resource::Cpu => self.cpu.as_ref().map(|c| c.policy),
            Resource::FileDescriptors => self.file_descriptors.as_ref().map(|c| c.policy),
            Resource::Processes => self.processes.as_ref().map(|c| c.policy),
        }
    }

    /// The limits the next run gets after `adjustments`: each limit whose policy is
    /// `restart_adjusted` raised by [`adjusted_limit`] / [`adjusted_count`]; the others as
    /// configured.
    pub fn adjusted(&self, adjustments: &Adjustments) -> Limits {
        let mut out = self.clone();
        if let Some(m) = out.memory.as_mut() {
            if m.policy == LimitPolicy::RestartAdjusted {
                m.max_rss = adjusted_count(m.max_rss, adjustments.get(Resource::Memory));
            }
        }
        if let Some(c) = out.cpu.as_mut() {
            if c.policy == LimitPolicy::RestartAdjusted {
                c.max_percent = adjusted_limit(c.max_percent, adjustments.get(Resource::Cpu));
            }
        }
        for (resource, count) in [
            (Resource::FileDescriptors, out.file_descriptors.as_mut()),
            (Resource::Processes, out.processes.as_mut()),
        ] {
            if let Some(c) = count {
                if c.policy == LimitPolicy::RestartAdjusted {
                    c.max = adjusted_count(c.max, adjustments.get(resource));
                }
            }
        }
        out
    }

    /// For status: every limit that `adjustments` raises, with the configured and the
    /// effective value and why.
    pub fn adjustments_report(&self, adjustments: &Adjustments) -> Vec<AdjustedLimit> {
        let effective = self.adjusted(adjustments);
        Resource::ALL
            .into_iter()
            .filter_map(|resource| {
                let restarts = adjustments.get(resource);
                let configured = self.limit(resource)?;
                let now = effective.limit(resource)?;
                (restarts > 0 && now != configured).then(|| AdjustedLimit {
                    resource,
                    configured,
                    effective: now,
                    restarts,
                    reason: format!(
                        "{resource} limit raised from {} to {} after {restarts} restart{} \
                         for exceeding it (policy restart_adjusted)",
                        show(resource, configured),
                        show(resource, now),
                        if restarts == 1 { "" } else { "s" },
                    ),
                })
            })
            .collect()
    }
}

fn show(resource: Resource, v: f64) -> String {
    match resource {
        Resource::Cpu => format!("{v}%"),
        Resource::Memory => format!("{v} bytes"),
        _ => format!("{v}"),
    }
}

/// A limit raised by `restart_adjusted`, for status.
#[derive(Debug, Clone, PartialEq)]
pub struct AdjustedLimit {
    /// The resource whose limit was raised.
    pub resource: Resource,
    /// The limit as configured.
    pub configured: f64,
    /// The limit the current run has.
    pub effective: f64,
    /// How many adjusted restarts raised it.
    pub restarts: u32,
    /// One sentence for status.
    pub reason: String,
}

/// How many `restart_adjusted` restarts each resource has caused; the supervisor keeps
/// it across runs (and forgets it when the definition changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Adjustments {
    counts: [u32; 4],
}

impl Adjustments {
    /// The adjusted restarts `resource` has caused.
    pub fn get(&self, resource: Resource) -> u32 {
        self.counts[resource as usize]
    }

    /// Records one more adjusted restart caused by `resource`.
    pub fn record(&mut self, resource: Resource) {
        let c = &mut self.counts[resource as usize];
        *c = c.saturating_add(1);
    }

    /// Whether no limit has been adjusted.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }
}

/// Steps of 25% of the configured limit; four of them reach the cap of twice the limit.
const MAX_STEPS: u32 = 4;

/// The limit after `restarts` adjusted restarts: +25% of `configured` per restart, at
/// most twice `configured` (so 1.25×, 1.5×, 1.75×, then 2× for good).
pub fn adjusted_limit(configured: f64, restarts: u32) -> f64 {
    configured * (1.0 + 0.25 * f64::from(restarts.min(MAX_STEPS)))
}

/// [`adjusted_limit`] for whole numbers (bytes, counts), rounded down, never overflowing.
pub fn adjusted_count(configured: u64, restarts: u32) -> u64 {
    let steps = u128::from(restarts.min(MAX_STEPS));
    let raised = u128::from(configured) * (4 + steps) / 4;
    u64::try_from(raised).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjusted_limits_rise_by_a_quarter_up_to_twice() {
        assert_eq!(adjusted_count(400, 0), 400);
        assert_eq!(adjusted_count(400, 1), 500);
        assert_eq!(adjusted_count(400, 2), 600);
        assert_eq!(adjusted_count(400, 3), 700);
        assert_eq!(adjusted_count(400, 4), 800);
        assert_eq!(adjusted_count(400, 50), 800);
        assert_eq!(adjusted_count(u64::MAX, 4), u64::MAX);
        assert_eq!(adjusted_limit(50.0, 1), 62.5);
        assert_eq!(adjusted_limit(50.0, u32::MAX), 100.0);
    }

    fn limits() -> Limits {
        Limits {
            memory: Some(MemoryLimit {
                max_rss: 1 << 20,
                warning_threshold: None,
                policy: LimitPolicy::RestartAdjusted,
            }),
            cpu: Some(CpuLimit {
                max_percent: 50.0,
                warning_threshold: None,
                policy: LimitPolicy::Restart,
                sustained_for: Duration::ZERO,
            }),
            file_descriptors: None,
            processes: Some(CountLimit {
                max: 10,
                policy: LimitPolicy::RestartAdjusted,
            }),
        }
    }

    #[test]
    fn only_restart_adjusted_limits_are_raised() {
        let mut adj = Adjustments::default();
        adj.record(Resource::Memory);
        adj.record(Resource::Memory);
        adj.record(Resource::Cpu);
        let out = limits().adjusted(&adj);
        assert_eq!(out.memory.unwrap().max_rss, (1 << 20) * 3 / 2);
        // cpu's policy is plain restart: untouched, even with a count.
        assert_eq!(out.cpu.unwrap().max_percent, 50.0);
        // processes is restart_adjusted but never caused a restart.
        assert_eq!(out.processes.unwrap().max, 10);
    }

    #[test]
    fn status_tells_which_limit_was_raised_and_why() {
        let mut adj = Adjustments::default();
        assert!(limits().adjustments_report(&adj).is_empty());
        adj.record(Resource::Processes);
        let report = limits().adjustments_report(&adj);
        assert_eq!(report.len(), 1);
        let r = &report[0];
        assert_eq!(
            (r.resource, r.configured, r.effective, r.restarts),
            (Resource::Processes, 10.0, 12.0, 1)
        );
        assert_eq!(
            r.reason,
            "processes limit raised from 10 to 12 after 1 restart for exceeding it \
             (policy restart_adjusted)"
        );
    }

    #[test]
    fn names_are_the_config_words() {
        let names: Vec<_> = Resource::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names, ["memory", "cpu", "file_descriptors", "processes"]);
        assert_eq!(LimitPolicy::RestartAdjusted.to_string(), "restart_adjusted");
        assert!(LimitPolicy::ImmediateKill.ends_run());
        assert!(!LimitPolicy::Throttle.ends_run());
    }
}
