//! The manager's own log: human lines on stderr that can never stop supervision.
//!
//! stderr is often a pipe (`| logger`, `| tee`, a log shipper) whose reader may die or
//! stall. So no task ever writes to it: a log line is handed to one writer thread through
//! a bounded queue, and dropped (and counted) when the queue is full. The thread ignores
//! write errors (EPIPE, ENOSPC) and counts them too; the count is
//! `hsu_manager_log_write_failures_total` in `/metrics`. SIGPIPE stays ignored (Rust's
//! runtime ignores it before `main`; nothing here resets it), so a dead reader is an
//! error value, never a signal.
//!
//! The filter sits behind a reload handle, so a reloaded `log_level` applies live unless
//! `RUST_LOG` or `--debug` chose the level.
//!
//! The same thread also hands each line to the log collector, which copies it to the
//! `file` aggregation targets when the config has any (`log_collection.global_aggregation`);
//! that never blocks either (a full queue drops and counts the line there).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Lines queued for stderr before new ones are dropped.
const QUEUE_LINES: usize = 4096;
/// How long the exit waits for queued lines to reach stderr.
const DRAIN_AT_EXIT: Duration = Duration::from_secs(2);

/// Crates whose debug output is about their own internals, not the manager's work: they
/// stay at `info` under `--debug` (RUST_LOG can still ask for them).
const QUIET_TARGETS: &[&str] = &[
    "process_wrap",
    "hyper",
    "hyper_util",
    "h2",
    "tower",
    "tonic",
    "axum",
    "mio",
    "tokio_util",
    "want",
];

/// The filter directive used when `RUST_LOG` is not set.
pub fn default_directive(debug: bool, config_level: &str) -> String {
    let level = if debug { "debug" } else { config_level };
    let mut directive = level.to_owned();
    for target in QUIET_TARGETS {
        directive.push_str(&format!(",{target}=info"));
    }
    directive
}

/// The installed log: its failure counter, its exit drain and its live level.
pub struct Logging {
    failures: Arc<AtomicU64>,
    sender: Arc<Mutex<Option<SyncSender<Vec<u8>>>>>,
    done: Mutex<Receiver<()>>,
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` or `--debug` chose the level; the config's `log_level` is not applied.
    overridden: bool,
}

impl Logging {
    /// Installs the global subscriber writing to stderr through the writer thread.
    pub fn init(debug: bool, config_level: &str) -> Logging {
        let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
        let overridden = debug || rust_log.is_some();
        let filter = match rust_log {
            Some(v) => EnvFilter::new(v),
            None => EnvFilter::new(default_directive(debug, config_level)),
        };
        let (filter, handle) = reload::Layer::new(filter);
        let failures = Arc::new(AtomicU64::new(0));
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
        let (done_tx, done) = sync_channel::<()>(1);
        let thread_failures = failures.clone();
        let spawned = std::thread::Builder::new()
            .name("hsu-log-writer".into())
            .spawn(move || {
                write_lines(rx, io::stderr(), &thread_failures);
                let _ = done_tx.send(());
            });
        let sender = Arc::new(Mutex::new(spawned.is_ok().then_some(tx)));
        let writer = QueueWriter {
            sender: sender.clone(),
            failures: failures.clone(),
        };
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_target(false)
            // Its fallback is `eprintln!`, which panics when stderr is a dead pipe.
            .log_internal_errors(false);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init();
        Logging {
            failures,
            sender,
            done: Mutex::new(done),
            filter: handle,
            overridden,
        }
    }

    /// Log lines dropped or not written since the start.
    pub fn failures(&self) -> Arc<AtomicU64> {
        self.failures.clone()
    }

    /// Applies a reloaded `log_level`: `Ok(true)` when applied, `Ok(false)` when `RUST_LOG`
    /// or `--debug` keep the level, `Err` when the filter could not be replaced.
    pub fn set_level(&self, level: &str) -> Result<bool, String> {
        if self.overridden {
            return Ok(false);
        }
        self.filter
            .reload(EnvFilter::new(default_directive(false, level)))
            .map(|()| true)
            .map_err(|e| format!("cannot change the log level: {e}"))
    }

    /// A handle that applies a reloaded `log_level` (for the facade's callback).
    pub fn level_setter(
        self: &Arc<Self>,
    ) -> impl Fn(&str) -> Result<bool, String> + Send + Sync + 'static {
        let this = self.clone();
        move |level: &str| this.set_level(level)
    }

    /// Stops taking lines and waits (a little) until the queued ones reached stderr.
    pub fn drain(&self) {
        let sender = self.sender.lock().map(|mut s| s.take());
        if let Ok(Some(sender)) = sender {
            drop(sender);
            if let Ok(done) = self.done.lock() {
                let _ = done.recv_timeout(DRAIN_AT_EXIT);
            }
        }
    }
}

/// Writes each queued line to `out` (a failed write is counted and the line dropped),
/// and copies it to the aggregation targets.
fn write_lines(lines: Receiver<Vec<u8>>, mut out: impl Write, failures: &AtomicU64) {
    for line in lines {
        if out.write_all(&line).and_then(|()| out.flush()).is_err() {
            failures.fetch_add(1, Ordering::Relaxed);
        }
        hsu_process_management::facade::manager_log_line(&line);
    }
}

/// The subscriber's writer: queues the formatted line, never blocks, never fails.
#[derive(Clone)]
struct QueueWriter {
    sender: Arc<Mutex<Option<SyncSender<Vec<u8>>>>>,
    failures: Arc<AtomicU64>,
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let sent = match self.sender.lock() {
            Ok(sender) => match sender.as_ref() {
                Some(tx) => match tx.try_send(buf.to_vec()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                },
                None => false,
            },
            Err(_) => false,
        };
        if !sent {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader is gone: every write is EPIPE.
    struct DeadPipe;

    impl Write for DeadPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_dead_stderr_is_counted_not_fatal() {
        let (tx, rx) = sync_channel(4);
        let failures = AtomicU64::new(0);
        for _ in 0..3 {
            tx.send(b"line\n".to_vec()).unwrap();
        }
        drop(tx);
        write_lines(rx, DeadPipe, &failures);
        assert_eq!(failures.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (tx, _rx) = sync_channel(1);
        let mut w = QueueWriter {
            sender: Arc::new(Mutex::new(Some(tx))),
            failures: Arc::new(AtomicU64::new(0)),
        };
        for _ in 0..5 {
            assert_eq!(w.write(b"x\n").unwrap(), 2);
        }
        assert_eq!(w.failures.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn debug_keeps_library_internals_quiet() {
        let d = default_directive(true, "info");
        assert!(d.starts_with("debug,"), "{d}");
        assert!(
            d.contains("process_wrap=info") && d.contains("h2=info"),
            "{d}"
        );
        assert!(default_directive(false, "warn").starts_with("warn,"));
        EnvFilter::try_new(d).unwrap();
    }
}
