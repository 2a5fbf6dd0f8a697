//! A running `hsu-process-manager` under test.
//!
//! [`ProcessManager::start`] writes the config into a fresh [`TestRun`] directory and
//! spawns the real binary with its output going to `procman.log`. The wrapper reads the
//! journal, waits for events with deadlines, and stops the manager with SIGTERM. Dropping
//! it SIGKILLs the manager and every process that carries the run's tag, so a failing
//! test leaves nothing running behind it.

use crate::assertions::{
    describe_processes, kill_tagged, poll_until, send_signal, tagged_processes, wait_until,
};
use crate::log_parser::{check_journal, check_state_chain, read_journal, Event};
use crate::test_executor::{binaries, TestRun};
use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The default deadline for things expected within a second on a quiet machine.
pub const SHORT: Duration = Duration::from_secs(15);

/// A manager process started by a test.
pub struct ProcessManager {
    run: TestRun,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    started_at: Instant,
    /// Whether [`ProcessManager::failure`] already described this run.
    reported: bool,
    /// Dropping leaves the run's processes alone (for the next manager to adopt).
    leave_processes: bool,
}

impl ProcessManager {
    /// Writes `config_template` (see [`TestRun::write_config`]) and starts the manager on
    /// it: `hsu-process-manager --config <run>/config.yaml --base-dir <run>/base`.
    pub fn start(test_name: &str, config_template: &str) -> ProcessManager {
        Self::start_with_args(TestRun::new(test_name), config_template, &[])
    }

    /// Like [`ProcessManager::start`], in an existing run directory and with `extra`
    /// arguments appended to the command line.
    pub fn start_with_args(run: TestRun, config_template: &str, extra: &[&str]) -> ProcessManager {
        Self::start_with_env(run, config_template, extra, &[])
    }

    /// Like [`ProcessManager::start_with_args`], with `env` added to the manager's
    /// environment (e.g. `HSU_API_TOKEN`).
    pub fn start_with_env(
        run: TestRun,
        config_template: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ProcessManager {
        Self::spawn(run, config_template, extra, env, Vec::new())
    }

    /// Like [`ProcessManager::start_with_args`], with the manager born holding `inherited`
    /// open: each file at the given descriptor number, without close-on-exec, as a
    /// careless launching shell leaves stray descriptors (`exec 7</dev/null`).
    pub fn start_with_inherited_fds(
        run: TestRun,
        config_template: &str,
        extra: &[&str],
        inherited: Vec<(i32, File)>,
    ) -> ProcessManager {
        Self::spawn(run, config_template, extra, &[], inherited)
    }

    fn spawn(
        run: TestRun,
        config_template: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        inherited: Vec<(i32, File)>,
    ) -> ProcessManager {
        use std::os::fd::{AsRawFd, FromRawFd};
        let bins = binaries();
        run.write_config(config_template);
        let log = File::create(&run.log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", run.log_path.display()));
        let log2 = log.try_clone().expect("duplicate the log file handle");
        let mut cmd = Command::new(&bins.manager);
        cmd.arg("--config")
            .arg(&run.config_path)
            .arg("--base-dir")
            .arg(&run.base_dir)
            .args(extra)
            .current_dir(&run.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // The manager's own log level is the config's business, not the environment's.
            .env_remove("RUST_LOG")
            .env_remove("HSU_API")
            .env_remove("HSU_API_TOKEN")
            .envs(env.iter().copied());
        // If the test process dies without dropping the wrapper (killed by a timeout, say),
        // the manager gets SIGTERM and takes its processes down with it.
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // Each file is first copied to a number far above every target (close-on-exec,
        // in this process), so that no dup2 below overwrites a source not yet moved, and
        // none is a no-op dup2(fd, fd) that would keep the close-on-exec flag.
        let sources: Vec<(File, i32)> = inherited
            .iter()
            .map(|(target, file)| {
                // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor this function owns; the
                // copy is wrapped in a File at once, which closes it.
                let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 500) };
                assert!(fd >= 500, "{}", std::io::Error::last_os_error());
                // SAFETY: `fd` was just created and is owned by nothing else.
                (unsafe { File::from_raw_fd(fd) }, *target)
            })
            .collect();
        let moves: Vec<(i32, i32)> = sources
            .iter()
            .map(|(file, target)| (file.as_raw_fd(), *target))
            .collect();
        if !moves.is_empty() {
            // SAFETY: dup2(2) is async-signal-safe; the closure only reads its own vector
            // (allocated before the fork). dup2 leaves the new descriptor without
            // FD_CLOEXEC, so it survives the exec into the manager.
            unsafe {
                cmd.pre_exec(move || {
                    for &(from, to) in &moves {
                        if libc::dup2(from, to) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        // The originals and their copies (close-on-exec) were only needed until the fork.
        drop(sources);
        drop(inherited);
        ProcessManager {
            run,
            child: Some(child),
            exit: None,
            started_at: Instant::now(),
            reported: false,
            leave_processes: false,
        }
    }

    /// The run's directories and paths.
    pub fn run(&self) -> &TestRun {
        &self.run
    }

    /// The manager's own PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The journal as it stands now.
    pub fn events(&self) -> Vec<Event> {
        read_journal(&self.run.journal_path())
    }

    /// The journal's events about process `id`.
    pub fn events_for(&self, id: &str) -> Vec<Event> {
        self.events().into_iter().filter(|e| e.is_for(id)).collect()
    }

    /// Waits for the first journal event matching `pred` (earlier ones included).
    pub fn wait_for_event(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Event {
        self.wait_for_events(what, 1, timeout, |e| pred(e))
            .pop()
            .expect("one event")
    }

    /// Waits until `count` journal events match `pred`; returns the first `count`.
    pub fn wait_for_events(
        &mut self,
        what: &str,
        count: usize,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Vec<Event> {
        let found = poll_until(timeout, || {
            let matching: Vec<Event> = self.events().into_iter().filter(|e| pred(e)).collect();
            if matching.len() >= count {
                return Some(matching.into_iter().take(count).collect());
            }
            // A manager that died will never write the event: fail now, not at the deadline.
            self.poll_exit().map(|_| Vec::new())
        });
        match found {
            Some(events) if events.len() == count => events,
            _ => panic!(
                "{}",
                self.failure(&format!(
                    "waiting for {count} x {what} (timeout {timeout:?})"
                ))
            ),
        }
    }

    /// Polls the journal until `pred` holds for the whole journal.
    pub fn wait_for_journal<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[Event]) -> Option<T>,
    ) -> T {
        let found = poll_until(timeout, || {
            if let Some(v) = pred(&self.events()) {
                return Some(Some(v));
            }
            self.poll_exit().map(|_| None)
        });
        match found {
            Some(Some(v)) => v,
            _ => panic!(
                "{}",
                self.failure(&format!("waiting for {what} (timeout {timeout:?})"))
            ),
        }
    }

    /// The PID the manager recorded in `pids/<id>.pid`, waiting for it to appear.
    pub fn wait_for_pid(&self, id: &str, timeout: Duration) -> u32 {
        let path = self.run.pid_file(id);
        wait_until(&path.display().to_string(), timeout, || {
            crate::assertions::read_pid_file(&path)
        })
    }

    /// The live processes carrying this run's tag.
    pub fn tagged_processes(&self) -> Vec<u32> {
        tagged_processes(&self.run.tag_prefix())
    }

    /// The manager's exit status if it has exited (reaping it).
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.exit = child.try_wait().ok().flatten();
            }
        }
        self.exit
    }

    /// Whether the manager is still running.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Waits for the manager to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match poll_until(timeout, || self.poll_exit()) {
            Some(status) => status,
            None => panic!(
                "{}",
                self.failure(&format!("waiting {timeout:?} for the manager to exit"))
            ),
        }
    }

    /// Sends SIGTERM and waits for the manager to exit; returns its status and how long
    /// the exit took.
    pub fn stop(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        self.signal(libc::SIGTERM);
        let sent = Instant::now();
        let status = self.wait_exit(timeout);
        (status, sent.elapsed())
    }

    /// Ends a test the way every run must end: SIGTERM makes the manager exit 0 within
    /// `timeout`, nothing carrying the run's tag is left alive at that moment, every
    /// process's last state in the journal is `stopped`, and the journal is consistent
    /// ([`check_journal`]). Returns how long the manager took to exit.
    pub fn shutdown_cleanly(&mut self, timeout: Duration) -> Duration {
        let (status, took) = self.stop(timeout);
        if status.code() != Some(0) {
            let hint = if status.signal() == Some(libc::SIGTERM) {
                "\n(killed by the SIGTERM itself: the manager had no handler for it yet, \
                 although the journal may show processes already started)"
            } else {
                ""
            };
            panic!(
                "{}",
                self.failure(&format!(
                    "the manager exited with {} after SIGTERM, expected code 0{hint}",
                    describe_exit(status)
                ))
            );
        }
        // SPEC §5: a stop returns when nothing of the tree is left, so the manager's
        // exit is the moment by which every process must be gone.
        let left = self.tagged_processes();
        if !left.is_empty() {
            panic!(
                "{}",
                self.failure(&format!(
                    "processes of this run outlived the manager's clean exit:\n{}",
                    describe_processes(&left)
                ))
            );
        }
        let events = self.events();
        let mut last_state = std::collections::BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == "state_changed") {
            if let (Some(id), Some(to)) = (e.id.clone(), e.str("to")) {
                last_state.insert(id, to.to_owned());
            }
        }
        let not_stopped: Vec<_> = last_state.iter().filter(|(_, s)| *s != "stopped").collect();
        if !not_stopped.is_empty() {
            panic!(
                "{}",
                self.failure(&format!(
                    "after a clean shutdown these processes are not stopped: {not_stopped:?}"
                ))
            );
        }
        self.assert_journal_consistent();
        took
    }

    /// Panics (with the journal) when the journal breaks an invariant of
    /// [`check_journal`].
    pub fn assert_journal_consistent(&mut self) {
        if let Err(e) = check_journal(&self.events()) {
            panic!("{}", self.failure(&format!("inconsistent journal: {e}")));
        }
    }

    /// Panics (with the journal) unless the `state_changed` chain of process `id` is
    /// legal ([`check_state_chain`]); returns that chain.
    pub fn assert_state_chain(&mut self, id: &str) -> Vec<Event> {
        let events = self.events();
        if let Err(e) = check_state_chain(&events, id) {
            panic!("{}", self.failure(&format!("illegal transitions: {e}")));
        }
        crate::log_parser::state_changes(&events, id)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Sends `signal` to the manager (if it still runs).
    pub fn signal(&mut self, signal: i32) {
        if self.is_running() {
            send_signal(self.pid(), signal);
        }
    }

    /// How long ago the manager was started.
    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// A failure message with everything needed to understand it: the artifacts, the
    /// journal, the manager's output tail and what is still running.
    pub fn failure(&mut self, what: &str) -> String {
        self.reported = true;
        let exit = self.poll_exit();
        let log = self.run.procman_log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: String = tail.into_iter().rev().map(|l| format!("  {l}\n")).collect();
        // Raw lines, not parsed: this runs while panicking and must not panic again.
        let journal = std::fs::read_to_string(self.run.journal_path()).unwrap_or_default();
        let events: String = journal.lines().map(|l| format!("  {l}\n")).collect();
        let tagged = self.tagged_processes();
        format!(
            "{what}\nartifacts: {}\nmanager: {}\njournal:\n{events}procman.log (tail):\n{tail}tagged processes:\n{}",
            self.run.dir.display(),
            match exit {
                Some(s) => format!("exited ({})", describe_exit(s)),
                None => "running".into(),
            },
            describe_processes(&tagged),
        )
    }

    /// Kills everything of this run: the manager, then any process carrying the tag.
    fn kill_everything(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !self.leave_processes {
            kill_tagged(&self.run.tag_prefix());
        }
    }

    /// SIGKILLs the manager (as a crash or an OOM kill would) and lets go of it, leaving
    /// its processes running for the next manager on the same base directory. Returns
    /// the run, for that next manager.
    pub fn kill_leaving_processes(mut self) -> TestRun {
        self.signal(libc::SIGKILL);
        self.wait_exit(SHORT);
        self.release_leaving_processes()
    }

    /// Lets go of a manager that has exited by itself leaving its processes running
    /// (`shutdown --keep-processes`); returns the run, for the next manager.
    pub fn release_leaving_processes(mut self) -> TestRun {
        self.leave_processes = true;
        // A killed manager leaves its `api.addr`: the next manager's is waited for, not
        // this one's read.
        let _ = std::fs::remove_file(self.run.base_dir.join("api.addr"));
        self.run.clone()
    }
}

impl Drop for ProcessManager {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.reported {
            eprintln!("{}", self.failure("the test failed"));
        }
        self.kill_everything();
    }
}

/// "code 0", "signal 9", for messages.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{status}"),
    }
}

/// Runs `hsu-process-manager <args>` to completion (bounded by `timeout`, then killed)
/// with the working directory `run.dir`; stdout and stderr are captured and also saved
/// to `procman.log`.
pub fn run_manager_command(run: &TestRun, args: &[&str], timeout: Duration) -> Output {
    let bins = binaries();
    let mut child = Command::new(&bins.manager)
        .args(args)
        .current_dir(&run.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bins.manager.display()));
    let pipes = crate::assertions::Pipes::drain(&mut child);
    let status = poll_until(timeout, || child.try_wait().ok().flatten());
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let s = child.wait().expect("wait for the killed manager");
            let _ = std::fs::write(&run.log_path, "(killed after timeout)\n");
            panic!("hsu-process-manager {args:?} did not exit within {timeout:?} ({s})");
        }
    };
    let (stdout, stderr) = pipes.join();
    let output = Output {
        status,
        stdout,
        stderr,
    };
    let mut saved = format!("$ hsu-process-manager {}\n", args.join(" ")).into_bytes();
    saved.extend_from_slice(&output.stdout);
    saved.extend_from_slice(&output.stderr);
    saved.extend_from_slice(format!("(exit: {})\n", describe_exit(status)).as_bytes());
    let _ = std::fs::write(&run.log_path, saved);
    output
}
