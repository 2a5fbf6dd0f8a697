//! The one way in for the layers above the manager (the control API): what they may see
//! and do — processes, their status, definition and health, start / stop / restart,
//! reload, shutdown, captured output, the event journal, and the manager's own usage —
//! behind one type, [`ManagerFacade`].
//!
//! The API depends on this module rather than on the journal, the capture files, the
//! health model or the platform layer directly, so that each of those can change without
//! the API noticing, and so that no caller goes around the manager to a file. The facade
//! decides nothing about a process: every change is the supervisor's, reached through
//! [`ProcessManager`]. Errors are typed ([`ControlError`], [`LogError`], [`ReloadError`]);
//! a caller maps variants, never message text.

use crate::config::{Config, ConfigErrors, ManagerSettings};
use crate::{ProcessManager, ReloadDiff};
use bytes::Bytes;
use hsu_log_collection::CaptureFiles;
use hsu_managed_process::{ControlError, ProcessDefinition, ProcessStatus};
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use tokio::sync::{broadcast, mpsc};

pub use hsu_common::{Event, EventKind};
pub use hsu_log_collection::{manager_log_line, Stream, StreamStats, UnknownStream};
pub use hsu_monitoring::{HealthReport, HealthStatus};
pub use hsu_process_file::{Journal, JournalError, JournalOptions};

/// The manager as the control API sees it. Cheap to clone; every clone is the same.
#[derive(Clone)]
pub struct ManagerFacade {
    inner: Arc<Inner>,
}

struct Inner {
    manager: ProcessManager,
    journal: Arc<Journal>,
    capture: CaptureFiles,
    config_path: PathBuf,
    started_at: SystemTime,
    /// Set by [`ManagerFacade::request_shutdown`] and [`ManagerFacade::shutdown`]: no
    /// control request is taken after it.
    shutting_down: AtomicBool,
    /// The manager-wide settings in effect, compared with each reloaded config.
    running: Mutex<Option<RunningSettings>>,
    /// Applies a reloaded `log_level` (set by the binary, which owns the log).
    log_level: Mutex<Option<LevelSetter>>,
}

/// Applies a log level: `Ok(true)` applied, `Ok(false)` kept by an override.
type LevelSetter = Box<dyn Fn(&str) -> Result<bool, String> + Send + Sync>;

/// What the running manager was started with, as far as a reload can compare it.
#[derive(Debug, Clone)]
struct RunningSettings {
    manager: ManagerSettings,
    log_directory: PathBuf,
    /// An API token is in effect (from `HSU_API_TOKEN` or the token file).
    token: bool,
}

/// A manager-wide setting that a reloaded config changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    /// The config key, e.g. `process_manager.port`.
    pub key: &'static str,
    /// The value in effect.
    pub from: String,
    /// The value in the reloaded config.
    pub to: String,
}

impl std::fmt::Display for SettingChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.from, self.to)
    }
}

/// What a reload did: the processes it changed, and the manager-wide settings it applied
/// or could not apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Processes added, removed, changed and left alone.
    pub diff: ReloadDiff,
    /// Changed settings now in effect (`log_level`, informational metadata).
    pub applied: Vec<SettingChange>,
    /// Changed settings that take effect only when the manager restarts (port, bind,
    /// base directory, token file, timeouts, journal rotation, log directory).
    pub needs_restart: Vec<SettingChange>,
}

/// One process: its status, its definition and what its health checks found, read together.
#[derive(Debug, Clone)]
pub struct ProcessView {
    /// Its current status.
    pub status: ProcessStatus,
    /// Its definition from the running config.
    pub definition: Arc<ProcessDefinition>,
    /// What its health checks last found.
    pub health: HealthReport,
    /// While it waits to start: its dependencies not met yet, as `id (condition)`.
    pub waiting_for: Vec<String>,
    /// What status shows of its limits: who enforces each, raised limits, alerts.
    pub limits: crate::limits::LimitsView,
    /// Its captured streams: what was written and what could not be.
    pub logs: Vec<(Stream, hsu_log_collection::StreamStats)>,
}

/// The dependency graph (`GET /api/v1/graph`).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphView {
    /// Every process.
    pub nodes: Vec<GraphNode>,
    /// Every `depends_on` entry: `from` depends on `to`.
    pub edges: Vec<GraphEdge>,
    /// The start order: each layer starts once the layers before it meet their
    /// conditions; a layer's processes start in parallel (shutdown runs it backwards).
    pub start_order: Vec<Vec<String>>,
}

/// A process in the dependency graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphNode {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: hsu_common::ProcessState,
    /// While it waits to start: the dependencies not met yet.
    pub waiting_for: Vec<String>,
}

/// One `depends_on` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphEdge {
    /// The dependent.
    pub from: String,
    /// What it depends on.
    pub to: String,
    /// What must hold of `to`.
    pub condition: hsu_managed_process::DependencyCondition,
    /// A restart of `to` restarts `from`.
    pub propagate_restart: bool,
}

impl ProcessView {
    /// The check that judges its health: `process`, `http`, `grpc`, `tcp` or `exec` (an
    /// integrated process with no check configured is checked over gRPC).
    pub fn health_check_name(&self) -> &'static str {
        use hsu_managed_process::{HealthCheckKind, ProcessType};
        match &self.definition.health_check.kind {
            HealthCheckKind::Process
                if self.definition.process_type == ProcessType::IntegratedManaged =>
            {
                "grpc"
            }
            kind => crate::process_control_impl::check_name(kind),
        }
    }
}

/// The manager process's own resource usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ManagerUsage {
    /// Resident set size.
    pub rss_bytes: u64,
    /// User plus system CPU time since the manager started.
    pub cpu_seconds: f64,
    /// Number of file descriptors the manager has open.
    pub open_fds: u64,
}

/// Why captured output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Unknown process (only known ids name a capture file).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The capture file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The capture file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The read was cut short (the runtime is shutting down).
    #[error("reading {path} was interrupted")]
    Interrupted {
        /// The capture file that was being read.
        path: PathBuf,
    },
}

/// What output capture did since the manager started (see [`ManagerFacade::log_stats`]).
#[derive(Debug, Clone, Default)]
pub struct LogStats {
    /// Per captured stream: process id, stream, counters.
    pub streams: Vec<(String, Stream, StreamStats)>,
    /// Per aggregation target: its label (`file:<path>`, `process_manager_stdout`,
    /// `process_manager_stderr`) and counters.
    pub targets: Vec<(String, StreamStats)>,
    /// Bytes read from the pipes and not yet written, over all streams.
    pub queued_bytes: u64,
    /// Lines of the manager's own log not copied to the targets (queue full).
    pub manager_lines_dropped: u64,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file is invalid; every problem is in `problems`.
    #[error("{} is invalid ({} problem(s)); the running config is unchanged", .path.display(), .problems.0.len())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every problem found in it.
        problems: ConfigErrors,
    },
    /// The manager is shutting down and takes no reload.
    #[error("the manager is shutting down; the config was not reloaded")]
    ShuttingDown,
    /// The config is valid on its own but this manager must not run it (e.g. a
    /// non-loopback `bind` without an API token); nothing changed.
    #[error("{0}; the running config is unchanged")]
    Refused(String),
    /// The reload task ended without an answer (the runtime is shutting down).
    #[error("the reload was interrupted")]
    Interrupted,
}

/// What a follower of the journal receives next.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    /// The next event of the journal.
    Event(Event),
    /// The follower fell behind the live feed by more than it holds; `missed` events were
    /// skipped. Events after them follow. (A client that needs them asks again with
    /// `since` = the last `seq` it got.)
    Lagged {
        /// How many events were skipped.
        missed: u64,
    },
}

/// The journal from a `seq` on, then live: see [`ManagerFacade::follow_events`].
pub struct EventFollower {
    backlog: VecDeque<Event>,
    live: broadcast::Receiver<Event>,
    last_seq: u64,
}

impl EventFollower {
    /// The next event (or lag notice); `None` once the journal is gone. Cancel-safe: it
    /// can be raced against a timer without losing an event.
    pub async fn next(&mut self) -> Option<Followed> {
        if let Some(event) = self.backlog.pop_front() {
            self.last_seq = event.seq;
            return Some(Followed::Event(event));
        }
        loop {
            match self.live.recv().await {
                Ok(event) if event.seq <= self.last_seq => continue,
                Ok(event) => {
                    self.last_seq = event.seq;
                    return Some(Followed::Event(event));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(Followed::Lagged { missed })
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl ManagerFacade {
    /// The facade over `manager` and its `journal`; `config_path` is what a reload reads.
    /// Captured output is read from the manager's log directory.
    pub fn new(
        manager: ProcessManager,
        journal: Arc<Journal>,
        config_path: impl Into<PathBuf>,
    ) -> ManagerFacade {
        let capture = CaptureFiles::new(&manager.options().log_directory);
        ManagerFacade {
            inner: Arc::new(Inner {
                manager,
                journal,
                capture,
                config_path: config_path.into(),
                started_at: SystemTime::now(),
                shutting_down: AtomicBool::new(false),
                running: Mutex::new(None),
                log_level: Mutex::new(None),
            }),
        }
    }

    /// Records the config the manager runs with (and whether an API token is in effect),
    /// so that a reload can say which manager-wide changes need a restart.
    pub fn set_running_config(&self, config: &Config, token: bool) {
        self.inner
            .manager
            .log_collector()
            .update(config.log_collection.collector_settings());
        *lock(&self.inner.running) = Some(RunningSettings {
            manager: config.manager.clone(),
            log_directory: config.log_collection.directory.clone(),
            token,
        });
    }

    /// Sets what applies a reloaded `log_level`: it returns `Ok(true)` when applied,
    /// `Ok(false)` when an override (`RUST_LOG`, `--debug`) keeps the level.
    pub fn on_log_level(
        &self,
        apply: impl Fn(&str) -> Result<bool, String> + Send + Sync + 'static,
    ) {
        *lock(&self.inner.log_level) = Some(Box::new(apply));
    }

    /// The config file a reload re-reads.
    pub fn config_path(&self) -> &Path {
        &self.inner.config_path
    }

    /// When this facade (and so the manager's service) was created.
    pub fn started_at(&self) -> SystemTime {
        self.inner.started_at
    }

    /// Every process, in config order, read at once.
    pub fn processes(&self) -> Vec<ProcessView> {
        let collector = self.inner.manager.log_collector();
        self.inner
            .manager
            .overview()
            .into_iter()
            .map(|o| with_logs(view(o), collector))
            .collect()
    }

    /// The dependency graph: every process, every `depends_on` edge, and the order in
    /// which they start (each layer after the one before; inside a layer in parallel).
    pub fn graph(&self) -> GraphView {
        let processes = self.processes();
        let nodes = processes
            .iter()
            .map(|p| GraphNode {
                id: p.status.id.clone(),
                state: p.status.state,
                waiting_for: p.waiting_for.clone(),
            })
            .collect();
        let mut edges = Vec::new();
        for p in &processes {
            for d in &p.definition.depends_on {
                edges.push(GraphEdge {
                    from: p.status.id.clone(),
                    to: d.id.clone(),
                    condition: d.condition,
                    propagate_restart: d.propagate_restart,
                });
            }
        }
        // Layers by Kahn's algorithm; what a cycle would leave out (validation rules
        // cycles out) goes last.
        let ids: Vec<String> = processes.iter().map(|p| p.status.id.clone()).collect();
        let mut placed: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut layers: Vec<Vec<String>> = Vec::new();
        while placed.len() < ids.len() {
            let layer: Vec<String> = ids
                .iter()
                .filter(|id| !placed.contains(*id))
                .filter(|id| {
                    edges
                        .iter()
                        .filter(|e| &e.from == *id && ids.contains(&e.to))
                        .all(|e| placed.contains(&e.to))
                })
                .cloned()
                .collect();
            if layer.is_empty() {
                layers.push(
                    ids.iter()
                        .filter(|i| !placed.contains(*i))
                        .cloned()
                        .collect(),
                );
                break;
            }
            placed.extend(layer.iter().cloned());
            layers.push(layer);
        }
        GraphView {
            nodes,
            edges,
            start_order: layers,
        }
    }

    /// One process.
    pub fn process(&self, id: &str) -> Result<ProcessView, ControlError> {
        let manager = &self.inner.manager;
        let not_found = || ControlError::NotFound(id.to_owned());
        let v = view(manager.overview_of(id).ok_or_else(not_found)?);
        Ok(with_logs(v, manager.log_collector()))
    }

    /// The definition of a process, as loaded.
    pub fn definition(&self, id: &str) -> Option<Arc<ProcessDefinition>> {
        self.inner.manager.definition(id)
    }

    fn accepting(&self, id: &str) -> Result<(), ControlError> {
        if self.is_shutting_down() {
            return Err(ControlError::Unavailable(id.to_owned()));
        }
        Ok(())
    }

    /// Starts a stopped or failed process; resolves once it has started.
    pub async fn start(&self, id: &str) -> Result<(), ControlError> {
        self.accepting(id)?;
        self.inner.manager.start_process(id).await
    }

    /// Stops a process; resolves when nothing of its tree is left. `force` SIGKILLs the
    /// tree at once (also ending a graceful stop in progress).
    pub async fn stop(&self, id: &str, force: bool) -> Result<(), ControlError> {
        self.accepting(id)?;
        self.inner.manager.stop_process(id, force).await
    }

    /// Stops (if running) and starts a process; `force` ignores an open circuit breaker.
    pub async fn restart(&self, id: &str, force: bool) -> Result<(), ControlError> {
        self.accepting(id)?;
        self.inner.manager.restart_process(id, force).await
    }

    /// Re-reads the config file and applies the difference; an invalid file changes nothing.
    /// Manager-wide settings that cannot change while the manager runs are reported in
    /// [`ReloadOutcome::needs_restart`], not applied; `log_level` applies live.
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        if self.is_shutting_down() {
            return Err(ReloadError::ShuttingDown);
        }
        let path = &self.inner.config_path;
        let config = crate::config::load_file(path).map_err(|problems| ReloadError::Invalid {
            path: path.clone(),
            problems,
        })?;
        let running = lock(&self.inner.running).clone();
        if let Some(running) = &running {
            let bind = config.manager.bind;
            let token = running.token || config.manager.api_token_file.is_some();
            if !bind.is_loopback() && !token {
                return Err(ReloadError::Refused(format!(
                    "{}: process_manager.bind {bind} is not a loopback address and no API token is configured (process_manager.api_token_file or HSU_API_TOKEN)",
                    path.display()
                )));
            }
        }
        // Checked again: a shutdown that began while the file was read takes no reload.
        if self.is_shutting_down() {
            return Err(ReloadError::ShuttingDown);
        }
        let mut outcome = ReloadOutcome::default();
        if let Some(running) = running {
            outcome.needs_restart = restart_only_changes(&running, &config);
            outcome.applied = self.apply_live_settings(&running.manager, &config.manager);
        }
        // Rotation, timestamps and aggregation targets apply from the next line.
        self.inner
            .manager
            .log_collector()
            .update(config.log_collection.collector_settings());
        let diff = self.inner.manager.reload(config.processes).await;
        if self.is_shutting_down() && diff == ReloadDiff::default() {
            // The manager was already stopping its processes: nothing was applied.
            return Err(ReloadError::ShuttingDown);
        }
        outcome.diff = diff;
        Ok(outcome)
    }

    /// Applies the settings that can change live and records them as running.
    fn apply_live_settings(
        &self,
        old: &ManagerSettings,
        new: &ManagerSettings,
    ) -> Vec<SettingChange> {
        let mut applied = Vec::new();
        if old.log_level != new.log_level {
            let change = SettingChange {
                key: "process_manager.log_level",
                from: old.log_level.as_str().into(),
                to: new.log_level.as_str().into(),
            };
            let result = match lock(&self.inner.log_level).as_ref() {
                Some(apply) => apply(new.log_level.as_str()),
                None => Ok(false),
            };
            match result {
                Ok(true) => applied.push(change),
                Ok(false) => tracing::info!(
                    "{change}: kept the current level (RUST_LOG or --debug chose it)"
                ),
                Err(e) => tracing::warn!("{change}: {e}"),
            }
        }
        if old.profile_type != new.profile_type || old.metadata != new.metadata {
            applied.push(SettingChange {
                key: "metadata",
                from: format!("{:?} {:?}", old.profile_type, old.metadata),
                to: format!("{:?} {:?}", new.profile_type, new.metadata),
            });
        }
        if let Some(running) = lock(&self.inner.running).as_mut() {
            if applied.iter().any(|c| c.key == "process_manager.log_level") {
                running.manager.log_level = new.log_level;
            }
            running.manager.profile_type = new.profile_type.clone();
            running.manager.metadata = new.metadata.clone();
        }
        applied
    }

    /// Asks whoever runs the manager to shut it down; control requests are refused from now.
    pub fn request_shutdown(&self, reason: &str) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.manager.request_shutdown(reason);
    }

    /// Asks whoever runs the manager to end it leaving every process running for the
    /// next manager (see [`ProcessManager::detach`]); control requests are refused from now.
    pub fn request_detach(&self, reason: &str) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.manager.request_detach(reason);
    }

    /// Whether the shutdown requested is to leave the processes running.
    pub fn keep_processes_requested(&self) -> bool {
        self.inner.manager.keep_processes_requested()
    }

    /// Ends supervision leaving every process running (see [`ProcessManager::detach`]);
    /// returns the ids of those left running.
    pub async fn detach(&self, reason: &str) -> Vec<String> {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.manager.detach(reason).await
    }

    /// Resolves with the reason once a shutdown has been requested.
    pub async fn shutdown_requested(&self) -> String {
        self.inner.manager.shutdown_requested().await
    }

    /// Whether the manager is shutting down (requested, or under way).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Stops every process (see [`ProcessManager::shutdown`]); control requests are
    /// refused from the start of it.
    pub async fn shutdown(&self, reason: &str) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.manager.shutdown(reason).await;
    }

    /// Writes every event emitted so far to disk and stops the journal's writer. The last
    /// call of a shutdown, so that `manager_stopped` is on disk before the process exits.
    pub async fn close_journal(&self) {
        let journal = self.inner.journal.clone();
        if tokio::task::spawn_blocking(move || journal.close())
            .await
            .is_err()
        {
            tracing::warn!("the event journal was not closed cleanly");
        }
    }

    /// Where process `id`'s `stream` is captured; only known ids name a file.
    fn capture_path(&self, id: &str, stream: Stream) -> Result<PathBuf, ControlError> {
        if self.inner.manager.status(id).is_none() {
            return Err(ControlError::NotFound(id.to_owned()));
        }
        Ok(self.inner.capture.path(id, stream))
    }

    /// The last `lines` lines of a process's captured `stream`, read on into its rotated
    /// files (`.1`, `.2`, ...) when the current one holds fewer (at most 16 MiB), with
    /// everything the process wrote before the call; a stream not yet written is empty.
    pub async fn log_tail(
        &self,
        id: &str,
        stream: Stream,
        lines: usize,
    ) -> Result<Vec<u8>, LogError> {
        let path = self.capture_path(id, stream)?;
        // What the process wrote before this request is in the file before it is read.
        self.inner.manager.log_collector().flush(id).await;
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || hsu_log_collection::tail(&path, lines)).await
        };
        match read {
            Ok(Ok(tail)) => Ok(tail.bytes),
            Ok(Err(source)) => Err(LogError::Read { path, source }),
            Err(_) => Err(LogError::Interrupted { path }),
        }
    }

    /// Follows a process's captured `stream`: the returned future sends the last `lines`
    /// lines to `tx`, then whatever is appended (across truncation and rotation), until
    /// `tx`'s receiver is gone. Drop it to stop sooner.
    pub fn log_follow(
        &self,
        id: &str,
        stream: Stream,
        lines: usize,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<impl Future<Output = ()> + Send + 'static, ControlError> {
        let path = self.capture_path(id, stream)?;
        Ok(hsu_log_collection::follow(path, lines, tx))
    }

    /// What capture did so far: per captured stream `(id, stream, stats)` (bytes and
    /// lines written, dropped on write failures, failure episodes, memory held), and per
    /// aggregation target `(label, stats)`.
    pub fn log_stats(&self) -> LogStats {
        let collector = self.inner.manager.log_collector();
        LogStats {
            streams: collector.all_stats(),
            targets: collector.target_stats(),
            queued_bytes: collector.queued_bytes(),
            manager_lines_dropped: collector.manager_lines_dropped(),
        }
    }

    /// Stored events with a `seq` above `since` (every stored event for `None`), oldest
    /// first. Recent events come from memory; only older ones are read from the files.
    pub async fn events_since(&self, since: Option<u64>) -> Vec<Event> {
        let journal = self.inner.journal.clone();
        tokio::task::spawn_blocking(move || journal.since(since))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!("reading the event journal was interrupted");
                Vec::new()
            })
    }

    /// The events after `since` (none for `None`), then every new one as it is emitted:
    /// no gap and no duplicate at the seam.
    pub async fn follow_events(&self, since: Option<u64>) -> EventFollower {
        let journal = self.inner.journal.clone();
        let read = {
            let journal = journal.clone();
            tokio::task::spawn_blocking(move || journal.follow(since)).await
        };
        let follow = read.unwrap_or_else(|_| {
            tracing::warn!("reading the event journal was interrupted");
            journal.follow(None)
        });
        EventFollower {
            backlog: follow.backlog.into(),
            live: follow.live,
            last_seq: since.unwrap_or(0),
        }
    }

    /// How many writes of PID files and `state.json` have failed so far.
    pub fn state_write_failures(&self) -> u64 {
        self.inner.manager.file_write_failures()
    }

    /// Journal lines that could not be written since the manager started.
    pub fn journal_write_failures(&self) -> u64 {
        self.inner.journal.write_failures()
    }

    /// The manager process's own usage; `None` where the platform cannot tell.
    pub fn usage(&self) -> Option<ManagerUsage> {
        hsu_process::self_usage().map(|u| ManagerUsage {
            rss_bytes: u.rss_bytes,
            cpu_seconds: u.cpu_seconds,
            open_fds: u.open_fds,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The manager-wide settings that differ between `running` and `new` and apply only at
/// the next start of the manager.
fn restart_only_changes(running: &RunningSettings, new: &Config) -> Vec<SettingChange> {
    let (old, new_m) = (&running.manager, &new.manager);
    let mut changes = Vec::new();
    let mut check = |key: &'static str, from: String, to: String| {
        if from != to {
            changes.push(SettingChange { key, from, to });
        }
    };
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or_else(|| "(default)".to_owned(), |p| p.display().to_string())
    };
    check(
        "process_manager.port",
        old.port.to_string(),
        new_m.port.to_string(),
    );
    check(
        "process_manager.bind",
        old.bind.to_string(),
        new_m.bind.to_string(),
    );
    check(
        "process_manager.base_directory",
        path(&old.base_directory),
        path(&new_m.base_directory),
    );
    check(
        "process_manager.api_token_file",
        path(&old.api_token_file),
        path(&new_m.api_token_file),
    );
    check(
        "process_manager.force_shutdown_timeout",
        format!("{:?}", old.force_shutdown_timeout),
        format!("{:?}", new_m.force_shutdown_timeout),
    );
    check(
        "process_manager.resource_sample_interval",
        format!("{:?}", old.resource_sample_interval),
        format!("{:?}", new_m.resource_sample_interval),
    );
    check(
        "process_manager.event_journal",
        format!(
            "max_size {} max_files {}",
            old.event_journal.max_size, old.event_journal.max_files
        ),
        format!(
            "max_size {} max_files {}",
            new_m.event_journal.max_size, new_m.event_journal.max_files
        ),
    );
    check(
        "log_collection.directory",
        running.log_directory.display().to_string(),
        new.log_collection.directory.display().to_string(),
    );
    changes
}

/// The view with its captured streams' counters.
fn with_logs(mut v: ProcessView, collector: &hsu_log_collection::LogCollector) -> ProcessView {
    for stream in [Stream::Stdout, Stream::Stderr] {
        if let Some(stats) = collector.stats(&v.status.id, stream) {
            v.logs.push((stream, stats));
        }
    }
    v
}

fn view(o: crate::manager::Overview) -> ProcessView {
    let crate::manager::Overview {
        status,
        mut health,
        waiting_for,
        limits,
        definition,
    } = o;
    // Liveness is known continuously (the kernel reports an exit at once): while the
    // process runs, it was last confirmed now.
    let liveness = definition.health_check.kind == hsu_managed_process::HealthCheckKind::Process
        && definition.process_type != hsu_managed_process::ProcessType::IntegratedManaged;
    if liveness && health.status == HealthStatus::Healthy {
        health.last_check_at = Some(std::time::SystemTime::now());
    }
    ProcessView {
        status,
        definition,
        health,
        waiting_for,
        limits,
        logs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManagerOptions;
    use hsu_common::EventSink;
    use std::time::Duration;

    async fn facade(dir: &Path) -> ManagerFacade {
        let journal = Arc::new(Journal::open(&dir.join("events.jsonl")).unwrap());
        let manager = ProcessManager::new(
            ManagerOptions {
                base_directory: dir.to_path_buf(),
                log_directory: dir.join("logs"),
                force_shutdown_timeout: Duration::from_secs(5),
                resource_sample_interval: Duration::from_secs(1),
            },
            journal.clone(),
        )
        .unwrap();
        ManagerFacade::new(manager, journal, dir.join("config.yaml"))
    }

    #[tokio::test]
    async fn unknown_ids_and_shutdown_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = facade(dir.path()).await;
        assert_eq!(
            f.stop("nope", true).await,
            Err(ControlError::NotFound("nope".into()))
        );
        assert!(matches!(
            f.log_tail("nope", Stream::Stdout, 10).await,
            Err(LogError::Control(ControlError::NotFound(_)))
        ));
        assert!(f.process("nope").is_err());
        f.request_shutdown("test");
        assert_eq!(
            f.start("nope").await,
            Err(ControlError::Unavailable("nope".into()))
        );
        assert!(matches!(f.reload().await, Err(ReloadError::ShuttingDown)));
        assert_eq!(f.shutdown_requested().await, "test");
        f.shutdown("test").await;
    }

    #[tokio::test]
    async fn reload_reports_settings_that_need_a_restart_and_refuses_an_open_bind() {
        let dir = tempfile::tempdir().unwrap();
        let f = facade(dir.path()).await;
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "process_manager:\n  port: 0\nmanaged_processes: []\n",
        )
        .unwrap();
        f.set_running_config(&crate::config::load_file(&path).unwrap(), false);
        let levels = Arc::new(Mutex::new(Vec::new()));
        let seen = levels.clone();
        f.on_log_level(move |l| {
            seen.lock().unwrap().push(l.to_owned());
            Ok(true)
        });
        std::fs::write(
            &path,
            "process_manager:\n  port: 4000\n  log_level: debug\nmanaged_processes: []\n",
        )
        .unwrap();
        let outcome = f.reload().await.unwrap();
        let keys: Vec<_> = outcome.needs_restart.iter().map(|c| c.key).collect();
        assert_eq!(keys, ["process_manager.port"]);
        assert_eq!(
            outcome.needs_restart[0].to_string(),
            "process_manager.port: 0 -> 4000"
        );
        assert_eq!(outcome.applied.len(), 1, "{:?}", outcome.applied);
        assert_eq!(*levels.lock().unwrap(), ["debug"]);
        // Still pending on the next reload: the port in effect has not changed.
        let again = f.reload().await.unwrap();
        assert_eq!(again.needs_restart.len(), 1);
        assert!(again.applied.is_empty());

        std::fs::write(
            &path,
            "process_manager:\n  port: 0\n  bind: 0.0.0.0\nmanaged_processes: []\n",
        )
        .unwrap();
        let e = f.reload().await.unwrap_err();
        assert!(matches!(e, ReloadError::Refused(_)), "{e}");
        assert!(e.to_string().contains("0.0.0.0"), "{e}");
        f.shutdown("test").await;
    }

    #[tokio::test]
    async fn followers_get_the_backlog_then_live_events() {
        let dir = tempfile::tempdir().unwrap();
        let f = facade(dir.path()).await;
        let journal = f.inner.journal.clone();
        for _ in 0..3 {
            journal.emit(
                None,
                EventKind::ConfigReloaded {
                    added: vec![],
                    removed: vec![],
                    changed: vec![],
                },
            );
        }
        assert_eq!(f.events_since(Some(1)).await.len(), 2);
        let mut follower = f.follow_events(Some(1)).await;
        journal.emit(None, EventKind::ManagerStopped { reason: "x".into() });
        let mut seqs = Vec::new();
        while seqs.len() < 3 {
            match follower.next().await {
                Some(Followed::Event(e)) => seqs.push(e.seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seqs, [2, 3, 4]);

        // A follower that falls behind is told how many events it missed, then goes on.
        let mut slow = f.follow_events(None).await;
        for _ in 0..1100 {
            journal.emit(None, EventKind::ManagerStopped { reason: "x".into() });
        }
        assert_eq!(slow.next().await, Some(Followed::Lagged { missed: 76 }));
        match slow.next().await {
            Some(Followed::Event(e)) => assert_eq!(e.seq, 4 + 76 + 1),
            other => panic!("unexpected {other:?}"),
        }
        f.shutdown("test").await;
    }
}
