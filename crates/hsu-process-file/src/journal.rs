//! The event journal: `events.jsonl`, one JSON event a line, size-rotated to
//! `events.jsonl.1` (newest) ... `events.jsonl.N`, `seq` continuing across files and
//! across manager restarts.
//!
//! # How an event travels
//!
//! ```text
//! emit ─> [short lock: seq, ring, live followers] ─> channel ─> writer thread ─> events.jsonl
//! ```
//!
//! Supervisors emit from the runtime's worker threads, so an append never touches a file:
//! under one short lock it takes the next `seq`, keeps the event in a bounded in-memory
//! ring of recent events, sends it to live followers, and queues its line for a dedicated
//! writer thread, which writes (and rotates) in `seq` order. A full disk or a slow one
//! never blocks an append: a failed write is counted ([`Journal::write_failures`]) and
//! logged at most every few seconds; a queue that is full drops the line and counts it
//! the same way. The queue is smaller than the ring, so every event still waiting for the
//! writer is in the ring: readers ([`Journal::since`], [`Journal::follow`]) answer from the
//! ring and read files — newest first, stopping once the asked-for `seq` is covered — only
//! for older events.
//!
//! Nothing here may panic on what it reads back: a torn last line (a crash mid-write) is
//! skipped, and the next event starts on a line of its own.

use hsu_common::{Event, EventKind, EventSink};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;

/// Lines the writer thread may fall behind by before an event is dropped from the file
/// (and counted as a failed write) rather than stalling the supervisor that emits it. At
/// about 200 bytes a line that is a few MiB, and seconds of a disk that stopped answering
/// even under a crash-loop storm of thousands of events a second.
const QUEUED_LINES: usize = 16 * 1024;

/// A failure to open the journal.
#[derive(Debug, thiserror::Error)]
#[error("event journal {path}: {source}")]
pub struct JournalError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Size rotation and memory bounds of a [`Journal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// `events.jsonl` is rotated before a line would take it past this many bytes.
    pub max_size: u64,
    /// Rotated files kept: `events.jsonl.1` (newest) ... `events.jsonl.<max_files>`.
    pub max_files: u32,
    /// Recent events kept in memory, so that followers and `since` queries about recent
    /// events never read a file. Lines waiting for the writer are at most half of this.
    pub recent_events: usize,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
            recent_events: 4096,
        }
    }
}

/// How far behind a live follower may fall before it is told it missed events.
const LIVE_CAPACITY: usize = 1024;
/// A failing writer logs at most this often (every failure is counted).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The event journal. Cheap to share (`Arc<Journal>`); appends never do file I/O on the
/// caller's thread (see the module docs).
pub struct Journal {
    path: PathBuf,
    options: JournalOptions,
    state: Mutex<State>,
    /// Held by the writer while it renames files, and by readers while they open them, so
    /// a reader always opens one consistent set of files.
    rotation: Arc<Mutex<()>>,
    stats: Arc<Stats>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What appends change, under one short lock.
struct State {
    next_seq: u64,
    /// The most recent events, oldest first, at most `options.recent_events`.
    recent: VecDeque<Event>,
    live: broadcast::Sender<Event>,
    /// `None` once the journal is closed.
    queue: Option<SyncSender<Command>>,
}

enum Command {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written (or failed).
    Flush(mpsc::Sender<()>),
}

#[derive(Default)]
struct Stats {
    write_failures: AtomicU64,
    /// The writer's rate limit on failure logs: when it last logged, and what it held back.
    failure_log: Mutex<FailureLog>,
}

#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl Stats {
    fn failed(&self, what: std::fmt::Arguments<'_>) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        let mut log = lock(&self.failure_log);
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t) < FAILURE_LOG_INTERVAL)
        {
            log.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut log.suppressed);
        log.last = Some(now);
        if suppressed > 0 {
            tracing::error!("{what} ({suppressed} more journal failure(s) not logged)");
        } else {
            tracing::error!("{what}");
        }
    }
}

/// Events since a `seq`, then the live ones: see [`Journal::follow`].
pub struct Follow {
    /// The stored events after the asked-for `seq`, oldest first.
    pub backlog: Vec<Event>,
    /// Every event appended after the backlog, none twice. A receiver that falls more
    /// than 1024 events behind gets `RecvError::Lagged(missed)`.
    pub live: broadcast::Receiver<Event>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` with the default rotation.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        Journal::open_with(path, JournalOptions::default())
    }

    /// Opens (or creates) the journal at `path`, continuing after the last `seq` of the
    /// newest file that has one, and starts its writer thread.
    pub fn open_with(path: &Path, options: JournalOptions) -> Result<Journal, JournalError> {
        let err = |source| JournalError {
            path: path.to_path_buf(),
            source,
        };
        let options = JournalOptions {
            max_size: options.max_size.max(1),
            max_files: options.max_files,
            recent_events: options.recent_events.max(2),
        };
        let mut file = open_append(path).map_err(err)?;
        // A crash mid-write leaves a torn last line; start the next event on a line of
        // its own so it is not glued to the fragment.
        if !ends_with_newline(&mut file).map_err(err)? {
            file.write_all(b"\n").map_err(err)?;
        }
        let mut last = last_seq(&mut file).map_err(err)?;
        // Just rotated (or a file lost): the seq lives on in the newest rotated file.
        for n in 1..=options.max_files {
            if last.is_some() {
                break;
            }
            match File::open(rotated(path, n)) {
                Ok(mut f) => last = last_seq(&mut f).map_err(err)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
        }
        let size = file.metadata().map_err(err)?.len();
        let (queue, lines) = mpsc::sync_channel(QUEUED_LINES);
        let stats = Arc::new(Stats::default());
        let rotation = Arc::new(Mutex::new(()));
        let writer = Writer {
            path: path.to_path_buf(),
            options,
            file: Some(file),
            size,
            stats: stats.clone(),
            rotation: rotation.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("hsu-journal".into())
            .spawn(move || writer.run(lines))
            .map_err(err)?;
        Ok(Journal {
            path: path.to_path_buf(),
            options,
            state: Mutex::new(State {
                next_seq: last.map_or(1, |s| s + 1),
                recent: VecDeque::with_capacity(options.recent_events),
                live: broadcast::channel(LIVE_CAPACITY).0,
                queue: Some(queue),
            }),
            rotation,
            stats,
            writer: Mutex::new(Some(thread)),
        })
    }

    /// `events.jsonl` itself (rotated files are `<path>.1` ... `<path>.N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rotation and memory bounds in force.
    pub fn options(&self) -> JournalOptions {
        self.options
    }

    /// Lines that could not be written (a full disk, a removed directory, a writer queue
    /// that was full, or an event after [`Self::close`]) since the journal was opened.
    pub fn write_failures(&self) -> u64 {
        self.stats.write_failures.load(Ordering::Relaxed)
    }

    /// Appends one event and returns it. Never blocks on I/O: the line is written by the
    /// writer thread; followers get the event at once.
    pub fn append(&self, id: Option<&str>, kind: EventKind) -> Event {
        let mut state = lock(&self.state);
        let event = Event {
            seq: state.next_seq,
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            id: id.map(str::to_owned),
            kind,
        };
        state.next_seq += 1;
        // Queued under the lock, so lines reach the writer in `seq` order.
        match serde_json::to_vec(&event) {
            Ok(mut line) => {
                line.push(b'\n');
                let queued = match &state.queue {
                    Some(q) => match q.try_send(Command::Line(line)) {
                        Ok(()) => Ok(()),
                        Err(TrySendError::Full(_)) => Err("the writer is too far behind"),
                        Err(TrySendError::Disconnected(_)) => Err("the writer has stopped"),
                    },
                    None => Err("the journal is closed"),
                };
                if let Err(why) = queued {
                    self.stats.failed(format_args!(
                        "event journal {}: event {} not written: {why}",
                        self.path.display(),
                        event.seq
                    ));
                }
            }
            Err(e) => self.stats.failed(format_args!(
                "event journal {}: event {} not written: {e}",
                self.path.display(),
                event.seq
            )),
        }
        if state.recent.len() == self.options.recent_events {
            state.recent.pop_front();
        }
        state.recent.push_back(event.clone());
        // Sent under the lock so followers see events in `seq` order.
        let _ = state.live.send(event.clone());
        event
    }

    /// Events appended from now on. A follower that falls more than 1024 events behind
    /// is told how many it missed (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        lock(&self.state).live.subscribe()
    }

    /// The `seq` the next event will get.
    pub fn next_seq(&self) -> u64 {
        lock(&self.state).next_seq
    }

    /// Makes the next `seq` come after `seq` (the last one an earlier manager recorded in
    /// `state.json`), should the journal files have lost it: `seq` never goes back.
    pub fn continue_after(&self, seq: u64) {
        let mut state = lock(&self.state);
        state.next_seq = state.next_seq.max(seq.saturating_add(1));
    }

    /// Every stored event with a `seq` above `since` (all of them for `None`), oldest
    /// first. Recent events come from memory; files are read (newest first) only for
    /// older ones, and only as far back as needed. Blocking: call it off the runtime's
    /// worker threads for old `since` values.
    pub fn since(&self, since: Option<u64>) -> Vec<Event> {
        let (recent, first_recent) = {
            let state = lock(&self.state);
            snapshot(&state, since)
        };
        self.with_older(since, recent, first_recent)
    }

    /// The stored events after `since` (none for `None`) and a receiver of every later
    /// one: no gap and no duplicate at the seam. Blocking like [`Self::since`].
    pub fn follow(&self, since: Option<u64>) -> Follow {
        let (recent, first_recent, live) = {
            let state = lock(&self.state);
            let live = state.live.subscribe();
            match since {
                Some(_) => {
                    let (recent, first) = snapshot(&state, since);
                    (recent, first, live)
                }
                None => (Vec::new(), state.next_seq, live),
            }
        };
        let backlog = match since {
            Some(_) => self.with_older(since, recent, first_recent),
            None => recent,
        };
        Follow { backlog, live }
    }

    /// Every event in the journal files and memory, oldest first.
    pub fn read_all(&self) -> Vec<Event> {
        self.since(None)
    }

    /// Prepends to `recent` (which starts at `first_recent`) the stored events after
    /// `since` that are older than it.
    fn with_older(&self, since: Option<u64>, recent: Vec<Event>, first_recent: u64) -> Vec<Event> {
        let after = since.unwrap_or(0);
        if first_recent <= after + 1 {
            return recent;
        }
        // Opened together under the rotation lock: renames after this cannot move a
        // file out from under the read, and every event older than the ring is written
        // (the writer's queue is shorter than the ring).
        let files: Vec<File> = {
            let _rotating = lock(&self.rotation);
            std::iter::once(self.path.clone())
                .chain((1..=self.options.max_files).map(|n| rotated(&self.path, n)))
                .filter_map(|p| File::open(p).ok())
                // Only regular files: a device under the name would never end.
                .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
                .collect()
        };
        let mut chunks: Vec<Vec<Event>> = Vec::new();
        for file in files {
            let mut events = read_events(file);
            events.retain(|e| e.seq > after && e.seq < first_recent);
            let covered = events.first().is_some_and(|e| e.seq <= after + 1);
            chunks.push(events);
            if covered {
                break;
            }
        }
        let mut all: Vec<Event> = chunks.into_iter().rev().flatten().collect();
        // Hand-edited or duplicated lines must not break the order readers rely on.
        all.sort_by_key(|e| e.seq);
        all.dedup_by_key(|e| e.seq);
        all.extend(recent);
        all
    }

    /// Waits until every event appended so far has been written (or has failed).
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        // Cloned out of the lock: sending may wait for room, and appends must not.
        let queue = lock(&self.state).queue.clone();
        if queue.is_some_and(|q| q.send(Command::Flush(done)).is_ok()) {
            let _ = wait.recv();
        }
    }

    /// Writes everything appended so far, then stops the writer thread. Events appended
    /// later still reach followers but are not written (each counts as a write failure).
    /// The binary calls this at the very end of a shutdown.
    pub fn close(&self) {
        let queue = lock(&self.state).queue.take();
        drop(queue);
        if let Some(thread) = lock(&self.writer).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

impl EventSink for Journal {
    fn emit(&self, id: Option<&str>, kind: EventKind) {
        let name = kind.name();
        let event = self.append(id, kind);
        tracing::debug!(seq = event.seq, id, kind = name, "event");
    }
}

/// The recent events after `since` (all for `None`) and the `seq` of the oldest event in
/// memory (`next_seq` when none is).
fn snapshot(state: &State, since: Option<u64>) -> (Vec<Event>, u64) {
    let after = since.unwrap_or(0);
    let first = state.recent.front().map_or(state.next_seq, |e| e.seq);
    let recent = state
        .recent
        .iter()
        .filter(|e| e.seq > after)
        .cloned()
        .collect();
    (recent, first)
}

/// The writer thread's side: the open file and its size.
struct Writer {
    path: PathBuf,
    options: JournalOptions,
    /// `None` after a failure to reopen; retried with the next line.
    file: Option<File>,
    size: u64,
    stats: Arc<Stats>,
    rotation: Arc<Mutex<()>>,
}

impl Writer {
    /// Writes queued lines in order until every sender is gone.
    fn run(mut self, commands: Receiver<Command>) {
        while let Ok(command) = commands.recv() {
            match command {
                Command::Line(line) => self.write(&line),
                Command::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
        if let Some(file) = &self.file {
            let _ = file.sync_data();
        }
    }

    fn write(&mut self, line: &[u8]) {
        if self.size > 0 && self.size + line.len() as u64 > self.options.max_size {
            self.rotate();
        }
        if self.file.is_none() {
            match open_append(&self.path).and_then(|f| Ok((f.metadata()?.len(), f))) {
                Ok((size, file)) => {
                    self.size = size;
                    self.file = Some(file);
                }
                Err(e) => {
                    return self.stats.failed(format_args!(
                        "event journal {}: cannot open: {e}",
                        self.path.display()
                    ))
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        match file.write_all(line) {
            Ok(()) => self.size += line.len() as u64,
            Err(e) => {
                self.stats.failed(format_args!(
                    "event journal {}: cannot write: {e}",
                    self.path.display()
                ));
                // A partial line must not glue itself to the next one.
                let _ = file.write_all(b"\n");
                self.file = None;
            }
        }
    }

    /// `events.jsonl.(N-1)` → `.N`, ..., `events.jsonl` → `.1`, and a fresh `events.jsonl`.
    fn rotate(&mut self) {
        let _rotating = lock(&self.rotation);
        self.file = None;
        let result = (|| {
            if self.options.max_files == 0 {
                return std::fs::remove_file(&self.path);
            }
            for n in (1..self.options.max_files).rev() {
                match std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))
        })();
        match result {
            // The next write opens (creates) the new file.
            Ok(()) => self.size = 0,
            Err(e) => self.stats.failed(format_args!(
                "event journal {}: cannot rotate: {e}",
                self.path.display()
            )),
        }
    }
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Opens the journal for appending; a new file is 0640 (before the umask): the events
/// name processes, commands and errors, not for every user of the machine.
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .mode(0o640)
        .create(true)
        .append(true)
        .read(true)
        .open(path)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every parsable event of a file, in file order; other lines are skipped.
fn read_events(mut file: File) -> Vec<Event> {
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ends_with_newline(file: &mut File) -> std::io::Result<bool> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Reads the `seq` of the last complete line; a torn last line (crash mid-write) is skipped.
fn last_seq(file: &mut File) -> std::io::Result<Option<u64>> {
    const TAIL: u64 = 64 * 1024;
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
    let mut bytes = Vec::new();
    file.take(TAIL).read_to_end(&mut bytes)?;
    // The tail may start inside a multi-byte character: only whole lines are parsed.
    let tail = String::from_utf8_lossy(&bytes);
    Ok(tail
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("seq").and_then(|s| s.as_u64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited() -> EventKind {
        EventKind::Exited {
            code: Some(1),
            signal: None,
        }
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    fn file_seqs(path: &Path) -> Vec<u64> {
        seqs(&read_events(File::open(path).unwrap()))
    }

    /// Appends `n` events, each written before the next (a ring of 4 queues 2 lines at
    /// most; a faster burst would drop lines, which is not what these tests are about).
    fn append_written(j: &Journal, n: usize) {
        for _ in 0..n {
            j.append(Some("p"), exited());
            j.flush();
        }
    }

    /// Small files (about four events each), three rotated kept, a ring of 4.
    fn small() -> JournalOptions {
        JournalOptions {
            max_size: 400,
            max_files: 3,
            recent_events: 4,
        }
    }

    #[test]
    fn a_new_journal_is_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let j = Journal::open(&path).unwrap();
        j.append(None, exited());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0, "mode {mode:o}");
    }

    #[test]
    fn seq_continues_across_reopen_and_skips_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.append(Some("a"), exited()).seq, 1);
        assert_eq!(j.append(None, exited()).seq, 2);
        drop(j);
        // A crash mid-write leaves half a line behind.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":3,\"ts")
            .unwrap();
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.append(Some("a"), exited()).seq, 3);
        j.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let first: Event = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.id.as_deref(), Some("a"));
        assert_eq!(first.kind, exited());
        assert!(first.ts.ends_with('Z'));
        assert_eq!(seqs(&j.read_all()), vec![1, 2, 3]);
        assert_eq!(file_seqs(&path), vec![1, 2, 3]);
    }

    #[test]
    fn followers_get_new_events_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("events.jsonl")).unwrap();
        j.append(None, exited());
        let mut rx = j.subscribe();
        j.append(Some("b"), exited());
        j.append(Some("c"), exited());
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        assert_eq!(rx.try_recv().unwrap().seq, 3);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn rotates_at_max_size_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let j = Journal::open_with(&path, small()).unwrap();
        append_written(&j, 40);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "events.jsonl",
                "events.jsonl.1",
                "events.jsonl.2",
                "events.jsonl.3"
            ]
        );
        for name in &names {
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(len > 0 && len <= 400, "{name}: {len} bytes");
        }
        // Newest is .1, and together the files hold the last events without a gap.
        let current = file_seqs(&path);
        let one = file_seqs(&rotated(&path, 1));
        let two = file_seqs(&rotated(&path, 2));
        let three = file_seqs(&rotated(&path, 3));
        assert_eq!(*current.last().unwrap(), 40);
        assert_eq!(*one.last().unwrap() + 1, current[0]);
        assert_eq!(*two.last().unwrap() + 1, one[0]);
        assert_eq!(*three.last().unwrap() + 1, two[0]);
        assert!(three[0] > 1, "the oldest events are gone: {three:?}");
    }

    #[test]
    fn seq_continues_across_rotated_files_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let j = Journal::open_with(&path, small()).unwrap();
        append_written(&j, 10);
        drop(j);
        // Rotated just before the crash: events.jsonl is empty, .1 holds the last seq.
        for n in (1..3).rev() {
            let _ = std::fs::rename(rotated(&path, n), rotated(&path, n + 1));
        }
        std::fs::rename(&path, rotated(&path, 1)).unwrap();
        std::fs::write(&path, "").unwrap();
        let j = Journal::open_with(&path, small()).unwrap();
        assert_eq!(j.append(None, exited()).seq, 11);
        // And the oldest surviving seq onwards is readable without a gap.
        let all = seqs(&j.read_all());
        assert_eq!(*all.last().unwrap(), 11);
        assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
    }

    #[test]
    fn since_reads_back_across_files_only_as_far_as_needed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let j = Journal::open_with(
            &path,
            JournalOptions {
                max_files: 10,
                ..small()
            },
        )
        .unwrap();
        append_written(&j, 30);
        // From memory only: the ring holds 27..=30.
        assert_eq!(seqs(&j.since(Some(27))), vec![28, 29, 30]);
        // Across several rotated files.
        assert_eq!(seqs(&j.since(Some(3))), (4..=30).collect::<Vec<_>>());
        assert_eq!(seqs(&j.since(None)), (1..=30).collect::<Vec<_>>());
        assert!(j.since(Some(30)).is_empty());
        // The oldest file is not needed for a recent `since`: make it unreadable garbage
        // and the answer is unchanged.
        let oldest = (1..=10)
            .map(|n| rotated(&path, n))
            .rfind(|p| p.exists())
            .unwrap();
        std::fs::write(&oldest, "garbage\n").unwrap();
        assert_eq!(seqs(&j.since(Some(20))), (21..=30).collect::<Vec<_>>());
    }

    #[test]
    fn follow_has_no_gap_and_no_duplicate_at_the_seam() {
        let dir = tempfile::tempdir().unwrap();
        // A ring that holds every event of the burst, so no line is dropped.
        let options = JournalOptions {
            recent_events: 512,
            ..small()
        };
        let j = Arc::new(Journal::open_with(&dir.path().join("events.jsonl"), options).unwrap());
        for _ in 0..20 {
            j.append(None, exited());
        }
        let writer = {
            let j = j.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    j.append(None, exited());
                }
            })
        };
        let mut follow = j.follow(Some(5));
        writer.join().unwrap();
        let mut got = seqs(&follow.backlog);
        while let Ok(e) = follow.live.try_recv() {
            got.push(e.seq);
        }
        assert_eq!(got, (6..=220).collect::<Vec<_>>());
        // Without `since`: live only.
        let mut live = j.follow(None);
        assert!(live.backlog.is_empty());
        j.append(None, exited());
        assert_eq!(live.live.try_recv().unwrap().seq, 221);
    }

    #[test]
    fn a_failing_disk_is_counted_never_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        // Every write to /dev/full fails with "no space left on device".
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let j = Journal::open_with(&path, small()).unwrap();
        let mut rx = j.subscribe();
        for i in 1..=5 {
            assert_eq!(j.append(None, exited()).seq, i);
        }
        j.flush();
        assert_eq!(j.write_failures(), 5);
        // Followers and readers still see every event still in memory.
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(seqs(&j.since(Some(2))), vec![3, 4, 5]);
        assert_eq!(seqs(&j.since(None)), vec![2, 3, 4, 5]);

        // A directory removed under a journal: rotation and reopening fail, counted.
        let gone = tempfile::tempdir().unwrap();
        let path = gone.path().join("events.jsonl");
        let j = Journal::open_with(&path, small()).unwrap();
        j.append(None, exited());
        j.flush();
        assert_eq!(j.write_failures(), 0);
        std::fs::remove_dir_all(gone.path()).unwrap();
        append_written(&j, 20);
        assert!(j.write_failures() > 0);
        assert_eq!(j.next_seq(), 22);
    }

    #[test]
    fn close_writes_everything_then_counts_later_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let j = Journal::open(&path).unwrap();
        for _ in 0..100 {
            j.append(None, exited());
        }
        j.close();
        assert_eq!(file_seqs(&path), (1..=100).collect::<Vec<_>>());
        j.append(None, exited());
        assert_eq!(j.write_failures(), 1);
        j.flush();
    }
}
