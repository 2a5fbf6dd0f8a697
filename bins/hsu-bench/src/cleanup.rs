//! Nothing the runner starts may outlive it. Every manager and every floor registers
//! here: its own PID (if any) and the tag prefix its children carry in
//! `HSU_PROCESS_TAG`. Handles clean up after themselves on drop; a panic hook and the
//! signal thread (Ctrl-C, SIGTERM, SIGHUP) call [`kill_everything`] for the rest.

use crate::procfs;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Owned {
    pid: Option<u32>,
    tag_prefix: String,
    dir: Option<PathBuf>,
}

static LIVE: Mutex<Vec<Owned>> = Mutex::new(Vec::new());

/// Records a process group leader (`pid`), the tag prefix of what it starts and the
/// temporary directory to remove if the runner is interrupted.
pub fn register(pid: Option<u32>, tag_prefix: &str, dir: Option<&Path>) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(Owned {
        pid,
        tag_prefix: tag_prefix.to_string(),
        dir: dir.map(Path::to_path_buf),
    });
}

fn registered_dirs() -> Vec<PathBuf> {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|o| o.dir.clone())
        .collect()
}

/// Forgets `tag_prefix` once its owner has cleaned up.
pub fn unregister(tag_prefix: &str) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|o| o.tag_prefix != tag_prefix);
}

/// SIGKILLs every process tagged with `prefix` (and its process group: the manager makes
/// each child a group leader) until none is left or 5 s have passed. Returns how many
/// were still there at the end.
pub fn kill_tagged(prefix: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = procfs::tagged(prefix);
        if left.is_empty() || Instant::now() > deadline {
            return left.len();
        }
        for pid in left {
            let pid = Pid::from_raw(pid as i32);
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every registered manager's process group, then everything tagged by it.
pub fn kill_everything() {
    let owned: Vec<(Option<u32>, String)> = LIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|o| (o.pid, o.tag_prefix.clone()))
        .collect();
    for (pid, _) in &owned {
        if let Some(pid) = pid {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
    for (_, prefix) in &owned {
        kill_tagged(prefix);
    }
}

/// Installs the panic hook and the signal thread (Ctrl-C, SIGTERM, SIGHUP: kill
/// everything, remove the temporary directories, exit 130). The signals are caught with
/// handlers, not blocked, so the children the runner starts inherit no blocked mask.
pub fn install() -> anyhow::Result<()> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        kill_everything();
    }));
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("hsu-bench: signal {signal}; killing every manager and child started");
                kill_everything();
                for dir in registered_dirs() {
                    let _ = std::fs::remove_dir_all(dir);
                }
                std::process::exit(130);
            }
        })?;
    Ok(())
}
