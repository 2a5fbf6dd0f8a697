//! The HTTP API against a real `ProcessManager` supervising real processes, through the
//! typed client (TCP and the Unix socket) and, where headers or odd requests matter, raw
//! HTTP/1.1 over TCP.
mod common;

use common::DEADLINE;

use hsu_api::client::ApiClient;
use hsu_api::server::{self, RunningServer};
use hsu_api::{ApiAddress, ApiState, Circuit, HealthStatus, ListenSettings, State};
use hsu_managed_process::{
    ControlSpec, DiscoveryMethod, DiscoverySpec, HealthCheckSpec, ProcessDefinition,
    ProcessLogCollection, ProcessType,
};
use hsu_process_management::{Journal, ManagerFacade, ManagerOptions, ProcessManager};
use hyper::Method;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn definition(
    id: &str,
    process_type: ProcessType,
    control: Option<ControlSpec>,
) -> ProcessDefinition {
    ProcessDefinition {
        id: id.into(),
        process_type,
        enabled: true,
        control,
        health_check: HealthCheckSpec::default(),
        log_collection: ProcessLogCollection::default(),
        discovery: None,
        metadata: BTreeMap::new(),
        profile_type: None,
        depends_on: Vec::new(),
        ready_log_line: None,
    }
}

fn sleeper(id: &str, dir: &Path) -> ProcessDefinition {
    let mut control = ControlSpec::new("sleep", dir);
    control.arguments = vec!["30".into()];
    control.graceful_timeout = Duration::from_secs(2);
    definition(id, ProcessType::StandardManaged, Some(control))
}

/// Prints five numbered lines and one on stderr, then sleeps.
fn talker(id: &str, dir: &Path) -> ProcessDefinition {
    let mut control = ControlSpec::new("sh", dir);
    control.arguments = vec![
        "-c".into(),
        "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; exec sleep 30".into(),
    ];
    control.graceful_timeout = Duration::from_secs(2);
    definition(id, ProcessType::StandardManaged, Some(control))
}

fn unmanaged(id: &str) -> ProcessDefinition {
    let mut d = definition(id, ProcessType::Unmanaged, None);
    d.discovery = Some(DiscoverySpec {
        method: DiscoveryMethod::ProcessName("no-such-process-anywhere".into()),
        check_interval: Duration::from_secs(5),
    });
    d
}

struct Harness {
    dir: tempfile::TempDir,
    manager: ProcessManager,
    server: Option<RunningServer>,
    addr: SocketAddr,
    tcp: ApiClient,
    unix: ApiClient,
    listen: ListenSettings,
    log_dir: PathBuf,
}

impl Harness {
    /// A manager of `defs(dir)` and the API served for it (config file: `dir/config.yaml`).
    async fn start(
        defs: impl FnOnce(&Path) -> Vec<ProcessDefinition>,
        token: Option<&str>,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let defs = defs(dir.path());
        Self::start_in(dir, defs, token).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        defs: Vec<ProcessDefinition>,
        token: Option<&str>,
    ) -> Harness {
        let base = dir.path().to_path_buf();
        let log_dir = base.join("logs");
        let journal = Arc::new(Journal::open(&base.join("events.jsonl")).unwrap());
        let options = ManagerOptions {
            base_directory: base.clone(),
            log_directory: log_dir.clone(),
            force_shutdown_timeout: Duration::from_secs(10),
            resource_sample_interval: Duration::from_secs(1),
        };
        let manager = ProcessManager::start(defs, options, journal.clone())
            .await
            .unwrap();
        let facade = ManagerFacade::new(manager.clone(), journal, base.join("config.yaml"));
        let state = ApiState::new(facade, token.map(Into::into));
        let listen = ListenSettings {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            socket_path: base.join("api.sock"),
            addr_file: base.join("api.addr"),
        };
        let server = server::start(state, listen.clone()).await.unwrap();
        let addr = server.local_addr;
        let token = token.map(str::to_owned);
        Harness {
            tcp: ApiClient::new(ApiAddress::Tcp(addr.to_string()), token.clone())
                .with_timeout(DEADLINE),
            unix: ApiClient::new(ApiAddress::Unix(listen.socket_path.clone()), token)
                .with_timeout(DEADLINE),
            dir,
            manager,
            server: Some(server),
            addr,
            listen,
            log_dir,
        }
    }

    /// Stops the server and every process.
    async fn finish(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.manager.shutdown("test").await;
        drop(self.dir);
    }

    async fn wait_running(&self, id: &str) -> u32 {
        let client = self.tcp.clone();
        let id = id.to_owned();
        common::eventually(&format!("{id} running"), || {
            let client = client.clone();
            let id = id.clone();
            async move {
                let p = client.get(&id).await.ok()?;
                (p.state == State::Running).then_some(p.pid).flatten()
            }
        })
        .await
    }
}

/// A raw HTTP/1.1 exchange (the connection closes after it): status, headers, body.
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> RawAnswer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let mut request = head.replace('\n', "\r\n").into_bytes();
    request.extend_from_slice(body);
    // Written beside the read: the server may answer before it has read everything.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, read.read_to_end(&mut answer)).await;
    drop(writer.await);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    RawAnswer {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn get_head(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\nHost: test\nConnection: close\n{extra}\n")
}

fn api_error(e: hsu_api::ClientError) -> (u16, String) {
    match e {
        hsu_api::ClientError::Api { status, error } => (status, error.code),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_answer_with_the_documented_statuses() {
    let h = Harness::start(
        |dir| vec![sleeper("a", dir), sleeper("b", dir), unmanaged("u")],
        None,
    )
    .await;
    let (c, addr) = (&h.tcp, h.addr);
    let pid_a = h.wait_running("a").await;
    let pid_b = h.wait_running("b").await;

    // api.addr and the socket.
    let written = std::fs::read_to_string(&h.listen.addr_file).unwrap();
    assert_eq!(written, format!("{addr}\n"));
    assert!(written.starts_with("127.0.0.1:"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&h.listen.socket_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Reads, over TCP and the socket alike.
    c.healthz().await.unwrap();
    h.unix.healthz().await.unwrap();
    let list = h.unix.list().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "u"]);
    assert_eq!(list[2].process_type, hsu_api::ProcessType::Unmanaged);
    let a = c.get("a").await.unwrap();
    assert_eq!((a.state, a.pid), (State::Running, Some(pid_a)));
    assert_eq!(a.circuit, Circuit::Closed);
    assert_eq!(a.health.status, HealthStatus::Healthy);
    // The documented words on the wire.
    let raw = c
        .raw(Method::GET, "/api/v1/processes/a", &[], None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(raw["type"], "standard_managed");
    assert_eq!(raw["state"], "running");
    assert_eq!(raw["circuit"], "closed");
    assert_eq!(raw["health"]["status"], "healthy");
    // profile_type and metadata are shown (nested form; empty here).
    assert_eq!(raw["profile_type"], serde_json::Value::Null);
    assert_eq!(raw["metadata"], serde_json::json!({}));

    // 404s: unknown id, unknown route.
    assert_eq!(
        api_error(c.get("nope").await.unwrap_err()),
        (404, "not_found".into())
    );
    assert_eq!(
        api_error(c.start("nope").await.unwrap_err()),
        (404, "not_found".into())
    );
    let r = c
        .raw(Method::GET, "/api/v2/things", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap()["code"], "not_found");

    // 405 as JSON, with Allow.
    let r = raw_http(addr, &get_head("/api/v1/reload", ""), b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["code"], "invalid");
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(
        r.json()["error"],
        "GET is not allowed on /api/v1/reload (allowed: POST)"
    );
    let r = c
        .raw(Method::DELETE, "/api/v1/processes/a", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.json().unwrap()["code"], "invalid");

    // 400: a body that is not JSON, bad queries.
    let r = c
        .raw(
            Method::POST,
            "/api/v1/processes/a/start",
            &[],
            Some(b"{not json".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["code"], "invalid");
    for bad in [
        "/api/v1/processes/a/logs?tail=abc",
        "/api/v1/processes/a/logs?stream=foo",
        "/api/v1/processes/a/logs?follow=perhaps",
        "/api/v1/events?since=yesterday",
    ] {
        let r = c.raw(Method::GET, bad, &[], None).await.unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json().unwrap()["code"], "invalid", "{bad}");
    }
    let r = c
        .raw(
            Method::POST,
            "/api/v1/processes/b/restart?force=maybe",
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);

    // 413: declared too large, and chunked too large.
    let r = raw_http(
        addr,
        "POST /api/v1/reload HTTP/1.1\nHost: test\nConnection: close\nContent-Type: application/json\nContent-Length: 2000000\n\n",
        b"",
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "invalid");
    let mut chunked = format!("{:x}\r\n", 1_100_000).into_bytes();
    chunked.extend(std::iter::repeat_n(b' ', 1_100_000));
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = raw_http(
        addr,
        "POST /api/v1/reload HTTP/1.1\nHost: test\nConnection: close\nContent-Type: application/json\nTransfer-Encoding: chunked\n\n",
        &chunked,
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "invalid");

    // 409: the manager never starts an unmanaged process.
    assert_eq!(
        api_error(c.start("u").await.unwrap_err()),
        (409, "conflict".into())
    );
    assert_eq!(
        api_error(c.stop("u", false).await.unwrap_err()),
        (409, "conflict".into())
    );
    let r = c
        .raw(
            Method::POST,
            "/api/v1/processes/a/stop?force=perhaps",
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json().unwrap()["code"].clone()),
        (400, "invalid".into())
    );

    // Actions answer after they are done, with the process as it is then.
    let stopped = c.stop("a", false).await.unwrap();
    assert_eq!(stopped.action, "stop");
    let p = stopped.process.unwrap();
    assert_eq!((p.state, p.pid), (State::Stopped, None));
    let started = c.start("a").await.unwrap().process.unwrap();
    assert_eq!(started.state, State::Running);
    assert!(started.pid.is_some_and(|p| p != pid_a));
    let restarted = h.unix.restart("b", true).await.unwrap().process.unwrap();
    assert_eq!(restarted.state, State::Running);
    assert!(restarted.pid.is_some_and(|p| p != pid_b));

    // Logs: a known id without output yet is an empty text.
    let r = c
        .raw(Method::GET, "/api/v1/processes/u/logs", &[], None)
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, ""));
    assert!(r.content_type.as_deref().unwrap().starts_with("text/plain"));
    assert_eq!(
        api_error(c.logs("nope", "stdout", None).await.unwrap_err()).0,
        404
    );

    // Events: the journal as JSON lines, `since` filtering.
    let events = c.events().await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.id.as_deref() == Some("a") && e.kind.name() == "state_changed"));
    let r = c
        .raw(Method::GET, "/api/v1/events", &[], None)
        .await
        .unwrap();
    assert_eq!(r.content_type.as_deref(), Some("application/x-ndjson"));
    let last = events.last().unwrap().seq;
    let r = c
        .raw(
            Method::GET,
            &format!("/api/v1/events?since={}", last - 1),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.text().lines().count(), 1);

    // Metrics.
    let r = c.raw(Method::GET, "/metrics", &[], None).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r
        .content_type
        .as_deref()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    for name in [
        "hsu_process_state",
        "hsu_process_restarts_total",
        "hsu_process_up",
        "hsu_process_uptime_seconds",
        "hsu_process_health",
        "hsu_process_resident_memory_bytes",
        "hsu_process_cpu_seconds_total",
        "hsu_manager_resident_memory_bytes",
        "hsu_manager_cpu_seconds_total",
        "hsu_manager_open_fds",
        "hsu_manager_start_time_seconds",
        "hsu_journal_write_failures_total",
        "hsu_state_write_failures_total",
        "hsu_process_circuit_open",
        "hsu_process_circuit_half_open",
        "hsu_api_requests_total",
        "hsu_api_unauthorized_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert!(text.contains("hsu_process_state{id=\"a\",state=\"running\"} 1\n"));
    assert!(text.contains("hsu_process_state{id=\"a\",state=\"stopped\"} 0\n"));
    assert!(text.contains("hsu_process_up{id=\"u\"} 0\n"));
    assert!(text.contains("hsu_process_health{id=\"a\"} 1\n"));
    assert!(text.contains("hsu_process_circuit_open{id=\"a\"} 0\n"));
    assert!(text.contains("hsu_process_circuit_half_open{id=\"a\"} 0\n"));
    assert!(text.contains("hsu_journal_write_failures_total 0\n"));
    assert!(text.contains("hsu_state_write_failures_total 0\n"));
    let requests = text
        .lines()
        .find_map(|l| l.strip_prefix("hsu_api_requests_total{protocol=\"http\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(requests > 20, "{requests}");
    let rss = text
        .lines()
        .find_map(|l| l.strip_prefix("hsu_manager_resident_memory_bytes "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(rss > 0.0);

    // Shutdown: answered, then requested of whoever runs the manager.
    let accepted = c.shutdown(false).await.unwrap();
    assert_eq!((accepted.action.as_str(), accepted.id), ("shutdown", None));
    let reason = tokio::time::timeout(DEADLINE, h.manager.shutdown_requested())
        .await
        .unwrap();
    assert_eq!(reason, "API shutdown request");

    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_lists_every_route_and_each_get_answers() {
    let h = Harness::start(|dir| vec![sleeper("a", dir)], None).await;
    let c = &h.tcp;
    let r = c
        .raw(Method::GET, "/openapi.json", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let doc = r.json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/api/v1/processes"),
        ("get", "/api/v1/processes/{id}"),
        ("post", "/api/v1/processes/{id}/start"),
        ("post", "/api/v1/processes/{id}/stop"),
        ("post", "/api/v1/processes/{id}/restart"),
        ("get", "/api/v1/processes/{id}/logs"),
        ("get", "/api/v1/events"),
        ("post", "/api/v1/reload"),
        ("post", "/api/v1/shutdown"),
        ("get", "/api/v1/graph"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            listed.push((method.clone(), path.clone()));
        }
    }
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    // Query parameters are listed where the routes take them.
    let query_params = |method: &str, path: &str| -> Vec<String> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        query_params("post", "/api/v1/processes/{id}/stop"),
        ["force"]
    );
    assert_eq!(
        query_params("post", "/api/v1/processes/{id}/restart"),
        ["force"]
    );
    assert_eq!(query_params("get", "/api/v1/events"), ["follow", "since"]);
    // The enum fields are listed with their words.
    assert_eq!(
        doc["components"]["schemas"]["Circuit"]["enum"],
        serde_json::json!(["closed", "open", "half_open"])
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer_token"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["Process"].is_object());
    for (method, path) in &listed {
        if method == "get" {
            let r = c
                .raw(Method::GET, &path.replace("{id}", "a"), &[], None)
                .await
                .unwrap();
            assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        }
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_guards_every_route_but_healthz() {
    let h = Harness::start(|dir| vec![sleeper("a", dir)], Some("s3cret")).await;
    let addr = h.addr;
    let anonymous = ApiClient::new(ApiAddress::Tcp(addr.to_string()), None);
    let wrong = ApiClient::new(ApiAddress::Tcp(addr.to_string()), Some("s3creT".into()));
    let anonymous_unix = ApiClient::new(ApiAddress::Unix(h.listen.socket_path.clone()), None);

    anonymous.healthz().await.unwrap();
    anonymous_unix.healthz().await.unwrap();
    assert_eq!(
        api_error(anonymous.list().await.unwrap_err()),
        (401, "unauthorized".into())
    );
    assert_eq!(
        api_error(wrong.list().await.unwrap_err()),
        (401, "unauthorized".into())
    );
    assert_eq!(api_error(anonymous_unix.list().await.unwrap_err()).0, 401);
    assert_eq!(
        api_error(anonymous.stop("a", false).await.unwrap_err()).0,
        401
    );
    // Even unknown routes: nothing is revealed without the token.
    let r = raw_http(addr, &get_head("/nowhere", ""), b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = raw_http(
        addr,
        &get_head("/metrics", "Authorization: Basic czNjcmV0\n"),
        b"",
    )
    .await;
    assert_eq!(r.status, 401);

    // The right token, over both listeners.
    assert_eq!(h.tcp.list().await.unwrap().len(), 1);
    assert_eq!(h.unix.list().await.unwrap().len(), 1);
    assert!(h.wait_running("a").await > 0);
    let metrics = h
        .tcp
        .raw(Method::GET, "/metrics", &[], None)
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("hsu_api_unauthorized_total 6\n"),
        "{metrics}"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_loopback_bind_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(&dir.path().join("events.jsonl")).unwrap());
    let options = ManagerOptions {
        base_directory: dir.path().to_path_buf(),
        log_directory: dir.path().join("logs"),
        force_shutdown_timeout: Duration::from_secs(5),
        resource_sample_interval: Duration::from_secs(1),
    };
    let manager = ProcessManager::start(Vec::new(), options, journal.clone())
        .await
        .unwrap();
    let facade = ManagerFacade::new(manager.clone(), journal, dir.path().join("config.yaml"));
    let state = ApiState::new(facade, None);
    let listen = ListenSettings {
        bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: 0,
        socket_path: dir.path().join("api.sock"),
        addr_file: dir.path().join("api.addr"),
    };
    let err = match server::start(state, listen.clone()).await {
        Ok(_) => panic!("served 0.0.0.0 without a token"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err,
        "binding the control API to 0.0.0.0 requires an API token (process_manager.api_token_file or HSU_API_TOKEN)"
    );
    assert!(!listen.addr_file.exists() && !listen.socket_path.exists());
    manager.shutdown("test").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_removes_the_socket_and_the_address_file() {
    let h = Harness::start(|_| Vec::new(), None).await;
    let (addr, listen) = (h.addr, h.listen.clone());
    h.tcp.healthz().await.unwrap();
    let mut h = h;
    h.server.take().unwrap().stop().await;
    assert!(!listen.socket_path.exists());
    assert!(!listen.addr_file.exists());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_follow_streams_new_events() {
    let h = Harness::start(|dir| vec![sleeper("a", dir)], None).await;
    h.wait_running("a").await;
    let mut stream = h
        .tcp
        .send(Method::GET, "/api/v1/events?follow=true", &[], None)
        .await
        .unwrap();
    assert_eq!(stream.status, 200);
    assert_eq!(stream.content_type.as_deref(), Some("text/event-stream"));
    // Subscribed once the head has arrived: this stop's events must come through.
    h.unix.stop("a", false).await.unwrap();
    let mut text = String::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(chunk) = stream.next_chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("\"kind\":\"state_changed\"") && text.contains("\"to\":\"stopped\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "no state_changed in {text:?}");
    assert!(text.starts_with("id: "), "{text:?}");
    drop(stream);

    // With `since`, stored events come first.
    let mut seen = Vec::new();
    let client = h.tcp.clone();
    let follower = tokio::spawn(async move {
        let mut s = client
            .send(Method::GET, "/api/v1/events?follow=true&since=0", &[], None)
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(Ok(chunk)) = s.next_chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("id: 3\n") {
                break;
            }
        }
        text
    });
    let text = tokio::time::timeout(DEADLINE, follower)
        .await
        .unwrap()
        .unwrap();
    for line in text.lines().filter_map(|l| l.strip_prefix("id: ")) {
        seen.push(line.parse::<u64>().unwrap());
    }
    assert_eq!(&seen[..3], &[1, 2, 3]);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_tail_and_follow() {
    let h = Harness::start(|dir| vec![talker("t", dir)], None).await;
    let c = h.tcp.clone();
    let all = common::eventually("five lines of output", || {
        let c = c.clone();
        async move {
            let text = c.logs("t", "stdout", None).await.ok()?;
            text.contains("line 5").then_some(text)
        }
    })
    .await;
    assert_eq!(all, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    assert_eq!(
        c.logs("t", "stdout", Some(2)).await.unwrap(),
        "line 4\nline 5\n"
    );
    assert_eq!(c.logs("t", "stdout", Some(0)).await.unwrap(), "");
    let stderr = common::eventually("stderr", || {
        let c = c.clone();
        async move {
            c.logs("t", "stderr", None)
                .await
                .ok()
                .filter(|t| !t.is_empty())
        }
    })
    .await;
    assert_eq!(stderr, "oops\n");

    // Follow: the tail, then what is appended, then what follows a truncation.
    let path = h.log_dir.join("t.stdout.log");
    let mut stream = c
        .send(
            Method::GET,
            "/api/v1/processes/t/logs?tail=1&follow=true",
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(stream.status, 200);
    let mut text = String::new();
    read_until(&mut stream, &mut text, "line 5\n").await;
    assert_eq!(text, "line 5\n");
    append(&path, "appended\n");
    read_until(&mut stream, &mut text, "appended\n").await;
    // Truncated (shorter than what was read): read again from the start.
    std::fs::write(&path, "cut\n").unwrap();
    read_until(&mut stream, &mut text, "cut\n").await;
    // Rotated: a new file under the name is read from its start.
    std::fs::rename(&path, h.log_dir.join("t.stdout.log.1")).unwrap();
    std::fs::write(&path, "rotated\n").unwrap();
    read_until(&mut stream, &mut text, "rotated\n").await;
    assert_eq!(text, "line 5\nappended\ncut\nrotated\n");
    drop(stream);
    h.finish().await;
}

/// Reads `stream` into `text` until `text` contains `want`.
async fn read_until(stream: &mut hsu_api::client::Streaming, text: &mut String, want: &str) {
    let read = tokio::time::timeout(DEADLINE, async {
        while !text.contains(want) {
            match stream.next_chunk().await {
                Some(Ok(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return false,
            }
        }
        true
    })
    .await;
    assert!(matches!(read, Ok(true)), "no {want:?} in {text:?}");
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

const CONFIG_V1: &str = r#"
managed_processes:
  - id: keep
    type: standard_managed
    management:
      control:
        executable: sleep
        arguments: ["30"]
        graceful_timeout: 2s
  - id: change
    type: standard_managed
    management:
      control:
        executable: sleep
        arguments: ["31"]
        graceful_timeout: 2s
  - id: gone
    type: standard_managed
    management:
      control:
        executable: sleep
        arguments: ["32"]
        graceful_timeout: 2s
"#;

const CONFIG_V2: &str = r#"
managed_processes:
  - id: keep
    type: standard_managed
    management:
      control:
        executable: sleep
        arguments: ["30"]
        graceful_timeout: 2s
  - id: change
    type: standard_managed
    management:
      control:
        executable: sleep
        arguments: ["33"]
        graceful_timeout: 2s
  - id: new
    type: standard_managed
    management:
      control:
        executable: sleep
        arguments: ["34"]
        graceful_timeout: 2s
"#;

const CONFIG_INVALID: &str = r#"
managed_processes:
  - id: keep
    type: standard_managed
    management:
      control:
        executable: sleep
        arguments: ["30"]
        graceful_timeout: soon
  - id: "bad id"
    type: standard_managed
"#;

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_the_difference_or_keeps_the_old_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG_V1).unwrap();
    let defs = hsu_process_management::config::load_file(&config)
        .unwrap()
        .processes;
    let h = Harness::start_in(dir, defs, None).await;
    let c = &h.tcp;
    let keep = h.wait_running("keep").await;
    let change = h.wait_running("change").await;
    h.wait_running("gone").await;

    // Invalid: every problem reported, nothing touched.
    std::fs::write(&config, CONFIG_INVALID).unwrap();
    let r = c
        .raw(Method::POST, "/api/v1/reload", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    let body = r.json().unwrap();
    assert_eq!(body["code"], "invalid");
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(problems.len() >= 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .all(|p| p.starts_with(&config.display().to_string())),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("graceful_timeout")),
        "{problems:?}"
    );
    assert_eq!(h.wait_running("keep").await, keep);
    assert_eq!(
        h.wait_running("gone").await,
        h.tcp.get("gone").await.unwrap().pid.unwrap()
    );

    // Valid: added, removed, changed, and the unchanged one keeps its PID.
    std::fs::write(&config, CONFIG_V2).unwrap();
    let diff = h.unix.reload().await.unwrap();
    assert_eq!(diff.added, ["new"]);
    assert_eq!(diff.removed, ["gone"]);
    assert_eq!(diff.changed, ["change"]);
    assert_eq!(diff.unchanged, ["keep"]);
    assert_eq!(h.wait_running("keep").await, keep);
    assert_ne!(h.wait_running("change").await, change);
    h.wait_running("new").await;
    assert_eq!(api_error(c.get("gone").await.unwrap_err()).0, 404);
    h.finish().await;
}

/// Prints 150 numbered lines, then sleeps.
fn counter(id: &str, dir: &Path) -> ProcessDefinition {
    let mut control = ControlSpec::new("sh", dir);
    control.arguments = vec!["-c".into(), "seq 1 150; exec sleep 30".into()];
    control.graceful_timeout = Duration::from_secs(2);
    definition(id, ProcessType::StandardManaged, Some(control))
}

/// A gRPC client on the API server's TCP port (h2c, as the server serves it).
async fn grpc_client(
    addr: SocketAddr,
) -> hsu_api::grpc::ProcessManagerClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    hsu_api::grpc::ProcessManagerClient::new(channel)
}

async fn grpc_log(
    client: &mut hsu_api::grpc::ProcessManagerClient<tonic::transport::Channel>,
    id: &str,
    tail: Option<u64>,
) -> String {
    use hsu_api::grpc::proto::procman::v1 as pb;
    let mut chunks = client
        .logs(pb::LogsRequest {
            id: id.into(),
            stream: String::new(),
            tail,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = Vec::new();
    while let Some(chunk) = chunks.message().await.unwrap() {
        text.extend_from_slice(&chunk.data);
    }
    String::from_utf8(text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn log_tail_has_one_default_on_http_and_grpc() {
    let h = Harness::start(|dir| vec![counter("n", dir)], None).await;
    let c = h.tcp.clone();
    common::eventually("150 lines of output", || {
        let c = c.clone();
        async move {
            let text = c.logs("n", "stdout", Some(1000)).await.ok()?;
            text.ends_with("150\n").then_some(())
        }
    })
    .await;
    let default = hsu_api::service::DEFAULT_TAIL_LINES;
    let expected: String = (151 - default..=150).map(|i| format!("{i}\n")).collect();
    // No `tail` at all: the same documented default over both encodings.
    let http = c.logs("n", "stdout", None).await.unwrap();
    assert_eq!(http, expected);
    let mut grpc = grpc_client(h.addr).await;
    assert_eq!(grpc_log(&mut grpc, "n", None).await, expected);
    // An explicit tail, and one above the cap, agree too.
    assert_eq!(grpc_log(&mut grpc, "n", Some(3)).await, "148\n149\n150\n");
    assert_eq!(
        c.logs("n", "stdout", Some(3)).await.unwrap(),
        "148\n149\n150\n"
    );
    let all: String = (1..=150).map(|i| format!("{i}\n")).collect();
    assert_eq!(grpc_log(&mut grpc, "n", Some(u64::MAX)).await, all);
    assert_eq!(
        c.raw(
            Method::GET,
            "/api/v1/processes/n/logs?tail=99999999999999999999999",
            &[],
            None
        )
        .await
        .unwrap()
        .text(),
        all
    );
    h.finish().await;
}

/// Ignores SIGTERM, and has a graceful timeout far longer than any test waits.
fn stubborn(id: &str, dir: &Path) -> ProcessDefinition {
    let mut control = ControlSpec::new("sh", dir);
    control.arguments = vec!["-c".into(), "trap '' TERM; exec sleep 300".into()];
    control.graceful_timeout = Duration::from_secs(120);
    definition(id, ProcessType::StandardManaged, Some(control))
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_force_reaches_the_supervisor() {
    use hsu_api::grpc::proto::procman::v1 as pb;
    let h = Harness::start(|dir| vec![stubborn("s", dir)], None).await;
    h.wait_running("s").await;
    // HTTP: answered (well inside the 120 s graceful timeout) once the tree is killed.
    let p = h.tcp.stop("s", true).await.unwrap().process.unwrap();
    assert_eq!(p.state, State::Stopped);
    assert_eq!(p.last_exit.and_then(|e| e.signal), Some(9));
    // gRPC: the same.
    h.tcp.start("s").await.unwrap();
    h.wait_running("s").await;
    let mut grpc = grpc_client(h.addr).await;
    let stopped = tokio::time::timeout(
        DEADLINE,
        grpc.stop(pb::StopRequest {
            id: "s".into(),
            force: true,
        }),
    )
    .await
    .expect("a forced stop does not wait for the graceful timeout")
    .unwrap()
    .into_inner();
    let p = stopped.process.unwrap();
    assert_eq!(p.state, "stopped");
    assert_eq!(p.last_exit.and_then(|e| e.signal), Some(9));
    h.finish().await;
}
