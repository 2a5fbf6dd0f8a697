//! The gRPC API end to end: a real `ProcessManager` supervising one process, the API's
//! gRPC routes served over h2c by hyper-util's auto builder (as the API server does), and
//! the generated tonic client over a real channel.
mod common;

use common::DEADLINE;

use hsu_api::grpc::proto::core::v1 as core_pb;
use hsu_api::grpc::proto::core::v1::core_service_client::CoreServiceClient;
use hsu_api::grpc::proto::procman::v1 as pb;
use hsu_api::grpc::ProcessManagerClient;
use hsu_api::{ApiMetrics, ApiState};
use hsu_managed_process::{
    ControlSpec, HealthCheckSpec, ProcessDefinition, ProcessLogCollection, ProcessType,
};
use hsu_process_management::{Journal, ManagerFacade, ManagerOptions, ProcessManager};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const ID: &str = "sleeper";

struct Harness {
    manager: ProcessManager,
    metrics: Arc<ApiMetrics>,
    state: ApiState,
    base: PathBuf,
    addr: SocketAddr,
    config_path: PathBuf,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A manager running `sh -c 'echo one; echo two; echo three; exec sleep 30'` and the
    /// gRPC routes served on a free loopback port.
    async fn start(token: Option<&str>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let log_dir = base.join("logs");
        let mut control = ControlSpec::new("sh", &base);
        control.arguments = vec![
            "-c".into(),
            "echo one; echo two; echo three; exec sleep 30".into(),
        ];
        control.graceful_timeout = Duration::from_secs(5);
        let def = ProcessDefinition {
            id: ID.into(),
            process_type: ProcessType::StandardManaged,
            enabled: true,
            control: Some(control),
            health_check: HealthCheckSpec::default(),
            log_collection: ProcessLogCollection::default(),
            discovery: None,
            metadata: BTreeMap::new(),
            profile_type: None,
            depends_on: Vec::new(),
            ready_log_line: None,
        };
        let journal = Arc::new(Journal::open(&base.join("events.jsonl")).unwrap());
        let manager = ProcessManager::start(
            vec![def],
            ManagerOptions {
                base_directory: base.clone(),
                log_directory: log_dir.clone(),
                force_shutdown_timeout: Duration::from_secs(10),
                resource_sample_interval: Duration::from_secs(1),
            },
            journal.clone(),
        )
        .await
        .unwrap();
        // A config reload reads: deliberately invalid, so reload must refuse it.
        let config_path = base.join("config.yaml");
        std::fs::write(&config_path, "managed_processes: [ {id: \n").unwrap();
        let facade = ManagerFacade::new(manager.clone(), journal, config_path.clone());
        let state = ApiState::new(facade, token.map(Arc::from));
        let metrics = state.metrics.clone();
        let router = hsu_api::grpc::routes(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Harness {
            manager,
            metrics,
            state,
            base,
            addr,
            config_path,
            server,
            _dir: dir,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self) -> ProcessManagerClient<Channel> {
        ProcessManagerClient::new(self.channel().await)
    }

    async fn stop(self) {
        self.manager.shutdown("test").await;
        self.server.abort();
    }
}

async fn get(client: &mut ProcessManagerClient<Channel>, id: &str) -> Result<pb::Process, Status> {
    client
        .get(pb::GetRequest { id: id.into() })
        .await
        .map(|r| r.into_inner())
}

async fn wait_state(client: &mut ProcessManagerClient<Channel>, state: &str) -> pb::Process {
    common::eventually(&format!("{ID} to be {state}"), || {
        let mut client = client.clone();
        async move { get(&mut client, ID).await.ok().filter(|p| p.state == state) }
    })
    .await
}

async fn log_text(
    client: &mut ProcessManagerClient<Channel>,
    stream: &str,
    tail: Option<u64>,
) -> Result<String, Status> {
    let mut chunks = client
        .logs(pb::LogsRequest {
            id: ID.into(),
            stream: stream.into(),
            tail,
            follow: false,
        })
        .await?
        .into_inner();
    let mut text = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        text.extend_from_slice(&chunk.data);
    }
    Ok(String::from_utf8(text).unwrap())
}

/// Reads a followed log until its text ends with `end`.
async fn read_until(follow: &mut tonic::Streaming<pb::LogChunk>, end: &str) -> String {
    let mut text = String::new();
    timeout(DEADLINE, async {
        while !text.ends_with(end) {
            let chunk = follow.message().await.unwrap().expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk.data));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("followed log output so far: {text:?}"));
    text
}

async fn health(channel: Channel, service: &str) -> Result<i32, Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_manager_over_grpc() {
    let h = Harness::start(None).await;
    let mut client = h.client().await;

    // List and Get.
    let running = wait_state(&mut client, "running").await;
    let list = client.list(pb::ListRequest {}).await.unwrap().into_inner();
    assert_eq!(list.processes.len(), 1);
    let p = &list.processes[0];
    assert_eq!(p.id, ID);
    assert_eq!(p.r#type, "standard_managed");
    assert_eq!(p.circuit, "closed");
    assert!(p.health.is_some());
    assert!(serde_json::from_str::<serde_json::Value>(&p.limits_json).is_ok());
    let first_pid = running.pid.expect("a running process has a pid");
    assert!(running.started_at.is_some());
    let err = get(&mut client, "nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    for bad in [
        client.start(pb::ProcessRequest { id: "nope".into() }).await,
        client
            .stop(pb::StopRequest {
                id: "nope".into(),
                force: false,
            })
            .await,
        client
            .restart(pb::RestartRequest {
                id: "nope".into(),
                force: false,
            })
            .await,
    ] {
        assert_eq!(bad.unwrap_err().code(), Code::NotFound);
    }

    // Logs: the last lines, a bad stream name, an unknown process.
    let text = common::eventually("three lines of output", || {
        let mut client = client.clone();
        async move {
            let text = log_text(&mut client, "stdout", None).await.ok()?;
            text.contains("three").then_some(text)
        }
    })
    .await;
    assert_eq!(text, "one\ntwo\nthree\n");
    assert_eq!(
        log_text(&mut client, "stdout", Some(2)).await.unwrap(),
        "two\nthree\n"
    );
    assert_eq!(log_text(&mut client, "stderr", None).await.unwrap(), "");
    assert_eq!(
        log_text(&mut client, "journal", None)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let err = client
        .logs(pb::LogsRequest {
            id: "../nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Stop, then Start: each visible through Get.
    let stopped = client
        .stop(pb::StopRequest {
            id: ID.into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.action, "stop");
    assert_eq!(stopped.id, ID);
    let p = wait_state(&mut client, "stopped").await;
    assert_eq!(p.pid, None);
    let started = client
        .start(pb::ProcessRequest { id: ID.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.action, "start");
    let p = wait_state(&mut client, "running").await;
    let second_pid = p.pid.unwrap();
    assert_ne!(second_pid, first_pid);

    // Follow the log from its last line, then Restart: the new run's output arrives.
    common::eventually("the second run's output", || {
        let mut client = client.clone();
        async move {
            let text = log_text(&mut client, "stdout", None).await.ok()?;
            (text.matches("three").count() == 2).then_some(())
        }
    })
    .await;
    let mut follow = client
        .logs(pb::LogsRequest {
            id: ID.into(),
            stream: "stdout".into(),
            tail: Some(1),
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read_until(&mut follow, "three\n").await, "three\n");
    let restarted = client
        .restart(pb::RestartRequest {
            id: ID.into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restarted.action, "restart");
    common::eventually("a new pid after restart", || {
        let mut client = client.clone();
        async move {
            get(&mut client, ID)
                .await
                .ok()
                .filter(|p| p.state == "running" && p.pid.is_some_and(|pid| pid != second_pid))
        }
    })
    .await;
    assert_eq!(
        read_until(&mut follow, "three\n").await,
        "one\ntwo\nthree\n"
    );
    drop(follow);

    // Events: the journal, then (following) a new event.
    let past: Vec<pb::Event> = {
        let mut s = client
            .events(pb::EventsRequest {
                follow: false,
                since: None,
            })
            .await
            .unwrap()
            .into_inner();
        let mut v = Vec::new();
        while let Some(e) = s.message().await.unwrap() {
            v.push(e);
        }
        v
    };
    assert!(!past.is_empty());
    assert!(past.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let changed = past
        .iter()
        .find(|e| e.kind == "state_changed" && e.id.as_deref() == Some(ID))
        .expect("a state_changed event");
    let json: serde_json::Value = serde_json::from_str(&changed.json).unwrap();
    assert_eq!(json["kind"], "state_changed");
    assert_eq!(json["seq"], changed.seq);
    assert!(json["to"].is_string());
    let last_seq = past.last().unwrap().seq;
    // `since`: only the later events.
    let later: Vec<u64> = {
        let mut s = client
            .events(pb::EventsRequest {
                follow: false,
                since: Some(last_seq - 2),
            })
            .await
            .unwrap()
            .into_inner();
        let mut v = Vec::new();
        while let Some(e) = s.message().await.unwrap() {
            v.push(e.seq);
        }
        v
    };
    assert_eq!(later, [last_seq - 1, last_seq]);

    let mut live = client
        .events(pb::EventsRequest {
            follow: true,
            since: None,
        })
        .await
        .unwrap()
        .into_inner();
    // The past first...
    let mut seen = Vec::new();
    while seen.len() < past.len() {
        seen.push(
            timeout(DEADLINE, live.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        seen.iter().map(|e| e.seq).collect::<Vec<_>>(),
        past.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    // ...then what happens next.
    client
        .stop(pb::StopRequest {
            id: ID.into(),
            force: false,
        })
        .await
        .unwrap();
    let next = timeout(DEADLINE, live.message())
        .await
        .expect("a live event")
        .unwrap()
        .expect("stream open");
    assert_eq!(next.seq, last_seq + 1);
    assert_eq!(next.id.as_deref(), Some(ID));
    drop(live);

    // Reload refuses an invalid config, naming the file.
    let err = client.reload(pb::ReloadRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&*h.config_path.to_string_lossy()),
        "{}",
        err.message()
    );
    assert_eq!(get(&mut client, ID).await.unwrap().state, "stopped");

    // Health, for the manager and for the service.
    let channel = h.channel().await;
    for service in ["", "hsu.procman.v1.ProcessManager"] {
        assert_eq!(
            health(channel.clone(), service).await.unwrap(),
            ServingStatus::Serving as i32
        );
    }
    assert_eq!(
        health(channel, "no.such.Service").await.unwrap_err().code(),
        Code::NotFound
    );

    h.stop().await;
}

type AuthClient = ProcessManagerClient<
    InterceptedService<Channel, Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>>,
>;

fn with_authorization(channel: Channel, value: Option<&'static str>) -> AuthClient {
    ProcessManagerClient::with_interceptor(
        channel,
        Box::new(move |mut req: Request<()>| {
            if let Some(v) = value {
                req.metadata_mut()
                    .insert("authorization", v.parse().unwrap());
            }
            Ok(req)
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_shutdown() {
    let h = Harness::start(Some("s3cret")).await;
    let channel = h.channel().await;

    for value in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic s3cret"),
    ] {
        let err = with_authorization(channel.clone(), value)
            .list(pb::ListRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{value:?}");
    }
    assert_eq!(h.metrics.unauthorized.load(Ordering::Relaxed), 4);
    let mut client = with_authorization(channel.clone(), Some("Bearer s3cret"));
    let list = client.list(pb::ListRequest {}).await.unwrap().into_inner();
    assert_eq!(list.processes[0].id, ID);
    // Health stays open.
    assert_eq!(
        health(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving as i32
    );

    // Shutdown asks whoever runs the manager; health then says NOT_SERVING.
    client
        .shutdown(pb::ShutdownRequest {
            reason: "grpc test".into(),
            keep_processes: false,
        })
        .await
        .unwrap();
    let reason = timeout(DEADLINE, h.manager.shutdown_requested())
        .await
        .expect("shutdown requested");
    assert_eq!(reason, "grpc test");
    common::eventually("health NOT_SERVING", || {
        let channel = channel.clone();
        async move {
            (health(channel, "").await.ok()? == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;
    h.stop().await;
}

/// Through the real API server (`server::start`): gRPC beside the JSON API on the TCP
/// port and on `api.sock`, behind the server's guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_api_server() {
    let h = Harness::start(Some("s3cret")).await;
    let base = h.base.clone();
    let socket_path = base.join("api.sock");
    let server = hsu_api::server::start(
        h.state.clone(),
        hsu_api::ListenSettings {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            socket_path: socket_path.clone(),
            addr_file: base.join("api.addr"),
        },
    )
    .await
    .unwrap();
    let tcp = Channel::from_shared(format!("http://{}", server.local_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let unix = tonic::transport::Endpoint::from_static("http://api.sock")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = socket_path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    let before = h.metrics.grpc_requests.load(Ordering::Relaxed);
    for channel in [tcp.clone(), unix.clone()] {
        let err = with_authorization(channel.clone(), None)
            .list(pb::ListRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let mut client = with_authorization(channel.clone(), Some("Bearer s3cret"));
        let p = client
            .get(pb::GetRequest { id: ID.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.id, ID);
        let err = client
            .get(pb::GetRequest { id: "nope".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(
            health(channel.clone(), "").await.unwrap(),
            ServingStatus::Serving as i32
        );
        // A service the manager does not serve.
        let err = CoreServiceClient::with_interceptor(channel, |mut req: Request<()>| {
            req.metadata_mut()
                .insert("authorization", "Bearer s3cret".parse().unwrap());
            Ok(req)
        })
        .ping(core_pb::PingRequest {})
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    }
    // Counted once each, by the server's guard.
    assert_eq!(h.metrics.grpc_requests.load(Ordering::Relaxed) - before, 10);
    server.stop().await;
    h.stop().await;
}
