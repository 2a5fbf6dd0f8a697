//! What the runner reads from `/proc`: children, command lines, CPU ticks, RSS, the
//! machine's load and steal time, and the processes carrying a manager's tag.
//!
//! Parsing is kept in pure functions over strings so it can be tested without a live
//! process; the readers around them return `None` when a process has gone.

use std::fs;

/// `/proc` reports CPU times in `USER_HZ` ticks, which Linux fixes at 100 for userspace
/// on every mainstream architecture.
pub const TICKS_PER_SEC: f64 = 100.0;

/// Every child of `pid`, over all of its threads (a child is listed under the thread
/// that forked it). Includes zombies and children that have not exec'd yet.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_ascii_whitespace()
                    .filter_map(|w| w.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Whether `pid`'s first argument is `program`: true only once the child has exec'd
/// (before that it still shows its parent's command line; a zombie shows none).
pub fn runs(pid: u32, program: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| first_arg(&bytes) == program.as_bytes())
        .unwrap_or(false)
}

fn first_arg(cmdline: &[u8]) -> &[u8] {
    cmdline.split(|&b| b == 0).next().unwrap_or(&[])
}

/// The children of `parent` that run `program`.
pub fn children_running(parent: u32, program: &str) -> Vec<u32> {
    children(parent)
        .into_iter()
        .filter(|&pid| runs(pid, program))
        .collect()
}

/// Whether `/proc/<pid>` exists (a zombie still counts).
pub fn exists(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// utime + stime, in ticks, from the text of `/proc/<pid>/stat`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses; the fields after the
    // last `)` start at field 3 (state), so utime (14) and stime (15) are 11 and 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU ticks `pid` has used so far.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `VmRSS` in bytes, from the text of `/proc/<pid>/status`.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The resident memory of `pid`, in bytes.
pub fn vm_rss(pid: u32) -> Option<u64> {
    parse_vm_rss(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The whole machine's CPU time so far, from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTotals {
    /// user + nice + system + idle + iowait + irq + softirq + steal, in ticks.
    pub total: u64,
    /// Time the hypervisor gave to someone else while this machine wanted to run.
    pub steal: u64,
}

impl CpuTotals {
    /// The share of time stolen between `self` (earlier) and `later`, in percent.
    pub fn steal_percent_until(&self, later: &CpuTotals) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * later.steal.saturating_sub(self.steal) as f64 / total as f64
    }
}

/// Parses the first (`cpu `) line of `/proc/stat`.
pub fn parse_cpu_totals(stat: &str) -> Option<CpuTotals> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // guest and guest_nice (fields 9 and 10) are already counted in user and nice.
    Some(CpuTotals {
        total: values.iter().sum(),
        steal: *values.get(7).unwrap_or(&0),
    })
}

/// The machine's CPU totals now.
pub fn cpu_totals() -> Option<CpuTotals> {
    parse_cpu_totals(&fs::read_to_string("/proc/stat").ok()?)
}

/// The one-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether an `environ` blob (NUL-separated `NAME=value`) holds `HSU_PROCESS_TAG`
/// starting with `prefix`.
pub fn environ_has_tag(environ: &[u8], prefix: &str) -> bool {
    let mut wanted = b"HSU_PROCESS_TAG=".to_vec();
    wanted.extend_from_slice(prefix.as_bytes());
    environ
        .split(|&b| b == 0)
        .any(|var| var.starts_with(&wanted))
}

/// Every process (other than this one) whose tag starts with `prefix`: what a manager
/// with base directory `<base>` started carries `HSU_PROCESS_TAG=<base>#<id>`.
pub fn tagged(prefix: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|env| environ_has_tag(&env, prefix))
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_survive_a_command_name_with_spaces_and_parens() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    17 5 0 0 20 0 3 0 12345 1000000 250 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tsleep\nVmPeak:\t  9000 kB\nVmRSS:\t    1520 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(1520 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn steal_is_a_share_of_all_time() {
        let a = parse_cpu_totals("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(
            a,
            CpuTotals {
                total: 1000,
                steal: 40
            }
        );
        let b = parse_cpu_totals("cpu  150 0 50 900 10 0 0 90 7 0\n").unwrap();
        assert!((a.steal_percent_until(&b) - 25.0).abs() < 1e-9);
        assert_eq!(a.steal_percent_until(&a), 0.0);
    }

    #[test]
    fn tags_match_by_prefix_only() {
        let env = b"PATH=/bin\0HSU_PROCESS_TAG=/tmp/x/base#p1\0HOME=/\0";
        assert!(environ_has_tag(env, "/tmp/x/base#"));
        assert!(!environ_has_tag(env, "/tmp/y/base#"));
        assert!(!environ_has_tag(
            b"X_HSU_PROCESS_TAG=/tmp/x/base#p1\0",
            "/tmp/x/base#"
        ));
    }

    #[test]
    fn first_arg_stops_at_nul() {
        assert_eq!(first_arg(b"/bin/sleep\x003600\x00"), b"/bin/sleep");
        assert_eq!(first_arg(b""), b"");
    }
}
