//! The writer: one thread that turns what the readers took out of the pipes into lines
//! and writes them — to each stream's capture file, rotated by size, and to every
//! aggregation target.
//!
//! Readers hand it raw bytes in the order they read them ([`Job`]); the thread keeps, per
//! stream, the unfinished last line, and per file, what is still to be written. It
//! writes in batches (everything queued, up to [`BATCH_BYTES`], then one `write` per
//! file), so a process writing flat out costs a few system calls per 64 KiB, not one per
//! line. Only this thread touches the files: no lock guards them.
//!
//! A write that fails (a full disk, an I/O error) never stops anything: the batch is
//! dropped and counted, the file is cut back to its last whole line, one
//! `log_write_failed` event marks the start of the failure episode, and the next batch
//! tries again, so writing resumes by itself when space returns. A capture file whose
//! directory was deleted is noticed after each write (its link count is zero): the
//! directory and file are created again and the batch is written again, so nothing goes
//! silently into a deleted file.

use crate::format::{self, Clock, Source};
use crate::settings::{Settings, Target, TargetKind};
use crate::stats::Counters;
use crate::{rotated_path, Stream};
use hsu_common::{EventKind, EventSink};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::OwnedSemaphorePermit;

/// The longest line kept whole. A longer one is stored as consecutive lines of at most
/// this many bytes (cut before a UTF-8 character, never inside one); in JSON every piece
/// but the last has `"continued": true`. Bounds the memory an unfinished line can take.
pub const MAX_LINE: usize = 64 * 1024;

/// Bytes gathered before the files are written, when more keeps arriving.
const BATCH_BYTES: usize = 1024 * 1024;

/// A file's pending buffer is freed after a write when it grew beyond this, so an idle
/// stream holds no large buffer.
const KEEP_CAPACITY: usize = 16 * 1024;

/// Capture files kept open at most; beyond it, those written least recently are closed
/// (and opened again when written): with hundreds of processes the manager would
/// otherwise hold a descriptor per stream for the files as well as for the pipes.
const MAX_OPEN_FILES: usize = 64;

/// How often the number of open capture files is checked.
const OPEN_FILES_CHECK: Duration = Duration::from_secs(1);

/// Queued console chunks (`process_manager_stdout` / `_stderr`) before new ones are
/// dropped and counted: a stalled terminal or pipe must not stall the files.
const CONSOLE_QUEUE: usize = 256;

/// One captured stream, as the writer and the collector both know it.
#[derive(Debug)]
pub(crate) struct StreamInfo {
    pub id: String,
    pub stream: Stream,
    /// `<log dir>/<id>.<stream>.log`.
    pub path: PathBuf,
    pub counters: Counters,
}

/// What the writer is asked to do, in order.
pub(crate) enum Job {
    /// Bytes read from a stream's pipe at `at`.
    Data {
        stream: Arc<StreamInfo>,
        at: SystemTime,
        bytes: Vec<u8>,
        /// Held until the bytes are written: the bound on what is queued.
        permit: Option<OwnedSemaphorePermit>,
    },
    /// No more bytes of this run: the unfinished last line is written as a line.
    EndOfRun { stream: Arc<StreamInfo> },
    /// A line of the manager's own log (for `file` targets).
    Manager {
        at: SystemTime,
        line: Vec<u8>,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// New settings from here on.
    Settings(Settings),
    /// Answered once everything queued before it is written (or dropped).
    Sync(SyncSender<()>),
    /// From here on, the first line of process `id` (either stream) matching the watch
    /// calls its `notify`; `None` ends a watch.
    Watch {
        id: String,
        watch: Option<LineWatch>,
    },
}

/// A watch for a line (`ready_log_line`): the first match calls `notify`, once.
pub struct LineWatch {
    /// What a line must match.
    pub pattern: regex::bytes::Regex,
    /// Called (on the writer thread; it must not block) at the first match.
    pub notify: Box<dyn FnOnce() + Send>,
}

/// The labels and counters of the aggregation targets, for stats.
pub(crate) type TargetCounters = Arc<Mutex<Vec<(String, Arc<Counters>)>>>;

/// Runs the writer until every sender of `jobs` is gone.
pub(crate) fn run(jobs: Receiver<Job>, mut writer: Writer) {
    while let Ok(job) = jobs.recv() {
        writer.take(job);
        while writer.pending < BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) => writer.take(job),
                Err(_) => break,
            }
        }
        writer.flush();
    }
    writer.flush();
}

/// The writer thread's state.
pub(crate) struct Writer {
    log_dir: PathBuf,
    events: Arc<dyn EventSink>,
    settings: Settings,
    streams: HashMap<(String, Stream), StreamWriter>,
    targets: Vec<TargetWriter>,
    target_counters: TargetCounters,
    console: Option<SyncSender<ConsoleChunk>>,
    clock: Clock,
    /// Bytes gathered since the last write.
    pending: usize,
    permits: Vec<OwnedSemaphorePermit>,
    acks: Vec<SyncSender<()>>,
    /// When the open capture files were last counted.
    files_checked: Instant,
    /// Line watches, by process id.
    watches: HashMap<String, LineWatch>,
}

impl Writer {
    pub(crate) fn new(
        log_dir: PathBuf,
        events: Arc<dyn EventSink>,
        settings: Settings,
        target_counters: TargetCounters,
    ) -> Writer {
        let mut w = Writer {
            log_dir,
            events,
            settings: Settings::default(),
            streams: HashMap::new(),
            targets: Vec::new(),
            target_counters,
            console: None,
            clock: Clock::default(),
            pending: 0,
            permits: Vec::new(),
            acks: Vec::new(),
            files_checked: Instant::now(),
            watches: HashMap::new(),
        };
        w.apply(settings);
        w
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Data {
                stream,
                at,
                bytes,
                permit,
            } => {
                stream.counters.dequeued(bytes.len());
                self.pending += bytes.len();
                self.data(&stream, at, &bytes);
                self.permits.extend(permit);
            }
            Job::EndOfRun { stream } => {
                if let Some(mut sw) = self.streams.remove(&key(&stream)) {
                    let partial = std::mem::take(&mut sw.partial);
                    if !partial.is_empty() {
                        let at = sw.partial_at;
                        self.line(&mut sw, at, &partial, false);
                    }
                    self.streams.insert(key(&stream), sw);
                }
            }
            Job::Manager { at, line, permit } => {
                self.pending += line.len();
                self.manager_line(at, &line);
                self.permits.extend(permit);
            }
            Job::Settings(settings) => {
                self.flush();
                self.apply(settings);
            }
            Job::Sync(ack) => self.acks.push(ack),
            Job::Watch { id, watch } => match watch {
                Some(w) => {
                    self.watches.insert(id, w);
                }
                None => {
                    self.watches.remove(&id);
                }
            },
        }
    }

    /// Splits `bytes` into lines, carrying an unfinished last line to the next read.
    fn data(&mut self, info: &Arc<StreamInfo>, at: SystemTime, bytes: &[u8]) {
        // Taken out of the map while its lines are handled: one lookup per read, not one
        // per line.
        let k = key(info);
        let mut sw = self
            .streams
            .remove(&k)
            .unwrap_or_else(|| StreamWriter::new(info.clone()));
        let mut rest = bytes;
        while !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let (segment, after) = (&rest[..i], &rest[i + 1..]);
                    rest = after;
                    if sw.partial.is_empty() {
                        self.line(&mut sw, at, segment, false);
                    } else {
                        let mut whole = std::mem::take(&mut sw.partial);
                        whole.extend_from_slice(segment);
                        let started = sw.partial_at;
                        self.line(&mut sw, started, &whole, false);
                    }
                }
                None => {
                    if sw.partial.is_empty() {
                        sw.partial_at = at;
                    }
                    sw.partial.extend_from_slice(rest);
                    rest = &[];
                    // A line this long is stored in pieces as it arrives.
                    while sw.partial.len() > MAX_LINE {
                        let cut = utf8_cut(&sw.partial, MAX_LINE);
                        let piece: Vec<u8> = sw.partial.drain(..cut).collect();
                        let started = sw.partial_at;
                        self.piece(&mut sw, started, &piece, true);
                    }
                }
            }
        }
        self.streams.insert(k, sw);
    }

    /// One whole line, stored in pieces when longer than [`MAX_LINE`].
    fn line(&mut self, sw: &mut StreamWriter, at: SystemTime, line: &[u8], continued: bool) {
        if !self.watches.is_empty() {
            let id = &sw.info.id;
            if self
                .watches
                .get(id)
                .is_some_and(|w| w.pattern.is_match(line))
            {
                if let Some(w) = self.watches.remove(id) {
                    (w.notify)();
                }
            }
        }
        let mut rest = line;
        while rest.len() > MAX_LINE {
            let cut = utf8_cut(rest, MAX_LINE);
            self.piece(sw, at, &rest[..cut], true);
            rest = &rest[cut..];
        }
        self.piece(sw, at, rest, continued);
    }

    /// Stores one line (or piece of one) and copies it to every target.
    fn piece(&mut self, sw: &mut StreamWriter, at: SystemTime, line: &[u8], continued: bool) {
        let Writer {
            targets,
            clock,
            settings,
            events,
            log_dir,
            ..
        } = self;
        let ts = clock.text(at);
        let info = &sw.info;
        let before = sw.file.pending.len();
        format::stored(
            &mut sw.file.pending,
            settings.timestamps.then_some(ts),
            line,
        );
        let ctx = FileCtx {
            events: &**events,
            log_dir,
            id: Some(&info.id),
            label: info.stream.as_str(),
            counters: &info.counters,
            settings,
        };
        sw.file.added_line(before, &ctx);
        if targets.is_empty() {
            return;
        }
        let source = Source::Process {
            id: &info.id,
            stream: info.stream,
        };
        for t in targets.iter_mut() {
            t.push(ts, source, line, continued, &**events, log_dir, settings);
        }
    }

    fn manager_line(&mut self, at: SystemTime, line: &[u8]) {
        let Writer {
            targets,
            clock,
            settings,
            events,
            log_dir,
            ..
        } = self;
        let ts = clock.text(at);
        for t in targets.iter_mut() {
            if matches!(t.sink, Sink::File(_)) {
                t.push(
                    ts,
                    Source::Manager,
                    line,
                    false,
                    &**events,
                    log_dir,
                    settings,
                );
            }
        }
    }

    /// Writes everything gathered, then releases the queue's permits and answers syncs.
    fn flush(&mut self) {
        let Writer {
            streams,
            targets,
            settings,
            events,
            log_dir,
            console,
            ..
        } = self;
        for sw in streams.values_mut() {
            let ctx = FileCtx {
                events: &**events,
                log_dir,
                id: Some(&sw.info.id),
                label: sw.info.stream.as_str(),
                counters: &sw.info.counters,
                settings,
            };
            sw.file.flush(&ctx);
            sw.info
                .counters
                .held(sw.partial.capacity() + sw.file.pending.capacity());
        }
        for t in targets.iter_mut() {
            t.flush(&**events, log_dir, settings, console.as_ref());
        }
        self.pending = 0;
        self.permits.clear();
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
        if self.files_checked.elapsed() >= OPEN_FILES_CHECK {
            self.files_checked = Instant::now();
            self.close_least_recent();
        }
    }

    /// Closes the capture files written least recently while more than
    /// [`MAX_OPEN_FILES`] are open, down to half of it.
    fn close_least_recent(&mut self) {
        let mut open: Vec<&mut RotatingFile> = self
            .streams
            .values_mut()
            .map(|sw| &mut sw.file)
            .filter(|f| f.file.is_some())
            .collect();
        if open.len() <= MAX_OPEN_FILES {
            return;
        }
        open.sort_by_key(|f| f.last_write);
        let excess = open.len() - MAX_OPEN_FILES / 2;
        for f in open.into_iter().take(excess) {
            f.file = None;
        }
    }

    fn apply(&mut self, settings: Settings) {
        let mut old: Vec<TargetWriter> = std::mem::take(&mut self.targets);
        for target in &settings.targets {
            let existing = old.iter().position(|t| t.target.kind == target.kind);
            let writer = match existing {
                Some(i) => {
                    let mut t = old.remove(i);
                    t.target = target.clone();
                    t
                }
                None => TargetWriter::new(target.clone(), &self.log_dir),
            };
            if matches!(writer.sink, Sink::Console { .. }) && self.console.is_none() {
                self.console = console_thread();
            }
            self.targets.push(writer);
        }
        let labels = self
            .targets
            .iter()
            .map(|t| (t.label(), t.counters.clone()))
            .collect();
        if let Ok(mut c) = self.target_counters.lock() {
            *c = labels;
        }
        self.settings = settings;
    }
}

fn key(info: &StreamInfo) -> (String, Stream) {
    (info.id.clone(), info.stream)
}

/// Where to cut `bytes` (longer than `max`) into a piece of at most `max` bytes: before
/// a UTF-8 continuation byte is never chosen, unless the bytes are not UTF-8 anyway.
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|&i| !is_continuation(bytes[i]))
        .unwrap_or(max)
}

/// One stream's state in the writer: its file and its unfinished last line.
struct StreamWriter {
    info: Arc<StreamInfo>,
    file: RotatingFile,
    partial: Vec<u8>,
    /// When the unfinished line's first byte arrived (its timestamp).
    partial_at: SystemTime,
}

impl StreamWriter {
    fn new(info: Arc<StreamInfo>) -> StreamWriter {
        StreamWriter {
            file: RotatingFile::new(info.path.clone()),
            info,
            partial: Vec::new(),
            partial_at: SystemTime::UNIX_EPOCH,
        }
    }
}

/// What a file write needs to know to report a failure.
struct FileCtx<'a> {
    events: &'a dyn EventSink,
    log_dir: &'a Path,
    /// The process (None: an aggregation target).
    id: Option<&'a str>,
    /// `stdout`, `stderr`, or `aggregated`.
    label: &'a str,
    counters: &'a Counters,
    settings: &'a Settings,
}

/// A file written in batches and rotated by size.
struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    /// The file's length as far as this writer knows (what it wrote).
    size: u64,
    pending: Vec<u8>,
    pending_lines: u64,
    last_write: Instant,
}

impl RotatingFile {
    fn new(path: PathBuf) -> RotatingFile {
        RotatingFile {
            path,
            file: None,
            size: 0,
            pending: Vec::new(),
            pending_lines: 0,
            last_write: Instant::now(),
        }
    }

    /// A line was appended to `pending` at `before`: when it would take the file past
    /// `max_size`, what came before it is written and the file rotated first, so lines
    /// are never split across files.
    fn added_line(&mut self, before: usize, ctx: &FileCtx<'_>) {
        self.pending_lines += 1;
        let max = ctx.settings.rotation.max_size;
        let held = self.size + before as u64;
        if self.size + self.pending.len() as u64 > max && held > 0 {
            let line = self.pending.split_off(before);
            self.pending_lines -= 1;
            self.flush(ctx);
            self.rotate(ctx);
            self.pending = line;
            self.pending_lines = 1;
        }
    }

    fn open(&mut self, ctx: &FileCtx<'_>) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let open = || {
            OpenOptions::new()
                .mode(0o640)
                .create(true)
                .append(true)
                .open(&self.path)
        };
        let file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The directory was deleted: make it again (0750, as the manager does).
                let dir = self.path.parent().unwrap_or(ctx.log_dir);
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(dir)?;
                open()?
            }
            Err(e) => return Err(e),
        };
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn flush(&mut self, ctx: &FileCtx<'_>) {
        if self.pending.is_empty() {
            return;
        }
        let result = self.write_pending(ctx);
        self.last_write = Instant::now();
        let (bytes, lines) = (self.pending.len() as u64, self.pending_lines);
        match result {
            Ok(()) => {
                ctx.counters.written(bytes, lines);
                if ctx.counters.is_failing() {
                    ctx.counters.set_failing(false);
                    let lost = ctx.counters.snapshot().bytes_dropped;
                    tracing::info!(
                        "writing {} again ({lost} bytes dropped so far)",
                        self.path.display()
                    );
                }
            }
            Err(e) => {
                ctx.counters.dropped(bytes, lines);
                if ctx.counters.set_failing(true) {
                    tracing::warn!(
                        "cannot write {}: {e}; its output is dropped (and counted) until writing works again",
                        self.path.display()
                    );
                    ctx.events.emit(
                        ctx.id,
                        EventKind::LogWriteFailed {
                            stream: ctx.label.to_owned(),
                            path: self.path.display().to_string(),
                            error: e.to_string(),
                        },
                    );
                }
            }
        }
        if self.pending.capacity() > KEEP_CAPACITY {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
        self.pending_lines = 0;
    }

    /// Writes `pending` whole or not at all (a torn write is cut off again).
    fn write_pending(&mut self, ctx: &FileCtx<'_>) -> io::Result<()> {
        for attempt in 0..2 {
            self.open(ctx)?;
            let Some(file) = self.file.as_mut() else {
                return Err(io::Error::other("not open"));
            };
            if let Err(e) = file.write_all(&self.pending) {
                let _ = file.set_len(self.size);
                // Opened again next time: the file may be gone or replaced.
                self.file = None;
                return Err(e);
            }
            self.size += self.pending.len() as u64;
            // Unlinked (its directory deleted): what was just written went nowhere.
            // Write it again into a new file, once.
            let gone = file.metadata().map(|m| m.nlink() == 0).unwrap_or(false);
            if !gone {
                return Ok(());
            }
            self.file = None;
            if attempt == 0 {
                tracing::warn!("{} was deleted; creating it again", self.path.display());
            }
        }
        Err(io::Error::other(
            "the file is deleted as soon as it is written",
        ))
    }

    fn rotate(&mut self, ctx: &FileCtx<'_>) {
        self.file = None;
        let max_files = ctx.settings.rotation.max_files.max(1);
        for i in (1..max_files).rev() {
            let _ = std::fs::rename(rotated_path(&self.path, i), rotated_path(&self.path, i + 1));
        }
        if let Err(e) = std::fs::rename(&self.path, rotated_path(&self.path, 1)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot rotate {}: {e}", self.path.display());
                return;
            }
        }
        // Files beyond max_files (it was lowered) go too.
        for i in max_files + 1..max_files + 1000 {
            if std::fs::remove_file(rotated_path(&self.path, i)).is_err() {
                break;
            }
        }
        self.size = 0;
        ctx.counters.rotated();
    }
}

/// A chunk for the console thread: which stream, the bytes, their line count, and whose
/// counters.
type ConsoleChunk = (bool, Vec<u8>, u64, Arc<Counters>);

/// An aggregation target being written.
struct TargetWriter {
    target: Target,
    sink: Sink,
    counters: Arc<Counters>,
}

enum Sink {
    File(RotatingFile),
    Console {
        stderr: bool,
        pending: Vec<u8>,
        lines: u64,
    },
}

impl TargetWriter {
    fn new(target: Target, log_dir: &Path) -> TargetWriter {
        let sink = match &target.kind {
            TargetKind::File(path) => Sink::File(RotatingFile::new(log_dir.join(path))),
            TargetKind::Stdout => Sink::Console {
                stderr: false,
                pending: Vec::new(),
                lines: 0,
            },
            TargetKind::Stderr => Sink::Console {
                stderr: true,
                pending: Vec::new(),
                lines: 0,
            },
        };
        TargetWriter {
            target,
            sink,
            counters: Arc::new(Counters::default()),
        }
    }

    fn label(&self) -> String {
        match &self.sink {
            Sink::File(f) => format!("file:{}", f.path.display()),
            Sink::Console { stderr: false, .. } => "process_manager_stdout".into(),
            Sink::Console { stderr: true, .. } => "process_manager_stderr".into(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        ts: &str,
        source: Source<'_>,
        line: &[u8],
        continued: bool,
        events: &dyn EventSink,
        log_dir: &Path,
        settings: &Settings,
    ) {
        let (format, prefix) = (self.target.format, self.target.prefix.as_deref());
        match &mut self.sink {
            Sink::File(file) => {
                let before = file.pending.len();
                format::target(
                    &mut file.pending,
                    format,
                    prefix,
                    ts,
                    source,
                    line,
                    continued,
                );
                let ctx = FileCtx {
                    events,
                    log_dir,
                    id: None,
                    label: "aggregated",
                    counters: &self.counters,
                    settings,
                };
                file.added_line(before, &ctx);
            }
            Sink::Console { pending, lines, .. } => {
                format::target(pending, format, prefix, ts, source, line, continued);
                *lines += 1;
            }
        }
    }

    fn flush(
        &mut self,
        events: &dyn EventSink,
        log_dir: &Path,
        settings: &Settings,
        console: Option<&SyncSender<ConsoleChunk>>,
    ) {
        match &mut self.sink {
            Sink::File(file) => {
                let ctx = FileCtx {
                    events,
                    log_dir,
                    id: None,
                    label: "aggregated",
                    counters: &self.counters,
                    settings,
                };
                file.flush(&ctx);
            }
            Sink::Console {
                stderr,
                pending,
                lines,
            } => {
                if pending.is_empty() {
                    return;
                }
                let chunk = std::mem::take(pending);
                let n = std::mem::take(lines);
                let len = chunk.len() as u64;
                let sent = match console {
                    Some(tx) => match tx.try_send((*stderr, chunk, n, self.counters.clone())) {
                        Ok(()) => true,
                        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                    },
                    None => false,
                };
                if !sent {
                    self.counters.dropped(len, n);
                }
            }
        }
    }
}

/// The thread that writes console targets, so that a stalled terminal or a full pipe
/// on the manager's stdout never holds up the files.
fn console_thread() -> Option<SyncSender<ConsoleChunk>> {
    let (tx, rx) = sync_channel::<ConsoleChunk>(CONSOLE_QUEUE);
    std::thread::Builder::new()
        .name("hsu-log-console".into())
        .spawn(move || {
            for (stderr, chunk, lines, counters) in rx {
                let result = if stderr {
                    let mut e = io::stderr().lock();
                    e.write_all(&chunk).and_then(|()| e.flush())
                } else {
                    let mut o = io::stdout().lock();
                    o.write_all(&chunk).and_then(|()| o.flush())
                };
                match result {
                    Ok(()) => counters.written(chunk.len() as u64, lines),
                    Err(_) => counters.dropped(chunk.len() as u64, lines),
                }
            }
        })
        .ok()
        .map(|_| tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fall_between_characters() {
        let text = "é".repeat(10); // two bytes each
        let bytes = text.as_bytes();
        let cut = utf8_cut(bytes, 5);
        assert_eq!(cut, 4);
        assert!(std::str::from_utf8(&bytes[..cut]).is_ok());
        assert_eq!(utf8_cut(b"abcdefgh", 5), 5);
        // Not UTF-8 at all: cut at the limit.
        assert_eq!(utf8_cut(&[0x80; 10], 5), 5);
    }
}
