//! The five states a supervised process can be in.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A supervised process's state, as the user sees it in status and in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Not running: never started, stopped by hand or by policy, or completed.
    Stopped,
    /// Spawned, and waiting for its first successful health check.
    Starting,
    /// Up (and, when it has a health check, checked healthy at least once).
    Running,
    /// Being stopped: the stop signal was sent and the manager waits for the tree to end.
    Stopping,
    /// Ended in failure: a restart may be scheduled, the breaker may be open, or the policy
    /// does not restart it.
    Failed,
}

impl ProcessState {
    /// Every state, in the order above.
    pub const ALL: [ProcessState; 5] = [
        ProcessState::Stopped,
        ProcessState::Starting,
        ProcessState::Running,
        ProcessState::Stopping,
        ProcessState::Failed,
    ];

    /// The state's name as shown in status and in the journal, e.g. `running`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Stopped => "stopped",
            ProcessState::Starting => "starting",
            ProcessState::Running => "running",
            ProcessState::Stopping => "stopping",
            ProcessState::Failed => "failed",
        }
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
