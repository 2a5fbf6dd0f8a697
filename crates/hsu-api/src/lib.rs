//! The control API: HTTP/JSON and gRPC on one port (and on `<base>/api.sock`), and the
//! typed client that the CLI and the end-to-end tests share.
//!
//! The server is a thin translation layer: every route calls one `ProcessManager`
//! method and turns its result into JSON or an error status. It must never change a
//! process's state itself, and a bad request must never disturb a running process.

pub mod client;
pub mod model;
pub mod server;
pub mod state;

pub use client::{ApiAddress, ApiClient, ClientError};
pub use model::*;
pub use state::{ApiMetrics, ApiState, ListenSettings};
