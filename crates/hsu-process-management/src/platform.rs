//! The seam between the supervisors and the operating system.
//!
//! A supervisor needs a few things from the platform: spawn a process (and learn of its
//! exit), signal its whole tree, list what is left of the tree, probe its health and ask
//! an integrated process to shut down. (Orphans are reaped by the manager on SIGCHLD, not
//! by supervisors.) They are a trait so that the supervisor's loop can be unit-tested
//! against a made-up platform (exits, slow stops, spawn errors and check results on
//! demand, under a paused clock), while the real one ([`OsPlatform`]) forwards to
//! `hsu-process` and `hsu-monitoring`. Every call here returns at once: waiting is the
//! supervisor's business, done with timers inside its loop or in tasks it owns.

use hsu_common::StopSignal;
use hsu_managed_process::HealthCheckKind;
use hsu_monitoring::ProbeOutcome;
use hsu_process::{ExitInfo, SpawnError, SpawnSpec};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// A process's exit, to be awaited once.
pub type ExitFuture = Pin<Box<dyn Future<Output = std::io::Result<ExitInfo>> + Send>>;

/// A process that was just spawned.
pub struct Spawned {
    /// Its PID, which is also its process group id.
    pub pid: u32,
    /// Resolves once when the process exits (from the kernel; never polled).
    pub exit: ExitFuture,
}

/// One process tree: the group its main process leads, and the tag its members carry.
#[derive(Debug, Clone, Copy)]
pub struct Tree<'a> {
    /// The main process's PID, which is the group id.
    pub root: u32,
    /// The main process has exited and been reaped: its PID may be reused, so the walk
    /// must not start from it (what is left are orphans found by `tag`).
    pub root_reaped: bool,
    /// The owner tag every member carries in its environment.
    pub tag: &'a str,
}

/// A future the supervisor runs in a task of its own.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One health check to run.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    /// What to probe.
    pub kind: HealthCheckKind,
    /// How long the check may take; a check still running then has failed.
    pub timeout: Duration,
    /// `exec` checks run here ...
    pub working_directory: PathBuf,
    /// ... with the process's environment added to the manager's.
    pub environment: BTreeMap<String, String>,
}

/// Starts the task that probes one run: the first check at `first`, then every `every`,
/// one check at a time (timeout < interval), each bounded by its timeout (with a safety
/// net of a second: the probe bounds itself). A check that overran its slot is followed
/// by the next one an interval later. Each outcome goes to `report`; the task ends when
/// `report` returns false (its receiver is gone) or when it is aborted.
pub fn spawn_checker(
    platform: std::sync::Arc<dyn Platform>,
    request: ProbeRequest,
    first: tokio::time::Instant,
    every: Duration,
    report: impl Fn(ProbeOutcome) -> bool + Send + 'static,
) -> tokio::task::AbortHandle {
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(first, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let timeout = request.timeout;
            let started = std::time::Instant::now();
            let probe = platform.probe(request.clone());
            let outcome = match tokio::time::timeout(timeout + Duration::from_secs(1), probe).await
            {
                Ok(outcome) => outcome,
                Err(_) => ProbeOutcome {
                    result: Err(format!(
                        "timed out after {}",
                        humantime::format_duration(timeout)
                    )),
                    latency: started.elapsed(),
                    at: std::time::SystemTime::now(),
                },
            };
            if !report(outcome) {
                return;
            }
        }
    });
    task.abort_handle()
}

/// What the supervisors need from the operating system. Nothing here may block for
/// longer than a few `/proc` reads.
pub trait Platform: Send + Sync + 'static {
    /// Spawns `spec` as the leader of a new process group.
    fn spawn(&self, spec: SpawnSpec) -> Result<Spawned, SpawnError>;
    /// Sends `signal` to the tree's process group and to every live member of the tree
    /// (grandchildren that left the group included).
    fn signal_tree(&self, tree: Tree<'_>, signal: StopSignal);
    /// The live members of the tree (the root too while it lives).
    fn tree(&self, tree: Tree<'_>) -> Vec<u32>;
    /// Runs one health check; the future resolves within the request's timeout (plus
    /// what cleaning up an overrunning `exec` check takes) and leaves nothing running
    /// when dropped.
    fn probe(&self, request: ProbeRequest) -> BoxFuture<ProbeOutcome>;
    /// The manager's area in the cgroup v2 hierarchy for base directory `base`, where
    /// each run gets its own cgroup; `None` where there is none (runs are then found
    /// through `/proc` and their limits polled).
    fn cgroup_area(&self, base: &std::path::Path) -> Option<hsu_resource_limits::CgroupRoot> {
        let _ = base;
        None
    }
    /// When `pid` started (ticks after boot), recorded in `state.json` so that a later
    /// manager can tell the process from one that got the same PID.
    fn start_time(&self, pid: u32) -> Option<u64>;
    /// Watches the exit of a process left by an earlier manager, if `pid` is still the
    /// process that started at `start_time`. Its exit status is not the manager's to
    /// collect: the future resolves with neither code nor signal.
    fn adopt(&self, pid: u32, start_time: u64) -> Result<ExitFuture, String>;
    /// Asks the integrated process listening on `port` to shut down
    /// (`hsu.core.v1.CoreService/Shutdown`); `Ok` once it answered.
    fn request_shutdown(
        &self,
        port: u16,
        reason: String,
        timeout: Duration,
    ) -> BoxFuture<Result<(), String>>;
}

/// The real operating system, through `hsu-process`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsPlatform;

impl Platform for OsPlatform {
    fn spawn(&self, spec: SpawnSpec) -> Result<Spawned, SpawnError> {
        let mut child = hsu_process::spawn(spec)?;
        let pid = child.pid();
        Ok(Spawned {
            pid,
            exit: Box::pin(async move { child.wait().await }),
        })
    }

    fn signal_tree(&self, tree: Tree<'_>, signal: StopSignal) {
        if tree.root_reaped {
            hsu_process::signal_group(tree.root, signal);
            for pid in self.tree(tree) {
                hsu_process::signal_process(pid, signal);
            }
        } else {
            hsu_process::signal_tree(tree.root, tree.tag, signal);
        }
    }

    fn tree(&self, tree: Tree<'_>) -> Vec<u32> {
        // A reaped root's PID is not walked: `u32::MAX` is never a PID, so only the
        // tagged orphans of the tree (and their descendants) are found.
        let root = if tree.root_reaped {
            u32::MAX
        } else {
            tree.root
        };
        hsu_process::sweep_scan(root, tree.tag)
    }

    fn cgroup_area(&self, base: &std::path::Path) -> Option<hsu_resource_limits::CgroupRoot> {
        crate::manager::cgroup_area(base)
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        hsu_process::start_time(pid)
    }

    fn adopt(&self, pid: u32, start_time: u64) -> Result<ExitFuture, String> {
        let watch = hsu_process::watch_exit(pid, start_time).map_err(|e| e.to_string())?;
        Ok(Box::pin(async move {
            watch.exited().await;
            Ok(ExitInfo {
                code: None,
                signal: None,
            })
        }))
    }

    fn probe(&self, request: ProbeRequest) -> BoxFuture<ProbeOutcome> {
        Box::pin(async move {
            let exec = hsu_monitoring::ExecContext {
                working_directory: request.working_directory,
                environment: request.environment,
            };
            hsu_monitoring::probe(&request.kind, &exec, request.timeout).await
        })
    }

    fn request_shutdown(
        &self,
        port: u16,
        reason: String,
        timeout: Duration,
    ) -> BoxFuture<Result<(), String>> {
        Box::pin(async move { hsu_monitoring::request_shutdown(port, &reason, timeout).await })
    }
}
