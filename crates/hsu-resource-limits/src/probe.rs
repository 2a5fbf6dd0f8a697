//! [`Probe`]: samples one run's tree, cheaply, for the manager's sampler.

use crate::cgroup::{keyed_value, parse_pids_into, Cgroup, Controllers};
use crate::platform::{self, ReadBuf, Reread, StatFiles, Subdirs};
use crate::watch::Usage;
use crate::CpuMeter;
use std::time::Instant;

/// One sample of a run's tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Usage, for [`crate::LimitWatch::observe`] and for status.
    pub usage: Usage,
    /// CPU time of the tree so far, in seconds (with a cgroup: of every process that ever
    /// ran in it; without: of the live members).
    pub cpu_seconds: f64,
    /// The cgroup's total OOM-kill count, for [`crate::LimitWatch::observe_oom_kills`];
    /// `None` without a memory controller.
    pub oom_kills: Option<u64>,
}

/// The cgroup files a probe reads on every sample, kept open.
#[derive(Debug)]
struct CgroupFiles {
    procs: Reread,
    cpu_stat: Reread,
    subdirs: Subdirs,
    memory_events: Option<Reread>,
    cgroup: Cgroup,
}

/// Samples one run's tree: create one per run, and call [`sample`](Probe::sample) each
/// `resource_sample_interval` from a blocking thread.
///
/// With a cgroup, the members are `cgroup.procs` (no walk of `/proc`), CPU is the
/// cgroup's `cpu.stat` `usage_usec` (which keeps the time of members that exited), and
/// every file is kept open and re-read. Memory is always the members' resident sets from
/// `/proc/<pid>/stat` — the quantity the config names (`max_rss`) on every back end;
/// the cgroup's `memory.current` would add page cache, which a tree reading a large file
/// fills without using any more memory of its own. Descriptors are counted only when
/// asked for ([`set_count_fds`](Probe::set_count_fds)): a limit on them, or a status
/// request that shows them.
#[derive(Debug)]
pub struct Probe {
    cgroup: Option<CgroupFiles>,
    count_fds: bool,
    stats: StatFiles,
    meter: CpuMeter,
    members: Vec<u32>,
    buf: ReadBuf,
}

impl Probe {
    /// A probe for a run in `cgroup` (`None`: found by walking its tree), counting file
    /// descriptors or not.
    pub fn new(cgroup: Option<&Cgroup>, count_fds: bool) -> Probe {
        let cgroup = cgroup.map(|cg| {
            let file = |name: &str| Reread::new(cg.path().join(name));
            CgroupFiles {
                procs: file("cgroup.procs"),
                cpu_stat: file("cpu.stat"),
                subdirs: Subdirs::new(cg.path().to_owned()),
                memory_events: cg
                    .controllers()
                    .contains(Controllers::MEMORY)
                    .then(|| file("memory.events")),
                cgroup: cg.clone(),
            }
        });
        Probe {
            cgroup,
            count_fds,
            stats: StatFiles::default(),
            meter: CpuMeter::default(),
            members: Vec::new(),
            buf: ReadBuf::default(),
        }
    }

    /// Whether the probe reads a cgroup (else it is handed the tree's members).
    pub fn has_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }

    /// Whether file descriptors are counted from now on.
    pub fn set_count_fds(&mut self, count: bool) {
        self.count_fds = count;
    }

    /// The members found by the last sample.
    pub fn members(&self) -> &[u32] {
        &self.members
    }

    /// Samples the tree at `now`. `tree` lists its members (`hsu_process::tree_of`); it is
    /// called only without a cgroup, or if the cgroup cannot be read (it was removed).
    pub fn sample(&mut self, now: Instant, tree: impl FnOnce() -> Vec<u32>) -> Sample {
        let mut cpu_usec = None;
        let mut oom_kills = None;
        let from_cgroup = match self.cgroup.as_mut() {
            Some(cg) => read_cgroup(cg, &mut self.buf, &mut self.members, &mut cpu_usec)
                .map(|()| {
                    oom_kills = cg.memory_events.as_mut().and_then(|f| {
                        let n = f.read(&mut self.buf).ok()?;
                        keyed_value(self.buf.get(n), b"oom_kill")
                    });
                })
                .is_ok(),
            None => false,
        };
        if !from_cgroup {
            self.members = tree();
        }
        let mut rss_pages = 0u64;
        let mut ticks = 0u64;
        let mut fds = 0u64;
        let mut live = 0u64;
        for &pid in &self.members {
            let Some(stat) = self.stats.read(pid) else {
                continue;
            };
            if stat.dead {
                continue;
            }
            live += 1;
            rss_pages = rss_pages.saturating_add(stat.rss_pages);
            ticks = ticks.saturating_add(stat.cpu_ticks);
            if self.count_fds {
                fds += platform::count_fds(pid).unwrap_or(0);
            }
        }
        self.stats.retain(&self.members);
        let cpu_seconds = match cpu_usec {
            Some(usec) => usec as f64 / 1e6,
            None => ticks as f64 / platform::ticks_per_second(),
        };
        Sample {
            usage: Usage {
                memory_bytes: Some(rss_pages.saturating_mul(platform::page_size())),
                cpu_percent: self.meter.percent(now, cpu_seconds),
                fds: self.count_fds.then_some(fds),
                processes: Some(live),
            },
            cpu_seconds,
            oom_kills,
        }
    }
}

/// Members and CPU time from the cgroup's kept-open files; the members of nested cgroups
/// (a process may create some below its own) by a walk, only when there are any.
fn read_cgroup(
    cg: &mut CgroupFiles,
    buf: &mut ReadBuf,
    members: &mut Vec<u32>,
    cpu_usec: &mut Option<u64>,
) -> std::io::Result<()> {
    if cg.subdirs.count()? > 0 {
        *members = cg
            .cgroup
            .members()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    } else {
        let n = cg.procs.read(buf)?;
        parse_pids_into(buf.get(n), members);
    }
    let n = cg.cpu_stat.read(buf)?;
    *cpu_usec = keyed_value(buf.get(n), b"usage_usec");
    Ok(())
}
