//! No orphans, ever (SPEC §5): a stop takes the whole tree — grandchildren in the
//! process group, grandchildren that left it for their own session, and ones that ignore
//! SIGTERM — and a main process that exits by itself does not leave its tree behind.

use e2e_tests::*;
use std::time::Duration;

/// Starts testexe with two grandchildren (plus `extra` flags), checks the whole tree is
/// up and tagged, shuts the manager down and checks nothing of the tree is left.
/// Returns the stopping -> stopped duration from the journal, in ms.
fn tree_is_gone_after_shutdown(test_name: &str, extra: &[&str], graceful: &str) -> i64 {
    let run = TestRun::new(test_name);
    let pid_file = run.path("tree.pid");
    let pid_file_arg = pid_file.display().to_string();
    let mut args = vec![
        "--run-duration",
        "0",
        "--spawn-children",
        "2",
        "--pid-file",
        &pid_file_arg,
    ];
    args.extend_from_slice(extra);
    let config = single_process_config(
        "tree",
        &args,
        &format!("graceful_timeout: {graceful}\nrestart_policy: on_failure"),
    );
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    pm.wait_for_event("tree running", SHORT, |e| {
        e.is_transition_to("tree", "running")
    });
    let main = wait_for_pid_file(&pid_file, SHORT);
    let children: Vec<u32> = (0..2)
        .map(|i| wait_for_pid_file(&pid_file.with_extension(format!("pid.child{i}")), SHORT))
        .collect();
    let mut all = vec![main];
    all.extend(&children);
    assert_all_alive("the tree", &all);
    assert_eq!(pm.wait_for_pid("tree", SHORT), main, "pids/tree.pid");

    let tag = format!("{}tree", pm.run().tag_prefix());
    for &pid in &all {
        assert_eq!(
            process_tag(pid).as_deref(),
            Some(tag.as_str()),
            "tag of {pid}"
        );
    }
    let mut tagged = pm.tagged_processes();
    tagged.sort_unstable();
    let mut expected = all.clone();
    expected.sort_unstable();
    assert_eq!(
        tagged, expected,
        "the run's tagged processes are exactly the tree"
    );

    // Check the scenario is the one intended: detached children lead their own session.
    let main_session = proc_stat(main).expect("main's /proc entry").session;
    for &child in &children {
        let stat = proc_stat(child).expect("child's /proc entry");
        let detached = stat.session == child && stat.session != main_session;
        assert_eq!(
            detached,
            extra.contains(&"--detach-children"),
            "child {child}: {stat:?}, main session {main_session}"
        );
    }

    pm.shutdown_cleanly(Duration::from_secs(30));
    // shutdown_cleanly checked nothing tagged is left; check the known PIDs directly too.
    let alive: Vec<u32> = all.iter().copied().filter(|&p| pid_alive(p)).collect();
    assert!(
        alive.is_empty(),
        "alive after the manager exited: {alive:?} (main {main}, children {children:?})"
    );
    let events = pm.events();
    let stopping = events
        .iter()
        .find(|e| e.is_transition("tree", "running", "stopping"))
        .expect("running -> stopping");
    let stopped = events
        .iter()
        .find(|e| e.is_transition("tree", "stopping", "stopped"))
        .expect("stopping -> stopped");
    stopped.ts_ms - stopping.ts_ms
}

#[test]
fn no_orphans_children_in_group() {
    let took = tree_is_gone_after_shutdown("e2e-test-orphans-group", &[], "5s");
    assert!(took < 2000, "a cooperative tree took {took} ms to stop");
}

#[test]
fn no_orphans_detached_children() {
    let took =
        tree_is_gone_after_shutdown("e2e-test-orphans-detached", &["--detach-children"], "5s");
    assert!(
        took < 5000 + 2500,
        "stop took {took} ms (graceful_timeout 5s)"
    );
}

#[test]
fn no_orphans_detached_children_ignoring_sigterm() {
    let took = tree_is_gone_after_shutdown(
        "e2e-test-orphans-stubborn",
        &["--detach-children", "--ignore-sigterm"],
        "1s",
    );
    assert!(
        (900..4000).contains(&took),
        "a tree ignoring SIGTERM should be killed after graceful_timeout 1s, took {took} ms"
    );
}

#[test]
fn no_orphans_after_main_process_exits() {
    let run = TestRun::new("e2e-test-orphans-main-exit");
    let pid_file = run.path("tree.pid");
    let pid_file_arg = pid_file.display().to_string();
    // The grandchildren leave the group and ignore SIGTERM: only a SIGKILL aimed at
    // them (not at the group) removes them.
    let args = [
        "--crash-after",
        "2",
        "--spawn-children",
        "2",
        "--detach-children",
        "--ignore-sigterm",
        "--pid-file",
        &pid_file_arg,
    ];
    let config =
        single_process_config("tree", &args, "graceful_timeout: 1s\nrestart_policy: never");
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let main = wait_for_pid_file(&pid_file, SHORT);
    let children: Vec<u32> = (0..2)
        .map(|i| wait_for_pid_file(&pid_file.with_extension(format!("pid.child{i}")), SHORT))
        .collect();
    let exited = pm.wait_for_event("tree exited", SHORT, |e| e.is_kind("tree", "exited"));
    assert!(
        exited.i64("code").is_some_and(|c| c != 0),
        "testexe --crash-after exits non-zero: {exited}"
    );
    let mut all = vec![main];
    all.extend(&children);
    // Cleanup after the exit is bounded by graceful_timeout (1s) plus the kill.
    assert_all_gone(
        "the tree left behind by an exited main process",
        &all,
        Duration::from_secs(15),
    );
    let failed = pm.wait_for_event("tree failed", SHORT, |e| {
        e.is_transition("tree", "running", "failed")
    });
    assert!(failed.seq > exited.seq, "{failed}");
    assert!(
        pm.tagged_processes().is_empty(),
        "tagged processes remain after the cleanup"
    );
    assert!(pm.is_running(), "the manager keeps running");
    pm.shutdown_cleanly(Duration::from_secs(20));
}
