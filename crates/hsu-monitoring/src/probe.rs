//! One check of each kind, bounded by its timeout: HTTP, TCP and exec here, gRPC in
//! [`crate::grpc`].

use crate::ProbeOutcome;
use hsu_managed_process::HealthCheckKind;
use hsu_process::{CommandEnd, CommandSpec};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpStream;

/// The most bytes of an exec check's output kept (its first line goes into the error).
const EXEC_OUTPUT: usize = 4 * 1024;
/// The most characters of output quoted in an error.
const QUOTED: usize = 200;

/// Where an exec check runs: the process's working directory and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecContext {
    /// The process's working directory, where the check starts.
    pub working_directory: PathBuf,
    /// The process's `environment`, added to the manager's own (without the variables
    /// only the manager may see, such as the API token).
    pub environment: BTreeMap<String, String>,
}

/// Runs one check of `kind` bounded by `timeout`, and returns its outcome with its
/// latency and completion time. Never panics, and returns at most a few milliseconds
/// after `timeout` (an overrunning exec check is killed with its whole tree, and reaped,
/// first). `Process` is not probed: it passes at once.
///
/// * `http`: one HTTP/1.1 request with the configured method and a `Host` header;
///   healthy = 2xx. Redirects are not followed and the body is not read.
/// * `grpc`: `grpc.health.v1.Health/Check` for the configured service over h2c;
///   healthy = `SERVING`.
/// * `tcp`: a connection is accepted.
/// * `exec`: the command exits 0; it runs in `exec`'s directory and environment, in a
///   process group of its own, with stdin from /dev/null; the first line of its output
///   is quoted when it fails.
pub async fn probe(kind: &HealthCheckKind, exec: &ExecContext, timeout: Duration) -> ProbeOutcome {
    let started = Instant::now();
    let result = match kind {
        HealthCheckKind::Process => Ok(()),
        HealthCheckKind::Http { url, method } => bounded(timeout, http(url, method)).await,
        HealthCheckKind::Grpc { address, service } => {
            bounded(timeout, crate::grpc::check(address, service)).await
        }
        HealthCheckKind::Tcp { address } => {
            bounded(timeout, async { connect(address).await.map(drop) }).await
        }
        HealthCheckKind::Exec { command, arguments } => {
            run_exec(command, arguments, exec, timeout).await
        }
    };
    ProbeOutcome {
        result,
        latency: started.elapsed(),
        at: SystemTime::now(),
    }
}

/// `work`, or "timed out after ..." once `timeout` has passed (`work` is dropped then,
/// and with it any connection it had open).
pub(crate) async fn bounded(
    timeout: Duration,
    work: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {}", human(timeout))))
}

pub(crate) fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// A TCP connection to `address` (`host:port`, a name is resolved), with the failure in
/// words: `connection refused (127.0.0.1:8080)`.
pub(crate) async fn connect(address: &str) -> Result<TcpStream, String> {
    match TcpStream::connect(address).await {
        Ok(stream) => {
            // Requests are small and sent whole: no waiting for more to fill a segment.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(format!("connection refused ({address})"))
        }
        Err(e) => Err(format!("cannot connect to {address}: {e}")),
    }
}

/// Polls `work` to completion while driving `connection` (a hyper connection future,
/// which moves the bytes of `work`'s requests). A connection that ends first makes
/// `work` fail on its own, with hyper's reason.
pub(crate) async fn drive<T, E>(
    work: impl Future<Output = T>,
    connection: impl Future<Output = Result<(), E>>,
) -> T {
    tokio::pin!(work);
    tokio::pin!(connection);
    let mut connected = true;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = &mut connection, if connected => connected = false,
        }
    }
}

/// hyper's error with its causes, e.g. `connection closed before message completed`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

async fn http(url: &str, method: &str) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper::{header, Method, Request, Uri};

    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https is not supported (no TLS client is built in)".to_string())
        }
        _ => return Err(format!("`{url}` is not an http:// URL")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{url}` names no host"));
    };
    // `user:password@` is not sent anywhere.
    let host_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, hp)| hp);
    let address = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let request = Request::builder()
        .method(method)
        .uri(target)
        .header(header::HOST, host_port)
        .header(header::USER_AGENT, "hsu-process-manager health check")
        .header(header::CONNECTION, "close")
        .body(Empty::<hyper::body::Bytes>::new())
        .map_err(|e| format!("cannot build the request for `{url}`: {e}"))?;

    let stream = connect(&address).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP to {address} failed: {}", error_chain(&e)))?;
    let response = drive(sender.send_request(request), connection)
        .await
        .map_err(|e| format!("HTTP to {address} failed: {}", error_chain(&e)))?;
    // Only the status counts: the body, possibly endless, is left unread, and dropping
    // the connection here closes it.
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let mut text = format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let text_len = text.trim_end().len();
    text.truncate(text_len);
    if status.is_redirection() {
        text.push_str(" (redirects are not followed)");
    }
    Err(text)
}

async fn run_exec(
    command: &Path,
    arguments: &[String],
    exec: &ExecContext,
    timeout: Duration,
) -> Result<(), String> {
    let spec = CommandSpec {
        program: command.to_path_buf(),
        args: arguments.to_vec(),
        working_directory: exec.working_directory.clone(),
        environment: exec.environment.clone(),
    };
    let run = hsu_process::run_command(spec, timeout, EXEC_OUTPUT)
        .await
        .map_err(|e| e.to_string())?;
    let exit = match run.end {
        CommandEnd::Exited(exit) if exit.success() => return Ok(()),
        CommandEnd::Exited(exit) => exit,
        CommandEnd::TimedOut => return Err(format!("timed out after {} (killed)", human(timeout))),
    };
    let mut text = match (exit.code, exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended without an exit code".to_string(),
    };
    if let Some(line) = first_line(&run.output) {
        text.push_str(": ");
        text.push_str(&line);
    }
    Err(text)
}

/// The first non-blank line of `output`, trimmed and cut to [`QUOTED`] characters.
fn first_line(output: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut quoted: String = line.chars().take(QUOTED).collect();
    if quoted.len() < line.len() {
        quoted.push_str("...");
    }
    Some(quoted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    const TIMEOUT: Duration = Duration::from_millis(500);

    /// An HTTP server on a free loopback port that answers every request with `response`
    /// (raw bytes), or never (`None`: it reads the request and holds the connection).
    /// Each request's head comes out of the receiver.
    async fn http_server(response: Option<&'static str>) -> (u16, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (heads, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let heads = heads.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                    match response {
                        Some(r) => {
                            let _ = stream.write_all(r.as_bytes()).await;
                            // Held open: the client decides when the exchange is over.
                            let _ = stream.read(&mut buf).await;
                        }
                        // Never answers; holds the connection until the client leaves.
                        None => while let Ok(1..) = stream.read(&mut buf).await {},
                    }
                });
            }
        });
        (port, rx)
    }

    /// A port nothing listens on (bound, then released).
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn http(url: String, method: &str) -> HealthCheckKind {
        HealthCheckKind::Http {
            url,
            method: method.into(),
        }
    }

    /// The manager's directory and environment, nothing added.
    fn plain() -> ExecContext {
        ExecContext {
            working_directory: std::env::current_dir().unwrap(),
            environment: BTreeMap::new(),
        }
    }

    async fn check(kind: &HealthCheckKind) -> ProbeOutcome {
        probe(kind, &plain(), TIMEOUT).await
    }

    #[tokio::test]
    async fn http_2xx_passes_and_sends_method_path_and_host() {
        let (port, mut heads) = http_server(Some("HTTP/1.1 204 No Content\r\n\r\n")).await;
        let before = SystemTime::now();
        let out = check(&http(
            format!("http://127.0.0.1:{port}/health?full=1"),
            "GET",
        ))
        .await;
        assert_eq!(out.result, Ok(()));
        assert!(out.at >= before && out.latency < TIMEOUT, "{out:?}");
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get /health?full=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
            "{head}"
        );

        let out = check(&http(format!("http://localhost:{port}"), "HEAD")).await;
        assert_eq!(out.result, Ok(()));
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("head / http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nhost: localhost:{port}\r\n")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn http_non_2xx_fails_with_the_status_and_redirects_are_not_followed() {
        let (port, _) = http_server(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nFAIL",
        ))
        .await;
        let out = check(&http(format!("http://127.0.0.1:{port}/"), "GET")).await;
        assert_eq!(out.result, Err("HTTP 503 Service Unavailable".into()));
        let (port, mut heads) = http_server(Some(
            "HTTP/1.1 301 Moved Permanently\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n",
        ))
        .await;
        let out = check(&http(format!("http://127.0.0.1:{port}/"), "GET")).await;
        assert_eq!(
            out.result,
            Err("HTTP 301 Moved Permanently (redirects are not followed)".into())
        );
        heads.recv().await.unwrap();
        assert!(heads.try_recv().is_err(), "one request only");
    }

    #[tokio::test]
    async fn an_endless_body_is_not_read() {
        // Chunked, and the chunks never end: only the status matters.
        let (port, _) = http_server(Some(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ))
        .await;
        let out = check(&http(format!("http://127.0.0.1:{port}/"), "GET")).await;
        assert_eq!(out.result, Ok(()));
        assert!(out.latency < TIMEOUT, "{out:?}");
    }

    #[tokio::test]
    async fn a_hung_http_endpoint_fails_at_the_timeout() {
        let (port, mut heads) = http_server(None).await;
        let out = check(&http(format!("http://127.0.0.1:{port}/"), "GET")).await;
        assert_eq!(out.result, Err("timed out after 500ms".into()));
        assert!(
            out.latency >= TIMEOUT && out.latency < TIMEOUT * 2,
            "{out:?}"
        );
        // It was asked: the request went out before the wait.
        heads.recv().await.unwrap();
    }

    #[tokio::test]
    async fn refused_connections_say_where() {
        let port = closed_port();
        let out = check(&http(format!("http://127.0.0.1:{port}/health"), "GET")).await;
        assert_eq!(
            out.result,
            Err(format!("connection refused (127.0.0.1:{port})"))
        );
        let out = check(&HealthCheckKind::Tcp {
            address: format!("127.0.0.1:{port}"),
        })
        .await;
        assert_eq!(
            out.result,
            Err(format!("connection refused (127.0.0.1:{port})"))
        );
    }

    #[tokio::test]
    async fn https_is_refused_without_a_connection() {
        let out = check(&http("https://127.0.0.1:1/".into(), "GET")).await;
        assert_eq!(
            out.result,
            Err("https is not supported (no TLS client is built in)".into())
        );
    }

    #[tokio::test]
    async fn tcp_passes_on_an_open_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let out = check(&HealthCheckKind::Tcp { address }).await;
        assert_eq!(out.result, Ok(()));
    }

    #[tokio::test]
    async fn process_kind_passes_at_once() {
        let out = check(&HealthCheckKind::Process).await;
        assert_eq!(out.result, Ok(()));
    }

    fn exec(command: &str, arguments: &[&str]) -> HealthCheckKind {
        HealthCheckKind::Exec {
            command: command.into(),
            arguments: arguments.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn exec_passes_on_exit_0_in_the_process_directory_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let context = ExecContext {
            working_directory: dir.path().to_path_buf(),
            environment: [("DB_URL".to_string(), "db:5432".to_string())].into(),
        };
        let script = format!(
            "test \"$DB_URL\" = db:5432 && test \"$(pwd -P)\" = '{}'",
            dir.path().canonicalize().unwrap().display()
        );
        let out = probe(&exec("sh", &["-c", &script]), &context, TIMEOUT * 10).await;
        assert_eq!(out.result, Ok(()));
    }

    #[tokio::test]
    async fn exec_failure_quotes_the_first_line_of_output() {
        let kind = exec(
            "sh",
            &["-c", "echo; echo '  db not ready ' >&2; echo more; exit 1"],
        );
        let out = probe(&kind, &plain(), TIMEOUT * 10).await;
        assert_eq!(out.result, Err("exit code 1: db not ready".into()));
        let out = probe(&exec("sh", &["-c", "exit 4"]), &plain(), TIMEOUT * 10).await;
        assert_eq!(out.result, Err("exit code 4".into()));
        let out = probe(&exec("sh", &["-c", "kill -9 $$"]), &plain(), TIMEOUT * 10).await;
        assert_eq!(out.result, Err("killed by signal 9".into()));
    }

    #[tokio::test]
    async fn exec_spawn_errors_are_failures_in_words() {
        let out = check(&exec("/nonexistent/check-db", &[])).await;
        let err = out.result.unwrap_err();
        assert!(
            err.starts_with("executable `/nonexistent/check-db` not found"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("check.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let out = check(&HealthCheckKind::Exec {
            command: script.clone(),
            arguments: Vec::new(),
        })
        .await;
        let err = out.result.unwrap_err();
        assert!(err.contains("cannot be run"), "{err}");
    }

    #[tokio::test]
    async fn an_overrunning_exec_is_killed_with_its_tree_and_reaped() {
        // Orphans of the check come to this process, as they come to the manager.
        hsu_process::become_subreaper().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let script = format!("sleep 30 & echo $! $$ > '{}'; sleep 30", file.display());
        let out = check(&exec("sh", &["-c", &script])).await;
        assert_eq!(out.result, Err("timed out after 500ms (killed)".into()));
        assert!(out.latency < TIMEOUT * 2, "{out:?}");
        let pids: Vec<u32> = std::fs::read_to_string(&file)
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2);
        // Neither alive nor a zombie: reaped before the probe returned.
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "{pid} is left"
            );
        }
    }
}
