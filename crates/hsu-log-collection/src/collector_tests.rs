//! The collector end to end inside one process: real pipes, a real writer thread, real
//! files.

use crate::*;
use hsu_common::{EventKind, EventSink};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Events(Mutex<Vec<(Option<String>, EventKind)>>);

impl EventSink for Events {
    fn emit(&self, id: Option<&str>, kind: EventKind) {
        self.0.lock().unwrap().push((id.map(str::to_owned), kind));
    }
}

impl Events {
    fn failures(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, k)| matches!(k, EventKind::LogWriteFailed { .. }))
            .count()
    }
}

fn plain() -> Settings {
    Settings {
        timestamps: false,
        ..Settings::default()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    events: Arc<Events>,
    collector: LogCollector,
}

impl Fixture {
    fn new(settings: Settings) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(Events::default());
        let collector = LogCollector::new(
            dir.path().join("logs"),
            dir.path().join("fifos"),
            settings,
            events.clone(),
        );
        Fixture {
            dir,
            events,
            collector,
        }
    }

    fn log(&self, id: &str, stream: Stream) -> std::path::PathBuf {
        self.collector.files().path(id, stream)
    }
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Polls `cond` every 10 ms for up to 10 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_and_the_unfinished_last_line_reach_the_file() {
    let f = Fixture::new(plain());
    let mut child = f.collector.attach("p", Stream::Stdout).unwrap();
    child.write_all(b"one\ntwo\nunfinished").unwrap();
    let path = f.log("p", Stream::Stdout);
    until("two lines", || read(&path) == "one\ntwo\n").await;
    // The run ends (its last holder of the pipe is gone): the last line is ended.
    drop(child);
    until("the last line", || read(&path) == "one\ntwo\nunfinished\n").await;
    // The pipe is read again for the next run.
    let mut next = f.collector.attach("p", Stream::Stdout).unwrap();
    next.write_all(b"three\n").unwrap();
    until("the next run", || {
        read(&path).ends_with("unfinished\nthree\n")
    })
    .await;
    let s = f.collector.stats("p", Stream::Stdout).unwrap();
    assert_eq!(s.lines_written, 4);
    assert_eq!(s.bytes_read, 24);
    f.collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_never_continues_the_last_runs_line() {
    let f = Fixture::new(plain());
    let mut old = f.collector.attach("p", Stream::Stderr).unwrap();
    old.write_all(b"old without newline").unwrap();
    // Something of the old run still holds the pipe (no end-of-file) when the next run
    // is attached: what it wrote is read and ended first.
    let mut new = f.collector.attach("p", Stream::Stderr).unwrap();
    new.write_all(b"new\n").unwrap();
    let path = f.log("p", Stream::Stderr);
    until("both runs", || read(&path) == "old without newline\nnew\n").await;
    drop((old, new));
    f.collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_prefix_stored_lines() {
    let f = Fixture::new(Settings::default());
    let mut child = f.collector.attach("p", Stream::Stdout).unwrap();
    child.write_all(b"hello\n").unwrap();
    let path = f.log("p", Stream::Stdout);
    until("a line", || read(&path).ends_with(" hello\n")).await;
    let text = read(&path);
    let (ts, rest) = text.split_once(' ').unwrap();
    assert_eq!(rest, "hello\n");
    assert!(humantime::parse_rfc3339(ts).is_ok(), "{text:?}");
    f.collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_size_and_count_and_loses_no_line() {
    let rotation = Rotation {
        max_size: 4096,
        max_files: 50,
    };
    let f = Fixture::new(Settings {
        rotation,
        ..plain()
    });
    let mut child = f.collector.attach("p", Stream::Stdout).unwrap();
    let text: String = (1..=5000).map(|i| format!("line {i}\n")).collect();
    child.write_all(text.as_bytes()).unwrap();
    drop(child);
    let path = f.log("p", Stream::Stdout);
    until("the last line", || read(&path).ends_with("line 5000\n")).await;
    let mut all = String::new();
    for n in (1..=50).rev() {
        let rotated = rotated_path(&path, n);
        if rotated.exists() {
            assert!(std::fs::metadata(&rotated).unwrap().len() <= 4096);
            all.push_str(&read(&rotated));
        }
    }
    assert!(!rotated_path(&path, 51).exists());
    assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
    all.push_str(&read(&path));
    assert_eq!(all, text);
    assert!(f.collector.stats("p", Stream::Stdout).unwrap().rotations >= 10);

    // Fewer files kept: the oldest go.
    f.collector.update(Settings {
        rotation: Rotation {
            max_size: 4096,
            max_files: 2,
        },
        ..plain()
    });
    let mut child = f.collector.attach("p", Stream::Stdout).unwrap();
    child.write_all(text.as_bytes()).unwrap();
    drop(child);
    until("rotated down to two files", || {
        !rotated_path(&path, 3).exists() && read(&path).ends_with("line 5000\n")
    })
    .await;
    // The tail reads on into the rotated files.
    let tail = tail(&path, 600).unwrap();
    let got = String::from_utf8(tail.bytes).unwrap();
    let want: String = (4401..=5000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(got, want);
    f.collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_counts_reports_once_and_recovers() {
    let f = Fixture::new(plain());
    let path = f.log("p", Stream::Stdout);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Every write to /dev/full fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let mut child = f.collector.attach("p", Stream::Stdout).unwrap();
    for i in 0..50 {
        child.write_all(format!("lost {i}\n").as_bytes()).unwrap();
    }
    until("all 50 lines dropped", || {
        f.collector
            .stats("p", Stream::Stdout)
            .unwrap()
            .lines_dropped
            == 50
    })
    .await;
    let s = f.collector.stats("p", Stream::Stdout).unwrap();
    assert!(s.failing && s.write_failures == 1, "{s:?}");
    assert_eq!(f.events.failures(), 1);
    // Space again: writing resumes by itself.
    std::fs::remove_file(&path).unwrap();
    child.write_all(b"kept\n").unwrap();
    until("writing again", || read(&path) == "kept\n").await;
    let s = f.collector.stats("p", Stream::Stdout).unwrap();
    assert!(!s.failing && s.lines_written == 1, "{s:?}");
    assert_eq!(f.events.failures(), 1);
    drop(child);
    f.collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_log_directory_is_made_again() {
    let f = Fixture::new(plain());
    let path = f.log("p", Stream::Stdout);
    let mut child = f.collector.attach("p", Stream::Stdout).unwrap();
    child.write_all(b"first\n").unwrap();
    until("the first line", || read(&path) == "first\n").await;
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    child.write_all(b"second\n").unwrap();
    until("the directory back", || read(&path) == "second\n").await;
    assert_eq!(
        f.collector
            .stats("p", Stream::Stdout)
            .unwrap()
            .lines_dropped,
        0
    );
    drop(child);
    f.collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_targets_get_every_line_in_their_format() {
    let f = Fixture::new(Settings {
        targets: vec![
            Target {
                kind: TargetKind::File("aggregated.log".into()),
                format: Format::Json,
                prefix: None,
            },
            Target {
                kind: TargetKind::File("enhanced.log".into()),
                format: Format::EnhancedPlain,
                prefix: Some("[HSU]".into()),
            },
        ],
        ..plain()
    });
    let mut out = f.collector.attach("web", Stream::Stdout).unwrap();
    let mut err = f.collector.attach("web", Stream::Stderr).unwrap();
    let long = vec![b'x'; MAX_LINE * 3 + 10];
    out.write_all(b"plain \x01 text\n\xff\xfe not utf-8\n")
        .unwrap();
    out.write_all(&long).unwrap();
    out.write_all(b"\n").unwrap();
    err.write_all(b"oops\n").unwrap();
    f.collector
        .manager_line(b"\x1b[32m INFO\x1b[0m manager says hi\n");
    drop((out, err));
    let logs = f.dir.path().join("logs");
    let agg = logs.join("aggregated.log");
    until("eight JSON lines", || read(&agg).lines().count() == 8).await;
    let lines: Vec<serde_json::Value> = read(&agg)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |stream: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|v| v["stream"] == stream).collect()
    };
    let out_lines = of("stdout");
    assert_eq!(out_lines[0]["line"], "plain \u{1} text");
    assert_eq!(out_lines[1]["invalid_utf8"], true);
    let pieces: String = out_lines[2..]
        .iter()
        .map(|v| v["line"].as_str().unwrap())
        .collect();
    assert_eq!(pieces.len(), long.len());
    assert_eq!(out_lines.len(), 6);
    assert!(out_lines[2..5].iter().all(|v| v["continued"] == true));
    assert!(out_lines[5].get("continued").is_none());
    assert_eq!(of("stderr")[0]["line"], "oops");
    assert_eq!(of("manager")[0]["line"], " INFO manager says hi");
    // The per-process file keeps the raw bytes; a long line as pieces.
    let stored = std::fs::read(f.log("web", Stream::Stdout)).unwrap();
    assert!(stored.starts_with(b"plain \x01 text\n\xff\xfe not utf-8\n"));
    assert_eq!(stored.len(), 13 + 13 + long.len() + 4);
    let enhanced = read(&logs.join("enhanced.log"));
    assert!(enhanced.contains(" web[stderr] oops\n"), "{enhanced}");
    assert!(
        enhanced.lines().all(|l| l.starts_with("[HSU] ")),
        "{enhanced}"
    );
    f.collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_manager_reconnects_to_what_was_written_meanwhile() {
    let f = Fixture::new(plain());
    let mut child = f.collector.attach("p", Stream::Stdout).unwrap();
    child.write_all(b"before\n").unwrap();
    let path = f.log("p", Stream::Stdout);
    until("the first line", || read(&path) == "before\n").await;
    f.collector.shutdown().await;
    // No manager reads: the child goes on writing, neither failing nor blocking.
    let text: String = (0..1000).map(|i| format!("meanwhile {i}\n")).collect();
    child.write_all(text.as_bytes()).unwrap();
    let again = LogCollector::new(
        f.dir.path().join("logs"),
        f.dir.path().join("fifos"),
        plain(),
        f.events.clone(),
    );
    assert!(!again.reconnect("other", Stream::Stdout).unwrap());
    assert!(again.reconnect("p", Stream::Stdout).unwrap());
    child.write_all(b"after\n").unwrap();
    let want = format!("before\n{text}after\n");
    until("everything", || read(&path) == want).await;
    drop(child);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pipe_after_its_run_wakes_no_reader() {
    let f = Fixture::new(plain());
    for id in ["a", "b", "c"] {
        let mut child = f.collector.attach(id, Stream::Stdout).unwrap();
        child.write_all(b"bye\n").unwrap();
    }
    // A second run of "c" arrives at once, as a restart does, and stays (quiet).
    let mut again = f.collector.attach("c", Stream::Stdout).unwrap();
    again.write_all(b"again\n").unwrap();
    until("all files", || {
        read(&f.log("c", Stream::Stdout)) == "bye\nagain\n"
            && read(&f.log("a", Stream::Stdout)) == "bye\n"
    })
    .await;
    until("nothing queued", || f.collector.queued_bytes() == 0).await;
    // The readers' own count of wake-ups, not the CPU of this test process (other tests
    // run in it): each end of a run costs a few; a reader spinning at end-of-file makes
    // thousands in the window. It fails as soon as the bound is crossed.
    let before = f.collector.reader_wakeups();
    let window = Instant::now() + Duration::from_millis(600);
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    while Instant::now() < window {
        interval.tick().await;
        let woke = f.collector.reader_wakeups() - before;
        assert!(
            woke <= 24,
            "{woke} reader wake-ups while every pipe is quiet"
        );
    }
    drop(again);
    f.collector.shutdown().await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_files_of_quiet_streams_are_closed() {
    fn open_under(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
            .count()
    }
    let f = Fixture::new(plain());
    let logs = f.dir.path().join("logs");
    let mut children = Vec::new();
    for i in 0..100 {
        let mut child = f
            .collector
            .attach(&format!("p{i}"), Stream::Stdout)
            .unwrap();
        child.write_all(b"hello\n").unwrap();
        children.push(child);
    }
    until("a hundred files written", || {
        (0..100).all(|i| read(&f.log(&format!("p{i}"), Stream::Stdout)) == "hello\n")
    })
    .await;
    // Quiet files are closed when the writer next counts them (at most once a second,
    // on a write): keep writing to one stream until it has.
    until("at most 64 capture files open", || {
        children[0].write_all(b"again\n").unwrap();
        open_under(&logs) <= 64
    })
    .await;
    // A closed file is opened again when written.
    children[99].write_all(b"later\n").unwrap();
    let last = f.log("p99", Stream::Stdout);
    until("the file reopened", || read(&last) == "hello\nlater\n").await;
    drop(children);
    f.collector.shutdown().await;
}
