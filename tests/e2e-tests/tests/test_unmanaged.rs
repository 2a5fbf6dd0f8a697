//! Unmanaged processes (SPEC §5): started by the test, outside the manager, and found by
//! the manager by PID file, process name or listening port; `running` with the right
//! PID while found, `stopped` (with a `state_changed` event) once gone, found again
//! under a new PID; health checks and limits reported only; start, stop and restart
//! refused with 409 without a signal reaching the process; and the process still alive
//! after the manager has shut down.

use e2e_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// A testexe started by the test itself, not by the manager: SIGKILLed and reaped when
/// dropped, so a failing test leaves nothing behind.
struct Outside(Child);

impl Outside {
    fn start(program: &Path, args: &[&str]) -> Outside {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Outside(child)
    }

    fn testexe(args: &[&str]) -> Outside {
        Outside::start(&binaries().testexe, args)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, and reaped: gone for good.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `unmanaged` entry: `discovery` (a flow map's inside, e.g. `method: port, port:
/// 80`) looked for every 200 ms, and `extra` lines under `management` (indented by 6).
fn unmanaged(id: &str, discovery: &str, extra: &str) -> String {
    let extra: String = extra
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("      {l}\n"))
        .collect();
    format!(
        "  - id: {id}\n    type: unmanaged\n    management:\n      \
         discovery: {{{discovery}, check_interval: 200ms}}\n{extra}"
    )
}

/// Waits for `id` to be `running` as process `pid`; returns its status.
fn wait_found(api: &Api, id: &str, pid: u32) -> Value {
    api.wait_process(id, &format!("running as pid {pid}"), LONG, |p| {
        p["state"] == "running" && p["pid"].as_u64() == Some(pid as u64)
    })
}

/// Waits for `id` to be `stopped` with no PID; returns its status.
fn wait_lost(api: &Api, id: &str) -> Value {
    api.wait_process(id, "stopped with no pid", LONG, |p| {
        p["state"] == "stopped" && p["pid"].is_null()
    })
}

/// The `from->to` of every `state_changed` of `id`, in order.
fn transitions(pm: &ProcessManager, id: &str) -> Vec<String> {
    state_changes(&pm.events(), id)
        .iter()
        .map(|e| {
            format!(
                "{}->{}",
                e.str("from").unwrap_or("?"),
                e.str("to").unwrap_or("?")
            )
        })
        .collect()
}

#[test]
fn test_unmanaged_pid_file_found_lost_found_again_and_never_touched() {
    let run = TestRun::new("e2e-test-unmanaged-pid-file");
    let pid_file = run.path("outside.pid");
    let file = pid_file.display().to_string();
    let mut first = Outside::testexe(&["--run-duration", "0", "--pid-file", &file]);
    assert_eq!(wait_for_pid_file(&pid_file, SHORT), first.pid());
    let config = processes_config(&[unmanaged(
        "outside",
        &format!("method: pid_file, pid_file: {}", yaml_str(&file)),
        "",
    )]);
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let p = wait_found(&api, "outside", first.pid());
    assert_eq!(p["type"], "unmanaged", "{p}");
    assert!(p["started_at"].is_string(), "{p}");
    assert_eq!(
        p["reason"],
        format!("found by pid_file {file} (pid {})", first.pid()),
        "{p}"
    );
    // Liveness: healthy while found.
    assert_eq!(p["health"]["status"], "healthy", "{p}");

    // Never started, stopped or restarted by the manager: 409, and no signal reaches it.
    for action in [
        "start",
        "stop",
        "stop?force=true",
        "restart",
        "restart?force=true",
    ] {
        let path = format!("/api/v1/processes/outside/{action}");
        let body = expect_error(&format!("POST {path}"), &api.post(&path), 409, "conflict");
        assert!(
            body["error"].as_str().unwrap_or("").contains("unmanaged"),
            "{body}"
        );
    }
    assert!(pid_alive(first.pid()), "a refused stop must not signal it");
    assert!(first.0.try_wait().unwrap().is_none(), "it is still running");
    wait_found(&api, "outside", first.pid());

    // Gone: seen at once from the kernel, `stopped` with a state_changed event.
    first.kill();
    let p = wait_lost(&api, "outside");
    assert!(
        p["reason"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("pid {} ended", first.pid())),
        "{p}"
    );
    pm.wait_for_event("running -> stopped", LONG, |e| {
        e.is_transition("outside", "running", "stopped")
    });

    // Back under a new PID: running again, as that PID.
    std::fs::remove_file(&pid_file).unwrap();
    let second = Outside::testexe(&["--run-duration", "0", "--pid-file", &file]);
    assert_eq!(wait_for_pid_file(&pid_file, SHORT), second.pid());
    assert_ne!(second.pid(), first.pid());
    wait_found(&api, "outside", second.pid());
    pm.wait_for_events("found twice", 2, LONG, |e| {
        e.is_transition("outside", "starting", "running")
    });

    // The manager shuts down and leaves it running.
    pm.shutdown_cleanly(LONG);
    assert!(pid_alive(second.pid()), "the shutdown must not touch it");
    assert_eq!(
        transitions(&pm, "outside"),
        [
            "stopped->starting",
            "starting->running",
            "running->stopped",
            "stopped->starting",
            "starting->running",
            "running->stopped",
        ]
    );
    let events = pm.events();
    let last = state_changes(&events, "outside").pop().unwrap().clone();
    assert!(
        last.str("reason").unwrap_or("").contains("left running"),
        "{last}"
    );
    drop(second);
}

#[test]
fn test_unmanaged_process_name_found_and_followed_to_a_new_pid() {
    let run = TestRun::new("e2e-test-unmanaged-process-name");
    // testexe under a name no other process has (a `comm` keeps 15 bytes).
    let name = format!("unm{}", std::process::id() % 1_000_000);
    let program = run.path(&name);
    if std::fs::hard_link(&binaries().testexe, &program).is_err() {
        std::fs::copy(&binaries().testexe, &program).unwrap();
    }
    let config = processes_config(&[unmanaged(
        "named",
        &format!("method: process_name, process_name: {name}"),
        "",
    )]);
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let p = wait_lost(&api, "named");
    let reason = p["reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("looking for it")
            || reason == format!("not found: no process named {name}"),
        "{p}"
    );
    let mut first = Outside::start(&program, &["--run-duration", "0"]);
    let p = wait_found(&api, "named", first.pid());
    assert_eq!(
        p["reason"],
        format!("found by process_name {name} (pid {})", first.pid()),
        "{p}"
    );
    first.kill();
    wait_lost(&api, "named");
    let second = Outside::start(&program, &["--run-duration", "0"]);
    wait_found(&api, "named", second.pid());
    pm.shutdown_cleanly(LONG);
    assert!(pid_alive(second.pid()), "the shutdown must not touch it");
    drop(second);
}

#[test]
fn test_unmanaged_port_with_health_and_limits_reported_only() {
    let port = free_port();
    let port_arg = port.to_string();
    let mut outside = Outside::testexe(&[
        "--run-duration",
        "0",
        "--health-port",
        &port_arg,
        "--memory-mb",
        "40",
    ]);
    let config = processes_config(&[unmanaged(
        "web",
        &format!("method: port, port: {port}"),
        &format!(
            "health_check:\n  type: http\n  http: {{url: \"http://127.0.0.1:{port}/health\"}}\n  \
             interval: 300ms\n  timeout: 250ms\n\
             control:\n  limits: {{memory: {{max_rss: 20MiB, policy: alert}}}}"
        ),
    )]);
    let mut pm = ProcessManager::start("e2e-test-unmanaged-port", &config);
    let api = pm.api();
    let p = wait_found(&api, "web", outside.pid());
    assert_eq!(
        p["reason"],
        format!("found by port {port} (pid {})", outside.pid()),
        "{p}"
    );
    // Its HTTP check runs while it is found.
    api.wait_process("web", "healthy", LONG, |p| {
        p["health"]["status"] == "healthy" && p["health"]["check"] == "http"
    });
    // Its tree is sampled, and its limit with policy alert is reported.
    let p = api.wait_process("web", "sampled", LONG, |p| {
        p["resources"]["rss_bytes"]
            .as_f64()
            .is_some_and(|r| r > 30.0 * 1024.0 * 1024.0)
    });
    assert_eq!(p["state"], "running", "{p}");
    let v = pm.wait_for_event("a memory resource_violation", LONG, |e| {
        e.is_kind("web", "resource_violation") && e.str("resource") == Some("memory")
    });
    assert_eq!(v.str("action"), Some("alert"), "{v}");
    pm.wait_for_event("an alert", LONG, |e| e.is_kind("web", "alert"));
    let p = api.wait_process("web", "showing the alert", LONG, |p| {
        p["limit_status"]["alerts_total"].as_u64() >= Some(1)
    });
    assert_eq!(p["state"], "running", "reported only: {p}");
    assert!(
        pid_alive(outside.pid()),
        "a limit never ends an unmanaged process"
    );

    // Gone: stopped; health no longer measured.
    outside.kill();
    let p = wait_lost(&api, "web");
    assert_eq!(p["health"]["status"], "unknown", "{p}");
    pm.wait_for_event("running -> stopped", LONG, |e| {
        e.is_transition("web", "running", "stopped")
    });
    pm.shutdown_cleanly(LONG);
}
