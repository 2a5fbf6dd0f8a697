//! One supervisor per managed process: a task that owns the process's child, its state
//! machine and its restart bookkeeping, and runs an event loop that never waits on
//! anything but its next input.
//!
//! # Inputs
//!
//! Everything that can change a process arrives as one [`Input`]: a control [`Command`]
//! (start, stop, restart, replace the definition, end), the child's exit (from the
//! kernel, through the runtime), a monitor's [`Report`] (health, resources), or a timer
//! deadline. Exits and reports carry the [`RunId`] of the run they are about: one about an
//! earlier run arrives late and is ignored.
//!
//! # States and their data
//!
//! [`Phase`] holds each visible state's data, so that "running without a child" or
//! "stopping without a deadline" cannot be written: `Running` has its run, `Stopping` has
//! its [`Teardown`] (the signal sent, the SIGKILL deadline, the callers waiting), `Failed`
//! has its retry time. `Stopped` and `Failed` may still carry the teardown of *leftovers*:
//! what a main process left of its tree when it exited on its own (or was stopped for
//! failing a check), stopped in the background while the state already says why.
//!
//! # Nothing blocks
//!
//! A stop sends the stop signal and records a deadline; the loop goes on serving
//! commands and status. When the deadline passes the loop SIGKILLs what is left and
//! sweeps the tree every few milliseconds until nothing of it is alive. A second stop
//! joins the first; a forced stop moves the deadline to now. Commands that would start a
//! new run while an old tree is still being brought down are held in the teardown's
//! [`Then`] and carried out once it is gone, so two instances never run at once. The only
//! work done in the loop itself is a spawn and a few `/proc` reads; file writes go to the
//! background writer.

use crate::deps::{self, Peers, Verdict};
use crate::lifecycle::{Decision, RestartTracker, Trigger};
use crate::limits::{LimitsView, RunLimits};
use crate::platform::{ExitFuture, Platform, ProbeRequest, Tree};
use hsu_common::{EventKind, EventSink, ProcessState, StopSignal};
use hsu_log_collection::{LogCollector, Stream};
use hsu_managed_process::{
    Circuit, ControlError, ControlSpec, HealthCheckKind, LastExit, ProcessControl,
    ProcessDefinition, ProcessStatus, ProcessType, RestartPolicy,
};
use hsu_monitoring::{HealthReport, HealthStatus, HealthTracker, ProbeOutcome};
use hsu_process::{ExitInfo, SpawnSpec};
use hsu_process_file::{FileWriter, PidFiles, ProcessRecord, RunRecord, StateFile};
use hsu_process_state::StateMachine;
use hsu_resource_limits as rl;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// After SIGKILL, how long the tree is swept before what survives is reported.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often a tree being brought down is checked while members other than the main
/// process (whose exit the kernel reports) remain.
const SWEEP_FAST: Duration = Duration::from_millis(20);
/// The second look at a tree that looked empty once, after members had to be killed.
const SWEEP_CONFIRM: Duration = Duration::from_millis(5);
/// The check interval after the first second of a long wait.
const SWEEP_SLOW: Duration = Duration::from_millis(100);

/// What every supervisor shares: the platform, where events go and where files live.
pub struct Context {
    /// Where journal events go.
    pub events: Arc<dyn EventSink>,
    /// Spawning, signalling and listing trees.
    pub platform: Arc<dyn Platform>,
    /// Where `pids/<id>.pid` and `.port` live.
    pub pid_files: PidFiles,
    /// The background writer for PID files and `state.json`.
    pub writer: FileWriter,
    /// `state.json`: the "stopped by hand" marks, set in the order commands are applied.
    pub durable: Arc<StateFile>,
    /// Captures the children's stdout/stderr (through a named pipe per stream).
    pub capture: LogCollector,
    /// Prefix of the owner tag exported to every process tree (the base directory).
    pub tag_prefix: String,
    /// What every supervisor publishes, by id, for `depends_on`.
    pub peers: Arc<Peers>,
    /// The manager's area in the cgroup v2 hierarchy, when it has one: each run gets a
    /// cgroup there.
    pub cgroups: Option<rl::CgroupRoot>,
    /// This boot's identity, recorded with every run (start times compare only within
    /// one boot).
    pub boot_id: Option<String>,
}

impl Context {
    /// The owner tag of process `id`'s tree (see `hsu_process::TAG_ENV`).
    pub fn tag(&self, id: &str) -> String {
        format!("{}#{id}", self.tag_prefix)
    }
}

type Reply = oneshot::Sender<Result<(), ControlError>>;

/// Identifies one run (one spawn) of a process; reports name the run they are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId(pub u64);

/// Why a supervisor is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The manager shuts down.
    Shutdown,
    /// A reload removed the process from the config.
    Removed,
}

impl Ending {
    fn reason(self) -> &'static str {
        match self {
            Ending::Shutdown => "manager shutting down",
            Ending::Removed => "reload: removed from the config",
        }
    }
}

/// A control request. Each carries the channel its outcome is sent on.
enum Command {
    /// Start a stopped or failed process. `by_hand` clears the stopped-by-hand mark and
    /// closes the breaker.
    Start {
        why: String,
        by_hand: bool,
        reply: Reply,
    },
    /// Stop; `force` SIGKILLs the tree at once (also ending a graceful stop in progress).
    Stop {
        force: bool,
        why: String,
        reply: Reply,
    },
    /// Stop if running, then start; `force` ignores an open breaker.
    Restart { force: bool, reply: Reply },
    /// A reload changed the definition: stop the old run, then start the new definition
    /// when `start`.
    Replace {
        def: Box<ProcessDefinition>,
        control: Box<ControlSpec>,
        start: bool,
        reply: Reply,
    },
    /// Stop (the stop bounded by `deadline`) and end the supervisor.
    End {
        why: Ending,
        deadline: Instant,
        reply: Reply,
    },
    /// End the supervisor and leave the process running, recorded in `state.json` for
    /// the next manager to adopt.
    Detach { reply: Reply },
}

/// What a monitor (health checks, resource limits) tells the supervisor about a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Health checks failed past their threshold: restart under the health budget.
    Unhealthy {
        /// What failed, in words.
        reason: String,
    },
    /// A resource limit with policy `restart` was exceeded: restart under the resource
    /// budget.
    LimitExceeded {
        /// Which limit and by how much, in words.
        reason: String,
    },
}

/// One input of the loop. The loop handles exactly one at a time, to completion.
enum Input {
    Command(Command),
    Exited {
        run: RunId,
        exit: std::io::Result<ExitInfo>,
    },
    Report {
        run: RunId,
        report: Report,
    },
    /// A health check of a run completed.
    Probed {
        run: RunId,
        outcome: ProbeOutcome,
    },
    /// An integrated process answered (or did not) the Shutdown call of a stop.
    ShutdownAnswered {
        run: RunId,
        result: Result<(), String>,
    },
    Deps(Verdict),
    DepRestarted(String),
    LogReady(RunId),
    /// A resource sample of a run's tree.
    Usage {
        run: RunId,
        sample: rl::Sample,
    },
    /// The earliest deadline of the current phase has passed.
    Timer,
}

/// What the supervisor's own tasks send it: exits from the waiters, outcomes from the
/// health checker, answers to the Shutdown call, what its dependencies have reached.
pub(crate) enum Internal {
    Exited(RunId, std::io::Result<ExitInfo>),
    Probed(RunId, ProbeOutcome),
    ShutdownAnswered(RunId, Result<(), String>),
    /// The dependencies' conditions, when that changed.
    Deps(Verdict),
    /// A dependency whose `restart: propagate` was asked for started a new run.
    DepRestarted(String),
    /// A line of the run's output matched `ready_log_line`.
    LogReady(RunId),
}

/// What callers send: commands and reports (exits come from the supervisor's own
/// waiters on a channel of their own).
enum Message {
    Command(Command),
    Report { run: RunId, report: Report },
    LogReady(RunId),
    Usage { run: RunId, sample: rl::Sample },
}

/// What the supervisor publishes after every input.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The status as the API shows it.
    pub status: ProcessStatus,
    /// The current run, while a main process runs.
    pub run: Option<RunId>,
    /// What the health checks found (of the current run, or of the last one).
    pub health: HealthReport,
    /// A line of the current run's output matched `ready_log_line`.
    pub log_ready: bool,
    /// While waiting to start: the dependencies not met yet, as `id (condition)`.
    pub waiting_for: Vec<String>,
    /// What status shows of its limits.
    pub limits: LimitsView,
}

/// The caller's side of one supervisor task. Cheap to clone.
#[derive(Clone)]
pub struct ProcessHandle {
    id: String,
    messages: mpsc::UnboundedSender<Message>,
    status: watch::Receiver<Published>,
}

impl ProcessHandle {
    /// Spawns the supervisor task for a managed process definition; the process stays
    /// `stopped` (for `reason`) until a start command.
    pub fn spawn(
        def: ProcessDefinition,
        control: ControlSpec,
        ctx: Arc<Context>,
        reason: &str,
    ) -> Self {
        Self::spawn_restored(def, control, ctx, reason, None)
    }

    /// [`Self::spawn`], taking back what `state.json` recorded of the process: its
    /// restart count and bookkeeping (an open breaker stays open), and its run when that
    /// is still alive (same PID, same start time, same boot), which is adopted rather
    /// than started again.
    pub fn spawn_restored(
        def: ProcessDefinition,
        control: ControlSpec,
        ctx: Arc<Context>,
        reason: &str,
        restored: Option<ProcessRecord>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let mut initial = ProcessStatus::new(&def.id, def.process_type);
        initial.reason = reason.to_owned();
        let (status_tx, status_rx) = watch::channel(Published {
            status: initial,
            run: None,
            health: HealthReport::unknown(),
            log_ready: false,
            waiting_for: Vec::new(),
            limits: LimitsView::default(),
        });
        let supervisor = Supervisor {
            machine: StateMachine::stopped_because(&def.id, reason),
            tracker: RestartTracker::new(control.restart_policy, control.restart.clone()),
            tag: ctx.tag(&def.id),
            def,
            control,
            ctx,
            phase: Phase::Stopped { leftovers: None },
            runs: 0,
            replacement: None,
            restart_count: 0,
            last_exit: None,
            internal: exit_tx,
            health: HealthTracker::new(1, 1),
            checker: None,
            gate: None,
            verdict: Verdict::Met,
            deps_task: None,
            log_ready: false,
            adjustments: rl::Adjustments::default(),
            run_limits: None,
            cgroup_kept: false,
            alerts: std::collections::BTreeMap::new(),
            alerts_total: 0,
            status_tx,
            ended: false,
            restored,
            persisted: None,
            def_json: None,
            detached: false,
            removed: false,
        };
        let id = supervisor.def.id.clone();
        supervisor.ctx.peers.insert(&id, status_rx.clone());
        tokio::spawn(supervisor.run(rx, exit_rx));
        ProcessHandle {
            id,
            messages: tx,
            status: status_rx,
        }
    }

    /// Whether both handles reach the same supervisor task.
    pub fn same_supervisor(&self, other: &ProcessHandle) -> bool {
        self.messages.same_channel(&other.messages)
    }

    /// A status watch, for callers that want to await changes.
    pub fn watch(&self) -> watch::Receiver<Published> {
        self.status.clone()
    }

    /// The current run, while a main process runs (monitors name it in their reports).
    pub fn current_run(&self) -> Option<RunId> {
        self.status.borrow().run
    }

    /// What the health checks found.
    pub fn health(&self) -> HealthReport {
        self.status.borrow().health.clone()
    }

    /// A resource sample of `run`'s tree, to judge against the limits; one about an
    /// earlier run is ignored.
    pub fn report_usage(&self, run: RunId, sample: rl::Sample) {
        let _ = self.messages.send(Message::Usage { run, sample });
    }

    /// A line of `run`'s output matched its `ready_log_line` (the condition `log_ready`
    /// of its dependents); one about an earlier run is ignored.
    pub fn log_ready(&self, run: RunId) {
        let _ = self.messages.send(Message::LogReady(run));
    }

    /// Hands a monitor's report to the supervisor; one about an earlier run is ignored.
    pub fn report(&self, run: RunId, report: Report) {
        let _ = self.messages.send(Message::Report { run, report });
    }

    async fn call(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.messages
            .send(Message::Command(make(reply)))
            .map_err(|_| ControlError::Gone(self.id.clone()))?;
        rx.await.map_err(|_| ControlError::Gone(self.id.clone()))?
    }

    /// Starts the process as the manager's own decision (at launch, or added by a
    /// reload), not an operator's: the stopped-by-hand mark is left alone.
    pub async fn launch(&self, why: &str) -> Result<(), ControlError> {
        let why = why.to_owned();
        self.call(|reply| Command::Start {
            why,
            by_hand: false,
            reply,
        })
        .await
    }

    /// A reload changed the definition: the old run stops (the whole tree gone) before
    /// the new definition starts, when `start`.
    pub async fn replace(
        &self,
        def: ProcessDefinition,
        control: ControlSpec,
        start: bool,
    ) -> Result<(), ControlError> {
        self.call(|reply| Command::Replace {
            def: Box::new(def),
            control: Box::new(control),
            start,
            reply,
        })
        .await
    }

    /// Stops the process as requested, saying why (e.g. with a dependency); it stays
    /// stopped until started by hand.
    pub async fn stop_because(&self, force: bool, why: &str) -> Result<(), ControlError> {
        let why = why.to_owned();
        self.call(|reply| Command::Stop { force, why, reply }).await
    }

    /// Ends the supervisor and leaves the process running for the next manager.
    pub async fn detach(&self) -> Result<(), ControlError> {
        self.call(|reply| Command::Detach { reply }).await
    }

    /// Stops the process (the stop bounded by `deadline`) and ends the supervisor.
    pub async fn end(&self, why: Ending, deadline: Instant) -> Result<(), ControlError> {
        self.call(|reply| Command::End {
            why,
            deadline,
            reply,
        })
        .await
    }
}

impl ProcessControl for ProcessHandle {
    fn id(&self) -> &str {
        &self.id
    }

    fn status(&self) -> ProcessStatus {
        self.status.borrow().status.clone()
    }

    async fn start(&self) -> Result<(), ControlError> {
        self.call(|reply| Command::Start {
            why: "started by request".into(),
            by_hand: true,
            reply,
        })
        .await
    }

    async fn stop(&self, force: bool) -> Result<(), ControlError> {
        self.stop_because(force, "stopped by request").await
    }

    async fn restart(&self, force: bool) -> Result<(), ControlError> {
        self.call(|reply| Command::Restart { force, reply }).await
    }
}

/// One spawn of the process, while its main process lives.
#[derive(Debug, Clone)]
struct Run {
    id: RunId,
    pid: u32,
    started_at: SystemTime,
    spawned: Instant,
    /// The health check this run is probed with; `None`: liveness only.
    check: Option<HealthCheckKind>,
    /// It passed its first health check (at once for liveness): shown `running`, not
    /// `starting`.
    ready: bool,
    /// Failed checks before this moment do not count (the startup grace period).
    grace_until: Instant,
    /// integrated_managed: the port it was given.
    port: Option<u16>,
    /// The run's own cgroup, when the manager has a cgroup area.
    cgroup: Option<Arc<rl::Cgroup>>,
    /// When the run will have been up `reset_after` (forgets earlier failures); `None`
    /// once that has happened.
    stable_at: Option<Instant>,
    /// When its PID's process started (ticks after boot): with the PID, what a later
    /// manager adopts it by. `None` when it could not be read (then it is not recorded).
    start_time: Option<u64>,
    /// Spawned by an earlier manager and adopted: its exit status cannot be known.
    adopted: bool,
}

/// A restart waiting for its time.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    wall: SystemTime,
    /// The trial start of an open breaker (half-open), not a backoff restart.
    trial: bool,
}

/// What happens once a teardown has brought the whole tree down.
enum Then {
    /// Nothing: the process stays where it is (stopped, or failed waiting to restart).
    Stay,
    /// Start a new run; the replies are sent once it has been spawned.
    Start {
        why: String,
        reset: bool,
        replies: Vec<Reply>,
    },
    /// End the supervisor; the replies are sent as it ends.
    End { replies: Vec<Reply> },
}

/// A tree being brought down: the stop signal has been sent; SIGKILL follows at
/// `kill_at`; done when the main process's exit is known and nothing of the tree lives.
struct Teardown {
    run: Run,
    /// The main process's exit, once the kernel reported it.
    exit: Option<ExitInfo>,
    why: String,
    began: Instant,
    /// The stop signal is still to be sent, at this moment (an integrated process was
    /// asked to shut down over its API first); `None` once sent, or never needed.
    signal_at: Option<Instant>,
    /// The stop signal was sent.
    signalled: bool,
    /// The main process exited after the Shutdown call, before any signal.
    exited_on_request: bool,
    /// SIGKILL was asked for (a forced stop, `immediate_kill`), not reached by waiting.
    forced: bool,
    graceful: Duration,
    kill_at: Instant,
    killed_at: Option<Instant>,
    /// When to look at the tree next (while members other than the main process remain,
    /// or after SIGKILL).
    check_at: Option<Instant>,
    /// The tree had members besides the main process, or needed SIGKILL: it is believed
    /// gone only after two looks in a row find nothing (a member may be mid-fork).
    crowded: bool,
    /// The previous look found nothing alive.
    seen_empty: bool,
    /// Stop callers, answered when the tree is gone.
    waiters: Vec<Reply>,
    then: Then,
}

/// A start held until the dependencies meet their conditions.
#[derive(Debug, Clone)]
struct Gate {
    why: String,
    /// Forget earlier failures when it starts (a start by hand).
    reset: bool,
    /// When the wait began (dependency timeouts count from here).
    since: Instant,
}

/// Each visible state with the data only it has (see the module docs).
enum Phase {
    Stopped {
        leftovers: Option<Teardown>,
    },
    /// `starting`, waiting for its dependencies: nothing runs yet.
    Waiting(Gate),
    Running(Run),
    Stopping(Teardown),
    Failed {
        retry: Option<Retry>,
        leftovers: Option<Teardown>,
    },
}

impl Phase {
    /// The visible state of this phase: a run that has not passed its first health check
    /// yet is `starting`.
    fn state(&self) -> ProcessState {
        match self {
            Phase::Stopped { .. } => ProcessState::Stopped,
            Phase::Waiting(_) => ProcessState::Starting,
            Phase::Running(r) if r.ready => ProcessState::Running,
            Phase::Running(_) => ProcessState::Starting,
            Phase::Stopping(_) => ProcessState::Stopping,
            Phase::Failed { .. } => ProcessState::Failed,
        }
    }

    fn teardown_mut(&mut self) -> Option<&mut Teardown> {
        match self {
            Phase::Stopping(t) => Some(t),
            Phase::Stopped { leftovers } | Phase::Failed { leftovers, .. } => leftovers.as_mut(),
            Phase::Running(_) | Phase::Waiting(_) => None,
        }
    }

    fn teardown(&self) -> Option<&Teardown> {
        match self {
            Phase::Stopping(t) => Some(t),
            Phase::Stopped { leftovers } | Phase::Failed { leftovers, .. } => leftovers.as_ref(),
            Phase::Running(_) | Phase::Waiting(_) => None,
        }
    }
}

struct Supervisor {
    def: ProcessDefinition,
    control: ControlSpec,
    ctx: Arc<Context>,
    tag: String,
    machine: StateMachine,
    phase: Phase,
    tracker: RestartTracker,
    /// Runs spawned so far (the next run's id).
    runs: u64,
    /// A definition from a reload, applied once the old run is gone.
    replacement: Option<Box<(ProcessDefinition, ControlSpec)>>,
    /// Automatic restarts since the manager started supervising it.
    restart_count: u32,
    last_exit: Option<LastExit>,
    /// Where the supervisor's own tasks (exit waiters, the health checker, Shutdown
    /// calls) send.
    internal: mpsc::UnboundedSender<Internal>,
    /// The verdict of the current (or last) run's health checks.
    health: HealthTracker,
    /// The task probing the current run, if it is probed.
    checker: Option<(RunId, AbortHandle)>,
    /// A start waiting for the dependencies (while `Waiting`, or `Failed` because a
    /// dependency failed): it goes ahead once they are met.
    gate: Option<Gate>,
    /// What the dependencies have reached, as last reported (`Met` with none).
    verdict: Verdict,
    /// The task watching the dependencies, while there are any.
    deps_task: Option<AbortHandle>,
    /// A line of the current run's output matched `ready_log_line`.
    log_ready: bool,
    /// `restart_adjusted` restarts so far, by resource: they raise the next run's limits.
    adjustments: rl::Adjustments,
    /// The current run's limit state.
    run_limits: Option<(RunId, RunLimits)>,
    /// The process has a cgroup (kept between runs, removed once it is stopped).
    cgroup_kept: bool,
    /// Crossed limits with policy `alert`, by resource, until back under.
    alerts: std::collections::BTreeMap<&'static str, String>,
    alerts_total: u64,
    status_tx: watch::Sender<Published>,
    /// Set when the supervisor has finished its last teardown and must return.
    ended: bool,
    /// What `state.json` held for the process when the manager started (taken at the
    /// supervisor's start).
    restored: Option<ProcessRecord>,
    /// What was last recorded in `state.json` (see [`Supervisor::persist`]).
    persisted: Option<PersistKey>,
    /// The definition as JSON, recorded with each run (made once per definition).
    def_json: Option<hsu_process_file::Definition>,
    /// Ended by `Detach`: the process runs on and its cgroup stays.
    detached: bool,
    /// Ended because a reload removed it: its `state.json` record goes too.
    removed: bool,
}

/// What `state.json` holds of a supervisor, in a form cheap to compare after each step.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PersistKey {
    tracker: u64,
    run: Option<RunId>,
    restart_count: u32,
    retry: Option<SystemTime>,
}

/// Resolves at `at`, or never when there is no deadline.
async fn deadline(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn answer(replies: Vec<Reply>, result: &Result<(), ControlError>) {
    for r in replies {
        let _ = r.send(result.clone());
    }
}

impl Supervisor {
    fn id(&self) -> &str {
        &self.def.id
    }

    async fn run(
        mut self,
        mut messages: mpsc::UnboundedReceiver<Message>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        self.watch_deps();
        if let Some(record) = self.restored.take() {
            let restore = std::panic::AssertUnwindSafe(|| self.restore(record, Instant::now()));
            if let Err(panic) = std::panic::catch_unwind(restore) {
                self.recover(panic_message(panic.as_ref()));
            }
        }
        self.publish();
        self.persist();
        let mut callers_gone = false;
        while !self.ended {
            let wake = self.next_deadline();
            let input = tokio::select! {
                // Exits first: a command that arrives with an exit must see the exit.
                biased;
                Some(int) = internal.recv() => match int {
                    Internal::Exited(run, exit) => Input::Exited { run, exit },
                    Internal::Probed(run, outcome) => Input::Probed { run, outcome },
                    Internal::ShutdownAnswered(run, result) => {
                        Input::ShutdownAnswered { run, result }
                    }
                    Internal::Deps(verdict) => Input::Deps(verdict),
                    Internal::DepRestarted(id) => Input::DepRestarted(id),
                    Internal::LogReady(run) => Input::LogReady(run),
                },
                msg = messages.recv(), if !callers_gone => match msg {
                    Some(Message::Command(c)) => Input::Command(c),
                    Some(Message::Report { run, report }) => Input::Report { run, report },
                    Some(Message::LogReady(run)) => Input::LogReady(run),
                    Some(Message::Usage { run, sample }) => Input::Usage { run, sample },
                    None => {
                        // Every handle is gone: nobody can stop the process any more.
                        callers_gone = true;
                        let (reply, _) = oneshot::channel();
                        let deadline = Instant::now() + self.control.graceful_timeout;
                        Input::Command(Command::End { why: Ending::Shutdown, deadline, reply })
                    }
                },
                () = deadline(wake) => Input::Timer,
            };
            // A bug in one step must not leave the process unsupervised: the step is
            // synchronous, so a panic in it is caught here, reported, and the loop goes
            // on with the process where it is.
            let step = std::panic::AssertUnwindSafe(|| self.step(input, Instant::now()));
            if let Err(panic) = std::panic::catch_unwind(step) {
                self.recover(panic_message(panic.as_ref()));
            }
            let publish = std::panic::AssertUnwindSafe(|| self.publish());
            if let Err(panic) = std::panic::catch_unwind(publish) {
                tracing::error!(
                    id = self.id(),
                    "publishing status failed: {}",
                    panic_message(panic.as_ref())
                );
            }
            self.persist();
        }
        if let Some((_, checker)) = self.checker.take() {
            checker.abort();
        }
        if let Some(task) = self.deps_task.take() {
            task.abort();
        }
        self.ctx
            .peers
            .remove_if(self.id(), &self.status_tx.subscribe());
        if !self.detached {
            self.remove_cgroup();
        }
        if self.removed {
            self.ctx.durable.remove(self.id());
        }
    }

    /// (Re)starts the task watching the dependencies of the current definition; until it
    /// reports, none counts as met.
    fn watch_deps(&mut self) {
        if let Some(task) = self.deps_task.take() {
            task.abort();
        }
        let deps = self.def.depends_on.clone();
        if deps.is_empty() {
            self.verdict = Verdict::Met;
            return;
        }
        self.verdict = Verdict::Waiting(
            deps.iter()
                .map(|d| (d.clone(), format!("{} ({})", d.id, d.condition.as_str())))
                .collect(),
        );
        let task = tokio::spawn(deps::watch(
            deps,
            self.ctx.peers.clone(),
            self.internal.clone(),
        ));
        self.deps_task = Some(task.abort_handle());
    }

    /// After a panic in a step: report it (journal, log) and bring the visible state back
    /// in line with the phase, which holds what is known about the process.
    fn recover(&mut self, message: String) {
        tracing::error!(
            id = self.id(),
            "supervisor error (a bug): {message}; supervision goes on"
        );
        self.emit(EventKind::SupervisorFailed {
            message: message.clone(),
        });
        let expected = self.phase.state();
        if self.machine.state() == expected {
            return;
        }
        let reason = format!("supervisor error: {message}");
        let events = self.ctx.events.clone();
        if self
            .machine
            .transition(expected, reason.as_str(), events.as_ref())
            .is_err()
        {
            // E.g. starting -> stopped is no move of its own: through failed.
            let _ = self
                .machine
                .transition(ProcessState::Failed, reason.as_str(), events.as_ref());
            let _ = self.machine.transition(expected, reason, events.as_ref());
        }
    }

    /// The whole behaviour: one input, in the current phase.
    fn step(&mut self, input: Input, now: Instant) {
        match input {
            Input::Command(c) => self.on_command(c, now),
            Input::Exited { run, exit } => self.on_exit(run, exit, now),
            Input::Report { run, report } => self.on_report(run, report, now),
            Input::Probed { run, outcome } => self.on_probed(run, outcome, now),
            Input::ShutdownAnswered { run, result } => self.on_shutdown_answered(run, result, now),
            Input::Deps(verdict) => self.on_deps(verdict, now),
            Input::DepRestarted(id) => self.on_dep_restarted(&id, now),
            Input::Usage { run, sample } => self.on_usage(run, sample, now),
            Input::LogReady(run) => {
                if matches!(&self.phase, Phase::Running(r) if r.id == run) {
                    self.log_ready = true;
                }
            }
            Input::Timer => self.on_timer(now),
        }
        // A deadline the input made due (a forced stop, an exit that may have emptied
        // the tree, a restart with no delay) is acted on at once, not a timer tick later.
        let now = Instant::now().max(now);
        if self.next_deadline().is_some_and(|at| at <= now) {
            self.on_timer(now);
        }
        self.sync_checker();
        if self.cgroup_kept {
            let settled = matches!(
                self.phase,
                Phase::Stopped { leftovers: None }
                    | Phase::Failed {
                        retry: None,
                        leftovers: None
                    }
            );
            if settled {
                self.remove_cgroup();
            }
        }
    }

    /// Removes the process's cgroup (empty by now), if it has one.
    /// Takes back what `state.json` recorded (see [`ProcessHandle::spawn_restored`]).
    fn restore(&mut self, record: ProcessRecord, now: Instant) {
        let wall = SystemTime::now();
        self.restart_count = record.restart_count;
        if let Some(r) = &record.restarts {
            self.tracker.restore(r, now.into_std(), wall);
        }
        let same_boot = |r: &&RunRecord| r.boot_id.is_some() && r.boot_id == self.ctx.boot_id;
        if let Some(run) = record.run.as_ref().filter(same_boot) {
            match self.ctx.platform.adopt(run.pid, run.start_time) {
                Ok(exit) => {
                    let changed = definition_changed(run.definition.as_ref(), &self.def);
                    self.adopt_run(run, exit, now, wall);
                    if record.stopped_by_hand() {
                        let why = "stopped by hand (recorded by the earlier manager)";
                        self.begin_stop(why, Then::Stay, false, now);
                    } else if changed {
                        let why = "definition changed while no manager ran";
                        let then = Then::Start {
                            why: why.into(),
                            reset: false,
                            replies: Vec::new(),
                        };
                        self.begin_stop(why, then, false, now);
                    }
                    return;
                }
                Err(e) => tracing::info!(
                    id = self.id(),
                    pid = run.pid,
                    "the recorded run is not adopted: {e}"
                ),
            }
        } else if let Some(run) = &record.run {
            tracing::info!(
                id = self.id(),
                pid = run.pid,
                "the recorded run is from another boot: not adopted"
            );
        }
        if !record.stopped_by_hand() && self.tracker.circuit() == Circuit::Open {
            let restarts = record.restarts.unwrap_or_default();
            let retry = restarts
                .next_start_at_ms
                .filter(|_| !self.tracker.tuning().cooldown.is_zero())
                .map(|ms| {
                    let due = UNIX_EPOCH + Duration::from_millis(ms);
                    Retry {
                        at: now + due.duration_since(wall).unwrap_or_default(),
                        wall: due.max(wall),
                        trial: true,
                    }
                });
            self.machine = StateMachine::restored(
                self.id(),
                ProcessState::Failed,
                "circuit breaker open (recorded by the earlier manager)",
            );
            self.phase = Phase::Failed {
                retry,
                leftovers: None,
            };
        }
    }

    /// Supervises a run left by an earlier manager as if it had spawned it: its exit is
    /// watched through a pidfd, its output pipes are read again, its cgroup (found by the
    /// process's id) holds its tree, its checks and limits apply.
    fn adopt_run(&mut self, rec: &RunRecord, exit: ExitFuture, now: Instant, wall: SystemTime) {
        let pid = rec.pid;
        let started_at = UNIX_EPOCH + Duration::from_millis(rec.started_at_ms);
        let age = wall.duration_since(started_at).unwrap_or_default();
        let spawned = now.checked_sub(age).unwrap_or(now);
        self.runs += 1;
        let run_id = RunId(self.runs);
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let _ = internal.send(Internal::Exited(run_id, exit.await));
        });
        let events = self.ctx.events.clone();
        if let Err(e) = self.machine.transition(
            ProcessState::Starting,
            format!("adopting pid {pid} from an earlier manager"),
            events.as_ref(),
        ) {
            tracing::error!("{e}");
        }
        let limits = crate::limits::convert(&self.control.limits).adjusted(&self.adjustments);
        let cgroup = self
            .ctx
            .cgroups
            .as_ref()
            .and_then(|area| area.open(self.id()).ok().flatten())
            .map(Arc::new);
        self.cgroup_kept = cgroup.is_some();
        let run_limits = RunLimits::new(limits, cgroup.clone());
        if let Some(cg) = &cgroup {
            if let Err(e) = cg.apply(&run_limits.plan) {
                tracing::warn!(id = self.id(), "cannot set the run's cgroup limits ({e})");
            }
        }
        let lc = &self.def.log_collection;
        let streams = [
            (Stream::Stdout, lc.capture_stdout),
            (Stream::Stderr, lc.capture_stderr),
        ];
        for (stream, wanted) in streams {
            if !(wanted && lc.enabled) {
                continue;
            }
            match self.ctx.capture.reconnect(self.id(), stream) {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    id = self.id(),
                    "its {stream:?} pipe is gone: that output is no longer captured"
                ),
                Err(e) => tracing::warn!(id = self.id(), "cannot read its {stream:?} again: {e}"),
            }
        }
        self.watch_ready_line(run_id);
        self.tracker.on_start(spawned.into_std());
        let check = self.health_check(rec.port);
        let grace = self.startup_grace();
        let run = Run {
            id: run_id,
            pid,
            started_at,
            spawned,
            ready: check.is_none(),
            grace_until: spawned + grace,
            check,
            port: rec.port,
            cgroup,
            stable_at: Some(spawned + self.tracker.tuning().reset_after),
            start_time: Some(rec.start_time),
            adopted: true,
        };
        self.run_limits = Some((run_id, run_limits));
        let hc = &self.def.health_check;
        self.health = HealthTracker::new(hc.failure_threshold, hc.success_threshold);
        self.emit(EventKind::Adopted {
            pid,
            uptime_ms: age.as_millis().try_into().unwrap_or(u64::MAX),
        });
        tracing::info!(id = self.id(), pid, "adopted from an earlier manager");
        let reason = match &run.check {
            None => format!("adopted (pid {pid}) from an earlier manager"),
            Some(kind) => format!(
                "adopted (pid {pid}) from an earlier manager; waiting for the first passing {} check",
                check_name(kind)
            ),
        };
        self.enter(Phase::Running(run), reason);
    }

    /// Records in `state.json` what a later manager needs, when that changed: the live
    /// run, the restart count and bookkeeping, a restart waiting for its time. Called
    /// after every step; costs a comparison unless something changed, and the write
    /// itself happens on the file writer's thread.
    fn persist(&mut self) {
        let alive = match &self.phase {
            Phase::Running(r) => Some(r.clone()),
            phase => phase
                .teardown()
                .filter(|t| t.exit.is_none())
                .map(|t| t.run.clone()),
        };
        let retry = match &self.phase {
            Phase::Failed { retry: Some(r), .. } => Some(*r),
            _ => None,
        };
        let key = PersistKey {
            tracker: self.tracker.changes(),
            run: alive.as_ref().map(|r| r.id),
            restart_count: self.restart_count,
            retry: retry.map(|r| r.wall),
        };
        if self.persisted == Some(key) {
            return;
        }
        self.persisted = Some(key);
        let run = alive.and_then(|r| self.run_record(&r));
        let mut restarts = self
            .tracker
            .snapshot(Instant::now().into_std(), SystemTime::now());
        if let Some(r) = retry {
            restarts.next_start_at_ms = Some(unix_ms(r.wall));
            restarts.trial = r.trial;
        }
        let clean = restarts.circuit == Circuit::Closed.as_str()
            && restarts.next_start_at_ms.is_none()
            && restarts
                .budgets
                .iter()
                .all(|b| b.consecutive == 0 && b.recent_ms.is_empty());
        let restart_count = self.restart_count;
        self.ctx.durable.update(self.id(), move |rec| {
            rec.run = run;
            rec.restart_count = restart_count;
            rec.restarts = (!clean).then_some(restarts);
        });
    }

    /// What `state.json` keeps of a live run; `None` without a start time (such a run
    /// could never be told from a later process with its PID).
    fn run_record(&mut self, r: &Run) -> Option<RunRecord> {
        let start_time = r.start_time?;
        if self.def_json.is_none() {
            self.def_json = hsu_process_file::Definition::of(&self.def);
        }
        Some(RunRecord {
            pid: r.pid,
            start_time,
            boot_id: self.ctx.boot_id.clone(),
            started_at_ms: unix_ms(r.started_at),
            port: r.port,
            executable: self.control.executable.clone(),
            stop_signal: self.control.stop_signal.name().to_owned(),
            graceful_timeout_ms: self.control.graceful_timeout.as_millis() as u64,
            definition: self.def_json.clone(),
        })
    }

    fn remove_cgroup(&mut self) {
        self.cgroup_kept = false;
        if let Some(Ok(Some(cg))) = self.ctx.cgroups.as_ref().map(|a| a.open(self.id())) {
            if let Err(e) = cg.remove() {
                tracing::debug!(id = self.id(), "its cgroup stays: {e}");
            }
        }
    }

    /// The earliest moment the loop must act without an input.
    fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Running(run) => {
                let tick = self
                    .run_limits
                    .as_ref()
                    .filter(|(at, _)| *at == run.id)
                    .and_then(|(_, l)| l.next_tick())
                    .map(Instant::from_std);
                match (run.stable_at, tick) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Stopping(t) | Phase::Stopped { leftovers: Some(t) } => Some(t.next_deadline()),
            Phase::Failed {
                leftovers: Some(t), ..
            } => Some(t.next_deadline()),
            Phase::Failed {
                retry,
                leftovers: None,
            } => retry.map(|r| r.at),
            Phase::Stopped { leftovers: None } => None,
            Phase::Waiting(gate) => self.gate_deadline(gate),
        }
    }

    /// When the first unmet dependency with a timeout runs out of time.
    fn gate_deadline(&self, gate: &Gate) -> Option<Instant> {
        let Verdict::Waiting(unmet) = &self.verdict else {
            return None;
        };
        unmet
            .iter()
            .filter_map(|(d, _)| d.timeout.map(|t| gate.since + t))
            .min()
    }

    // ---- inputs ------------------------------------------------------------------

    fn on_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Start {
                why,
                by_hand,
                reply,
            } => {
                if by_hand {
                    self.ctx.durable.set_stopped_by_hand(self.id(), false);
                }
                self.request_start(why, by_hand, reply, now);
            }
            Command::Stop { force, why, reply } => {
                self.ctx.durable.set_stopped_by_hand(self.id(), true);
                self.request_stop(&why, force, reply, now);
            }
            Command::Restart { force, reply } => {
                if self.tracker.circuit() == Circuit::Open && !force {
                    let _ = reply.send(Err(ControlError::Conflict {
                        id: self.id().to_owned(),
                        message: "circuit breaker is open; restart with --force to override".into(),
                    }));
                    return;
                }
                self.ctx.durable.set_stopped_by_hand(self.id(), false);
                if force {
                    self.tracker.reset();
                }
                match &mut self.phase {
                    Phase::Running(_) => {
                        let then = Then::Start {
                            why: "restarted by request".into(),
                            reset: false,
                            replies: vec![reply],
                        };
                        self.begin_stop("restart requested", then, false, now);
                    }
                    _ => self.request_start("restarted by request".into(), false, reply, now),
                }
            }
            Command::Replace {
                def,
                control,
                start,
                reply,
            } => {
                const WHY: &str = "reload: definition changed";
                self.replacement = Some(Box::new((*def, *control)));
                if let Phase::Waiting(gate) = &self.phase {
                    // Nothing runs: the new definition applies now, and the wait starts
                    // over on its dependencies.
                    let why = gate.why.clone();
                    self.absorb_replacement();
                    self.enter(Phase::Stopped { leftovers: None }, WHY);
                    if start {
                        self.launch_run(why, true, now);
                    }
                    let _ = reply.send(Ok(()));
                    return;
                }
                match &mut self.phase {
                    Phase::Running(_) if start => {
                        let then = Then::Start {
                            why: WHY.into(),
                            reset: true,
                            replies: vec![reply],
                        };
                        self.begin_stop(WHY, then, false, now);
                    }
                    Phase::Running(_) => {
                        self.begin_stop(WHY, Then::Stay, false, now);
                        if let Phase::Stopping(t) = &mut self.phase {
                            t.waiters.push(reply);
                        }
                    }
                    _ if start => self.request_start(WHY.into(), true, reply, now),
                    // Not to be started: the new definition waits for the old tree (if
                    // any) to be gone, and a failed process is stopped.
                    Phase::Failed { .. } => self.request_stop(WHY, false, reply, now),
                    phase => match phase.teardown_mut() {
                        Some(t) => t.waiters.push(reply),
                        None => {
                            self.absorb_replacement();
                            let _ = reply.send(Ok(()));
                        }
                    },
                }
            }
            Command::End {
                why,
                deadline,
                reply,
            } => self.request_end(why, deadline, reply, now),
            Command::Detach { reply } => {
                self.release_throttle();
                if let Some((_, checker)) = self.checker.take() {
                    checker.abort();
                }
                self.detached = true;
                self.ended = true;
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn request_start(&mut self, why: String, reset: bool, reply: Reply, now: Instant) {
        let gone = self.gone_error();
        match &mut self.phase {
            Phase::Running(_) | Phase::Waiting(_) => {
                let _ = reply.send(Ok(()));
            }
            Phase::Stopped { leftovers: None }
            | Phase::Failed {
                leftovers: None, ..
            } => {
                self.launch_run(why, reset, now);
                let _ = reply.send(Ok(()));
            }
            Phase::Stopping(t)
            | Phase::Stopped { leftovers: Some(t) }
            | Phase::Failed {
                leftovers: Some(t), ..
            } => match &mut t.then {
                // Held until the old tree is gone: never two instances at once.
                Then::Start { replies, .. } => replies.push(reply),
                Then::Stay => {
                    t.then = Then::Start {
                        why,
                        reset,
                        replies: vec![reply],
                    }
                }
                Then::End { .. } => {
                    let _ = reply.send(Err(gone));
                }
            },
        }
    }

    fn request_stop(&mut self, why: &str, force: bool, reply: Reply, now: Instant) {
        self.gate = None;
        if let Phase::Waiting(_) = &self.phase {
            // Nothing runs yet: stopped at once.
            self.enter(Phase::Stopped { leftovers: None }, why);
        }
        if let Phase::Failed { leftovers, .. } = &mut self.phase {
            // Waiting to restart (or given up): stopped from here, leftovers included.
            let leftovers = leftovers.take();
            self.enter(Phase::Stopped { leftovers }, why);
        }
        match &mut self.phase {
            Phase::Running(_) => {
                self.begin_stop(why, Then::Stay, force, now);
                if let Phase::Stopping(t) = &mut self.phase {
                    t.waiters.push(reply);
                }
            }
            Phase::Stopped { leftovers: None } => {
                self.absorb_replacement();
                let _ = reply.send(Ok(()));
            }
            Phase::Stopping(t)
            | Phase::Stopped { leftovers: Some(t) }
            | Phase::Failed {
                leftovers: Some(t), ..
            } => {
                // Join the stop in progress. A start that was waiting for it is cancelled
                // by this later stop (its callers learn the outcome: stopped); an end
                // stays (the tree goes either way, which is what this caller asked).
                if let Then::Start { .. } = t.then {
                    if let Then::Start { replies, .. } = std::mem::replace(&mut t.then, Then::Stay)
                    {
                        answer(replies, &Ok(()));
                    }
                }
                t.waiters.push(reply);
                if force {
                    t.force(now);
                }
            }
            // Not reached: a failed or waiting process was moved to stopped above.
            Phase::Failed {
                leftovers: None, ..
            }
            | Phase::Waiting(_) => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn request_end(&mut self, why: Ending, deadline: Instant, reply: Reply, now: Instant) {
        self.gate = None;
        self.removed = why == Ending::Removed;
        if let Phase::Waiting(_) = &self.phase {
            self.enter(Phase::Stopped { leftovers: None }, why.reason());
        }
        if let Phase::Failed { leftovers, .. } = &mut self.phase {
            let leftovers = leftovers.take();
            self.enter(Phase::Stopped { leftovers }, why.reason());
        }
        let gone = self.gone_error();
        match &mut self.phase {
            Phase::Running(_) => {
                let then = Then::End {
                    replies: vec![reply],
                };
                self.begin_stop(why.reason(), then, false, now);
                if let Some(t) = self.phase.teardown_mut() {
                    t.kill_at = t.kill_at.min(deadline);
                }
            }
            Phase::Stopped { leftovers: None }
            | Phase::Failed {
                leftovers: None, ..
            }
            | Phase::Waiting(_) => {
                self.ended = true;
                let _ = reply.send(Ok(()));
            }
            Phase::Stopping(t)
            | Phase::Stopped { leftovers: Some(t) }
            | Phase::Failed {
                leftovers: Some(t), ..
            } => {
                t.kill_at = t.kill_at.min(deadline);
                match std::mem::replace(&mut t.then, Then::Stay) {
                    Then::Start { replies, .. } => answer(replies, &Err(gone)),
                    Then::End { mut replies } => {
                        replies.push(reply);
                        t.then = Then::End { replies };
                        return;
                    }
                    Then::Stay => {}
                }
                t.then = Then::End {
                    replies: vec![reply],
                };
            }
        }
    }

    fn on_exit(&mut self, run: RunId, exit: std::io::Result<ExitInfo>, now: Instant) {
        let exit = exit.unwrap_or_else(|e| {
            tracing::error!(id = self.id(), "waiting for the process failed: {e}");
            ExitInfo {
                code: None,
                signal: None,
            }
        });
        match &mut self.phase {
            Phase::Running(r) if r.id == run => {
                let r = r.clone();
                self.record_exit(exit);
                let decision = self
                    .tracker
                    .on_exit(now.into_std(), Trigger::Exit, exit.success());
                let what = if r.adopted {
                    "exited (adopted from an earlier manager: its exit status is unknown)".into()
                } else {
                    exit.to_string()
                };
                let leftovers = self.leftovers_of(r, Some(exit), &what, now);
                self.fail_or_stop(decision, what, leftovers, now);
            }
            _ => {
                let is_ours = self
                    .phase
                    .teardown()
                    .is_some_and(|t| t.run.id == run && t.exit.is_none());
                if is_ours {
                    self.record_exit(exit);
                    if let Some(t) = self.phase.teardown_mut() {
                        t.exit = Some(exit);
                        t.exited_on_request = t.signal_at.is_some() && !t.signalled;
                        t.check_at = Some(now);
                    }
                } else {
                    tracing::debug!(id = self.id(), ?run, "exit of an earlier run ignored");
                }
            }
        }
    }

    fn on_report(&mut self, run: RunId, report: Report, now: Instant) {
        let Phase::Running(r) = &self.phase else {
            tracing::debug!(id = self.id(), ?run, "report on a run that is over ignored");
            return;
        };
        if r.id != run {
            tracing::debug!(id = self.id(), ?run, "report on an earlier run ignored");
            return;
        }
        let r = r.clone();
        let (trigger, what) = match report {
            Report::Unhealthy { reason } => (Trigger::HealthFailure, reason),
            Report::LimitExceeded { reason } => (Trigger::ResourceViolation, reason),
        };
        tracing::warn!(id = self.id(), "{what}");
        let decision = self.tracker.on_exit(now.into_std(), trigger, false);
        // The main process still runs: the whole tree is stopped as leftovers while the
        // state already says why.
        let leftovers = self.leftovers_of(r, None, &what, now);
        self.fail_or_stop(decision, what, leftovers, now);
    }

    fn on_probed(&mut self, run: RunId, outcome: ProbeOutcome, now: Instant) {
        let Phase::Running(r) = &mut self.phase else {
            return;
        };
        if r.id != run {
            return;
        }
        let counts = now >= r.grace_until;
        let Some(kind) = r.check.as_ref().map(check_name) else {
            return;
        };
        let error = outcome.result.as_ref().err().cloned();
        if let (Some(e), false) = (&error, counts) {
            tracing::debug!(
                id = self.id(),
                "{kind} check failed inside the startup grace period: {e}"
            );
        }
        let change = self.health.record(outcome, counts);
        let report = self.health.report().clone();
        if let Some(change) = change {
            let reason = match &error {
                Some(e) => format!("{kind} check failed: {e}"),
                None => format!("{kind} check passed"),
            };
            match change.to {
                HealthStatus::Unhealthy => tracing::warn!(
                    id = self.id(),
                    "unhealthy after {} failed checks in a row: {reason}",
                    report.consecutive_failures
                ),
                _ => tracing::info!(id = self.id(), "{}: {reason}", change.to.as_str()),
            }
            self.emit(EventKind::HealthChanged {
                from: change.from.as_str().into(),
                to: change.to.as_str().into(),
                reason,
                consecutive_failures: report.consecutive_failures,
            });
        }
        let Phase::Running(r) = &mut self.phase else {
            return;
        };
        if !r.ready && report.status == HealthStatus::Healthy {
            r.ready = true;
            let (run, pid) = (r.clone(), r.pid);
            self.enter(
                Phase::Running(run),
                format!("{kind} check passed (pid {pid})"),
            );
        }
        if change.is_some_and(|c| c.to == HealthStatus::Unhealthy) {
            let n = report.consecutive_failures;
            let what = format!(
                "unhealthy: {n} {kind} check{} failed in a row (last: {})",
                if n == 1 { "" } else { "s" },
                error.unwrap_or_default()
            );
            if self.control.restart_policy == RestartPolicy::Never {
                // Reported, not acted on: the policy never restarts.
                let reason = format!("{what}; restart policy never does not restart it");
                self.machine.set_reason(reason);
            } else {
                self.on_report(run, Report::Unhealthy { reason: what }, now);
            }
        }
    }

    fn on_shutdown_answered(&mut self, run: RunId, result: Result<(), String>, now: Instant) {
        let id = self.def.id.clone();
        let Some(t) = self.phase.teardown_mut() else {
            return;
        };
        if t.run.id != run || t.signal_at.is_none() {
            return;
        }
        match result {
            Ok(()) => tracing::info!(
                id,
                "asked to shut down over its API; waiting for it to exit"
            ),
            Err(e) => {
                tracing::info!(id, "the Shutdown call failed ({e}); signalling instead");
                t.signal_at = Some(now);
            }
        }
    }

    fn on_deps(&mut self, verdict: Verdict, now: Instant) {
        self.verdict = verdict;
        let Some(gate) = self.gate.clone() else {
            return;
        };
        match (&self.phase, &self.verdict) {
            (Phase::Waiting(_), Verdict::Met)
            | (
                Phase::Failed {
                    retry: None,
                    leftovers: None,
                },
                Verdict::Met,
            ) => {
                self.gate = None;
                if gate.reset {
                    self.tracker.reset();
                }
                self.start_child(&gate.why, now);
            }
            (Phase::Waiting(_), Verdict::Failed(why)) => {
                let why = why.clone();
                tracing::warn!(id = self.id(), "{why}");
                self.enter(
                    Phase::Failed {
                        retry: None,
                        leftovers: None,
                    },
                    format!("{why}; starts once it recovers"),
                );
            }
            (Phase::Waiting(_), Verdict::Waiting(_)) => {
                let reason = self.verdict.describe();
                self.machine.set_reason(reason);
            }
            (
                Phase::Failed {
                    retry: None,
                    leftovers: None,
                },
                Verdict::Waiting(_),
            ) => {
                // The failed dependency is on its way back: wait for it again.
                let reason = self.verdict.describe();
                let gate = Gate { since: now, ..gate };
                self.enter(Phase::Waiting(gate), reason);
            }
            _ => {}
        }
    }

    fn on_dep_restarted(&mut self, dep: &str, now: Instant) {
        if let Phase::Running(_) = &self.phase {
            let why = format!("its dependency {dep} restarted");
            let then = Then::Start {
                why: format!("restarted with its dependency {dep}"),
                reset: false,
                replies: Vec::new(),
            };
            tracing::info!(id = self.id(), "{why}: restarting (restart: propagate)");
            self.begin_stop(&why, then, false, now);
        }
    }

    /// Starts a run now, or, while a dependency does not meet its condition, waits for it
    /// in `starting` (the wait is bounded by each dependency's timeout, if any).
    fn launch_run(&mut self, why: String, reset: bool, now: Instant) {
        self.absorb_replacement();
        if self.def.depends_on.is_empty() || self.verdict == Verdict::Met {
            self.gate = None;
            if reset {
                self.tracker.reset();
            }
            self.start_child(&why, now);
            return;
        }
        let gate = Gate {
            why,
            reset,
            since: now,
        };
        self.gate = Some(gate.clone());
        let waiting = self.verdict.describe();
        match &self.verdict {
            Verdict::Failed(failed) => {
                let reason = format!("{failed}; starts once it recovers");
                // Through `starting`, as every start: it waits, and says for what.
                self.enter(Phase::Waiting(gate), waiting);
                self.enter(
                    Phase::Failed {
                        retry: None,
                        leftovers: None,
                    },
                    reason,
                );
            }
            _ => self.enter(Phase::Waiting(gate), waiting),
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if let Phase::Waiting(gate) = &self.phase {
            if self.gate_deadline(gate).is_some_and(|at| at <= now) {
                let waited = humantime::format_duration(round_ms(now - gate.since));
                let why = format!("timed out after {waited} {}", self.verdict.describe());
                tracing::warn!(id = self.id(), "{why}");
                self.enter(
                    Phase::Failed {
                        retry: None,
                        leftovers: None,
                    },
                    format!("{why}; starts once they are met"),
                );
            }
            return;
        }
        if let (Phase::Running(_), Some((_, limits))) = (&self.phase, self.run_limits.as_mut()) {
            if let Some((duty, next)) = limits.duty.as_mut() {
                if next.is_some_and(|at| at <= now.into_std()) {
                    let mut step = None;
                    *next = duty.drive(now.into_std(), |s| step = Some(s));
                    let cgroup = limits.cgroup.clone();
                    if let Some(step) = step {
                        self.apply_throttle(step, cgroup.as_deref());
                    }
                }
            }
        }
        match &mut self.phase {
            Phase::Running(run) => {
                if run.stable_at.is_some_and(|at| at <= now) {
                    run.stable_at = None;
                    if self.tracker.on_stable(now.into_std()) {
                        let up = humantime::format_duration(self.tracker.tuning().reset_after);
                        self.emit(EventKind::CircuitClosed {
                            reason: format!("up for {up}"),
                        });
                    }
                }
            }
            Phase::Failed {
                retry: Some(retry),
                leftovers: None,
            } => {
                let retry = *retry;
                if retry.at <= now {
                    let why = if retry.trial {
                        self.tracker.on_cooldown_elapsed();
                        "circuit half-open: trial start after cooldown"
                    } else {
                        "restart after backoff"
                    };
                    self.restart_count += 1;
                    self.launch_run(why.to_owned(), false, now);
                }
            }
            Phase::Stopped { leftovers: None }
            | Phase::Waiting(_)
            | Phase::Failed {
                retry: None,
                leftovers: None,
            } => {}
            Phase::Stopping(_) | Phase::Stopped { .. } | Phase::Failed { .. } => {
                let platform = self.ctx.platform.clone();
                let Some(t) = self.phase.teardown_mut() else {
                    return;
                };
                let stop_signal = self.control.stop_signal;
                if let Some(survivors) = t.check(now, platform.as_ref(), &self.tag, stop_signal) {
                    self.finish_teardown(survivors, now);
                }
            }
        }
    }

    // ---- moves -------------------------------------------------------------------

    /// Moves the state machine to `phase`'s state (one journal event) and takes the phase.
    fn enter(&mut self, phase: Phase, reason: impl Into<String>) {
        let to = phase.state();
        let reason = reason.into();
        let from = self.machine.state();
        let events = self.ctx.events.clone();
        if from == to {
            // E.g. spawned, still `starting` until its first passing check.
            self.machine.set_reason(reason);
        } else if from == ProcessState::Starting
            && to == ProcessState::Stopped
            && matches!(self.phase, Phase::Waiting(_))
        {
            // Stopped while waiting for its dependencies: nothing ran, nothing to stop.
            let _ =
                self.machine
                    .transition(ProcessState::Stopping, reason.as_str(), events.as_ref());
            let _ = self.machine.transition(to, reason, events.as_ref());
        } else if from == ProcessState::Starting && to == ProcessState::Stopped {
            // Ended (completed, or stopped with a leftover teardown) before it was ever
            // healthy: `starting` has no move to `stopped` of its own, so through
            // `failed`, each with the reason.
            let _ = self
                .machine
                .transition(ProcessState::Failed, reason.as_str(), events.as_ref());
            let _ = self.machine.transition(to, reason, events.as_ref());
        } else if let Err(e) = self.machine.transition(to, reason, events.as_ref()) {
            // A refused transition is a supervisor bug; say so loudly and keep going.
            tracing::error!("{e}");
        }
        self.phase = phase;
    }

    /// Running → stopping: the stop signal (SIGKILL when `force`) goes to the tree and
    /// the loop waits for it to go.
    fn begin_stop(&mut self, why: &str, then: Then, force: bool, now: Instant) {
        self.release_throttle();
        let Phase::Running(run) = &self.phase else {
            return;
        };
        let run = run.clone();
        let graceful = self.control.graceful_timeout;
        let mut t = Teardown::new(run, None, why, then, now, graceful);
        match t.run.port {
            _ if force => {
                // SIGKILL goes out at once, from the check that follows this input.
                t.force(now);
            }
            Some(port) if self.def.process_type == ProcessType::IntegratedManaged => {
                // Asked over its API first; the stop signal follows if it has not
                // exited within the graceful timeout (or at once if the call fails).
                t.signal_at = Some(now + graceful);
                t.kill_at = now + graceful + graceful;
                let (platform, internal, run) =
                    (self.ctx.platform.clone(), self.internal.clone(), t.run.id);
                let call = platform.request_shutdown(port, why.to_owned(), graceful);
                tokio::spawn(async move {
                    let result = call.await;
                    let _ = internal.send(Internal::ShutdownAnswered(run, result));
                });
            }
            _ => {
                t.signalled = true;
                self.ctx
                    .platform
                    .signal_tree(t.tree(&self.tag), self.control.stop_signal);
            }
        }
        tracing::info!(id = self.id(), pid = t.run.pid, "stopping: {why}");
        self.enter(Phase::Stopping(t), why);
    }

    /// What is left of a run's tree after its main process ended (or must end), as a
    /// teardown that has already sent the stop signal; `None` when nothing is left.
    fn leftovers_of(
        &mut self,
        run: Run,
        exit: Option<ExitInfo>,
        what: &str,
        now: Instant,
    ) -> Option<Teardown> {
        self.release_throttle();
        let t = Teardown::new(
            run,
            exit,
            what,
            Then::Stay,
            now,
            self.control.graceful_timeout,
        );
        let tree = t.tree(&self.tag);
        if exit.is_some() && t.members(self.ctx.platform.as_ref(), &self.tag).is_empty() {
            return None;
        }
        self.ctx
            .platform
            .signal_tree(tree, self.control.stop_signal);
        let mut t = t;
        t.signalled = true;
        Some(t)
    }

    /// After a run ended (exit, or a failed check): stopped or failed as the restart
    /// policy decided, with the restart scheduled.
    fn fail_or_stop(
        &mut self,
        decision: Decision,
        what: String,
        leftovers: Option<Teardown>,
        now: Instant,
    ) {
        let cleanup = match &leftovers {
            Some(_) => "; stopping what it left of its tree",
            None => "",
        };
        match decision {
            Decision::Stay { completed: true } => self.enter(
                Phase::Stopped { leftovers },
                format!("completed ({what}){cleanup}"),
            ),
            Decision::Stay { completed: false } => {
                let policy = self.control.restart_policy.as_str();
                self.enter(
                    Phase::Failed {
                        retry: None,
                        leftovers,
                    },
                    format!("{what}; restart policy {policy} does not restart it{cleanup}"),
                )
            }
            Decision::Restart {
                delay,
                attempt,
                trigger,
            } => {
                let after = humantime::format_duration(round_ms(delay));
                tracing::info!(id = self.id(), "{what}; restart {attempt} in {after}");
                let retry = Retry {
                    at: now + delay,
                    wall: SystemTime::now() + delay,
                    trial: false,
                };
                self.enter(
                    Phase::Failed {
                        retry: Some(retry),
                        leftovers,
                    },
                    format!("{what}{cleanup}"),
                );
                self.emit(EventKind::RestartScheduled {
                    delay_ms: delay.as_millis() as u64,
                    attempt,
                    trigger: trigger.as_str().into(),
                });
                self.count_delay_from_now(delay);
            }
            Decision::OpenCircuit { restarts, cooldown } => {
                let retry = cooldown.map(|c| Retry {
                    at: now + c,
                    wall: SystemTime::now() + c,
                    trial: true,
                });
                match cooldown {
                    Some(c) => tracing::warn!(
                        id = self.id(),
                        "{what}; circuit open after {restarts} restarts, trial start in {}",
                        humantime::format_duration(c)
                    ),
                    None => tracing::warn!(
                        id = self.id(),
                        "{what}; circuit open after {restarts} restarts, waiting for a start by hand"
                    ),
                }
                self.enter(
                    Phase::Failed { retry, leftovers },
                    format!("{what}{cleanup}"),
                );
                let window = self.tracker.tuning().window;
                self.emit(EventKind::CircuitOpened {
                    restarts,
                    window_ms: window.as_millis() as u64,
                    cooldown_ms: cooldown.unwrap_or_default().as_millis() as u64,
                });
                if let Some(c) = cooldown {
                    self.count_delay_from_now(c);
                }
            }
        }
    }

    /// Starts the pending retry's delay from this moment, after its event was written:
    /// the announced delay is then never cut short by the time this step took.
    fn count_delay_from_now(&mut self, delay: Duration) {
        if let Phase::Failed {
            retry: Some(retry), ..
        } = &mut self.phase
        {
            retry.at = retry.at.max(Instant::now() + delay);
            retry.wall = SystemTime::now() + delay;
        }
    }

    /// The tree is gone (or only unkillable survivors are left): answer the stop callers
    /// and carry out what was waiting for it.
    fn finish_teardown(&mut self, survivors: Vec<u32>, now: Instant) {
        let phase = std::mem::replace(&mut self.phase, Phase::Stopped { leftovers: None });
        let (t, rest) = match phase {
            Phase::Stopping(t) => (t, None),
            Phase::Stopped { leftovers: Some(t) } => (t, Some(Phase::Stopped { leftovers: None })),
            Phase::Failed {
                retry,
                leftovers: Some(t),
            } => (
                t,
                Some(Phase::Failed {
                    retry,
                    leftovers: None,
                }),
            ),
            other => {
                self.phase = other;
                return;
            }
        };
        self.ctx.writer.remove(self.ctx.pid_files.path(self.id()));
        let took = humantime::format_duration(round_ms(now.saturating_duration_since(t.began)));
        let asked = if t.exited_on_request {
            " after the Shutdown call"
        } else {
            ""
        };
        let mut how = match (t.killed_at, t.exit) {
            (Some(_), _) if t.forced => format!("; killed with SIGKILL ({took})"),
            (Some(_), _) => format!("; killed after graceful timeout ({took})"),
            (None, Some(exit)) => format!(" ({exit}{asked}, in {took})"),
            (None, None) => format!(" (in {took})"),
        };
        if !survivors.is_empty() {
            tracing::error!(
                id = self.id(),
                "processes {survivors:?} survived SIGKILL (uninterruptible?)"
            );
            how.push_str(&format!(
                "; {} process(es) survived SIGKILL",
                survivors.len()
            ));
        }
        match rest {
            // A stop: the visible state moves now.
            None => self.enter(
                Phase::Stopped { leftovers: None },
                format!("{}{how}", t.why),
            ),
            // Leftovers: the state already said why; it stays.
            Some(phase) => {
                tracing::info!(id = self.id(), "what was left of the tree is gone{how}");
                self.phase = phase;
            }
        }
        answer(t.waiters, &Ok(()));
        match t.then {
            Then::Stay => self.absorb_replacement(),
            Then::Start {
                why,
                reset,
                replies,
            } => {
                self.launch_run(why, reset, now);
                answer(replies, &Ok(()));
            }
            Then::End { replies } => {
                if let Phase::Failed { .. } = self.phase {
                    self.enter(Phase::Stopped { leftovers: None }, t.why);
                }
                self.ended = true;
                answer(replies, &Ok(()));
            }
        }
    }

    /// Applies a definition a reload left waiting, now that no run of the old one is left.
    fn absorb_replacement(&mut self) {
        if let Some(replacement) = self.replacement.take() {
            let (def, control) = *replacement;
            self.tracker = RestartTracker::new(control.restart_policy, control.restart.clone());
            let deps_changed = def.depends_on != self.def.depends_on;
            self.def = def;
            self.def_json = None;
            self.persisted = None;
            self.control = control;
            if deps_changed {
                self.watch_deps();
            }
        }
    }

    /// Stopped/Failed (nothing of an old tree left) → Starting → Running, or Failed on a
    /// spawn error (counted by the breaker like a failed run).
    fn start_child(&mut self, why: &str, now: Instant) {
        debug_assert!(self.phase.teardown().is_none() && !matches!(self.phase, Phase::Running(_)));
        self.absorb_replacement();
        if let Err(e) =
            self.machine
                .transition(ProcessState::Starting, why, self.ctx.events.as_ref())
        {
            tracing::error!("{e}");
        }
        self.log_ready = false;
        let (mut spec, port) = self.spawn_spec();
        let limits = crate::limits::convert(&self.control.limits).adjusted(&self.adjustments);
        let cgroup = self.run_cgroup();
        let run_limits = RunLimits::new(limits, cgroup.clone());
        if let Some(cg) = &cgroup {
            if let Err(e) = cg.apply(&run_limits.plan) {
                tracing::warn!(
                    id = self.id(),
                    "cannot set the run's cgroup limits ({e}); they are polled"
                );
            }
            match cg.procs_file() {
                Ok(f) => spec.cgroup = Some(f),
                Err(e) => tracing::warn!(id = self.id(), "{e}"),
            }
        }
        spec.rlimit_nofile = run_limits.plan.rlimit_nofile;
        // Watched before the child can write: its ready line is never missed.
        self.watch_ready_line(RunId(self.runs + 1));
        match self.ctx.platform.spawn(spec) {
            Ok(spawned) => {
                let pid = spawned.pid;
                let start_time = self.ctx.platform.start_time(pid);
                self.emit(EventKind::Spawned { pid });
                self.runs += 1;
                let run = RunId(self.runs);
                let internal = self.internal.clone();
                let exit = spawned.exit;
                tokio::spawn(async move {
                    let _ = internal.send(Internal::Exited(run, exit.await));
                });
                self.ctx.writer.write(
                    self.ctx.pid_files.path(self.id()),
                    format!("{pid}\n").into_bytes(),
                );
                self.tracker.on_start(now.into_std());
                tracing::info!(id = self.id(), pid, "started");
                let check = self.health_check(port);
                let grace = self.startup_grace();
                let run = Run {
                    id: run,
                    pid,
                    started_at: SystemTime::now(),
                    stable_at: Some(now + self.tracker.tuning().reset_after),
                    spawned: now,
                    ready: check.is_none(),
                    grace_until: now + grace,
                    check,
                    port,
                    cgroup,
                    start_time,
                    adopted: false,
                };
                self.run_limits = Some((run.id, run_limits));
                let hc = &self.def.health_check;
                self.health = HealthTracker::new(hc.failure_threshold, hc.success_threshold);
                let reason = match &run.check {
                    None => format!("started (pid {pid})"),
                    Some(kind) => format!(
                        "spawned (pid {pid}); waiting for the first passing {} check",
                        check_name(kind)
                    ),
                };
                self.enter(Phase::Running(run), reason);
            }
            Err(e) => {
                tracing::warn!(id = self.id(), "{e}");
                self.tracker.on_start(now.into_std());
                let decision = self.tracker.on_exit(now.into_std(), Trigger::Exit, false);
                // Starting → failed: the spawn error is the reason.
                self.phase = Phase::Stopped { leftovers: None };
                self.fail_or_stop(decision, e.to_string(), None, now);
            }
        }
    }

    /// How long after a run's start failed checks do not count: the health check's
    /// `startup_grace_period` or the restart tuning's, whichever is longer.
    fn startup_grace(&self) -> Duration {
        self.def
            .health_check
            .startup_grace_period
            .max(self.tracker.tuning().startup_grace_period)
    }

    /// Watches the new run's output for `ready_log_line` (the `log_ready` condition).
    fn watch_ready_line(&self, run: RunId) {
        let Some(pattern) = &self.def.ready_log_line else {
            return;
        };
        match regex::bytes::Regex::new(pattern) {
            Ok(re) => {
                let internal = self.internal.clone();
                self.ctx.capture.watch_line(self.id(), re, move || {
                    let _ = internal.send(Internal::LogReady(run));
                });
            }
            Err(e) => tracing::warn!(id = self.id(), "ready_log_line: {e}"),
        }
    }

    /// A fresh cgroup for the next run, where the manager has a cgroup area.
    ///
    /// The process's cgroup is kept from one run to the next (an empty one is reused:
    /// making and removing a cgroup per run costs milliseconds on every restart); it is
    /// removed once the process is stopped for good (stopped, or failed with no restart
    /// coming) and when the supervisor ends.
    fn run_cgroup(&mut self) -> Option<Arc<rl::Cgroup>> {
        self.cgroup_kept = true;
        let area = self.ctx.cgroups.as_ref()?;
        if let Ok(Some(cg)) = area.open(self.id()) {
            if cg.populated().ok() == Some(false) {
                return Some(Arc::new(cg));
            }
        }
        match area.create(self.id()) {
            Ok(cg) => Some(Arc::new(cg)),
            Err(e) => {
                tracing::warn!(
                    id = self.id(),
                    "no cgroup for this run ({e}); its tree is found through /proc"
                );
                None
            }
        }
    }

    /// A sample of the current run's tree: judged against its limits, each finding
    /// journaled and acted on by its policy.
    fn on_usage(&mut self, run: RunId, sample: rl::Sample, now: Instant) {
        let Some((at, limits)) = self.run_limits.as_mut() else {
            return;
        };
        let grace = self.tracker.tuning().startup_grace_period;
        match &self.phase {
            Phase::Running(r) if r.id == run && *at == run => {
                if now < r.spawned + grace {
                    // Inside the startup grace period: not judged yet.
                    return;
                }
            }
            _ => return,
        }
        let mut findings = limits.watch.observe(now.into_std(), &sample.usage);
        if let Some(oom) = sample
            .oom_kills
            .and_then(|n| limits.watch.observe_oom_kills(n))
        {
            findings.push(oom);
        }
        if let (Some((duty, next)), Some(cpu)) = (limits.duty.as_mut(), sample.usage.cpu_percent) {
            duty.adapt(cpu);
            if next.is_none() {
                *next = Some(now.into_std());
            }
        }
        for finding in findings {
            self.on_finding(run, finding, now);
        }
    }

    fn on_finding(&mut self, run: RunId, finding: rl::Finding, now: Instant) {
        use rl::{Finding, LimitPolicy};
        crate::limits::journal_finding(self.id(), &finding, self.ctx.events.as_ref());
        match finding {
            Finding::Warning { .. } => {}
            Finding::Recovered { resource, .. } => {
                self.alerts.remove(resource.name());
            }
            Finding::OomKilled { .. } => {}
            Finding::Violation {
                resource,
                value,
                limit,
                policy,
            } => {
                let what = crate::limits::describe(resource, value, limit);
                match policy {
                    LimitPolicy::None => {}
                    LimitPolicy::Log => tracing::warn!(id = self.id(), "limit exceeded: {what}"),
                    LimitPolicy::Alert => {
                        crate::limits::raise_alert(self.id(), &what, self.ctx.events.as_ref());
                        self.alerts_total += 1;
                        self.alerts.insert(resource.name(), what.clone());
                    }
                    LimitPolicy::Throttle => {
                        tracing::warn!(id = self.id(), "limit exceeded: {what}; throttling");
                        if let Some((_, limits)) = self.run_limits.as_mut() {
                            if let (Some((target, _)), None) =
                                (limits.plan.duty_cycle, limits.duty.as_ref())
                            {
                                let mut duty = rl::DutyCycle::new(target, rl::DEFAULT_PERIOD);
                                duty.adapt(value);
                                limits.duty = Some((duty, Some(now.into_std())));
                            }
                        }
                    }
                    LimitPolicy::GracefulShutdown => {
                        let why = format!("limit exceeded: {what} (policy graceful_shutdown)");
                        tracing::warn!(id = self.id(), "{why}");
                        self.begin_stop(&why, Then::Stay, false, now);
                    }
                    LimitPolicy::ImmediateKill => {
                        let why = format!("limit exceeded: {what} (policy immediate_kill)");
                        tracing::warn!(id = self.id(), "{why}");
                        self.begin_stop(&why, Then::Stay, true, now);
                    }
                    LimitPolicy::Restart | LimitPolicy::RestartAdjusted => {
                        if policy == LimitPolicy::RestartAdjusted {
                            self.adjustments.record(resource);
                        }
                        let reason = format!("limit exceeded: {what} (policy {})", policy.name());
                        self.on_report(run, Report::LimitExceeded { reason }, now);
                    }
                }
            }
        }
    }

    /// Lets a throttled tree run again before anything else is done to it: a stopped
    /// process never sees its stop signal.
    fn release_throttle(&mut self) {
        let Some((_, limits)) = self.run_limits.as_mut() else {
            return;
        };
        let Some((mut duty, _)) = limits.duty.take() else {
            return;
        };
        if let Some(step) = duty.release() {
            let cgroup = limits.cgroup.clone();
            self.apply_throttle(step, cgroup.as_deref());
        }
    }

    fn apply_throttle(&self, step: rl::ThrottleStep, cgroup: Option<&rl::Cgroup>) {
        let stop = step == rl::ThrottleStep::Stop;
        if let Some(cg) = cgroup {
            if cg.set_frozen(stop).is_ok() {
                return;
            }
        }
        if let Phase::Running(r) = &self.phase {
            let tree = Tree {
                root: r.pid,
                root_reaped: false,
                tag: &self.tag,
            };
            rl::pause_processes(&self.ctx.platform.tree(tree), step);
        }
    }

    /// The check a run is probed with: the configured one, or for an integrated process
    /// configured with none, `grpc.health.v1` on the port it was given. `None`: liveness.
    fn health_check(&self, port: Option<u16>) -> Option<HealthCheckKind> {
        match (&self.def.health_check.kind, port) {
            (HealthCheckKind::Process, Some(port))
                if self.def.process_type == ProcessType::IntegratedManaged =>
            {
                Some(HealthCheckKind::Grpc {
                    address: format!("127.0.0.1:{port}"),
                    service: String::new(),
                })
            }
            (HealthCheckKind::Process, _) => None,
            (kind, _) => Some(kind.clone()),
        }
    }

    /// What to spawn, and for an integrated process the port it is given (picked free
    /// for each run: a child that finds it taken fails, and its restart gets a new one).
    fn spawn_spec(&self) -> (SpawnSpec, Option<u16>) {
        let mut args = self.control.arguments.clone();
        let mut environment = self.control.environment.clone();
        let mut given = None;
        if self.def.process_type == ProcessType::IntegratedManaged {
            match free_loopback_port() {
                Ok(port) => {
                    given = Some(port);
                    if let Some(flag) = &self.control.port_argument {
                        args.push(flag.clone());
                        args.push(port.to_string());
                    }
                    environment.insert("HSU_PORT".into(), port.to_string());
                    let path = self.ctx.pid_files.path(self.id()).with_extension("port");
                    self.ctx
                        .writer
                        .write(path, format!("{port}\n").into_bytes());
                }
                Err(e) => tracing::warn!(id = self.id(), "cannot pick a port: {e}"),
            }
        }
        let spec = SpawnSpec {
            program: self.control.executable.clone(),
            args,
            working_directory: self.control.working_directory.clone(),
            environment,
            stdout: self.open_log(Stream::Stdout, self.def.log_collection.capture_stdout),
            stderr: self.open_log(Stream::Stderr, self.def.log_collection.capture_stderr),
            tag: self.tag.clone(),
            user: self.control.user.clone(),
            group: self.control.group.clone(),
            cgroup: None,
            rlimit_nofile: None,
        };
        (spec, given)
    }

    /// Starts the task probing the current run when it is probed and has none; stops
    /// the task of a run that is over (a check in flight is dropped with it).
    fn sync_checker(&mut self) {
        let want = match &self.phase {
            Phase::Running(r) if r.check.is_some() => Some(r.id),
            _ => None,
        };
        if self.checker.as_ref().map(|c| c.0) == want {
            return;
        }
        if let Some((_, task)) = self.checker.take() {
            task.abort();
        }
        let Phase::Running(r) = &self.phase else {
            return;
        };
        let Some(kind) = r.check.clone() else {
            return;
        };
        let hc = &self.def.health_check;
        let request = ProbeRequest {
            kind,
            timeout: hc.timeout,
            working_directory: self.control.working_directory.clone(),
            environment: self.control.environment.clone(),
        };
        let (first, every) = (r.spawned + hc.initial_delay, hc.interval);
        let (internal, run) = (self.internal.clone(), r.id);
        // Checks of different processes run in their own tasks and never wait on each
        // other.
        let task = crate::platform::spawn_checker(
            self.ctx.platform.clone(),
            request,
            first,
            every,
            move |outcome| internal.send(Internal::Probed(run, outcome)).is_ok(),
        );
        self.checker = Some((run, task));
    }

    fn open_log(&self, stream: Stream, capture: bool) -> Option<File> {
        if !(capture && self.def.log_collection.enabled) {
            return None;
        }
        match self.ctx.capture.attach(self.id(), stream) {
            Ok(f) => Some(f),
            Err(e) => {
                let path = self.ctx.capture.files().path(self.id(), stream);
                tracing::warn!(id = self.id(), "cannot open {}: {e}", path.display());
                None
            }
        }
    }

    fn record_exit(&mut self, exit: ExitInfo) {
        tracing::info!(id = self.id(), "{exit}");
        let pid_file = self.ctx.pid_files.path(self.id());
        if self.def.process_type == ProcessType::IntegratedManaged {
            self.ctx.writer.remove(pid_file.with_extension("port"));
        }
        self.ctx.writer.remove(pid_file);
        self.emit(EventKind::Exited {
            code: exit.code,
            signal: exit.signal,
        });
        self.last_exit = Some(LastExit {
            code: exit.code,
            signal: exit.signal,
            at: SystemTime::now(),
        });
    }

    fn emit(&self, kind: EventKind) {
        self.ctx.events.emit(Some(self.id()), kind);
    }

    fn gone_error(&self) -> ControlError {
        ControlError::Conflict {
            id: self.id().to_owned(),
            message: "the process is being removed (reload or shutdown)".into(),
        }
    }

    fn limits_view(&self) -> LimitsView {
        if self.control.limits.is_empty() && self.alerts_total == 0 {
            // Published after every input: most processes have no limits to show.
            return LimitsView::default();
        }
        let configured = crate::limits::convert(&self.control.limits);
        let mut view = LimitsView {
            adjusted: configured
                .adjustments_report(&self.adjustments)
                .into_iter()
                .map(|a| {
                    (
                        a.resource.name().into(),
                        a.configured,
                        a.effective,
                        a.reason,
                    )
                })
                .collect(),
            alerts: self.alerts.values().cloned().collect(),
            alerts_total: self.alerts_total,
            ..LimitsView::default()
        };
        if let (Phase::Running(r), Some((at, limits))) = (&self.phase, &self.run_limits) {
            if r.id == *at {
                view.enforcement = limits
                    .plan
                    .enforcements
                    .iter()
                    .map(|e| {
                        (
                            e.resource.name().into(),
                            e.backend.name().into(),
                            e.detail.into(),
                        )
                    })
                    .collect();
                view.throttled = limits.duty.as_ref().is_some_and(|(d, _)| d.is_active());
            }
        }
        view
    }

    fn publish(&self) {
        let (pid, started_at, run, adopted) = match &self.phase {
            Phase::Running(r) => (Some(r.pid), Some(r.started_at), Some(r.id), r.adopted),
            // The main process is shown while it lives; once it has exited the PID is
            // no longer its, even if members of its tree are still being stopped.
            Phase::Stopping(t) if t.exit.is_none() => {
                (Some(t.run.pid), Some(t.run.started_at), None, t.run.adopted)
            }
            _ => (None, None, None, false),
        };
        let next_restart_at = match &self.phase {
            Phase::Failed { retry: Some(r), .. } => Some(r.wall),
            _ => None,
        };
        let status = ProcessStatus {
            id: self.def.id.clone(),
            process_type: self.def.process_type,
            state: self.machine.state(),
            pid,
            started_at,
            restart_count: self.restart_count,
            last_exit: self.last_exit,
            reason: self.machine.reason().to_owned(),
            circuit: self.tracker.circuit(),
            next_restart_at,
            resources: None,
            adopted,
        };
        let health = match &self.phase {
            // Liveness: healthy while it runs, as the kernel has not reported an exit.
            Phase::Running(r) if r.check.is_none() => HealthReport {
                status: HealthStatus::Healthy,
                ..HealthReport::unknown()
            },
            Phase::Stopped { .. } | Phase::Failed { .. } | Phase::Stopping(_)
                if self.health.report().last_check_at.is_none() =>
            {
                HealthReport::unknown()
            }
            _ => self.health.report().clone(),
        };
        let waiting_for = match (&self.phase, &self.verdict) {
            (Phase::Waiting(_), Verdict::Waiting(unmet)) => {
                unmet.iter().map(|(_, s)| s.clone()).collect()
            }
            _ => Vec::new(),
        };
        let limits = self.limits_view();
        let published = Published {
            status,
            run,
            health,
            log_ready: self.log_ready && run.is_some(),
            waiting_for,
            limits,
        };
        let mut relevant = false;
        self.status_tx.send_if_modified(|old| {
            let changed = *old != published;
            relevant = deps::relevant_change(old, &published);
            *old = published;
            changed
        });
        if relevant {
            self.ctx.peers.bump();
        }
    }
}

impl Teardown {
    /// A teardown of `run` that starts now; the stop signal is the caller's to send.
    fn new(
        run: Run,
        exit: Option<ExitInfo>,
        why: &str,
        then: Then,
        now: Instant,
        graceful: Duration,
    ) -> Teardown {
        Teardown {
            run,
            exit,
            why: why.to_owned(),
            began: now,
            signal_at: None,
            signalled: false,
            exited_on_request: false,
            forced: false,
            graceful,
            kill_at: now + graceful,
            killed_at: None,
            check_at: exit.map(|_| now + SWEEP_FAST),
            crowded: false,
            seen_empty: false,
            waiters: Vec::new(),
            then,
        }
    }

    /// The live members of the tree: found through `/proc` by the tag, and in the run's
    /// cgroup (where a member that dropped the tag still is).
    fn members(&self, platform: &dyn Platform, tag: &str) -> Vec<u32> {
        let mut left = platform.tree(self.tree(tag));
        if let Some(cg) = &self.run.cgroup {
            for pid in cg.members().unwrap_or_default() {
                if !left.contains(&pid) {
                    left.push(pid);
                }
            }
        }
        left
    }

    fn tree<'a>(&self, tag: &'a str) -> Tree<'a> {
        Tree {
            root: self.run.pid,
            root_reaped: self.exit.is_some(),
            tag,
        }
    }

    /// SIGKILL at the next check: a forced stop, now.
    fn force(&mut self, now: Instant) {
        self.kill_at = self.kill_at.min(now);
        self.forced = true;
    }

    fn next_deadline(&self) -> Instant {
        let next = match self.check_at {
            Some(at) if self.killed_at.is_some() => at,
            Some(at) => at.min(self.kill_at),
            None => self.kill_at,
        };
        match self.signal_at {
            Some(at) if self.killed_at.is_none() => next.min(at),
            _ => next,
        }
    }

    /// Escalates at the deadline and looks at the tree. `Some(survivors)` when the
    /// teardown is over: nothing left (empty), or the SIGKILL grace has run out.
    fn check(
        &mut self,
        now: Instant,
        platform: &dyn Platform,
        tag: &str,
        stop_signal: StopSignal,
    ) -> Option<Vec<u32>> {
        let tree = self.tree(tag);
        if self.killed_at.is_none() && now >= self.kill_at {
            self.killed_at = Some(now);
        }
        // Asked over the API first: the stop signal goes out when the wait for that is
        // over, the call failed, or the main process exited and left members behind.
        let signal_due = self
            .signal_at
            .is_some_and(|at| now >= at || self.exit.is_some());
        if signal_due && self.killed_at.is_none() {
            self.signal_at = None;
            self.signalled = true;
            platform.signal_tree(tree, stop_signal);
            self.kill_at = self.kill_at.min(now + self.graceful);
        }
        if self.killed_at.is_some() {
            // Swept every check: members forked since the last SIGKILL die too. The
            // cgroup's kill reaches every member, whatever it did to leave the tree.
            platform.signal_tree(tree, StopSignal::Kill);
            if let Some(cg) = &self.run.cgroup {
                let _ = cg.kill();
            }
        }
        // Orphans that died are zombies, which `tree` does not count; the manager's
        // reaper collects them on SIGCHLD.
        let left = self.members(platform, tag);
        self.crowded |= self.killed_at.is_some() || left.iter().any(|&p| p != self.run.pid);
        if self.exit.is_some() && left.is_empty() {
            if !self.crowded || self.seen_empty {
                return Some(Vec::new());
            }
            // Look once more, shortly: a member forked during the last sweep shows then.
            self.seen_empty = true;
            self.check_at = Some(now + SWEEP_CONFIRM);
            return None;
        }
        self.seen_empty = false;
        if self.killed_at.is_some_and(|k| now >= k + KILL_GRACE) {
            return Some(left);
        }
        let since = now.saturating_duration_since(self.began);
        let every = if since < Duration::from_secs(1) {
            SWEEP_FAST
        } else {
            SWEEP_SLOW
        };
        // Until the main process exits (or SIGKILL is due) the kernel tells us; after
        // that only a look at the tree can.
        self.check_at = (self.exit.is_some() || self.killed_at.is_some()).then(|| now + every);
        None
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// Whether `def` differs from the definition a run was spawned with (as recorded). Only
/// what the recording manager wrote is compared: a field it did not know of cannot have
/// been set for that run, so a manager upgrade alone restarts nothing.
fn definition_changed(
    recorded: Option<&hsu_process_file::Definition>,
    def: &ProcessDefinition,
) -> bool {
    fn differs(old: &serde_json::Value, new: &serde_json::Value) -> bool {
        match (old, new) {
            (serde_json::Value::Object(o), serde_json::Value::Object(n)) => o
                .iter()
                .any(|(k, v)| n.get(k).is_none_or(|nv| differs(v, nv))),
            _ => old != new,
        }
    }
    let Some(recorded) = recorded.and_then(|d| serde_json::from_str(d.json()).ok()) else {
        return false;
    };
    serde_json::to_value(def).is_ok_and(|now| differs(&recorded, &now))
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// The check's name in messages: `http`, `grpc`, `tcp`, `exec` (or `process`).
pub(crate) fn check_name(kind: &HealthCheckKind) -> &'static str {
    match kind {
        HealthCheckKind::Process => "process",
        HealthCheckKind::Http { .. } => "http",
        HealthCheckKind::Grpc { .. } => "grpc",
        HealthCheckKind::Tcp { .. } => "tcp",
        HealthCheckKind::Exec { .. } => "exec",
    }
}

fn free_loopback_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()
        .map(|a| a.port())
}
