//! `hsu-process-manager`: runs the manager in the foreground, or validates a config.
//!
//! A thin layer over `hsu-process-management` and `hsu-api`: argument parsing, logging
//! set-up, the base directory and its lock, the control API's listeners, signals, the
//! client commands, and exit codes (0 ok, 1 failure, 2 usage or config error).

/// `eprintln!` that never panics: a closed or full stderr loses the line, nothing more.
macro_rules! errln {
    ($($arg:tt)*) => {{
        let _ = ::std::io::Write::write_fmt(
            &mut ::std::io::stderr(),
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}

/// `println!` that never panics (`validate | head` closes stdout early).
macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = ::std::io::Write::write_fmt(
            &mut ::std::io::stdout(),
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}

mod cli;
mod logging;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use hsu_api::{ApiState, ListenSettings};
use hsu_common::{EventKind, EventSink};
use hsu_process_file::{Journal, JournalOptions, ManagerLock};
use hsu_process_management::config::{self, Config};
use hsu_process_management::{ManagerFacade, ManagerOptions, ProcessManager, ReloadError};
use logging::Logging;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "hsu-process-manager",
    version,
    about = "Keeps processes alive, healthy and within their limits."
)]
struct Cli {
    /// The YAML config file (client commands read the API address from it).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Directory for state, PID files, logs and the event journal (overrides the config);
    /// client commands read the API address from its `api.addr`.
    #[arg(long, global = true, value_name = "DIR")]
    base_dir: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    client: cli::ClientArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the manager in the foreground (the default when no command is given).
    Run(RunArgs),
    /// Check a config file and print every problem found.
    Validate,
    #[command(flatten)]
    Client(cli::ClientCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Args, Debug, Clone, Default)]
struct RunArgs {
    /// Control API port (overrides the config).
    #[arg(long)]
    port: Option<u16>,
    /// Log debug detail (RUST_LOG overrides).
    #[arg(long)]
    debug: bool,
    /// Shut down cleanly after this many seconds.
    #[arg(long, value_name = "SECS")]
    run_duration: Option<f64>,
}

fn main() -> ExitCode {
    // Before any thread starts, undo what the launcher may have left: a blocked SIGTERM or
    // SIGHUP must still reach the manager, and stray descriptors must not reach children.
    if let Err(e) = hsu_process::unblock_signals() {
        errln!("warning: cannot unblock signals inherited from the launcher: {e}");
    }
    if let Err(e) = hsu_process::seal_inherited_fds() {
        errln!("warning: cannot mark inherited file descriptors close-on-exec: {e}");
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate) => match &cli.config {
            Some(config) => validate(config),
            None => {
                errln!("error: validate needs --config FILE");
                ExitCode::from(2)
            }
        },
        Some(Command::Run(args)) => run(cli.config, cli.base_dir, args),
        Some(Command::Client(command)) => cli::run(
            command,
            cli.client,
            cli.config,
            cli.base_dir.as_deref(),
            &default_base_dir(),
        ),
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(
                shell,
                &mut cmd,
                "hsu-process-manager",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        None => run(cli.config, cli.base_dir, cli.run),
    }
}

fn validate(path: &Path) -> ExitCode {
    match config::load_file(path) {
        Ok(cfg) => {
            outln!(
                "{}: valid ({} process{})",
                path.display(),
                cfg.processes.len(),
                if cfg.processes.len() == 1 { "" } else { "es" }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            errln!("{errors}");
            errln!("{}: {} problem(s)", path.display(), errors.0.len());
            ExitCode::from(2)
        }
    }
}

fn run(config: Option<PathBuf>, base_dir: Option<PathBuf>, args: RunArgs) -> ExitCode {
    let Some(config_path) = config else {
        errln!("error: --config FILE is required to run the manager");
        return ExitCode::from(2);
    };
    let cfg = match config::load_file(&config_path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            errln!("{errors}");
            errln!(
                "{}: {} problem(s); nothing started",
                config_path.display(),
                errors.0.len()
            );
            return ExitCode::from(2);
        }
    };
    // The API's own rules are checked before anything is locked, written or started.
    let token = match api_token(cfg.manager.api_token_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            errln!("error: {}", one_sentence(&e));
            return ExitCode::from(2);
        }
    };
    if !cfg.manager.bind.is_loopback() && token.is_none() {
        errln!(
            "error: binding the control API to {} requires an API token (process_manager.api_token_file or HSU_API_TOKEN); nothing started",
            cfg.manager.bind
        );
        return ExitCode::from(2);
    }
    // From here on the manager's own output goes through the log, which never blocks
    // and never panics on a dead stderr.
    let logging = Arc::new(Logging::init(args.debug, cfg.manager.log_level.as_str()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(serve(cfg, base_dir, args, token, logging.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", one_sentence(&e));
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    logging.drain();
    code
}

/// The error and its causes as one line, each cause once: a cause whose text the message
/// already holds (an OS error formatted into it) is not repeated.
fn one_sentence(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Creates `dir` (and its parents) with mode 0750 where it is new.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
}

/// The default base directory: system-wide as root, per user otherwise.
fn default_base_dir() -> PathBuf {
    if hsu_process::is_superuser() {
        return PathBuf::from("/var/lib/hsu-process-manager");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("hsu-process-manager")
}

async fn serve(
    cfg: Config,
    base_dir: Option<PathBuf>,
    args: RunArgs,
    token: Option<String>,
    logging: Arc<Logging>,
) -> anyhow::Result<()> {
    let base = base_dir
        .or_else(|| cfg.manager.base_directory.clone())
        .unwrap_or_else(default_base_dir);
    create_private_dir(&base)
        .with_context(|| format!("cannot create base directory {}", base.display()))?;
    let base = base.canonicalize().unwrap_or(base);
    let _lock = ManagerLock::acquire(&base.join("manager.lock"))?;
    let journal = Arc::new(Journal::open_with(
        &base.join("events.jsonl"),
        JournalOptions {
            max_size: cfg.manager.event_journal.max_size,
            max_files: cfg.manager.event_journal.max_files,
            ..JournalOptions::default()
        },
    )?);
    let log_dir = if cfg.log_collection.directory.is_absolute() {
        cfg.log_collection.directory.clone()
    } else {
        base.join(&cfg.log_collection.directory)
    };
    // Made here first so that they are 0750: the manager only creates what is missing.
    for dir in [&log_dir, &base.join("pids")] {
        create_private_dir(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let listen = ListenSettings {
        bind: cfg.manager.bind,
        port: args.port.unwrap_or(cfg.manager.port),
        socket_path: base.join("api.sock"),
        addr_file: base.join("api.addr"),
    };
    let options = ManagerOptions {
        base_directory: base.clone(),
        log_directory: log_dir.clone(),
        force_shutdown_timeout: cfg.manager.force_shutdown_timeout,
        resource_sample_interval: cfg.manager.resource_sample_interval,
    };
    if let Some(seq) = hsu_process_file::recorded_journal_seq(&base.join("state.json")) {
        journal.continue_after(seq);
    }
    let manager = ProcessManager::new(options, journal.clone())?;
    let seq_of = Arc::downgrade(&journal);
    manager.record_journal_seq(Arc::new(move || {
        seq_of.upgrade().map(|j| j.next_seq().saturating_sub(1))
    }));
    let facade = ManagerFacade::new(manager.clone(), journal.clone(), cfg.source.clone());
    facade.set_running_config(&cfg, token.is_some());
    facade.on_log_level(logging.level_setter());
    let state = ApiState::new(facade.clone(), token.map(Into::into))
        .with_log_write_failures(logging.failures());
    tracing::info!(
        config = %cfg.source.display(),
        base = %base.display(),
        processes = cfg.processes.len(),
        "manager starting (pid {})",
        std::process::id()
    );
    journal.emit(
        None,
        EventKind::ManagerStarted {
            pid: std::process::id(),
            config: cfg.source.display().to_string(),
        },
    );
    // Handlers go in before any process is adopted or spawned: a SIGTERM that arrives
    // while processes start must shut them down, not kill the manager and orphan them.
    let signals = Signals::install()?;
    // Processes are known (and runs left by an earlier manager adopted) before the API
    // answers, so status never misses a configured process; nothing starts before the
    // listeners are up: a port in use fails the start before any process runs, and
    // leaves adopted ones running.
    let prepared = manager.prepare(cfg.processes);
    let server = match hsu_api::server::start(state, listen).await {
        Ok(server) => server,
        Err(e) => {
            facade.detach("the control API could not start").await;
            facade.close_journal().await;
            return Err(e.into());
        }
    };
    manager.start_prepared(prepared).await;

    let reason = signals.wait_for_shutdown(&facade, args.run_duration).await;
    if facade.keep_processes_requested() {
        tracing::info!("exiting, processes left running: {reason}");
        let left = facade.detach(&reason).await;
        server.stop().await;
        facade.close_journal().await;
        tracing::info!(
            "{} processes left running for the next manager; bye",
            left.len()
        );
        return Ok(());
    }
    tracing::info!("shutting down: {reason}");
    facade.shutdown(&reason).await;
    server.stop().await;
    // Last: `manager_stopped` and everything before it are on disk before the exit.
    facade.close_journal().await;
    tracing::info!("all processes stopped; bye");
    Ok(())
}

/// The API token: `HSU_API_TOKEN` overrides the content of `api_token_file`. A token file
/// that users other than its owner may read or write is refused: the token would not be
/// a secret.
fn api_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("HSU_API_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(Some(t.trim().to_owned()));
        }
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read api_token_file {}", file.display()))?;
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(file)
            .with_context(|| format!("cannot read api_token_file {}", file.display()))?
            .permissions()
            .mode()
    };
    anyhow::ensure!(
        mode & 0o077 == 0,
        "api_token_file {} is accessible to users other than its owner (mode {:04o}); restrict it with `chmod 600 {}`",
        file.display(),
        mode & 0o7777,
        file.display()
    );
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "api_token_file {} is empty",
        file.display()
    );
    Ok(Some(token.to_owned()))
}

/// The signals the manager handles: SIGTERM and SIGINT stop it, SIGHUP reloads, SIGUSR2
/// ends it leaving every process running for the next manager.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Resolves with the reason once the manager should stop; reloads the config on
    /// SIGHUP (as `POST /api/v1/reload` does).
    async fn wait_for_shutdown(
        mut self,
        facade: &ManagerFacade,
        run_duration: Option<f64>,
    ) -> String {
        let limit = async {
            match run_duration {
                Some(secs) if secs.is_finite() && secs >= 0.0 => {
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await
                }
                _ => std::future::pending().await,
            }
        };
        tokio::pin!(limit);
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM".into(),
                _ = self.int.recv() => return "SIGINT".into(),
                _ = self.usr2.recv() => {
                    facade.request_detach("SIGUSR2");
                    return "SIGUSR2".into();
                }
                () = &mut limit => return "--run-duration elapsed".into(),
                reason = facade.shutdown_requested() => return reason,
                _ = self.hup.recv() => match facade.reload().await {
                    Ok(outcome) => {
                        let diff = &outcome.diff;
                        tracing::info!(
                            "SIGHUP: config reloaded (added {:?}, removed {:?}, changed {:?})",
                            diff.added, diff.removed, diff.changed
                        );
                        for change in &outcome.needs_restart {
                            tracing::warn!("SIGHUP: {change} needs a manager restart to take effect");
                        }
                    }
                    Err(ReloadError::Invalid { path, problems }) => tracing::error!(
                        "SIGHUP: {} is invalid; the old config keeps running:\n{problems}",
                        path.display()
                    ),
                    Err(e) => tracing::error!("SIGHUP: {e}"),
                },
            }
        }
    }
}
