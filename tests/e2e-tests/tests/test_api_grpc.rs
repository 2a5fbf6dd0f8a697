//! gRPC on the API's TCP port (SPEC §7): `hsu.procman.v1.ProcessManager` over h2c with
//! the same operations and answers as the JSON API, and `grpc.health.v1.Health`.

use e2e_tests::*;
use hsu_api::grpc::proto::procman::v1 as pb;
use hsu_api::grpc::ProcessManagerClient;
use std::time::Duration;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const STOP_TIMEOUT: Duration = Duration::from_secs(20);

fn get(client: &mut ProcessManagerClient<Channel>, id: &str) -> Result<pb::Process, tonic::Status> {
    block_on(client.get(pb::GetRequest { id: id.into() })).map(tonic::Response::into_inner)
}

/// Polls Get until `id` runs with a live PID; returns the PID.
fn wait_running(client: &mut ProcessManagerClient<Channel>, id: &str) -> u32 {
    wait_until(&format!("gRPC Get {id}: running"), SHORT, || {
        let p = get(client, id).ok()?;
        p.pid.filter(|&pid| p.state == "running" && pid_alive(pid))
    })
}

#[test]
fn grpc_on_the_same_port() {
    let config = single_process_config(
        "svc",
        &["--run-duration", "0", "--print-every", "50"],
        "graceful_timeout: 5s\nrestart_policy: on_failure",
    );
    let mut pm = ProcessManager::start("e2e-test-api-grpc", &config);
    let api = pm.api();
    let pid = api.wait_running("svc", SHORT);
    let channel = grpc_channel(&pm.api_addr());
    let mut client = ProcessManagerClient::new(channel.clone());

    // Health of the manager and of its service.
    let mut health = HealthClient::new(channel);
    for service in ["", "hsu.procman.v1.ProcessManager"] {
        let status = block_on(health.check(HealthCheckRequest {
            service: service.into(),
        }))
        .unwrap_or_else(|e| panic!("grpc.health.v1 Check {service:?}: {e}"))
        .into_inner()
        .status;
        assert_eq!(status, ServingStatus::Serving as i32, "Check {service:?}");
    }

    // List and Get agree with the JSON API.
    let list = block_on(client.list(pb::ListRequest {}))
        .unwrap_or_else(|e| panic!("List: {e}"))
        .into_inner();
    assert_eq!(list.processes.len(), 1, "{list:?}");
    let p = &list.processes[0];
    assert_eq!(
        (p.id.as_str(), p.r#type.as_str(), p.state.as_str(), p.pid),
        ("svc", "standard_managed", "running", Some(pid)),
        "{p:?}"
    );
    let got = get(&mut client, "svc").unwrap_or_else(|e| panic!("Get svc: {e}"));
    let json = api.process("svc");
    assert_eq!(got.pid, Some(pid));
    assert_eq!(got.circuit, json["circuit"].as_str().unwrap());
    assert_eq!(got.started_at.as_deref(), json["started_at"].as_str());
    assert_eq!(
        got.health.as_ref().map(|h| h.status.as_str()),
        json["health"]["status"].as_str()
    );
    let limits: serde_json::Value =
        serde_json::from_str(&got.limits_json).expect("limits_json is JSON");
    assert_eq!(limits, json["limits"]);
    let missing = get(&mut client, "nope").expect_err("Get of an unknown id");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    // Stop: answered once the tree is gone.
    let stopped = block_on(client.stop(pb::StopRequest {
        id: "svc".into(),
        force: false,
    }))
    .unwrap_or_else(|e| panic!("Stop: {e}"))
    .into_inner();
    assert_eq!(stopped.action, "stop");
    assert_eq!(
        stopped.process.as_ref().map(|p| p.state.as_str()),
        Some("stopped"),
        "{stopped:?}"
    );
    assert!(
        !pid_alive(pid),
        "svc ({pid}) alive after gRPC Stop answered"
    );
    assert_eq!(tree_of(&pm, "svc"), Vec::<u32>::new());
    assert_eq!(api.process("svc")["state"], "stopped");

    // Start and Restart: new processes each time.
    let started = block_on(client.start(pb::ProcessRequest { id: "svc".into() }))
        .unwrap_or_else(|e| panic!("Start: {e}"))
        .into_inner();
    assert_eq!(started.action, "start");
    let pid2 = wait_running(&mut client, "svc");
    assert_ne!(pid2, pid);
    let restarted = block_on(client.restart(pb::RestartRequest {
        id: "svc".into(),
        force: false,
    }))
    .unwrap_or_else(|e| panic!("Restart: {e}"))
    .into_inner();
    assert_eq!(restarted.action, "restart");
    let pid3 = wait_running(&mut client, "svc");
    assert!(
        pid3 != pid2 && !pid_alive(pid2),
        "restart: {pid2} -> {pid3}"
    );
    let unknown = block_on(client.stop(pb::StopRequest {
        id: "nope".into(),
        force: false,
    }))
    .expect_err("Stop of an unknown id");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Events (not following): the whole journal, oldest first, as the JSON API has it.
    let events = block_on(async {
        let mut stream = client
            .events(pb::EventsRequest {
                follow: false,
                since: None,
            })
            .await?
            .into_inner();
        let mut all = Vec::new();
        while let Some(e) = stream.message().await? {
            all.push(e);
        }
        Ok::<_, tonic::Status>(all)
    })
    .unwrap_or_else(|e| panic!("Events: {e}"));
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "Events seq"
    );
    for e in &events {
        let parsed =
            Event::parse(&e.json).unwrap_or_else(|err| panic!("Event.json: {err}: {}", e.json));
        assert_eq!(
            (
                parsed.seq,
                parsed.kind.as_str(),
                parsed.id.as_deref(),
                parsed.ts.as_str()
            ),
            (e.seq, e.kind.as_str(), e.id.as_deref(), e.ts.as_str()),
            "Event fields disagree with its json"
        );
    }
    let http_events = api.events();
    assert!(
        events.len() <= http_events.len()
            && events
                .iter()
                .zip(&http_events)
                .all(|(g, h)| g.seq == h.seq && g.kind == h.kind),
        "gRPC Events and GET /api/v1/events disagree"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "state_changed" && e.id.as_deref() == Some("svc")),
        "no state_changed of svc in gRPC Events"
    );

    // Logs: the last lines of a stream.
    wait_for("3 lines on stdout", SHORT, || {
        api.get("/api/v1/processes/svc/logs?tail=3")
            .text()
            .lines()
            .count()
            == 3
    });
    let text = block_on(async {
        let mut stream = client
            .logs(pb::LogsRequest {
                id: "svc".into(),
                stream: "stdout".into(),
                tail: Some(3),
                follow: false,
            })
            .await?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.data);
        }
        Ok::<_, tonic::Status>(String::from_utf8_lossy(&data).into_owned())
    })
    .unwrap_or_else(|e| panic!("Logs: {e}"));
    assert_eq!(text.lines().count(), 3, "Logs tail 3:\n{text}");
    assert!(text.lines().all(|l| l.contains("stdout line ")), "{text}");

    pm.shutdown_cleanly(STOP_TIMEOUT);
}
