//! `depends_on`: start in dependency order with readiness conditions, dependents failed
//! by a failing dependency, shutdown in reverse order, cycles refused by `validate`, and
//! independent branches that do not wait for each other. Real binary, real testexe.

use e2e_tests::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// A testexe entry with process-level `extra` lines (e.g. `depends_on: [db]`).
fn entry(id: &str, args: &[&str], control: &str, extra: &str) -> String {
    let extra: String = extra
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("    {l}\n"))
        .collect();
    testexe_process(id, args, control).replacen("    type:", &format!("{extra}    type:"), 1)
}

/// A testexe `id` whose HTTP health endpoint answers only after `startup_delay` seconds,
/// checked every 200 ms and never restarted for failing while it boots.
fn slow_server(id: &str, startup_delay: &str) -> String {
    let port = free_port();
    format!(
        "{}      health_check:\n        type: http\n        http: {{url: \"http://127.0.0.1:{port}/\"}}\n        \
         interval: 200ms\n        timeout: 150ms\n        failure_threshold: 100\n",
        entry(
            id,
            &["--startup-delay", startup_delay, "--health-port", &port.to_string()],
            "graceful_timeout: 2s",
            "",
        )
    )
}

/// A `migrate` job (runs `run_duration` s, exits `code`, restart policy `policy`) and an
/// `app` that waits for it to complete successfully.
fn migration_then_app(run_duration: &str, code: &str, policy: &str) -> String {
    processes_config(&[
        entry(
            "migrate",
            &["--run-duration", run_duration, "--exit-code", code],
            &format!("restart_policy: {policy}"),
            "",
        ),
        entry(
            "app",
            &["--run-duration", "0"],
            "graceful_timeout: 2s",
            "depends_on: [{id: migrate, condition: completed_successfully}]",
        ),
    ])
}

/// The journal's `seq` of the first event of `id` matching `pred`.
fn seq_of(events: &[Event], id: &str, what: &str, pred: impl Fn(&Event) -> bool) -> u64 {
    events
        .iter()
        .find(|e| e.is_for(id) && pred(e))
        .unwrap_or_else(|| {
            panic!(
                "no {what} of {id} in:\n{}",
                e2e_tests::log_parser::format_events(events)
            )
        })
        .seq
}

#[test]
fn test_depends_on_chain_starts_in_order() {
    let db = slow_server("db", "1.5");
    let config = processes_config(&[
        // Listed dependents first: the order comes from depends_on, not the file.
        entry(
            "worker",
            &["--run-duration", "0"],
            "graceful_timeout: 2s",
            "depends_on: [app]",
        ),
        entry(
            "app",
            &["--run-duration", "0"],
            "graceful_timeout: 2s",
            "depends_on: [{id: db, condition: healthy}]",
        ),
        db,
    ]);
    let mut pm = ProcessManager::start("e2e-test-depends-on-chain", &config);
    let api = pm.api();
    let p = api.wait_process("app", "waiting for db", LONG, |p| p["state"] == "starting");
    assert_eq!(p["waiting_for"][0], "db (healthy)", "{p}");
    assert!(p["pid"].is_null(), "nothing spawned while waiting: {p}");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("waiting for db (healthy)"),
        "{p}"
    );
    api.wait_process("worker", "running", LONG, |p| p["state"] == "running");
    // The journal is written in the background: wait until it has caught up.
    pm.wait_for_event("worker running", LONG, |e| {
        e.is_transition_to("worker", "running")
    });
    let events = pm.events();
    let db_healthy = seq_of(&events, "db", "health_changed", |e| {
        e.is_kind("db", "health_changed") && e.str("to") == Some("healthy")
    });
    let app_spawned = seq_of(&events, "app", "spawn", |e| e.is_kind("app", "spawned"));
    let app_running = seq_of(&events, "app", "running", |e| {
        e.is_transition_to("app", "running")
    });
    let worker_spawned = seq_of(&events, "worker", "spawn", |e| {
        e.is_kind("worker", "spawned")
    });
    assert!(
        db_healthy < app_spawned,
        "app spawned before db was healthy"
    );
    assert!(
        app_running < worker_spawned,
        "worker spawned before app was started"
    );
    // The graph shows the chain and the start order.
    let graph = api.get_json("/api/v1/graph");
    assert_eq!(
        graph["start_order"],
        serde_json::json!([["db"], ["app"], ["worker"]]),
        "{graph}"
    );
    let tree = pm.cli(&["status", "--tree"]);
    tree.expect_success();
    assert!(
        tree.stdout.contains("db  running") && tree.stdout.contains("└─ [healthy] app  running"),
        "{}",
        tree.stdout
    );

    // Shutdown in reverse order: worker, then app, then db.
    pm.shutdown_cleanly(LONG);
    let events = pm.events();
    let stopped = |id: &str| {
        seq_of(&events, id, "stop", |e| {
            e.is_transition(id, "stopping", "stopped")
        })
    };
    assert!(
        stopped("worker") < stopped("app"),
        "worker must stop before app"
    );
    assert!(stopped("app") < stopped("db"), "app must stop before db");
}

#[test]
fn test_depends_on_migration_gates_the_app() {
    let config = migration_then_app("1", "0", "on_failure");
    let mut pm = ProcessManager::start("e2e-test-depends-on-migration", &config);
    let api = pm.api();
    api.wait_process("app", "running", LONG, |p| p["state"] == "running");
    pm.wait_for_event("app running", LONG, |e| {
        e.is_transition_to("app", "running")
    });
    let events = pm.events();
    let migrated = seq_of(&events, "migrate", "exit", |e| {
        e.is_kind("migrate", "exited")
    });
    let spawned = seq_of(&events, "app", "spawn", |e| e.is_kind("app", "spawned"));
    assert!(
        migrated < spawned,
        "app spawned before the migration completed"
    );
    pm.shutdown_cleanly(LONG);
}

#[test]
fn test_depends_on_failing_migration_fails_the_app() {
    let config = migration_then_app("0.3", "4", "never");
    let mut pm = ProcessManager::start("e2e-test-depends-on-failed-migration", &config);
    let api = pm.api();
    let p = api.wait_process("app", "failed", LONG, |p| p["state"] == "failed");
    let reason = p["reason"].as_str().unwrap();
    assert!(reason.contains("dependency migrate failed"), "{p}");
    assert!(p["pid"].is_null(), "{p}");
    pm.wait_for_event("app failed", LONG, |e| e.is_transition_to("app", "failed"));
    assert!(pm
        .events_for("app")
        .iter()
        .all(|e| !e.is_kind("app", "spawned")));
    pm.shutdown_cleanly(LONG);
}

#[test]
fn test_depends_on_independent_branches_start_in_parallel() {
    let slow = slow_server("slowdb", "5");
    let config = processes_config(&[
        slow,
        entry(
            "slowapp",
            &["--run-duration", "0"],
            "graceful_timeout: 2s",
            "depends_on: [{id: slowdb, condition: healthy}]",
        ),
        entry(
            "cache",
            &["--run-duration", "0"],
            "graceful_timeout: 2s",
            "",
        ),
        entry(
            "fastapp",
            &["--run-duration", "0"],
            "graceful_timeout: 2s",
            "depends_on: [cache]",
        ),
    ]);
    let mut pm = ProcessManager::start("e2e-test-depends-on-parallel", &config);
    let api = pm.api();
    api.wait_process("fastapp", "running", LONG, |p| p["state"] == "running");
    // The slow branch is still waiting: it did not hold the fast one back.
    let slowapp = api.process("slowapp");
    assert_eq!(slowapp["state"], "starting", "{slowapp}");
    api.wait_process("slowapp", "running", LONG, |p| p["state"] == "running");
    pm.shutdown_cleanly(LONG);
}

#[test]
fn test_depends_on_cycle_is_rejected_by_validate() {
    let run = TestRun::new("e2e-test-depends-on-cycle");
    let config = processes_config(&[
        entry("a", &[], "", "depends_on: [b]"),
        entry("b", &[], "", "depends_on: [c]"),
        entry("c", &[], "", "depends_on: [a]"),
        entry("d", &[], "", "depends_on: [nope]"),
    ]);
    run.write_config(&config);
    let out = run_cli(
        &run,
        &[
            "validate",
            "--config",
            &run.config_path.display().to_string(),
        ],
        &[],
    );
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    let cycle_lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("dependency cycle: a -> b -> c -> a"))
        .collect();
    assert_eq!(
        cycle_lines.len(),
        3,
        "one problem per edge of the cycle:\n{}",
        out.stderr
    );
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let at = format!("managed_processes[{i}].depends_on[0]");
        assert!(
            cycle_lines.iter().any(|l| l.contains(&at)),
            "{id}'s edge is reported at its place:\n{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("depends on `nope`"), "{}", out.stderr);
}

#[test]
fn test_depends_on_log_ready_on_a_printed_line() {
    let config = processes_config(&[
        entry(
            "server",
            &["--startup-delay", "1", "--print-every", "200"],
            "graceful_timeout: 2s",
            "ready_log_line: '^stdout line 3$'",
        ),
        entry(
            "client",
            &["--run-duration", "0"],
            "graceful_timeout: 2s",
            "depends_on: [{id: server, condition: log_ready}]",
        ),
    ]);
    let mut pm = ProcessManager::start("e2e-test-depends-on-log-ready", &config);
    let api = pm.api();
    let p = api.wait_process("client", "waiting", LONG, |p| p["state"] == "starting");
    assert_eq!(p["waiting_for"][0], "server (log_ready)", "{p}");
    api.wait_process("client", "running", LONG, |p| p["state"] == "running");
    pm.wait_for_event("client running", LONG, |e| {
        e.is_transition_to("client", "running")
    });
    // The line was printed (and captured) before the client was spawned.
    let out = std::fs::read_to_string(pm.run().output_log("server", "stdout")).unwrap_or_default();
    assert!(out.lines().any(|l| l.ends_with("stdout line 3")), "{out}");
    pm.shutdown_cleanly(LONG);
}
