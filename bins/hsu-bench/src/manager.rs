//! One run of the real `hsu-process-manager` binary: its config, its temporary base
//! directory, starting it, reading its API, stopping it, and killing it (and everything
//! it started) when the handle is dropped.

use crate::{cleanup, http, procfs};
use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The processes one manager run supervises: `count` copies of one program.
#[derive(Debug, Clone)]
pub struct Workload {
    /// How many processes (`p0`, `p1`, ...).
    pub count: usize,
    /// The program each runs.
    pub executable: String,
    /// Its arguments.
    pub arguments: Vec<String>,
    /// `restart_policy: always` with no delay and a breaker that never opens; otherwise
    /// the defaults.
    pub fast_restart: bool,
    /// An HTTP health check every second against this URL (`{i}`: the process's index).
    pub health_url: Option<String>,
}

/// Single-quoted YAML scalar.
fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The manager's config for `work` with base directory `base`.
pub fn config_yaml(base: &Path, work: &Workload) -> String {
    let mut y = format!(
        "process_manager:\n  port: 0\n  base_directory: {}\nmanaged_processes:\n",
        yaml_str(&base.to_string_lossy())
    );
    if work.count == 0 {
        y.push_str("  []\n");
    }
    let args: Vec<String> = work.arguments.iter().map(|a| yaml_str(a)).collect();
    for i in 0..work.count {
        y.push_str(&format!(
            "  - id: p{i}\n    type: standard_managed\n    management:\n      control:\n        \
             executable: {}\n        arguments: [{}]\n",
            yaml_str(&work.executable),
            args.join(", ")
        ));
        if work.fast_restart {
            y.push_str(
                "        restart_policy: always\n        \
                 restart: {retry_delay: 0s, max_retries: 100000, window: 1s}\n",
            );
        }
        if let Some(url) = &work.health_url {
            y.push_str(&format!(
                "      health_check:\n        type: http\n        http: {{url: {}}}\n        \
                 interval: 1s\n        timeout: 500ms\n",
                yaml_str(&url.replace("{i}", &i.to_string()))
            ));
        }
    }
    y
}

/// A running manager. Dropping it SIGKILLs the manager's group and every process tagged
/// with its base directory.
pub struct Manager {
    child: Child,
    pid: u32,
    /// The manager's base directory (state, journal, logs, `api.addr`).
    pub base: PathBuf,
    tag_prefix: String,
    addr: Option<SocketAddr>,
    exited: bool,
    _dir: tempfile::TempDir,
}

impl Manager {
    /// Writes the config and starts `binary` on it, in a process group of its own.
    pub fn spawn(binary: &Path, work: &Workload) -> anyhow::Result<Manager> {
        Self::spawn_with(binary, work, "")
    }

    /// [`Manager::spawn`] with `top_level` YAML (e.g. a `log_collection:` section)
    /// appended to the config.
    pub fn spawn_with(binary: &Path, work: &Workload, top_level: &str) -> anyhow::Result<Manager> {
        let dir = tempfile::Builder::new().prefix("hsu-bench-").tempdir()?;
        let root = dir.path().canonicalize()?;
        let base = root.join("base");
        let config = root.join("config.yaml");
        std::fs::write(&config, config_yaml(&base, work) + top_level)?;
        let log = std::fs::File::create(root.join("manager.log"))?;
        let tag_prefix = format!("{}#", base.display());
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        cleanup::register(Some(pid), &tag_prefix, Some(&root));
        Ok(Manager {
            child,
            pid,
            base,
            tag_prefix,
            addr: None,
            exited: false,
            _dir: dir,
        })
    }

    /// The manager's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the manager has exited (with its log's tail, to say why).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.exited = true;
            let log = std::fs::read_to_string(self.base.with_file_name("manager.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            bail!(
                "the manager exited early ({status}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// The API address, waiting (until `deadline`) for `<base>/api.addr`.
    pub fn api(&mut self, deadline: Instant) -> anyhow::Result<SocketAddr> {
        if let Some(addr) = self.addr {
            return Ok(addr);
        }
        loop {
            if let Ok(text) = std::fs::read_to_string(self.base.join("api.addr")) {
                let text = text.trim();
                let text = text.strip_prefix("http://").unwrap_or(text);
                if let Ok(addr) = text.parse::<SocketAddr>() {
                    self.addr = Some(addr);
                    return Ok(addr);
                }
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("no API address in {} in time", self.base.display());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `GET /api/v1/processes`, decoded.
    pub fn list(&mut self, deadline: Instant) -> anyhow::Result<Vec<serde_json::Value>> {
        let addr = self.api(deadline)?;
        let response = http::get(addr, "/api/v1/processes", Duration::from_secs(5))?;
        if response.status != 200 {
            bail!("GET /api/v1/processes answered {}", response.status);
        }
        Ok(serde_json::from_slice(&response.body)?)
    }

    /// Polls until `count` children run `program` (as seen in `/proc`).
    pub fn wait_children(
        &mut self,
        count: usize,
        program: &str,
        deadline: Instant,
    ) -> anyhow::Result<Vec<u32>> {
        loop {
            let kids = procfs::children_running(self.pid, program);
            if kids.len() >= count {
                return Ok(kids);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("only {} of {count} children running in time", kids.len());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Polls the API (every `every`) until all `count` processes are `running` with a PID.
    pub fn wait_all_running(
        &mut self,
        count: usize,
        every: Duration,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        loop {
            let list = self.list(deadline)?;
            let running = list
                .iter()
                .filter(|p| p["state"] == "running" && p["pid"].is_u64())
                .count();
            if list.len() == count && running == count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {running} of {count} processes running by the API in time");
            }
            std::thread::sleep(every);
        }
    }

    /// SIGTERM, then the time until the manager has exited and none of `children` is
    /// left in `/proc`.
    pub fn stop(&mut self, children: &[u32], deadline: Instant) -> anyhow::Result<Duration> {
        let start = Instant::now();
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM)?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = true;
                if !status.success() {
                    bail!("the manager exited with {status} on SIGTERM");
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("the manager did not exit in time after SIGTERM");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        loop {
            if !children.iter().any(|&pid| procfs::exists(pid)) {
                return Ok(start.elapsed());
            }
            if Instant::now() > deadline {
                bail!("children left in /proc after the manager exited");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if !self.exited {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        let left = cleanup::kill_tagged(&self.tag_prefix);
        if left > 0 {
            eprintln!(
                "hsu-bench: {left} tagged processes of {} would not die",
                self.tag_prefix
            );
        }
        cleanup::unregister(&self.tag_prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_every_process() {
        let work = Workload {
            count: 2,
            executable: "/bin/sleep".into(),
            arguments: vec!["3600".into()],
            fast_restart: true,
            health_url: None,
        };
        let y = config_yaml(Path::new("/tmp/it's"), &work);
        assert!(y.contains("base_directory: '/tmp/it''s'"));
        assert!(y.contains("- id: p1\n"));
        assert_eq!(y.matches("restart_policy: always").count(), 2);
        assert!(y.contains("arguments: ['3600']"));
        let empty = config_yaml(Path::new("/b"), &Workload { count: 0, ..work });
        assert!(empty.ends_with("managed_processes:\n  []\n"));
    }
}
