//! The top level of the file: `process_manager`, `log_collection`, the nested form's
//! `profile_type` / `metadata`, and the list of processes.

use super::ctx::{join, Ctx};
use super::yaml::{Node, Value};
use super::{
    Aggregation, AggregationTarget, LogCollectionSettings, LogFormat, LogLevel, ManagerSettings,
    Rotation, TargetKind,
};
use hsu_managed_process::ProcessDefinition;
use std::net::IpAddr;
use std::path::PathBuf;

/// What the top level yields.
pub(crate) struct Root {
    pub manager: ManagerSettings,
    pub processes: Vec<ProcessDefinition>,
    pub log_collection: LogCollectionSettings,
}

const TOP_KEYS: [&str; 5] = [
    "process_manager",
    "managed_processes",
    "log_collection",
    "profile_type",
    "metadata",
];

pub(crate) fn root(cx: &mut Ctx, node: Option<&Node>) -> Root {
    let mut root = Root {
        manager: ManagerSettings::default(),
        processes: Vec::new(),
        log_collection: LogCollectionSettings::default(),
    };
    // An empty file is an empty config.
    let Some(node) = node.filter(|n| !n.is_null()) else {
        return root;
    };
    let Some(m) = cx.map(node, "", &TOP_KEYS) else {
        return root;
    };
    if let Some(n) = m.get("process_manager") {
        root.manager = manager(cx, n, "process_manager");
    }
    root.manager.profile_type = m.field(cx, "profile_type", Ctx::string);
    if let Some(n) = m.get("metadata") {
        root.manager.metadata = cx.text_map(n, "metadata", true);
    }
    if let Some(n) = m.get("managed_processes") {
        root.processes = super::process::list(cx, n, "managed_processes");
    }
    if let Some(n) = m.get("log_collection") {
        root.log_collection = log_collection(cx, n, "log_collection");
    }
    root
}

fn manager(cx: &mut Ctx, node: &Node, path: &str) -> ManagerSettings {
    const KEYS: [&str; 8] = [
        "port",
        "bind",
        "api_token_file",
        "log_level",
        "base_directory",
        "force_shutdown_timeout",
        "resource_sample_interval",
        "event_journal",
    ];
    let mut s = ManagerSettings::default();
    let Some(m) = cx.map(node, path, &KEYS) else {
        return s;
    };
    s.port = m.field(cx, "port", Ctx::u16).unwrap_or(s.port);
    s.bind = m.field(cx, "bind", ip).unwrap_or(s.bind);
    s.api_token_file = m.field(cx, "api_token_file", Ctx::path);
    s.log_level = m.field(cx, "log_level", log_level).unwrap_or(s.log_level);
    s.base_directory = m.field(cx, "base_directory", Ctx::path);
    s.force_shutdown_timeout = m
        .field(cx, "force_shutdown_timeout", Ctx::duration)
        .unwrap_or(s.force_shutdown_timeout);
    s.resource_sample_interval = m
        .field(cx, "resource_sample_interval", positive_duration)
        .unwrap_or(s.resource_sample_interval);
    if let Some(n) = m.get("event_journal") {
        s.event_journal = rotation(cx, n, &m.at("event_journal"));
    }
    s
}

fn ip(cx: &mut Ctx, node: &Node, path: &str) -> Option<IpAddr> {
    let text = cx.string(node, path)?;
    text.trim()
        .parse()
        .map_err(|_| {
            let message =
                format!("`{text}` is not an IP address (e.g. `127.0.0.1`, `0.0.0.0`, `::1`)");
            cx.report(node, path, message);
        })
        .ok()
}

fn log_level(cx: &mut Ctx, node: &Node, path: &str) -> Option<LogLevel> {
    cx.choice(
        node,
        path,
        &[
            ("trace", LogLevel::Trace),
            ("debug", LogLevel::Debug),
            ("info", LogLevel::Info),
            ("warn", LogLevel::Warn),
            ("error", LogLevel::Error),
        ],
    )
}

/// A duration that must be more than zero.
pub(crate) fn positive_duration(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
) -> Option<std::time::Duration> {
    let d = cx.duration(node, path)?;
    if d.is_zero() {
        cx.report(node, path, "must be more than zero");
        return None;
    }
    Some(d)
}

fn positive_size(cx: &mut Ctx, node: &Node, path: &str) -> Option<u64> {
    match cx.size(node, path)? {
        0 => {
            cx.report(node, path, "must be more than zero");
            None
        }
        size => Some(size),
    }
}

fn log_collection(cx: &mut Ctx, node: &Node, path: &str) -> LogCollectionSettings {
    // `enhancement` and `default` are the earlier HSU manager's keys, accepted for
    // compatibility and not acted on.
    const KEYS: [&str; 7] = [
        "enabled",
        "directory",
        "rotation",
        "timestamps",
        "global_aggregation",
        "enhancement",
        "default",
    ];
    let mut s = LogCollectionSettings::default();
    let Some(m) = cx.map(node, path, &KEYS) else {
        return s;
    };
    s.enabled = m.field(cx, "enabled", Ctx::boolean).unwrap_or(s.enabled);
    // Relative to the base directory, which is only known at run time: kept as written.
    s.directory = m
        .field(cx, "directory", Ctx::non_empty)
        .map(PathBuf::from)
        .unwrap_or(s.directory);
    if let Some(n) = m.get("rotation") {
        s.rotation = rotation(cx, n, &m.at("rotation"));
    }
    s.timestamps = m
        .field(cx, "timestamps", Ctx::boolean)
        .unwrap_or(s.timestamps);
    if let Some(n) = m.get("global_aggregation") {
        s.global_aggregation = aggregation(cx, n, &m.at("global_aggregation"));
    }
    if let Some(n) = m.get("enhancement") {
        enhancement(cx, n, &m.at("enhancement"));
    }
    if let Some(n) = m.get("default") {
        super::sections::process_log_collection(cx, n, &m.at("default"), true);
    }
    s
}

fn rotation(cx: &mut Ctx, node: &Node, path: &str) -> Rotation {
    let mut r = Rotation::default();
    let Some(m) = cx.map(node, path, &["max_size", "max_files"]) else {
        return r;
    };
    r.max_size = m.field(cx, "max_size", positive_size).unwrap_or(r.max_size);
    r.max_files = m
        .field(cx, "max_files", Ctx::positive_u32)
        .unwrap_or(r.max_files);
    r
}

fn aggregation(cx: &mut Ctx, node: &Node, path: &str) -> Aggregation {
    let mut a = Aggregation::default();
    let Some(m) = cx.map(node, path, &["enabled", "targets"]) else {
        return a;
    };
    a.enabled = m.field(cx, "enabled", Ctx::boolean).unwrap_or(a.enabled);
    let Some(list) = m.get("targets") else {
        return a;
    };
    let list_path = m.at("targets");
    let Value::Seq(items) = &list.value else {
        cx.report(
            list,
            &list_path,
            format!("expected a list of targets, found {}", list.kind_name()),
        );
        return a;
    };
    for (i, item) in items.iter().enumerate() {
        a.targets
            .extend(target(cx, item, &format!("{list_path}[{i}]")));
    }
    a
}

fn target(cx: &mut Ctx, node: &Node, path: &str) -> Option<AggregationTarget> {
    let m = cx.map(node, path, &["type", "path", "format", "prefix"])?;
    let kinds = [
        ("file", TargetKind::File),
        ("process_manager_stdout", TargetKind::ProcessManagerStdout),
        ("process_manager_stderr", TargetKind::ProcessManagerStderr),
    ];
    let kind = match m.get("type") {
        Some(n) => cx.choice(n, &m.at("type"), &kinds),
        None => {
            m.missing(
                cx,
                "type",
                "one of: file, process_manager_stdout, process_manager_stderr",
            );
            None
        }
    };
    // Relative to the log directory, like the per-process files: kept as written.
    let file = m.field(cx, "path", Ctx::non_empty).map(PathBuf::from);
    let formats = [
        ("plain", LogFormat::Plain),
        ("enhanced_plain", LogFormat::EnhancedPlain),
        ("json", LogFormat::Json),
    ];
    let format = m.field(cx, "format", |cx, n, p| cx.choice(n, p, &formats));
    let prefix = m.field(cx, "prefix", Ctx::string);
    match kind? {
        TargetKind::File if file.is_none() && !m.has("path") => {
            m.missing(cx, "path", "a `file` target needs a file name");
        }
        TargetKind::ProcessManagerStdout | TargetKind::ProcessManagerStderr => {
            m.forbid(cx, "path", "is only used by `file` targets");
        }
        TargetKind::File => {}
    }
    Some(AggregationTarget {
        kind: kind?,
        path: file,
        format: format.unwrap_or_default(),
        prefix,
    })
}

/// The earlier HSU manager's `log_collection.enhancement`: checked, not acted on.
fn enhancement(cx: &mut Ctx, node: &Node, path: &str) {
    let Some(m) = cx.map(node, path, &["enabled", "metadata"]) else {
        return;
    };
    m.field(cx, "enabled", Ctx::boolean);
    let Some(meta) = m.get("metadata") else {
        return;
    };
    const FLAGS: [&str; 5] = [
        "add_process_manager_id",
        "add_hostname",
        "add_timestamp",
        "add_sequence",
        "add_line_number",
    ];
    if let Some(mm) = cx.map(meta, &join(path, "metadata"), &FLAGS) {
        for flag in FLAGS {
            mm.field(cx, flag, Ctx::boolean);
        }
    }
}

#[cfg(test)]
mod log_collection_tests {
    use crate::config::load_str;
    use hsu_log_collection as lc;
    use std::path::Path;

    #[test]
    fn targets_reach_the_collector_as_configured() {
        let text = r#"
log_collection:
  rotation: {max_size: 4KiB, max_files: 2}
  timestamps: false
  global_aggregation:
    targets:
      - {type: file, path: all.jsonl, format: json}
      - {type: process_manager_stdout, format: enhanced_plain, prefix: "[HSU]"}
      - {type: process_manager_stderr}
"#;
        let c = load_str(text, Path::new("/etc/hsu/config.yaml")).unwrap();
        let s = c.log_collection.collector_settings();
        assert_eq!(
            s.rotation,
            lc::Rotation {
                max_size: 4096,
                max_files: 2
            }
        );
        assert!(!s.timestamps);
        let kinds: Vec<_> = s.targets.iter().map(|t| t.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                lc::TargetKind::File("all.jsonl".into()),
                lc::TargetKind::Stdout,
                lc::TargetKind::Stderr
            ]
        );
        assert_eq!(s.targets[0].format, lc::Format::Json);
        assert_eq!(s.targets[1].prefix.as_deref(), Some("[HSU]"));
        assert_eq!(s.targets[2].format, lc::Format::Plain);

        let off = text.replace(
            "  global_aggregation:\n",
            "  global_aggregation:\n    enabled: false\n",
        );
        let c = load_str(&off, Path::new("/etc/hsu/config.yaml")).unwrap();
        assert!(c.log_collection.collector_settings().targets.is_empty());
    }

    #[test]
    fn console_targets_take_no_path() {
        let text = "log_collection:\n  global_aggregation:\n    targets:\n      - {type: process_manager_stderr, path: x.log}\n";
        let e = load_str(text, Path::new("/c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only used by `file` targets"), "{e}");
        let text = "log_collection:\n  global_aggregation:\n    targets:\n      - {format: json}\n";
        let e = load_str(text, Path::new("/c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("process_manager_stderr"), "{e}");
    }
}
