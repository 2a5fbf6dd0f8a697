//! Resource limits of whole process trees: sampling their usage cheaply, judging it
//! against the configured limits, and asking the kernel to hold the limits where it can.
//!
//! This crate observes and advises; it never decides. It must never stop, restart or
//! kill a process on its own: a finding is a report into the process's supervisor, which
//! alone applies the policy (the one exception is the kernel itself, which this crate
//! configures — a cgroup's `memory.max` OOM-kills without asking, and that is reported
//! as [`Finding::OomKilled`]). Platform code stays in `linux.rs` and `cgroup.rs`; the
//! layers above see plain numbers, [`Finding`]s and a [`Plan`].
//!
//! # Theory of operation
//!
//! * **Once, at start**, the manager finds its area in the cgroup v2 hierarchy with
//!   [`cgroup_area`] (see [`cgroup`] for the layout and why). Where there is none — no v2
//!   hierarchy, or no right to create cgroups, the normal case for an unprivileged
//!   manager — it says so once and every run falls back to `/proc` and signals.
//! * **Per run, before the spawn**, the supervisor takes the run's effective limits
//!   ([`Limits::adjusted`] by the `restart_adjusted` history it keeps in
//!   [`Adjustments`]), creates the run's cgroup ([`CgroupRoot::create`]), makes a
//!   [`Plan`] from the limits and the cgroup's controllers (which back end holds each
//!   limit — status shows [`Plan::enforcements`]), writes the kernel's part with
//!   [`Cgroup::apply`], and spawns with `SpawnSpec::cgroup` = [`Cgroup::procs_file`] (the
//!   child joins the cgroup before it runs its program, so no descendant is ever outside
//!   it) and `SpawnSpec::rlimit_nofile` = [`Plan::rlimit_nofile`]. It creates a
//!   [`LimitWatch`] for the run, and the sampler a [`Probe`].
//! * **Every `resource_sample_interval`**, the sampler calls [`Probe::sample`] (off the
//!   async runtime: it reads files) and sends the [`Sample`] to the supervisor as a report
//!   carrying the run. The supervisor feeds it to [`LimitWatch::observe`] and
//!   [`LimitWatch::observe_oom_kills`] and acts on each [`Finding`] by the policy (table
//!   below). A report about an earlier run is ignored.
//! * **On a CPU throttle the kernel cannot hold** ([`Plan::duty_cycle`]), the supervisor
//!   runs a [`DutyCycle`] from a timer: each sample's CPU goes to [`DutyCycle::adapt`],
//!   each timer tick to [`DutyCycle::poll`], whose step it applies with
//!   [`Cgroup::set_frozen`] or [`pause_processes`]. Before any stop it calls
//!   [`DutyCycle::release`] and applies the `Continue` it may return.
//! * **To stop a run**, with a cgroup: the stop signal, then after `graceful_timeout`
//!   [`Cgroup::kill`], and the stop is over when [`Cgroup::populated`] turns false; then
//!   [`Cgroup::remove`]. At an exit, one more [`Cgroup::oom_kills`] read tells whether the
//!   kernel's OOM killer ended the run.
//!
//! # What the supervisor does with each finding
//!
//! | finding / policy | event | action |
//! |---|---|---|
//! | [`Finding::Warning`] | `resource_warning {resource, value, limit}` | none, ever |
//! | `Violation`, `log` | `resource_violation {resource, value, limit, action: "log"}`, a warning in the manager log | none |
//! | `Violation`, `alert` | `resource_violation` and an `alert` event; the alert counter in metrics | status shows the alert until [`Finding::Recovered`] |
//! | `Violation`, `throttle` | `resource_violation` | start the [`DutyCycle`] if [`Plan::duty_cycle`] says so; otherwise the kernel holds it already |
//! | `Violation`, `graceful_shutdown` | `resource_violation` | graceful stop, no restart |
//! | `Violation`, `immediate_kill` | `resource_violation` | SIGKILL the tree ([`Cgroup::kill`] where there is a cgroup), no restart |
//! | `Violation`, `restart` | `resource_violation` | graceful restart under the `resource_violations` budget |
//! | `Violation`, `restart_adjusted` | `resource_violation` | as `restart`, and [`Adjustments::record`] the resource first: the next run's limit is raised ([`adjusted_limit`]); status shows [`Limits::adjustments_report`] |
//! | [`Finding::OomKilled`] | `resource_violation {resource: "memory", value: kills, limit, action: "oom_killed"}` | the run is over (`memory.oom.group` killed the tree); its exit is resource-triggered: restart under the `resource_violations` budget unless the memory policy is `immediate_kill` or `graceful_shutdown` |
//! | [`Finding::Recovered`] | none required | clear the alert shown in status |
//!
//! # Example
//!
//! ```no_run
//! use hsu_resource_limits::*;
//! use std::time::Instant;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let configured = Limits::default();
//! # let base_directory = std::path::Path::new("/var/lib/hsu-process-manager");
//! // Once, at start.
//! let area = cgroup_area(&instance_name(base_directory))
//!     .map_err(|why| eprintln!("{why}")) // said once; runs fall back to polling
//!     .ok();
//!
//! // Per run, before the spawn; `adjustments` lives in the supervisor across runs.
//! let mut adjustments = Adjustments::default();
//! let limits = configured.adjusted(&adjustments);
//! let cgroup = area.as_ref().map(|a| a.create("my-service")).transpose()?;
//! let plan = Plan::new(&limits, cgroup.as_ref().map(Cgroup::controllers));
//! if let Some(cg) = &cgroup {
//!     cg.apply(&plan)?;
//! }
//! let procs_file = cgroup.as_ref().map(Cgroup::procs_file).transpose()?;
//! // SpawnSpec { cgroup: procs_file, rlimit_nofile: plan.rlimit_nofile, .. }
//! let mut watch = LimitWatch::new(&limits);
//! let mut probe = Probe::new(cgroup.as_ref(), plan.count_fds);
//!
//! // Every sample interval: the sampler samples, the supervisor judges and acts.
//! let sample = probe.sample(Instant::now(), || Vec::new() /* hsu_process::tree_of */);
//! let oom = sample.oom_kills.and_then(|n| watch.observe_oom_kills(n));
//! for finding in watch.observe(Instant::now(), &sample.usage).into_iter().chain(oom) {
//!     match finding {
//!         Finding::Violation { resource, policy: LimitPolicy::RestartAdjusted, .. } => {
//!             adjustments.record(resource);
//!             // ... then restart, as for `restart`
//!         }
//!         other => { /* journal it; act on the policy as the table above says */ }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as platform;

pub mod cgroup;
mod limits;
mod plan;
mod probe;
mod throttle;
mod watch;

pub use cgroup::{instance_name, Cgroup, CgroupError, CgroupRoot, Controllers};
pub use limits::{
    adjusted_count, adjusted_limit, AdjustedLimit, Adjustments, CountLimit, CpuLimit, LimitPolicy,
    Limits, MemoryLimit, Resource,
};
pub use plan::{Backend, DutyCycleBy, Enforcement, Plan, CPU_PERIOD_USEC};
pub use probe::{Probe, Sample};
pub use throttle::{DutyCycle, ThrottleStep, Tick, DEFAULT_PERIOD, MIN_DUTY};
pub use watch::{Finding, LimitWatch, Usage, REARM_BAND};

use std::time::Instant;

/// Why runs get no cgroups on this system: one sentence, to log once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; process trees are found through /proc and limits are held by polling")]
pub struct Unavailable {
    /// What is missing, e.g. "no cgroup v2 hierarchy is mounted".
    pub reason: String,
}

/// The manager's area in the cgroup v2 hierarchy, where each run gets its cgroup:
/// `<the manager's own cgroup>/<instance>` (use [`instance_name`] of the base directory;
/// see [`cgroup`] for the layout). Missing controllers are no error — see
/// [`CgroupRoot::available`] — but no hierarchy, or no right to create cgroups in it,
/// is.
#[cfg(target_os = "linux")]
pub fn cgroup_area(instance: &str) -> Result<CgroupRoot, Unavailable> {
    let own = match CgroupRoot::detect() {
        Ok(Some(own)) => own,
        Ok(None) => {
            return Err(Unavailable {
                reason: "the manager's cgroup is in no cgroup v2 hierarchy".into(),
            })
        }
        Err(e) => {
            return Err(Unavailable {
                reason: format!("cannot find the manager's cgroup: {e}"),
            })
        }
    };
    own.subtree(instance).map_err(|e| Unavailable {
        reason: if e.is_permission() {
            format!(
                "no right to create cgroups under `{}` (not root, and no cgroup delegated \
                 to the manager)",
                own.path().display()
            )
        } else {
            e.to_string()
        },
    })
}

/// Stops (SIGSTOP) or continues (SIGCONT) every process in `pids`, for a [`DutyCycle`]
/// without a cgroup. Gone processes are skipped; the manager itself never.
pub fn pause_processes(pids: &[u32], step: ThrottleStep) {
    platform::pause_processes(pids, step)
}

/// Raises the manager's soft limit on open files to its hard limit, and returns it: room
/// for its logs, its clients and the files its [`Probe`]s keep open (a quarter of the
/// soft limit as it is when sampling starts — so call this first thing in `main`; past
/// that budget probes open their files for each read, which costs more but never runs
/// the manager out of descriptors). Children inherit the raised soft limit unless their
/// spawn sets `rlimit_nofile`.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    platform::raise_fd_limit()
}

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

/// Samples `pids`, counting their descriptors too; processes that are gone are skipped.
/// The one-shot form: a sampler that runs every interval uses a [`Probe`], which keeps
/// its files open and counts descriptors only when asked.
pub fn sample(pids: &[u32]) -> TreeUsage {
    let mut total = TreeUsage::default();
    for &pid in pids {
        let Some(stat) = platform::read_stat(pid).filter(|s| !s.dead) else {
            continue;
        };
        total.rss_bytes += stat.rss_pages * platform::page_size();
        total.cpu_seconds += stat.cpu_ticks as f64 / platform::ticks_per_second();
        total.fds += platform::count_fds(pid).unwrap_or(0);
        total.processes += 1;
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

    #[test]
    fn a_probe_without_cgroup_samples_the_tree_it_is_given() {
        let me = std::process::id();
        let mut probe = Probe::new(None, false);
        let t0 = Instant::now();
        let first = probe.sample(t0, || vec![me, u32::MAX]);
        assert_eq!(first.usage.processes, Some(1));
        assert!(first.usage.memory_bytes.unwrap() > 1024 * 1024);
        assert_eq!(first.usage.cpu_percent, None, "no rate from one sample");
        assert_eq!(first.usage.fds, None, "not asked for");
        assert_eq!(first.oom_kills, None);
        assert_eq!(probe.members(), [me, u32::MAX]);
        probe.set_count_fds(true);
        let second = probe.sample(t0 + Duration::from_secs(1), || vec![me]);
        assert!(second.usage.fds.unwrap() >= 3);
        assert!(second.usage.cpu_percent.unwrap() >= 0.0);
        assert!(second.cpu_seconds >= first.cpu_seconds);
    }

    #[test]
    fn a_probe_reads_members_and_cpu_from_a_cgroup() {
        // A fake cgroup: this process as its one member, a known CPU figure.
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let put = |f: &str, s: &str| std::fs::write(dir.path().join(f), s).unwrap();
        put("cgroup.controllers", "memory pids\n");
        put("cgroup.procs", &format!("{me}\n"));
        put(
            "cpu.stat",
            "usage_usec 2000000\nuser_usec 1\nsystem_usec 1\n",
        );
        put("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        let cg = Cgroup::at(dir.path());
        let mut probe = Probe::new(Some(&cg), true);
        let t0 = Instant::now();
        let s = probe.sample(t0, || panic!("the cgroup lists the members"));
        assert_eq!(s.cpu_seconds, 2.0);
        assert_eq!(s.usage.processes, Some(1));
        assert!(s.usage.fds.unwrap() >= 3);
        assert_eq!(s.oom_kills, Some(1));
        put("cpu.stat", "usage_usec 2500000\n");
        let s = probe.sample(t0 + Duration::from_secs(1), || panic!());
        assert_eq!(s.usage.cpu_percent, Some(50.0));
        // A cgroup a member made below its own: its members count too.
        let parent = std::os::unix::process::parent_id();
        std::fs::create_dir(dir.path().join("inner")).unwrap();
        put("inner/cgroup.procs", &format!("{parent}\n"));
        let s = probe.sample(t0 + Duration::from_secs(2), || panic!());
        assert_eq!(s.usage.processes, Some(2));
        assert!(probe.members().contains(&parent));
        // A cgroup that cannot be read (removed): the probe falls back to the tree.
        let gone = Cgroup::at(dir.path().join("gone"));
        let s = Probe::new(Some(&gone), false).sample(t0, || vec![me]);
        assert_eq!(s.usage.processes, Some(1));
    }
}
