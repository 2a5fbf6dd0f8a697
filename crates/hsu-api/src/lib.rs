//! The control API: HTTP/JSON and gRPC on one port (and on `<base>/api.sock`), and the
//! typed client that the CLI and the end-to-end tests share.
//!
//! The server is a thin translation layer over the manager's facade
//! ([`hsu_process_management::ManagerFacade`], its only way in): every route calls one
//! operation of the shared [`service`] layer and turns its result into JSON, a gRPC
//! message or an error status. It must never change a process's state itself, never
//! reach around the manager to a file, and a bad request must never disturb a running
//! process.
//!
//! # How a request travels
//!
//! ```text
//! TCP bind:port ─┐                     ┌─ application/grpc ─> grpc (tonic) ──┐
//!                ├─> server ─> guard ─>┤                                     ├─> service ─> ManagerFacade
//! api.sock ──────┘                     └─ anything else ────> http (JSON) ───┘   (processes, journal, logs)
//! ```
//!
//! - [`server`] binds both listeners, serves each connection as HTTP/1.1 or HTTP/2 (prior
//!   knowledge, so gRPC works over h2c on the same port), and stops gracefully.
//! - Its guard counts every request for `/metrics` and checks the bearer token (all but
//!   `GET /healthz` and the gRPC health service).
//! - [`service`] holds every operation once, for both encodings: defaults and caps,
//!   spawned control operations, event following with lag notices, typed errors.
//! - `http` holds the JSON routes of SPEC §7, each a few lines over one service call;
//!   every error is a [`model::ApiError`]. `metrics` renders the Prometheus text and
//!   [`openapi`] the OpenAPI document generated from the handlers' annotations.
//! - [`grpc`] serves the same operations as `hsu.procman.v1.ProcessManager`.
//! - [`client`] is the typed client of the JSON API; [`model`] the bodies both sides share.

pub mod client;
mod conn;
pub mod grpc;
mod http;
mod metrics;
pub mod model;
pub mod openapi;
pub mod server;
pub mod service;
pub mod state;

pub use client::{ApiAddress, ApiClient, ClientError};
pub use model::*;
pub use state::{ApiMetrics, ApiState, ListenSettings};
