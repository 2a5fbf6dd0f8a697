//! The CLI client commands (SPEC §3) against a running manager: the status table and
//! JSON, start/stop/restart, logs, events, shutdown, how the client finds the manager,
//! and its exit codes. (`reload` is in `test_reload.rs`.)

use e2e_tests::*;
use std::time::Duration;

const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const CONTROL: &str = "graceful_timeout: 5s\nrestart_policy: on_failure";
const HEADER: [&str; 9] = [
    "ID", "TYPE", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "CPU%", "MEM",
];

fn two_processes() -> String {
    processes_config(&[
        testexe_process(
            "alpha",
            &["--run-duration", "0", "--print-every", "50"],
            CONTROL,
        ),
        testexe_process("beta", &["--run-duration", "0"], CONTROL),
    ])
}

/// Splits an aligned table into its cells: the columns are the maximal runs of
/// positions where some line has a non-space character (so each column must be
/// separated from the next by spaces on every line). Panics unless there are `columns`.
fn table_cells(text: &str, columns: usize) -> Vec<Vec<String>> {
    let lines: Vec<Vec<char>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.chars().collect())
        .collect();
    let width = lines.iter().map(Vec::len).max().unwrap_or(0);
    let used: Vec<bool> = (0..width)
        .map(|i| lines.iter().any(|l| l.get(i).is_some_and(|c| *c != ' ')))
        .collect();
    let mut spans = Vec::new();
    let mut start = None;
    for (i, &u) in used.iter().chain([false].iter()).enumerate() {
        match (u, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    assert_eq!(
        spans.len(),
        columns,
        "expected {columns} aligned columns, found spans {spans:?} in:\n{text}"
    );
    lines
        .iter()
        .map(|l| {
            spans
                .iter()
                .map(|&(s, e)| {
                    l.get(s..e.min(l.len()))
                        .map(|c| c.iter().collect::<String>().trim().to_owned())
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect()
}

#[test]
fn status_table_json_and_address_discovery() {
    let mut pm = ProcessManager::start("e2e-test-cli-status", &two_processes());
    let api = pm.api();
    let alpha = api.wait_running("alpha", SHORT);
    let beta = api.wait_running("beta", SHORT);

    let out = pm.cli(&["status"]);
    out.expect_success();
    let rows = table_cells(&out.stdout, HEADER.len());
    assert_eq!(rows[0], HEADER, "the header: {out}");
    assert_eq!(rows.len(), 3, "one row per process: {out}");
    for (row, (id, pid)) in rows[1..].iter().zip([("alpha", alpha), ("beta", beta)]) {
        assert_eq!(row[0], id, "{out}");
        assert!(row[1].starts_with("standard"), "TYPE: {out}");
        assert_eq!(row[2], "running", "STATE: {out}");
        assert_eq!(row[3], pid.to_string(), "PID: {out}");
        assert!(!row[4].is_empty() && row[4] != "-", "UPTIME: {out}");
        assert_eq!(row[5], "0", "RESTARTS: {out}");
        assert!(
            ["healthy", "unhealthy", "unknown"].contains(&row[6].as_str()),
            "HEALTH: {out}"
        );
    }
    assert!(out.stderr.trim().is_empty(), "{out}");

    // One process as JSON: the API's Process.
    let out = pm.cli(&["status", "alpha", "--json"]);
    out.expect_success();
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"));
    let from_api = api.process("alpha");
    for key in [
        "id",
        "type",
        "state",
        "pid",
        "started_at",
        "restart_count",
        "circuit",
        "limits",
    ] {
        assert_eq!(
            json[key], from_api[key],
            "status alpha --json .{key}: {out}"
        );
    }
    // Liveness is confirmed at every read (the kernel reports an exit at once), so
    // `last_check_at` is the moment of each read; the rest of `health` is the same.
    for key in ["status", "check", "consecutive_failures", "last_error"] {
        assert_eq!(
            json["health"][key], from_api["health"][key],
            "status alpha --json .health.{key}: {out}"
        );
    }
    let out = pm.cli(&["status", "--json"]);
    out.expect_success();
    let all: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{out}");
    let out = pm.cli(&["status", "nope"]);
    out.expect_code(1);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");

    // Other ways to find the manager.
    let run = pm.run().clone();
    let socket = format!("unix:{}", pm.socket_path().display());
    let url = pm.api_url();
    let by_socket = run_cli(&run, &["--api", &socket, "status"], &[]);
    by_socket.expect_success();
    assert!(by_socket.stdout.contains(&alpha.to_string()), "{by_socket}");
    let by_env = run_cli(&run, &["status"], &[("HSU_API", &url)]);
    by_env.expect_success();
    assert!(by_env.stdout.contains(&alpha.to_string()), "{by_env}");
    let by_env_unix = run_cli(&run, &["status", "beta", "--json"], &[("HSU_API", &socket)]);
    by_env_unix.expect_success();
    assert!(
        by_env_unix.stdout.contains(&beta.to_string()),
        "{by_env_unix}"
    );
    // --config: the file's base_directory leads to api.addr.
    let client_config = run.write_file(
        "client.yaml",
        &two_processes().replace(
            "process_manager:\n",
            &format!(
                "process_manager:\n  base_directory: {}\n",
                yaml_str(run.base_dir.display().to_string())
            ),
        ),
    );
    let by_config = run_cli(
        &run,
        &["--config", &client_config.display().to_string(), "status"],
        &[],
    );
    by_config.expect_success();
    assert!(by_config.stdout.contains(&alpha.to_string()), "{by_config}");
    // --api wins over HSU_API.
    let both = run_cli(
        &run,
        &["--api", &url, "status"],
        &[("HSU_API", "http://127.0.0.1:1")],
    );
    both.expect_success();

    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn actions_logs_and_events() {
    let mut pm = ProcessManager::start("e2e-test-cli-actions", &two_processes());
    let api = pm.api();
    let alpha = api.wait_running("alpha", SHORT);

    let out = pm.cli(&["stop", "alpha"]);
    out.expect_success();
    assert!(out.stdout.contains("alpha"), "{out}");
    assert!(
        !pid_alive(alpha),
        "alpha ({alpha}) alive after `stop` returned: {out}"
    );
    assert_eq!(tree_of(&pm, "alpha"), Vec::<u32>::new());
    assert_eq!(api.process("alpha")["state"], "stopped");

    // logs -n 3 of the stopped process: exactly the file's last three lines.
    let file = std::fs::read_to_string(pm.run().output_log("alpha", "stdout")).unwrap();
    let last3: Vec<&str> = file
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let out = pm.cli(&["logs", "alpha", "-n", "3"]);
    out.expect_success();
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), last3, "{out}");
    assert!(last3.iter().all(|l| l.contains("stdout line ")), "{file}");
    let err = std::fs::read_to_string(pm.run().output_log("alpha", "stderr")).unwrap();
    let out = pm.cli(&["logs", "alpha", "--stream", "stderr", "-n", "2"]);
    out.expect_success();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        err.lines()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>(),
        "{out}"
    );

    let out = pm.cli(&["start", "alpha"]);
    out.expect_success();
    let alpha2 = api.wait_running("alpha", SHORT);
    assert_ne!(alpha2, alpha);

    let out = pm.cli(&["restart", "alpha"]);
    out.expect_success();
    let alpha3 = api.wait_running("alpha", SHORT);
    assert!(alpha3 != alpha2 && !pid_alive(alpha2), "{out}");
    let out = pm.cli(&["restart", "alpha", "--force"]);
    out.expect_success();
    let alpha4 = api.wait_running("alpha", SHORT);
    assert!(alpha4 != alpha3 && !pid_alive(alpha3), "{out}");

    // Failures: exit 1 with a reason; nothing changes.
    let beta = api.wait_running("beta", SHORT);
    for args in [
        &["stop", "unknown-id"][..],
        &["start", "unknown-id"],
        &["logs", "unknown-id"],
    ] {
        let out = pm.cli(args);
        out.expect_code(1);
        assert!(
            out.stderr.contains("unknown-id") && out.stdout.is_empty(),
            "{out}"
        );
    }
    assert_eq!(api.process("beta")["pid"].as_u64(), Some(u64::from(beta)));

    // events: the journal as JSON lines, seq 1, 2, 3, ...
    let out = pm.cli(&["events"]);
    out.expect_success();
    let events: Vec<Event> = out
        .stdout
        .lines()
        .map(|l| Event::parse(l).unwrap_or_else(|e| panic!("events: {e}: {l}")))
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "{out}");
    assert!(
        events
            .iter()
            .any(|e| e.is_transition("alpha", "stopping", "stopped")),
        "{out}"
    );
    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn shutdown_stops_everything_and_exits_0() {
    let mut pm = ProcessManager::start("e2e-test-cli-shutdown", &two_processes());
    let api = pm.api();
    let pids = [
        api.wait_running("alpha", SHORT),
        api.wait_running("beta", SHORT),
    ];
    let out = pm.cli(&["shutdown"]);
    out.expect_success();
    let status = pm.wait_exit(STOP_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "the manager after `shutdown`: {}",
        describe_exit(status)
    );
    assert_all_gone("the processes after `shutdown`", &pids, Duration::ZERO);
    // Already exited: this checks the clean end (nothing left, all stopped, journal).
    pm.shutdown_cleanly(STOP_TIMEOUT);
    let stopped = pm.events().last().cloned().expect("a journal");
    assert_eq!(stopped.kind, "manager_stopped", "{stopped}");
}

#[test]
fn without_a_manager() {
    let run = TestRun::new("e2e-test-cli-offline");
    // Unreachable: exit 1, one line on stderr.
    for args in [
        &["--api", "http://127.0.0.1:1", "status"][..],
        &["--api", "http://127.0.0.1:1", "stop", "x"],
        &[
            "--api",
            &format!("unix:{}", run.path("none.sock").display()),
            "status",
        ],
    ] {
        let out = run_cli(&run, args, &[]);
        out.expect_code(1);
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "one line on stderr: {out}"
        );
        assert!(out.stderr.contains("not reachable"), "{out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
    let out = run_cli(&run, &["status"], &[("HSU_API", "http://127.0.0.1:1")]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("not reachable") && out.stderr.contains("127.0.0.1:1"),
        "{out}"
    );

    // Usage and config errors: exit 2.
    for args in [
        &["status", "--bogus"][..],
        &["--api", "ftp://x/y", "status"],
        &["restart"],
        &["logs", "x", "--stream", "both"],
    ] {
        let out = run_cli(&run, args, &[]);
        out.expect_code(2);
    }
    let missing = run.path("missing.yaml").display().to_string();
    run_cli(&run, &["--config", &missing, "status"], &[]).expect_code(2);

    let out = run_cli(&run, &["completions", "bash"], &[]);
    out.expect_success();
    assert!(
        out.stdout.contains("complete") && out.stdout.contains("hsu-process-manager"),
        "not a bash completion script: {out}"
    );
    for sub in ["status", "restart", "logs", "reload", "shutdown"] {
        assert!(out.stdout.contains(sub), "completions lack `{sub}`");
    }
}
