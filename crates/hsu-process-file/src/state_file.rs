//! `state.json`: what must survive the manager itself. Written atomically (write, sync,
//! rename, sync the directory) in the background after every change, read once at start.
//!
//! Today it records which processes an operator stopped by hand, so that a manager
//! restart does not start them again.

use crate::FileWriter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DurableState {
    #[serde(default)]
    processes: BTreeMap<String, ProcessRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ProcessRecord {
    /// Stopped through the API or CLI: stays stopped until started by hand.
    #[serde(default)]
    stopped_by_hand: bool,
}

/// The durable state file. Cheap to share; every change is queued to the background
/// [`FileWriter`] at once (never written on the caller's thread), and a burst of changes
/// costs one write of the newest state.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    state: Arc<Mutex<DurableState>>,
    writer: FileWriter,
}

impl StateFile {
    /// Reads `path` if it exists. An unreadable or corrupt file is reported and replaced
    /// by an empty state: losing a "stopped by hand" mark must not stop the manager.
    pub fn open(path: &Path, writer: FileWriter) -> StateFile {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: unreadable ({e}); starting from an empty state",
                    path.display()
                );
                DurableState::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DurableState::default(),
            Err(e) => {
                tracing::warn!("{}: {e}; starting from an empty state", path.display());
                DurableState::default()
            }
        };
        StateFile {
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
            writer,
        }
    }

    /// Whether `id` was stopped by hand and must stay stopped.
    pub fn stopped_by_hand(&self, id: &str) -> bool {
        lock(&self.state)
            .processes
            .get(id)
            .is_some_and(|r| r.stopped_by_hand)
    }

    /// Records (or clears) the mark; when that changes anything, the file is rewritten in
    /// the background. The in-memory answer changes at once, in the caller's order.
    pub fn set_stopped_by_hand(&self, id: &str, stopped: bool) {
        {
            let mut state = lock(&self.state);
            if state.processes.get(id).is_some_and(|r| r.stopped_by_hand) == stopped {
                return;
            }
            if stopped {
                state
                    .processes
                    .entry(id.to_owned())
                    .or_default()
                    .stopped_by_hand = true;
            } else {
                state.processes.remove(id);
            }
        }
        // The writer keeps one pending change per path: a burst costs one write, of the
        // state as it is when the write's turn comes.
        let state = self.state.clone();
        self.writer.snapshot(self.path.clone(), move || {
            serde_json::to_vec_pretty(&*lock(&state)).ok()
        });
    }

    /// Blocks until every change so far is on disk (end of shutdown, tests).
    pub fn flush(&self) {
        self.writer.flush();
    }
}

fn lock(state: &Mutex<DurableState>) -> std::sync::MutexGuard<'_, DurableState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_a_reopen_and_corruption_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let w = FileWriter::start().unwrap();
        let s = StateFile::open(&path, w.clone());
        assert!(!s.stopped_by_hand("web"));
        s.set_stopped_by_hand("web", true);
        s.set_stopped_by_hand("db", true);
        s.set_stopped_by_hand("db", false);
        s.flush();
        let s = StateFile::open(&path, w.clone());
        assert!(s.stopped_by_hand("web"));
        assert!(!s.stopped_by_hand("db"));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(!StateFile::open(&path, w).stopped_by_hand("web"));
    }
}
