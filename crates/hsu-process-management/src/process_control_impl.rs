//! One supervisor task per managed process: the owner of its child, its state machine
//! and its restart bookkeeping.
//!
//! The task runs an event loop over four sources: the child's exit (from the kernel), the
//! restart / cooldown / stability timers, and a control queue. Callers never touch the
//! process state; they send a [`Command`] and await the reply, and read the latest
//! [`ProcessStatus`] from a watch channel the task publishes after every event.

use crate::lifecycle::{Decision, RestartTracker, Trigger};
use hsu_common::{EventKind, EventSink, ProcessState};
use hsu_log_collection::{CaptureFiles, Stream};
use hsu_managed_process::{
    Circuit, ControlError, ControlSpec, LastExit, ProcessControl, ProcessDefinition, ProcessStatus,
    ProcessType,
};
use hsu_process::{Child, ExitInfo, SpawnSpec};
use hsu_process_file::PidFiles;
use hsu_process_state::StateMachine;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// What every supervisor shares: where events go and where files live.
pub struct Context {
    pub events: Arc<dyn EventSink>,
    pub pid_files: PidFiles,
    /// Where the children's stdout/stderr are captured.
    pub capture: CaptureFiles,
    /// Prefix of the owner tag exported to every process tree (the base directory).
    pub tag_prefix: String,
}

impl Context {
    /// The owner tag of process `id`'s tree (see `hsu_process::TAG_ENV`).
    pub fn tag(&self, id: &str) -> String {
        format!("{}#{id}", self.tag_prefix)
    }
}

type Reply = oneshot::Sender<Result<(), ControlError>>;

enum Command {
    Start(Reply),
    Stop(Reply),
    Restart {
        force: bool,
        reply: Reply,
    },
    /// Stop (each stop bounded by `deadline`) and end the task.
    Shutdown {
        deadline: Instant,
        reply: Reply,
    },
}

/// The caller's side of one supervisor task.
#[derive(Clone)]
pub struct ProcessHandle {
    id: String,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<ProcessStatus>,
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
        let (tx, rx) = mpsc::channel(16);
        let mut initial = ProcessStatus::new(&def.id, def.process_type);
        initial.reason = reason.to_owned();
        let (status_tx, status_rx) = watch::channel(initial);
        let supervisor = Supervisor {
            machine: StateMachine::stopped_because(&def.id, reason),
            tracker: RestartTracker::new(control.restart_policy, control.restart.clone()),
            def,
            control,
            ctx,
            child: None,
            restart_at: None,
            cooldown_at: None,
            stable_at: None,
            restart_count: 0,
            started_at: None,
            last_exit: None,
            next_restart_at: None,
            status_tx,
        };
        let id = supervisor.def.id.clone();
        tokio::spawn(supervisor.run(rx));
        ProcessHandle {
            id,
            commands: tx,
            status: status_rx,
        }
    }

    /// A status watch, for callers that want to await changes.
    pub fn watch(&self) -> watch::Receiver<ProcessStatus> {
        self.status.clone()
    }

    async fn call(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| ControlError::Gone(self.id.clone()))?;
        rx.await.map_err(|_| ControlError::Gone(self.id.clone()))?
    }

    /// Stops the process (each stop bounded by `deadline`) and ends the supervisor.
    pub async fn shutdown(&self, deadline: Instant) -> Result<(), ControlError> {
        self.call(|reply| Command::Shutdown { deadline, reply })
            .await
    }
}

impl ProcessControl for ProcessHandle {
    fn id(&self) -> &str {
        &self.id
    }

    fn status(&self) -> ProcessStatus {
        self.status.borrow().clone()
    }

    async fn start(&self) -> Result<(), ControlError> {
        self.call(Command::Start).await
    }

    async fn stop(&self, _force: bool) -> Result<(), ControlError> {
        self.call(Command::Stop).await
    }

    async fn restart(&self, force: bool) -> Result<(), ControlError> {
        self.call(|reply| Command::Restart { force, reply }).await
    }
}

struct Supervisor {
    def: ProcessDefinition,
    control: ControlSpec,
    ctx: Arc<Context>,
    machine: StateMachine,
    tracker: RestartTracker,
    child: Option<Child>,
    /// A scheduled automatic restart.
    restart_at: Option<Instant>,
    /// When an open breaker makes its trial start.
    cooldown_at: Option<Instant>,
    /// When the running process will have been up `reset_after`.
    stable_at: Option<Instant>,
    restart_count: u32,
    started_at: Option<SystemTime>,
    last_exit: Option<LastExit>,
    next_restart_at: Option<SystemTime>,
    status_tx: watch::Sender<ProcessStatus>,
}

/// Resolves at `at`, or never when there is no timer.
async fn timer(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the child exits, or never when there is none.
async fn exit_of(child: &mut Option<Child>) -> std::io::Result<ExitInfo> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    fn id(&self) -> &str {
        &self.def.id
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                exit = exit_of(&mut self.child) => self.on_exit(exit).await,
                () = timer(self.restart_at) => {
                    self.restart_at = None;
                    self.restart_count += 1;
                    self.start_child("restart after backoff");
                }
                () = timer(self.cooldown_at) => {
                    self.cooldown_at = None;
                    self.tracker.on_cooldown_elapsed();
                    self.restart_count += 1;
                    self.start_child("circuit half-open: trial start after cooldown");
                }
                () = timer(self.stable_at) => {
                    self.stable_at = None;
                    if self.tracker.on_stable(Instant::now().into_std()) {
                        self.emit(EventKind::CircuitClosed {
                            reason: format!("up for {}", humantime::format_duration(self.tracker.tuning().reset_after)),
                        });
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => {
                        let last = matches!(cmd, Command::Shutdown { .. });
                        let (reply, result) = self.handle(cmd).await;
                        self.publish();
                        let _ = reply.send(result);
                        if last {
                            return;
                        }
                    }
                    None => {
                        self.stop_child(None, "manager shutting down").await;
                        self.publish();
                        return;
                    }
                },
            }
            self.publish();
        }
    }

    /// Carries out a command; the caller publishes the new status, then replies, so a
    /// caller that reads status after the reply sees the command's effect.
    async fn handle(&mut self, cmd: Command) -> (Reply, Result<(), ControlError>) {
        match cmd {
            Command::Start(reply) => {
                if matches!(
                    self.machine.state(),
                    ProcessState::Stopped | ProcessState::Failed
                ) {
                    self.tracker.reset();
                    self.start_child("started by request");
                }
                (reply, Ok(()))
            }
            Command::Stop(reply) => {
                self.stop_child(None, "stopped by request").await;
                (reply, Ok(()))
            }
            Command::Restart { force, reply } => {
                if self.tracker.circuit() == Circuit::Open && !force {
                    let refused = ControlError::Conflict {
                        id: self.id().to_owned(),
                        message: "circuit breaker is open; restart with --force to override".into(),
                    };
                    return (reply, Err(refused));
                }
                if force {
                    self.tracker.reset();
                }
                self.stop_child(None, "restart requested").await;
                self.start_child("restarted by request");
                (reply, Ok(()))
            }
            Command::Shutdown { deadline, reply } => {
                self.stop_child(Some(deadline), "manager shutting down")
                    .await;
                (reply, Ok(()))
            }
        }
    }

    fn emit(&self, kind: EventKind) {
        self.ctx.events.emit(Some(self.id()), kind);
    }

    fn transition(&mut self, to: ProcessState, reason: impl Into<String>) {
        if let Err(e) = self
            .machine
            .transition(to, reason, self.ctx.events.as_ref())
        {
            // A refused transition is a supervisor bug; say so loudly and keep going.
            tracing::error!("{e}");
        }
    }

    fn clear_timers(&mut self) {
        self.restart_at = None;
        self.cooldown_at = None;
        self.stable_at = None;
        self.next_restart_at = None;
    }

    fn open_log(&self, stream: Stream, capture: bool) -> Option<File> {
        if !(capture && self.def.log_collection.enabled) {
            return None;
        }
        match self.ctx.capture.open_append(self.id(), stream) {
            Ok(f) => Some(f),
            Err(e) => {
                let path = self.ctx.capture.path(self.id(), stream);
                tracing::warn!(id = self.id(), "cannot open {}: {e}", path.display());
                None
            }
        }
    }

    /// Stopped/Failed -> Starting -> Running (or Failed on a spawn error).
    fn start_child(&mut self, why: &str) {
        self.clear_timers();
        self.transition(ProcessState::Starting, why);
        let mut args = self.control.arguments.clone();
        let mut environment = self.control.environment.clone();
        if self.def.process_type == ProcessType::IntegratedManaged {
            match free_loopback_port() {
                Ok(port) => {
                    if let Some(flag) = &self.control.port_argument {
                        args.push(flag.clone());
                        args.push(port.to_string());
                    }
                    environment.insert("HSU_PORT".into(), port.to_string());
                    let path = self.ctx.pid_files.path(self.id()).with_extension("port");
                    if let Err(e) = std::fs::write(&path, format!("{port}\n")) {
                        tracing::warn!(id = self.id(), "cannot write {}: {e}", path.display());
                    }
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
            tag: self.ctx.tag(self.id()),
        };
        let now = Instant::now();
        match hsu_process::spawn(spec) {
            Ok(child) => {
                let pid = child.pid();
                if let Err(e) = self.ctx.pid_files.write(self.id(), pid) {
                    tracing::warn!(id = self.id(), "cannot write PID file: {e}");
                }
                self.child = Some(child);
                self.started_at = Some(SystemTime::now());
                self.tracker.on_start(now.into_std());
                self.stable_at = Some(now + self.tracker.tuning().reset_after);
                tracing::info!(id = self.id(), pid, "started");
                self.transition(ProcessState::Running, format!("started (pid {pid})"));
            }
            Err(e) => {
                tracing::warn!(id = self.id(), "{e}");
                self.tracker.on_start(now.into_std());
                self.transition(ProcessState::Failed, e.to_string());
                let decision = self.tracker.on_exit(now.into_std(), Trigger::Exit, false);
                self.apply(decision, &e.to_string());
            }
        }
    }

    async fn on_exit(&mut self, exit: std::io::Result<ExitInfo>) {
        let exit = exit.unwrap_or_else(|e| {
            tracing::error!(id = self.id(), "waiting for the process failed: {e}");
            ExitInfo {
                code: None,
                signal: None,
            }
        });
        let now = Instant::now();
        self.stable_at = None;
        self.record_exit(exit);
        // The main process is gone; whatever it left behind of its tree goes too.
        if let Some(mut child) = self.child.take() {
            if child.tree().iter().any(|&p| p != child.pid()) {
                let _ = hsu_process::terminate_tree(
                    &mut child,
                    self.control.stop_signal,
                    self.control.graceful_timeout,
                )
                .await;
            }
        }
        let _ = self.ctx.pid_files.remove(self.id());
        let decision = self
            .tracker
            .on_exit(now.into_std(), Trigger::Exit, exit.success());
        let what = exit.to_string();
        match &decision {
            Decision::Stay { completed: true } => {
                self.transition(ProcessState::Stopped, format!("completed ({what})"))
            }
            Decision::Stay { completed: false } => self.transition(
                ProcessState::Failed,
                format!(
                    "{what}; restart policy {} does not restart it",
                    self.control.restart_policy.as_str()
                ),
            ),
            _ => self.transition(ProcessState::Failed, what.clone()),
        }
        self.apply(decision, &what);
    }

    fn record_exit(&mut self, exit: ExitInfo) {
        tracing::info!(id = self.id(), "{exit}");
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

    /// Schedules what the restart policy decided (the state is already `failed`).
    fn apply(&mut self, decision: Decision, what: &str) {
        match decision {
            Decision::Stay { .. } => {}
            Decision::Restart {
                delay,
                attempt,
                trigger,
            } => {
                self.emit(EventKind::RestartScheduled {
                    delay_ms: delay.as_millis() as u64,
                    attempt,
                    trigger: trigger.as_str().into(),
                });
                tracing::info!(
                    id = self.id(),
                    "{what}; restart {attempt} in {}",
                    humantime::format_duration(delay)
                );
                self.restart_at = Some(Instant::now() + delay);
                self.next_restart_at = Some(SystemTime::now() + delay);
            }
            Decision::OpenCircuit { restarts, cooldown } => {
                let tuning = self.tracker.tuning();
                self.emit(EventKind::CircuitOpened {
                    restarts,
                    window_ms: tuning.window.as_millis() as u64,
                    cooldown_ms: cooldown.unwrap_or_default().as_millis() as u64,
                });
                match cooldown {
                    Some(c) => {
                        tracing::warn!(
                            id = self.id(),
                            "{what}; circuit open after {restarts} restarts, trial start in {}",
                            humantime::format_duration(c)
                        );
                        self.cooldown_at = Some(Instant::now() + c);
                        self.next_restart_at = Some(SystemTime::now() + c);
                    }
                    None => tracing::warn!(
                        id = self.id(),
                        "{what}; circuit open after {restarts} restarts, waiting for a start by hand"
                    ),
                }
            }
        }
    }

    /// Brings the process to `stopped` from wherever it is; returns when nothing of its
    /// tree is left.
    async fn stop_child(&mut self, deadline: Option<Instant>, why: &str) {
        match self.machine.state() {
            ProcessState::Running | ProcessState::Starting => {}
            ProcessState::Failed => {
                self.clear_timers();
                self.transition(ProcessState::Stopped, why);
                return;
            }
            ProcessState::Stopped | ProcessState::Stopping => return,
        }
        self.clear_timers();
        let Some(mut child) = self.child.take() else {
            self.transition(ProcessState::Stopping, why);
            self.transition(ProcessState::Stopped, why);
            return;
        };
        self.transition(ProcessState::Stopping, why);
        self.publish();
        let mut graceful = self.control.graceful_timeout;
        if let Some(deadline) = deadline {
            graceful = graceful.min(deadline.saturating_duration_since(Instant::now()));
        }
        let started = Instant::now();
        let reason =
            match hsu_process::terminate_tree(&mut child, self.control.stop_signal, graceful).await
            {
                Ok(t) => {
                    self.record_exit(t.exit);
                    if !t.survivors.is_empty() {
                        tracing::error!(
                            id = self.id(),
                            "processes {:?} survived SIGKILL (uninterruptible?)",
                            t.survivors
                        );
                    }
                    let took = humantime::format_duration(round_ms(started.elapsed()));
                    if t.forced {
                        format!("{why}; killed after graceful timeout ({took})")
                    } else {
                        format!("{why} ({}, in {took})", t.exit)
                    }
                }
                Err(e) => format!("{why}; waiting for exit failed: {e}"),
            };
        let _ = self.ctx.pid_files.remove(self.id());
        self.transition(ProcessState::Stopped, reason);
    }

    fn publish(&self) {
        let status = ProcessStatus {
            id: self.def.id.clone(),
            process_type: self.def.process_type,
            state: self.machine.state(),
            pid: self.child.as_ref().map(Child::pid),
            started_at: self.child.as_ref().and(self.started_at),
            restart_count: self.restart_count,
            last_exit: self.last_exit,
            reason: self.machine.reason().to_owned(),
            circuit: self.tracker.circuit(),
            next_restart_at: self.next_restart_at,
            resources: None,
        };
        self.status_tx.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn free_loopback_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()
        .map(|a| a.port())
}
