//! The platform layer: spawn a process in its own group, signal it, kill its whole tree,
//! and reap orphans the manager inherits as a child subreaper.
//!
//! This is the only place (with `hsu-resource-limits`) that knows which operating system
//! it runs on. The layers above see plain types: PIDs as `u32`, [`StopSignal`] names,
//! [`ExitInfo`], and a [`Child`] to await. Linux is implemented; other back ends slot in
//! beside `linux.rs` behind the same functions.
//!
//! It must never reap a process it did not spawn unless it knows that process to be an
//! orphan handed to the manager (never `waitpid(-1)`): the async runtime reaps the
//! children it spawned, and stealing one of their exit statuses would hide an exit.

use hsu_common::StopSignal;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as platform;

/// Environment variable every spawned process (and so its whole tree) carries, holding the
/// owner tag; it is how the manager recognises a grandchild that escaped its group.
pub const TAG_ENV: &str = "HSU_PROCESS_TAG";

/// What to spawn.
#[derive(Debug)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub working_directory: PathBuf,
    /// Added to the manager's environment.
    pub environment: BTreeMap<String, String>,
    /// Where the process's standard output goes (appended); `None` = /dev/null.
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// Unique owner tag (`<base-dir>#<id>`), exported as [`TAG_ENV`].
    pub tag: String,
}

/// Why a spawn failed, with the operating system's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    #[error("executable `{program}` not found: {os}")]
    NotFound { program: String, os: String },
    #[error("executable `{program}`: permission denied: {os}")]
    PermissionDenied { program: String, os: String },
    #[error("working directory `{dir}` does not exist")]
    NoWorkingDirectory { dir: String },
    #[error("cannot spawn `{program}`: {message}")]
    Other { program: String, message: String },
}

/// How a process ended: an exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "exited"),
        }
    }
}

/// A spawned process: its PID and a handle to await its exit.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    tag: String,
    inner: platform::ChildHandle,
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves when the process exits (from the kernel, no polling). Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitInfo> {
        self.inner.wait().await
    }

    /// Every live process of this child's tree, the child itself included: its
    /// descendants, its process group, and orphans of it that carry its tag.
    pub fn tree(&self) -> Vec<u32> {
        tree_of(self.pid, &self.tag)
    }
}

/// Every live process of the tree rooted at `root` whose members carry `tag` (see
/// [`Child::tree`]); for observers that hold a PID, not the [`Child`].
pub fn tree_of(root: u32, tag: &str) -> Vec<u32> {
    platform::tree(root, tag)
}

/// Spawns `spec` as the leader of a new process group with a clean signal mask.
pub fn spawn(spec: SpawnSpec) -> Result<Child, SpawnError> {
    let tag = spec.tag.clone();
    let (pid, inner) = platform::spawn(spec)?;
    Ok(Child { pid, tag, inner })
}

/// Sends `signal` to process group `pgid`; a group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: StopSignal) {
    platform::signal_group(pgid, signal)
}

/// Sends `signal` to one process; one that is already gone is not an error.
pub fn signal_process(pid: u32, signal: StopSignal) {
    platform::signal_process(pid, signal)
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    platform::is_alive(pid)
}

/// Whether the manager runs with superuser rights (decides the default base directory).
pub fn is_superuser() -> bool {
    platform::is_superuser()
}

/// The manager's own resource usage, for its metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfUsage {
    /// Resident set size.
    pub rss_bytes: u64,
    /// User plus system CPU time since the manager started.
    pub cpu_seconds: f64,
    pub open_fds: u64,
}

/// The manager's own resource usage; `None` where the platform cannot tell.
pub fn self_usage() -> Option<SelfUsage> {
    platform::self_usage()
}

/// Makes the manager the reaper of orphaned descendants, so grandchildren that leave
/// their group still end up under its eye.
pub fn become_subreaper() -> std::io::Result<()> {
    platform::become_subreaper()
}

/// Reaps zombies that were re-parented to the manager and are not children it spawned.
/// Returns how many were reaped.
pub fn reap_orphans() -> usize {
    platform::reap_orphans()
}

/// A stream of "a child of the manager changed state" notifications, to drive
/// [`reap_orphans`] from the kernel instead of a timer.
pub fn child_events() -> std::io::Result<ChildEvents> {
    platform::child_events().map(ChildEvents)
}

pub struct ChildEvents(platform::ChildEventStream);

impl ChildEvents {
    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

/// How a [`terminate_tree`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// The main process's exit.
    pub exit: ExitInfo,
    /// Whether SIGKILL was needed.
    pub forced: bool,
    /// Processes of the tree still alive after the final SIGKILL and its grace period
    /// (should be zero; non-zero means something unkillable, e.g. in uninterruptible sleep).
    pub survivors: Vec<u32>,
}

/// Stops a whole process tree: `signal` to the group and to every escaped member, wait up
/// to `graceful_timeout` for all of it to go, then SIGKILL everything left. Returns once
/// nothing of the tree is alive (or after a bounded wait for the unkillable).
pub async fn terminate_tree(
    child: &mut Child,
    signal: StopSignal,
    graceful_timeout: Duration,
) -> std::io::Result<Termination> {
    const POLL: Duration = Duration::from_millis(20);
    const KILL_GRACE: Duration = Duration::from_secs(5);

    let mut known = child.tree();
    signal_group(child.pid, signal);
    for &pid in &known {
        if pid != child.pid {
            signal_process(pid, signal);
        }
    }

    let deadline = tokio::time::Instant::now() + graceful_timeout;
    let mut exit = None;
    // Graceful phase: the main process's exit comes from the kernel; the rest of the tree
    // (not our children) can only be watched, so it is checked every POLL while stopping.
    loop {
        if exit.is_none() {
            if let Ok(status) = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + POLL),
                child.wait(),
            )
            .await
            {
                exit = Some(status?);
            }
        } else {
            tokio::time::sleep(
                POLL.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
            )
            .await;
        }
        merge(&mut known, &child.tree());
        known.retain(|&p| is_alive(p));
        reap_orphans();
        if exit.is_some() && known.is_empty() {
            return Ok(Termination {
                exit: exit.unwrap_or(ExitInfo {
                    code: None,
                    signal: None,
                }),
                forced: false,
                survivors: Vec::new(),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }

    // Forced phase.
    let kill_deadline = tokio::time::Instant::now() + KILL_GRACE;
    loop {
        merge(&mut known, &child.tree());
        known.retain(|&p| is_alive(p));
        signal_group(child.pid, StopSignal::Kill);
        for &pid in &known {
            signal_process(pid, StopSignal::Kill);
        }
        if exit.is_none() {
            if let Ok(status) = tokio::time::timeout(POLL, child.wait()).await {
                exit = Some(status?);
            }
        } else {
            tokio::time::sleep(POLL).await;
        }
        reap_orphans();
        known.retain(|&p| is_alive(p));
        if exit.is_some() && known.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= kill_deadline {
            break;
        }
    }
    let exit = match exit {
        Some(e) => e,
        None => child.wait().await?,
    };
    Ok(Termination {
        exit,
        forced: true,
        survivors: known,
    })
}

fn merge(into: &mut Vec<u32>, more: &[u32]) {
    for &p in more {
        if !into.contains(&p) {
            into.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn spec(program: &str, args: &[&str], tag: &str) -> SpawnSpec {
        SpawnSpec {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            working_directory: std::env::temp_dir(),
            environment: BTreeMap::new(),
            stdout: None,
            stderr: None,
            tag: tag.into(),
        }
    }

    /// Polls `cond` every 10 ms until it holds or `limit` passes.
    fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cond()
    }

    #[tokio::test]
    async fn missing_executable_is_not_found() {
        let err = spawn(spec("/nonexistent/hsu-test-binary", &[], "t#missing")).unwrap_err();
        assert!(matches!(err, SpawnError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("os error 2"), "{err}");
    }

    #[tokio::test]
    async fn exit_code_comes_from_the_kernel() {
        let mut child = spawn(spec("sh", &["-c", "exit 7"], "t#exit")).unwrap();
        let exit = child.wait().await.unwrap();
        assert_eq!(
            exit,
            ExitInfo {
                code: Some(7),
                signal: None
            }
        );
    }

    #[tokio::test]
    async fn graceful_stop_takes_the_whole_group() {
        let mut child = spawn(spec(
            "sh",
            &["-c", "sleep 100 & sleep 100 & wait"],
            "t#group",
        ))
        .unwrap();
        assert!(eventually(Duration::from_secs(10), || child.tree().len() == 3));
        let members = child.tree();
        let t = terminate_tree(&mut child, StopSignal::Term, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!t.forced);
        assert!(t.survivors.is_empty());
        assert!(members.iter().all(|&p| !is_alive(p)), "{members:?}");
    }

    #[tokio::test]
    async fn escaped_orphans_are_found_by_tag_and_killed() {
        become_subreaper().unwrap();
        // The shell starts a detached, TERM-ignoring grandchild in its own session and
        // exits: the grandchild is re-parented to this (subreaper) process.
        let mut child = spawn(spec(
            "sh",
            &["-c", "setsid sh -c 'trap \"\" TERM; sleep 100' & exit 0"],
            "t#escaped",
        ))
        .unwrap();
        child.wait().await.unwrap();
        let mut escaped = Vec::new();
        assert!(eventually(Duration::from_secs(10), || {
            escaped = child.tree();
            escaped.len() >= 2
        }));
        let started = Instant::now();
        let t = terminate_tree(&mut child, StopSignal::Term, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(t.forced, "the orphan ignores SIGTERM");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(escaped.iter().all(|&p| !is_alive(p)), "{escaped:?}");
        // Another tree's tag does not match.
        assert!(child.tree().is_empty());
        reap_orphans();
    }
}
