//! A short command run to completion within a deadline, its output captured: what an
//! `exec` health check runs.
//!
//! The command is spawned like a supervised process ([`crate::spawn`]: its own process
//! group, a tag of its own, the manager-only variables removed, stdin null), with stdout
//! and stderr on one pipe. The pipe is drained while it runs, so a chatty command never
//! blocks on it, and only the first bytes are kept. Nothing of it is left behind: when it
//! overruns, its whole tree is killed with SIGKILL and the command reaped before
//! [`run_command`] returns, and what it started and left running is killed when it ends.
//! A run that is abandoned (its future dropped) kills the tree too.

use crate::{signal_tree, spawn, sweep_scan, Child, ExitInfo, SpawnError, SpawnSpec};
use hsu_common::StopSignal;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::time::Instant;

/// A command to run once, to completion (see [`run_command`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program: a path, or a name looked up in `PATH`.
    pub program: PathBuf,
    /// Arguments, without the program name itself.
    pub args: Vec<String>,
    /// Directory the command starts in; it must exist.
    pub working_directory: PathBuf,
    /// Added to the manager's environment (without its manager-only variables).
    pub environment: BTreeMap<String, String>,
}

/// How a command run by [`run_command`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandEnd {
    /// It ended on its own within the deadline.
    Exited(ExitInfo),
    /// It was still running at the deadline, and was killed with its whole tree.
    TimedOut,
}

/// What [`run_command`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRun {
    /// How it ended.
    pub end: CommandEnd,
    /// The first bytes it wrote to stdout and stderr, interleaved as written.
    pub output: Vec<u8>,
}

/// How long the kill of an overrunning command may look for survivors: each look is one
/// SIGKILL to everything found, so this is only reached by a tree that keeps forking.
const KILL_SWEEP_LIMIT: Duration = Duration::from_millis(250);

/// Runs `spec` until it exits or `timeout` passes, keeping the first `capture` bytes of
/// its output. Overrunning is not an error ([`CommandEnd::TimedOut`]): the command and
/// everything it started are killed with SIGKILL and the command reaped before this
/// returns, a few milliseconds after the deadline. The error is the spawn's.
pub async fn run_command(
    spec: CommandSpec,
    timeout: Duration,
    capture: usize,
) -> Result<CommandRun, SpawnError> {
    let deadline = Instant::now() + timeout;
    let program = spec.program.display().to_string();
    let other = |message: String| SpawnError::Other {
        program: program.clone(),
        message,
    };
    let (reader, writer) =
        std::io::pipe().map_err(|e| other(format!("cannot create a pipe for its output: {e}")))?;
    let stdout = File::from(OwnedFd::from(writer));
    let stderr = stdout
        .try_clone()
        .map_err(|e| other(format!("cannot create a pipe for its output: {e}")))?;
    let tag = unique_tag();
    let child = spawn(SpawnSpec {
        program: spec.program,
        args: spec.args,
        working_directory: spec.working_directory,
        environment: spec.environment,
        // `spawn` hands both to the child and closes them here: the pipe's end of file
        // comes once the command and whatever inherited its output are gone.
        stdout: Some(stdout),
        stderr: Some(stderr),
        tag: tag.clone(),
        user: None,
        group: None,
        cgroup: None,
        rlimit_nofile: None,
    })?;
    let mut run = Running {
        pid: child.pid(),
        child: Some(child),
        tag,
    };
    // Without a readable pipe the command still runs; only its output is lost.
    let mut output = Output {
        pipe: pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).ok(),
        kept: Vec::new(),
        capture,
    };

    let end = loop {
        let Some(child) = run.child.as_mut() else {
            unreachable!("the child is taken only when the run is over")
        };
        tokio::select! {
            exit = child.wait() => match exit {
                Ok(exit) => break CommandEnd::Exited(exit),
                Err(e) => return Err(other(format!("lost track of it: {e}"))),
            },
            () = output.read(), if output.pipe.is_some() => {}
            () = tokio::time::sleep_until(deadline) => break CommandEnd::TimedOut,
        }
    };
    match end {
        CommandEnd::Exited(_) => {
            // What it wrote before it exited is in the pipe already; anything it left
            // running may hold the pipe open for ever, so no waiting for end of file.
            output.drain_ready();
            run.child = None;
            // What it started and left running (in its group, or tagged) goes with it.
            // The group outlives its reaped leader while a member is left, so the PID
            // still names that group and no other.
            if !signal_tree(run.pid, &run.tag, StopSignal::Kill).is_empty() {
                crate::reap_orphans();
            }
        }
        CommandEnd::TimedOut => run.kill().await,
    }
    Ok(CommandRun {
        end,
        output: output.kept,
    })
}

/// A tag no other process carries: the manager's PID and a counter.
fn unique_tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}#command-{n}", std::process::id())
}

/// The command's output pipe and the bytes kept of it.
struct Output {
    pipe: Option<pipe::Receiver>,
    kept: Vec<u8>,
    capture: usize,
}

impl Output {
    /// Waits for output and reads it; the pipe is dropped at end of file (or an error).
    /// Cancel-safe: nothing is read unless it completes.
    async fn read(&mut self) {
        let Some(pipe) = self.pipe.as_ref() else {
            return std::future::pending().await;
        };
        if pipe.readable().await.is_err() {
            self.pipe = None;
            return;
        }
        self.drain_ready();
    }

    /// Reads what is in the pipe now, without waiting.
    fn drain_ready(&mut self) {
        let mut buf = [0u8; 4096];
        while let Some(pipe) = self.pipe.as_ref() {
            match pipe.try_read(&mut buf) {
                Ok(0) => self.pipe = None,
                Ok(n) => {
                    let room = self.capture.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.pipe = None,
            }
        }
    }
}

/// A command being run; dropped before it ended, it kills the command's tree.
struct Running {
    /// The command's PID, which is also its process group's ID.
    pid: u32,
    /// `None` once the command has been reaped.
    child: Option<Child>,
    tag: String,
}

impl Running {
    /// SIGKILL to the whole tree, the command reaped, and more SIGKILL sweeps until
    /// nothing of it is found (or [`KILL_SWEEP_LIMIT`] passes).
    async fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = self.pid;
        signal_tree(pid, &self.tag, StopSignal::Kill);
        // SIGKILL cannot be caught: the wait is the kernel's, a moment.
        let _ = child.wait().await;
        let until = Instant::now() + KILL_SWEEP_LIMIT;
        while !sweep_scan(pid, &self.tag).is_empty() && Instant::now() < until {
            signal_tree(pid, &self.tag, StopSignal::Kill);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The killed members were re-parented to the manager (its subreaper) as zombies.
        crate::reap_orphans();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal_tree(child.pid(), &self.tag, StopSignal::Kill);
        // Reap it in the background, so it leaves no zombie behind.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sh(script: &str) -> CommandSpec {
        CommandSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            working_directory: std::env::temp_dir(),
            environment: BTreeMap::new(),
        }
    }

    /// Polls `cond` every 10 ms until it holds or 10 s pass.
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cond()
    }

    /// The PIDs a script wrote to `file`, once it has written `n` of them.
    async fn pids_in(file: &Path, n: usize) -> Vec<u32> {
        let mut pids = Vec::new();
        assert!(
            eventually(|| {
                pids = std::fs::read_to_string(file)
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                pids.len() == n
            })
            .await,
            "{} PIDs in {}",
            n,
            file.display()
        );
        pids
    }

    /// Neither alive nor a zombie: no trace of it in /proc.
    fn gone(pid: u32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn exit_status_and_the_first_bytes_of_both_streams() {
        let run = run_command(
            sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
            100,
        )
        .await
        .unwrap();
        assert_eq!(
            run.end,
            CommandEnd::Exited(ExitInfo {
                code: Some(3),
                signal: None
            })
        );
        assert_eq!(String::from_utf8_lossy(&run.output), "out\nerr\n");
        // A command writing more than a pipe holds is drained, never blocked on it.
        let run = run_command(
            sh("head -c 300000 /dev/zero; echo done >&2"),
            Duration::from_secs(10),
            16,
        )
        .await
        .unwrap();
        assert!(
            matches!(run.end, CommandEnd::Exited(e) if e.success()),
            "{run:?}"
        );
        assert_eq!(run.output, vec![0u8; 16]);
    }

    #[tokio::test]
    async fn environment_and_directory_are_the_specs_and_stdin_is_null() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh("pwd; echo $CHECK_VAR; cat; echo ${HSU_API_TOKEN:-none}");
        spec.working_directory = dir.path().to_path_buf();
        spec.environment.insert("CHECK_VAR".into(), "x1".into());
        let run = run_command(spec, Duration::from_secs(10), 1000)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&run.output).into_owned();
        let dir = dir.path().canonicalize().unwrap();
        assert_eq!(text, format!("{}\nx1\nnone\n", dir.display()));
    }

    #[tokio::test]
    async fn an_overrun_kills_and_reaps_the_whole_tree() {
        crate::become_subreaper().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        // A child in its group, one that left for a session of its own, and the shell.
        let script = format!(
            "sleep 30 & a=$!; setsid sleep 30 & echo $a $! $$ > {}; wait",
            file.display()
        );
        let run = run_command(sh(&script), Duration::from_millis(500), 100)
            .await
            .unwrap();
        assert_eq!(run.end, CommandEnd::TimedOut);
        let pids = pids_in(&file, 3).await;
        // Killed, and reaped as well: no zombie is left either. (A member killed in the
        // middle of being handed to this process, its subreaper, is reaped by the sweep
        // that follows; how long a stop takes is for the benchmarks, not this test.)
        assert!(
            eventually(|| pids.iter().all(|&p| gone(p))).await,
            "{pids:?}"
        );
    }

    #[tokio::test]
    async fn what_a_finished_command_left_running_is_killed() {
        crate::become_subreaper().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let script = format!("sleep 30 & echo $! > {}; exit 0", file.display());
        let run = run_command(sh(&script), Duration::from_secs(10), 100)
            .await
            .unwrap();
        assert!(
            matches!(run.end, CommandEnd::Exited(e) if e.success()),
            "{run:?}"
        );
        let pids = pids_in(&file, 1).await;
        assert!(
            eventually(|| pids.iter().all(|&p| gone(p))).await,
            "{pids:?}"
        );
    }

    #[tokio::test]
    async fn an_abandoned_run_kills_its_tree() {
        crate::become_subreaper().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let script = format!("sleep 30 & echo $! $$ > {}; wait", file.display());
        let run = tokio::spawn(run_command(sh(&script), Duration::from_secs(60), 100));
        let pids = pids_in(&file, 2).await;
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        assert!(
            eventually(|| {
                crate::reap_orphans();
                pids.iter().all(|&p| gone(p))
            })
            .await,
            "{pids:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let spec = CommandSpec {
            program: "/nonexistent/hsu-check".into(),
            ..sh("")
        };
        let err = run_command(spec, Duration::from_secs(1), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, SpawnError::NotFound { .. }), "{err}");
    }
}
