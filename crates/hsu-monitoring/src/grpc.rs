//! gRPC calls over h2c, each on a connection of its own: the `grpc.health.v1` check and
//! `hsu.core.v1.CoreService/Shutdown`.
//!
//! The generated clients run on a bare hyper HTTP/2 connection ([`H2`]) instead of
//! tonic's `Channel`: hyper's client is built for the HTTP checks anyway, while the
//! channel would add tonic's transport, tower's balancing and buffering layers, and a
//! pool the checks would have to defeat (a check must open a connection to prove the
//! process still accepts one).

use crate::probe::{bounded, connect, drive, error_chain};
use crate::proto::core::v1::core_service_client::CoreServiceClient;
use crate::proto::core::v1::ShutdownRequest;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::codegen::http::{Request, Response, Uri};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Asks the integrated process listening on `127.0.0.1:port` to exit on its own, with
/// `hsu.core.v1.CoreService/Shutdown`, bounded by `timeout`. `Ok` once the process has
/// answered; that it then exits is for the caller to watch. The error says what failed,
/// e.g. `connection refused (127.0.0.1:7000)`, `timed out after 2s`,
/// `gRPC UNIMPLEMENTED: ...`.
pub async fn request_shutdown(port: u16, reason: &str, timeout: Duration) -> Result<(), String> {
    let address = format!("127.0.0.1:{port}");
    bounded(timeout, async {
        let (channel, connection) = open(&address).await?;
        let mut client = CoreServiceClient::with_origin(channel, origin(&address)?);
        let request = ShutdownRequest {
            reason: reason.to_string(),
        };
        drive(client.shutdown(request), connection)
            .await
            .map(drop)
            .map_err(|status| status_text(&status))
    })
    .await
}

/// `grpc.health.v1.Health/Check` of `service` ("" = the server as a whole) at `address`:
/// `Ok` for `SERVING`, else what was answered.
pub(crate) async fn check(address: &str, service: &str) -> Result<(), String> {
    let (channel, connection) = open(address).await?;
    let mut client = HealthClient::with_origin(channel, origin(address)?);
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    let response = drive(client.check(request), connection).await;
    let subject = if service.is_empty() {
        "the server".to_string()
    } else {
        format!("service `{service}`")
    };
    let response = response.map_err(|status| match status.code() {
        Code::NotFound => format!("{subject} is unknown ({})", status_text(&status)),
        _ => status_text(&status),
    })?;
    match ServingStatus::try_from(response.into_inner().status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(ServingStatus::NotServing) => Err(format!("{subject} is NOT_SERVING")),
        Ok(ServingStatus::ServiceUnknown) => Err(format!("{subject} is SERVICE_UNKNOWN")),
        Ok(ServingStatus::Unknown) => Err(format!("{subject} reports status UNKNOWN")),
        Err(_) => Err(format!("{subject} reports an unknown status")),
    }
}

/// A TCP connection to `address` with the HTTP/2 preface sent: the client side, and the
/// connection future that must be polled for it to move.
async fn open(
    address: &str,
) -> Result<
    (
        H2,
        http2::Connection<TokioIo<TcpStream>, tonic::body::Body, TokioExecutor>,
    ),
    String,
> {
    let stream = connect(address).await?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 to {address} failed: {}", error_chain(&e)))?;
    Ok((H2(sender), connection))
}

fn origin(address: &str) -> Result<Uri, String> {
    format!("http://{address}")
        .parse()
        .map_err(|e| format!("`{address}` is not a valid address: {e}"))
}

/// A status in words: `gRPC NOT_FOUND: service not registered`. A status made of a
/// connection's error carries that error, and its causes are told too.
fn status_text(status: &tonic::Status) -> String {
    let name = code_name(status.code());
    let mut message = status.message().to_string();
    if let Some(cause) = std::error::Error::source(status) {
        let cause = error_chain(cause);
        message = match message.as_str() {
            "" => cause,
            m if cause.starts_with(m) => cause,
            m => format!("{m}: {cause}"),
        };
    }
    match message.as_str() {
        "" => format!("gRPC {name}"),
        _ => format!("gRPC {name}: {message}"),
    }
}

/// The code's name as the gRPC specification spells it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One HTTP/2 connection as the service a generated client calls through.
#[derive(Clone)]
struct H2(http2::SendRequest<tonic::body::Body>);

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<hyper::body::Incoming>, hyper::Error>> + Send>>;

impl tonic::codegen::Service<Request<tonic::body::Body>> for H2 {
    type Response = Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::core::v1::core_service_server::{CoreService, CoreServiceServer};
    use crate::proto::core::v1::{PingRequest, PingResponse, ShutdownResponse};
    use crate::{probe, ExecContext, ProbeOutcome};
    use hsu_managed_process::HealthCheckKind;
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tonic::codegen::Service;
    use tonic_health::server::health_reporter;

    const TIMEOUT: Duration = Duration::from_millis(500);

    /// `CoreService` that hands each shutdown reason to the test.
    struct Core(mpsc::UnboundedSender<String>);

    #[tonic::async_trait]
    impl CoreService for Core {
        async fn ping(
            &self,
            _: tonic::Request<PingRequest>,
        ) -> Result<tonic::Response<PingResponse>, tonic::Status> {
            Ok(tonic::Response::new(PingResponse {}))
        }

        async fn shutdown(
            &self,
            request: tonic::Request<ShutdownRequest>,
        ) -> Result<tonic::Response<ShutdownResponse>, tonic::Status> {
            let _ = self.0.send(request.into_inner().reason);
            Ok(tonic::Response::new(ShutdownResponse {}))
        }
    }

    /// An h2c gRPC server on a free loopback port: `grpc.health.v1` with `""` and `ready`
    /// serving and `down` not, and `CoreService` when `core` is given (else every other
    /// call is `UNIMPLEMENTED`).
    async fn grpc_server(core: Option<mpsc::UnboundedSender<String>>) -> u16 {
        let (reporter, health) = health_reporter();
        use tonic_health::ServingStatus::{NotServing, Serving};
        reporter.set_service_status("", Serving).await;
        reporter.set_service_status("ready", Serving).await;
        reporter.set_service_status("down", NotServing).await;
        let core = core.map(|tx| CoreServiceServer::new(Core(tx)));
        let route = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let mut health = health.clone();
            let core = core.clone();
            async move {
                if req.uri().path().starts_with("/grpc.health.v1.Health/") {
                    health.call(req).await
                } else if let Some(mut core) = core {
                    core.call(req).await
                } else {
                    Ok::<_, Infallible>(tonic::Status::unimplemented("").into_http())
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), route.clone());
                tokio::spawn(connection);
            }
        });
        port
    }

    async fn grpc(port: u16, service: &str) -> ProbeOutcome {
        let kind = HealthCheckKind::Grpc {
            address: format!("127.0.0.1:{port}"),
            service: service.into(),
        };
        let exec = ExecContext {
            working_directory: std::env::temp_dir(),
            environment: BTreeMap::new(),
        };
        probe(&kind, &exec, TIMEOUT).await
    }

    #[tokio::test]
    async fn serving_passes_and_anything_else_fails_in_words() {
        let port = grpc_server(None).await;
        let out = grpc(port, "").await;
        assert_eq!(out.result, Ok(()));
        assert!(out.latency < TIMEOUT, "{out:?}");
        assert_eq!(grpc(port, "ready").await.result, Ok(()));
        assert_eq!(
            grpc(port, "down").await.result,
            Err("service `down` is NOT_SERVING".into())
        );
        assert_eq!(
            grpc(port, "nope").await.result,
            Err("service `nope` is unknown (gRPC NOT_FOUND: service not registered)".into())
        );
    }

    #[tokio::test]
    async fn a_closed_port_and_a_silent_server_fail() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert_eq!(
            grpc(port, "").await.result,
            Err(format!("connection refused (127.0.0.1:{port})"))
        );
        // Accepts, and never says a word.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let out = grpc(port, "").await;
        assert_eq!(out.result, Err("timed out after 500ms".into()));
        assert!(out.latency < TIMEOUT * 2, "{out:?}");
        held.abort();
    }

    #[tokio::test]
    async fn shutdown_is_requested_with_its_reason() {
        let (tx, mut reasons) = mpsc::unbounded_channel();
        let port = grpc_server(Some(tx)).await;
        request_shutdown(port, "stop requested", TIMEOUT)
            .await
            .unwrap();
        assert_eq!(reasons.recv().await.unwrap(), "stop requested");

        let port = grpc_server(None).await;
        let err = request_shutdown(port, "x", TIMEOUT).await.unwrap_err();
        assert!(err.starts_with("gRPC UNIMPLEMENTED"), "{err}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert_eq!(
            request_shutdown(closed, "x", TIMEOUT).await,
            Err(format!("connection refused (127.0.0.1:{closed})"))
        );
    }
}
