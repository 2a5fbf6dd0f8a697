//! The one service layer under both encodings: every operation of SPEC §7 as the HTTP
//! routes and the gRPC methods share it, so the two cannot drift apart. The encodings only
//! parse their request and render the answer (or map a [`ServiceError`] variant to a
//! status); what an operation does, its defaults and caps, and its errors are decided here.
//!
//! Shared rules:
//! - start, stop, restart, reload and shutdown run in a task of their own: a client that
//!   hangs up (its request future dropped) never leaves a stop or a reload half done;
//! - a log tail is [`DEFAULT_TAIL_LINES`] lines unless asked otherwise, never more than
//!   [`MAX_TAIL_LINES`];
//! - an event follower gets the events after `since`, then the live ones without a gap or
//!   a duplicate; one that falls behind is told how many events it missed
//!   ([`Followed::Lagged`]) and goes on with the newest.

use crate::model::{Accepted, LogStream, Process, ReloadResult};
use crate::ApiState;
use bytes::Bytes;
use hsu_managed_process::ControlError;
use hsu_process_management::{Event, EventFollower, LogError, ReloadError, Stream};
use std::future::Future;
use tokio::sync::mpsc;

pub use hsu_process_management::Followed;

/// Lines of a log tail when the request names no number (HTTP and gRPC alike).
pub const DEFAULT_TAIL_LINES: usize = 100;
/// A log tail never has more lines than this, whatever was asked.
pub const MAX_TAIL_LINES: usize = 100_000;

/// Why an operation failed; each encoding maps the variants to its statuses.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Refused by the manager: unknown process, a request that does not fit it, or a
    /// manager shutting down.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A malformed request (bad query value, unknown stream).
    #[error("{0}")]
    Invalid(String),
    /// A reload of an invalid config: nothing changed; every problem is listed.
    #[error("{message}")]
    InvalidConfig {
        /// Which file is invalid and how many problems it has.
        message: String,
        /// Every problem, one `FILE:LINE:COL: path: message` each.
        problems: Vec<String>,
    },
    /// The manager as a whole takes no more requests of this kind (shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// The server failed (a file it could not read, a task that died).
    #[error("{0}")]
    Internal(String),
}

impl From<LogError> for ServiceError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Control(c) => ServiceError::Control(c),
            e @ (LogError::Read { .. } | LogError::Interrupted { .. }) => {
                ServiceError::Internal(e.to_string())
            }
        }
    }
}

/// A control request on one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start the process.
    Start,
    /// `force`: SIGKILL the tree now (also ends a graceful stop in progress).
    Stop {
        /// Whether to SIGKILL the whole tree at once instead of stopping it gracefully.
        force: bool,
    },
    /// `force`: ignore an open circuit breaker.
    Restart {
        /// Whether to restart even while the circuit breaker is open.
        force: bool,
    },
}

impl Action {
    /// `start`, `stop` or `restart`, as the answers name it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop { .. } => "stop",
            Action::Restart { .. } => "restart",
        }
    }
}

/// What a log request asks for, checked: the stream and the number of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRequest {
    /// Which output stream to read.
    pub stream: LogStream,
    /// How many of the last lines to return.
    pub lines: usize,
}

impl LogRequest {
    /// `stream`: absent or empty is stdout; `tail`: absent is [`DEFAULT_TAIL_LINES`],
    /// more than [`MAX_TAIL_LINES`] is the cap.
    pub fn new(stream: Option<&str>, tail: Option<u64>) -> Result<LogRequest, ServiceError> {
        let stream = match stream {
            None | Some("") => LogStream::Stdout,
            Some(name) => name.parse().map_err(|_| {
                ServiceError::Invalid(format!("`stream` must be stdout or stderr, not `{name}`"))
            })?,
        };
        let lines = tail.map_or(DEFAULT_TAIL_LINES, |n| {
            usize::try_from(n).map_or(MAX_TAIL_LINES, |n| n.min(MAX_TAIL_LINES))
        });
        Ok(LogRequest { stream, lines })
    }
}

/// Runs an operation in its own task, so it completes even if the client leaves.
async fn run_to_completion<T: Send + 'static>(
    operation: impl Future<Output = T> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::spawn(operation)
        .await
        .map_err(|e| ServiceError::Internal(format!("the operation failed: {e}")))
}

impl ApiState {
    /// Every process, in config order.
    pub fn list(&self) -> Vec<Process> {
        self.manager
            .processes()
            .iter()
            .map(Process::from_view)
            .collect()
    }

    /// The dependency graph.
    pub fn graph(&self) -> crate::model::Graph {
        crate::model::Graph::from_view(&self.manager.graph())
    }

    /// One process.
    pub fn get(&self, id: &str) -> Result<Process, ServiceError> {
        Ok(Process::from_view(&self.manager.process(id)?))
    }

    /// Runs `action` on `id` to its end (in its own task) and answers with the process as
    /// it is afterwards (`None` if a concurrent reload removed it).
    pub async fn act(&self, id: String, action: Action) -> Result<Accepted, ServiceError> {
        let manager = self.manager.clone();
        let target = id.clone();
        run_to_completion(async move {
            match action {
                Action::Start => manager.start(&target).await,
                Action::Stop { force } => manager.stop(&target, force).await,
                Action::Restart { force } => manager.restart(&target, force).await,
            }
        })
        .await??;
        // Supervisors publish a command's effect before they answer it.
        let process = self
            .manager
            .process(&id)
            .ok()
            .map(|v| Process::from_view(&v));
        Ok(Accepted {
            id: Some(id),
            action: action.name().into(),
            process,
        })
    }

    /// Re-reads the config file and applies it (in its own task).
    pub async fn reload(&self) -> Result<ReloadResult, ServiceError> {
        let manager = self.manager.clone();
        match run_to_completion(async move { manager.reload().await }).await? {
            Ok(outcome) => Ok(ReloadResult {
                added: outcome.diff.added,
                removed: outcome.diff.removed,
                changed: outcome.diff.changed,
                unchanged: outcome.diff.unchanged,
                applied_settings: outcome.applied.iter().map(ToString::to_string).collect(),
                needs_restart: outcome
                    .needs_restart
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            }),
            Err(ReloadError::Invalid { path, problems }) => Err(ServiceError::InvalidConfig {
                message: format!(
                    "{} is invalid ({} problem(s)); the running config is unchanged",
                    path.display(),
                    problems.0.len()
                ),
                problems: problems.0.iter().map(ToString::to_string).collect(),
            }),
            Err(e @ ReloadError::ShuttingDown) => Err(ServiceError::Unavailable(e.to_string())),
            Err(e @ ReloadError::Refused(_)) => Err(ServiceError::InvalidConfig {
                message: e.to_string(),
                problems: Vec::new(),
            }),
            Err(e @ ReloadError::Interrupted) => Err(ServiceError::Internal(e.to_string())),
        }
    }

    /// Asks the manager to shut down (it stops every process, then the API, so this
    /// answer is still delivered); with `keep_processes` it exits leaving them running
    /// for the next manager. `reason` is recorded; blank means an API request.
    pub async fn shutdown(
        &self,
        reason: Option<&str>,
        keep_processes: bool,
    ) -> Result<Accepted, ServiceError> {
        let reason = match reason.map(str::trim) {
            Some(r) if !r.is_empty() => r.to_owned(),
            _ if keep_processes => "API shutdown request (keep processes)".to_owned(),
            _ => "API shutdown request".to_owned(),
        };
        let manager = self.manager.clone();
        run_to_completion(async move {
            if keep_processes {
                manager.request_detach(&reason)
            } else {
                manager.request_shutdown(&reason)
            }
        })
        .await?;
        Ok(Accepted {
            id: None,
            action: if keep_processes {
                "shutdown_keep_processes"
            } else {
                "shutdown"
            }
            .into(),
            process: None,
        })
    }

    /// The last lines of a process's captured output.
    pub async fn log_tail(&self, id: &str, req: LogRequest) -> Result<Vec<u8>, ServiceError> {
        Ok(self
            .manager
            .log_tail(id, Stream::from(req.stream), req.lines)
            .await?)
    }

    /// Follows a process's captured output: the returned future sends the tail, then what
    /// is appended, to `tx` until its receiver is gone.
    pub fn log_follow(
        &self,
        id: &str,
        req: LogRequest,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<impl Future<Output = ()> + Send + 'static, ServiceError> {
        Ok(self
            .manager
            .log_follow(id, Stream::from(req.stream), req.lines, tx)?)
    }

    /// Stored events after `since` (all for `None`), oldest first.
    pub async fn events(&self, since: Option<u64>) -> Vec<Event> {
        self.manager.events_since(since).await
    }

    /// The events after `since` (none for `None`), then every new one.
    pub async fn follow_events(&self, since: Option<u64>) -> EventFollower {
        self.manager.follow_events(since).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_requests_share_one_default_and_cap() {
        let r = LogRequest::new(None, None).unwrap();
        assert_eq!((r.stream, r.lines), (LogStream::Stdout, DEFAULT_TAIL_LINES));
        assert_eq!(LogRequest::new(Some(""), Some(0)).unwrap().lines, 0);
        let r = LogRequest::new(Some("stderr"), Some(u64::MAX)).unwrap();
        assert_eq!((r.stream, r.lines), (LogStream::Stderr, MAX_TAIL_LINES));
        assert!(matches!(
            LogRequest::new(Some("journal"), None),
            Err(ServiceError::Invalid(m)) if m == "`stream` must be stdout or stderr, not `journal`"
        ));
    }
}
