//! Issue 7 against the real binary: a dead stderr does not stop supervision, the API's
//! edges answer JSON, errors say their cause once, reload tells which manager settings
//! need a restart, the client finds the manager through `--base-dir`, and the files the
//! manager creates are not readable by other users.

use e2e_tests::assertions::{kill_tagged, send_signal};
use e2e_tests::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONTROL: &str = "graceful_timeout: 5s\nrestart_policy: on_failure";
const CRASH_LOOP: &str = "graceful_timeout: 2s\nrestart_policy: always\n\
    restart: {retry_delay: 100ms, backoff_rate: 1.0, max_delay: 200ms, max_retries: 10000, window: 60s}";

/// A manager spawned by hand (the wrapper sends its output to a file); killed on drop
/// together with its processes.
struct HandSpawned {
    child: Child,
    run: TestRun,
}

impl Drop for HandSpawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_tagged(&self.run.tag_prefix());
    }
}

fn api_of(run: &TestRun) -> Api {
    let path = run.base_dir.join("api.addr");
    let addr = wait_until("api.addr", SHORT, || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.strip_suffix('\n').map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
    });
    Api::new(addr.parse().expect("api.addr holds HOST:PORT"), None)
}

fn restart_count(api: &Api, id: &str) -> u64 {
    api.process(id)["restart_count"].as_u64().unwrap_or(0)
}

#[test]
fn a_dead_stderr_pipe_does_not_stop_supervision() {
    let run = TestRun::new("e2e-test-hardening-dead-stderr");
    run.write_config(&processes_config(&[
        testexe_process("crasher", &["--crash-after", "0.1"], CRASH_LOOP),
        testexe_process("steady", &["--run-duration", "0"], CONTROL),
    ]));
    // stdout and stderr share one pipe, as with `2>&1 | head -1`.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let writer2 = writer.try_clone().expect("a second write end");
    let child = Command::new(&binaries().manager)
        .arg("--config")
        .arg(&run.config_path)
        .arg("--base-dir")
        .arg(&run.base_dir)
        .current_dir(&run.dir)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .env_remove("RUST_LOG")
        .env_remove("HSU_API_TOKEN")
        .spawn()
        .expect("start the manager");
    let mut manager = HandSpawned { child, run };
    // Read the first line, then close the read end: every later write is EPIPE.
    let mut first = String::new();
    BufReader::new(reader)
        .read_line(&mut first)
        .expect("the first log line");
    assert!(!first.is_empty());

    let api = api_of(&manager.run);
    let steady = api.wait_running("steady", SHORT);
    let before = restart_count(&api, "crasher");
    // Restarts go on (each writes log lines into the dead pipe).
    wait_for("the crasher to be restarted 5 more times", SHORT, || {
        restart_count(&api, "crasher") >= before + 5
    });
    assert!(
        manager.child.try_wait().unwrap().is_none(),
        "the manager exited"
    );
    // Control still works: a restart of steady gives it a new PID.
    let answer = api.post("/api/v1/processes/steady/restart");
    expect_json("restart steady", &answer, 202);
    let new_pid = api.wait_running("steady", SHORT);
    assert_ne!(new_pid, steady);
    // The lost lines are counted.
    let metrics = String::from_utf8_lossy(&api.get("/metrics").body).into_owned();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hsu_manager_log_write_failures_total "))
        .unwrap_or_else(|| panic!("no log failure counter in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(failures > 0.0, "{metrics}");
    // SIGTERM: a clean shutdown, exit 0.
    send_signal(manager.child.id(), libc::SIGTERM);
    let status = poll_until(Duration::from_secs(30), || {
        manager.child.try_wait().ok().flatten()
    })
    .expect("the manager exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Sends `request` as raw bytes and reads the whole answer (the server closes).
fn raw_http(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may answer and close before reading everything.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn assert_json_error(what: &str, status: u16, body: &str, expected: u16) {
    assert_eq!(status, expected, "{what}: {body}");
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {body:?}"));
    assert_eq!(v["code"], "invalid", "{what}: {v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
}

#[test]
fn api_edges_answer_json() {
    let mut pm = ProcessManager::start(
        "e2e-test-hardening-api-edges",
        &single_process_config("svc", &["--run-duration", "0"], CONTROL),
    );
    let addr = pm.api_addr();
    let api = pm.api();
    api.wait_running("svc", SHORT);

    // A URI longer than hyper takes: 414, with the JSON error shape.
    let long = format!(
        "GET /api/v1/processes/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let (status, body) = raw_http(&addr, long.as_bytes());
    assert_json_error("a 70 kB URI", status, &body, 414);
    // A head larger than hyper's buffer: 431, JSON too.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(600_000)
    );
    let (status, body) = raw_http(&addr, big.as_bytes());
    assert_json_error("a 600 kB header", status, &body, 431);

    // `force` in a body must be a boolean.
    let pid = api.wait_running("svc", SHORT);
    for body in [r#"{"force": "yes"}"#, r#"{"force": 1}"#, r#"[true]"#] {
        let resp = api.request(
            "POST",
            "/api/v1/processes/svc/restart",
            &[("content-type", "application/json")],
            Some(body.as_bytes().to_vec()),
        );
        expect_error(&format!("restart with {body}"), &resp, 400, "invalid");
    }
    assert_eq!(api.wait_running("svc", SHORT), pid, "a refused restart ran");
    let resp = api.request(
        "POST",
        "/api/v1/processes/svc/restart",
        &[("content-type", "application/json")],
        Some(br#"{"force": true}"#.to_vec()),
    );
    expect_json("restart with force true", &resp, 202);
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn a_connection_that_sends_nothing_is_closed() {
    let mut pm = ProcessManager::start(
        "e2e-test-hardening-idle",
        &single_process_config("svc", &["--run-duration", "0"], CONTROL),
    );
    let addr = pm.api_addr();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the idle connection");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(50), "closed only after {took:?}");
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn start_errors_name_their_cause_once() {
    // A port in use.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let run = TestRun::new("e2e-test-hardening-port-in-use");
    run.write_config(&format!(
        "process_manager:\n  port: {port}\nmanaged_processes: []\n"
    ));
    let out = run_manager_command(
        &run,
        &[
            "--config",
            run.config_path.to_str().unwrap(),
            "--base-dir",
            run.base_dir.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr
            .to_lowercase()
            .matches("address already in use")
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");

    // A base directory whose api.sock path is too long for the kernel.
    let run = TestRun::new("e2e-test-hardening-long-socket");
    run.write_config("process_manager:\n  port: 0\nmanaged_processes: []\n");
    let long_base = run.dir.join("d".repeat(120));
    let out = run_manager_command(
        &run,
        &[
            "--config",
            run.config_path.to_str().unwrap(),
            "--base-dir",
            long_base.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("api.sock"), "{stderr}");
    assert!(stderr.contains("at most 107"), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");

    // A directory where the event journal should be.
    let run = TestRun::new("e2e-test-hardening-journal-dir");
    run.write_config("process_manager:\n  port: 0\nmanaged_processes: []\n");
    std::fs::create_dir(run.base_dir.join("events.jsonl")).unwrap();
    let out = run_manager_command(
        &run,
        &[
            "--config",
            run.config_path.to_str().unwrap(),
            "--base-dir",
            run.base_dir.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.matches("Is a directory").count(), 1, "{stderr}");
    assert!(stderr.contains("events.jsonl"), "{stderr}");
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    let run = TestRun::new("e2e-test-hardening-token-mode");
    let token = run.write_file("token", "s3cret-token\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    run.write_config(&format!(
        "process_manager:\n  port: 0\n  api_token_file: {}\nmanaged_processes: []\n",
        yaml_str(token.display().to_string())
    ));
    let args = [
        "--config",
        run.config_path.to_str().unwrap(),
        "--base-dir",
        run.base_dir.to_str().unwrap(),
        "--run-duration",
        "0",
    ];
    let out = run_manager_command(&run, &args, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(stderr.contains(&token.display().to_string()), "{stderr}");
    // Owner-only is fine.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_manager_command(&run, &args, Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn files_and_directories_are_not_world_readable() {
    let mut pm = ProcessManager::start(
        "e2e-test-hardening-modes",
        &single_process_config(
            "svc",
            &["--run-duration", "0", "--print-every", "50"],
            CONTROL,
        ),
    );
    let api = pm.api();
    api.wait_running("svc", SHORT);
    let base = pm.run().base_dir.clone();
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    for file in [
        base.join("events.jsonl"),
        base.join("manager.lock"),
        base.join("logs/svc.stdout.log"),
        base.join("logs/svc.stderr.log"),
    ] {
        let m = mode(&file);
        assert_eq!(m & 0o027, 0, "{} is {m:o}", file.display());
    }
    for dir in [base.join("logs"), base.join("pids")] {
        let m = mode(&dir);
        assert_eq!(m & 0o027, 0, "{} is {m:o}", dir.display());
    }
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn client_commands_find_the_manager_through_base_dir() {
    let mut pm = ProcessManager::start(
        "e2e-test-hardening-base-dir",
        &single_process_config("svc", &["--run-duration", "0"], CONTROL),
    );
    pm.api().wait_running("svc", SHORT);
    let base = pm.run().base_dir.display().to_string();
    let out = run_cli(pm.run(), &["--base-dir", &base, "status", "--json"], &[]);
    out.expect_success();
    assert!(out.stdout.contains("\"svc\""), "{out}");
    let out = run_cli(pm.run(), &["status", "svc", "--base-dir", &base], &[]);
    out.expect_success();
    // A directory without a manager: a clear failure naming its api.addr.
    let empty = pm.run().dir.join("nothing-here");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run_cli(
        pm.run(),
        &["--base-dir", empty.to_str().unwrap(), "status"],
        &[],
    );
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("api.addr"), "{out}");
    pm.shutdown_cleanly(Duration::from_secs(20));
}

fn reload(api: &Api) -> (u16, Value) {
    let resp = api.post("/api/v1/reload");
    let v = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp.status, v)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn reload_reports_manager_settings_that_need_a_restart() {
    let process = testexe_process("svc", &["--run-duration", "0"], CONTROL);
    let mut pm = ProcessManager::start(
        "e2e-test-hardening-reload-settings",
        &processes_config(std::slice::from_ref(&process)),
    );
    let api = pm.api();
    let pid = api.wait_running("svc", SHORT);

    // bind and the shutdown timeout cannot change live; log_level can.
    pm.run().write_config(&format!(
        "process_manager:\n  port: 0\n  bind: 127.0.0.2\n  force_shutdown_timeout: 25s\n  log_level: debug\nmanaged_processes:\n{process}"
    ));
    let (status, v) = reload(&api);
    assert_eq!(status, 200, "{v}");
    let needs = strings(&v["needs_restart"]);
    assert!(
        needs.iter().any(|s| s.starts_with("process_manager.bind")),
        "{v}"
    );
    assert!(
        needs
            .iter()
            .any(|s| s.starts_with("process_manager.force_shutdown_timeout")),
        "{v}"
    );
    let applied = strings(&v["applied_settings"]);
    assert!(applied.iter().any(|s| s.contains("log_level")), "{v}");
    assert_eq!(api.wait_running("svc", SHORT), pid, "svc was restarted");
    // debug is in effect: a debug line shows up in the manager's log.
    api.post("/api/v1/processes/svc/restart");
    wait_for("a DEBUG line in the manager's log", SHORT, || {
        std::fs::read_to_string(&pm.run().log_path).is_ok_and(|t| t.contains(" DEBUG "))
    });
    // The CLI says it too.
    let out = pm.cli(&["reload"]);
    out.expect_success();
    assert!(
        out.stdout
            .contains("needs a manager restart: process_manager.bind"),
        "{out}"
    );

    // A non-loopback bind without a token is refused, as at start.
    pm.run().write_config(&format!(
        "process_manager:\n  port: 0\n  bind: 0.0.0.0\nmanaged_processes:\n{process}"
    ));
    let (status, v) = reload(&api);
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["code"], "invalid", "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("0.0.0.0") && error.contains("token"), "{v}");

    // An invalid config: the CLI exits 2 (a config error).
    pm.run()
        .write_config("process_manager:\n  port: 0\nmanaged_processes:\n  - id: [\n");
    let out = pm.cli(&["reload"]);
    out.expect_code(2);
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn reload_during_shutdown_is_unavailable() {
    let mut pm = ProcessManager::start(
        "e2e-test-hardening-reload-shutdown",
        &single_process_config(
            "slow",
            &["--run-duration", "0", "--ignore-sigterm"],
            "graceful_timeout: 10s\nrestart_policy: on_failure",
        ),
    );
    let api = pm.api();
    api.wait_running("slow", SHORT);
    expect_json("shutdown", &api.post("/api/v1/shutdown"), 202);
    // While slow takes its graceful timeout, the API still answers.
    let resp = wait_until("a reload answer during the shutdown", SHORT, || {
        api.try_request("POST", "/api/v1/reload", &[], None).ok()
    });
    expect_error("reload during shutdown", &resp, 503, "unavailable");
    pm.wait_exit(Duration::from_secs(40));
}

/// A manager launched with SIGTERM and SIGHUP blocked (a launcher's mask is inherited
/// across exec) still hears them: SIGTERM ends it cleanly, at once.
#[test]
fn a_launcher_blocking_sigterm_does_not_deafen_the_manager() {
    use std::os::unix::process::CommandExt;
    let run = TestRun::new("hardening-blocked-signals");
    run.write_config(&single_process_config("svc", &["--run-duration", "0"], ""));
    let mut cmd = Command::new(&binaries().manager);
    cmd.args(["--config", &run.config_path.display().to_string()])
        .args(["--base-dir", &run.base_dir.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&run.log_path).unwrap());
    // SAFETY: between fork and exec only sigemptyset/sigaddset/sigprocmask run, which are
    // async-signal-safe and allocate nothing.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
            libc::sigaddset(set.as_mut_ptr(), libc::SIGHUP);
            if libc::sigprocmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut manager: Child = cmd.spawn().unwrap();
    let pid_file = run.pid_file("svc");
    let child = wait_for_pid_file(&pid_file, SHORT);
    send_signal(manager.id(), libc::SIGTERM);
    let status = poll_until(Duration::from_secs(20), || {
        manager.try_wait().ok().flatten()
    });
    let Some(status) = status else {
        let _ = manager.kill();
        let _ = manager.wait();
        kill_tagged(&run.tag_prefix());
        panic!(
            "the manager ignored SIGTERM (blocked by its launcher):\n{}",
            run.procman_log()
        );
    };
    assert!(status.success(), "{status}");
    assert!(!pid_alive(child), "svc outlived the manager");
}
