//! What sampling one process costs, in microseconds, next to a bare read of its
//! `/proc/<pid>/stat`: `cargo bench -p hsu-resource-limits --bench sampling`.
//!
//! It starts idle `sleep` processes (one tree each, as the manager sees them) and samples
//! them the ways the manager can: the previous sampler (the procfs crate's stat parse and
//! a directory count of `/proc/<pid>/fd`), the one-shot `sample`, a `Probe` per tree
//! without and with descriptor counting, and — as root where cgroup v2 is mounted — a
//! `Probe` per tree reading the tree's own cgroup.

use hsu_resource_limits::{cgroup_area, Cgroup, Probe};
use std::time::{Duration, Instant};

const TREES: usize = 100;
const ROUNDS: usize = 200;

/// The sleeps, spawned as the manager spawns (`hsu_process::spawn`), killed and reaped
/// however the benchmark ends.
struct Sleeps(Vec<hsu_process::Child>, tokio::runtime::Runtime);

impl Drop for Sleeps {
    fn drop(&mut self) {
        for c in &mut self.0 {
            hsu_process::signal_process(c.pid(), hsu_common::StopSignal::Kill);
            let _ = self.1.block_on(c.wait());
        }
    }
}

fn spawn_sleep(tag: &str) -> hsu_process::Child {
    hsu_process::spawn(hsu_process::SpawnSpec {
        program: "sleep".into(),
        args: vec!["600".into()],
        working_directory: std::env::temp_dir(),
        environment: Default::default(),
        stdout: None,
        stderr: None,
        tag: tag.into(),
        user: None,
        group: None,
        cgroup: None,
        rlimit_nofile: None,
    })
    .expect("spawn sleep")
}

/// Cgroups made for the benchmark, emptied and removed however it ends.
struct Cgroups(Vec<Cgroup>, Option<std::path::PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for cg in &self.0 {
            let _ = cg.kill();
            let _ = cg.wait_empty(Duration::from_secs(5));
            let _ = cg.remove();
        }
        if let Some(area) = &self.1 {
            let _ = std::fs::remove_dir(area);
        }
    }
}

/// Microseconds per tree of `f`, which samples every tree once, over `ROUNDS` rounds.
fn per_tree(mut f: impl FnMut()) -> f64 {
    f(); // warm: descriptors opened, buffers grown
    let start = Instant::now();
    for _ in 0..ROUNDS {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / (ROUNDS * TREES) as f64
}

fn main() {
    // As the manager: a child subreaper, so trees are walked from their roots.
    let _ = hsu_process::become_subreaper();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tags: Vec<String> = (0..TREES).map(|i| format!("bench#{i}")).collect();
    let children = rt.block_on(async { tags.iter().map(|t| spawn_sleep(t)).collect() });
    let sleeps = Sleeps(children, rt);
    let pids: Vec<u32> = sleeps.0.iter().map(hsu_process::Child::pid).collect();
    let roots: Vec<(u32, &str)> = pids
        .iter()
        .zip(&tags)
        .map(|(&p, t)| (p, t.as_str()))
        .collect();
    let t0 = Instant::now();
    let mut rows: Vec<(&str, f64)> = Vec::new();

    rows.push((
        "bare std::fs::read(\"/proc/<pid>/stat\")",
        per_tree(|| {
            for pid in &pids {
                let _ = std::hint::black_box(std::fs::read(format!("/proc/{pid}/stat")));
            }
        }),
    ));
    rows.push((
        "previous sampler: procfs stat + /proc/<pid>/fd count",
        per_tree(|| {
            for &pid in &pids {
                let p = procfs::process::Process::new(pid as i32).unwrap();
                let stat = p.stat().unwrap();
                let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count());
                std::hint::black_box((stat.rss, fds.ok()));
            }
        }),
    ));
    rows.push((
        "sample(&[pid]) one-shot, with fds",
        per_tree(|| {
            for &pid in &pids {
                std::hint::black_box(hsu_resource_limits::sample(&[pid]));
            }
        }),
    ));
    for (label, fds) in [
        ("Probe, tree given, no fds", false),
        ("Probe, tree given, with fds", true),
    ] {
        let mut probes: Vec<Probe> = pids.iter().map(|_| Probe::new(None, fds)).collect();
        rows.push((
            label,
            per_tree(|| {
                for (probe, &pid) in probes.iter_mut().zip(&pids) {
                    std::hint::black_box(probe.sample(t0, || vec![pid]));
                }
            }),
        ));
    }

    {
        let mut probes: Vec<Probe> = pids.iter().map(|_| Probe::new(None, false)).collect();
        rows.push((
            "Probe, tree walked (hsu_process::trees_of), no fds",
            per_tree(|| {
                let trees = hsu_process::trees_of(&roots);
                for (probe, tree) in probes.iter_mut().zip(trees) {
                    std::hint::black_box(probe.sample(t0, || tree));
                }
            }),
        ));
    }

    // As root: each sleep moved into a cgroup of its own, sampled through it.
    let area = cgroup_area(&format!("hsu-bench-{}", std::process::id()));
    match area {
        Ok(area) => {
            let mut made = Cgroups(Vec::new(), Some(area.path().to_owned()));
            for (i, &pid) in pids.iter().enumerate() {
                let cg = area.create(&format!("t{i}")).expect("create cgroup");
                std::fs::write(cg.path().join("cgroup.procs"), pid.to_string())
                    .expect("move into cgroup");
                made.0.push(cg);
            }
            let mut probes: Vec<Probe> = made
                .0
                .iter()
                .map(|cg| Probe::new(Some(cg), false))
                .collect();
            rows.push((
                "Probe, own cgroup, no fds",
                per_tree(|| {
                    for probe in probes.iter_mut() {
                        std::hint::black_box(probe.sample(t0, Vec::new));
                    }
                }),
            ));
            drop(probes);
            drop(made);
        }
        Err(why) => eprintln!("(no cgroup row: {why})"),
    }

    println!("{TREES} idle one-process trees, {ROUNDS} rounds; microseconds per tree sampled:");
    for (label, us) in &rows {
        println!("  {us:7.2} us  {label}");
    }
    drop(sleeps);
}
