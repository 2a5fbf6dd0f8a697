//! The process-definition model: what the user asked for, after defaults and path
//! resolution, independent of the config form it came from.

use hsu_common::StopSignal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How much of a process the manager owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessType {
    /// Spawned, supervised, restarted and stopped by the manager.
    StandardManaged,
    /// Like standard, and the process speaks the HSU gRPC protocol on a port the manager picks.
    IntegratedManaged,
    /// Started elsewhere; the manager only discovers and observes it.
    Unmanaged,
}

impl ProcessType {
    /// The type's name as written in the config and shown in status, e.g. `standard_managed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessType::StandardManaged => "standard_managed",
            ProcessType::IntegratedManaged => "integrated_managed",
            ProcessType::Unmanaged => "unmanaged",
        }
    }

    /// Whether the manager spawns and stops the process itself (every type but `unmanaged`).
    pub fn is_managed(self) -> bool {
        !matches!(self, ProcessType::Unmanaged)
    }
}

/// One entry of `managed_processes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessDefinition {
    /// `id`: the process's unique name, 1 to 64 of `A-Z a-z 0-9 _ -`.
    pub id: String,
    /// `type`: how much of the process the manager owns.
    pub process_type: ProcessType,
    /// `enabled`: `false` keeps the process in the config without starting it.
    pub enabled: bool,
    /// Present for the managed types; for unmanaged only when the user gave one
    /// (graceful_timeout etc. are then informational).
    pub control: Option<ControlSpec>,
    /// `management.health_check`: how the process's health is judged.
    pub health_check: HealthCheckSpec,
    /// `management.log_collection`: which of its output streams are captured.
    pub log_collection: ProcessLogCollection,
    /// Present for unmanaged processes only.
    pub discovery: Option<DiscoverySpec>,
    /// Free-form labels (nested form `metadata`), shown in status.
    pub metadata: BTreeMap<String, String>,
    /// Nested form `profile_type`, shown in status.
    pub profile_type: Option<String>,
    /// `depends_on`: what must hold of other processes before this one starts.
    pub depends_on: Vec<Dependency>,
    /// `ready_log_line`: a regular expression; the first output line matching it makes
    /// the process `log_ready` for its dependents.
    pub ready_log_line: Option<String>,
}

/// One `depends_on` entry: a process this one waits for, and on what.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dependency {
    /// The id of the process depended on.
    pub id: String,
    /// What must hold of it (a bare id means `started`).
    pub condition: DependencyCondition,
    /// Give up waiting after this long (`timeout`, or the process's `depends_on_timeout`);
    /// `None` waits as long as it takes.
    pub timeout: Option<Duration>,
    /// `restart: propagate`: a restart of the dependency restarts this process too.
    pub propagate_restart: bool,
}

/// What a dependency must have reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    /// It is running (spawned; for a checked process, past its first passing check is
    /// `healthy`).
    Started,
    /// Its health checks pass.
    Healthy,
    /// It ran and exited (any code).
    Completed,
    /// It ran and exited with code 0.
    CompletedSuccessfully,
    /// A line of its output matched its `ready_log_line`.
    LogReady,
}

impl DependencyCondition {
    /// Every condition, as written in the config.
    pub const NAMES: [&'static str; 5] = [
        "started",
        "healthy",
        "completed",
        "completed_successfully",
        "log_ready",
    ];

    /// The condition's name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            DependencyCondition::Started => "started",
            DependencyCondition::Healthy => "healthy",
            DependencyCondition::Completed => "completed",
            DependencyCondition::CompletedSuccessfully => "completed_successfully",
            DependencyCondition::LogReady => "log_ready",
        }
    }
}

/// How to run and stop a managed process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlSpec {
    /// Absolute when the user wrote a path (anything with a `/`); a bare name is looked
    /// up on `PATH` at spawn time.
    pub executable: PathBuf,
    /// `control.arguments`: the arguments passed to the executable.
    pub arguments: Vec<String>,
    /// Absolute; the config file's directory when not given.
    pub working_directory: PathBuf,
    /// Added to (and overriding) the manager's own environment.
    pub environment: BTreeMap<String, String>,
    /// `control.graceful_timeout`: how long a stop waits after `stop_signal` before it
    /// kills the whole tree.
    pub graceful_timeout: Duration,
    /// `control.stop_signal`: the signal sent to the process group to ask it to stop.
    pub stop_signal: StopSignal,
    /// `control.restart_policy`: which exits lead to a restart.
    pub restart_policy: RestartPolicy,
    /// `control.restart`: backoff and circuit-breaker tuning.
    pub restart: RestartTuning,
    /// `control.limits`: resource limits and what to do when one is crossed.
    pub limits: Limits,
    /// integrated_managed only: the flag the manager appends before the port number.
    pub port_argument: Option<String>,
    /// `control.user`: run as this user (a name or a numeric id); `None` runs as the
    /// manager's own user. Needs a manager running as root.
    pub user: Option<String>,
    /// `control.group`: run with this primary group (a name or a numeric id); `None`
    /// takes the user's own primary group (or the manager's, without `user`).
    pub group: Option<String>,
}

impl ControlSpec {
    /// The `graceful_timeout` used when the config gives none (10 s).
    pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(10);

    /// A spec with every default, for tests and programmatic use.
    pub fn new(executable: impl Into<PathBuf>, working_directory: impl Into<PathBuf>) -> Self {
        ControlSpec {
            executable: executable.into(),
            arguments: Vec::new(),
            working_directory: working_directory.into(),
            environment: BTreeMap::new(),
            graceful_timeout: Self::DEFAULT_GRACEFUL_TIMEOUT,
            stop_signal: StopSignal::Term,
            restart_policy: RestartPolicy::OnFailure,
            restart: RestartTuning::default(),
            limits: Limits::default(),
            port_argument: None,
            user: None,
            group: None,
        }
    }
}

/// When an exited process is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// `never`: an ended process is never restarted.
    Never,
    /// `on_failure` (the default): restart after a non-zero exit or a kill; a clean exit
    /// (code 0) completes the process.
    #[default]
    OnFailure,
    /// `always`: restart after every exit, clean or not.
    Always,
}

impl RestartPolicy {
    /// The policy's name as written in the config, e.g. `on_failure`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on_failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// Backoff and circuit-breaker tuning (`restart:` in the canonical form).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartTuning {
    /// Delay before the first restart.
    pub retry_delay: Duration,
    /// Each consecutive restart waits this many times the previous delay.
    pub backoff_rate: f64,
    /// Cap on any delay.
    pub max_delay: Duration,
    /// This much uptime forgets earlier failures.
    pub reset_after: Duration,
    /// Restarts allowed inside `window` before the breaker opens.
    pub max_retries: u32,
    /// `window`: the time span in which `max_retries` restarts are counted.
    pub window: Duration,
    /// How long an open breaker waits before its one trial start; zero = until started by hand.
    pub cooldown: Duration,
    /// Overrides for restarts caused by failed health checks.
    pub health_failures: TriggerOverride,
    /// Overrides for restarts caused by resource-limit violations.
    pub resource_violations: TriggerOverride,
    /// Nested form `startup_grace_period`: time after a start during which health and
    /// resource triggers are not acted on.
    pub startup_grace_period: Duration,
}

impl Default for RestartTuning {
    fn default() -> Self {
        RestartTuning {
            retry_delay: Duration::from_secs(1),
            backoff_rate: 2.0,
            max_delay: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
            max_retries: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
            health_failures: TriggerOverride::default(),
            resource_violations: TriggerOverride::default(),
            startup_grace_period: Duration::ZERO,
        }
    }
}

/// Per-trigger budget overrides; `None` falls back to the process-wide tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct TriggerOverride {
    /// `retry_delay` for this trigger.
    pub retry_delay: Option<Duration>,
    /// `backoff_rate` for this trigger.
    pub backoff_rate: Option<f64>,
    /// `max_retries` for this trigger.
    pub max_retries: Option<u32>,
}

/// What to do when a limit is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitPolicy {
    /// `none`: do nothing.
    None,
    /// `log` (the default): warn in the manager log and the event journal.
    #[default]
    Log,
    /// `alert`: emit an `alert` event and show it in the process's status.
    Alert,
    /// `throttle`: slow the process down (CPU quota or memory pressure) instead of stopping it.
    Throttle,
    /// `graceful_shutdown`: stop the process gracefully and do not restart it.
    GracefulShutdown,
    /// `immediate_kill`: kill the whole tree with SIGKILL and do not restart it.
    ImmediateKill,
    /// `restart`: restart gracefully, counted against the `resource_violations` budget.
    Restart,
    /// `restart_adjusted`: restart, and give the next run a limit raised by 25% (up to
    /// twice the configured one).
    RestartAdjusted,
}

impl LimitPolicy {
    /// Every policy name, as written in the config.
    pub const NAMES: [&'static str; 8] = [
        "none",
        "log",
        "alert",
        "throttle",
        "graceful_shutdown",
        "immediate_kill",
        "restart",
        "restart_adjusted",
    ];
}

/// `control.limits`: per-resource limits, each measured over the whole process tree.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Limits {
    /// `memory`: a cap on resident memory.
    pub memory: Option<MemoryLimit>,
    /// `cpu`: a cap on CPU use.
    pub cpu: Option<CpuLimit>,
    /// `file_descriptors`: a cap on open file descriptors.
    pub file_descriptors: Option<CountLimit>,
    /// `processes`: a cap on the number of processes in the tree.
    pub processes: Option<CountLimit>,
}

impl Limits {
    /// No limit is configured.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none()
            && self.cpu.is_none()
            && self.file_descriptors.is_none()
            && self.processes.is_none()
    }
}

/// `limits.memory`: a cap on the tree's resident memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryLimit {
    /// Bytes, for the whole process tree.
    pub max_rss: u64,
    /// Percent of `max_rss` at which a warning event is emitted.
    pub warning_threshold: Option<f64>,
    /// `policy`: what to do when `max_rss` is crossed.
    pub policy: LimitPolicy,
}

/// `limits.cpu`: a cap on the tree's CPU use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuLimit {
    /// Percent of one core (200 = two cores), for the whole process tree.
    pub max_percent: f64,
    /// `warning_threshold`: percent of `max_percent` at which a warning event is emitted.
    pub warning_threshold: Option<f64>,
    /// `policy`: what to do when usage stays above `max_percent` for `sustained_for`.
    pub policy: LimitPolicy,
    /// How long usage must stay above the limit before the policy acts.
    pub sustained_for: Duration,
}

/// `limits.file_descriptors` or `limits.processes`: a cap on a count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountLimit {
    /// `max`: the highest count allowed (at least 1).
    pub max: u64,
    /// `policy`: what to do when `max` is crossed.
    pub policy: LimitPolicy,
}

/// How a process's health is judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckSpec {
    /// `health_check.type` and its settings: what the check probes.
    pub kind: HealthCheckKind,
    /// `health_check.interval`: time between two checks.
    pub interval: Duration,
    /// `health_check.timeout`: how long one check may take before it counts as failed; less
    /// than `interval`.
    pub timeout: Duration,
    /// `health_check.initial_delay`: wait this long after a start before the first check.
    pub initial_delay: Duration,
    /// Consecutive failures that make a process unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes that make it healthy again.
    pub success_threshold: u32,
    /// `health_check.startup_grace_period`: failed checks this soon after a start do not
    /// count (the restart tuning's `startup_grace_period` applies too; the longer wins).
    pub startup_grace_period: Duration,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        HealthCheckSpec {
            kind: HealthCheckKind::Process,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            initial_delay: Duration::ZERO,
            failure_threshold: 3,
            success_threshold: 1,
            startup_grace_period: Duration::ZERO,
        }
    }
}

/// The kind of health check (`health_check.type`) with its kind-specific settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// Healthy while the process is alive (observed from the kernel, not polled).
    Process,
    /// `http`: healthy when a request to `url` answers 2xx.
    Http {
        /// `http.url`: the address requested, starting with `http://` or `https://`.
        url: String,
        /// `http.method`: the HTTP method, upper-case (default `GET`).
        method: String,
    },
    /// `grpc`: healthy when the `grpc.health.v1` Check call reports serving.
    Grpc {
        /// `grpc.address`: where the server listens, as `host:port`.
        address: String,
        /// `grpc.service`: the service name asked about; empty for the server as a whole.
        service: String,
    },
    /// `tcp`: healthy when a TCP connection to `address` succeeds.
    Tcp {
        /// `tcp.address`: where to connect, as `host:port`.
        address: String,
    },
    /// `exec`: healthy when the command exits with status 0.
    Exec {
        /// `exec.command`: the program to run, resolved like `executable`.
        command: PathBuf,
        /// `exec.arguments`: the arguments passed to it.
        arguments: Vec<String>,
    },
}

/// `management.log_collection`: what is captured of one process's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessLogCollection {
    /// `enabled`: `false` captures neither stream.
    pub enabled: bool,
    /// `capture_stdout`: capture standard output to `<id>.stdout.log`.
    pub capture_stdout: bool,
    /// `capture_stderr`: capture standard error to `<id>.stderr.log`.
    pub capture_stderr: bool,
}

impl Default for ProcessLogCollection {
    fn default() -> Self {
        ProcessLogCollection {
            enabled: true,
            capture_stdout: true,
            capture_stderr: true,
        }
    }
}

/// `management.discovery` (unmanaged only): how the manager finds a process it did not start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiscoverySpec {
    /// `method` and its setting: what identifies the process.
    pub method: DiscoveryMethod,
    /// `check_interval`: how often the manager looks for the process.
    pub check_interval: Duration,
}

/// How an unmanaged process is found (`discovery.method`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryMethod {
    /// `pid_file`: the PID written in this file.
    PidFile(PathBuf),
    /// `process_name`: a running process with this name.
    ProcessName(String),
    /// `port`: the process listening on this port.
    Port(u16),
}
