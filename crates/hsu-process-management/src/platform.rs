//! The seam between the supervisors and the operating system.
//!
//! A supervisor needs three things from the platform: spawn a process (and learn of its
//! exit), signal its whole tree, and list what is left of the tree. (Orphans are reaped
//! by the manager on SIGCHLD, not by supervisors.) They are a trait so that the supervisor's loop can be unit-tested against a made-up
//! platform (exits, slow stops and spawn errors on demand, under a paused clock), while
//! the real one ([`OsPlatform`]) forwards to `hsu-process`. Every call here returns at
//! once: waiting is the supervisor's business, done with timers inside its loop.

use hsu_common::StopSignal;
use hsu_process::{ExitInfo, SpawnError, SpawnSpec};
use std::future::Future;
use std::pin::Pin;

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
}
