//! The circuit breaker: more than `max_retries` restarts inside `window` opens it; after
//! `cooldown` exactly one trial start (half-open); a trial that fails opens it again.

use e2e_tests::*;
use std::time::Duration;

const COOLDOWN_MS: i64 = 3000;

#[test]
fn circuit_breaker_opens_and_retries_after_cooldown() {
    let config = single_process_config(
        "svc",
        &["--crash-after", "0.1"],
        "graceful_timeout: 2s\nrestart_policy: on_failure\n\
         restart: {retry_delay: 100ms, backoff_rate: 1.0, max_delay: 5s, reset_after: 30s, \
         max_retries: 3, window: 60s, cooldown: 3s}",
    );
    let mut pm = ProcessManager::start("e2e-test-circuit-breaker", &config);
    let opened = pm.wait_for_event("circuit_opened", Duration::from_secs(30), |e| {
        e.is_kind("svc", "circuit_opened")
    });

    // Exactly max_retries restarts, all with the flat 100 ms delay, then the breaker.
    let events = pm.events();
    let before = &events[..events.iter().position(|e| e.seq == opened.seq).unwrap()];
    let scheduled = scheduled_restarts(before, "svc");
    let delays: Vec<u64> = scheduled.iter().map(|s| s.delay_ms).collect();
    let attempts: Vec<u64> = scheduled.iter().map(|s| s.attempt).collect();
    if delays != [100, 100, 100] || attempts != [1, 2, 3] {
        panic!(
            "{}",
            pm.failure(&format!(
                "before circuit_opened: delays {delays:?} (expected [100, 100, 100]), \
                 attempts {attempts:?} (expected [1, 2, 3])"
            ))
        );
    }
    let exits = before.iter().filter(|e| e.is_kind("svc", "exited")).count();
    assert_eq!(exits, 4, "one first run and three restarts, each crashed");
    assert_eq!(opened.u64("restarts"), Some(3), "{opened}");
    assert_eq!(opened.u64("window_ms"), Some(60_000), "{opened}");
    assert_eq!(
        opened.u64("cooldown_ms"),
        Some(COOLDOWN_MS as u64),
        "{opened}"
    );

    // During the cooldown nothing runs: no process of this run is alive while the
    // breaker is open (checked live, not only in the journal).
    let quiet_until = opened.ts_ms + COOLDOWN_MS - 500;
    let remaining = Duration::from_millis((quiet_until - unix_ms_now()).max(0) as u64);
    let started_early = poll_until(remaining, || {
        let alive = pm.tagged_processes();
        (!alive.is_empty()).then_some(alive)
    });
    if let Some(pids) = started_early {
        panic!(
            "{}",
            pm.failure(&format!(
                "processes {pids:?} run during the breaker's cooldown"
            ))
        );
    }

    // After the cooldown: one trial start, it crashes, the breaker opens again.
    let first_open = opened.seq;
    let reopened = pm.wait_for_event("the second circuit_opened", Duration::from_secs(30), |e| {
        e.seq > first_open && e.is_kind("svc", "circuit_opened")
    });
    let events = pm.events();
    let between: Vec<&Event> = events
        .iter()
        .filter(|e| e.is_for("svc") && e.seq > opened.seq && e.seq < reopened.seq)
        .collect();
    let starts: Vec<&&Event> = between
        .iter()
        .filter(|e| e.is_transition_to("svc", "starting"))
        .collect();
    assert_eq!(
        starts.len(),
        1,
        "exactly one trial start between the two openings, got:\n{}",
        log_parser::format_events(between.iter().copied())
    );
    let trial = starts[0];
    assert!(
        matches!(trial.str("from"), Some("failed" | "stopped")),
        "the trial start comes from failed (or stopped): {trial}"
    );
    let waited = trial.ts_ms - opened.ts_ms;
    assert!(
        (COOLDOWN_MS - 100..COOLDOWN_MS + 3000).contains(&waited),
        "the trial start came {waited} ms after the breaker opened (cooldown {COOLDOWN_MS} ms):\n{opened}\n{trial}"
    );
    assert!(
        !between.iter().any(|e| e.kind == "restart_scheduled"),
        "a failed trial reopens the breaker without scheduling restarts:\n{}",
        log_parser::format_events(between.iter().copied())
    );
    assert!(
        between.iter().any(|e| e.kind == "exited"),
        "the trial run's exit is journalled"
    );
    assert!(
        !between.iter().any(|e| e.kind == "circuit_closed"),
        "a trial that crashes at once must not close the breaker"
    );
    pm.shutdown_cleanly(Duration::from_secs(20));
}
