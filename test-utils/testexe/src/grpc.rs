//! The gRPC side: `grpc.health.v1.Health` (`SERVING` for `""` and `testexe`, until
//! `--grpc-not-serving-after`) and `hsu.core.v1.CoreService` (`Ping`, `Shutdown`) over
//! h2c, from a current-thread Tokio runtime on the thread that calls [`serve`].
//!
//! A `Shutdown` call is announced at once (`testexe: shutdown via rpc` on stderr,
//! `shutdown via rpc` on stdout) and answered; then the server stops accepting, lets
//! its connections finish what they carry (that answer among them, so the caller gets
//! it), and sets [`crate::SHUTDOWN_RPC`] for the main loop to exit on. With
//! `--ignore-shutdown-rpc` the call is answered and nothing else happens.

use crate::SHUTDOWN_RPC;
use hsu_monitoring::proto::core::v1::core_service_server::{CoreService, CoreServiceServer};
use hsu_monitoring::proto::core::v1::{
    PingRequest, PingResponse, ShutdownRequest, ShutdownResponse,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::ServingStatus;

/// The names `grpc.health.v1` answers for: the server as a whole, and testexe.
const HEALTH_SERVICES: [&str; 2] = ["", "testexe"];

/// How long the connections may take to finish after a Shutdown call.
const WIND_DOWN: Duration = Duration::from_secs(1);

/// What the gRPC side does, from the command line.
pub struct Options {
    /// When the process started (`--grpc-not-serving-after` counts from it).
    pub start: Instant,
    /// `--grpc-not-serving-after`.
    pub not_serving_after: Option<Duration>,
    /// `--ignore-shutdown-rpc`.
    pub ignore_shutdown: bool,
}

/// Serves gRPC on `listeners` (already bound) until a Shutdown call; blocks the thread.
pub fn serve(listeners: Vec<std::net::TcpListener>, options: Options) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| crate::fail("starting the gRPC runtime", e));
    runtime.block_on(run(listeners, options));
}

async fn run(listeners: Vec<std::net::TcpListener>, options: Options) {
    let (reporter, health) = tonic_health::server::health_reporter();
    for service in HEALTH_SERVICES {
        reporter
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    if let Some(after) = options.not_serving_after {
        let at = tokio::time::Instant::from_std(options.start + after);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            for service in HEALTH_SERVICES {
                reporter
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
            log!("grpc health is NOT_SERVING now");
        });
    }

    let (requested, mut shutdown) = mpsc::unbounded_channel();
    let core = CoreServiceServer::new(Core {
        ignore: options.ignore_shutdown,
        requested,
    });
    let health_prefix = format!("/{}/", <HealthServer<()> as NamedService>::NAME);
    let core_prefix = format!("/{}/", CoreServiceServer::<Core>::NAME);
    let route = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut health = health.clone();
        let mut core = core.clone();
        let path = req.uri().path();
        let (to_health, to_core) = (
            path.starts_with(&health_prefix),
            path.starts_with(&core_prefix),
        );
        let unknown = format!("no gRPC method {path}");
        async move {
            if to_health {
                health.call(req).await
            } else if to_core {
                core.call(req).await
            } else {
                Ok::<_, Infallible>(Status::unimplemented(unknown).into_http())
            }
        }
    });

    let (accepted, mut connections) = mpsc::unbounded_channel();
    for listener in listeners {
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .unwrap_or_else(|e| crate::fail("serving gRPC", e));
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if accepted.send(stream).is_err() {
                    return;
                }
            }
        });
    }
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            Some(stream) = connections.recv() => {
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), route.clone());
                tokio::spawn(graceful.watch(connection));
            }
            Some(()) = shutdown.recv() => break,
            else => break,
        }
    }
    // Stop accepting; the calls in flight, the Shutdown call's answer among them, finish.
    drop(connections);
    let _ = tokio::time::timeout(WIND_DOWN, graceful.shutdown()).await;
    SHUTDOWN_RPC.store(true, Ordering::SeqCst);
}

/// `hsu.core.v1.CoreService`.
struct Core {
    ignore: bool,
    requested: mpsc::UnboundedSender<()>,
}

#[tonic::async_trait]
impl CoreService for Core {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {}))
    }

    async fn shutdown(
        &self,
        request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let reason = request.into_inner().reason;
        if self.ignore {
            log!("shutdown rpc ignored (reason: {reason})");
        } else {
            log!("shutdown via rpc");
            log!("shutdown reason: {reason}");
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "shutdown via rpc");
            let _ = out.flush();
            let _ = self.requested.send(());
        }
        Ok(Response::new(ShutdownResponse {}))
    }
}
