//! `state.json`: what must survive the manager itself. Written atomically (write, sync,
//! rename, sync the directory) in the background after every change that matters, read
//! once at start.
//!
//! Per process it records what the operator wants (stopped by hand or not), the run that
//! is alive (PID, the kernel's start time for that PID, the boot it belongs to, its port,
//! the definition it was spawned with), the restart count and the restart bookkeeping
//! (backoff counts, recent restarts, the breaker and when its trial start is due). A new
//! manager adopts a recorded run only when the PID is alive with the same start time in
//! the same boot, so a PID reused by another program is never mistaken for it.
//!
//! Unknown fields are ignored (a newer manager may add some); a file that cannot be
//! parsed is reported, set aside as `state.json.corrupt-<unix seconds>`, and the manager
//! starts from an empty state: never a crash.

use crate::FileWriter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The version written into the file; readers accept any.
const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DurableState {
    #[serde(default)]
    version: u32,
    /// The journal's last `seq` when this was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    journal_seq: Option<u64>,
    #[serde(default)]
    processes: BTreeMap<String, ProcessRecord>,
}

/// Where [`StateFile`] reads the journal's last `seq` from when it writes.
pub type SeqSource = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// What the operator wants of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Supervised: started with the manager, restarted by its policy.
    #[default]
    Running,
    /// Stopped by hand: stays stopped, across manager restarts too, until started by hand.
    Stopped,
}

/// One process's durable state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What the operator wants (`stopped` once stopped by hand).
    #[serde(default)]
    pub desired: Desired,
    /// The same mark as `desired: stopped`, as earlier managers wrote it (read either way).
    #[serde(default)]
    pub stopped_by_hand: bool,
    /// The run alive when this was written; `None` while nothing runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunRecord>,
    /// Automatic restarts so far (shown in status).
    #[serde(default)]
    pub restart_count: u32,
    /// The restart bookkeeping: backoff, recent restarts, the breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<RestartRecord>,
}

impl ProcessRecord {
    /// Whether the process was stopped by hand.
    pub fn stopped_by_hand(&self) -> bool {
        self.desired == Desired::Stopped || self.stopped_by_hand
    }

    /// Sets (or clears) the stopped-by-hand mark.
    pub fn set_stopped_by_hand(&mut self, stopped: bool) {
        self.stopped_by_hand = stopped;
        self.desired = if stopped {
            Desired::Stopped
        } else {
            Desired::Running
        };
    }
}

/// A live run, as a later manager needs it to adopt (or stop) it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The main process's PID (also its process group).
    pub pid: u32,
    /// When that PID's process started, in clock ticks after boot (`/proc/<pid>/stat`).
    pub start_time: u64,
    /// The boot it started in (`/proc/sys/kernel/random/boot_id`).
    #[serde(default)]
    pub boot_id: Option<String>,
    /// When it was spawned, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// integrated_managed: the port it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The executable (for messages about a run whose process is no longer configured).
    #[serde(default)]
    pub executable: PathBuf,
    /// How to stop it when its process is no longer configured: the stop signal's name
    /// and the graceful timeout.
    #[serde(default)]
    pub stop_signal: String,
    /// Milliseconds between the stop signal and SIGKILL.
    #[serde(default)]
    pub graceful_timeout_ms: u64,
    /// The definition it was spawned with, as the manager's JSON: a new manager restarts
    /// an adopted run whose definition changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<Definition>,
}

/// A definition as JSON text, made once per run and copied into every write of the file
/// as it is (never parsed or re-encoded on the way): with hundreds of processes, each
/// write of `state.json` stays a copy of bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Definition(pub Arc<serde_json::value::RawValue>);

impl Definition {
    /// The JSON of `value`.
    pub fn of(value: &impl Serialize) -> Option<Definition> {
        serde_json::value::to_raw_value(value)
            .ok()
            .map(|raw| Definition(Arc::from(raw)))
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Definition {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.json() == other.json()
    }
}

/// The restart bookkeeping of one process, with instants as wall-clock times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// `closed`, `open` or `half_open`.
    #[serde(default)]
    pub circuit: String,
    /// Per trigger (`exit`, `health_failure`, `resource_violation`, in that order).
    #[serde(default)]
    pub budgets: Vec<BudgetRecord>,
    /// A restart (or the breaker's trial start) waiting for its time, in milliseconds
    /// since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_at_ms: Option<u64>,
    /// That start is the open breaker's trial.
    #[serde(default)]
    pub trial: bool,
}

/// One trigger's budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetRecord {
    /// Restarts in a row (drives the backoff).
    #[serde(default)]
    pub consecutive: u32,
    /// When the restarts inside the window happened, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub recent_ms: Vec<u64>,
}

/// The durable state file. Cheap to share; every change is queued to the background
/// [`FileWriter`] at once (never written on the caller's thread), and a burst of changes
/// costs one write of the newest state.
pub struct StateFile {
    path: PathBuf,
    state: Arc<Mutex<DurableState>>,
    writer: FileWriter,
    problem: Option<String>,
    seq: Arc<Mutex<Option<SeqSource>>>,
}

impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.path)
            .finish()
    }
}

/// The journal `seq` recorded in the state file at `path`, read on its own (before the
/// journal is opened); `None` when there is none or the file does not parse.
pub fn recorded_journal_seq(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<DurableState>(&bytes)
        .ok()?
        .journal_seq
}

impl StateFile {
    /// Reads `path` if it exists. An unreadable or corrupt file is reported (see
    /// [`Self::problem`]), renamed aside and replaced by an empty state.
    pub fn open(path: &Path, writer: FileWriter) -> StateFile {
        let mut problem = None;
        let state = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<DurableState>(&bytes) {
                Ok(state) => state,
                Err(e) => {
                    let aside = set_aside(path);
                    let message = format!(
                        "{}: unreadable ({e}); {}; starting from an empty state",
                        path.display(),
                        match &aside {
                            Ok(to) => format!("kept as {}", to.display()),
                            Err(e) => format!("cannot set it aside ({e})"),
                        }
                    );
                    tracing::warn!("{message}");
                    problem = Some(message);
                    DurableState::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DurableState::default(),
            Err(e) => {
                let message = format!("{}: {e}; starting from an empty state", path.display());
                tracing::warn!("{message}");
                problem = Some(message);
                DurableState::default()
            }
        };
        StateFile {
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
            writer,
            problem,
            seq: Arc::new(Mutex::new(None)),
        }
    }

    /// Records the journal's last `seq` with every write from now on.
    pub fn record_journal_seq(&self, source: SeqSource) {
        *self.seq.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
        self.save();
    }

    /// What was wrong with the file when it was opened, if anything.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Whether `id` was stopped by hand and must stay stopped.
    pub fn stopped_by_hand(&self, id: &str) -> bool {
        lock(&self.state)
            .processes
            .get(id)
            .is_some_and(ProcessRecord::stopped_by_hand)
    }

    /// Records (or clears) the mark; when that changes anything, the file is rewritten in
    /// the background. The in-memory answer changes at once, in the caller's order.
    pub fn set_stopped_by_hand(&self, id: &str, stopped: bool) {
        self.update(id, |r| r.set_stopped_by_hand(stopped));
    }

    /// `id`'s record, if it has one.
    pub fn record(&self, id: &str) -> Option<ProcessRecord> {
        lock(&self.state).processes.get(id).cloned()
    }

    /// Every recorded id.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.state).processes.keys().cloned().collect()
    }

    /// Changes `id`'s record (made if missing); the file is rewritten in the background
    /// when that changed anything. A record left with nothing worth keeping is dropped.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut ProcessRecord)) {
        {
            let mut state = lock(&self.state);
            let before = state.processes.get(id).cloned();
            let mut record = before.clone().unwrap_or_default();
            change(&mut record);
            let after = (record != ProcessRecord::default()).then_some(record);
            if before == after {
                return;
            }
            match after {
                Some(record) => state.processes.insert(id.to_owned(), record),
                None => state.processes.remove(id),
            };
        }
        self.save();
    }

    /// Forgets `id` (a process no longer configured and no longer running).
    pub fn remove(&self, id: &str) {
        if lock(&self.state).processes.remove(id).is_some() {
            self.save();
        }
    }

    fn save(&self) {
        // The writer keeps one pending change per path: a burst costs one write, of the
        // state as it is when the write's turn comes.
        let state = self.state.clone();
        let seq = self.seq.clone();
        self.writer.snapshot(self.path.clone(), move || {
            let mut state = lock(&state).clone();
            state.version = VERSION;
            let source = seq.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(source) = source {
                state.journal_seq = source().or(state.journal_seq);
            }
            serde_json::to_vec_pretty(&state).ok()
        });
    }

    /// Blocks until every change so far is on disk (end of shutdown, tests).
    pub fn flush(&self) {
        self.writer.flush();
    }
}

/// Renames a corrupt file to `<name>.corrupt-<unix seconds>` (the next free name).
fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map_or_else(|| "state.json".into(), |n| n.to_string_lossy().into_owned());
    let mut to = path.with_file_name(format!("{name}.corrupt-{secs}"));
    let mut n = 1;
    while to.exists() {
        to = path.with_file_name(format!("{name}.corrupt-{secs}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &to)?;
    Ok(to)
}

fn lock(state: &Mutex<DurableState>) -> std::sync::MutexGuard<'_, DurableState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pid: u32) -> RunRecord {
        RunRecord {
            pid,
            start_time: 4242,
            boot_id: Some("b".into()),
            started_at_ms: 1,
            port: None,
            executable: "/bin/sleep".into(),
            stop_signal: "SIGTERM".into(),
            graceful_timeout_ms: 1000,
            definition: Definition::of(&serde_json::json!({"id": "web"})),
        }
    }

    #[test]
    fn marks_and_runs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let w = FileWriter::start().unwrap();
        let s = StateFile::open(&path, w.clone());
        assert!(s.problem().is_none());
        assert!(!s.stopped_by_hand("web"));
        s.set_stopped_by_hand("web", true);
        s.set_stopped_by_hand("db", true);
        s.set_stopped_by_hand("db", false);
        s.update("api", |r| {
            r.run = Some(run(77));
            r.restart_count = 3;
        });
        s.flush();
        let s = StateFile::open(&path, w.clone());
        assert!(s.stopped_by_hand("web"));
        assert!(!s.stopped_by_hand("db"));
        assert_eq!(s.ids(), ["api", "web"], "an empty record is not kept");
        let api = s.record("api").unwrap();
        assert_eq!(api.run, Some(run(77)));
        assert_eq!(api.restart_count, 3);
        s.update("api", |r| r.run = None);
        s.record_journal_seq(Arc::new(|| Some(41)));
        s.flush();
        assert_eq!(recorded_journal_seq(&path), Some(41));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert!(!text.contains("\"pid\""), "{text}");
    }

    #[test]
    fn a_corrupt_file_is_reported_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let w = FileWriter::start().unwrap();
        for bytes in [
            &b"{not json"[..],
            b"{\"processes\": {\"web\": {\"desired\": \"stop",
        ] {
            std::fs::write(&path, bytes).unwrap();
            let s = StateFile::open(&path, w.clone());
            let problem = s.problem().expect("reported");
            assert!(problem.contains("kept as"), "{problem}");
            assert!(!path.exists(), "set aside, not overwritten");
            assert!(s.ids().is_empty());
        }
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.json.corrupt-"))
            .collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
    }

    #[test]
    fn the_mark_of_an_earlier_manager_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(
            &path,
            br#"{"processes": {"web": {"stopped_by_hand": true}}}"#,
        )
        .unwrap();
        let s = StateFile::open(&path, FileWriter::start().unwrap());
        assert!(s.stopped_by_hand("web"));
        s.set_stopped_by_hand("web", false);
        assert!(!s.stopped_by_hand("web"));
    }

    #[test]
    fn unknown_fields_from_a_newer_manager_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(
            &path,
            br#"{"version": 9, "future": [1, 2], "processes": {"web": {"desired": "stopped", "colour": "red",
                "run": {"pid": 5, "start_time": 6, "started_at_ms": 7, "shiny": true}}}}"#,
        )
        .unwrap();
        let s = StateFile::open(&path, FileWriter::start().unwrap());
        assert!(s.problem().is_none());
        assert!(s.stopped_by_hand("web"));
        assert_eq!(s.record("web").unwrap().run.unwrap().pid, 5);
    }
}
