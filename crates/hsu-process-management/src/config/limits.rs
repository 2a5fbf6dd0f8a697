//! Resource limits, in the canonical shape (`memory`, `cpu`, `file_descriptors`,
//! `processes`) and the nested one (`memory`, `cpu`, `process`).

use super::ctx::{Ctx, Map};
use super::yaml::Node;
use hsu_managed_process::{CountLimit, CpuLimit, LimitPolicy, Limits, MemoryLimit, ProcessType};
use std::time::Duration;

/// How long CPU usage must stay above its limit before the policy acts, when not given.
pub(crate) const DEFAULT_CPU_SUSTAINED_FOR: Duration = Duration::from_secs(10);

const POLICIES: [(&str, LimitPolicy); 8] = [
    ("none", LimitPolicy::None),
    ("log", LimitPolicy::Log),
    ("alert", LimitPolicy::Alert),
    ("throttle", LimitPolicy::Throttle),
    ("graceful_shutdown", LimitPolicy::GracefulShutdown),
    ("immediate_kill", LimitPolicy::ImmediateKill),
    ("restart", LimitPolicy::Restart),
    ("restart_adjusted", LimitPolicy::RestartAdjusted),
];

/// Canonical `control.limits`.
pub(crate) fn canonical(cx: &mut Ctx, node: &Node, path: &str, ty: ProcessType) -> Limits {
    let mut limits = Limits::default();
    let keys = ["memory", "cpu", "file_descriptors", "processes"];
    let Some(m) = cx.map(node, path, &keys) else {
        return limits;
    };
    limits.memory = m.field(cx, "memory", |cx, n, p| memory(cx, n, p, ty, false));
    limits.cpu = m.field(cx, "cpu", |cx, n, p| cpu(cx, n, p, ty, None));
    limits.file_descriptors = m.field(cx, "file_descriptors", |cx, n, p| count(cx, n, p, ty));
    limits.processes = m.field(cx, "processes", |cx, n, p| count(cx, n, p, ty));
    limits
}

/// Nested `control.limits`; `sustained` is `context_aware_restart.sustained_violation_time`.
pub(crate) fn nested(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    ty: ProcessType,
    sustained: Option<Duration>,
) -> Limits {
    let mut limits = Limits::default();
    let Some(m) = cx.map(node, path, &["memory", "cpu", "process"]) else {
        return limits;
    };
    limits.memory = m.field(cx, "memory", |cx, n, p| memory(cx, n, p, ty, true));
    limits.cpu = m.field(cx, "cpu", |cx, n, p| cpu(cx, n, p, ty, Some(sustained)));
    limits.file_descriptors = m.field(cx, "process", |cx, n, p| nested_process(cx, n, p, ty));
    limits
}

/// `memory`; the nested form may give `limit_mb` (MiB) instead of `max_rss`.
fn memory(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    ty: ProcessType,
    nested: bool,
) -> Option<MemoryLimit> {
    let keys: &[&str] = if nested {
        &["max_rss", "limit_mb", "warning_threshold", "policy"]
    } else {
        &["max_rss", "warning_threshold", "policy"]
    };
    let m = cx.map(node, path, keys)?;
    let warning_threshold = m.field(cx, "warning_threshold", threshold);
    let policy = policy_of(cx, &m, ty);
    let limit_mb = m.get("limit_mb").filter(|_| nested);
    let max_rss = match (m.get("max_rss"), limit_mb) {
        (Some(_), Some(_)) => {
            m.forbid(
                cx,
                "limit_mb",
                "cannot be given together with `max_rss`; give one",
            );
            None
        }
        (Some(n), None) => non_zero(cx, n, &m.at("max_rss"), Ctx::size),
        (None, Some(n)) => mebibytes(cx, n, &m.at("limit_mb")),
        (None, None) => {
            let why = if nested {
                "the limit, e.g. `512MiB` (or `limit_mb`)"
            } else {
                "the limit, e.g. `512MiB`"
            };
            m.missing(cx, "max_rss", why);
            None
        }
    }?;
    Some(MemoryLimit {
        max_rss,
        warning_threshold,
        policy,
    })
}

fn mebibytes(cx: &mut Ctx, node: &Node, path: &str) -> Option<u64> {
    let mb = non_zero(cx, node, path, Ctx::uint)?;
    mb.checked_mul(1024 * 1024).or_else(|| {
        cx.report(node, path, "is too large");
        None
    })
}

/// `cpu`. `sustained`: `None` in the canonical form (read `sustained_for`), else the
/// nested form's `sustained_violation_time`, if any.
fn cpu(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    ty: ProcessType,
    sustained: Option<Option<Duration>>,
) -> Option<CpuLimit> {
    let keys: &[&str] = match sustained {
        None => &[
            "max_percent",
            "warning_threshold",
            "policy",
            "sustained_for",
        ],
        Some(_) => &["max_percent", "warning_threshold", "policy"],
    };
    let m = cx.map(node, path, keys)?;
    let warning_threshold = m.field(cx, "warning_threshold", threshold);
    let policy = policy_of(cx, &m, ty);
    let sustained_for = match sustained {
        None => m.field(cx, "sustained_for", Ctx::duration),
        Some(given) => given,
    };
    let Some(max) = m.get("max_percent") else {
        m.missing(
            cx,
            "max_percent",
            "percent of one core, e.g. `50` (200 = two cores)",
        );
        return None;
    };
    let max_percent = cx.number(max, &m.at("max_percent"))?;
    if max_percent <= 0.0 {
        cx.report(
            max,
            &m.at("max_percent"),
            format!("must be more than 0, found {max_percent}"),
        );
        return None;
    }
    Some(CpuLimit {
        max_percent,
        warning_threshold,
        policy,
        sustained_for: sustained_for.unwrap_or(DEFAULT_CPU_SUSTAINED_FOR),
    })
}

/// Canonical `file_descriptors` / `processes`: `{max, policy}`.
fn count(cx: &mut Ctx, node: &Node, path: &str, ty: ProcessType) -> Option<CountLimit> {
    let m = cx.map(node, path, &["max", "policy"])?;
    let policy = policy_of(cx, &m, ty);
    let Some(n) = m.get("max") else {
        m.missing(cx, "max", "the highest count allowed");
        return None;
    };
    let max = non_zero(cx, n, &m.at("max"), Ctx::uint)?;
    Some(CountLimit { max, policy })
}

/// Nested `process: {max_file_descriptors, policy}`; without a maximum there is no limit.
fn nested_process(cx: &mut Ctx, node: &Node, path: &str, ty: ProcessType) -> Option<CountLimit> {
    let m = cx.map(node, path, &["max_file_descriptors", "policy"])?;
    let policy = policy_of(cx, &m, ty);
    let n = m.get("max_file_descriptors")?;
    let max = non_zero(cx, n, &m.at("max_file_descriptors"), Ctx::uint)?;
    Some(CountLimit { max, policy })
}

fn non_zero(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    read: impl FnOnce(&mut Ctx, &Node, &str) -> Option<u64>,
) -> Option<u64> {
    match read(cx, node, path)? {
        0 => {
            cx.report(node, path, "must be more than 0");
            None
        }
        n => Some(n),
    }
}

/// A warning threshold: percent of the limit, more than 0 and at most 100.
fn threshold(cx: &mut Ctx, node: &Node, path: &str) -> Option<f64> {
    let t = cx.number(node, path)?;
    if t <= 0.0 || t > 100.0 {
        cx.report(
            node,
            path,
            format!("must be a percentage above 0 and at most 100, found {t}"),
        );
        return None;
    }
    Some(t)
}

/// `policy` (default `log`). An unmanaged process is never stopped, restarted or
/// throttled by the manager, so only the reporting policies apply to it.
fn policy_of(cx: &mut Ctx, m: &Map, ty: ProcessType) -> LimitPolicy {
    let Some(node) = m.get("policy") else {
        return LimitPolicy::default();
    };
    let path = m.at("policy");
    let policy = cx.choice(node, &path, &POLICIES).unwrap_or_default();
    let reporting_only = matches!(
        policy,
        LimitPolicy::None | LimitPolicy::Log | LimitPolicy::Alert
    );
    if ty == ProcessType::Unmanaged && !reporting_only {
        let message = "an unmanaged process is never stopped, restarted or throttled by the \
                       manager; use none, log or alert";
        cx.report(node, &path, message);
    }
    policy
}
