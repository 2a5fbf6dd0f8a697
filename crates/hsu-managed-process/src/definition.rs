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
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessType::StandardManaged => "standard_managed",
            ProcessType::IntegratedManaged => "integrated_managed",
            ProcessType::Unmanaged => "unmanaged",
        }
    }

    pub fn is_managed(self) -> bool {
        !matches!(self, ProcessType::Unmanaged)
    }
}

/// One entry of `managed_processes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessDefinition {
    pub id: String,
    pub process_type: ProcessType,
    pub enabled: bool,
    /// Present for the managed types; for unmanaged only when the user gave one
    /// (graceful_timeout etc. are then informational).
    pub control: Option<ControlSpec>,
    pub health_check: HealthCheckSpec,
    pub log_collection: ProcessLogCollection,
    /// Present for unmanaged processes only.
    pub discovery: Option<DiscoverySpec>,
    /// Free-form labels (nested form `metadata`), shown in status.
    pub metadata: BTreeMap<String, String>,
    /// Nested form `profile_type`, shown in status.
    pub profile_type: Option<String>,
}

/// How to run and stop a managed process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlSpec {
    /// Absolute when the user wrote a path (anything with a `/`); a bare name is looked
    /// up on `PATH` at spawn time.
    pub executable: PathBuf,
    pub arguments: Vec<String>,
    /// Absolute; the config file's directory when not given.
    pub working_directory: PathBuf,
    /// Added to (and overriding) the manager's own environment.
    pub environment: BTreeMap<String, String>,
    pub graceful_timeout: Duration,
    pub stop_signal: StopSignal,
    pub restart_policy: RestartPolicy,
    pub restart: RestartTuning,
    pub limits: Limits,
    /// integrated_managed only: the flag the manager appends before the port number.
    pub port_argument: Option<String>,
}

impl ControlSpec {
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
        }
    }
}

/// When an exited process is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    Never,
    #[default]
    OnFailure,
    Always,
}

impl RestartPolicy {
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
    pub retry_delay: Option<Duration>,
    pub backoff_rate: Option<f64>,
    pub max_retries: Option<u32>,
}

/// What to do when a limit is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitPolicy {
    None,
    #[default]
    Log,
    Alert,
    Throttle,
    GracefulShutdown,
    ImmediateKill,
    Restart,
    RestartAdjusted,
}

impl LimitPolicy {
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

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Limits {
    pub memory: Option<MemoryLimit>,
    pub cpu: Option<CpuLimit>,
    pub file_descriptors: Option<CountLimit>,
    pub processes: Option<CountLimit>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryLimit {
    /// Bytes, for the whole process tree.
    pub max_rss: u64,
    /// Percent of `max_rss` at which a warning event is emitted.
    pub warning_threshold: Option<f64>,
    pub policy: LimitPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuLimit {
    /// Percent of one core (200 = two cores), for the whole process tree.
    pub max_percent: f64,
    pub warning_threshold: Option<f64>,
    pub policy: LimitPolicy,
    /// How long usage must stay above the limit before the policy acts.
    pub sustained_for: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountLimit {
    pub max: u64,
    pub policy: LimitPolicy,
}

/// How a process's health is judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckSpec {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub initial_delay: Duration,
    /// Consecutive failures that make a process unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes that make it healthy again.
    pub success_threshold: u32,
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// Healthy while the process is alive (observed from the kernel, not polled).
    Process,
    Http {
        url: String,
        method: String,
    },
    Grpc {
        address: String,
        service: String,
    },
    Tcp {
        address: String,
    },
    Exec {
        command: PathBuf,
        arguments: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessLogCollection {
    pub enabled: bool,
    pub capture_stdout: bool,
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiscoverySpec {
    pub method: DiscoveryMethod,
    pub check_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryMethod {
    PidFile(PathBuf),
    ProcessName(String),
    Port(u16),
}
