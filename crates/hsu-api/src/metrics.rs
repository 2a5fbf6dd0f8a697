//! `GET /metrics`: the processes, the manager itself and the API in the Prometheus text
//! exposition format (version 0.0.4).
//!
//! Per process (label `id`):
//! - `hsu_process_state{state}`: 1 for the current state, 0 for the other four;
//! - `hsu_process_up`: 1 while running; `hsu_process_uptime_seconds` (0 when not running);
//! - `hsu_process_restarts_total`: automatic restarts;
//! - `hsu_process_health`: 1 healthy, 0 unhealthy, -1 unknown;
//!   `hsu_process_health_consecutive_failures`; `hsu_process_health_check_duration_seconds`
//!   and `hsu_process_health_last_check_timestamp_seconds` (only once a probe has run);
//! - `hsu_process_circuit_open`: 1 while the circuit breaker is open (not half-open);
//! - `hsu_process_circuit_half_open`: 1 while the breaker lets one trial start through;
//! - `hsu_process_resident_memory_bytes`, `hsu_process_cpu_seconds_total`: only for
//!   processes whose resources are sampled (the families are always described).
//!
//! The manager: `hsu_manager_resident_memory_bytes`, `hsu_manager_cpu_seconds_total`,
//! `hsu_manager_open_fds`, `hsu_manager_start_time_seconds`, and the event journal's
//! `hsu_journal_write_failures_total`, `hsu_state_write_failures_total` (PID files and
//! `state.json`), and `hsu_manager_log_write_failures_total` (its own
//! log lines dropped or not written to stderr). The API:
//! `hsu_api_requests_total{protocol="http"|"grpc"}`, `hsu_api_unauthorized_total`,
//! `hsu_api_client_errors_total`.
//!
//! Captured output, per stream (labels `id`, `stream`) and per aggregation target (label
//! `target`): `hsu_log_bytes_written_total`, `hsu_log_lines_written_total`,
//! `hsu_log_bytes_dropped_total` and `hsu_log_lines_dropped_total` (not written: a full
//! disk, an I/O error), `hsu_log_write_failures_total` (failure episodes, one
//! `log_write_failed` event each), `hsu_log_write_failing` (1 while writing fails),
//! `hsu_log_buffered_bytes` (memory held for the stream now); and
//! `hsu_log_queue_bytes` (read, not yet written, all streams).

use crate::model::{Circuit, HealthStatus, Process, State};
use crate::ApiState;
use std::fmt::{Display, Write};
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The whole exposition, as of now.
pub(crate) fn render(api: &ApiState) -> String {
    let manager = &api.manager;
    let processes = api.list();
    let mut out = Exposition::default();

    out.family(
        "hsu_process_state",
        "gauge",
        "Current state of the process: 1 for the state it is in, 0 for the others.",
    );
    for p in &processes {
        for &state in State::ALL {
            let value = u8::from(p.state == state);
            out.sample(
                "hsu_process_state",
                &[("id", &p.id), ("state", state.as_str())],
                value,
            );
        }
    }
    out.per_process(
        &processes,
        "hsu_process_up",
        "gauge",
        "1 while the process is running, else 0.",
        |p| Some(u8::from(p.state == State::Running).into()),
    );
    out.per_process(
        &processes,
        "hsu_process_uptime_seconds",
        "gauge",
        "Seconds since the process was started; 0 while it is not running.",
        |p| Some(p.uptime_secs.unwrap_or(0) as f64),
    );
    out.per_process(
        &processes,
        "hsu_process_restarts_total",
        "counter",
        "Automatic restarts since the manager started supervising the process.",
        |p| Some(p.restart_count.into()),
    );
    out.per_process(
        &processes,
        "hsu_process_health",
        "gauge",
        "Health of the process: 1 healthy, 0 unhealthy, -1 unknown.",
        |p| {
            Some(match p.health.status {
                HealthStatus::Healthy => 1.0,
                HealthStatus::Unhealthy => 0.0,
                HealthStatus::Unknown => -1.0,
            })
        },
    );
    out.per_process(
        &processes,
        "hsu_process_health_consecutive_failures",
        "gauge",
        "Failed health checks in a row since the last passing one.",
        |p| Some(p.health.consecutive_failures.into()),
    );
    out.per_process(
        &processes,
        "hsu_process_health_check_duration_seconds",
        "gauge",
        "How long the latest health check took, in seconds (probed processes only).",
        |p| p.health.last_latency_ms.map(|ms| ms / 1000.0),
    );
    out.per_process(
        &processes,
        "hsu_process_health_last_check_timestamp_seconds",
        "gauge",
        "Unix time of the latest health check (probed processes only).",
        |p| {
            let probed = p.health.last_latency_ms.is_some();
            let at = p.health.last_check_at.as_deref().filter(|_| probed)?;
            humantime::parse_rfc3339(at)
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64())
        },
    );
    out.per_process(
        &processes,
        "hsu_process_alerts_total",
        "counter",
        "Limits with policy alert crossed since the manager started supervising the process.",
        |p| Some(p.limit_status.alerts_total as f64),
    );
    out.per_process(
        &processes,
        "hsu_process_throttled",
        "gauge",
        "1 while the manager holds a CPU throttle by stopping and continuing the tree.",
        |p| Some(u8::from(p.limit_status.throttled).into()),
    );
    out.per_process(
        &processes,
        "hsu_process_circuit_open",
        "gauge",
        "1 while the process's circuit breaker is open, else 0 (half-open is counted apart).",
        |p| Some(u8::from(p.circuit == Circuit::Open).into()),
    );
    out.per_process(
        &processes,
        "hsu_process_circuit_half_open",
        "gauge",
        "1 while the process's circuit breaker is half-open (one trial start let through), else 0.",
        |p| Some(u8::from(p.circuit == Circuit::HalfOpen).into()),
    );
    out.per_process(
        &processes,
        "hsu_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the whole process tree, in bytes (sampled processes only).",
        |p| p.resources.as_ref().map(|r| r.rss_bytes as f64),
    );
    out.per_process(
        &processes,
        "hsu_process_cpu_seconds_total",
        "counter",
        "CPU time of the whole process tree, in seconds (sampled processes only).",
        |p| p.resources.as_ref().map(|r| r.cpu_seconds),
    );

    let usage = manager.usage();
    out.single(
        "hsu_manager_resident_memory_bytes",
        "gauge",
        "Resident memory of the manager, in bytes.",
        usage.map(|u| u.rss_bytes as f64),
    );
    out.single(
        "hsu_manager_cpu_seconds_total",
        "counter",
        "CPU time of the manager (user and system), in seconds.",
        usage.map(|u| u.cpu_seconds),
    );
    out.single(
        "hsu_manager_open_fds",
        "gauge",
        "File descriptors the manager has open.",
        usage.map(|u| u.open_fds as f64),
    );
    out.single(
        "hsu_manager_start_time_seconds",
        "gauge",
        "When the manager started, in seconds since the Unix epoch.",
        manager
            .started_at()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64()),
    );

    out.single(
        "hsu_journal_write_failures_total",
        "counter",
        "Event journal lines that could not be written (full disk, removed directory, writer too far behind).",
        Some(manager.journal_write_failures() as f64),
    );
    out.single(
        "hsu_state_write_failures_total",
        "counter",
        "Writes of PID files and state.json that failed (full disk, removed directory).",
        Some(manager.state_write_failures() as f64),
    );
    out.single(
        "hsu_manager_log_write_failures_total",
        "counter",
        "Lines of the manager's own log (stderr) dropped or not written (a dead or stalled reader).",
        Some(api.log_write_failures.load(Ordering::Relaxed) as f64),
    );

    log_metrics(&mut out, &manager.log_stats());

    let metrics = &api.metrics;
    out.family(
        "hsu_api_requests_total",
        "counter",
        "Requests the control API received, by protocol.",
    );
    for (protocol, counter) in [
        ("http", &metrics.http_requests),
        ("grpc", &metrics.grpc_requests),
    ] {
        out.sample(
            "hsu_api_requests_total",
            &[("protocol", protocol)],
            counter.load(Ordering::Relaxed),
        );
    }
    out.single(
        "hsu_api_unauthorized_total",
        "counter",
        "Requests refused for a missing or wrong token.",
        Some(metrics.unauthorized.load(Ordering::Relaxed) as f64),
    );
    out.single(
        "hsu_api_client_errors_total",
        "counter",
        "Requests answered with a 4xx status.",
        Some(metrics.client_errors.load(Ordering::Relaxed) as f64),
    );
    out.0
}

/// Captured output: one sample per stream and per aggregation target in each family.
fn log_metrics(out: &mut Exposition, stats: &hsu_process_management::facade::LogStats) {
    use hsu_process_management::facade::StreamStats;
    type Value = fn(&StreamStats) -> f64;
    let families: [(&str, &str, &str, Value); 7] = [
        (
            "hsu_log_bytes_written_total",
            "counter",
            "Captured output written to its file or target, in bytes (timestamps and formatting included).",
            |s| s.bytes_written as f64,
        ),
        (
            "hsu_log_lines_written_total",
            "counter",
            "Captured lines written to their file or target.",
            |s| s.lines_written as f64,
        ),
        (
            "hsu_log_bytes_dropped_total",
            "counter",
            "Captured output that could not be written (full disk, I/O error) and was dropped, in bytes.",
            |s| s.bytes_dropped as f64,
        ),
        (
            "hsu_log_lines_dropped_total",
            "counter",
            "Captured lines that could not be written and were dropped.",
            |s| s.lines_dropped as f64,
        ),
        (
            "hsu_log_write_failures_total",
            "counter",
            "Times writing a capture file or target started to fail (one log_write_failed event each).",
            |s| s.write_failures as f64,
        ),
        (
            "hsu_log_write_failing",
            "gauge",
            "1 while writing the capture file or target fails (retried with every new line), else 0.",
            |s| u8::from(s.failing).into(),
        ),
        (
            "hsu_log_buffered_bytes",
            "gauge",
            "Memory the manager holds for the stream now: read but not yet written, and an unfinished last line.",
            |s| s.buffered_bytes as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        for (id, stream, s) in &stats.streams {
            out.sample(name, &[("id", id), ("stream", stream.as_str())], value(s));
        }
        for (target, s) in &stats.targets {
            out.sample(name, &[("target", target)], value(s));
        }
    }
    out.single(
        "hsu_log_queue_bytes",
        "gauge",
        "Captured output read from the processes' pipes and not yet written, all streams together, in bytes.",
        Some(stats.queued_bytes as f64),
    );
}

/// Text being written in the exposition format.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"{}\"", escape_label_value(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// One family with a sample per process (`None`: no sample for that process).
    fn per_process(
        &mut self,
        processes: &[Process],
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(&Process) -> Option<f64>,
    ) {
        self.family(name, kind, help);
        for p in processes {
            if let Some(v) = value(p) {
                self.sample(name, &[("id", &p.id)], v);
            }
        }
    }

    /// A family of one unlabelled sample (`None`: described, no sample).
    fn single(&mut self, name: &str, kind: &str, help: &str, value: Option<f64>) {
        self.family(name, kind, help);
        if let Some(v) = value {
            self.sample(name, &[], v);
        }
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        let mut e = Exposition::default();
        e.sample("m", &[("id", "q\"")], 1.5);
        e.sample("n", &[], 2);
        assert_eq!(e.0, "m{id=\"q\\\"\"} 1.5\nn 2\n");
    }
}
