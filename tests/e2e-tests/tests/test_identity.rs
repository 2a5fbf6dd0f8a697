//! What a child inherits from the manager: never the manager's own secrets.

use e2e_tests::*;
use std::time::Duration;

fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|bytes| {
            bytes
                .split(|&b| b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A manager started with `HSU_API_TOKEN` in its environment hands it to no child; a
/// process whose own `environment` sets a variable of that name still gets its value.
#[test]
fn test_children_never_see_the_api_token() {
    let config = processes_config(&[
        testexe_process("plain", &["--run-duration", "0"], ""),
        testexe_process(
            "explicit",
            &["--run-duration", "0"],
            "environment: {HSU_API_TOKEN: its-own-value}",
        ),
    ]);
    let run = TestRun::new("identity-token");
    let mut pm = ProcessManager::start_with_env(
        run,
        &config,
        &[],
        &[("HSU_API_TOKEN", "manager-secret-token")],
    );
    let plain = pm.wait_for_pid("plain", SHORT);
    let explicit = pm.wait_for_pid("explicit", SHORT);
    let env = wait_until("the child's environment", SHORT, || {
        let env = environ(plain);
        env.iter()
            .any(|v| v.starts_with("HSU_PROCESS_TAG="))
            .then_some(env)
    });
    assert!(
        !env.iter().any(|v| v.contains("manager-secret-token")),
        "the token reached a child: {env:?}"
    );
    let env = environ(explicit);
    assert!(
        env.iter().any(|v| v == "HSU_API_TOKEN=its-own-value"),
        "{env:?}"
    );
    pm.shutdown_cleanly(Duration::from_secs(20));
}
