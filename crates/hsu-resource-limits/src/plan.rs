//! [`Plan`]: which back end enforces each limit of a run, and what to ask of the kernel.
//!
//! Detection is always by sampling (the kernel sends no event for "memory grew"), cheap
//! where a cgroup gives counters; what differs per limit is who *holds* it. The table,
//! given the controllers the run's cgroup has (none without a cgroup):
//!
//! | limit | policy | with the controller | without it |
//! |---|---|---|---|
//! | memory | `throttle` | cgroup `memory.high` = limit (the kernel reclaims and slows the tree) | polling: reported only |
//! | memory | `immediate_kill` | cgroup `memory.max` = limit, `memory.oom.group` = 1 (the kernel kills the whole tree at once; reported as `oom_killed`) | polling: the supervisor kills |
//! | cpu | `throttle` | cgroup `cpu.max` = limit | polling: duty cycling (`cgroup.freeze` of the run's cgroup where it has one, else SIGSTOP/SIGCONT) |
//! | processes | `throttle` | cgroup `pids.max` = limit (further forks fail; the kernel counts threads too) | polling: reported only |
//! | file_descriptors | `throttle` | — | rlimit: `RLIMIT_NOFILE` = limit in each process |
//! | any | any other | polling: the supervisor applies the policy | the same |
//!
//! `memory.max` is set only for `immediate_kill`: for `restart`, `graceful_shutdown` and
//! the rest the policy asks for a graceful stop, which a kernel OOM kill would pre-empt.

use crate::cgroup::Controllers;
use crate::limits::{LimitPolicy, Limits, Resource};
use std::fmt;

/// Who holds a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The kernel, through the run's cgroup.
    Cgroup,
    /// The manager: it samples usage and the supervisor applies the policy (with signals
    /// where it throttles).
    Polling,
    /// The kernel, through a per-process resource limit set before exec.
    Rlimit,
}

impl Backend {
    /// `cgroup`, `polling` or `rlimit`, for status.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cgroup => "cgroup",
            Backend::Polling => "polling",
            Backend::Rlimit => "rlimit",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one limit of a run is enforced, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    /// The limit's resource.
    pub resource: Resource,
    /// Who holds it.
    pub backend: Backend,
    /// In a few words: the kernel files, or what the polling does.
    pub detail: &'static str,
}

/// How a CPU throttle is held when the kernel cannot hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DutyCycleBy {
    /// Freeze and thaw the run's cgroup (`cgroup.freeze`): atomic for the whole tree and
    /// invisible to it.
    Freezer,
    /// SIGSTOP and SIGCONT to every member of the tree.
    Signals,
}

/// The cgroup's period for `cpu.max`, in microseconds (the kernel's default).
pub const CPU_PERIOD_USEC: u64 = 100_000;

/// What to ask of the kernel for one run, and how each limit is held. Build it with
/// [`Plan::new`] from the run's effective limits and what the run has: its cgroup's
/// controllers (`None` without a cgroup).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `memory.max`, in bytes.
    pub memory_max: Option<u64>,
    /// `memory.high`, in bytes.
    pub memory_high: Option<u64>,
    /// `memory.oom.group`.
    pub memory_oom_group: bool,
    /// `cpu.max` quota per [`CPU_PERIOD_USEC`], in microseconds.
    pub cpu_max_quota_usec: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
    /// `RLIMIT_NOFILE` for every process spawned (`SpawnSpec::rlimit_nofile`).
    pub rlimit_nofile: Option<u64>,
    /// The CPU target of a throttle the supervisor must hold itself ([`crate::DutyCycle`]),
    /// and how to stop the tree.
    pub duty_cycle: Option<(f64, DutyCycleBy)>,
    /// Per limit, who holds it.
    pub enforcements: Vec<Enforcement>,
    /// Whether file descriptors must be counted (a limit on them).
    pub count_fds: bool,
}

impl Plan {
    /// The plan for `limits` given the run's cgroup controllers (`None`: no cgroup).
    pub fn new(limits: &Limits, cgroup: Option<Controllers>) -> Plan {
        let has = |c: Controllers| cgroup.is_some_and(|have| have.contains(c));
        let mut plan = Plan {
            memory_max: None,
            memory_high: None,
            memory_oom_group: false,
            cpu_max_quota_usec: None,
            pids_max: None,
            rlimit_nofile: None,
            duty_cycle: None,
            enforcements: Vec::new(),
            count_fds: limits.file_descriptors.is_some(),
        };
        let sampled = if cgroup.is_some() {
            "sampled from the cgroup; the supervisor applies the policy"
        } else {
            "sampled from /proc; the supervisor applies the policy"
        };
        let mut enforce = |resource, backend, detail| {
            plan.enforcements.push(Enforcement {
                resource,
                backend,
                detail,
            })
        };
        if let Some(m) = &limits.memory {
            match m.policy {
                LimitPolicy::Throttle if has(Controllers::MEMORY) => {
                    plan.memory_high = Some(m.max_rss);
                    enforce(Resource::Memory, Backend::Cgroup, "memory.high");
                }
                LimitPolicy::Throttle => enforce(
                    Resource::Memory,
                    Backend::Polling,
                    "reported only: throttling memory needs the cgroup memory controller",
                ),
                LimitPolicy::ImmediateKill if has(Controllers::MEMORY) => {
                    plan.memory_max = Some(m.max_rss);
                    plan.memory_oom_group = true;
                    enforce(
                        Resource::Memory,
                        Backend::Cgroup,
                        "memory.max with memory.oom.group",
                    );
                }
                _ => enforce(Resource::Memory, Backend::Polling, sampled),
            }
        }
        if let Some(c) = &limits.cpu {
            match c.policy {
                LimitPolicy::Throttle if has(Controllers::CPU) => {
                    let quota = (c.max_percent / 100.0 * CPU_PERIOD_USEC as f64).round();
                    // The kernel refuses a quota under 1 ms.
                    plan.cpu_max_quota_usec = Some((quota as u64).max(1000));
                    enforce(Resource::Cpu, Backend::Cgroup, "cpu.max");
                }
                LimitPolicy::Throttle if has(Controllers::FREEZE) => {
                    plan.duty_cycle = Some((c.max_percent, DutyCycleBy::Freezer));
                    enforce(
                        Resource::Cpu,
                        Backend::Polling,
                        "duty cycle: cgroup.freeze and thaw (no cpu controller)",
                    );
                }
                LimitPolicy::Throttle => {
                    plan.duty_cycle = Some((c.max_percent, DutyCycleBy::Signals));
                    enforce(
                        Resource::Cpu,
                        Backend::Polling,
                        "duty cycle: SIGSTOP and SIGCONT to the tree",
                    );
                }
                _ => enforce(Resource::Cpu, Backend::Polling, sampled),
            }
        }
        if let Some(f) = &limits.file_descriptors {
            match f.policy {
                LimitPolicy::Throttle => {
                    plan.rlimit_nofile = Some(f.max);
                    enforce(
                        Resource::FileDescriptors,
                        Backend::Rlimit,
                        "RLIMIT_NOFILE in each process",
                    );
                }
                _ => enforce(
                    Resource::FileDescriptors,
                    Backend::Polling,
                    "counted in /proc; the supervisor applies the policy",
                ),
            }
        }
        if let Some(p) = &limits.processes {
            match p.policy {
                LimitPolicy::Throttle if has(Controllers::PIDS) => {
                    plan.pids_max = Some(p.max);
                    enforce(Resource::Processes, Backend::Cgroup, "pids.max");
                }
                LimitPolicy::Throttle => enforce(
                    Resource::Processes,
                    Backend::Polling,
                    "reported only: capping forks needs the cgroup pids controller",
                ),
                _ => enforce(Resource::Processes, Backend::Polling, sampled),
            }
        }
        plan
    }

    /// How `resource` is enforced, if it has a limit.
    pub fn enforcement(&self, resource: Resource) -> Option<&Enforcement> {
        self.enforcements.iter().find(|e| e.resource == resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CountLimit, CpuLimit, MemoryLimit};
    use std::time::Duration;

    fn all(policy: LimitPolicy) -> Limits {
        Limits {
            memory: Some(MemoryLimit {
                max_rss: 1 << 30,
                warning_threshold: None,
                policy,
            }),
            cpu: Some(CpuLimit {
                max_percent: 50.0,
                warning_threshold: None,
                policy,
                sustained_for: Duration::ZERO,
            }),
            file_descriptors: Some(CountLimit { max: 256, policy }),
            processes: Some(CountLimit { max: 32, policy }),
        }
    }

    fn backends(plan: &Plan) -> Vec<(&'static str, &'static str)> {
        plan.enforcements
            .iter()
            .map(|e| (e.resource.name(), e.backend.name()))
            .collect()
    }

    #[test]
    fn throttle_with_every_controller_is_held_by_the_kernel() {
        let plan = Plan::new(&all(LimitPolicy::Throttle), Some(Controllers::all()));
        assert_eq!(plan.memory_high, Some(1 << 30));
        assert_eq!(plan.memory_max, None);
        assert_eq!(plan.cpu_max_quota_usec, Some(50_000));
        assert_eq!(plan.pids_max, Some(32));
        assert_eq!(plan.rlimit_nofile, Some(256));
        assert_eq!(plan.duty_cycle, None);
        assert!(plan.count_fds);
        assert_eq!(
            backends(&plan),
            [
                ("memory", "cgroup"),
                ("cpu", "cgroup"),
                ("file_descriptors", "rlimit"),
                ("processes", "cgroup")
            ]
        );
    }

    #[test]
    fn throttle_without_controllers_falls_back() {
        // A cgroup without controllers (a hybrid layout's v2 tree): the freezer.
        let plan = Plan::new(&all(LimitPolicy::Throttle), Some(Controllers::FREEZE));
        assert_eq!(plan.duty_cycle, Some((50.0, DutyCycleBy::Freezer)));
        // ... and without the freezer either (a kernel before 5.2): signals.
        let plan = Plan::new(&all(LimitPolicy::Throttle), Some(Controllers::empty()));
        assert_eq!(plan.duty_cycle, Some((50.0, DutyCycleBy::Signals)));
        assert_eq!(plan.memory_high, None);
        assert_eq!(plan.pids_max, None);
        assert!(plan
            .enforcement(Resource::Memory)
            .unwrap()
            .detail
            .starts_with("reported only"));
        // No cgroup at all: signals.
        let plan = Plan::new(&all(LimitPolicy::Throttle), None);
        assert_eq!(plan.duty_cycle, Some((50.0, DutyCycleBy::Signals)));
        assert_eq!(
            backends(&plan),
            [
                ("memory", "polling"),
                ("cpu", "polling"),
                ("file_descriptors", "rlimit"),
                ("processes", "polling")
            ]
        );
    }

    #[test]
    fn only_immediate_kill_gets_a_hard_memory_cap() {
        let plan = Plan::new(&all(LimitPolicy::ImmediateKill), Some(Controllers::all()));
        assert_eq!(plan.memory_max, Some(1 << 30));
        assert!(plan.memory_oom_group);
        assert_eq!(plan.cpu_max_quota_usec, None);
        for policy in [
            LimitPolicy::Restart,
            LimitPolicy::RestartAdjusted,
            LimitPolicy::GracefulShutdown,
            LimitPolicy::Log,
        ] {
            let plan = Plan::new(&all(policy), Some(Controllers::all()));
            assert_eq!(
                (plan.memory_max, plan.memory_high, plan.rlimit_nofile),
                (None, None, None)
            );
            assert!(plan
                .enforcements
                .iter()
                .all(|e| e.backend == Backend::Polling));
        }
    }

    #[test]
    fn a_tiny_cpu_quota_is_raised_to_the_kernel_minimum() {
        let mut limits = all(LimitPolicy::Throttle);
        limits.cpu.as_mut().unwrap().max_percent = 0.1;
        let plan = Plan::new(&limits, Some(Controllers::CPU));
        assert_eq!(plan.cpu_max_quota_usec, Some(1000));
        let plan = Plan::new(&Limits::default(), Some(Controllers::all()));
        assert!(plan.enforcements.is_empty() && !plan.count_fds);
    }
}
