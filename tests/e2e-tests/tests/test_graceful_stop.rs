//! SIGTERM to the manager stops a well-behaved process gracefully: the stop signal, a
//! prompt exit, no waiting out `graceful_timeout`, and the manager exits 0.

use e2e_tests::*;
use std::time::Duration;

#[test]
fn graceful_stop() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let mut pm = ProcessManager::start("e2e-test-graceful-stop", &config);
    pm.wait_for_event("svc running", SHORT, |e| {
        e.is_transition_to("svc", "running")
    });
    let pid = pm.wait_for_pid("svc", SHORT);
    assert!(pid_alive(pid), "svc (pid {pid}) is not alive");
    let tag = format!("{}svc", pm.run().tag_prefix());
    assert_eq!(process_tag(pid).as_deref(), Some(tag.as_str()));
    // The process leads its own process group (SPEC §5: signals go to the group).
    let stat = proc_stat(pid).expect("svc has a /proc entry");
    assert_eq!(stat.pgrp, pid, "svc is not its process group's leader");

    pm.shutdown_cleanly(Duration::from_secs(20));

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
