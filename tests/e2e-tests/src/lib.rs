//! The end-to-end test harness: the real `hsu-process-manager` binary supervising real
//! `testexe` processes, observed only from the outside (the event journal, PID files,
//! captured logs, exit codes and `/proc`).
//!
//! # How a test runs
//!
//! A test calls [`ProcessManager::start`] with a config (the `{testexe}` placeholder
//! stands for the test executable's path). That creates
//! `target/tmp/<test-name>/run-<unix-millis>/` with `config.yaml`, `procman.log` (the
//! manager's stdout and stderr) and `base/` (the manager's `--base-dir`), and spawns the
//! manager. The test then waits for journal events with deadlines
//! ([`ProcessManager::wait_for_event`]), checks processes through `/proc`
//! ([`assertions`]), and ends with [`ProcessManager::stop`] (SIGTERM, then the exit
//! status). Artifacts are kept for reading after a failure.
//!
//! Every process the manager spawns carries `HSU_PROCESS_TAG=<base-dir>#<id>` in its
//! environment, and so does its whole tree: that is how the suite finds orphans, and how
//! dropping a [`ProcessManager`] kills everything a failed test left behind.
//!
//! The harness never synchronises by sleeping: it polls a condition with a generous
//! deadline. It must never leave a process running after a test, pass or fail.
//!
//! # The control API and the CLI
//!
//! [`ProcessManager::api`] (TCP, from `<base>/api.addr`), [`ProcessManager::api_unix`]
//! (`<base>/api.sock`) and [`grpc_channel`] reach a running manager's API; [`Api`] wraps
//! the typed `hsu_api::ApiClient` with blocking calls on one shared runtime
//! ([`block_on`]). [`run_cli`] and [`ProcessManager::cli`] run the CLI client commands
//! and capture their exit status, stdout and stderr. Every config uses `port: 0`.
//!
//! The binaries are located next to the test binary (`target/<profile>/`) and brought up
//! to date once per test process with `cargo build -p hsu-process-manager -p testexe`
//! ([`test_executor::binaries`]; `HSU_E2E_SKIP_BUILD=1` uses them as they are).

pub mod api;
pub mod assertions;
pub mod log_parser;
pub mod process_manager;
pub mod scenarios;
pub mod test_executor;

pub use api::{
    block_on, cmdline, expect_error, expect_json, grpc_channel, run_cli, runtime, tree_of, Api,
    CliOutput, EventFollower,
};
pub use assertions::{
    assert_all_alive, assert_all_gone, pid_alive, poll_every, poll_until, proc_stat, process_tag,
    tagged_processes, unix_ms_now, wait_for, wait_for_pid_file, wait_until, TagGuard,
};
pub use log_parser::{
    check_state_chain, first_after, parse_problem, scheduled_restarts, state_changes, Event,
    Problem, ScheduledRestart,
};
pub use process_manager::{describe_exit, run_manager_command, ProcessManager, SHORT};
pub use test_executor::{
    binaries, free_port, processes_config, single_process_config, testexe_process, yaml_list,
    yaml_str, TestRun, CONFIG_HEADER,
};
