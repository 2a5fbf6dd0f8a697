//! `manager.lock` (SPEC §6): a second manager on the same base directory refuses to
//! start, naming the holder's PID, and does not start a second copy of anything.

use e2e_tests::*;
use std::time::Duration;

#[test]
fn second_manager_on_same_base_dir_refuses() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let mut pm = ProcessManager::start("e2e-test-manager-lock", &config);
    pm.wait_for_event("svc running", SHORT, |e| {
        e.is_transition_to("svc", "running")
    });
    let pid = pm.wait_for_pid("svc", SHORT);

    // The second manager shares the run directory but writes its own output file.
    let mut second = pm.run().clone();
    second.log_path = second.path("procman-second.log");
    let config_arg = second.config_path.display().to_string();
    let base_arg = second.base_dir.display().to_string();
    let out = run_manager_command(
        &second,
        &["--config", &config_arg, "--base-dir", &base_arg],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second manager on the same base directory must refuse to run; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&pm.pid().to_string()),
        "the refusal names the holder's PID {}; stderr:\n{stderr}",
        pm.pid()
    );
    assert!(pm.is_running(), "the first manager keeps running");
    assert_eq!(pm.tagged_processes(), vec![pid], "no second copy of svc");
    let starts = pm
        .events()
        .iter()
        .filter(|e| e.kind == "manager_started" || e.is_transition_to("svc", "starting"))
        .count();
    assert_eq!(starts, 2, "one manager_started and one start of svc");
    pm.shutdown_cleanly(Duration::from_secs(20));
}
