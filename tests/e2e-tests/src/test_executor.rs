//! Where a test run lives and what it runs: the real binaries and a per-run artifact
//! directory.
//!
//! Every run gets `target/tmp/<test-name>/run-<unix-millis>/` holding `config.yaml`,
//! `procman.log` (the manager's stdout and stderr) and `base/` (the manager's
//! `--base-dir`: journal, PID files, captured logs). Artifacts are kept after the test so
//! a failure can be read afterwards, as the seed describes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `hsu-process-manager`.
    pub manager: PathBuf,
    /// `testexe`, the configurable misbehaving child.
    pub testexe: PathBuf,
}

/// The workspace root (this package sits at `tests/e2e-tests`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The profile directory the running test binary was built into, e.g. `target/debug`
/// (the test binary itself is `target/debug/deps/<name>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let exe = exe.canonicalize().unwrap_or(exe);
    let deps = exe.parent().expect("test binary has a parent directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent directory")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// The cargo target directory (`target/`), parent of [`profile_dir`].
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().map(Path::to_path_buf).unwrap_or(profile)
}

/// The binaries under test, brought up to date once per test process.
///
/// Runs `cargo build -p hsu-process-manager -p testexe` (`$CARGO`, else `cargo`) into
/// the same target directory and profile as the test binary: a no-op when they are
/// fresh, and it keeps `cargo test -p e2e-tests` from silently testing a stale manager
/// (cargo does not rebuild another package's binaries for this one's tests). Cargo
/// releases its build lock before it runs test binaries, so this nested build does not
/// deadlock under `cargo test`. With `HSU_E2E_SKIP_BUILD=1` the binaries found next to
/// the test binary are used as they are (they are still built when missing).
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let dir = profile_dir();
        let bins = Binaries {
            manager: dir.join("hsu-process-manager"),
            testexe: dir.join("testexe"),
        };
        let skip = std::env::var_os("HSU_E2E_SKIP_BUILD").is_some_and(|v| v != "0");
        if !skip || !bins.manager.is_file() || !bins.testexe.is_file() {
            build_binaries(&dir);
        }
        for bin in [&bins.manager, &bins.testexe] {
            assert!(
                bin.is_file(),
                "{} is missing after building it",
                bin.display()
            );
        }
        bins
    })
}

fn build_binaries(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "hsu-process-manager",
        "-p",
        "testexe",
    ]);
    if let Some(target) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "building the binaries under test failed: {cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Quotes `s` as a YAML double-quoted scalar (a JSON string is one).
pub fn yaml_str(s: impl AsRef<str>) -> String {
    serde_json::Value::String(s.as_ref().to_owned()).to_string()
}

/// A YAML flow sequence of quoted strings, e.g. `["--crash-after", "0.2"]`.
pub fn yaml_list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(yaml_str).collect();
    format!("[{}]", items.join(", "))
}

/// One test run's artifact directory.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// `target/tmp/<test-name>/run-<unix-millis>`.
    pub dir: PathBuf,
    /// `<dir>/base`, the manager's `--base-dir`.
    pub base_dir: PathBuf,
    /// `<dir>/config.yaml`.
    pub config_path: PathBuf,
    /// `<dir>/procman.log`, the manager's stdout and stderr.
    pub log_path: PathBuf,
}

impl TestRun {
    /// Creates a fresh `target/tmp/<test_name>/run-<unix-millis>/` (with `base/`).
    pub fn new(test_name: &str) -> TestRun {
        let parent = target_dir().join("tmp").join(test_name);
        std::fs::create_dir_all(&parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis();
        // Two runs of one test in the same millisecond get distinct directories.
        let dir = (0..)
            .map(|n| match n {
                0 => parent.join(format!("run-{millis}")),
                n => parent.join(format!("run-{millis}-{n}")),
            })
            .find(|d| std::fs::create_dir(d).is_ok())
            .expect("some run directory name is free");
        let dir = dir.canonicalize().unwrap_or(dir);
        let base_dir = dir.join("base");
        std::fs::create_dir(&base_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", base_dir.display()));
        TestRun {
            config_path: dir.join("config.yaml"),
            log_path: dir.join("procman.log"),
            base_dir,
            dir,
        }
    }

    /// Writes `config.yaml` from `template`, replacing `{testexe}` with the quoted path of
    /// testexe and `{run_dir}` with the quoted run directory. Returns the text written.
    pub fn write_config(&self, template: &str) -> String {
        let text = expand(template, self);
        std::fs::write(&self.config_path, &text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config_path.display()));
        text
    }

    /// Writes `<dir>/<name>` from `template`, expanded as [`TestRun::write_config`] does
    /// (e.g. a second config for a client to read). Returns its path.
    pub fn write_file(&self, name: &str, template: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, expand(template, self))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// The tag prefix every process of this run carries in `HSU_PROCESS_TAG`
    /// (`<base-dir>#`).
    pub fn tag_prefix(&self) -> String {
        format!("{}#", self.base_dir.display())
    }

    /// `base/events.jsonl`.
    pub fn journal_path(&self) -> PathBuf {
        self.base_dir.join("events.jsonl")
    }

    /// `base/pids/<id>.pid`.
    pub fn pid_file(&self, id: &str) -> PathBuf {
        self.base_dir.join("pids").join(format!("{id}.pid"))
    }

    /// `base/logs/<id>.<stream>.log` (`stream` is `stdout` or `stderr`).
    pub fn output_log(&self, id: &str, stream: &str) -> PathBuf {
        self.base_dir
            .join("logs")
            .join(format!("{id}.{stream}.log"))
    }

    /// A path inside the run directory (e.g. for testexe's `--pid-file`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The manager's output so far (empty when there is none yet).
    pub fn procman_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

fn expand(template: &str, run: &TestRun) -> String {
    let testexe = binaries().testexe.display().to_string();
    template
        .replace("{testexe}", &yaml_str(testexe))
        .replace("{run_dir}", &yaml_str(run.dir.display().to_string()))
}

/// The top of every generated config: the API on a free port (`port: 0`, so tests run in
/// parallel), up to `managed_processes:`.
pub const CONFIG_HEADER: &str =
    "process_manager:\n  port: 0\n  force_shutdown_timeout: 20s\nmanaged_processes:\n";

/// A minimal canonical-form config (SPEC §4.1) with one `standard_managed` process
/// running testexe with `args`; `control_extra` is added to `management.control`, each
/// line indented by 8 spaces in the output (pass lines without indentation).
pub fn single_process_config(id: &str, args: &[&str], control_extra: &str) -> String {
    format!(
        "{CONFIG_HEADER}{}",
        testexe_process(id, args, control_extra)
    )
}

/// One `managed_processes` entry: a `standard_managed` testexe with `args`, and
/// `control_extra` lines added to `management.control` (see [`single_process_config`]).
pub fn testexe_process(id: &str, args: &[&str], control_extra: &str) -> String {
    let extra: String = control_extra
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("        {l}\n"))
        .collect();
    format!(
        "  - id: {id}\n    type: standard_managed\n    management:\n      \
         control:\n        executable: {{testexe}}\n        arguments: {args}\n{extra}",
        args = yaml_list(args),
    )
}

/// A free loopback port (for a test server or testexe to listen on): bound once to find
/// it, then released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A config of [`CONFIG_HEADER`] and `entries` (e.g. from [`testexe_process`]).
pub fn processes_config(entries: &[String]) -> String {
    format!("{CONFIG_HEADER}{}", entries.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_quoting() {
        assert_eq!(yaml_str("a b"), "\"a b\"");
        assert_eq!(yaml_str("q\"x"), "\"q\\\"x\"");
        assert_eq!(yaml_list(&["--x", "1"]), "[\"--x\", \"1\"]");
        assert_eq!(yaml_list::<&str>(&[]), "[]");
    }

    #[test]
    fn single_process_config_shape() {
        let c = single_process_config("svc", &["--run-duration", "0"], "graceful_timeout: 2s\n");
        assert!(c.contains("  - id: svc\n"), "{c}");
        assert!(c.contains("        executable: {testexe}\n"), "{c}");
        assert!(
            c.contains("        arguments: [\"--run-duration\", \"0\"]\n"),
            "{c}"
        );
        assert!(c.ends_with("        graceful_timeout: 2s\n"), "{c}");
    }

    #[test]
    fn profile_dir_is_above_deps() {
        let dir = profile_dir();
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
        assert_eq!(target_dir(), dir.parent().unwrap());
    }
}
