//! The client commands: `status`, `start`, `stop`, `restart`, `logs`, `events`, `reload`,
//! `shutdown`. Each finds the manager, makes one API call (or follows a stream) and
//! prints the answer for people (or `--json` for scripts).

use clap::{Args, Subcommand};
use hsu_api::{ApiAddress, ApiClient, ApiError, Circuit, ClientError, Process, State};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// How a client command finds and authenticates to the manager.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// API address: http://HOST:PORT or unix:/path/api.sock [env: HSU_API]
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// Bearer token [env: HSU_API_TOKEN]
    #[arg(long, global = true)]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Show processes: a table, or the API's JSON with --json.
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
        /// Show the dependency graph: each process under what it depends on.
        #[arg(long, conflicts_with = "id")]
        tree: bool,
    },
    /// Start a stopped or failed process (also closes its circuit breaker).
    Start { id: String },
    /// Stop a process and everything it started.
    Stop {
        id: String,
        /// Kill the whole tree now (SIGKILL), also ending a graceful stop in progress.
        #[arg(long)]
        force: bool,
    },
    /// Stop and start a process.
    Restart {
        id: String,
        /// Restart even while the circuit breaker is open.
        #[arg(long)]
        force: bool,
    },
    /// Print a process's captured output.
    Logs {
        id: String,
        #[arg(long, default_value = "stdout", value_parser = ["stdout", "stderr"])]
        stream: String,
        /// How many of the last lines to print.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the event journal.
    Events {
        /// Keep printing new events.
        #[arg(short, long)]
        follow: bool,
    },
    /// Re-read the config and apply the difference.
    Reload,
    /// Stop every process and the manager.
    Shutdown {
        /// Exit leaving every process running, recorded in state.json for the next
        /// manager on the same base directory to adopt (upgrading the manager without
        /// restarting the services).
        #[arg(long)]
        keep_processes: bool,
    },
}

impl ClientCommand {
    /// `status` and other read-only calls answer fast; stops may take a graceful timeout.
    fn name(&self) -> &'static str {
        match self {
            ClientCommand::Status { .. } => "status",
            ClientCommand::Start { .. } => "start",
            ClientCommand::Stop { .. } => "stop",
            ClientCommand::Restart { .. } => "restart",
            ClientCommand::Logs { .. } => "logs",
            ClientCommand::Events { .. } => "events",
            ClientCommand::Reload => "reload",
            ClientCommand::Shutdown { .. } => "shutdown",
        }
    }
}

/// Resolves the API address: `--api`, `HSU_API`, `--config`, `--base-dir`'s `api.addr`,
/// the default base directory's `api.addr`, then `http://127.0.0.1:50055`.
pub fn resolve_address(
    args: &ClientArgs,
    config: Option<&Path>,
    base_dir: Option<&Path>,
    default_base: &Path,
) -> Result<ApiAddress, String> {
    if let Some(a) = args
        .api
        .clone()
        .or_else(|| std::env::var("HSU_API").ok().filter(|v| !v.is_empty()))
    {
        return a.parse();
    }
    if let Some(path) = config {
        let cfg = hsu_process_management::config::load_file(path)
            .map_err(|e| format!("cannot read {} to find the manager:\n{e}", path.display()))?;
        let base = base_dir
            .map(Path::to_path_buf)
            .or_else(|| cfg.manager.base_directory.clone())
            .unwrap_or_else(|| default_base.to_path_buf());
        if let Some(addr) = read_addr_file(&base) {
            return Ok(addr);
        }
        let host = if cfg.manager.bind.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            cfg.manager.bind.to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        return Ok(ApiAddress::Tcp(format!("{host}:{}", cfg.manager.port)));
    }
    if let Some(dir) = base_dir {
        return read_addr_file(dir).ok_or_else(|| {
            format!(
                "no manager address in {}: is a manager running with --base-dir {}?",
                dir.join("api.addr").display(),
                dir.display()
            )
        });
    }
    if let Some(addr) = read_addr_file(default_base) {
        return Ok(addr);
    }
    Ok(ApiAddress::Tcp("127.0.0.1:50055".into()))
}

fn read_addr_file(base: &Path) -> Option<ApiAddress> {
    let text = std::fs::read_to_string(base.join("api.addr")).ok()?;
    text.trim().parse().ok()
}

pub fn run(
    command: ClientCommand,
    args: ClientArgs,
    config: Option<PathBuf>,
    base_dir: Option<&Path>,
    default_base: &Path,
) -> ExitCode {
    let address = match resolve_address(&args, config.as_deref(), base_dir, default_base) {
        Ok(a) => a,
        Err(e) => {
            errln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let token = args.token.clone().or_else(|| {
        std::env::var("HSU_API_TOKEN")
            .ok()
            .filter(|v| !v.is_empty())
    });
    let client = ApiClient::new(address, token);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = command.name();
    match runtime.block_on(execute(command, &client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Unreachable { address, reason }) => {
            errln!("error: manager not reachable at {address} ({reason})");
            ExitCode::FAILURE
        }
        Err(ClientError::Api { error, status }) => {
            errln!("error: {name}: {}", error.error);
            for p in &error.problems {
                errln!("{p}");
            }
            // A reload refused for its config is a config error (README: exit 2).
            if name == "reload" && status == 422 {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            errln!("error: {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: ClientCommand, client: &ApiClient) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    match command {
        ClientCommand::Status {
            tree: true, json, ..
        } => {
            let graph = client.graph().await?;
            if json {
                let text = serde_json::to_string_pretty(&graph).unwrap_or_default();
                let _ = writeln!(out, "{text}");
            } else {
                let _ = write!(out, "{}", dependency_tree(&graph));
            }
        }
        ClientCommand::Status { id, json, .. } => {
            let processes = match &id {
                Some(id) => vec![client.get(id).await?],
                None => client.list().await?,
            };
            if json {
                let value = match id {
                    Some(_) => serde_json::to_value(&processes[0]),
                    None => serde_json::to_value(&processes),
                }
                .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                let _ = writeln!(out, "{}", status_table(&processes));
                if id.is_some() {
                    let _ = write!(out, "{}", status_details(&processes[0]));
                }
            }
        }
        ClientCommand::Start { id } => {
            let a = client.start(&id).await?;
            print_after(&mut out, "started", &id, a.process.as_ref());
        }
        ClientCommand::Stop { id, force } => {
            let a = client.stop(&id, force).await?;
            print_after(&mut out, "stopped", &id, a.process.as_ref());
        }
        ClientCommand::Restart { id, force } => {
            let a = client.restart(&id, force).await?;
            print_after(&mut out, "restarted", &id, a.process.as_ref());
        }
        ClientCommand::Logs {
            id,
            stream,
            lines,
            follow,
        } => print_logs(&mut out, client, &id, &stream, lines, follow).await?,
        ClientCommand::Events { follow } => {
            if follow {
                drop(out);
                client
                    .follow_events(|e| {
                        let line = serde_json::to_string(&e).unwrap_or_default();
                        writeln!(std::io::stdout().lock(), "{line}").is_ok()
                    })
                    .await?;
            } else {
                for e in client.events().await? {
                    let _ = writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default());
                }
            }
        }
        ClientCommand::Reload => {
            let r = client.reload().await?;
            let list = |v: &[String]| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    v.join(", ")
                }
            };
            let _ = writeln!(
                out,
                "reloaded: added {}; removed {}; changed {}; unchanged {}",
                list(&r.added),
                list(&r.removed),
                list(&r.changed),
                list(&r.unchanged)
            );
            for change in &r.applied_settings {
                let _ = writeln!(out, "applied: {change}");
            }
            for change in &r.needs_restart {
                let _ = writeln!(out, "needs a manager restart: {change}");
            }
        }
        ClientCommand::Shutdown { keep_processes } => {
            client.shutdown(keep_processes).await?;
            if keep_processes {
                let _ = writeln!(
                    out,
                    "manager is exiting; its processes keep running for the next manager"
                );
            } else {
                let _ = writeln!(out, "manager is shutting down");
            }
        }
    }
    Ok(())
}

/// `logs`: the last `lines` lines of a stream (rotated files included), then with
/// `follow` what is appended, printed as it arrives. The bytes are decoded as UTF-8 across
/// chunk boundaries ([`Utf8Stream`]); what is not UTF-8 prints as U+FFFD. Ends quietly
/// when stdout is closed (`logs -f | head`).
async fn print_logs(
    out: &mut impl Write,
    client: &ApiClient,
    id: &str,
    stream: &str,
    lines: usize,
    follow: bool,
) -> Result<(), ClientError> {
    let mut path = format!("/api/v1/processes/{id}/logs?stream={stream}&tail={lines}");
    if follow {
        path.push_str("&follow=true");
    }
    let get = "GET".parse().map_err(|e| ClientError::Protocol {
        address: client.address().to_string(),
        reason: format!("{e}"),
    })?;
    let mut resp = client.send(get, &path, &[], None).await?;
    if resp.status != 200 {
        let mut body = Vec::new();
        while let Some(Ok(chunk)) = resp.next_chunk().await {
            body.extend_from_slice(&chunk);
        }
        let error = serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|_| ApiError {
            error: format!(
                "HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&body).trim()
            ),
            code: "unknown".into(),
            problems: Vec::new(),
        });
        return Err(ClientError::Api {
            status: resp.status,
            error,
        });
    }
    let mut text = Utf8Stream::default();
    while let Some(chunk) = resp.next_chunk().await {
        let decoded = text.push(&chunk?);
        if out
            .write_all(decoded.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
    let _ = out.write_all(text.finish().as_bytes());
    Ok(())
}

/// Decodes a byte stream that arrives in pieces: a character split between two pieces
/// is held back until its end arrives, instead of becoming two U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `chunk` (after what was held back), less an unfinished character at
    /// its end.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(chunk);
        let keep = unfinished_char(&bytes);
        self.carry = bytes.split_off(bytes.len() - keep);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// What is still held back, at the end of the stream.
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned()
    }
}

/// How many bytes at the end of `bytes` begin a character whose end is missing.
fn unfinished_char(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(4) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue;
        }
        let needs = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if needs > back { back } else { 0 };
    }
    0
}

fn print_after(out: &mut impl Write, verb: &str, id: &str, p: Option<&Process>) {
    match p {
        Some(p) => {
            let pid = p.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
            let _ = writeln!(out, "{id}: {verb} (now {}{pid}: {})", p.state, p.reason);
        }
        None => {
            let _ = writeln!(out, "{id}: {verb}");
        }
    }
}

/// `status --tree`: every process under what it depends on (one with several
/// dependencies appears under each), with its state and what it waits for.
pub fn dependency_tree(graph: &hsu_api::model::Graph) -> String {
    fn line(graph: &hsu_api::model::Graph, id: &str, prefix: &str, out: &mut String) {
        let node = graph.nodes.iter().find(|n| n.id == id);
        let state = node.map_or("?".to_owned(), |n| n.state.to_string());
        out.push_str(&format!("{id}  {state}"));
        if let Some(n) = node.filter(|n| !n.waiting_for.is_empty()) {
            out.push_str(&format!(" (waiting for {})", n.waiting_for.join(", ")));
        }
        out.push('\n');
        if prefix.len() > 3 * 64 {
            // Deeper than any valid config goes (a cycle slipped through): stop here.
            return;
        }
        let children: Vec<&hsu_api::model::GraphEdge> =
            graph.edges.iter().filter(|e| e.to == id).collect();
        for (i, e) in children.iter().enumerate() {
            let last = i + 1 == children.len();
            out.push_str(prefix);
            out.push_str(if last { "└─ " } else { "├─ " });
            out.push_str(&format!("[{}] ", e.condition));
            let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
            line(graph, &e.from, &deeper, out);
        }
    }
    let mut out = String::new();
    for n in &graph.nodes {
        if !graph.edges.iter().any(|e| e.from == n.id) {
            line(graph, &n.id, "", &mut out);
        }
    }
    out
}

/// What `status ID` prints below the table: why it is where it is, and its health.
pub fn status_details(p: &Process) -> String {
    let h = &p.health;
    let mut health = format!("{} ({} check)", h.status, h.check);
    if h.consecutive_failures > 0 {
        health.push_str(&format!(", {} failed in a row", h.consecutive_failures));
    }
    if let Some(at) = &h.last_check_at {
        health.push_str(&format!(", last checked {at}"));
    }
    if let Some(ms) = h.last_latency_ms {
        health.push_str(&format!(" in {ms} ms"));
    }
    if let Some(e) = &h.last_error {
        health.push_str(&format!(": {e}"));
    }
    let adopted = if p.adopted {
        "adopted: yes (started by an earlier manager)\n"
    } else {
        ""
    };
    format!("reason: {}\nhealth: {health}\n{adopted}", p.reason)
}

/// The aligned table of `status`.
pub fn status_table(processes: &[Process]) -> String {
    use comfy_table::{presets::NOTHING, CellAlignment, Table};
    let mut table = Table::new();
    table.load_preset(NOTHING);
    table.set_header([
        "ID", "TYPE", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "CPU%", "MEM",
    ]);
    for p in processes {
        let state = match (p.state, p.circuit) {
            (State::Failed, Circuit::Open) => "failed (circuit open)".to_owned(),
            (state, _) => state.to_string(),
        };
        table.add_row([
            p.id.clone(),
            p.process_type.as_str().replace("_managed", ""),
            state,
            p.pid.map_or("-".into(), |v| v.to_string()),
            p.uptime_secs.map_or("-".into(), human_duration),
            p.restart_count.to_string(),
            p.health.status.to_string(),
            p.resources
                .as_ref()
                .map_or("-".into(), |r| format!("{:.1}", r.cpu_percent)),
            p.resources
                .as_ref()
                .map_or("-".into(), |r| compact_size(r.rss_bytes)),
        ]);
    }
    for i in [3, 4, 5, 7, 8] {
        if let Some(c) = table.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    table.to_string()
}

/// `2.0MiB`: one word, so each table cell stays one whitespace-separated field.
pub fn compact_size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes)
        .display()
        .iec()
        .to_string()
        .replace(' ', "")
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_puts_dependents_under_their_dependencies() {
        use hsu_api::model::{Graph, GraphEdge, GraphNode, State};
        let node = |id: &str, state, waiting: &[&str]| GraphNode {
            id: id.into(),
            state,
            waiting_for: waiting.iter().map(|s| s.to_string()).collect(),
        };
        let edge = |from: &str, to: &str, condition: &str| GraphEdge {
            from: from.into(),
            to: to.into(),
            condition: condition.into(),
            propagate_restart: false,
        };
        let graph = Graph {
            nodes: vec![
                node("db", State::Running, &[]),
                node("app", State::Running, &[]),
                node("worker", State::Starting, &["app (healthy)"]),
                node("cron", State::Running, &[]),
                node("lone", State::Stopped, &[]),
            ],
            edges: vec![
                edge("app", "db", "healthy"),
                edge("worker", "app", "healthy"),
                edge("cron", "db", "started"),
            ],
            start_order: vec![],
        };
        assert_eq!(
            dependency_tree(&graph),
            "db  running\n\
             ├─ [healthy] app  running\n\
             │  └─ [healthy] worker  starting (waiting for app (healthy))\n\
             └─ [started] cron  running\n\
             lone  stopped\n"
        );
    }

    #[test]
    fn characters_split_between_chunks_are_decoded_whole() {
        let text = "añ€😀z";
        let bytes = text.as_bytes();
        // Every way of cutting the bytes in two decodes to the same text.
        for cut in 0..=bytes.len() {
            let mut d = Utf8Stream::default();
            let mut got = d.push(&bytes[..cut]);
            got.push_str(&d.push(&bytes[cut..]));
            got.push_str(&d.finish());
            assert_eq!(got, text, "cut at {cut}");
        }
        // One byte at a time, too.
        let mut d = Utf8Stream::default();
        let got: String = bytes.iter().map(|b| d.push(&[*b])).collect();
        assert_eq!(got, text);
        // Bytes that are not UTF-8 are replaced, not held forever.
        let mut d = Utf8Stream::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(d.push(b"\xe2\x82"), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }

    #[test]
    fn sizes_are_one_word() {
        assert_eq!(compact_size(2 * 1024 * 1024), "2.0MiB");
        assert_eq!(compact_size(512), "512B");
    }

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m 1s");
        assert_eq!(human_duration(3 * 3600 + 5 * 60 + 9), "3h 5m");
        assert_eq!(human_duration(2 * 86_400 + 3600), "2d 1h");
    }

    #[test]
    fn address_order_api_flag_first_then_default() {
        let dir = std::env::temp_dir().join("hsu-cli-test-none");
        let args = ClientArgs {
            api: Some("unix:/x/api.sock".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve_address(&args, None, None, &dir).unwrap(),
            ApiAddress::Unix("/x/api.sock".into())
        );
    }

    #[test]
    fn base_dir_names_the_address_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api.addr"), "127.0.0.1:4321\n").unwrap();
        let none = std::env::temp_dir().join("hsu-cli-test-none");
        let args = ClientArgs::default();
        // Only when HSU_API does not decide first.
        if std::env::var_os("HSU_API").is_none() {
            assert_eq!(
                resolve_address(&args, None, Some(dir.path()), &none).unwrap(),
                ApiAddress::Tcp("127.0.0.1:4321".into())
            );
            let empty = tempfile::tempdir().unwrap();
            let e = resolve_address(&args, None, Some(empty.path()), &none).unwrap_err();
            assert!(e.contains("api.addr"), "{e}");
        }
    }
}
