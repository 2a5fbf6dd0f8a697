//! Captured output (SPEC: "stdout/stderr capture, rotation, aggregation"): each managed
//! process's stdout and stderr are read by the manager through a named pipe and stored
//! in `<log dir>/<id>.<stream>.log` (optionally stamped with their arrival time, rotated
//! by size to `.1` ... `.N`) and copied to the aggregation targets; and they are read
//! back: the last lines (rotated files included) or following what is appended.
//!
//! # Theory of operation
//!
//! For every captured stream there is a named pipe, `<fifo dir>/<id>.<stream>`, that
//! outlives both the process and the manager:
//!
//! - **The child's end** ([`LogCollector::attach`], called as a run is spawned) is the
//!   pipe opened *for reading and writing*. The child therefore always holds a reader
//!   itself: a write never fails with EPIPE nor raises SIGPIPE, even while no manager
//!   runs; once the pipe buffer (enlarged to 1 MiB) is full, a write blocks until a
//!   manager reads again. Nothing it writes is lost while it lives.
//! - **The manager's end** is the pipe opened read-only and non-blocking, one per
//!   stream, watched by one Tokio task (a [`tokio::net::unix::pipe::Receiver`]: no thread per
//!   stream). The task reads at most 64 KiB at a time into a shared buffer and queues a
//!   copy of what it got for the writer.
//! - **End-of-file** means every holder of the child's end is gone: the run and all its
//!   descendants. The unfinished last line is then written as a line, and the task opens
//!   a new read end *before* closing the old one, so the pipe never lacks a reader and
//!   the next run (which may reuse the pipe at any moment) loses nothing. A new run's
//!   `attach` also reads whatever the previous run left in the pipe before it hands out
//!   the child's end, and ends that run's last line: a run never continues the previous
//!   run's unfinished line.
//! - **One writer thread** for all streams turns bytes into lines and writes them in
//!   batches (module `writer`): it stamps, rotates, formats the aggregation targets,
//!   and survives a full disk (drop, count, one `log_write_failed` event per episode,
//!   resume) and a deleted directory (create it again, write again).
//! - **The queue between them is bounded** (8 MiB over all streams): when the disk is
//!   slower than the processes, readers stop reading, the pipes fill, and only then do
//!   the processes block. A write that *fails* never blocks anyone.
//!
//! A manager that starts again reconnects to the pipes of the processes it adopts
//! ([`LogCollector::reconnect`]) and reads what they wrote meanwhile. What a killed
//! manager had read but not yet written (at most what is in the queue, usually a few
//! lines) and a process's output written after the manager died *and* before it exited
//! itself while no manager runs (its pipe goes with its last holder) are the only output
//! that can be lost.
//!
//! This crate must never block a process on the manager's side, never drop output
//! without counting it, and never write a partial line into a file except as the last
//! line of a run. Linux-only calls live in one private module (`fifo`); elsewhere the
//! child is given its capture file directly, as before pipes existed.

mod collector;
#[cfg(test)]
mod collector_tests;
mod fifo;
mod format;
mod settings;
mod stats;
mod writer;

pub use collector::{manager_log_line, LogCollector};
pub use settings::{Format, Rotation, Settings, Target, TargetKind};
pub use stats::StreamStats;
pub use writer::MAX_LINE;

use bytes::Bytes;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

/// How often a followed file is checked for new bytes.
const POLL: Duration = Duration::from_millis(200);
/// Bytes sent at most per read while following.
const FOLLOW_CHUNK: usize = 64 * 1024;
/// The tail is never larger than this, however long its lines are.
const MAX_TAIL_BYTES: u64 = 16 * 1024 * 1024;

/// One captured output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The process's standard output, captured to `<id>.stdout.log`.
    Stdout,
    /// The process's standard error, captured to `<id>.stderr.log`.
    Stderr,
}

impl Stream {
    /// The stream's name, `stdout` or `stderr`, as used in file names and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is neither `stdout` nor `stderr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStream(pub String);

impl fmt::Display for UnknownStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream must be stdout or stderr, not `{}`", self.0)
    }
}

impl std::error::Error for UnknownStream {}

impl FromStr for Stream {
    type Err = UnknownStream;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            other => Err(UnknownStream(other.to_owned())),
        }
    }
}

/// The directory holding every capture file, `<dir>/<id>.<stream>.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureFiles {
    dir: PathBuf,
}

impl CaptureFiles {
    /// The capture files kept in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CaptureFiles { dir: dir.into() }
    }

    /// The directory holding the capture files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where process `id`'s `stream` is captured. `id` must be a known process id, so the
    /// path never leaves the directory.
    pub fn path(&self, id: &str, stream: Stream) -> PathBuf {
        self.dir.join(format!("{id}.{stream}.log"))
    }

    /// The capture file opened (created if needed) for appending, to hand to a child when
    /// its output cannot go through a pipe. A new file is 0640 (before the umask): output
    /// often holds what only its owner should read.
    pub fn open_append(&self, id: &str, stream: Stream) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .mode(0o640)
            .create(true)
            .append(true)
            .open(self.path(id, stream))
    }
}

/// The end of a file as read by [`tail`].
pub struct Tail {
    /// The bytes of the last lines, oldest first.
    pub bytes: Vec<u8>,
    /// Where the file ended when read, and which file it was (to follow on from).
    end: u64,
    inode: Option<u64>,
}

/// `<path>.<n>`: the `n`th rotated file of `path` (`.1` is the newest).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The last `lines` lines of the capture file at `path`, continued into its rotated files
/// (`.1`, `.2`, ...) when it holds fewer; at most 16 MiB in all. A file not yet written
/// is empty.
pub fn tail(path: &Path, lines: usize) -> io::Result<Tail> {
    let mut tail = tail_file(path, lines)?;
    let mut have = count_lines(&tail.bytes);
    for n in 1..=1000 {
        if have >= lines || tail.bytes.len() as u64 >= MAX_TAIL_BYTES {
            break;
        }
        let older = match tail_file(&rotated_path(path, n), lines - have) {
            Ok(t) if t.inode.is_some() => t,
            _ => break,
        };
        let mut bytes = older.bytes;
        // Rotation happens between lines: an older file ends with a whole line.
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        have += count_lines(&bytes);
        bytes.extend_from_slice(&tail.bytes);
        tail.bytes = bytes;
    }
    let excess = (tail.bytes.len() as u64).saturating_sub(MAX_TAIL_BYTES) as usize;
    if excess > 0 {
        let cut = memchr::memchr(b'\n', &tail.bytes[excess..])
            .map_or(tail.bytes.len(), |i| excess + i + 1);
        tail.bytes.drain(..cut);
    }
    Ok(tail)
}

/// Lines in `bytes`: its newlines, plus an unfinished last line.
fn count_lines(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count()
        + usize::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

/// [`tail`] of one file, its rotated files left out.
fn tail_file(path: &Path, lines: usize) -> io::Result<Tail> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Tail {
                bytes: Vec::new(),
                end: 0,
                inode: None,
            })
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let end = meta.len();
    let mut bytes = Vec::new();
    let mut start = end;
    // Newlines seen that end a line of the tail (a final newline ends the last line).
    let mut newlines = 0;
    while lines > 0 && start > 0 && newlines <= lines && end - start < MAX_TAIL_BYTES {
        let from = start.saturating_sub(FOLLOW_CHUNK as u64);
        let mut chunk = vec![0; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        newlines += chunk.iter().filter(|&&b| b == b'\n').count();
        chunk.extend_from_slice(&bytes);
        bytes = chunk;
        start = from;
    }
    // Keep what follows the newline before the wanted lines.
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let cut = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, &b)| b == b'\n')
        .nth(lines.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    let cut = if lines == 0 { bytes.len() } else { cut };
    bytes.drain(..cut);
    Ok(Tail {
        bytes,
        end,
        inode: Some(meta.ino()),
    })
}

/// Sends the tail (rotated files included), then every byte appended, checking every
/// 200 ms. A file that shrinks
/// (truncated) is read again from its start; one replaced (rotated) is read to its end,
/// then the new file from its start. Returns only when `tx`'s receiver is gone and a send
/// fails; a caller that must stop sooner drops this future.
pub async fn follow(path: PathBuf, lines: usize, tx: mpsc::Sender<Bytes>) {
    let first = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || tail(&path, lines)).await
    };
    let mut open = match first {
        Ok(Ok(t)) => {
            if !t.bytes.is_empty() && tx.send(t.bytes.into()).await.is_err() {
                return;
            }
            match t.inode {
                Some(_) => reopen(&path, t.end).await,
                None => None,
            }
        }
        _ => None,
    };
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Some(file) = open.as_mut() {
            if send_new_bytes(file, &tx).await.is_err() {
                return;
            }
        }
        let current = tokio::fs::metadata(&path).await.ok();
        let open_meta = match open.as_ref() {
            Some(f) => f.metadata().await.ok(),
            None => None,
        };
        match (current, open_meta) {
            (None, _) => {}
            (Some(now), Some(held)) if now.ino() == held.ino() => {
                if let Some(file) = open.as_mut() {
                    let pos = file.stream_position().await.unwrap_or(0);
                    if now.len() < pos {
                        let _ = file.seek(SeekFrom::Start(0)).await;
                    }
                }
            }
            // Rotated (a new file under the name) or created since: finish the old
            // file, then read the new one from its start.
            (Some(_), _) => {
                if let Some(file) = open.as_mut() {
                    if send_new_bytes(file, &tx).await.is_err() {
                        return;
                    }
                }
                open = reopen(&path, 0).await;
            }
        }
    }
}

async fn reopen(path: &Path, at: u64) -> Option<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    file.seek(SeekFrom::Start(at)).await.ok()?;
    Some(file)
}

/// Reads `file` to its current end, sending what it finds. Err: the receiver is gone.
async fn send_new_bytes(file: &mut tokio::fs::File, tx: &mpsc::Sender<Bytes>) -> Result<(), ()> {
    let mut buf = vec![0; FOLLOW_CHUNK];
    loop {
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => tx
                .send(Bytes::copy_from_slice(&buf[..n]))
                .await
                .map_err(|_| ())?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn new_capture_files_are_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = CaptureFiles::new(dir.path());
        files.open_append("p", Stream::Stdout).unwrap();
        let mode = std::fs::metadata(files.path("p", Stream::Stdout))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o007, 0, "mode {mode:o}");
    }

    fn tail_of(content: &[u8], lines: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(content)
            .unwrap();
        String::from_utf8(tail(&path, lines).unwrap().bytes).unwrap()
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail_of(b"a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_of(b"a\nb\nc", 2), "b\nc");
        assert_eq!(tail_of(b"a\nb\nc\n", 3), "a\nb\nc\n");
        assert_eq!(tail_of(b"a\nb\nc\n", 10), "a\nb\nc\n");
        assert_eq!(tail_of(b"a\nb\nc\n", 0), "");
        assert_eq!(tail_of(b"", 5), "");
        assert_eq!(tail_of(b"\n\n\n", 2), "\n\n");
    }

    #[test]
    fn tail_offsets() {
        let cases: [(&str, usize, &str); 8] = [
            ("a\nb\nc\n", 2, "b\nc\n"),
            ("a\nb\nc", 2, "b\nc"),
            ("a\nb\nc\n", 5, "a\nb\nc\n"),
            ("a\nb\nc\n", 0, ""),
            ("", 3, ""),
            ("\n\n", 1, "\n"),
            ("one line\n", 1, "one line\n"),
            ("a\nb\n", usize::MAX, "a\nb\n"),
        ];
        for (text, n, want) in cases {
            assert_eq!(tail_of(text.as_bytes(), n), want, "{text:?} tail {n}");
        }
        // Longer than one block.
        let line = "x".repeat(1000) + "\n";
        let text = line.repeat(200);
        assert_eq!(tail_of(text.as_bytes(), 150).len(), 150 * 1001);
    }

    #[test]
    fn tail_reads_across_chunks() {
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        let got = tail_of(text.as_bytes(), 30_000);
        assert_eq!(got.lines().count(), 30_000);
        assert!(got.starts_with("line 20000\n"));
        assert!(got.ends_with("line 49999\n"));
    }

    #[test]
    fn tail_of_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(tail(&dir.path().join("none.log"), 5)
            .unwrap()
            .bytes
            .is_empty());
    }

    #[test]
    fn capture_paths_and_streams() {
        let files = CaptureFiles::new("/logs");
        assert_eq!(
            files.path("web", Stream::Stderr),
            Path::new("/logs/web.stderr.log")
        );
        assert_eq!("stdout".parse(), Ok(Stream::Stdout));
        assert_eq!("stderr".parse(), Ok(Stream::Stderr));
        assert!("Stdout".parse::<Stream>().is_err());
        assert!("".parse::<Stream>().is_err());
    }

    #[test]
    fn open_append_appends() {
        let dir = tempfile::tempdir().unwrap();
        let files = CaptureFiles::new(dir.path());
        files
            .open_append("p", Stream::Stdout)
            .unwrap()
            .write_all(b"a\n")
            .unwrap();
        files
            .open_append("p", Stream::Stdout)
            .unwrap()
            .write_all(b"b\n")
            .unwrap();
        let got = std::fs::read_to_string(files.path("p", Stream::Stdout)).unwrap();
        assert_eq!(got, "a\nb\n");
    }
}
