//! Linux: `/proc/<pid>/stat` for memory and CPU time, `/proc/<pid>/fd` for descriptors.

use crate::TreeUsage;
use std::sync::OnceLock;

fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| procfs::ticks_per_second() as f64)
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(procfs::page_size)
}

pub fn sample_one(pid: u32) -> Option<TreeUsage> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let stat = process.stat().ok()?;
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(TreeUsage {
        rss_bytes: stat.rss * page_size(),
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks_per_second(),
        fds,
        processes: 1,
    })
}
