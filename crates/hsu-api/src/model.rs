//! The JSON bodies of the API, shared by server and client. Where SPEC §7 lists the
//! values of a field (state, health status, circuit, type, log stream), the field is an
//! enum, serialized as the same snake_case words.

use hsu_process_management::{HealthStatus as CheckVerdict, ProcessView, Stream};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;
use utoipa::ToSchema;

/// Declares a closed list of words: an enum serialized as its snake_case names, with
/// `as_str`, `Display` and `FromStr` (an unknown word is [`UnknownValue`]).
macro_rules! words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in the documented order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownValue {
                        field: stringify!($name),
                        value: s.to_owned(),
                        expected: $name::ALL.iter().map(|v| v.as_str()).collect(),
                    })
            }
        }
    };
}

/// A word that is not one of a field's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {field} (expected one of: {})", .expected.join(", "))]
pub struct UnknownValue {
    /// The type of the field, e.g. `State`.
    pub field: &'static str,
    /// The word that was given.
    pub value: String,
    /// The words the field accepts, in the documented order.
    pub expected: Vec<&'static str>,
}

words! {
    /// A process's state (SPEC §5).
    State {
        /// Not running, and not about to be started.
        Stopped => "stopped",
        /// Spawned, waiting for its first passing health check.
        Starting => "starting",
        /// Running.
        Running => "running",
        /// Being stopped; its tree is not gone yet.
        Stopping => "stopping",
        /// Exited or could not start; may be waiting for a restart (`next_restart_at`).
        Failed => "failed",
    }
}

words! {
    /// How much of a process the manager owns.
    ProcessType {
        /// Spawned and supervised by the manager.
        StandardManaged => "standard_managed",
        /// Spawned and supervised, and serves `hsu.core.v1.CoreService` to the manager.
        IntegratedManaged => "integrated_managed",
        /// Started elsewhere; the manager only watches it and cannot start or stop it.
        Unmanaged => "unmanaged",
    }
}

words! {
    /// The health checks' verdict.
    HealthStatus {
        /// The checks pass.
        Healthy => "healthy",
        /// The checks fail.
        Unhealthy => "unhealthy",
        /// Not checked (not running, or no verdict yet).
        Unknown => "unknown",
    }
}

words! {
    /// The circuit breaker's position.
    Circuit {
        /// Restarts happen as usual.
        Closed => "closed",
        /// Too many restarts: automatic restarts are held off until the cooldown ends.
        Open => "open",
        /// The cooldown is over and one trial start is let through.
        HalfOpen => "half_open",
    }
}

words! {
    /// One captured output stream of a process.
    LogStream {
        /// Standard output.
        Stdout => "stdout",
        /// Standard error.
        Stderr => "stderr",
    }
}

impl From<hsu_common::ProcessState> for State {
    fn from(s: hsu_common::ProcessState) -> Self {
        use hsu_common::ProcessState as S;
        match s {
            S::Stopped => State::Stopped,
            S::Starting => State::Starting,
            S::Running => State::Running,
            S::Stopping => State::Stopping,
            S::Failed => State::Failed,
        }
    }
}

impl From<hsu_managed_process::ProcessType> for ProcessType {
    fn from(t: hsu_managed_process::ProcessType) -> Self {
        use hsu_managed_process::ProcessType as T;
        match t {
            T::StandardManaged => ProcessType::StandardManaged,
            T::IntegratedManaged => ProcessType::IntegratedManaged,
            T::Unmanaged => ProcessType::Unmanaged,
        }
    }
}

impl From<CheckVerdict> for HealthStatus {
    fn from(h: CheckVerdict) -> Self {
        match h {
            CheckVerdict::Healthy => HealthStatus::Healthy,
            CheckVerdict::Unhealthy => HealthStatus::Unhealthy,
            CheckVerdict::Unknown => HealthStatus::Unknown,
        }
    }
}

impl From<hsu_managed_process::Circuit> for Circuit {
    fn from(c: hsu_managed_process::Circuit) -> Self {
        use hsu_managed_process::Circuit as C;
        match c {
            C::Closed => Circuit::Closed,
            C::Open => Circuit::Open,
            C::HalfOpen => Circuit::HalfOpen,
        }
    }
}

impl From<LogStream> for Stream {
    fn from(s: LogStream) -> Self {
        match s {
            LogStream::Stdout => Stream::Stdout,
            LogStream::Stderr => Stream::Stderr,
        }
    }
}

/// A process as the API shows it (SPEC §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Process {
    /// The process's id, as configured.
    pub id: String,
    /// `type`: how much of the process the manager owns.
    #[serde(rename = "type")]
    pub process_type: ProcessType,
    /// Its current state.
    pub state: State,
    /// PID of the main process while it runs; null otherwise.
    pub pid: Option<u32>,
    /// RFC 3339, while running.
    pub started_at: Option<String>,
    /// Seconds since it started, while running.
    pub uptime_secs: Option<u64>,
    /// How many times the manager restarted it automatically.
    pub restart_count: u32,
    /// How it last ended; null if it has not exited yet.
    pub last_exit: Option<LastExit>,
    /// Why it is in its state, in words (e.g. `exited with code 3`).
    pub reason: String,
    /// The health checks' latest verdict.
    pub health: Health,
    /// The position of its restart circuit breaker.
    pub circuit: Circuit,
    /// RFC 3339, while a restart (or a breaker trial) is scheduled.
    pub next_restart_at: Option<String>,
    /// Usage of the whole process tree, sampled every `resource_sample_interval`; null
    /// while it does not run (or before its first sample).
    pub resources: Option<Resources>,
    /// The configured limits, as in the config.
    #[schema(value_type = Object)]
    pub limits: serde_json::Value,
    /// The nested config form's `profile_type` (null when not given).
    #[serde(default)]
    pub profile_type: Option<String>,
    /// The config's free-form `metadata` labels (empty when none).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Its `depends_on` entries (empty when none).
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    /// While it waits to start: the dependencies not met yet, as `id (condition)`.
    #[serde(default)]
    pub waiting_for: Vec<String>,
    /// How its limits are held, raised limits and alerts.
    #[serde(default)]
    pub limit_status: LimitStatus,
    /// Its captured streams (absent before a stream was first captured).
    #[serde(default)]
    pub logs: BTreeMap<String, LogStreamStatus>,
    /// The current run was started by an earlier manager and adopted after a manager
    /// restart (its exit status will not be known).
    #[serde(default)]
    pub adopted: bool,
}

/// What was captured of one stream (`logs` of [`Process`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogStreamStatus {
    /// Bytes written to its file (timestamps included).
    pub bytes_written: u64,
    /// Lines written to its file.
    pub lines_written: u64,
    /// Bytes that could not be written (a full disk, an I/O error) and were dropped.
    pub bytes_dropped: u64,
    /// Lines dropped.
    pub lines_dropped: u64,
    /// Writing fails right now (retried with every new line).
    pub failing: bool,
    /// Rotations of its file so far.
    pub rotations: u64,
}

/// How a process's limits are held (`limit_status` of [`Process`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct LimitStatus {
    /// Who holds each configured limit of the current run.
    pub enforcement: Vec<LimitEnforcement>,
    /// Limits raised by `restart_adjusted` for the next runs.
    pub adjusted: Vec<AdjustedLimit>,
    /// Limits with policy `alert` crossed and not back under yet.
    pub alerts: Vec<String>,
    /// Alerts raised since the manager started supervising the process.
    pub alerts_total: u64,
    /// A CPU throttle is held by stopping and continuing the tree.
    pub throttled: bool,
}

/// Who holds one limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LimitEnforcement {
    /// memory, cpu, file_descriptors or processes.
    pub resource: String,
    /// `cgroup` (the kernel, in the run's cgroup), `rlimit` (the kernel, a per-process
    /// limit) or `polling` (the manager samples and applies the policy).
    pub backend: String,
    /// In a few words: the kernel files, or what the polling does.
    pub detail: String,
}

/// A limit raised by `restart_adjusted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdjustedLimit {
    /// memory, cpu, file_descriptors or processes.
    pub resource: String,
    /// The configured limit.
    pub configured: f64,
    /// The limit in force.
    pub effective: f64,
    /// Why, in words.
    pub reason: String,
}

/// One `depends_on` entry (`depends_on` of [`Process`], edges of [`Graph`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dependency {
    /// The process depended on.
    pub id: String,
    /// What must hold of it: started, healthy, completed, completed_successfully or
    /// log_ready.
    pub condition: String,
    /// A restart of the dependency restarts this process too (`restart: propagate`).
    pub propagate_restart: bool,
}

/// The dependency graph (`GET /api/v1/graph`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Graph {
    /// Every process.
    pub nodes: Vec<GraphNode>,
    /// Every `depends_on` entry: `from` depends on `to`.
    pub edges: Vec<GraphEdge>,
    /// Layers of ids: each starts once the layers before it meet their conditions, its
    /// processes in parallel; shutdown goes through them backwards.
    pub start_order: Vec<Vec<String>>,
}

/// A process in the [`Graph`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GraphNode {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: State,
    /// While it waits to start: the dependencies not met yet.
    pub waiting_for: Vec<String>,
}

/// A `depends_on` entry in the [`Graph`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GraphEdge {
    /// The dependent.
    pub from: String,
    /// What it depends on.
    pub to: String,
    /// What must hold of `to`.
    pub condition: String,
    /// A restart of `to` restarts `from`.
    pub propagate_restart: bool,
}

impl Graph {
    /// The API view of the facade's graph.
    pub fn from_view(g: &hsu_process_management::facade::GraphView) -> Graph {
        Graph {
            nodes: g
                .nodes
                .iter()
                .map(|n| GraphNode {
                    id: n.id.clone(),
                    state: n.state.into(),
                    waiting_for: n.waiting_for.clone(),
                })
                .collect(),
            edges: g
                .edges
                .iter()
                .map(|e| GraphEdge {
                    from: e.from.clone(),
                    to: e.to.clone(),
                    condition: e.condition.as_str().into(),
                    propagate_restart: e.propagate_restart,
                })
                .collect(),
            start_order: g.start_order.clone(),
        }
    }
}

/// How a process last ended (`last_exit` of [`Process`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LastExit {
    /// Its exit code; null if a signal killed it.
    pub code: Option<i32>,
    /// The number of the signal that killed it; null if it exited on its own.
    pub signal: Option<i32>,
    /// RFC 3339
    pub at: String,
}

/// A process's health (`health` of [`Process`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// The verdict: healthy, unhealthy or unknown.
    pub status: HealthStatus,
    /// Failed checks in a row since the last passing one.
    pub consecutive_failures: u32,
    /// RFC 3339 time of the latest check; null until a check has actually run.
    pub last_check_at: Option<String>,
    /// The error the latest check reported, when it failed; null otherwise.
    pub last_error: Option<String>,
    /// How long the latest check took, in milliseconds; null until a check has run
    /// (and for the `process` check, which the kernel answers without probing).
    pub last_latency_ms: Option<f64>,
    /// The check that judges it: process, http, grpc, tcp or exec.
    pub check: String,
}

/// Resource usage of a process's whole tree (`resources` of [`Process`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    /// Resident memory of the whole tree.
    pub rss_bytes: u64,
    /// Percent of one core over the last sample interval (200 = two cores).
    pub cpu_percent: f64,
    /// CPU time of the tree's live members.
    pub cpu_seconds: f64,
    /// Open file descriptors of the tree.
    pub fds: u64,
    /// Members of the tree.
    pub processes: u64,
}

/// Every error body: `{"error": "...", "code": "not_found|conflict|invalid|unauthorized|..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// What went wrong, in words.
    pub error: String,
    /// The kind of error: `not_found`, `conflict`, `invalid`, `unauthorized` or `unavailable`.
    pub code: String,
    /// For an invalid config (reload): every problem, one `FILE:LINE:COL: path: message` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// The body of 202 answers to start/stop/restart and of shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The process acted on (absent for shutdown).
    pub id: Option<String>,
    /// The action that was done: start, stop, restart or shutdown.
    pub action: String,
    /// The process after the action (absent for shutdown).
    pub process: Option<Process>,
}

/// What a reload changed, by process id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReloadResult {
    /// New processes, now started.
    pub added: Vec<String>,
    /// Processes no longer in the config, now stopped.
    pub removed: Vec<String>,
    /// Processes whose definition changed, now restarted.
    pub changed: Vec<String>,
    /// Processes left alone (same PID).
    pub unchanged: Vec<String>,
    /// Manager-wide settings the reload changed and applied (`log_level`), each
    /// `key: old -> new`. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_settings: Vec<String>,
    /// Manager-wide settings the reload changed that need a manager restart to take effect
    /// (port, bind, base directory, token file, ...), each `key: old -> new`; until then
    /// the old values stay in effect. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<String>,
}

/// `2026-11-26T05:02:58.873Z`: RFC 3339, UTC, milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Process {
    /// Builds the API view of a process.
    pub fn from_view(v: &ProcessView) -> Process {
        let s = &v.status;
        let def = &v.definition;
        let running = s.pid.is_some();
        let uptime_secs = s
            .started_at
            .filter(|_| running)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs());
        let health = Health {
            status: v.health.status.into(),
            consecutive_failures: v.health.consecutive_failures,
            last_check_at: v.health.last_check_at.map(rfc3339),
            last_error: v.health.last_error.clone(),
            last_latency_ms: v
                .health
                .last_latency
                .map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
            check: v.health_check_name().into(),
        };
        let limits = def
            .control
            .as_ref()
            .and_then(|c| serde_json::to_value(&c.limits).ok())
            .unwrap_or(serde_json::Value::Null);
        Process {
            id: s.id.clone(),
            process_type: s.process_type.into(),
            state: s.state.into(),
            pid: s.pid,
            started_at: s.started_at.filter(|_| running).map(rfc3339),
            uptime_secs,
            restart_count: s.restart_count,
            adopted: s.adopted,
            last_exit: s.last_exit.map(|e| LastExit {
                code: e.code,
                signal: e.signal,
                at: rfc3339(e.at),
            }),
            reason: s.reason.clone(),
            health,
            circuit: s.circuit.into(),
            next_restart_at: s.next_restart_at.map(rfc3339),
            resources: s.resources.map(|r| Resources {
                rss_bytes: r.rss_bytes,
                cpu_percent: (r.cpu_percent * 10.0).round() / 10.0,
                cpu_seconds: (r.cpu_seconds * 100.0).round() / 100.0,
                fds: r.fds,
                processes: r.processes,
            }),
            limits,
            profile_type: def.profile_type.clone(),
            metadata: def.metadata.clone(),
            depends_on: def
                .depends_on
                .iter()
                .map(|d| Dependency {
                    id: d.id.clone(),
                    condition: d.condition.as_str().into(),
                    propagate_restart: d.propagate_restart,
                })
                .collect(),
            waiting_for: v.waiting_for.clone(),
            limit_status: LimitStatus {
                enforcement: v
                    .limits
                    .enforcement
                    .iter()
                    .map(|(resource, backend, detail)| LimitEnforcement {
                        resource: resource.clone(),
                        backend: backend.clone(),
                        detail: detail.clone(),
                    })
                    .collect(),
                adjusted: v
                    .limits
                    .adjusted
                    .iter()
                    .map(|(resource, configured, effective, reason)| AdjustedLimit {
                        resource: resource.clone(),
                        configured: *configured,
                        effective: *effective,
                        reason: reason.clone(),
                    })
                    .collect(),
                alerts: v.limits.alerts.clone(),
                alerts_total: v.limits.alerts_total,
                throttled: v.limits.throttled,
            },
            logs: v
                .logs
                .iter()
                .map(|(stream, s)| {
                    let status = LogStreamStatus {
                        bytes_written: s.bytes_written,
                        lines_written: s.lines_written,
                        bytes_dropped: s.bytes_dropped,
                        lines_dropped: s.lines_dropped,
                        failing: s.failing,
                        rotations: s.rotations,
                    };
                    (stream.as_str().to_owned(), status)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_the_documented_strings() {
        let json = serde_json::to_string(&(
            State::Stopping,
            ProcessType::IntegratedManaged,
            HealthStatus::Unknown,
            Circuit::HalfOpen,
            LogStream::Stderr,
        ))
        .unwrap();
        assert_eq!(
            json,
            r#"["stopping","integrated_managed","unknown","half_open","stderr"]"#
        );
        for state in hsu_common::ProcessState::ALL {
            assert_eq!(State::from(state).as_str(), state.as_str());
        }
        assert_eq!("stdout".parse::<LogStream>(), Ok(LogStream::Stdout));
        let err = "journal".parse::<LogStream>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`journal` is not a LogStream (expected one of: stdout, stderr)"
        );
    }
}
