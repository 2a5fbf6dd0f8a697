//! Journal events: the one record of everything that happens to a supervised process.
//!
//! Each event is one JSON object a line in `events.jsonl`: `{seq, ts, id, kind, ...}` where
//! the kind's own fields are flattened beside the common ones.

use crate::ProcessState;
use serde::{Deserialize, Serialize};

/// One line of the event journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event, without gaps, across manager restarts.
    pub seq: u64,
    /// RFC 3339 UTC timestamp with milliseconds.
    pub ts: String,
    /// The process the event is about; absent for manager-wide events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What happened, with the kind's own fields.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Serialized as `"kind": "<name>"` plus the variant's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The process moved from one state to another.
    StateChanged {
        /// The state it left.
        from: ProcessState,
        /// The state it entered.
        to: ProcessState,
        /// Why it moved, in words (e.g. the exit or the command that caused it).
        reason: String,
    },
    /// A run of the process was spawned.
    Spawned {
        /// The main process's PID.
        pid: u32,
    },
    /// A run left by an earlier manager (same PID, same start time) is supervised again.
    Adopted {
        /// The main process's PID.
        pid: u32,
        /// How long it had been running when it was adopted, in milliseconds.
        uptime_ms: u64,
    },
    /// The process exited (or was killed by a signal).
    Exited {
        /// The exit code, when it exited normally.
        code: Option<i32>,
        /// The signal number that ended it, when a signal did.
        signal: Option<i32>,
    },
    /// A restart is due after a backoff delay.
    RestartScheduled {
        /// How long until the restart, in milliseconds.
        delay_ms: u64,
        /// Which restart in a row this is for its trigger, counted from 1.
        attempt: u32,
        /// What caused it: `exit`, `health_failure` or `resource_violation`.
        trigger: String,
    },
    /// Too many restarts within the window: the circuit breaker opened and the process
    /// stays `failed`.
    CircuitOpened {
        /// Restarts counted inside the window when the breaker opened.
        restarts: u32,
        /// The `restart.window` in milliseconds.
        window_ms: u64,
        /// How long until the trial start, in milliseconds; 0 means only a start by hand.
        cooldown_ms: u64,
    },
    /// The breaker closed again after the trial start stayed up long enough.
    CircuitClosed {
        /// Why it closed, in words.
        reason: String,
    },
    /// A new config was applied by a reload.
    ConfigReloaded {
        /// Ids of the processes the new config added.
        added: Vec<String>,
        /// Ids of the processes the new config removed.
        removed: Vec<String>,
        /// Ids of the processes whose definition changed (and which were restarted).
        changed: Vec<String>,
    },
    /// The manager started.
    ManagerStarted {
        /// The manager's own PID.
        pid: u32,
        /// The path of the config file it loaded.
        config: String,
    },
    /// The manager stopped.
    ManagerStopped {
        /// Why it stopped, in words.
        reason: String,
    },
    /// The verdict of a process's health checks changed.
    HealthChanged {
        /// The verdict it had: `unknown`, `healthy` or `unhealthy`.
        from: String,
        /// The verdict it has now.
        to: String,
        /// Why, in words: the last check's error, or that checks passed.
        reason: String,
        /// Failed checks in a row when the verdict changed.
        consecutive_failures: u32,
    },
    /// Captured output could not be written (e.g. a full disk). Emitted once when writing
    /// starts failing, not once per line; writing resumes by itself.
    LogWriteFailed {
        /// The stream: `stdout` or `stderr` (or the aggregation target's name).
        stream: String,
        /// The file that could not be written.
        path: String,
        /// The error, in words.
        error: String,
    },
    /// Usage of a resource crossed its warning threshold (a warning only: no action).
    ResourceWarning {
        /// `memory`, `cpu`, `file_descriptors` or `processes`.
        resource: String,
        /// The usage measured (bytes, percent of one core, or a count).
        value: f64,
        /// The limit itself, in the same unit (the warning threshold is a percentage of
        /// it).
        limit: f64,
    },
    /// Usage of a resource crossed its limit (CPU: for `sustained_for`), or the kernel's
    /// OOM killer ended the tree; `action` is the policy applied (or `oom_killed`).
    ResourceViolation {
        /// `memory`, `cpu`, `file_descriptors` or `processes`.
        resource: String,
        /// The usage measured (bytes, percent of one core, or a count; OOM kills for
        /// `oom_killed`).
        value: f64,
        /// The limit, in the same unit.
        limit: f64,
        /// The policy applied: `log`, `alert`, `throttle`, `graceful_shutdown`,
        /// `immediate_kill`, `restart`, `restart_adjusted`, or `oom_killed`.
        action: String,
    },
    /// A limit with policy `alert` was crossed.
    Alert {
        /// What happened, in words.
        message: String,
    },
    /// A process's supervisor hit a bug while handling one input; it recovered and goes
    /// on supervising the process where it was.
    SupervisorFailed {
        /// The panic's message.
        message: String,
    },
}

impl EventKind {
    /// The `kind` string as it appears in the journal.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::StateChanged { .. } => "state_changed",
            EventKind::Spawned { .. } => "spawned",
            EventKind::Adopted { .. } => "adopted",
            EventKind::Exited { .. } => "exited",
            EventKind::RestartScheduled { .. } => "restart_scheduled",
            EventKind::CircuitOpened { .. } => "circuit_opened",
            EventKind::CircuitClosed { .. } => "circuit_closed",
            EventKind::ConfigReloaded { .. } => "config_reloaded",
            EventKind::ManagerStarted { .. } => "manager_started",
            EventKind::ManagerStopped { .. } => "manager_stopped",
            EventKind::HealthChanged { .. } => "health_changed",
            EventKind::LogWriteFailed { .. } => "log_write_failed",
            EventKind::ResourceWarning { .. } => "resource_warning",
            EventKind::ResourceViolation { .. } => "resource_violation",
            EventKind::Alert { .. } => "alert",
            EventKind::SupervisorFailed { .. } => "supervisor_failed",
        }
    }
}

/// Where events go. The journal implements it; tests use [`NullSink`] or a vector.
///
/// `emit` assigns `seq` and `ts`; it must not block for long (it is called from the
/// process actors' loops) and must never fail the caller: a journal that cannot be written
/// is reported in the manager log, supervision goes on.
pub trait EventSink: Send + Sync {
    /// Records one event about process `id` (or the manager, when `None`).
    fn emit(&self, id: Option<&str>, kind: EventKind);
}

/// Discards every event.
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _id: Option<&str>, _kind: EventKind) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_flat_with_kind_tag() {
        let e = Event {
            seq: 7,
            ts: "2026-01-01T00:00:00.000Z".into(),
            id: Some("web".into()),
            kind: EventKind::RestartScheduled {
                delay_ms: 250,
                attempt: 2,
                trigger: "exit".into(),
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"seq":7,"ts":"2026-01-01T00:00:00.000Z","id":"web","kind":"restart_scheduled","delay_ms":250,"attempt":2,"trigger":"exit"}"#
        );
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
