//! A typed client of the control API over TCP or the Unix socket, shared by the CLI and
//! the end-to-end tests.

use crate::model::{Accepted, ApiError, Process, ReloadResult};
use bytes::Bytes;
use hsu_process_management::Event;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where the API listens: `http://HOST:PORT` or `unix:/path/to/api.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAddress {
    /// A TCP address, `HOST:PORT` (without the `http://`).
    Tcp(String),
    /// The path of the manager's Unix socket (`api.sock`).
    Unix(PathBuf),
}

impl FromStr for ApiAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "`unix:` needs a socket path, e.g. unix:/var/lib/hsu-process-manager/api.sock"
                        .into(),
                );
            }
            return Ok(ApiAddress::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let hostport = rest.trim_end_matches('/');
        if hostport.is_empty() || hostport.contains('/') || !hostport.contains(':') {
            return Err(format!(
                "`{s}` is not an API address; use http://HOST:PORT or unix:/path/api.sock"
            ));
        }
        Ok(ApiAddress::Tcp(hostport.to_owned()))
    }
}

impl std::fmt::Display for ApiAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAddress::Tcp(a) => write!(f, "http://{a}"),
            ApiAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why a call of the control API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the address.
    #[error("manager not reachable at {address}: {reason}")]
    Unreachable {
        /// The address that was tried.
        address: String,
        /// Why it could not be reached (connection refused, timed out, ...).
        reason: String,
    },
    /// The API answered with an error status.
    #[error("{}", .error.error)]
    Api {
        /// The HTTP status code (4xx or 503).
        status: u16,
        /// The error body the API sent.
        error: ApiError,
    },
    /// The answer was not what the API sends.
    #[error("unexpected answer from {address}: {reason}")]
    Protocol {
        /// The address that answered.
        address: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of an API error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A raw answer: status, content type and body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header, if the answer had one.
    pub content_type: Option<String>,
    /// The whole body.
    pub body: Bytes,
}

impl RawResponse {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; `None` if it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A streaming answer (logs or events with `follow=true`).
pub struct Streaming {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header, if the answer had one.
    pub content_type: Option<String>,
    body: hyper::body::Incoming,
}

impl Streaming {
    /// The next chunk of the body; `None` at its end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => {
                    return Some(Err(ClientError::Protocol {
                        address: String::new(),
                        reason: e.to_string(),
                    }))
                }
            }
        }
    }
}

/// The control API client. Each call opens its own connection, so a client is cheap and
/// never holds a connection open between calls.
#[derive(Debug, Clone)]
pub struct ApiClient {
    address: ApiAddress,
    token: Option<String>,
    timeout: Duration,
}

trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> Io for T {}

impl ApiClient {
    /// A client of the API at `address`, sending `token` as a bearer token if given.
    pub fn new(address: ApiAddress, token: Option<String>) -> Self {
        ApiClient {
            address,
            token,
            timeout: Duration::from_secs(120),
        }
    }

    /// The address this client talks to.
    pub fn address(&self) -> &ApiAddress {
        &self.address
    }

    /// Bound on one request (connecting, the answer's head, and a whole non-streamed
    /// body). Stops can take as long as a process's graceful timeout, so the default is long.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn unreachable(&self, reason: impl ToString) -> ClientError {
        ClientError::Unreachable {
            address: self.address.to_string(),
            reason: reason.to_string(),
        }
    }

    fn protocol(&self, reason: impl ToString) -> ClientError {
        ClientError::Protocol {
            address: self.address.to_string(),
            reason: reason.to_string(),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        match &self.address {
            ApiAddress::Tcp(a) => tokio::net::TcpStream::connect(a)
                .await
                .map(|s| Box::new(TokioIo::new(s)) as Box<dyn Io>)
                .map_err(|e| self.unreachable(e)),
            ApiAddress::Unix(p) => tokio::net::UnixStream::connect(p)
                .await
                .map(|s| Box::new(TokioIo::new(s)) as Box<dyn Io>)
                .map_err(|e| self.unreachable(format!("{}: {e}", p.display()))),
        }
    }

    /// Sends one request and returns the answer's head with its body still streaming.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Streaming, ClientError> {
        let fut = async {
            let io = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| self.unreachable(e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let host = match &self.address {
                ApiAddress::Tcp(a) => a.clone(),
                ApiAddress::Unix(_) => "localhost".into(),
            };
            let mut req = Request::builder()
                .method(method)
                .uri(path_and_query)
                .header("host", host);
            if let Some(t) = &self.token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let has_body = body.is_some();
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if has_body
                && !headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                req = req.header("content-type", "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| self.protocol(e))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.unreachable(e))?;
            Ok(Streaming {
                status: resp.status().as_u16(),
                content_type: resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: resp.into_body(),
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| self.unreachable("timed out"))?
    }

    /// Sends one request and reads the whole answer.
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let fut = async {
            let resp = self.send(method, path_and_query, headers, body).await?;
            let content_type = resp.content_type.clone();
            let body = resp
                .body
                .collect()
                .await
                .map_err(|e| self.protocol(e))?
                .to_bytes();
            Ok(RawResponse {
                status: resp.status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| self.unreachable("timed out"))?
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let resp = self.raw(method, path, &[], None).await?;
        self.decode(resp)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, resp: RawResponse) -> Result<T, ClientError> {
        if StatusCode::from_u16(resp.status).is_ok_and(|s| s.is_success()) {
            serde_json::from_slice(&resp.body).map_err(|e| self.protocol(e))
        } else {
            Err(self.api_error(resp))
        }
    }

    fn api_error(&self, resp: RawResponse) -> ClientError {
        let error = serde_json::from_slice::<ApiError>(&resp.body).unwrap_or_else(|_| ApiError {
            error: format!("HTTP {}: {}", resp.status, resp.text().trim()),
            code: "unknown".into(),
            problems: Vec::new(),
        });
        ClientError::Api {
            status: resp.status,
            error,
        }
    }

    /// Checks that the manager is alive (`GET /healthz`); needs no token.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        let resp = self.raw(Method::GET, "/healthz", &[], None).await?;
        if resp.status == 200 {
            Ok(())
        } else {
            Err(self.api_error(resp))
        }
    }

    /// Every configured process, in config order.
    pub async fn list(&self) -> Result<Vec<Process>, ClientError> {
        self.json(Method::GET, "/api/v1/processes").await
    }

    /// The dependency graph.
    pub async fn graph(&self) -> Result<crate::model::Graph, ClientError> {
        self.json(Method::GET, "/api/v1/graph").await
    }

    /// One process by its id.
    pub async fn get(&self, id: &str) -> Result<Process, ClientError> {
        self.json(Method::GET, &format!("/api/v1/processes/{id}"))
            .await
    }

    /// Starts a process; answers once it is started.
    pub async fn start(&self, id: &str) -> Result<Accepted, ClientError> {
        self.json(Method::POST, &format!("/api/v1/processes/{id}/start"))
            .await
    }

    /// Stops a process; `force` SIGKILLs its whole tree at once.
    pub async fn stop(&self, id: &str, force: bool) -> Result<Accepted, ClientError> {
        let q = if force { "?force=true" } else { "" };
        self.json(Method::POST, &format!("/api/v1/processes/{id}/stop{q}"))
            .await
    }

    /// Restarts a process; `force` restarts it even while its circuit breaker is open.
    pub async fn restart(&self, id: &str, force: bool) -> Result<Accepted, ClientError> {
        let q = if force { "?force=true" } else { "" };
        self.json(Method::POST, &format!("/api/v1/processes/{id}/restart{q}"))
            .await
    }

    /// Re-reads the config file and applies what changed.
    pub async fn reload(&self) -> Result<ReloadResult, ClientError> {
        self.json(Method::POST, "/api/v1/reload").await
    }

    /// Asks the manager to stop every process and exit; with `keep_processes`, to exit
    /// leaving them running for the next manager to adopt.
    pub async fn shutdown(&self, keep_processes: bool) -> Result<Accepted, ClientError> {
        let path = if keep_processes {
            "/api/v1/shutdown?keep_processes=true"
        } else {
            "/api/v1/shutdown"
        };
        self.json(Method::POST, path).await
    }

    /// The whole journal.
    pub async fn events(&self) -> Result<Vec<Event>, ClientError> {
        self.events_since(None).await
    }

    /// The stored events with a `seq` above `since` (all of them for `None`).
    pub async fn events_since(&self, since: Option<u64>) -> Result<Vec<Event>, ClientError> {
        let path = match since {
            Some(seq) => format!("/api/v1/events?since={seq}"),
            None => "/api/v1/events".to_owned(),
        };
        let resp = self.raw(Method::GET, &path, &[], None).await?;
        if resp.status != 200 {
            return Err(self.api_error(resp));
        }
        resp.text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| self.protocol(e)))
            .collect()
    }

    /// Follows new events as server-sent events, calling `on_event` for each until it
    /// returns false or the stream ends. (Lag notices, `event: lagged`, are skipped; a
    /// caller that must not miss an event compares `seq`s and asks
    /// [`Self::events_since`] for a gap.)
    pub async fn follow_events(
        &self,
        mut on_event: impl FnMut(Event) -> bool,
    ) -> Result<(), ClientError> {
        let mut stream = self
            .send(Method::GET, "/api/v1/events?follow=true", &[], None)
            .await?;
        if stream.status != 200 {
            return Err(self.collect_error(stream).await);
        }
        let mut buf = String::new();
        while let Some(chunk) = stream.next_chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = buf.find("\n\n") {
                let message: String = buf.drain(..end + 2).collect();
                // Named messages (`event: lagged`) are notices, not journal events.
                if message.lines().any(|l| l.starts_with("event:")) {
                    continue;
                }
                let data: String = message
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                let event: Event = serde_json::from_str(&data).map_err(|e| self.protocol(e))?;
                if !on_event(event) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The last `tail` lines of a process's captured stream.
    pub async fn logs(
        &self,
        id: &str,
        stream: &str,
        tail: Option<usize>,
    ) -> Result<String, ClientError> {
        let mut path = format!("/api/v1/processes/{id}/logs?stream={stream}");
        if let Some(n) = tail {
            path.push_str(&format!("&tail={n}"));
        }
        let resp = self.raw(Method::GET, &path, &[], None).await?;
        if resp.status == 200 {
            Ok(resp.text())
        } else {
            Err(self.api_error(resp))
        }
    }

    /// Follows a process's captured stream (after the last `tail` lines), calling
    /// `on_chunk` with each piece of text until it returns false or the stream ends.
    pub async fn follow_logs(
        &self,
        id: &str,
        stream: &str,
        tail: Option<usize>,
        mut on_chunk: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let mut path = format!("/api/v1/processes/{id}/logs?stream={stream}&follow=true");
        if let Some(n) = tail {
            path.push_str(&format!("&tail={n}"));
        }
        let mut resp = self.send(Method::GET, &path, &[], None).await?;
        if resp.status != 200 {
            return Err(self.collect_error(resp).await);
        }
        while let Some(chunk) = resp.next_chunk().await {
            if !on_chunk(&String::from_utf8_lossy(&chunk?)) {
                break;
            }
        }
        Ok(())
    }

    async fn collect_error(&self, mut stream: Streaming) -> ClientError {
        let mut body = Vec::new();
        while let Some(Ok(chunk)) = stream.next_chunk().await {
            body.extend_from_slice(&chunk);
        }
        self.api_error(RawResponse {
            status: stream.status,
            content_type: None,
            body: body.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "http://127.0.0.1:50055".parse::<ApiAddress>().unwrap(),
            ApiAddress::Tcp("127.0.0.1:50055".into())
        );
        assert_eq!(
            "127.0.0.1:9/".parse::<ApiAddress>().unwrap(),
            ApiAddress::Tcp("127.0.0.1:9".into())
        );
        assert_eq!(
            "unix:/tmp/api.sock".parse::<ApiAddress>().unwrap(),
            ApiAddress::Unix("/tmp/api.sock".into())
        );
        assert!("unix:".parse::<ApiAddress>().is_err());
        assert!("http://host/path".parse::<ApiAddress>().is_err());
    }
}
