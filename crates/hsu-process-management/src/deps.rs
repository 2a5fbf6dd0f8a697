//! `depends_on` at run time: what each supervisor publishes, readable by the others
//! ([`Peers`]), the verdict over one process's dependencies ([`evaluate`]), and the task
//! that tells a supervisor when that verdict changes or a dependency restarts
//! ([`watch`]).
//!
//! The watcher is event-driven: supervisors bump a shared counter only when something a
//! dependency condition can depend on changed (state, run, health verdict, log-ready,
//! last exit), so a probe that changes nothing wakes nobody.

use crate::process_control_impl::{Internal, Published, RunId};
use hsu_common::ProcessState;
use hsu_managed_process::{Dependency, DependencyCondition};
use hsu_monitoring::HealthStatus;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};

/// What every supervised process publishes, by id.
pub struct Peers {
    map: Mutex<HashMap<String, watch::Receiver<Published>>>,
    changes: watch::Sender<u64>,
}

impl Default for Peers {
    fn default() -> Self {
        Peers {
            map: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
        }
    }
}

impl Peers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Receiver<Published>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `id` is now supervised and publishes on `status`.
    pub fn insert(&self, id: &str, status: watch::Receiver<Published>) {
        self.lock().insert(id.to_owned(), status);
        self.bump();
    }

    /// `id` is no longer supervised (removed, or now idle).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
        self.bump();
    }

    /// `id` is no longer supervised by the supervisor publishing on `status` (a newer
    /// supervisor of the same id stays).
    pub fn remove_if(&self, id: &str, status: &watch::Receiver<Published>) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|rx| rx.same_channel(status)) {
            map.remove(id);
            drop(map);
            self.bump();
        }
    }

    /// What `id` published last; `None` while it is not supervised.
    pub fn get(&self, id: &str) -> Option<Published> {
        self.lock().get(id).map(|rx| rx.borrow().clone())
    }

    /// Something a dependency condition may depend on changed.
    pub fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Whether what a supervisor published changed in a way a dependent can see.
pub fn relevant_change(old: &Published, new: &Published) -> bool {
    old.status.state != new.status.state
        || old.run != new.run
        || old.health.status != new.health.status
        || old.log_ready != new.log_ready
        || old.status.last_exit != new.status.last_exit
}

/// Where a process's dependencies stand.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every condition holds: it may start.
    Met,
    /// Some do not hold yet: `(dependency, "id (condition)")` for each.
    Waiting(Vec<(Dependency, String)>),
    /// One can no longer hold as things are (it failed, or completed unsuccessfully); it
    /// waits for that to change.
    Failed(String),
}

impl Verdict {
    /// `waiting for db (healthy), cache (started)`.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Met => "dependencies met".into(),
            Verdict::Waiting(unmet) => {
                let names: Vec<&str> = unmet.iter().map(|(_, s)| s.as_str()).collect();
                format!("waiting for {}", names.join(", "))
            }
            Verdict::Failed(why) => why.clone(),
        }
    }
}

enum One {
    Met,
    Wait,
    Fail(String),
}

/// The verdict over `deps`, given what each published (`None`: not supervised).
pub fn evaluate(deps: &[Dependency], views: &[Option<Published>]) -> Verdict {
    let mut unmet = Vec::new();
    for (dep, view) in deps.iter().zip(views) {
        match check(dep, view.as_ref()) {
            One::Met => {}
            One::Wait => unmet.push((
                dep.clone(),
                format!("{} ({})", dep.id, dep.condition.as_str()),
            )),
            One::Fail(why) => return Verdict::Failed(why),
        }
    }
    if unmet.is_empty() {
        Verdict::Met
    } else {
        Verdict::Waiting(unmet)
    }
}

fn check(dep: &Dependency, view: Option<&Published>) -> One {
    use DependencyCondition::*;
    let Some(p) = view else {
        return One::Wait;
    };
    let st = &p.status;
    let alive = p.run.is_some();
    let ended = !alive && st.last_exit.is_some();
    let exit_ok = st.last_exit.is_some_and(|e| e.code == Some(0));
    let failed = || {
        // Its reason's first clause: what happened to it (and, nested, to its own
        // dependency), without what it will do about it.
        let what = st.reason.split("; ").next().unwrap_or_default();
        One::Fail(format!(
            "dependency {} failed ({}): {what}",
            dep.id,
            dep.condition.as_str(),
        ))
    };
    match dep.condition {
        Started if alive || (ended && st.state == ProcessState::Stopped && exit_ok) => One::Met,
        Healthy if alive && p.health.status == HealthStatus::Healthy => One::Met,
        LogReady if alive && p.log_ready => One::Met,
        Started | Healthy | LogReady if st.state == ProcessState::Failed => failed(),
        Completed if ended && matches!(st.state, ProcessState::Stopped | ProcessState::Failed) => {
            One::Met
        }
        CompletedSuccessfully if ended && st.state == ProcessState::Stopped && exit_ok => One::Met,
        CompletedSuccessfully
            if ended
                && !exit_ok
                && matches!(st.state, ProcessState::Stopped | ProcessState::Failed) =>
        {
            failed()
        }
        _ => One::Wait,
    }
}

/// Watches `deps` for the supervisor behind `internal`: sends the verdict whenever it
/// changes (first at once) and a restart of every dependency with `restart: propagate`.
/// Ends when the supervisor is gone.
pub(crate) async fn watch(
    deps: Vec<Dependency>,
    peers: std::sync::Arc<Peers>,
    internal: mpsc::UnboundedSender<Internal>,
) {
    let mut changes = peers.subscribe();
    let mut last: Option<Verdict> = None;
    let mut runs: HashMap<String, RunId> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let views: Vec<Option<Published>> = deps.iter().map(|d| peers.get(&d.id)).collect();
        let verdict = evaluate(&deps, &views);
        if last.as_ref() != Some(&verdict) {
            last = Some(verdict.clone());
            if internal.send(Internal::Deps(verdict)).is_err() {
                return;
            }
        }
        for (dep, view) in deps.iter().zip(&views) {
            let Some(run) = view.as_ref().and_then(|p| p.run) else {
                continue;
            };
            let before = runs.insert(dep.id.clone(), run);
            if dep.propagate_restart
                && before.is_some_and(|b| b != run)
                && internal
                    .send(Internal::DepRestarted(dep.id.clone()))
                    .is_err()
            {
                return;
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
