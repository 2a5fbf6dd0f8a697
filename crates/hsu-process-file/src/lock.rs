//! `manager.lock`: one manager per base directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why `manager.lock` could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another manager holds the lock: a second manager on one base directory refuses to start.
    #[error("another manager (pid {holder}) is already running on this base directory ({path})")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's PID as written in the lock file, or `unknown`.
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Held for the manager's whole life; the OS releases it when the process ends, however
/// it ends, so a crashed manager never leaves a stale lock.
#[derive(Debug)]
pub struct ManagerLock {
    _file: File,
}

impl ManagerLock {
    /// Takes the lock at `path` (creating the file) and writes this manager's PID into it;
    /// fails with [`LockError::Held`] while another manager holds it.
    pub fn acquire(path: &Path) -> Result<ManagerLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .mode(0o640)
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.into()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(ManagerLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manager.lock");
        let first = ManagerLock::acquire(&path).unwrap();
        let err = ManagerLock::acquire(&path).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        ManagerLock::acquire(&path).unwrap();
    }
}
