//! Against the real kernel: a run's cgroup contains its whole tree from the first
//! instruction, `cgroup.kill` leaves nothing of it, the freezer stops it, and the spawn
//! path's open-file limit and failure reports. Tests that need root or cgroup v2 say
//! `SKIPPED` and why on stderr, and pass.
//!
//! Every test leaves nothing behind, even when it fails: a guard kills the cgroup, waits
//! for it to empty, reaps and removes it on drop.

use hsu_process::{spawn, SpawnError, SpawnSpec};
use hsu_resource_limits::{
    cgroup_area, Cgroup, CgroupRoot, Controllers, Finding, LimitPolicy, LimitWatch, Limits,
    MemoryLimit, Plan, Probe,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn spec(program: &str, args: &[&str]) -> SpawnSpec {
    SpawnSpec {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        working_directory: std::env::temp_dir(),
        environment: BTreeMap::new(),
        stdout: None,
        stderr: None,
        tag: format!("hsu-resource-limits-test#{}", std::process::id()),
        user: None,
        group: None,
        cgroup: None,
        rlimit_nofile: None,
    }
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// The area of this test process, removed on drop by the last test that holds it (an
/// earlier one finds runs of others still in it, and leaves it).
struct Area(CgroupRoot);

impl std::ops::Deref for Area {
    type Target = CgroupRoot;
    fn deref(&self) -> &CgroupRoot {
        &self.0
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0.path());
    }
}

/// The area of this test process, or why the test cannot run here.
fn area() -> Result<Area, String> {
    if !hsu_process::is_superuser() {
        return Err("needs root".into());
    }
    // Orphans of the trees under test come to this process, which reaps them.
    hsu_process::become_subreaper().map_err(|e| e.to_string())?;
    cgroup_area(&format!("hsu-test-{}", std::process::id()))
        .map(Area)
        .map_err(|e| e.to_string())
}

macro_rules! area_or_skip {
    ($test:literal) => {
        match area() {
            Ok(area) => area,
            Err(why) => {
                eprintln!("SKIPPED {}: {why}", $test);
                return;
            }
        }
    };
}

/// One run's cgroup, emptied, reaped and removed on drop.
struct Run {
    cg: Cgroup,
}

impl Run {
    fn new(area: &CgroupRoot, id: &str) -> Run {
        Run {
            cg: area.create(id).expect("create the run's cgroup"),
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.cg.set_frozen(false);
        let _ = self.cg.kill();
        let _ = self.cg.wait_empty(Duration::from_secs(10));
        eventually(Duration::from_secs(2), || {
            hsu_process::reap_orphans();
            false
        });
        let _ = self.cg.remove();
    }
}

/// The session of `pid` (field 6 of its stat line).
fn session_of(pid: u32) -> Option<u32> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &line[line.rfind(')')? + 2..];
    rest.split(' ').nth(3)?.parse().ok()
}

#[tokio::test]
async fn cgroup_kill_leaves_nothing_of_a_tree_that_double_forks_and_setsids() {
    let area = area_or_skip!("cgroup_kill_leaves_nothing_of_a_tree_that_double_forks_and_setsids");
    let run = Run::new(&area, "escape");
    let mut child = spawn(SpawnSpec {
        cgroup: Some(run.cg.procs_file().unwrap()),
        ..spec(
            "sh",
            &["-c", r#"setsid sh -c "sleep 300 & sleep 300" & sleep 300"#],
        )
    })
    .unwrap();
    let leader = child.pid();
    // The tree is complete once a member runs in a session of its own.
    let mut members = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            members = run.cg.members().unwrap();
            members.len() >= 3
                && members
                    .iter()
                    .any(|&p| session_of(p).is_some_and(|s| s != session_of(leader).unwrap_or(0)))
        }),
        "members: {members:?}"
    );
    assert!(members.contains(&leader));
    assert!(run.cg.populated().unwrap());

    run.cg.kill().unwrap();
    assert!(
        run.cg.wait_empty(Duration::from_secs(10)).unwrap(),
        "still populated: {:?}",
        run.cg.members()
    );
    let exit = child.wait().await.unwrap();
    assert_eq!(exit.signal, Some(9), "{exit}");
    // Zombies handed to this process as subreaper are reaped; then none is left.
    assert!(
        eventually(Duration::from_secs(10), || {
            hsu_process::reap_orphans();
            members
                .iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        }),
        "left in /proc: {:?}",
        members
            .iter()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect::<Vec<_>>()
    );
    run.cg.remove().unwrap();
    assert!(!run.cg.path().exists());
}

#[tokio::test]
async fn the_program_runs_in_its_cgroup_from_its_first_instruction() {
    let area = area_or_skip!("the_program_runs_in_its_cgroup_from_its_first_instruction");
    let run = Run::new(&area, "first");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cgroup");
    // `cat` itself (the spawned process, not a child of it) reads its own cgroup.
    let mut child = spawn(SpawnSpec {
        cgroup: Some(run.cg.procs_file().unwrap()),
        stdout: Some(std::fs::File::create(&out).unwrap()),
        ..spec("cat", &["/proc/self/cgroup"])
    })
    .unwrap();
    assert!(child.wait().await.unwrap().success());
    let text = std::fs::read_to_string(&out).unwrap();
    let line = text.lines().find(|l| l.starts_with("0::")).unwrap();
    assert!(
        run.cg.path().ends_with(line.trim_start_matches("0::/")),
        "{line} is not {}",
        run.cg.path().display()
    );
}

#[tokio::test]
async fn a_probe_reads_the_tree_from_its_cgroup() {
    let area = area_or_skip!("a_probe_reads_the_tree_from_its_cgroup");
    let run = Run::new(&area, "probe");
    let mut child = spawn(SpawnSpec {
        cgroup: Some(run.cg.procs_file().unwrap()),
        ..spec("sh", &["-c", "sleep 300 & sleep 300 & while :; do :; done"])
    })
    .unwrap();
    let mut probe = Probe::new(Some(&run.cg), true);
    let t0 = Instant::now();
    assert!(eventually(Duration::from_secs(10), || {
        probe
            .sample(t0, || panic!("the cgroup lists the members"))
            .usage
            .processes
            == Some(3)
    }));
    let first = probe.sample(Instant::now(), Vec::new);
    assert!(first.usage.memory_bytes.unwrap() > 0);
    assert!(first.usage.fds.unwrap() >= 3 * 3, "{first:?}");
    let mut members = probe.members().to_vec();
    members.sort_unstable();
    let mut listed = run.cg.members().unwrap();
    listed.sort_unstable();
    assert_eq!(members, listed);
    // The busy loop shows in the cgroup's CPU time.
    assert!(eventually(Duration::from_secs(10), || {
        probe.sample(Instant::now(), Vec::new).cpu_seconds > first.cpu_seconds + 0.05
    }));
    run.cg.kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn a_frozen_cgroup_uses_no_cpu_until_thawed() {
    let area = area_or_skip!("a_frozen_cgroup_uses_no_cpu_until_thawed");
    let run = Run::new(&area, "freeze");
    if !run.cg.controllers().contains(Controllers::FREEZE) {
        eprintln!("SKIPPED a_frozen_cgroup_uses_no_cpu_until_thawed: no cgroup.freeze");
        return;
    }
    let mut child = spawn(SpawnSpec {
        cgroup: Some(run.cg.procs_file().unwrap()),
        ..spec("sh", &["-c", "while :; do :; done"])
    })
    .unwrap();
    let usage = || run.cg.cpu_usage_usec().unwrap();
    let start = usage();
    assert!(eventually(Duration::from_secs(10), || usage() > start + 20_000));
    run.cg.set_frozen(true).unwrap();
    let events = run.cg.path().join("cgroup.events");
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&events).is_ok_and(|t| t.contains("frozen 1"))
    }));
    let frozen_at = usage();
    // A measuring window, not a wait for an event: nothing may run during it (it fails
    // as soon as the frozen tree is seen running).
    let ran = eventually(Duration::from_millis(300), || usage() - frozen_at >= 5_000);
    assert!(!ran, "ran while frozen");
    run.cg.set_frozen(false).unwrap();
    let thawed_at = usage();
    assert!(eventually(Duration::from_secs(10), || usage() > thawed_at + 20_000));
    run.cg.kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn memory_max_oom_kills_the_tree_and_is_reported() {
    let area = area_or_skip!("memory_max_oom_kills_the_tree_and_is_reported");
    if !area.available().contains(Controllers::MEMORY) {
        eprintln!(
            "SKIPPED memory_max_oom_kills_the_tree_and_is_reported: the cgroup v2 hierarchy \
             at {} offers no memory controller (offered: {})",
            area.path().display(),
            area.available().names()
        );
        return;
    }
    let run = Run::new(&area, "oom");
    let limits = Limits {
        memory: Some(MemoryLimit {
            max_rss: 32 << 20,
            warning_threshold: None,
            policy: LimitPolicy::ImmediateKill,
        }),
        ..Limits::default()
    };
    let plan = Plan::new(&limits, Some(run.cg.controllers()));
    assert_eq!(plan.memory_max, Some(32 << 20));
    run.cg.apply(&plan).unwrap();
    // dd fills a 256 MiB buffer: far over the limit.
    let mut child = spawn(SpawnSpec {
        cgroup: Some(run.cg.procs_file().unwrap()),
        ..spec(
            "sh",
            &[
                "-c",
                "sleep 300 & dd if=/dev/zero of=/dev/null bs=256M count=1; sleep 300",
            ],
        )
    })
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the tree was not killed")
        .unwrap();
    assert_eq!(exit.signal, Some(9), "{exit}");
    assert!(
        run.cg.wait_empty(Duration::from_secs(10)).unwrap(),
        "oom.group kills all"
    );
    let mut watch = LimitWatch::new(&limits);
    let kills = run.cg.oom_kills().unwrap();
    assert!(matches!(
        watch.observe_oom_kills(kills),
        Some(Finding::OomKilled { kills: 1.., .. })
    ));
}

#[tokio::test]
async fn the_open_file_limit_is_set_before_the_program_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("limits");
    let mut child = spawn(SpawnSpec {
        rlimit_nofile: Some(77),
        stdout: Some(std::fs::File::create(&out).unwrap()),
        ..spec("sh", &["-c", "ulimit -Sn; ulimit -Hn"])
    })
    .unwrap();
    assert!(child.wait().await.unwrap().success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "77\n77\n");
}

#[tokio::test]
async fn a_cgroup_that_refuses_the_child_fails_the_spawn_with_that_reason() {
    // A descriptor the child cannot write to stands for a cgroup that refuses it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cgroup.procs");
    std::fs::write(&path, "").unwrap();
    let err = spawn(SpawnSpec {
        cgroup: Some(std::fs::File::open(&path).unwrap()),
        ..spec("true", &[])
    })
    .unwrap_err();
    assert!(
        matches!(&err, SpawnError::Other { message, .. }
            if message.starts_with("cannot place the process in its cgroup:")),
        "{err}"
    );
    // A real one that was removed since it was opened.
    let area = area_or_skip!("a_cgroup_that_refuses_the_child_fails_the_spawn_with_that_reason");
    let run = Run::new(&area, "removed");
    let procs = run.cg.procs_file().unwrap();
    run.cg.remove().unwrap();
    let err = spawn(SpawnSpec {
        cgroup: Some(procs),
        ..spec("true", &[])
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot place the process in its cgroup"),
        "{err}"
    );
    // A missing program is still told as such.
    let run = Run::new(&area, "missing");
    let err = spawn(SpawnSpec {
        cgroup: Some(run.cg.procs_file().unwrap()),
        ..spec("/nonexistent/program", &[])
    })
    .unwrap_err();
    assert!(matches!(err, SpawnError::NotFound { .. }), "{err}");
}

#[test]
fn an_unprivileged_manager_is_told_once_why_it_gets_no_cgroups() {
    if hsu_process::is_superuser() {
        eprintln!(
            "SKIPPED an_unprivileged_manager_is_told_once_why_it_gets_no_cgroups: runs as root"
        );
        return;
    }
    match cgroup_area(&format!("hsu-test-{}", std::process::id())) {
        Err(why) => {
            let text = why.to_string();
            eprintln!("told: {text}");
            assert!(
                text.ends_with(
                    "process trees are found through /proc and limits are held by polling"
                ),
                "{text}"
            );
        }
        // A cgroup delegated to this user: nothing to say, and nothing to leave behind.
        Ok(area) => std::fs::remove_dir(area.path()).unwrap(),
    }
}
