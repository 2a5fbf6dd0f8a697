//! Re-adoption (SPEC §6) and durable state: a manager killed with SIGKILL, then started
//! again on the same base directory, supervises the very processes the first one started
//! (same PIDs, no second copies, `adopted` in the journal); an adopted process is stopped
//! with its whole tree and restarted by its policy when it dies; a recorded PID that now
//! belongs to another program is never touched; a process stopped by hand stays stopped
//! and an open breaker stays open; `shutdown --keep-processes` hands the processes and
//! their output to the next manager; a corrupt `state.json` is set aside and reported.

use e2e_tests::assertions::send_signal;
use e2e_tests::log_parser::format_events;
use e2e_tests::*;
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn state_json(run: &TestRun) -> Value {
    let text = std::fs::read_to_string(run.base_dir.join("state.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The live processes whose tag is exactly that of process `id` in `run`.
fn copies_of(run: &TestRun, id: &str) -> Vec<u32> {
    let tag = format!("{}{id}", run.tag_prefix());
    tagged_processes(&run.tag_prefix())
        .into_iter()
        .filter(|&pid| process_tag(pid).as_deref() == Some(tag.as_str()))
        .collect()
}

/// Waits until `state.json` records a live run of each of `ids` (it is written in the
/// background, right after the spawn).
fn wait_recorded(run: &TestRun, ids: &[&str]) {
    wait_for("state.json to record the runs", SHORT, || {
        let s = state_json(run);
        ids.iter()
            .all(|id| s["processes"][id]["run"]["pid"].as_u64().is_some())
    });
}

fn three_processes(extra_args: &[&str]) -> String {
    let mut args = vec!["--run-duration", "0", "--spawn-children", "1"];
    args.extend_from_slice(extra_args);
    processes_config(&[
        testexe_process(
            "a",
            &args,
            "graceful_timeout: 5s\nrestart_policy: on_failure",
        ),
        testexe_process(
            "b",
            &args,
            "graceful_timeout: 5s\nrestart_policy: on_failure",
        ),
        testexe_process("c", &args, "graceful_timeout: 5s\nrestart_policy: always"),
    ])
}

/// Three processes, the manager SIGKILLed, a new manager: the same PIDs, no second
/// copies, `adopted` events, status says adopted; then a stop leaves nothing of the
/// adopted tree, a crash of an adopted process is restarted by its policy, and the
/// shutdown leaves nothing.
#[test]
fn a_new_manager_adopts_what_the_killed_one_started() {
    let config = three_processes(&[]);
    let run = TestRun::new("e2e-test-adopt-sigkill");
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let pids: Vec<u32> = ["a", "b", "c"]
        .iter()
        .map(|id| api.wait_running(id, SHORT))
        .collect();
    wait_for("each tree to have its child", SHORT, || {
        ["a", "b", "c"]
            .iter()
            .all(|id| copies_of(pm.run(), id).len() == 2)
    });
    wait_recorded(pm.run(), &["a", "b", "c"]);
    let run = pm.kill_leaving_processes();
    assert_all_alive("the processes of the killed manager", &pids);

    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    pm.wait_for_events("3 adopted", 3, SHORT, |e| e.kind == "adopted");
    for (id, pid) in ["a", "b", "c"].iter().zip(&pids) {
        let p = api.wait_process(id, "running", SHORT, |p| p["state"] == "running");
        assert_eq!(p["pid"].as_u64(), Some(u64::from(*pid)), "{id}: {p}");
        assert_eq!(p["adopted"], true, "{id}: {p}");
        assert_eq!(
            copies_of(pm.run(), id).len(),
            2,
            "{id}: one main process and its child, no second copy"
        );
    }
    let adopted = pm.events();
    assert!(
        !adopted.iter().any(|e| e.kind == "spawned"
            && e.ts_ms >= adopted.iter().find(|e| e.kind == "adopted").unwrap().ts_ms),
        "nothing spawned by the new manager:\n{}",
        format_events(&adopted)
    );
    // Adopted trees are sampled like spawned ones.
    api.wait_process("a", "sampled", LONG, |p| {
        p["resources"]["processes"].as_u64() == Some(2)
    });
    let out = pm.cli(&["status", "a"]);
    out.expect_success();
    assert!(out.stdout.contains("adopted: yes"), "{}", out.stdout);

    // A stop of an adopted process leaves nothing of its tree.
    let tree_a = copies_of(pm.run(), "a");
    expect_json("stop a", &api.post("/api/v1/processes/a/stop"), 202);
    assert_all_gone("a's adopted tree after its stop", &tree_a, SHORT);

    // An adopted process that dies is restarted by its policy (its exit status is
    // unknown: it counts as a failure).
    send_signal(pids[1], libc::SIGKILL);
    let p = api.wait_process("b", "restarted with a new pid", LONG, |p| {
        p["state"] == "running"
            && p["pid"]
                .as_u64()
                .is_some_and(|pid| pid != u64::from(pids[1]))
    });
    assert_eq!(p["adopted"], false, "{p}");
    pm.wait_for_event("b's restart_scheduled", SHORT, |e| {
        e.is_kind("b", "restart_scheduled")
    });
    pm.shutdown_cleanly(LONG);
}

/// A PID recorded in `state.json` that now belongs to another program (a different
/// start time) is never signalled nor adopted: the process is started afresh.
#[test]
fn a_reused_pid_is_left_alone() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let run = TestRun::new("e2e-test-adopt-reused-pid");
    let mut stranger = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = stranger.id();
    std::fs::create_dir_all(&run.base_dir).unwrap();
    let state = serde_json::json!({
        "version": 1,
        "processes": {"svc": {"desired": "running", "run": {
            "pid": pid, "start_time": 1, "boot_id": std::fs::read_to_string(
                "/proc/sys/kernel/random/boot_id").unwrap().trim(),
            "started_at_ms": 1, "executable": "/bin/sleep",
            "stop_signal": "SIGTERM", "graceful_timeout_ms": 1000}}}
    });
    std::fs::write(run.base_dir.join("state.json"), state.to_string()).unwrap();
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let started = api.wait_running("svc", SHORT);
    assert_ne!(started, pid, "a fresh svc, not the stranger");
    assert!(
        pid_alive(pid),
        "the stranger with the recorded PID is untouched"
    );
    assert!(
        !pm.events().iter().any(|e| e.kind == "adopted"),
        "nothing adopted"
    );
    pm.shutdown_cleanly(LONG);
    assert!(
        pid_alive(pid),
        "the stranger outlives the manager's shutdown"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

/// Stopped by hand, then the manager killed: the next manager leaves it stopped. A
/// breaker that opened stays open (failed, circuit open, nothing spawned).
#[test]
fn a_hand_stop_and_an_open_breaker_survive_the_manager() {
    let config = processes_config(&[
        testexe_process(
            "held",
            &["--run-duration", "0"],
            "graceful_timeout: 5s\nrestart_policy: on_failure",
        ),
        testexe_process(
            "crashy",
            &["--crash-after", "0.05"],
            "graceful_timeout: 5s\nrestart_policy: on_failure\nrestart:\n  retry_delay: 50ms\n  \
             max_retries: 2\n  window: 10m\n  cooldown: 0s",
        ),
    ]);
    let run = TestRun::new("e2e-test-adopt-held-and-open");
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    api.wait_running("held", SHORT);
    api.act("held", "stop");
    api.wait_process("crashy", "breaker open", LONG, |p| {
        p["state"] == "failed" && p["circuit"] == "open"
    });
    wait_for("state.json to record the breaker", SHORT, || {
        state_json(pm.run())["processes"]["crashy"]["restarts"]["circuit"] == "open"
    });
    let restarts = api.process("crashy")["restart_count"].as_u64().unwrap();
    let run = pm.kill_leaving_processes();

    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let crashy = api.process("crashy");
    assert_eq!(crashy["state"], "failed", "{crashy}");
    assert_eq!(crashy["circuit"], "open", "{crashy}");
    assert_eq!(crashy["restart_count"].as_u64(), Some(restarts), "{crashy}");
    // An observation window: for 2 s nothing of either is started.
    let moved = poll_until(Duration::from_secs(2), || {
        let held = api.process("held");
        let crashy = api.process("crashy");
        (held["state"] != "stopped" || crashy["state"] != "failed").then_some((held, crashy))
    });
    assert!(moved.is_none(), "the new manager started one: {moved:?}");
    let since_restart = pm.events();
    let restart_at = since_restart
        .iter()
        .rev()
        .find(|e| e.kind == "manager_started")
        .unwrap()
        .seq;
    assert!(
        !since_restart
            .iter()
            .any(|e| e.seq > restart_at && e.kind == "spawned"),
        "nothing spawned:\n{}",
        format_events(&since_restart)
    );
    // A start by hand still works, and closes the breaker.
    api.act("held", "start");
    api.wait_running("held", SHORT);
    pm.shutdown_cleanly(LONG);
}

/// The upgrade path: `shutdown --keep-processes` exits the manager with every process
/// running; the next manager adopts the same PIDs, and the output written while no
/// manager ran reaches the capture file, in order, nothing lost.
#[test]
fn keep_processes_hands_over_processes_and_output() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0", "--print-every", "10"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let run = TestRun::new("e2e-test-adopt-upgrade");
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let pid = api.wait_running("svc", SHORT);
    wait_recorded(pm.run(), &["svc"]);
    let out = pm.cli(&["shutdown", "--keep-processes"]);
    out.expect_success();
    let status = pm.wait_exit(LONG);
    assert_eq!(status.code(), Some(0), "the manager exits cleanly");
    pm.wait_for_event("manager_stopped", SHORT, |e| {
        e.kind == "manager_stopped" && e.str("reason").is_some_and(|r| r.contains("left running"))
    });
    let run = pm.release_leaving_processes();
    assert!(pid_alive(pid), "svc keeps running without a manager");
    let capture = run.output_log("svc", "stdout");
    let lines_at_exit = std::fs::read_to_string(&capture)
        .unwrap_or_default()
        .lines()
        .count();

    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    pm.wait_for_event("adopted", SHORT, |e| e.kind == "adopted");
    let p = api.wait_process("svc", "running", SHORT, |p| p["state"] == "running");
    assert_eq!(p["pid"].as_u64(), Some(u64::from(pid)), "{p}");
    wait_for("output after the handover", LONG, || {
        std::fs::read_to_string(&capture)
            .unwrap_or_default()
            .lines()
            .count()
            > lines_at_exit + 50
    });
    pm.shutdown_cleanly(LONG);
    let text = std::fs::read_to_string(&capture).unwrap();
    let numbers: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            l.rsplit_once("stdout line ")
                .and_then(|(_, n)| n.trim().parse().ok())
        })
        .collect();
    assert!(numbers.len() > lines_at_exit, "{} lines", numbers.len());
    for pair in numbers.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "lines lost or out of order across the handover"
        );
    }
    assert_eq!(numbers[0], 1);
}

/// A `state.json` that is not JSON: reported, set aside, and the processes start.
#[test]
fn a_corrupt_state_file_is_set_aside() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let run = TestRun::new("e2e-test-adopt-corrupt-state");
    std::fs::create_dir_all(&run.base_dir).unwrap();
    std::fs::write(
        run.base_dir.join("state.json"),
        b"{\"processes\": {\"svc\": {\"run\"",
    )
    .unwrap();
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    api.wait_running("svc", SHORT);
    let alert = pm.wait_for_event("an alert about state.json", SHORT, |e| {
        e.kind == "alert" && e.str("message").is_some_and(|m| m.contains("state.json"))
    });
    let kept: Vec<String> = std::fs::read_dir(&pm.run().base_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "set aside once: {kept:?}; {alert}");
    wait_recorded(pm.run(), &["svc"]);
    pm.shutdown_cleanly(LONG);
}

/// Two managers started at once on one base directory: exactly one runs, the other
/// exits naming the holder's PID, and the process runs once.
#[test]
fn two_managers_racing_for_one_base_directory() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let run = TestRun::new("e2e-test-adopt-race");
    run.write_config(&config);
    let mut racer = std::process::Command::new(&binaries().manager)
        .args(["--config", &run.config_path.display().to_string()])
        .args(["--base-dir", &run.base_dir.display().to_string()])
        .current_dir(&run.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(run.path("racer.log")).unwrap())
        .spawn()
        .unwrap();
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let racer_lost = wait_until("one of the two managers to give up", LONG, || {
        if let Ok(Some(status)) = racer.try_wait() {
            return Some(Some(status));
        }
        (!pm.is_running()).then_some(None)
    });
    match racer_lost {
        Some(status) => {
            let log = std::fs::read_to_string(pm.run().path("racer.log")).unwrap();
            assert!(!status.success(), "the loser fails: {log}");
            assert!(
                log.contains(&pm.pid().to_string()),
                "names the holder: {log}"
            );
            let api = pm.api();
            api.wait_running("svc", SHORT);
            assert_eq!(copies_of(pm.run(), "svc").len(), 1, "one svc");
            pm.shutdown_cleanly(LONG);
        }
        None => {
            let log = pm.run().procman_log();
            assert!(!pm.poll_exit().unwrap().success());
            assert!(
                log.contains(&racer.id().to_string()),
                "names the holder: {log}"
            );
            wait_for("the winner's svc", SHORT, || {
                copies_of(pm.run(), "svc").len() == 1
            });
            send_signal(racer.id(), libc::SIGTERM);
            let status = racer.wait().unwrap();
            assert_eq!(status.code(), Some(0), "the winner exits cleanly");
            assert!(copies_of(pm.run(), "svc").is_empty(), "nothing left");
        }
    }
}

/// The config changed while no manager ran: the adopted run of a changed process is
/// restarted with its new definition, a process no longer configured is stopped (its
/// tree gone, its record dropped), an unchanged one keeps its PID.
#[test]
fn changes_made_while_no_manager_ran_are_applied() {
    let entry = |id: &str, args: &[&str]| {
        testexe_process(id, args, "graceful_timeout: 5s\nrestart_policy: on_failure")
    };
    let before = processes_config(&[
        entry("same", &["--run-duration", "0"]),
        entry("changed", &["--run-duration", "0"]),
        entry("gone", &["--run-duration", "0", "--spawn-children", "1"]),
    ]);
    let after = processes_config(&[
        entry("same", &["--run-duration", "0"]),
        entry("changed", &["--run-duration", "0", "--open-fds", "3"]),
    ]);
    let run = TestRun::new("e2e-test-adopt-changed");
    let mut pm = ProcessManager::start_with_args(run, &before, &[]);
    let api = pm.api();
    let same = api.wait_running("same", SHORT);
    let changed = api.wait_running("changed", SHORT);
    api.wait_running("gone", SHORT);
    wait_for("gone's child", SHORT, || {
        copies_of(pm.run(), "gone").len() == 2
    });
    let gone_tree = copies_of(pm.run(), "gone");
    wait_recorded(pm.run(), &["same", "changed", "gone"]);
    let run = pm.kill_leaving_processes();

    let mut pm = ProcessManager::start_with_args(run, &after, &[]);
    let api = pm.api();
    assert_all_gone(
        "the tree of a process no longer configured",
        &gone_tree,
        LONG,
    );
    let p = api.wait_process("changed", "running its new definition", LONG, |p| {
        p["state"] == "running" && p["pid"].as_u64().is_some_and(|p| p != u64::from(changed))
    });
    let new_pid = p["pid"].as_u64().unwrap() as u32;
    assert!(
        cmdline(new_pid).contains("--open-fds 3"),
        "{}",
        cmdline(new_pid)
    );
    assert!(!pid_alive(changed), "the old run of `changed` is gone");
    pm.wait_for_event("the restart's reason", SHORT, |e| {
        e.is_transition("changed", "running", "stopping")
            && e.str("reason")
                .is_some_and(|r| r.contains("definition changed"))
    });
    let p = api.process("same");
    assert_eq!(p["pid"].as_u64(), Some(u64::from(same)), "{p}");
    assert_eq!(p["adopted"], true, "{p}");
    wait_for("gone's record dropped", SHORT, || {
        let s = state_json(pm.run());
        s["processes"].is_object() && s["processes"]["gone"].is_null()
    });
    pm.shutdown_cleanly(LONG);
}

/// An adopted integrated process keeps its port: it is health-checked over gRPC there and
/// stopped through its Shutdown call.
#[test]
fn an_adopted_integrated_process_keeps_its_port() {
    let config = processes_config(&[testexe_process(
        "core",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nport_argument: --port",
    )
    .replace("type: standard_managed", "type: integrated_managed")]);
    let run = TestRun::new("e2e-test-adopt-integrated");
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let p = api.wait_process("core", "healthy", LONG, |p| {
        p["state"] == "running" && p["health"]["status"] == "healthy"
    });
    let pid = p["pid"].as_u64().unwrap();
    wait_recorded(pm.run(), &["core"]);
    let run = pm.kill_leaving_processes();

    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let p = api.wait_process("core", "adopted and healthy over gRPC", LONG, |p| {
        p["state"] == "running" && p["health"]["status"] == "healthy"
    });
    assert_eq!(p["pid"].as_u64(), Some(pid), "{p}");
    assert_eq!(p["health"]["check"], "grpc", "{p}");
    expect_json("stop core", &api.post("/api/v1/processes/core/stop"), 202);
    let out = std::fs::read_to_string(pm.run().output_log("core", "stdout")).unwrap_or_default();
    assert!(out.contains("shutdown via rpc"), "{out}");
    pm.shutdown_cleanly(LONG);
}

/// A tree left by a killed manager that no record accounts for (here: `state.json` lost
/// with it) is killed, not left running beside a fresh copy.
#[test]
fn an_unrecorded_tree_is_not_left_beside_a_fresh_copy() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0", "--spawn-children", "1"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let run = TestRun::new("e2e-test-adopt-stray");
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    api.wait_running("svc", SHORT);
    wait_for("svc's child", SHORT, || {
        copies_of(pm.run(), "svc").len() == 2
    });
    let old_tree = copies_of(pm.run(), "svc");
    wait_recorded(pm.run(), &["svc"]);
    let run = pm.kill_leaving_processes();
    std::fs::remove_file(run.base_dir.join("state.json")).unwrap();

    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    assert_all_gone("the unrecorded tree", &old_tree, SHORT);
    let pid = api.wait_running("svc", SHORT);
    assert!(!old_tree.contains(&pid));
    wait_for("one fresh tree", SHORT, || {
        copies_of(pm.run(), "svc").len() == 2
    });
    pm.wait_for_event("an alert naming svc", SHORT, |e| {
        e.kind == "alert" && e.str("message").is_some_and(|m| m.contains("svc (pid"))
    });
    pm.shutdown_cleanly(LONG);
}

/// `state.json` keeps the journal's `seq`: with the journal files lost, the next manager's
/// events still come after the last one recorded.
#[test]
fn seq_goes_on_when_the_journal_files_are_lost() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let run = TestRun::new("e2e-test-adopt-seq");
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    pm.api().wait_running("svc", SHORT);
    wait_recorded(pm.run(), &["svc"]);
    wait_for("state.json to record a seq", SHORT, || {
        state_json(pm.run())["journal_seq"]
            .as_u64()
            .is_some_and(|s| s >= 3)
    });
    let recorded = state_json(pm.run())["journal_seq"].as_u64().unwrap();
    let run = pm.kill_leaving_processes();
    for entry in std::fs::read_dir(&run.base_dir).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("events.jsonl")
        {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let first = pm.wait_for_event("manager_started", SHORT, |e| e.kind == "manager_started");
    assert!(first.seq > recorded, "{first} after seq {recorded}");
    pm.shutdown_cleanly(LONG);
}

/// The manager killed in the middle of a stop by hand (the process ignores SIGTERM and
/// waits out its graceful timeout): the next manager adopts the run and finishes the stop;
/// the process ends stopped, nothing of it left.
#[test]
fn a_stop_cut_short_by_kill_9_is_finished_by_the_next_manager() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0", "--ignore-sigterm"],
        "graceful_timeout: 3s\nrestart_policy: always",
    );
    let run = TestRun::new("e2e-test-adopt-mid-stop");
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let pid = api.wait_running("svc", SHORT);
    wait_recorded(pm.run(), &["svc"]);
    let stopper = {
        let api = api.clone();
        std::thread::spawn(move || api.try_request("POST", "/api/v1/processes/svc/stop", &[], None))
    };
    api.wait_process("svc", "stopping", SHORT, |p| p["state"] == "stopping");
    wait_for("state.json to say stopped by hand", SHORT, || {
        state_json(pm.run())["processes"]["svc"]["desired"] == "stopped"
    });
    let run = pm.kill_leaving_processes();
    let _ = stopper.join();
    assert!(pid_alive(pid), "SIGTERM is ignored: still there");

    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    pm.wait_for_event("adopted", SHORT, |e| e.kind == "adopted");
    api.wait_process("svc", "stopped", LONG, |p| p["state"] == "stopped");
    assert_all_gone("the adopted run, stopped", &[pid], SHORT);
    assert!(copies_of(pm.run(), "svc").is_empty(), "nothing of svc left");
    pm.shutdown_cleanly(LONG);
}

/// `kill -9` of the manager again and again while a process crash-loops (restarts with no
/// delay): after each new manager takes over there is never more than one copy, and the
/// last shutdown leaves nothing.
#[test]
fn kill_9_during_a_crash_loop_never_leaves_two_copies() {
    let config = single_process_config(
        "loop",
        &["--crash-after", "0.02", "--spawn-children", "1"],
        "graceful_timeout: 2s\nrestart_policy: always\nrestart:\n  retry_delay: 0s\n  \
         max_retries: 1000000\n  window: 1s",
    );
    let mut run = TestRun::new("e2e-test-adopt-crash-loop");
    for round in 1..=5 {
        let mut pm = ProcessManager::start_with_args(run, &config, &[]);
        let seen = pm.events().len();
        pm.wait_for_journal("a few restarts", LONG, |events| {
            (events
                .iter()
                .skip(seen)
                .filter(|e| e.kind == "spawned" || e.kind == "adopted")
                .count()
                >= 3)
                .then_some(())
        });
        run = pm.kill_leaving_processes();
        let mut pm = ProcessManager::start_with_args(run, &config, &[]);
        pm.api()
            .wait_process("loop", "supervised again", LONG, |p| {
                p["state"] == "running" || p["state"] == "failed" || p["state"] == "starting"
            });
        // Whatever the kill interrupted, one run (main process and child) at most.
        let mains: Vec<u32> = copies_of(pm.run(), "loop")
            .into_iter()
            .filter(|&p| !cmdline(p).contains("--run-duration"))
            .collect();
        assert!(
            mains.len() <= 1,
            "round {round}: {} copies: {mains:?}",
            mains.len()
        );
        run = if round == 5 {
            pm.shutdown_cleanly(LONG);
            break;
        } else {
            pm.kill_leaving_processes()
        };
    }
}

/// An adopted run is held to its limits like a spawned one: memory that grows past
/// `max_rss` after the adoption gets the policy (`restart`), from the new manager.
#[test]
fn an_adopted_run_is_held_to_its_limits() {
    let config = single_process_config(
        "grower",
        &["--run-duration", "0", "--memory-growth-mb-per-sec", "6"],
        "graceful_timeout: 2s\nrestart_policy: on_failure\n\
         limits: {memory: {max_rss: 40MiB, policy: restart}}",
    );
    let run = TestRun::new("e2e-test-adopt-limits");
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let pid = pm.api().wait_running("grower", SHORT);
    wait_recorded(pm.run(), &["grower"]);
    let run = pm.kill_leaving_processes();

    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    pm.wait_for_event("adopted", SHORT, |e| e.kind == "adopted");
    let violation = pm.wait_for_event("a memory violation", LONG, |e| {
        e.is_kind("grower", "resource_violation")
    });
    assert_eq!(violation.str("resource"), Some("memory"), "{violation}");
    api.wait_process("grower", "restarted", LONG, |p| {
        p["state"] == "running" && p["pid"].as_u64().is_some_and(|p| p != u64::from(pid))
    });
    assert!(!pid_alive(pid), "the adopted run was stopped for its limit");
    pm.shutdown_cleanly(LONG);
}
