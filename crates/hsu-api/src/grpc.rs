//! The gRPC side of the control API (SPEC §7): `hsu.procman.v1.ProcessManager` with the
//! same operations and semantics as the HTTP/JSON API, and `grpc.health.v1.Health` for the
//! manager itself. Also the generated code of `hsu.core.v1.CoreService`, which integrated
//! processes serve (testexe) and the manager calls.
//!
//! [`routes`] returns an [`axum::Router`] holding one route per gRPC service; the API
//! server hands it every `application/grpc` request, over HTTP/2 (h2c, prior knowledge)
//! on the same port and on `api.sock`. Like the HTTP handlers, every call is one
//! operation of the shared [`crate::service`] layer and a translation of its result, by
//! the error's variant:
//!
//! | result                                         | gRPC status           |
//! |------------------------------------------------|-----------------------|
//! | unknown process                                | `NOT_FOUND`           |
//! | `ControlError::Conflict`                       | `FAILED_PRECONDITION` |
//! | `ControlError::Gone` / `Unavailable`, shutting down | `UNAVAILABLE`    |
//! | a bad argument (unknown stream)                | `INVALID_ARGUMENT`    |
//! | invalid config on reload                       | `INVALID_ARGUMENT`, every problem in the message |
//! | missing or wrong bearer token                  | `UNAUTHENTICATED`     |
//!
//! With a token configured every `ProcessManager` call needs the metadata
//! `authorization: Bearer <token>`; the health service stays open, like `GET /healthz`.

use crate::model;
use crate::server::bearer_value_matches;
use crate::service::{Action, Followed, LogRequest, ServiceError};
use crate::state::{ApiMetrics, ApiState};
use bytes::Bytes;
use futures_util::FutureExt;
use hsu_managed_process::ControlError;
use hsu_process_management::{Event as JournalEvent, EventFollower};
use std::convert::Infallible;
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

    async fn act(
        &self,
        id: String,
        action: Action,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let accepted = self.state.act(id, action).await.map_err(status)?;
        Ok(Response::new(pb::ActionResponse {
            id: accepted.id.unwrap_or_default(),
            action: accepted.action,
            process: accepted.process.map(Into::into),
        }))
    }
}

fn control_status(e: ControlError) -> Status {
    let message = e.to_string();
    match e {
        ControlError::NotFound(_) => Status::not_found(message),
        ControlError::Conflict { .. } => Status::failed_precondition(message),
        ControlError::Gone(_) | ControlError::Unavailable(_) => Status::unavailable(message),
    }
}

/// The gRPC status of a service error, by its variant.
fn status(e: ServiceError) -> Status {
    match e {
        ServiceError::Control(c) => control_status(c),
        ServiceError::Invalid(message) => Status::invalid_argument(message),
        ServiceError::InvalidConfig { message, problems } => {
            Status::invalid_argument(format!("{message}:\n{}", problems.join("\n")))
        }
        ServiceError::Unavailable(message) => Status::unavailable(message),
        ServiceError::Internal(message) => Status::internal(message),
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
        let processes = self.state.list().into_iter().map(Into::into).collect();
        Ok(Response::new(pb::ListResponse { processes }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Process>, Status> {
        let process = self.state.get(&req.into_inner().id).map_err(status)?;
        Ok(Response::new(process.into()))
    }

    async fn start(
        &self,
        req: Request<pb::ProcessRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        self.act(req.into_inner().id, Action::Start).await
    }

    async fn stop(
        &self,
        req: Request<pb::StopRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let pb::StopRequest { id, force } = req.into_inner();
        self.act(id, Action::Stop { force }).await
    }

    async fn restart(
        &self,
        req: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let pb::RestartRequest { id, force } = req.into_inner();
        self.act(id, Action::Restart { force }).await
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
        let request = LogRequest::new(Some(&stream), tail).map_err(status)?;
        let (tx, rx) = mpsc::channel(8);
        if follow {
            let (bytes_tx, bytes_rx) = mpsc::channel::<Bytes>(8);
            let producer = self
                .state
                .log_follow(&id, request, bytes_tx)
                .map_err(status)?;
            tokio::spawn(forward_log(producer, bytes_rx, tx));
        } else {
            let tail = self.state.log_tail(&id, request).await.map_err(status)?;
            tokio::spawn(async move { send_chunks(&tail, &tx).await });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let pb::EventsRequest { follow, since } = req.into_inner();
        // `Events` is the journal (from its start unless `since` says otherwise), and
        // with `follow` what comes next.
        let since = Some(since.unwrap_or(0));
        let (tx, rx) = mpsc::channel(64);
        if follow {
            let follower = self.state.follow_events(since).await;
            tokio::spawn(send_events(follower, tx));
        } else {
            let past = self.state.events(since).await;
            tokio::spawn(async move {
                for event in past {
                    if tx.send(Ok(event.into())).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn reload(
        &self,
        _req: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let diff = self.state.reload().await.map_err(status)?;
        Ok(Response::new(pb::ReloadResponse {
            added: diff.added,
            removed: diff.removed,
            changed: diff.changed,
            unchanged: diff.unchanged,
        }))
    }

    async fn shutdown(
        &self,
        req: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        let reason = req.into_inner().reason;
        self.state.shutdown(Some(&reason)).await.map_err(status)?;
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}

/// Sends the backlog and the live events; a follower that fell behind gets an `Event` of
/// kind `lagged` with `missed` set (and no `seq`), then the newest events.
async fn send_events(mut follower: EventFollower, tx: mpsc::Sender<Result<pb::Event, Status>>) {
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            () = tx.closed() => return,
        };
        let message = match next {
            Some(Followed::Event(event)) => event.into(),
            Some(Followed::Lagged { missed }) => pb::Event {
                kind: "lagged".into(),
                json: format!("{{\"kind\":\"lagged\",\"missed\":{missed}}}"),
                missed,
                ..Default::default()
            },
            None => return,
        };
        if tx.send(Ok(message)).await.is_err() {
            return;
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
            missed: 0,
        }
    }
}

/// Runs a log follower, forwarding what it reads as `LogChunk`s until the client leaves.
async fn forward_log(
    producer: impl std::future::Future<Output = ()>,
    mut bytes_rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Result<pb::LogChunk, Status>>,
) {
    let forward = async {
        while let Some(bytes) = bytes_rx.recv().await {
            if send_chunks(&bytes, &tx).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = producer => {}
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

impl From<model::Process> for pb::Process {
    fn from(p: model::Process) -> Self {
        pb::Process {
            id: p.id,
            r#type: p.process_type.as_str().into(),
            state: p.state.as_str().into(),
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
                status: p.health.status.as_str().into(),
                consecutive_failures: p.health.consecutive_failures,
                last_check_at: p.health.last_check_at,
                last_error: p.health.last_error,
            }),
            circuit: p.circuit.as_str().into(),
            next_restart_at: p.next_restart_at,
            resources: p.resources.map(|r| pb::Resources {
                rss_bytes: r.rss_bytes,
                cpu_percent: r.cpu_percent,
                fds: r.fds,
                processes: r.processes,
                cpu_seconds: r.cpu_seconds,
            }),
            limits_json: serde_json::to_string(&p.limits).unwrap_or_else(|_| "null".into()),
            profile_type: p.profile_type,
            metadata: p.metadata.into_iter().collect(),
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
