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
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Serialized as `"kind": "<name>"` plus the variant's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    StateChanged {
        from: ProcessState,
        to: ProcessState,
        reason: String,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    RestartScheduled {
        delay_ms: u64,
        attempt: u32,
        trigger: String,
    },
    CircuitOpened {
        restarts: u32,
        window_ms: u64,
        cooldown_ms: u64,
    },
    CircuitClosed {
        reason: String,
    },
    ConfigReloaded {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
    },
    ManagerStarted {
        pid: u32,
        config: String,
    },
    ManagerStopped {
        reason: String,
    },
}

impl EventKind {
    /// The `kind` string as it appears in the journal.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::StateChanged { .. } => "state_changed",
            EventKind::Exited { .. } => "exited",
            EventKind::RestartScheduled { .. } => "restart_scheduled",
            EventKind::CircuitOpened { .. } => "circuit_opened",
            EventKind::CircuitClosed { .. } => "circuit_closed",
            EventKind::ConfigReloaded { .. } => "config_reloaded",
            EventKind::ManagerStarted { .. } => "manager_started",
            EventKind::ManagerStopped { .. } => "manager_stopped",
        }
    }
}

/// Where events go. The journal implements it; tests use [`NullSink`] or a vector.
///
/// `emit` assigns `seq` and `ts`; it must not block for long (it is called from the
/// process actors' loops) and must never fail the caller: a journal that cannot be written
/// is reported in the manager log, supervision goes on.
pub trait EventSink: Send + Sync {
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
