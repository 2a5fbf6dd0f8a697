//! Every route of the control API (SPEC §7) answers on the running manager, with the
//! documented shapes: health, metrics, the OpenAPI document, the Process JSON, the
//! start/stop/restart actions (checked in `/proc`), log tails and the event journal.

use e2e_tests::*;
use serde_json::Value;
use std::time::Duration;

const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// One forever-running testexe `svc` printing a numbered line every 50 ms on each stream.
fn talker_config() -> String {
    single_process_config(
        "svc",
        &["--run-duration", "0", "--print-every", "50"],
        "graceful_timeout: 5s\nrestart_policy: on_failure\n\
         limits: {memory: {max_rss: 512MiB, warning_threshold: 80, policy: log}}",
    )
}

/// The routes of SPEC §7 as `(method, path)` in OpenAPI spelling.
const SPEC_ROUTES: [(&str, &str); 12] = [
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/api/v1/processes"),
    ("get", "/api/v1/processes/{id}"),
    ("post", "/api/v1/processes/{id}/start"),
    ("post", "/api/v1/processes/{id}/stop"),
    ("post", "/api/v1/processes/{id}/restart"),
    ("get", "/api/v1/processes/{id}/logs"),
    ("get", "/api/v1/events"),
    ("post", "/api/v1/reload"),
    ("post", "/api/v1/shutdown"),
];

#[test]
fn health_metrics_and_every_openapi_route_answer() {
    let mut pm = ProcessManager::start("e2e-test-api-routes", &talker_config());
    let api = pm.api();
    api.wait_running("svc", SHORT);

    let health = api.get("/healthz");
    assert_eq!(health.status, 200, "GET /healthz: {}", health.text());

    let metrics = api.get("/metrics");
    assert_eq!(metrics.status, 200, "GET /metrics: {}", metrics.text());
    assert!(
        metrics
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain")),
        "GET /metrics content type {:?}",
        metrics.content_type
    );
    let text = metrics.text();
    for name in [
        "hsu_process_state",
        "hsu_process_restarts_total",
        "hsu_manager_resident_memory_bytes",
        "hsu_api_requests_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "/metrics has no sample of {name}:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("hsu_process_state") && l.contains("\"svc\"")),
        "/metrics has no hsu_process_state sample for svc:\n{text}"
    );

    let doc = api.get_json("/openapi.json");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "not an OpenAPI 3 document: openapi = {}",
        doc["openapi"]
    );
    let paths = doc["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("/openapi.json has no `paths` object"));
    for (method, path) in SPEC_ROUTES {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "/openapi.json does not describe {method} {path} (SPEC §7); paths: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    // Every documented operation answers (shutdown last, below: it ends the manager).
    let mut answered = Vec::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item object");
        for method in ["get", "post", "put", "patch", "delete"] {
            if !item.contains_key(method) || path == "/api/v1/shutdown" {
                continue;
            }
            let concrete = path.replace("{id}", "svc");
            let resp = api.request(&method.to_uppercase(), &concrete, &[], None);
            assert!(
                resp.status != 404 && resp.status != 405 && resp.status < 500,
                "{method} {concrete} (documented in /openapi.json) answered {}: {}",
                resp.status,
                resp.text()
            );
            answered.push(format!("{method} {concrete} -> {}", resp.status));
        }
    }
    assert!(answered.len() >= 11, "answered: {answered:#?}");
    // Whatever order the document listed them in, svc can be brought back.
    let started = api.post("/api/v1/processes/svc/start");
    assert!(
        matches!(started.status, 202 | 409),
        "start: {}",
        started.status
    );
    api.wait_running("svc", SHORT);

    let shutdown = api.post("/api/v1/shutdown");
    let body = expect_json("POST /api/v1/shutdown", &shutdown, 202);
    assert_eq!(body["action"], "shutdown", "{body}");
    let status = pm.wait_exit(STOP_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "the manager after POST /api/v1/shutdown: {}",
        describe_exit(status)
    );
    pm.shutdown_cleanly(STOP_TIMEOUT);
    assert!(
        !pm.run().base_dir.join("api.sock").exists()
            && !pm.run().base_dir.join("api.addr").exists(),
        "api.sock / api.addr are left behind after a clean exit"
    );
    assert_eq!(
        pm.events().last().map(|e| e.kind.clone()).as_deref(),
        Some("manager_stopped")
    );
}

/// Asserts `v` is null or an RFC 3339 string.
fn assert_time_or_null(what: &str, v: &Value) {
    assert!(
        v.is_null()
            || v.as_str()
                .is_some_and(|t| log_parser::parse_rfc3339_ms(t).is_some()),
        "{what} is neither null nor RFC 3339: {v}"
    );
}

/// Checks the shape of a Process (SPEC §7): every field present with its type.
fn assert_process_shape(p: &Value) {
    let obj = p
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {p}"));
    for key in [
        "id",
        "type",
        "state",
        "pid",
        "started_at",
        "uptime_secs",
        "restart_count",
        "last_exit",
        "reason",
        "health",
        "circuit",
        "next_restart_at",
        "resources",
        "limits",
    ] {
        assert!(obj.contains_key(key), "Process JSON lacks `{key}`: {p}");
    }
    assert!(p["id"].is_string() && p["reason"].is_string(), "{p}");
    assert!(
        ["standard_managed", "integrated_managed", "unmanaged"]
            .contains(&p["type"].as_str().unwrap_or("")),
        "type: {p}"
    );
    assert!(
        ["stopped", "starting", "running", "stopping", "failed"]
            .contains(&p["state"].as_str().unwrap_or("")),
        "state: {p}"
    );
    assert!(p["pid"].is_null() || p["pid"].is_u64(), "pid: {p}");
    assert_time_or_null("started_at", &p["started_at"]);
    assert!(
        p["uptime_secs"].is_null() || p["uptime_secs"].is_u64(),
        "uptime_secs: {p}"
    );
    assert!(p["restart_count"].is_u64(), "restart_count: {p}");
    assert_time_or_null("next_restart_at", &p["next_restart_at"]);
    let health = p["health"]
        .as_object()
        .unwrap_or_else(|| panic!("health is not an object: {p}"));
    for key in [
        "status",
        "consecutive_failures",
        "last_check_at",
        "last_error",
    ] {
        assert!(health.contains_key(key), "health lacks `{key}`: {p}");
    }
    assert!(
        ["healthy", "unhealthy", "unknown"].contains(&p["health"]["status"].as_str().unwrap_or("")),
        "health.status: {p}"
    );
    assert!(p["health"]["consecutive_failures"].is_u64(), "{p}");
    assert_time_or_null("health.last_check_at", &p["health"]["last_check_at"]);
    assert!(
        ["closed", "open", "half_open"].contains(&p["circuit"].as_str().unwrap_or("")),
        "circuit: {p}"
    );
    if !p["last_exit"].is_null() {
        let e = &p["last_exit"];
        for key in ["code", "signal", "at"] {
            assert!(
                e.as_object().is_some_and(|o| o.contains_key(key)),
                "last_exit lacks `{key}`: {p}"
            );
        }
        assert_time_or_null("last_exit.at", &e["at"]);
        assert!(!e["at"].is_null(), "last_exit.at is null: {p}");
    }
    if !p["resources"].is_null() {
        for key in ["rss_bytes", "cpu_percent", "fds", "processes"] {
            assert!(
                p["resources"].get(key).is_some_and(Value::is_number),
                "resources.{key}: {p}"
            );
        }
    }
}

#[test]
fn process_json_and_start_stop_restart() {
    let before = unix_ms_now();
    // A tree: svc and two children (in their own session), so a stop has a tree to end.
    let config = talker_config().replace(
        "\"--print-every\", \"50\"",
        "\"--print-every\", \"50\", \"--spawn-children\", \"2\", \"--detach-children\"",
    );
    assert!(config.contains("--spawn-children"), "{config}");
    let mut pm = ProcessManager::start("e2e-test-api-actions", &config);
    let api = pm.api();
    let pid = api.wait_running("svc", SHORT);
    assert_eq!(pm.wait_for_pid("svc", SHORT), pid, "pids/svc.pid");
    let tree = wait_until("svc and its two children", SHORT, || {
        let t = tree_of(&pm, "svc");
        (t.len() == 3).then_some(t)
    });

    // List and get agree, and carry every documented field.
    let list = api.processes();
    assert_eq!(list.len(), 1, "{list:?}");
    let got = api.process("svc");
    assert_process_shape(&got);
    assert_process_shape(&list[0]);
    assert_eq!(list[0]["id"], "svc");
    assert_eq!(got["type"], "standard_managed");
    assert_eq!(got["state"], "running");
    assert_eq!(got["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(got["restart_count"], 0);
    assert_eq!(got["circuit"], "closed");
    assert!(got["last_exit"].is_null(), "{got}");
    assert!(got["next_restart_at"].is_null(), "{got}");
    let started = got["started_at"]
        .as_str()
        .and_then(log_parser::parse_rfc3339_ms)
        .unwrap_or_else(|| panic!("a running process has no started_at: {got}"));
    assert!(
        started >= before - 1000 && started <= unix_ms_now() + 1000,
        "started_at {started} is not within this test ({before}..now): {got}"
    );
    assert!(got["uptime_secs"].as_u64().is_some(), "{got}");
    assert_eq!(
        got["limits"]["memory"]["max_rss"].as_u64(),
        Some(512 * 1024 * 1024),
        "limits as configured: {got}"
    );

    // Stop: 202 once nothing of the tree is left.
    let body = api.act("svc", "stop");
    assert_eq!(body["action"], "stop", "{body}");
    assert_eq!(body["process"]["state"], "stopped", "{body}");
    assert!(
        !pid_alive(pid),
        "svc (pid {pid}) is alive after POST stop answered 202"
    );
    assert_all_gone(
        "svc's tree after POST stop answered 202",
        &tree,
        Duration::ZERO,
    );
    assert_eq!(
        tree_of(&pm, "svc"),
        Vec::<u32>::new(),
        "svc's tree after stop"
    );
    let stopped = api.process("svc");
    assert_process_shape(&stopped);
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert!(stopped["pid"].is_null(), "{stopped}");
    assert!(stopped["uptime_secs"].is_null(), "{stopped}");
    assert_eq!(
        stopped["last_exit"]["code"], 0,
        "testexe exits 0 on SIGTERM: {stopped}"
    );
    assert!(
        !pm.run().pid_file("svc").exists(),
        "pids/svc.pid is left after a stop"
    );

    // Start: a new process.
    let body = api.act("svc", "start");
    assert_eq!(body["action"], "start", "{body}");
    let pid2 = api.wait_running("svc", SHORT);
    assert_ne!(pid2, pid, "start gave the old pid");
    let tree2 = wait_until("the new svc and its two children", SHORT, || {
        let t = tree_of(&pm, "svc");
        (t.len() == 3).then_some(t)
    });

    // Restart: another new process, the old one gone.
    let body = api.act("svc", "restart");
    assert_eq!(body["action"], "restart", "{body}");
    assert_all_gone("the pre-restart tree", &tree2, Duration::ZERO);
    let pid3 = api.wait_running("svc", SHORT);
    assert!(
        pid3 != pid2 && pid3 != pid,
        "restart gave an old pid {pid3}"
    );
    assert!(tree_of(&pm, "svc").contains(&pid3));

    pm.shutdown_cleanly(STOP_TIMEOUT);
}

/// The numbers of `<stream> line N` lines (after an optional timestamp prefix).
fn numbers(text: &str, stream: &str) -> Vec<u64> {
    let marker = format!("{stream} line ");
    text.lines()
        .filter_map(|l| {
            let at = l.find(&marker)?;
            l[at + marker.len()..].trim().parse().ok()
        })
        .collect()
}

#[test]
fn logs_tail_and_events() {
    let mut pm = ProcessManager::start("e2e-test-api-logs", &talker_config());
    let api = pm.api();
    api.wait_running("svc", SHORT);
    wait_for("20 numbered lines on stdout and stderr", SHORT, || {
        let out = api.get("/api/v1/processes/svc/logs?stream=stdout&tail=1000");
        let err = api.get("/api/v1/processes/svc/logs?stream=stderr&tail=1000");
        numbers(&out.text(), "stdout").len() >= 20 && numbers(&err.text(), "stderr").len() >= 20
    });

    // While it runs: the last N lines, in order, consecutive.
    let resp = api.get("/api/v1/processes/svc/logs?stream=stdout&tail=5");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain")),
        "logs content type {:?}",
        resp.content_type
    );
    let text = resp.text();
    let n = numbers(&text, "stdout");
    assert_eq!(text.lines().count(), 5, "tail=5:\n{text}");
    assert_eq!(n.len(), 5, "tail=5:\n{text}");
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "not consecutive: {n:?}"
    );
    assert!(n[0] > 1, "tail=5 returned the first lines: {n:?}");

    // Following: the last 2 lines, then every new line, none lost or repeated.
    let mut followed = String::new();
    let client = api.client().clone();
    let result = block_on(async {
        let follow = client.follow_logs("svc", "stdout", Some(2), |chunk| {
            followed.push_str(chunk);
            numbers(&followed, "stdout").len() < 12
        });
        tokio::time::timeout(SHORT, follow).await
    });
    assert!(
        matches!(result, Ok(Ok(()))),
        "follow_logs: {result:?}\nreceived:\n{followed}"
    );
    let n = numbers(&followed, "stdout");
    assert!(
        n.len() >= 12 && n[0] > 1 && n.windows(2).all(|w| w[1] == w[0] + 1),
        "followed lines are not a gapless run after the tail: {n:?}"
    );

    // Stopped, the file is still: the tail is exactly the file's last lines.
    api.act("svc", "stop");
    for stream in ["stdout", "stderr"] {
        let file = std::fs::read_to_string(pm.run().output_log("svc", stream)).unwrap();
        let lines: Vec<&str> = file.lines().collect();
        for tail in [1, 3, 7] {
            let resp = api.get(&format!(
                "/api/v1/processes/svc/logs?stream={stream}&tail={tail}"
            ));
            assert_eq!(resp.status, 200, "{}", resp.text());
            let got: Vec<String> = resp.text().lines().map(str::to_owned).collect();
            let want: Vec<String> = lines[lines.len() - tail..]
                .iter()
                .map(|l| (*l).to_owned())
                .collect();
            assert_eq!(got, want, "{stream} tail={tail}");
        }
    }
    let err_tail = api
        .get("/api/v1/processes/svc/logs?stream=stderr&tail=1000")
        .text();
    assert!(
        !numbers(&err_tail, "stderr").is_empty() && numbers(&err_tail, "stdout").is_empty(),
        "stream=stderr must be the stderr log:\n{err_tail}"
    );
    let default = api.get("/api/v1/processes/svc/logs?tail=2").text();
    assert_eq!(
        numbers(&default, "stdout").len(),
        2,
        "the default stream is stdout:\n{default}"
    );
    let bad = api.get("/api/v1/processes/svc/logs?stream=both");
    expect_error("logs?stream=both", &bad, 400, "invalid");

    // The journal over the API: JSON lines with seq 1, 2, 3, ... as in events.jsonl.
    let resp = api.get("/api/v1/events");
    assert_eq!(resp.status, 200);
    let events = api.events();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expected, "seq of GET /api/v1/events");
    assert!(
        events
            .iter()
            .any(|e| e.is_transition("svc", "running", "stopping"))
            && events
                .iter()
                .any(|e| e.is_transition("svc", "stopping", "stopped")),
        "the stop is in the journal:\n{}",
        log_parser::format_events(&events)
    );
    let file = pm.events();
    assert_eq!(
        events[..],
        file[..events.len().min(file.len())],
        "GET /api/v1/events differs from events.jsonl"
    );
    pm.shutdown_cleanly(STOP_TIMEOUT);
}
