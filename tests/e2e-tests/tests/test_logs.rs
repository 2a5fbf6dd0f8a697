//! Captured output through the log collector: every line of a process flooding both
//! streams arrives once and in order across rotations; rotation keeps its limits; the
//! aggregated JSON parses; bytes that are not UTF-8, control characters, a 1 MiB line and
//! an unfinished last line survive; console targets and the manager's own log; a full
//! disk stops nothing and is reported once; a manager killed with SIGKILL leaves its
//! child running, its output waiting in the pipe; and reading it all back (API tail
//! across rotated files, `logs -f` decoding UTF-8 across chunks).

use e2e_tests::*;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(90);

/// A `managed_processes` entry running `/bin/sh -c <script>` once (never restarted);
/// `management_extra` lines go under `management:` (e.g. its `log_collection`).
fn sh_process(id: &str, script: &str, management_extra: &str) -> String {
    let extra: String = management_extra
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("      {l}\n"))
        .collect();
    format!(
        "  - id: {id}\n    type: standard_managed\n    management:\n      control:\n        \
         executable: /bin/sh\n        arguments: {args}\n        restart_policy: never\n{extra}",
        args = yaml_list(&["-c", script]),
    )
}

/// The numbers after `marker` on each line that has it, in order (a timestamp or any
/// other prefix before the marker is skipped).
fn numbers(text: &str, marker: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            let at = l.find(marker)?;
            l[at + marker.len()..].trim().parse().ok()
        })
        .collect()
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// `<path>.N`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// A capture file and its rotated files, oldest first (`.N` ... `.1`, then the file).
fn with_rotated(path: &Path, max_files: u32) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=max_files)
        .rev()
        .map(|n| rotated(path, n))
        .filter(|p| p.exists())
        .collect();
    files.push(path.to_path_buf());
    files
}

fn assert_gapless(what: &str, got: &[u64], first: u64, last: u64) {
    let want: Vec<u64> = (first..=last).collect();
    if got != want {
        let first_bad = got
            .iter()
            .zip(&want)
            .position(|(g, w)| g != w)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} numbers, expected {first}..={last} ({} numbers); first difference at \
             index {first_bad}: got {:?}, expected {:?}",
            got.len(),
            want.len(),
            got.get(first_bad),
            want.get(first_bad)
        );
    }
}

#[test]
fn a_hundred_thousand_lines_per_stream_arrive_once_in_order_across_rotations() {
    const N: u64 = 100_000;
    const MAX_SIZE: u64 = 256 * 1024;
    // Room for all of it, aggregated too (200,000 JSON lines of ~90 bytes).
    const MAX_FILES: u32 = 80;
    let script = format!("seq -f 'out %g' {N} & seq -f 'err %g' {N} >&2; wait");
    let config = format!(
        "{CONFIG_HEADER}{}log_collection:\n  rotation: {{max_size: 256KiB, max_files: {MAX_FILES}}}\n  \
         global_aggregation:\n    targets:\n      - {{type: file, path: aggregated.log, format: json}}\n",
        sh_process("flood", &script, "")
    );
    let mut pm = ProcessManager::start("e2e-test-logs-flood", &config);
    let out = pm.run().output_log("flood", "stdout");
    let err = pm.run().output_log("flood", "stderr");
    wait_for("the last line of both streams", LONG, || {
        read_lossy(&out).ends_with(&format!(" out {N}\n"))
            && read_lossy(&err).ends_with(&format!(" err {N}\n"))
    });

    for (path, marker) in [(&out, "out "), (&err, "err ")] {
        let files = with_rotated(path, MAX_FILES);
        assert!(
            files.len() > 5,
            "expected several rotations of {}",
            path.display()
        );
        assert!(!rotated(path, MAX_FILES + 1).exists());
        let mut all = String::new();
        for f in &files {
            let size = std::fs::metadata(f).unwrap().len();
            assert!(size <= MAX_SIZE, "{} is {size} bytes", f.display());
            let text = read_lossy(f);
            // Every stored line is `<RFC 3339 arrival time> <line>`.
            let first = text.lines().next().unwrap_or_default();
            let ts = first.split(' ').next().unwrap_or_default();
            assert!(
                ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                "{}: {first:?}",
                f.display()
            );
            all.push_str(&text);
        }
        assert_gapless(&path.display().to_string(), &numbers(&all, marker), 1, N);
    }

    // The API's tail reads on into the rotated files.
    let api = pm.api();
    let resp = api.get("/api/v1/processes/flood/logs?stream=stdout&tail=50000");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_gapless("tail=50000", &numbers(&resp.text(), "out "), N - 49_999, N);

    // The aggregated JSON: every line parses; each stream is all there, in order.
    let agg = pm.run().base_dir.join("logs/aggregated.log");
    wait_for("both last lines aggregated", SHORT, || {
        let text: String = with_rotated(&agg, MAX_FILES)
            .iter()
            .map(|f| read_lossy(f))
            .collect();
        text.contains(&format!("\"line\":\"out {N}\""))
            && text.contains(&format!("\"line\":\"err {N}\""))
    });
    let mut per_stream: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for f in with_rotated(&agg, MAX_FILES) {
        assert!(std::fs::metadata(&f).unwrap().len() <= MAX_SIZE);
        for line in read_lossy(&f).lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", f.display()));
            let text = v["line"].as_str().unwrap_or_default();
            match v["stream"].as_str() {
                Some("stdout") => per_stream[0].extend(numbers(text, "out ")),
                Some("stderr") => per_stream[1].extend(numbers(text, "err ")),
                _ => {}
            }
        }
    }
    for kept in &per_stream {
        assert_gapless("aggregated", kept, 1, N);
    }
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn odd_bytes_a_one_mebibyte_line_and_an_unfinished_last_line_survive() {
    let script = "printf 'bad \\377\\376 end\\n'; printf 'ctl \\001\\033[31m x\\n'; \
                  head -c 1048576 /dev/zero | tr '\\0' y; echo; printf 'no newline at the end'";
    let config = format!(
        "{CONFIG_HEADER}{}log_collection:\n  timestamps: false\n  global_aggregation:\n    \
         targets:\n      - {{type: file, path: aggregated.log, format: json}}\n",
        sh_process("odd", script, "")
    );
    let mut pm = ProcessManager::start("e2e-test-logs-odd-bytes", &config);
    let out = pm.run().output_log("odd", "stdout");
    wait_for("the unfinished last line", LONG, || {
        std::fs::read(&out).is_ok_and(|b| b.ends_with(b"no newline at the end\n"))
    });
    let stored = std::fs::read(&out).unwrap();
    let head = b"bad \xff\xfe end\nctl \x01\x1b[31m x\n";
    assert!(
        stored.starts_with(head),
        "{:?}",
        String::from_utf8_lossy(&stored[..80.min(stored.len())])
    );
    // The 1 MiB line is stored as 16 lines of 64 KiB: all of it, in order.
    let body = &stored[head.len()..stored.len() - "no newline at the end\n".len()];
    let pieces: Vec<&[u8]> = body
        .strip_suffix(b"\n")
        .unwrap()
        .split(|&b| b == b'\n')
        .collect();
    assert_eq!(pieces.len(), 16);
    assert!(pieces
        .iter()
        .all(|p| p.len() == 65536 && p.iter().all(|&b| b == b'y')));

    let agg = pm.run().base_dir.join("logs/aggregated.log");
    wait_for("the last line aggregated", SHORT, || {
        read_lossy(&agg).contains("no newline at the end")
    });
    let lines: Vec<Value> = read_lossy(&agg)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v: &Value| v["id"] == "odd")
        .collect();
    assert_eq!(lines.len(), 2 + 16 + 1, "{lines:?}");
    assert_eq!(lines[0]["line"], "bad \u{fffd}\u{fffd} end");
    assert_eq!(lines[0]["invalid_utf8"], true);
    assert_eq!(lines[1]["line"], "ctl \u{1}\u{1b}[31m x");
    let continued = lines[2..18]
        .iter()
        .filter(|v| v["continued"] == true)
        .count();
    assert_eq!(continued, 15, "every piece but the last is marked");
    let joined: usize = lines[2..18]
        .iter()
        .map(|v| v["line"].as_str().unwrap().len())
        .sum();
    assert_eq!(joined, 1 << 20);
    assert_eq!(lines[18]["line"], "no newline at the end");
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn console_targets_and_the_managers_own_log() {
    let config = format!(
        "{}log_collection:\n  global_aggregation:\n    targets:\n      \
         - {{type: process_manager_stdout, format: enhanced_plain, prefix: \"[HSU]\"}}\n      \
         - {{type: process_manager_stderr, prefix: \"[ERR]\"}}\n      \
         - {{type: file, path: aggregated.log, format: json}}\n",
        single_process_config(
            "svc",
            &["--run-duration", "0", "--print-every", "50"],
            "graceful_timeout: 5s",
        )
    );
    let mut pm = ProcessManager::start("e2e-test-logs-console", &config);
    wait_for(
        "process lines on the manager's stdout and stderr",
        SHORT,
        || {
            let log = pm.run().procman_log();
            log.lines()
                .any(|l| l.starts_with("[HSU] ") && l.contains(" svc[stdout] stdout line "))
                && log
                    .lines()
                    .any(|l| l.starts_with("[ERR] ") && l.contains("stderr line "))
        },
    );
    // The manager's own log: human lines on stderr, and into the file target as JSON.
    let agg = pm.run().base_dir.join("logs/aggregated.log");
    wait_for("the manager's own lines in aggregated.log", SHORT, || {
        read_lossy(&agg).lines().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["stream"] == "manager"
                    && v["line"]
                        .as_str()
                        .is_some_and(|t| t.contains("manager starting"))
            })
        })
    });
    assert!(pm.run().procman_log().contains("manager starting"));
    pm.shutdown_cleanly(Duration::from_secs(20));
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `Err` with the reason when this machine does
    /// not allow it (not root, no mount namespace rights).
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_nothing_is_reported_once_and_writing_resumes() {
    let run = TestRun::new("e2e-test-logs-full-disk");
    let disk = run.path("small-disk");
    let _tmpfs = match Tmpfs::mount(&disk, "1m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!(
                "SKIPPED a_full_disk_stops_nothing_is_reported_once_and_writing_resumes: \
                 cannot mount a tmpfs ({why}); run the suite as root to include it"
            );
            return;
        }
    };
    let logs = disk.join("logs");
    let entry = testexe_process(
        "svc",
        &["--run-duration", "0", "--print-every", "10"],
        "graceful_timeout: 5s",
    ) + "      log_collection: {capture_stderr: false}\n";
    let config = format!(
        "{CONFIG_HEADER}{entry}log_collection:\n  directory: {}\n",
        yaml_str(logs.display().to_string())
    );
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let api = pm.api();
    let pid = api.wait_running("svc", SHORT);
    let out = logs.join("svc.stdout.log");
    wait_for("captured lines", SHORT, || {
        numbers(&read_lossy(&out), "stdout line ").len() >= 10
    });

    // Fill the disk.
    let filler = disk.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![b'x'; 64 * 1024];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
    }
    let failed = pm.wait_for_event("log_write_failed", SHORT, |e| {
        e.is_kind("svc", "log_write_failed")
    });
    assert_eq!(failed.str("stream"), Some("stdout"), "{failed}");
    // The process goes on (same pid), so does the manager; output is dropped and counted.
    let dropped = || -> f64 {
        let text = api.get("/metrics").text();
        text.lines()
            .find(|l| {
                l.starts_with("hsu_log_bytes_dropped_total{")
                    && l.contains("id=\"svc\"")
                    && l.contains("stream=\"stdout\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    wait_for("dropped bytes counted", SHORT, || dropped() > 500.0);
    assert!(pm.is_running(), "the manager died on a full disk");
    assert!(pid_alive(pid), "the process died on a full disk");
    assert_eq!(api.process("svc")["pid"], pid);
    let failures = |pm: &ProcessManager| {
        pm.events_for("svc")
            .iter()
            .filter(|e| e.kind == "log_write_failed")
            .count()
    };
    assert_eq!(
        failures(&pm),
        1,
        "one event per failure episode, not per line"
    );

    // Space again: writing resumes by itself.
    let last_before = *numbers(&read_lossy(&out), "stdout line ").last().unwrap();
    std::fs::remove_file(&filler).unwrap();
    let since = |text: &str| -> Vec<u64> {
        numbers(text, "stdout line ")
            .into_iter()
            .filter(|&n| n > last_before)
            .collect()
    };
    wait_for("writing resumed", SHORT, || {
        since(&read_lossy(&out)).len() >= 20
    });
    // In order; since the disk has room again, without a gap.
    let after = numbers(&read_lossy(&out), "stdout line ");
    assert!(after.windows(2).all(|w| w[1] > w[0]), "{after:?}");
    let resumed = since(&read_lossy(&out));
    assert!(
        resumed.windows(2).all(|w| w[1] == w[0] + 1),
        "lines since the disk has room again are consecutive: {resumed:?}"
    );
    assert_eq!(failures(&pm), 1);
    assert_eq!(api.process("svc")["pid"], pid);
    pm.shutdown_cleanly(Duration::from_secs(20));
}

#[test]
fn a_manager_killed_with_sigkill_leaves_the_child_running_and_its_output_in_the_pipe() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0", "--print-every", "10"],
        "graceful_timeout: 5s",
    );
    let mut pm = ProcessManager::start("e2e-test-logs-manager-killed", &config);
    let pid = pm.api().wait_running("svc", SHORT);
    let out = pm.run().output_log("svc", "stdout");
    wait_for("captured lines", SHORT, || {
        numbers(&read_lossy(&out), "stdout line ").len() >= 20
    });
    pm.signal(libc::SIGKILL);
    pm.wait_exit(SHORT);
    let at_kill = read_lossy(&out);
    let last_stored = *numbers(&at_kill, "stdout line ").last().unwrap();

    // The child goes on printing with no manager reading: wait until it has written
    // another ~400 lines on each stream (about 4 s), alive all along.
    let written = || {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        io.lines()
            .find_map(|l| l.strip_prefix("wchar: "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = written();
    wait_for("the child to write on without its manager", LONG, || {
        assert!(pid_alive(pid), "the child died without its manager");
        written() >= before + 2 * 400 * 14
    });
    assert!(pid_alive(pid));
    assert_eq!(
        read_lossy(&out),
        at_kill,
        "nothing writes the capture file without a manager"
    );

    // Everything it wrote meanwhile waits in the pipe.
    let fifo = pm.run().base_dir.join("fifos/svc.stdout");
    let mut pipe = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap_or_else(|e| panic!("{}: {e}", fifo.display()))
    };
    let mut held = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => held.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading the pipe: {e}"),
        }
    }
    let held = String::from_utf8_lossy(&held);
    let waiting = numbers(&held, "stdout line ");
    assert!(
        waiting.len() >= 250,
        "only {} lines waited in the pipe over 5 s",
        waiting.len()
    );
    let first = waiting[0];
    // What the killed manager had read but not yet written is the only loss: here at most
    // the one line in flight at the moment of the kill.
    assert!(
        first == last_stored + 1 || first == last_stored + 2,
        "the pipe starts at line {first}; the file ended at {last_stored}"
    );
    assert_gapless("the pipe", &waiting, first, *waiting.last().unwrap());
    assert!(pid_alive(pid), "the child died after its pipe was read");
    // Dropping `pm` kills the child (until re-adoption exists nobody else will).
}

#[test]
fn logs_follow_decodes_characters_split_across_chunks() {
    // 3000 lines of 2-, 3- and 4-byte characters: chunks of the stream end mid-character.
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"é€😀 line $i\"; i=$((i+1)); done; \
                  exec sleep 1000";
    let config = format!(
        "{CONFIG_HEADER}{}log_collection:\n  timestamps: false\n",
        sh_process("utf", script, "")
    );
    let mut pm = ProcessManager::start("e2e-test-logs-cli-follow", &config);
    let out = pm.run().output_log("utf", "stdout");
    wait_for("3000 lines", LONG, || {
        numbers(&read_lossy(&out), " line ").len() == 3000
    });
    let url = pm.api_url();
    let mut cli = Command::new(&binaries().manager)
        .args(["--api", &url, "logs", "utf", "-f", "-n", "5000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the CLI");
    let mut stdout = cli.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.ends_with("line 2999\n".as_bytes()) {
                break;
            }
        }
        got
    });
    let deadline = Instant::now() + LONG;
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = cli.kill();
    let _ = cli.wait();
    let got = String::from_utf8(reader.join().unwrap()).expect("the CLI prints UTF-8");
    assert!(!got.contains('\u{fffd}'), "a character was broken");
    let want: String = (0..3000).map(|i| format!("é€😀 line {i}\n")).collect();
    assert_eq!(got, want);
    pm.shutdown_cleanly(Duration::from_secs(20));
}
