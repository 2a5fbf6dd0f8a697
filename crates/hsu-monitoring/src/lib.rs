//! Health of supervised processes: the health model every check reports into, and the
//! checks themselves.
//!
//! Today the one check is `process` (liveness): a process is healthy while it runs, and
//! that is known from the kernel's exit notification, so it needs no probing at all.
//! HTTP, gRPC, TCP and exec probes report into the same [`HealthReport`]. This crate
//! must never change a process's state: an unhealthy verdict is the supervisor's to act on.

use hsu_common::ProcessState;
use std::time::SystemTime;

/// The verdict shown in status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// The latest checks passed.
    Healthy,
    /// The checks failed `failure_threshold` times in a row.
    Unhealthy,
    /// Not checked (not running, or no verdict yet).
    Unknown,
}

impl HealthStatus {
    /// The verdict's name as shown in status, e.g. `healthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        }
    }
}

/// What the health checks of one process have found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The current verdict.
    pub status: HealthStatus,
    /// Failed checks in a row since the last success.
    pub consecutive_failures: u32,
    /// When a check last ran; `None` until one has actually run.
    pub last_check_at: Option<SystemTime>,
    /// The error the last check reported, when it failed.
    pub last_error: Option<String>,
}

/// The `process` (liveness) check: healthy while running, unknown otherwise. No probe is
/// made and no check time is recorded: the verdict follows the state the kernel reported.
pub fn liveness(state: ProcessState) -> HealthReport {
    HealthReport {
        status: if state == ProcessState::Running {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unknown
        },
        consecutive_failures: 0,
        last_check_at: None,
        last_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_state() {
        for state in ProcessState::ALL {
            let expected = if state == ProcessState::Running {
                "healthy"
            } else {
                "unknown"
            };
            assert_eq!(liveness(state).status.as_str(), expected, "{state}");
        }
    }
}
