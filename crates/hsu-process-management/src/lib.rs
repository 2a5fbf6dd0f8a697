//! The process manager: configuration, lifecycle and restart policy, and the supervision
//! of every configured process.
//!
//! # Theory of operation
//!
//! [`ProcessManager::start`] takes the process definitions the config loader produced
//! and spawns one supervisor task per managed process ([`process_control_impl`]). That
//! task owns everything about its process — its run, the state machine, the restart
//! bookkeeping ([`lifecycle`]) — and runs an event loop over one kind of input: control
//! commands, the child's exit (reported by the kernel through the runtime, never polled),
//! monitors' reports, and the deadlines of its current phase. It never awaits anything
//! but its next input: a stop is a `stopping` phase with a SIGKILL deadline, so status,
//! a second stop (which joins) and a forced stop are served while a process takes its
//! time to die. Callers send a command and await its reply; the latest status is
//! published on a watch channel, so reading status never waits on a supervisor.
//!
//! The supervisor reaches the operating system only through the [`platform::Platform`]
//! trait (spawn, signal a tree, list a tree), which unit tests replace with
//! a made-up platform under a paused clock. File writes that sync (PID files,
//! `state.json`) go to a background writer thread, never onto the runtime's workers.
//!
//! An unmanaged process gets an observer instead ([`observer`]): it finds the process
//! by PID file, name or port, learns of its end from the kernel, and reports (state,
//! health, resource findings) without ever starting, signalling or stopping it.
//!
//! `docs/architecture.md` has the table of what each input does in each state.
//!
//! The layers above (the control API) come in through one door, [`facade::ManagerFacade`]:
//! processes and their health, control requests, reload, shutdown, captured output and
//! the event journal, without reaching around the manager to files or the platform.
//!
//! This crate must never set a state by hand (only through the state machine) and never
//! reap a process it does not know to be an orphan.

pub mod config;
pub mod deps;
pub mod facade;
pub mod lifecycle;
pub mod limits;
pub mod manager;
pub mod observer;
pub mod platform;
pub mod process_control_impl;

pub use facade::{
    Event, EventFollower, EventKind, Followed, HealthReport, HealthStatus, Journal, JournalError,
    JournalOptions, LogError, ManagerFacade, ManagerUsage, ProcessView, ReloadError, Stream,
};

#[cfg(test)]
mod fake_platform;
#[cfg(test)]
mod observer_tests;
#[cfg(test)]
mod supervisor_tests;

pub use manager::{ManagerError, ManagerOptions, ProcessManager, ReloadDiff};
pub use observer::ObserverHandle;
pub use process_control_impl::ProcessHandle;
