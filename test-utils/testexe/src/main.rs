//! `testexe` is a small, configurable Linux program that the end-to-end suite
//! runs under the HSU Process Manager to simulate both well-behaved services
//! (clean exits, prompt SIGTERM handling, a healthy HTTP endpoint) and
//! misbehaving ones (crashes, ignored SIGTERM, slow shutdown, leaked or
//! detached grandchildren, memory/CPU/file-descriptor hogging, failing health
//! checks). Arguments are parsed by hand. The gRPC side (`--grpc-port`, or the port
//! the manager gives an integrated process) serves `grpc.health.v1.Health` and
//! `hsu.core.v1.CoreService` over h2c from a Tokio runtime on a thread of its own; the
//! rest is plain threads. All timed behaviour (`--run-duration`, `--crash-after`,
//! `--fail-health-after`, `--grpc-not-serving-after`) is measured from process start.
//!
//! How it stops is printed, so tests can tell the ways apart: a Shutdown call prints
//! `testexe: shutdown via rpc` on stderr and `shutdown via rpc` on stdout; a stop
//! signal prints `testexe: shutdown via signal SIGTERM` (or `SIGINT`) on stderr only,
//! so that stdout stays the program's own lines.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: testexe [--run-duration SECS] [--exit-code N] [--crash-after SECS] \
[--ignore-sigterm] [--shutdown-delay SECS] [--spawn-children N] [--detach-children] \
[--pid-file PATH] [--print-every MS] [--startup-delay SECS] [--memory-mb N] \
[--memory-growth-mb-per-sec N] [--cpu-percent P] [--health-port P] [--fail-health-after SECS] \
[--hang-health] [--grpc-port P] [--grpc-not-serving-after SECS] [--ignore-shutdown-rpc] \
[--open-fds N] [--port N]   (env HSU_PORT = --port; gRPC is served on --port too)";

/// Write a line to stderr, ignoring errors (the supervisor may have closed the pipe).
macro_rules! log {
    ($($arg:tt)*) => {{ let _ = writeln!(io::stderr(), "testexe: {}", format_args!($($arg)*)); }};
}

// After `log!`, which it uses.
mod grpc;

#[derive(Debug, Default, Clone, PartialEq)]
struct Args {
    help: bool,
    run_duration: Option<Duration>,
    exit_code: i32,
    crash_after: Option<Duration>,
    ignore_sigterm: bool,
    shutdown_delay: Option<Duration>,
    spawn_children: u32,
    detach_children: bool,
    pid_file: Option<PathBuf>,
    print_every: Option<Duration>,
    startup_delay: Option<Duration>,
    memory_mb: usize,
    memory_growth_mb_per_sec: usize,
    cpu_percent: f64,
    health_port: Option<u16>,
    fail_health_after: Option<Duration>,
    hang_health: bool,
    grpc_port: Option<u16>,
    grpc_not_serving_after: Option<Duration>,
    ignore_shutdown_rpc: bool,
    open_fds: u32,
    port: Option<u16>,
}

impl Args {
    /// Where gRPC is served: `--grpc-port`, and the port given by the manager.
    fn grpc_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.grpc_port.into_iter().chain(self.port).collect();
        ports.dedup();
        ports
    }
}

fn num<T: FromStr>(flag: &str, s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("invalid value {s:?} for {flag}"))
}

fn secs(flag: &str, s: &str) -> Result<Duration, String> {
    let f: f64 = num(flag, s)?;
    Duration::try_from_secs_f64(f).map_err(|_| format!("invalid duration {s:?} for {flag}"))
}

/// Parse the arguments (without argv\[0\]); `env_port` is the value of `HSU_PORT`.
fn parse_args<I>(args: I, env_port: Option<String>) -> Result<Args, String>
where
    I: IntoIterator<Item = String>,
{
    let mut a = Args::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let switch = |inline: Option<String>| match inline {
            Some(_) => Err(format!("{flag} takes no value")),
            None => Ok(true),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} requires a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => a.help = true,
            "--run-duration" => {
                a.run_duration = Some(secs(&flag, &value()?)?).filter(|d| !d.is_zero())
            }
            "--exit-code" => {
                a.exit_code = num(&flag, &value()?)?;
                if !(0..=255).contains(&a.exit_code) {
                    return Err(format!("{flag} must be between 0 and 255"));
                }
            }
            "--crash-after" => a.crash_after = Some(secs(&flag, &value()?)?),
            "--ignore-sigterm" => a.ignore_sigterm = switch(inline)?,
            "--shutdown-delay" => a.shutdown_delay = Some(secs(&flag, &value()?)?),
            "--spawn-children" => a.spawn_children = num(&flag, &value()?)?,
            "--detach-children" => a.detach_children = switch(inline)?,
            "--pid-file" => a.pid_file = Some(PathBuf::from(value()?)),
            "--print-every" => match num::<u64>(&flag, &value()?)? {
                0 => return Err(format!("{flag} must be greater than 0")),
                ms => a.print_every = Some(Duration::from_millis(ms)),
            },
            "--startup-delay" => a.startup_delay = Some(secs(&flag, &value()?)?),
            "--memory-mb" => a.memory_mb = num(&flag, &value()?)?,
            "--memory-growth-mb-per-sec" => a.memory_growth_mb_per_sec = num(&flag, &value()?)?,
            "--cpu-percent" => {
                a.cpu_percent = num(&flag, &value()?)?;
                if !(0.0..=10_000.0).contains(&a.cpu_percent) {
                    return Err(format!("{flag} must be between 0 and 10000"));
                }
            }
            "--health-port" => a.health_port = Some(num(&flag, &value()?)?),
            "--fail-health-after" => a.fail_health_after = Some(secs(&flag, &value()?)?),
            "--hang-health" => a.hang_health = switch(inline)?,
            "--grpc-port" => a.grpc_port = Some(num(&flag, &value()?)?),
            "--grpc-not-serving-after" => a.grpc_not_serving_after = Some(secs(&flag, &value()?)?),
            "--ignore-shutdown-rpc" => a.ignore_shutdown_rpc = switch(inline)?,
            "--open-fds" => a.open_fds = num(&flag, &value()?)?,
            "--port" => a.port = Some(num(&flag, &value()?)?),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if a.port.is_none() {
        if let Some(p) = env_port.filter(|p| !p.trim().is_empty()) {
            a.port = Some(num("HSU_PORT", &p)?);
        }
    }
    Ok(a)
}

/// The last termination signal received (0 = none); set by the signal handler only.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Set once a Shutdown call has been answered and the gRPC server has wound down.
static SHUTDOWN_RPC: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn set_disposition(sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid initial value; the handler only
    // stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn install_signal_handlers(ignore_sigterm: bool) -> io::Result<()> {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    set_disposition(libc::SIGINT, handler)?;
    set_disposition(
        libc::SIGTERM,
        if ignore_sigterm {
            libc::SIG_IGN
        } else {
            handler
        },
    )
}

/// React to SIGTERM/SIGINT: optionally linger for `delay`, then exit 0.
fn shutdown(sig: i32, delay: Option<Duration>) -> ! {
    let name = if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    log!("shutdown via signal {name}");
    if let Some(delay) = delay {
        log!(
            "received {name}, shutting down in {:.3}s",
            delay.as_secs_f64()
        );
        thread::sleep(delay);
        log!("shutdown delay over, exiting");
    } else {
        log!("received {name}, exiting");
    }
    finish(0)
}

/// After a Shutdown call (already announced): optionally linger for `delay`, then exit 0.
fn shutdown_via_rpc(delay: Option<Duration>) -> ! {
    if let Some(delay) = delay {
        log!("shutting down in {:.3}s", delay.as_secs_f64());
        thread::sleep(delay);
        log!("shutdown delay over, exiting");
    } else {
        log!("exiting");
    }
    finish(0)
}

fn finish(code: i32) -> ! {
    let _ = io::stdout().flush();
    exit(code)
}

fn fail(what: &str, err: impl std::fmt::Display) -> ! {
    log!("{what}: {err}");
    finish(1)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path);
    s.push(suffix);
    PathBuf::from(s)
}

/// Write "<pid>\n" to `path` atomically (via `path.tmp` and a rename).
fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    fs::write(&tmp, format!("{pid}\n"))?;
    fs::rename(&tmp, path)
}

/// Allocate `mb` MiB with every byte written, so that all of it is resident.
fn resident_alloc(mb: usize) -> io::Result<Vec<u8>> {
    let too_big = || io::Error::other(format!("cannot allocate {mb} MiB"));
    let len = mb.checked_mul(1024 * 1024).ok_or_else(too_big)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| too_big())?;
    v.resize(len, 1u8);
    Ok(std::hint::black_box(v))
}

fn grow_memory(mb_per_sec: usize) {
    let mut held = Vec::new();
    loop {
        thread::sleep(Duration::from_secs(1));
        match resident_alloc(mb_per_sec) {
            Ok(chunk) => held.push(chunk),
            Err(e) => return log!("memory growth stopped: {e}"),
        }
    }
}

/// Busy-loop for `percent` of every 100ms period, sleeping the rest.
fn burn_cpu(percent: f64) {
    let period = Duration::from_millis(100);
    let busy = period.mul_f64(percent / 100.0);
    loop {
        let t = Instant::now();
        while t.elapsed() < busy {
            std::hint::spin_loop();
        }
        if let Some(rest) = period.checked_sub(t.elapsed()) {
            thread::sleep(rest);
        }
    }
}

fn serve_health(listener: TcpListener, start: Instant, fail_after: Option<Duration>, hang: bool) {
    for stream in listener.incoming().flatten() {
        if hang {
            thread::spawn(move || hold(stream));
            continue;
        }
        let failing = fail_after.is_some_and(|d| start.elapsed() >= d);
        thread::spawn(move || answer_health(stream, failing));
    }
}

/// `--hang-health`: read whatever comes and never answer, until the client leaves.
fn hold(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(1..) = stream.read(&mut buf) {}
}

fn answer_health(mut stream: TcpStream, failing: bool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    // Read the request headers so that closing the socket does not reset it.
    let (mut buf, mut req) = ([0u8; 1024], Vec::new());
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        req.extend_from_slice(&buf[..n]);
        if req.windows(4).any(|w| w == b"\r\n\r\n") || req.len() > 64 * 1024 {
            break;
        }
    }
    let (status, body) = if failing {
        ("503 Service Unavailable", "FAIL")
    } else {
        ("200 OK", "OK")
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// Spawn the grandchildren; they are reaped in the background but never waited for on exit.
fn spawn_children(args: &Args) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    for i in 0..args.spawn_children {
        let mut cmd = Command::new(&exe);
        cmd.args(["--run-duration", "0"]).env_remove("HSU_PORT");
        if args.ignore_sigterm {
            cmd.arg("--ignore-sigterm");
        }
        if args.detach_children {
            // SAFETY: setsid() is async-signal-safe and touches no parent memory.
            unsafe {
                cmd.pre_exec(|| match libc::setsid() {
                    -1 => Err(io::Error::last_os_error()),
                    _ => Ok(()),
                });
            }
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        log!("spawned child {i} pid={pid}");
        if let Some(path) = &args.pid_file {
            write_pid_file(&with_suffix(path, &format!(".child{i}")), pid)?;
        }
        thread::spawn(move || match child.wait() {
            Ok(status) => log!("child pid={pid} exited: {status}"),
            Err(e) => log!("waiting for child pid={pid} failed: {e}"),
        });
    }
    Ok(())
}

fn main() {
    let start = Instant::now();
    let raw: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect()
    {
        Ok(raw) => raw,
        Err(bad) => {
            log!("argument {bad:?} is not valid UTF-8\n{USAGE}");
            exit(2)
        }
    };
    let args = match parse_args(raw.clone(), std::env::var("HSU_PORT").ok()) {
        Ok(args) => args,
        Err(e) => {
            log!("{e}\n{USAGE}");
            exit(2)
        }
    };
    if args.help {
        println!("{USAGE}");
        finish(0);
    }
    log!("started pid={} args={}", std::process::id(), raw.join(" "));
    if let Err(e) = install_signal_handlers(args.ignore_sigterm) {
        fail("installing signal handlers", e);
    }

    if let Some(delay) = args.startup_delay {
        let until = Instant::now() + delay;
        while Instant::now() < until {
            match SIGNAL.load(Ordering::SeqCst) {
                0 => thread::sleep(Duration::from_millis(10).min(until - Instant::now())),
                sig => shutdown(sig, args.shutdown_delay),
            }
        }
    }
    if let Some(path) = &args.pid_file {
        if let Err(e) = write_pid_file(path, std::process::id()) {
            fail(&format!("writing pid file {}", path.display()), e);
        }
    }
    if let Some(port) = args.port {
        log!("port {port}");
    }

    let _memory = resident_alloc(args.memory_mb).unwrap_or_else(|e| fail("--memory-mb", e));
    let _fds: Vec<File> = (0..args.open_fds)
        .map(|_| File::open("/dev/null").unwrap_or_else(|e| fail("--open-fds", e)))
        .collect();
    if args.memory_growth_mb_per_sec > 0 {
        let mb = args.memory_growth_mb_per_sec;
        thread::spawn(move || grow_memory(mb));
    }
    if args.cpu_percent > 0.0 {
        let threads = (args.cpu_percent / 100.0).ceil().max(1.0);
        for _ in 0..threads as u32 {
            let share = args.cpu_percent / threads;
            thread::spawn(move || burn_cpu(share));
        }
    }
    if let Some(port) = args.health_port {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| fail(&format!("binding health port {port}"), e));
        if let Ok(addr) = listener.local_addr() {
            log!("health endpoint on http://{addr}/");
        }
        let fail_after = args.fail_health_after;
        let hang = args.hang_health;
        thread::spawn(move || serve_health(listener, start, fail_after, hang));
    }
    let grpc_listeners: Vec<TcpListener> = args
        .grpc_ports()
        .into_iter()
        .map(|port| {
            let listener = TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| fail(&format!("binding gRPC port {port}"), e));
            if let Ok(addr) = listener.local_addr() {
                log!("grpc endpoint on {addr}");
            }
            listener
        })
        .collect();
    if !grpc_listeners.is_empty() {
        let options = grpc::Options {
            start,
            not_serving_after: args.grpc_not_serving_after,
            ignore_shutdown: args.ignore_shutdown_rpc,
        };
        thread::spawn(move || grpc::serve(grpc_listeners, options));
    }
    if let Err(e) = spawn_children(&args) {
        fail("spawning children", e);
    }

    let mut next_print = args.print_every.map(|every| Instant::now() + every);
    let mut line = 0u64;
    loop {
        let sig = SIGNAL.load(Ordering::SeqCst);
        if sig != 0 {
            shutdown(sig, args.shutdown_delay);
        }
        if SHUTDOWN_RPC.load(Ordering::SeqCst) {
            shutdown_via_rpc(args.shutdown_delay);
        }
        if args.crash_after.is_some_and(|d| start.elapsed() >= d) {
            let code = if args.exit_code != 0 {
                args.exit_code
            } else {
                1
            };
            log!("crashing with exit code {code}");
            finish(code);
        }
        if args.run_duration.is_some_and(|d| start.elapsed() >= d) {
            log!("run duration elapsed, exiting with code {}", args.exit_code);
            finish(args.exit_code);
        }
        let mut nap = Duration::from_millis(10);
        if let (Some(every), Some(next)) = (args.print_every, next_print.as_mut()) {
            let now = Instant::now();
            if now >= *next {
                line += 1;
                let _ = writeln!(io::stdout().lock(), "stdout line {line}");
                let _ = io::stdout().flush();
                let _ = writeln!(io::stderr(), "stderr line {line}");
                *next = (*next + every).max(now);
            }
            nap = nap.min(next.saturating_duration_since(Instant::now()));
        }
        thread::sleep(nap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Args, String> {
        parse_args(args.split_whitespace().map(String::from), None)
    }

    #[test]
    fn defaults_run_forever() {
        assert_eq!(parse("").unwrap(), Args::default());
        assert_eq!(parse("--run-duration 0").unwrap().run_duration, None);
    }

    #[test]
    fn parses_values_and_switches() {
        let a = parse(
            "--run-duration 1.5 --exit-code 3 --ignore-sigterm --spawn-children=2 \
             --detach-children --pid-file /tmp/p --print-every 100 --health-port 8080 \
             --fail-health-after 0.25 --cpu-percent 50",
        )
        .unwrap();
        assert_eq!(a.run_duration, Some(Duration::from_millis(1500)));
        assert_eq!(a.exit_code, 3);
        assert!(a.ignore_sigterm && a.detach_children);
        assert_eq!(a.spawn_children, 2);
        assert_eq!(a.pid_file, Some(PathBuf::from("/tmp/p")));
        assert_eq!(a.print_every, Some(Duration::from_millis(100)));
        assert_eq!(a.health_port, Some(8080));
        assert_eq!(a.fail_health_after, Some(Duration::from_millis(250)));
        assert_eq!(a.cpu_percent, 50.0);
        assert!(!a.hang_health && !a.ignore_shutdown_rpc);
    }

    #[test]
    fn parses_the_grpc_and_health_endpoint_flags() {
        let a = parse(
            "--grpc-port 9090 --grpc-not-serving-after=1.5 --ignore-shutdown-rpc --hang-health",
        )
        .unwrap();
        assert_eq!(a.grpc_port, Some(9090));
        assert_eq!(a.grpc_not_serving_after, Some(Duration::from_millis(1500)));
        assert!(a.ignore_shutdown_rpc && a.hang_health);
        assert!(parse("--grpc-port")
            .unwrap_err()
            .contains("requires a value"));
        assert!(parse("--grpc-port 65536").is_err());
        assert!(parse("--grpc-not-serving-after never").is_err());
        assert!(parse("--hang-health=1").is_err());
        assert!(parse("--ignore-shutdown-rpc=yes").is_err());
    }

    #[test]
    fn grpc_is_served_on_grpc_port_and_the_managers_port() {
        let ports = |args: &str, env: Option<&str>| {
            parse_args(
                args.split_whitespace().map(String::from),
                env.map(String::from),
            )
            .unwrap()
            .grpc_ports()
        };
        assert_eq!(ports("", None), Vec::<u16>::new());
        assert_eq!(ports("--grpc-port 7000", None), vec![7000]);
        assert_eq!(ports("", Some("7100")), vec![7100]);
        assert_eq!(
            ports("--grpc-port 7000 --port 7100", None),
            vec![7000, 7100]
        );
        assert_eq!(ports("--grpc-port 7000", Some("7000")), vec![7000]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse("--bogus").unwrap_err().contains("unknown argument"));
        assert!(parse("--crash-after")
            .unwrap_err()
            .contains("requires a value"));
        assert!(parse("--crash-after -1").is_err());
        assert!(parse("--crash-after soon").is_err());
        assert!(parse("--exit-code 256").is_err());
        assert!(parse("--print-every 0").is_err());
        assert!(parse("--health-port 70000").is_err());
        assert!(parse("--ignore-sigterm=yes").is_err());
    }

    #[test]
    fn port_from_flag_or_env() {
        let env = |v: &str| Some(v.to_string());
        let from_env = parse_args(Vec::new(), env("5000")).unwrap();
        assert_eq!(from_env.port, Some(5000));
        let flag = parse_args(vec!["--port".into(), "6000".into()], env("5000")).unwrap();
        assert_eq!(flag.port, Some(6000));
        assert!(parse_args(Vec::new(), env("x")).is_err());
        assert_eq!(parse_args(Vec::new(), env("")).unwrap().port, None);
    }
}
