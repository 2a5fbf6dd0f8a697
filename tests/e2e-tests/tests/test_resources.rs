//! Resource sampling (SPEC §7 `resources`): the usage of a whole process tree (children
//! included) shows in the Process JSON, in `/metrics` and in the CLI's status table.

use e2e_tests::*;
use serde_json::Value;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

fn config() -> String {
    let entry = testexe_process(
        "hog",
        &[
            "--run-duration",
            "0",
            "--memory-mb",
            "64",
            "--cpu-percent",
            "40",
            "--open-fds",
            "20",
            "--spawn-children",
            "2",
        ],
        "graceful_timeout: 5s",
    );
    format!(
        "process_manager:\n  port: 0\n  force_shutdown_timeout: 20s\n  \
         resource_sample_interval: 250ms\nmanaged_processes:\n{entry}"
    )
}

#[test]
fn tree_usage_shows_in_json_metrics_and_status() {
    let mut pm = ProcessManager::start("e2e-test-resources", &config());
    let api = pm.api();
    api.wait_running("hog", SHORT);

    // Memory is touched at start; CPU needs two samples. Poll until both show.
    let resources: Value = wait_until("hog's tree usage to be sampled", SHORT, || {
        let r = api.process("hog")["resources"].clone();
        let rss = r["rss_bytes"].as_u64()?;
        let cpu = r["cpu_percent"].as_f64()?;
        (rss >= 64 * 1024 * 1024 && cpu >= 10.0 && r["processes"].as_u64()? == 3).then_some(r)
    });
    assert!(
        resources["fds"].as_u64().unwrap() >= 20,
        "20 extra descriptors in the main process: {resources}"
    );
    assert!(
        resources["cpu_seconds"].as_f64().unwrap() > 0.0,
        "{resources}"
    );

    let metrics = api.get("/metrics").text();
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{id=\"hog\"}}")))
            .map(str::to_owned)
    };
    let rss_line = line("hsu_process_resident_memory_bytes").expect("an RSS sample for hog");
    let rss: f64 = rss_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rss >= 64.0 * 1024.0 * 1024.0, "{rss_line}");
    assert!(line("hsu_process_cpu_seconds_total").is_some(), "{metrics}");

    let out = pm.cli(&["status"]);
    out.expect_success();
    let row = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("hog "))
        .unwrap_or_else(|| panic!("no row for hog:\n{}", out.stdout));
    assert!(row.contains("MiB"), "MEM column filled: {row}");

    // Not running: no sample.
    api.act("hog", "stop");
    assert_eq!(api.process("hog")["resources"], Value::Null);
    pm.shutdown_cleanly(STOP_TIMEOUT);
}
