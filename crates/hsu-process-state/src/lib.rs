//! The process state machine: the single authority on state transitions.
//!
//! A supervised process is in one of five states (`stopped`, `starting`, `running`,
//! `stopping`, `failed`). Every change goes through [`StateMachine::transition`], which
//! refuses any move outside the allowed set and emits exactly one `state_changed` journal
//! event for each accepted one. Nothing else may set a process's state; a refused
//! transition is a bug in the caller, reported as an error value, never a panic.
//!
//! ```text
//!      +-------------------------------------+
//!      v                                     |
//!   stopped ----> starting ----> running ----+
//!      ^             |              |  \
//!      |             v              v   \
//!      +-------- failed <------ stopping  +--> failed
//!      +--------------------------/
//! ```
//!
//! Allowed: stopped→starting, starting→running, starting→failed, starting→stopping,
//! running→stopping, running→stopped (exited and done), running→failed (exited, will be
//! restarted or given up), stopping→stopped, failed→starting (restart), failed→stopped
//! (stopped by hand while waiting to restart).

use hsu_common::{EventKind, EventSink, ProcessState};

/// A transition the state machine refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("process `{id}`: transition {from} -> {to} is not allowed")]
pub struct InvalidTransition {
    /// The process whose transition was refused.
    pub id: String,
    /// The state it was in.
    pub from: ProcessState,
    /// The state the caller asked for.
    pub to: ProcessState,
}

/// Whether `from -> to` is one of the allowed transitions.
pub fn is_allowed(from: ProcessState, to: ProcessState) -> bool {
    use ProcessState::*;
    matches!(
        (from, to),
        (Stopped, Starting)
            | (Starting, Running)
            | (Starting, Failed)
            | (Starting, Stopping)
            | (Running, Stopping)
            | (Running, Stopped)
            | (Running, Failed)
            | (Stopping, Stopped)
            | (Failed, Starting)
            | (Failed, Stopped)
    )
}

/// The state of one process plus the reason for the last change.
#[derive(Debug, Clone)]
pub struct StateMachine {
    id: String,
    state: ProcessState,
    reason: String,
}

impl StateMachine {
    /// A new machine in `stopped`.
    pub fn new(id: impl Into<String>) -> Self {
        StateMachine {
            id: id.into(),
            state: ProcessState::Stopped,
            reason: String::from("not started"),
        }
    }

    /// A new machine in `stopped`, saying why it is not running.
    pub fn stopped_because(id: impl Into<String>, reason: impl Into<String>) -> Self {
        StateMachine {
            reason: reason.into(),
            ..StateMachine::new(id)
        }
    }

    /// A machine already in `state`: the state an earlier manager left the process in,
    /// taken back without a move (no event).
    pub fn restored(id: impl Into<String>, state: ProcessState, reason: impl Into<String>) -> Self {
        StateMachine {
            id: id.into(),
            state,
            reason: reason.into(),
        }
    }

    /// The id of the process this machine belongs to.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current state.
    pub fn state(&self) -> ProcessState {
        self.state
    }

    /// Why the process is in its current state, in words for the user.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Says why the process is where it is, without moving it (no event): e.g. that a
    /// process still `starting` is waiting for its first passing health check.
    pub fn set_reason(&mut self, reason: impl Into<String>) {
        self.reason = reason.into();
    }

    /// Moves to `to` if allowed, emitting one `state_changed` event.
    pub fn transition(
        &mut self,
        to: ProcessState,
        reason: impl Into<String>,
        events: &dyn EventSink,
    ) -> Result<(), InvalidTransition> {
        let from = self.state;
        if !is_allowed(from, to) {
            return Err(InvalidTransition {
                id: self.id.clone(),
                from,
                to,
            });
        }
        let reason = reason.into();
        self.state = to;
        self.reason.clone_from(&reason);
        events.emit(Some(&self.id), EventKind::StateChanged { from, to, reason });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<EventKind>>);

    impl EventSink for Recorder {
        fn emit(&self, _id: Option<&str>, kind: EventKind) {
            self.0.lock().unwrap().push(kind);
        }
    }

    fn machine_in(state: ProcessState) -> StateMachine {
        let mut m = StateMachine::new("p");
        m.state = state;
        m
    }

    /// Every one of the 25 (from, to) pairs: allowed ones move and emit one event,
    /// the rest are refused, leave the state alone and emit nothing.
    #[test]
    fn test_state_transitions_every_pair() {
        use ProcessState::*;
        let allowed = [
            (Stopped, Starting),
            (Starting, Running),
            (Starting, Failed),
            (Starting, Stopping),
            (Running, Stopping),
            (Running, Stopped),
            (Running, Failed),
            (Stopping, Stopped),
            (Failed, Starting),
            (Failed, Stopped),
        ];
        for from in ProcessState::ALL {
            for to in ProcessState::ALL {
                let rec = Recorder::default();
                let mut m = machine_in(from);
                let result = m.transition(to, "test", &rec);
                let events = rec.0.lock().unwrap();
                if allowed.contains(&(from, to)) {
                    assert!(result.is_ok(), "{from} -> {to} should be allowed");
                    assert_eq!(m.state(), to);
                    assert_eq!(
                        *events,
                        vec![EventKind::StateChanged {
                            from,
                            to,
                            reason: "test".into()
                        }]
                    );
                } else {
                    let err = result.expect_err("must be refused");
                    assert_eq!((err.from, err.to), (from, to), "{from} -> {to}");
                    assert_eq!(m.state(), from);
                    assert!(events.is_empty());
                }
            }
        }
    }

    #[test]
    fn test_state_transitions_start_stopped_and_keep_the_reason() {
        let rec = Recorder::default();
        let mut m = StateMachine::new("web");
        assert_eq!(m.state(), ProcessState::Stopped);
        m.transition(ProcessState::Starting, "start requested", &rec)
            .unwrap();
        assert_eq!(m.reason(), "start requested");
        let err = m
            .transition(ProcessState::Stopped, "nope", &rec)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "process `web`: transition starting -> stopped is not allowed"
        );
    }
}
