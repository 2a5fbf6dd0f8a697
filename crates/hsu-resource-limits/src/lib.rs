//! Resource sampling of whole process trees: resident memory, CPU time, open file
//! descriptors and process count, summed over every member of a tree.
//!
//! Sampling is the one place the manager polls (the kernel sends no event for "memory
//! grew"), so it is built to be cheap: one `stat` read and one directory count per
//! process. Platform code stays in `linux.rs`; callers see plain numbers. This crate must
//! never signal or stop a process: acting on a limit is the supervisor's decision.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as platform;

use std::time::Instant;

/// Usage of a set of processes, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeUsage {
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// User + system CPU time of the live members, in seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub fds: u64,
    /// Members that could still be read (a process may exit mid-sample).
    pub processes: u64,
}

/// Samples `pids`; processes that are gone are skipped.
pub fn sample(pids: &[u32]) -> TreeUsage {
    let mut total = TreeUsage::default();
    for &pid in pids {
        if let Some(u) = platform::sample_one(pid) {
            total.rss_bytes += u.rss_bytes;
            total.cpu_seconds += u.cpu_seconds;
            total.fds += u.fds;
            total.processes += 1;
        }
    }
    total
}

/// Turns successive CPU-time samples of one tree into a percentage of one core.
#[derive(Debug, Clone, Default)]
pub struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl CpuMeter {
    /// The CPU use since the previous call, in percent of one core (200 = two cores);
    /// `None` on the first call. A drop in CPU time (a member exited) counts as zero.
    pub fn percent(&mut self, now: Instant, cpu_seconds: f64) -> Option<f64> {
        let previous = self.last.replace((now, cpu_seconds));
        let (then, before) = previous?;
        let wall = now.saturating_duration_since(then).as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        Some(((cpu_seconds - before).max(0.0) / wall * 100.0).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cpu_meter_is_a_rate_over_wall_time() {
        let t0 = Instant::now();
        let mut m = CpuMeter::default();
        assert_eq!(m.percent(t0, 10.0), None);
        assert_eq!(m.percent(t0 + Duration::from_secs(2), 11.0), Some(50.0));
        assert_eq!(m.percent(t0 + Duration::from_secs(3), 13.0), Some(200.0));
        // A member exited: its CPU time left the sum.
        assert_eq!(m.percent(t0 + Duration::from_secs(4), 5.0), Some(0.0));
    }

    #[test]
    fn samples_this_process_and_skips_the_gone() {
        let me = std::process::id();
        let u = sample(&[me, u32::MAX]);
        assert_eq!(u.processes, 1);
        assert!(u.rss_bytes > 1024 * 1024, "{u:?}");
        assert!(u.fds >= 3, "{u:?}");
        assert!(u.cpu_seconds >= 0.0);
    }
}
