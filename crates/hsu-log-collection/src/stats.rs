//! Counters kept per captured stream and per aggregation target, read by status and
//! `/metrics` without locking anything the writer uses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Live counters of one captured stream (or one target). Written by the reader and the
/// writer; read at any time.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    lines_written: AtomicU64,
    bytes_dropped: AtomicU64,
    lines_dropped: AtomicU64,
    write_failures: AtomicU64,
    failing: AtomicBool,
    queued_bytes: AtomicU64,
    held_bytes: AtomicU64,
    rotations: AtomicU64,
}

impl Counters {
    pub(crate) fn read(&self, n: usize) {
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        self.queued_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn dequeued(&self, n: usize) {
        let _ = self
            .queued_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n as u64))
            });
    }

    pub(crate) fn written(&self, bytes: u64, lines: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.lines_written.fetch_add(lines, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self, bytes: u64, lines: u64) {
        self.bytes_dropped.fetch_add(bytes, Ordering::Relaxed);
        self.lines_dropped.fetch_add(lines, Ordering::Relaxed);
    }

    /// Records whether writing fails now; returns true when a failure episode begins.
    pub(crate) fn set_failing(&self, failing: bool) -> bool {
        let was = self.failing.swap(failing, Ordering::Relaxed);
        if failing && !was {
            self.write_failures.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub(crate) fn held(&self, bytes: usize) {
        self.held_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn rotated(&self) {
        self.rotations.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StreamStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StreamStats {
            bytes_read: load(&self.bytes_read),
            bytes_written: load(&self.bytes_written),
            lines_written: load(&self.lines_written),
            bytes_dropped: load(&self.bytes_dropped),
            lines_dropped: load(&self.lines_dropped),
            write_failures: load(&self.write_failures),
            failing: self.failing.load(Ordering::Relaxed),
            buffered_bytes: load(&self.queued_bytes) + load(&self.held_bytes),
            rotations: load(&self.rotations),
        }
    }
}

/// What happened to one captured stream (or one aggregation target) since the manager
/// started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Bytes read from the process's pipe.
    pub bytes_read: u64,
    /// Bytes written to the file (timestamps and formatting included).
    pub bytes_written: u64,
    /// Lines written to the file.
    pub lines_written: u64,
    /// Bytes that could not be written (full disk, I/O error) and were dropped.
    pub bytes_dropped: u64,
    /// Lines that could not be written and were dropped.
    pub lines_dropped: u64,
    /// Failure episodes: how many times writing started to fail (one
    /// `log_write_failed` event each).
    pub write_failures: u64,
    /// Writing fails right now (it is retried with every new line).
    pub failing: bool,
    /// Memory the manager holds for this stream right now: bytes read but not yet
    /// written, plus an unfinished last line.
    pub buffered_bytes: u64,
    /// Rotations done.
    pub rotations: u64,
}

impl StreamStats {
    /// Adds `other` to these counts (for totals).
    pub fn add(&mut self, other: &StreamStats) {
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.lines_written += other.lines_written;
        self.bytes_dropped += other.bytes_dropped;
        self.lines_dropped += other.lines_dropped;
        self.write_failures += other.write_failures;
        self.failing |= other.failing;
        self.buffered_bytes += other.buffered_bytes;
        self.rotations += other.rotations;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_episode_per_run_of_failures() {
        let c = Counters::default();
        assert!(c.set_failing(true));
        assert!(!c.set_failing(true));
        assert!(!c.set_failing(false));
        assert!(c.set_failing(true));
        assert_eq!(c.snapshot().write_failures, 2);
        assert!(c.snapshot().failing);
    }

    #[test]
    fn buffered_is_queued_plus_held() {
        let c = Counters::default();
        c.read(100);
        c.dequeued(60);
        c.held(7);
        let s = c.snapshot();
        assert_eq!((s.bytes_read, s.buffered_bytes), (100, 47));
        c.dequeued(1000);
        assert_eq!(c.snapshot().buffered_bytes, 7);
    }
}
