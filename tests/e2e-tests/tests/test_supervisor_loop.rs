//! The supervisor of each process is an event loop that never blocks (issue 6): while a
//! process takes its time to stop, its status still answers, further commands join or
//! override the stop in progress (a forced stop ends it at once), a reload never runs two
//! instances of one process, and a stop returns only when nothing of the tree is left —
//! even a tree that keeps forking children into sessions of their own. A child gets only
//! stdin, stdout and stderr of the manager's descriptors.
//!
//! Every wait polls with a deadline; the only fixed-length waits are observations that
//! something does *not* happen (a call that must stay pending), bounded and named so.

use e2e_tests::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A `managed_processes` entry: testexe ignoring SIGTERM, running forever, writing
/// `<run>/<id>.ready` once its signal disposition is set, with `args` added.
fn stubborn(run: &TestRun, id: &str, graceful: &str, policy: &str, args: &[&str]) -> String {
    let ready = ready_path(run, id).display().to_string();
    let mut all = vec![
        "--run-duration",
        "0",
        "--ignore-sigterm",
        "--pid-file",
        ready.as_str(),
    ];
    all.extend_from_slice(args);
    testexe_process(
        id,
        &all,
        &format!("graceful_timeout: {graceful}\nrestart_policy: {policy}"),
    )
}

fn ready_path(run: &TestRun, id: &str) -> std::path::PathBuf {
    run.path(&format!("{id}.ready"))
}

/// Waits until `id` runs and its testexe is ready (signal disposition set); its PID.
fn wait_ready(pm: &ProcessManager, api: &Api, id: &str) -> u32 {
    let pid = api.wait_running(id, SHORT);
    let path = ready_path(pm.run(), id);
    wait_for(&format!("{id} (pid {pid}) to be ready"), SHORT, || {
        assertions::read_pid_file(&path) == Some(pid)
    });
    pid
}

/// The exact owner tag of process `id` of this run.
fn tag_of(pm: &ProcessManager, id: &str) -> String {
    format!("{}{id}", pm.run().tag_prefix())
}

/// What one request running on its own thread came back with.
#[derive(Debug)]
struct Outcome {
    what: String,
    /// `None`: no answer at all (transport error or timeout).
    status: Option<u16>,
    body: String,
    returned_at: Instant,
    /// Which of the watched PIDs were alive the moment the answer arrived.
    alive_at_return: Vec<u32>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Sends `method path` on a thread of its own; the outcome records which of `watch` were
/// alive when the answer came.
fn in_background(api: &Api, method: &str, path: &str, watch: Vec<u32>) -> JoinHandle<Outcome> {
    let api = api.clone();
    let (method, path) = (method.to_owned(), path.to_owned());
    std::thread::spawn(move || {
        let resp = api.try_request(&method, &path, &[], None);
        let returned_at = Instant::now();
        let alive_at_return = watch.iter().copied().filter(|&p| pid_alive(p)).collect();
        let (status, body) = match resp {
            Ok(r) => (Some(r.status), r.text()),
            Err(e) => (None, e.to_string()),
        };
        Outcome {
            what: format!("{method} {path}"),
            status,
            body,
            returned_at,
            alive_at_return,
        }
    })
}

fn join(handle: JoinHandle<Outcome>) -> Outcome {
    handle.join().expect("the request thread panicked")
}

/// `GET /api/v1/processes/{id}` and how long it took to answer.
fn timed_status(api: &Api, id: &str) -> (Value, Duration) {
    let t = Instant::now();
    let resp = api.get(&format!("/api/v1/processes/{id}"));
    let took = t.elapsed();
    (
        expect_json(&format!("GET /api/v1/processes/{id}"), &resp, 200),
        took,
    )
}

/// The `processes.<id>.stopped_by_hand` mark of `<base>/state.json`, read leniently (the
/// file may gain fields; an absent file, process or mark is `false`).
fn stopped_by_hand(run: &TestRun, id: &str) -> bool {
    let path = run.base_dir.join("state.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return false;
    };
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display()));
    v["processes"][id]["stopped_by_hand"]
        .as_bool()
        .unwrap_or(false)
}

/// The descriptors `pid` holds open, from `/proc/<pid>/fd`.
fn open_fds(pid: u32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Watches `/proc` on a thread of its own, every ~20 ms, for two main instances of one
/// process at once: processes carrying exactly `tag` whose parent is the manager.
struct InstanceSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(usize, Vec<String>)>,
}

impl InstanceSampler {
    fn start(tag: String, manager_pid: u32) -> InstanceSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = 0;
            let mut doubles = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let mains: Vec<u32> = tagged_processes(&tag)
                    .into_iter()
                    .filter(|&p| process_tag(p).as_deref() == Some(tag.as_str()))
                    .filter(|&p| proc_stat(p).is_some_and(|s| s.ppid == manager_pid))
                    .collect();
                samples += 1;
                if mains.len() > 1 {
                    let who: Vec<String> = mains
                        .iter()
                        .map(|&p| format!("pid {p}: {}", cmdline(p)))
                        .collect();
                    doubles.push(format!("{} at once: {}", mains.len(), who.join("; ")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (samples, doubles)
        });
        InstanceSampler { stop, handle }
    }

    /// Stops sampling; the number of samples and every moment two instances ran.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the sampler panicked")
    }
}

/// A status call answers at once while a stop takes its time; a second stop joins the
/// first (both answer only when the tree is gone); a forced stop ends it at once.
#[test]
fn status_answers_during_a_graceful_stop() {
    let run = TestRun::new("e2e-test-loop-status-during-stop");
    let config = processes_config(&[stubborn(&run, "svc", "10s", "on_failure", &[])]);
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let pid = wait_ready(&pm, &api, "svc");

    let first = in_background(&api, "POST", "/api/v1/processes/svc/stop", vec![pid]);
    let (status, _) = wait_until("svc to show `stopping`", SHORT, || {
        let (status, took) = timed_status(&api, "svc");
        assert!(
            took < Duration::from_secs(1),
            "GET took {took:?} while a stop was under way"
        );
        (status["state"] == "stopping").then_some((status, took))
    });
    // A PID shown while stopping is the one being stopped.
    assert!(
        status["pid"].is_null() || status["pid"].as_u64() == Some(u64::from(pid)),
        "{status}"
    );
    for _ in 0..5 {
        let (status, took) = timed_status(&api, "svc");
        assert!(
            took < Duration::from_secs(1),
            "GET took {took:?} during the graceful stop"
        );
        assert_eq!(status["state"], "stopping", "{status}");
    }

    let second = in_background(&api, "POST", "/api/v1/processes/svc/stop", vec![pid]);
    // An observation, not a synchronisation: for a second, while the TERM-ignoring
    // process lives, neither stop may answer.
    let early = poll_until(Duration::from_secs(1), || {
        (first.is_finished() || second.is_finished()).then_some(())
    });
    assert!(
        early.is_none(),
        "a stop answered while svc (pid {pid}, ignoring SIGTERM, graceful_timeout 10s) lives"
    );
    assert!(pid_alive(pid), "svc died before its graceful timeout");

    let forced_at = Instant::now();
    let force = in_background(
        &api,
        "POST",
        "/api/v1/processes/svc/stop?force=true",
        vec![pid],
    );
    let outcomes = [join(force), join(first), join(second)];
    for o in &outcomes {
        let after = o.returned_at.duration_since(forced_at);
        if !o.ok() || !o.alive_at_return.is_empty() || after > Duration::from_millis(2500) {
            panic!(
                "{}",
                pm.failure(&format!(
                    "{} answered {:?} {:?} {after:?} after the forced stop (expected 2xx within \
                     ~2 s, long before graceful_timeout 10s), with {:?} still alive",
                    o.what, o.status, o.body, o.alive_at_return
                ))
            );
        }
    }
    assert!(!pid_alive(pid));
    let status = api.process("svc");
    assert_eq!(status["state"], "stopped", "{status}");
    let exited = pm.wait_for_event("svc's exit", SHORT, |e| e.is_kind("svc", "exited"));
    assert_eq!(
        exited.i64("signal"),
        Some(i64::from(libc::SIGKILL)),
        "{exited}"
    );
    pm.assert_state_chain("svc");
    pm.shutdown_cleanly(EXIT_TIMEOUT);
}

/// `stop ID --force` ends a SIGTERM-ignoring process at once.
#[test]
fn forced_stop_from_the_cli() {
    let run = TestRun::new("e2e-test-loop-cli-force");
    let config = processes_config(&[stubborn(&run, "svc", "10s", "on_failure", &[])]);
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let pid = wait_ready(&pm, &api, "svc");
    let out = pm.cli(&["stop", "svc", "--force"]);
    out.expect_success();
    assert!(
        out.took < Duration::from_secs(4),
        "stop --force took {:?} (graceful_timeout is 10s): {out}",
        out.took
    );
    assert!(!pid_alive(pid), "svc (pid {pid}) outlived stop --force");
    assert_eq!(api.process("svc")["state"], "stopped");
    pm.assert_state_chain("svc");
    pm.shutdown_cleanly(EXIT_TIMEOUT);
}

/// When the main process exits and a SIGTERM-ignoring grandchild stays, the clean-up
/// (graceful_timeout, then SIGKILL) is visible: status never reports the dead main
/// process as `running` meanwhile.
#[test]
fn tree_cleanup_after_exit_is_visible() {
    let run = TestRun::new("e2e-test-loop-cleanup-visible");
    let ready = ready_path(&run, "svc").display().to_string();
    // The main exits (code 3) after 1.5 s; its child ignores SIGTERM and stays.
    let config = processes_config(&[testexe_process(
        "svc",
        &[
            "--run-duration",
            "1.5",
            "--exit-code",
            "3",
            "--ignore-sigterm",
            "--spawn-children",
            "1",
            "--pid-file",
            &ready,
        ],
        "graceful_timeout: 3s\nrestart_policy: never",
    )]);
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let main = wait_ready(&pm, &api, "svc");
    let child_file = std::path::PathBuf::from(format!("{ready}.child0"));
    let child = wait_for_pid_file(&child_file, SHORT);

    // A sample is wrong when, more than GRACE after the main was seen dead, status still
    // says `running` with its PID. GRACE is for the manager to hear of the exit at all.
    const GRACE: Duration = Duration::from_millis(1000);
    let mut dead_since: Option<Instant> = None;
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    let done = poll_every(Duration::from_millis(50), Duration::from_secs(30), || {
        // Liveness first, then status: a status taken after a death was seen is late.
        if dead_since.is_none() && !pid_alive(main) {
            dead_since = Some(Instant::now());
        }
        let child_alive = pid_alive(child);
        let (status, _) = timed_status(&api, "svc");
        let state = status["state"].as_str().unwrap_or("?").to_owned();
        let reported = status["pid"].as_u64();
        if let Some(since) = dead_since {
            if since.elapsed() > GRACE && state == "running" && reported == Some(u64::from(main)) {
                wrong.push(format!(
                    "{:?} after the main died: {status}",
                    since.elapsed()
                ));
            }
        }
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        (dead_since.is_some() && !child_alive && state != "running" && state != "stopping")
            .then_some(())
    });
    if done.is_none() {
        panic!(
            "{}",
            pm.failure(&format!(
                "the grandchild (pid {child}) or the state did not settle; states seen: {seen:?}"
            ))
        );
    }
    if !wrong.is_empty() {
        panic!(
            "{}",
            pm.failure(&format!(
                "status showed the dead main process (pid {main}) as running during the \
                 clean-up of its tree ({} samples), e.g. {}; states seen: {seen:?}",
                wrong.len(),
                wrong[0]
            ))
        );
    }
    assert!(tree_of(&pm, "svc").is_empty(), "svc's tree outlived it");
    pm.assert_state_chain("svc");
    pm.shutdown_cleanly(EXIT_TIMEOUT);
}

/// A reload that changes a process stops the old instance (graceful, TERM ignored) before
/// the new one starts — and start, restart and stop requests fired at it meanwhile never
/// make two instances run at once; a stop answers only when the old tree is gone; the
/// transitions are legal and say they come from the reload.
#[test]
fn reload_never_runs_two_instances() {
    let run = TestRun::new("e2e-test-loop-reload-one-instance");
    let config = |every: &str| {
        processes_config(&[stubborn(
            &run,
            "svc",
            "3s",
            "on_failure",
            &["--print-every", every],
        )])
    };
    let mut pm = ProcessManager::start_with_args(run.clone(), &config("1000"), &[]);
    let api = pm.api();
    let old = wait_ready(&pm, &api, "svc");
    let sampler = InstanceSampler::start(tag_of(&pm, "svc"), pm.pid());

    run.write_config(&config("2000"));
    let reload_seq = pm.events().last().map_or(0, |e| e.seq);
    let reload = in_background(&api, "POST", "/api/v1/reload", vec![old]);
    pm.wait_for_event("the old instance's graceful stop", SHORT, |e| {
        e.seq > reload_seq && e.is_transition("svc", "running", "stopping")
    });
    assert!(
        pid_alive(old),
        "the old instance died before graceful_timeout"
    );
    let calls: Vec<JoinHandle<Outcome>> = ["start", "restart", "stop"]
        .iter()
        .map(|a| {
            in_background(
                &api,
                "POST",
                &format!("/api/v1/processes/svc/{a}"),
                vec![old],
            )
        })
        .collect();
    let reload = join(reload);
    let outcomes: Vec<Outcome> = calls.into_iter().map(join).collect();
    // Every problem is collected and reported together: this test is a map of what a
    // supervisor still gets wrong, not only of the first thing.
    let mut problems = Vec::new();
    if !reload.ok() {
        problems.push(format!("the reload answered {reload:?}"));
    }
    for o in &outcomes {
        // 409 is an honest answer to a start or restart that cannot be done now.
        if !(o.ok() || o.status == Some(409)) {
            problems.push(format!("{} during the reload: {o:?}", o.what));
        }
        if o.what.ends_with("/stop") && o.ok() && !o.alive_at_return.is_empty() {
            problems.push(format!(
                "the stop answered while the old instance (pid {old}) was alive"
            ));
        }
    }
    // Settle on the new definition.
    let started = api.post("/api/v1/processes/svc/start");
    if !matches!(started.status, 202 | 409) {
        problems.push(format!(
            "the final start answered {}: {}",
            started.status,
            started.text()
        ));
    }
    let new = poll_until(SHORT, || {
        let s = api.process("svc");
        let pid = s["pid"].as_u64()? as u32;
        (s["state"] == "running" && pid_alive(pid)).then_some(pid)
    });
    match new {
        None => problems.push("svc did not run again after the reload".into()),
        Some(new) if !cmdline(new).contains("2000") => {
            problems.push(format!("svc runs the old definition: {}", cmdline(new)))
        }
        Some(_) => {}
    }
    if pid_alive(old) {
        problems.push(format!("the old instance (pid {old}) still runs"));
    }
    let (samples, doubles) = sampler.finish();
    if !doubles.is_empty() {
        problems.push(format!(
            "two instances of svc ran at once in {} of {samples} samples, e.g. {}",
            doubles.len(),
            doubles[0]
        ));
    }
    let events = pm.events();
    if let Err(e) = check_state_chain(&events, "svc") {
        problems.push(format!("illegal transitions: {e}"));
    }
    let chain = state_changes(&events, "svc");
    let stopping = chain
        .iter()
        .find(|e| e.seq > reload_seq && e.str("to") == Some("stopping"));
    let stopped = stopping.and_then(|stopping| {
        chain
            .iter()
            .find(|e| e.seq > stopping.seq && e.str("to") == Some("stopped"))
    });
    for e in stopping.into_iter().chain(stopped) {
        let reason = e.str("reason").unwrap_or_default();
        if !reason.contains("reload")
            || reason.contains("shutting down")
            || reason.contains("by request")
        {
            problems.push(format!(
                "a transition of the reload gives the reason {reason:?} (expected one naming \
                 the reload): {e}"
            ));
        }
    }
    if !problems.is_empty() {
        panic!(
            "{}",
            pm.failure(&format!(
                "reloading a process while it is commanded:\n- {}",
                problems.join("\n- ")
            ))
        );
    }
    pm.shutdown_cleanly(EXIT_TIMEOUT);
}

/// A process removed by a reload is listed as `stopping` until its tree is gone, then
/// leaves the list.
#[test]
fn removed_process_stays_visible_until_gone() {
    let run = TestRun::new("e2e-test-loop-removed-visible");
    let keep = testexe_process(
        "keep",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let gone = stubborn(&run, "gone", "3s", "on_failure", &[]);
    let mut pm =
        ProcessManager::start_with_args(run.clone(), &processes_config(&[keep.clone(), gone]), &[]);
    let api = pm.api();
    let keep_pid = api.wait_running("keep", SHORT);
    let gone_pid = wait_ready(&pm, &api, "gone");

    run.write_config(&processes_config(&[keep]));
    let reload = in_background(&api, "POST", "/api/v1/reload", vec![gone_pid]);
    let mut states = Vec::new();
    let mut wrong = Vec::new();
    let settled = poll_every(Duration::from_millis(50), Duration::from_secs(30), || {
        // The list first, then liveness: a process alive after the list was taken was
        // alive when it was taken.
        let list = api.processes();
        let alive = pid_alive(gone_pid);
        let state = list
            .iter()
            .find(|p| p["id"] == "gone")
            .map(|p| p["state"].as_str().unwrap_or("?").to_owned());
        match (&state, alive) {
            (None, true) => wrong.push("absent from the list while its process lives".into()),
            (Some(s), true) if s == "running" && states.iter().any(|s| s == "stopping") => {
                wrong.push("running again after stopping".into())
            }
            (Some(s), true) if s != "running" && s != "stopping" => {
                wrong.push(format!("listed as {s} while its process lives"))
            }
            _ => {}
        }
        let label = state.clone().unwrap_or_else(|| "(absent)".into());
        if states.last() != Some(&label) {
            states.push(label);
        }
        (!alive && state.is_none() && reload.is_finished()).then_some(())
    });
    if settled.is_none() || !wrong.is_empty() || !states.iter().any(|s| s == "stopping") {
        panic!(
            "{}",
            pm.failure(&format!(
                "the removed process's listing went {states:?} (expected running, stopping, \
                 absent); problems: {wrong:?}"
            ))
        );
    }
    assert!(join(reload).ok());
    assert!(
        tree_of(&pm, "gone").is_empty(),
        "a process tagged `gone` lives"
    );
    assert_eq!(api.wait_running("keep", SHORT), keep_pid, "keep restarted");
    pm.assert_state_chain("gone");
    pm.shutdown_cleanly(EXIT_TIMEOUT);
}

/// Stop and start fired together, many times: afterwards `state.json`'s stopped-by-hand
/// mark agrees with the state, and a new manager on the same base directory runs the
/// process exactly when it ran before.
#[test]
fn concurrent_stop_and_start_keep_state_json_true() {
    const TRIES: usize = 20;
    let run = TestRun::new("e2e-test-loop-stop-start-race");
    let config = single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let mut pm = ProcessManager::start_with_args(run.clone(), &config, &[]);
    let api = pm.api();
    api.wait_running("svc", SHORT);
    let started = Instant::now();
    let mut last = String::new();
    for attempt in 1..=TRIES {
        let barrier = Arc::new(Barrier::new(2));
        let calls: Vec<JoinHandle<u16>> = ["stop", "start"]
            .iter()
            .map(|action| {
                let (api, barrier) = (api.clone(), barrier.clone());
                let path = format!("/api/v1/processes/svc/{action}");
                std::thread::spawn(move || {
                    barrier.wait();
                    api.post(&path).status
                })
            })
            .collect();
        let codes: Vec<u16> = calls.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(
            codes.iter().all(|c| matches!(c, 202 | 409)),
            "attempt {attempt}: stop and start answered {codes:?}"
        );
        let status = api.wait_process("svc", "settled", SHORT, |p| {
            p["state"] == "running" || p["state"] == "stopped"
        });
        let state = status["state"].as_str().unwrap().to_owned();
        let mark = stopped_by_hand(&run, "svc");
        if mark != (state == "stopped") {
            panic!(
                "{}",
                pm.failure(&format!(
                    "attempt {attempt}: svc is {state} but state.json says stopped_by_hand = \
                     {mark}:\n{}",
                    std::fs::read_to_string(run.base_dir.join("state.json")).unwrap_or_default()
                ))
            );
        }
        last = state;
    }
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{TRIES} tries took {:?}",
        started.elapsed()
    );
    pm.assert_state_chain("svc");
    pm.shutdown_cleanly(EXIT_TIMEOUT);
    drop(pm);

    // A new manager on the same base directory.
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    if last == "running" {
        api.wait_running("svc", SHORT);
    } else {
        // An observation: for 2 s after the API is up, svc is not started.
        let started = poll_until(Duration::from_secs(2), || {
            let s = api.process("svc");
            (s["state"] != "stopped").then_some(s)
        });
        if let Some(s) = started {
            panic!(
                "{}",
                pm.failure(&format!(
                    "svc was stopped by hand, yet the next manager started it: {s}"
                ))
            );
        }
    }
    pm.shutdown_cleanly(EXIT_TIMEOUT);
}

/// A tree that keeps forking children which leave for sessions of their own (setsid) and
/// fork again: a stop answers only when none of it is left, and so does a shutdown.
#[test]
fn stop_leaves_nothing_of_a_setsid_fork_storm() {
    let storm = "trap '' TERM; while :; do setsid sh -c 'sleep 60 & sleep 60 & exit 0' & \
                 setsid sh -c 'sleep 60 & exit 0' & sleep 0.005; done";
    let config = format!(
        "{CONFIG_HEADER}  - id: storm\n    type: standard_managed\n    management:\n      \
         control:\n        executable: sh\n        arguments: {}\n        \
         graceful_timeout: 1s\n        restart_policy: never\n",
        yaml_list(&["-c", storm])
    );
    let mut pm = ProcessManager::start("e2e-test-loop-fork-storm", &config);
    let api = pm.api();
    for round in 1..=2 {
        api.wait_running("storm", SHORT);
        wait_for("the storm to grow", SHORT, || {
            tree_of(&pm, "storm").len() >= 20
        });
        let resp = api.post("/api/v1/processes/storm/stop");
        let left = tree_of(&pm, "storm");
        expect_json("POST .../storm/stop", &resp, 202);
        if !left.is_empty() {
            panic!(
                "{}",
                pm.failure(&format!(
                    "round {round}: the stop answered with {} processes of the storm alive",
                    left.len()
                ))
            );
        }
        api.act("storm", "start");
    }
    wait_for("the storm to grow", SHORT, || {
        tree_of(&pm, "storm").len() >= 20
    });
    // shutdown_cleanly checks that nothing tagged outlives the manager's exit.
    pm.shutdown_cleanly(EXIT_TIMEOUT);
}

/// A manager born with stray descriptors (7 and 9, not close-on-exec) passes none of
/// them on: its child holds exactly 0, 1 and 2.
#[test]
fn children_get_only_stdio() {
    let run = TestRun::new("e2e-test-loop-only-stdio");
    let ready = ready_path(&run, "svc").display().to_string();
    let config = single_process_config(
        "svc",
        &["--run-duration", "0", "--pid-file", &ready],
        "graceful_timeout: 5s",
    );
    let stray7 = File::open("/dev/null").unwrap();
    let stray9 = File::create(run.path("stray-9")).unwrap();
    let mut pm =
        ProcessManager::start_with_inherited_fds(run, &config, &[], vec![(7, stray7), (9, stray9)]);
    let api = pm.api();
    // The setup works: the manager holds them.
    let manager_fds = open_fds(pm.pid());
    assert!(
        manager_fds.contains(&7) && manager_fds.contains(&9),
        "the manager was not born with fds 7 and 9: {manager_fds:?}"
    );
    let pid = api.wait_running("svc", SHORT);
    wait_for("testexe to be ready", SHORT, || {
        assertions::read_pid_file(std::path::Path::new(&ready)) == Some(pid)
    });
    let fds = open_fds(pid);
    if fds != BTreeSet::from([0, 1, 2]) {
        panic!(
            "{}",
            pm.failure(&format!(
                "the child (pid {pid}) holds descriptors {fds:?}, expected only 0, 1, 2"
            ))
        );
    }
    pm.shutdown_cleanly(EXIT_TIMEOUT);
}
