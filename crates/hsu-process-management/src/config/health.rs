//! Health checks: the canonical `health_check` and the nested form's
//! `health_check{type, http_endpoint, run_options}`.

use super::ctx::{Ctx, Map};
use super::manager::positive_duration;
use super::yaml::Node;
use hsu_managed_process::{HealthCheckKind, HealthCheckSpec};

const KINDS: [&str; 5] = ["process", "http", "grpc", "tcp", "exec"];
/// The kinds configured by a sub-mapping of the same name.
const SUB_KINDS: [&str; 4] = ["http", "grpc", "tcp", "exec"];

/// Canonical `management.health_check`.
pub(crate) fn canonical(cx: &mut Ctx, node: &Node, path: &str) -> HealthCheckSpec {
    const KEYS: [&str; 11] = [
        "type",
        "http",
        "grpc",
        "tcp",
        "exec",
        "interval",
        "timeout",
        "initial_delay",
        "failure_threshold",
        "success_threshold",
        "startup_grace_period",
    ];
    let mut spec = HealthCheckSpec::default();
    let Some(m) = cx.map_with_hints(node, path, &KEYS, &["http_endpoint", "run_options"]) else {
        return spec;
    };
    let probe;
    (spec.kind, probe) = kind(cx, &m, false);
    timing(cx, &m, &mut spec, "failure_threshold", probe);
    spec.success_threshold = m
        .field(cx, "success_threshold", Ctx::positive_u32)
        .unwrap_or(spec.success_threshold);
    spec.startup_grace_period = m
        .field(cx, "startup_grace_period", Ctx::duration)
        .unwrap_or(spec.startup_grace_period);
    spec
}

/// Nested `management.<type>.health_check`. Besides `http_endpoint`, the canonical
/// `http`/`grpc`/`tcp`/`exec` sub-mappings are accepted, so every kind can be used.
pub(crate) fn nested(cx: &mut Ctx, node: &Node, path: &str) -> HealthCheckSpec {
    const KEYS: [&str; 7] = [
        "type",
        "http_endpoint",
        "http",
        "grpc",
        "tcp",
        "exec",
        "run_options",
    ];
    const RUN_KEYS: [&str; 5] = ["enabled", "interval", "timeout", "initial_delay", "retries"];
    let canonical = ["interval", "timeout", "initial_delay", "failure_threshold"];
    let mut spec = HealthCheckSpec::default();
    let Some(m) = cx.map_with_hints(node, path, &KEYS, &canonical) else {
        return spec;
    };
    let probe;
    (spec.kind, probe) = kind(cx, &m, true);
    let Some(run) = m.get("run_options") else {
        return spec;
    };
    let Some(r) = cx.map(run, &m.at("run_options"), &RUN_KEYS) else {
        return spec;
    };
    timing(cx, &r, &mut spec, "retries", probe);
    if r.field(cx, "enabled", Ctx::boolean) == Some(false) {
        spec.kind = HealthCheckKind::Process;
    }
    spec
}

/// interval / timeout / initial_delay and the failure threshold (named `failures`).
/// `probe`: the check is (or was meant to be) a probe, whether or not its own settings
/// were valid, so the rule between interval and timeout applies.
fn timing(cx: &mut Ctx, m: &Map, spec: &mut HealthCheckSpec, failures: &str, probe: bool) {
    let interval = m.field(cx, "interval", positive_duration);
    let timeout = m.field(cx, "timeout", positive_duration);
    // A value given but invalid is already reported; comparing the default in its
    // place would only add a confusing second problem.
    let both_known =
        (interval.is_some() || !m.has("interval")) && (timeout.is_some() || !m.has("timeout"));
    spec.interval = interval.unwrap_or(spec.interval);
    spec.timeout = timeout.unwrap_or(spec.timeout);
    spec.initial_delay = m
        .field(cx, "initial_delay", Ctx::duration)
        .unwrap_or(spec.initial_delay);
    spec.failure_threshold = m
        .field(cx, failures, Ctx::positive_u32)
        .unwrap_or(spec.failure_threshold);
    // A liveness check is event-driven: interval and timeout do not apply to it.
    if probe && both_known && spec.timeout >= spec.interval {
        let key = if m.has("timeout") {
            "timeout"
        } else {
            "interval"
        };
        let message = format!(
            "timeout ({}) must be less than interval ({})",
            humantime::format_duration(spec.timeout),
            humantime::format_duration(spec.interval)
        );
        cx.report(m.get(key).unwrap_or(m.node), &m.at(key), message);
    }
}

/// The check kind: `type`, or (when absent) the one sub-mapping given, else `process`;
/// and whether it is a probe (not `process`). When the kind cannot be decided, the
/// settings given are still checked, and it counts as a probe.
fn kind(cx: &mut Ctx, m: &Map, nested: bool) -> (HealthCheckKind, bool) {
    let given: Vec<&str> = SUB_KINDS
        .into_iter()
        .filter(|k| m.has(k) || (nested && *k == "http" && m.has("http_endpoint")))
        .collect();
    let options = KINDS.map(|k| (k, k));
    let named = m.field(cx, "type", |cx, n, p| cx.choice(n, p, &options));
    let chosen = match (named, given.as_slice()) {
        (Some(t), _) => t,
        (None, [only]) if !m.has("type") => only,
        (None, []) if !m.has("type") => "process",
        (None, _) if !m.has("type") => {
            let message = format!(
                "settings for several kinds given ({}); set `type`",
                given.join(", ")
            );
            cx.report(m.node, &m.at("type"), message);
            for k in given {
                build(cx, m, k, nested);
            }
            return (HealthCheckKind::Process, true);
        }
        // `type` was given but invalid: already reported.
        (None, _) => {
            for k in given {
                build(cx, m, k, nested);
            }
            return (HealthCheckKind::Process, true);
        }
    };
    for other in SUB_KINDS.iter().filter(|k| **k != chosen) {
        m.forbid(cx, other, &format!("is only used with `type: {other}`"));
    }
    if chosen != "http" {
        m.forbid(cx, "http_endpoint", "is only used with `type: http`");
    }
    let probe = chosen != "process";
    let kind = build(cx, m, chosen, nested).unwrap_or(HealthCheckKind::Process);
    (kind, probe)
}

fn build(cx: &mut Ctx, m: &Map, chosen: &str, nested: bool) -> Option<HealthCheckKind> {
    if chosen == "process" {
        return Some(HealthCheckKind::Process);
    }
    if chosen == "http" && m.has("http_endpoint") {
        if m.has("http") {
            m.forbid(
                cx,
                "http_endpoint",
                "cannot be given together with `http`; give one",
            );
            // Both are still checked, so that fixing one problem reveals no other.
            m.field(cx, "http_endpoint", url);
            if let Some(sub) = m.get("http") {
                http(cx, sub, &m.at("http"));
            }
            return None;
        }
        let url = m.field(cx, "http_endpoint", url)?;
        let method = "GET".to_string();
        return Some(HealthCheckKind::Http { url, method });
    }
    let Some(sub) = m.get(chosen) else {
        let example = match chosen {
            "http" if nested => "`http_endpoint: <url>`",
            "http" => "`http: {url: ...}`",
            "grpc" => "`grpc: {address: host:port}`",
            "tcp" => "`tcp: {address: host:port}`",
            _ => "`exec: {command: ...}`",
        };
        let key = if nested && chosen == "http" {
            "http_endpoint"
        } else {
            chosen
        };
        m.missing(cx, key, &format!("`type: {chosen}` needs {example}"));
        return None;
    };
    let path = m.at(chosen);
    match chosen {
        "http" => http(cx, sub, &path),
        "grpc" => grpc(cx, sub, &path),
        "tcp" => tcp(cx, sub, &path),
        _ => exec(cx, sub, &path),
    }
}

fn http(cx: &mut Ctx, node: &Node, path: &str) -> Option<HealthCheckKind> {
    let m = cx.map(node, path, &["url", "method"])?;
    let method = m
        .field(cx, "method", Ctx::non_empty)
        .map(|s| s.trim().to_ascii_uppercase())
        .unwrap_or_else(|| "GET".to_string());
    let url = required(cx, &m, "url", url)?;
    Some(HealthCheckKind::Http { url, method })
}

fn grpc(cx: &mut Ctx, node: &Node, path: &str) -> Option<HealthCheckKind> {
    let m = cx.map(node, path, &["address", "service"])?;
    let service = m.field(cx, "service", Ctx::string).unwrap_or_default();
    let address = required(cx, &m, "address", address)?;
    Some(HealthCheckKind::Grpc { address, service })
}

fn tcp(cx: &mut Ctx, node: &Node, path: &str) -> Option<HealthCheckKind> {
    let m = cx.map(node, path, &["address"])?;
    let address = required(cx, &m, "address", address)?;
    Some(HealthCheckKind::Tcp { address })
}

fn exec(cx: &mut Ctx, node: &Node, path: &str) -> Option<HealthCheckKind> {
    let m = cx.map(node, path, &["command", "arguments"])?;
    let arguments = m.field(cx, "arguments", Ctx::arguments).unwrap_or_default();
    let command = required(cx, &m, "command", Ctx::program)?;
    Some(HealthCheckKind::Exec { command, arguments })
}

fn required<T>(
    cx: &mut Ctx,
    m: &Map,
    key: &str,
    read: impl FnOnce(&mut Ctx, &Node, &str) -> Option<T>,
) -> Option<T> {
    if !m.has(key) {
        m.missing(cx, key, "");
        return None;
    }
    m.field(cx, key, read)
}

fn url(cx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    let url = cx.non_empty(node, path)?;
    if url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        cx.report(
            node,
            path,
            "https health checks are not supported (no TLS client is built in); use `tcp`, \
             or an `exec` check running curl",
        );
        return None;
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        cx.report(
            node,
            path,
            format!("`{url}` is not an http:// or https:// URL"),
        );
        return None;
    }
    Some(url)
}

/// `host:port`, e.g. `127.0.0.1:9090` or `[::1]:9090`.
fn address(cx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    let address = cx.non_empty(node, path)?;
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        cx.report(
            node,
            path,
            format!("`{address}` is not a `host:port` address"),
        );
        return None;
    }
    Some(address)
}
