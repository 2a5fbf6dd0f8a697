//! `hsu-bench --health N`: N sleeping processes, each with an HTTP health check every
//! second against one small endpoint this runner serves (`/p/<i>`, answering 200 at once).
//! The endpoint records when each process's check arrives, so the runner sees how well
//! the manager keeps every process's schedule: the gap between two consecutive checks of
//! one process against the 1 s interval (its drift), and what each check costs the
//! manager in CPU.

use crate::manager::{Manager, Workload};
use crate::{procfs, stats, MIB};
use anyhow::bail;
use comfy_table::{presets::ASCII_MARKDOWN, Table};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arrival times of the checks, by process index.
type Arrivals = Arc<Mutex<Vec<Vec<Instant>>>>;

/// Serves `GET /p/<i>` with 200, recording arrivals, on `threads` threads.
fn serve(n: usize, threads: usize) -> anyhow::Result<(u16, Arrivals)> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    // N checks may arrive in the same millisecond: a deep backlog, so that none waits
    // for a SYN retransmit (the figures are the manager's, not this endpoint's).
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(4096)?)?;
    let port = listener.local_addr()?.port();
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Vec::new(); n]));
    for _ in 0..threads {
        let listener = listener.try_clone()?;
        let arrivals = arrivals.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let at = Instant::now();
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                let mut got = Vec::new();
                while let Ok(k @ 1..) = stream.read(&mut buf) {
                    got.extend_from_slice(&buf[..k]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() > 8192 {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&got);
                let index = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|path| path.strip_prefix("/p/"))
                    .and_then(|i| i.parse::<usize>().ok());
                if let Some(i) = index {
                    if let Some(list) = arrivals.lock().unwrap().get_mut(i) {
                        list.push(at);
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK",
                );
            }
        });
    }
    Ok((port, arrivals))
}

/// Runs the measurement and prints a Markdown table.
pub fn run(binary: &Path, n: usize, window: Duration) -> anyhow::Result<()> {
    let (port, arrivals) = serve(n, 4)?;
    let work = Workload {
        count: n,
        executable: "/bin/sleep".into(),
        arguments: vec!["3600".into()],
        fast_restart: false,
        health_url: Some(format!("http://127.0.0.1:{port}/p/{{i}}")),
    };
    eprintln!("health: {n} processes, an HTTP check each every 1 s");
    let mut m = Manager::spawn(binary, &work)?;
    m.wait_all_running(
        n,
        Duration::from_millis(100),
        Instant::now() + Duration::from_secs(120),
    )?;
    // Settle, then measure over the window.
    std::thread::sleep(Duration::from_secs(3));
    let pid = m.pid();
    let cpu0 = procfs::cpu_ticks(pid).unwrap_or(0);
    let started = Instant::now();
    let counted0: usize = arrivals.lock().unwrap().iter().map(Vec::len).sum();
    std::thread::sleep(window);
    let cpu1 = procfs::cpu_ticks(pid).unwrap_or(0);
    let elapsed = started.elapsed().as_secs_f64();
    let rss = procfs::vm_rss(pid).unwrap_or(0) as f64 / MIB;
    let all = arrivals.lock().unwrap().clone();
    let counted: usize = all.iter().map(Vec::len).sum::<usize>() - counted0;
    let mut gaps_ms = Vec::new();
    for list in &all {
        for pair in list.windows(2) {
            if pair[0] >= started {
                gaps_ms.push((pair[1] - pair[0]).as_secs_f64() * 1000.0);
            }
        }
    }
    if gaps_ms.is_empty() {
        bail!("no check arrived twice for any process in the window");
    }
    let drift: Vec<f64> = gaps_ms.iter().map(|g| (g - 1000.0).abs()).collect();
    let drift = stats::sorted(&drift);
    let cpu_s = (cpu1.saturating_sub(cpu0)) as f64 / procfs::TICKS_PER_SEC;
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header([
        "figure",
        &format!("N={n}, 1 s HTTP checks, {:.0} s window", elapsed),
    ]);
    let rows = [
        (
            "checks per second (expected N)",
            format!("{:.1}", counted as f64 / elapsed),
        ),
        (
            "processes with no check in the window",
            format!(
                "{}",
                all.iter()
                    .filter(|l| l.iter().all(|t| *t < started))
                    .count()
            ),
        ),
        (
            "schedule drift |gap − 1 s|, median",
            format!("{:.2} ms", stats::percentile(&drift, 50.0)),
        ),
        (
            "schedule drift, p99",
            format!("{:.2} ms", stats::percentile(&drift, 99.0)),
        ),
        (
            "schedule drift, max",
            format!("{:.2} ms", drift.last().copied().unwrap_or(0.0)),
        ),
        (
            "manager CPU",
            format!("{:.2} % of a core", cpu_s / elapsed * 100.0),
        ),
        (
            "manager CPU per check",
            format!("{:.0} µs", cpu_s / counted.max(1) as f64 * 1e6),
        ),
        ("manager RSS", format!("{rss:.1} MiB")),
    ];
    for (k, v) in rows {
        table.add_row([k.to_string(), v]);
    }
    println!("{table}");
    m.stop(&[], Instant::now() + Duration::from_secs(60))?;
    Ok(())
}
