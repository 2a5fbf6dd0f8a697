//! The JSON bodies of the API, shared by server and client.

use hsu_managed_process::{ProcessDefinition, ProcessStatus};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use utoipa::ToSchema;

/// A process as the API shows it (SPEC §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Process {
    pub id: String,
    /// standard_managed | integrated_managed | unmanaged
    #[serde(rename = "type")]
    pub process_type: String,
    /// stopped | starting | running | stopping | failed
    pub state: String,
    pub pid: Option<u32>,
    /// RFC 3339, while running.
    pub started_at: Option<String>,
    pub uptime_secs: Option<u64>,
    pub restart_count: u32,
    pub last_exit: Option<LastExit>,
    pub reason: String,
    pub health: Health,
    /// closed | open | half_open
    pub circuit: String,
    /// RFC 3339, while a restart (or a breaker trial) is scheduled.
    pub next_restart_at: Option<String>,
    /// Usage of the whole process tree, sampled every `resource_sample_interval`; null
    /// while it does not run (or before its first sample).
    pub resources: Option<Resources>,
    /// The configured limits, as in the config.
    #[schema(value_type = Object)]
    pub limits: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// RFC 3339
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// healthy | unhealthy | unknown
    pub status: String,
    pub consecutive_failures: u32,
    pub last_check_at: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    /// Resident memory of the whole tree.
    pub rss_bytes: u64,
    /// Percent of one core over the last sample interval (200 = two cores).
    pub cpu_percent: f64,
    /// CPU time of the tree's live members.
    pub cpu_seconds: f64,
    pub fds: u64,
    /// Members of the tree.
    pub processes: u64,
}

/// Every error body: `{"error": "...", "code": "not_found|conflict|invalid|unauthorized|..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    pub error: String,
    pub code: String,
    /// For an invalid config (reload): every problem, one `FILE:LINE:COL: path: message` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// The body of 202 answers to start/stop/restart and of shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub id: Option<String>,
    pub action: String,
    /// The process after the action (absent for shutdown).
    pub process: Option<Process>,
}

/// What a reload changed, by process id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReloadResult {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Process {
    /// Builds the API view from a status and (when known) its definition.
    pub fn from_status(s: &ProcessStatus, def: Option<&ProcessDefinition>) -> Process {
        let running = s.pid.is_some();
        let uptime_secs = s
            .started_at
            .filter(|_| running)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs());
        let report = hsu_monitoring::liveness(s.state);
        let health = Health {
            status: report.status.as_str().into(),
            consecutive_failures: report.consecutive_failures,
            last_check_at: report.last_check_at.map(rfc3339),
            last_error: report.last_error,
        };
        let limits = def
            .and_then(|d| d.control.as_ref())
            .and_then(|c| serde_json::to_value(&c.limits).ok())
            .unwrap_or(serde_json::Value::Null);
        Process {
            id: s.id.clone(),
            process_type: s.process_type.as_str().into(),
            state: s.state.as_str().into(),
            pid: s.pid,
            started_at: s.started_at.filter(|_| running).map(rfc3339),
            uptime_secs,
            restart_count: s.restart_count,
            last_exit: s.last_exit.map(|e| LastExit {
                code: e.code,
                signal: e.signal,
                at: rfc3339(e.at),
            }),
            reason: s.reason.clone(),
            health,
            circuit: s.circuit.as_str().into(),
            next_restart_at: s.next_restart_at.map(rfc3339),
            resources: s.resources.map(|r| Resources {
                rss_bytes: r.rss_bytes,
                cpu_percent: (r.cpu_percent * 10.0).round() / 10.0,
                cpu_seconds: (r.cpu_seconds * 100.0).round() / 100.0,
                fds: r.fds,
                processes: r.processes,
            }),
            limits,
        }
    }
}
