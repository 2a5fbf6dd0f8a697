//! The event journal through the API (SPEC §7): followers get new events as server-sent
//! events in `seq` order, and `seq` continues without a gap across a manager restart.

use e2e_tests::*;
use std::sync::mpsc;
use std::time::Duration;

const STOP_TIMEOUT: Duration = Duration::from_secs(20);

fn forever() -> String {
    single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    )
}

/// Asserts `events` are consecutive (`seq` + 1 each) and that svc's stop appears as
/// running -> stopping then stopping -> stopped.
fn assert_saw_the_stop(who: &str, events: &[Event]) {
    assert!(
        events.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "{who}: events not consecutive:\n{}",
        log_parser::format_events(events)
    );
    let stopping = events
        .iter()
        .position(|e| e.is_transition("svc", "running", "stopping"));
    let stopped = events
        .iter()
        .position(|e| e.is_transition("svc", "stopping", "stopped"));
    assert!(
        matches!((stopping, stopped), (Some(a), Some(b)) if a < b),
        "{who}: expected running->stopping then stopping->stopped:\n{}",
        log_parser::format_events(events)
    );
}

#[test]
fn followers_see_a_stop_in_seq_order() {
    let mut pm = ProcessManager::start("e2e-test-api-follow", &forever());
    let api = pm.api();
    api.wait_running("svc", SHORT);

    // Follower A: the raw stream; subscribed once the head has arrived.
    let mut raw = EventFollower::start(&api);

    // Follower B: the typed client's follow_events, on the runtime.
    let (tx, rx) = mpsc::channel::<Event>();
    let client = api.client().clone();
    let task = runtime().spawn(async move {
        client
            .follow_events(|e| {
                let line = serde_json::to_string(&e).expect("an event serializes");
                let parsed = Event::parse(&line).expect("a documented event");
                tx.send(parsed).is_ok()
            })
            .await
    });
    // follow_events gives no signal once subscribed: reload the unchanged config (which
    // journals a config_reloaded) until B has seen an event.
    let mut typed = Vec::new();
    let first = poll_every(Duration::from_millis(250), SHORT, || {
        let resp = api.post("/api/v1/reload");
        assert_eq!(
            resp.status,
            200,
            "reload of the unchanged config: {}",
            resp.text()
        );
        let e = rx.try_recv().ok()?;
        typed.push(e.clone());
        Some(e)
    })
    .unwrap_or_else(|| panic!("follow_events received nothing within {SHORT:?}"));
    assert_eq!(first.kind, "config_reloaded", "{first}");

    let body = api.act("svc", "stop");
    assert_eq!(body["process"]["state"], "stopped", "{body}");

    raw.wait_for("svc stopping -> stopped", SHORT, |e| {
        e.is_transition("svc", "stopping", "stopped")
    });
    let a = raw.received().to_vec();
    assert_saw_the_stop("EventFollower (raw SSE)", &a);
    let journal = pm.events();
    let first_seq = a[0].seq;
    assert_eq!(
        a[..],
        journal[(first_seq - 1) as usize..(first_seq - 1) as usize + a.len()],
        "the SSE events differ from events.jsonl"
    );

    let deadline = std::time::Instant::now() + SHORT;
    while !typed
        .iter()
        .any(|e| e.is_transition("svc", "stopping", "stopped"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => typed.push(e),
            Err(_) => panic!(
                "follow_events: no stopping -> stopped within {SHORT:?}:\n{}",
                log_parser::format_events(&typed)
            ),
        }
    }
    assert_saw_the_stop("ApiClient::follow_events", &typed);
    task.abort();
    pm.shutdown_cleanly(STOP_TIMEOUT);
}

#[test]
fn seq_continues_across_a_manager_restart() {
    let run = TestRun::new("e2e-test-api-seq-restart");
    let mut pm = ProcessManager::start_with_args(run.clone(), &forever(), &[]);
    let api = pm.api();
    api.wait_running("svc", SHORT);
    let before_stop = api.events();
    pm.shutdown_cleanly(STOP_TIMEOUT);
    let old = pm.events();
    drop(pm);
    assert!(old.len() > before_stop.len(), "the shutdown was journalled");
    let last = old.last().expect("a journal").seq;
    assert_eq!(old.last().unwrap().kind, "manager_stopped");

    // Again on the same base directory.
    let mut pm = ProcessManager::start_with_args(run, &forever(), &[]);
    let api = pm.api();
    api.wait_running("svc", SHORT);
    let events = api.events();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "seq over both manager runs:\n{}",
        log_parser::format_events(&events)
    );
    let first_new = events
        .iter()
        .find(|e| e.seq > last)
        .unwrap_or_else(|| panic!("nothing journalled by the second run"));
    assert_eq!(first_new.seq, last + 1, "{first_new}");
    assert_eq!(first_new.kind, "manager_started", "{first_new}");
    assert_eq!(
        events[..old.len()],
        old[..],
        "the first run's events changed in the journal"
    );

    // A follower of the second run continues the same numbering.
    let mut follower = EventFollower::start(&api);
    api.act("svc", "stop");
    let stopped = follower.wait_for("svc stopped", SHORT, |e| {
        e.is_transition("svc", "stopping", "stopped")
    });
    assert!(stopped.seq > events.last().unwrap().seq, "{stopped}");
    pm.shutdown_cleanly(STOP_TIMEOUT);
}

/// SPEC §5: "A process stopped by hand stays stopped — across restarts of the manager
/// too." The mark lives in `state.json`; a start by hand clears it again.
#[test]
fn a_process_stopped_through_the_api_stays_stopped_across_a_manager_restart() {
    let run = TestRun::new("e2e-test-api-stopped-stays");
    let mut pm = ProcessManager::start_with_args(run.clone(), &forever(), &[]);
    let api = pm.api();
    api.wait_running("svc", SHORT);
    api.act("svc", "stop");
    pm.shutdown_cleanly(STOP_TIMEOUT);
    drop(pm);

    let mut pm = ProcessManager::start_with_args(run.clone(), &forever(), &[]);
    let api = pm.api();
    let p = api.process("svc");
    assert_eq!(
        p["state"], "stopped",
        "stopped by hand, then a manager restart: {p}"
    );
    assert_eq!(tree_of(&pm, "svc"), Vec::<u32>::new());
    api.act("svc", "start");
    api.wait_running("svc", SHORT);
    pm.shutdown_cleanly(STOP_TIMEOUT);
    drop(pm);

    // Started by hand again: the next manager starts it as usual.
    let mut pm = ProcessManager::start_with_args(run, &forever(), &[]);
    pm.api().wait_running("svc", SHORT);
    pm.shutdown_cleanly(STOP_TIMEOUT);
}
