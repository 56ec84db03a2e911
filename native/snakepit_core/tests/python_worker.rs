//! Against a real Python worker: handshake, versions, token check, a call;
//! deadlines and cancellation reaching the Python tool.
//!
//! Needs the Python extension built into `priv/python` (`mix compile` does it;
//! `scripts/test.sh` runs it before these tests).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

// -- deadlines and cancellation ------------------------------------------------
//
// The showcase tools `slow_steps`, `slow_steps_async`, `slow_stream` and
// `slow_stream_async` write "started" to `marker_path` when their slow part
// begins, then "finished" or "cancelled" on the way out: the outside effect
// these tests poll (bounded) to see whether, and when, the worker stopped them.

/// Steps of `STEP_MS` that the slow tools are asked to do: 10 s of work.
const STEPS: u32 = 200;
const STEP_MS: u32 = 50;
/// How soon after the cancel the tool must have stopped; far below the 10 s
/// the work would take, far above what stopping it takes (one step).
const STOPS_WITHIN: Duration = Duration::from_secs(4);

struct Marker(PathBuf);

impl Marker {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Marker(std::env::temp_dir().join(format!(
            "snakepit-core-test-{}-{name}-{nanos}",
            std::process::id()
        )))
    }

    fn read(&self) -> Option<String> {
        std::fs::read_to_string(&self.0).ok()
    }

    /// Waits (polling, bounded by `limit`) until the marker says `expected`.
    async fn wait_for(&self, expected: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let seen = self.read();
            if seen.as_deref() == Some(expected) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "marker {:?} still {seen:?} after {limit:?}, expected {expected:?}",
                self.0
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn slow_request(tool: &str, marker: &Marker) -> ExecuteToolRequest {
    let arguments = serde_json::json!({
        "steps": STEPS,
        "step_ms": STEP_MS,
        "marker_path": marker.0.display().to_string(),
    });
    ExecuteToolRequest {
        tool_name: tool.into(),
        arguments_json: arguments.to_string().into_bytes(),
        ..Default::default()
    }
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

async fn assert_still_serving(client: &mut snakepit_core::client::WorkerClient) {
    let response = client
        .execute_tool(ExecuteToolRequest {
            tool_name: "add".into(),
            arguments_json: br#"{"a":1,"b":2}"#.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match response.outcome {
        Some(Outcome::Result(payload)) => assert_eq!(payload.data, b"3"),
        other => panic!("unexpected outcome {other:?}"),
    }
}

async fn unary_deadline_cancels(tool: &str) {
    let token = generate_token();
    let (_worker, port) = start_worker(&token).await;
    let mut client = connect(port, &token).await.expect("connect");
    let marker = Marker::new(tool);

    let started = Instant::now();
    let request = with_timeout(slow_request(tool, &marker), Duration::from_millis(500));
    let status = client.execute_tool(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the server ends the call before the client's own timer: {:?}",
        started.elapsed()
    );
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn unary_deadline_returns_deadline_exceeded_and_cancels_a_sync_tool() {
    unary_deadline_cancels("slow_steps").await;
}

#[tokio::test]
async fn unary_deadline_cancels_an_async_tool() {
    unary_deadline_cancels("slow_steps_async").await;
}

async fn dropped_unary_call_cancels(tool: &str) {
    let token = generate_token();
    let (_worker, port) = start_worker(&token).await;
    let mut client = connect(port, &token).await.expect("connect");
    let marker = Marker::new(tool);

    {
        // No deadline: only dropping the call can stop the tool.
        let call = client.execute_tool(slow_request(tool, &marker));
        tokio::pin!(call);
        tokio::select! {
            result = &mut call => panic!("the call ended by itself: {result:?}"),
            () = marker.wait_for("started", Duration::from_secs(10)) => {}
        }
    }
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn dropped_unary_call_cancels_a_sync_tool() {
    dropped_unary_call_cancels("slow_steps").await;
}

#[tokio::test]
async fn dropped_unary_call_cancels_an_async_tool() {
    dropped_unary_call_cancels("slow_steps_async").await;
}

#[tokio::test]
async fn unary_call_timed_out_by_the_client_cancels_the_tool() {
    let token = generate_token();
    let (_worker, port) = start_worker(&token).await;
    let mut client = connect(port, &token).await.expect("connect");
    let marker = Marker::new("client-timeout");

    // The client gives up on its own, without telling the server a deadline.
    let call = client.execute_tool(slow_request("slow_steps", &marker));
    let outcome = tokio::time::timeout(Duration::from_millis(1000), call).await;
    assert!(outcome.is_err(), "the call ended by itself: {outcome:?}");
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    assert_still_serving(&mut client).await;
}

async fn dropped_stream_cancels(tool: &str) {
    let token = generate_token();
    let (_worker, port) = start_worker(&token).await;
    let mut client = connect(port, &token).await.expect("connect");
    let marker = Marker::new(tool);

    let mut stream = client
        .execute_streaming_tool(slow_request(tool, &marker))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first chunk");
    assert_eq!(first.payload.unwrap().data, br#"{"started":true}"#);
    // The generator is now busy between its two yields, for 10 s.
    marker.wait_for("started", Duration::from_secs(10)).await;
    drop(stream);
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn dropped_stream_cancels_a_sync_generator_busy_between_yields() {
    dropped_stream_cancels("slow_stream").await;
}

#[tokio::test]
async fn dropped_stream_cancels_an_async_generator_busy_between_yields() {
    dropped_stream_cancels("slow_stream_async").await;
}

async fn stream_deadline_cancels(tool: &str) {
    let token = generate_token();
    let (_worker, port) = start_worker(&token).await;
    let mut client = connect(port, &token).await.expect("connect");
    let marker = Marker::new(tool);

    let started = Instant::now();
    let request = with_timeout(slow_request(tool, &marker), Duration::from_millis(800));
    let mut stream = client
        .execute_streaming_tool(request)
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first chunk");
    assert_eq!(first.payload.unwrap().data, br#"{"started":true}"#);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(800));
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn stream_deadline_ends_the_stream_and_cancels_a_sync_generator() {
    stream_deadline_cancels("slow_stream").await;
}

#[tokio::test]
async fn stream_deadline_ends_the_stream_and_cancels_an_async_generator() {
    stream_deadline_cancels("slow_stream_async").await;
}

#[tokio::test]
async fn the_deadline_is_visible_to_the_tool_and_calls_within_it_succeed() {
    let token = generate_token();
    let (_worker, port) = start_worker(&token).await;
    let mut client = connect(port, &token).await.expect("connect");

    let info = |response: snakepit_core::proto::ExecuteToolResponse| match response.outcome {
        Some(Outcome::Result(payload)) => {
            serde_json::from_slice::<serde_json::Value>(&payload.data).unwrap()
        }
        other => panic!("unexpected outcome {other:?}"),
    };
    let session_info = || ExecuteToolRequest {
        tool_name: "session_info".into(),
        ..Default::default()
    };
    let response = client
        .execute_tool(with_timeout(session_info(), Duration::from_secs(10)))
        .await
        .unwrap();
    let remaining = info(response.into_inner())["time_remaining"]
        .as_f64()
        .expect("a number");
    // 10 s, less the server's early margin and the trip.
    assert!((9.0..=10.0).contains(&remaining), "{remaining}");

    let response = client.execute_tool(session_info()).await.unwrap();
    assert!(info(response.into_inner())["time_remaining"].is_null());

    // A slow tool that finishes within its deadline is not disturbed.
    let marker = Marker::new("within-deadline");
    let mut request = slow_request("slow_steps", &marker);
    request.arguments_json = serde_json::json!({
        "steps": 3, "step_ms": 20, "marker_path": marker.0.display().to_string()
    })
    .to_string()
    .into_bytes();
    let response = client
        .execute_tool(with_timeout(request, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(info(response.into_inner()), serde_json::json!({"steps": 3}));
    assert_eq!(marker.read().as_deref(), Some("finished"));
}
