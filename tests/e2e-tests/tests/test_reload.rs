//! Reloading the config (SPEC §5 Reload) by `POST /api/v1/reload`, SIGHUP and the CLI's
//! `reload`: added processes start, removed ones stop (their whole tree), changed ones
//! restart, the rest keep their PID; an invalid config changes nothing and every problem
//! is reported.

use e2e_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const CONTROL: &str = "graceful_timeout: 5s\nrestart_policy: on_failure";

/// keep, gone, change (prints every 1000 ms).
fn before() -> String {
    processes_config(&[
        testexe_process("keep", &["--run-duration", "0"], CONTROL),
        testexe_process(
            "gone",
            &["--run-duration", "0", "--spawn-children", "1"],
            CONTROL,
        ),
        testexe_process(
            "change",
            &["--run-duration", "0", "--print-every", "1000"],
            CONTROL,
        ),
    ])
}

/// keep unchanged, gone removed, change prints every 2000 ms, added is new.
fn after() -> String {
    processes_config(&[
        testexe_process("keep", &["--run-duration", "0"], CONTROL),
        testexe_process(
            "change",
            &["--run-duration", "0", "--print-every", "2000"],
            CONTROL,
        ),
        testexe_process("added", &["--run-duration", "0"], CONTROL),
    ])
}

/// Three problems, at lines 11, 12 and 13 (the first process is fine).
const INVALID: &str = r#"process_manager:
  port: 0
  force_shutdown_timeout: 20s
managed_processes:
  - id: keep
    type: standard_managed
    management:
      control:
        executable: {testexe}
        arguments: ["--run-duration", "0"]
        graceful_timeout: soon
        restart_policy: sometimes
        restrat: {retry_delay: 1s}
"#;
const INVALID_LINES: [u32; 3] = [11, 12, 13];

/// Starts the manager on [`before`] and waits until all three run; returns their PIDs.
fn start(test_name: &str) -> (ProcessManager, Api, BTreeMap<&'static str, u32>) {
    let mut pm = ProcessManager::start(test_name, &before());
    let api = pm.api();
    let mut pids = BTreeMap::new();
    for id in ["keep", "gone", "change"] {
        pids.insert(id, api.wait_running(id, SHORT));
    }
    // gone's child is part of its tree.
    wait_for("gone's child", SHORT, || tree_of(&pm, "gone").len() == 2);
    (pm, api, pids)
}

/// Checks the processes after the [`after`] config was applied.
fn assert_applied(pm: &mut ProcessManager, api: &Api, old: &BTreeMap<&str, u32>) {
    let pids = wait_until("the reloaded set of processes", SHORT, || {
        let list = api.processes();
        let ids: Vec<&str> = list.iter().filter_map(|p| p["id"].as_str()).collect();
        if ids != ["keep", "change", "added"] {
            return None;
        }
        let pids: BTreeMap<String, u32> = list
            .iter()
            .filter(|p| p["state"] == "running")
            .filter_map(|p| Some((p["id"].as_str()?.to_owned(), p["pid"].as_u64()? as u32)))
            .collect();
        (pids.len() == 3 && pids["change"] != old["change"]).then_some(pids)
    });
    assert_eq!(
        pids["keep"], old["keep"],
        "the unchanged process was restarted"
    );
    assert!(pid_alive(pids["keep"]));
    assert!(pid_alive(pids["added"]), "added is not running");
    assert_ne!(
        pids["change"], old["change"],
        "the changed process kept its PID"
    );
    assert!(
        !pid_alive(old["change"]),
        "the changed process's old PID lives"
    );
    assert!(
        cmdline(pids["change"]).contains("2000"),
        "the changed process runs with its old arguments: {}",
        cmdline(pids["change"])
    );
    assert!(!pid_alive(old["gone"]), "the removed process lives");
    assert_eq!(
        tree_of(pm, "gone"),
        Vec::<u32>::new(),
        "the removed process's tree"
    );
    expect_error(
        "GET of the removed process",
        &api.get("/api/v1/processes/gone"),
        404,
        "not_found",
    );
    let reloaded = pm.wait_for_event("config_reloaded", SHORT, |e| e.kind == "config_reloaded");
    assert_eq!(reloaded.raw["added"], json!(["added"]), "{reloaded}");
    assert_eq!(reloaded.raw["removed"], json!(["gone"]), "{reloaded}");
    assert_eq!(reloaded.raw["changed"], json!(["change"]), "{reloaded}");
    pm.assert_journal_consistent();
}

fn assert_diff(diff: &Value) {
    assert_eq!(
        diff,
        &json!({"added": ["added"], "removed": ["gone"], "changed": ["change"], "unchanged": ["keep"]}),
        "the reload's diff"
    );
}

#[test]
fn reload_through_the_api() {
    let (mut pm, api, old) = start("e2e-test-reload-api");
    pm.run().write_config(&after());
    let resp = api.post("/api/v1/reload");
    assert_diff(&expect_json("POST /api/v1/reload", &resp, 200));
    assert_applied(&mut pm, &api, &old);
    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn reload_on_sighup() {
    let (mut pm, api, old) = start("e2e-test-reload-sighup");
    pm.run().write_config(&after());
    pm.signal(libc::SIGHUP);
    assert_applied(&mut pm, &api, &old);
    assert!(pm.is_running(), "SIGHUP ended the manager");
    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn reload_with_the_cli() {
    let (mut pm, api, old) = start("e2e-test-reload-cli");
    pm.run().write_config(&after());
    let out = pm.cli(&["reload"]);
    out.expect_success();
    assert_eq!(
        out.stdout.trim(),
        "reloaded: added added; removed gone; changed change; unchanged keep",
        "{out}"
    );
    assert_applied(&mut pm, &api, &old);
    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn an_invalid_config_is_reported_and_changes_nothing() {
    let (mut pm, api, old) = start("e2e-test-reload-invalid");
    let text = pm.run().write_config(INVALID);
    let assert_unchanged = |pm: &ProcessManager, what: &str| {
        let list = api.processes();
        let now: BTreeMap<String, u32> = list
            .iter()
            .filter_map(|p| Some((p["id"].as_str()?.to_owned(), p["pid"].as_u64()? as u32)))
            .collect();
        let want: BTreeMap<String, u32> = old.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        assert_eq!(now, want, "{what}: the processes changed");
        for pid in old.values() {
            assert!(pid_alive(*pid), "{what}: pid {pid} died");
        }
        assert!(
            !pm.events().iter().any(|e| e.kind == "config_reloaded"),
            "{what}: a config_reloaded was journalled"
        );
    };

    // The API: 422 with every problem.
    let resp = api.post("/api/v1/reload");
    let body = expect_error("reload of an invalid config", &resp, 422, "invalid");
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no `problems` array: {body}"))
        .iter()
        .map(|p| p.as_str().expect("a problem is a string"))
        .collect();
    let parsed: Vec<Problem> = problems
        .iter()
        .map(|p| {
            parse_problem(p).unwrap_or_else(|| panic!("not FILE:LINE:COL: path: message: {p}"))
        })
        .collect();
    for line in INVALID_LINES {
        assert!(
            parsed
                .iter()
                .any(|p| p.line == line && p.column > 0 && p.file.ends_with("config.yaml")),
            "no problem reported at line {line}: {problems:#?}\nconfig:\n{text}"
        );
    }
    assert!(
        parsed.iter().any(|p| p.message.contains("restart")),
        "no \"did you mean\" hint for `restrat`: {problems:#?}"
    );
    assert_unchanged(&pm, "after POST /api/v1/reload");

    // The CLI: exit 2 (a config error, as the README says) and every problem on stderr.
    let out = pm.cli(&["reload"]);
    out.expect_code(2);
    for p in &problems {
        assert!(
            out.stderr.contains(p),
            "the CLI does not print {p:?}: {out}"
        );
    }
    assert_unchanged(&pm, "after the CLI reload");

    // SIGHUP: the manager logs the problems and keeps running the old config.
    let log_before = pm.run().procman_log().len();
    pm.signal(libc::SIGHUP);
    wait_for("the manager to report the invalid config", SHORT, || {
        let log = pm.run().procman_log();
        log.len() > log_before && problems.iter().all(|p| log[log_before..].contains(p))
    });
    assert!(
        pm.is_running(),
        "SIGHUP with an invalid config ended the manager"
    );
    assert_unchanged(&pm, "after SIGHUP");

    // Fixed again: a reload changes nothing.
    pm.run().write_config(&before());
    let resp = api.post("/api/v1/reload");
    let diff = expect_json("reload of the original config", &resp, 200);
    assert_eq!(
        diff,
        json!({"added": [], "removed": [], "changed": [], "unchanged": ["keep", "gone", "change"]}),
    );
    let pids: BTreeMap<&str, u32> = ["keep", "gone", "change"]
        .into_iter()
        .map(|id| (id, api.process(id)["pid"].as_u64().unwrap_or(0) as u32))
        .collect();
    assert_eq!(pids, old);
    pm.shutdown_cleanly(STOP_TIMEOUT);
}
