//! Checks shared by several test files, so that the same behaviour written in two config
//! forms is held to exactly the same expectations.

use crate::log_parser::{first_after, scheduled_restarts, ScheduledRestart};
use crate::process_manager::ProcessManager;
use std::time::Duration;

/// For a process that crashes soon after every start, configured with `retry_delay`
/// 200ms and `backoff_rate` 2 (and a budget of more than three restarts): the first three
/// `restart_scheduled` events say 200, 400 and 800 ms, attempts 1, 2 and 3, trigger
/// `exit`; every crash is journalled as an `exited` with a non-zero code; and each delay
/// is really waited out before the next start. Returns the three scheduled restarts.
pub fn check_crash_backoff(pm: &mut ProcessManager, id: &str) -> Vec<ScheduledRestart> {
    let timeout = Duration::from_secs(30);
    pm.wait_for_events("restart_scheduled", 3, timeout, |e| {
        e.is_kind(id, "restart_scheduled")
    });
    let events = pm.events();
    let scheduled: Vec<ScheduledRestart> = scheduled_restarts(&events, id)
        .into_iter()
        .take(3)
        .collect();
    let delays: Vec<u64> = scheduled.iter().map(|s| s.delay_ms).collect();
    let attempts: Vec<u64> = scheduled.iter().map(|s| s.attempt).collect();
    let triggers: Vec<&str> = scheduled.iter().map(|s| s.trigger.as_str()).collect();
    if delays != [200, 400, 800] || attempts != [1, 2, 3] || triggers != ["exit"; 3] {
        panic!(
            "{}",
            pm.failure(&format!(
                "restart_scheduled: delays {delays:?} (expected [200, 400, 800]), attempts \
                 {attempts:?} (expected [1, 2, 3]), triggers {triggers:?} (expected exit)"
            ))
        );
    }
    // Each schedule follows a crash, journalled with its non-zero exit code.
    let mut prev = 0;
    for s in &scheduled {
        let exits: Vec<_> = events
            .iter()
            .filter(|e| e.is_kind(id, "exited") && e.seq > prev && e.seq < s.seq)
            .collect();
        let ok = exits.len() == 1
            && exits[0].i64("code").is_some_and(|c| c != 0)
            && exits[0].i64("signal").is_none();
        if !ok {
            panic!(
                "{}",
                pm.failure(&format!(
                    "expected exactly one `exited` with a non-zero code before restart \
                     attempt {}, found {exits:?}",
                    s.attempt
                ))
            );
        }
        prev = s.seq;
    }
    // The delays are honoured: the start after each schedule comes no sooner.
    let last = scheduled[2].seq;
    pm.wait_for_event("the start after restart attempt 3", timeout, |e| {
        e.seq > last && e.is_transition_to(id, "starting")
    });
    let events = pm.events();
    for s in &scheduled {
        let start = first_after(&events, s.seq, |e| e.is_transition_to(id, "starting"))
            .expect("a start follows every schedule");
        let waited = start.ts_ms - s.ts_ms;
        // Timestamps have millisecond resolution: allow one tick of rounding.
        let expected = s.delay_ms as i64;
        if waited < expected - 2 || waited > expected + 3000 {
            panic!(
                "{}",
                pm.failure(&format!(
                    "restart attempt {} announced a {expected} ms delay but the next start \
                     came {waited} ms later",
                    s.attempt
                ))
            );
        }
        if start.str("from") != Some("failed") {
            panic!(
                "{}",
                pm.failure(&format!("a restart should start from failed: {start}"))
            );
        }
    }
    scheduled
}
