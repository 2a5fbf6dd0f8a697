//! What the API's handlers share, and where the API listens.

use hsu_process_management::ManagerFacade;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Shared by every handler (HTTP and gRPC). Cheap to clone. Its operations are in
/// [`crate::service`].
#[derive(Clone)]
pub struct ApiState {
    /// The manager, its journal and its captured output: the API's one way in.
    pub manager: ManagerFacade,
    /// Bearer token every request but `GET /healthz` must carry, when set.
    pub token: Option<Arc<str>>,
    /// Request counters for `/metrics`.
    pub metrics: Arc<ApiMetrics>,
    /// Lines of the manager's own log that were dropped or not written, kept by whoever
    /// writes that log (the binary); shown in `/metrics`.
    pub log_write_failures: Arc<AtomicU64>,
}

impl ApiState {
    /// The state for `manager`, with `token` (if any) and fresh counters.
    pub fn new(manager: ManagerFacade, token: Option<Arc<str>>) -> ApiState {
        ApiState {
            manager,
            token,
            metrics: Arc::new(ApiMetrics::default()),
            log_write_failures: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The same state, showing `counter` as the manager's log write failures.
    pub fn with_log_write_failures(mut self, counter: Arc<AtomicU64>) -> ApiState {
        self.log_write_failures = counter;
        self
    }
}

/// Request counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// HTTP/JSON requests received.
    pub http_requests: AtomicU64,
    /// gRPC requests received.
    pub grpc_requests: AtomicU64,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
    /// Requests answered with a 4xx status.
    pub client_errors: AtomicU64,
}

/// Where to listen.
#[derive(Debug, Clone)]
pub struct ListenSettings {
    /// The TCP address to bind (a non-loopback one needs a token).
    pub bind: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// `<base>/api.sock`, created with mode 0600.
    pub socket_path: PathBuf,
    /// `<base>/api.addr`, holding the bound `HOST:PORT`.
    pub addr_file: PathBuf,
}
