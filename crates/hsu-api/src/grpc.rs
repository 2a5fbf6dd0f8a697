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
use crate::server::bearer_value_matches;
use crate::state::{ApiMetrics, ApiState};
use bytes::Bytes;
use futures_util::FutureExt;
use hsu_common::Event as JournalEvent;
use hsu_log_collection::{CaptureFiles, Stream};
use hsu_managed_process::ControlError;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
        if bearer_value_matches(presented, token) {
            Ok(req)
        } else {
            self.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            Err(Status::unauthenticated(
                "missing or wrong bearer token (metadata `authorization: Bearer <token>`)",
            ))
        }
    }
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
            .stop_process(&id, false)
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
            "" => Stream::Stdout,
            name => name
                .parse::<Stream>()
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        };
        let path = CaptureFiles::new(&self.state.log_dir).path(&id, stream);
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

/// Sends the last `tail` lines of `path` (all of it, up to the tail's size cap, when
/// `None`), then, when following, whatever is appended (see [`hsu_log_collection::follow`]).
/// A missing file reads as empty. Every `LogChunk` carries at most [`CHUNK`] bytes.
async fn send_log(
    path: PathBuf,
    tail: Option<u64>,
    follow: bool,
    tx: mpsc::Sender<Result<pb::LogChunk, Status>>,
) {
    let lines = tail.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    if !follow {
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || hsu_log_collection::tail(&path, lines)).await
        };
        match read {
            Ok(Ok(t)) => {
                let _ = send_chunks(&t.bytes, &tx).await;
            }
            Ok(Err(e)) => {
                let _ = tx.send(Err(io_status(&path, e))).await;
            }
            Err(e) => {
                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
            }
        }
        return;
    }
    let (bytes_tx, mut bytes_rx) = mpsc::channel::<Bytes>(8);
    let forward = async {
        while let Some(bytes) = bytes_rx.recv().await {
            if send_chunks(&bytes, &tx).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = hsu_log_collection::follow(path, lines, bytes_tx) => {}
        () = forward => {}
        () = tx.closed() => {}
    }
}

/// Sends `bytes` as `LogChunk`s of at most [`CHUNK`] bytes; Err: the client went away.
async fn send_chunks(
    bytes: &[u8],
    tx: &mpsc::Sender<Result<pb::LogChunk, Status>>,
) -> Result<(), ()> {
    for chunk in bytes.chunks(CHUNK) {
        tx.send(Ok(pb::LogChunk {
            data: chunk.to_vec(),
        }))
        .await
        .map_err(|_| ())?;
    }
    Ok(())
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
        assert!(bearer_value_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(bearer_value_matches(Some("bearer s3cret"), "s3cret"));
        assert!(!bearer_value_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_value_matches(Some("Bearer s3creT"), "s3cret"));
        assert!(!bearer_value_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!bearer_value_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_value_matches(None, "s3cret"));
    }
}
