//! Discovery (`by_pid_file`, `by_process_name`, `by_port`) against real processes and
//! sockets. A test binary of its own: the unit tests of this crate make their process a
//! subreaper and reap its orphans, which the processes started and ended here would
//! become (and their checks that a killed tree is reaped at once would wait on ours).
#![cfg(target_os = "linux")]

use hsu_process::{by_pid_file, by_port, by_process_name};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest `comm` the kernel keeps.
const COMM_LEN: usize = 15;

/// Polls `cond` every 10 ms until it holds or 10 s pass.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A copy of `program` (found on `PATH`) named `name` in `dir`.
fn renamed(program: &str, dir: &Path, name: &str) -> std::path::PathBuf {
    let source = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} on PATH"));
    let target = dir.join(name);
    std::fs::copy(source, &target).unwrap();
    target
}

/// Spawns `cmd`, again while the kernel says "text file busy": a copy just written is
/// busy while another test's child, forked while the copy was open for writing, has not
/// yet run its own program.
fn spawn(cmd: &mut std::process::Command) -> std::process::Child {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result.unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
        }
    }
}

/// Whether `comm` of `pid` is `name` (once its exec is done, it is the program's name).
fn comm_is(pid: u32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
}

/// The direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn a_pid_file_finds_its_live_process_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.pid");
    assert_eq!(by_pid_file(&path), None, "no file");
    let mut sleeper = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = sleeper.id();
    std::fs::write(&path, format!("{pid}\n")).unwrap();
    assert_eq!(by_pid_file(&path), Some(pid));
    sleeper.kill().unwrap();
    // Exited but not reaped yet: a zombie is not found.
    assert!(eventually(|| by_pid_file(&path).is_none()));
    sleeper.wait().unwrap();
    assert_eq!(by_pid_file(&path), None, "gone");
    std::fs::write(&path, "not a pid\n").unwrap();
    assert_eq!(by_pid_file(&path), None);
    std::fs::write(&path, "").unwrap();
    assert_eq!(by_pid_file(&path), None);
}

#[test]
fn a_name_finds_the_oldest_master_never_its_workers_nor_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    // Names no other process on the machine has.
    let tag = std::process::id() % 100_000;
    let shell_name = format!("hsush{tag}");
    let shell = renamed("sh", dir.path(), &shell_name);
    // A master that starts a worker called like itself, and a second, younger master.
    let script = format!("{} -c 'sleep 600; :' & wait", shell.display());
    let mut masters = Vec::new();
    for _ in 0..2 {
        let master = spawn(
            std::process::Command::new(&shell)
                .args(["-c", &script])
                .process_group(0),
        );
        let pid = master.id();
        masters.push(master);
        assert!(
            eventually(|| children(pid).iter().any(|&w| comm_is(w, &shell_name))),
            "the worker of {pid} runs"
        );
    }
    assert_eq!(by_process_name(&shell_name), Some(masters[0].id()));

    // A name longer than `comm` keeps is found through the executable.
    let long_name = format!("hsu-long-name-{tag}-sleeper");
    let sleep = renamed("sleep", dir.path(), &long_name);
    let mut long = spawn(std::process::Command::new(&sleep).arg("600"));
    assert!(eventually(|| comm_is(long.id(), &long_name[..COMM_LEN])));
    assert_eq!(by_process_name(&long_name), Some(long.id()));
    assert_eq!(by_process_name(&long_name[..COMM_LEN]), Some(long.id()));
    assert_eq!(by_process_name(&format!("{long_name}x")), None);
    assert_eq!(by_process_name(""), None);

    // The caller (the manager, in the product) is never found, even by its own name.
    let own = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_ne!(by_process_name(own.trim()), Some(std::process::id()));

    long.kill().unwrap();
    long.wait().unwrap();
    for mut m in masters {
        // Each master leads its own group: its worker and the worker's sleep go with it.
        let group = nix::unistd::Pid::from_raw(m.id() as i32);
        nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).unwrap();
        m.wait().unwrap();
    }
    assert!(eventually(|| by_process_name(&shell_name).is_none()));
}

#[test]
fn a_port_finds_the_process_listening_on_it() {
    let me = std::process::id();
    let v4 = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = v4.local_addr().unwrap().port();
    assert_eq!(by_port(port), Some(me));
    // A connection's own (ephemeral) port is no listening port.
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let ephemeral = client.local_addr().unwrap().port();
    assert_eq!(by_port(ephemeral), None);
    drop(client);
    drop(v4);
    assert_eq!(by_port(port), None, "nothing listens any more");
    // IPv6, where the machine has it.
    if let Ok(v6) = std::net::TcpListener::bind(("::1", 0)) {
        let port = v6.local_addr().unwrap().port();
        assert_eq!(by_port(port), Some(me));
    }
}
