//! The `ProcessControl` trait and the status every controllable process reports.

use crate::ProcessType;
use hsu_common::ProcessState;
use serde::Serialize;
use std::future::Future;
use std::time::SystemTime;

/// The circuit breaker's position, as shown in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

/// How the last run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at: SystemTime,
}

/// Usage of a process's whole tree, as last sampled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ResourceUsage {
    pub rss_bytes: u64,
    /// Percent of one core since the previous sample (200 = two cores).
    pub cpu_percent: f64,
    /// CPU time of the live members of the tree.
    pub cpu_seconds: f64,
    pub fds: u64,
    pub processes: u64,
}

/// A point-in-time view of one process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessStatus {
    pub id: String,
    pub process_type: ProcessType,
    pub state: ProcessState,
    pub pid: Option<u32>,
    pub started_at: Option<SystemTime>,
    /// Automatic restarts since the manager started supervising it.
    pub restart_count: u32,
    pub last_exit: Option<LastExit>,
    /// Why it is in its state, in words.
    pub reason: String,
    pub circuit: Circuit,
    pub next_restart_at: Option<SystemTime>,
    /// The last resource sample of its tree, while it runs.
    pub resources: Option<ResourceUsage>,
}

impl ProcessStatus {
    pub fn new(id: impl Into<String>, process_type: ProcessType) -> Self {
        ProcessStatus {
            id: id.into(),
            process_type,
            state: ProcessState::Stopped,
            pid: None,
            started_at: None,
            restart_count: 0,
            last_exit: None,
            reason: "not started".into(),
            circuit: Circuit::Closed,
            next_restart_at: None,
            resources: None,
        }
    }
}

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("process `{0}` not found")]
    NotFound(String),
    /// The request does not fit the process (unmanaged, breaker open, ...).
    #[error("process `{id}`: {message}")]
    Conflict { id: String, message: String },
    /// The process's supervisor is gone (the manager is shutting down).
    #[error("process `{0}`: supervisor is no longer running")]
    Gone(String),
    /// The manager is shutting down and takes no more requests for the process.
    #[error("process `{0}`: the manager is shutting down")]
    Unavailable(String),
}

/// What every kind of process offers its manager. Each call resolves when the operation
/// is complete: `stop` only once nothing of the process tree is left.
pub trait ProcessControl {
    fn id(&self) -> &str;
    fn status(&self) -> ProcessStatus;
    fn start(&self) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// `force` SIGKILLs the whole tree at once, ending a graceful stop in progress.
    fn stop(&self, force: bool) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// `force` ignores an open circuit breaker.
    fn restart(&self, force: bool) -> impl Future<Output = Result<(), ControlError>> + Send;
}
