//! Whole-file tests: both forms, defaults, path resolution and the problem report.

use super::*;
use hsu_common::StopSignal;
use hsu_managed_process::{
    ControlSpec, CountLimit, CpuLimit, DiscoveryMethod, DiscoverySpec, HealthCheckKind,
    HealthCheckSpec, LimitPolicy, Limits, MemoryLimit, ProcessLogCollection, ProcessType,
    RestartPolicy, RestartTuning, TriggerOverride,
};
use std::time::Duration;

const SOURCE: &str = "/etc/hsu/config.yaml";

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str(text, Path::new(SOURCE))
}

fn ok(text: &str) -> Config {
    load(text).unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
}

fn problems(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.to_string(),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const FULL: &str = r#"
process_manager:
  port: 6000
  bind: 0.0.0.0
  api_token_file: secrets/token
  log_level: debug
  base_directory: state
  force_shutdown_timeout: 45s
  resource_sample_interval: 500ms
  event_journal: {max_size: 1MiB, max_files: 3}

managed_processes:
  - id: web
    type: integrated_managed
    enabled: false
    profile_type: web
    metadata: {team: core}
    management:
      control:
        executable: ./bin/web
        arguments: ["--config", "config.yaml"]
        working_directory: run
        environment: {RUST_LOG: info, WORKERS: 4, DEBUG: false, VERSION: 1.10}
        graceful_timeout: 20s
        stop_signal: SIGINT
        restart_policy: always
        restart:
          retry_delay: 2s
          backoff_rate: 1.5
          max_delay: 2m
          reset_after: 1m
          max_retries: 7
          window: 5m
          cooldown: 0s
          health_failures: {retry_delay: 3s, backoff_rate: 1.0, max_retries: 2}
          resource_violations: {max_retries: 1}
          startup_grace_period: 15s
        limits:
          memory: {max_rss: 512MiB, warning_threshold: 80, policy: restart}
          cpu: {max_percent: 150, warning_threshold: 90.5, policy: throttle, sustained_for: 30s}
          file_descriptors: {max: 1024, policy: alert}
          processes: {max: 64}
        port_argument: --port
      health_check:
        type: http
        http: {url: "http://127.0.0.1:8080/health", method: head}
        interval: 5s
        timeout: 1s
        initial_delay: 3s
        failure_threshold: 4
        success_threshold: 2
      log_collection: {enabled: true, capture_stdout: true, capture_stderr: false}
  - id: nginx
    type: unmanaged
    management:
      control: {graceful_timeout: 5s, stop_signal: QUIT, limits: {memory: {max_rss: 1GiB, policy: alert}}}
      health_check:
        type: tcp
        tcp: {address: "127.0.0.1:80"}
      discovery:
        method: pid_file
        pid_file: /run/nginx.pid
        check_interval: 2s

log_collection:
  enabled: true
  directory: /var/log/hsu
  rotation: {max_size: 100MB, max_files: 3}
  timestamps: false
  global_aggregation:
    enabled: true
    targets:
      - {type: file, path: aggregated.log, format: json}
      - {type: process_manager_stdout, format: enhanced_plain, prefix: "[HSU]"}
"#;

#[test]
fn full_canonical_config() {
    let c = ok(FULL);
    assert_eq!(c.source, PathBuf::from(SOURCE));
    assert_eq!(c.config_dir, PathBuf::from("/etc/hsu"));
    assert_eq!(
        c.manager,
        ManagerSettings {
            port: 6000,
            bind: "0.0.0.0".parse().unwrap(),
            api_token_file: Some("/etc/hsu/secrets/token".into()),
            log_level: LogLevel::Debug,
            base_directory: Some("/etc/hsu/state".into()),
            force_shutdown_timeout: secs(45),
            resource_sample_interval: Duration::from_millis(500),
            event_journal: Rotation {
                max_size: 1024 * 1024,
                max_files: 3,
            },
            profile_type: None,
            metadata: BTreeMap::new(),
        }
    );
    let web = &c.processes[0];
    assert_eq!(web.id, "web");
    assert_eq!(web.process_type, ProcessType::IntegratedManaged);
    assert!(!web.enabled);
    assert_eq!(web.profile_type.as_deref(), Some("web"));
    assert_eq!(web.metadata, map(&[("team", "core")]));
    let control = web.control.as_ref().unwrap();
    let expected = ControlSpec {
        executable: "/etc/hsu/bin/web".into(),
        arguments: vec!["--config".into(), "config.yaml".into()],
        working_directory: "/etc/hsu/run".into(),
        environment: map(&[
            ("RUST_LOG", "info"),
            ("WORKERS", "4"),
            ("DEBUG", "false"),
            ("VERSION", "1.10"),
        ]),
        graceful_timeout: secs(20),
        stop_signal: StopSignal::Int,
        restart_policy: RestartPolicy::Always,
        restart: RestartTuning {
            retry_delay: secs(2),
            backoff_rate: 1.5,
            max_delay: secs(120),
            reset_after: secs(60),
            max_retries: 7,
            window: secs(300),
            cooldown: Duration::ZERO,
            health_failures: TriggerOverride {
                retry_delay: Some(secs(3)),
                backoff_rate: Some(1.0),
                max_retries: Some(2),
            },
            resource_violations: TriggerOverride {
                max_retries: Some(1),
                ..Default::default()
            },
            startup_grace_period: secs(15),
        },
        limits: Limits {
            memory: Some(MemoryLimit {
                max_rss: 512 * 1024 * 1024,
                warning_threshold: Some(80.0),
                policy: LimitPolicy::Restart,
            }),
            cpu: Some(CpuLimit {
                max_percent: 150.0,
                warning_threshold: Some(90.5),
                policy: LimitPolicy::Throttle,
                sustained_for: secs(30),
            }),
            file_descriptors: Some(CountLimit {
                max: 1024,
                policy: LimitPolicy::Alert,
            }),
            processes: Some(CountLimit {
                max: 64,
                policy: LimitPolicy::Log,
            }),
        },
        port_argument: Some("--port".into()),
        user: None,
        group: None,
    };
    assert_eq!(control, &expected);
    assert_eq!(
        web.health_check,
        HealthCheckSpec {
            kind: HealthCheckKind::Http {
                url: "http://127.0.0.1:8080/health".into(),
                method: "HEAD".into()
            },
            interval: secs(5),
            timeout: secs(1),
            initial_delay: secs(3),
            failure_threshold: 4,
            success_threshold: 2,
            startup_grace_period: Duration::ZERO,
        }
    );
    assert_eq!(
        web.log_collection,
        ProcessLogCollection {
            enabled: true,
            capture_stdout: true,
            capture_stderr: false
        }
    );
    assert_eq!(web.discovery, None);

    let nginx = &c.processes[1];
    assert_eq!(nginx.process_type, ProcessType::Unmanaged);
    assert_eq!(
        nginx.discovery,
        Some(DiscoverySpec {
            method: DiscoveryMethod::PidFile("/run/nginx.pid".into()),
            check_interval: secs(2),
        })
    );
    let nc = nginx.control.as_ref().unwrap();
    assert_eq!(nc.graceful_timeout, secs(5));
    assert_eq!(nc.stop_signal, StopSignal::Quit);
    assert_eq!(nc.limits.memory.as_ref().unwrap().max_rss, 1 << 30);
    assert_eq!(
        nginx.health_check.kind,
        HealthCheckKind::Tcp {
            address: "127.0.0.1:80".into()
        }
    );

    assert_eq!(
        c.log_collection,
        LogCollectionSettings {
            enabled: true,
            directory: "/var/log/hsu".into(),
            rotation: Rotation {
                max_size: 100_000_000,
                max_files: 3
            },
            timestamps: false,
            global_aggregation: Aggregation {
                enabled: true,
                targets: vec![
                    AggregationTarget {
                        kind: TargetKind::File,
                        path: Some("aggregated.log".into()),
                        format: LogFormat::Json,
                        prefix: None,
                    },
                    AggregationTarget {
                        kind: TargetKind::ProcessManagerStdout,
                        path: None,
                        format: LogFormat::EnhancedPlain,
                        prefix: Some("[HSU]".into()),
                    },
                ],
            },
        }
    );
}

#[test]
fn minimal_config_gets_every_default() {
    let c = ok(r#"
managed_processes:
  - id: my-service
    management:
      control:
        executable: sleep
"#);
    assert_eq!(c.manager, ManagerSettings::default());
    assert_eq!(c.manager.port, 50055);
    assert_eq!(c.manager.bind.to_string(), "127.0.0.1");
    assert_eq!(c.log_collection, LogCollectionSettings::default());
    assert_eq!(c.log_collection.directory, PathBuf::from("logs"));
    assert_eq!(c.log_collection.rotation.max_size, 10 * 1024 * 1024);
    let p = &c.processes[0];
    assert_eq!(p.process_type, ProcessType::StandardManaged);
    assert!(p.enabled);
    // A bare name stays bare (found on PATH); the working directory is the config's.
    assert_eq!(p.control, Some(ControlSpec::new("sleep", "/etc/hsu")));
    assert_eq!(p.health_check, HealthCheckSpec::default());
    assert_eq!(p.log_collection, ProcessLogCollection::default());
    assert_eq!(p.discovery, None);
    assert!(p.metadata.is_empty());
    assert_eq!(p.profile_type, None);
}

#[test]
fn empty_file_and_empty_process_list_are_valid() {
    assert!(ok("").processes.is_empty());
    assert!(ok("managed_processes: []\n").processes.is_empty());
    assert!(ok("process_manager:\n  api_token_file: null\n")
        .manager
        .api_token_file
        .is_none());
}

const CANONICAL_EQUIVALENT: &str = r#"
managed_processes:
  - id: api
    type: standard_managed
    management:
      control:
        executable: ./api
        arguments: [--verbose]
        working_directory: /srv/api
        environment: {MODE: prod}
        graceful_timeout: 15s
        restart_policy: on_failure
        restart:
          retry_delay: 2s
          backoff_rate: 1.5
          max_retries: 4
          health_failures: {max_retries: 2}
          resource_violations: {retry_delay: 10s}
          startup_grace_period: 30s
        limits:
          memory: {max_rss: 256MiB, warning_threshold: 75, policy: restart}
          cpu: {max_percent: 80, policy: log, sustained_for: 20s}
          file_descriptors: {max: 512, policy: alert}
      health_check:
        type: http
        http: {url: "http://localhost:8080/health"}
        interval: 30s
        timeout: 5s
        initial_delay: 2s
        failure_threshold: 2
      log_collection: {capture_stderr: false}
    metadata: {name: API, tags: "a, b"}
"#;

const NESTED_EQUIVALENT: &str = r#"
managed_processes:
  - id: api
    management:
      standard_managed:
        metadata:
          name: API
          tags: [a, b]
        control:
          execution:
            executable_path: ./api
            args: [--verbose]
            working_directory: /srv/api
            environment: ["MODE=prod"]
            wait_delay: 10s
          restart_policy: on-failure
          context_aware_restart:
            default: {max_retries: 4, retry_delay: 2s, backoff_rate: 1.5}
            health_failures: {max_retries: 2}
            resource_violations: {retry_delay: 10s}
            startup_grace_period: 30s
            sustained_violation_time: 20s
          limits:
            memory: {limit_mb: 256, warning_threshold: 75, policy: restart}
            cpu: {max_percent: 80, policy: log}
            process: {max_file_descriptors: 512, policy: alert}
          graceful_timeout: 15s
          log_collection: {enabled: true, capture_stderr: false}
          process_file: {use_process_id: true}
        health_check:
          type: http
          http_endpoint: "http://localhost:8080/health"
          run_options: {enabled: true, interval: 30s, timeout: 5s, initial_delay: 2s, retries: 2}
"#;

#[test]
fn nested_form_means_the_same_as_canonical() {
    let canonical = ok(CANONICAL_EQUIVALENT);
    let nested = ok(NESTED_EQUIVALENT);
    assert_eq!(nested.processes, canonical.processes);
    assert_eq!(
        nested.processes[0].process_type,
        ProcessType::StandardManaged
    );
    assert_eq!(
        nested.processes[0].control.as_ref().unwrap().executable,
        PathBuf::from("/etc/hsu/api")
    );
}

#[test]
fn nested_unmanaged_and_top_level_profile() {
    let c = ok(r#"
profile_type: edge
metadata: {site: lab, rack: 7}
managed_processes:
  - id: nginx
    type: unmanaged
    profile_type: proxy
    management:
      unmanaged:
        metadata: {owner: ops}
        discovery: {method: process_name, process_name: nginx}
        control: {graceful_timeout: 3s}
        health_check:
          type: http
          http_endpoint: "http://127.0.0.1/health"
          run_options: {enabled: false}
"#);
    assert_eq!(c.manager.profile_type.as_deref(), Some("edge"));
    assert_eq!(c.manager.metadata, map(&[("site", "lab"), ("rack", "7")]));
    let p = &c.processes[0];
    assert_eq!(p.profile_type.as_deref(), Some("proxy"));
    assert_eq!(p.metadata, map(&[("owner", "ops")]));
    assert_eq!(
        p.discovery.as_ref().unwrap().method,
        DiscoveryMethod::ProcessName("nginx".into())
    );
    assert_eq!(p.control.as_ref().unwrap().graceful_timeout, secs(3));
    // run_options.enabled: false turns the check into a liveness check.
    assert_eq!(p.health_check.kind, HealthCheckKind::Process);
}

#[test]
fn nested_type_is_inferred_from_the_key() {
    let c = ok(r#"
managed_processes:
  - id: svc
    management:
      integrated_managed:
        control:
          execution: {executable_path: svc}
          port_argument: --grpc-port
"#);
    let p = &c.processes[0];
    assert_eq!(p.process_type, ProcessType::IntegratedManaged);
    assert_eq!(
        p.control.as_ref().unwrap().port_argument.as_deref(),
        Some("--grpc-port")
    );
}

#[test]
fn durations_sizes_and_environment_forms() {
    let c = ok(r#"
process_manager: {force_shutdown_timeout: 90, resource_sample_interval: 1m30s}
managed_processes:
  - id: a
    management:
      control:
        executable: a
        graceful_timeout: 250ms
        environment: ["A=1", "B=x=y", "EMPTY="]
        restart: {retry_delay: 2h, max_delay: 3h}
        limits:
          memory: {max_rss: 1048576}
      health_check: {type: tcp, tcp: {address: "[::1]:5432"}, interval: 1.5, timeout: "1"}
log_collection:
  rotation: {max_size: 1GiB}
"#);
    assert_eq!(c.manager.force_shutdown_timeout, secs(90));
    assert_eq!(c.manager.resource_sample_interval, secs(90));
    let control = c.processes[0].control.as_ref().unwrap();
    assert_eq!(control.graceful_timeout, Duration::from_millis(250));
    assert_eq!(
        control.environment,
        map(&[("A", "1"), ("B", "x=y"), ("EMPTY", "")])
    );
    assert_eq!(control.restart.retry_delay, secs(7200));
    assert_eq!(control.limits.memory.as_ref().unwrap().max_rss, 1 << 20);
    assert_eq!(
        c.processes[0].health_check.interval,
        Duration::from_millis(1500)
    );
    assert_eq!(c.processes[0].health_check.timeout, secs(1));
    assert_eq!(c.log_collection.rotation.max_size, 1 << 30);
}

#[test]
fn bad_values_are_explained() {
    let out = problems(
        r#"
managed_processes:
  - id: a
    management:
      control:
        executable: a
        graceful_timeout: soon
        environment: ["NOEQUALS", "=x"]
        limits:
          memory: {max_rss: -5}
          cpu: {max_percent: 0, warning_threshold: 120}
log_collection:
  rotation: {max_size: 12 potatoes, max_files: 0}
"#,
    );
    insta::with_settings!({prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("bad_values", out);
    });
}

#[test]
fn event_journal_rotation_is_checked_like_the_logs() {
    let c = ok("process_manager: {event_journal: {max_files: 2}}\n");
    assert_eq!(c.manager.event_journal.max_files, 2);
    assert_eq!(c.manager.event_journal.max_size, 10 * 1024 * 1024);
    assert_eq!(
        problems(
            "process_manager:\n  event_journal: {max_size: 0, max_files: 0, max_age: 1d}\n"
        ),
        "/etc/hsu/config.yaml:2:29: process_manager.event_journal.max_size: must be more than zero\n\
         /etc/hsu/config.yaml:2:43: process_manager.event_journal.max_files: must be at least 1\n\
         /etc/hsu/config.yaml:2:46: process_manager.event_journal.max_age: unknown key `max_age`; did you mean `max_size`?"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hsu.yaml");
    std::fs::write(
        &file,
        r#"
process_manager: {base_directory: ../state, api_token_file: /abs/token}
managed_processes:
  - id: a
    management:
      control: {executable: bin/a, working_directory: work}
      health_check: {type: exec, exec: {command: ./check.sh, arguments: [-q]}}
  - id: b
    management:
      control: {executable: /usr/bin/b}
      health_check: {type: exec, exec: {command: true}}
  - id: c
    type: unmanaged
    management:
      discovery: {pid_file: run/c.pid}
log_collection: {directory: logs}
"#,
    )
    .unwrap();
    let c = load_file(&file).unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    assert_eq!(c.source, file);
    assert_eq!(c.config_dir, d);
    assert_eq!(c.manager.base_directory, Some(d.join("../state")));
    assert_eq!(c.manager.api_token_file, Some("/abs/token".into()));
    let a = c.processes[0].control.as_ref().unwrap();
    assert_eq!(a.executable, d.join("bin/a"));
    assert_eq!(a.working_directory, d.join("work"));
    assert_eq!(
        c.processes[0].health_check.kind,
        HealthCheckKind::Exec {
            command: d.join("check.sh"),
            arguments: vec!["-q".into()]
        }
    );
    let b = c.processes[1].control.as_ref().unwrap();
    assert_eq!(b.executable, PathBuf::from("/usr/bin/b"));
    assert_eq!(b.working_directory, d);
    assert_eq!(
        c.processes[1].health_check.kind,
        HealthCheckKind::Exec {
            command: "true".into(),
            arguments: vec![]
        }
    );
    // The method is inferred from the one field given.
    assert_eq!(
        c.processes[2].discovery.as_ref().unwrap().method,
        DiscoveryMethod::PidFile(d.join("run/c.pid"))
    );
    // The log directory is relative to the base directory: kept as written.
    assert_eq!(c.log_collection.directory, PathBuf::from("logs"));
}

#[test]
fn syntax_error_has_its_position() {
    let out = problems("managed_processes:\n  - id: a\n    management: {control: [x}\n");
    assert!(out.starts_with("/etc/hsu/config.yaml:3:"), "{out}");
    assert!(out.contains("YAML syntax error"), "{out}");
    assert_eq!(out.lines().count(), 1);
    let out = problems("process_manager:\n  port: 1\n  port: 2\n");
    assert_eq!(
        out,
        "/etc/hsu/config.yaml:3:3: duplicate key `port` (each key may appear once in a mapping)"
    );
}

#[test]
fn unreadable_file_is_one_problem() {
    let e = load_file(Path::new("/nonexistent/hsu.yaml")).unwrap_err();
    assert_eq!(e.0.len(), 1);
    let p = &e.0[0];
    assert_eq!((p.line, p.col, p.path.as_str()), (1, 1, ""));
    assert!(
        p.message.starts_with("cannot read the config file:"),
        "{}",
        p.message
    );
}

#[test]
fn wrong_shapes_are_reported() {
    let out = problems("managed_processes: {id: a}\nprocess_manager: [1]\n");
    assert_eq!(
        out,
        "/etc/hsu/config.yaml:1:20: managed_processes: expected a list of processes, found a mapping\n\
         /etc/hsu/config.yaml:2:18: process_manager: expected a mapping, found a list"
    );
    let out = problems("- a\n");
    assert_eq!(
        out,
        "/etc/hsu/config.yaml:1:1: expected a mapping, found a list"
    );
}

/// A config with many kinds of problems at once; every one is reported, in file order.
const MANY_PROBLEMS: &str = r#"
process_manager:
  port: 70000
  bind: localhost
  log_level: verbose
  unknown_thing: 1

managed_processes:
  - id: web
    type: standard_managed
    management:
      control:
        executable: ./web
        restart_polcy: always
        graceful_timeout: 10 parsecs
        stop_signal: SIGTREM
        restart:
          backoff_rate: 0.5
          retry_delay: 2m
          max_delay: 1m
      health_check:
        type: http
        http: {url: "http://localhost/health"}
        interval: 2s
        timeout: 5s
  - id: web
    type: standard_managed
    management:
      control:
        arguments: [--fast]
        restart_policy: sometimes
  - id: "bad id!"
    type: standard_managed
    management:
      control: {executable: x}
      standard_managed:
        control: {execution: {executable_path: x}}
  - id: nested
    type: unmanaged
    management:
      standard_managed:
        control: {execution: {executable_path: x}}
  - id: ghost
    type: unmanged
    management:
      discovery: {method: port}
      control: {executable: x}
  - id: worker
    type: standard_managed
    management:
      control:
        executable: worker
        port_argument: --port
        limits:
          memory: {max_rss: 1GiB, policy: restart_adjustd}
      discovery: {method: pid_file, pid_file: /run/w.pid}
"#;

#[test]
fn every_problem_is_reported() {
    let out = problems(MANY_PROBLEMS);
    insta::with_settings!({prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("many_problems", out);
    });
}

#[test]
fn type_rules() {
    let out = problems(
        r#"
managed_processes:
  - id: u
    type: unmanaged
    management:
      health_check: {type: http, run_options: {}}
  - id: h
    management:
      standard_managed:
        control: {execution: {executable_path: x}}
        health_check: {type: http}
  - id: s
    type: standard_managed
"#,
    );
    assert_eq!(
        out,
        "/etc/hsu/config.yaml:5:5: managed_processes[0].management.discovery: missing: an unmanaged process is found by discovery\n\
         /etc/hsu/config.yaml:6:7: managed_processes[0].management.health_check.http: missing: `type: http` needs `http: {url: ...}`\n\
         /etc/hsu/config.yaml:6:34: managed_processes[0].management.health_check.run_options: `run_options` belongs to the other config form (canonical vs HSU nested) and is not valid here; expected one of: type, http, grpc, tcp, exec, interval, timeout, initial_delay, failure_threshold, success_threshold, startup_grace_period\n\
         /etc/hsu/config.yaml:11:9: managed_processes[1].management.standard_managed.health_check.http_endpoint: missing: `type: http` needs `http_endpoint: <url>`\n\
         /etc/hsu/config.yaml:12:5: managed_processes[2].management: missing: it says how to run or find the process"
    );
}

#[test]
fn health_check_kind_is_inferred_from_its_settings() {
    let c = ok(r#"
managed_processes:
  - id: g
    management:
      control: {executable: g}
      health_check: {grpc: {address: "127.0.0.1:9090"}, interval: 3s}
"#);
    assert_eq!(
        c.processes[0].health_check.kind,
        HealthCheckKind::Grpc {
            address: "127.0.0.1:9090".into(),
            service: String::new()
        }
    );
}

#[test]
fn top_level_log_collection_off_turns_capture_off_for_every_process() {
    let text = r#"
log_collection: {enabled: false}
managed_processes:
  - id: a
    type: standard_managed
    management: {control: {executable: /bin/true}}
  - id: b
    type: standard_managed
    management:
      control: {executable: /bin/true}
      log_collection: {enabled: true}
"#;
    let c = ok(text);
    assert!(c.processes.iter().all(|p| !p.log_collection.enabled));
    let on = ok(&text.replace("enabled: false", "enabled: true"));
    assert!(on.processes.iter().all(|p| p.log_collection.enabled));
}

/// Writes `content` to a file in a new temporary directory and loads it.
fn load_bytes(content: &[u8]) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, content).unwrap();
    load_file(&file)
}

#[test]
fn a_file_over_the_size_limit_is_refused_without_reading_it_all() {
    let mut big = b"managed_processes: []\n".to_vec();
    big.resize(MAX_FILE_SIZE as usize + 1, b'#');
    let e = load_bytes(&big).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!((e.0[0].line, e.0[0].col), (1, 1));
    assert_eq!(
        e.0[0].message,
        "the config file is larger than 4 MiB, the most a config may be"
    );
    // Exactly at the limit is still read (and here, valid: a comment).
    big.truncate(MAX_FILE_SIZE as usize);
    assert!(load_bytes(&big).is_ok());
    // An endless file: refused after reading at most the limit.
    let started = std::time::Instant::now();
    let e = load_file(Path::new("/dev/zero")).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].message.contains("larger than 4 MiB"), "{e}");
    // The same bound holds for text handed in directly.
    let text = "#".repeat(MAX_FILE_SIZE as usize + 1);
    assert!(problems(&text).contains("larger than 4 MiB"));
}

#[test]
fn strings_over_the_length_limit_are_refused_with_their_path() {
    let long = "x".repeat(MAX_STRING_LEN + 1);
    let text = format!(
        r#"
metadata: {{note: "{long}"}}
managed_processes:
  - id: a
    metadata: {{"{long}": v}}
    management:
      control:
        executable: a
        arguments: ["{long}"]
        environment: {{BIG: "{long}"}}
"#
    );
    let out = problems(&text);
    let lines: Vec<&str> = out.lines().collect();
    let expected = "is 65537 bytes long; a string may be at most 64 KiB (65536 bytes)";
    assert_eq!(
        lines,
        [
            format!("/etc/hsu/config.yaml:2:18: metadata.note: {expected}"),
            format!(
                "/etc/hsu/config.yaml:5:16: managed_processes[0].metadata.{}...: {expected}",
                "x".repeat(64)
            ),
            format!(
                "/etc/hsu/config.yaml:9:21: managed_processes[0].management.control.arguments[0]: {expected}"
            ),
            format!(
                "/etc/hsu/config.yaml:10:28: managed_processes[0].management.control.environment.BIG: {expected}"
            ),
        ]
    );
    // At the limit is fine.
    let ok_text = format!(
        "managed_processes:\n  - id: a\n    metadata: {{note: \"{}\"}}\n    management: {{control: {{executable: a}}}}\n",
        "x".repeat(MAX_STRING_LEN)
    );
    assert_eq!(
        ok(&ok_text).processes[0].metadata["note"].len(),
        MAX_STRING_LEN
    );
}

#[test]
fn a_nul_byte_in_what_reaches_the_process_is_refused() {
    let out = problems(
        r#"
managed_processes:
  - id: a
    management:
      control:
        executable: "./a\0b"
        arguments: ["ok", "x\0y"]
        working_directory: "w\0"
        environment: {"K\0": v, V: "v\0"}
  - id: b
    management:
      standard_managed:
        control:
          execution:
            executable_path: "b\0"
            args: ["\0"]
            working_directory: "\0w"
            environment: ["A=\0"]
"#,
    );
    let nul = "contains a NUL byte (`\\0`), which cannot be passed to a process";
    let expected = [
        format!("6:21: managed_processes[0].management.control.executable: {nul}"),
        format!("7:27: managed_processes[0].management.control.arguments[1]: {nul}"),
        format!("8:28: managed_processes[0].management.control.working_directory: {nul}"),
        "9:23: managed_processes[0].management.control.environment.K\0: the variable name \
         contains a NUL byte (`\\0`), which cannot be passed to a process"
            .to_string(),
        format!("9:36: managed_processes[0].management.control.environment.V: {nul}"),
        format!(
            "15:30: managed_processes[1].management.standard_managed.control.execution.executable_path: {nul}"
        ),
        format!(
            "16:20: managed_processes[1].management.standard_managed.control.execution.args[0]: {nul}"
        ),
        format!(
            "17:32: managed_processes[1].management.standard_managed.control.execution.working_directory: {nul}"
        ),
        format!(
            "18:27: managed_processes[1].management.standard_managed.control.execution.environment[0]: {nul}"
        ),
    ];
    let got: Vec<&str> = out
        .lines()
        .map(|l| l.strip_prefix("/etc/hsu/config.yaml:").unwrap())
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn every_rule_runs_on_every_value_that_parsed() {
    let out = problems(
        r#"
managed_processes:
  - id: a
    management:
      control: {executable: a}
      health_check:
        http: {url: "ftp://x"}
        interval: 1s
        timeout: 5s
  - id: b
    management:
      control: {executable: b}
      health_check: {type: htp, tcp: {address: nowhere}, interval: 1s, timeout: 5s}
  - id: c
    type: unmanaged
    management:
      discovery: {method: pidfile, pid_file: ""}
"#,
    );
    assert_eq!(
        out,
        "/etc/hsu/config.yaml:7:21: managed_processes[0].management.health_check.http.url: `ftp://x` is not an http:// or https:// URL\n\
         /etc/hsu/config.yaml:9:18: managed_processes[0].management.health_check.timeout: timeout (5s) must be less than interval (1s)\n\
         /etc/hsu/config.yaml:13:28: managed_processes[1].management.health_check.type: unknown value `htp`; expected one of: process, http, grpc, tcp, exec; did you mean `http`?\n\
         /etc/hsu/config.yaml:13:48: managed_processes[1].management.health_check.tcp.address: `nowhere` is not a `host:port` address\n\
         /etc/hsu/config.yaml:13:81: managed_processes[1].management.health_check.timeout: timeout (5s) must be less than interval (1s)\n\
         /etc/hsu/config.yaml:17:27: managed_processes[2].management.discovery.method: unknown value `pidfile`; expected one of: pid_file, process_name, port; did you mean `pid_file`?\n\
         /etc/hsu/config.yaml:17:46: managed_processes[2].management.discovery.pid_file: must not be empty"
    );
    // A value that did not parse is not compared with the other in its rule.
    let out = problems(
        "managed_processes:\n  - id: a\n    management:\n      control:\n        executable: a\n        restart: {retry_delay: soon, max_delay: 100ms}\n",
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("retry_delay: invalid duration `soon`"),
        "{out}"
    );
}

#[test]
fn merge_keys_share_settings_in_both_forms() {
    let c = ok(r#"
x-defaults:
  control: &control
    executable: ./svc
    arguments: [--quiet]
    environment: &env {MODE: prod, LEVEL: info}
    graceful_timeout: 5s
  restart: &fast {retry_delay: 100ms, max_retries: 9}
  slow: &slow {retry_delay: 3s, max_delay: 1m}
managed_processes:
  - id: a
    management:
      control:
        <<: *control
        graceful_timeout: 7s
        environment:
          <<: *env
          LEVEL: debug
        restart:
          <<: [*fast, *slow]
  - id: b
    management:
      standard_managed:
        control:
          execution:
            executable_path: ./svc
            environment: {<<: *env, EXTRA: "1"}
          context_aware_restart:
            default: {<<: *slow}
"#);
    let a = c.processes[0].control.as_ref().unwrap();
    assert_eq!(a.executable, PathBuf::from("/etc/hsu/svc"));
    assert_eq!(a.arguments, ["--quiet"]);
    // An explicit key wins over a merged one, wherever it is written.
    assert_eq!(a.graceful_timeout, secs(7));
    assert_eq!(a.environment, map(&[("MODE", "prod"), ("LEVEL", "debug")]));
    // In a list, the earlier mapping wins.
    assert_eq!(a.restart.retry_delay, Duration::from_millis(100));
    assert_eq!(a.restart.max_retries, 9);
    assert_eq!(a.restart.max_delay, secs(60));
    let b = c.processes[1].control.as_ref().unwrap();
    assert_eq!(
        b.environment,
        map(&[("MODE", "prod"), ("LEVEL", "info"), ("EXTRA", "1")])
    );
    assert_eq!(b.restart.retry_delay, secs(3));
}

#[test]
fn problems_inside_merged_values_point_at_their_text() {
    let out = problems(
        r#"
x-base: &base
  executable: ./svc
  graceful_timeout: soon
  restart_polcy: always
managed_processes:
  - id: a
    management:
      control:
        <<: *base
  - id: b
    management:
      control: {<<: *base, graceful_timeout: 1s}
  - id: c
    management:
      control:
        <<: [1, 2]
        executable: c
"#,
    );
    assert_eq!(
        out,
        "/etc/hsu/config.yaml:4:21: managed_processes[0].management.control.graceful_timeout: invalid duration `soon` (expected number at 0); expected e.g. `250ms`, `10s`, `1m30s`, `2h`\n\
         /etc/hsu/config.yaml:5:3: managed_processes[0].management.control.restart_polcy: unknown key `restart_polcy`; did you mean `restart_policy`?\n\
         /etc/hsu/config.yaml:5:3: managed_processes[1].management.control.restart_polcy: unknown key `restart_polcy`; did you mean `restart_policy`?\n\
         /etc/hsu/config.yaml:17:9: managed_processes[2].management.control.<<: a merge key takes a mapping or a list of mappings (e.g. `<<: *defaults`), found a list"
    );
    assert!(problems("process_manager: {\"<<\": {port: 1}}\n")
        .contains("a quoted `<<` is an ordinary key, not a merge key; write it unquoted"));
    // Other top-level keys stay unknown.
    assert!(problems("defaults: {}\n").contains("unknown key `defaults`"));
}

#[test]
fn misleading_messages_are_now_precise() {
    let out = problems(
        r#"
process_manager:
  port: 99999999999999999999
  force_shutdown_timeout: -5s
  resource_sample_interval: -1.5
managed_processes:
  - id: a
    management:
      control:
        executable: a
        graceful_timeout: 99999999999999999999y
        restart:
          backoff_rate: .inf
          cooldown: 18446744073709551616
          window: 9223372036854775807
          health_failures: {backoff_rate: .nan}
          resource_violations: {backoff_rate: 1e400, max_retries: 5000000000}
        limits:
          memory: {max_rss: 99999999999999999999}
          file_descriptors: {max: 18446744073709551615}
log_collection:
  rotation: {max_size: 20EiB}
"#,
    );
    let got: Vec<&str> = out
        .lines()
        .map(|l| l.strip_prefix("/etc/hsu/config.yaml:").unwrap())
        .collect();
    let range = "out of range (max 3155760000s, about 100 years), found";
    assert_eq!(
        got,
        [
            "3:9: process_manager.port: out of range (max 65535), found 99999999999999999999".to_string(),
            "4:27: process_manager.force_shutdown_timeout: a duration cannot be negative, found `-5s`".to_string(),
            "5:29: process_manager.resource_sample_interval: a duration cannot be negative, found -1.5".to_string(),
            format!("11:27: managed_processes[0].management.control.graceful_timeout: {range} `99999999999999999999y`"),
            "13:25: managed_processes[0].management.control.restart.backoff_rate: must be a finite number, found `.inf`".to_string(),
            format!("14:21: managed_processes[0].management.control.restart.cooldown: {range} 18446744073709551616"),
            format!("15:19: managed_processes[0].management.control.restart.window: {range} 9223372036854775807"),
            "16:43: managed_processes[0].management.control.restart.health_failures.backoff_rate: must be a finite number, found `.nan`".to_string(),
            "17:47: managed_processes[0].management.control.restart.resource_violations.backoff_rate: must be a finite number, found `1e400`".to_string(),
            "17:67: managed_processes[0].management.control.restart.resource_violations.max_retries: out of range (max 4294967295), found 5000000000".to_string(),
            "19:29: managed_processes[0].management.control.limits.memory.max_rss: out of range (max 18446744073709551615), found 99999999999999999999".to_string(),
            "22:24: log_collection.rotation.max_size: out of range (max 18446744073709551615 bytes, 16 EiB), found `20EiB`".to_string(),
        ]
    );
    // The largest 64-bit count is accepted, though YAML reads it as a float.
    let c = ok("managed_processes:\n  - id: a\n    management:\n      control:\n        executable: a\n        limits: {file_descriptors: {max: 18446744073709551615}}\n");
    let control = c.processes[0].control.as_ref().unwrap();
    assert_eq!(
        control.limits.file_descriptors.as_ref().unwrap().max,
        u64::MAX
    );
}

#[test]
fn a_non_utf8_byte_is_reported_where_it_is() {
    let e = load_bytes(b"managed_processes:\n  - id: \xc3\xa9t\xff\n").unwrap_err();
    assert_eq!(e.0.len(), 1);
    let p = &e.0[0];
    assert_eq!((p.line, p.col), (2, 11));
    assert_eq!(
        p.message,
        "the config file is not valid UTF-8: byte 0xFF here does not start or continue a \
         character (save the file as UTF-8)"
    );
}

#[test]
fn user_and_group_in_both_forms() {
    let c = ok(r#"
managed_processes:
  - id: a
    management:
      control: {executable: a, user: www-data, group: 33}
  - id: b
    management:
      standard_managed:
        control:
          execution: {executable_path: b, user: 1000}
  - id: c
    management:
      control: {executable: c, group: adm}
"#);
    let control = |i: usize| c.processes[i].control.clone().unwrap();
    assert_eq!(control(0).user.as_deref(), Some("www-data"));
    assert_eq!(control(0).group.as_deref(), Some("33"));
    assert_eq!(control(1).user.as_deref(), Some("1000"));
    assert_eq!(control(1).group, None);
    // `group` alone is allowed: the manager's own user with another group.
    assert_eq!(control(2).user, None);
    assert_eq!(control(2).group.as_deref(), Some("adm"));

    let out = problems(
        r#"
managed_processes:
  - id: a
    management:
      control: {executable: a, user: "", group: "a\0"}
  - id: b
    management:
      standard_managed:
        control:
          execution: {executable_path: b, user: a-name-that-is-far-too-long-for-any-system, group: -1}
  - id: c
    type: unmanaged
    management:
      control: {user: root}
      discovery: {process_name: c}
  - id: d
    management:
      control: {executable: d, user: 4294967295, group: [wheel]}
"#,
    );
    let got: Vec<&str> = out
        .lines()
        .map(|l| l.strip_prefix("/etc/hsu/config.yaml:").unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "5:38: managed_processes[0].management.control.user: must not be empty",
            "5:49: managed_processes[0].management.control.group: contains a NUL byte (`\\0`), which cannot be passed to a process",
            "10:49: managed_processes[1].management.standard_managed.control.execution.user: `a-name-that-is-far-too-long-for-any-system` is not a user or group name: a name is at most 32 characters, without spaces (or give a numeric id)",
            "10:100: managed_processes[1].management.standard_managed.control.execution.group: a numeric id cannot be negative, found -1",
            "14:17: managed_processes[2].management.control.user: `user` is not used for unmanaged processes: the manager never starts them",
            "18:38: managed_processes[3].management.control.user: out of range (max 4294967294), found 4294967295",
            "18:57: managed_processes[3].management.control.group: expected a string, found a list",
        ]
    );
}

#[test]
fn a_process_mixing_the_forms_still_has_both_parts_checked() {
    let out = problems(
        r#"
managed_processes:
  - id: a
    management:
      control: {executable: a, graceful_timeout: soon}
      standard_managed:
        control: {execution: {executable_path: a, args: "not a list"}}
"#,
    );
    let got: Vec<&str> = out
        .lines()
        .map(|l| l.strip_prefix("/etc/hsu/config.yaml:").unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "5:7: managed_processes[0].management: mixes the canonical form (`control`) with the HSU nested form (`standard_managed`); write each process in one form",
            "5:50: managed_processes[0].management.control.graceful_timeout: invalid duration `soon` (expected number at 0); expected e.g. `250ms`, `10s`, `1m30s`, `2h`",
            "7:57: managed_processes[0].management.standard_managed.control.execution.args: expected a list of strings, found a string",
        ]
    );
}

#[test]
fn https_health_checks_are_refused_with_their_position() {
    let out = problems(
        r#"
managed_processes:
  - id: web
    management:
      control: {executable: web}
      health_check: {http: {url: "https://127.0.0.1:8443/health"}}
  - id: old
    management:
      standard_managed:
        control: {execution: {executable_path: old}}
        health_check: {http_endpoint: "HTTPS://localhost/health"}
"#,
    );
    assert_eq!(
        out,
        "/etc/hsu/config.yaml:6:34: managed_processes[0].management.health_check.http.url: https health checks are not supported (no TLS client is built in); use `tcp`, or an `exec` check running curl\n\
         /etc/hsu/config.yaml:11:39: managed_processes[1].management.standard_managed.health_check.http_endpoint: https health checks are not supported (no TLS client is built in); use `tcp`, or an `exec` check running curl"
    );
}

#[test]
fn health_check_startup_grace_period_is_read() {
    let c = ok(r#"
managed_processes:
  - id: t
    management:
      control: {executable: t}
      health_check: {tcp: {address: "127.0.0.1:5432"}, startup_grace_period: 1m30s}
  - id: d
    management:
      control: {executable: d}
      health_check: {type: tcp, tcp: {address: "127.0.0.1:5432"}}
"#);
    assert_eq!(c.processes[0].health_check.startup_grace_period, secs(90));
    assert_eq!(
        c.processes[1].health_check.startup_grace_period,
        Duration::ZERO
    );
    let out = problems(
        r#"
managed_processes:
  - id: t
    management:
      control: {executable: t}
      health_check: {type: process, startup_grace_period: -1s}
"#,
    );
    assert!(
        out.starts_with("/etc/hsu/config.yaml:6:59: managed_processes[0].management.health_check.startup_grace_period: "),
        "{out}"
    );
}
