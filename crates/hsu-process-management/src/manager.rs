//! The `ProcessManager`: owns one supervisor per process, the orphan reaper, and the
//! shutdown of everything.

use crate::process_control_impl::{Context, ProcessHandle};
use hsu_common::{EventKind, EventSink};
use hsu_managed_process::{ProcessControl, ProcessDefinition, ProcessStatus};
use hsu_process_file::PidFiles;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Manager-wide settings the supervisors need.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub base_directory: PathBuf,
    /// Where per-process output files go.
    pub log_directory: PathBuf,
    /// Bound on the whole shutdown.
    pub force_shutdown_timeout: Duration,
}

enum Entry {
    Managed(ProcessHandle),
    /// Not supervised by a task (disabled, or unmanaged until discovery lands).
    Idle(ProcessStatus),
}

/// Supervises every configured process.
pub struct ProcessManager {
    entries: Vec<(String, Entry)>,
    options: ManagerOptions,
    events: Arc<dyn EventSink>,
    reaper: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("cannot prepare {path}: {source}")]
    Files {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ProcessManager {
    /// Starts supervising `definitions`: every enabled managed process is started.
    pub async fn start(
        definitions: Vec<ProcessDefinition>,
        options: ManagerOptions,
        events: Arc<dyn EventSink>,
    ) -> Result<ProcessManager, ManagerError> {
        let pid_dir = options.base_directory.join("pids");
        let files_err = |path: &PathBuf| {
            let path = path.clone();
            move |source| ManagerError::Files { path, source }
        };
        let pid_files = PidFiles::new(&pid_dir).map_err(files_err(&pid_dir))?;
        std::fs::create_dir_all(&options.log_directory)
            .map_err(files_err(&options.log_directory))?;
        if let Err(e) = hsu_process::become_subreaper() {
            tracing::warn!("cannot become child subreaper ({e}); grandchildren that leave their process group may outlive a stop");
        }
        let reaper = tokio::spawn(reap_orphans_forever());
        let ctx = Arc::new(Context {
            events: events.clone(),
            pid_files,
            log_dir: options.log_directory.clone(),
            tag_prefix: options.base_directory.display().to_string(),
        });

        let mut entries = Vec::with_capacity(definitions.len());
        for def in definitions {
            let id = def.id.clone();
            let entry = match (&def.control, def.process_type.is_managed(), def.enabled) {
                (Some(control), true, true) => {
                    let control = control.clone();
                    Entry::Managed(ProcessHandle::spawn(def, control, ctx.clone()))
                }
                (_, _, false) => Entry::Idle(idle(&def, "disabled in the config")),
                _ => Entry::Idle(idle(
                    &def,
                    "unmanaged: observed only, discovery is not available in this version",
                )),
            };
            entries.push((id, entry));
        }
        for (id, entry) in &entries {
            if let Entry::Managed(handle) = entry {
                if let Err(e) = handle.start().await {
                    tracing::error!(id, "start failed: {e}");
                }
            }
        }
        Ok(ProcessManager {
            entries,
            options,
            events,
            reaper,
        })
    }

    pub fn options(&self) -> &ManagerOptions {
        &self.options
    }

    /// Every process's status, in config order.
    pub fn statuses(&self) -> Vec<ProcessStatus> {
        self.entries
            .iter()
            .map(|(_, e)| match e {
                Entry::Managed(h) => h.status(),
                Entry::Idle(s) => s.clone(),
            })
            .collect()
    }

    /// The supervisor of a managed, enabled process.
    pub fn process(&self, id: &str) -> Option<&ProcessHandle> {
        self.entries.iter().find_map(|(i, e)| match e {
            Entry::Managed(h) if i == id => Some(h),
            _ => None,
        })
    }

    /// Stops every process (in parallel, each within its graceful timeout, the whole
    /// within `force_shutdown_timeout`) and returns when all are down.
    pub async fn shutdown(self, reason: &str) {
        let deadline = Instant::now() + self.options.force_shutdown_timeout;
        let mut stops = JoinSet::new();
        for (_, entry) in self.entries {
            if let Entry::Managed(handle) = entry {
                stops.spawn(async move {
                    let id = handle.id().to_owned();
                    if let Err(e) = handle.shutdown(deadline).await {
                        tracing::warn!(id, "shutdown: {e}");
                    }
                });
            }
        }
        while stops.join_next().await.is_some() {}
        hsu_process::reap_orphans();
        self.reaper.abort();
        self.events.emit(
            None,
            EventKind::ManagerStopped {
                reason: reason.into(),
            },
        );
    }
}

fn idle(def: &ProcessDefinition, reason: &str) -> ProcessStatus {
    let mut s = ProcessStatus::new(&def.id, def.process_type);
    s.reason = reason.into();
    s
}

/// Orphans re-parented to the manager are reaped as the kernel reports child changes.
async fn reap_orphans_forever() {
    let mut events = match hsu_process::child_events() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("cannot watch child exits ({e}); orphans are reaped at stops only");
            return;
        }
    };
    hsu_process::reap_orphans();
    while events.recv().await.is_some() {
        let n = hsu_process::reap_orphans();
        if n > 0 {
            tracing::debug!("reaped {n} orphan(s)");
        }
    }
}
