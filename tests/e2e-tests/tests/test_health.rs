//! Health checks that act, against real testexe processes and real sockets: HTTP, gRPC,
//! TCP and exec checks, `starting` until the first pass, thresholds, the startup grace
//! period, restarts counted under the health trigger, policy `never` (reported only), and
//! integrated processes stopped through `hsu.core.v1.CoreService/Shutdown`.

use e2e_tests::*;
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// One `standard_managed` testexe entry with `control_extra` lines under `control` and
/// `health` lines under `health_check`.
fn probed(id: &str, args: &[&str], control_extra: &str, health: &str) -> String {
    let indent = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("        {l}\n"))
            .collect()
    };
    format!(
        "{}      health_check:\n{}",
        testexe_process(id, args, control_extra),
        indent(health)
    )
}

fn health(p: &Value) -> &Value {
    &p["health"]
}

fn health_changes(pm: &ProcessManager, id: &str) -> Vec<String> {
    pm.events_for(id)
        .iter()
        .filter(|e| e.is_kind(id, "health_changed"))
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
fn test_health_restart_when_http_turns_503() {
    let port = free_port();
    let config = processes_config(&[probed(
        "web",
        &[
            "--health-port",
            &port.to_string(),
            "--fail-health-after",
            "2",
        ],
        "graceful_timeout: 2s\nrestart_policy: always\n\
         restart: {retry_delay: 100ms, max_retries: 10}",
        &format!(
            "type: http\nhttp: {{url: \"http://127.0.0.1:{port}/health\"}}\n\
             interval: 300ms\ntimeout: 200ms\nfailure_threshold: 2"
        ),
    )]);
    let mut pm = ProcessManager::start("e2e-test-health-http-503", &config);
    let api = pm.api();
    let p = api.wait_process("web", "running and healthy", LONG, |p| {
        p["state"] == "running" && health(p)["status"] == "healthy"
    });
    let first_pid = p["pid"].as_u64().unwrap() as u32;
    assert_eq!(health(&p)["check"], "http", "{p}");
    assert!(health(&p)["last_check_at"].is_string(), "{p}");
    assert!(health(&p)["last_latency_ms"].is_number(), "{p}");

    // 503 after 2 s: two failures in a row make it unhealthy, and it is restarted
    // under the health trigger.
    let unhealthy = pm.wait_for_event("web unhealthy", LONG, |e| {
        e.is_kind("web", "health_changed") && e.str("to") == Some("unhealthy")
    });
    assert!(
        unhealthy.str("reason").unwrap_or("").contains("503"),
        "{unhealthy}"
    );
    assert_eq!(
        unhealthy.u64("consecutive_failures"),
        Some(2),
        "{unhealthy}"
    );
    let scheduled = pm.wait_for_event("restart_scheduled", LONG, |e| {
        e.is_kind("web", "restart_scheduled")
    });
    assert_eq!(
        scheduled.str("trigger"),
        Some("health_failure"),
        "{scheduled}"
    );
    assert_all_gone("the unhealthy run", &[first_pid], LONG);
    let p = api.wait_process("web", "running again with a new PID", LONG, |p| {
        p["state"] == "running" && p["pid"].as_u64().is_some_and(|pid| pid as u32 != first_pid)
    });
    assert!(p["restart_count"].as_u64().unwrap() >= 1, "{p}");
    // The journal is written in the background: wait for the new run's verdict there.
    pm.wait_for_events("the new run healthy", 2, LONG, |e| {
        e.is_kind("web", "health_changed") && e.str("to") == Some("healthy")
    });
    let changes = health_changes(&pm, "web");
    assert_eq!(
        changes[..3],
        ["unknown->healthy", "healthy->unhealthy", "unknown->healthy"],
        "{changes:?}"
    );
    // Metrics carry the verdict and the failures in a row.
    let metrics = api.get("/metrics").text();
    assert!(
        metrics.contains("hsu_process_health_consecutive_failures{id=\"web\"}"),
        "{metrics}"
    );
    pm.shutdown_cleanly(LONG);
}

#[test]
fn test_health_hung_http_endpoint_fails_at_the_timeout() {
    let port = free_port();
    let config = processes_config(&[probed(
        "hung",
        &["--health-port", &port.to_string(), "--hang-health"],
        "graceful_timeout: 2s\nrestart_policy: never",
        &format!(
            "type: http\nhttp: {{url: \"http://127.0.0.1:{port}/\"}}\n\
             interval: 2s\ntimeout: 500ms\nfailure_threshold: 1\ninitial_delay: 1s"
        ),
    )]);
    let mut pm = ProcessManager::start("e2e-test-health-hung", &config);
    let api = pm.api();
    let p = api.wait_process("hung", "unhealthy", LONG, |p| {
        health(p)["status"] == "unhealthy"
    });
    let h = health(&p);
    let error = h["last_error"].as_str().unwrap_or("");
    assert!(error.contains("timed out"), "{p}");
    let latency = h["last_latency_ms"].as_f64().unwrap();
    assert!(
        (450.0..1500.0).contains(&latency),
        "a check against a hung endpoint ends at its 500 ms timeout, not later: {p}"
    );
    // Policy never: reported, not restarted; it never passed, so it is still starting.
    assert_eq!(p["state"], "starting", "{p}");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("restart policy never"),
        "{p}"
    );
    assert!(pm
        .events_for("hung")
        .iter()
        .all(|e| !e.is_kind("hung", "restart_scheduled")));
    pm.shutdown_cleanly(LONG);
}

#[test]
fn test_health_grpc_not_serving_restarts() {
    let port = free_port();
    let config = processes_config(&[probed(
        "rpc",
        &[
            "--grpc-port",
            &port.to_string(),
            "--grpc-not-serving-after",
            "1.5",
        ],
        "graceful_timeout: 2s\nrestart_policy: on_failure\nrestart: {retry_delay: 100ms}",
        &format!(
            "type: grpc\ngrpc: {{address: \"127.0.0.1:{port}\"}}\n\
             interval: 300ms\ntimeout: 250ms\nfailure_threshold: 2"
        ),
    )]);
    let mut pm = ProcessManager::start("e2e-test-health-grpc", &config);
    let api = pm.api();
    api.wait_process("rpc", "running and healthy", LONG, |p| {
        p["state"] == "running" && health(p)["status"] == "healthy"
    });
    let unhealthy = pm.wait_for_event("rpc unhealthy", LONG, |e| {
        e.is_kind("rpc", "health_changed") && e.str("to") == Some("unhealthy")
    });
    let reason = unhealthy.str("reason").unwrap_or("").to_ascii_lowercase();
    assert!(
        reason.contains("not_serving") || reason.contains("not serving"),
        "{unhealthy}"
    );
    let scheduled = pm.wait_for_event("restart_scheduled", LONG, |e| {
        e.is_kind("rpc", "restart_scheduled")
    });
    assert_eq!(
        scheduled.str("trigger"),
        Some("health_failure"),
        "{scheduled}"
    );
    pm.shutdown_cleanly(LONG);
}

#[test]
fn test_health_tcp_to_a_closed_port_is_unhealthy() {
    let closed = free_port();
    let config = processes_config(&[probed(
        "tcp",
        &["--run-duration", "0"],
        "graceful_timeout: 2s\nrestart_policy: never",
        &format!(
            "type: tcp\ntcp: {{address: \"127.0.0.1:{closed}\"}}\n\
             interval: 300ms\ntimeout: 200ms\nfailure_threshold: 2"
        ),
    )]);
    let mut pm = ProcessManager::start("e2e-test-health-tcp", &config);
    let api = pm.api();
    let p = api.wait_process("tcp", "unhealthy", LONG, |p| {
        health(p)["status"] == "unhealthy"
    });
    assert_eq!(health(&p)["consecutive_failures"], 2, "{p}");
    assert!(
        health(&p)["last_error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{p}"
    );
    // Never passed: still starting; before the first check the verdict was unknown.
    assert_eq!(p["state"], "starting", "{p}");
    pm.wait_for_event("tcp unhealthy", LONG, |e| {
        e.is_kind("tcp", "health_changed")
    });
    assert_eq!(health_changes(&pm, "tcp"), ["unknown->unhealthy"]);
    pm.shutdown_cleanly(LONG);
}

#[test]
fn test_health_exec_check_passes_and_fails() {
    let run = TestRun::new("e2e-test-health-exec");
    let flag = run.path("ready");
    std::fs::write(&flag, "").unwrap();
    let config = processes_config(&[probed(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 2s\nrestart_policy: never",
        &format!(
            "type: exec\nexec: {{command: /bin/sh, arguments: [\"-c\", \"test -f {} || {{ echo not ready; exit 3; }}\"]}}\n\
             interval: 300ms\ntimeout: 250ms\nfailure_threshold: 2",
            flag.display()
        ),
    )]);
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    api.wait_process("svc", "running and healthy", LONG, |p| {
        p["state"] == "running" && health(p)["status"] == "healthy"
    });
    std::fs::remove_file(&flag).unwrap();
    let p = api.wait_process("svc", "unhealthy", LONG, |p| {
        health(p)["status"] == "unhealthy"
    });
    let error = health(&p)["last_error"].as_str().unwrap();
    assert!(error.contains('3') && error.contains("not ready"), "{p}");
    // Policy never: still running, same process.
    assert_eq!(p["state"], "running", "{p}");
    std::fs::write(pm.run().path("ready"), "").unwrap();
    api.wait_process("svc", "healthy again", LONG, |p| {
        health(p)["status"] == "healthy"
    });
    pm.shutdown_cleanly(LONG);
}

/// PIDs of live (or zombie) processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) || stat.contains(marker) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn test_health_exec_check_that_overruns_leaves_nothing_behind() {
    // A distinct sleep length marks this test's check processes in /proc.
    let marker = format!("30.{}", std::process::id());
    let config = processes_config(&[probed(
        "slow",
        &["--run-duration", "0"],
        "graceful_timeout: 2s\nrestart_policy: never",
        &format!(
            "type: exec\nexec: {{command: /bin/sh, arguments: [\"-c\", \"sleep {marker} & sleep {marker}; true\"]}}\n\
             interval: 1s\ntimeout: 300ms\nfailure_threshold: 2"
        ),
    )]);
    let mut pm = ProcessManager::start("e2e-test-health-exec-overrun", &config);
    let api = pm.api();
    let p = api.wait_process("slow", "unhealthy", LONG, |p| {
        health(p)["status"] == "unhealthy"
    });
    assert!(
        health(&p)["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{p}"
    );
    // Every check's shell and both sleeps are killed and reaped (no zombies either):
    // between checks nothing of them is left.
    let left = poll_until(LONG, || {
        let found = processes_with(&marker);
        found.is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "check processes left behind: {}",
        e2e_tests::assertions::describe_processes(&processes_with(&marker))
    );
    pm.shutdown_cleanly(LONG);
    assert!(processes_with(&marker).is_empty());
}

#[test]
fn test_health_starting_until_the_first_passing_check() {
    let port = free_port();
    let config = processes_config(&[probed(
        "slowboot",
        &["--startup-delay", "2", "--health-port", &port.to_string()],
        "graceful_timeout: 2s\nrestart_policy: always",
        &format!(
            "type: http\nhttp: {{url: \"http://127.0.0.1:{port}/\"}}\n\
             interval: 300ms\ntimeout: 200ms\nfailure_threshold: 100"
        ),
    )]);
    let mut pm = ProcessManager::start("e2e-test-health-starting", &config);
    let api = pm.api();
    let p = api.wait_process("slowboot", "starting with a PID", LONG, |p| {
        p["pid"].is_u64()
    });
    assert_eq!(p["state"], "starting", "{p}");
    assert_eq!(health(&p)["status"], "unknown", "{p}");
    api.wait_process("slowboot", "running", LONG, |p| p["state"] == "running");
    pm.wait_for_event("running", LONG, |e| {
        e.is_transition("slowboot", "starting", "running")
    });
    let events = pm.events_for("slowboot");
    let spawned = events
        .iter()
        .find(|e| e.is_transition("slowboot", "stopped", "starting"))
        .unwrap();
    let running = events
        .iter()
        .find(|e| e.is_transition("slowboot", "starting", "running"))
        .unwrap();
    assert!(
        running.ts_ms - spawned.ts_ms >= 1900,
        "running only once the endpoint answers (after its 2 s startup delay)\n{}",
        e2e_tests::log_parser::format_events(&events)
    );
    assert!(
        running.str("reason").unwrap().contains("http check passed"),
        "{running}"
    );
    pm.assert_state_chain("slowboot");
    pm.shutdown_cleanly(LONG);
}

#[test]
fn test_health_failures_inside_the_grace_period_are_ignored() {
    let port = free_port();
    let config = processes_config(&[probed(
        "graceful",
        &["--startup-delay", "1.5", "--health-port", &port.to_string()],
        "graceful_timeout: 2s\nrestart_policy: always\nrestart: {retry_delay: 100ms}",
        &format!(
            "type: http\nhttp: {{url: \"http://127.0.0.1:{port}/\"}}\n\
             interval: 200ms\ntimeout: 150ms\nfailure_threshold: 1\n\
             startup_grace_period: 10s"
        ),
    )]);
    let mut pm = ProcessManager::start("e2e-test-health-grace", &config);
    let api = pm.api();
    api.wait_process("graceful", "running", LONG, |p| p["state"] == "running");
    pm.wait_for_event("running", LONG, |e| {
        e.is_transition("graceful", "starting", "running")
    });
    let events = pm.events_for("graceful");
    assert!(
        events
            .iter()
            .all(|e| !e.is_kind("graceful", "restart_scheduled")),
        "{}",
        e2e_tests::log_parser::format_events(&events)
    );
    assert_eq!(health_changes(&pm, "graceful"), ["unknown->healthy"]);
    pm.shutdown_cleanly(LONG);
}

/// An `integrated_managed` testexe: it serves gRPC on the port the manager gives it.
fn integrated(id: &str, args: &[&str], control_extra: &str) -> String {
    testexe_process(id, args, &format!("port_argument: --port\n{control_extra}"))
        .replace("type: standard_managed", "type: integrated_managed")
}

#[test]
fn test_health_integrated_stopped_through_the_shutdown_rpc() {
    let config = processes_config(&[integrated(
        "core",
        &["--run-duration", "0"],
        "graceful_timeout: 5s",
    )]);
    let mut pm = ProcessManager::start("e2e-test-health-integrated-rpc", &config);
    let api = pm.api();
    let p = api.wait_process("core", "running and healthy over gRPC", LONG, |p| {
        p["state"] == "running" && health(p)["status"] == "healthy"
    });
    assert_eq!(health(&p)["check"], "grpc", "{p}");
    let port_file = pm.run().base_dir.join("pids/core.port");
    let port: u16 = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(cmdline(p["pid"].as_u64().unwrap() as u32).contains(&format!("--port {port}")));
    let stop = api.post("/api/v1/processes/core/stop");
    assert!(stop.status < 300, "{}", stop.text());
    api.wait_process("core", "stopped", LONG, |p| p["state"] == "stopped");
    let out = std::fs::read_to_string(pm.run().output_log("core", "stdout")).unwrap_or_default();
    let err = std::fs::read_to_string(pm.run().output_log("core", "stderr")).unwrap_or_default();
    assert!(
        out.contains("shutdown via rpc"),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        !err.contains("received SIGTERM"),
        "no signal was needed:\n{err}"
    );
    // The journal is written in the background: wait for the line, not just the state.
    let stopped = pm.wait_for_event("core stopped", LONG, |e| {
        e.is_transition("core", "stopping", "stopped")
    });
    assert!(
        stopped
            .str("reason")
            .unwrap()
            .contains("after the Shutdown call"),
        "{stopped}"
    );
    wait_for("the port file removed", LONG, || !port_file.exists());
    pm.shutdown_cleanly(LONG);
}

#[test]
fn test_health_integrated_ignoring_the_rpc_is_stopped_by_signal() {
    let config = processes_config(&[integrated(
        "stubborn",
        &["--run-duration", "0", "--ignore-shutdown-rpc"],
        "graceful_timeout: 1s",
    )]);
    let mut pm = ProcessManager::start("e2e-test-health-integrated-signal", &config);
    let api = pm.api();
    api.wait_process("stubborn", "running", LONG, |p| p["state"] == "running");
    let began = std::time::Instant::now();
    let stop = api.post("/api/v1/processes/stubborn/stop");
    assert!(stop.status < 300, "{}", stop.text());
    api.wait_process("stubborn", "stopped", LONG, |p| p["state"] == "stopped");
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "the signal waits for the graceful timeout after the ignored call"
    );
    let err =
        std::fs::read_to_string(pm.run().output_log("stubborn", "stderr")).unwrap_or_default();
    assert!(err.contains("received SIGTERM"), "stderr:\n{err}");
    pm.shutdown_cleanly(LONG);
}
