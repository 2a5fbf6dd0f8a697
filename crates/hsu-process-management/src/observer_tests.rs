//! The observer of an unmanaged process against real processes: found by the PID file a
//! daemon writes, its end seen at once, found again under a new PID, a failing check
//! reported only, start/stop/restart refused, the process left running by a reload
//! and a shutdown, and a dependent started once it is found.

use crate::{ManagerOptions, ProcessManager};
use hsu_common::{EventKind, EventSink, ProcessState, StopSignal};
use hsu_managed_process::{
    ControlError, DiscoveryMethod, DiscoverySpec, HealthCheckKind, HealthCheckSpec,
    ProcessDefinition, ProcessLogCollection, ProcessStatus, ProcessType,
};
use hsu_monitoring::HealthStatus;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Recorder(Mutex<Vec<(Option<String>, EventKind)>>);

impl EventSink for Recorder {
    fn emit(&self, id: Option<&str>, kind: EventKind) {
        self.0.lock().unwrap().push((id.map(str::to_owned), kind));
    }
}

impl Recorder {
    /// `from->to` of every state change of `id`, in order.
    fn transitions(&self, id: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| i.as_deref() == Some(id))
            .filter_map(|(_, k)| match k {
                EventKind::StateChanged { from, to, .. } => Some(format!("{from}->{to}")),
                _ => None,
            })
            .collect()
    }

    fn health_changes(&self, id: &str) -> Vec<String> {
        self.0
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

fn unmanaged(id: &str, pid_file: &Path, health: HealthCheckKind) -> ProcessDefinition {
    ProcessDefinition {
        id: id.into(),
        process_type: ProcessType::Unmanaged,
        enabled: true,
        control: None,
        health_check: HealthCheckSpec {
            kind: health,
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(250),
            failure_threshold: 1,
            ..HealthCheckSpec::default()
        },
        log_collection: ProcessLogCollection::default(),
        discovery: Some(DiscoverySpec {
            method: DiscoveryMethod::PidFile(pid_file.to_path_buf()),
            check_interval: Duration::from_millis(100),
        }),
        metadata: Default::default(),
        profile_type: None,
        depends_on: Vec::new(),
        ready_log_line: None,
    }
}

/// Starts a daemon the way a service manager would: `sleep` in the background of a
/// shell that writes its PID to `pid_file` and exits (so the manager never is its
/// parent by spawning it).
fn daemon(pid_file: &Path) -> u32 {
    let script = format!(
        "sleep 600 & echo $! > {}.tmp && mv {0}.tmp {0}",
        pid_file.display()
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Polls the manager's status of `id` until `cond` holds (30 s at most).
async fn wait_status(
    manager: &ProcessManager,
    id: &str,
    what: &str,
    cond: impl Fn(&ProcessStatus) -> bool,
) -> ProcessStatus {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = manager.status(id);
        if let Some(s) = s.as_ref().filter(|s| cond(s)) {
            return s.clone();
        }
        assert!(std::time::Instant::now() < end, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_process_is_found_followed_and_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("ext.pid");
    let events = Arc::new(Recorder::default());
    let manager = ProcessManager::new(
        ManagerOptions {
            base_directory: dir.path().join("base"),
            log_directory: dir.path().join("base/logs"),
            force_shutdown_timeout: Duration::from_secs(5),
            resource_sample_interval: Duration::from_millis(200),
        },
        events.clone(),
    )
    .unwrap();
    let check = HealthCheckKind::Exec {
        command: "false".into(),
        arguments: Vec::new(),
    };
    manager
        .launch(vec![unmanaged("ext", &pid_file, check)])
        .await;
    let s = wait_status(&manager, "ext", "not found", |s| {
        s.reason.starts_with("not found")
    })
    .await;
    assert_eq!(s.state, ProcessState::Stopped);
    assert_eq!(
        s.reason,
        format!("not found: no live process in {}", pid_file.display())
    );

    let first = daemon(&pid_file);
    let s = wait_status(&manager, "ext", "found", |s| s.pid == Some(first)).await;
    assert_eq!(s.state, ProcessState::Running, "{s:?}");
    assert!(s.reason.contains("found by pid_file"), "{s:?}");
    assert!(s.started_at.is_some(), "{s:?}");
    // The failing check is reported, and that is all.
    wait_status(&manager, "ext", "unhealthy", |s| {
        s.reason.contains("unhealthy")
    })
    .await;
    let o = manager.overview_of("ext").unwrap();
    assert_eq!(o.health.status, HealthStatus::Unhealthy);
    assert_eq!(events.health_changes("ext")[0], "unknown->unhealthy");
    // Usage of its tree is sampled and shown.
    wait_status(&manager, "ext", "usage", |s| s.resources.is_some()).await;
    // Never started, stopped or restarted by the manager.
    for result in [
        manager.start_process("ext").await,
        manager.stop_process("ext", true).await,
        manager.restart_process("ext", true).await,
    ] {
        assert!(
            matches!(result, Err(ControlError::Conflict { .. })),
            "{result:?}"
        );
    }
    assert!(hsu_process::is_alive(first));

    // Its end is seen from the kernel; it is looked for again and found under a new PID.
    hsu_process::signal_process(first, StopSignal::Kill);
    let s = wait_status(&manager, "ext", "gone", |s| s.pid.is_none()).await;
    assert_eq!(s.state, ProcessState::Stopped, "{s:?}");
    let second = daemon(&pid_file);
    let s = wait_status(&manager, "ext", "found again", |s| s.pid == Some(second)).await;
    assert_eq!(s.state, ProcessState::Running);
    assert_eq!(
        events.transitions("ext"),
        [
            "stopped->starting",
            "starting->running",
            "running->stopped",
            "stopped->starting",
            "starting->running"
        ]
    );

    // A reload that changes it ends the old observation before the new one begins;
    // the process is not touched.
    let mut changed = unmanaged("ext", &pid_file, HealthCheckKind::Process);
    changed.discovery.as_mut().unwrap().check_interval = Duration::from_millis(150);
    let diff = manager.reload(vec![changed]).await;
    assert_eq!(diff.changed, ["ext"]);
    wait_status(&manager, "ext", "found by the new observer", |s| {
        s.pid == Some(second) && s.state == ProcessState::Running
    })
    .await;
    assert_eq!(
        events.transitions("ext")[5..],
        ["running->stopped", "stopped->starting", "starting->running"]
    );

    // The shutdown ends the observer and leaves the process running.
    manager.shutdown("test").await;
    assert!(hsu_process::is_alive(second));
    let s = manager.status("ext").unwrap();
    assert_eq!(s.state, ProcessState::Stopped);
    assert_eq!(
        s.reason,
        format!("no longer observed (the manager shuts down); pid {second} is left running")
    );
    hsu_process::signal_process(second, StopSignal::Kill);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_starts_once_its_unmanaged_dependency_is_found() {
    use hsu_managed_process::{ControlSpec, Dependency, DependencyCondition};
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("db.pid");
    let events = Arc::new(Recorder::default());
    let manager = ProcessManager::new(
        ManagerOptions {
            base_directory: dir.path().join("base"),
            log_directory: dir.path().join("base/logs"),
            force_shutdown_timeout: Duration::from_secs(5),
            resource_sample_interval: Duration::from_secs(1),
        },
        events.clone(),
    )
    .unwrap();
    let mut control = ControlSpec::new("sleep", dir.path());
    control.arguments = vec!["600".into()];
    control.graceful_timeout = Duration::from_secs(2);
    let app = ProcessDefinition {
        process_type: ProcessType::StandardManaged,
        control: Some(control),
        discovery: None,
        health_check: HealthCheckSpec::default(),
        depends_on: vec![Dependency {
            id: "db".into(),
            condition: DependencyCondition::Started,
            timeout: None,
            propagate_restart: false,
        }],
        ..unmanaged("app", &pid_file, HealthCheckKind::Process)
    };
    let db = unmanaged("db", &pid_file, HealthCheckKind::Process);
    let launch = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.launch(vec![db, app]).await })
    };
    let s = wait_status(&manager, "app", "waiting for db", |s| {
        s.reason.contains("waiting for db")
    })
    .await;
    assert_eq!(s.pid, None, "{s:?}");
    let outside = daemon(&pid_file);
    wait_status(&manager, "db", "found", |s| s.pid == Some(outside)).await;
    let s = wait_status(&manager, "app", "started", |s| {
        s.state == ProcessState::Running
    })
    .await;
    assert!(s.pid.is_some(), "{s:?}");
    launch.await.unwrap();
    manager.shutdown("test").await;
    assert!(hsu_process::is_alive(outside));
    hsu_process::signal_process(outside, StopSignal::Kill);
}
