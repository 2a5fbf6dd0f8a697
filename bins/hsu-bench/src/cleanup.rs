//! Nothing the runner starts may outlive it. Every manager and every floor registers
//! here: its own PID (if any) and the tag prefix its children carry in
//! `HSU_PROCESS_TAG`. Handles clean up after themselves on drop; a panic hook and the
//! signal thread (Ctrl-C, SIGTERM, SIGHUP) call [`kill_everything`] for the rest.

use crate::procfs;
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::unistd::Pid;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Owned {
    pid: Option<u32>,
    tag_prefix: String,
}

static LIVE: Mutex<Vec<Owned>> = Mutex::new(Vec::new());

/// Records a process group leader (`pid`) and the tag prefix of what it starts.
pub fn register(pid: Option<u32>, tag_prefix: &str) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(Owned {
        pid,
        tag_prefix: tag_prefix.to_string(),
    });
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

/// Installs the panic hook and the signal thread. Must run before any other thread is
/// started: the signals are blocked in this thread, so every later thread inherits the
/// mask and only the signal thread receives them. (`std::process::Command` resets the
/// mask in the children it starts.)
pub fn install() -> anyhow::Result<()> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        kill_everything();
    }));
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    signals.thread_block()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                eprintln!("hsu-bench: {signal}; killing every manager and child started");
                kill_everything();
                std::process::exit(130);
            }
        })?;
    Ok(())
}
