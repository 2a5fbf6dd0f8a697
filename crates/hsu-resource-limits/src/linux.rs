//! Linux: `/proc/<pid>/stat` for memory and CPU time, `/proc/<pid>/fd` for descriptors,
//! signals for the polling back end, and descriptors kept open between samples.
//!
//! Sampling is the manager's one polling loop, so it is built to cost next to nothing:
//! a file a sampler reads every second is kept open and re-read with `pread` at offset 0
//! (the kernel regenerates it; opening it again would cost a path walk through procfs,
//! most of the price), the stat line is read into a stack buffer and only the four fields
//! needed are parsed, by hand. Descriptors kept open come out of one budget for the whole
//! manager (a quarter of its soft `RLIMIT_NOFILE`), so sampling can never starve it of
//! descriptors; past the budget, files are opened for each read.
//!
//! A descriptor to `/proc/<pid>/stat` is tied to that process, not to its number: once
//! the process is gone, reading fails, so a reused PID is never read through an old one.

use crate::throttle::ThrottleStep;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| (procfs::ticks_per_second() as f64).max(1.0))
}

pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(procfs::page_size)
}

/// What the sampler needs of one `/proc/<pid>/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Resident pages (field 24).
    pub rss_pages: u64,
    /// User plus system time, in clock ticks (fields 14 and 15).
    pub cpu_ticks: u64,
    /// State Z, X or x: exited, not yet reaped.
    pub dead: bool,
}

/// Parses a stat line: `pid (comm) S ppid ...`. The command name may hold spaces and
/// parentheses, so the fields start after the *last* `)`.
pub fn parse_stat(line: &[u8]) -> Option<Stat> {
    let close = line.iter().rposition(|&b| b == b')')?;
    let mut fields = line.get(close + 2..)?.split(|&b| b == b' ');
    let state = *fields.next()?.first()?;
    // After the state: ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    // (10 fields), then utime, stime; then cutime cstime priority nice num_threads
    // itrealvalue starttime vsize (8 fields), then rss.
    let mut fields = fields.skip(10);
    let utime = crate::cgroup::parse_u64(fields.next()?)?;
    let stime = crate::cgroup::parse_u64(fields.next()?)?;
    let rss = fields.nth(8)?;
    // rss is signed in the kernel's format; a negative one (never seen) counts as zero.
    let rss_pages = crate::cgroup::parse_u64(rss).unwrap_or(0);
    Some(Stat {
        rss_pages,
        cpu_ticks: utime.saturating_add(stime),
        dead: matches!(state, b'Z' | b'X' | b'x'),
    })
}

/// `/proc/<pid>/<tail>` built on the stack (the standard library then needs no heap
/// either: short paths go to the kernel from a stack buffer).
struct ProcPath {
    buf: [u8; 48],
    len: usize,
}

impl ProcPath {
    fn new(pid: u32, tail: &[u8]) -> ProcPath {
        let mut buf = [0u8; 48];
        let mut len = 0;
        let mut push = |bytes: &[u8]| {
            buf[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        push(b"/proc/");
        let mut digits = [0u8; 10];
        let mut n = pid;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        push(&digits[i..]);
        push(b"/");
        push(&tail[..tail.len().min(48 - 17)]);
        ProcPath { buf, len }
    }

    fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.buf[..self.len]))
    }
}

/// Reads one stat line, opening the file for this read only.
pub fn read_stat(pid: u32) -> Option<Stat> {
    let file = File::open(ProcPath::new(pid, b"stat").as_path()).ok()?;
    stat_from(&file)
}

fn stat_from(file: &File) -> Option<Stat> {
    // The fields up to rss fit in well under 1 KiB whatever the command name.
    let mut buf = [0u8; 1024];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse_stat(&buf[..n])
}

/// Open descriptors of one process: the size the kernel reports for `/proc/<pid>/fd`
/// (kernels 6.2 and later count them there), else the directory's entries.
pub fn count_fds(pid: u32) -> Option<u64> {
    let path = ProcPath::new(pid, b"fd");
    let meta = std::fs::metadata(path.as_path()).ok()?;
    if meta.len() > 0 {
        return Some(meta.len());
    }
    std::fs::read_dir(path.as_path())
        .ok()
        .map(|d| d.count() as u64)
}

/// Descriptors the samplers keep open, against [`budget`].
static KEPT_OPEN: AtomicUsize = AtomicUsize::new(0);

/// How many descriptors samplers may keep open: a quarter of the soft limit as it was when
/// first asked, at most 16384.
fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| usize::try_from(soft / 4).unwrap_or(usize::MAX))
            .unwrap_or(256)
            .min(16384)
    })
}

/// A file kept open between samples, counted against the budget while it lives.
#[derive(Debug)]
pub struct KeptFile(File);

impl KeptFile {
    /// Opens `path` to keep, if the budget allows; `Ok(None)` when it does not.
    fn open(path: &Path) -> io::Result<Option<KeptFile>> {
        let limit = budget();
        let granted = KEPT_OPEN
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if !granted {
            return Ok(None);
        }
        match File::open(path) {
            Ok(f) => Ok(Some(KeptFile(f))),
            Err(e) => {
                KEPT_OPEN.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }
}

impl Drop for KeptFile {
    fn drop(&mut self) {
        KEPT_OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A file read on every sample: kept open when the budget allows, re-read from offset 0.
#[derive(Debug)]
pub struct Reread {
    path: std::path::PathBuf,
    kept: Option<KeptFile>,
}

impl Reread {
    pub fn new(path: std::path::PathBuf) -> Reread {
        Reread { path, kept: None }
    }

    /// The whole file into `buf`; returns how many bytes of it are the file's.
    pub fn read(&mut self, buf: &mut ReadBuf) -> io::Result<usize> {
        if self.kept.is_none() {
            self.kept = KeptFile::open(&self.path)?;
        }
        match &self.kept {
            Some(k) => buf.fill(&k.0),
            None => buf.fill(&File::open(&self.path)?),
        }
    }
}

/// A directory whose subdirectories are counted on every sample, kept open when the budget
/// allows: a directory's link count is 2 plus its subdirectories (cgroupfs keeps it so
/// too), and `fstat` on an open one costs a third of reading `cgroup.stat`.
#[derive(Debug)]
pub struct Subdirs {
    path: std::path::PathBuf,
    kept: Option<KeptFile>,
}

impl Subdirs {
    pub fn new(path: std::path::PathBuf) -> Subdirs {
        Subdirs { path, kept: None }
    }

    pub fn count(&mut self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        if self.kept.is_none() {
            self.kept = KeptFile::open(&self.path)?;
        }
        let meta = match &self.kept {
            Some(k) => k.0.metadata()?,
            None => std::fs::metadata(&self.path)?,
        };
        Ok(meta.nlink().saturating_sub(2))
    }
}

/// A buffer for whole small files, zeroed once and reused: reads go straight into it.
#[derive(Debug)]
pub struct ReadBuf(Vec<u8>);

/// The longest line of the files read whole (a PID, a `key value` line). A read that
/// leaves more room than this unused has reached the end of the file: the kernel fills a
/// read with whole lines as far as they fit.
const LONGEST_LINE: usize = 64;

impl Default for ReadBuf {
    fn default() -> ReadBuf {
        ReadBuf(vec![0; 512])
    }
}

impl ReadBuf {
    /// The bytes of the last read.
    pub fn get(&self, len: usize) -> &[u8] {
        &self.0[..len]
    }

    fn fill(&mut self, file: &File) -> io::Result<usize> {
        let mut len = 0;
        loop {
            let n = file.read_at(&mut self.0[len..], len as u64)?;
            len += n;
            if n == 0 || self.0.len() - len > LONGEST_LINE {
                return Ok(len);
            }
            let grown = self.0.len() * 2;
            self.0.resize(grown, 0);
        }
    }
}

/// Stat files of the members of one tree, kept open across samples up to a few per tree
/// (a tree's members rarely change; the rest are opened per read).
#[derive(Debug, Default)]
pub struct StatFiles {
    kept: Vec<(u32, KeptFile)>,
}

/// Stat files kept per tree; larger trees read the rest by opening them.
const KEPT_PER_TREE: usize = 8;

impl StatFiles {
    /// The stat of `pid`; `None` once it is gone.
    pub fn read(&mut self, pid: u32) -> Option<Stat> {
        if let Some(i) = self.kept.iter().position(|(p, _)| *p == pid) {
            let stat = stat_from(&self.kept[i].1 .0);
            if stat.is_none() {
                self.kept.swap_remove(i);
            }
            return stat;
        }
        if self.kept.len() < KEPT_PER_TREE {
            if let Ok(Some(file)) = KeptFile::open(ProcPath::new(pid, b"stat").as_path()) {
                let stat = stat_from(&file.0);
                if stat.is_some() {
                    self.kept.push((pid, file));
                }
                return stat;
            }
        }
        read_stat(pid)
    }

    /// Forgets the files of processes that are no longer members.
    pub fn retain(&mut self, members: &[u32]) {
        self.kept.retain(|(p, _)| members.contains(p));
    }
}

pub fn sigkill(pid: u32) {
    signal(pid, Signal::SIGKILL);
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

pub fn pause_processes(pids: &[u32], step: ThrottleStep) {
    let sig = match step {
        ThrottleStep::Stop => Signal::SIGSTOP,
        ThrottleStep::Continue => Signal::SIGCONT,
    };
    let me = std::process::id();
    for &pid in pids.iter().filter(|&&p| p != me) {
        signal(pid, sig);
    }
}

pub fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_rss_cpu_and_state() {
        let line = b"4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 300 0 0 0 \
                     17 5 0 0 20 0 1 0 12345 10000000 321 18446744073709551615 1 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                rss_pages: 321,
                cpu_ticks: 22,
                dead: false
            })
        );
        let zombie = b"7 (sh) Z 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 99 0 0 0\n";
        assert_eq!(
            parse_stat(zombie),
            Some(Stat {
                rss_pages: 0,
                cpu_ticks: 7,
                dead: true
            })
        );
        assert_eq!(parse_stat(b"12 (cut short) S 1 2 3"), None);
        assert_eq!(parse_stat(b""), None);
    }

    #[test]
    fn this_process_reads_the_same_through_every_path() {
        let me = std::process::id();
        let direct = read_stat(me).unwrap();
        assert!(!direct.dead && direct.rss_pages > 0);
        let mut files = StatFiles::default();
        let kept = files.read(me).unwrap();
        assert!(kept.rss_pages > 0 && kept.cpu_ticks >= direct.cpu_ticks);
        assert_eq!(files.kept.len(), 1);
        files.retain(&[]);
        assert!(files.kept.is_empty());
        assert!(count_fds(me).unwrap() >= 3);
        assert_eq!(read_stat(u32::MAX), None);
        assert_eq!(
            ProcPath::new(4_294_967_295, b"stat").as_path(),
            Path::new("/proc/4294967295/stat")
        );
        assert_eq!(ProcPath::new(0, b"fd").as_path(), Path::new("/proc/0/fd"));
    }

    #[test]
    fn a_kept_stat_file_stops_reading_once_its_process_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut files = StatFiles::default();
        assert!(files.read(pid).is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(files.read(pid), None);
        assert!(files.kept.is_empty());
    }

    #[test]
    fn a_reread_file_sees_new_content_and_long_files_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one").unwrap();
        let mut r = Reread::new(path.clone());
        let mut buf = ReadBuf::default();
        let n = r.read(&mut buf).unwrap();
        assert_eq!(buf.get(n), b"one");
        let long = "x".repeat(10_000);
        std::fs::write(&path, &long).unwrap();
        let n = r.read(&mut buf).unwrap();
        assert_eq!(buf.get(n), long.as_bytes());
        // Exactly as long as the buffer, and just short of it.
        for size in [512, 512 - LONGEST_LINE, 1024] {
            std::fs::write(&path, "y".repeat(size)).unwrap();
            let mut fresh = ReadBuf::default();
            assert_eq!(r.read(&mut fresh).unwrap(), size);
        }
    }

    #[test]
    fn subdirectories_are_counted_by_the_link_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut subdirs = Subdirs::new(dir.path().to_owned());
        assert_eq!(subdirs.count().unwrap(), 0);
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert_eq!(subdirs.count().unwrap(), 1);
        assert!(Subdirs::new(dir.path().join("gone")).count().is_err());
    }

    #[test]
    fn a_kernel_file_longer_than_the_buffer_is_read_whole() {
        // This process's status (over 1 KiB) stands for a long cgroup.procs.
        let mut r = Reread::new("/proc/self/status".into());
        let mut buf = ReadBuf::default();
        let n = r.read(&mut buf).unwrap();
        let whole = std::fs::read("/proc/self/status").unwrap();
        assert!(n > 512, "{n}");
        assert_eq!(buf.get(n).len(), whole.len());
    }
}
