//! The platform layer: spawn a process in its own group, signal it, kill its whole tree,
//! and reap orphans the manager inherits as a child subreaper.
//!
//! This is the only place (with `hsu-resource-limits`) that knows which operating system
//! it runs on. The layers above see plain types: PIDs as `u32`, [`StopSignal`] names,
//! [`ExitInfo`], and a [`Child`] to await. Linux is implemented; other back ends slot in
//! beside `linux.rs` behind the same functions.
//!
//! A child starts clean: the leader of its own process group, an empty signal mask, and
//! exactly stdin, stdout and stderr as descriptors (once the binary has called
//! [`seal_inherited_fds`]). A stop is driven step by step from the supervisor's timers —
//! [`signal_tree`] with the stop signal, then with SIGKILL, looking with [`sweep_scan`]
//! until nothing is found — so the supervisor never blocks on a dying tree; nothing here
//! waits.
//!
//! It must never reap a process it did not spawn unless it knows that process to be an
//! orphan handed to the manager (never `waitpid(-1)`): the async runtime reaps the
//! children it spawned, and stealing one of their exit statuses would hide an exit.

use hsu_common::StopSignal;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

mod command;
#[cfg(target_os = "linux")]
mod discover;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as platform;

pub use command::{run_command, CommandEnd, CommandRun, CommandSpec};

/// Environment variable every spawned process (and so its whole tree) carries, holding the
/// owner tag; it is how the manager recognises a grandchild that escaped its group.
pub const TAG_ENV: &str = "HSU_PROCESS_TAG";

/// What to spawn.
#[derive(Debug)]
pub struct SpawnSpec {
    /// The executable to run: a path, or a name looked up in `PATH`.
    pub program: PathBuf,
    /// Arguments passed to the program, without the program name itself.
    pub args: Vec<String>,
    /// Directory the process starts in; it must exist.
    pub working_directory: PathBuf,
    /// Added to the manager's environment.
    pub environment: BTreeMap<String, String>,
    /// Where the process's standard output goes (appended); `None` = /dev/null.
    pub stdout: Option<File>,
    /// Where the process's standard error goes (appended); `None` = /dev/null.
    pub stderr: Option<File>,
    /// Unique owner tag (`<base-dir>#<id>`), exported as [`TAG_ENV`].
    pub tag: String,
    /// Run as this user (a name or a numeric id): its uid, primary group, supplementary
    /// groups, and `HOME`/`USER`/`LOGNAME`. Needs a manager running as root.
    pub user: Option<String>,
    /// Run with this primary group (a name or a numeric id) instead of the user's.
    pub group: Option<String>,
    /// The cgroup to run in: its `cgroup.procs`, opened for writing. The child writes
    /// itself into it before it runs its program, so neither it nor anything it starts is
    /// ever outside that cgroup. `None`: the manager's own cgroup.
    pub cgroup: Option<File>,
    /// The process's limit on open files (`RLIMIT_NOFILE`, soft and hard alike), set
    /// before it runs its program; capped at what the system allows (the hard limit, or
    /// `fs.nr_open` for a manager running as root). `None`: the manager's own.
    pub rlimit_nofile: Option<u64>,
}

/// Variables of the manager's own environment that a child never inherits: the control
/// API's token (a child holding it could take over the manager) and the service
/// manager's notification settings (which are the manager's to use). A process's own
/// `environment` may still set them deliberately.
pub const MANAGER_ONLY_ENV: &[&str] = &[
    "HSU_API_TOKEN",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Why a spawn failed, with the operating system's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The executable does not exist (or is not on `PATH`).
    #[error("executable `{program}` not found: {os}")]
    NotFound {
        /// The program as it was asked for.
        program: String,
        /// The operating system's error message.
        os: String,
    },
    /// The executable exists but may not be run (no execute permission).
    #[error("executable `{program}` cannot be run: {os}")]
    PermissionDenied {
        /// The program as it was asked for.
        program: String,
        /// The operating system's error message.
        os: String,
    },
    /// The executable is a script whose `#!` line names an interpreter that is missing.
    #[error("executable `{program}` names the interpreter `{interpreter}` in its `#!` line, and `{interpreter}` does not exist")]
    InterpreterNotFound {
        /// The script as it was asked for.
        program: String,
        /// The interpreter its first line names.
        interpreter: String,
    },
    /// The executable's path is a directory.
    #[error("executable `{program}` is a directory, not a program")]
    IsADirectory {
        /// The path as it was asked for.
        program: String,
    },
    /// `user` names no user of this system.
    #[error("user `{user}` does not exist on this system")]
    UnknownUser {
        /// The user as configured.
        user: String,
    },
    /// `group` names no group of this system.
    #[error("group `{group}` does not exist on this system")]
    UnknownGroup {
        /// The group as configured.
        group: String,
    },
    /// `user` or `group` is set but the manager cannot change identity.
    #[error("running as `{who}` needs a manager running as root")]
    NeedsRoot {
        /// The user (or group) asked for.
        who: String,
    },
    /// The working directory to start in is missing.
    #[error("working directory `{dir}` does not exist")]
    NoWorkingDirectory {
        /// The missing directory.
        dir: String,
    },
    /// Any other reason the spawn failed.
    #[error("cannot spawn `{program}`: {message}")]
    Other {
        /// The program as it was asked for.
        program: String,
        /// What went wrong, in the operating system's words.
        message: String,
    },
}

/// How a process ended: an exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, if the process exited on its own.
    pub code: Option<i32>,
    /// The number of the signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Whether the process exited with code 0.
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
    /// The process ID, which is also its process group ID.
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

/// [`tree_of`] for many trees at once (`(root, tag)` each), cheaper than one call per
/// tree: what the manager shares between the walks (its own list of children, the tags
/// of orphans handed to it) is read once. For the resource sampler.
pub fn trees_of(roots: &[(u32, &str)]) -> Vec<Vec<u32>> {
    if roots.is_empty() {
        // Nothing to look for: no read of the manager's children (or of /proc) at all.
        return Vec::new();
    }
    platform::trees(roots)
}

/// Spawns `spec` as the leader of a new process group with an empty signal mask, whatever
/// the spawning thread blocks (the standard library would pass that thread's mask on).
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

/// When `pid` started, in clock ticks after boot (with [`boot_id`], what tells a process
/// from a later one that got the same PID); `None` once it is gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    platform::start_time(pid)
}

/// Every live process whose owner tag (see [`TAG_ENV`]) starts with `prefix`, with its
/// tag: what a manager finds of the trees an earlier one left. Reads every process's
/// environment: once at start, never on a timer.
pub fn tagged_under(prefix: &str) -> Vec<(u32, String)> {
    platform::tagged_under(prefix)
}

/// This boot's identity: start times compare only within one boot.
pub fn boot_id() -> Option<String> {
    platform::boot_id()
}

/// Learns of the exit of a process the manager did not spawn (one adopted from an
/// earlier manager, an unmanaged one): its exit status is not the manager's to collect,
/// only the moment it ended.
pub struct ExitWatch(platform::ExitWatch);

impl ExitWatch {
    /// Resolves once the process has exited (from the kernel; nothing is polled).
    pub async fn exited(&self) {
        self.0.exited().await
    }
}

/// A watch on `pid` if it is still the process that started at `started` (see
/// [`start_time`]); an error if it is gone or the PID now belongs to another process.
pub fn watch_exit(pid: u32, started: u64) -> std::io::Result<ExitWatch> {
    platform::watch_exit(pid, started).map(ExitWatch)
}

/// The wall-clock time of a start time (see [`start_time`]), to the second the kernel
/// gives the boot time in; `None` where the boot time cannot be read.
pub fn started_at(started: u64) -> Option<SystemTime> {
    platform::started_at(started)
}

/// The live process (not a zombie) whose PID the file at `path` holds as `<pid>\n`; `None`
/// when the file is missing, holds no PID, or its process is gone. For discovering a
/// process the manager did not start.
pub fn by_pid_file(path: &Path) -> Option<u32> {
    discover::by_pid_file(path)
}

/// The live process called `name` — its `comm` (what `ps` shows), or the file name of
/// its executable — other than the manager itself. Of several, the one whose parent is
/// not called `name` too (a server's master, not its workers), then the oldest.
pub fn by_process_name(name: &str) -> Option<u32> {
    discover::by_process_name(name)
}

/// The live process holding a TCP socket that listens on `port` (IPv4 or IPv6, any
/// address). Of several holding it, chosen as [`by_process_name`] chooses.
pub fn by_port(port: u16) -> Option<u32> {
    discover::by_port(port)
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
    /// Number of file descriptors the manager has open.
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

/// Notifications that a child of the manager changed state (see [`child_events`]).
pub struct ChildEvents(platform::ChildEventStream);

impl ChildEvents {
    /// Waits for the next notification; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

/// Marks every file descriptor above 2 of the manager close-on-exec, so that a child gets
/// exactly stdin, stdout and stderr and never a descriptor the manager inherited from the
/// shell (or service manager) that launched it. Every descriptor the manager opens itself
/// is already close-on-exec (the standard library and Tokio open them so); this seals the
/// ones it was born with. Call it first thing in `main`, before any thread is started.
pub fn seal_inherited_fds() -> std::io::Result<()> {
    platform::seal_inherited_fds()
}

/// Empties the calling thread's signal mask. A manager launched by a program that blocks
/// SIGTERM (a shell script's `trap`, a test runner, a service manager's helper) inherits
/// the block, and would then never see the SIGTERM or SIGHUP meant for it. Call it first
/// thing in `main`, before any thread is started, so every thread inherits the empty mask.
pub fn unblock_signals() -> std::io::Result<()> {
    platform::unblock_signals()
}

/// Sends `signal` to process group `root` and to every member of the tree (see
/// [`tree_of`]) that left that group; returns the members as found before signalling.
/// Does not wait: for a supervisor that starts a stop and watches it from a timer.
pub fn signal_tree(root: u32, tag: &str, signal: StopSignal) -> Vec<u32> {
    let members = tree_of(root, tag);
    signal_group(root, signal);
    for &pid in &members {
        // A member still in the group got the signal above; a second copy could count
        // as a second request (e.g. "press Ctrl-C twice to force").
        if pid != root && platform::group_of(pid) != Some(root) {
            signal_process(pid, signal);
        }
    }
    members
}

/// The tree as a sweep must see it: [`tree_of`], plus, without a subreaper, every
/// process carrying `tag` (orphans went to init and no walk from the manager finds them).
pub fn sweep_scan(root: u32, tag: &str) -> Vec<u32> {
    let mut members = tree_of(root, tag);
    if !platform::is_subreaper() {
        merge(&mut members, &platform::tagged(tag));
    }
    members
}

fn merge(into: &mut Vec<u32>, more: &[u32]) {
    for &p in more {
        if !into.contains(&p) {
            into.push(p);
        }
    }
}

// The tests call libc directly (gettid, fcntl, close) to inspect a spawned child; each
// block carries its `// SAFETY:` comment.
#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn spec(program: &str, args: &[&str], tag: &str) -> SpawnSpec {
        SpawnSpec {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            working_directory: std::env::temp_dir(),
            environment: BTreeMap::new(),
            stdout: None,
            stderr: None,
            tag: tag.into(),
            user: None,
            group: None,
            cgroup: None,
            rlimit_nofile: None,
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
    async fn a_missing_interpreter_and_a_directory_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("job.sh");
        std::fs::write(&script, "#!/nonexistent/bin/interp -x\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = spawn(spec(script.to_str().unwrap(), &[], "t#interp")).unwrap_err();
        assert_eq!(
            err,
            SpawnError::InterpreterNotFound {
                program: script.display().to_string(),
                interpreter: "/nonexistent/bin/interp".into()
            }
        );
        let err = spawn(spec(dir.path().to_str().unwrap(), &[], "t#dir")).unwrap_err();
        assert!(matches!(err, SpawnError::IsADirectory { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "executable `{}` is a directory, not a program",
                dir.path().display()
            )
        );
        // The OS's words appear once.
        let err = spawn(spec("/nonexistent/hsu-test-binary", &[], "t#once")).unwrap_err();
        assert_eq!(err.to_string().matches("os error").count(), 1, "{err}");
    }

    #[tokio::test]
    async fn a_user_and_group_are_taken_on_before_exec() {
        if !is_superuser() {
            eprintln!("SKIPPED a_user_and_group_are_taken_on_before_exec: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("id");
        let run = |user: Option<&str>, group: Option<&str>| {
            let out = File::create(&out_path).unwrap();
            let spec = SpawnSpec {
                stdout: Some(out),
                user: user.map(str::to_owned),
                group: group.map(str::to_owned),
                ..spec(
                    "sh",
                    &[
                        "-c",
                        "echo $(id -u) $(id -g) \"$(id -G)\" $HOME $USER $LOGNAME",
                    ],
                    "t#identity",
                )
            };
            spawn(spec)
        };
        let mut child = run(Some("nobody"), None).unwrap();
        assert!(child.wait().await.unwrap().success());
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let text = std::fs::read_to_string(&out_path).unwrap();
        let expected_start = format!("{} {} ", nobody.uid, nobody.gid);
        assert!(text.starts_with(&expected_start), "{text}");
        assert!(
            text.trim_end()
                .ends_with(&format!("{} nobody nobody", nobody.dir.display())),
            "{text}"
        );
        // A numeric group replaces the user's primary group.
        let mut child = run(Some("nobody"), Some("4242")).unwrap();
        assert!(child.wait().await.unwrap().success());
        let text = std::fs::read_to_string(&out_path).unwrap();
        assert!(text.starts_with(&format!("{} 4242 ", nobody.uid)), "{text}");
        assert_eq!(
            run(Some("no-such-user-hsu"), None).unwrap_err(),
            SpawnError::UnknownUser {
                user: "no-such-user-hsu".into()
            }
        );
        assert_eq!(
            run(None, Some("no-such-group-hsu")).unwrap_err(),
            SpawnError::UnknownGroup {
                group: "no-such-group-hsu".into()
            }
        );
    }

    #[test]
    fn a_blocked_mask_is_emptied() {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        std::thread::spawn(|| {
            let mut blocked = SigSet::empty();
            blocked.add(Signal::SIGTERM);
            blocked.add(Signal::SIGHUP);
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None).unwrap();
            let me = format!("/proc/self/task/{}/status", nix::unistd::gettid());
            assert_ne!(blocked_mask(&me), 0);
            unblock_signals().unwrap();
            assert_eq!(blocked_mask(&me), 0);
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn many_trees_at_once_are_the_trees_one_at_a_time() {
        become_subreaper().unwrap();
        let a = spawn(spec(
            "sh",
            &["-c", "sleep 100 & sleep 100 & wait"],
            "t#many-a",
        ))
        .unwrap();
        let b = spawn(spec("sh", &["-c", "sleep 100 & wait"], "t#many-b")).unwrap();
        assert!(eventually(Duration::from_secs(10), || {
            a.tree().len() == 3 && b.tree().len() == 2
        }));
        let both = trees_of(&[(a.pid(), "t#many-a"), (b.pid(), "t#many-b")]);
        assert_eq!(both, vec![a.tree(), b.tree()]);
        for child in [&a, &b] {
            for pid in child.tree() {
                signal_process(pid, StopSignal::Kill);
            }
        }
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

    /// Whether `pid` ignores SIGTERM (its `SigIgn` mask in `/proc`).
    fn ignores_term(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|t| {
                let hex = t
                    .lines()
                    .find_map(|l| l.strip_prefix("SigIgn:"))?
                    .trim()
                    .to_owned();
                u64::from_str_radix(&hex, 16).ok()
            })
            .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
    }

    /// SIGKILL sweeps of a tree, as the supervisor's teardown does them, until two looks
    /// in a row find nothing (bounded at 5 s); what survives.
    fn sweep_until_gone(root: u32, tag: &str) -> Vec<u32> {
        let end = Instant::now() + Duration::from_secs(5);
        let mut empty_looks = 0;
        loop {
            signal_tree(root, tag, StopSignal::Kill);
            reap_orphans();
            let left = sweep_scan(root, tag);
            empty_looks = if left.is_empty() { empty_looks + 1 } else { 0 };
            if empty_looks == 2 || Instant::now() >= end {
                return left;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn the_stop_signal_takes_the_whole_group() {
        let mut child = spawn(spec(
            "sh",
            &["-c", "sleep 100 & sleep 100 & wait"],
            "t#group",
        ))
        .unwrap();
        assert!(eventually(Duration::from_secs(10), || child.tree().len() == 3));
        let members = child.tree();
        signal_tree(child.pid(), "t#group", StopSignal::Term);
        let exit = child.wait().await.unwrap();
        assert_eq!(exit.signal, Some(libc::SIGTERM), "no SIGKILL was needed");
        assert!(
            eventually(Duration::from_secs(10), || members
                .iter()
                .all(|&p| !is_alive(p))),
            "{members:?}"
        );
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
        // The main process is gone: the orphans are found by their tag alone.
        assert_eq!(sweep_scan(u32::MAX, "t#escaped"), escaped);
        assert!(
            escaped.iter().all(|&p| ignores_term(p)),
            "the orphans ignore SIGTERM"
        );
        signal_tree(u32::MAX, "t#escaped", StopSignal::Term);
        assert!(sweep_until_gone(u32::MAX, "t#escaped").is_empty());
        assert!(escaped.iter().all(|&p| !is_alive(p)), "{escaped:?}");
        // Another tree's tag does not match.
        assert!(sweep_scan(u32::MAX, "t#other").is_empty());
        reap_orphans();
    }

    /// The `SigBlk` mask of `/proc/<pid>/status` (or of `/proc/<pid>/task/<tid>/status`).
    fn blocked_mask(status_path: &str) -> u64 {
        let text = std::fs::read_to_string(status_path).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .unwrap_or_else(|| panic!("no SigBlk in {status_path}: {text}"));
        u64::from_str_radix(line.trim(), 16).unwrap()
    }

    #[test]
    fn child_signal_mask_is_empty_whatever_the_spawning_thread_blocks() {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
        // A thread of its own, so the blocked signals stay out of the other tests.
        let (thread_mask, child_mask) = std::thread::spawn(|| {
            let mut set = SigSet::empty();
            set.add(Signal::SIGTERM);
            set.add(Signal::SIGUSR1);
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).unwrap();
            // SAFETY: gettid(2) has no preconditions.
            let tid = unsafe { libc::gettid() };
            let me = std::process::id();
            let thread_mask = blocked_mask(&format!("/proc/{me}/task/{tid}/status"));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let child_mask = rt.block_on(async {
                let mut child = spawn(spec("sleep", &["30"], "t#sigmask")).unwrap();
                // The mask is the exec'd program's once its name is `sleep`.
                assert!(eventually(Duration::from_secs(10), || {
                    std::fs::read_to_string(format!("/proc/{}/comm", child.pid()))
                        .is_ok_and(|c| c.trim() == "sleep")
                }));
                let mask = blocked_mask(&format!("/proc/{}/status", child.pid()));
                signal_process(child.pid(), StopSignal::Kill);
                child.wait().await.unwrap();
                mask
            });
            (thread_mask, child_mask)
        })
        .join()
        .unwrap();
        let bit = |sig: i32| 1u64 << (sig - 1);
        assert_eq!(
            thread_mask & (bit(libc::SIGTERM) | bit(libc::SIGUSR1)),
            bit(libc::SIGTERM) | bit(libc::SIGUSR1),
            "the spawning thread blocks SIGTERM and SIGUSR1: {thread_mask:#x}"
        );
        assert_eq!(
            child_mask, 0,
            "the child's blocked signals: {child_mask:#x}"
        );
    }

    /// The descriptors `ls` sees in itself, spawned through [`spawn`], without the one it
    /// opens to read the directory (the highest it lists, always 3 in a clean child).
    async fn descriptors_of_a_child(tag: &str) -> Vec<i32> {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("fds");
        let out = File::create(&out_path).unwrap();
        let mut child = spawn(SpawnSpec {
            stdout: Some(out),
            ..spec("ls", &["-1", "/proc/self/fd"], tag)
        })
        .unwrap();
        assert!(child.wait().await.unwrap().success());
        let mut fds: Vec<i32> = std::fs::read_to_string(&out_path)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        fds.sort_unstable();
        fds
    }

    #[tokio::test]
    async fn sealed_manager_gives_children_only_stdio() {
        // An inherited descriptor, as a careless launching shell leaves one: high, so it
        // cannot be confused with `ls`'s own, and without FD_CLOEXEC.
        // SAFETY: F_DUPFD duplicates descriptor 0 (open for every test process) onto the
        // lowest free number >= 200; the copy is closed below.
        let stray = unsafe { libc::fcntl(0, libc::F_DUPFD, 200) };
        assert!(stray >= 200, "{}", std::io::Error::last_os_error());
        let leaked = descriptors_of_a_child("t#fds-before").await;
        assert!(
            leaked.contains(&stray),
            "before sealing the stray fd {stray} reaches the child: {leaked:?}"
        );
        seal_inherited_fds().unwrap();
        // SAFETY: reads the flags of a descriptor this test owns.
        let flags = unsafe { libc::fcntl(stray, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let fds = descriptors_of_a_child("t#fds-after").await;
        // SAFETY: closes the descriptor duplicated above, which nothing else uses.
        unsafe { libc::close(stray) };
        assert_eq!(fds, vec![0, 1, 2, 3], "0-2 and ls's own directory (3)");
    }

    #[tokio::test]
    async fn signal_tree_reaches_members_that_left_the_group() {
        become_subreaper().unwrap();
        let tag = &format!("t{}#sweep-primitives", std::process::id());
        // A TERM-ignoring main, a child in its group and one in a session of its own.
        let mut child = spawn(spec(
            "sh",
            &[
                "-c",
                "setsid sleep 30 & sleep 30 & trap '' TERM; exec sleep 30",
            ],
            tag,
        ))
        .unwrap();
        let root = child.pid();
        let mut members = Vec::new();
        // Ready once all three are `sleep`: the main shell has set its trap and exec'd,
        // and `setsid` has left the group and exec'd.
        assert!(eventually(Duration::from_secs(10), || {
            members = tree_of(root, tag);
            members.len() == 3
                && members.iter().all(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
                })
        }));
        let escaped: Vec<u32> = members
            .iter()
            .copied()
            .filter(|&p| platform::group_of(p) != Some(root))
            .collect();
        assert_eq!(escaped.len(), 1, "{members:?}");
        // `sleep` keeps TERM's default action: the escaped one dies of the signal, so it
        // was signalled although it is in no group of the tree.
        let signalled = signal_tree(root, tag, StopSignal::Term);
        assert_eq!(signalled, members);
        assert!(eventually(Duration::from_secs(10), || !is_alive(
            escaped[0]
        )));
        assert!(is_alive(root), "the main process ignores SIGTERM");
        // SIGKILL sweeps until nothing is left; each returns at once.
        let t = Instant::now();
        assert!(sweep_until_gone(root, tag).is_empty());
        assert!(t.elapsed() < Duration::from_secs(5), "a sweep blocked");
        let exit = child.wait().await.unwrap();
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        assert!(members.iter().all(|&p| !is_alive(p)), "{members:?}");
        reap_orphans();
    }

    /// Live processes (not zombies) carrying `tag`, anywhere on the system.
    fn tagged_alive(tag: &str) -> Vec<u32> {
        platform::tagged(tag)
    }

    #[tokio::test]
    async fn stop_sweeps_a_setsid_fork_storm_until_nothing_is_left() {
        become_subreaper().unwrap();
        // The main shell ignores TERM and keeps starting children that leave for a session
        // of their own, fork two TERM-ignoring sleepers there and exit: the sleepers are
        // orphans in groups the stop signal never reaches, appearing while the tree is
        // being killed.
        let storm = "trap '' TERM; \
             while :; do setsid sh -c 'sleep 30 & sleep 30 & exit 0' & \
             setsid sh -c 'sleep 30 & exit 0' & sleep 0.005; done";
        for round in 0..3 {
            // Unique to this test process, so a survivor of an earlier run cannot be mistaken.
            let tag = format!("t{}#storm-{round}", std::process::id());
            let mut child = spawn(spec("sh", &["-c", storm], &tag)).unwrap();
            // Let it grow: several escaped sleepers exist.
            assert!(eventually(Duration::from_secs(20), || {
                tagged_alive(&tag).len() >= 10
            }));
            assert!(ignores_term(child.pid()), "the storm ignores SIGTERM");
            signal_tree(child.pid(), &tag, StopSignal::Term);
            let survivors = sweep_until_gone(child.pid(), &tag);
            assert!(survivors.is_empty(), "round {round}: {survivors:?}");
            child.wait().await.unwrap();
            let left = tagged_alive(&tag);
            assert!(
                left.is_empty(),
                "round {round}: alive after the stop: {left:?}"
            );
            reap_orphans();
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_exit_watch_sees_the_end_and_refuses_another_start_time() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = sleeper.id();
        let started = start_time(pid).expect("a live process has a start time");
        assert!(boot_id().is_some());
        assert!(
            watch_exit(pid, started + 1).is_err(),
            "another start time is another process"
        );
        let watch = watch_exit(pid, started).unwrap();
        sleeper.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(30), watch.exited())
            .await
            .expect("the exit is seen");
        sleeper.wait().unwrap();
        assert_eq!(start_time(pid), None);
        assert!(watch_exit(pid, started).is_err());
    }
}
