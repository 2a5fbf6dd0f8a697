//! What the collector is told: rotation, timestamps and the aggregation targets. The
//! config loader fills these from `log_collection:`; they can change while the manager
//! runs ([`crate::LogCollector::update`]).

use std::path::PathBuf;

/// How captured output is stored and where it is copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// When a capture file (and a `file` target) is rotated, and how many rotated files
    /// are kept.
    pub rotation: Rotation,
    /// Prefix each line stored in `<id>.<stream>.log` with its arrival time (RFC 3339,
    /// microseconds, UTC) and a space.
    pub timestamps: bool,
    /// Where every process's output is copied as well (global aggregation); empty for
    /// none.
    pub targets: Vec<Target>,
}

impl Default for Settings {
    /// The config's defaults: 10 MiB × 5 files, timestamps on, no aggregation.
    fn default() -> Self {
        Settings {
            rotation: Rotation::default(),
            timestamps: true,
            targets: Vec::new(),
        }
    }
}

/// Size-based rotation: `<file>` becomes `<file>.1`, `.1` becomes `.2`, ... and `.N`
/// is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file is rotated before a line would take it past this many bytes. Lines are
    /// never split across files, so a file holding one line longer than this is the only
    /// file that exceeds it.
    pub max_size: u64,
    /// How many rotated files are kept (`.1` ... `.N`); at least 1.
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

/// One aggregation target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where the lines go.
    pub kind: TargetKind,
    /// How each line is written.
    pub format: Format,
    /// Text put before each line (`plain` and `enhanced_plain`), or a `prefix` field
    /// (`json`, so that every line stays valid JSON).
    pub prefix: Option<String>,
}

/// Where an aggregation target writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A file, rotated like the capture files; a relative path is relative to the log
    /// directory.
    File(PathBuf),
    /// The manager's standard output.
    Stdout,
    /// The manager's standard error.
    Stderr,
}

/// How a target writes each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The line as the process wrote it.
    #[default]
    Plain,
    /// `<arrival time> <id>[<stream>] <line>`.
    EnhancedPlain,
    /// One JSON object a line: `{"ts", "id", "stream", "line"}` (see the crate docs).
    Json,
}
