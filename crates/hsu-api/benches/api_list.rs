//! `GET /api/v1/processes` against a real `ProcessManager` supervising 200 `sleep 3600`
//! processes: sequential latency (a new connection per request, as the CLI does, and one
//! keep-alive connection), throughput with concurrent clients, one process's `GET`, where
//! the list handler spends its time, the manager's own memory and idle CPU, and how long
//! starting and shutting down all 200 takes.
//!
//! Run it with `cargo bench -p hsu-api --bench api_list`. It is not a test: `cargo test`
//! never runs it, and run in test mode (`cargo test --benches`) it only prints a note.
//!
//! The manager and its API run on their own runtime (two worker threads, like the
//! binary), the load on another, so the CPU time of each can be told apart by thread name.

use bytes::Bytes;
use hsu_api::client::ApiClient;
use hsu_api::server::{self, RunningServer};
use hsu_api::{ApiAddress, ApiState, ListenSettings, Process};
use hsu_common::ProcessState;
use hsu_managed_process::{
    ControlSpec, HealthCheckSpec, ProcessDefinition, ProcessLogCollection, ProcessType,
};
use hsu_process_management::{Journal, ManagerFacade, ManagerOptions, ProcessManager};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Supervised processes, unless `HSU_BENCH_PROCESSES` says otherwise.
const DEFAULT_PROCESSES: usize = 200;
/// Measured requests per latency row, after [`WARMUP`] unmeasured ones.
const REQUESTS: usize = 500;
const WARMUP: usize = 50;
/// Concurrent clients of the throughput runs, each for [`LOAD_WINDOW`].
const CLIENTS: usize = 8;
const LOAD_WINDOW: Duration = Duration::from_secs(5);
/// No requests at all during this window; the manager only supervises.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
const START_DEADLINE: Duration = Duration::from_secs(60);
const LIST: &str = "/api/v1/processes";
const MANAGER_THREAD: &str = "hsu-manager";
const CLIENT_THREAD: &str = "bench-client";
/// Clock ticks per second of the CPU times in /proc (USER_HZ, 100 on every mainstream
/// Linux ABI).
const USER_HZ: f64 = 100.0;

type Res<T> = Result<T, String>;

fn processes() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("HSU_BENCH_PROCESSES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_PROCESSES)
    })
}

/// The process whose `GET` is measured: the middle one.
fn one_id() -> String {
    format!("p-{:03}", processes() / 2)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` / `--all-targets` does not.
    if !std::env::args().skip(1).any(|a| a == "--bench") {
        println!("api_list is a benchmark: run it with `cargo bench -p hsu-api --bench api_list`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("api_list: {e}");
        std::process::exit(1);
    }
}

fn runtime(name: &str) -> Res<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the {name} runtime: {e}"))
}

fn sleeper(i: usize, dir: &Path) -> ProcessDefinition {
    let mut control = ControlSpec::new("sleep", dir);
    control.arguments = vec!["3600".into()];
    ProcessDefinition {
        id: format!("p-{i:03}"),
        process_type: ProcessType::StandardManaged,
        enabled: true,
        control: Some(control),
        health_check: HealthCheckSpec::default(),
        log_collection: ProcessLogCollection::default(),
        discovery: None,
        metadata: BTreeMap::new(),
        profile_type: None,
        depends_on: Vec::new(),
        ready_log_line: None,
    }
}

fn run() -> Res<()> {
    let manager_rt = runtime(MANAGER_THREAD)?;
    let client_rt = runtime(CLIENT_THREAD)?;
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a tempdir: {e}"))?;
    let base = dir.path().to_path_buf();
    let mut report = Report {
        rss_before: rss_bytes(),
        ..Report::default()
    };
    let journal =
        Arc::new(Journal::open(&base.join("events.jsonl")).map_err(|e| format!("journal: {e}"))?);
    let definitions = (0..processes()).map(|i| sleeper(i, &base)).collect();
    let options = ManagerOptions {
        base_directory: base.clone(),
        log_directory: base.join("logs"),
        force_shutdown_timeout: Duration::from_secs(30),
        resource_sample_interval: Duration::from_secs(1),
    };
    eprintln!("starting {} processes...", processes());
    let began = Instant::now();
    let manager = manager_rt
        .block_on(ProcessManager::start(definitions, options, journal.clone()))
        .map_err(|e| format!("cannot start the manager: {e}"))?;
    report.start_returned = began.elapsed();

    let mut server = None;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        measure(
            &manager_rt,
            &client_rt,
            &manager,
            journal,
            &base,
            began,
            &mut server,
            &mut report,
        )
    }));

    // Whatever happened above, stop the API and every process.
    eprintln!("shutting down...");
    let pids: Vec<u32> = manager.statuses().iter().filter_map(|s| s.pid).collect();
    manager_rt.block_on(async {
        if let Some(server) = server.take() {
            server.stop().await;
        }
    });
    let stopping = Instant::now();
    manager_rt.block_on(manager.shutdown("benchmark finished"));
    report.shutdown = stopping.elapsed();
    report.stopped = pids.len();
    report.left_running = pids.iter().filter(|&&pid| is_live_sleep(pid)).count();
    client_rt.shutdown_timeout(Duration::from_secs(1));
    manager_rt.shutdown_timeout(Duration::from_secs(1));
    drop(dir);

    match outcome {
        Ok(Ok(())) => {
            report.print();
            if report.left_running > 0 {
                return Err(format!(
                    "{} sleep process(es) still running after the shutdown",
                    report.left_running
                ));
            }
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(panic) => resume_unwind(panic),
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    manager_rt: &Runtime,
    client_rt: &Runtime,
    manager: &ProcessManager,
    journal: Arc<Journal>,
    base: &Path,
    began: Instant,
    server: &mut Option<RunningServer>,
    report: &mut Report,
) -> Res<()> {
    // 1. Every process running (the manager's own view, as the API reports it).
    loop {
        let statuses = manager.statuses();
        let running = statuses
            .iter()
            .filter(|s| s.state == ProcessState::Running && s.pid.is_some())
            .count();
        if running == processes() {
            report.all_running = began.elapsed();
            break;
        }
        if began.elapsed() > START_DEADLINE {
            return Err(format!(
                "only {running} of {} processes running after {START_DEADLINE:?}",
                processes()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    report.rss_started = rss_bytes();

    // 2. The API, as the binary serves it (TCP on loopback, no token).
    let facade = ManagerFacade::new(manager.clone(), journal, base.join("config.yaml"));
    let state = ApiState::new(facade.clone(), None);
    let listen = ListenSettings {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        socket_path: base.join("api.sock"),
        addr_file: base.join("api.addr"),
    };
    let running = manager_rt
        .block_on(server::start(state, listen))
        .map_err(|e| format!("cannot start the API: {e}"))?;
    let addr = running.local_addr;
    *server = Some(running);
    let client = ApiClient::new(ApiAddress::Tcp(addr.to_string()), None)
        .with_timeout(Duration::from_secs(10));

    // 3. Sequential latency.
    eprintln!("measuring sequential latency...");
    client_rt.block_on(latency(&client, addr, report))?;

    // 4. The list handler's work without HTTP, step by step.
    eprintln!("measuring the list handler in-process...");
    handler_steps(&facade, report)?;

    // 5. Throughput.
    for keep_alive in [false, true] {
        eprintln!(
            "measuring throughput ({CLIENTS} clients, {}, {LOAD_WINDOW:?})...",
            if keep_alive {
                "keep-alive"
            } else {
                "new connection per request"
            }
        );
        let load = client_rt.block_on(throughput(&client, addr, keep_alive))?;
        report.load.push(load);
    }
    report.peak_rss = vm_hwm_bytes();

    // 6. Idle: no request at all, the manager only supervises.
    eprintln!("measuring idle footprint ({IDLE_WINDOW:?})...");
    let before = Threads::now();
    let t = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    report.idle = Some((Threads::now().since(&before), t.elapsed()));
    report.rss_idle = rss_bytes();
    report.fds = facade.usage().map(|u| u.open_fds);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Requests

/// One HTTP/1.1 connection kept open between requests.
struct KeepAlive {
    sender: SendRequest<Empty<Bytes>>,
    host: String,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> Res<KeepAlive> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(KeepAlive {
            sender,
            host: addr.to_string(),
        })
    }

    /// GETs `path` and returns the body's size.
    async fn get(&mut self, path: &str) -> Res<usize> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", &self.host)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("GET {path}: HTTP {status}"));
        }
        Ok(body.len())
    }
}

/// A GET through the typed client's raw call: a new connection, the body not decoded.
async fn raw_get(client: &ApiClient, path: &str) -> Res<usize> {
    let resp = client
        .raw(Method::GET, path, &[], None)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("GET {path}: HTTP {}", resp.status));
    }
    Ok(resp.body.len())
}

/// Runs `$call` (an async expression giving `Res<usize>`, the body size) [`WARMUP`]
/// times unmeasured, then [`REQUESTS`] times measured; gives the samples.
macro_rules! sample {
    ($call:expr) => {{
        let mut times = Vec::with_capacity(REQUESTS);
        for i in 0..WARMUP + REQUESTS {
            let t = Instant::now();
            black_box($call.await?);
            if i >= WARMUP {
                times.push(t.elapsed());
            }
        }
        Samples::new(times)
    }};
}

async fn latency(client: &ApiClient, addr: SocketAddr, report: &mut Report) -> Res<()> {
    let one_id = one_id();
    let one = format!("{LIST}/{one_id}");
    report.list_bytes = raw_get(client, LIST).await?;
    report.one_bytes = raw_get(client, &one).await?;
    let listed = client.list().await.map_err(|e| e.to_string())?;
    if listed.len() != processes() || listed.iter().any(|p| p.state != hsu_api::State::Running) {
        return Err(format!(
            "the list shows {} processes, not {} running ones",
            listed.len(),
            processes()
        ));
    }

    let rows = &mut report.latency;
    let s = sample!(async {
        client
            .list()
            .await
            .map(|l| l.len())
            .map_err(|e| e.to_string())
    });
    rows.push(("list, new connection, decoded (CLI)".into(), s));
    rows.push((
        "list, new connection, raw body".into(),
        sample!(raw_get(client, LIST)),
    ));
    let mut conn = KeepAlive::connect(addr).await?;
    rows.push(("list, keep-alive".into(), sample!(conn.get(LIST))));
    rows.push((
        format!("get {one_id}, new connection, decoded"),
        sample!(async {
            client
                .get(&one_id)
                .await
                .map(|_| 0)
                .map_err(|e| e.to_string())
        }),
    ));
    rows.push((format!("get {one_id}, keep-alive"), sample!(conn.get(&one))));
    rows.push((
        "healthz, keep-alive (HTTP floor)".into(),
        sample!(conn.get("/healthz")),
    ));
    rows.push((
        "healthz, new connection".into(),
        sample!(raw_get(client, "/healthz")),
    ));
    Ok(())
}

/// The list handler's steps, timed one by one, on this thread (no HTTP, no runtime).
fn handler_steps(manager: &ManagerFacade, report: &mut Report) -> Res<()> {
    let mut steps: [Vec<Duration>; 4] = Default::default();
    for i in 0..WARMUP + REQUESTS {
        let t0 = Instant::now();
        let overview = manager.processes();
        let t1 = Instant::now();
        let processes: Vec<Process> = overview.iter().map(Process::from_view).collect();
        let t2 = Instant::now();
        let body = serde_json::to_vec(&processes).map_err(|e| e.to_string())?;
        let t3 = Instant::now();
        black_box(&body);
        if i >= WARMUP {
            for (step, d) in steps.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t3 - t0]) {
                step.push(d);
            }
        }
    }
    let n = processes();
    let names = [
        "facade.processes()".to_owned(),
        format!("Process::from_view x {n}"),
        "serde_json::to_vec".to_owned(),
        "all of the above".to_owned(),
    ];
    for (name, times) in names.into_iter().zip(steps) {
        report.handler.push((name, Samples::new(times)));
    }
    Ok(())
}

async fn throughput(client: &ApiClient, addr: SocketAddr, keep_alive: bool) -> Res<Load> {
    let before = Threads::now();
    let began = Instant::now();
    let deadline = began + LOAD_WINDOW;
    let mut tasks = JoinSet::new();
    for _ in 0..CLIENTS {
        let client = client.clone();
        tasks.spawn(async move {
            let mut conn = if keep_alive {
                Some(KeepAlive::connect(addr).await?)
            } else {
                None
            };
            let mut times = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let result = match &mut conn {
                    Some(conn) => conn.get(LIST).await,
                    None => raw_get(&client, LIST).await,
                };
                match result {
                    Ok(_) => times.push(t.elapsed()),
                    Err(_) => {
                        errors += 1;
                        if keep_alive {
                            conn = Some(KeepAlive::connect(addr).await?);
                        }
                    }
                }
            }
            Ok::<_, String>((times, errors))
        });
    }
    let mut times = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        let (t, e) = joined.map_err(|e| e.to_string())??;
        times.extend(t);
        errors += e;
    }
    let elapsed = began.elapsed();
    Ok(Load {
        keep_alive,
        requests: times.len() as u64,
        errors,
        elapsed,
        latency: Samples::new(times),
        cpu: Threads::now().since(&before),
    })
}

// ---------------------------------------------------------------------------------------
// Measurements of this process

/// CPU time of this process's threads, by thread id: name, nanoseconds on a CPU (from
/// `schedstat`, else the 10 ms ticks of `stat`), and user and system ticks.
#[derive(Debug, Default, Clone)]
struct Threads {
    by_id: BTreeMap<String, ThreadCpu>,
    /// The whole process's user + system ticks (`/proc/self/stat`, exited threads too).
    process_ticks: u64,
}

#[derive(Debug, Default, Clone)]
struct ThreadCpu {
    name: String,
    ns: u64,
    user_ticks: u64,
    system_ticks: u64,
}

/// CPU used in a window: the whole process (10 ms ticks), and the manager's and the
/// client's runtime threads (nanoseconds where the kernel keeps `schedstat`).
#[derive(Debug, Default, Clone, Copy)]
struct CpuUsed {
    process_ticks: u64,
    manager_ns: u64,
    client_ns: u64,
    manager_user_ticks: u64,
    manager_system_ticks: u64,
}

impl Threads {
    fn now() -> Threads {
        let mut by_id = BTreeMap::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                if let Some(cpu) = thread_cpu(&task.path()) {
                    by_id.insert(task.file_name().to_string_lossy().into_owned(), cpu);
                }
            }
        }
        let process_ticks =
            thread_cpu(Path::new("/proc/self")).map_or(0, |cpu| cpu.user_ticks + cpu.system_ticks);
        Threads {
            by_id,
            process_ticks,
        }
    }

    /// What was used since `earlier` (by threads: a thread that exited in between is
    /// left out; one born since counts whole).
    fn since(&self, earlier: &Threads) -> CpuUsed {
        let mut used = CpuUsed {
            process_ticks: self.process_ticks.saturating_sub(earlier.process_ticks),
            ..CpuUsed::default()
        };
        for (tid, now) in &self.by_id {
            let before = earlier.by_id.get(tid).cloned().unwrap_or_default();
            let ns = now.ns.saturating_sub(before.ns);
            if now.name.starts_with(MANAGER_THREAD) {
                used.manager_ns += ns;
                used.manager_user_ticks += now.user_ticks.saturating_sub(before.user_ticks);
                used.manager_system_ticks += now.system_ticks.saturating_sub(before.system_ticks);
            } else if now.name.starts_with(CLIENT_THREAD) {
                used.client_ns += ns;
            }
        }
        used
    }
}

fn thread_cpu(task: &Path) -> Option<ThreadCpu> {
    let text = std::fs::read_to_string(task.join("stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_owned();
    // After the name: field 3 (state) first; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let user_ticks: u64 = fields.get(11)?.parse().ok()?;
    let system_ticks: u64 = fields.get(12)?.parse().ok()?;
    let ns = std::fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(((user_ticks + system_ticks) as f64 / USER_HZ * 1e9) as u64);
    Some(ThreadCpu {
        name,
        ns,
        user_ticks,
        system_ticks,
    })
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Peak resident set size (`VmHWM`).
fn vm_hwm_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Whether `pid` is still a live (not zombie) `sleep`.
fn is_live_sleep(pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let live = text
        .rfind(')')
        .and_then(|i| text[i + 1..].split_whitespace().next())
        .is_some_and(|state| !matches!(state, "Z" | "X" | "x"));
    live && text.contains("(sleep)")
}

// ---------------------------------------------------------------------------------------
// The report

struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    fn new(mut times: Vec<Duration>) -> Samples {
        times.sort_unstable();
        Samples { sorted: times }
    }

    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    fn min(&self) -> Duration {
        self.sorted.first().copied().unwrap_or_default()
    }

    fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }
}

struct Load {
    keep_alive: bool,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency: Samples,
    cpu: CpuUsed,
}

#[derive(Default)]
struct Report {
    start_returned: Duration,
    all_running: Duration,
    shutdown: Duration,
    stopped: usize,
    left_running: usize,
    list_bytes: usize,
    one_bytes: usize,
    latency: Vec<(String, Samples)>,
    handler: Vec<(String, Samples)>,
    load: Vec<Load>,
    idle: Option<(CpuUsed, Duration)>,
    rss_before: Option<u64>,
    rss_started: Option<u64>,
    rss_idle: Option<u64>,
    peak_rss: Option<u64>,
    fds: Option<u64>,
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "n/a".into(),
        |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn print_samples(title: &str, rows: &[(String, Samples)]) {
    println!("{title}");
    println!(
        "  {:<40} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "min", "p50", "p90", "p99", "max"
    );
    for (name, s) in rows {
        println!(
            "  {:<40} {:>8} {:>8} {:>8} {:>8} {:>8}",
            name,
            us(s.min()),
            us(s.pct(50.0)),
            us(s.pct(90.0)),
            us(s.pct(99.0)),
            us(s.max())
        );
    }
    println!();
}

impl Report {
    fn print(&self) {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!();
        let n = processes();
        println!("hsu-api api_list: {n} supervised `sleep 3600` processes");
        println!(
            "machine: {cpus} CPU(s), {}; manager and client runtimes: 2 worker threads each",
            cpu_model()
        );
        println!(
            "GET {LIST}: {} bytes of JSON; GET {LIST}/{}: {} bytes",
            self.list_bytes,
            one_id(),
            self.one_bytes
        );
        println!();
        print_samples(
            &format!(
                "Sequential latency, microseconds ({REQUESTS} requests after {WARMUP} warm-up, one at a time)"
            ),
            &self.latency,
        );
        print_samples(
            &format!("The list handler's work in-process, no HTTP, microseconds ({REQUESTS} runs)"),
            &self.handler,
        );

        println!("Throughput: {CLIENTS} concurrent clients for {LOAD_WINDOW:?}, GET {LIST}");
        println!(
            "  {:<26} {:>8} {:>7} {:>8} {:>8} {:>6} {:>8} {:>8} {:>10} {:>8}",
            "",
            "requests",
            "req/s",
            "p50 µs",
            "p99 µs",
            "errors",
            "mgr CPU",
            "cli CPU",
            "mgr µs/req",
            "mgr sys"
        );
        for l in &self.load {
            let window = l.elapsed.as_secs_f64();
            let per_request = secs(l.cpu.manager_ns) * 1e6 / l.requests.max(1) as f64;
            let ticks = (l.cpu.manager_user_ticks + l.cpu.manager_system_ticks).max(1);
            println!(
                "  {:<26} {:>8} {:>7.0} {:>8} {:>8} {:>6} {:>7.0}% {:>7.0}% {:>10.0} {:>7.0}%",
                if l.keep_alive {
                    "keep-alive"
                } else {
                    "new connection per request"
                },
                l.requests,
                l.requests as f64 / window,
                us(l.latency.pct(50.0)),
                us(l.latency.pct(99.0)),
                l.errors,
                secs(l.cpu.manager_ns) / window * 100.0,
                secs(l.cpu.client_ns) / window * 100.0,
                per_request,
                l.cpu.manager_system_ticks as f64 / ticks as f64 * 100.0
            );
        }
        println!(
            "  (CPU % of one core: 200% = both cores busy; \"mgr sys\" = the kernel's share of"
        );
        println!("  the manager threads' CPU; p50/p99 are per request under this load)");
        println!();

        println!("Start and shutdown of all {n}");
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        kv("ProcessManager::start returned", ms(self.start_returned));
        kv(&format!("all {n} running"), ms(self.all_running));
        kv(
            &format!("manager.shutdown ({} stopped)", self.stopped),
            ms(self.shutdown),
        );
        kv("sleeps left alive after it", self.left_running.to_string());
        println!();

        println!("The manager's footprint (in-process: includes the idle benchmark client)");
        kv("RSS before the manager started", mib(self.rss_before));
        kv(
            &format!("RSS, {n} running, before any request"),
            mib(self.rss_started),
        );
        kv("RSS, idle after the load", mib(self.rss_idle));
        kv("peak RSS (VmHWM)", mib(self.peak_rss));
        kv(
            "open file descriptors",
            self.fds.map_or_else(|| "n/a".into(), |n| n.to_string()),
        );
        if let Some((cpu, window)) = &self.idle {
            let w = window.as_secs_f64();
            let show = |ns: u64| format!("{:.1} ms = {:.3}%", secs(ns) * 1e3, secs(ns) / w * 100.0);
            kv(
                &format!("CPU in {w:.0} s idle, whole process (ticks)"),
                show((cpu.process_ticks as f64 / USER_HZ * 1e9) as u64),
            );
            kv(
                &format!("CPU in {w:.0} s idle, manager threads"),
                show(cpu.manager_ns),
            );
            kv(
                &format!("CPU in {w:.0} s idle, client threads"),
                show(cpu.client_ns),
            );
        }
        println!();
    }
}

fn kv(label: &str, value: String) {
    println!("  {label:<42} {value:>22}");
}
