//! Linux discovery of processes the manager did not start: by PID file, by name, and by
//! the TCP port they listen on, all read from `/proc`.
//!
//! Each look is a scan of `/proc` (the whole process table for a name or a port) and
//! returns at once; it is meant to run every `check_interval` while a process is *not*
//! found, never while it is (its end is then learnt from a pidfd). Zombies never count:
//! a process that has exited is not found, whoever has yet to reap it.
//!
//! Only what this process may read is seen: a manager that is not root finds another
//! user's process by name through its `comm` (world-readable), but not through its
//! executable, and never finds the sockets of another user's process (their `fd`
//! directory is private). Ports are looked up in the manager's own network namespace.

use procfs::net::TcpState;
use procfs::process::{FDTarget, Process};
use std::collections::HashSet;
use std::path::Path;

/// The longest `comm` the kernel keeps (`TASK_COMM_LEN` - 1); longer names are cut.
const COMM_LEN: usize = 15;

/// One process that fits what is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub pid: u32,
    pub ppid: u32,
    /// Start time, in clock ticks after boot.
    pub started: u64,
}

/// Which of several processes that fit is *the* process: one whose parent does not fit
/// too (the master of a pre-forking server, not its workers), and among those the one
/// started first (smallest PID on a tie).
pub(crate) fn choose(candidates: &[Candidate]) -> Option<u32> {
    let fitting: HashSet<u32> = candidates.iter().map(|c| c.pid).collect();
    let roots = candidates.iter().filter(|c| !fitting.contains(&c.ppid));
    // Should every candidate's parent fit too (impossible in a tree, but the table is read
    // while it changes), the oldest of all is taken.
    roots
        .clone()
        .min_by_key(|c| (c.started, c.pid))
        .or_else(|| candidates.iter().min_by_key(|c| (c.started, c.pid)))
        .map(|c| c.pid)
}

/// A live process's `stat` as a candidate, skipping zombies and kernel threads.
fn candidate(p: &Process) -> Option<(Candidate, String)> {
    /// `PF_KTHREAD` in `stat`'s flags: a kernel thread, never a user's process.
    const PF_KTHREAD: u32 = 0x0020_0000;
    let stat = p.stat().ok()?;
    if matches!(stat.state, 'Z' | 'X' | 'x') || stat.flags & PF_KTHREAD != 0 {
        return None;
    }
    let c = Candidate {
        pid: u32::try_from(stat.pid).ok()?,
        ppid: u32::try_from(stat.ppid).ok()?,
        started: stat.starttime,
    };
    Some((c, stat.comm))
}

pub fn by_pid_file(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    (pid > 0 && crate::linux::is_alive(pid)).then_some(pid)
}

pub fn by_process_name(name: &str) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    let me = std::process::id();
    let all = procfs::process::all_processes().ok()?;
    let found: Vec<Candidate> = all
        .flatten()
        .filter_map(|p| {
            let (c, comm) = candidate(&p)?;
            (c.pid != me && name_fits(&p, &comm, name)).then_some(c)
        })
        .collect();
    choose(&found)
}

/// Whether process `p`, whose `comm` is `comm`, is called `name`: its `comm`, or the
/// file name of its executable (readable for the manager's own user's processes, or all
/// as root); a name longer than `comm` holds is compared with the file name of its
/// `argv[0]` once the first 15 bytes agree.
fn name_fits(p: &Process, comm: &str, name: &str) -> bool {
    if comm == name {
        return true;
    }
    let file_name_is = |path: &Path| {
        path.file_name()
            .and_then(|f| f.to_str())
            // A replaced or deleted executable reads as "<path> (deleted)".
            .map(|f| f.strip_suffix(" (deleted)").unwrap_or(f))
            == Some(name)
    };
    if p.exe().is_ok_and(|exe| file_name_is(&exe)) {
        return true;
    }
    name.len() > COMM_LEN
        && comm.len() == COMM_LEN
        && name.as_bytes().starts_with(comm.as_bytes())
        && p.cmdline()
            .ok()
            .and_then(|args| args.into_iter().next())
            .is_some_and(|argv0| file_name_is(Path::new(&argv0)))
}

pub fn by_port(port: u16) -> Option<u32> {
    let mut inodes: HashSet<u64> = HashSet::new();
    for table in [procfs::net::tcp(), procfs::net::tcp6()] {
        for entry in table.into_iter().flatten() {
            if entry.state == TcpState::Listen && entry.local_address.port() == port {
                inodes.insert(entry.inode);
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let all = procfs::process::all_processes().ok()?;
    let found: Vec<Candidate> =
        all.flatten()
            .filter_map(|p| {
                let (c, _) = candidate(&p)?;
                let holds = p.fd().ok()?.flatten().any(
                    |fd| matches!(fd.target, FDTarget::Socket(inode) if inodes.contains(&inode)),
                );
                holds.then_some(c)
            })
            .collect();
    choose(&found)
}

#[cfg(test)]
mod tests {
    // Discovery of real processes is tested in `tests/discover.rs`, a test binary of its
    // own: the processes it starts and ends would otherwise be reaped by, and delay, the
    // subreaper tests of this crate's unit tests, which run in the same process.
    use super::*;

    fn c(pid: u32, ppid: u32, started: u64) -> Candidate {
        Candidate { pid, ppid, started }
    }

    #[test]
    fn the_master_is_chosen_over_its_workers_then_the_oldest() {
        // 10 is the master of 11 and 12 (started later, so never mistaken anyway), 20 an
        // unrelated copy started after 10.
        let found = [c(12, 10, 50), c(20, 1, 40), c(11, 10, 50), c(10, 1, 30)];
        assert_eq!(choose(&found), Some(10));
        // A worker re-parented to init (its master gone) fits by itself; the oldest wins.
        let found = [c(11, 1, 50), c(12, 1, 50)];
        assert_eq!(choose(&found), Some(11));
        // A parent that does not fit does not make its child a worker.
        assert_eq!(choose(&[c(7, 3, 100), c(8, 1, 200)]), Some(7));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn parents_that_all_fit_still_give_one() {
        // A table read while it changes can show a cycle; one process is still chosen.
        assert_eq!(choose(&[c(5, 6, 9), c(6, 5, 8)]), Some(6));
    }
}
