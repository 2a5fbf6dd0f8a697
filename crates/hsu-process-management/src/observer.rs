//! One observer per unmanaged process: a task that finds the process the way its
//! `discovery` says, watches it while it is there, and reports what it sees. It never
//! spawns, signals, restarts or stops the process.
//!
//! # How it moves
//!
//! The observer looks at once, then every `check_interval` while the process is not
//! found (`stopped`). A look reads `/proc` on a blocking thread and comes back as an
//! input, so the loop keeps serving while it runs. Once the process is found the
//! observer holds a pidfd on it ([`hsu_process::watch_exit`], tied to its start time so
//! a reused PID is never mistaken for it) and stops looking: its end comes from the
//! kernel at once, and the observer goes back to looking. Each sighting is a run of its
//! own ([`RunId`]): a health result or a resource sample about an earlier sighting
//! arrives late and is ignored.
//!
//! Found, it moves `stopped → starting → running` (the state machine has no direct
//! `stopped → running`), and `running → stopped` when it ends, each change a
//! `state_changed` event. While found, its `health_check` runs as a supervised
//! process's does and the verdict shows in status; an unhealthy verdict is reported
//! only. The manager's sampler samples its tree and hands the samples here, where its
//! limits (reporting policies only: `none`, `log`, `alert`) turn them into
//! `resource_warning`, `resource_violation` and `alert` events.
//!
//! What it publishes has the shape a supervisor publishes ([`Published`]), so status,
//! the sampler and `depends_on` read an observed process like a supervised one.

use crate::limits::LimitsView;
use crate::platform::ProbeRequest;
use crate::process_control_impl::{check_name, Context, Published, RunId};
use hsu_common::{EventKind, ProcessState};
use hsu_managed_process::{
    Circuit, DiscoveryMethod, DiscoverySpec, HealthCheckKind, ProcessDefinition, ProcessStatus,
};
use hsu_monitoring::{HealthReport, HealthStatus, HealthTracker, ProbeOutcome};
use hsu_process_state::StateMachine;
use hsu_resource_limits as rl;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The caller's side of one observer task. Cheap to clone.
#[derive(Clone)]
pub struct ObserverHandle {
    id: String,
    messages: mpsc::UnboundedSender<Message>,
    status: watch::Receiver<Published>,
}

enum Message {
    /// A resource sample of a sighting's tree, from the manager's sampler.
    Usage { run: RunId, sample: rl::Sample },
    /// Stop observing, for the reason given (the process is left exactly as it is);
    /// answered once done.
    End(String, oneshot::Sender<()>),
}

/// What the observer's own tasks report back.
enum Internal {
    /// A look came back: the process found (PID and start time), or not.
    Looked(Option<(u32, u64)>),
    /// The process of a sighting has ended (its pidfd became readable).
    Gone(RunId),
    /// A health check of a sighting completed.
    Probed(RunId, ProbeOutcome),
}

impl ObserverHandle {
    /// Starts observing the unmanaged process `def`, found as `discovery` says.
    pub fn spawn(def: ProcessDefinition, discovery: DiscoverySpec, ctx: Arc<Context>) -> Self {
        Self::spawn_after(def, discovery, ctx, None)
    }

    /// [`Self::spawn`] in place of `previous` (a reload changed the definition): the new
    /// observer first ends `previous`, for `why`, so that its own events follow the old
    /// one's last.
    pub fn spawn_after(
        def: ProcessDefinition,
        discovery: DiscoverySpec,
        ctx: Arc<Context>,
        previous: Option<(ObserverHandle, &'static str)>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (internal, internal_rx) = mpsc::unbounded_channel();
        let mut initial = ProcessStatus::new(&def.id, def.process_type);
        let reason = format!("looking for it by {}", describe(&discovery.method));
        initial.reason.clone_from(&reason);
        let (status_tx, status_rx) = watch::channel(Published {
            status: initial,
            run: None,
            health: HealthReport::unknown(),
            log_ready: false,
            waiting_for: Vec::new(),
            limits: LimitsView::default(),
        });
        let limits = def
            .control
            .as_ref()
            .map(|c| crate::limits::convert(&c.limits))
            .filter(|l| !l.is_empty());
        let observer = Observer {
            machine: StateMachine::stopped_because(&def.id, reason),
            health: HealthTracker::new(1, 1),
            def,
            discovery,
            ctx,
            phase: Phase::NotFound,
            sightings: 0,
            next_look: None,
            ended: None,
            limits,
            alerts: BTreeMap::new(),
            alerts_total: 0,
            internal,
            status_tx,
        };
        let id = observer.def.id.clone();
        observer.ctx.peers.insert(&id, status_rx.clone());
        tokio::spawn(async move {
            if let Some((previous, why)) = previous {
                previous.end(why).await;
            }
            observer.run(rx, internal_rx).await;
        });
        ObserverHandle {
            id,
            messages: tx,
            status: status_rx,
        }
    }

    /// The process's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The latest status.
    pub fn status(&self) -> ProcessStatus {
        self.status.borrow().status.clone()
    }

    /// What the observer publishes (status, sighting, health, limits).
    pub fn watch(&self) -> watch::Receiver<Published> {
        self.status.clone()
    }

    /// Hands a resource sample of sighting `run`'s tree to the observer.
    pub fn report_usage(&self, run: RunId, sample: rl::Sample) {
        let _ = self.messages.send(Message::Usage { run, sample });
    }

    /// Ends the observer, for `why` (e.g. `the manager shuts down`); resolves once it
    /// has stopped. The process is not touched: a process in sight is shown (and
    /// journaled) `stopped`, "no longer observed", as the manager no longer knows.
    pub async fn end(&self, why: &str) {
        let (tx, rx) = oneshot::channel();
        if self.messages.send(Message::End(why.to_owned(), tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// One sighting of the process: from being found to its end.
struct Sighting {
    run: RunId,
    pid: u32,
    started_at: Option<SystemTime>,
    found: Instant,
    /// The configured check; `None` for `process` (liveness: healthy while found).
    check: Option<HealthCheckKind>,
    /// Ends with the sighting: the wait on the pidfd and the health checks.
    tasks: Vec<AbortHandle>,
    /// What was found, said once: `found by pid_file /run/x.pid (pid 123)`.
    how: String,
    /// The limits' watch over this sighting's samples.
    watch: Option<rl::LimitWatch>,
}

enum Phase {
    /// Not found; looking every `check_interval`.
    NotFound,
    Found(Sighting),
}

struct Observer {
    def: ProcessDefinition,
    discovery: DiscoverySpec,
    ctx: Arc<Context>,
    machine: StateMachine,
    phase: Phase,
    /// Sightings so far; the last one's number is the current [`RunId`].
    sightings: u64,
    /// When to look next, while not found and no look is in flight.
    next_look: Option<Instant>,
    /// The PID of the last sighting, once it has ended (the reason keeps saying so).
    ended: Option<u32>,
    /// The configured limits, if any.
    limits: Option<rl::Limits>,
    health: HealthTracker,
    /// Limits with policy `alert` crossed and not back under, by resource.
    alerts: BTreeMap<&'static str, String>,
    alerts_total: u64,
    internal: mpsc::UnboundedSender<Internal>,
    status_tx: watch::Sender<Published>,
}

async fn deadline(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Observer {
    fn id(&self) -> &str {
        &self.def.id
    }

    async fn run(
        mut self,
        mut messages: mpsc::UnboundedReceiver<Message>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        self.look();
        loop {
            self.publish();
            tokio::select! {
                // Control first: once asked to end, nothing else is handled (a reload
                // may already run a new observer of the same id).
                biased;
                message = messages.recv() => match message {
                    Some(Message::Usage { run, sample }) => self.on_usage(run, sample),
                    Some(Message::End(why, reply)) => {
                        self.finish(&why);
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.finish("its manager is gone");
                        return;
                    }
                },
                Some(input) = internal.recv() => match input {
                    Internal::Looked(found) => self.on_looked(found),
                    Internal::Gone(run) => self.on_gone(run),
                    Internal::Probed(run, outcome) => self.on_probed(run, outcome),
                },
                () = deadline(self.next_look) => {
                    self.next_look = None;
                    self.look();
                }
            }
        }
    }

    /// Looks for the process on a blocking thread (a scan of `/proc`); the answer comes
    /// back as [`Internal::Looked`].
    fn look(&mut self) {
        let method = self.discovery.method.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let found = tokio::task::spawn_blocking(move || find(&method))
                .await
                .ok()
                .flatten();
            let _ = internal.send(Internal::Looked(found));
        });
    }

    fn look_later(&mut self) {
        // Validation keeps the interval positive; a floor keeps a typo from spinning.
        let every = self.discovery.check_interval.max(Duration::from_millis(10));
        self.next_look = Some(Instant::now() + every);
    }

    fn on_looked(&mut self, found: Option<(u32, u64)>) {
        if matches!(self.phase, Phase::Found(_)) {
            return;
        }
        let Some((pid, started)) = found else {
            let missing = missing(&self.discovery.method);
            self.machine.set_reason(match self.ended {
                Some(pid) => format!("pid {pid} ended; not found since: {missing}"),
                None => format!("not found: {missing}"),
            });
            self.look_later();
            return;
        };
        // The pidfd is opened, then the start time compared: a process that ended (and
        // whose PID was reused) since the look is not watched in its place.
        let exit = match hsu_process::watch_exit(pid, started) {
            Ok(exit) => exit,
            Err(e) => {
                tracing::debug!(id = self.id(), pid, "found, but cannot watch it: {e}");
                self.machine.set_reason(format!(
                    "not found: {} (pid {pid} ended as it was found)",
                    missing(&self.discovery.method)
                ));
                self.look_later();
                return;
            }
        };
        self.sightings += 1;
        self.ended = None;
        let run = RunId(self.sightings);
        let internal = self.internal.clone();
        let waiter = tokio::spawn(async move {
            exit.exited().await;
            let _ = internal.send(Internal::Gone(run));
        });
        let how = format!("found by {} (pid {pid})", describe(&self.discovery.method));
        tracing::info!(id = self.id(), pid, "{how}");
        let check = match &self.def.health_check.kind {
            HealthCheckKind::Process => None,
            kind => Some(kind.clone()),
        };
        let hc = &self.def.health_check;
        self.health = HealthTracker::new(hc.failure_threshold, hc.success_threshold);
        let mut sighting = Sighting {
            run,
            pid,
            started_at: hsu_process::started_at(started),
            found: Instant::now(),
            check,
            tasks: vec![waiter.abort_handle()],
            how: how.clone(),
            watch: self.limits.as_ref().map(rl::LimitWatch::new),
        };
        if let Some(task) = self.checker(&sighting) {
            sighting.tasks.push(task);
        }
        self.phase = Phase::Found(sighting);
        for to in [ProcessState::Starting, ProcessState::Running] {
            if let Err(e) = self
                .machine
                .transition(to, how.clone(), self.ctx.events.as_ref())
            {
                tracing::error!("{e}");
            }
        }
    }

    fn on_gone(&mut self, run: RunId) {
        let Phase::Found(s) = &self.phase else {
            return;
        };
        if s.run != run {
            return;
        }
        let pid = s.pid;
        self.end_sighting();
        self.ended = Some(pid);
        let why = format!(
            "pid {pid} ended; looking for it by {} every {}",
            describe(&self.discovery.method),
            humantime::format_duration(self.discovery.check_interval)
        );
        tracing::info!(id = self.id(), pid, "ended; looking for it again");
        if let Err(e) =
            self.machine
                .transition(ProcessState::Stopped, why, self.ctx.events.as_ref())
        {
            tracing::error!("{e}");
        }
        // At once: whoever restarts it may already have.
        self.look();
    }

    /// Ends the current sighting's tasks and forgets it.
    fn end_sighting(&mut self) {
        if let Phase::Found(s) = std::mem::replace(&mut self.phase, Phase::NotFound) {
            for task in s.tasks {
                task.abort();
            }
        }
        self.alerts.clear();
    }

    /// The task probing a sighting with its configured check; `None` for liveness.
    fn checker(&self, s: &Sighting) -> Option<AbortHandle> {
        let kind = s.check.clone()?;
        let hc = &self.def.health_check;
        let control = self.def.control.as_ref();
        let request = ProbeRequest {
            kind,
            timeout: hc.timeout,
            // An unmanaged process has no working directory of its own configured (an
            // `exec` check's command is resolved like `executable`, so usually absolute).
            working_directory: control.map_or_else(
                || std::env::current_dir().unwrap_or_else(|_| "/".into()),
                |c| c.working_directory.clone(),
            ),
            environment: control.map(|c| c.environment.clone()).unwrap_or_default(),
        };
        let (first, every) = (s.found + hc.initial_delay, hc.interval);
        let (internal, run) = (self.internal.clone(), s.run);
        // As a supervisor's checker: one check at a time, each bounded by its timeout.
        Some(crate::platform::spawn_checker(
            self.ctx.platform.clone(),
            request,
            first,
            every,
            move |outcome| internal.send(Internal::Probed(run, outcome)).is_ok(),
        ))
    }

    fn on_probed(&mut self, run: RunId, outcome: ProbeOutcome) {
        let Phase::Found(s) = &self.phase else {
            return;
        };
        if s.run != run {
            return;
        }
        let Some(kind) = s.check.as_ref().map(check_name) else {
            return;
        };
        let how = s.how.clone();
        let counts = Instant::now() >= s.found + self.def.health_check.startup_grace_period;
        let error = outcome.result.as_ref().err().cloned();
        let Some(change) = self.health.record(outcome, counts) else {
            return;
        };
        let report = self.health.report().clone();
        let reason = match &error {
            Some(e) => format!("{kind} check failed: {e}"),
            None => format!("{kind} check passed"),
        };
        self.ctx.events.emit(
            Some(self.id()),
            EventKind::HealthChanged {
                from: change.from.as_str().into(),
                to: change.to.as_str().into(),
                reason: reason.clone(),
                consecutive_failures: report.consecutive_failures,
            },
        );
        if change.to == HealthStatus::Unhealthy {
            let n = report.consecutive_failures;
            let what = format!(
                "unhealthy: {n} {kind} check{} failed in a row (last: {}); reported only, \
                 the manager never restarts an unmanaged process",
                if n == 1 { "" } else { "s" },
                error.unwrap_or_default()
            );
            tracing::warn!(id = self.id(), "{what}");
            self.machine.set_reason(format!("{how}; {what}"));
        } else {
            tracing::info!(id = self.id(), "{}: {reason}", change.to.as_str());
            self.machine.set_reason(how);
        }
    }

    /// A sample of the current sighting's tree, judged against the limits: each finding
    /// is reported (the policies of an unmanaged process only report).
    fn on_usage(&mut self, run: RunId, sample: rl::Sample) {
        let Phase::Found(s) = &mut self.phase else {
            return;
        };
        if s.run != run {
            return;
        }
        let Some(watch) = s.watch.as_mut() else {
            return;
        };
        let findings = watch.observe(std::time::Instant::now(), &sample.usage);
        for finding in findings {
            self.on_finding(finding);
        }
    }

    fn on_finding(&mut self, finding: rl::Finding) {
        use rl::{Finding, LimitPolicy};
        let id = self.def.id.clone();
        crate::limits::journal_finding(&id, &finding, self.ctx.events.as_ref());
        match finding {
            Finding::Warning { .. } | Finding::OomKilled { .. } => {}
            Finding::Recovered { resource, .. } => {
                self.alerts.remove(resource.name());
            }
            Finding::Violation {
                resource,
                value,
                limit,
                policy,
            } => {
                let what = crate::limits::describe(resource, value, limit);
                match policy {
                    LimitPolicy::None => {}
                    LimitPolicy::Alert => {
                        crate::limits::raise_alert(&id, &what, self.ctx.events.as_ref());
                        self.alerts_total += 1;
                        self.alerts.insert(resource.name(), what);
                    }
                    // `log`, and (config validation refuses them for an unmanaged
                    // process) every acting policy: reported, never acted on.
                    _ => tracing::warn!(id = id.as_str(), "limit exceeded: {what}"),
                }
            }
        }
    }

    fn limits_view(&self) -> LimitsView {
        let Some(limits) = &self.limits else {
            return LimitsView::default();
        };
        LimitsView {
            enforcement: rl::Resource::ALL
                .into_iter()
                .filter(|r| limits.limit(*r).is_some())
                .map(|r| {
                    (
                        r.name().into(),
                        "polling".into(),
                        "reported only: an unmanaged process is never throttled, stopped or \
                         restarted"
                            .into(),
                    )
                })
                .collect(),
            alerts: self.alerts.values().cloned().collect(),
            alerts_total: self.alerts_total,
            ..LimitsView::default()
        }
    }

    fn publish(&self) {
        let (pid, started_at, run) = match &self.phase {
            Phase::Found(s) => (Some(s.pid), s.started_at, Some(s.run)),
            Phase::NotFound => (None, None, None),
        };
        let health = match &self.phase {
            // Liveness: healthy while found, as the kernel has not reported its end.
            Phase::Found(s) if s.check.is_none() => HealthReport {
                status: HealthStatus::Healthy,
                ..HealthReport::unknown()
            },
            Phase::Found(_) => self.health.report().clone(),
            Phase::NotFound => HealthReport::unknown(),
        };
        let published = Published {
            status: ProcessStatus {
                id: self.def.id.clone(),
                process_type: self.def.process_type,
                state: self.machine.state(),
                pid,
                started_at,
                restart_count: 0,
                last_exit: None,
                reason: self.machine.reason().to_owned(),
                circuit: Circuit::Closed,
                next_restart_at: None,
                resources: None,
                adopted: false,
            },
            run,
            health,
            log_ready: false,
            waiting_for: Vec::new(),
            limits: self.limits_view(),
        };
        let mut relevant = false;
        self.status_tx.send_if_modified(|old| {
            let changed = *old != published;
            relevant = crate::deps::relevant_change(old, &published);
            *old = published;
            changed
        });
        if relevant {
            self.ctx.peers.bump();
        }
    }

    /// The observer ends: its tasks go, its process stays as it is. A process in sight
    /// leaves `running` (the journal of a later manager, or of a new observer, starts
    /// again from `stopped`), the reason saying it was left running.
    fn finish(&mut self, why: &str) {
        if let Phase::Found(s) = &self.phase {
            let reason = format!("no longer observed ({why}); pid {} is left running", s.pid);
            self.end_sighting();
            if let Err(e) =
                self.machine
                    .transition(ProcessState::Stopped, reason, self.ctx.events.as_ref())
            {
                tracing::error!("{e}");
            }
        }
        self.next_look = None;
        self.publish();
        let status = self.status_tx.subscribe();
        self.ctx.peers.remove_if(&self.def.id, &status);
    }
}

/// One look, on a blocking thread: the process's PID and start time. The manager itself
/// is never the process it looks for.
fn find(method: &DiscoveryMethod) -> Option<(u32, u64)> {
    let pid = match method {
        DiscoveryMethod::PidFile(path) => hsu_process::by_pid_file(path),
        DiscoveryMethod::ProcessName(name) => hsu_process::by_process_name(name),
        DiscoveryMethod::Port(port) => hsu_process::by_port(*port),
    }?;
    if pid == std::process::id() {
        return None;
    }
    Some((pid, hsu_process::start_time(pid)?))
}

/// `pid_file /run/x.pid`, `process_name nginx`, `port 8080`.
fn describe(method: &DiscoveryMethod) -> String {
    match method {
        DiscoveryMethod::PidFile(path) => format!("pid_file {}", path.display()),
        DiscoveryMethod::ProcessName(name) => format!("process_name {name}"),
        DiscoveryMethod::Port(port) => format!("port {port}"),
    }
}

/// What a look that found nothing found, in words.
fn missing(method: &DiscoveryMethod) -> String {
    match method {
        DiscoveryMethod::PidFile(path) => format!("no live process in {}", path.display()),
        DiscoveryMethod::ProcessName(name) => format!("no process named {name}"),
        DiscoveryMethod::Port(port) => format!("nothing listens on port {port}"),
    }
}
