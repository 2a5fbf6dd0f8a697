//! Waiting with deadlines and looking at processes through `/proc`.
//!
//! Nothing in the suite sleeps to synchronise: it polls a condition every
//! [`POLL_INTERVAL`] until it holds or a generous deadline passes, so a slow CI machine
//! only makes a test slower, never wrong.

use std::path::Path;
use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `f` until it returns `Some` or `timeout` passes (checked once more at the end).
pub fn poll_until<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(POLL_INTERVAL, timeout, f)
}

/// [`poll_until`] with a chosen interval, for tests that must catch a short moment.
pub fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

/// Polls `f` until it returns `Some`; panics naming `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `cond` until it is true; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_until(what, timeout, || cond().then_some(()))
}

/// The wall clock as milliseconds since the Unix epoch, comparable with journal `ts`.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    /// `R`, `S`, `D`, `Z`, `T`, ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a `/proc/<pid>/stat` line. The command name is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let mut fields = text[close + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        state,
        ppid,
        pgrp,
        session,
    })
}

/// Whether `pid` is a live process (exists and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// The value of `HSU_PROCESS_TAG` in the environment `pid` started with.
pub fn process_tag(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"HSU_PROCESS_TAG="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every live process whose `HSU_PROCESS_TAG` starts with `tag_prefix`, sorted.
pub fn tagged_processes(tag_prefix: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&pid| process_tag(pid).is_some_and(|t| t.starts_with(tag_prefix)))
        .filter(|&pid| pid_alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// A one-line description of each process, for failure messages.
pub fn describe_processes(pids: &[u32]) -> String {
    pids.iter()
        .map(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            format!(
                "  pid {pid}: {:?} tag={:?} cmd={}\n",
                proc_stat(pid),
                process_tag(pid),
                cmdline.trim_end()
            )
        })
        .collect()
}

/// Sends `signal` to `pid`; errors (already gone) are ignored.
pub fn send_signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill(2) with a positive PID only signals that one process.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

/// SIGKILLs every process tagged with `tag_prefix`, repeating (processes may still be
/// forking while we look) until none is left or 10 s pass. Returns what was killed.
pub fn kill_tagged(tag_prefix: &str) -> Vec<u32> {
    let mut killed = Vec::new();
    let _ = poll_until(Duration::from_secs(10), || {
        let left = tagged_processes(tag_prefix);
        for &pid in &left {
            send_signal(pid, libc::SIGKILL);
        }
        killed.extend(&left);
        left.is_empty().then_some(())
    });
    killed.sort_unstable();
    killed.dedup();
    killed
}

/// Kills every process tagged with its prefix when dropped: for tests that run the
/// manager without a [`crate::ProcessManager`] around it.
pub struct TagGuard(pub String);

impl Drop for TagGuard {
    fn drop(&mut self) {
        let killed = kill_tagged(&self.0);
        if !killed.is_empty() {
            eprintln!("killed processes left behind by the test: {killed:?}");
        }
    }
}

/// Reads a `"<pid>\n"` PID file; `None` while it is absent or incomplete.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.strip_suffix('\n')?;
    line.trim().parse().ok().filter(|&p| p > 0)
}

/// Waits for a PID file to hold a PID.
pub fn wait_for_pid_file(path: &Path, timeout: Duration) -> u32 {
    wait_until(&format!("PID file {}", path.display()), timeout, || {
        read_pid_file(path)
    })
}

/// Waits until none of `pids` is alive; panics listing the survivors after `timeout`.
pub fn assert_all_gone(what: &str, pids: &[u32], timeout: Duration) {
    let gone = poll_until(timeout, || {
        (!pids.iter().any(|&p| pid_alive(p))).then_some(())
    });
    if gone.is_none() {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
        panic!(
            "{what}: still alive after {timeout:?}:\n{}",
            describe_processes(&alive)
        );
    }
}

/// Asserts that `pids` are all alive now.
pub fn assert_all_alive(what: &str, pids: &[u32]) {
    let dead: Vec<u32> = pids.iter().copied().filter(|&p| !pid_alive(p)).collect();
    assert!(dead.is_empty(), "{what}: not alive: {dead:?} (of {pids:?})");
}

/// A child's piped stdout and stderr, read to the end on two threads so a chatty child
/// never blocks on a full pipe.
pub struct Pipes {
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Pipes {
    /// Takes both pipes of `child` (spawned with `Stdio::piped()` for each).
    pub fn drain(child: &mut std::process::Child) -> Pipes {
        fn reader(
            mut pipe: impl std::io::Read + Send + 'static,
        ) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = pipe.read_to_end(&mut v);
                v
            })
        }
        Pipes {
            stdout: reader(child.stdout.take().expect("piped stdout")),
            stderr: reader(child.stderr.take().expect("piped stderr")),
        }
    }

    /// Everything written to stdout and stderr; waits for both pipes to close.
    pub fn join(self) -> (Vec<u8>, Vec<u8>) {
        (
            self.stdout.join().unwrap_or_default(),
            self.stderr.join().unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let s = parse_stat("42 (a b) c)) S 1 42 40 0 -1 4194560 0 0").unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 42,
                state: 'S',
                ppid: 1,
                pgrp: 42,
                session: 40
            }
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive_and_untagged_children_are_not_listed() {
        let me = std::process::id();
        assert!(pid_alive(me));
        let stat = proc_stat(me).unwrap();
        assert_eq!(stat.pid, me);
        assert!(!pid_alive(u32::MAX - 1));
        assert!(tagged_processes("/no/such/base-dir#").is_empty());
    }

    #[test]
    fn finds_tagged_processes_and_sees_them_die() {
        let tag = format!("/e2e-self-test/{}#probe", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("HSU_PROCESS_TAG", &tag)
            .spawn()
            .unwrap();
        let pid = child.id();
        let prefix = format!("/e2e-self-test/{}#", std::process::id());
        wait_for(
            "the tagged sleep to show up",
            Duration::from_secs(10),
            || tagged_processes(&prefix) == vec![pid],
        );
        assert_eq!(process_tag(pid).as_deref(), Some(tag.as_str()));
        send_signal(pid, libc::SIGKILL);
        // Dead but not reaped yet: a zombie counts as gone.
        assert_all_gone("killed sleep", &[pid], Duration::from_secs(10));
        assert!(tagged_processes(&prefix).is_empty());
        child.wait().unwrap();
    }

    #[test]
    fn pid_files_must_be_complete() {
        let dir = std::env::temp_dir().join(format!("e2e-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.pid");
        assert_eq!(read_pid_file(&p), None);
        std::fs::write(&p, "123").unwrap();
        assert_eq!(read_pid_file(&p), None);
        std::fs::write(&p, "123\n").unwrap();
        assert_eq!(read_pid_file(&p), Some(123));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn polling_helpers() {
        let start = Instant::now();
        let mut n = 0;
        let v = poll_until(Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, Some(3));
        assert!(poll_until(Duration::from_millis(50), || None::<()>).is_none());
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
