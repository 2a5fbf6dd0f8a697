//! The supervisor loop and the manager against a made-up platform, under a paused clock:
//! exits, slow stops and spawn errors happen when a test says so, and minutes of
//! backoff and graceful timeouts pass in no wall time.

use crate::fake_platform::{FakePlatform, Plan, Rpc};
use crate::process_control_impl::{Published, Report};
use crate::{ManagerOptions, ProcessManager};
use hsu_common::{EventKind, EventSink, ProcessState};
use hsu_managed_process::{
    Circuit, ControlSpec, Dependency, DependencyCondition, HealthCheckKind, HealthCheckSpec,
    ProcessDefinition, ProcessStatus, ProcessType, RestartPolicy, RestartTuning, TriggerOverride,
};
use hsu_monitoring::{HealthReport, HealthStatus};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
struct Recorder(Mutex<Vec<(Option<String>, EventKind)>>);

impl EventSink for Recorder {
    fn emit(&self, id: Option<&str>, kind: EventKind) {
        self.0.lock().unwrap().push((id.map(str::to_owned), kind));
    }
}

impl Recorder {
    /// `from->to: reason` of every state change of `id`, in order.
    fn transitions(&self, id: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| i.as_deref() == Some(id))
            .filter_map(|(_, k)| match k {
                EventKind::StateChanged { from, to, reason } => {
                    Some(format!("{from}->{to}: {reason}"))
                }
                _ => None,
            })
            .collect()
    }

    fn triggers(&self, id: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| i.as_deref() == Some(id))
            .filter_map(|(_, k)| match k {
                EventKind::RestartScheduled { trigger, .. } => Some(trigger.clone()),
                EventKind::CircuitOpened { .. } => Some("circuit_opened".into()),
                EventKind::CircuitClosed { .. } => Some("circuit_closed".into()),
                _ => None,
            })
            .collect()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn def(id: &str, tune: impl FnOnce(&mut ControlSpec)) -> ProcessDefinition {
    let mut control = ControlSpec::new("/fake/bin", "/");
    control.graceful_timeout = secs(10);
    control.restart = RestartTuning {
        retry_delay: secs(1),
        ..RestartTuning::default()
    };
    tune(&mut control);
    ProcessDefinition {
        id: id.into(),
        process_type: ProcessType::StandardManaged,
        enabled: true,
        control: Some(control),
        health_check: Default::default(),
        log_collection: Default::default(),
        discovery: None,
        metadata: Default::default(),
        profile_type: None,
        depends_on: Vec::new(),
        ready_log_line: None,
    }
}

struct Setup {
    manager: ProcessManager,
    fake: FakePlatform,
    events: Arc<Recorder>,
    base: Arc<tempfile::TempDir>,
}

impl Setup {
    async fn new(defs: Vec<ProcessDefinition>) -> Setup {
        Setup::on(Arc::new(tempfile::tempdir().unwrap()), defs).await
    }

    /// A manager on an existing base directory (a restart of the manager).
    async fn on(base: Arc<tempfile::TempDir>, defs: Vec<ProcessDefinition>) -> Setup {
        let fake = FakePlatform::new();
        let events = Arc::new(Recorder::default());
        let options = ManagerOptions {
            base_directory: base.path().to_path_buf(),
            log_directory: base.path().join("logs"),
            force_shutdown_timeout: secs(30),
            resource_sample_interval: secs(3600),
        };
        let manager =
            ProcessManager::with_platform(options, events.clone(), Arc::new(fake.clone())).unwrap();
        manager.launch(defs).await;
        Setup {
            manager,
            fake,
            events,
            base,
        }
    }

    fn tag(&self, id: &str) -> String {
        format!("{}#{id}", self.base.path().display())
    }

    fn status(&self, id: &str) -> ProcessStatus {
        self.manager.status(id).unwrap()
    }

    fn pid(&self, id: &str) -> u32 {
        self.status(id).pid.expect("a running process has a PID")
    }

    /// Waits (in virtual time, driven by the supervisor's own publications) until the
    /// status of `id` satisfies `pred`.
    async fn until(&self, id: &str, pred: impl Fn(&ProcessStatus) -> bool) -> ProcessStatus {
        let mut watch = self.manager.supervisor(id).unwrap().watch();
        let waited =
            tokio::time::timeout(secs(3600), watch.wait_for(|p: &Published| pred(&p.status)))
                .await
                .map(|r| r.map(|p| p.status.clone()));
        match waited {
            Ok(Ok(status)) => status,
            _ => panic!("{id} never got there; last status {:?}", self.status(id)),
        }
    }
}

/// Starts `f` in the background and lets the supervisors take it in.
async fn background<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = tokio::spawn(f);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    task
}

#[tokio::test(start_paused = true)]
async fn status_answers_during_a_stop_and_a_second_stop_joins() {
    let s = Setup::new(vec![def("svc", |_| {})]).await;
    s.fake.plan(Plan {
        ignores_term: true,
        ..Plan::default()
    });
    s.manager.restart_process("svc", false).await.unwrap();
    let pid = s.pid("svc");
    let began = Instant::now();
    let m = s.manager.clone();
    let first = background(async move { m.stop_process("svc", false).await }).await;
    let st = s
        .until("svc", |st| st.state == ProcessState::Stopping)
        .await;
    assert_eq!(
        st.pid,
        Some(pid),
        "the main process is shown while it lives"
    );
    let m = s.manager.clone();
    let second = background(async move { m.stop_process("svc", false).await }).await;
    assert!(!first.is_finished() && !second.is_finished());
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    let took = began.elapsed();
    assert!(
        took >= secs(10) && took < secs(11),
        "SIGKILL at the deadline: {took:?}"
    );
    assert!(s.fake.alive(&s.tag("svc")).is_empty());
    let last = s.events.transitions("svc").pop().unwrap();
    assert!(
        last.starts_with("stopping->stopped: stopped by request; killed after graceful timeout"),
        "{last}"
    );
}

#[tokio::test(start_paused = true)]
async fn forced_stop_ends_a_graceful_stop_at_once() {
    let s = Setup::new(vec![def("svc", |_| {})]).await;
    s.fake.plan(Plan {
        ignores_term: true,
        children: 2,
        children_ignore_term: true,
        ..Plan::default()
    });
    s.manager.restart_process("svc", false).await.unwrap();
    let began = Instant::now();
    let m = s.manager.clone();
    let graceful = background(async move { m.stop_process("svc", false).await }).await;
    s.until("svc", |st| st.state == ProcessState::Stopping)
        .await;
    s.manager.stop_process("svc", true).await.unwrap();
    graceful.await.unwrap().unwrap();
    assert!(began.elapsed() < secs(1), "{:?}", began.elapsed());
    assert!(s.fake.alive(&s.tag("svc")).is_empty());
    assert_eq!(s.status("svc").state, ProcessState::Stopped);
    // A forced stop of a running process needs no graceful phase either.
    s.fake.plan(Plan {
        ignores_term: true,
        ..Plan::default()
    });
    s.manager.start_process("svc").await.unwrap();
    let began = Instant::now();
    s.manager.stop_process("svc", true).await.unwrap();
    assert!(began.elapsed() < secs(1));
}

#[tokio::test(start_paused = true)]
async fn commands_during_a_stop_are_applied_in_order_after_it() {
    let s = Setup::new(vec![def("svc", |_| {})]).await;
    s.fake.plan(Plan {
        ignores_term: true,
        ..Plan::default()
    });
    s.manager.restart_process("svc", false).await.unwrap();
    let old = s.pid("svc");
    let m = s.manager.clone();
    let stop = background(async move { m.stop_process("svc", false).await }).await;
    let m = s.manager.clone();
    let start = background(async move { m.start_process("svc").await }).await;
    // The start waits for the old tree: status still says stopping, one spawn so far.
    assert_eq!(s.status("svc").state, ProcessState::Stopping);
    let spawns = s.fake.spawns();
    stop.await.unwrap().unwrap();
    start.await.unwrap().unwrap();
    let st = s.status("svc");
    assert_eq!(st.state, ProcessState::Running);
    assert_ne!(st.pid, Some(old));
    assert_eq!(s.fake.spawns(), spawns + 1);
    assert_eq!(s.fake.max_concurrent_mains(&s.tag("svc")), 1);
    // stop, start, stop: the last word wins, and nothing is spawned for the start.
    s.fake.plan(Plan {
        ignores_term: true,
        ..Plan::default()
    });
    s.manager.restart_process("svc", false).await.unwrap();
    let spawns = s.fake.spawns();
    let m1 = s.manager.clone();
    let m2 = s.manager.clone();
    let m3 = s.manager.clone();
    let a = background(async move { m1.stop_process("svc", false).await }).await;
    let b = background(async move { m2.start_process("svc").await }).await;
    let c = background(async move { m3.stop_process("svc", false).await }).await;
    for t in [a, b, c] {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.status("svc").state, ProcessState::Stopped);
    assert_eq!(s.fake.spawns(), spawns);
    assert!(s.manager.stopped_by_hand("svc"));
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_backoff_cancels_the_restart() {
    let s = Setup::new(vec![def("svc", |_| {})]).await;
    let pid = s.pid("svc");
    s.fake.exit(pid, 3);
    let st = s.until("svc", |st| st.state == ProcessState::Failed).await;
    assert!(st.next_restart_at.is_some());
    assert_eq!(st.pid, None);
    s.manager.stop_process("svc", false).await.unwrap();
    let spawns = s.fake.spawns();
    // Two minutes of the paused clock: the cancelled restart never comes.
    tokio::time::advance(secs(120)).await;
    assert_eq!(s.status("svc").state, ProcessState::Stopped);
    assert_eq!(s.status("svc").next_restart_at, None);
    assert_eq!(s.fake.spawns(), spawns);
}

#[tokio::test(start_paused = true)]
async fn restart_budgets_are_kept_per_trigger() {
    let s = Setup::new(vec![def("svc", |c| {
        c.restart_policy = RestartPolicy::Always;
        c.restart.max_retries = 1;
        c.restart.retry_delay = ms(100);
        c.restart.health_failures = TriggerOverride {
            max_retries: Some(3),
            ..TriggerOverride::default()
        };
    })])
    .await;
    let sup = s.manager.supervisor("svc").unwrap();
    // One exit-triggered restart fits the exit budget (1).
    s.fake.exit(s.pid("svc"), 1);
    s.until("svc", |st| st.state == ProcessState::Failed).await;
    s.until("svc", |st| st.state == ProcessState::Running).await;
    // Two health-triggered restarts fit the health budget (3), not the exit one.
    for _ in 0..2 {
        let run = sup.current_run().unwrap();
        sup.report(
            run,
            Report::Unhealthy {
                reason: "check failed 3 times".into(),
            },
        );
        s.until("svc", |st| st.state == ProcessState::Failed).await;
        s.until("svc", |st| st.state == ProcessState::Running).await;
    }
    // A resource violation has its own budget too.
    let run = sup.current_run().unwrap();
    sup.report(
        run,
        Report::LimitExceeded {
            reason: "memory 90MiB > 20MiB".into(),
        },
    );
    s.until("svc", |st| st.state == ProcessState::Failed).await;
    s.until("svc", |st| st.state == ProcessState::Running).await;
    // A second exit inside the window exceeds the exit budget: the breaker opens.
    s.fake.exit(s.pid("svc"), 1);
    let st = s.until("svc", |st| st.circuit == Circuit::Open).await;
    assert_eq!(st.state, ProcessState::Failed);
    assert_eq!(
        s.events.triggers("svc"),
        [
            "exit",
            "health_failure",
            "health_failure",
            "resource_violation",
            "circuit_opened"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_half_open_breaker_closes_after_a_stable_trial() {
    let s = Setup::new(vec![def("svc", |c| {
        c.restart.max_retries = 1;
        c.restart.retry_delay = ms(100);
        c.restart.cooldown = secs(30);
        c.restart.reset_after = secs(5);
    })])
    .await;
    s.fake.exit(s.pid("svc"), 1);
    s.until("svc", |st| {
        st.state == ProcessState::Running && st.restart_count == 1
    })
    .await;
    s.fake.exit(s.pid("svc"), 1);
    s.until("svc", |st| st.circuit == Circuit::Open).await;
    let opened = Instant::now();
    // The trial start comes after the cooldown; it fails: open again.
    let st = s.until("svc", |st| st.circuit == Circuit::HalfOpen).await;
    assert_eq!(st.state, ProcessState::Running);
    assert!(opened.elapsed() >= secs(30));
    s.fake.exit(s.pid("svc"), 1);
    s.until("svc", |st| st.circuit == Circuit::Open).await;
    // The next trial stays up `reset_after`: closed.
    s.until("svc", |st| st.circuit == Circuit::HalfOpen).await;
    let trial = Instant::now();
    s.until("svc", |st| st.circuit == Circuit::Closed).await;
    assert!(trial.elapsed() >= secs(5));
    assert_eq!(
        s.events.triggers("svc").last().map(String::as_str),
        Some("circuit_closed")
    );
}

#[tokio::test(start_paused = true)]
async fn late_reports_about_an_earlier_run_are_ignored() {
    let s = Setup::new(vec![def("svc", |_| {})]).await;
    let sup = s.manager.supervisor("svc").unwrap();
    let old_run = sup.current_run().unwrap();
    s.manager.restart_process("svc", false).await.unwrap();
    let pid = s.pid("svc");
    assert_ne!(sup.current_run(), Some(old_run));
    sup.report(
        old_run,
        Report::Unhealthy {
            reason: "stale".into(),
        },
    );
    sup.report(
        old_run,
        Report::LimitExceeded {
            reason: "stale".into(),
        },
    );
    // A status read goes through the same queue: the reports were handled before it.
    s.manager.start_process("svc").await.unwrap();
    let st = s.status("svc");
    assert_eq!((st.state, st.pid), (ProcessState::Running, Some(pid)));
    assert!(s.events.triggers("svc").is_empty());
}

#[tokio::test(start_paused = true)]
async fn spawn_errors_fail_and_back_off() {
    let s = Setup::new(vec![]).await;
    s.fake.plan(Plan {
        spawn_error: true,
        ..Plan::default()
    });
    s.fake.plan(Plan {
        spawn_error: true,
        ..Plan::default()
    });
    s.manager
        .reload(vec![def("svc", |c| c.restart.retry_delay = secs(2))])
        .await;
    let st = s.status("svc");
    assert_eq!(st.state, ProcessState::Failed);
    assert!(st.reason.contains("not found"), "{}", st.reason);
    let began = Instant::now();
    s.until("svc", |st| st.state == ProcessState::Running).await;
    // 2 s, then 4 s: backoff, not a storm.
    assert!(began.elapsed() >= secs(6), "{:?}", began.elapsed());
}

#[tokio::test(start_paused = true)]
async fn leftovers_are_gone_before_the_restart_and_status_says_so() {
    let s = Setup::new(vec![]).await;
    s.fake.plan(Plan {
        children: 2,
        children_ignore_term: true,
        ..Plan::default()
    });
    s.manager
        .reload(vec![def("svc", |c| c.graceful_timeout = secs(3))])
        .await;
    let pid = s.pid("svc");
    let began = Instant::now();
    s.fake.exit(pid, 1);
    let st = s.until("svc", |st| st.state == ProcessState::Failed).await;
    assert_eq!(st.pid, None, "no dead PID shown as running");
    assert!(st.reason.contains("stopping what it left"), "{}", st.reason);
    s.until("svc", |st| st.state == ProcessState::Running).await;
    // The retry delay was 1 s, but the leftovers took the 3 s graceful timeout.
    assert!(began.elapsed() >= secs(3), "{:?}", began.elapsed());
    assert_eq!(s.fake.alive(&s.tag("svc")).len(), 1);
    assert_eq!(s.fake.max_concurrent_mains(&s.tag("svc")), 1);
}

#[tokio::test(start_paused = true)]
async fn reload_applies_the_difference_and_never_runs_two_instances() {
    let defs = vec![
        def("same", |_| {}),
        def("changed", |_| {}),
        def("removed", |_| {}),
    ];
    let s = Setup::new(defs).await;
    let same = s.pid("same");
    s.fake.plan(Plan {
        ignores_term: true,
        ..Plan::default()
    });
    s.manager.restart_process("changed", false).await.unwrap();
    let m = s.manager.clone();
    let new_defs = vec![
        def("same", |_| {}),
        def("changed", |c| c.arguments = vec!["--v2".into()]),
        def("added", |_| {}),
    ];
    let reload = background(async move { m.reload(new_defs).await }).await;
    // While the old instance takes its graceful timeout, commands pile up behind it.
    assert_eq!(s.status("changed").state, ProcessState::Stopping);
    assert_eq!(s.status("removed").state, ProcessState::Stopped);
    let (m1, m2) = (s.manager.clone(), s.manager.clone());
    let restart = background(async move { m1.restart_process("changed", false).await }).await;
    let start = background(async move { m2.start_process("changed").await }).await;
    let diff = reload.await.unwrap();
    restart.await.unwrap().unwrap();
    start.await.unwrap().unwrap();
    assert_eq!(diff.unchanged, ["same"]);
    assert_eq!(diff.changed, ["changed"]);
    assert_eq!(diff.added, ["added"]);
    assert_eq!(diff.removed, ["removed"]);
    assert_eq!(s.pid("same"), same);
    assert_eq!(s.status("changed").state, ProcessState::Running);
    assert_eq!(s.fake.last_args(), ["--v2"]);
    assert!(s.manager.status("removed").is_none());
    assert!(s.fake.alive(&s.tag("removed")).is_empty());
    assert_eq!(s.fake.max_concurrent_mains(&s.tag("changed")), 1);
    let t = s.events.transitions("changed");
    assert!(
        t.iter()
            .any(|t| t == "running->stopping: reload: definition changed"),
        "{t:?}"
    );
}

/// A process `old` that ignores SIGTERM (graceful_timeout 3 s), and a reload that
/// removes it, in progress.
async fn removal_in_progress() -> (Setup, tokio::task::JoinHandle<crate::ReloadDiff>) {
    let s = Setup::new(vec![]).await;
    s.fake.plan(Plan {
        ignores_term: true,
        ..Plan::default()
    });
    s.manager
        .reload(vec![def("old", |c| c.graceful_timeout = secs(3))])
        .await;
    let m = s.manager.clone();
    let reload = background(async move { m.reload(vec![]).await }).await;
    (s, reload)
}

#[tokio::test(start_paused = true)]
async fn a_removed_process_stays_listed_until_its_tree_is_gone() {
    let (s, reload) = removal_in_progress().await;
    let st = s.status("old");
    assert_eq!(st.state, ProcessState::Stopping);
    assert!(st.reason.contains("reload"), "{}", st.reason);
    reload.await.unwrap();
    assert!(s.manager.status("old").is_none());
    assert!(s.fake.alive(&s.tag("old")).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_removal_joins_it_and_the_removal_still_ends() {
    let (s, reload) = removal_in_progress().await;
    assert_eq!(s.status("old").state, ProcessState::Stopping);
    let m = s.manager.clone();
    let stop = background(async move { m.stop_process("old", false).await }).await;
    let m = s.manager.clone();
    let start = background(async move { m.start_process("old").await }).await;
    stop.await.unwrap().unwrap();
    assert!(
        start.await.unwrap().is_err(),
        "a removed process is not started again"
    );
    let diff = reload.await.unwrap();
    assert_eq!(diff.removed, ["old"]);
    assert!(s.manager.status("old").is_none());
    assert_eq!(s.fake.spawns(), 1);
}

#[tokio::test(start_paused = true)]
async fn stopped_by_hand_stays_stopped_across_a_manager_restart() {
    let defs = || vec![def("held", |_| {}), def("free", |_| {})];
    let s = Setup::new(defs()).await;
    // Stop and start race; the supervisor's order decides the durable mark.
    for _ in 0..20 {
        let (m1, m2) = (s.manager.clone(), s.manager.clone());
        let (a, b) = tokio::join!(m1.stop_process("held", false), m2.start_process("held"));
        a.unwrap();
        b.unwrap();
        let running = s.status("held").state == ProcessState::Running;
        assert_eq!(s.manager.stopped_by_hand("held"), !running);
    }
    s.manager.stop_process("held", false).await.unwrap();
    s.manager.shutdown("test").await;
    let base = s.base.clone();
    drop(s);
    let s = Setup::on(base, defs()).await;
    assert_eq!(s.status("held").state, ProcessState::Stopped);
    assert!(s.status("held").reason.contains("stopped by hand"));
    assert_eq!(s.status("free").state, ProcessState::Running);
    s.manager.start_process("held").await.unwrap();
    assert!(!s.manager.stopped_by_hand("held"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_bounds_every_stop_by_its_deadline() {
    let s = Setup::new(vec![
        def("a", |c| c.graceful_timeout = secs(600)),
        def("b", |_| {}),
    ])
    .await;
    s.fake.plan(Plan {
        ignores_term: true,
        ..Plan::default()
    });
    s.manager.restart_process("a", false).await.unwrap();
    let began = Instant::now();
    s.manager.shutdown("test").await;
    // force_shutdown_timeout is 30 s.
    assert!(began.elapsed() <= secs(31), "{:?}", began.elapsed());
    for id in ["a", "b"] {
        assert_eq!(s.status(id).state, ProcessState::Stopped);
        assert!(s.fake.alive(&s.tag(id)).is_empty());
        let last = s.events.transitions(id).pop().unwrap();
        assert!(last.contains("manager shutting down"), "{last}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_disk_does_not_hold_up_a_restart() {
    let s = Setup::new(vec![def("svc", |c| c.restart.retry_delay = ms(10))]).await;
    // The writer thread hangs on a write until released (a disk that stopped answering).
    let (release, stalled) = std::sync::mpsc::channel::<()>();
    s.manager
        .file_writer()
        .snapshot(s.base.path().join("stalled"), move || {
            let _ = stalled.recv();
            None
        });
    let old = s.pid("svc");
    s.fake.exit(old, 1);
    let st = s
        .until("svc", |st| {
            st.state == ProcessState::Running && st.pid != Some(old)
        })
        .await;
    assert_eq!(st.restart_count, 1);
    // Its PID file is still queued behind the stalled write; it lands once the disk is back.
    let pid_file = s.base.path().join("pids/svc.pid");
    let on_disk = || std::fs::read_to_string(&pid_file).ok();
    let new = format!("{}\n", st.pid.unwrap());
    assert_ne!(on_disk(), Some(new.clone()));
    release.send(()).unwrap();
    let writer = s.manager.file_writer().clone();
    tokio::task::spawn_blocking(move || writer.flush())
        .await
        .unwrap();
    assert_eq!(on_disk(), Some(new));
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_step_is_reported_and_supervision_goes_on() {
    let s = Setup::new(vec![def("svc", |c| c.restart.retry_delay = ms(10))]).await;
    s.manager.stop_process("svc", false).await.unwrap();
    s.fake.plan(Plan {
        panic: true,
        ..Plan::default()
    });
    assert!(s.manager.start_process("svc").await.is_err());
    let st = s.status("svc");
    assert_eq!(st.state, ProcessState::Stopped);
    assert!(
        st.reason.contains("supervisor error: made-up bug in spawn"),
        "{}",
        st.reason
    );
    let reported = s.events.0.lock().unwrap().iter().any(|(id, k)| {
        id.as_deref() == Some("svc") && matches!(k, EventKind::SupervisorFailed { .. })
    });
    assert!(reported);
    // The same supervisor still starts, watches and restarts the process.
    s.manager.start_process("svc").await.unwrap();
    let pid = s.pid("svc");
    s.fake.exit(pid, 1);
    s.until("svc", |st| {
        st.state == ProcessState::Running && st.pid != Some(pid)
    })
    .await;
}

/// On the real clock (a stalled blocking thread stops a paused one): a disk that stopped
/// answering delays a stop's answer by a bounded patience, never forever.
#[tokio::test]
async fn a_stalled_disk_does_not_hang_a_stop() {
    let s = Setup::new(vec![def("svc", |_| {})]).await;
    let (release, stalled) = std::sync::mpsc::channel::<()>();
    s.manager
        .file_writer()
        .snapshot(s.base.path().join("stalled"), move || {
            let _ = stalled.recv();
            None
        });
    let began = std::time::Instant::now();
    let stop = tokio::time::timeout(secs(30), s.manager.stop_process("svc", false)).await;
    assert!(matches!(stop, Ok(Ok(()))), "{stop:?}");
    assert!(began.elapsed() < secs(10), "{:?}", began.elapsed());
    assert_eq!(s.status("svc").state, ProcessState::Stopped);
    release.send(()).unwrap();
}

// ---- health checks ---------------------------------------------------------------

/// A process probed by a (made-up) TCP check every second, timeout 500 ms.
fn probed(
    id: &str,
    tune_check: impl FnOnce(&mut HealthCheckSpec),
    tune: impl FnOnce(&mut ControlSpec),
) -> ProcessDefinition {
    let mut d = def(id, tune);
    d.health_check = HealthCheckSpec {
        kind: HealthCheckKind::Tcp {
            address: "127.0.0.1:9".into(),
        },
        interval: secs(1),
        timeout: ms(500),
        initial_delay: Duration::ZERO,
        failure_threshold: 3,
        success_threshold: 1,
        startup_grace_period: Duration::ZERO,
    };
    tune_check(&mut d.health_check);
    d
}

impl Setup {
    fn health(&self, id: &str) -> HealthReport {
        self.manager.supervisor(id).unwrap().health()
    }

    fn health_changes(&self, id: &str) -> Vec<String> {
        self.events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| i.as_deref() == Some(id))
            .filter_map(|(_, k)| match k {
                EventKind::HealthChanged { from, to, .. } => Some(format!("{from}->{to}")),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_probed_process_is_starting_and_unknown_until_its_first_passing_check() {
    let s = Setup::new(vec![probed("svc", |h| h.initial_delay = secs(5), |_| {})]).await;
    let st = s.status("svc");
    assert_eq!(st.state, ProcessState::Starting);
    assert!(st.pid.is_some());
    assert!(
        st.reason
            .contains("waiting for the first passing tcp check"),
        "{}",
        st.reason
    );
    assert_eq!(s.health("svc").status, HealthStatus::Unknown);
    assert_eq!(s.health("svc").last_check_at, None);
    // Nothing is probed before the initial delay.
    tokio::time::advance(secs(4)).await;
    assert_eq!(s.fake.probes(), 0);
    s.until("svc", |st| st.state == ProcessState::Running).await;
    assert_eq!(s.fake.probes(), 1);
    let h = s.health("svc");
    assert_eq!(h.status, HealthStatus::Healthy);
    assert!(h.last_check_at.is_some() && h.last_latency.is_some());
    assert_eq!(s.health_changes("svc"), ["unknown->healthy"]);
    assert_eq!(
        s.events.transitions("svc"),
        [
            "stopped->starting: started with the manager",
            &format!("starting->running: tcp check passed (pid {})", s.pid("svc")),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failing_checks_past_the_threshold_restart_under_the_health_budget() {
    let s = Setup::new(vec![probed(
        "svc",
        |_| {},
        |c| {
            c.restart_policy = RestartPolicy::OnFailure;
            c.restart.retry_delay = ms(100);
        },
    )])
    .await;
    s.until("svc", |st| st.state == ProcessState::Running).await;
    let first = s.pid("svc");
    let refused = || Some(Err("connection refused".to_string()));
    s.fake.probe_results([refused(), refused(), refused()]);
    let st = s.until("svc", |st| st.state == ProcessState::Failed).await;
    assert!(
        st.reason.contains("3 tcp checks failed in a row"),
        "{}",
        st.reason
    );
    let h = s.health("svc");
    assert_eq!(h.status, HealthStatus::Unhealthy);
    assert_eq!(h.consecutive_failures, 3);
    assert_eq!(h.last_error.as_deref(), Some("connection refused"));
    // The old tree is gone and a new run is probed afresh.
    assert!(s.fake.alive(&s.tag("svc")).iter().all(|&p| p != first));
    s.until("svc", |st| st.state == ProcessState::Running).await;
    assert_ne!(s.pid("svc"), first);
    assert_eq!(s.events.triggers("svc"), ["health_failure"]);
    assert_eq!(
        s.health_changes("svc"),
        ["unknown->healthy", "healthy->unhealthy", "unknown->healthy"]
    );
}

impl Setup {
    /// Waits (in virtual time) until what the supervisor of `id` publishes satisfies
    /// `pred`.
    async fn until_published(&self, id: &str, pred: impl Fn(&Published) -> bool) -> Published {
        let mut watch = self.manager.supervisor(id).unwrap().watch();
        let waited = tokio::time::timeout(secs(3600), watch.wait_for(|p| pred(p)))
            .await
            .map(|r| r.map(|p| p.clone()));
        match waited {
            Ok(Ok(p)) => p,
            _ => panic!("{id} never got there; last status {:?}", self.status(id)),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_check_fails_at_its_timeout_and_policy_never_only_reports() {
    let s = Setup::new(vec![probed(
        "svc",
        |h| h.failure_threshold = 1,
        |c| {
            c.restart_policy = RestartPolicy::Never;
        },
    )])
    .await;
    s.until("svc", |st| st.state == ProcessState::Running).await;
    let pid = s.pid("svc");
    let checks = s.fake.probes();
    s.fake.probe_results([None]);
    let p = s
        .until_published("svc", |p| p.health.status == HealthStatus::Unhealthy)
        .await;
    assert_eq!(p.health.last_error.as_deref(), Some("timed out"));
    assert_eq!(p.health.last_latency, Some(ms(500)));
    assert_eq!(s.fake.probes(), checks + 1);
    // Reported, not acted on: still running, same PID, and the reason says why.
    assert_eq!(p.status.state, ProcessState::Running);
    assert_eq!(p.status.pid, Some(pid));
    assert!(
        p.status.reason.contains("restart policy never"),
        "{}",
        p.status.reason
    );
    assert!(s.events.triggers("svc").is_empty());
    // It recovers on the next passing check.
    s.until_published("svc", |p| p.health.status == HealthStatus::Healthy)
        .await;
}

#[tokio::test(start_paused = true)]
async fn failures_inside_the_startup_grace_period_do_not_count() {
    let s = Setup::new(vec![probed(
        "svc",
        |h| {
            h.failure_threshold = 2;
            h.initial_delay = secs(1);
            h.startup_grace_period = secs(10);
        },
        |c| c.restart_policy = RestartPolicy::Always,
    )])
    .await;
    let refused = || Some(Err("connection refused".to_string()));
    // Checks at 1..=9 s fail inside the grace period, then two more fail after it.
    s.fake.probe_results((0..12).map(|_| refused()));
    let p = s
        .until_published("svc", |p| p.health.last_error.is_some())
        .await;
    assert_eq!(p.status.state, ProcessState::Starting);
    let h = p.health;
    assert_eq!(
        (h.status, h.consecutive_failures),
        (HealthStatus::Unknown, 0)
    );
    assert_eq!(h.last_error.as_deref(), Some("connection refused"));
    tokio::time::advance(secs(5)).await;
    assert_eq!(s.status("svc").state, ProcessState::Starting);
    assert_eq!(s.health("svc").consecutive_failures, 0);
    let st = s.until("svc", |st| st.state == ProcessState::Failed).await;
    assert!(st.reason.contains("2 tcp checks failed"), "{}", st.reason);
    assert_eq!(s.events.triggers("svc"), ["health_failure"]);
}

#[tokio::test(start_paused = true)]
async fn a_process_that_ends_while_starting_moves_through_failed() {
    let s = Setup::new(vec![probed(
        "svc",
        |h| h.initial_delay = secs(60),
        |c| {
            c.restart_policy = RestartPolicy::OnFailure;
        },
    )])
    .await;
    assert_eq!(s.status("svc").state, ProcessState::Starting);
    s.fake.exit(s.status("svc").pid.unwrap(), 0);
    s.until("svc", |st| st.state == ProcessState::Stopped).await;
    let t = s.events.transitions("svc");
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(t[1].starts_with("starting->failed: completed"), "{t:?}");
    assert!(t[2].starts_with("failed->stopped: completed"), "{t:?}");
    // A stop while starting is an ordinary stop.
    s.manager.start_process("svc").await.unwrap();
    assert_eq!(s.status("svc").state, ProcessState::Starting);
    s.manager.stop_process("svc", false).await.unwrap();
    assert_eq!(s.status("svc").state, ProcessState::Stopped);
    assert!(s.fake.alive(&s.tag("svc")).is_empty());
}

fn integrated(id: &str) -> ProcessDefinition {
    let mut d = def(id, |c| c.port_argument = Some("--port".into()));
    d.process_type = ProcessType::IntegratedManaged;
    d
}

#[tokio::test(start_paused = true)]
async fn an_integrated_process_is_checked_over_grpc_and_asked_to_shut_down() {
    let s = Setup::new(vec![integrated("api")]).await;
    // Checked (over gRPC by default), so starting until the first check passes.
    s.until("api", |st| st.state == ProcessState::Running).await;
    assert!(s.fake.probes() >= 1);
    assert!(s.fake.last_args().contains(&"--port".to_string()));
    s.fake.rpc(Rpc::Obey);
    let began = Instant::now();
    s.manager.stop_process("api", false).await.unwrap();
    assert_eq!(s.fake.rpc_calls(), 1);
    assert!(began.elapsed() < secs(1));
    let t = s.events.transitions("api");
    assert!(
        t.last().unwrap().contains("after the Shutdown call"),
        "{t:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_integrated_process_that_ignores_the_call_is_signalled_after_the_graceful_timeout() {
    let s = Setup::new(vec![integrated("api")]).await;
    s.until("api", |st| st.state == ProcessState::Running).await;
    s.fake.rpc(Rpc::Ignore);
    let began = Instant::now();
    s.manager.stop_process("api", false).await.unwrap();
    // graceful_timeout is 10 s: the stop signal went out then, and it obeyed.
    assert_eq!(began.elapsed(), secs(10));
    let t = s.events.transitions("api");
    assert!(t.last().unwrap().contains("signal 15"), "{t:?}");
    // A refused call goes to the signal at once.
    s.manager.start_process("api").await.unwrap();
    s.until("api", |st| st.state == ProcessState::Running).await;
    s.fake.rpc(Rpc::Refused);
    let began = Instant::now();
    s.manager.stop_process("api", false).await.unwrap();
    assert!(began.elapsed() < secs(1));
    assert_eq!(s.fake.rpc_calls(), 2);
}

// ---- depends_on ------------------------------------------------------------------

fn needs(mut d: ProcessDefinition, deps: &[(&str, DependencyCondition)]) -> ProcessDefinition {
    d.depends_on = deps
        .iter()
        .map(|(id, condition)| Dependency {
            id: (*id).into(),
            condition: *condition,
            timeout: None,
            propagate_restart: false,
        })
        .collect();
    d
}

impl Setup {
    fn spawned(&self, id: &str) -> bool {
        !self.fake.alive(&self.tag(id)).is_empty()
    }
}

#[tokio::test(start_paused = true)]
async fn a_dependent_waits_for_its_dependency_to_be_healthy() {
    let s = Setup::new(vec![
        probed("db", |h| h.initial_delay = secs(5), |_| {}),
        needs(def("app", |_| {}), &[("db", DependencyCondition::Healthy)]),
    ])
    .await;
    let st = s.status("app");
    assert_eq!(st.state, ProcessState::Starting);
    assert_eq!(st.reason, "waiting for db (healthy)");
    assert!(!s.spawned("app"));
    let p = s
        .manager
        .supervisor("app")
        .unwrap()
        .watch()
        .borrow()
        .clone();
    assert_eq!(p.waiting_for, ["db (healthy)"]);
    s.until("app", |st| st.state == ProcessState::Running).await;
    // db passed its first check (at 5 s) before app was spawned.
    assert_eq!(s.status("db").state, ProcessState::Running);
    assert!(s.fake.probes() >= 1);
    // A stop while waiting: nothing ran, nothing is left.
    s.manager.stop_process("app", false).await.unwrap();
    s.manager.stop_process("db", false).await.unwrap();
    s.manager.start_process("app").await.unwrap();
    assert_eq!(s.status("app").state, ProcessState::Starting);
    s.manager.stop_process("app", false).await.unwrap();
    assert_eq!(s.status("app").state, ProcessState::Stopped);
    assert!(!s.spawned("app"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_dependency_fails_its_dependents_until_it_recovers() {
    let s = Setup::new(vec![
        def("db", |c| {
            c.restart_policy = RestartPolicy::OnFailure;
            c.restart.retry_delay = secs(10);
        }),
        needs(
            probed("app", |h| h.initial_delay = secs(3600), |_| {}),
            &[("db", DependencyCondition::Started)],
        ),
    ])
    .await;
    // db is up, app started (and waits for its own first check).
    s.until("app", |st| st.pid.is_some()).await;
    s.manager.stop_process("app", false).await.unwrap();
    s.fake.exit(s.pid("db"), 1);
    s.until("db", |st| st.state == ProcessState::Failed).await;
    s.manager.start_process("app").await.unwrap();
    let st = s.status("app");
    assert_eq!(st.state, ProcessState::Failed);
    assert!(
        st.reason.starts_with("dependency db failed (started)"),
        "{}",
        st.reason
    );
    // db restarts after its backoff; app follows on its own.
    s.until("app", |st| st.pid.is_some()).await;
    assert_eq!(s.status("db").state, ProcessState::Running);
}

#[tokio::test(start_paused = true)]
async fn completed_successfully_gates_on_the_exit_code() {
    let s = Setup::new(vec![
        def("migrate", |c| c.restart_policy = RestartPolicy::Never),
        needs(
            def("app", |_| {}),
            &[("migrate", DependencyCondition::CompletedSuccessfully)],
        ),
    ])
    .await;
    assert_eq!(s.status("app").state, ProcessState::Starting);
    s.fake.exit(s.pid("migrate"), 0);
    s.until("app", |st| st.state == ProcessState::Running).await;

    let s = Setup::new(vec![
        def("migrate", |c| c.restart_policy = RestartPolicy::Never),
        needs(
            def("app", |_| {}),
            &[("migrate", DependencyCondition::CompletedSuccessfully)],
        ),
    ])
    .await;
    s.fake.exit(s.pid("migrate"), 3);
    let st = s.until("app", |st| st.state == ProcessState::Failed).await;
    assert!(
        st.reason.contains("dependency migrate failed"),
        "{}",
        st.reason
    );
    assert!(!s.spawned("app"));
}

#[tokio::test(start_paused = true)]
async fn a_dependency_timeout_fails_the_wait() {
    let mut app = needs(def("app", |_| {}), &[("db", DependencyCondition::Healthy)]);
    app.depends_on[0].timeout = Some(secs(30));
    let s = Setup::new(vec![
        probed("db", |h| h.initial_delay = secs(3600), |_| {}),
        app,
    ])
    .await;
    let began = Instant::now();
    let st = s.until("app", |st| st.state == ProcessState::Failed).await;
    assert_eq!(began.elapsed(), secs(30));
    assert!(
        st.reason
            .starts_with("timed out after 30s waiting for db (healthy)"),
        "{}",
        st.reason
    );
}

#[tokio::test(start_paused = true)]
async fn restart_propagate_restarts_the_dependent_with_its_dependency() {
    let mut app = needs(def("app", |_| {}), &[("db", DependencyCondition::Started)]);
    app.depends_on[0].propagate_restart = true;
    let s = Setup::new(vec![
        def("db", |_| {}),
        app,
        needs(
            def("other", |_| {}),
            &[("db", DependencyCondition::Started)],
        ),
    ])
    .await;
    s.until("app", |st| st.state == ProcessState::Running).await;
    s.until("other", |st| st.state == ProcessState::Running)
        .await;
    let (app_pid, other_pid) = (s.pid("app"), s.pid("other"));
    s.manager.restart_process("db", false).await.unwrap();
    s.until("app", |st| {
        st.state == ProcessState::Running && st.pid != Some(app_pid)
    })
    .await;
    assert_eq!(
        s.pid("other"),
        other_pid,
        "without propagate it is left alone"
    );
}

impl Recorder {
    /// The ids in the order they reached `stopped`.
    fn stop_order(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(i, k)| match k {
                EventKind::StateChanged { to, .. } if *to == ProcessState::Stopped => i.clone(),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn dependents_stop_before_their_dependencies() {
    let defs = || {
        vec![
            def("db", |_| {}),
            needs(def("app", |_| {}), &[("db", DependencyCondition::Started)]),
            needs(
                def("worker", |_| {}),
                &[("app", DependencyCondition::Started)],
            ),
            def("lone", |_| {}),
        ]
    };
    let s = Setup::new(defs()).await;
    for id in ["db", "app", "worker", "lone"] {
        s.until(id, |st| st.state == ProcessState::Running).await;
    }
    s.manager.shutdown("test").await;
    // worker, then app, then db; `lone` in parallel with them.
    let mut order = s.events.stop_order();
    order.retain(|id| id != "lone");
    assert_eq!(order, ["worker", "app", "db"]);

    // `stop db` stops its dependents first and says so.
    let s = Setup::new(defs()).await;
    for id in ["db", "app", "worker"] {
        s.until(id, |st| st.state == ProcessState::Running).await;
    }
    s.manager.stop_process("db", false).await.unwrap();
    assert_eq!(s.events.stop_order(), ["worker", "app", "db"]);
    let db = s.status("db").reason;
    assert!(
        db.starts_with("stopped by request; its dependents app, worker were stopped first"),
        "{db}"
    );
    assert!(s
        .status("worker")
        .reason
        .starts_with("stopped with its dependency db"));
    assert_eq!(s.status("lone").state, ProcessState::Running);
    // Stopped by hand: they stay stopped across a manager restart.
    assert!(s.manager.stopped_by_hand("worker"));
}
