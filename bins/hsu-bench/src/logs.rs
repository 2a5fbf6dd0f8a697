//! `hsu-bench --logs`: what capturing output costs.
//!
//! - **Throughput**: one child writes `--log-mb` MB of 100-byte lines as fast as it can
//!   (`yes | head -c`). Straight into a file (the floor), then through the manager with
//!   and without timestamps: the time until the capture file holds every byte, the
//!   manager's CPU time per MB, and its peak RSS.
//! - **Scale**: `--log-n` processes each writing one line a second on stdout and on
//!   stderr, for `--log-secs`: the manager's CPU and RSS with capture on, against the
//!   same processes with `log_collection.enabled: false`; the difference per captured
//!   stream, and what `/metrics` says the manager holds per stream.

use crate::manager::{Manager, Workload};
use crate::{http, procfs, MIB};
use anyhow::{bail, Context as _};
use comfy_table::{presets::ASCII_MARKDOWN, Table};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One line the throughput child writes: 99 bytes and a newline.
const LINE: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
/// A stored timestamp and its space: `2026-01-02T03:04:05.678901Z `.
const STAMP: u64 = 28;

/// What `--logs` measures.
pub struct LogBench {
    /// MB (10^6 bytes) the throughput child writes.
    pub mb: u64,
    /// Processes in the scale run.
    pub n: usize,
    /// The scale run's window.
    pub window: Duration,
}

/// Runs both measurements and prints a Markdown table.
pub fn run(binary: &Path, b: &LogBench) -> anyhow::Result<()> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let bytes = b.mb * 1_000_000;

    eprintln!("logs: {} MB straight into a file", b.mb);
    let direct = direct_write(bytes)?;
    rows.push((
        format!("{} MB of 100-byte lines straight to a file", b.mb),
        format!("{:.0} MB/s ({:.2} s)", b.mb as f64 / direct, direct),
    ));
    for timestamps in [false, true] {
        eprintln!(
            "logs: {} MB through the manager, timestamps {timestamps}",
            b.mb
        );
        let t = through_manager(binary, bytes, timestamps)?;
        let what = if timestamps {
            "with timestamps"
        } else {
            "no timestamps"
        };
        rows.push((
            format!("the same through the manager, {what}"),
            format!(
                "{:.0} MB/s ({:.2} s, {:.0} % of direct)",
                b.mb as f64 / t.seconds,
                t.seconds,
                100.0 * direct / t.seconds
            ),
        ));
        rows.push((
            format!("manager CPU per MB, {what}"),
            format!("{:.2} ms", 1000.0 * t.cpu_seconds / b.mb as f64),
        ));
        rows.push((
            format!("manager peak RSS while writing, {what}"),
            format!("{:.1} MiB", t.peak_rss as f64 / MIB),
        ));
    }

    eprintln!(
        "logs: {} processes, a line a second on each stream, {:?} per run",
        b.n, b.window
    );
    let quiet = scale(binary, b, false)?;
    let captured = scale(binary, b, true)?;
    let streams = 2 * b.n;
    rows.push((
        format!("{} processes x 2 streams, 1 line/s each: manager CPU", b.n),
        format!(
            "{:.2} % of a core (capture off: {:.2} %)",
            captured.cpu_percent, quiet.cpu_percent
        ),
    ));
    rows.push((
        "  manager RSS".into(),
        format!(
            "{:.1} MiB (capture off: {:.1} MiB)",
            captured.rss as f64 / MIB,
            quiet.rss as f64 / MIB
        ),
    ));
    rows.push((
        "  RSS per captured stream (difference / streams)".into(),
        format!(
            "{:.1} KiB",
            (captured.rss as f64 - quiet.rss as f64) / 1024.0 / streams as f64
        ),
    ));
    rows.push((
        "  held per stream by /metrics (hsu_log_buffered_bytes)".into(),
        format!(
            "{:.0} bytes",
            captured.buffered as f64 / streams.max(1) as f64
        ),
    ));
    rows.push((
        "  lines written in the window".into(),
        format!("{}", captured.lines),
    ));

    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(["figure", "value"]);
    for (k, v) in rows {
        table.add_row([k, v]);
    }
    println!("{table}");
    Ok(())
}

/// The floor: `yes | head -c` into a file; seconds.
fn direct_write(bytes: u64) -> anyhow::Result<f64> {
    let dir = tempfile::Builder::new()
        .prefix("hsu-bench-logs-")
        .tempdir()?;
    let file = dir.path().join("direct.log");
    let script = format!("yes '{LINE}' | head -c {bytes} > '{}'", file.display());
    let start = Instant::now();
    let status = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .status()?;
    let took = start.elapsed().as_secs_f64();
    if !status.success() || std::fs::metadata(&file)?.len() != bytes {
        bail!("the direct write failed ({status})");
    }
    Ok(took)
}

struct Throughput {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss: u64,
}

/// One child writing `bytes` through the manager: from the moment it is let go until the
/// capture file holds every byte.
fn through_manager(binary: &Path, bytes: u64, timestamps: bool) -> anyhow::Result<Throughput> {
    // The child waits for `go` (in the config's directory, its working directory), so
    // that the manager's own start is not measured.
    let work = Workload {
        count: 1,
        executable: "/bin/sh".into(),
        arguments: vec![
            "-c".into(),
            format!("while [ ! -e go ]; do sleep 0.01; done; yes '{LINE}' | head -c {bytes}"),
        ],
        fast_restart: false,
        health_url: None,
    };
    let lines = bytes / (LINE.len() as u64 + 1);
    let want = bytes + if timestamps { lines * STAMP } else { 0 };
    // One file: no rotation while measuring.
    let top = format!(
        "log_collection:\n  timestamps: {timestamps}\n  rotation: {{max_size: {}, max_files: 1}}\n",
        2 * want
    );
    let mut m = Manager::spawn_with(binary, &work, &top)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    m.wait_all_running(1, Duration::from_millis(5), deadline)?;
    let pid = m.pid();
    let file = m.base.join("logs/p0.stdout.log");
    let root = m.base.parent().context("the run directory")?.to_path_buf();
    let ticks = procfs::cpu_ticks(pid).context("CPU ticks")?;
    let start = Instant::now();
    std::fs::write(root.join("go"), b"")?;
    let deadline = start + Duration::from_secs(600);
    while std::fs::metadata(&file).map_or(0, |m| m.len()) < want {
        if Instant::now() > deadline {
            bail!("{} did not reach {want} bytes in time", file.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds =
        (procfs::cpu_ticks(pid).context("CPU ticks")? - ticks) as f64 / procfs::TICKS_PER_SEC;
    let peak_rss = vm_hwm(pid).unwrap_or(0);
    m.stop(&[], Instant::now() + Duration::from_secs(30))?;
    Ok(Throughput {
        seconds,
        cpu_seconds,
        peak_rss,
    })
}

struct Scale {
    cpu_percent: f64,
    rss: u64,
    buffered: f64,
    lines: f64,
}

/// `b.n` processes printing a line a second on each stream, measured over `b.window`.
fn scale(binary: &Path, b: &LogBench, capture: bool) -> anyhow::Result<Scale> {
    let work = Workload {
        count: b.n,
        executable: "/bin/sh".into(),
        arguments: vec![
            "-c".into(),
            "i=0; while :; do i=$((i+1)); echo \"out $i\"; echo \"err $i\" >&2; sleep 1; done"
                .into(),
        ],
        fast_restart: false,
        health_url: None,
    };
    let top = format!("log_collection:\n  enabled: {capture}\n");
    let mut m = Manager::spawn_with(binary, &work, &top)?;
    let deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_millis(50 * b.n as u64);
    m.wait_all_running(b.n, Duration::from_millis(20), deadline)?;
    // Settle: every process has written a few lines.
    std::thread::sleep(Duration::from_secs(3));
    let pid = m.pid();
    let addr = m.api(deadline)?;
    let written_before = metric_sum(addr, "hsu_log_lines_written_total{id=")?;
    let ticks = procfs::cpu_ticks(pid).context("CPU ticks")?;
    let start = Instant::now();
    std::thread::sleep(b.window);
    let used = procfs::cpu_ticks(pid).context("CPU ticks")? - ticks;
    let window = start.elapsed().as_secs_f64();
    let rss = procfs::vm_rss(pid).context("VmRSS")?;
    let buffered = metric_sum(addr, "hsu_log_buffered_bytes{id=")?;
    let lines = metric_sum(addr, "hsu_log_lines_written_total{id=")? - written_before;
    m.stop(&[], Instant::now() + Duration::from_secs(60))?;
    Ok(Scale {
        cpu_percent: 100.0 * used as f64 / procfs::TICKS_PER_SEC / window,
        rss,
        buffered,
        lines,
    })
}

/// The sum of the samples of `/metrics` whose line starts with `prefix`.
fn metric_sum(addr: std::net::SocketAddr, prefix: &str) -> anyhow::Result<f64> {
    let response = http::get(addr, "/metrics", Duration::from_secs(10))?;
    let text = String::from_utf8_lossy(&response.body);
    Ok(text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Peak resident memory (`VmHWM`), in bytes.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_a_hundred_bytes() {
        assert_eq!(LINE.len() + 1, 100);
        assert_eq!("2026-01-02T03:04:05.678901Z ".len() as u64, STAMP);
    }
}
