//! Error answers of the control API (SPEC §7): `{"error": "...", "code": "..."}` with the
//! right 4xx, and a bad request never disturbs a running process.

use e2e_tests::*;
use std::time::Duration;

const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// `svc` runs forever; `outside` is unmanaged, discovered by a PID file that never exists.
fn config() -> String {
    let mut c = single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    c.push_str(
        "  - id: outside\n    type: unmanaged\n    management:\n      \
         discovery: {method: pid_file, pid_file: /nonexistent.pid}\n",
    );
    c
}

#[test]
fn bad_requests_get_json_errors_and_change_nothing() {
    let mut pm = ProcessManager::start("e2e-test-api-errors", &config());
    let api = pm.api();
    let pid = api.wait_running("svc", SHORT);
    let running = pm.wait_for_event("svc running", SHORT, |e| {
        e.is_transition_to("svc", "running")
    });

    // Unknown ids: 404 not_found on every per-process route.
    for (method, path) in [
        ("GET", "/api/v1/processes/nope"),
        ("POST", "/api/v1/processes/nope/start"),
        ("POST", "/api/v1/processes/nope/stop"),
        ("POST", "/api/v1/processes/nope/restart"),
        ("POST", "/api/v1/processes/nope/restart?force=true"),
        ("GET", "/api/v1/processes/nope/logs"),
    ] {
        let resp = api.request(method, path, &[], None);
        expect_error(&format!("{method} {path}"), &resp, 404, "not_found");
    }

    // Unknown routes: 404 JSON.
    for path in [
        "/api/v1/nope",
        "/api/v2/processes",
        "/",
        "/api/v1/processes/svc/bogus",
    ] {
        let resp = api.get(path);
        expect_error(&format!("GET {path}"), &resp, 404, "not_found");
    }

    // Wrong methods: 405 JSON (and a GET of an action must not perform it).
    for (method, path) in [
        ("DELETE", "/api/v1/processes"),
        ("POST", "/api/v1/processes"),
        ("PUT", "/api/v1/processes/svc"),
        ("GET", "/api/v1/processes/svc/stop"),
        ("GET", "/api/v1/processes/svc/restart"),
        ("GET", "/api/v1/shutdown"),
        ("GET", "/api/v1/reload"),
        ("POST", "/healthz"),
    ] {
        let resp = api.request(method, path, &[], None);
        let body = expect_json(&format!("{method} {path}"), &resp, 405);
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()) && body["code"].is_string(),
            "{method} {path}: 405 without {{error, code}}: {body}"
        );
    }

    // A malformed JSON body: 400 invalid, and the action is not performed.
    for path in [
        "/api/v1/processes/svc/stop",
        "/api/v1/processes/svc/restart",
        "/api/v1/reload",
        "/api/v1/shutdown",
    ] {
        let resp = api.request("POST", path, &[], Some(b"{not json".to_vec()));
        expect_error(
            &format!("POST {path} with a malformed body"),
            &resp,
            400,
            "invalid",
        );
    }

    // A body over 1 MiB: 413 (valid JSON, so only its size is wrong).
    let mut big = Vec::with_capacity(1024 * 1024 + 8);
    big.push(b'"');
    big.resize(1024 * 1024 + 1, b'a');
    big.push(b'"');
    let resp = api.request("POST", "/api/v1/processes/svc/stop", &[], Some(big));
    let body = expect_json("POST stop with a 1 MiB body", &resp, 413);
    assert!(
        body["error"].is_string() && body["code"].is_string(),
        "{body}"
    );

    // Bad query values: 400.
    for path in [
        "/api/v1/processes/svc/restart?force=maybe",
        "/api/v1/processes/svc/logs?tail=-1",
        "/api/v1/events?since=yesterday",
    ] {
        let method = if path.contains("restart") {
            "POST"
        } else {
            "GET"
        };
        let resp = api.request(method, path, &[], None);
        expect_error(&format!("{method} {path}"), &resp, 400, "invalid");
    }

    // Unmanaged processes are never started, stopped or restarted: 409 conflict.
    let outside = api.process("outside");
    assert_eq!(outside["type"], "unmanaged", "{outside}");
    for action in ["start", "stop", "restart", "restart?force=true"] {
        let path = format!("/api/v1/processes/outside/{action}");
        let resp = api.post(&path);
        expect_error(&format!("POST {path}"), &resp, 409, "conflict");
    }

    // None of it touched svc, nor the manager.
    assert!(pm.is_running(), "{}", pm.failure("the manager died"));
    let after = api.process("svc");
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["pid"].as_u64(), Some(u64::from(pid)), "{after}");
    assert_eq!(after["restart_count"], 0, "{after}");
    assert!(pid_alive(pid));
    let later: Vec<Event> = pm
        .events_for("svc")
        .into_iter()
        .filter(|e| e.seq > running.seq)
        .collect();
    assert!(
        later.is_empty(),
        "bad requests changed svc:\n{}",
        log_parser::format_events(&later)
    );
    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn restart_needs_force_while_the_breaker_is_open() {
    // Crashes 0.3 s after each start; one restart allowed, then the breaker stays open
    // until a start by hand (cooldown 0).
    let config = single_process_config(
        "crashy",
        &["--crash-after", "0.3"],
        "graceful_timeout: 5s\nrestart_policy: on_failure\n\
         restart: {retry_delay: 100ms, backoff_rate: 1.0, max_retries: 1, window: 60s, cooldown: 0s}",
    );
    let mut pm = ProcessManager::start("e2e-test-api-breaker", &config);
    let api = pm.api();
    let opened = pm.wait_for_event("circuit_opened", Duration::from_secs(30), |e| {
        e.is_kind("crashy", "circuit_opened")
    });
    let p = api.wait_process("crashy", "failed with an open breaker", SHORT, |p| {
        p["state"] == "failed" && p["circuit"] == "open"
    });
    assert!(p["pid"].is_null(), "{p}");

    let resp = api.post("/api/v1/processes/crashy/restart");
    expect_error("restart with an open breaker", &resp, 409, "conflict");
    let resp = api.post("/api/v1/processes/crashy/restart?force=false");
    expect_error(
        "restart?force=false with an open breaker",
        &resp,
        409,
        "conflict",
    );
    let out = pm.cli(&["restart", "crashy"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("force") && out.stdout.is_empty(),
        "the CLI should point at --force: {out}"
    );
    let after = api.process("crashy");
    assert_eq!(
        after["circuit"], "open",
        "a refused restart changed the breaker: {after}"
    );
    assert!(
        !pm.events_for("crashy")
            .iter()
            .any(|e| e.seq > opened.seq && e.is_transition_to("crashy", "starting")),
        "a refused restart started crashy"
    );

    let body = api.act("crashy", "restart?force=true");
    assert_eq!(body["action"], "restart", "{body}");
    pm.wait_for_event("the forced start", SHORT, |e| {
        e.seq > opened.seq && e.is_transition_to("crashy", "starting")
    });
    pm.shutdown_cleanly(STOP_TIMEOUT);
}
