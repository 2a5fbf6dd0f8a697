//! A made-up platform for the supervisor's unit tests: processes are entries in a table,
//! exits and slow stops happen when a test says so, and the clock can be paused.

use crate::platform::{BoxFuture, Platform, ProbeRequest, Spawned, Tree};
use hsu_common::StopSignal;
use hsu_monitoring::ProbeOutcome;
use hsu_process::{ExitInfo, SpawnError, SpawnSpec};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;

/// How the made-up integrated process answers `CoreService/Shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rpc {
    /// Nobody listens: the call fails at once.
    #[default]
    Refused,
    /// It answers and its main process exits 0.
    Obey,
    /// It answers and goes on running.
    Ignore,
}

/// How the next spawned process behaves.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The spawn fails (executable not found).
    pub spawn_error: bool,
    /// The main process ignores the stop signal (only SIGKILL ends it).
    pub ignores_term: bool,
    /// Members of the tree besides the main process.
    pub children: u32,
    /// The children ignore the stop signal.
    pub children_ignore_term: bool,
    /// The spawn panics (a bug somewhere below the supervisor).
    pub panic: bool,
}

struct Proc {
    tag: String,
    root: u32,
    alive: bool,
    ignores_term: bool,
    exit: Option<oneshot::Sender<ExitInfo>>,
}

#[derive(Default)]
struct State {
    next_pid: u32,
    procs: BTreeMap<u32, Proc>,
    plans: VecDeque<Plan>,
    /// Every spawn: (pid, tag, arguments).
    spawns: Vec<(u32, String, Vec<String>)>,
    /// The most main processes of one tag alive at once, by tag.
    max_mains: BTreeMap<String, usize>,
    /// Results of the next health checks, in order; `None`: the check hangs until its
    /// timeout. Once used up, checks pass.
    probe_results: VecDeque<Option<Result<(), String>>>,
    /// Checks run so far.
    probes: usize,
    rpc: Rpc,
    rpc_calls: usize,
}

/// The fake platform; clone it to keep a handle for the test.
#[derive(Clone, Default)]
pub struct FakePlatform {
    state: Arc<Mutex<State>>,
}

impl FakePlatform {
    pub fn new() -> Self {
        let fake = FakePlatform::default();
        // Above any real PID (pid_max is at most 2^22), so nothing real is ever touched.
        fake.lock().next_pid = 4_000_000_000;
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next spawn behaves as `plan` (later spawns behave normally).
    pub fn plan(&self, plan: Plan) {
        self.lock().plans.push_back(plan);
    }

    /// The main process `pid` exits on its own with `code`; its children stay.
    pub fn exit(&self, pid: u32, code: i32) {
        let mut st = self.lock();
        if let Some(p) = st.procs.get_mut(&pid) {
            die(p, Some(code), None);
        }
    }

    /// Live processes (main and children) carrying `tag`.
    pub fn alive(&self, tag: &str) -> Vec<u32> {
        self.lock()
            .procs
            .iter()
            .filter(|(_, p)| p.alive && p.tag == tag)
            .map(|(&pid, _)| pid)
            .collect()
    }

    /// How many spawns succeeded so far.
    pub fn spawns(&self) -> usize {
        self.lock().spawns.len()
    }

    /// The arguments of the last spawn.
    pub fn last_args(&self) -> Vec<String> {
        self.lock()
            .spawns
            .last()
            .map(|s| s.2.clone())
            .unwrap_or_default()
    }

    /// The next health checks answer these, in order (`None`: hangs until its timeout);
    /// after them, checks pass.
    pub fn probe_results(&self, results: impl IntoIterator<Item = Option<Result<(), String>>>) {
        self.lock().probe_results.extend(results);
    }

    /// Health checks run so far.
    pub fn probes(&self) -> usize {
        self.lock().probes
    }

    /// How `CoreService/Shutdown` is answered.
    pub fn rpc(&self, rpc: Rpc) {
        self.lock().rpc = rpc;
    }

    /// `CoreService/Shutdown` calls so far.
    pub fn rpc_calls(&self) -> usize {
        self.lock().rpc_calls
    }

    /// The most main processes of `tag` that were ever alive at the same time.
    pub fn max_concurrent_mains(&self, tag: &str) -> usize {
        self.lock().max_mains.get(tag).copied().unwrap_or(0)
    }
}

fn die(p: &mut Proc, code: Option<i32>, signal: Option<i32>) {
    p.alive = false;
    if let Some(tx) = p.exit.take() {
        let _ = tx.send(ExitInfo { code, signal });
    }
}

impl Platform for FakePlatform {
    fn spawn(&self, spec: SpawnSpec) -> Result<Spawned, SpawnError> {
        let mut st = self.lock();
        let plan = st.plans.pop_front().unwrap_or_default();
        if plan.panic {
            drop(st);
            panic!("made-up bug in spawn");
        }
        if plan.spawn_error {
            return Err(SpawnError::NotFound {
                program: spec.program.display().to_string(),
                os: "No such file or directory (os error 2)".into(),
            });
        }
        let pid = st.next_pid;
        st.next_pid += 1 + plan.children;
        let (tx, rx) = oneshot::channel();
        st.procs.insert(
            pid,
            Proc {
                tag: spec.tag.clone(),
                root: pid,
                alive: true,
                ignores_term: plan.ignores_term,
                exit: Some(tx),
            },
        );
        for c in 1..=plan.children {
            st.procs.insert(
                pid + c,
                Proc {
                    tag: spec.tag.clone(),
                    root: pid,
                    alive: true,
                    ignores_term: plan.children_ignore_term,
                    exit: None,
                },
            );
        }
        st.spawns.push((pid, spec.tag.clone(), spec.args.clone()));
        let mains = st
            .procs
            .iter()
            .filter(|(&p, pr)| pr.alive && pr.root == p && pr.tag == spec.tag)
            .count();
        let max = st.max_mains.entry(spec.tag).or_default();
        *max = (*max).max(mains);
        Ok(Spawned {
            pid,
            exit: Box::pin(async move {
                rx.await
                    .map_err(|_| std::io::Error::other("fake process dropped"))
            }),
        })
    }

    fn signal_tree(&self, tree: Tree<'_>, signal: StopSignal) {
        let mut st = self.lock();
        for p in st.procs.values_mut() {
            if p.alive && p.root == tree.root && p.tag == tree.tag {
                match signal {
                    StopSignal::Kill => die(p, None, Some(9)),
                    _ if !p.ignores_term => die(p, None, Some(15)),
                    _ => {}
                }
            }
        }
    }

    fn tree(&self, tree: Tree<'_>) -> Vec<u32> {
        self.lock()
            .procs
            .iter()
            .filter(|(_, p)| p.alive && p.root == tree.root && p.tag == tree.tag)
            .map(|(&pid, _)| pid)
            .collect()
    }

    fn probe(&self, request: ProbeRequest) -> BoxFuture<ProbeOutcome> {
        let next = {
            let mut st = self.lock();
            st.probes += 1;
            st.probe_results.pop_front().unwrap_or(Some(Ok(())))
        };
        Box::pin(async move {
            let (result, latency) = match next {
                Some(result) => (result, Duration::from_millis(1)),
                None => {
                    tokio::time::sleep(request.timeout).await;
                    (Err("timed out".to_string()), request.timeout)
                }
            };
            ProbeOutcome {
                result,
                latency,
                at: SystemTime::now(),
            }
        })
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        Some(u64::from(pid))
    }

    fn adopt(&self, pid: u32, _start_time: u64) -> Result<crate::platform::ExitFuture, String> {
        Err(format!("pid {pid}: nothing to adopt on a made-up platform"))
    }

    fn request_shutdown(
        &self,
        _port: u16,
        _reason: String,
        _timeout: Duration,
    ) -> BoxFuture<Result<(), String>> {
        let mut st = self.lock();
        st.rpc_calls += 1;
        let result = match st.rpc {
            Rpc::Refused => Err("connection refused".to_string()),
            Rpc::Ignore => Ok(()),
            Rpc::Obey => {
                let last = st.spawns.last().map(|s| s.0);
                if let Some(p) = last.and_then(|pid| st.procs.get_mut(&pid)) {
                    die(p, Some(0), None);
                }
                Ok(())
            }
        };
        Box::pin(async move { result })
    }
}
