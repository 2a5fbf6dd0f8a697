//! The HSU nested config form (SPEC §4.2) loads unchanged and means the same as the
//! canonical form: the crash/backoff scenario of `test_restart_backoff` gives the same
//! restarts, and `execution.{working_directory, environment}` reach the process.

use e2e_tests::scenarios::check_crash_backoff;
use e2e_tests::*;
use std::time::Duration;

const NESTED: &str = r#"process_manager:
  port: 0
  force_shutdown_timeout: 20s
managed_processes:
  - id: svc
    type: standard_managed
    management:
      standard_managed:
        control:
          execution:
            executable_path: {testexe}
            args: ["--crash-after", "0.2"]
          restart_policy: on_failure
          context_aware_restart:
            default:
              max_retries: 10
              retry_delay: 200ms
              backoff_rate: 2.0
          graceful_timeout: 2s
  - id: steady
    type: standard_managed
    management:
      standard_managed:
        control:
          execution:
            executable_path: {testexe}
            args: ["--run-duration", "0"]
            working_directory: {run_dir}
            environment: ["E2E_NESTED_FORM=yes"]
          restart_policy: on_failure
          graceful_timeout: 2s
"#;

#[test]
fn nested_form_validates() {
    let run = TestRun::new("e2e-test-nested-validate");
    run.write_config(NESTED);
    let config = run.config_path.display().to_string();
    let out = run_manager_command(
        &run,
        &["validate", "--config", &config],
        Duration::from_secs(20),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the nested form validates; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nested_form_restart_backoff() {
    let mut pm = ProcessManager::start("e2e-test-nested-form", NESTED);
    // Same delays and attempts as the canonical form's restart_backoff_doubles_the_delay.
    check_crash_backoff(&mut pm, "svc");

    // execution.working_directory and execution.environment are honoured.
    let pid = pm.wait_for_pid("steady", SHORT);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd of steady");
    assert_eq!(cwd, pm.run().dir, "working_directory of steady");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ of steady");
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v == b"E2E_NESTED_FORM=yes"),
        "environment of steady lacks E2E_NESTED_FORM=yes"
    );
    pm.shutdown_cleanly(Duration::from_secs(20));
}
