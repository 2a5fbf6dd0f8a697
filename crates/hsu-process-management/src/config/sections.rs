//! Sections shared by both config forms: restart tuning, environment, per-process log
//! collection, discovery, and the small enums.

use super::ctx::{Ctx, Map};
use super::manager::positive_duration;
use super::values::suggest;
use super::yaml::{Node, Value};
use hsu_common::StopSignal;
use hsu_managed_process::{
    DiscoveryMethod, DiscoverySpec, ProcessLogCollection, RestartPolicy, RestartTuning,
    TriggerOverride,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// How often an unmanaged process is looked for, when not given.
pub(crate) const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The backoff and breaker keys both forms share (canonical `restart`, nested
/// `context_aware_restart.default`).
pub(crate) const RESTART_KEYS: [&str; 7] = [
    "retry_delay",
    "backoff_rate",
    "max_delay",
    "reset_after",
    "max_retries",
    "window",
    "cooldown",
];

/// Reads the [`RESTART_KEYS`] present in `m` into `t`, then checks them together.
pub(crate) fn restart_fields(cx: &mut Ctx, m: &Map, t: &mut RestartTuning) {
    let retry_delay = m.field(cx, "retry_delay", Ctx::duration);
    t.backoff_rate = m
        .field(cx, "backoff_rate", backoff_rate)
        .unwrap_or(t.backoff_rate);
    let max_delay = m.field(cx, "max_delay", Ctx::duration);
    // A value given but invalid is already reported; comparing the default in its
    // place would only add a confusing second problem.
    let both_known = (retry_delay.is_some() || !m.has("retry_delay"))
        && (max_delay.is_some() || !m.has("max_delay"));
    t.retry_delay = retry_delay.unwrap_or(t.retry_delay);
    t.max_delay = max_delay.unwrap_or(t.max_delay);
    t.reset_after = m
        .field(cx, "reset_after", Ctx::duration)
        .unwrap_or(t.reset_after);
    t.max_retries = m
        .field(cx, "max_retries", Ctx::u32)
        .unwrap_or(t.max_retries);
    t.window = m.field(cx, "window", positive_duration).unwrap_or(t.window);
    t.cooldown = m.field(cx, "cooldown", Ctx::duration).unwrap_or(t.cooldown);
    if both_known && t.max_delay < t.retry_delay {
        let key = if m.has("max_delay") {
            "max_delay"
        } else {
            "retry_delay"
        };
        let at = m.get(key).unwrap_or(m.node);
        let message = format!(
            "max_delay ({}) must not be less than retry_delay ({})",
            humantime::format_duration(t.max_delay),
            humantime::format_duration(t.retry_delay)
        );
        cx.report(at, &m.at(key), message);
    }
}

/// The keys both forms share beside the base tuning: the per-trigger overrides
/// (`health_failures`, `resource_violations`) and `startup_grace_period`.
pub(crate) fn trigger_fields(cx: &mut Ctx, m: &Map, t: &mut RestartTuning) {
    if let Some(n) = m.get("health_failures") {
        t.health_failures = trigger_override(cx, n, &m.at("health_failures"));
    }
    if let Some(n) = m.get("resource_violations") {
        t.resource_violations = trigger_override(cx, n, &m.at("resource_violations"));
    }
    t.startup_grace_period = m
        .field(cx, "startup_grace_period", Ctx::duration)
        .unwrap_or_default();
}

/// `health_failures` / `resource_violations`: overrides of the process-wide tuning.
pub(crate) fn trigger_override(cx: &mut Ctx, node: &Node, path: &str) -> TriggerOverride {
    let mut o = TriggerOverride::default();
    let keys = ["retry_delay", "backoff_rate", "max_retries"];
    if let Some(m) = cx.map(node, path, &keys) {
        o.retry_delay = m.field(cx, "retry_delay", Ctx::duration);
        o.backoff_rate = m.field(cx, "backoff_rate", backoff_rate);
        o.max_retries = m.field(cx, "max_retries", Ctx::u32);
    }
    o
}

fn backoff_rate(cx: &mut Ctx, node: &Node, path: &str) -> Option<f64> {
    let rate = cx.number(node, path)?;
    if rate < 1.0 {
        let message =
            format!("must be at least 1.0 (1.0 = the same delay every time), found {rate}");
        cx.report(node, path, message);
        return None;
    }
    Some(rate)
}

pub(crate) fn restart_policy(cx: &mut Ctx, node: &Node, path: &str) -> Option<RestartPolicy> {
    cx.choice(
        node,
        path,
        &[
            ("never", RestartPolicy::Never),
            ("on_failure", RestartPolicy::OnFailure),
            ("always", RestartPolicy::Always),
        ],
    )
}

/// `SIGTERM`, `TERM` or `sigterm`.
pub(crate) fn stop_signal(cx: &mut Ctx, node: &Node, path: &str) -> Option<StopSignal> {
    let text = cx.string(node, path)?;
    text.parse().ok().or_else(|| {
        let upper = text.trim().to_ascii_uppercase();
        let wanted = format!("sig{}", upper.strip_prefix("SIG").unwrap_or(&upper)).to_lowercase();
        let lower: Vec<String> = StopSignal::NAMES.iter().map(|n| n.to_lowercase()).collect();
        let candidates: Vec<&str> = lower.iter().map(String::as_str).collect();
        let hint = suggest(&wanted, &candidates)
            .map(|s| format!("; did you mean `{}`?", s.to_uppercase()))
            .unwrap_or_default();
        let message = format!(
            "unknown signal `{text}`; expected one of: {}{hint}",
            StopSignal::NAMES.join(", "),
        );
        cx.report(node, path, message);
        None
    })
}

/// A map of variables, or a list of `NAME=value` strings.
pub(crate) fn environment(cx: &mut Ctx, node: &Node, path: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match &node.value {
        Value::Map(entries) => {
            env = cx.text_map(node, path, false);
            for (name, at) in env_names(node) {
                check_env_name(cx, at, &format!("{path}.{name}"), name);
            }
            for entry in entries {
                if let Some(value) = env.get(entry.name()) {
                    let value_path = format!("{path}.{}", entry.name());
                    cx.no_nul(&entry.value, &value_path, value);
                }
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                if let Some((name, value)) = env_item(cx, item, &item_path) {
                    if env.insert(name.clone(), value).is_some() {
                        cx.report(item, &item_path, format!("`{name}` is set twice"));
                    }
                }
            }
        }
        _ => {
            let message = format!(
                "expected a mapping of variables or a list of \"NAME=value\" strings, found {}",
                node.kind_name()
            );
            cx.report(node, path, message);
        }
    }
    env
}

fn env_names(node: &Node) -> Vec<(&str, &Node)> {
    match &node.value {
        Value::Map(entries) => entries.iter().map(|e| (e.name(), &e.key)).collect(),
        _ => Vec::new(),
    }
}

fn env_item(cx: &mut Ctx, node: &Node, path: &str) -> Option<(String, String)> {
    let text = cx.os_string(node, path)?;
    let Some((name, value)) = text.split_once('=') else {
        cx.report(
            node,
            path,
            format!("`{text}` has no `=`; write \"NAME=value\""),
        );
        return None;
    };
    check_env_name(cx, node, path, name).then(|| (name.to_string(), value.to_string()))
}

fn check_env_name(cx: &mut Ctx, at: &Node, path: &str, name: &str) -> bool {
    if name.contains('\0') {
        let message = "the variable name contains a NUL byte (`\\0`), which cannot be \
                       passed to a process";
        cx.report(at, path, message);
        return false;
    }
    let ok = !name.is_empty() && !name.contains('=');
    if !ok {
        cx.report(at, path, format!("`{name}` is not a valid variable name"));
    }
    ok
}

/// The longest user or group name accepted (the usual limit of `useradd`).
pub(crate) const MAX_ACCOUNT_NAME: usize = 32;

/// `user` / `group`: a name or a numeric id. Whether it exists is checked when the
/// process starts (it may be created after the config is written).
pub(crate) fn account(cx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    let text = cx.os_non_empty(node, path)?;
    let digits = text.strip_prefix('-').unwrap_or(&text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // u32::MAX is (uid_t)-1, which means "no change" to setuid/setgid.
        return match text.parse::<u32>() {
            Ok(id) if id < u32::MAX => Some(text),
            _ if text.starts_with('-') => {
                cx.report(
                    node,
                    path,
                    format!("a numeric id cannot be negative, found {text}"),
                );
                None
            }
            _ => {
                let message = format!("out of range (max {}), found {text}", u32::MAX - 1);
                cx.report(node, path, message);
                None
            }
        };
    }
    let chars = text.chars().count();
    if chars > MAX_ACCOUNT_NAME || text.chars().any(char::is_whitespace) {
        let message = format!(
            "`{}` is not a user or group name: a name is at most {MAX_ACCOUNT_NAME} \
             characters, without spaces (or give a numeric id)",
            super::values::shown(&text)
        );
        cx.report(node, path, message);
        return None;
    }
    Some(text)
}

/// Per-process `log_collection`. The nested form also has `processing` and `outputs`,
/// accepted for compatibility and not acted on.
pub(crate) fn process_log_collection(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    nested: bool,
) -> ProcessLogCollection {
    let mut l = ProcessLogCollection::default();
    let keys: &[&str] = if nested {
        &[
            "enabled",
            "capture_stdout",
            "capture_stderr",
            "processing",
            "outputs",
        ]
    } else {
        &["enabled", "capture_stdout", "capture_stderr"]
    };
    if let Some(m) = cx.map(node, path, keys) {
        l.enabled = m.field(cx, "enabled", Ctx::boolean).unwrap_or(l.enabled);
        l.capture_stdout = m
            .field(cx, "capture_stdout", Ctx::boolean)
            .unwrap_or(l.capture_stdout);
        l.capture_stderr = m
            .field(cx, "capture_stderr", Ctx::boolean)
            .unwrap_or(l.capture_stderr);
    }
    l
}

const DISCOVERY_METHODS: [&str; 3] = ["pid_file", "process_name", "port"];

/// How an unmanaged process is found.
pub(crate) fn discovery(cx: &mut Ctx, node: &Node, path: &str) -> Option<DiscoverySpec> {
    let keys = [
        "method",
        "pid_file",
        "process_name",
        "port",
        "check_interval",
    ];
    let m = cx.map(node, path, &keys)?;
    let check_interval = m
        .field(cx, "check_interval", positive_duration)
        .unwrap_or(DEFAULT_CHECK_INTERVAL);
    let Some(method) = discovery_method(cx, &m) else {
        // The method is unknown: still check the value of each method key given.
        for key in DISCOVERY_METHODS {
            if let Some(value) = m.get(key) {
                discovery_value(cx, key, value, &m.at(key));
            }
        }
        return None;
    };
    for other in DISCOVERY_METHODS.iter().filter(|k| **k != method) {
        m.forbid(cx, other, &format!("is only used with `method: {other}`"));
    }
    let Some(value) = m.get(method) else {
        m.missing(cx, method, &format!("`method: {method}` needs `{method}`"));
        return None;
    };
    let method = discovery_value(cx, method, value, &m.at(method))?;
    Some(DiscoverySpec {
        method,
        check_interval,
    })
}

/// The value of a discovery method's key (`pid_file`, `process_name` or `port`).
fn discovery_value(
    cx: &mut Ctx,
    method: &str,
    value: &Node,
    path: &str,
) -> Option<DiscoveryMethod> {
    Some(match method {
        "pid_file" => DiscoveryMethod::PidFile(cx.path(value, path)?),
        "process_name" => DiscoveryMethod::ProcessName(cx.non_empty(value, path)?),
        _ => DiscoveryMethod::Port(port(cx, value, path)?),
    })
}

/// The method named, or (when absent) the one whose field alone is given.
fn discovery_method(cx: &mut Ctx, m: &Map) -> Option<&'static str> {
    let options = DISCOVERY_METHODS.map(|k| (k, k));
    if let Some(n) = m.get("method") {
        return cx.choice(n, &m.at("method"), &options);
    }
    let given: Vec<&'static str> = DISCOVERY_METHODS.into_iter().filter(|k| m.has(k)).collect();
    match given.as_slice() {
        [only] => Some(only),
        _ => {
            m.missing(
                cx,
                "method",
                "give `method` (pid_file, process_name or port), or just one of those keys",
            );
            None
        }
    }
}

/// A TCP port a process listens on (1-65535).
pub(crate) fn port(cx: &mut Ctx, node: &Node, path: &str) -> Option<u16> {
    match cx.u16(node, path)? {
        0 => {
            cx.report(node, path, "must be a port number from 1 to 65535");
            None
        }
        p => Some(p),
    }
}

/// Nested form `process_file`: a path, or `{base_directory, use_process_id}`. Accepted
/// for compatibility and not acted on: the manager always keeps PID files under its
/// base directory.
pub(crate) fn process_file(cx: &mut Ctx, node: &Node, path: &str) {
    if let Value::Str(_) = node.value {
        return;
    }
    if let Some(m) = cx.map(node, path, &["base_directory", "use_process_id"]) {
        m.field(cx, "base_directory", Ctx::string);
        m.field(cx, "use_process_id", Ctx::boolean);
    }
}
