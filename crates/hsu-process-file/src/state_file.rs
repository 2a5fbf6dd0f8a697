//! `state.json`: what must survive the manager itself. Written atomically (write, then
//! rename) on every change, read once at start.
//!
//! Today it records which processes an operator stopped by hand, so that a manager
//! restart does not start them again.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// The durable state file. Cheap to share; every change is written through at once.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    state: Mutex<DurableState>,
}

impl StateFile {
    /// Reads `path` if it exists. An unreadable or corrupt file is reported and replaced
    /// by an empty state: losing a "stopped by hand" mark must not stop the manager.
    pub fn open(path: &Path) -> StateFile {
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
            state: Mutex::new(state),
        }
    }

    pub fn stopped_by_hand(&self, id: &str) -> bool {
        self.lock()
            .processes
            .get(id)
            .is_some_and(|r| r.stopped_by_hand)
    }

    /// Records (or clears) the mark and writes the file if anything changed.
    pub fn set_stopped_by_hand(&self, id: &str, stopped: bool) -> std::io::Result<()> {
        let mut state = self.lock();
        if state.processes.get(id).is_some_and(|r| r.stopped_by_hand) == stopped {
            return Ok(());
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
        let json = serde_json::to_vec_pretty(&*state).map_err(std::io::Error::other)?;
        crate::write_atomic(&self.path, &json)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DurableState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_a_reopen_and_corruption_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let s = StateFile::open(&path);
        assert!(!s.stopped_by_hand("web"));
        s.set_stopped_by_hand("web", true).unwrap();
        s.set_stopped_by_hand("db", true).unwrap();
        s.set_stopped_by_hand("db", false).unwrap();
        let s = StateFile::open(&path);
        assert!(s.stopped_by_hand("web"));
        assert!(!s.stopped_by_hand("db"));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(!StateFile::open(&path).stopped_by_hand("web"));
    }
}
