//! Binding the listeners and serving the API on them: TCP `bind:port` and the Unix socket
//! `api.sock`, each connection HTTP/1.1 or HTTP/2 (prior knowledge, so gRPC works over
//! h2c on the same port), one task per connection.
//!
//! Every request passes the guard first (counted for `/metrics`, then the bearer
//! token checked), then goes to the gRPC router when its content type is
//! `application/grpc`, else to the JSON router.

use crate::conn::GuardedIo;
use crate::http::ApiFailure;
use crate::ApiState;
use crate::ListenSettings;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long a stop waits for requests in flight before cutting their connections.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A client has this long to send a request's head (HTTP/1), the first request's as well
/// as each next one's on a kept-alive connection: an idle HTTP/1 connection is closed
/// after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// An HTTP/2 connection is pinged after this long without a frame, and closed when the
/// ping is not answered within [`H2_PING_TIMEOUT`].
const H2_PING_INTERVAL: Duration = Duration::from_secs(60);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest Unix socket path the kernel takes (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why the control API could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address to bind is not loopback and no API token is configured.
    #[error("binding the control API to {0} requires an API token (process_manager.api_token_file or HSU_API_TOKEN)")]
    TokenRequired(IpAddr),
    /// An API token is configured but empty.
    #[error("the API token is empty")]
    EmptyToken,
    /// A listener (TCP port or Unix socket) could not be opened. (The OS error is part of
    /// the message, so it is not repeated as a `source`.)
    #[error("cannot listen on {address}: {}", describe_io(.cause))]
    Listen {
        /// The TCP address or socket path.
        address: String,
        /// The operating system's error.
        cause: io::Error,
    },
    /// The Unix socket's path is longer than the kernel accepts.
    #[error("cannot listen on unix:{}: the path is {len} bytes long, and a Unix socket path may have at most {MAX_SOCKET_PATH}; choose a shorter base directory", .path.display())]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The `api.addr` file could not be written.
    #[error("cannot write {}: {}", .path.display(), describe_io(.cause))]
    AddressFile {
        /// The file's path.
        path: PathBuf,
        /// The operating system's error.
        cause: io::Error,
    },
}

/// The API being served. [`RunningServer::stop`] stops it gracefully; dropping it stops
/// accepting too, without waiting.
pub struct RunningServer {
    /// The bound TCP address (the real port when 0 was asked for).
    pub local_addr: SocketAddr,
    /// The path of the Unix socket (`<base>/api.sock`).
    pub socket_path: PathBuf,
    addr_file: PathBuf,
    stopping: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish (streams end at once; anything
    /// still running after a few seconds is cut), and removes `api.sock` and `api.addr`.
    pub async fn stop(mut self) {
        self.stopping.send_replace(true);
        for listener in self.listeners.drain(..) {
            let _ = listener.await;
        }
        self.remove_files();
        tracing::info!("control API stopped");
    }

    fn remove_files(&self) {
        for path in [&self.socket_path, &self.addr_file] {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", path.display());
                }
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if !self.listeners.is_empty() {
            self.stopping.send_replace(true);
            self.remove_files();
        }
    }
}

/// Binds both listeners, writes `api.addr` and starts serving.
pub async fn start(state: ApiState, listen: ListenSettings) -> Result<RunningServer, ServerError> {
    match state.token.as_deref() {
        Some(token) if token.trim().is_empty() => return Err(ServerError::EmptyToken),
        None if !listen.bind.to_canonical().is_loopback() => {
            return Err(ServerError::TokenRequired(listen.bind))
        }
        _ => {}
    }
    let tcp_address = SocketAddr::new(listen.bind, listen.port);
    let tcp = TcpListener::bind(tcp_address)
        .await
        .map_err(|cause| ServerError::Listen {
            address: tcp_address.to_string(),
            cause,
        })?;
    let local_addr = tcp.local_addr().map_err(|cause| ServerError::Listen {
        address: tcp_address.to_string(),
        cause,
    })?;
    let socket_len = listen.socket_path.as_os_str().len();
    if socket_len > MAX_SOCKET_PATH {
        return Err(ServerError::SocketPathTooLong {
            path: listen.socket_path,
            len: socket_len,
        });
    }
    let unix = bind_socket(&listen.socket_path).map_err(|cause| ServerError::Listen {
        address: format!("unix:{}", listen.socket_path.display()),
        cause,
    })?;
    if let Err(cause) = write_atomic(&listen.addr_file, format!("{local_addr}\n").as_bytes()) {
        let _ = std::fs::remove_file(&listen.socket_path);
        return Err(ServerError::AddressFile {
            path: listen.addr_file,
            cause,
        });
    }
    tracing::info!(
        "control API listening on http://{local_addr} and unix:{}",
        listen.socket_path.display()
    );

    let (stopping, stop_rx) = watch::channel(false);
    let app = router(state, stop_rx.clone());
    let listeners = vec![
        tokio::spawn(serve(tcp, app.clone(), stop_rx.clone())),
        tokio::spawn(serve(unix, app, stop_rx)),
    ];
    Ok(RunningServer {
        local_addr,
        socket_path: listen.socket_path,
        addr_file: listen.addr_file,
        stopping,
        listeners,
    })
}

/// The whole API: the guard, then gRPC or JSON by content type.
fn router(state: ApiState, stopping: watch::Receiver<bool>) -> Router {
    let json = crate::http::routes(state.clone(), stopping);
    let grpc = crate::grpc::routes(state.clone());
    // Dispatch by protocol rather than merging routers: each keeps its own fallback (a
    // JSON 404, a gRPC UNIMPLEMENTED).
    let dispatch = tower::service_fn(move |req: Request| {
        let mut target = if is_grpc(req.headers()) {
            grpc.clone()
        } else {
            json.clone()
        };
        tower::Service::call(&mut target, req)
    });
    Router::new()
        .fallback_service(dispatch)
        .layer(middleware::from_fn_with_state(state, guard))
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Counts the request, and refuses it without the right token (when one is configured):
/// every request needs it but `GET /healthz` and the gRPC health service, which are for
/// liveness probes.
async fn guard(State(api): State<ApiState>, req: Request, next: Next) -> Response {
    let grpc = is_grpc(req.headers());
    let counter = if grpc {
        &api.metrics.grpc_requests
    } else {
        &api.metrics.http_requests
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(token) = api.token.as_deref() {
        let path = req.uri().path();
        let open = (path == "/healthz" && matches!(*req.method(), Method::GET | Method::HEAD))
            || (grpc && path.starts_with("/grpc.health.v1.Health/"));
        if !open && !bearer_matches(req.headers(), token) {
            api.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            api.metrics.client_errors.fetch_add(1, Ordering::Relaxed);
            return if grpc {
                grpc_unauthenticated()
            } else {
                unauthorized()
            };
        }
    }
    let response = next.run(req).await;
    if response.status().is_client_error() {
        api.metrics.client_errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    bearer_value_matches(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        token,
    )
}

/// Whether an `authorization` value (HTTP header or gRPC metadata) is `Bearer <token>`,
/// the scheme in any case; the token is compared in time independent of where it differs.
pub(crate) fn bearer_value_matches(value: Option<&str>, token: &str) -> bool {
    let Some((scheme, given)) = value.and_then(|v| v.trim().split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Compares without an early exit, so the time taken says nothing about where a guess
/// went wrong (only whether its length was right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn unauthorized() -> Response {
    let mut response = ApiFailure::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong API token: send `Authorization: Bearer <token>`",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"hsu-process-manager\""),
    );
    response
}

/// A gRPC "trailers-only" answer with status 16 (UNAUTHENTICATED).
fn grpc_unauthenticated() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/grpc"),
            (header::HeaderName::from_static("grpc-status"), "16"),
            (
                header::HeaderName::from_static("grpc-message"),
                "missing or wrong API token",
            ),
        ],
        (),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Listeners and connections

trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        let (stream, _) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Accepts until told to stop, then gives the connections [`STOP_GRACE`] to finish.
async fn serve<L: Listener>(listener: L, app: Router, mut stopping: watch::Receiver<bool>) {
    let for_connections = stopping.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stopping) => break,
            accepted = listener.accept() => match accepted {
                Ok(io) => {
                    connections.spawn(serve_connection(io, app.clone(), for_connections.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: wait a little rather than spin.
                    tracing::warn!("control API: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "control API: cutting {} connection(s) still busy after {STOP_GRACE:?}",
            connections.len()
        );
        connections.shutdown().await;
    }
}

async fn serve_connection<I>(io: I, app: Router, mut stopping: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    // Telling HTTP/1 from HTTP/2 waits for the first bytes, before hyper's own timeouts.
    let io = GuardedIo::new(io, crate::conn::FIRST_BYTE_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = stopped(&mut stopping) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("control API connection: {e}");
    }
}

/// The OS error in words, once: "address already in use (os error 98)".
fn describe_io(e: &io::Error) -> String {
    let text = e.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Resolves once the server is stopping (or gone).
pub(crate) async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = stopping.wait_for(|&stop| stop).await;
}

/// Binds the socket under a temporary name, restricts it to the owner, then renames it
/// into place, so it is never reachable with looser permissions.
fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // A socket left behind by an earlier manager (the manager lock says none runs now).
    remove_if_present(path)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    remove_if_present(&tmp)?;
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    Ok(listener)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half an address.
fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn reads_bearer_tokens() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(bearer_matches(&with("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(&with("bearer  s3cret "), "s3cret"));
        assert!(!bearer_matches(&with("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&with("Bearer wrong"), "s3cret"));
        assert!(!bearer_matches(&with("Bearer"), "s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
    }
}
