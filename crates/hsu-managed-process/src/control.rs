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
    /// Restarts happen as usual.
    Closed,
    /// Too many restarts: automatic restarts are held off until the cooldown ends.
    Open,
    /// The cooldown is over and one trial start is let through.
    HalfOpen,
}

impl Circuit {
    /// The position as status shows it: `closed`, `open` or `half_open`.
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
    /// The exit code, if the process exited on its own.
    pub code: Option<i32>,
    /// The number of the signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When it ended.
    pub at: SystemTime,
}

/// Usage of a process's whole tree, as last sampled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ResourceUsage {
    /// Resident memory of the whole tree, in bytes.
    pub rss_bytes: u64,
    /// Percent of one core since the previous sample (200 = two cores).
    pub cpu_percent: f64,
    /// CPU time of the live members of the tree.
    pub cpu_seconds: f64,
    /// Open file descriptors of the tree.
    pub fds: u64,
    /// Number of processes in the tree.
    pub processes: u64,
}

/// A point-in-time view of one process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessStatus {
    /// The process's configured id.
    pub id: String,
    /// How much of the process the manager owns.
    pub process_type: ProcessType,
    /// Its current state.
    pub state: ProcessState,
    /// PID of the main process while it runs.
    pub pid: Option<u32>,
    /// When the current run started, while it runs.
    pub started_at: Option<SystemTime>,
    /// Automatic restarts since the manager started supervising it.
    pub restart_count: u32,
    /// How the last run ended; `None` before the first exit.
    pub last_exit: Option<LastExit>,
    /// Why it is in its state, in words.
    pub reason: String,
    /// The position of its restart circuit breaker.
    pub circuit: Circuit,
    /// When the next automatic restart (or breaker trial) is due, if one is scheduled.
    pub next_restart_at: Option<SystemTime>,
    /// The last resource sample of its tree, while it runs.
    pub resources: Option<ResourceUsage>,
    /// The current run was started by an earlier manager and adopted by this one.
    pub adopted: bool,
}

impl ProcessStatus {
    /// The status of a process that has not been started yet.
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
            adopted: false,
        }
    }
}

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No process has this id.
    #[error("process `{0}` not found")]
    NotFound(String),
    /// The request does not fit the process (unmanaged, breaker open, ...).
    #[error("process `{id}`: {message}")]
    Conflict {
        /// The process's id.
        id: String,
        /// Why the request does not fit, in words.
        message: String,
    },
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
    /// The process's configured id.
    fn id(&self) -> &str;
    /// A snapshot of its current status.
    fn status(&self) -> ProcessStatus;
    /// Starts the process; resolves once it is started.
    fn start(&self) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// `force` SIGKILLs the whole tree at once, ending a graceful stop in progress.
    fn stop(&self, force: bool) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// `force` ignores an open circuit breaker.
    fn restart(&self, force: bool) -> impl Future<Output = Result<(), ControlError>> + Send;
}
