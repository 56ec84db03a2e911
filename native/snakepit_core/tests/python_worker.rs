//! Against a real Python worker: handshake, versions, token check, a call;
//! deadlines and cancellation reaching the Python tool; duplex calls.
//!
//! Needs the Python extension built into `priv/python` (`mix compile` does it;
//! `scripts/test.sh` runs it before these tests).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use snakepit_core::address::WorkerAddress;
use snakepit_core::auth::{generate_token, TOKEN_ENV_VAR};
use snakepit_core::client::{connect, connect_abstract, WorkerClient};
use snakepit_core::process::{launch, EventSink, WorkerEvent, WorkerProcess, WorkerSpec};
use snakepit_core::proto::worker_service_client::WorkerServiceClient;
use snakepit_core::proto::{
    duplex_request, execute_tool_response::Outcome, DuplexRequest, ExecuteToolRequest,
    GetVersionRequest, Payload, PayloadKind, ToolChunk,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

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

async fn start_worker(token: &str) -> (WorkerProcess, WorkerAddress) {
    start_worker_on(token, "tcp").await
}

/// A showcase worker serving over `transport` (`"tcp"` or `"unix"`).
async fn start_worker_on(token: &str, transport: &str) -> (WorkerProcess, WorkerAddress) {
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
            "--transport",
            transport,
        ]
        .map(String::from)
        .to_vec(),
        env: vec![
            ("PYTHONPATH".into(), python_dir().display().to_string()),
            (TOKEN_ENV_VAR.into(), token.into()),
        ],
        cwd: None,
        start_timeout: Duration::from_secs(30),
        output_limits: Default::default(),
    };
    let worker = launch(spec, sink).expect("spawn python3");
    loop {
        match rx.recv().await.expect("worker event") {
            WorkerEvent::Ready { address } => return (worker, address),
            WorkerEvent::StartFailed { message } => panic!("worker failed: {message}"),
            _ => continue,
        }
    }
}

/// Calls the showcase tool `add` with 40 and 2 and checks the answer.
async fn assert_adds(client: &mut WorkerClient) {
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
        Some(Outcome::Result(payload)) => assert_eq!(payload.data, &b"42"[..]),
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[tokio::test]
async fn worker_answers_with_the_token_and_refuses_without_it() {
    let token = generate_token();
    let (_worker, address) = start_worker(&token).await;

    let mut client = connect(&address, &token).await.expect("connect");
    let version = client
        .get_version(GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.protocol_version, "1");
    assert!(version.runtime_version.starts_with("CPython 3."));

    assert_adds(&mut client).await;

    let mut wrong = connect(&address, &generate_token()).await.expect("connect");
    let status = wrong.get_version(GetVersionRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let port = address.port().expect("a TCP worker");
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
    let (worker, address) = start_worker(&generate_token()).await;
    let port = address.port().expect("a TCP worker");
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

#[tokio::test]
async fn worker_serves_on_an_abstract_unix_socket() {
    let token = generate_token();
    let (worker, address) = start_worker_on(&token, "unix").await;
    let WorkerAddress::Unix(name) = &address else {
        panic!("expected a Unix socket, got {address}");
    };
    assert!(name.starts_with("snakepit-"), "{name}");

    let mut client = connect(&address, &token).await.expect("connect");
    assert_adds(&mut client).await;
    let mut stream = client
        .execute_streaming_tool(ExecuteToolRequest {
            tool_name: "stream_numbers".into(),
            arguments_json: br#"{"count":500}"#.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        if !chunk.is_final {
            chunks += 1;
        }
    }
    assert_eq!(chunks, 500);

    let mut wrong = connect(&address, &generate_token()).await.expect("connect");
    let status = wrong.get_version(GetVersionRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // The socket has no file: it is gone as soon as the worker is.
    let pid = worker.os_pid();
    drop(worker);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect_abstract(name).is_ok() {
        assert!(Instant::now() < deadline, "worker {pid} still serving");
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

async fn assert_still_serving(client: &mut WorkerClient) {
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
        Some(Outcome::Result(payload)) => assert_eq!(payload.data, &b"3"[..]),
        other => panic!("unexpected outcome {other:?}"),
    }
}

async fn unary_deadline_cancels(tool: &str) {
    let token = generate_token();
    let (_worker, address) = start_worker(&token).await;
    let mut client = connect(&address, &token).await.expect("connect");
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
    let (_worker, address) = start_worker(&token).await;
    let mut client = connect(&address, &token).await.expect("connect");
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
    let (_worker, address) = start_worker(&token).await;
    let mut client = connect(&address, &token).await.expect("connect");
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
    let (_worker, address) = start_worker(&token).await;
    let mut client = connect(&address, &token).await.expect("connect");
    let marker = Marker::new(tool);

    let mut stream = client
        .execute_streaming_tool(slow_request(tool, &marker))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first chunk");
    assert_eq!(first.payload.unwrap().data, &br#"{"started":true}"#[..]);
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
    let (_worker, address) = start_worker(&token).await;
    let mut client = connect(&address, &token).await.expect("connect");
    let marker = Marker::new(tool);

    let started = Instant::now();
    let request = with_timeout(slow_request(tool, &marker), Duration::from_millis(800));
    let mut stream = client
        .execute_streaming_tool(request)
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first chunk");
    assert_eq!(first.payload.unwrap().data, &br#"{"started":true}"#[..]);
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
    let (_worker, address) = start_worker(&token).await;
    let mut client = connect(&address, &token).await.expect("connect");

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

// -- duplex calls (ExecuteDuplexTool) ------------------------------------------
//
// The client streams inputs, the tool streams outputs. The showcase's duplex
// tools: `echo_inputs` / `async_echo_inputs` (one output per JSON input, as
// it arrives; a marker file as above; `delay_ms` makes the sync one a slow
// consumer), `frame_rms` (raw 16-bit PCM frames in, levels out) and
// `sum_inputs` (one output, after the end of input).

/// Bound on any single wait for an output that should come promptly.
const OUTPUT_WITHIN: Duration = Duration::from_secs(10);

fn start_message(tool: &str, arguments: serde_json::Value) -> DuplexRequest {
    DuplexRequest {
        message: Some(duplex_request::Message::Start(ExecuteToolRequest {
            tool_name: tool.into(),
            arguments_json: arguments.to_string().into_bytes(),
            ..Default::default()
        })),
    }
}

fn json_input(value: serde_json::Value) -> DuplexRequest {
    DuplexRequest {
        message: Some(duplex_request::Message::Input(Payload {
            kind: PayloadKind::Json as i32,
            data: value.to_string().into_bytes().into(),
        })),
    }
}

fn raw_input(data: Vec<u8>) -> DuplexRequest {
    DuplexRequest {
        message: Some(duplex_request::Message::Input(Payload {
            kind: PayloadKind::Raw as i32,
            data: data.into(),
        })),
    }
}

/// The client's side of a duplex call. Dropping it cancels the call, as a
/// client should when it gives up: with an RST_STREAM, not by ending its
/// inputs (dropping them alone is a half-close, the normal end of input; and
/// dropping only the outputs tells the server nothing while the request side
/// is open).
struct DuplexCall {
    /// Dropping every clone half-closes the client's side.
    inputs: Option<mpsc::Sender<DuplexRequest>>,
    outputs: tonic::Streaming<ToolChunk>,
    /// Resets the HTTP/2 stream, unless the request side has ended already.
    cancel: Option<tonic::CancellationHandle>,
}

impl Drop for DuplexCall {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel.cancel();
        }
    }
}

impl DuplexCall {
    /// Starts a call whose first message is `first` (normally a
    /// `start_message`). Later messages go out one at a time, as the
    /// transport takes them, so a client held back by flow control waits.
    async fn open(
        client: &mut WorkerClient,
        first: DuplexRequest,
        timeout: Option<Duration>,
    ) -> Result<Self, tonic::Status> {
        let (inputs, requests) = mpsc::channel(1);
        inputs.send(first).await.unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(requests));
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let cancel = request.cancellation_handle();
        let outputs = client.execute_duplex_tool(request).await?.into_inner();
        Ok(Self {
            inputs: Some(inputs),
            outputs,
            cancel: Some(cancel),
        })
    }

    async fn start(client: &mut WorkerClient, tool: &str, arguments: serde_json::Value) -> Self {
        Self::open(client, start_message(tool, arguments), None)
            .await
            .expect("the duplex call starts")
    }

    fn sender(&self) -> mpsc::Sender<DuplexRequest> {
        self.inputs.clone().expect("not half-closed")
    }

    async fn send(&self, message: DuplexRequest) {
        self.sender()
            .send(message)
            .await
            .expect("the call takes inputs");
    }

    fn half_close(&mut self) {
        self.inputs = None;
    }

    /// The next output (`None` at the end), within `OUTPUT_WITHIN`.
    async fn next(&mut self) -> Result<Option<ToolChunk>, tonic::Status> {
        tokio::time::timeout(OUTPUT_WITHIN, self.outputs.message())
            .await
            .unwrap_or_else(|_| panic!("no output within {OUTPUT_WITHIN:?}"))
    }

    /// The next output's JSON value; fails on an error chunk or the end.
    async fn next_json(&mut self) -> serde_json::Value {
        let chunk = self.next().await.unwrap().expect("one more output");
        assert_eq!(chunk.error, None);
        let payload = chunk.payload.expect("a payload");
        assert_eq!(payload.kind, PayloadKind::Json as i32);
        serde_json::from_slice(&payload.data).unwrap()
    }

    async fn assert_ended(&mut self) {
        let end = self.next().await.unwrap();
        assert!(end.is_none(), "expected the end of the outputs: {end:?}");
    }
}

async fn client_with_worker() -> (WorkerProcess, WorkerClient) {
    let token = generate_token();
    let (worker, address) = start_worker(&token).await;
    let client = connect(&address, &token).await.expect("connect");
    (worker, client)
}

fn numbered_input(i: usize) -> serde_json::Value {
    if i.is_multiple_of(2) {
        serde_json::json!(i)
    } else {
        serde_json::json!({"i": i, "text": format!("input {i}")})
    }
}

#[tokio::test]
async fn duplex_outputs_follow_the_inputs_in_order() {
    let (_worker, mut client) = client_with_worker().await;
    let mut call = DuplexCall::start(&mut client, "echo_inputs", serde_json::json!({})).await;
    let inputs = call.sender();
    call.half_close(); // once the feeder is done
    tokio::spawn(async move {
        for i in 0..100 {
            inputs.send(json_input(numbered_input(i))).await.unwrap();
        }
    });
    for i in 0..100 {
        assert_eq!(
            call.next_json().await,
            serde_json::json!({"index": i, "input": numbered_input(i)})
        );
    }
    call.assert_ended().await;
}

/// Deterministic pseudo-random 16-bit samples.
fn pcm_frames(count: usize) -> Vec<Vec<i16>> {
    let mut seed: u32 = 0x5eed;
    (0..count)
        .map(|i| {
            let len = if i == 3 { 0 } else { (i * 37) % 480 + 1 };
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 16) as u16 as i16
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn duplex_frame_rms_measures_raw_pcm_frames() {
    let (_worker, mut client) = client_with_worker().await;
    let frames = pcm_frames(24);
    let mut call = DuplexCall::start(&mut client, "frame_rms", serde_json::json!({})).await;
    let inputs = call.sender();
    call.half_close();
    let sent = frames.clone();
    tokio::spawn(async move {
        for frame in sent {
            let bytes = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
            inputs.send(raw_input(bytes)).await.unwrap();
        }
    });
    for (index, frame) in frames.iter().enumerate() {
        let output = call.next_json().await;
        let sum_of_squares: i64 = frame.iter().map(|&s| i64::from(s) * i64::from(s)).sum();
        let expected = if frame.is_empty() {
            0.0
        } else {
            (sum_of_squares as f64 / frame.len() as f64).sqrt()
        };
        assert_eq!(output["frame"], index);
        assert_eq!(output["samples"], frame.len());
        let rms = output["rms"].as_f64().expect("a number");
        assert!(
            (rms - expected).abs() <= 1e-9 * expected.max(1.0),
            "frame {index}: rms {rms}, expected {expected}"
        );
    }
    call.assert_ended().await;
}

/// Send one input, wait for its output, send the next: the outputs come as
/// the inputs do, long before the client half-closes.
async fn duplex_interleaves(tool: &str) {
    let (_worker, mut client) = client_with_worker().await;
    let mut call = DuplexCall::start(&mut client, tool, serde_json::json!({})).await;
    for i in 0..20 {
        call.send(json_input(numbered_input(i))).await;
        assert_eq!(
            call.next_json().await,
            serde_json::json!({"index": i, "input": numbered_input(i)})
        );
    }
    call.half_close();
    call.assert_ended().await;
}

#[tokio::test]
async fn duplex_sync_generator_answers_each_input_before_the_half_close() {
    duplex_interleaves("echo_inputs").await;
}

#[tokio::test]
async fn duplex_async_generator_answers_each_input_before_the_half_close() {
    duplex_interleaves("async_echo_inputs").await;
}

#[tokio::test]
async fn duplex_tool_sees_the_end_of_input_when_the_client_half_closes() {
    let (_worker, mut client) = client_with_worker().await;
    let mut call = DuplexCall::start(&mut client, "sum_inputs", serde_json::json!({})).await;
    for value in [1.5, 2.0, -0.5] {
        call.send(json_input(serde_json::json!(value))).await;
    }
    // Nothing until the end of input.
    let early = tokio::time::timeout(Duration::from_millis(300), call.outputs.message()).await;
    assert!(early.is_err(), "an output before the half-close: {early:?}");
    call.half_close();
    let chunk = call.next().await.unwrap().expect("the sum");
    assert!(chunk.is_final);
    let sum: serde_json::Value = serde_json::from_slice(&chunk.payload.unwrap().data).unwrap();
    assert_eq!(sum, serde_json::json!({"sum": 3.0}));
    call.assert_ended().await;
}

#[tokio::test]
async fn duplex_client_is_held_back_while_the_tool_consumes_slowly() {
    const INPUTS: usize = 64;
    let (_worker, mut client) = client_with_worker().await;
    // Takes an input every 200 ms; each input is 256 KiB (16 MiB in all).
    let mut call = DuplexCall::start(
        &mut client,
        "echo_inputs",
        serde_json::json!({"delay_ms": 200}),
    )
    .await;
    let inputs = call.sender();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        let big = "x".repeat(256 * 1024);
        for i in 0..INPUTS {
            let input = json_input(serde_json::json!({"i": i, "pad": big}));
            if inputs.send(input).await.is_err() {
                return;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let reading = tokio::spawn(async move {
        let mut received = 0usize;
        while let Ok(Some(_)) = call.outputs.message().await {
            received += 1;
        }
        received
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The tool has taken about 8 inputs. What the client could send on top
    // is bounded by the worker's input buffer (8), HTTP/2 windows (~1 MiB)
    // and the client's own buffers: a handful, not the 64 there are.
    let sent_so_far = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent_so_far < 40,
        "the client sent {sent_so_far} inputs of {INPUTS}: no backpressure"
    );
    reading.abort();
}

/// The caller cancels the call (RST_STREAM) while the tool waits for its
/// next input.
async fn cancelled_duplex_call_cancels(tool: &str) {
    let (_worker, mut client) = client_with_worker().await;
    let marker = Marker::new(tool);
    let arguments = serde_json::json!({"marker_path": marker.0.display().to_string()});
    let mut call = DuplexCall::start(&mut client, tool, arguments).await;
    call.send(json_input(serde_json::json!("first"))).await;
    assert_eq!(
        call.next_json().await,
        serde_json::json!({"index": 0, "input": "first"})
    );
    drop(call);
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn dropped_duplex_call_cancels_a_sync_tool_waiting_for_input() {
    cancelled_duplex_call_cancels("echo_inputs").await;
}

#[tokio::test]
async fn dropped_duplex_call_cancels_an_async_tool_waiting_for_input() {
    cancelled_duplex_call_cancels("async_echo_inputs").await;
}

/// The caller goes away for good while the tool waits for its next input:
/// its connection closes with the call in flight (the client runs on a
/// runtime of its own, which is shut down).
async fn lost_duplex_caller_cancels(tool: &'static str) {
    let token = generate_token();
    let (_worker, address) = start_worker(&token).await;
    let marker = Marker::new(tool);
    let arguments = serde_json::json!({"marker_path": marker.0.display().to_string()});

    let caller = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (answered, first_output) = tokio::sync::oneshot::channel();
    let caller_token = token.clone();
    let caller_address = address.clone();
    caller.spawn(async move {
        let mut client = connect(&caller_address, &caller_token)
            .await
            .expect("connect");
        let mut call = DuplexCall::start(&mut client, tool, arguments).await;
        call.send(json_input(serde_json::json!("first"))).await;
        let _ = answered.send(call.next_json().await);
        // Keeps the call open until the runtime goes (and never cancels it).
        std::future::pending::<()>().await;
        drop(call);
    });
    assert_eq!(
        first_output.await.expect("the caller got an output"),
        serde_json::json!({"index": 0, "input": "first"})
    );
    caller.shutdown_background();
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    let mut client = connect(&address, &token).await.expect("connect");
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn lost_duplex_caller_cancels_a_sync_tool_waiting_for_input() {
    lost_duplex_caller_cancels("echo_inputs").await;
}

#[tokio::test]
async fn lost_duplex_caller_cancels_an_async_tool_waiting_for_input() {
    lost_duplex_caller_cancels("async_echo_inputs").await;
}

async fn duplex_deadline_cancels(tool: &str) {
    let (_worker, mut client) = client_with_worker().await;
    let marker = Marker::new(tool);
    let arguments = serde_json::json!({"marker_path": marker.0.display().to_string()});
    let started = Instant::now();
    let mut call = DuplexCall::open(
        &mut client,
        start_message(tool, arguments),
        Some(Duration::from_millis(800)),
    )
    .await
    .unwrap();
    call.send(json_input(serde_json::json!(1))).await;
    assert_eq!(
        call.next_json().await,
        serde_json::json!({"index": 0, "input": 1})
    );
    // No more inputs, no half-close: the tool waits until the deadline.
    let status = call.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(800));
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn duplex_deadline_ends_the_call_and_cancels_a_sync_tool() {
    duplex_deadline_cancels("echo_inputs").await;
}

#[tokio::test]
async fn duplex_deadline_ends_the_call_and_cancels_an_async_tool() {
    duplex_deadline_cancels("async_echo_inputs").await;
}

#[tokio::test]
async fn duplex_call_must_start_with_start() {
    let (_worker, mut client) = client_with_worker().await;
    let first_is_input =
        DuplexCall::open(&mut client, json_input(serde_json::json!(1)), None).await;
    let Err(status) = first_is_input else {
        panic!("a duplex call starting with an input was accepted");
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("`start`"), "{status:?}");

    // A request stream without any message.
    let (inputs, requests) = mpsc::channel::<DuplexRequest>(1);
    drop(inputs);
    let Err(status) = client
        .execute_duplex_tool(ReceiverStream::new(requests))
        .await
    else {
        panic!("a duplex call without `start` was accepted");
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn duplex_call_breaking_the_protocol_midway_fails_and_cancels_the_tool() {
    let (_worker, mut client) = client_with_worker().await;
    let marker = Marker::new("protocol");
    let arguments = serde_json::json!({"marker_path": marker.0.display().to_string()});
    let mut call = DuplexCall::start(&mut client, "echo_inputs", arguments.clone()).await;
    call.send(json_input(serde_json::json!(1))).await;
    assert_eq!(call.next_json().await["index"], 0);
    call.send(start_message("echo_inputs", arguments)).await;
    let status = match call.next().await {
        Ok(Some(chunk)) => panic!("unexpected output {chunk:?}"),
        Ok(None) => panic!("the call ended without an error"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    marker.wait_for("cancelled", STOPS_WITHIN).await;
}

#[tokio::test]
async fn duplex_errors_arrive_as_error_chunks() {
    let (_worker, mut client) = client_with_worker().await;
    let error_of = |chunk: ToolChunk| {
        assert!(chunk.is_final);
        chunk.error.expect("an error chunk")
    };

    // A tool without an `inputs` parameter.
    let mut call = DuplexCall::start(&mut client, "stream_numbers", serde_json::json!({})).await;
    let error = error_of(call.next().await.unwrap().expect("a chunk"));
    assert_eq!(
        (error.category.as_str(), error.error_type.as_str()),
        ("validation", "NotDuplexTool")
    );
    call.assert_ended().await;

    // An input that is not JSON.
    let mut call = DuplexCall::start(&mut client, "sum_inputs", serde_json::json!({})).await;
    call.send(DuplexRequest {
        message: Some(duplex_request::Message::Input(Payload {
            kind: PayloadKind::Json as i32,
            data: bytes::Bytes::from_static(b"{not json"),
        })),
    })
    .await;
    let error = error_of(call.next().await.unwrap().expect("a chunk"));
    assert_eq!(
        (error.category.as_str(), error.error_type.as_str()),
        ("validation", "InvalidInput")
    );
    call.assert_ended().await;
}

// -- the bridge's Execute and ExecuteStream, against a real worker --

/// Lends one worker to every checkout and counts the slots out.
struct OneWorker {
    client: WorkerClient,
    out: Arc<std::sync::atomic::AtomicUsize>,
    checkouts: Arc<std::sync::Mutex<Vec<snakepit_core::bridge::CheckoutRequest>>>,
}

/// A lent slot: counted out while it lives.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl snakepit_core::bridge::PoolHost for OneWorker {
    fn checkout(
        &self,
        request: snakepit_core::bridge::CheckoutRequest,
    ) -> snakepit_core::bridge::Checkout {
        self.checkouts.lock().unwrap().push(request.clone());
        if request.pool != "default" {
            return Box::pin(std::future::ready(Err(
                snakepit_core::bridge::pools::unknown_pool(&request.pool),
            )));
        }
        self.out.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let lent = snakepit_core::bridge::Lent {
            client: self.client.clone(),
            worker_id: "core-test".into(),
            slot: Box::new(Slot(self.out.clone())),
        };
        Box::pin(std::future::ready(Ok(lent)))
    }

    fn pools(&self) -> snakepit_core::bridge::PoolList {
        let pools = vec![
            snakepit_core::bridge::PoolEntry {
                name: "default".into(),
                size: 1,
            },
            snakepit_core::bridge::PoolEntry {
                name: "gone".into(),
                size: 2,
            },
        ];
        Box::pin(std::future::ready(Ok(pools)))
    }
}

struct OutsideNode {
    _worker: WorkerProcess,
    _server: snakepit_core::bridge::BridgeServer,
    client: snakepit_core::bridge::BridgeClient,
    out: Arc<std::sync::atomic::AtomicUsize>,
    checkouts: Arc<std::sync::Mutex<Vec<snakepit_core::bridge::CheckoutRequest>>>,
}

impl OutsideNode {
    async fn start() -> OutsideNode {
        OutsideNode::start_with(|_| {}).await
    }

    async fn start_with(
        configure: impl FnOnce(&mut snakepit_core::bridge::BridgeConfig),
    ) -> OutsideNode {
        let token = generate_token();
        let (worker, address) = start_worker(&token).await;
        let out = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let checkouts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let pools = OneWorker {
            client: connect(&address, &token).await.expect("connect"),
            out: out.clone(),
            checkouts: checkouts.clone(),
        };
        let store = snakepit_core::session::Store::new(Default::default());
        let mut config = snakepit_core::bridge::BridgeConfig::new(token.clone());
        configure(&mut config);
        let server = snakepit_core::bridge::serve(
            config,
            store,
            Arc::new(snakepit_core::bridge::NoTools),
            Arc::new(pools),
        )
        .await
        .expect("serve");
        let client = snakepit_core::bridge::connect_bridge(&server.address().to_string(), &token)
            .await
            .expect("connect to the bridge");
        OutsideNode {
            _worker: worker,
            _server: server,
            client,
            out,
            checkouts,
        }
    }

    fn slots_out(&self) -> usize {
        self.out.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn outside_request(
    tool: &str,
    parameters: &[(&str, &str)],
) -> snakepit_core::proto::ExecuteRequest {
    snakepit_core::proto::ExecuteRequest {
        tool_name: tool.into(),
        parameters: parameters
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_outside_client_runs_a_tool_through_a_lent_worker() {
    let mut node = OutsideNode::start().await;
    let response = node
        .client
        .execute(outside_request("add", &[("a", "40"), ("b", "2")]))
        .await
        .expect("execute")
        .into_inner();
    let Some(snakepit_core::proto::execute_response::Outcome::Result(payload)) = response.outcome
    else {
        panic!("no result: {response:?}")
    };
    assert_eq!(&payload.data[..], b"42");
    assert_eq!(response.worker_id, "core-test");
    assert_eq!(node.slots_out(), 0, "the slot went back");

    // The tool's own failure is in the answer, with its Python type.
    let response = node
        .client
        .execute(outside_request("error_demo", &[]))
        .await
        .expect("execute")
        .into_inner();
    let Some(snakepit_core::proto::execute_response::Outcome::Error(error)) = response.outcome
    else {
        panic!("no error: {response:?}")
    };
    assert_eq!(
        (error.category.as_str(), error.error_type.as_str()),
        ("python", "ValueError")
    );

    // Malformed JSON is refused before any worker is touched.
    let before = node.checkouts.lock().unwrap().len();
    let status = node
        .client
        .execute(outside_request("add", &[("a", "{oops"), ("b", "2")]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        snakepit_core::bridge::error_reason(&status),
        Some("invalid_parameter")
    );
    assert!(status.message().contains("\"a\""), "{}", status.message());
    assert_eq!(node.checkouts.lock().unwrap().len(), before);

    let mut elsewhere = outside_request("add", &[("a", "1"), ("b", "2")]);
    elsewhere.pool = "gpu".into();
    let status = node
        .client
        .execute(elsewhere)
        .await
        .expect_err("unknown pool");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        snakepit_core::bridge::error_reason(&status),
        Some("unknown_pool")
    );
}

#[tokio::test]
async fn an_outside_stream_carries_the_final_metadata() {
    let mut node = OutsideNode::start().await;
    let mut stream = node
        .client
        .execute_stream(outside_request("stream_numbers", &[("count", "3")]))
        .await
        .expect("open")
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        chunks.push(chunk);
    }
    // Three chunks, then the synthetic final one (the tool marks none).
    assert_eq!(chunks.len(), 4);
    for (i, chunk) in chunks[..3].iter().enumerate() {
        let data = &chunk.payload.as_ref().expect("payload").data;
        assert_eq!(&data[..], format!("{{\"number\":{i}}}").as_bytes());
        assert!(!chunk.is_final);
    }
    let last = &chunks[3];
    assert!(last.is_final && last.payload.is_none());
    assert_eq!(
        last.metadata.get("synthetic_final").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        last.metadata.get("worker_id").map(String::as_str),
        Some("core-test")
    );
    assert_eq!(
        last.metadata.get("tool_type").map(String::as_str),
        Some("remote")
    );
    assert!(last.metadata.contains_key("execution_time_ms"));
    assert_eq!(node.slots_out(), 0);
}

#[tokio::test]
async fn an_outside_client_that_goes_away_stops_the_python_generator() {
    let mut node = OutsideNode::start().await;
    let marker = Marker::new("outside");
    let parameters = [
        ("steps", "100".to_owned()),
        ("step_ms", "100".to_owned()),
        (
            "marker_path",
            serde_json::to_string(&marker.0.display().to_string()).unwrap(),
        ),
    ];
    let parameters: Vec<(&str, &str)> = parameters.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut stream = node
        .client
        .execute_stream(outside_request("slow_stream", &parameters))
        .await
        .expect("open")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first chunk")
        .expect("a chunk");
    assert_eq!(
        &first.payload.expect("payload").data[..],
        b"{\"started\":true}"
    );
    marker.wait_for("started", STOPS_WITHIN).await;
    drop(stream);
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    let start = Instant::now();
    while node.slots_out() > 0 {
        assert!(start.elapsed() < STOPS_WITHIN, "the slot never went back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_outside_client_reads_the_pools_and_their_tools() {
    let mut node = OutsideNode::start().await;
    let request = snakepit_core::proto::DescribeNodeRequest {
        client_protocol_version: snakepit_core::PROTOCOL_VERSION.into(),
    };
    let description = node
        .client
        .describe(request)
        .await
        .expect("describe")
        .into_inner();
    assert!(
        description.compatible,
        "{}",
        description.compatibility_message
    );
    assert_eq!(description.pools.len(), 2);
    let default = &description.pools[0];
    assert_eq!((default.name.as_str(), default.size), ("default", 1));
    assert!(
        default.adapter.ends_with("ShowcaseAdapter"),
        "{}",
        default.adapter
    );
    let stream = default
        .tools
        .iter()
        .find(|t| t.name == "stream_numbers")
        .expect("stream_numbers");
    assert!(stream.supports_streaming);
    // A pool whose worker cannot be had is listed, with why.
    let gone = &description.pools[1];
    assert!(
        gone.tools.is_empty() && gone.error.contains("gone"),
        "{gone:?}"
    );
    assert_eq!(node.slots_out(), 0);

    let request = snakepit_core::proto::DescribeNodeRequest {
        client_protocol_version: "0".into(),
    };
    let description = node
        .client
        .describe(request)
        .await
        .expect("describe")
        .into_inner();
    assert!(!description.compatible);
    assert!(description.compatibility_message.contains("\"0\""));
}

/// The first message of an outside duplex call.
fn outside_start(
    tool: &str,
    parameters: &[(&str, &str)],
) -> snakepit_core::proto::DuplexExecuteRequest {
    use snakepit_core::proto::duplex_execute_request::Message;
    snakepit_core::proto::DuplexExecuteRequest {
        message: Some(Message::Start(outside_request(tool, parameters))),
    }
}

/// One input of an outside duplex call.
fn outside_input(kind: PayloadKind, data: Vec<u8>) -> snakepit_core::proto::DuplexExecuteRequest {
    use snakepit_core::proto::duplex_execute_request::Message;
    snakepit_core::proto::DuplexExecuteRequest {
        message: Some(Message::Input(Payload {
            kind: kind as i32,
            data: data.into(),
        })),
    }
}

#[tokio::test]
async fn an_outside_duplex_call_streams_inputs_in_and_outputs_out() {
    let mut node = OutsideNode::start().await;
    let input = |value: &str| outside_input(PayloadKind::Json, value.as_bytes().to_vec());
    let start = outside_start("echo_inputs", &[]);
    let messages = vec![start, input("1"), input("\"two\""), input("[3]")];
    let mut outputs = node
        .client
        .execute_duplex(tokio_stream::iter(messages))
        .await
        .expect("open")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(chunk) = outputs.message().await.expect("chunk") {
        if let Some(payload) = chunk.payload {
            seen.push(String::from_utf8(payload.data.to_vec()).unwrap());
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].contains("\"two\""), "{seen:?}");
    assert_eq!(node.slots_out(), 0);

    // A first message without start is refused.
    let status = node
        .client
        .execute_duplex(tokio_stream::iter(vec![input("1")]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn an_outside_duplex_client_that_goes_away_stops_the_tool() {
    let mut node = OutsideNode::start().await;
    let marker = Marker::new("outside-duplex");
    let marker_json = serde_json::to_string(&marker.0.display().to_string()).unwrap();
    let start = outside_start("echo_inputs", &[("marker_path", marker_json.as_str())]);
    let (inputs, requests) = mpsc::channel(1);
    inputs.send(start).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(requests));
    let cancel = request.cancellation_handle();
    let mut outputs = node
        .client
        .execute_duplex(request)
        .await
        .expect("open")
        .into_inner();
    inputs
        .send(outside_input(PayloadKind::Json, b"1".to_vec()))
        .await
        .unwrap();
    outputs.message().await.expect("chunk").expect("an output");
    marker.wait_for("started", STOPS_WITHIN).await;
    // The client gives up with its request side still open: a reset.
    cancel.cancel();
    drop(outputs);
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    let start = Instant::now();
    while node.slots_out() > 0 {
        assert!(start.elapsed() < STOPS_WITHIN, "the slot never went back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(inputs);
}

#[tokio::test]
async fn an_outside_duplex_input_the_bridge_refuses_ends_the_call_with_why() {
    let mut node = OutsideNode::start_with(|config| config.max_message_bytes = 4096).await;
    let marker = Marker::new("outside-duplex-broken");
    let marker_json = serde_json::to_string(&marker.0.display().to_string()).unwrap();
    let start = outside_start("echo_inputs", &[("marker_path", marker_json.as_str())]);
    let input = |size: usize| outside_input(PayloadKind::Raw, vec![b'x'; size]);
    let (inputs, requests) = mpsc::channel(4);
    inputs.send(start).await.unwrap();
    let mut outputs = node
        .client
        .execute_duplex(ReceiverStream::new(requests))
        .await
        .expect("open")
        .into_inner();
    marker.wait_for("started", STOPS_WITHIN).await;
    // Too large for the bridge: its side of the call breaks while the
    // client's connection stays up.
    inputs.send(input(64 * 1024)).await.unwrap();
    let ended = tokio::time::timeout(STOPS_WITHIN, async {
        loop {
            match outputs.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the call ends at once, not at its deadline");
    let status = ended.expect("the call ends with an error");
    assert_ne!(status.code(), tonic::Code::Ok);
    marker.wait_for("cancelled", STOPS_WITHIN).await;
    let start = Instant::now();
    while node.slots_out() > 0 {
        assert!(start.elapsed() < STOPS_WITHIN, "the slot never went back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
