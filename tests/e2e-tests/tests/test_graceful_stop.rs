//! SIGTERM (or SIGINT) to the manager stops a well-behaved process gracefully: the stop
//! signal, a prompt exit, no waiting out `graceful_timeout`, and the manager exits 0.

use e2e_tests::*;
use std::time::Duration;

/// Starts one testexe that runs forever and waits until it is ready: its `--pid-file` is
/// written only after its signal handlers are installed, so a stop cannot race them.
fn start_forever(test_name: &str, extra_args: &[&str]) -> (ProcessManager, u32) {
    let run = TestRun::new(test_name);
    let ready = run.path("svc.pid");
    let ready_arg = ready.display().to_string();
    let config = single_process_config(
        "svc",
        &["--run-duration", "0", "--pid-file", &ready_arg],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let mut pm = ProcessManager::start_with_args(run, &config, extra_args);
    pm.wait_for_event("svc running", SHORT, |e| {
        e.is_transition_to("svc", "running")
    });
    let pid = pm.wait_for_pid("svc", SHORT);
    assert_eq!(
        wait_for_pid_file(&ready, SHORT),
        pid,
        "testexe's own PID file"
    );
    (pm, pid)
}

/// Checks the journal of a graceful stop of `svc`: prompt, and an exit with code 0.
fn assert_stopped_gracefully(pm: &mut ProcessManager, pid: u32) {
    assert!(!pid_alive(pid), "svc (pid {pid}) survived the manager");
    assert!(
        !pm.run().pid_file("svc").exists(),
        "pids/svc.pid is left behind after the stop"
    );
    let events = pm.events();
    let stopping = events
        .iter()
        .find(|e| e.is_transition("svc", "running", "stopping"))
        .unwrap_or_else(|| panic!("{}", pm.failure("no running -> stopping")));
    let stopped = events
        .iter()
        .find(|e| e.is_transition("svc", "stopping", "stopped"))
        .unwrap_or_else(|| panic!("{}", pm.failure("no stopping -> stopped")));
    let took = stopped.ts_ms - stopping.ts_ms;
    assert!(
        took < 2000,
        "a process that exits on SIGTERM took {took} ms to stop (graceful_timeout 5s):\n{stopping}\n{stopped}"
    );
    // testexe exits 0 on SIGTERM; the journal records that exit, not a kill.
    let exited = events
        .iter()
        .find(|e| e.is_kind("svc", "exited") && e.seq > stopping.seq && e.seq < stopped.seq)
        .unwrap_or_else(|| panic!("{}", pm.failure("no exited between stopping and stopped")));
    assert_eq!(exited.i64("code"), Some(0), "{exited}");
    assert_eq!(exited.i64("signal"), None, "{exited}");
    // The manager brackets its life in the journal.
    assert_eq!(
        events.first().map(|e| e.kind.as_str()),
        Some("manager_started")
    );
    assert_eq!(
        events.last().map(|e| e.kind.as_str()),
        Some("manager_stopped")
    );
}

#[test]
fn test_graceful_stop() {
    let (mut pm, pid) = start_forever("e2e-test-graceful-stop", &[]);
    assert!(pid_alive(pid), "svc (pid {pid}) is not alive");
    let tag = format!("{}svc", pm.run().tag_prefix());
    assert_eq!(process_tag(pid).as_deref(), Some(tag.as_str()));
    // The process leads its own process group (SPEC §5: signals go to the group).
    let stat = proc_stat(pid).expect("svc has a /proc entry");
    assert_eq!(stat.pgrp, pid, "svc is not its process group's leader");

    pm.shutdown_cleanly(Duration::from_secs(20));
    assert_stopped_gracefully(&mut pm, pid);
}

#[test]
fn test_graceful_stop_on_sigint() {
    let (mut pm, pid) = start_forever("e2e-test-graceful-sigint", &[]);
    pm.signal(libc::SIGINT);
    let status = pm.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit after SIGINT: {status}");
    assert!(
        pm.tagged_processes().is_empty(),
        "processes outlived the manager"
    );
    pm.assert_journal_consistent();
    assert_stopped_gracefully(&mut pm, pid);
}

#[test]
fn test_graceful_stop_after_run_duration() {
    let (mut pm, pid) = start_forever("e2e-test-run-duration", &["--run-duration", "1"]);
    // No signal: the manager ends by itself after about a second.
    let status = pm.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after --run-duration: {status}"
    );
    assert!(
        pm.uptime() >= Duration::from_millis(900),
        "--run-duration 1 ended after {:?}",
        pm.uptime()
    );
    assert!(
        pm.tagged_processes().is_empty(),
        "processes outlived the manager"
    );
    pm.assert_journal_consistent();
    assert_stopped_gracefully(&mut pm, pid);
}

/// SIGTERM as soon as the first process has been spawned: the manager must already
/// handle it (stop everything, exit 0) — a process it has started must never be orphaned
/// by a signal arriving a moment too early. Repeated, as the moment is short.
#[test]
fn test_graceful_stop_right_after_the_first_spawn() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    for attempt in 1..=30 {
        let mut pm = ProcessManager::start("e2e-test-early-sigterm", &config);
        let pid_file = pm.run().pid_file("svc");
        // pids/svc.pid is written right after the spawn: the earliest outside sign.
        poll_every(Duration::from_millis(1), SHORT, || {
            assertions::read_pid_file(&pid_file)
        })
        .unwrap_or_else(|| panic!("{}", pm.failure("pids/svc.pid never appeared")));
        pm.signal(libc::SIGTERM);
        let status = pm.wait_exit(Duration::from_secs(20));
        if status.code() != Some(0) {
            panic!(
                "{}",
                pm.failure(&format!(
                    "attempt {attempt}: SIGTERM right after the first spawn: the manager \
                     exited with {} (expected code 0 after stopping svc)",
                    describe_exit(status)
                ))
            );
        }
        let left = pm.tagged_processes();
        assert!(left.is_empty(), "attempt {attempt}: orphans {left:?}");
    }
}
