//! `hsu-bench`: what the manager costs, measured against the kernel's floor.
//!
//! It drives the real release binary (`target/release/hsu-process-manager`) against
//! `/bin/sleep` children in a temporary base directory and measures, for each N: the time
//! to start N and to stop N, a `kill -9` of one child to its replacement running, the
//! manager's memory and idle CPU, the API's list latency and the CLI's `status`; then,
//! once per run, CPU per restart under churn. A minimal in-process supervisor (the
//! *floor*, see `floor`) does the same start, stop and restart in the same run, so every
//! time is also shown as a ratio to what this machine allows right now. Each figure is
//! the median over `--runs` repeats with its spread; a figure measured while the load
//! average exceeded the core count or steal time exceeded 5 % is marked untrustworthy.
//!
//! It must never leave a process behind: every manager runs in its own process group and
//! tags its children (`HSU_PROCESS_TAG=<base>#<id>`), and `cleanup` kills both on
//! drop, on panic and on Ctrl-C/SIGTERM (a SIGKILL of the runner itself cannot be
//! caught; the tag still finds what it left). Every wait polls with a deadline.
//!
//! ```sh
//! cargo run --release -p hsu-bench -- --n 200 --quick
//! ```
//!
//! `--logs` measures captured output instead (see `logs`): the throughput of one child
//! writing flat out, through the manager against straight into a file, and the cost of
//! many processes writing a line a second.

mod cleanup;
mod floor;
mod health;
mod http;
mod logs;
mod manager;
mod procfs;
mod report;
mod stats;

use anyhow::{bail, Context as _};
use clap::Parser;
use floor::Floor;
use manager::{Manager, Workload};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use report::{Results, Watch};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const SLEEP: &str = "/bin/sleep";

#[derive(Parser, Debug)]
#[command(
    name = "hsu-bench",
    about = "Measures the manager against the kernel's floor."
)]
struct Args {
    /// Numbers of supervised processes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,200,500")]
    n: Vec<usize>,
    /// A short run: 1 repeat, 50 kills, 10 s idle and churn windows, 5 `status` calls.
    #[arg(long)]
    quick: bool,
    /// Repeats of every figure [default: 3, 1 with --quick].
    #[arg(long)]
    runs: Option<usize>,
    /// `kill -9`s per run for crash → restart [default: 200, 50 with --quick].
    #[arg(long)]
    kills: Option<usize>,
    /// Idle window for the manager's CPU, seconds [default: 60, 10 with --quick].
    #[arg(long, value_name = "SECS")]
    idle_secs: Option<u64>,
    /// Churn window, seconds [default: 30, 10 with --quick].
    #[arg(long, value_name = "SECS")]
    churn_secs: Option<u64>,
    /// Processes in the churn run (each `sleep 0.2`, restarted at once).
    #[arg(long, default_value_t = 50)]
    churn_n: usize,
    /// `GET /api/v1/processes` requests per run, each on a new connection.
    #[arg(long, default_value_t = 200)]
    api_requests: usize,
    /// `hsu-process-manager status` calls per run [default: 20, 5 with --quick].
    #[arg(long)]
    status_runs: Option<usize>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/hsu-bench.json")]
    json: PathBuf,
    /// The manager binary [default: target/release/hsu-process-manager, built first].
    #[arg(long)]
    manager: Option<PathBuf>,
    /// Measure health checking instead: this many processes, each with an HTTP check
    /// every second against an endpoint the runner serves (schedule drift, CPU per check).
    #[arg(long, value_name = "N")]
    health: Option<usize>,
    /// `--health`: the measuring window, seconds [default: 30, 10 with --quick].
    #[arg(long, value_name = "SECS")]
    health_secs: Option<u64>,
    /// Measure captured output instead: throughput and the cost of many writers.
    #[arg(long)]
    logs: bool,
    /// `--logs`: MB (10^6 bytes) the throughput child writes.
    #[arg(long, default_value_t = 256)]
    log_mb: u64,
    /// `--logs`: processes writing a line a second on each stream.
    #[arg(long, default_value_t = 200)]
    log_n: usize,
    /// `--logs`: the window over which their cost is measured, seconds [default: 30, 10
    /// with --quick].
    #[arg(long, value_name = "SECS")]
    log_secs: Option<u64>,
}

/// Args with the quick/normal defaults resolved.
#[derive(Debug)]
struct Settings {
    ns: Vec<usize>,
    runs: usize,
    kills: usize,
    idle: Duration,
    churn: Duration,
    churn_n: usize,
    api_requests: usize,
    status_runs: usize,
}

impl Settings {
    fn from(args: &Args) -> anyhow::Result<Settings> {
        let q = args.quick;
        let s = Settings {
            ns: args.n.clone(),
            runs: args.runs.unwrap_or(if q { 1 } else { 3 }),
            kills: args.kills.unwrap_or(if q { 50 } else { 200 }),
            idle: Duration::from_secs(args.idle_secs.unwrap_or(if q { 10 } else { 60 })),
            churn: Duration::from_secs(args.churn_secs.unwrap_or(if q { 10 } else { 30 })),
            churn_n: args.churn_n,
            api_requests: args.api_requests,
            status_runs: args.status_runs.unwrap_or(if q { 5 } else { 20 }),
        };
        if s.ns.is_empty() || s.ns.iter().any(|&n| n == 0 || n > 5000) {
            bail!("--n takes numbers from 1 to 5000 (the N=0 baseline is measured anyway)");
        }
        if s.runs == 0 || s.api_requests == 0 || s.status_runs == 0 {
            bail!("--runs, --api-requests and --status-runs must be at least 1");
        }
        Ok(s)
    }
}

fn main() -> ExitCode {
    if let Err(e) = cleanup::install() {
        eprintln!("hsu-bench: cannot install the cleanup: {e:#}");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    let result = run(&args);
    cleanup::kill_everything();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsu-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let settings = Settings::from(args)?;
    let binary = manager_binary(args.manager.as_deref())?;
    eprintln!("hsu-bench: manager {}", binary.display());
    if let Some(n) = args.health {
        if n == 0 {
            bail!("--health takes at least 1 process");
        }
        let window = args.health_secs.unwrap_or(if args.quick { 10 } else { 30 });
        return health::run(&binary, n, Duration::from_secs(window));
    }
    if args.logs {
        if args.log_mb == 0 || args.log_n == 0 {
            bail!("--log-mb and --log-n must be at least 1");
        }
        let window = args.log_secs.unwrap_or(if args.quick { 10 } else { 30 });
        return logs::run(
            &binary,
            &logs::LogBench {
                mb: args.log_mb,
                n: args.log_n,
                window: Duration::from_secs(window),
            },
        );
    }
    let mut results = Results::new(std::env::args().collect::<Vec<_>>().join(" "));
    let whole = Watch::start();
    for run in 1..=settings.runs {
        let label = format!("run {run}/{}", settings.runs);
        eprintln!("{label}: N=0 baseline");
        let rss0 = baseline_rss(&binary)?;
        results.manager("RSS, no processes", None, "MiB", rss0 / MIB, true);
        for &n in &settings.ns {
            eprintln!("{label}: manager, N={n}");
            let watch = Watch::start();
            let figures = manager_block(&binary, n, &settings)?;
            let floor_figures = {
                eprintln!("{label}: floor, N={n}");
                floor_block(n, &settings)?
            };
            let trusted = watch.finish().trusted;
            for (name, unit, value) in figures {
                results.manager(name, Some(n), unit, value, trusted);
                if name == "RSS after start" {
                    results.manager(
                        "RSS per process",
                        Some(n),
                        "KiB",
                        (value - rss0 / MIB) * MIB / 1024.0 / n as f64,
                        trusted,
                    );
                }
            }
            for (name, unit, value) in floor_figures {
                results.floor(name, Some(n), unit, value, trusted);
            }
        }
        eprintln!("{label}: churn, {} processes", settings.churn_n);
        let watch = Watch::start();
        let figures = churn_block(&binary, &settings)?;
        let floor_figures = churn_floor(&settings)?;
        let trusted = watch.finish().trusted;
        for (name, unit, value) in figures {
            results.manager(name, Some(settings.churn_n), unit, value, trusted);
        }
        for (name, unit, value) in floor_figures {
            results.floor(name, Some(settings.churn_n), unit, value, trusted);
        }
    }
    let conditions = whole.finish();
    println!("{}", results.table());
    println!("{}", conditions.describe());
    let json = results.json(&conditions, &format!("{settings:?}"));
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("hsu-bench: wrote {}", args.json.display());
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The binary to measure: `--manager`, or the release build next to this one's target
/// directory, (re)built first when run by cargo so a stale binary is never measured.
fn manager_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--manager {}: no such file", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().context("the runner's own directory")?;
    if profile_dir.file_name().is_some_and(|n| n != "release") {
        eprintln!(
            "hsu-bench: warning: the runner itself is not a release build (the floor runs in it)"
        );
    }
    let target = profile_dir.parent().context("the target directory")?;
    let binary = target.join("release").join("hsu-process-manager");
    let cargo = std::env::var_os("CARGO");
    if cargo.is_some() || !binary.is_file() {
        let cargo = cargo.unwrap_or_else(|| "cargo".into());
        eprintln!("hsu-bench: cargo build --release --bin hsu-process-manager");
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "hsu-process-manager"])
            .stdin(Stdio::null())
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release --bin hsu-process-manager failed ({status})");
        }
    }
    if !binary.is_file() {
        bail!("{} does not exist after the build", binary.display());
    }
    Ok(binary)
}

/// A deadline from now scaled to N: generous, so only a hang trips it. Taken afresh for
/// each wait, never across a measurement window.
fn deadline_for(n: usize) -> Instant {
    Instant::now() + Duration::from_secs(30) + Duration::from_millis(50 * n as u64)
}

/// The manager's RSS with no processes, in bytes.
fn baseline_rss(binary: &Path) -> anyhow::Result<f64> {
    let work = Workload {
        count: 0,
        executable: SLEEP.into(),
        arguments: vec!["3600".into()],
        fast_restart: true,
        health_url: None,
    };
    let mut m = Manager::spawn(binary, &work)?;
    m.wait_all_running(0, Duration::from_millis(5), deadline_for(0))?;
    std::thread::sleep(Duration::from_secs(1));
    let rss = procfs::vm_rss(m.pid()).context("the manager's VmRSS")? as f64;
    m.stop(&[], deadline_for(0))?;
    Ok(rss)
}

type Figures = Vec<(&'static str, &'static str, f64)>;

/// Start, footprint, API, crash → restart and stop for one manager with N `sleep`s.
fn manager_block(binary: &Path, n: usize, s: &Settings) -> anyhow::Result<Figures> {
    let mut out = Figures::new();
    let work = Workload {
        count: n,
        executable: SLEEP.into(),
        arguments: vec!["3600".into()],
        fast_restart: true,
        health_url: None,
    };
    let start = Instant::now();
    let mut m = Manager::spawn(binary, &work)?;
    let deadline = deadline_for(n);
    m.wait_children(n, SLEEP, deadline)?;
    let in_proc = start.elapsed();
    m.wait_all_running(n, Duration::from_millis(2), deadline)?;
    out.push(("start N, all in /proc", "ms", ms(in_proc)));
    out.push(("start N, all running by API", "ms", ms(start.elapsed())));
    let pid = m.pid();

    std::thread::sleep(Duration::from_secs(1));
    let rss = procfs::vm_rss(pid).context("VmRSS")? as f64;
    out.push(("RSS after start", "MiB", rss / MIB));
    let ticks = procfs::cpu_ticks(pid).context("CPU ticks")?;
    let idle_start = Instant::now();
    std::thread::sleep(s.idle);
    let used = procfs::cpu_ticks(pid).context("CPU ticks")? - ticks;
    let window = idle_start.elapsed().as_secs_f64();
    out.push((
        "idle CPU (% of a core)",
        "%",
        100.0 * used as f64 / procfs::TICKS_PER_SEC / window,
    ));
    let rss_idle = procfs::vm_rss(pid).context("VmRSS")? as f64;
    out.push(("RSS after idle window", "MiB", rss_idle / MIB));

    let addr = m.api(deadline_for(n))?;
    let mut latencies = Vec::with_capacity(s.api_requests);
    for _ in 0..s.api_requests {
        let t = Instant::now();
        let response = http::get(addr, "/api/v1/processes", Duration::from_secs(5))?;
        latencies.push(ms(t.elapsed()));
        if response.status != 200 || response.body.first() != Some(&b'[') {
            bail!("GET /api/v1/processes answered {}", response.status);
        }
    }
    let sorted = stats::sorted(&latencies);
    out.push((
        "API list p50, new connection",
        "ms",
        stats::percentile(&sorted, 50.0),
    ));
    out.push((
        "API list p99, new connection",
        "ms",
        stats::percentile(&sorted, 99.0),
    ));

    let mut walls = Vec::with_capacity(s.status_runs);
    for _ in 0..s.status_runs {
        let t = Instant::now();
        // `--api` rather than `--base-dir`, so managers older than `--base-dir` for
        // client commands can be measured too.
        let output = Command::new(binary)
            .arg("--api")
            .arg(format!("http://{addr}"))
            .arg("status")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .output()?;
        walls.push(ms(t.elapsed()));
        if !output.status.success() {
            bail!(
                "`status` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    out.push(("`status` CLI wall, p50", "ms", stats::median(&walls)));

    restart_figures(&mut out, &crash_restart(pid, s.kills)?);
    out.push((
        "RSS after the kills",
        "MiB",
        procfs::vm_rss(pid).context("VmRSS")? as f64 / MIB,
    ));

    let children = procfs::children_running(pid, SLEEP);
    if children.len() != n {
        bail!("{} of {n} children running before the stop", children.len());
    }
    out.push((
        "stop N (SIGTERM → all gone)",
        "ms",
        ms(m.stop(&children, deadline_for(n))?),
    ));
    Ok(out)
}

fn restart_figures(out: &mut Figures, latencies: &[f64]) {
    let sorted = stats::sorted(latencies);
    out.push((
        "crash → restart, median",
        "ms",
        stats::percentile(&sorted, 50.0),
    ));
    out.push((
        "crash → restart, p99",
        "ms",
        stats::percentile(&sorted, 99.0),
    ));
    out.push((
        "crash → restart, max",
        "ms",
        stats::percentile(&sorted, 100.0),
    ));
}

/// The same start, kill → respawn and stop done by the floor.
fn floor_block(n: usize, s: &Settings) -> anyhow::Result<Figures> {
    let mut out = Figures::new();
    let (floor, started) = Floor::start(n, SLEEP, &["3600"])?;
    out.push(("start N, all in /proc", "ms", ms(started)));
    restart_figures(&mut out, &crash_restart(std::process::id(), s.kills)?);
    out.push(("stop N (SIGTERM → all gone)", "ms", ms(floor.stop()?)));
    Ok(out)
}

/// `kill -9` of one child of `parent` after another (round the list), each timed until
/// a new child of `parent` has exec'd `/bin/sleep`; in milliseconds.
fn crash_restart(parent: u32, kills: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(kills);
    for k in 0..kills {
        let mut before = procfs::children_running(parent, SLEEP);
        if before.is_empty() {
            bail!("no child of {parent} to kill");
        }
        before.sort_unstable();
        let victim = before[k % before.len()];
        let known: HashSet<u32> = before.into_iter().collect();
        let start = Instant::now();
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL)?;
        let deadline = start + Duration::from_secs(5);
        'poll: loop {
            for pid in procfs::children(parent) {
                if !known.contains(&pid) && procfs::runs(pid, SLEEP) {
                    break 'poll;
                }
            }
            if Instant::now() > deadline {
                bail!("no replacement for killed child {victim} of {parent} within 5 s");
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        out.push(ms(start.elapsed()));
        // Let the supervisor finish its bookkeeping before the next kill.
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(out)
}

/// The bytes appended to the journal since `offset` (following one rotation).
fn journal_since(base: &Path, offset: u64) -> Vec<u8> {
    let current = std::fs::read(base.join("events.jsonl")).unwrap_or_default();
    if current.len() as u64 >= offset {
        return current[offset as usize..].to_vec();
    }
    let mut rotated = std::fs::read(base.join("events.jsonl.1")).unwrap_or_default();
    rotated.drain(..(offset as usize).min(rotated.len()));
    rotated.extend_from_slice(&current);
    rotated
}

/// How many `exited` events a stretch of the journal holds.
fn count_exits(journal: &[u8]) -> usize {
    const EXITED: &[u8] = b"\"kind\":\"exited\"";
    journal
        .split(|&b| b == b'\n')
        .filter(|line| line.windows(EXITED.len()).any(|w| w == EXITED))
        .count()
}

/// CPU per restart, RSS and journal growth with `churn_n` processes exiting every 0.2 s.
fn churn_block(binary: &Path, s: &Settings) -> anyhow::Result<Figures> {
    let mut out = Figures::new();
    let work = Workload {
        count: s.churn_n,
        executable: SLEEP.into(),
        arguments: vec!["0.2".into()],
        fast_restart: true,
        health_url: None,
    };
    let mut m = Manager::spawn(binary, &work)?;
    m.api(deadline_for(s.churn_n))?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = m.pid();
    let journal = m.base.join("events.jsonl");
    let offset = std::fs::metadata(&journal).map(|md| md.len()).unwrap_or(0);
    let ticks = procfs::cpu_ticks(pid).context("CPU ticks")?;
    let rss_start = procfs::vm_rss(pid).context("VmRSS")? as f64;
    let t = Instant::now();
    std::thread::sleep(s.churn);
    let used = procfs::cpu_ticks(pid).context("CPU ticks")? - ticks;
    let rss_end = procfs::vm_rss(pid).context("VmRSS")? as f64;
    let window = t.elapsed().as_secs_f64();
    let appended = journal_since(&m.base, offset);
    let exits = count_exits(&appended);
    if exits == 0 {
        bail!("no process exited during the churn window");
    }
    let cpu_ms = 1000.0 * used as f64 / procfs::TICKS_PER_SEC;
    out.push(("churn: restarts per second", "/s", exits as f64 / window));
    out.push(("churn: CPU per restart", "ms", cpu_ms / exits as f64));
    out.push(("churn: CPU (% of a core)", "%", cpu_ms / 10.0 / window));
    out.push(("churn: RSS at window start", "MiB", rss_start / MIB));
    out.push(("churn: RSS at window end", "MiB", rss_end / MIB));
    out.push((
        "churn: journal growth",
        "KB/s",
        appended.len() as f64 / 1000.0 / window,
    ));
    let children = procfs::children_running(pid, SLEEP);
    m.stop(&children, deadline_for(s.churn_n))?;
    Ok(out)
}

/// The floor under the same churn: its CPU per respawn.
fn churn_floor(s: &Settings) -> anyhow::Result<Figures> {
    let me = std::process::id();
    let (floor, _) = Floor::start(s.churn_n, SLEEP, &["0.2"])?;
    std::thread::sleep(Duration::from_secs(1));
    let (respawns, ticks, t) = (
        floor.respawns(),
        procfs::cpu_ticks(me).context("CPU ticks")?,
        Instant::now(),
    );
    std::thread::sleep(s.churn);
    let used = procfs::cpu_ticks(me).context("CPU ticks")? - ticks;
    let window = t.elapsed().as_secs_f64();
    let restarts = (floor.respawns() - respawns).max(1) as f64;
    floor.stop()?;
    let cpu_ms = 1000.0 * used as f64 / procfs::TICKS_PER_SEC;
    Ok(vec![
        ("churn: restarts per second", "/s", restarts / window),
        ("churn: CPU per restart", "ms", cpu_ms / restarts),
        ("churn: CPU (% of a core)", "%", cpu_ms / 10.0 / window),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_by_kind() {
        let journal = b"{\"seq\":4,\"id\":\"p0\",\"kind\":\"exited\",\"code\":null}\n\
            {\"seq\":5,\"id\":\"p0\",\"kind\":\"state_changed\",\"reason\":\"exited\"}\n\
            {\"seq\":6,\"id\":\"p1\",\"kind\":\"exited\",\"code\":0}\n";
        assert_eq!(count_exits(journal), 2);
        assert_eq!(count_exits(b""), 0);
    }

    #[test]
    fn quick_defaults() {
        let args = Args::parse_from(["hsu-bench", "--quick", "--n", "200"]);
        let s = Settings::from(&args).unwrap();
        assert_eq!((s.ns.clone(), s.runs, s.kills), (vec![200], 1, 50));
        let args = Args::parse_from(["hsu-bench"]);
        assert_eq!(Settings::from(&args).unwrap().ns, vec![100, 200, 500]);
        assert!(Settings::from(&Args::parse_from(["hsu-bench", "--n", "0"])).is_err());
    }
}
