//! The earlier HSU manager's nested form: `management.<type>.{metadata, control,
//! health_check}` (managed types) and `management.unmanaged.{metadata, discovery,
//! control, health_check}`, mapped onto the same model as the canonical form.

use super::canonical::{discovery, port_argument};
use super::ctx::{Ctx, Map};
use super::process::Parts;
use super::yaml::Node;
use super::{health, limits, sections};
use hsu_managed_process::{ControlSpec, ProcessType, RestartTuning};
use std::path::PathBuf;
use std::time::Duration;

/// Reads the contents of `management.<ty>`.
pub(crate) fn type_section(cx: &mut Ctx, node: &Node, path: &str, ty: ProcessType) -> Parts {
    let mut parts = Parts::default();
    let keys: &[&str] = if ty.is_managed() {
        &["metadata", "control", "health_check"]
    } else {
        &["metadata", "discovery", "control", "health_check"]
    };
    let Some(m) = cx.map(node, path, keys) else {
        return parts;
    };
    if let Some(n) = m.get("metadata") {
        parts.metadata = cx.text_map(n, &m.at("metadata"), true);
    }
    match m.get("control") {
        Some(n) if ty.is_managed() => {
            parts.control = control(cx, n, &m.at("control"), ty, &mut parts)
        }
        Some(n) => parts.control = unmanaged_control(cx, n, &m.at("control")),
        None if ty.is_managed() => {
            let why = format!(
                "a {} process needs `control.execution.executable_path`",
                ty.as_str()
            );
            m.missing(cx, "control", &why);
        }
        None => {}
    }
    if let Some(n) = m.get("health_check") {
        parts.health_check = health::nested(cx, n, &m.at("health_check"));
    }
    parts.discovery = discovery(cx, &m, ty);
    parts
}

const CONTROL_KEYS: [&str; 10] = [
    "execution",
    "restart_policy",
    "context_aware_restart",
    "limits",
    "graceful_timeout",
    "log_collection",
    "process_file",
    "metadata",
    // Not in the earlier manager; accepted so that nothing needs the canonical form.
    "stop_signal",
    "port_argument",
];

fn control(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    ty: ProcessType,
    parts: &mut Parts,
) -> Option<ControlSpec> {
    let canonical = [
        "executable",
        "arguments",
        "working_directory",
        "environment",
        "restart",
    ];
    let m = cx.map_with_hints(node, path, &CONTROL_KEYS, &canonical)?;
    let mut c = ControlSpec::new(PathBuf::new(), cx.dir.clone());
    match m.get("execution") {
        Some(n) => execution(cx, n, &m.at("execution"), &mut c),
        None => m.missing(
            cx,
            "execution",
            "it holds `executable_path`, the program to run",
        ),
    }
    c.restart_policy = m
        .field(cx, "restart_policy", sections::restart_policy)
        .unwrap_or_default();
    let mut sustained = None;
    if let Some(n) = m.get("context_aware_restart") {
        (c.restart, sustained) = context_aware_restart(cx, n, &m.at("context_aware_restart"));
    }
    if let Some(n) = m.get("limits") {
        c.limits = limits::nested(cx, n, &m.at("limits"), ty, sustained);
    }
    c.graceful_timeout = m
        .field(cx, "graceful_timeout", Ctx::duration)
        .unwrap_or(c.graceful_timeout);
    if let Some(n) = m.get("log_collection") {
        parts.log_collection =
            sections::process_log_collection(cx, n, &m.at("log_collection"), true);
    }
    if let Some(n) = m.get("process_file") {
        sections::process_file(cx, n, &m.at("process_file"));
    }
    if let Some(n) = m.get("metadata") {
        let more = cx.text_map(n, &m.at("metadata"), true);
        parts.metadata.extend(more);
    }
    c.stop_signal = m
        .field(cx, "stop_signal", sections::stop_signal)
        .unwrap_or_default();
    c.port_argument = port_argument(cx, &m, ty);
    Some(c)
}

/// `execution.{executable_path, args, working_directory, environment, wait_delay}`.
fn execution(cx: &mut Ctx, node: &Node, path: &str, c: &mut ControlSpec) {
    let keys = [
        "executable_path",
        "args",
        "working_directory",
        "environment",
        "wait_delay",
        // Not in the earlier manager: who the process runs as.
        "user",
        "group",
    ];
    let Some(m) = cx.map_with_hints(node, path, &keys, &["executable", "arguments"]) else {
        return;
    };
    match m.get("executable_path") {
        Some(n) => c.executable = cx.program(n, &m.at("executable_path")).unwrap_or_default(),
        None => m.missing(cx, "executable_path", "the program to run"),
    }
    c.arguments = m.field(cx, "args", Ctx::arguments).unwrap_or_default();
    if let Some(dir) = m.field(cx, "working_directory", Ctx::path) {
        c.working_directory = dir;
    }
    if let Some(n) = m.get("environment") {
        c.environment = sections::environment(cx, n, &m.at("environment"));
    }
    c.user = m.field(cx, "user", sections::account);
    c.group = m.field(cx, "group", sections::account);
    // The earlier manager's I/O wait after exit; checked, not acted on (the stop
    // sequence is governed by `graceful_timeout`).
    m.field(cx, "wait_delay", Ctx::duration);
}

/// `context_aware_restart` → the tuning, plus `sustained_violation_time` (which belongs
/// to the CPU limit).
fn context_aware_restart(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
) -> (RestartTuning, Option<Duration>) {
    let keys = [
        "default",
        "health_failures",
        "resource_violations",
        "startup_grace_period",
        "sustained_violation_time",
    ];
    let mut t = RestartTuning::default();
    let Some(m) = cx.map(node, path, &keys) else {
        return (t, None);
    };
    if let Some(n) = m.get("default") {
        if let Some(d) = cx.map(n, &m.at("default"), &sections::RESTART_KEYS) {
            sections::restart_fields(cx, &d, &mut t);
        }
    }
    sections::trigger_fields(cx, &m, &mut t);
    let sustained = m.field(cx, "sustained_violation_time", Ctx::duration);
    (t, sustained)
}

/// `management.unmanaged.control`: what applies to a process the manager never starts.
fn unmanaged_control(cx: &mut Ctx, node: &Node, path: &str) -> Option<ControlSpec> {
    let m: Map = cx.map(node, path, &["graceful_timeout", "stop_signal", "limits"])?;
    let mut c = ControlSpec::new(PathBuf::new(), cx.dir.clone());
    c.graceful_timeout = m
        .field(cx, "graceful_timeout", Ctx::duration)
        .unwrap_or(c.graceful_timeout);
    c.stop_signal = m
        .field(cx, "stop_signal", sections::stop_signal)
        .unwrap_or_default();
    if let Some(n) = m.get("limits") {
        c.limits = limits::nested(cx, n, &m.at("limits"), ProcessType::Unmanaged, None);
    }
    Some(c)
}
