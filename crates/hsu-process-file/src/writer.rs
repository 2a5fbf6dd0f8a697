//! A background writer for files that must reach the disk (PID files, `state.json`).
//!
//! An atomic write syncs the file to disk; on a busy or slow disk that takes
//! milliseconds to seconds. Supervisors run on the async runtime's few worker threads, so
//! a sync there would make every other process's supervisor wait behind it. Instead each
//! change is handed to one thread of its own; callers never wait. Changes to one path are
//! coalesced: while a path waits its turn, a newer change replaces the older one, so a
//! stalled disk holds at most one pending change per file, however busy the processes
//! are, and the file always ends with the newest content. A failed write is logged and
//! counted, never fatal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// The newest change waiting for one path.
enum Change {
    /// Write these bytes atomically.
    Write(Vec<u8>),
    /// Remove the file; one that is already gone is fine.
    Remove,
    /// Produce the bytes on the writer thread when the turn comes (the newest snapshot
    /// of something that changes often); `None` writes nothing.
    Snapshot(Box<dyn FnOnce() -> Option<Vec<u8>> + Send>),
}

enum Job {
    /// `path` has a change waiting in `pending`.
    Path(PathBuf),
    /// Everything queued before has been carried out.
    Flush(mpsc::SyncSender<()>),
}

struct Shared {
    pending: Mutex<HashMap<PathBuf, Change>>,
    failures: AtomicU64,
}

/// The sending side of the writer thread. Cheap to clone; the thread ends when the last
/// clone is dropped, after carrying out what was queued.
#[derive(Clone)]
pub struct FileWriter {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("failures", &self.failures())
            .finish()
    }
}

impl FileWriter {
    /// Starts the writer thread.
    pub fn start() -> std::io::Result<FileWriter> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("hsu-file-writer".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Path(path) => {
                            let change = lock(&worker.pending).remove(&path);
                            if let Some(change) = change {
                                if let Err(e) = carry_out(&path, change) {
                                    worker.failures.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!("cannot write {}: {e}", path.display());
                                }
                            }
                        }
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(FileWriter { jobs, shared })
    }

    /// Queues an atomic write of `bytes` to `path`.
    pub fn write(&self, path: PathBuf, bytes: Vec<u8>) {
        self.change(path, Change::Write(bytes));
    }

    /// Queues the removal of `path`.
    pub fn remove(&self, path: PathBuf) {
        self.change(path, Change::Remove);
    }

    /// Queues a write whose bytes are produced on the writer thread when its turn comes
    /// (`None` writes nothing), so a burst of changes costs one write of the newest state.
    pub fn snapshot(
        &self,
        path: PathBuf,
        bytes: impl FnOnce() -> Option<Vec<u8>> + Send + 'static,
    ) {
        self.change(path, Change::Snapshot(Box::new(bytes)));
    }

    /// Blocks until everything queued so far has been carried out (for the end of a
    /// shutdown, and for tests). Call it off the async runtime's workers.
    pub fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// How many queued writes have failed so far.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// How many files have a change waiting (at most one each).
    pub fn pending(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    fn change(&self, path: PathBuf, change: Change) {
        let mut pending = lock(&self.shared.pending);
        // A path already waiting keeps its place in the queue and takes the newer change.
        if pending.insert(path.clone(), change).is_none()
            && self.jobs.send(Job::Path(path.clone())).is_err()
        {
            // The thread is gone only if it panicked; nothing is written from now on.
            pending.remove(&path);
            self.shared.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn lock(
    pending: &Mutex<HashMap<PathBuf, Change>>,
) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Change>> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

fn carry_out(path: &std::path::Path, change: Change) -> std::io::Result<()> {
    match change {
        Change::Write(bytes) => crate::write_atomic(path, &bytes),
        Change::Remove => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Change::Snapshot(bytes) => match bytes() {
            Some(bytes) => crate::write_atomic(path, &bytes),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_order_and_counts_failures() {
        let dir = tempfile::tempdir().unwrap();
        let w = FileWriter::start().unwrap();
        let path = dir.path().join("a.pid");
        w.write(path.clone(), b"1\n".to_vec());
        w.write(path.clone(), b"2\n".to_vec());
        w.remove(path.clone());
        w.write(path.clone(), b"3\n".to_vec());
        w.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "3\n");
        assert_eq!(w.failures(), 0);
        w.write(dir.path().join("missing-dir/x"), b"x".to_vec());
        w.snapshot(path.clone(), || Some(b"4\n".to_vec()));
        w.flush();
        assert_eq!(w.failures(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4\n");
    }

    #[test]
    fn a_stalled_disk_holds_one_change_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let w = FileWriter::start().unwrap();
        let (release, stalled) = mpsc::channel::<()>();
        w.snapshot(dir.path().join("stall"), move || {
            let _ = stalled.recv();
            None
        });
        let path = dir.path().join("svc.pid");
        for pid in 0..10_000 {
            w.write(path.clone(), format!("{pid}\n").into_bytes());
            w.remove(path.clone());
        }
        w.write(path.clone(), b"last\n".to_vec());
        assert!(w.pending() <= 2, "{} changes waiting", w.pending());
        release.send(()).unwrap();
        w.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "last\n");
        assert_eq!(w.pending(), 0);
    }
}
