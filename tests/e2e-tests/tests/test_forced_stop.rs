//! A process that ignores SIGTERM is killed once `graceful_timeout` has passed — not
//! sooner, not much later — and the manager still exits 0. `force_shutdown_timeout`
//! bounds the whole shutdown.

use e2e_tests::*;
use std::time::Duration;

/// Starts a testexe that ignores SIGTERM, waiting until it does (its `--pid-file` is
/// written after the signal disposition is set).
fn start_stubborn(test_name: &str, force_shutdown: &str, graceful: &str) -> (ProcessManager, u32) {
    let run = TestRun::new(test_name);
    let ready = run.path("svc.pid");
    let ready_arg = ready.display().to_string();
    let config = format!(
        "process_manager:
  port: 0
  force_shutdown_timeout: {force_shutdown}
managed_processes:
  - id: svc
    type: standard_managed
    management:
      control:
        executable: {{testexe}}
        arguments: {args}
        graceful_timeout: {graceful}
        restart_policy: on_failure
",
        args = yaml_list(&[
            "--run-duration",
            "0",
            "--ignore-sigterm",
            "--pid-file",
            &ready_arg
        ]),
    );
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
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

/// The stopping -> stopped duration of `svc` in ms, after checking the exit was a SIGKILL.
fn forced_stop_ms(pm: &mut ProcessManager) -> i64 {
    let events = pm.events();
    let stopping = events
        .iter()
        .find(|e| e.is_transition("svc", "running", "stopping"))
        .unwrap_or_else(|| panic!("{}", pm.failure("no running -> stopping")));
    let stopped = events
        .iter()
        .find(|e| e.is_transition("svc", "stopping", "stopped"))
        .unwrap_or_else(|| panic!("{}", pm.failure("no stopping -> stopped")));
    let exited = events
        .iter()
        .find(|e| e.is_kind("svc", "exited") && e.seq > stopping.seq && e.seq < stopped.seq)
        .unwrap_or_else(|| panic!("{}", pm.failure("no exited between stopping and stopped")));
    assert_eq!(
        exited.i64("signal"),
        Some(i64::from(libc::SIGKILL)),
        "{exited}"
    );
    assert_eq!(exited.i64("code"), None, "{exited}");
    stopped.ts_ms - stopping.ts_ms
}

#[test]
fn test_forced_stop() {
    let (mut pm, pid) = start_stubborn("e2e-test-forced-stop", "20s", "2s");
    let took = pm.shutdown_cleanly(Duration::from_secs(30));
    assert!(!pid_alive(pid), "svc (pid {pid}) survived the manager");
    let stop_ms = forced_stop_ms(&mut pm);
    assert!(
        (1900..4500).contains(&stop_ms),
        "stopping -> stopped took {stop_ms} ms with graceful_timeout 2s and SIGTERM ignored \
         (expected about 2000 ms)"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "the manager exited {took:?} after SIGTERM, before graceful_timeout could pass"
    );
}

#[test]
fn test_forced_stop_bounded_by_force_shutdown_timeout() {
    // graceful_timeout 60s, but the whole shutdown may take only 2s.
    let (mut pm, pid) = start_stubborn("e2e-test-force-shutdown", "2s", "60s");
    let took = pm.shutdown_cleanly(Duration::from_secs(30));
    assert!(!pid_alive(pid), "svc (pid {pid}) survived the manager");
    let stop_ms = forced_stop_ms(&mut pm);
    assert!(
        stop_ms < 4500,
        "stopping -> stopped took {stop_ms} ms with force_shutdown_timeout 2s"
    );
    assert!(
        took < Duration::from_millis(6000),
        "the manager took {took:?} to exit with force_shutdown_timeout 2s"
    );
}
