//! Against a real Python worker: handshake, versions, token check, a call.
//!
//! Needs the Python extension built into `priv/python` (`mix compile` does it;
//! `scripts/test.sh` runs it before these tests).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use snakepit_core::auth::{generate_token, TOKEN_ENV_VAR};
use snakepit_core::client::connect;
use snakepit_core::process::{launch, EventSink, WorkerEvent, WorkerProcess, WorkerSpec};
use snakepit_core::proto::worker_service_client::WorkerServiceClient;
use snakepit_core::proto::{execute_tool_response::Outcome, ExecuteToolRequest, GetVersionRequest};
use tokio::sync::mpsc;

fn python_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../priv/python");
    let built = std::fs::read_dir(dir.join("snakepit_bridge"))
        .expect("priv/python/snakepit_bridge")
        .flatten()
        .any(|entry| entry.file_name().to_string_lossy().starts_with("_native"));
    assert!(
        built,
        "the Python extension is not built: run `mix compile` first"
    );
    dir
}

async fn start_worker(token: &str) -> (WorkerProcess, u16) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink: EventSink = Arc::new(move |event| {
        let _ = tx.send(event);
    });
    let spec = WorkerSpec {
        worker_id: "core-test".into(),
        executable: "python3".into(),
        args: [
            "-m",
            "snakepit_bridge.worker",
            "--adapter",
            "snakepit_bridge.adapters.showcase.ShowcaseAdapter",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![
            ("PYTHONPATH".into(), python_dir().display().to_string()),
            (TOKEN_ENV_VAR.into(), token.into()),
        ],
        cwd: None,
        start_timeout: Duration::from_secs(30),
    };
    let worker = launch(spec, sink).expect("spawn python3");
    loop {
        match rx.recv().await.expect("worker event") {
            WorkerEvent::Ready { port } => return (worker, port),
            WorkerEvent::StartFailed { message } => panic!("worker failed: {message}"),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn worker_answers_with_the_token_and_refuses_without_it() {
    let token = generate_token();
    let (_worker, port) = start_worker(&token).await;

    let mut client = connect(port, &token).await.expect("connect");
    let version = client
        .get_version(GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.protocol_version, "1");
    assert!(version.runtime_version.starts_with("CPython 3."));

    let response = client
        .execute_tool(ExecuteToolRequest {
            tool_name: "add".into(),
            arguments_json: br#"{"a":40,"b":2}"#.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match response.outcome {
        Some(Outcome::Result(payload)) => assert_eq!(payload.data, b"42"),
        other => panic!("unexpected outcome {other:?}"),
    }

    let mut wrong = connect(port, &generate_token()).await.expect("connect");
    let status = wrong.get_version(GetVersionRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = WorkerServiceClient::new(channel);
    let status = anonymous
        .get_version(GetVersionRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn worker_exits_when_its_handle_is_dropped() {
    let (worker, port) = start_worker(&generate_token()).await;
    let pid = worker.os_pid();
    drop(worker);
    // The kill is asynchronous; wait (bounded) for the port to close.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "worker {pid} still serving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
