//! The binary's gRPC side and hung HTTP endpoint, seen through the manager's own
//! probes and Shutdown client.

use hsu_managed_process::HealthCheckKind;
use hsu_monitoring::{probe, request_shutdown, ExecContext};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(20);

/// A running testexe: its stderr lines as they come, its stdout once it has exited.
struct Testexe {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Testexe {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Testexe {
        let mut child = Command::new(env!("CARGO_BIN_EXE_testexe"))
            .args(args)
            .env_remove("HSU_PORT")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Testexe {
            child,
            stderr,
            seen: Vec::new(),
        }
    }

    /// The first stderr line starting with `prefix` (waiting for it), without the prefix.
    fn line(&mut self, prefix: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return l[prefix.len()..].to_string();
        }
        let end = Instant::now() + LONG;
        while let Ok(l) = self
            .stderr
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l.clone());
            if let Some(rest) = l.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
        let last = &self.seen[self.seen.len().saturating_sub(20)..];
        panic!("no line `{prefix}...` on stderr; the last lines: {last:?}");
    }

    /// The port of `testexe: <what> endpoint on ...`.
    fn port(&mut self, what: &str) -> u16 {
        let addr = self.line(&format!("testexe: {what} endpoint on "));
        let addr = addr.trim_start_matches("http://").trim_end_matches('/');
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// Waits for the exit (bounded); the status and all of stdout.
    fn exited(&mut self) -> (ExitStatus, String) {
        let end = Instant::now() + LONG;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                return (status, out);
            }
            assert!(Instant::now() < end, "testexe did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// All of stderr so far, once the process has exited.
    fn stderr_text(&mut self) -> String {
        self.seen.extend(self.stderr.try_iter());
        self.seen.join("\n")
    }
}

impl Drop for Testexe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn grpc(port: u16, service: &str) -> Result<(), String> {
    let kind = HealthCheckKind::Grpc {
        address: format!("127.0.0.1:{port}"),
        service: service.into(),
    };
    let exec = ExecContext {
        working_directory: std::env::temp_dir(),
        environment: Default::default(),
    };
    probe(&kind, &exec, TIMEOUT).await.result
}

#[tokio::test]
async fn health_serves_then_stops_serving_after_the_given_time() {
    let mut t = Testexe::start(&["--grpc-port", "0", "--grpc-not-serving-after", "1"], &[]);
    let port = t.port("grpc");
    let started = Instant::now();
    assert_eq!(grpc(port, "").await, Ok(()));
    assert_eq!(grpc(port, "testexe").await, Ok(()));
    assert!(grpc(port, "other").await.unwrap_err().contains("NOT_FOUND"));
    let mut last = Ok(());
    while started.elapsed() < LONG {
        last = grpc(port, "testexe").await;
        if last.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, Err("service `testexe` is NOT_SERVING".into()));
    assert_eq!(
        grpc(port, "").await,
        Err("the server is NOT_SERVING".into())
    );
    t.line("testexe: grpc health is NOT_SERVING now");
}

#[tokio::test]
async fn a_shutdown_call_is_answered_then_the_process_exits_0() {
    // As managed: the port comes from HSU_PORT.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut t = Testexe::start(
        &["--print-every", "20", "--shutdown-delay", "0.2"],
        &[("HSU_PORT", &port.to_string())],
    );
    assert_eq!(t.port("grpc"), port);
    request_shutdown(port, "stop requested", TIMEOUT)
        .await
        .unwrap();
    let (status, out) = t.exited();
    assert_eq!(status.code(), Some(0));
    assert!(out.lines().any(|l| l == "shutdown via rpc"), "{out}");
    let err = t.stderr_text();
    for line in [
        "testexe: shutdown via rpc",
        "testexe: shutdown reason: stop requested",
        "testexe: shutting down in 0.200s",
        "testexe: shutdown delay over, exiting",
    ] {
        assert!(err.lines().any(|l| l == line), "{line}:\n{err}");
    }
}

#[tokio::test]
async fn an_ignored_shutdown_call_is_answered_and_a_signal_still_stops_it() {
    let mut t = Testexe::start(&["--grpc-port", "0", "--ignore-shutdown-rpc"], &[]);
    let port = t.port("grpc");
    request_shutdown(port, "please", TIMEOUT).await.unwrap();
    t.line("testexe: shutdown rpc ignored (reason: please)");
    // Still serving.
    assert_eq!(grpc(port, "").await, Ok(()));
    assert!(t.running());
    let pid = t.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (status, out) = t.exited();
    assert_eq!(status.code(), Some(0));
    assert!(!out.contains("shutdown via"), "{out}");
    let err = t.stderr_text();
    assert!(
        err.lines()
            .any(|l| l == "testexe: shutdown via signal SIGTERM"),
        "{err}"
    );
    assert!(!err.contains("shutdown via rpc"), "{err}");
}

#[tokio::test]
async fn a_hung_health_endpoint_accepts_and_never_answers() {
    let mut t = Testexe::start(&["--health-port", "0", "--hang-health"], &[]);
    let port = t.port("health");
    let kind = HealthCheckKind::Http {
        url: format!("http://127.0.0.1:{port}/health"),
        method: "GET".into(),
    };
    let exec = ExecContext {
        working_directory: std::env::temp_dir(),
        environment: Default::default(),
    };
    let out = probe(&kind, &exec, TIMEOUT).await;
    assert_eq!(out.result, Err("timed out after 1s".into()));
    // The connection was accepted: a TCP check passes.
    let tcp = HealthCheckKind::Tcp {
        address: format!("127.0.0.1:{port}"),
    };
    assert_eq!(probe(&tcp, &exec, TIMEOUT).await.result, Ok(()));
}
