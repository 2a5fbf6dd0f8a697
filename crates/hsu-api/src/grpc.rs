//! The gRPC side of the control API (SPEC §7): `hsu.procman.v1.ProcessManager` with the
//! same operations and semantics as the HTTP/JSON API, and `grpc.health.v1.Health` for the
//! manager itself. Also the generated code of `hsu.core.v1.CoreService`, which integrated
//! processes serve (testexe) and the manager calls.
//!
//! [`routes`] returns an [`axum::Router`] holding one route per gRPC service; the API
//! server hands it every `application/grpc` request, over HTTP/2 (h2c, prior knowledge)
//! on the same port and on `api.sock`. Like the HTTP handlers, every call is one
//! `ProcessManager` method and a translation of its result:
//!
//! | result                        | gRPC status           |
//! |-------------------------------|-----------------------|
//! | unknown process               | `NOT_FOUND`           |
//! | `ControlError::Conflict`      | `FAILED_PRECONDITION` |
//! | `ControlError::Gone`          | `UNAVAILABLE`         |
//! | invalid config on reload      | `INVALID_ARGUMENT`, every problem in the message |
//! | missing or wrong bearer token | `UNAUTHENTICATED`     |
//!
//! With a token configured every `ProcessManager` call needs the metadata
//! `authorization: Bearer <token>`; the health service stays open, like `GET /healthz`.

use crate::model;
use crate::state::{ApiMetrics, ApiState};
use futures_util::FutureExt;
use hsu_common::Event as JournalEvent;
use hsu_managed_process::ControlError;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

/// The code generated from `proto/`.
pub mod proto {
    pub mod procman {
        pub mod v1 {
            tonic::include_proto!("hsu.procman.v1");
        }
    }
    pub mod core {
        pub mod v1 {
            tonic::include_proto!("hsu.core.v1");
        }
    }
}

pub use pb::process_manager_client::ProcessManagerClient;
pub use pb::process_manager_server::ProcessManagerServer;
use proto::procman::v1 as pb;

/// How often a followed log file is checked for new output.
const LOG_POLL: Duration = Duration::from_millis(200);
/// The most bytes one `LogChunk` carries.
const CHUNK: usize = 64 * 1024;

/// The gRPC services as an axum router: `ProcessManager` (behind the token check) and
/// `grpc.health.v1.Health` (open), and a fallback answering `UNIMPLEMENTED` for any other
/// service. Because of that fallback, serve it beside the JSON router by dispatching on
/// `content-type: application/grpc` (as `server.rs` does) rather than `Router::merge`,
/// which refuses two fallbacks.
///
/// Requests are not counted here: the server's guard counts every gRPC request (in
/// `metrics.grpc_requests`) before it gets here. It also checks the token first; the check
/// here keeps these routes safe when served on their own.
pub fn routes(state: ApiState) -> axum::Router {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // A fresh reporter's lock is free, so these complete at once.
    for service in ["", ProcessManagerServer::<GrpcApi>::NAME] {
        let _ = health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .now_or_never();
    }
    // Report NOT_SERVING once the manager is asked to shut down.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let manager = state.manager.clone();
        runtime.spawn(async move {
            manager.shutdown_requested().await;
            for service in ["", ProcessManagerServer::<GrpcApi>::NAME] {
                health_reporter
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        });
    }

    let auth = BearerAuth {
        token: state.token.clone(),
        metrics: state.metrics.clone(),
    };
    let procman = ProcessManagerServer::with_interceptor(GrpcApi { state }, auth);
    let router = add_service(
        axum::Router::new(),
        ProcessManagerServer::<GrpcApi>::NAME,
        procman,
    );
    add_service(
        router,
        <tonic_health::pb::health_server::HealthServer<()> as NamedService>::NAME,
        health,
    )
    .fallback(|uri: axum::http::Uri| async move {
        Status::unimplemented(format!("no gRPC method {}", uri.path()))
            .into_http::<axum::body::Body>()
    })
}

/// Routes `/<name>/*` to `svc`, as `tonic::service::Routes` does.
fn add_service<S>(router: axum::Router, name: &str, svc: S) -> axum::Router
where
    S: tower::Service<axum::http::Request<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    router.route_service(
        &format!("/{name}/{{*rest}}"),
        svc.map_request(|req: axum::http::Request<axum::body::Body>| {
            req.map(tonic::body::Body::new)
        }),
    )
}

/// Requires `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
struct BearerAuth {
    token: Option<Arc<str>>,
    metrics: Arc<ApiMetrics>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if bearer_matches(presented, token) {
            Ok(req)
        } else {
            self.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            Err(Status::unauthenticated(
                "missing or wrong bearer token (metadata `authorization: Bearer <token>`)",
            ))
        }
    }
}

/// Whether an `authorization` value is `Bearer <token>`; the token is compared in time
/// independent of where it differs.
fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let Some((scheme, presented)) = header.and_then(|h| h.trim().split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && constant_time_eq(presented.trim(), token)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The `hsu.procman.v1.ProcessManager` implementation over the API state.
#[derive(Clone)]
pub struct GrpcApi {
    state: ApiState,
}

impl GrpcApi {
    pub fn new(state: ApiState) -> Self {
        GrpcApi { state }
    }

    /// The API view of `id`, or `NOT_FOUND`.
    fn process(&self, id: &str) -> Result<pb::Process, Status> {
        let manager = &self.state.manager;
        let status = manager
            .status(id)
            .ok_or_else(|| control_status(ControlError::NotFound(id.to_owned())))?;
        let def = manager.definition(id);
        Ok(model::Process::from_status(&status, def.as_deref()).into())
    }

    fn accepted(&self, id: String, action: &str) -> Result<Response<pb::ActionResponse>, Status> {
        // The process may be gone by now (a concurrent reload); the action still happened.
        let process = self.process(&id).ok();
        Ok(Response::new(pb::ActionResponse {
            id,
            action: action.into(),
            process,
        }))
    }
}

fn control_status(e: ControlError) -> Status {
    let message = e.to_string();
    match e {
        ControlError::NotFound(_) => Status::not_found(message),
        ControlError::Conflict { .. } => Status::failed_precondition(message),
        ControlError::Gone(_) => Status::unavailable(message),
    }
}

type ChunkStream = Pin<Box<dyn futures_util::Stream<Item = Result<pb::LogChunk, Status>> + Send>>;
type EventStream = Pin<Box<dyn futures_util::Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::process_manager_server::ProcessManager for GrpcApi {
    async fn list(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let manager = &self.state.manager;
        let processes = manager
            .overview()
            .iter()
            .map(|(s, def)| model::Process::from_status(s, Some(def)).into())
            .collect();
        Ok(Response::new(pb::ListResponse { processes }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Process>, Status> {
        self.process(&req.into_inner().id).map(Response::new)
    }

    async fn start(
        &self,
        req: Request<pb::ProcessRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let id = req.into_inner().id;
        self.state
            .manager
            .start_process(&id)
            .await
            .map_err(control_status)?;
        self.accepted(id, "start")
    }

    async fn stop(
        &self,
        req: Request<pb::ProcessRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let id = req.into_inner().id;
        self.state
            .manager
            .stop_process(&id)
            .await
            .map_err(control_status)?;
        self.accepted(id, "stop")
    }

    async fn restart(
        &self,
        req: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let pb::RestartRequest { id, force } = req.into_inner();
        self.state
            .manager
            .restart_process(&id, force)
            .await
            .map_err(control_status)?;
        self.accepted(id, "restart")
    }

    type LogsStream = ChunkStream;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let pb::LogsRequest {
            id,
            stream,
            tail,
            follow,
        } = req.into_inner();
        // Only known ids name a file, so an id can never point outside the log directory.
        if self.state.manager.status(&id).is_none() {
            return Err(control_status(ControlError::NotFound(id)));
        }
        let stream = match stream.as_str() {
            "" | "stdout" => "stdout",
            "stderr" => "stderr",
            other => {
                return Err(Status::invalid_argument(format!(
                    "stream must be stdout or stderr, not `{other}`"
                )))
            }
        };
        let path = self.state.log_dir.join(format!("{id}.{stream}.log"));
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(send_log(path, tail, follow, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let follow = req.into_inner().follow;
        let journal = self.state.journal.clone();
        // Subscribed before reading, so no event falls between the file and the live feed.
        let live = follow.then(|| journal.subscribe());
        let past = read_journal(&journal).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(send_events(journal, past, live, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn reload(
        &self,
        _req: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        match self
            .state
            .manager
            .reload_from_file(&self.state.config_path)
            .await
        {
            Ok(diff) => Ok(Response::new(pb::ReloadResponse {
                added: diff.added,
                removed: diff.removed,
                changed: diff.changed,
                unchanged: diff.unchanged,
            })),
            Err(problems) => Err(Status::invalid_argument(format!(
                "invalid config {}, nothing was changed:\n{problems}",
                self.state.config_path.display()
            ))),
        }
    }

    async fn shutdown(
        &self,
        req: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        let reason = req.into_inner().reason;
        let reason = if reason.trim().is_empty() {
            "api"
        } else {
            reason.trim()
        };
        self.state.manager.request_shutdown(reason);
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}

async fn read_journal(
    journal: &Arc<hsu_process_file::Journal>,
) -> Result<Vec<JournalEvent>, Status> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || journal.read_all())
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))
}

/// Sends the journal's past events, then (when following) the live ones, each `seq` once
/// and in order; a follower that falls behind the live feed catches up from the file.
async fn send_events(
    journal: Arc<hsu_process_file::Journal>,
    past: Vec<JournalEvent>,
    live: Option<tokio::sync::broadcast::Receiver<JournalEvent>>,
    tx: mpsc::Sender<Result<pb::Event, Status>>,
) {
    let mut last_seq = 0;
    let mut send = |event: JournalEvent| {
        let tx = tx.clone();
        let fresh = event.seq > last_seq;
        if fresh {
            last_seq = event.seq;
        }
        async move { !fresh || tx.send(Ok(event.into())).await.is_ok() }
    };
    for event in past {
        if !send(event).await {
            return;
        }
    }
    let Some(mut live) = live else { return };
    loop {
        let received = tokio::select! {
            r = live.recv() => r,
            () = tx.closed() => return,
        };
        match received {
            Ok(event) => {
                if !send(event).await {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                let Ok(events) = read_journal(&journal).await else {
                    return;
                };
                for event in events {
                    if !send(event).await {
                        return;
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl From<JournalEvent> for pb::Event {
    fn from(e: JournalEvent) -> Self {
        pb::Event {
            seq: e.seq,
            ts: e.ts.clone(),
            id: e.id.clone(),
            kind: e.kind.name().into(),
            json: serde_json::to_string(&e).unwrap_or_default(),
        }
    }
}

/// Sends the last `tail` lines of `path` (all of it when `None`), then, when following,
/// whatever is appended, checking every [`LOG_POLL`]. A file that shrinks or is replaced
/// (rotation) is read again from its start. A missing file reads as empty.
async fn send_log(
    path: PathBuf,
    tail: Option<u64>,
    follow: bool,
    tx: mpsc::Sender<Result<pb::LogChunk, Status>>,
) {
    let mut file = LogFile::open(&path).await;
    if let Some(f) = &mut file {
        match tail {
            Some(n) => match tail_offset(&mut f.file, f.len, n).await {
                Ok(pos) => f.pos = pos,
                Err(e) => {
                    let _ = tx.send(Err(io_status(&path, e))).await;
                    return;
                }
            },
            None => f.pos = 0,
        }
    }
    loop {
        if let Some(f) = &mut file {
            if let Err(e) = f.send_new(&tx).await {
                if let Some(e) = e {
                    let _ = tx.send(Err(io_status(&path, e))).await;
                }
                return;
            }
        }
        if !follow {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(LOG_POLL) => {}
            () = tx.closed() => return,
        }
        // Reopen when the file appeared, shrank or was replaced by a rotation.
        let current = tokio::fs::metadata(&path).await.ok();
        let reopen = match (&file, &current) {
            (None, Some(_)) => true,
            (Some(f), Some(m)) => file_id(m) != f.id || m.len() < f.pos,
            _ => false,
        };
        if reopen {
            file = LogFile::open(&path).await;
        } else if let (Some(f), Some(m)) = (&mut file, &current) {
            f.len = m.len();
        }
    }
}

struct LogFile {
    file: tokio::fs::File,
    id: (u64, u64),
    /// Where the next read starts.
    pos: u64,
    /// The size last seen.
    len: u64,
}

impl LogFile {
    async fn open(path: &Path) -> Option<LogFile> {
        let file = tokio::fs::File::open(path).await.ok()?;
        let meta = file.metadata().await.ok()?;
        Some(LogFile {
            file,
            id: file_id(&meta),
            pos: 0,
            len: meta.len(),
        })
    }

    /// Sends `pos..len`; `Err(None)` when the client went away.
    async fn send_new(
        &mut self,
        tx: &mpsc::Sender<Result<pb::LogChunk, Status>>,
    ) -> Result<(), Option<std::io::Error>> {
        if self.pos >= self.len {
            return Ok(());
        }
        self.file.seek(std::io::SeekFrom::Start(self.pos)).await?;
        while self.pos < self.len {
            let want = usize::try_from(self.len - self.pos).map_or(CHUNK, |n| n.min(CHUNK));
            let mut buf = vec![0; want];
            let n = self.file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            self.pos += n as u64;
            tx.send(Ok(pb::LogChunk { data: buf }))
                .await
                .map_err(|_| None)?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_id(_m: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// The offset where the last `n` lines of a file of `len` bytes start (a final newline
/// ends the last line rather than starting an empty one).
async fn tail_offset(file: &mut tokio::fs::File, len: u64, n: u64) -> std::io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    const BLOCK: u64 = 64 * 1024;
    // Skip the newline that ends the last line.
    let mut end = len;
    if end > 0 {
        let mut last = [0u8];
        file.seek(std::io::SeekFrom::Start(end - 1)).await?;
        file.read_exact(&mut last).await?;
        if last[0] == b'\n' {
            end -= 1;
        }
    }
    let mut seen = 0;
    let mut buf = vec![0; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &mut buf[..(end - start) as usize];
        file.seek(std::io::SeekFrom::Start(start)).await?;
        file.read_exact(block).await?;
        for (i, byte) in block.iter().enumerate().rev() {
            if *byte == b'\n' {
                seen += 1;
                if seen == n {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

fn io_status(path: &Path, e: std::io::Error) -> Status {
    Status::internal(format!("reading {}: {e}", path.display()))
}

impl From<model::Process> for pb::Process {
    fn from(p: model::Process) -> Self {
        pb::Process {
            id: p.id,
            r#type: p.process_type,
            state: p.state,
            pid: p.pid,
            started_at: p.started_at,
            uptime_secs: p.uptime_secs,
            restart_count: p.restart_count,
            last_exit: p.last_exit.map(|e| pb::LastExit {
                code: e.code,
                signal: e.signal,
                at: e.at,
            }),
            reason: p.reason,
            health: Some(pb::Health {
                status: p.health.status,
                consecutive_failures: p.health.consecutive_failures,
                last_check_at: p.health.last_check_at,
                last_error: p.health.last_error,
            }),
            circuit: p.circuit,
            next_restart_at: p.next_restart_at,
            resources: p.resources.map(|r| pb::Resources {
                rss_bytes: r.rss_bytes,
                cpu_percent: r.cpu_percent,
                fds: r.fds,
                processes: r.processes,
                cpu_seconds: r.cpu_seconds,
            }),
            limits_json: serde_json::to_string(&p.limits).unwrap_or_else(|_| "null".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(Some("bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3creT"), "s3cret"));
        assert!(!bearer_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }

    #[tokio::test]
    async fn tail_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let cases: [(&str, u64, &str); 7] = [
            ("a\nb\nc\n", 2, "b\nc\n"),
            ("a\nb\nc", 2, "b\nc"),
            ("a\nb\nc\n", 5, "a\nb\nc\n"),
            ("a\nb\nc\n", 0, ""),
            ("", 3, ""),
            ("\n\n", 1, "\n"),
            ("one line\n", 1, "one line\n"),
        ];
        for (text, n, want) in cases {
            std::fs::write(&path, text).unwrap();
            let mut f = tokio::fs::File::open(&path).await.unwrap();
            let off = tail_offset(&mut f, text.len() as u64, n).await.unwrap();
            assert_eq!(&text[off as usize..], want, "{text:?} tail {n}");
        }
        // Longer than one block.
        let line = "x".repeat(1000) + "\n";
        let text = line.repeat(200);
        std::fs::write(&path, &text).unwrap();
        let mut f = tokio::fs::File::open(&path).await.unwrap();
        let off = tail_offset(&mut f, text.len() as u64, 150).await.unwrap();
        assert_eq!(text.len() as u64 - off, 150 * 1001);
    }
}
