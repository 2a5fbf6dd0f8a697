//! Linux back end: process groups via the standard library's `process_group`, `/proc`
//! for the tree, the child subreaper flag via prctl, and targeted `waitpid` for orphans.
//!
//! A child does not start clean by itself. The standard library no longer empties the
//! signal mask between fork and exec (it did until rust-lang/rust#101077, 2022; now a
//! child inherits the mask of the thread that spawns it, so that `nohup`-style blocking
//! reaches grandchildren), and it never closes descriptors the manager inherited without
//! `FD_CLOEXEC`. So `spawn` empties the mask itself, in the child before exec, and
//! [`seal_inherited_fds`] marks the inherited descriptors once, at start.

// The platform's calls (pre-exec signal mask, close_range, fcntl) need `unsafe`; this is
// the one module allowed it, and each block says why it is sound.
#![allow(unsafe_code)]

use crate::{ExitInfo, SpawnError, SpawnSpec, TAG_ENV};
use hsu_common::StopSignal;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// PIDs spawned by this manager and not yet reaped by the runtime. The orphan reaper
/// skips them; spawning and scanning both hold the lock so a child that dies before its
/// PID is recorded can never be mistaken for an orphan.
static SPAWNED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn spawned() -> MutexGuard<'static, Option<HashSet<u32>>> {
    SPAWNED.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
pub struct ChildHandle {
    pid: u32,
    child: tokio::process::Child,
    exit: Option<ExitInfo>,
}

impl ChildHandle {
    pub async fn wait(&mut self) -> std::io::Result<ExitInfo> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let status = self.child.wait().await?;
        let exit = ExitInfo {
            code: status.code(),
            signal: status.signal(),
        };
        self.exit = Some(exit);
        if let Some(set) = spawned().as_mut() {
            set.remove(&self.pid);
        }
        Ok(exit)
    }
}

pub fn spawn(spec: SpawnSpec) -> Result<(u32, ChildHandle), SpawnError> {
    let program = spec.program.display().to_string();
    if !spec.working_directory.is_dir() {
        return Err(SpawnError::NoWorkingDirectory {
            dir: spec.working_directory.display().to_string(),
        });
    }
    let identity = resolve_identity(spec.user.as_deref(), spec.group.as_deref())?;
    let mut cmd = tokio::process::Command::new(&spec.program);
    for name in crate::MANAGER_ONLY_ENV {
        cmd.env_remove(name);
    }
    if let Some(user) = identity.as_ref().and_then(|i| i.user.as_ref()) {
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    cmd.args(&spec.args)
        .current_dir(&spec.working_directory)
        .envs(&spec.environment)
        .env(TAG_ENV, &spec.tag)
        .stdin(Stdio::null())
        .stdout(spec.stdout.map_or_else(Stdio::null, Stdio::from))
        .stderr(spec.stderr.map_or_else(Stdio::null, Stdio::from))
        // Its own group, led by itself: the stop signal goes to the group.
        .process_group(0);
    // A signal the spawning thread blocks must not stay blocked in the child: a SIGTERM
    // it never sees turns every stop into a SIGKILL after graceful_timeout. The manager
    // empties its own mask at start, so its threads normally block nothing; the mask is
    // then cleared in the child only when needed, because any pre-exec step makes the
    // standard library fork the whole manager instead of using the much cheaper
    // posix_spawn (vfork) path.
    if !thread_mask_is_empty() {
        clear_mask_in_child(&mut cmd);
    }
    // Before the identity change: joining a cgroup and raising a hard limit may need the
    // rights the child gives up there.
    let confinement = confine_in_child(&mut cmd, spec.cgroup, spec.rlimit_nofile).map_err(|e| {
        SpawnError::Other {
            program: program.clone(),
            message: format!("cannot prepare the spawn: {e}"),
        }
    })?;

    if let Some(id) = identity {
        let Identity {
            uid, gid, groups, ..
        } = id;
        // SAFETY: runs in the child between fork and exec, after the standard library's
        // own set-up: setgroups, setgid and setuid are async-signal-safe system calls,
        // `groups` was allocated before the fork and is only read, and reading errno
        // for the error allocates nothing. Groups and gid go first, while the child is
        // still root.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    let mut registry = spawned();
    let child = cmd.spawn().map_err(|e| {
        match confinement.as_ref().and_then(ConfinementReport::failure) {
            Some(message) => SpawnError::Other {
                program: program.clone(),
                message,
            },
            None => spawn_error(&spec.program, &program, e),
        }
    })?;
    let pid = child.id().ok_or_else(|| SpawnError::Other {
        program,
        message: "exited before its PID could be read".into(),
    })?;
    registry.get_or_insert_with(HashSet::new).insert(pid);
    drop(registry);
    Ok((
        pid,
        ChildHandle {
            pid,
            child,
            exit: None,
        },
    ))
}

/// Whether the calling thread blocks no signal.
fn thread_mask_is_empty() -> bool {
    use nix::sys::signal::{SigSet, SigmaskHow};
    let mut current = SigSet::empty();
    match nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut current)) {
        Ok(()) => current.iter().next().is_none(),
        Err(_) => false,
    }
}

/// Empties the signal mask in the child, between fork and exec.
fn clear_mask_in_child(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: sigemptyset and pthread_sigmask are, and it
    // allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            match libc::pthread_sigmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) {
                0 => Ok(()),
                errno => Err(std::io::Error::from_raw_os_error(errno)),
            }
        });
    }
}

/// What the child reports, on the pipe of [`confine_in_child`], when a step of its
/// confinement fails: the step, then the errno, 4 bytes each in native order. The standard
/// library passes only the errno of a failed pre-exec step back, and "permission denied"
/// must not read as "the executable cannot be run" when it was the cgroup that refused.
const STEP_CGROUP: i32 = 1;
const STEP_NOFILE: i32 = 2;

/// The read end of a child's confinement report, with what the report means.
struct ConfinementReport {
    pipe: std::fs::File,
    nofile: Option<u64>,
}

impl ConfinementReport {
    /// The failure the child reported, in words; `None` if it reported none (the spawn
    /// failed elsewhere: at exec, most likely).
    fn failure(&self) -> Option<String> {
        use std::io::Read;
        let mut buf = [0u8; 8];
        // Non-blocking: a report is written before the child exits, so it is there by
        // the time the spawn has failed, or never.
        (&self.pipe).read_exact(&mut buf).ok()?;
        let step = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let os =
            std::io::Error::from_raw_os_error(i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]));
        Some(match step {
            STEP_CGROUP => format!("cannot place the process in its cgroup: {os}"),
            _ => format!(
                "cannot set its open-file limit (RLIMIT_NOFILE) to {}: {os}",
                self.nofile.unwrap_or(0)
            ),
        })
    }
}

/// Makes the child join its cgroup (writing "0", itself, to the `cgroup.procs` opened
/// for it) and take its open-file limit, between fork and exec: it never runs a line of
/// its program outside the cgroup, and neither does anything it starts. Nothing is added
/// when neither is asked for, so the spawn keeps the standard library's cheaper
/// posix_spawn path. Returns the read end of the failure report.
fn confine_in_child(
    cmd: &mut tokio::process::Command,
    cgroup: Option<std::fs::File>,
    nofile: Option<u64>,
) -> std::io::Result<Option<ConfinementReport>> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if cgroup.is_none() && nofile.is_none() {
        return Ok(None);
    }
    let limit = nofile.map(|n| {
        let cap = nofile_cap();
        let n = n.min(cap) as libc::rlim_t;
        libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        }
    });
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which has room
    // for exactly two; on failure it writes nothing.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nothing else.
    let (reader, writer) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let procs_fd = cgroup.as_ref().map(AsRawFd::as_raw_fd);
    let report_fd = writer.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: write and setrlimit are system calls, errno is
    // read without allocating, and the report is built on the stack. The descriptors it
    // uses stay open in the child because the closure owns their files (`cgroup`,
    // `writer`), which live as long as the command; both are close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            let _owned = (&cgroup, &writer);
            let fail = |step: i32| {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                let mut report = [0u8; 8];
                report[..4].copy_from_slice(&step.to_ne_bytes());
                report[4..].copy_from_slice(&errno.to_ne_bytes());
                libc::write(report_fd, report.as_ptr().cast(), report.len());
                Err(std::io::Error::from_raw_os_error(errno))
            };
            if let Some(fd) = procs_fd {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return fail(STEP_CGROUP);
                }
            }
            if let Some(limit) = &limit {
                if libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0 {
                    return fail(STEP_NOFILE);
                }
            }
            Ok(())
        });
    }
    Ok(Some(ConfinementReport {
        pipe: reader,
        nofile,
    }))
}

/// The highest open-file limit a child can be given: the manager's hard limit, or as
/// root the system's ceiling (`fs.nr_open`), which a hard limit may be raised to.
fn nofile_cap() -> u64 {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given, which lives on this stack frame.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } == 0 {
        current.rlim_max
    } else {
        1024
    };
    if !nix::unistd::geteuid().is_root() {
        return hard;
    }
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(hard)
        .max(hard)
}

/// The identity a child takes on before exec.
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// The user's entry, when one was asked for and the system knows it.
    user: Option<UserEntry>,
}

struct UserEntry {
    name: String,
    home: std::path::PathBuf,
}

/// Looks `user` and `group` up (names or numeric ids) in the system's user database.
fn resolve_identity(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Identity>, SpawnError> {
    use nix::unistd::{Gid, Group, Uid, User};
    let Some(who) = user.or(group) else {
        return Ok(None);
    };
    if !nix::unistd::geteuid().is_root() {
        return Err(SpawnError::NeedsRoot {
            who: who.to_owned(),
        });
    }
    let entry = match user {
        None => None,
        Some(u) => {
            let found = match u.parse::<u32>() {
                Ok(n) => User::from_uid(Uid::from_raw(n)).ok().flatten(),
                Err(_) => User::from_name(u).ok().flatten(),
            };
            match (found, u.parse::<u32>()) {
                (Some(found), _) => Some(Ok(found)),
                // A numeric id the system has no entry for is still an id.
                (None, Ok(n)) => Some(Err(n)),
                (None, Err(_)) => return Err(SpawnError::UnknownUser { user: u.to_owned() }),
            }
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match Group::from_name(g).ok().flatten() {
                Some(found) => found.gid.as_raw(),
                None => {
                    return Err(SpawnError::UnknownGroup {
                        group: g.to_owned(),
                    })
                }
            },
        },
        None => match &entry {
            Some(Ok(u)) => u.gid.as_raw(),
            Some(Err(uid)) => *uid,
            None => nix::unistd::getegid().as_raw(),
        },
    };
    let (uid, groups, user) = match entry {
        Some(Ok(u)) => {
            let name = std::ffi::CString::new(u.name.clone()).unwrap_or_default();
            let mut groups: Vec<libc::gid_t> = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                .map(|g| g.into_iter().map(Gid::as_raw).collect())
                .unwrap_or_default();
            if !groups.contains(&gid) {
                groups.push(gid);
            }
            let entry = UserEntry {
                name: u.name,
                home: u.dir,
            };
            (u.uid.as_raw(), groups, Some(entry))
        }
        Some(Err(uid)) => (uid, vec![gid], None),
        None => (nix::unistd::geteuid().as_raw(), vec![gid], None),
    };
    Ok(Some(Identity {
        uid,
        gid,
        groups,
        user,
    }))
}

/// A spawn failure in one clear sentence: a missing `#!` interpreter and a directory
/// are told apart from a missing or forbidden executable.
fn spawn_error(path: &std::path::Path, program: &str, e: std::io::Error) -> SpawnError {
    let program = program.to_owned();
    let file = locate(path);
    match e.kind() {
        std::io::ErrorKind::NotFound => match file.as_deref().and_then(interpreter_of) {
            Some(interpreter) if !std::path::Path::new(&interpreter).exists() => {
                SpawnError::InterpreterNotFound {
                    program,
                    interpreter,
                }
            }
            _ => SpawnError::NotFound {
                program,
                os: e.to_string(),
            },
        },
        std::io::ErrorKind::PermissionDenied if file.as_deref().is_some_and(|f| f.is_dir()) => {
            SpawnError::IsADirectory { program }
        }
        std::io::ErrorKind::PermissionDenied => SpawnError::PermissionDenied {
            program,
            os: e.to_string(),
        },
        _ => SpawnError::Other {
            program,
            message: e.to_string(),
        },
    }
}

/// The file exec would have run: the path itself, or the first match on `PATH`.
fn locate(program: &std::path::Path) -> Option<std::path::PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        return program.exists().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.exists())
    })
}

/// The interpreter a script's `#!` line names, if it has one.
fn interpreter_of(file: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(file).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    text.split_whitespace().next().map(str::to_owned)
}

fn to_signal(signal: StopSignal) -> Signal {
    match signal {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
        StopSignal::Hup => Signal::SIGHUP,
        StopSignal::Usr1 => Signal::SIGUSR1,
        StopSignal::Usr2 => Signal::SIGUSR2,
        StopSignal::Kill => Signal::SIGKILL,
    }
}

pub fn signal_group(pgid: u32, signal: StopSignal) {
    if let Ok(pgid) = i32::try_from(pgid) {
        if pgid > 1 {
            let _ = killpg(Pid::from_raw(pgid), to_signal(signal));
        }
    }
}

pub fn signal_process(pid: u32, signal: StopSignal) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            let _ = kill(Pid::from_raw(pid), to_signal(signal));
        }
    }
}

pub fn is_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match procfs::process::Process::new(pid).and_then(|p| p.stat()) {
        Ok(stat) => !matches!(stat.state, 'Z' | 'X' | 'x'),
        Err(_) => false,
    }
}

pub fn is_superuser() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Set once the manager is a child subreaper: orphans of its trees then come to it, and
/// a tree can be found by walking children from its roots instead of scanning `/proc`.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
    SUBREAPER.store(true, Ordering::Relaxed);
    Ok(())
}

/// Whether the kernel lists each task's children (`/proc/<pid>/task/<tid>/children`).
fn children_files() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let me = std::process::id();
        std::path::Path::new(&format!("/proc/{me}/task/{me}/children")).exists()
    })
}

/// The direct children of `pid` (of every one of its threads).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

fn is_zombie(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| matches!(s.state, 'Z' | 'X' | 'x'))
}

pub fn self_usage() -> Option<crate::SelfUsage> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = procfs::ticks_per_second().max(1) as f64;
    Some(crate::SelfUsage {
        rss_bytes: stat.rss.saturating_mul(procfs::page_size()),
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        open_fds: me.fd_count().map_or(0, |n| n as u64),
    })
}

/// One row of the process table: what the tree walk needs.
struct Row {
    pid: u32,
    ppid: u32,
    pgrp: u32,
    zombie: bool,
}

fn table() -> Vec<Row> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| p.ok()?.stat().ok())
        .map(|s| Row {
            pid: s.pid as u32,
            ppid: s.ppid as u32,
            pgrp: s.pgrp as u32,
            zombie: matches!(s.state, 'Z' | 'X' | 'x'),
        })
        .collect()
}

fn has_tag(pid: u32, tag: &str) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.environ())
        .is_ok_and(|env| {
            env.get(std::ffi::OsStr::new(TAG_ENV))
                .is_some_and(|v| v.as_encoded_bytes() == tag.as_bytes())
        })
}

pub fn tree(root: u32, tag: &str) -> Vec<u32> {
    if SUBREAPER.load(Ordering::Relaxed) && children_files() {
        tree_by_children(root, tag)
    } else {
        tree_by_scan(root, tag)
    }
}

/// Walks children from the roots: the main process, and orphans of this tree that were
/// handed to the manager. Costs what the tree costs, not what the whole system does.
fn tree_by_children(root: u32, tag: &str) -> Vec<u32> {
    let orphans = Orphans::now();
    walk_tree(root, orphans.tagged(tag))
}

/// The manager's own children that it did not spawn (orphans handed to it as the
/// subreaper), read once, with each one's owner tag.
struct Orphans(Vec<(u32, Option<Vec<u8>>)>);

impl Orphans {
    fn now() -> Orphans {
        let spawned_now: HashSet<u32> = spawned().clone().unwrap_or_default();
        Orphans(
            children(std::process::id())
                .into_iter()
                .filter(|p| !spawned_now.contains(p))
                .map(|p| (p, tag_of(p)))
                .collect(),
        )
    }

    fn tagged<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.0
            .iter()
            .filter(move |(_, t)| t.as_deref() == Some(tag.as_bytes()))
            .map(|(p, _)| *p)
    }
}

fn tag_of(pid: u32) -> Option<Vec<u8>> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.environ())
        .ok()?
        .get(std::ffi::OsStr::new(TAG_ENV))
        .map(|v| v.as_encoded_bytes().to_vec())
}

/// Every live process reachable through children links from `root` and `more`.
fn walk_tree(root: u32, more: impl Iterator<Item = u32>) -> Vec<u32> {
    let me = std::process::id();
    let mut stack = vec![root];
    stack.extend(more);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while let Some(pid) = stack.pop() {
        if pid == me || !seen.insert(pid) {
            continue;
        }
        if is_alive(pid) {
            out.push(pid);
        }
        stack.extend(children(pid));
    }
    out.sort_unstable();
    out
}

/// [`tree`] for many roots at once, reading the manager's own children (and the tags of
/// the orphans among them) once for all of them: the resource sampler's walk.
pub fn trees(roots: &[(u32, &str)]) -> Vec<Vec<u32>> {
    if SUBREAPER.load(Ordering::Relaxed) && children_files() {
        let orphans = Orphans::now();
        roots
            .iter()
            .map(|&(root, tag)| walk_tree(root, orphans.tagged(tag)))
            .collect()
    } else {
        roots
            .iter()
            .map(|&(root, tag)| tree_by_scan(root, tag))
            .collect()
    }
}

/// The whole process table, for when orphans may have gone to init (no subreaper): the
/// main process, its group, tagged orphans of the manager, and all their descendants.
fn tree_by_scan(root: u32, tag: &str) -> Vec<u32> {
    let me = std::process::id();
    let rows = table();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for r in rows.iter().filter(|r| !r.zombie) {
        children.entry(r.ppid).or_default().push(r.pid);
    }
    let spawned_now: HashSet<u32> = spawned().clone().unwrap_or_default();
    let mut roots: Vec<u32> = rows
        .iter()
        .filter(|r| !r.zombie)
        .filter(|r| {
            r.pid == root
                || r.pgrp == root
                || (r.ppid == me && !spawned_now.contains(&r.pid) && has_tag(r.pid, tag))
        })
        .map(|r| r.pid)
        .collect();
    let mut seen: HashSet<u32> = HashSet::new();
    while let Some(pid) = roots.pop() {
        if pid == me || !seen.insert(pid) {
            continue;
        }
        if let Some(kids) = children.get(&pid) {
            roots.extend(kids);
        }
    }
    let mut out: Vec<u32> = seen.into_iter().collect();
    out.sort_unstable();
    out
}

pub fn reap_orphans() -> usize {
    let me = std::process::id();
    // Hold the registry for the whole scan: see SPAWNED.
    let registry = spawned();
    let ours = |pid: &u32| registry.as_ref().is_some_and(|s| s.contains(pid));
    // Children the runtime owns are skipped before their state is read: with hundreds of
    // supervised processes and no orphans, a SIGCHLD costs one read of the children list.
    let zombies: Vec<u32> = if children_files() {
        children(me)
            .into_iter()
            .filter(|p| !ours(p))
            .filter(|&p| is_zombie(p))
            .collect()
    } else {
        table()
            .into_iter()
            .filter(|r| r.ppid == me && r.zombie && !ours(&r.pid))
            .map(|r| r.pid)
            .collect()
    };
    let mut reaped = 0;
    for pid in zombies {
        if let Ok(pid) = i32::try_from(pid) {
            if waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).is_ok() {
                reaped += 1;
            }
        }
    }
    reaped
}

pub struct ChildEventStream(tokio::signal::unix::Signal);

impl ChildEventStream {
    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

pub fn child_events() -> std::io::Result<ChildEventStream> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).map(ChildEventStream)
}

/// The process group of `pid`; `None` when it is gone.
pub fn group_of(pid: u32) -> Option<u32> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .and_then(|p| p.stat())
        .ok()?;
    u32::try_from(stat.pgrp).ok()
}

/// Every live process on the system that carries exactly `tag`, wherever it was
/// re-parented: the last word of a sweep, for when the manager is no subreaper and an
/// orphan went to init. Reads every process's environment: for stops, not for timers.
pub fn tagged(tag: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out: Vec<u32> = table()
        .into_iter()
        .filter(|r| !r.zombie && r.pid != me && has_tag(r.pid, tag))
        .map(|r| r.pid)
        .collect();
    out.sort_unstable();
    out
}

/// Every live process whose tag starts with `prefix`, with its tag.
pub fn tagged_under(prefix: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out: Vec<(u32, String)> = table()
        .into_iter()
        .filter(|r| !r.zombie && r.pid != me)
        .filter_map(|r| {
            let env = procfs::process::Process::new(r.pid as i32)
                .and_then(|p| p.environ())
                .ok()?;
            let tag = env.get(std::ffi::OsStr::new(TAG_ENV))?.to_str()?;
            tag.starts_with(prefix).then(|| (r.pid, tag.to_owned()))
        })
        .collect();
    out.sort_unstable();
    out
}

/// Whether the manager is a child subreaper (see [`become_subreaper`]).
pub fn is_subreaper() -> bool {
    SUBREAPER.load(Ordering::Relaxed)
}

pub fn unblock_signals() -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow};
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(std::io::Error::from)
}

pub fn seal_inherited_fds() -> std::io::Result<()> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC closes nothing: it only sets the
    // close-on-exec flag of the descriptors in the range, and reads or writes no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Older kernels (before 5.11 for the flag, 5.9 for the call): one descriptor at a
    // time, as /proc lists them. The list is collected first, so the directory's own
    // descriptor (closed by then) is just a failed fcntl below.
    let fds: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags; a descriptor
        // that is not open makes them fail with EBADF, which is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// When `pid` started, in clock ticks after boot (`/proc/<pid>/stat` field 22); `None`
/// once it is gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok()?;
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()?;
    (!matches!(stat.state, 'Z' | 'X' | 'x')).then_some(stat.starttime)
}

/// Boot time (`btime` of `/proc/stat`) plus the start time in clock ticks.
pub fn started_at(started: u64) -> Option<std::time::SystemTime> {
    let boot = procfs::boot_time_secs().ok()?;
    let ticks = procfs::ticks_per_second().max(1);
    let after_boot = std::time::Duration::from_secs(started / ticks)
        + std::time::Duration::from_nanos((started % ticks) * 1_000_000_000 / ticks);
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(boot) + after_boot)
}

/// This boot's identity (`/proc/sys/kernel/random/boot_id`): start times only compare
/// within one boot.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A pidfd on a process this manager did not spawn: readable once it exits.
pub struct ExitWatch(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

impl ExitWatch {
    pub async fn exited(&self) {
        // A pidfd stays readable once its process has exited; an error of the reactor
        // (none is expected) is taken as the end too, so a watcher never hangs.
        let _ = self.0.readable().await;
    }
}

/// A watch on `pid`, if it still is the process that started at `started` (in ticks
/// after boot). The pidfd is opened first and the start time read after, so a PID that
/// is reused in between is never watched in its place.
pub fn watch_exit(pid: u32, started: u64) -> std::io::Result<ExitWatch> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let raw_pid = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1; no
    // memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned by the kernel and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if start_time(pid) != Some(started) {
        return Err(std::io::Error::other(format!(
            "pid {pid} is no longer the recorded process"
        )));
    }
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same descriptor
    // until the AsyncFd is dropped.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    Ok(ExitWatch(fd))
}
