//! A background writer for files that must reach the disk (PID files, `state.json`).
//!
//! An atomic write syncs the file to disk; on a busy or slow disk that takes
//! milliseconds to seconds. Supervisors run on the async runtime's few worker threads, so
//! a sync there would make every other process's supervisor wait behind it. Instead each
//! write is queued to one thread of its own and carried out in the order it was queued;
//! callers never wait. A failed write is logged and counted, never fatal.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

enum Job {
    /// Write `bytes` to `path` atomically.
    Write { path: PathBuf, bytes: Vec<u8> },
    /// Remove `path`; a file that is already gone is fine.
    Remove { path: PathBuf },
    /// Produce the bytes on the writer thread (the newest snapshot of something that
    /// changes often), then write them atomically to `path`.
    Snapshot {
        path: PathBuf,
        bytes: Box<dyn FnOnce() -> Option<Vec<u8>> + Send>,
    },
    /// Everything queued before has been carried out.
    Flush(mpsc::SyncSender<()>),
}

/// The sending side of the writer thread. Cheap to clone; the thread ends when the last
/// clone is dropped, after carrying out what was queued.
#[derive(Clone)]
pub struct FileWriter {
    jobs: mpsc::Sender<Job>,
    failures: Arc<AtomicU64>,
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
        let failures = Arc::new(AtomicU64::new(0));
        let counted = failures.clone();
        std::thread::Builder::new()
            .name("hsu-file-writer".into())
            .spawn(move || {
                for job in rx {
                    if let Err((path, e)) = run(job) {
                        counted.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("cannot write {}: {e}", path.display());
                    }
                }
            })?;
        Ok(FileWriter { jobs, failures })
    }

    /// Queues an atomic write of `bytes` to `path`.
    pub fn write(&self, path: PathBuf, bytes: Vec<u8>) {
        self.send(Job::Write { path, bytes });
    }

    /// Queues the removal of `path`.
    pub fn remove(&self, path: PathBuf) {
        self.send(Job::Remove { path });
    }

    /// Queues a write whose bytes are produced on the writer thread when its turn comes
    /// (`None` writes nothing), so a burst of changes costs one write of the newest state.
    pub fn snapshot(
        &self,
        path: PathBuf,
        bytes: impl FnOnce() -> Option<Vec<u8>> + Send + 'static,
    ) {
        self.send(Job::Snapshot {
            path,
            bytes: Box::new(bytes),
        });
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
        self.failures.load(Ordering::Relaxed)
    }

    fn send(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            // The thread is gone only if it panicked; nothing is written from now on.
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run(job: Job) -> Result<(), (PathBuf, std::io::Error)> {
    match job {
        Job::Write { path, bytes } => crate::write_atomic(&path, &bytes).map_err(|e| (path, e)),
        Job::Remove { path } => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err((path, e)),
            _ => Ok(()),
        },
        Job::Snapshot { path, bytes } => match bytes() {
            Some(bytes) => crate::write_atomic(&path, &bytes).map_err(|e| (path, e)),
            None => Ok(()),
        },
        Job::Flush(done) => {
            let _ = done.send(());
            Ok(())
        }
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
}
