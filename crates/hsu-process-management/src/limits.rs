//! Resource limits in the supervisor: the configured limits in the terms of
//! `hsu-resource-limits`, the per-run state (the cgroup, the watch over samples, a
//! throttle), and what status shows of it ([`LimitsView`]).

use hsu_common::{EventKind, EventSink};
use hsu_managed_process as model;
use hsu_resource_limits as rl;
use std::sync::Arc;
use std::time::Instant;

/// The configured limits, as the limits crate takes them.
pub(crate) fn convert(l: &model::Limits) -> rl::Limits {
    rl::Limits {
        memory: l.memory.as_ref().map(|m| rl::MemoryLimit {
            max_rss: m.max_rss,
            warning_threshold: m.warning_threshold,
            policy: policy(m.policy),
        }),
        cpu: l.cpu.as_ref().map(|c| rl::CpuLimit {
            max_percent: c.max_percent,
            warning_threshold: c.warning_threshold,
            policy: policy(c.policy),
            sustained_for: c.sustained_for,
        }),
        file_descriptors: l.file_descriptors.as_ref().map(count),
        processes: l.processes.as_ref().map(count),
    }
}

fn count(c: &model::CountLimit) -> rl::CountLimit {
    rl::CountLimit {
        max: c.max,
        policy: policy(c.policy),
    }
}

fn policy(p: model::LimitPolicy) -> rl::LimitPolicy {
    use model::LimitPolicy as P;
    match p {
        P::None => rl::LimitPolicy::None,
        P::Log => rl::LimitPolicy::Log,
        P::Alert => rl::LimitPolicy::Alert,
        P::Throttle => rl::LimitPolicy::Throttle,
        P::GracefulShutdown => rl::LimitPolicy::GracefulShutdown,
        P::ImmediateKill => rl::LimitPolicy::ImmediateKill,
        P::Restart => rl::LimitPolicy::Restart,
        P::RestartAdjusted => rl::LimitPolicy::RestartAdjusted,
    }
}

/// What status shows of a process's limits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LimitsView {
    /// Who holds each configured limit of the current run: `(resource, backend, detail)`,
    /// backend `cgroup`, `polling` or `rlimit`.
    pub enforcement: Vec<(String, String, String)>,
    /// Limits raised by `restart_adjusted`: `(resource, configured, effective, reason)`.
    pub adjusted: Vec<(String, f64, f64, String)>,
    /// Limits with policy `alert` crossed and not yet back under (`resource: value > limit`).
    pub alerts: Vec<String>,
    /// Alerts raised since the manager started supervising the process.
    pub alerts_total: u64,
    /// A CPU throttle is being held by stopping and continuing the tree.
    pub throttled: bool,
}

/// A run's limit state in its supervisor.
pub(crate) struct RunLimits {
    pub plan: rl::Plan,
    pub watch: rl::LimitWatch,
    /// A CPU throttle held by the manager (no `cpu.max` for it), and when it needs its
    /// next step.
    pub duty: Option<(rl::DutyCycle, Option<Instant>)>,
    pub cgroup: Option<Arc<rl::Cgroup>>,
}

impl RunLimits {
    pub fn new(limits: rl::Limits, cgroup: Option<Arc<rl::Cgroup>>) -> RunLimits {
        let plan = rl::Plan::new(&limits, cgroup.as_ref().map(|c| c.controllers()));
        let mut watch = rl::LimitWatch::new(&limits);
        // A reused cgroup counts the OOM kills of earlier runs: only new ones are this
        // run's.
        if let Some(kills) = cgroup.as_ref().and_then(|c| c.oom_kills().ok()) {
            let _ = watch.observe_oom_kills(kills);
        }
        RunLimits {
            plan,
            watch,
            duty: None,
            cgroup,
        }
    }

    /// The next moment the throttle needs a step.
    pub fn next_tick(&self) -> Option<Instant> {
        self.duty.as_ref().and_then(|(_, at)| *at)
    }
}

/// `memory 82.0MiB > 20.0MiB`.
/// Journals and logs what a finding says — a warning, a violation (its policy as the
/// action), the OOM killer's kills — for process `id`. Acting on it is the caller's.
pub(crate) fn journal_finding(id: &str, finding: &rl::Finding, events: &dyn EventSink) {
    match *finding {
        rl::Finding::Warning {
            resource,
            value,
            limit,
            ..
        } => {
            tracing::info!(
                id,
                "{} (warning threshold)",
                describe(resource, value, limit)
            );
            events.emit(
                Some(id),
                EventKind::ResourceWarning {
                    resource: resource.name().into(),
                    value,
                    limit,
                },
            );
        }
        rl::Finding::OomKilled { kills, limit } => {
            tracing::warn!(id, "the kernel's OOM killer ended the tree ({kills} kills)");
            events.emit(
                Some(id),
                EventKind::ResourceViolation {
                    resource: "memory".into(),
                    value: kills as f64,
                    limit: limit.unwrap_or(0.0),
                    action: "oom_killed".into(),
                },
            );
        }
        rl::Finding::Violation {
            resource,
            value,
            limit,
            policy,
        } => events.emit(
            Some(id),
            EventKind::ResourceViolation {
                resource: resource.name().into(),
                value,
                limit,
                action: policy.name().into(),
            },
        ),
        rl::Finding::Recovered { .. } => {}
    }
}

/// The `alert` policy's event and log line for `what` (a crossed limit, described).
pub(crate) fn raise_alert(id: &str, what: &str, events: &dyn EventSink) {
    tracing::warn!(id, "alert: limit exceeded: {what}");
    events.emit(
        Some(id),
        EventKind::Alert {
            message: format!("limit exceeded: {what}"),
        },
    );
}

pub(crate) fn describe(resource: rl::Resource, value: f64, limit: f64) -> String {
    let show = |v: f64| match resource {
        rl::Resource::Memory => bytesize::ByteSize(v as u64).to_string(),
        rl::Resource::Cpu => format!("{v:.1}%"),
        _ => format!("{v:.0}"),
    };
    format!("{} {} > {}", resource.name(), show(value), show(limit))
}
