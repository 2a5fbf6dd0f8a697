//! A process that cannot be spawned fails with the reason, is retried with backoff and
//! counted by the breaker — never a tight restart storm — and the manager keeps running.

use e2e_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn config(executable: &str) -> String {
    format!(
        "process_manager:
  port: 0
  force_shutdown_timeout: 20s
managed_processes:
  - id: svc
    type: standard_managed
    management:
      control:
        executable: {executable}
        arguments: []
        graceful_timeout: 2s
        restart_policy: on_failure
        restart: {{retry_delay: 200ms, backoff_rate: 2.0, max_delay: 5s, reset_after: 30s, max_retries: 10, window: 60s, cooldown: 3s}}
",
        executable = yaml_str(executable)
    )
}

/// Starts a manager on a process whose spawn fails; checks the reason, the backoff and
/// that the manager survives.
fn spawn_failure_is_retried_with_backoff(pm: &mut ProcessManager, reason_contains: &str) {
    let failed = pm.wait_for_event("svc starting -> failed", SHORT, |e| {
        e.is_transition("svc", "starting", "failed")
    });
    let reason = failed.str("reason").unwrap_or_default().to_lowercase();
    assert!(
        reason.contains(reason_contains),
        "the failure reason should say {reason_contains:?}: {failed}"
    );
    let first_start = pm
        .events()
        .into_iter()
        .find(|e| e.is_transition_to("svc", "starting"))
        .expect("a start precedes the failure");

    // Count the attempts in the first 2.9 s: with 200 ms doubling they come at about 0,
    // 0.2, 0.6 and 1.4 s, the fifth at 3.0 s. A storm would show dozens. Waiting for the
    // fifth start covers the whole window.
    let window_end = first_start.ts_ms + 2900;
    pm.wait_for_events("five starts", 5, Duration::from_secs(30), |e| {
        e.is_transition_to("svc", "starting")
    });
    assert!(
        pm.is_running(),
        "{}",
        pm.failure("the manager died on a spawn error")
    );
    let events = pm.events();
    let starts = events
        .iter()
        .filter(|e| e.is_transition_to("svc", "starting") && e.ts_ms < window_end)
        .count();
    assert!(
        (3..=4).contains(&starts),
        "{}",
        pm.failure(&format!(
            "{starts} starts within 2.9 s (expected 3-4 with 200 ms doubling backoff)"
        ))
    );
    let delays: Vec<u64> = scheduled_restarts(&events, "svc")
        .iter()
        .take(3)
        .map(|s| s.delay_ms)
        .collect();
    assert_eq!(
        delays,
        [200, 400, 800],
        "{}",
        pm.failure("spawn failures back off like crashes")
    );
    // Every attempt failed the same way, none got a PID.
    for e in events
        .iter()
        .filter(|e| e.is_transition("svc", "starting", "failed"))
    {
        let reason = e.str("reason").unwrap_or_default().to_lowercase();
        assert!(reason.contains(reason_contains), "{e}");
    }
    assert!(
        !events.iter().any(|e| e.is_transition_to("svc", "running")),
        "a process that cannot be spawned never runs"
    );
    assert!(
        !pm.run().pid_file("svc").exists(),
        "no PID file without a process"
    );
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn missing_executable_fails_with_backoff() {
    let mut pm = ProcessManager::start("e2e-test-spawn-missing", &config("/nonexistent/bin"));
    spawn_failure_is_retried_with_backoff(&mut pm, "not found");
}

#[test]
fn non_executable_file_fails_with_permission_denied() {
    let run = TestRun::new("e2e-test-spawn-noexec");
    let script = run.path("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut pm = ProcessManager::start_with_args(run, &config(&script.display().to_string()), &[]);
    spawn_failure_is_retried_with_backoff(&mut pm, "permission denied");
}
