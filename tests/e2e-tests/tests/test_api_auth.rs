//! Who may use the control API (SPEC §7): with a token every request but `GET /healthz`
//! needs `Authorization: Bearer <token>` (TCP, Unix socket, gRPC and the CLI alike);
//! without one the TCP listener must be loopback-only; `api.sock` is private (0600).

use e2e_tests::*;
use hsu_api::grpc::proto::procman::v1 as pb;
use hsu_api::grpc::ProcessManagerClient;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const TOKEN: &str = "e2e-s3cret-token";

fn forever(id: &str) -> String {
    single_process_config(
        id,
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    )
}

/// Every route but `/healthz`, as `(method, path)`.
const GUARDED: [(&str, &str); 13] = [
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/api/v1/processes"),
    ("GET", "/api/v1/processes/svc"),
    ("GET", "/api/v1/processes/nope"),
    ("GET", "/api/v1/processes/svc/logs?tail=5"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/events?follow=true"),
    ("POST", "/api/v1/processes/svc/stop"),
    ("POST", "/api/v1/processes/svc/start"),
    ("POST", "/api/v1/processes/svc/restart?force=true"),
    ("POST", "/api/v1/reload"),
    ("POST", "/api/v1/shutdown"),
];

/// Checks the token rules on one transport: `api` carries no token.
fn check_guarded(api: &Api, transport: &str) {
    let health = api.get("/healthz");
    assert_eq!(
        health.status,
        200,
        "{transport}: GET /healthz needs no token, got {}: {}",
        health.status,
        health.text()
    );
    let wrong_bearer = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    let bad_headers: [Option<&str>; 5] = [
        None,
        Some("Bearer wrong"),
        Some(wrong_bearer.as_str()),
        Some(basic.as_str()),
        Some(TOKEN),
    ];
    for (method, path) in GUARDED {
        for header in bad_headers {
            let headers: Vec<(&str, &str)> =
                header.map(|h| ("authorization", h)).into_iter().collect();
            let resp = api.request(method, path, &headers, None);
            expect_error(
                &format!("{transport}: {method} {path} with authorization {header:?}"),
                &resp,
                401,
                "unauthorized",
            );
        }
    }
    // With the token, the read-only routes answer.
    let authed = api.with_token(Some(TOKEN));
    for (method, path) in GUARDED {
        if method != "GET" || path.contains("follow") {
            continue;
        }
        let resp = authed.request(method, path, &[], None);
        let want = if path.ends_with("/nope") { 404 } else { 200 };
        assert_eq!(
            resp.status,
            want,
            "{transport}: {method} {path} with the token: {}",
            resp.text()
        );
    }
}

#[test]
fn a_token_guards_every_route_but_healthz() {
    let run = TestRun::new("e2e-test-api-token");
    let mut pm =
        ProcessManager::start_with_env(run, &forever("svc"), &[], &[("HSU_API_TOKEN", TOKEN)]);
    let tcp = pm.api();
    let authed = tcp.with_token(Some(TOKEN));
    let pid = authed.wait_running("svc", SHORT);
    let running = pm.wait_for_event("svc running", SHORT, |e| {
        e.is_transition_to("svc", "running")
    });

    check_guarded(&tcp, "TCP");
    let unix = pm.api_unix(None);
    check_guarded(&unix, "unix socket");

    // None of the refused stops, restarts, reloads or shutdowns happened.
    assert!(pm.is_running(), "{}", pm.failure("the manager exited"));
    assert_eq!(authed.process("svc")["pid"].as_u64(), Some(u64::from(pid)));
    let later: Vec<Event> = pm
        .events()
        .into_iter()
        .filter(|e| e.seq > running.seq)
        .collect();
    assert!(
        later.is_empty(),
        "unauthorized requests had effects:\n{}",
        log_parser::format_events(&later)
    );

    // gRPC: the ProcessManager service needs the token, the health service does not.
    let addr = pm.api_addr();
    let channel = grpc_channel(&addr);
    let denied = block_on(ProcessManagerClient::new(channel.clone()).list(pb::ListRequest {}));
    assert_eq!(
        denied.as_ref().err().map(tonic::Status::code),
        Some(tonic::Code::Unauthenticated),
        "gRPC List without a token: {denied:?}"
    );
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    let mut client = ProcessManagerClient::with_interceptor(
        channel.clone(),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        },
    );
    let list = block_on(client.list(pb::ListRequest {}))
        .unwrap_or_else(|e| panic!("gRPC List with the token: {e}"))
        .into_inner();
    assert_eq!(list.processes.len(), 1, "{list:?}");
    let health = block_on(HealthClient::new(channel).check(HealthCheckRequest {
        service: String::new(),
    }))
    .unwrap_or_else(|e| panic!("gRPC health without a token: {e}"))
    .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    // The CLI: --token or HSU_API_TOKEN; without either it fails with exit 1.
    let url = pm.api_url();
    let out = run_cli(pm.run(), &["--api", &url, "status"], &[]);
    out.expect_code(1);
    assert!(
        out.stderr.to_lowercase().contains("token")
            || out.stderr.contains("401")
            || out.stderr.to_lowercase().contains("unauthorized"),
        "the CLI should say why it was refused: {out}"
    );
    let out = run_cli(pm.run(), &["--api", &url, "--token", TOKEN, "status"], &[]);
    out.expect_success();
    assert!(out.stdout.contains("svc"), "{out}");
    let out = run_cli(
        pm.run(),
        &["--api", &url, "status"],
        &[("HSU_API_TOKEN", TOKEN)],
    );
    out.expect_success();
    assert!(out.stdout.contains("svc"), "{out}");
    let out = run_cli(
        pm.run(),
        &["--api", &url, "--token", "wrong", "stop", "svc"],
        &[],
    );
    out.expect_code(1);
    assert_eq!(authed.process("svc")["pid"].as_u64(), Some(u64::from(pid)));

    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn api_token_file_and_env_override() {
    // The token from process_manager.api_token_file.
    let run = TestRun::new("e2e-test-api-token-file");
    let file = run.path("token");
    std::fs::write(&file, "from-the-file\n").unwrap();
    // Owner-only: a token file others can read is refused (test_hardening.rs).
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = forever("svc").replace(
        "process_manager:\n",
        &format!(
            "process_manager:\n  api_token_file: {}\n",
            yaml_str(file.display().to_string())
        ),
    );
    let mut pm = ProcessManager::start_with_env(run, &config, &[], &[]);
    let api = pm.api();
    api.with_token(Some("from-the-file"))
        .wait_running("svc", SHORT);
    let resp = api.get("/api/v1/processes");
    expect_error("list without a token", &resp, 401, "unauthorized");
    pm.shutdown_cleanly(STOP_TIMEOUT);
    drop(pm);

    // HSU_API_TOKEN overrides the file.
    let run = TestRun::new("e2e-test-api-token-file");
    let file = run.path("token");
    std::fs::write(&file, "from-the-file\n").unwrap();
    let config = forever("svc").replace(
        "process_manager:\n",
        &format!(
            "process_manager:\n  api_token_file: {}\n",
            yaml_str(file.display().to_string())
        ),
    );
    let mut pm =
        ProcessManager::start_with_env(run, &config, &[], &[("HSU_API_TOKEN", "from-the-env")]);
    let api = pm.api();
    api.with_token(Some("from-the-env"))
        .wait_running("svc", SHORT);
    let resp = api
        .with_token(Some("from-the-file"))
        .get("/api/v1/processes");
    expect_error("list with the file's token", &resp, 401, "unauthorized");
    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn a_non_loopback_bind_needs_a_token() {
    // Without a token: refused at start, nothing started.
    let run = TestRun::new("e2e-test-api-bind-refused");
    let _guard = TagGuard(run.tag_prefix());
    let ready = run.path("svc.ready");
    let config = single_process_config(
        "svc",
        &[
            "--run-duration",
            "0",
            "--pid-file",
            &ready.display().to_string(),
        ],
        "graceful_timeout: 5s",
    )
    .replace("  port: 0\n", "  port: 0\n  bind: 0.0.0.0\n");
    run.write_config(&config);
    let config_path = run.config_path.display().to_string();
    let base = run.base_dir.display().to_string();
    // --run-duration bounds a manager that wrongly starts.
    let out = run_cli(
        &run,
        &[
            "--config",
            &config_path,
            "--base-dir",
            &base,
            "--run-duration",
            "10",
        ],
        &[],
    );
    assert!(
        out.code().is_some_and(|c| c != 0),
        "a non-loopback bind without a token must be refused: {out}"
    );
    assert!(
        out.stderr.contains("0.0.0.0") && out.stderr.to_lowercase().contains("token"),
        "the refusal should name the bind address and the token: {out}"
    );
    assert!(
        out.took < Duration::from_secs(8),
        "the refusal took {:?}: {out}",
        out.took
    );
    assert!(!ready.exists(), "svc was started: {out}");
    assert_eq!(tagged_processes(&run.tag_prefix()), Vec::<u32>::new());
    let started: Vec<Event> = log_parser::read_journal(&run.journal_path())
        .into_iter()
        .filter(|e| e.kind == "state_changed")
        .collect();
    assert!(
        started.is_empty(),
        "processes changed state although the manager refused to start:\n{}",
        log_parser::format_events(&started)
    );
    assert!(
        !run.base_dir.join("api.addr").exists(),
        "api.addr written: {out}"
    );

    // With a token the same bind serves.
    let run = TestRun::new("e2e-test-api-bind-token");
    let mut pm = ProcessManager::start_with_env(run, &config, &[], &[("HSU_API_TOKEN", TOKEN)]);
    let addr = pm.api_addr();
    assert!(addr.starts_with("0.0.0.0:"), "api.addr: {addr}");
    let api = pm.api_with_token(Some(TOKEN));
    api.wait_running("svc", SHORT);
    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn the_unix_socket_is_private_and_serves_the_api() {
    let mut pm = ProcessManager::start("e2e-test-api-unix", &forever("svc"));
    let tcp = pm.api();
    let pid = tcp.wait_running("svc", SHORT);
    let socket = pm.socket_path();
    let meta =
        std::fs::symlink_metadata(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        socket.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "api.sock mode {:o}",
        meta.permissions().mode() & 0o777
    );

    let unix = pm.api_unix(None);
    assert_eq!(unix.get("/healthz").status, 200);
    let list = unix.processes();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], "svc");
    let got = unix.process("svc");
    assert_eq!(got["pid"].as_u64(), Some(u64::from(pid)), "{got}");
    assert_eq!(got["state"], "running");
    expect_error(
        "unix: GET /api/v1/processes/nope",
        &unix.get("/api/v1/processes/nope"),
        404,
        "not_found",
    );
    // Actions work there too.
    unix.act("svc", "restart");
    let pid2 = unix.wait_running("svc", SHORT);
    assert_ne!(pid, pid2);
    assert!(!pid_alive(pid));
    pm.shutdown_cleanly(STOP_TIMEOUT);
    assert!(!socket.exists(), "api.sock is left after a clean exit");
}
