//! The canonical form of a process's `management`: `{control, health_check,
//! log_collection, discovery}`.

use super::ctx::{Ctx, Map};
use super::process::Parts;
use super::yaml::Node;
use super::{health, limits, sections};
use hsu_managed_process::{ControlSpec, ProcessType, RestartTuning};
use std::path::PathBuf;

pub(crate) const KEYS: [&str; 4] = ["control", "health_check", "log_collection", "discovery"];

pub(crate) fn management(cx: &mut Ctx, m: &Map, ty: ProcessType) -> Parts {
    let mut parts = Parts::default();
    match m.get("control") {
        Some(n) => parts.control = control(cx, n, &m.at("control"), ty),
        None if ty.is_managed() => {
            let why = format!("a {} process needs `control.executable`", ty.as_str());
            m.missing(cx, "control", &why);
        }
        None => {}
    }
    if let Some(n) = m.get("health_check") {
        parts.health_check = health::canonical(cx, n, &m.at("health_check"));
    }
    if let Some(n) = m.get("log_collection") {
        parts.log_collection =
            sections::process_log_collection(cx, n, &m.at("log_collection"), false);
    }
    parts.discovery = discovery(cx, m, ty);
    parts
}

/// `discovery`: required for unmanaged processes, refused for the others.
pub(crate) fn discovery(
    cx: &mut Ctx,
    m: &Map,
    ty: ProcessType,
) -> Option<hsu_managed_process::DiscoverySpec> {
    if ty.is_managed() {
        m.forbid(cx, "discovery", "is only for unmanaged processes");
        return None;
    }
    let Some(n) = m.get("discovery") else {
        m.missing(
            cx,
            "discovery",
            "an unmanaged process is found by discovery",
        );
        return None;
    };
    sections::discovery(cx, n, &m.at("discovery"))
}

const CONTROL_KEYS: [&str; 12] = [
    "executable",
    "arguments",
    "working_directory",
    "environment",
    "user",
    "group",
    "graceful_timeout",
    "stop_signal",
    "restart_policy",
    "restart",
    "limits",
    "port_argument",
];

/// Keys that only make sense for a process the manager starts.
const START_KEYS: [&str; 9] = [
    "executable",
    "arguments",
    "working_directory",
    "environment",
    "user",
    "group",
    "restart_policy",
    "restart",
    "port_argument",
];

fn control(cx: &mut Ctx, node: &Node, path: &str, ty: ProcessType) -> Option<ControlSpec> {
    let nested = [
        "execution",
        "context_aware_restart",
        "process_file",
        "executable_path",
    ];
    let m = cx.map_with_hints(node, path, &CONTROL_KEYS, &nested)?;
    let mut c = ControlSpec::new(PathBuf::new(), cx.dir.clone());
    if ty.is_managed() {
        match m.get("executable") {
            Some(n) => c.executable = cx.program(n, &m.at("executable")).unwrap_or_default(),
            None => m.missing(
                cx,
                "executable",
                &format!("a {} process needs the program to run", ty.as_str()),
            ),
        }
    } else {
        for key in START_KEYS {
            m.forbid(
                cx,
                key,
                "is not used for unmanaged processes: the manager never starts them",
            );
        }
    }
    c.arguments = m.field(cx, "arguments", Ctx::arguments).unwrap_or_default();
    if let Some(dir) = m.field(cx, "working_directory", Ctx::path) {
        c.working_directory = dir;
    }
    if let Some(n) = m.get("environment") {
        c.environment = sections::environment(cx, n, &m.at("environment"));
    }
    c.user = m.field(cx, "user", sections::account);
    c.group = m.field(cx, "group", sections::account);
    c.graceful_timeout = m
        .field(cx, "graceful_timeout", Ctx::duration)
        .unwrap_or(c.graceful_timeout);
    c.stop_signal = m
        .field(cx, "stop_signal", sections::stop_signal)
        .unwrap_or_default();
    c.restart_policy = m
        .field(cx, "restart_policy", sections::restart_policy)
        .unwrap_or_default();
    if let Some(n) = m.get("restart") {
        c.restart = restart(cx, n, &m.at("restart"));
    }
    if let Some(n) = m.get("limits") {
        c.limits = limits::canonical(cx, n, &m.at("limits"), ty);
    }
    c.port_argument = port_argument(cx, &m, ty);
    Some(c)
}

/// integrated_managed only: the flag put before the port number.
pub(crate) fn port_argument(cx: &mut Ctx, m: &Map, ty: ProcessType) -> Option<String> {
    if ty != ProcessType::IntegratedManaged {
        if ty.is_managed() {
            m.forbid(
                cx,
                "port_argument",
                "is only for integrated_managed processes",
            );
        }
        return None;
    }
    m.field(cx, "port_argument", Ctx::os_non_empty)
}

/// `restart`: backoff, breaker, per-trigger overrides and the startup grace period.
fn restart(cx: &mut Ctx, node: &Node, path: &str) -> RestartTuning {
    let mut t = RestartTuning::default();
    let extra = [
        "health_failures",
        "resource_violations",
        "startup_grace_period",
    ];
    let keys: Vec<&str> = sections::RESTART_KEYS
        .iter()
        .chain(&extra)
        .copied()
        .collect();
    let Some(m) = cx.map(node, path, &keys) else {
        return t;
    };
    sections::restart_fields(cx, &m, &mut t);
    sections::trigger_fields(cx, &m, &mut t);
    t
}
