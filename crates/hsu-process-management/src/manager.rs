//! The `ProcessManager`: owns one supervisor per process, the orphan reaper, live reload
//! and the shutdown of everything. Cheap to clone; every clone is the same manager.

use crate::observer::ObserverHandle;
use crate::platform::{OsPlatform, Platform};
use crate::process_control_impl::{Context, Ending, ProcessHandle, RunId};
use hsu_common::{EventKind, EventSink, ProcessState};
use hsu_managed_process::{
    ControlError, ControlSpec, ProcessControl, ProcessDefinition, ProcessStatus, ResourceUsage,
};
use hsu_monitoring::HealthReport;
use hsu_process_file::{FileWriter, PidFiles, StateFile};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Manager-wide settings the supervisors need.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// The manager's base directory (PID files, `state.json`, the journal).
    pub base_directory: PathBuf,
    /// Where per-process output files go.
    pub log_directory: PathBuf,
    /// Bound on the whole shutdown.
    pub force_shutdown_timeout: Duration,
    /// How often each running process tree's resource usage is sampled.
    pub resource_sample_interval: Duration,
}

enum Supervision {
    Managed(ProcessHandle),
    /// An unmanaged process, found and watched by its observer (never started,
    /// stopped or signalled).
    Observed(ObserverHandle),
    /// Not supervised by a task: disabled (until started by hand), or unmanaged.
    Idle(ProcessStatus),
}

struct Entry {
    /// Shared, so status readers get it without copying.
    def: Arc<ProcessDefinition>,
    supervision: Supervision,
}

struct Inner {
    entries: Mutex<Vec<Entry>>,
    ctx: Arc<Context>,
    options: ManagerOptions,
    events: Arc<dyn EventSink>,
    reaper: tokio::task::JoinHandle<()>,
    /// Set once someone (a signal, the API) asks the manager to shut down.
    shutdown_requested: watch::Sender<Option<String>>,
    /// The shutdown asked for leaves the processes running (see [`ProcessManager::detach`]).
    keep_processes: std::sync::atomic::AtomicBool,
    /// `state.json`: which processes were stopped by hand (the supervisors set the marks).
    durable: Arc<StateFile>,
    /// The last resource sample of each running process's tree, by id.
    usage: Mutex<HashMap<String, Sample>>,
    sampler: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Serialises reloads and the shutdown so they never interleave.
    reconfigure: tokio::sync::Mutex<bool>,
}

/// Supervises every configured process.
#[derive(Clone)]
pub struct ProcessManager {
    inner: Arc<Inner>,
}

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// A directory or file under the base directory could not be created or opened.
    #[error("cannot prepare {path}: {source}")]
    Files {
        /// The directory or file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// What [`ProcessManager::prepare`] left for [`ProcessManager::start_prepared`].
pub struct Prepared {
    to_start: Vec<ProcessHandle>,
    leftovers: Vec<ProcessHandle>,
}

/// What a reload changed, by process id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadDiff {
    /// New processes, now started.
    pub added: Vec<String>,
    /// Processes no longer in the config, now stopped.
    pub removed: Vec<String>,
    /// Processes whose definition changed, now restarted.
    pub changed: Vec<String>,
    /// Processes left alone.
    pub unchanged: Vec<String>,
}

impl ProcessManager {
    /// Starts supervising `definitions`: every enabled managed process is started.
    pub async fn start(
        definitions: Vec<ProcessDefinition>,
        options: ManagerOptions,
        events: Arc<dyn EventSink>,
    ) -> Result<ProcessManager, ManagerError> {
        let manager = ProcessManager::new(options, events)?;
        manager.launch(definitions).await;
        Ok(manager)
    }

    /// A manager with no processes yet: the files it needs are ready and it is the
    /// subreaper. [`Self::launch`] gives it its processes (so a caller can first set up
    /// what may fail, such as the API's listeners, without starting anything).
    pub fn new(
        options: ManagerOptions,
        events: Arc<dyn EventSink>,
    ) -> Result<ProcessManager, ManagerError> {
        Self::with_platform(options, events, Arc::new(OsPlatform))
    }

    /// [`Self::new`] on a given platform (the real one, or a made-up one in tests).
    pub fn with_platform(
        options: ManagerOptions,
        events: Arc<dyn EventSink>,
        platform: Arc<dyn Platform>,
    ) -> Result<ProcessManager, ManagerError> {
        let pid_dir = options.base_directory.join("pids");
        let files_err = |path: &PathBuf| {
            let path = path.clone();
            move |source| ManagerError::Files { path, source }
        };
        let pid_files = PidFiles::new(&pid_dir).map_err(files_err(&pid_dir))?;
        hsu_process_file::create_dir(&options.log_directory)
            .map_err(files_err(&options.log_directory))?;
        let writer = FileWriter::start().map_err(files_err(&options.base_directory))?;
        if let Err(e) = hsu_process::become_subreaper() {
            tracing::warn!("cannot become child subreaper ({e}); grandchildren that leave their process group may outlive a stop");
        }
        let durable = Arc::new(StateFile::open(
            &options.base_directory.join("state.json"),
            writer.clone(),
        ));
        let cgroups = platform.cgroup_area(&options.base_directory);
        let ctx = Arc::new(Context {
            events: events.clone(),
            platform,
            pid_files,
            writer,
            durable: durable.clone(),
            // The config's `log_collection` arrives with `log_collector().update` (the
            // facade passes it on). A manager never given one stores output as written:
            // no timestamps, no aggregation.
            capture: hsu_log_collection::LogCollector::new(
                &options.log_directory,
                options.base_directory.join("fifos"),
                hsu_log_collection::Settings {
                    timestamps: false,
                    ..Default::default()
                },
                events.clone(),
            ),
            tag_prefix: options.base_directory.display().to_string(),
            peers: Arc::new(crate::deps::Peers::default()),
            cgroups,
            boot_id: hsu_process::boot_id(),
        });
        let manager = ProcessManager {
            inner: Arc::new(Inner {
                entries: Mutex::new(Vec::new()),
                ctx,
                options,
                events,
                reaper: tokio::spawn(reap_orphans_forever()),
                shutdown_requested: watch::channel(None).0,
                keep_processes: std::sync::atomic::AtomicBool::new(false),
                durable,
                usage: Mutex::new(HashMap::new()),
                sampler: Mutex::new(None),
                reconfigure: tokio::sync::Mutex::new(false),
            }),
        };
        let sampler = tokio::spawn(sample_forever(Arc::downgrade(&manager.inner)));
        *lock(&manager.inner.sampler) = Some(sampler);
        Ok(manager)
    }

    /// Takes on `definitions` and starts every enabled managed one — except what
    /// `state.json` says otherwise of: a run an earlier manager left alive (same PID,
    /// same start time) is adopted instead of started again, a process stopped by hand
    /// stays stopped, an open breaker stays open. A recorded run whose process is no
    /// longer configured (or no longer enabled) is adopted only to be stopped.
    pub async fn launch(&self, definitions: Vec<ProcessDefinition>) {
        let prepared = self.prepare(definitions);
        self.start_prepared(prepared).await;
    }

    /// The first half of [`Self::launch`]: takes on `definitions` (status answers for
    /// each from now), adopts the runs an earlier manager left, and kills what no record
    /// accounts for; nothing is started. A caller that then fails (its API cannot
    /// listen) ends the manager with [`Self::detach`], leaving adopted runs untouched.
    pub fn prepare(&self, definitions: Vec<ProcessDefinition>) -> Prepared {
        if let Some(problem) = self.inner.durable.problem() {
            self.inner.events.emit(
                None,
                EventKind::Alert {
                    message: problem.to_owned(),
                },
            );
        }
        let mut to_start = Vec::new();
        let mut leftovers = Vec::new();
        {
            let mut entries = self.entries();
            for id in self.inner.durable.ids() {
                let configured = definitions
                    .iter()
                    .any(|d| d.id == id && supervised(d).is_some());
                if !configured {
                    leftovers.extend(self.leftover(&id));
                }
            }
            for def in definitions {
                let held = self
                    .inner
                    .durable
                    .record(&def.id)
                    .and_then(|r| r.restarts)
                    .is_some_and(|r| r.circuit == "open");
                let entry = self.supervise(def, true);
                if let Some(h) = self.to_start(&entry).filter(|_| !held) {
                    to_start.push(h);
                }
                entries.push(entry);
            }
        }
        // After the entries are in place (status answers for every configured process),
        // before anything starts.
        self.kill_strays();
        Prepared {
            to_start,
            leftovers,
        }
    }

    /// The second half of [`Self::launch`]: starts what [`Self::prepare`] found to
    /// start, and stops the adopted runs of processes no longer configured.
    pub async fn start_prepared(&self, prepared: Prepared) {
        let Prepared {
            to_start,
            leftovers,
        } = prepared;
        let deadline = Instant::now() + self.inner.options.force_shutdown_timeout;
        let mut work = JoinSet::new();
        for handle in leftovers {
            work.spawn(async move {
                if let Err(e) = handle.end(Ending::Removed, deadline).await {
                    tracing::warn!(id = handle.id(), "stopping a run no longer configured: {e}");
                }
            });
        }
        work.spawn(start_all(to_start, "started with the manager"));
        while work.join_next().await.is_some() {}
    }

    /// Kills what is left of trees an earlier manager started on this base directory and
    /// that no recorded run accounts for: members of a run whose main process died while
    /// no manager ran, or a run spawned just before that manager was killed, before its
    /// record reached the disk. Nothing supervises them and nothing ever would: they are
    /// orphans, and the manager leaves none. Runs to be adopted keep their whole tree.
    fn kill_strays(&self) {
        let durable = &self.inner.durable;
        let boot = &self.inner.ctx.boot_id;
        let adoptable: std::collections::HashSet<String> = durable
            .ids()
            .into_iter()
            .filter(|id| {
                durable.record(id).and_then(|r| r.run).is_some_and(|run| {
                    run.boot_id.is_some()
                        && run.boot_id == *boot
                        && self.inner.ctx.platform.start_time(run.pid) == Some(run.start_time)
                })
            })
            .map(|id| self.inner.ctx.tag(&id))
            .collect();
        let prefix = self.inner.ctx.tag("");
        let strays: Vec<(u32, String)> = hsu_process::tagged_under(&prefix)
            .into_iter()
            .filter(|(_, tag)| !adoptable.contains(tag))
            .collect();
        for (pid, tag) in &strays {
            let id = tag.strip_prefix(&prefix).unwrap_or(tag);
            tracing::warn!(
                id,
                pid,
                "left by an earlier manager and not adoptable (no record of its run): killed"
            );
            hsu_process::signal_process(*pid, hsu_common::StopSignal::Kill);
        }
        if !strays.is_empty() {
            self.inner.events.emit(
                None,
                EventKind::Alert {
                    message: format!(
                        "{} processes left by an earlier manager could not be adopted and were killed: {}",
                        strays.len(),
                        strays
                            .iter()
                            .map(|(pid, tag)| format!(
                                "{} (pid {pid})",
                                tag.strip_prefix(&prefix).unwrap_or(tag)
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            );
        }
    }

    /// A supervisor for the recorded run of `id`, a process no longer configured: it
    /// adopts the run (if still alive) so that it can be stopped like any other, with the
    /// stop signal and graceful timeout it was started with.
    fn leftover(&self, id: &str) -> Option<ProcessHandle> {
        let mut record = self.inner.durable.record(id)?;
        let Some(run) = record.run.as_mut() else {
            // Nothing runs: the record only kept marks and counters.
            self.inner.durable.remove(id);
            return None;
        };
        // Judged by nothing but its PID and start time: no definition to compare.
        run.definition = None;
        let mut control = ControlSpec::new(run.executable.clone(), "/");
        control.stop_signal = run.stop_signal.parse().unwrap_or_default();
        if run.graceful_timeout_ms > 0 {
            control.graceful_timeout = Duration::from_millis(run.graceful_timeout_ms);
        }
        control.restart_policy = hsu_managed_process::RestartPolicy::Never;
        let def = ProcessDefinition {
            id: id.to_owned(),
            process_type: if run.port.is_some() {
                hsu_managed_process::ProcessType::IntegratedManaged
            } else {
                hsu_managed_process::ProcessType::StandardManaged
            },
            enabled: true,
            control: Some(control.clone()),
            health_check: Default::default(),
            log_collection: Default::default(),
            discovery: None,
            metadata: Default::default(),
            profile_type: None,
            depends_on: Vec::new(),
            ready_log_line: None,
        };
        // A hand-stopped mark must not turn the stop into something else.
        record.set_stopped_by_hand(false);
        Some(ProcessHandle::spawn_restored(
            def,
            control,
            self.inner.ctx.clone(),
            "no longer configured",
            Some(record),
        ))
    }

    fn entries(&self) -> MutexGuard<'_, Vec<Entry>> {
        lock(&self.inner.entries)
    }

    /// Whether an operator stopped `id` by hand (kept in `state.json` across restarts).
    pub fn stopped_by_hand(&self, id: &str) -> bool {
        self.inner.durable.stopped_by_hand(id)
    }

    /// The supervisor of `id`, while it has one (monitors send their reports to it).
    pub fn supervisor(&self, id: &str) -> Option<ProcessHandle> {
        self.entries()
            .iter()
            .find(|e| e.def.id == id)
            .and_then(|e| match &e.supervision {
                Supervision::Managed(h) => Some(h.clone()),
                Supervision::Observed(_) | Supervision::Idle(_) => None,
            })
    }

    /// How many writes of PID files, `.port` files and `state.json` have failed (a full
    /// disk, a removed directory).
    pub fn file_write_failures(&self) -> u64 {
        self.inner.ctx.writer.failures()
    }

    /// The background writer of PID files and `state.json` (tests stall it).
    #[cfg(test)]
    pub(crate) fn file_writer(&self) -> &FileWriter {
        &self.inner.ctx.writer
    }

    /// The supervisor to start for a new entry: managed, enabled, not stopped by hand.
    fn to_start(&self, entry: &Entry) -> Option<ProcessHandle> {
        match &entry.supervision {
            Supervision::Managed(h) if !self.stopped_by_hand(&entry.def.id) => Some(h.clone()),
            _ => None,
        }
    }

    /// A supervisor for an enabled managed definition; an idle entry otherwise. With
    /// `restore`, the supervisor takes back what `state.json` recorded of the process.
    fn supervise(&self, def: ProcessDefinition, restore: bool) -> Entry {
        let reason = if self.stopped_by_hand(&def.id) {
            HELD
        } else {
            "not started"
        };
        let supervision = match supervised(&def) {
            Some(control) => Supervision::Managed(ProcessHandle::spawn_restored(
                def.clone(),
                control.clone(),
                self.inner.ctx.clone(),
                reason,
                restore
                    .then(|| self.inner.durable.record(&def.id))
                    .flatten(),
            )),
            None if def.process_type.is_managed() || !def.enabled => {
                Supervision::Idle(idle(&def, "disabled in the config"))
            }
            None => match &def.discovery {
                Some(discovery) => Supervision::Observed(ObserverHandle::spawn(
                    def.clone(),
                    discovery.clone(),
                    self.inner.ctx.clone(),
                )),
                // Validation requires a discovery for every unmanaged process.
                None => Supervision::Idle(idle(&def, "unmanaged, with no discovery configured")),
            },
        };
        Entry {
            def: Arc::new(def),
            supervision,
        }
    }

    /// [`Self::supervise`] for a changed definition of the observed process `previous`:
    /// a new observer begins once `previous` has ended, so the journal has the old
    /// observation's end before the new one's start; anything else begins at once.
    fn supervise_after(&self, def: ProcessDefinition, previous: ObserverHandle) -> Entry {
        const WHY: &str = "its definition changed";
        match &def.discovery {
            Some(discovery) if !def.process_type.is_managed() && def.enabled => {
                let observer = ObserverHandle::spawn_after(
                    def.clone(),
                    discovery.clone(),
                    self.inner.ctx.clone(),
                    Some((previous, WHY)),
                );
                Entry {
                    def: Arc::new(def),
                    supervision: Supervision::Observed(observer),
                }
            }
            _ => {
                tokio::spawn(async move { previous.end(WHY).await });
                self.supervise(def, false)
            }
        }
    }

    /// The collector of every process's output (settings, reconnecting adopted
    /// processes, stats).
    pub fn log_collector(&self) -> &hsu_log_collection::LogCollector {
        &self.inner.ctx.capture
    }

    /// The settings the manager was started with.
    pub fn options(&self) -> &ManagerOptions {
        &self.inner.options
    }

    /// Where events go (the journal).
    pub fn events(&self) -> &Arc<dyn EventSink> {
        &self.inner.events
    }

    /// Every process's status, in config order.
    pub fn statuses(&self) -> Vec<ProcessStatus> {
        let usage = lock(&self.inner.usage);
        self.entries()
            .iter()
            .map(|e| with_usage(status_of(e), &usage))
            .collect()
    }

    /// One process's status; `None` for an unknown id.
    pub fn status(&self, id: &str) -> Option<ProcessStatus> {
        let usage = lock(&self.inner.usage);
        self.entries()
            .iter()
            .find(|e| e.def.id == id)
            .map(|e| with_usage(status_of(e), &usage))
    }

    /// Every process's status with its health and definition, in config order, read at
    /// once.
    pub fn overview(&self) -> Vec<Overview> {
        let usage = lock(&self.inner.usage);
        self.entries()
            .iter()
            .map(|e| overview_of(e, &usage))
            .collect()
    }

    /// One process's status with its health and definition; `None` for an unknown id.
    pub fn overview_of(&self, id: &str) -> Option<Overview> {
        let usage = lock(&self.inner.usage);
        self.entries()
            .iter()
            .find(|e| e.def.id == id)
            .map(|e| overview_of(e, &usage))
    }

    /// The definition of a process, as loaded.
    pub fn definition(&self, id: &str) -> Option<Arc<ProcessDefinition>> {
        self.entries()
            .iter()
            .find(|e| e.def.id == id)
            .map(|e| e.def.clone())
    }

    /// The supervisor of `id`, creating one for a disabled managed process when
    /// `create` (a start by hand runs it). `Ok(None)`: a disabled process that was never
    /// started. Unknown ids and unmanaged processes are errors.
    fn handle_for(&self, id: &str, create: bool) -> Result<Option<ProcessHandle>, ControlError> {
        let mut entries = self.entries();
        let entry = entries
            .iter_mut()
            .find(|e| e.def.id == id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        match &entry.supervision {
            Supervision::Managed(h) => Ok(Some(h.clone())),
            Supervision::Observed(_) | Supervision::Idle(_)
                if !entry.def.process_type.is_managed() =>
            {
                Err(ControlError::Conflict {
                    id: id.to_owned(),
                    message:
                        "unmanaged processes are never started, stopped or restarted by the manager"
                            .into(),
                })
            }
            // Only unmanaged processes are observed.
            Supervision::Observed(_) => Ok(None),
            Supervision::Idle(_) => match (&entry.def.control, create) {
                (Some(control), true) => {
                    let h = ProcessHandle::spawn(
                        (*entry.def).clone(),
                        control.clone(),
                        self.inner.ctx.clone(),
                        "not started",
                    );
                    entry.supervision = Supervision::Managed(h.clone());
                    Ok(Some(h))
                }
                _ => Ok(None),
            },
        }
    }

    fn managed(&self, id: &str, create: bool) -> Result<ProcessHandle, ControlError> {
        self.handle_for(id, create)?
            .ok_or_else(|| ControlError::Conflict {
                id: id.to_owned(),
                message: "not running (disabled in the config)".into(),
            })
    }

    /// Starts a stopped or failed process (a start by hand also closes its breaker and
    /// clears a stopped-by-hand mark).
    pub async fn start_process(&self, id: &str) -> Result<(), ControlError> {
        let result = self.managed(id, true)?.start().await;
        self.durable_barrier().await;
        result
    }

    /// Resolves once the marks the supervisors set so far are on disk, so that an answer
    /// to a stop or start survives a crash of the manager right after it.
    async fn durable_barrier(&self) {
        // A blocking-pool thread waits for the writer (this also keeps a paused test
        // clock from running ahead while the disk is written). A disk that stopped
        // answering must not hang the caller: after a while the answer goes out anyway
        // (the change is in effect; its record reaches the disk when the disk does).
        #[cfg(not(test))]
        const PATIENCE: Duration = Duration::from_secs(5);
        #[cfg(test)]
        const PATIENCE: Duration = Duration::from_millis(200);
        let writer = self.inner.ctx.writer.clone();
        let flushed = tokio::task::spawn_blocking(move || writer.flush());
        if tokio::time::timeout(PATIENCE, flushed).await.is_err() {
            tracing::warn!(
                "state.json is not on disk after {:?} (a stalled disk?); answering anyway",
                PATIENCE
            );
        }
    }

    /// Stops a process; resolves when nothing of its tree is left. `force` sends SIGKILL
    /// to the whole tree at once (and ends a graceful stop already in progress). The
    /// process stays stopped, across manager restarts too, until started by hand.
    ///
    /// Processes that depend on it (directly or not) and are not stopped are stopped
    /// first, dependents before their dependencies, each saying why; the stop's reason
    /// names them.
    pub async fn stop_process(&self, id: &str, force: bool) -> Result<(), ControlError> {
        let Some(handle) = self.handle_for(id, false)? else {
            // A disabled process that was never started is already stopped.
            return Ok(());
        };
        let dependents = self.running_dependents(id);
        let why = if dependents.is_empty() {
            "stopped by request".to_owned()
        } else {
            let ids: Vec<&str> = dependents.iter().map(|(d, _)| d.as_str()).collect();
            format!(
                "stopped by request; its dependents {} were stopped first",
                ids.join(", ")
            )
        };
        let reason = format!("stopped with its dependency {id}");
        let handles: Vec<(String, ProcessHandle)> = dependents;
        let graph = self.dependency_graph();
        stop_in_order(handles, &graph, |h| {
            let reason = reason.clone();
            async move { h.stop_because(force, &reason).await }
        })
        .await;
        let result = handle.stop_because(force, &why).await;
        self.durable_barrier().await;
        result
    }

    /// The supervised processes that depend on `id`, directly or through others, and
    /// are not stopped.
    fn running_dependents(&self, id: &str) -> Vec<(String, ProcessHandle)> {
        let entries = self.entries();
        let mut found: Vec<String> = Vec::new();
        let mut frontier = vec![id.to_owned()];
        while let Some(at) = frontier.pop() {
            for e in entries.iter() {
                let depends = e.def.depends_on.iter().any(|d| d.id == at);
                if depends && e.def.id != id && !found.contains(&e.def.id) {
                    found.push(e.def.id.clone());
                    frontier.push(e.def.id.clone());
                }
            }
        }
        entries
            .iter()
            .filter(|e| found.contains(&e.def.id))
            .filter_map(|e| match &e.supervision {
                Supervision::Managed(h) if h.status().state != ProcessState::Stopped => {
                    Some((e.def.id.clone(), h.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Every process's dependencies: id → the ids it depends on.
    pub fn dependency_graph(&self) -> HashMap<String, Vec<String>> {
        self.entries()
            .iter()
            .map(|e| {
                let deps = e.def.depends_on.iter().map(|d| d.id.clone()).collect();
                (e.def.id.clone(), deps)
            })
            .collect()
    }

    /// Stops (if running) and starts again; `force` ignores an open breaker.
    pub async fn restart_process(&self, id: &str, force: bool) -> Result<(), ControlError> {
        let result = self.managed(id, true)?.restart(force).await;
        self.durable_barrier().await;
        result
    }

    /// Applies a new set of definitions: starts added ones, stops removed ones, restarts
    /// changed ones and leaves the rest untouched (same PID). A changed process's old
    /// tree is gone before its new definition starts, whatever else arrives meanwhile
    /// (the supervisor holds it); a removed process stays listed (`stopping`) until its
    /// tree is gone.
    pub async fn reload(&self, definitions: Vec<ProcessDefinition>) -> ReloadDiff {
        let guard = self.inner.reconfigure.lock().await;
        if *guard {
            return ReloadDiff::default();
        }
        let deadline = Instant::now() + self.inner.options.force_shutdown_timeout;
        let mut diff = ReloadDiff::default();
        let mut work = JoinSet::new();
        let mut to_start = Vec::new();
        // Entries whose supervisor ends: (id, what replaces the entry afterwards).
        let mut ending: Vec<(ProcessHandle, Option<Entry>)> = Vec::new();
        {
            let mut entries = self.entries();
            let mut old: Vec<Entry> = std::mem::take(&mut *entries);
            for def in definitions {
                let Some(i) = old.iter().position(|e| e.def.id == def.id) else {
                    diff.added.push(def.id.clone());
                    let entry = self.supervise(def, false);
                    to_start.extend(self.to_start(&entry));
                    entries.push(entry);
                    continue;
                };
                let entry = old.remove(i);
                if *entry.def == def {
                    diff.unchanged.push(def.id.clone());
                    entries.push(entry);
                    continue;
                }
                diff.changed.push(def.id.clone());
                match (entry.supervision, supervised(&def).cloned()) {
                    // Same supervisor, new definition: it stops the old run first.
                    (Supervision::Managed(h), Some(control)) => {
                        let start = !self.stopped_by_hand(&def.id);
                        let (handle, new_def) = (h.clone(), def.clone());
                        work.spawn(async move {
                            if let Err(e) = handle.replace(new_def, control, start).await {
                                tracing::warn!(id = handle.id(), "reload: {e}");
                            }
                        });
                        entries.push(Entry {
                            def: Arc::new(def),
                            supervision: Supervision::Managed(h),
                        });
                    }
                    // Now disabled or unmanaged: the old supervisor ends, then the entry
                    // becomes idle.
                    (Supervision::Managed(h), None) => {
                        entries.push(Entry {
                            def: entry.def,
                            supervision: Supervision::Managed(h.clone()),
                        });
                        ending.push((h, Some(self.supervise(def, false))));
                    }
                    (Supervision::Idle(_), _) => {
                        let entry = self.supervise(def, false);
                        to_start.extend(self.to_start(&entry));
                        entries.push(entry);
                    }
                    // The old observer ends (its process untouched); what the new
                    // definition asks for starts now.
                    (Supervision::Observed(o), _) => {
                        let entry = self.supervise_after(def, o);
                        to_start.extend(self.to_start(&entry));
                        entries.push(entry);
                    }
                }
            }
            for entry in old {
                diff.removed.push(entry.def.id.clone());
                match &entry.supervision {
                    Supervision::Managed(h) => {
                        // Stays listed while its tree is stopped.
                        ending.push((h.clone(), None));
                        entries.push(entry);
                    }
                    Supervision::Observed(o) => {
                        let o = o.clone();
                        work.spawn(async move { o.end("removed from the config").await });
                    }
                    Supervision::Idle(_) => {}
                }
            }
        }
        for (handle, _) in &ending {
            let handle = handle.clone();
            work.spawn(async move {
                if let Err(e) = handle.end(Ending::Removed, deadline).await {
                    tracing::warn!(id = handle.id(), "reload: {e}");
                }
            });
        }
        work.spawn(start_all(to_start, "reload: added"));
        while work.join_next().await.is_some() {}
        {
            let mut entries = self.entries();
            for (handle, replacement) in ending {
                let Some(i) = entries.iter().position(|e| {
                    matches!(&e.supervision, Supervision::Managed(h) if h.same_supervisor(&handle))
                }) else {
                    continue;
                };
                match replacement {
                    Some(new) => entries[i] = new,
                    None => {
                        // Removed from the config: its pipes and their reader go too.
                        let gone = entries.remove(i);
                        self.inner.ctx.capture.remove(&gone.def.id);
                    }
                }
            }
        }
        self.inner.events.emit(
            None,
            EventKind::ConfigReloaded {
                added: diff.added.clone(),
                removed: diff.removed.clone(),
                changed: diff.changed.clone(),
            },
        );
        drop(guard);
        diff
    }

    /// Loads the config at `path` and, when valid, applies it with [`Self::reload`]; an
    /// invalid config changes nothing and its problems are returned.
    pub async fn reload_from_file(
        &self,
        path: &std::path::Path,
    ) -> Result<ReloadDiff, crate::config::ConfigErrors> {
        let config = crate::config::load_file(path)?;
        Ok(self.reload(config.processes).await)
    }

    /// Asks whoever runs the manager to shut it down (the binary waits on
    /// [`ProcessManager::shutdown_requested`]).
    pub fn request_shutdown(&self, reason: &str) {
        self.inner.shutdown_requested.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason.to_owned());
                true
            } else {
                false
            }
        });
    }

    /// From now on `state.json` records the journal's last `seq` (from `source`) with
    /// every write, so that a journal whose files were lost still never goes back.
    pub fn record_journal_seq(&self, source: hsu_process_file::SeqSource) {
        self.inner.durable.record_journal_seq(source);
    }

    /// Asks whoever runs the manager to end it leaving every process running (see
    /// [`ProcessManager::detach`]); a shutdown requested earlier stays what it was.
    pub fn request_detach(&self, reason: &str) {
        if self.inner.shutdown_requested.borrow().is_none() {
            self.inner
                .keep_processes
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.request_shutdown(reason);
    }

    /// Whether the shutdown requested is to leave the processes running.
    pub fn keep_processes_requested(&self) -> bool {
        self.inner
            .keep_processes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves with the reason once a shutdown has been requested.
    pub async fn shutdown_requested(&self) -> String {
        let mut rx = self.inner.shutdown_requested.subscribe();
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone().unwrap_or_default());
        reason.unwrap_or_else(|_| String::from("manager dropped"))
    }

    /// Ends the manager's supervision and leaves every process running: each supervisor
    /// ends with its run recorded in `state.json`, captured output is written up to the
    /// moment of the call (what the processes write afterwards waits in their pipes for
    /// the next manager), cgroups and PID files stay. The next manager on the same base
    /// directory adopts them. Returns the ids of the processes left running. Idempotent
    /// with [`Self::shutdown`]: whichever comes first wins.
    pub async fn detach(&self, reason: &str) -> Vec<String> {
        let mut guard = self.inner.reconfigure.lock().await;
        if *guard {
            return Vec::new();
        }
        *guard = true;
        let entries = std::mem::take(&mut *self.entries());
        let mut work = JoinSet::new();
        for entry in &entries {
            if let Supervision::Managed(h) = &entry.supervision {
                let (id, h) = (entry.def.id.clone(), h.clone());
                work.spawn(async move {
                    let running = h.status().pid.is_some();
                    if let Err(e) = h.detach().await {
                        tracing::warn!(id = h.id(), "detach: {e}");
                    }
                    running.then_some(id)
                });
            }
        }
        *self.entries() = entries;
        let mut left = Vec::new();
        while let Some(done) = work.join_next().await {
            left.extend(done.ok().flatten());
        }
        left.sort();
        self.inner.ctx.capture.shutdown().await;
        let writer = self.inner.ctx.writer.clone();
        let _ = tokio::task::spawn_blocking(move || writer.flush()).await;
        self.inner.reaper.abort();
        if let Some(sampler) = lock(&self.inner.sampler).take() {
            sampler.abort();
        }
        let reason = if left.is_empty() {
            format!("{reason}; no process was running")
        } else {
            format!(
                "{reason}; left running for the next manager: {}",
                left.join(", ")
            )
        };
        self.inner
            .events
            .emit(None, EventKind::ManagerStopped { reason });
        left
    }

    /// Stops every process (in parallel, each within its graceful timeout, the whole
    /// within `force_shutdown_timeout`) and returns when all are down. Idempotent.
    pub async fn shutdown(&self, reason: &str) {
        let mut guard = self.inner.reconfigure.lock().await;
        if *guard {
            return;
        }
        *guard = true;
        let deadline = Instant::now() + self.inner.options.force_shutdown_timeout;
        let entries = std::mem::take(&mut *self.entries());
        // Keep status readable while stopping: stopped supervisors still publish.
        let statuses: Vec<Entry> = entries
            .iter()
            .map(|e| Entry {
                def: e.def.clone(),
                supervision: match &e.supervision {
                    Supervision::Managed(h) => Supervision::Managed(h.clone()),
                    Supervision::Observed(o) => Supervision::Observed(o.clone()),
                    Supervision::Idle(s) => Supervision::Idle(s.clone()),
                },
            })
            .collect();
        *self.entries() = statuses;
        let graph = self.dependency_graph();
        stop_all(entries, &graph, deadline).await;
        // What the stopped processes wrote last is written before the manager exits.
        self.inner.ctx.capture.shutdown().await;
        // PID-file removals and state.json reach the disk before the manager exits.
        let writer = self.inner.ctx.writer.clone();
        let _ = tokio::task::spawn_blocking(move || writer.flush()).await;
        hsu_process::reap_orphans();
        if let Some(area) = &self.inner.ctx.cgroups {
            // Empty once every run is gone; one still holding a run stays.
            let _ = std::fs::remove_dir(area.path());
        }
        self.inner.reaper.abort();
        if let Some(sampler) = lock(&self.inner.sampler).take() {
            sampler.abort();
        }
        self.inner.events.emit(
            None,
            EventKind::ManagerStopped {
                reason: reason.into(),
            },
        );
    }
}

/// A process's status, what its health checks found, what it waits for, and its
/// definition, read together.
#[derive(Debug, Clone)]
pub struct Overview {
    /// Its status.
    pub status: ProcessStatus,
    /// What its health checks found.
    pub health: HealthReport,
    /// While it waits to start: its dependencies not met yet, as `id (condition)`.
    pub waiting_for: Vec<String>,
    /// What status shows of its limits.
    pub limits: crate::limits::LimitsView,
    /// Its definition.
    pub definition: Arc<ProcessDefinition>,
}

fn overview_of(e: &Entry, usage: &HashMap<String, Sample>) -> Overview {
    let (health, waiting_for, limits) = match &e.supervision {
        Supervision::Managed(h) => {
            let p = h.watch().borrow().clone();
            (p.health, p.waiting_for, p.limits)
        }
        Supervision::Observed(o) => {
            let p = o.watch().borrow().clone();
            (p.health, p.waiting_for, p.limits)
        }
        Supervision::Idle(_) => (HealthReport::unknown(), Vec::new(), Default::default()),
    };
    Overview {
        status: with_usage(status_of(e), usage),
        health,
        waiting_for,
        limits,
        definition: e.def.clone(),
    }
}

fn status_of(e: &Entry) -> ProcessStatus {
    match &e.supervision {
        Supervision::Managed(h) => h.status(),
        Supervision::Observed(o) => o.status(),
        Supervision::Idle(s) => s.clone(),
    }
}

/// Ends the supervisors of `entries` (each stop bounded by `deadline`): dependents
/// before what they depend on, independent branches in parallel. Observers of
/// unmanaged processes just end: their processes are left running.
async fn stop_all(entries: Vec<Entry>, graph: &HashMap<String, Vec<String>>, deadline: Instant) {
    let mut observers = Vec::new();
    let handles = entries
        .into_iter()
        .filter_map(|e| match e.supervision {
            Supervision::Managed(h) => Some((e.def.id.clone(), h)),
            Supervision::Observed(o) => {
                observers.push(o);
                None
            }
            Supervision::Idle(_) => None,
        })
        .collect();
    for o in observers {
        o.end("the manager shuts down").await;
    }
    stop_in_order(handles, graph, |handle| async move {
        handle.end(Ending::Shutdown, deadline).await
    })
    .await;
}

/// Runs `stop` on every handle, each only once every process among `handles` that
/// depends on it (per `graph`: id → its dependencies) has finished; all others in
/// parallel. Config validation rules out cycles; should one slip through, its members
/// do not wait for each other.
async fn stop_in_order<F, Fut>(
    handles: Vec<(String, ProcessHandle)>,
    graph: &HashMap<String, Vec<String>>,
    stop: F,
) where
    F: Fn(ProcessHandle) -> Fut,
    Fut: std::future::Future<Output = Result<(), ControlError>> + Send + 'static,
{
    let ids: Vec<String> = handles.iter().map(|(id, _)| id.clone()).collect();
    let mut done: HashMap<String, watch::Sender<bool>> = HashMap::new();
    for id in &ids {
        done.insert(id.clone(), watch::channel(false).0);
    }
    let mut stops = JoinSet::new();
    for (id, handle) in handles {
        // Those among the set that depend on `id` (not in a cycle with it).
        let waits: Vec<watch::Receiver<bool>> = ids
            .iter()
            .filter(|other| graph.get(*other).is_some_and(|d| d.contains(&id)))
            .filter(|other| !graph.get(&id).is_some_and(|d| d.contains(other)))
            .filter_map(|other| done.get(other).map(watch::Sender::subscribe))
            .collect();
        let finished = done.get(&id).cloned();
        let fut = stop(handle.clone());
        stops.spawn(async move {
            for mut w in waits {
                let _ = w.wait_for(|d| *d).await;
            }
            if let Err(e) = fut.await {
                tracing::warn!(id = handle.id(), "stop: {e}");
            }
            if let Some(f) = finished {
                f.send_replace(true);
            }
        });
    }
    while stops.join_next().await.is_some() {}
}

/// Starts `handles` in parallel, as the manager's own decision.
async fn start_all(handles: Vec<ProcessHandle>, why: &'static str) {
    let mut starts = JoinSet::new();
    for handle in handles {
        starts.spawn(async move {
            if let Err(e) = handle.launch(why).await {
                tracing::error!(id = handle.id(), "start failed: {e}");
            }
        });
    }
    while starts.join_next().await.is_some() {}
}

/// The control spec of a definition the manager supervises: managed and enabled.
fn supervised(def: &ProcessDefinition) -> Option<&ControlSpec> {
    match (&def.control, def.process_type.is_managed(), def.enabled) {
        (Some(control), true, true) => Some(control),
        _ => None,
    }
}

/// The reason shown for a process kept stopped because an operator stopped it.
const HELD: &str = "stopped by hand; stays stopped until started by hand";

fn idle(def: &ProcessDefinition, reason: &str) -> ProcessStatus {
    let mut s = ProcessStatus::new(&def.id, def.process_type);
    s.reason = reason.into();
    s
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One tree's last sample, and the meter that turns CPU time into a percentage.
#[derive(Clone)]
struct Sample {
    pid: u32,
    usage: ResourceUsage,
}

/// A process without limits is sampled every this many sample intervals: its usage is
/// only shown, and reading `/proc` for it every second would be most of what an idle
/// manager costs.
const UNJUDGED_EVERY: u64 = 5;

/// The status with the last sample of its tree, if that sample is of the current PID.
fn with_usage(mut status: ProcessStatus, usage: &HashMap<String, Sample>) -> ProcessStatus {
    status.resources = usage
        .get(&status.id)
        .filter(|s| Some(s.pid) == status.pid)
        .map(|s| s.usage);
    status
}

/// Samples every running tree each `resource_sample_interval`, until the manager is gone.
/// The only polling loop of the manager: the kernel gives no event for usage.
async fn sample_forever(inner: std::sync::Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(i) => i
            .options
            .resource_sample_interval
            .max(Duration::from_millis(100)),
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One probe per run: it keeps its files open between samples.
    let mut probes: HashMap<String, (RunId, hsu_resource_limits::Probe)> = HashMap::new();
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        // A process with limits is sampled every tick; one without, whose usage is only
        // shown, every `UNJUDGED_EVERY` ticks (a new run at once).
        let full = ticks % UNJUDGED_EVERY == 1;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        /// Who judges a tree's samples against its limits.
        enum Judge {
            Supervisor(ProcessHandle),
            Observer(ObserverHandle),
        }
        struct Target {
            id: String,
            run: RunId,
            pid: u32,
            tag: String,
            handle: Judge,
            judged: bool,
        }
        let targets: Vec<Target> = lock(&inner.entries)
            .iter()
            .filter_map(|e| {
                let (published, handle) = match &e.supervision {
                    Supervision::Managed(h) => (h.watch(), Judge::Supervisor(h.clone())),
                    // An unmanaged process's tree, while its observer has it in sight.
                    Supervision::Observed(o) => (o.watch(), Judge::Observer(o.clone())),
                    Supervision::Idle(_) => return None,
                };
                let (run, pid) = {
                    let p = published.borrow();
                    (p.run?, p.status.pid?)
                };
                let judged = e.def.control.as_ref().is_some_and(|c| !c.limits.is_empty());
                Some(Target {
                    id: e.def.id.clone(),
                    run,
                    pid,
                    tag: inner.ctx.tag(&e.def.id),
                    handle,
                    judged,
                })
            })
            .collect();
        probes.retain(|id, (run, _)| targets.iter().any(|t| &t.id == id && t.run == *run));
        let previous = std::mem::take(&mut *lock(&inner.usage));
        let mut fresh = HashMap::with_capacity(targets.len());
        let targets: Vec<Target> = targets
            .into_iter()
            .filter(|t| {
                let known = previous.get(&t.id).is_some_and(|s| s.pid == t.pid);
                if t.judged || full || !known {
                    return true;
                }
                if let Some(s) = previous.get(&t.id) {
                    fresh.insert(t.id.clone(), s.clone());
                }
                false
            })
            .collect();
        let area = inner.ctx.cgroups.clone();
        // An observed process is in no cgroup of the manager's (one of an earlier
        // managed definition of the same id may still exist): its tree is walked.
        let keys: Vec<(String, RunId, u32, String, bool)> = targets
            .iter()
            .map(|t| {
                let observed = matches!(t.handle, Judge::Observer(_));
                (t.id.clone(), t.run, t.pid, t.tag.clone(), observed)
            })
            .collect();
        let mut taken = std::mem::take(&mut probes);
        // /proc reads block; keep them off the runtime's worker threads.
        let sampled = tokio::task::spawn_blocking(move || {
            let now = std::time::Instant::now();
            for (id, run, _, _, observed) in &keys {
                taken.entry(id.clone()).or_insert_with(|| {
                    let cgroup = area
                        .as_ref()
                        .filter(|_| !observed)
                        .and_then(|a| a.open(id).ok().flatten());
                    (*run, hsu_resource_limits::Probe::new(cgroup.as_ref(), true))
                });
            }
            // Trees without a cgroup are found with one walk of /proc for all of them.
            let walk: Vec<(u32, &str)> = keys
                .iter()
                .filter(|(id, ..)| taken.get(id).is_some_and(|(_, p)| !p.has_cgroup()))
                .map(|(_, _, pid, tag, _)| (*pid, tag.as_str()))
                .collect();
            let mut trees: HashMap<u32, Vec<u32>> = walk
                .iter()
                .map(|(pid, _)| *pid)
                .zip(hsu_process::trees_of(&walk))
                .collect();
            let samples: Vec<(String, hsu_resource_limits::Sample)> = keys
                .iter()
                .filter_map(|(id, _, pid, _, _)| {
                    let (_, probe) = taken.get_mut(id)?;
                    let tree = trees.remove(pid).unwrap_or_else(|| vec![*pid]);
                    Some((id.clone(), probe.sample(now, move || tree)))
                })
                .collect();
            (taken, samples)
        })
        .await;
        let Ok((taken, samples)) = sampled else {
            *lock(&inner.usage) = fresh;
            continue;
        };
        probes = taken;
        tracing::trace!(trees = samples.len(), "resource sample");
        for (id, sample) in samples {
            let Some(t) = targets.iter().find(|t| t.id == id) else {
                continue;
            };
            if t.judged {
                match &t.handle {
                    Judge::Supervisor(h) => h.report_usage(t.run, sample),
                    Judge::Observer(o) => o.report_usage(t.run, sample),
                }
            }
            let u = sample.usage;
            fresh.insert(
                id,
                Sample {
                    pid: t.pid,
                    usage: ResourceUsage {
                        rss_bytes: u.memory_bytes.unwrap_or(0),
                        cpu_percent: u.cpu_percent.unwrap_or(0.0),
                        cpu_seconds: sample.cpu_seconds,
                        fds: u.fds.unwrap_or(0),
                        processes: u.processes.unwrap_or(0),
                    },
                },
            );
        }
        *lock(&inner.usage) = fresh;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A manager that ends without a shutdown (its start failed) leaves no empty area
        // behind; one that still holds a run stays.
        if let Some(area) = &self.ctx.cgroups {
            let _ = std::fs::remove_dir(area.path());
        }
    }
}

/// The manager's cgroup area, or `None` (said once, in the log) where there is none.
pub(crate) fn cgroup_area(base: &std::path::Path) -> Option<hsu_resource_limits::CgroupRoot> {
    let instance = hsu_resource_limits::instance_name(base);
    match hsu_resource_limits::cgroup_area(&instance) {
        Ok(area) => {
            let missing = area.missing();
            if missing == hsu_resource_limits::Controllers::empty() {
                tracing::info!(
                    "each process runs in its own cgroup under {}",
                    area.path().display()
                );
            } else {
                tracing::info!(
                    "each process runs in its own cgroup under {} (controllers not available there: {}; those limits are polled)",
                    area.path().display(),
                    missing.names()
                );
            }
            Some(area)
        }
        Err(why) => {
            tracing::info!("{why}");
            None
        }
    }
}

/// Orphans re-parented to the manager are reaped as the kernel reports child changes.
async fn reap_orphans_forever() {
    let mut events = match hsu_process::child_events() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("cannot watch child exits ({e}); orphans are reaped at stops only");
            return;
        }
    };
    hsu_process::reap_orphans();
    while events.recv().await.is_some() {
        let n = hsu_process::reap_orphans();
        if n > 0 {
            tracing::debug!("reaped {n} orphan(s)");
        }
    }
}
