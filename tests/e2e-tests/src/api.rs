//! Talking to a running manager the way users do: its control API (SPEC §7) over TCP,
//! over `<base>/api.sock` and over gRPC, and the CLI client commands (SPEC §3).
//!
//! The typed [`hsu_api::ApiClient`] does the HTTP; the suite drives it from plain
//! synchronous tests through one shared Tokio runtime ([`block_on`]), so API calls mix
//! freely with the harness's polling helpers. Bodies are checked as `serde_json::Value`
//! (and journal lines as [`Event`]), so the suite checks the documented format rather
//! than whatever the client library happens to accept.
//!
//! The manager writes `<base>/api.addr` once both listeners are bound; every helper here
//! waits for that file (with a deadline, failing at once if the manager exits), so a test
//! never races the manager's start.

use crate::assertions::{pid_alive, poll_until};
use crate::log_parser::Event;
use crate::process_manager::{describe_exit, ProcessManager, SHORT};
use crate::test_executor::{binaries, TestRun};
use hsu_api::client::{ClientError, RawResponse};
use hsu_api::{ApiAddress, ApiClient};
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bound on one API request (a stop may take a process's graceful timeout).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one CLI command.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// The runtime every API call of the suite runs on: multi-threaded, so a follower task
/// keeps reading while a test thread blocks on another call or polls `/proc`.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-api")
            .enable_all()
            .build()
            .expect("build the test runtime")
    })
}

/// Runs `future` to completion on [`runtime`] (callable from many test threads at once).
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// A control API client bound to one address (and token), with blocking helpers that
/// fail the test with the request and the answer when something is off.
#[derive(Debug, Clone)]
pub struct Api {
    client: ApiClient,
    address: ApiAddress,
    token: Option<String>,
}

impl Api {
    pub fn new(address: ApiAddress, token: Option<&str>) -> Api {
        Api {
            client: ApiClient::new(address.clone(), token.map(str::to_owned))
                .with_timeout(REQUEST_TIMEOUT),
            address,
            token: token.map(str::to_owned),
        }
    }

    /// The same address with another token (`None`: no `Authorization` header).
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api::new(self.address.clone(), token)
    }

    pub fn address(&self) -> &ApiAddress {
        &self.address
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The typed client, for the calls this wrapper does not cover (e.g. following).
    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    /// One request; the transport error when nothing sensible came back.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let method = http::Method::from_bytes(method.as_bytes()).expect("a valid HTTP method");
        block_on(self.client.raw(method, path, headers, body))
    }

    /// One request; panics on a transport error (the API must always answer).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> RawResponse {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} at {}: no answer: {e}", self.address))
    }

    pub fn get(&self, path: &str) -> RawResponse {
        self.request("GET", path, &[], None)
    }

    pub fn post(&self, path: &str) -> RawResponse {
        self.request("POST", path, &[], None)
    }

    /// `GET path`, which must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path);
        expect_json(&format!("GET {path}"), &resp, 200)
    }

    /// `GET /api/v1/processes/{id}` (200).
    pub fn process(&self, id: &str) -> Value {
        self.get_json(&format!("/api/v1/processes/{id}"))
    }

    /// `GET /api/v1/processes` (200, an array).
    pub fn processes(&self) -> Vec<Value> {
        match self.get_json("/api/v1/processes") {
            Value::Array(a) => a,
            other => panic!("GET /api/v1/processes is not an array: {other}"),
        }
    }

    /// The ids of `GET /api/v1/processes`, in the order listed.
    pub fn ids(&self) -> Vec<String> {
        self.processes()
            .iter()
            .filter_map(|p| p["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// `POST /api/v1/processes/{id}/{action}` (`start`, `stop`, `restart`,
    /// `restart?force=true`), which must answer 202; returns the body.
    pub fn act(&self, id: &str, action: &str) -> Value {
        let path = format!("/api/v1/processes/{id}/{action}");
        let resp = self.post(&path);
        expect_json(&format!("POST {path}"), &resp, 202)
    }

    /// Polls `GET /api/v1/processes/{id}` until `pred` holds; returns that answer.
    pub fn wait_process(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let found = poll_until(timeout, || {
            let resp = self.get(&format!("/api/v1/processes/{id}"));
            last = resp.json().unwrap_or(Value::Null);
            (resp.status == 200 && pred(&last)).then(|| last.clone())
        });
        found.unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for `{id}` to be {what}; last answer: {last}"
            )
        })
    }

    /// Waits until `id` is `running` with a live PID; returns the PID.
    pub fn wait_running(&self, id: &str, timeout: Duration) -> u32 {
        let p = self.wait_process(id, "running with a live pid", timeout, |p| {
            p["state"] == "running" && p["pid"].as_u64().is_some_and(|pid| pid_alive(pid as u32))
        });
        p["pid"].as_u64().expect("a pid") as u32
    }

    /// `GET /api/v1/events`: the journal as JSON lines, each parsed as an [`Event`].
    pub fn events(&self) -> Vec<Event> {
        let resp = self.get("/api/v1/events");
        assert_eq!(
            resp.status,
            200,
            "GET /api/v1/events: {} {}",
            resp.status,
            resp.text()
        );
        resp.text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Event::parse(l).unwrap_or_else(|e| panic!("GET /api/v1/events: {e}: {l}")))
            .collect()
    }
}

/// Asserts `resp` has `status` and a JSON body; returns the body.
pub fn expect_json(what: &str, resp: &RawResponse, status: u16) -> Value {
    let body = resp.json();
    match body {
        Some(v) if resp.status == status => v,
        _ => panic!(
            "{what}: expected {status} with a JSON body, got {} ({:?}): {}",
            resp.status,
            resp.content_type,
            resp.text()
        ),
    }
}

/// Asserts `resp` is an error answer (SPEC §7): `status` and `{"error": "...", "code":
/// code}` with a non-empty message. Returns the body.
pub fn expect_error(what: &str, resp: &RawResponse, status: u16, code: &str) -> Value {
    let body = expect_json(what, resp, status);
    let ok = body["code"] == code && body["error"].as_str().is_some_and(|e| !e.trim().is_empty());
    assert!(
        ok,
        "{what}: expected {{\"error\": \"...\", \"code\": \"{code}\"}}, got {body}"
    );
    body
}

impl ProcessManager {
    /// `<base>/api.addr` ("HOST:PORT"), waiting for the manager to write it.
    pub fn api_addr(&mut self) -> String {
        let path = self.run().base_dir.join("api.addr");
        let found = poll_until(SHORT, || {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Some(line) = text.strip_suffix('\n').map(str::trim) {
                    if !line.is_empty() {
                        return Some(Some(line.to_owned()));
                    }
                }
            }
            // A manager that exited will never write it: fail now.
            self.poll_exit().map(|_| None)
        });
        match found {
            Some(Some(addr)) => addr,
            _ => panic!(
                "{}",
                self.failure(&format!("waiting {SHORT:?} for {}", path.display()))
            ),
        }
    }

    /// `http://` + [`ProcessManager::api_addr`].
    pub fn api_url(&mut self) -> String {
        format!("http://{}", self.api_addr())
    }

    /// `<base>/api.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.run().base_dir.join("api.sock")
    }

    /// A client of the API over TCP (from `api.addr`), without a token.
    pub fn api(&mut self) -> Api {
        self.api_with_token(None)
    }

    /// A client of the API over TCP with `token`.
    pub fn api_with_token(&mut self, token: Option<&str>) -> Api {
        let addr = self.api_addr();
        let address = addr
            .parse::<ApiAddress>()
            .unwrap_or_else(|e| panic!("api.addr holds {addr:?}: {e}"));
        Api::new(address, token)
    }

    /// A client of the API over `<base>/api.sock` (bound before `api.addr` is written).
    pub fn api_unix(&mut self, token: Option<&str>) -> Api {
        self.api_addr();
        Api::new(ApiAddress::Unix(self.socket_path()), token)
    }

    /// Runs `hsu-process-manager --api http://<api.addr> <args>`.
    pub fn cli(&mut self, args: &[&str]) -> CliOutput {
        let url = self.api_url();
        let mut all = vec!["--api", url.as_str()];
        all.extend_from_slice(args);
        run_cli(self.run(), &all, &[])
    }
}

/// What a CLI command did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics (with everything) unless the command exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "expected exit code {code}: {self}");
        self
    }

    /// Panics unless the command exited 0.
    pub fn expect_success(&self) -> &Self {
        self.expect_code(0)
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\n(exit: {}, {:?})\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command,
            describe_exit(self.status),
            self.took,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `hsu-process-manager <args>` to completion (killed after [`CLI_TIMEOUT`]) in
/// `run.dir`, with `env` added. The environment is cleaned of `RUST_LOG`, `HSU_API` and
/// `HSU_API_TOKEN`, and `XDG_STATE_HOME` points into the run, so only what a test passes
/// can lead the client to a manager. The transcript is appended to `<run>/cli.log`.
pub fn run_cli(run: &TestRun, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let bins = binaries();
    let mut cmd = Command::new(&bins.manager);
    cmd.args(args)
        .current_dir(&run.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .env_remove("HSU_API")
        .env_remove("HSU_API_TOKEN")
        .env("XDG_STATE_HOME", run.path("xdg-state"))
        .envs(env.iter().copied());
    // A command run by a test that dies with it (e.g. a manager started this way).
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let env_text: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let command = format!("{env_text}hsu-process-manager {}", args.join(" "));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    let pipes = crate::assertions::Pipes::drain(&mut child);
    let status = match poll_until(CLI_TIMEOUT, || child.try_wait().ok().flatten()) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{command}` did not exit within {CLI_TIMEOUT:?}");
        }
    };
    let (stdout, stderr) = pipes.join();
    let output = CliOutput {
        command,
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        took: started.elapsed(),
    };
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.path("cli.log"))
    {
        let _ = writeln!(log, "{output}");
    }
    output
}

/// A follower of `GET /api/v1/events?follow=true` (server-sent events), reading on the
/// shared runtime into a channel.
///
/// [`EventFollower::start`] returns once the answer's head has arrived; the server
/// subscribes before it answers, so every event journalled after `start` returns is
/// delivered. Each message's `id:` must equal its event's `seq`.
pub struct EventFollower {
    rx: mpsc::Receiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
    received: Vec<Event>,
}

impl EventFollower {
    pub fn start(api: &Api) -> EventFollower {
        let client = api.client().clone();
        let mut stream =
            block_on(client.send(http::Method::GET, "/api/v1/events?follow=true", &[], None))
                .unwrap_or_else(|e| panic!("GET /api/v1/events?follow=true: {e}"));
        assert_eq!(stream.status, 200, "GET /api/v1/events?follow=true");
        assert!(
            stream
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("text/event-stream")),
            "GET /api/v1/events?follow=true: content type {:?}",
            stream.content_type
        );
        let (tx, rx) = mpsc::channel();
        let task = runtime().spawn(async move {
            let mut buf = String::new();
            while let Some(chunk) = stream.next_chunk().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(format!("the event stream broke: {e}")));
                        return;
                    }
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let message: String = buf.drain(..end + 2).collect();
                    if let Some(parsed) = parse_sse(&message) {
                        if tx.send(parsed).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Err("the event stream ended".into()));
        });
        EventFollower {
            rx,
            task,
            received: Vec::new(),
        }
    }

    /// Waits for the first received event matching `pred` (earlier ones included).
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Event {
        if let Some(e) = self.received.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Ok(e)) => {
                    self.received.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Ok(Err(problem)) => panic!(
                    "waiting for {what}: {problem}; received so far:\n{}",
                    crate::log_parser::format_events(&self.received)
                ),
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what} on the event stream; \
                     received:\n{}",
                    crate::log_parser::format_events(&self.received)
                ),
            }
        }
    }

    /// Every event received so far (as far as [`EventFollower::wait_for`] has read).
    pub fn received(&self) -> &[Event] {
        &self.received
    }
}

impl Drop for EventFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One server-sent message: `None` for a comment (keep-alive); an error for a malformed
/// one, a named one (`event: lagged`: the follower missed events) or an `id:` that is
/// not the event's `seq`.
fn parse_sse(message: &str) -> Option<Result<Event, String>> {
    let mut id = None;
    let mut data = Vec::new();
    for line in message.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        } else if line.starts_with("event:") {
            return Some(Err(format!("a named message: {message:?}")));
        } else if !line.is_empty() && !line.starts_with(':') {
            return Some(Err(format!("not a server-sent event line: {line:?}")));
        }
    }
    if data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    Some(Event::parse(&data).and_then(|e| {
        if id.as_deref() == Some(e.seq.to_string().as_str()) {
            Ok(e)
        } else {
            Err(format!(
                "message id {id:?} is not the event's seq: {message:?}"
            ))
        }
    }))
}

/// A gRPC channel (h2c, prior knowledge) to `addr` ("HOST:PORT").
pub fn grpc_channel(addr: &str) -> tonic::transport::Channel {
    block_on(async {
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("gRPC connect to {addr}: {e}"))
    })
}

/// The PIDs of the live processes of `id` in this manager's run (by their tag).
pub fn tree_of(pm: &ProcessManager, id: &str) -> Vec<u32> {
    let tag = format!("{}{id}", pm.run().tag_prefix());
    crate::assertions::tagged_processes(&tag)
        .into_iter()
        .filter(|&p| crate::assertions::process_tag(p).as_deref() == Some(tag.as_str()))
        .collect()
}

/// The command line of `pid` (arguments joined by spaces); empty when it is gone.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_sent_events() {
        let ok = "id: 3\ndata: {\"seq\":3,\"ts\":\"2026-01-01T00:00:00.000Z\",\"kind\":\"x\"}\n\n";
        assert_eq!(parse_sse(ok).unwrap().unwrap().seq, 3);
        assert!(parse_sse(": keep-alive\n\n").is_none());
        let wrong_id = ok.replace("id: 3", "id: 4");
        assert!(parse_sse(&wrong_id).unwrap().is_err());
        assert!(parse_sse("event: lagged\ndata: {\"missed\":2}\n\n")
            .unwrap()
            .is_err());
    }
}
