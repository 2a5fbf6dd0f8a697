//! The floor: the least a supervisor can do on this machine. It fork-execs (through
//! `std::process::Command`, as the manager does), waits for any child with `waitpid(-1)`
//! on one thread and starts a new one at once, and kills. No state, no journal, no API,
//! no log capture: whatever the manager costs above this is the manager's own.
//!
//! The reaper waits for *any* child of this process, so nothing else may be started
//! while a floor runs (the runner never overlaps a floor with a manager).

use crate::{cleanup, procfs};
use anyhow::bail;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashSet;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct Shared {
    program: String,
    arguments: Vec<String>,
    tag_prefix: String,
    /// The live children; locked across a respawn so a stop never misses a new one.
    children: Mutex<HashSet<u32>>,
    stopping: AtomicBool,
    respawns: AtomicU64,
}

impl Shared {
    fn spawn(&self) -> std::io::Result<u32> {
        let child = Command::new(&self.program)
            .args(&self.arguments)
            .env("HSU_PROCESS_TAG", format!("{}f", self.tag_prefix))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        // The reaper collects it with waitpid(-1); dropping `Child` neither kills nor waits.
        Ok(child.id())
    }

    fn kill_all(&self, signal: Signal) {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        self.stopping.store(true, Ordering::SeqCst);
        for &pid in children.iter() {
            let _ = killpg(Pid::from_raw(pid as i32), signal);
        }
    }
}

/// A running floor of `count` children, respawning each as soon as it exits.
pub struct Floor {
    shared: Arc<Shared>,
    reaper: Option<JoinHandle<()>>,
}

impl Floor {
    /// Starts `count` copies of `program` and the reaper; returns the floor and the time
    /// until all `count` were seen running `program` in `/proc`.
    pub fn start(
        count: usize,
        program: &str,
        arguments: &[&str],
    ) -> anyhow::Result<(Floor, Duration)> {
        let tag_prefix = format!("hsu-bench-floor-{}-{}#", std::process::id(), unique());
        cleanup::register(None, &tag_prefix, None);
        let shared = Arc::new(Shared {
            program: program.to_string(),
            arguments: arguments.iter().map(|a| a.to_string()).collect(),
            tag_prefix,
            children: Mutex::new(HashSet::new()),
            stopping: AtomicBool::new(false),
            respawns: AtomicU64::new(0),
        });
        let mut floor = Floor {
            shared: shared.clone(),
            reaper: None,
        };
        let start = Instant::now();
        {
            let mut children = shared.children.lock().unwrap_or_else(|e| e.into_inner());
            for _ in 0..count {
                children.insert(shared.spawn()?);
            }
        }
        let reaper_shared = shared.clone();
        floor.reaper = Some(
            std::thread::Builder::new()
                .name("floor-reaper".into())
                .spawn(move || reap(&reaper_shared))?,
        );
        let deadline = start + Duration::from_secs(30);
        let me = std::process::id();
        while procfs::children_running(me, program).len() < count {
            if Instant::now() > deadline {
                bail!("the floor's children did not start in time");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok((floor, start.elapsed()))
    }

    /// How many children the reaper has started in place of ones that exited.
    pub fn respawns(&self) -> u64 {
        self.shared.respawns.load(Ordering::SeqCst)
    }

    /// SIGTERM to every child, then the time until the reaper has collected them all.
    pub fn stop(mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.shared.kill_all(Signal::SIGTERM);
        let deadline = start + Duration::from_secs(10);
        let reaper = self.reaper.take();
        while reaper.as_ref().is_some_and(|r| !r.is_finished()) {
            if Instant::now() > deadline {
                bail!("the floor's children did not exit on SIGTERM in time");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let elapsed = start.elapsed();
        if let Some(r) = reaper {
            let _ = r.join();
        }
        Ok(elapsed)
    }
}

/// Waits for any child; respawns it unless stopping. Ends when no child is left.
fn reap(shared: &Shared) {
    loop {
        let pid = match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => pid,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return, // ECHILD: nothing left to wait for.
        };
        let mut children = shared.children.lock().unwrap_or_else(|e| e.into_inner());
        children.remove(&(pid.as_raw() as u32));
        if !shared.stopping.load(Ordering::SeqCst) {
            if let Ok(new) = shared.spawn() {
                children.insert(new);
                shared.respawns.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.take() {
            self.shared.kill_all(Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !reaper.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if reaper.is_finished() {
                let _ = reaper.join();
            }
        }
        cleanup::kill_tagged(&self.shared.tag_prefix);
        cleanup::unregister(&self.shared.tag_prefix);
    }
}
