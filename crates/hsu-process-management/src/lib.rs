//! The process manager: configuration, lifecycle and restart policy, and the supervision
//! of every configured process.
//!
//! # Theory of operation
//!
//! [`ProcessManager::start`] takes the process definitions the config loader produced
//! and spawns one supervisor task per managed process ([`process_control_impl`]). That
//! task owns everything about its process — the child handle, the state machine, the
//! restart bookkeeping ([`lifecycle`]) — and runs an event loop over the child's exit
//! (reported by the kernel through the runtime, never polled), three timers (backoff
//! restart, breaker cooldown, stability after `reset_after`) and a control queue. Callers
//! send a command and await its reply; the latest status is published on a watch channel,
//! so reading status never waits on a busy supervisor.
//!
//! An exit flows: kernel → `Child::wait` resolves → the supervisor records `exited`,
//! cleans up what is left of the tree, asks the [`lifecycle::RestartTracker`] for a
//! [`lifecycle::Decision`], moves the state machine (one `state_changed` event each) and
//! arms the restart or cooldown timer. A stop request flows: command → `stopping` →
//! `hsu_process::terminate_tree` (stop signal to the group and escaped members, wait up
//! to `graceful_timeout`, SIGKILL the rest, return when nothing is left) → `stopped`.
//!
//! The layers above (the control API) come in through one door, [`facade::ManagerFacade`]:
//! processes and their health, control requests, reload, shutdown, captured output and
//! the event journal, without reaching around the manager to files or the platform.
//!
//! This crate must never set a state by hand (only through the state machine) and never
//! reap a process it does not know to be an orphan.

pub mod config;
pub mod facade;
pub mod lifecycle;
pub mod manager;
pub mod process_control_impl;

pub use facade::{
    Event, EventFollower, EventKind, Followed, HealthReport, HealthStatus, Journal, JournalError,
    JournalOptions, LogError, ManagerFacade, ManagerUsage, ProcessView, ReloadError, Stream,
};
pub use manager::{ManagerError, ManagerOptions, ProcessManager, ReloadDiff};
pub use process_control_impl::ProcessHandle;
