//! The harness's own promise: dropping a `ProcessManager` without a clean stop (what a
//! failing test does) leaves nothing of the run alive — not the manager, not its
//! processes, not their detached grandchildren.

use e2e_tests::*;
use std::time::Duration;

#[test]
fn dropping_the_wrapper_kills_everything() {
    let run = TestRun::new("e2e-test-harness-drop");
    let prefix = run.tag_prefix();
    let pid_file = run.path("tree.pid");
    let pid_file_arg = pid_file.display().to_string();
    let config = single_process_config(
        "tree",
        &[
            "--run-duration",
            "0",
            "--ignore-sigterm",
            "--spawn-children",
            "2",
            "--detach-children",
            "--pid-file",
            &pid_file_arg,
        ],
        "graceful_timeout: 30s",
    );
    let mut pm = ProcessManager::start_with_args(run, &config, &[]);
    let manager = pm.pid();
    let main = wait_for_pid_file(&pid_file, SHORT);
    let children: Vec<u32> = (0..2)
        .map(|i| wait_for_pid_file(&pid_file.with_extension(format!("pid.child{i}")), SHORT))
        .collect();
    let mut tree = vec![main];
    tree.extend(&children);
    wait_for("the whole tree to carry the tag", SHORT, || {
        let tagged = tagged_processes(&prefix);
        tree.iter().all(|p| tagged.contains(p))
    });
    assert!(pm.is_running());
    drop(pm);
    assert!(!pid_alive(manager), "the manager survived the drop");
    // Dropping waits until nothing tagged is left; no further waiting is needed.
    assert_eq!(tagged_processes(&prefix), Vec::<u32>::new());
    assert_all_gone("the tree", &tree, Duration::ZERO);
}
