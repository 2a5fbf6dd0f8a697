//! What the API's handlers share, and where the API listens.

use hsu_process_file::Journal;
use hsu_process_management::ProcessManager;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

/// Shared by every handler (HTTP and gRPC). Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub manager: ProcessManager,
    pub journal: Arc<Journal>,
    /// The config file a reload re-reads.
    pub config_path: PathBuf,
    pub base_dir: PathBuf,
    /// Where `<id>.stdout.log` / `<id>.stderr.log` live.
    pub log_dir: PathBuf,
    /// Bearer token every request but `GET /healthz` must carry, when set.
    pub token: Option<Arc<str>>,
    pub metrics: Arc<ApiMetrics>,
    pub started_at: SystemTime,
}

/// Request counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    pub http_requests: AtomicU64,
    pub grpc_requests: AtomicU64,
    pub unauthorized: AtomicU64,
    pub client_errors: AtomicU64,
}

/// Where to listen.
#[derive(Debug, Clone)]
pub struct ListenSettings {
    pub bind: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// `<base>/api.sock`, created with mode 0600.
    pub socket_path: PathBuf,
    /// `<base>/api.addr`, holding the bound `HOST:PORT`.
    pub addr_file: PathBuf,
}
