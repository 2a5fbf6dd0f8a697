//! Restart policies and exponential backoff after a process exits by itself.

use e2e_tests::scenarios::check_crash_backoff;
use e2e_tests::*;
use std::time::Duration;

const RESTART: &str = "restart: {retry_delay: 200ms, backoff_rate: 2.0, max_delay: 5s, \
                       reset_after: 30s, max_retries: 10, window: 60s, cooldown: 3s}";

fn control(policy: &str) -> String {
    format!("graceful_timeout: 2s\nrestart_policy: {policy}\n{RESTART}")
}

/// Polls the journal for `period` after `from_ms` (a journal timestamp) and returns the
/// first event matching `unwanted`, if one shows up.
fn unwanted_event_within(
    pm: &ProcessManager,
    from_ms: i64,
    period_ms: i64,
    mut unwanted: impl FnMut(&Event) -> bool,
) -> Option<Event> {
    let remaining = (from_ms + period_ms - unix_ms_now()).max(0) as u64;
    poll_until(Duration::from_millis(remaining), || {
        pm.events().into_iter().find(|e| unwanted(e))
    })
    // One last look covering the whole period.
    .or_else(|| pm.events().into_iter().find(|e| unwanted(e)))
}

#[test]
fn test_health_restart_after_a_crash_with_backoff() {
    let config = single_process_config("svc", &["--crash-after", "0.2"], &control("on_failure"));
    let mut pm = ProcessManager::start("e2e-test-restart-backoff", &config);
    check_crash_backoff(&mut pm, "svc");
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn on_failure_does_not_restart_a_clean_exit() {
    let config = single_process_config("svc", &["--run-duration", "0.3"], &control("on_failure"));
    let mut pm = ProcessManager::start("e2e-test-on-failure-exit-0", &config);
    let stopped = pm.wait_for_event("svc running -> stopped", SHORT, |e| {
        e.is_transition("svc", "running", "stopped")
    });
    let events = pm.events();
    let exited = events
        .iter()
        .rev()
        .find(|e| e.is_kind("svc", "exited") && e.seq < stopped.seq)
        .unwrap_or_else(|| panic!("{}", pm.failure("no exited before running -> stopped")));
    assert_eq!(exited.i64("code"), Some(0), "{exited}");
    let again = unwanted_event_within(&pm, stopped.ts_ms, 2000, |e| {
        e.seq > stopped.seq
            && (e.is_kind("svc", "restart_scheduled") || e.is_transition_to("svc", "starting"))
    });
    if let Some(e) = again {
        panic!(
            "{}",
            pm.failure(&format!("a clean exit under on_failure was restarted: {e}"))
        );
    }
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn always_restarts_a_clean_exit() {
    let config = single_process_config("svc", &["--run-duration", "0.2"], &control("always"));
    let mut pm = ProcessManager::start("e2e-test-always-exit-0", &config);
    let scheduled = pm.wait_for_event("restart_scheduled", SHORT, |e| {
        e.is_kind("svc", "restart_scheduled")
    });
    assert_eq!(scheduled.u64("delay_ms"), Some(200), "{scheduled}");
    assert_eq!(scheduled.u64("attempt"), Some(1), "{scheduled}");
    let events = pm.events();
    let exited = events
        .iter()
        .find(|e| e.is_kind("svc", "exited"))
        .expect("an exit precedes the restart");
    assert_eq!(exited.i64("code"), Some(0), "{exited}");
    let seq = scheduled.seq;
    pm.wait_for_event("the second run", SHORT, |e| {
        e.seq > seq && e.is_transition("svc", "starting", "running")
    });
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn never_leaves_a_crashed_process_failed() {
    let config = single_process_config("svc", &["--crash-after", "0.2"], &control("never"));
    let mut pm = ProcessManager::start("e2e-test-never-restart", &config);
    let failed = pm.wait_for_event("svc running -> failed", SHORT, |e| {
        e.is_transition("svc", "running", "failed")
    });
    let again = unwanted_event_within(&pm, failed.ts_ms, 1500, |e| {
        e.seq > failed.seq
            && (e.is_kind("svc", "restart_scheduled") || e.is_transition_to("svc", "starting"))
    });
    if let Some(e) = again {
        panic!(
            "{}",
            pm.failure(&format!("restart_policy never restarted a crash: {e}"))
        );
    }
    pm.shutdown_cleanly(Duration::from_secs(20));
}
