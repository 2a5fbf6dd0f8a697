//! The collector: one named pipe per captured stream, one reader task per pipe, one
//! writer thread for all of them. See the crate documentation for the design.

use crate::fifo;
use crate::settings::{Settings, TargetKind};
use crate::stats::{Counters, StreamStats};
use crate::writer::{self, Job, StreamInfo, TargetCounters, Writer};
use crate::{CaptureFiles, Stream};
use hsu_common::EventSink;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};
use tokio::net::unix::pipe::Receiver;
use tokio::sync::Semaphore;

/// Bytes taken out of a pipe at most per read.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read but not yet written, over all streams, before readers wait (and the pipes,
/// then the children, fill up): the bound on the manager's memory for output in flight.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// What a synchronous drain (a new run, shutdown) reads at most from one pipe.
const DRAIN_LIMIT: usize = 2 * fifo::PIPE_BUFFER;
/// How long [`LogCollector::flush`] waits for the writer.
const FLUSH_PATIENCE: Duration = Duration::from_secs(2);
/// How long [`LogCollector::shutdown`] waits for the writer to write what is queued.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

thread_local! {
    /// The buffer every read goes through; each read copies out only what it got, so no
    /// stream holds a read buffer of its own.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// The manager's own log goes to the collector that registered last (one per process in
/// the binary; see [`manager_log_line`]).
static MANAGER_LOG: Mutex<Option<Weak<Inner>>> = Mutex::new(None);

/// Hands one line of the manager's own log to the collector of this process, which
/// copies it to the `file` aggregation targets (if any are configured). Never blocks:
/// a line that finds the queue full is dropped and counted.
pub fn manager_log_line(line: &[u8]) {
    let inner = MANAGER_LOG
        .lock()
        .ok()
        .and_then(|slot| slot.as_ref().and_then(Weak::upgrade));
    if let Some(inner) = inner {
        inner.manager_line(line);
    }
}

/// Captures the output of every managed process. Cheap to clone; every clone is the
/// same collector.
#[derive(Clone)]
pub struct LogCollector {
    inner: Arc<Inner>,
}

struct Inner {
    files: CaptureFiles,
    fifo_dir: PathBuf,
    /// To the writer thread; `None` once shut down (or when the thread could not start).
    jobs: Mutex<Option<Sender<Job>>>,
    /// Permits are bytes read and not yet written.
    budget: Arc<Semaphore>,
    streams: Mutex<HashMap<(String, Stream), Arc<StreamHandle>>>,
    targets: TargetCounters,
    /// Manager log lines dropped because the queue was full.
    manager: Counters,
    /// A `file` target exists: the manager's own lines are wanted.
    wants_manager_lines: AtomicBool,
    closed: AtomicBool,
    /// Times a reader woke up, over all streams: flat while nothing is written.
    wakeups: AtomicU64,
}

/// One captured stream: its pipe and its reader.
struct StreamHandle {
    info: Arc<StreamInfo>,
    fifo: PathBuf,
    reader: Mutex<ReaderSlot>,
}

/// The manager's read end of a stream's pipe and the task reading it. Everything that
/// reads the pipe holds this lock while it reads and queues, so the bytes of one stream
/// reach the writer in pipe order, whoever read them.
#[derive(Default)]
struct ReaderSlot {
    fd: Option<Arc<Receiver>>,
    /// Bumped when a new reader task takes over; an older task that wakes up ends.
    generation: u64,
    task: Option<tokio::task::AbortHandle>,
}

impl StreamHandle {
    fn lock(&self) -> MutexGuard<'_, ReaderSlot> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogCollector {
    /// A collector writing capture files into `log_dir` and keeping its named pipes in
    /// `fifo_dir` (both created when needed). Starts the writer thread. Events
    /// (`log_write_failed`) go to `events`.
    pub fn new(
        log_dir: impl Into<PathBuf>,
        fifo_dir: impl Into<PathBuf>,
        settings: Settings,
        events: Arc<dyn EventSink>,
    ) -> LogCollector {
        let log_dir = log_dir.into();
        let targets: TargetCounters = Arc::default();
        let wants = wants_manager_lines(&settings);
        let writer = Writer::new(log_dir.clone(), events, settings, targets.clone());
        let (tx, rx) = channel();
        let spawned = std::thread::Builder::new()
            .name("hsu-log-writer".into())
            .spawn(move || writer::run(rx, writer));
        if let Err(e) = &spawned {
            tracing::warn!("cannot start the log writer thread ({e}); processes write their capture files directly");
        }
        let inner = Arc::new(Inner {
            files: CaptureFiles::new(log_dir),
            fifo_dir: fifo_dir.into(),
            jobs: Mutex::new(spawned.is_ok().then_some(tx)),
            budget: Arc::new(Semaphore::new(QUEUE_BYTES)),
            streams: Mutex::new(HashMap::new()),
            targets,
            manager: Counters::default(),
            wants_manager_lines: AtomicBool::new(wants),
            closed: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
        });
        if let Ok(mut slot) = MANAGER_LOG.lock() {
            *slot = Some(Arc::downgrade(&inner));
        }
        LogCollector { inner }
    }

    /// The capture files (their paths).
    pub fn files(&self) -> &CaptureFiles {
        &self.inner.files
    }

    /// Where the named pipe of `id`'s `stream` lives: `<fifo dir>/<id>.<stream>`.
    pub fn pipe_path(&self, id: &str, stream: Stream) -> PathBuf {
        self.inner.fifo_dir.join(format!("{id}.{stream}"))
    }

    /// Applies new settings (a reload): rotation, timestamps and targets take effect
    /// with the next line.
    pub fn update(&self, settings: Settings) {
        self.inner
            .wants_manager_lines
            .store(wants_manager_lines(&settings), Ordering::Relaxed);
        self.inner.send(Job::Settings(settings));
    }

    /// From here on, the first output line of process `id` (either stream) that matches
    /// `pattern` calls `notify` (once, on the writer thread: it must not block). A new
    /// watch replaces the old one.
    pub fn watch_line(
        &self,
        id: &str,
        pattern: regex::bytes::Regex,
        notify: impl FnOnce() + Send + 'static,
    ) {
        let watch = crate::writer::LineWatch {
            pattern,
            notify: Box::new(notify),
        };
        self.inner.send(Job::Watch {
            id: id.to_owned(),
            watch: Some(watch),
        });
    }

    /// Ends the line watch of `id`, if any.
    pub fn unwatch_line(&self, id: &str) {
        self.inner.send(Job::Watch {
            id: id.to_owned(),
            watch: None,
        });
    }

    /// The file to give a new run of process `id` as its `stream`: the child's end of
    /// the stream's named pipe (created if missing, kept if present), read by this
    /// collector. Whatever an earlier run left in the pipe is read first and its
    /// unfinished last line ended, so a run starts on a line of its own.
    ///
    /// When the pipe cannot be used (not Linux, no runtime, an error), the capture file
    /// itself is returned, opened for appending: output is still kept, without rotation,
    /// timestamps or aggregation for that run.
    pub fn attach(&self, id: &str, stream: Stream) -> io::Result<File> {
        match self.attach_pipe(id, stream) {
            Ok(file) => Ok(file),
            Err(e) => {
                tracing::warn!(
                    id,
                    "cannot capture {stream} through a pipe ({e}); the process writes its capture file directly this run"
                );
                self.inner.files.open_append(id, stream)
            }
        }
    }

    fn attach_pipe(&self, id: &str, stream: Stream) -> io::Result<File> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(io::Error::other("the collector is shut down"));
        }
        if self.inner.sender().is_none() {
            return Err(io::Error::other("no log writer"));
        }
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        create_private_dir(&self.inner.fifo_dir)?;
        let handle = self.handle(id, stream);
        fifo::ensure(&handle.fifo)?;
        self.start_reader(&handle, true)?;
        let child = fifo::open_child_end(&handle.fifo)?;
        if let Err(e) = fifo::grow(&child) {
            tracing::debug!(id, "cannot enlarge the {stream} pipe: {e}");
        }
        // The capture file exists from the start of a run, as when the child wrote it
        // itself (the writer creates it again should it go).
        let _ = self.inner.files.open_append(id, stream);
        Ok(child)
    }

    /// Resumes reading the existing named pipe of `id`'s `stream` (a process adopted by a
    /// manager that started again): nothing is created, and what the process wrote while
    /// no manager read is read first. `Ok(false)`: there is no such pipe (the process was
    /// not captured through one).
    pub fn reconnect(&self, id: &str, stream: Stream) -> io::Result<bool> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(io::Error::other("the collector is shut down"));
        }
        let path = self.pipe_path(id, stream);
        if !fifo::exists(&path) {
            return Ok(false);
        }
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let handle = self.handle(id, stream);
        self.start_reader(&handle, false)?;
        Ok(true)
    }

    /// Resolves once everything `id`'s pipes held when it was called is in the capture
    /// files (waiting at most 2 s for the disk): what is read back right after sees all
    /// a process wrote before. Does not wait for the process to write anything.
    pub async fn flush(&self, id: &str) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let handle = lock(&self.inner.streams)
                .get(&(id.to_owned(), stream))
                .cloned();
            if let Some(handle) = handle {
                let slot = handle.lock();
                if let Some(fd) = &slot.fd {
                    self.inner.drain(&handle.info, fd);
                }
            }
        }
        if self.inner.sender().is_none() {
            return;
        }
        let (tx, rx) = sync_channel(1);
        self.inner.send(Job::Sync(tx));
        let _ = tokio::task::spawn_blocking(move || rx.recv_timeout(FLUSH_PATIENCE)).await;
    }

    /// Stops capturing process `id` (removed from the config): what its pipes hold is
    /// written, its readers end and its pipes are deleted. Its capture files stay.
    pub fn remove(&self, id: &str) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let handle = lock(&self.inner.streams).remove(&(id.to_owned(), stream));
            if let Some(handle) = handle {
                self.close_reader(&handle);
                let _ = std::fs::remove_file(&handle.fifo);
            }
        }
    }

    /// The counters of `id`'s `stream`; `None` when it was never captured.
    pub fn stats(&self, id: &str, stream: Stream) -> Option<StreamStats> {
        lock(&self.inner.streams)
            .get(&(id.to_owned(), stream))
            .map(|h| h.info.counters.snapshot())
    }

    /// The counters of every captured stream: `(id, stream, stats)`, sorted.
    pub fn all_stats(&self) -> Vec<(String, Stream, StreamStats)> {
        let mut all: Vec<_> = lock(&self.inner.streams)
            .values()
            .map(|h| (h.info.id.clone(), h.info.stream, h.info.counters.snapshot()))
            .collect();
        all.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        all
    }

    /// The counters of each aggregation target, by label (`file:<path>`,
    /// `process_manager_stdout`, `process_manager_stderr`).
    pub fn target_stats(&self) -> Vec<(String, StreamStats)> {
        lock(&self.inner.targets)
            .iter()
            .map(|(label, c)| (label.clone(), c.snapshot()))
            .collect()
    }

    /// Lines of the manager's own log that were not copied to the targets because the
    /// queue was full.
    pub fn manager_lines_dropped(&self) -> u64 {
        self.inner.manager.snapshot().lines_dropped
    }

    /// Bytes read from the pipes and not yet written, over all streams.
    pub fn queued_bytes(&self) -> u64 {
        (QUEUE_BYTES - self.inner.budget.available_permits().min(QUEUE_BYTES)) as u64
    }

    /// Times the pipe readers woke up, over all streams. Grows with what is written and
    /// with runs ending, never while every pipe is quiet: a reader that spins shows here.
    pub fn reader_wakeups(&self) -> u64 {
        self.inner.wakeups.load(Ordering::Relaxed)
    }

    /// Copies a line of the manager's own log to the `file` targets (see
    /// [`manager_log_line`]).
    pub fn manager_line(&self, line: &[u8]) {
        self.inner.manager_line(line);
    }

    /// Reads what every pipe holds now, ends every unfinished line, writes everything
    /// (waiting at most 5 s for the disk) and stops the writer. Returns at once whatever
    /// the processes do: those still running keep their pipes, and what they write next
    /// waits in the pipe for the next manager ([`LogCollector::reconnect`]).
    pub async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let handles: Vec<Arc<StreamHandle>> = lock(&self.inner.streams).values().cloned().collect();
        for handle in &handles {
            self.close_reader(handle);
        }
        let (tx, rx) = sync_channel(1);
        self.inner.send(Job::Sync(tx));
        let wait = tokio::task::spawn_blocking(move || rx.recv_timeout(SHUTDOWN_PATIENCE));
        if !matches!(wait.await, Ok(Ok(()))) {
            tracing::warn!("captured output was not all written within {SHUTDOWN_PATIENCE:?} (a stalled disk?)");
        }
        // The writer ends once it has written what is queued.
        *lock(&self.inner.jobs) = None;
        if let Ok(mut slot) = MANAGER_LOG.lock() {
            if slot
                .as_ref()
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.inner)))
            {
                *slot = None;
            }
        }
    }

    /// The handle of `id`'s `stream`, created on first use.
    fn handle(&self, id: &str, stream: Stream) -> Arc<StreamHandle> {
        let mut streams = lock(&self.inner.streams);
        streams
            .entry((id.to_owned(), stream))
            .or_insert_with(|| {
                Arc::new(StreamHandle {
                    info: Arc::new(StreamInfo {
                        id: id.to_owned(),
                        stream,
                        path: self.inner.files.path(id, stream),
                        counters: Counters::default(),
                    }),
                    fifo: self.pipe_path(id, stream),
                    reader: Mutex::new(ReaderSlot::default()),
                })
            })
            .clone()
    }

    /// Makes sure a task reads the stream's pipe. What the pipe holds now is read at once
    /// (it was written before this call), and with `boundary` the unfinished last line is
    /// ended. A reader already on this very pipe is kept.
    fn start_reader(&self, handle: &Arc<StreamHandle>, boundary: bool) -> io::Result<()> {
        let mut slot = handle.lock();
        let current = slot.fd.clone();
        if let Some(fd) = &current {
            self.inner.drain(&handle.info, fd);
            if boundary {
                self.inner.send(Job::EndOfRun {
                    stream: handle.info.clone(),
                });
            }
        }
        let same_pipe = current
            .as_ref()
            .is_some_and(|fd| same_file(fd, &handle.fifo));
        if same_pipe {
            return Ok(());
        }
        // Opened before anything else holds the pipe: it exists from here on, and
        // nothing written into it is lost while this collector runs.
        let pipe = fifo::open_reader(&handle.fifo)?;
        if let Err(e) = fifo::grow(&pipe) {
            tracing::debug!(id = %handle.info.id, "cannot enlarge the pipe: {e}");
        }
        let fd = Arc::new(pipe);
        slot.generation += 1;
        if let Some(task) = slot.task.take() {
            task.abort();
        }
        slot.fd = Some(fd);
        let task = tokio::spawn(read_stream(
            Arc::downgrade(&self.inner),
            handle.clone(),
            slot.generation,
        ));
        slot.task = Some(task.abort_handle());
        Ok(())
    }

    /// Reads what the stream's pipe holds, ends its last line and stops its reader.
    fn close_reader(&self, handle: &StreamHandle) {
        let mut slot = handle.lock();
        if let Some(fd) = slot.fd.take() {
            self.inner.drain(&handle.info, &fd);
            self.inner.send(Job::EndOfRun {
                stream: handle.info.clone(),
            });
        }
        slot.generation += 1;
        if let Some(task) = slot.task.take() {
            task.abort();
        }
    }
}

impl Inner {
    fn sender(&self) -> Option<Sender<Job>> {
        lock(&self.jobs).clone()
    }

    fn send(&self, job: Job) {
        if let Some(tx) = lock(&self.jobs).as_ref() {
            let _ = tx.send(job);
        }
    }

    fn send_data(
        &self,
        info: &Arc<StreamInfo>,
        bytes: Vec<u8>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        info.counters.read(bytes.len());
        self.send(Job::Data {
            stream: info.clone(),
            at: SystemTime::now(),
            bytes,
            permit,
        });
    }

    /// Reads and queues what `file` holds now, without waiting (and past the queue's
    /// bound: at most [`DRAIN_LIMIT`] bytes). The caller holds the stream's lock.
    fn drain(&self, info: &Arc<StreamInfo>, pipe: &Receiver) {
        let mut taken = 0;
        while taken < DRAIN_LIMIT {
            match read_chunk(|buf| fifo::read_now(pipe, buf)) {
                Ok(Some(bytes)) => {
                    taken += bytes.len();
                    let permit = self
                        .budget
                        .clone()
                        .try_acquire_many_owned(bytes.len() as u32)
                        .ok();
                    self.send_data(info, bytes, permit);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return,
            }
        }
    }

    fn manager_line(&self, line: &[u8]) {
        if self.closed.load(Ordering::Relaxed) || !self.wants_manager_lines.load(Ordering::Relaxed)
        {
            return;
        }
        let line = crate::format::strip_ansi(line);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = &line[..line.len().min(writer::MAX_LINE)];
        match self
            .budget
            .clone()
            .try_acquire_many_owned(line.len().max(1) as u32)
        {
            Ok(permit) => self.send(Job::Manager {
                at: SystemTime::now(),
                line: line.to_vec(),
                permit: Some(permit),
            }),
            Err(_) => self.manager.dropped(line.len() as u64, 1),
        }
    }
}

fn wants_manager_lines(settings: &Settings) -> bool {
    settings
        .targets
        .iter()
        .any(|t| matches!(t.kind, TargetKind::File(_)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One read through the shared buffer: `Some(bytes)`, or `None` at end-of-file (no
/// writer left).
fn read_chunk(read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<Option<Vec<u8>>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        match read(&mut scratch[..])? {
            0 => Ok(None),
            n => Ok(Some(scratch[..n].to_vec())),
        }
    })
}

/// Whether `pipe` is the pipe now at `path` (one deleted and made again is not).
fn same_file(pipe: &Receiver, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fifo::identity(pipe), std::fs::metadata(path)) {
        (Some(a), Ok(b)) => a == (b.dev(), b.ino()),
        _ => false,
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// What one wake-up of a reader found.
enum Step {
    /// Go on reading.
    Again,
    /// End-of-file met several times in a row with nothing read: pause before going on.
    Pause,
    /// This reader is no longer wanted.
    End,
}

/// Reads one stream's pipe for as long as the collector wants it: wakes when the pipe
/// is readable, waits for room in the queue, reads at most 64 KiB and queues it. At
/// end-of-file (every writer gone: the run and all its descendants ended) the unfinished
/// last line is ended and a new read end is opened *before* the old one is closed, so
/// the pipe never lacks a reader and nothing written by the next run is lost.
async fn read_stream(inner: Weak<Inner>, handle: Arc<StreamHandle>, generation: u64) {
    let mut empty_ends = 0u32;
    loop {
        let fd = {
            let slot = handle.lock();
            match &slot.fd {
                Some(fd) if slot.generation == generation => fd.clone(),
                _ => return,
            }
        };
        let Ok(ready) = fd.ready(tokio::io::Interest::READABLE).await else {
            return;
        };
        // Once the runtime has seen the pipe's writers all gone, it reports the pipe
        // readable for good; when a new run's writer arrived before that was read, reads
        // find no data and no end. Such a reader is replaced by a fresh one (opened
        // before the old one closes, so the pipe never lacks a reader).
        let stale = ready.is_read_closed();
        let Some(budget) = inner.upgrade().map(|i| {
            i.wakeups.fetch_add(1, Ordering::Relaxed);
            i.budget.clone()
        }) else {
            return;
        };
        let Ok(mut permit) = budget.acquire_many_owned(READ_CHUNK as u32).await else {
            return;
        };
        let step = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let mut slot = handle.lock();
            if slot.generation != generation
                || !slot.fd.as_ref().is_some_and(|f| Arc::ptr_eq(f, &fd))
            {
                return;
            }
            match read_chunk(|buf| fd.try_read(buf)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && stale => {
                    match fifo::open_reader(&handle.fifo) {
                        Ok(fresh) => slot.fd = Some(Arc::new(fresh)),
                        Err(e) => {
                            tracing::warn!(id = %handle.info.id, "cannot open {} again: {e}; capture resumes with the next run", handle.fifo.display());
                            slot.fd = None;
                            slot.task = None;
                        }
                    }
                    Step::Again
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Again,
                Ok(Some(bytes)) => {
                    empty_ends = 0;
                    let held = permit.split(bytes.len());
                    inner.send_data(&handle.info, bytes, held);
                    Step::Again
                }
                Ok(None) => {
                    inner.send(Job::EndOfRun {
                        stream: handle.info.clone(),
                    });
                    match fifo::open_reader(&handle.fifo) {
                        Ok(fresh) => {
                            slot.fd = Some(Arc::new(fresh));
                            empty_ends += 1;
                            if empty_ends > 3 {
                                Step::Pause
                            } else {
                                Step::Again
                            }
                        }
                        Err(e) => {
                            tracing::warn!(id = %handle.info.id, "cannot open {} again: {e}; capture resumes with the next run", handle.fifo.display());
                            slot.fd = None;
                            slot.task = None;
                            Step::End
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Again,
                Err(e) => {
                    tracing::warn!(id = %handle.info.id, "cannot read {}: {e}; capture resumes with the next run", handle.fifo.display());
                    inner.send(Job::EndOfRun {
                        stream: handle.info.clone(),
                    });
                    slot.fd = None;
                    slot.task = None;
                    Step::End
                }
            }
        };
        drop(fd);
        match step {
            Step::Again => {}
            Step::Pause => {
                empty_ends = 0;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Step::End => return,
        }
    }
}
