//! cgroup v2: one cgroup per run, so the kernel contains the whole tree (no descendant
//! can leave it, whatever it forks or `setsid`s), counts it cheaply, kills it in one
//! write (`cgroup.kill`) and, where controllers are offered, holds its limits.
//!
//! # Layout
//!
//! ```text
//! <v2 mount>/<the manager's own cgroup>/            found in /proc/self/cgroup (0::/path)
//!     hsu-<hash of the base directory>/             CgroupRoot::subtree: the manager's area;
//!                                                    never holds a process itself
//!         <process id>/                             CgroupRoot::create: one run's tree
//! ```
//!
//! The per-process cgroups sit *below* the manager's own, in an area of their own:
//!
//! * Below, because that is where a manager has the right to create cgroups — a systemd
//!   service with `Delegate=yes`, a container's namespace root, or root on a plain host
//!   — and a run's cgroup then belongs to the manager's unit in every tool that shows
//!   cgroups. A sibling of the manager's cgroup would need rights on its parent, which a
//!   delegated service does not have.
//! * In an area of its own (`hsu-<hash>`), because cgroup v2 lets a cgroup hand
//!   controllers to its children only while it holds no process itself (the "no internal
//!   processes" rule): the area never holds one, so it can always pass on what it
//!   receives. The name derives from the base directory ([`instance_name`]), so two
//!   managers on one machine never share an area, and a manager restarted on the same
//!   base directory finds the cgroups of the runs it re-adopts ([`CgroupRoot::open`]).
//! * The manager's own cgroup passes controllers down only when it is the hierarchy's
//!   root or holds no process. A delegated service that wants controllers calls
//!   [`CgroupRoot::vacate`] first, moving the manager into a leaf beside its area, as
//!   systemd's delegation guide recommends; without it, runs are still contained and
//!   killed through their cgroups, and limits without a controller fall back to polling.
//!
//! Detection reads `/proc/self/mountinfo` (the `cgroup2` mount) and `/proc/self/cgroup`
//! (the `0::` line), and a directory counts as a cgroup when it has `cgroup.controllers` —
//! never by whether `mkdir` succeeds. Everything else is reading and writing files, so the
//! module runs as well on a fake cgroupfs (a temporary directory holding the files) for
//! tests, through [`CgroupRoot::at`] and [`Cgroup::at`].

use crate::plan::{Plan, CPU_PERIOD_USEC};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A set of cgroup controllers (plus the core freezer, which is no controller but answers
/// the same question: can the kernel do this here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Controllers(u8);

impl Controllers {
    /// `memory`: memory.current, memory.max, memory.high, memory.events.
    pub const MEMORY: Controllers = Controllers(1);
    /// `cpu`: cpu.max.
    pub const CPU: Controllers = Controllers(2);
    /// `pids`: pids.current, pids.max.
    pub const PIDS: Controllers = Controllers(4);
    /// The core `cgroup.freeze` file (kernel 5.2 and later), in every non-root cgroup.
    pub const FREEZE: Controllers = Controllers(8);

    /// The controllers this crate enables for runs, in the order they are enabled.
    const USED: [(Controllers, &'static str); 3] = [
        (Controllers::MEMORY, "memory"),
        (Controllers::CPU, "cpu"),
        (Controllers::PIDS, "pids"),
    ];

    /// No controller.
    pub const fn empty() -> Controllers {
        Controllers(0)
    }

    /// Every controller this crate uses, and the freezer.
    pub const fn all() -> Controllers {
        Controllers(15)
    }

    /// Whether every member of `other` is in `self`.
    pub fn contains(self, other: Controllers) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of both sets.
    pub fn with(self, other: Controllers) -> Controllers {
        Controllers(self.0 | other.0)
    }

    /// `self` without the members of `other`.
    pub fn without(self, other: Controllers) -> Controllers {
        Controllers(self.0 & !other.0)
    }

    /// Parses a `cgroup.controllers` line ("cpuset cpu io memory pids"); controllers this
    /// crate does not use are ignored.
    pub fn parse(line: &str) -> Controllers {
        let mut out = Controllers::empty();
        for word in line.split_ascii_whitespace() {
            for (c, name) in Controllers::USED {
                if word == name {
                    out = out.with(c);
                }
            }
        }
        out
    }

    /// The names of the controllers in the set (not the freezer), e.g. `memory, pids`;
    /// `none` for none.
    pub fn names(self) -> String {
        let names: Vec<&str> = Controllers::USED
            .iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// A cgroup operation that failed, with the path and the system's words.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The directory has no `cgroup.controllers`: not a cgroup v2 directory.
    #[error("`{path}` is not a cgroup v2 directory (it has no cgroup.controllers)")]
    NotCgroup {
        /// The directory.
        path: PathBuf,
    },
    /// A name that cannot be a cgroup of this crate (empty, `.`, `..`, a `/` or a `.`).
    #[error("`{name}` cannot name a cgroup")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// The cgroup still holds processes.
    #[error("cgroup `{path}` still holds processes")]
    Busy {
        /// The cgroup.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("cannot {op} `{path}`: {source}")]
    Io {
        /// What was being done, e.g. `create` or `write`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

impl CgroupError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
        CgroupError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the failure is a lack of rights (not root, no delegated cgroup): the
    /// normal case for an unprivileged manager, to say once and fall back.
    pub fn is_permission(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::PermissionDenied)
                || source.raw_os_error() == Some(1) /* EPERM */
                || source.raw_os_error() == Some(30) /* EROFS */)
    }
}

/// The name of a manager's area below its own cgroup: `hsu-` and a hash of its base
/// directory, the same for every start of a manager on that directory.
pub fn instance_name(base_directory: &Path) -> String {
    // FNV-1a: stable across Rust versions and platforms, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in base_directory.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("hsu-{hash:016x}")
}

/// A cgroup v2 directory under which cgroups are created: the manager's own cgroup (from
/// [`CgroupRoot::detect`]), or its area ([`CgroupRoot::subtree`]).
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
    available: Controllers,
}

impl CgroupRoot {
    /// The manager's own cgroup in the cgroup v2 hierarchy; `None` where there is none (no
    /// v2 mount, or the manager's cgroup is not visible under it).
    #[cfg(target_os = "linux")]
    pub fn detect() -> Result<Option<CgroupRoot>, CgroupError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|e| CgroupError::io("read", Path::new(p), e))
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        let own = read("/proc/self/cgroup")?;
        let Some(dir) = own_cgroup_dir(&mountinfo, &own) else {
            return Ok(None);
        };
        if !dir.join("cgroup.controllers").is_file() {
            return Ok(None);
        }
        CgroupRoot::at(dir).map(Some)
    }

    /// The cgroup v2 directory `dir` (a real one, or a fake for tests): it must hold
    /// `cgroup.controllers`.
    pub fn at(dir: impl Into<PathBuf>) -> Result<CgroupRoot, CgroupError> {
        let dir = dir.into();
        let file = dir.join("cgroup.controllers");
        let available = match std::fs::read_to_string(&file) {
            Ok(text) => Controllers::parse(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CgroupError::NotCgroup { path: dir })
            }
            Err(e) => return Err(CgroupError::io("read", &file, e)),
        };
        Ok(CgroupRoot { dir, available })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The controllers offered to this cgroup (its `cgroup.controllers`), which it can
    /// hand down to the cgroups created in it.
    pub fn available(&self) -> Controllers {
        self.available
    }

    /// The controllers this crate would use that the kernel does not offer here: the
    /// limits that fall back to polling, to say once.
    pub fn missing(&self) -> Controllers {
        Controllers(Controllers::all().0 & !Controllers::FREEZE.0).without(self.available)
    }

    /// The manager's area `<this>/<name>` (created if missing; see the module docs), with
    /// every controller this crate uses that this cgroup can hand down enabled for it.
    pub fn subtree(&self, name: &str) -> Result<CgroupRoot, CgroupError> {
        check_name(name)?;
        self.enable_for_children();
        let dir = self.dir.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CgroupError::io("create", &dir, e)),
        }
        CgroupRoot::at(dir)
    }

    /// A fresh cgroup `<this>/<id>` for one run, with every controller this cgroup can
    /// hand down enabled for it. A leftover empty cgroup of that name (a manager that
    /// died after its run ended) is replaced, so its counters start from zero; one that
    /// still holds processes is an error ([`CgroupError::Busy`]): it is a run to re-adopt
    /// with [`CgroupRoot::open`], or to kill.
    pub fn create(&self, id: &str) -> Result<Cgroup, CgroupError> {
        check_name(id)?;
        self.enable_for_children();
        let dir = self.dir.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let old = Cgroup::at(&dir);
                if old.populated().unwrap_or(true) {
                    return Err(CgroupError::Busy { path: dir });
                }
                old.remove()?;
                std::fs::create_dir(&dir).map_err(|e| CgroupError::io("create", &dir, e))?;
            }
            Err(e) => return Err(CgroupError::io("create", &dir, e)),
        }
        Ok(Cgroup::at(dir))
    }

    /// The existing cgroup `<this>/<id>`, if there is one: for re-adopting a run a
    /// previous manager started.
    pub fn open(&self, id: &str) -> Result<Option<Cgroup>, CgroupError> {
        check_name(id)?;
        let dir = self.dir.join(id);
        Ok(dir.join("cgroup.procs").is_file().then(|| Cgroup::at(dir)))
    }

    /// Moves the calling process (all its threads) into the leaf `<this>/<leaf>`, so this
    /// cgroup holds no process and may hand controllers down (cgroup v2's "no internal
    /// processes" rule). For a manager that owns its cgroup (a systemd service with
    /// `Delegate=yes`); refused with [`CgroupError::Busy`] when other processes share it,
    /// which are not the manager's to move. Call it before [`CgroupRoot::subtree`].
    pub fn vacate(&self, leaf: &str) -> Result<(), CgroupError> {
        check_name(leaf)?;
        let procs = self.dir.join("cgroup.procs");
        let text =
            std::fs::read_to_string(&procs).map_err(|e| CgroupError::io("read", &procs, e))?;
        let me = std::process::id();
        let others = parse_pids(text.as_bytes()).into_iter().any(|p| p != me);
        if others {
            return Err(CgroupError::Busy {
                path: self.dir.clone(),
            });
        }
        let dir = self.dir.join(leaf);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CgroupError::io("create", &dir, e)),
        }
        let target = dir.join("cgroup.procs");
        write_file(&target, &me.to_string())
    }

    /// Enables, one by one, each controller this crate uses that this cgroup is offered.
    /// A refusal (processes in this cgroup, a controller busy) only means the children go
    /// without it: their [`Cgroup::controllers`] say what they got.
    fn enable_for_children(&self) {
        let file = self.dir.join("cgroup.subtree_control");
        for (c, name) in Controllers::USED {
            if self.available.contains(c) {
                let _ = OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .and_then(|mut f| f.write_all(format!("+{name}\n").as_bytes()));
            }
        }
    }
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name.contains(['/', '.', '\n', '\0']) {
        return Err(CgroupError::InvalidName { name: name.into() });
    }
    Ok(())
}

/// One run's cgroup. Cheap to clone: a path and what the kernel offers in it.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
    controllers: Controllers,
}

impl Cgroup {
    /// The cgroup at `dir` (real or fake), with the controllers its `cgroup.controllers`
    /// lists (none if it has no such file) and the freezer if it has `cgroup.freeze`.
    pub fn at(dir: impl Into<PathBuf>) -> Cgroup {
        let dir = dir.into();
        let mut controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
            .map(|t| Controllers::parse(&t))
            .unwrap_or_default();
        if dir.join("cgroup.freeze").is_file() {
            controllers = controllers.with(Controllers::FREEZE);
        }
        Cgroup { dir, controllers }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// What the kernel offers in this cgroup: the controllers enabled for it, and the
    /// freezer. Pass it to [`Plan::new`].
    pub fn controllers(&self) -> Controllers {
        self.controllers
    }

    /// `cgroup.procs`, opened for writing, for `SpawnSpec::cgroup`: the child writes to it
    /// to join this cgroup before it runs its program.
    pub fn procs_file(&self) -> Result<File, CgroupError> {
        let path = self.dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| CgroupError::io("open", &path, e))
    }

    /// Writes `plan`'s kernel limits: for each controller the cgroup has, its files are
    /// set to the plan's value or back to `max`, so re-applying a plan replaces the last.
    pub fn apply(&self, plan: &Plan) -> Result<(), CgroupError> {
        let value = |v: Option<u64>| v.map_or_else(|| "max".to_owned(), |v| v.to_string());
        if self.controllers.contains(Controllers::MEMORY) {
            self.write("memory.max", &value(plan.memory_max))?;
            self.write("memory.high", &value(plan.memory_high))?;
            self.write(
                "memory.oom.group",
                if plan.memory_oom_group { "1" } else { "0" },
            )?;
        }
        if self.controllers.contains(Controllers::CPU) {
            let quota = value(plan.cpu_max_quota_usec);
            self.write("cpu.max", &format!("{quota} {CPU_PERIOD_USEC}"))?;
        }
        if self.controllers.contains(Controllers::PIDS) {
            self.write("pids.max", &value(plan.pids_max))?;
        }
        Ok(())
    }

    /// The processes in the cgroup (and in any cgroup below it), as `cgroup.procs` lists
    /// them.
    pub fn members(&self) -> Result<Vec<u32>, CgroupError> {
        let mut out = Vec::new();
        self.walk(&mut |dir| {
            let path = dir.join("cgroup.procs");
            let bytes = std::fs::read(&path).map_err(|e| CgroupError::io("read", &path, e))?;
            out.extend(parse_pids(&bytes));
            Ok(())
        })?;
        Ok(out)
    }

    /// CPU time used by every process that ever ran in the cgroup, in microseconds
    /// (`cpu.stat` `usage_usec`; present without the cpu controller).
    pub fn cpu_usage_usec(&self) -> Result<u64, CgroupError> {
        self.keyed("cpu.stat", "usage_usec")
    }

    /// Memory charged to the cgroup, in bytes (`memory.current`: resident memory plus
    /// page cache and kernel memory).
    pub fn memory_current(&self) -> Result<u64, CgroupError> {
        self.number("memory.current")
    }

    /// Processes (and threads) in the cgroup, as the pids controller counts them.
    pub fn pids_current(&self) -> Result<u64, CgroupError> {
        self.number("pids.current")
    }

    /// How many processes the OOM killer killed in the cgroup (`memory.events`
    /// `oom_kill`); 0 without the memory controller.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        if !self.controllers.contains(Controllers::MEMORY) {
            return Ok(0);
        }
        self.keyed("memory.events", "oom_kill")
    }

    /// Whether any process is left in the cgroup or below it (`cgroup.events`).
    pub fn populated(&self) -> Result<bool, CgroupError> {
        Ok(self.keyed("cgroup.events", "populated")? != 0)
    }

    /// Freezes (or thaws) every process in the cgroup at once (`cgroup.freeze`).
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// SIGKILLs every process in the cgroup and below it, with `cgroup.kill` (one write;
    /// the kernel leaves no window for a fork to escape). Where the file is missing
    /// (kernels before 5.14) the cgroup is frozen, so nothing in it can fork, each member
    /// is sent SIGKILL (which kills a frozen process), and that is repeated until the
    /// cgroup is empty. Returns at once when `cgroup.kill` exists: wait for
    /// [`populated`](Cgroup::populated) to turn false.
    pub fn kill(&self) -> Result<(), CgroupError> {
        self.kill_with(&mut |pid| crate::platform::sigkill(pid))
    }

    /// [`kill`](Cgroup::kill) with the signalling of the fallback passed in (tests).
    pub(crate) fn kill_with(&self, sigkill: &mut dyn FnMut(u32)) -> Result<(), CgroupError> {
        if self.dir.join("cgroup.kill").is_file() {
            return self.write("cgroup.kill", "1");
        }
        let freezer = self.controllers.contains(Controllers::FREEZE);
        if freezer {
            self.set_frozen(true)?;
        }
        let mut result = Err(CgroupError::Busy {
            path: self.dir.clone(),
        });
        for _ in 0..100 {
            let members = self.members()?;
            if members.is_empty() {
                result = Ok(());
                break;
            }
            members.into_iter().for_each(&mut *sigkill);
            std::thread::sleep(Duration::from_millis(5));
        }
        if freezer {
            // Dying processes in a frozen cgroup finish dying; thawing lets the cgroup be
            // used again if it is kept.
            let _ = self.set_frozen(false);
        }
        result
    }

    /// Waits, polling `cgroup.events`, until the cgroup is empty or `timeout` passes;
    /// whether it is empty. Blocks: for tests and blocking threads, not for a supervisor's
    /// loop (which polls [`populated`](Cgroup::populated) from its timer).
    pub fn wait_empty(&self, timeout: Duration) -> Result<bool, CgroupError> {
        let end = Instant::now() + timeout;
        loop {
            if !self.populated()? {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the cgroup, and any cgroup a process created below it (deepest first). It
    /// must be empty: kill it and wait for it first.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut dirs = Vec::new();
        self.walk(&mut |dir| {
            dirs.push(dir.to_owned());
            Ok(())
        })?;
        for dir in dirs.iter().rev() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(16) /* EBUSY */ => {
                    return Err(CgroupError::Busy { path: dir.clone() })
                }
                Err(e) => return Err(CgroupError::io("remove", dir, e)),
            }
        }
        Ok(())
    }

    /// Calls `f` on this cgroup's directory and every cgroup directory below it, parents
    /// before children.
    fn walk(&self, f: &mut dyn FnMut(&Path) -> Result<(), CgroupError>) -> Result<(), CgroupError> {
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            f(&dir)?;
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CgroupError::io("read", &dir, e)),
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        write_file(&self.dir.join(file), value)
    }

    fn number(&self, file: &str) -> Result<u64, CgroupError> {
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| CgroupError::io("read", &path, e))?;
        text.trim().parse().map_err(|_| {
            CgroupError::io("parse", &path, io::Error::from(io::ErrorKind::InvalidData))
        })
    }

    fn keyed(&self, file: &str, key: &str) -> Result<u64, CgroupError> {
        let path = self.dir.join(file);
        let mut bytes = Vec::with_capacity(256);
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| CgroupError::io("read", &path, e))?;
        keyed_value(&bytes, key.as_bytes()).ok_or_else(|| {
            CgroupError::io("parse", &path, io::Error::from(io::ErrorKind::InvalidData))
        })
    }
}

/// Writes `value` to an existing file (never creates one: a missing file is a missing
/// controller, or a kernel too old for it).
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| CgroupError::io("write", path, e))
}

/// The value of `key` in a flat-keyed file (`cpu.stat`, `memory.events`, `cgroup.events`:
/// one `key value` a line).
pub(crate) fn keyed_value(bytes: &[u8], key: &[u8]) -> Option<u64> {
    bytes.split(|&b| b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(b" ")?;
        parse_u64(rest)
    })
}

/// A decimal number, surrounding whitespace allowed.
pub(crate) fn parse_u64(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// The PIDs of a `cgroup.procs` file, one a line.
pub(crate) fn parse_pids(bytes: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    parse_pids_into(bytes, &mut out);
    out
}

/// [`parse_pids`] into a reused vector (cleared first).
pub(crate) fn parse_pids_into(bytes: &[u8], out: &mut Vec<u32>) {
    out.clear();
    out.extend(
        bytes
            .split(|&b| b == b'\n')
            .filter_map(parse_u64)
            .filter_map(|p| u32::try_from(p).ok()),
    );
}

/// The directory of the manager's own cgroup, from the text of `/proc/self/mountinfo` and
/// `/proc/self/cgroup`: the `cgroup2` mount point joined with the `0::` path, made relative
/// to the mount's root (a namespaced or bind-mounted hierarchy shows only part of the
/// tree). `None` when there is no v2 mount or the manager's cgroup lies outside it.
pub fn own_cgroup_dir(mountinfo: &str, proc_cgroup: &str) -> Option<PathBuf> {
    let own = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim_end_matches(" (deleted)");
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let (head, tail) = line.split_once(" - ")?;
        if tail.split_ascii_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = head.split_ascii_whitespace();
        let root = unescape(fields.nth(3)?);
        let point = unescape(fields.next()?);
        let relative = if root == "/" {
            own.strip_prefix('/').unwrap_or(own)
        } else {
            let rest = own.strip_prefix(root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest.trim_start_matches('/')
        };
        let dir = Path::new(&point).join(relative);
        Some(if relative.is_empty() {
            PathBuf::from(point)
        } else {
            dir
        })
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(oct) = bytes.get(i + 1..i + 4) {
                if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                    let code = oct.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
                    if let Ok(byte) = u8::try_from(code) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CpuLimit, LimitPolicy, Limits, MemoryLimit};

    /// A fake cgroupfs directory: files written as given.
    struct Fake(tempfile::TempDir);

    impl Fake {
        fn new(files: &[(&str, &str)]) -> Fake {
            let fake = Fake(tempfile::tempdir().unwrap());
            fake.put(files);
            fake
        }

        fn put(&self, files: &[(&str, &str)]) {
            for (name, text) in files {
                let path = self.0.path().join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
        }

        fn get(&self, name: &str) -> String {
            std::fs::read_to_string(self.0.path().join(name)).unwrap()
        }

        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    #[test]
    fn controllers_are_parsed_from_the_kernel_line() {
        let c = Controllers::parse("cpuset cpu io memory hugetlb pids rdma misc\n");
        assert!(c.contains(
            Controllers::MEMORY
                .with(Controllers::CPU)
                .with(Controllers::PIDS)
        ));
        assert!(!c.contains(Controllers::FREEZE));
        assert_eq!(c.names(), "memory, cpu, pids");
        assert_eq!(Controllers::parse("hugetlb\n"), Controllers::empty());
        assert_eq!(Controllers::empty().names(), "none");
        assert_eq!(
            Controllers::all().without(Controllers::CPU).names(),
            "memory, pids"
        );
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_own_cgroup_is_found_on_a_hybrid_and_a_unified_layout() {
        let own = "4:memory:/x\n0::/\n";
        assert_eq!(
            own_cgroup_dir(HYBRID, own),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            own_cgroup_dir(unified, "0::/system.slice/hsu.service\n"),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/hsu.service"))
        );
    }

    #[test]
    fn a_partly_mounted_hierarchy_is_read_relative_to_its_root() {
        let bind = "50 40 0:26 /system.slice /mnt/cg\\040x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_dir(bind, "0::/system.slice/a.service\n"),
            Some(PathBuf::from("/mnt/cg x/a.service"))
        );
        assert_eq!(
            own_cgroup_dir(bind, "0::/system.slice\n"),
            Some(PathBuf::from("/mnt/cg x"))
        );
        // Outside the mounted part, or only a name prefix of it: not visible.
        assert_eq!(own_cgroup_dir(bind, "0::/user.slice/x\n"), None);
        assert_eq!(own_cgroup_dir(bind, "0::/system.slice2\n"), None);
    }

    #[test]
    fn no_v2_mount_or_no_v2_line_is_none() {
        let v1only = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(own_cgroup_dir(v1only, "0::/\n"), None);
        assert_eq!(own_cgroup_dir(HYBRID, "4:memory:/x\n"), None);
    }

    #[test]
    fn a_directory_without_cgroup_controllers_is_no_cgroup() {
        let fake = Fake::new(&[("cgroup.procs", "")]);
        let err = CgroupRoot::at(fake.path()).unwrap_err();
        assert!(matches!(err, CgroupError::NotCgroup { .. }), "{err}");
        assert!(err.to_string().contains("no cgroup.controllers"), "{err}");
    }

    #[test]
    fn the_instance_name_is_stable_and_per_directory() {
        let a = instance_name(Path::new("/var/lib/hsu-process-manager"));
        assert_eq!(a, instance_name(Path::new("/var/lib/hsu-process-manager")));
        assert_ne!(a, instance_name(Path::new("/var/lib/other")));
        assert!(a.starts_with("hsu-") && a.len() == 20, "{a}");
        assert!(check_name(&a).is_ok());
    }

    #[test]
    fn controllers_are_handed_down_to_the_area_and_to_each_run() {
        let fake = Fake::new(&[
            ("cgroup.controllers", "cpuset cpu io memory pids\n"),
            ("cgroup.subtree_control", ""),
            // The kernel fills a new cgroup's files; the fake has them ready.
            ("hsu-x/cgroup.controllers", "cpu memory pids\n"),
            ("hsu-x/cgroup.subtree_control", ""),
        ]);
        let own = CgroupRoot::at(fake.path()).unwrap();
        assert_eq!(own.missing(), Controllers::empty());
        let area = own.subtree("hsu-x").unwrap();
        assert_eq!(fake.get("cgroup.subtree_control"), "+memory\n+cpu\n+pids\n");
        let run = area.create("web").unwrap();
        assert_eq!(
            fake.get("hsu-x/cgroup.subtree_control"),
            "+memory\n+cpu\n+pids\n"
        );
        assert_eq!(run.path(), fake.path().join("hsu-x/web"));
        assert!(run.path().is_dir());
        assert!(
            area.open("web").unwrap().is_none(),
            "the fake has no cgroup.procs"
        );
        assert!(area.open("nothing").unwrap().is_none());
    }

    #[test]
    fn only_offered_controllers_are_enabled_and_missing_ones_are_told() {
        let fake = Fake::new(&[
            ("cgroup.controllers", "hugetlb\n"),
            ("cgroup.subtree_control", ""),
        ]);
        let own = CgroupRoot::at(fake.path()).unwrap();
        assert_eq!(own.missing().names(), "memory, cpu, pids");
        own.create("web").unwrap();
        assert_eq!(fake.get("cgroup.subtree_control"), "");
    }

    #[test]
    fn a_populated_leftover_is_busy_and_names_are_checked() {
        let fake = Fake::new(&[
            ("cgroup.controllers", ""),
            ("web/cgroup.events", "populated 1\nfrozen 0\n"),
            ("web/cgroup.procs", "42\n"),
        ]);
        let own = CgroupRoot::at(fake.path()).unwrap();
        let err = own.create("web").unwrap_err();
        assert!(matches!(err, CgroupError::Busy { .. }), "{err}");
        assert!(own.open("web").unwrap().is_some());
        for bad in ["", ".", "..", "a/b", "memory.max"] {
            assert!(matches!(
                own.create(bad),
                Err(CgroupError::InvalidName { .. })
            ));
        }
    }

    fn limits(policy: LimitPolicy) -> Limits {
        Limits {
            memory: Some(MemoryLimit {
                max_rss: 64 << 20,
                warning_threshold: None,
                policy,
            }),
            cpu: Some(CpuLimit {
                max_percent: 150.0,
                warning_threshold: None,
                policy,
                sustained_for: Duration::ZERO,
            }),
            ..Limits::default()
        }
    }

    #[test]
    fn apply_writes_the_plan_and_resets_what_it_does_not_set() {
        let files = [
            ("cgroup.controllers", "memory cpu pids\n"),
            ("memory.max", "max\n"),
            ("memory.high", "max\n"),
            ("memory.oom.group", "0\n"),
            ("cpu.max", "max 100000\n"),
            ("pids.max", "max\n"),
        ];
        let fake = Fake::new(&files);
        let cg = Cgroup::at(fake.path());
        let plan = Plan::new(&limits(LimitPolicy::ImmediateKill), Some(cg.controllers()));
        cg.apply(&plan).unwrap();
        assert_eq!(fake.get("memory.max"), (64u64 << 20).to_string());
        assert_eq!(fake.get("memory.oom.group"), "1");
        assert_eq!(fake.get("cpu.max"), "max 100000");
        let plan = Plan::new(&limits(LimitPolicy::Throttle), Some(cg.controllers()));
        cg.apply(&plan).unwrap();
        assert_eq!(fake.get("memory.max"), "max");
        assert_eq!(fake.get("memory.high"), (64u64 << 20).to_string());
        assert_eq!(fake.get("memory.oom.group"), "0");
        assert_eq!(fake.get("cpu.max"), "150000 100000");
        assert_eq!(fake.get("pids.max"), "max");
    }

    #[test]
    fn apply_names_a_file_it_cannot_write() {
        let fake = Fake::new(&[("cgroup.controllers", "cpu\n")]);
        let cg = Cgroup::at(fake.path());
        let plan = Plan::new(&limits(LimitPolicy::Throttle), Some(cg.controllers()));
        let err = cg.apply(&plan).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot write `") && err.contains("cpu.max"),
            "{err}"
        );
        // A cgroup without controllers has nothing to write.
        let bare = Fake::new(&[]);
        Cgroup::at(bare.path()).apply(&plan).unwrap();
    }

    #[test]
    fn counters_events_and_members_are_read() {
        let fake = Fake::new(&[
            ("cgroup.controllers", "memory pids\n"),
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 1\nfrozen 0\n"),
            ("cgroup.procs", "10\n11\n"),
            (
                "cpu.stat",
                "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n",
            ),
            ("memory.current", "4096\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 1\n",
            ),
            ("pids.current", "3\n"),
            // A cgroup a process made below its own.
            ("inner/cgroup.procs", "12\n"),
        ]);
        let cg = Cgroup::at(fake.path());
        assert!(cg.controllers().contains(Controllers::FREEZE));
        assert_eq!(cg.cpu_usage_usec().unwrap(), 1234);
        assert_eq!(cg.memory_current().unwrap(), 4096);
        assert_eq!(cg.pids_current().unwrap(), 3);
        assert_eq!(cg.oom_kills().unwrap(), 2);
        assert!(cg.populated().unwrap());
        let mut members = cg.members().unwrap();
        members.sort_unstable();
        assert_eq!(members, [10, 11, 12]);
        fake.put(&[("cgroup.events", "populated 0\nfrozen 0\n")]);
        assert!(cg.wait_empty(Duration::from_millis(1)).unwrap());
        cg.set_frozen(true).unwrap();
        assert_eq!(fake.get("cgroup.freeze"), "1");
    }

    #[test]
    fn kill_writes_cgroup_kill_where_it_exists() {
        let fake = Fake::new(&[("cgroup.kill", ""), ("cgroup.procs", "10\n")]);
        let mut signalled = Vec::new();
        Cgroup::at(fake.path())
            .kill_with(&mut |p| signalled.push(p))
            .unwrap();
        assert_eq!(fake.get("cgroup.kill"), "1");
        assert!(signalled.is_empty());
    }

    #[test]
    fn without_cgroup_kill_the_frozen_members_are_killed_until_none_is_left() {
        let fake = Fake::new(&[("cgroup.freeze", "0\n"), ("cgroup.procs", "10\n11\n")]);
        let procs = fake.path().join("cgroup.procs");
        let freeze = fake.path().join("cgroup.freeze");
        let mut signalled = Vec::new();
        Cgroup::at(fake.path())
            .kill_with(&mut |p| {
                // Killed while frozen; the second round finds 11 gone too.
                assert_eq!(std::fs::read_to_string(&freeze).unwrap(), "1");
                signalled.push(p);
                if p == 10 {
                    std::fs::write(&procs, "11\n").unwrap();
                } else {
                    std::fs::write(&procs, "").unwrap();
                }
            })
            .unwrap();
        assert_eq!(signalled, [10, 11]);
        assert_eq!(fake.get("cgroup.freeze"), "0", "thawed afterwards");
    }

    #[test]
    fn a_member_that_never_dies_is_reported_busy() {
        let fake = Fake::new(&[("cgroup.procs", "10\n")]);
        let err = Cgroup::at(fake.path()).kill_with(&mut |_| {}).unwrap_err();
        assert!(matches!(err, CgroupError::Busy { .. }), "{err}");
    }

    #[test]
    fn vacate_moves_the_manager_only_when_it_is_alone() {
        let me = std::process::id();
        let fake = Fake::new(&[
            ("cgroup.controllers", "memory\n"),
            ("cgroup.procs", &format!("{me}\n")),
            ("manager/cgroup.procs", ""),
        ]);
        let own = CgroupRoot::at(fake.path()).unwrap();
        own.vacate("manager").unwrap();
        assert_eq!(fake.get("manager/cgroup.procs"), me.to_string());
        fake.put(&[("cgroup.procs", &format!("{me}\n1\n"))]);
        assert!(matches!(
            own.vacate("manager"),
            Err(CgroupError::Busy { .. })
        ));
    }

    #[test]
    fn remove_takes_nested_cgroups_deepest_first() {
        let fake = Fake::new(&[]);
        let run = fake.path().join("web");
        std::fs::create_dir_all(run.join("a/b")).unwrap();
        std::fs::create_dir_all(run.join("c")).unwrap();
        Cgroup::at(&run).remove().unwrap();
        assert!(!run.exists());
        // Already gone: nothing to do.
        Cgroup::at(&run).remove().unwrap();
    }

    #[test]
    fn keyed_files_and_numbers_parse_strictly() {
        assert_eq!(keyed_value(b"populated 1\nfrozen 0\n", b"frozen"), Some(0));
        assert_eq!(keyed_value(b"oom 3\noom_kill 2\n", b"oom"), Some(3));
        assert_eq!(keyed_value(b"oom_kill 2\n", b"oom"), None);
        assert_eq!(parse_u64(b" 42\n"), Some(42));
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
        assert_eq!(parse_pids(b"1\n2\n\n3"), [1, 2, 3]);
    }
}
