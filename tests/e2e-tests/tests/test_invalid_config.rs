//! An invalid config: `validate` reports every problem (not just the first) as
//! `FILE:LINE:COL: dotted.path: message` and exits 2; running with it starts nothing and
//! exits 2.

use e2e_tests::*;
use std::time::Duration;

/// Four problems in two processes; the second process is valid apart from a misspelt key
/// and must not be started either.
const INVALID: &str = r#"process_manager:
  port: 0
  force_shutdown_timeout: 20s
managed_processes:
  - id: "bad id!"
    type: standard_managed
    management:
      control:
        executable: {testexe}
        arguments: ["--run-duration", "0"]
        graceful_timeout: soon
        restart_policy: sometimes
  - id: ok
    type: standard_managed
    management:
      control:
        executable: {testexe}
        arguments: ["--run-duration", "0"]
        restrat: {retry_delay: 1s}
"#;

/// (line, what identifies the problem in the path or message, extra word the message
/// must contain).
const EXPECTED: [(u32, &str, &str); 4] = [
    (5, "id", ""),
    (11, "graceful_timeout", ""),
    (12, "restart_policy", ""),
    // "Unknown keys are an error (with a 'did you mean' hint where one is close)."
    (19, "restrat", "restart"),
];

const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// Checks that `stderr` reports each of [`EXPECTED`] on a well-formed problem line.
fn assert_all_problems_reported(stderr: &str, what: &str) {
    let problems: Vec<Problem> = stderr.lines().filter_map(parse_problem).collect();
    for (line, key, hint) in EXPECTED {
        let found = problems.iter().find(|p| {
            p.line == line
                && p.column > 0
                && p.file.ends_with("config.yaml")
                && p.path.starts_with("managed_processes")
                && (p.path.ends_with(key) || p.message.contains(key))
                && p.message.contains(hint)
        });
        assert!(
            found.is_some(),
            "{what}: no problem reported for `{key}` at line {line} (message mentioning \
             {hint:?}); problem lines parsed: {problems:#?}\nstderr:\n{stderr}"
        );
    }
}

#[test]
fn validate_reports_every_problem() {
    let run = TestRun::new("e2e-test-validate-invalid");
    run.write_config(INVALID);
    let config = run.config_path.display().to_string();
    let out = run_manager_command(&run, &["validate", "--config", &config], RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "validate of an invalid config exits 2, got {}; stderr:\n{stderr}",
        describe_exit(out.status)
    );
    assert_all_problems_reported(&stderr, "validate");
}

#[test]
fn run_with_invalid_config_starts_nothing() {
    let run = TestRun::new("e2e-test-run-invalid");
    let _guard = TagGuard(run.tag_prefix());
    run.write_config(INVALID);
    let config = run.config_path.display().to_string();
    let base = run.base_dir.display().to_string();
    let out = run_manager_command(
        &run,
        &["--config", &config, "--base-dir", &base],
        RUN_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "running with an invalid config exits 2, got {}; stderr:\n{stderr}",
        describe_exit(out.status)
    );
    assert_all_problems_reported(&stderr, "run");
    let started: Vec<Event> = log_parser::read_journal(&run.journal_path())
        .into_iter()
        .filter(|e| e.kind == "state_changed")
        .collect();
    assert!(
        started.is_empty(),
        "nothing may start with an invalid config:\n{}",
        log_parser::format_events(&started)
    );
    let tagged = tagged_processes(&run.tag_prefix());
    assert!(tagged.is_empty(), "processes were started: {tagged:?}");
    let pid_files: Vec<_> = std::fs::read_dir(run.base_dir.join("pids"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        pid_files.is_empty(),
        "PID files were written: {pid_files:?}"
    );
}

#[test]
fn validate_reports_a_yaml_syntax_error() {
    let run = TestRun::new("e2e-test-validate-syntax");
    run.write_config("managed_processes:\n  - id: svc\n    type: [standard_managed\n");
    let config = run.config_path.display().to_string();
    let out = run_manager_command(&run, &["validate", "--config", &config], RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    // A syntax error has no dotted path to name, so only `FILE:LINE:COL: ` is required.
    let located = |l: &str| -> Option<u32> {
        let rest = &l[l.find("config.yaml:")? + "config.yaml:".len()..];
        let (line, rest) = rest.split_once(':')?;
        let (col, rest) = rest.split_once(':')?;
        col.parse::<u32>().ok()?;
        rest.starts_with(' ').then_some(())?;
        line.parse().ok()
    };
    assert!(
        stderr.lines().filter_map(located).any(|line| line >= 3),
        "a syntax error is reported as FILE:LINE:COL: ... at or after line 3:\n{stderr}"
    );
}

#[test]
fn validate_accepts_a_valid_config() {
    let run = TestRun::new("e2e-test-validate-valid");
    run.write_config(&single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 2s\nrestart_policy: on_failure\n\
         restart: {retry_delay: 200ms, backoff_rate: 2.0, max_delay: 5s, reset_after: 30s, \
         max_retries: 3, window: 60s, cooldown: 3s}",
    ));
    let config = run.config_path.display().to_string();
    let out = run_manager_command(&run, &["validate", "--config", &config], RUN_TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a valid config validates; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_refuses_an_endless_config_at_once() {
    let run = TestRun::new("e2e-test-validate-dev-zero");
    let started = std::time::Instant::now();
    let out = run_manager_command(&run, &["validate", "--config", "/dev/zero"], RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "validate of /dev/zero exits 2, got {}; stderr:\n{stderr}",
        describe_exit(out.status)
    );
    assert!(
        stderr.contains("/dev/zero:1:1: ") && stderr.contains("larger than 4 MiB"),
        "the refusal names the file and the limit:\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once, not after reading without end ({:?})",
        started.elapsed()
    );
}

#[test]
fn validate_reports_a_nul_byte_in_an_argument() {
    let run = TestRun::new("e2e-test-validate-nul");
    run.write_config(&single_process_config(
        "svc",
        &["--run-duration", "0"],
        r#"environment: {A: "x\0y"}"#,
    ));
    let config = run.config_path.display().to_string();
    let out = run_manager_command(&run, &["validate", "--config", &config], RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let problems: Vec<Problem> = stderr.lines().filter_map(parse_problem).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.path.ends_with("control.environment.A") && p.message.contains("NUL")),
        "the NUL byte is reported at its path: {problems:#?}\nstderr:\n{stderr}"
    );
}
