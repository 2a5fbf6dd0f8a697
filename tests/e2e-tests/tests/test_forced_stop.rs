//! A process that ignores SIGTERM is killed once `graceful_timeout` has passed — not
//! sooner, not much later — and the manager still exits 0.

use e2e_tests::*;
use std::time::Duration;

#[test]
fn forced_stop() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0", "--ignore-sigterm"],
        "graceful_timeout: 2s\nrestart_policy: on_failure",
    );
    let mut pm = ProcessManager::start("e2e-test-forced-stop", &config);
    pm.wait_for_event("svc running", SHORT, |e| {
        e.is_transition_to("svc", "running")
    });
    let pid = pm.wait_for_pid("svc", SHORT);
    assert!(pid_alive(pid), "svc (pid {pid}) is not alive");

    let took = pm.shutdown_cleanly(Duration::from_secs(30));
    assert!(!pid_alive(pid), "svc (pid {pid}) survived the manager");

    let events = pm.events();
    let stopping = events
        .iter()
        .find(|e| e.is_transition("svc", "running", "stopping"))
        .unwrap_or_else(|| panic!("{}", pm.failure("no running -> stopping")));
    let stopped = events
        .iter()
        .find(|e| e.is_transition("svc", "stopping", "stopped"))
        .unwrap_or_else(|| panic!("{}", pm.failure("no stopping -> stopped")));
    let stop_ms = stopped.ts_ms - stopping.ts_ms;
    assert!(
        (1900..4500).contains(&stop_ms),
        "stopping -> stopped took {stop_ms} ms with graceful_timeout 2s and SIGTERM ignored \
         (expected about 2000 ms):\n{stopping}\n{stopped}"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "the manager exited {took:?} after SIGTERM, before graceful_timeout could pass"
    );
    // The end came from SIGKILL.
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
}
