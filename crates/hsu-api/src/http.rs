//! The HTTP/JSON routes (SPEC §7). Each handler reads its path and query, calls one
//! operation of the shared [`crate::service`] layer, and turns the result into JSON or an
//! [`ApiFailure`]; every error answer is `{"error", "code"}` JSON, its status chosen by
//! the error's variant.

use crate::model::{Accepted, ApiError, Graph, Process, ReloadResult};
use crate::service::{Action, Followed, LogRequest, ServiceError};
use crate::ApiState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hsu_managed_process::ControlError;
use hsu_process_management::{Event, EventFollower};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

/// Largest request body accepted (413 above).
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// An SSE comment this often keeps proxies from closing an idle event stream.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const NDJSON: &str = "application/x-ndjson";
const EVENT_STREAM: &str = "text/event-stream";

/// What the handlers share: the API state and the server's "stopping" signal, which ends
/// streaming answers (`follow=true`) so a graceful stop does not wait on them.
#[derive(Clone)]
pub(crate) struct HttpState {
    api: ApiState,
    stopping: watch::Receiver<bool>,
}

/// The JSON API as a router; unknown routes are JSON 404s, wrong methods JSON 405s.
pub(crate) fn routes(api: ApiState, stopping: watch::Receiver<bool>) -> Router {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/api/v1/processes", get(list_processes))
        .route("/api/v1/processes/{id}", get(get_process))
        .route("/api/v1/processes/{id}/start", post(start_process))
        .route("/api/v1/processes/{id}/stop", post(stop_process))
        .route("/api/v1/processes/{id}/restart", post(restart_process))
        .route("/api/v1/processes/{id}/logs", get(process_logs))
        .route("/api/v1/events", get(events))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/shutdown", post(shutdown))
        .route("/api/v1/graph", get(graph))
        .fallback(unknown_route)
        .layer(middleware::from_fn(check_body))
        .with_state(HttpState { api, stopping });
    // Around the whole router: the `Allow` header is only added outside a route's layers.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(json_method_not_allowed))
}

// ---------------------------------------------------------------------------------------
// Errors

/// An error answer: a status and the `{"error", "code"}` body.
#[derive(Debug)]
pub(crate) struct ApiFailure {
    status: StatusCode,
    body: ApiError,
}

impl ApiFailure {
    pub(crate) fn new(status: StatusCode, code: &str, error: impl Into<String>) -> Self {
        ApiFailure {
            status,
            body: ApiError {
                error: error.into(),
                code: code.into(),
                problems: Vec::new(),
            },
        }
    }

    fn invalid(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", error)
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ControlError> for ApiFailure {
    fn from(e: ControlError) -> Self {
        let (status, code) = match e {
            ControlError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ControlError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            ControlError::Gone(_) | ControlError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<ServiceError> for ApiFailure {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Control(c) => c.into(),
            ServiceError::Invalid(message) => Self::invalid(message),
            ServiceError::InvalidConfig { message, problems } => {
                let mut failure = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
                failure.body.problems = problems;
                failure
            }
            ServiceError::Unavailable(message) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            ServiceError::Internal(message) => Self::internal(message),
        }
    }
}

fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiFailure> {
    id.map(|Path(id)| id)
        .map_err(|e| ApiFailure::invalid(e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiFailure> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiFailure::invalid(e.body_text()))
}

/// `?name`, `?name=true|false|1|0|yes|no`; absent is false.
fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiFailure> {
    match value {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("" | "true" | "1" | "yes") => Ok(true),
        Some(other) => Err(ApiFailure::invalid(format!(
            "`{name}` must be true or false, not `{other}`"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Middleware

/// Bodies: over [`MAX_BODY`] is 413; a non-empty body that is not JSON is 400. (No route
/// takes a body yet, but a client sending a broken one should hear about it.)
async fn check_body(req: Request, next: Next) -> Response {
    let too_large = || {
        ApiFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid",
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
        .into_response()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(e) => {
            return ApiFailure::invalid(format!("cannot read the request body: {e}"))
                .into_response()
        }
    };
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return ApiFailure::invalid(format!("the request body is not valid JSON: {e}"))
                .into_response();
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// axum answers a known path with the wrong method by an empty 405; make it JSON and
/// keep its `Allow` header.
async fn json_method_not_allowed(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let allowed = allow
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    let mut answer = ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid",
        format!("{method} is not allowed on {path} (allowed: {allowed})"),
    )
    .into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

async fn unknown_route(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

// ---------------------------------------------------------------------------------------
// Manager, documentation and metrics

/// Manager liveness; the one route that needs no token.
#[utoipa::path(get, path = "/healthz", tag = "manager", security(()),
    responses((status = 200, description = "The manager is running", body = String, content_type = "text/plain")))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics of the processes, the manager and the API.
#[utoipa::path(get, path = "/metrics", tag = "manager",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "Missing or wrong token", body = ApiError)))]
pub(crate) async fn metrics(State(s): State<HttpState>) -> Response {
    let text = crate::metrics::render(&s.api);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "manager",
    responses(
        (status = 200, description = "OpenAPI 3 description of this API", body = Object),
        (status = 401, description = "Missing or wrong token", body = ApiError)))]
pub(crate) async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::json(),
    )
        .into_response()
}

/// Reloads the config file: starts added processes, stops removed ones, restarts changed
/// ones, leaves the rest untouched. An invalid config changes nothing.
#[utoipa::path(post, path = "/api/v1/reload", tag = "manager",
    responses(
        (status = 200, description = "The applied difference", body = ReloadResult),
        (status = 401, description = "Missing or wrong token", body = ApiError),
        (status = 422, description = "The config is invalid (every problem in `problems`), or binds a non-loopback address without an API token; the running config is unchanged", body = ApiError),
        (status = 503, description = "The manager is shutting down", body = ApiError)))]
pub(crate) async fn reload(State(s): State<HttpState>) -> Result<Json<ReloadResult>, ApiFailure> {
    Ok(Json(s.api.reload().await?))
}

/// Shuts the manager down (every process is stopped first) after answering. With
/// `keep_processes=true` the manager exits leaving every process running, recorded in
/// `state.json` for the next manager on the same base directory to adopt (the way to
/// upgrade the manager without touching the services).
#[utoipa::path(post, path = "/api/v1/shutdown", tag = "manager",
    params(
        ("keep_processes" = Option<bool>, Query, description = "Leave every process running for the next manager")),
    responses(
        (status = 202, description = "Shutdown requested", body = Accepted),
        (status = 400, description = "Bad query", body = ApiError),
        (status = 401, description = "Missing or wrong token", body = ApiError)))]
pub(crate) async fn shutdown(
    State(s): State<HttpState>,
    q: Result<Query<ShutdownQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiFailure> {
    let keep = flag("keep_processes", query(q)?.keep_processes.as_deref())?;
    // The request only raises a flag the binary waits on; its shutdown stops the server
    // gracefully, so this answer is still delivered.
    Ok((
        StatusCode::ACCEPTED,
        Json(s.api.shutdown(None, keep).await?),
    ))
}

/// `?keep_processes=...` of shutdown.
#[derive(Debug, Deserialize)]
pub(crate) struct ShutdownQuery {
    keep_processes: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Processes

/// Every process, in config order.
#[utoipa::path(get, path = "/api/v1/processes", tag = "processes",
    responses(
        (status = 200, description = "Every process", body = [Process]),
        (status = 401, description = "Missing or wrong token", body = ApiError)))]
pub(crate) async fn list_processes(State(s): State<HttpState>) -> Json<Vec<Process>> {
    Json(s.api.list())
}

/// The dependency graph: every process, every `depends_on` edge, the start order.
#[utoipa::path(get, path = "/api/v1/graph", tag = "processes",
    responses(
        (status = 200, description = "The dependency graph", body = Graph),
        (status = 401, description = "Missing or wrong token", body = ApiError)))]
pub(crate) async fn graph(State(s): State<HttpState>) -> Json<Graph> {
    Json(s.api.graph())
}

/// One process.
#[utoipa::path(get, path = "/api/v1/processes/{id}", tag = "processes",
    params(("id" = String, Path, description = "Process id")),
    responses(
        (status = 200, description = "The process", body = Process),
        (status = 401, description = "Missing or wrong token", body = ApiError),
        (status = 404, description = "No such process", body = ApiError)))]
pub(crate) async fn get_process(
    State(s): State<HttpState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Process>, ApiFailure> {
    Ok(Json(s.api.get(&path_id(id)?)?))
}

/// Runs `action` to its end and answers 202 with the process as it is afterwards.
async fn control(
    s: HttpState,
    id: Result<Path<String>, PathRejection>,
    action: Action,
) -> Result<(StatusCode, Json<Accepted>), ApiFailure> {
    let accepted = s.api.act(path_id(id)?, action).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Starts a stopped or failed process (closing its breaker); answers once it started.
#[utoipa::path(post, path = "/api/v1/processes/{id}/start", tag = "processes",
    params(("id" = String, Path, description = "Process id")),
    responses(
        (status = 202, description = "Started; the process as it is now", body = Accepted),
        (status = 401, description = "Missing or wrong token", body = ApiError),
        (status = 404, description = "No such process", body = ApiError),
        (status = 409, description = "Not possible for this process (e.g. unmanaged)", body = ApiError),
        (status = 503, description = "The manager is shutting down", body = ApiError)))]
pub(crate) async fn start_process(
    State(s): State<HttpState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiFailure> {
    control(s, id, Action::Start).await
}

/// Stops a process; answers once nothing of its tree is left. `force=true` SIGKILLs the
/// whole tree at once (and ends a graceful stop already in progress).
#[utoipa::path(post, path = "/api/v1/processes/{id}/stop", tag = "processes",
    request_body(content = Option<ForceBody>, content_type = "application/json", description = "Optional; `force` as in the query"),
    params(
        ("id" = String, Path, description = "Process id"),
        ("force" = Option<bool>, Query, description = "Kill the whole tree now (SIGKILL) instead of stopping it gracefully (or send `{\"force\": true}` as the body)")),
    responses(
        (status = 202, description = "Stopped; the process as it is now", body = Accepted),
        (status = 400, description = "Bad query", body = ApiError),
        (status = 401, description = "Missing or wrong token", body = ApiError),
        (status = 404, description = "No such process", body = ApiError),
        (status = 409, description = "Not possible for this process (e.g. unmanaged)", body = ApiError),
        (status = 503, description = "The manager is shutting down", body = ApiError)))]
pub(crate) async fn stop_process(
    State(s): State<HttpState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<ForceQuery>, QueryRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), ApiFailure> {
    let force = force(q, &body)?;
    control(s, id, Action::Stop { force }).await
}

/// `force` of stop and restart: `?force=true`, or a JSON body `{"force": true}` (either
/// one set is enough). A body that is not an object with at most a boolean `force` is
/// refused rather than ignored.
fn force(q: Result<Query<ForceQuery>, QueryRejection>, body: &[u8]) -> Result<bool, ApiFailure> {
    let in_query = flag("force", query(q)?.force.as_deref())?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(in_query);
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiFailure::invalid(format!("the request body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(ApiFailure::invalid(
            "the request body must be a JSON object such as {\"force\": true}",
        ));
    };
    let mut in_body = false;
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("force", serde_json::Value::Bool(b)) => in_body = b,
            ("force", other) => {
                return Err(ApiFailure::invalid(format!(
                    "`force` in the request body must be true or false, not {other}"
                )))
            }
            (other, _) => {
                return Err(ApiFailure::invalid(format!(
                    "unknown field `{other}` in the request body (only `force` is accepted)"
                )))
            }
        }
    }
    Ok(in_query || in_body)
}

/// The optional body of stop and restart.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct ForceBody {
    /// The same as `?force=true`.
    #[allow(dead_code)]
    force: Option<bool>,
}

/// `?force=...` of stop and restart.
#[derive(Debug, Deserialize)]
pub(crate) struct ForceQuery {
    force: Option<String>,
}

/// Stops (if running) and starts a process; `force=true` ignores an open circuit breaker.
#[utoipa::path(post, path = "/api/v1/processes/{id}/restart", tag = "processes",
    request_body(content = Option<ForceBody>, content_type = "application/json", description = "Optional; `force` as in the query"),
    params(
        ("id" = String, Path, description = "Process id"),
        ("force" = Option<bool>, Query, description = "Restart even while the circuit breaker is open (or send `{\"force\": true}` as the body)")),
    responses(
        (status = 202, description = "Restarted; the process as it is now", body = Accepted),
        (status = 400, description = "Bad query", body = ApiError),
        (status = 401, description = "Missing or wrong token", body = ApiError),
        (status = 404, description = "No such process", body = ApiError),
        (status = 409, description = "Not possible (unmanaged, or the breaker is open without force)", body = ApiError),
        (status = 503, description = "The manager is shutting down", body = ApiError)))]
pub(crate) async fn restart_process(
    State(s): State<HttpState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<ForceQuery>, QueryRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), ApiFailure> {
    let force = force(q, &body)?;
    control(s, id, Action::Restart { force }).await
}

// ---------------------------------------------------------------------------------------
// Logs

#[derive(Debug, Deserialize)]
pub(crate) struct LogsQuery {
    stream: Option<String>,
    tail: Option<String>,
    follow: Option<String>,
}

/// The last lines of a process's captured output, and with `follow=true` what it writes
/// from then on.
#[utoipa::path(get, path = "/api/v1/processes/{id}/logs", tag = "processes",
    params(
        ("id" = String, Path, description = "Process id"),
        ("stream" = Option<String>, Query, description = "stdout (default) or stderr"),
        ("tail" = Option<usize>, Query, description = "Lines from the end (default 100, at most 100000; 0 = none; the same on gRPC)"),
        ("follow" = Option<bool>, Query, description = "Keep streaming what is appended")),
    responses(
        (status = 200, description = "The log text (streamed with follow=true)", body = String, content_type = "text/plain"),
        (status = 400, description = "Bad query", body = ApiError),
        (status = 401, description = "Missing or wrong token", body = ApiError),
        (status = 404, description = "No such process", body = ApiError)))]
pub(crate) async fn process_logs(
    State(s): State<HttpState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let id = path_id(id)?;
    let q = query(q)?;
    let tail = match q.tail.as_deref() {
        None => None,
        // Any count of lines is accepted; more than the cap is the cap.
        Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            Some(t.parse::<u64>().unwrap_or(u64::MAX))
        }
        Some(t) => {
            return Err(ApiFailure::invalid(format!(
                "`tail` must be a number of lines (0 or more), not `{t}`"
            )))
        }
    };
    let request = LogRequest::new(q.stream.as_deref(), tail)?;
    let follow = flag("follow", q.follow.as_deref())?;
    let headers = [(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN))];
    if follow {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let producer = s.api.log_follow(&id, request, tx.clone())?;
        let body = streaming_body(s.stopping.clone(), tx, rx, producer);
        return Ok((headers, body).into_response());
    }
    let tail = s.api.log_tail(&id, request).await?;
    Ok((headers, tail).into_response())
}

/// A body fed through `tx`/`rx` by `producer`. The producer is dropped as soon as the
/// client goes away or the server stops, whichever comes first.
fn streaming_body(
    mut stopping: watch::Receiver<bool>,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    producer: impl Future<Output = ()> + Send + 'static,
) -> Body {
    tokio::spawn(async move {
        tokio::select! {
            () = producer => {}
            () = tx.closed() => {}
            () = crate::server::stopped(&mut stopping) => {}
        }
    });
    Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>),
    )
}

// ---------------------------------------------------------------------------------------
// Events

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    follow: Option<String>,
    since: Option<String>,
}

/// The event journal: every stored event as JSON lines (with `since`, only those after
/// that `seq`); with `follow=true`, new events as server-sent events (`id: <seq>`,
/// `data: <event>`), with `since` (or `Last-Event-ID`) first the stored events after
/// that `seq`, without a gap or a duplicate at the seam.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(
        ("follow" = Option<bool>, Query, description = "Stream new events as server-sent events"),
        ("since" = Option<u64>, Query, description = "Only events with a larger `seq`")),
    responses(
        (status = 200, description = "JSON lines (application/x-ndjson), or with follow=true server-sent events (text/event-stream); a follower that falls behind gets an `event: lagged` message",
            content((String = "application/x-ndjson"), (String = "text/event-stream"))),
        (status = 400, description = "Bad query", body = ApiError),
        (status = 401, description = "Missing or wrong token", body = ApiError)))]
pub(crate) async fn events(
    State(s): State<HttpState>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let q = query(q)?;
    let follow = flag("follow", q.follow.as_deref())?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|_| follow);
    let since = match q.since.as_deref().or(last_event_id) {
        None => None,
        Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
            ApiFailure::invalid(format!("`since` must be an event seq number, not `{v}`"))
        })?),
    };
    if follow {
        // Subscribed before answering: every event after the answer's head is delivered.
        let follower = s.api.follow_events(since).await;
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let producer = follow_events(follower, tx.clone());
        let body = streaming_body(s.stopping.clone(), tx, rx, producer);
        let headers = [
            (header::CONTENT_TYPE, EVENT_STREAM),
            (header::CACHE_CONTROL, "no-cache"),
        ];
        return Ok((headers, body).into_response());
    }
    let mut body = Vec::new();
    for event in s.api.events(since).await {
        body.extend_from_slice(&json_line(&event));
    }
    Ok(([(header::CONTENT_TYPE, NDJSON)], body).into_response())
}

fn json_line(event: &Event) -> Vec<u8> {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    line
}

fn sse_message(event: &Event) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    format!("id: {}\ndata: {data}\n\n", event.seq).into()
}

/// Sends the backlog and the live events as server-sent events, a keep-alive comment when
/// idle, and an `event: lagged` message (`{"missed": N}`) when the reader fell behind.
async fn follow_events(mut follower: EventFollower, tx: mpsc::Sender<Bytes>) {
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + SSE_KEEP_ALIVE, SSE_KEEP_ALIVE);
    loop {
        let message = tokio::select! {
            next = follower.next() => match next {
                Some(Followed::Event(event)) => sse_message(&event),
                Some(Followed::Lagged { missed }) => {
                    format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n").into()
                }
                None => return,
            },
            _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
        };
        if tx.send(message).await.is_err() {
            return;
        }
    }
}
