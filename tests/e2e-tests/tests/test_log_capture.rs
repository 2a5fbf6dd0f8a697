//! A process's stdout and stderr land, separately and without loss, in
//! `logs/<id>.stdout.log` and `logs/<id>.stderr.log` under the base directory.

use e2e_tests::*;
use std::time::Duration;

/// The numbers `n` of the lines in `text` that read exactly `<prefix> n` (an optional
/// log timestamp prefix before it is accepted), in order.
fn numbered_lines(text: &str, prefix: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            let at = l.find(prefix)?;
            l[at + prefix.len()..].trim().parse().ok()
        })
        .collect()
}

#[test]
fn stdout_and_stderr_are_captured() {
    let config = single_process_config(
        "talker",
        &["--run-duration", "0", "--print-every", "20"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let mut pm = ProcessManager::start("e2e-test-log-capture", &config);
    let stdout_log = pm.run().output_log("talker", "stdout");
    let stderr_log = pm.run().output_log("talker", "stderr");
    wait_for("20 lines in both captured streams", SHORT, || {
        let out = std::fs::read_to_string(&stdout_log).unwrap_or_default();
        let err = std::fs::read_to_string(&stderr_log).unwrap_or_default();
        numbered_lines(&out, "stdout line ").len() >= 20
            && numbered_lines(&err, "stderr line ").len() >= 20
    });
    pm.shutdown_cleanly(Duration::from_secs(20));

    let out = std::fs::read_to_string(&stdout_log).unwrap();
    let err = std::fs::read_to_string(&stderr_log).unwrap();
    let out_numbers = numbered_lines(&out, "stdout line ");
    let err_numbers = numbered_lines(&err, "stderr line ");
    // Nothing lost, nothing duplicated, nothing reordered: 1, 2, 3, ... in each stream.
    let expected: Vec<u64> = (1..=out_numbers.len() as u64).collect();
    assert_eq!(out_numbers, expected, "stdout.log:\n{out}");
    let expected: Vec<u64> = (1..=err_numbers.len() as u64).collect();
    assert_eq!(err_numbers, expected, "stderr.log:\n{err}");
    // Streams are kept apart.
    assert!(!out.contains("stderr line"), "stderr in stdout.log:\n{out}");
    assert!(!err.contains("stdout line"), "stdout in stderr.log:\n{err}");
    // testexe's own diagnostics go to stderr.
    assert!(err.contains("testexe: started pid="), "stderr.log:\n{err}");
}
