//! What a child inherits from the manager (never its secrets), and the files the manager
//! keeps for a process (there exactly while it runs, not world-readable).

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

/// `pids/<id>.port` exists exactly while an integrated_managed process runs, like its PID
/// file, and the manager's files are not world-readable.
#[test]
fn test_port_file_goes_with_the_process() {
    let config = format!(
        "{CONFIG_HEADER}  - id: integ\n    type: integrated_managed\n    management:\n      \
         control:\n        executable: {{testexe}}\n        arguments: [--run-duration, '0']\n        \
         port_argument: --port\n"
    );
    let mut pm = ProcessManager::start("identity-port-file", &config);
    pm.wait_for_pid("integ", SHORT);
    let port_file = pm.run().base_dir.join("pids/integ.port");
    let port: u16 = wait_until("pids/integ.port", SHORT, || {
        std::fs::read_to_string(&port_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    assert!(port > 0);
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .ok()
    };
    assert_eq!(mode(&port_file), Some(0o640));
    assert_eq!(mode(&pm.run().base_dir.join("pids")), Some(0o750));
    pm.cli(&["stop", "integ"]).expect_success();
    wait_for("pids/integ.port removed", SHORT, || !port_file.exists());
    assert!(!pm.run().pid_file("integ").exists());
    pm.shutdown_cleanly(Duration::from_secs(20));
}

/// `user:` runs the process as that user, with its groups and its `HOME`; the manager
/// itself stays root and can still stop it.
#[test]
fn test_a_process_runs_as_its_configured_user() {
    if effective_uid() != 0 {
        eprintln!("SKIPPED test_a_process_runs_as_its_configured_user: the manager must be root");
        return;
    }
    let config = single_process_config("svc", &["--run-duration", "0"], "user: nobody");
    let mut pm = ProcessManager::start("identity-user", &config);
    let pid = pm.wait_for_pid("svc", SHORT);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .map(|l| l.split(':').nth(2).unwrap().to_owned())
        .unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == nobody),
        "{uid_line}"
    );
    let env = environ(pid);
    assert!(env.iter().any(|v| v == "USER=nobody"), "{env:?}");
    pm.shutdown_cleanly(Duration::from_secs(20));
}

/// The effective user id of this test process, read from `/proc`.
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(u32::MAX)
}
