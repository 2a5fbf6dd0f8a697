//! The configuration loader: reads a YAML config file, in either of its two forms, into
//! the one process-definition model ([`ProcessDefinition`]) plus the manager's own
//! settings.
//!
//! The two forms are the canonical one (`management: {control, health_check, ...}`) and
//! the earlier HSU nested one (`management: {standard_managed: {control: {execution:
//! ...}}}`); the form is decided per process, and nothing downstream can tell which was
//! written. `docs/configuration.md` describes every key.
//!
//! Loading never stops at the first problem: the whole file is walked and every problem
//! is reported, each located as `FILE:LINE:COL: dotted.path: message`, so that
//! `hsu-process-manager validate` can show them all at once. A config with any problem
//! yields no [`Config`] at all. Defaults are applied and relative paths resolved here
//! (against the config file's directory), so the model below holds final values.
//!
//! This module only reads and checks text: it never touches the processes, and it reads
//! no file but the config itself (paths it names are not checked for existence, since
//! they may appear later).

mod canonical;
mod ctx;
mod deps;
mod health;
mod limits;
mod manager;
mod nested;
mod problem;
mod process;
mod sections;
mod values;
mod yaml;

pub use problem::{ConfigErrors, Problem};

use hsu_managed_process::ProcessDefinition;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest config file read, in bytes (4 MiB): far above any real config, and a
/// bound on the memory a mistaken `--config /dev/zero` (or a hostile file) can take.
pub const MAX_FILE_SIZE: u64 = 4 * 1024 * 1024;

/// The longest string value (or mapping key) a config may hold, in bytes (64 KiB):
/// metadata values, arguments, environment variables, paths. Process ids are limited to
/// 64 characters and user and group names to 32, separately.
pub const MAX_STRING_LEN: usize = 64 * 1024;

/// A loaded, valid config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file, as an absolute path.
    pub source: PathBuf,
    /// The directory relative paths in the config were resolved against.
    pub config_dir: PathBuf,
    /// `process_manager`: the manager's own settings.
    pub manager: ManagerSettings,
    /// Every process, in file order, disabled ones included (the manager skips them).
    pub processes: Vec<ProcessDefinition>,
    /// Top-level `log_collection`: output capture, rotation and aggregation.
    pub log_collection: LogCollectionSettings,
}

/// `process_manager:` (plus the nested form's top-level `profile_type` and `metadata`).
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerSettings {
    /// Control API port; 0 picks a free one.
    pub port: u16,
    /// `bind`: the address the control API listens on; a non-loopback one needs an API token.
    pub bind: IpAddr,
    /// Absolute.
    pub api_token_file: Option<PathBuf>,
    /// `log_level`: the manager's own log level (`--debug` and `RUST_LOG` override it).
    pub log_level: LogLevel,
    /// Absolute when given; `None` leaves the choice to the manager (see the spec, §6).
    pub base_directory: Option<PathBuf>,
    /// `force_shutdown_timeout`: upper bound on the whole shutdown.
    pub force_shutdown_timeout: Duration,
    /// `resource_sample_interval`: how often resource usage is sampled (under 100 ms counts
    /// as 100 ms).
    pub resource_sample_interval: Duration,
    /// `event_journal`: when `events.jsonl` is rotated and how many rotated files are kept.
    pub event_journal: Rotation,
    /// Nested form top-level `profile_type`, informational.
    pub profile_type: Option<String>,
    /// Nested form top-level `metadata`, informational.
    pub metadata: BTreeMap<String, String>,
}

impl ManagerSettings {
    /// The control API port used when `port` is absent.
    pub const DEFAULT_PORT: u16 = 50055;
}

impl Default for ManagerSettings {
    fn default() -> Self {
        ManagerSettings {
            port: Self::DEFAULT_PORT,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_token_file: None,
            log_level: LogLevel::Info,
            base_directory: None,
            force_shutdown_timeout: Duration::from_secs(30),
            resource_sample_interval: Duration::from_secs(1),
            event_journal: Rotation::default(),
            profile_type: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// The manager's own log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// `trace`: the most detailed output.
    Trace,
    /// `debug`: detail for finding problems.
    Debug,
    /// `info` (the default): what the manager does, in normal operation.
    #[default]
    Info,
    /// `warn`: warnings and errors only.
    Warn,
    /// `error`: errors only.
    Error,
}

impl LogLevel {
    /// The level's name as written in the config, e.g. `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Top-level `log_collection:`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogCollectionSettings {
    /// `enabled`: `false` captures no process's output.
    pub enabled: bool,
    /// Kept as written: relative to the base directory unless absolute.
    pub directory: PathBuf,
    /// `rotation`: when capture files (and `file` targets) are rotated and how many
    /// rotated files are kept.
    pub rotation: Rotation,
    /// Prefix each stored line with its arrival time.
    pub timestamps: bool,
    /// `global_aggregation`: copying every process's output (and the manager's own log)
    /// to shared targets.
    pub global_aggregation: Aggregation,
}

impl Default for LogCollectionSettings {
    fn default() -> Self {
        LogCollectionSettings {
            enabled: true,
            directory: PathBuf::from("logs"),
            rotation: Rotation::default(),
            timestamps: true,
            global_aggregation: Aggregation::default(),
        }
    }
}

impl LogCollectionSettings {
    /// What the log collector is told: rotation, timestamps, and the targets (none when
    /// aggregation is disabled). Target paths stay as written; the collector resolves them
    /// against its log directory.
    pub fn collector_settings(&self) -> hsu_log_collection::Settings {
        use hsu_log_collection as lc;
        let targets = if self.global_aggregation.enabled {
            self.global_aggregation
                .targets
                .iter()
                .map(|t| lc::Target {
                    kind: match t.kind {
                        TargetKind::File => lc::TargetKind::File(
                            t.path
                                .clone()
                                .unwrap_or_else(|| PathBuf::from("aggregated.log")),
                        ),
                        TargetKind::ProcessManagerStdout => lc::TargetKind::Stdout,
                        TargetKind::ProcessManagerStderr => lc::TargetKind::Stderr,
                    },
                    format: match t.format {
                        LogFormat::Plain => lc::Format::Plain,
                        LogFormat::EnhancedPlain => lc::Format::EnhancedPlain,
                        LogFormat::Json => lc::Format::Json,
                    },
                    prefix: t.prefix.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        lc::Settings {
            rotation: lc::Rotation {
                max_size: self.rotation.max_size,
                max_files: self.rotation.max_files,
            },
            timestamps: self.timestamps,
            targets,
        }
    }
}

/// `log_collection.rotation` (and `process_manager.event_journal`): size-based rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    /// Bytes at which a log file is rotated.
    pub max_size: u64,
    /// Rotated files kept (`.1` ... `.N`).
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// Where all processes' output is copied to, besides the per-process files.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregation {
    /// `enabled`: `false` aggregates nothing.
    pub enabled: bool,
    /// `targets`: where the aggregated output goes; with none, nothing is aggregated.
    pub targets: Vec<AggregationTarget>,
}

impl Default for Aggregation {
    fn default() -> Self {
        Aggregation {
            enabled: true,
            targets: Vec::new(),
        }
    }
}

/// One `global_aggregation.targets` entry: one place aggregated output is written to.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregationTarget {
    /// `type`: a file, or the manager's own stdout or stderr.
    pub kind: TargetKind,
    /// `file` targets only; kept as written: relative to the log directory unless absolute.
    pub path: Option<PathBuf>,
    /// `format`: how each line is written.
    pub format: LogFormat,
    /// `prefix`: text put before each line (a `prefix` field in `json`).
    pub prefix: Option<String>,
}

/// A target's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// `file`: a file at `path`, rotated like the capture files.
    File,
    /// `process_manager_stdout`: the manager's own standard output.
    ProcessManagerStdout,
    /// `process_manager_stderr`: the manager's own standard error.
    ProcessManagerStderr,
}

/// A target's line `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `plain` (the default): the line as the process wrote it.
    #[default]
    Plain,
    /// `enhanced_plain`: `<arrival time> <id>[<stream>] <line>`.
    EnhancedPlain,
    /// `json`: one JSON object per line, `{"ts", "id", "stream", "line"}`.
    Json,
}

/// Reads and loads a config file. A file that cannot be read, is larger than
/// [`MAX_FILE_SIZE`] or is not UTF-8 is one problem (at 1:1, or at the first byte that is
/// not UTF-8).
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let bytes = read_limited(path).map_err(|message| file_problem(path, 1, 1, message))?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => load_str(text, path),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = 1 + valid.iter().filter(|b| **b == b'\n').count();
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            // Everything before the bad byte is UTF-8, so the column counts characters.
            let col = 1 + String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count();
            let byte = bytes[e.valid_up_to()];
            let message = format!(
                "the config file is not valid UTF-8: byte 0x{byte:02X} here does not start \
                 or continue a character (save the file as UTF-8)"
            );
            Err(file_problem(path, line, col, message))
        }
    }
}

/// The file's content, refused when over [`MAX_FILE_SIZE`]: never more than that (plus
/// one byte) is read, whatever the file is (`/dev/zero`, a pipe, a growing file).
fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let too_large = || {
        format!(
            "the config file is larger than {} MiB, the most a config may be",
            MAX_FILE_SIZE / (1024 * 1024)
        )
    };
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read the config file: {e}"))?;
    if file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() > MAX_FILE_SIZE)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the config file: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large());
    }
    Ok(bytes)
}

fn file_problem(path: &Path, line: usize, col: usize, message: String) -> ConfigErrors {
    ConfigErrors(vec![Problem {
        file: path.display().to_string(),
        line,
        col,
        path: String::new(),
        message,
    }])
}

/// Loads a config from text; `source` names it in problems, and its directory is the one
/// relative paths are resolved against. Text over [`MAX_FILE_SIZE`] is refused, as from
/// a file.
pub fn load_str(text: &str, source: &Path) -> Result<Config, ConfigErrors> {
    if text.len() as u64 > MAX_FILE_SIZE {
        let message = format!(
            "the config is larger than {} MiB, the most a config may be",
            MAX_FILE_SIZE / (1024 * 1024)
        );
        return Err(file_problem(source, 1, 1, message));
    }
    let absolute = std::path::absolute(source).unwrap_or_else(|_| source.to_path_buf());
    let config_dir = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut cx = ctx::Ctx::new(source.display().to_string(), config_dir.clone());
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            cx.report_at(e.line, e.col, "", e.message);
            return Err(ConfigErrors(cx.problems));
        }
    };
    let parts = manager::root(&mut cx, root.as_ref());
    if !cx.problems.is_empty() {
        let mut problems = cx.problems;
        problems.sort_by_key(|p| (p.line, p.col));
        return Err(ConfigErrors(problems));
    }
    let mut processes = parts.processes;
    if !parts.log_collection.enabled {
        // The top-level switch turns capture off for every process; a process's own
        // `enabled` can only turn it off for itself.
        for p in &mut processes {
            p.log_collection.enabled = false;
        }
    }
    Ok(Config {
        source: absolute,
        config_dir,
        manager: parts.manager,
        processes,
        log_collection: parts.log_collection,
    })
}

#[cfg(test)]
mod tests;
