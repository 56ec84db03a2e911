//! `NodeClient`: the async core of `snakepit_bridge.client`, for programs
//! outside the pools that run tools on a node (`Execute`, `ExecuteStream`
//! of the node's bridge).
//!
//! Every method is a coroutine (pyo3's `async fn`): the gRPC call runs on the
//! process's client runtime, and the awaiting asyncio task is woken when it
//! is done, with no thread blocked per call or per stream. A cancelled task
//! (or a closed or dropped stream) drops the call, which cancels the RPC on
//! the node and stops the Python tool there. Failed RPCs raise
//! `BridgeError(code, reason, message)`, as the session client does.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use snakepit_core::bridge::{connect_bridge_tls, BridgeClient as Client};
use snakepit_core::proto::{
    duplex_execute_request, execute_response::Outcome, DescribeNodeRequest, DuplexExecuteRequest,
    ExecuteRequest, GetVersionRequest, NodeDescription, Payload, PayloadKind, ToolChunk, ToolError,
};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::aio::{close_stream, next_message, on_runtime, SharedStream};
use crate::bridge_client::{runtime, timeout_from, Failure};

/// A call's time when the caller gives none (the node applies its own too).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream's time when the caller gives none.
const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(300);

/// One call's request, from a dict with these keys.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct OutsideCall {
    tool: String,
    /// Each parameter as JSON text.
    parameters: HashMap<String, String>,
    binary_parameters: HashMap<String, Vec<u8>>,
    pool: String,
    session_id: String,
    affinity: String,
    metadata: HashMap<String, String>,
    /// Seconds for the whole call; `None` for the default.
    timeout_s: Option<f64>,
}

impl OutsideCall {
    fn into_request(self, default: Duration) -> PyResult<tonic::Request<ExecuteRequest>> {
        let timeout = timeout_from(self.timeout_s, default)?;
        let mut request = tonic::Request::new(ExecuteRequest {
            tool_name: self.tool,
            parameters: self.parameters,
            binary_parameters: self.binary_parameters,
            pool: self.pool,
            session_id: self.session_id,
            affinity: self.affinity,
            timeout_ms: 0,
            metadata: self.metadata,
        });
        request.set_timeout(timeout);
        Ok(request)
    }
}

/// A tool's failure: `(category, type, message, traceback)`.
type ErrorTuple = (String, String, String, String);
/// A payload: `(bytes, is_raw)`.
type PayloadTuple = (Py<PyBytes>, bool);

fn error_tuple(error: ToolError) -> ErrorTuple {
    (
        error.category,
        error.error_type,
        error.message,
        error.traceback,
    )
}

fn payload_tuple(payload: Payload) -> PayloadTuple {
    let is_raw = payload.kind == PayloadKind::Raw as i32;
    let data = Python::attach(|py| PyBytes::new(py, &payload.data).unbind());
    (data, is_raw)
}

/// What `execute` answers: `(result, error, metadata, execution_time_ms,
/// worker_id)`, one of `result` and `error` set.
type ExecuteTuple = (
    Option<PayloadTuple>,
    Option<ErrorTuple>,
    HashMap<String, String>,
    u64,
    String,
);

/// One chunk: `(payload, is_final, metadata, error)`.
type ChunkTuple = (
    Option<PayloadTuple>,
    bool,
    HashMap<String, String>,
    Option<ErrorTuple>,
);

fn chunk_tuple(chunk: ToolChunk) -> ChunkTuple {
    (
        chunk.payload.map(payload_tuple),
        chunk.is_final,
        chunk.metadata,
        chunk.error.map(error_tuple),
    )
}

/// A tool parameter: `(name, type, required, default_json)`.
type ParameterTuple = (String, String, bool, String);
/// A tool: `(name, description, supports_streaming, parameters)`.
type ToolTuple = (String, String, bool, Vec<ParameterTuple>);
/// A pool: `(name, size, adapter, tools, error)`.
type PoolTuple = (String, u32, String, Vec<ToolTuple>, String);
/// The node: `((protocol, bridge, runtime versions), compatible,
/// compatibility message, pools)`.
type NodeTuple = ((String, String, String), bool, String, Vec<PoolTuple>);

fn node_tuple(node: NodeDescription) -> NodeTuple {
    let version = node.version.unwrap_or_default();
    let pools = node
        .pools
        .into_iter()
        .map(|pool| {
            let tools = pool
                .tools
                .into_iter()
                .map(|tool| {
                    let parameters = tool
                        .parameters
                        .into_iter()
                        .map(|p| (p.name, p.r#type, p.required, p.default_json))
                        .collect();
                    (
                        tool.name,
                        tool.description,
                        tool.supports_streaming,
                        parameters,
                    )
                })
                .collect();
            (pool.name, pool.size, pool.adapter, tools, pool.error)
        })
        .collect();
    (
        (
            version.protocol_version,
            version.bridge_version,
            version.runtime_version,
        ),
        node.compatible,
        node.compatibility_message,
        pools,
    )
}

/// A connection to a node's bridge, for running tools on its pools.
#[pyclass(module = "snakepit_bridge._native", frozen)]
pub struct NodeClient {
    client: Client,
    runtime: Arc<Runtime>,
    /// The address as given, for `repr`.
    #[pyo3(get)]
    address: String,
}

#[pymethods]
impl NodeClient {
    /// Connects to the node's bridge at `address` (`host:port`), sending
    /// `token` with every request; a coroutine. `BridgeError("UNAVAILABLE")`
    /// when nothing answers within `timeout_s`.
    ///
    /// With `tls_ca_pem` (the CA certificate, PEM), over TLS; `server_name`
    /// is the name the node's certificate is for (default: the host).
    #[staticmethod]
    #[pyo3(signature = (address, token, timeout_s = None, tls_ca_pem = None, server_name = None))]
    async fn connect(
        address: String,
        token: String,
        timeout_s: Option<f64>,
        tls_ca_pem: Option<Vec<u8>>,
        server_name: Option<String>,
    ) -> PyResult<NodeClient> {
        let timeout = timeout_from(timeout_s, DEFAULT_TIMEOUT)?;
        let runtime = runtime()?;
        let target = address
            .strip_prefix("http://")
            .unwrap_or(&address)
            .to_owned();
        let tls = tls_ca_pem.map(|ca| (ca, server_name.unwrap_or_default()));
        let client = on_runtime(&runtime, async move {
            let connecting = async {
                connect_bridge_tls(&target, &token, tls)
                    .await
                    .map_err(|e| Failure::new("UNAVAILABLE", e.to_string()))
            };
            tokio::time::timeout(timeout, connecting)
                .await
                .unwrap_or_else(|_| Err(Failure::new("UNAVAILABLE", "connecting timed out")))
        })
        .await?;
        Ok(NodeClient {
            client,
            runtime,
            address,
        })
    }

    fn __repr__(&self) -> String {
        format!("NodeClient({:?})", self.address)
    }

    /// `(protocol_version, bridge_version, runtime_version)` of the node.
    #[pyo3(signature = (timeout_s = None))]
    async fn get_version(&self, timeout_s: Option<f64>) -> PyResult<(String, String, String)> {
        let timeout = timeout_from(timeout_s, DEFAULT_TIMEOUT)?;
        let mut client = self.client.clone();
        on_runtime(&self.runtime, async move {
            let mut request = tonic::Request::new(GetVersionRequest {});
            request.set_timeout(timeout);
            let info = client.get_version(request).await.map_err(Failure::from)?;
            let info = info.into_inner();
            Ok((
                info.protocol_version,
                info.bridge_version,
                info.runtime_version,
            ))
        })
        .await
    }

    /// What the node offers a client of `client_protocol_version`; see
    /// `NodeTuple`.
    #[pyo3(signature = (client_protocol_version, timeout_s = None))]
    async fn describe(
        &self,
        client_protocol_version: String,
        timeout_s: Option<f64>,
    ) -> PyResult<NodeTuple> {
        let timeout = timeout_from(timeout_s, DEFAULT_TIMEOUT)?;
        let mut client = self.client.clone();
        let node = on_runtime(&self.runtime, async move {
            let mut request = tonic::Request::new(DescribeNodeRequest {
                client_protocol_version,
            });
            request.set_timeout(timeout);
            let described = client.describe(request).await.map_err(Failure::from)?;
            Ok(described.into_inner())
        })
        .await?;
        Ok(node_tuple(node))
    }

    /// Runs a tool; see `ExecuteTuple` for the answer.
    async fn execute(&self, call: OutsideCall) -> PyResult<ExecuteTuple> {
        let request = call.into_request(DEFAULT_TIMEOUT)?;
        let mut client = self.client.clone();
        on_runtime(&self.runtime, async move {
            let response = client.execute(request).await.map_err(Failure::from)?;
            Ok(response.into_inner())
        })
        .await
        .map(|response| {
            let (result, error) = match response.outcome {
                Some(Outcome::Result(payload)) => (Some(payload_tuple(payload)), None),
                Some(Outcome::Error(error)) => (None, Some(error_tuple(error))),
                None => (None, None),
            };
            (
                result,
                error,
                response.metadata,
                response.execution_time_ms,
                response.worker_id,
            )
        })
    }

    /// Opens a stream of a streaming tool.
    async fn stream(&self, call: OutsideCall) -> PyResult<ChunkStream> {
        let request = call.into_request(DEFAULT_STREAM_TIMEOUT)?;
        let mut client = self.client.clone();
        let chunks = on_runtime(&self.runtime, async move {
            let response = client
                .execute_stream(request)
                .await
                .map_err(Failure::from)?;
            Ok(response.into_inner())
        })
        .await?;
        Ok(ChunkStream::new(chunks, None, self.runtime.clone()))
    }

    /// Opens a duplex call: `send()` its inputs, `end_inputs()` when done,
    /// and read its chunks with `next()`.
    async fn duplex(&self, call: OutsideCall) -> PyResult<ChunkStream> {
        let request = call.into_request(DEFAULT_STREAM_TIMEOUT)?;
        let (metadata, extensions, start) = request.into_parts();
        let (inputs, receiver) = mpsc::channel(INPUT_WINDOW);
        let first = DuplexExecuteRequest {
            message: Some(duplex_execute_request::Message::Start(start)),
        };
        let given_up = Arc::new(AtomicBool::new(false));
        let inputs_then_reset = Inputs {
            inner: ReceiverStream::new(receiver),
            given_up: given_up.clone(),
        };
        let mut request = tonic::Request::from_parts(
            metadata,
            extensions,
            tokio_stream::once(first).chain(inputs_then_reset),
        );
        let cancel = request.cancellation_handle();
        let mut client = self.client.clone();
        let chunks = on_runtime(&self.runtime, async move {
            let response = client
                .execute_duplex(request)
                .await
                .map_err(Failure::from)?;
            Ok(response.into_inner())
        })
        .await?;
        let duplex = Duplex {
            inputs,
            reset: cancel,
            given_up,
        };
        Ok(ChunkStream::new(chunks, Some(duplex), self.runtime.clone()))
    }
}

/// Inputs of a duplex call waiting to be sent: few, so that a client
/// faster than the tool waits (flow control reaches it).
const INPUT_WINDOW: usize = 4;

/// What a duplex call has besides its chunks: where its inputs go, and how
/// it is given up (a reset, which the tool sees as a cancel).
struct Duplex {
    inputs: mpsc::Sender<DuplexExecuteRequest>,
    reset: tonic::CancellationHandle,
    /// Set when the call is given up: its inputs then never end cleanly
    /// (an end of input would let the tool finish), only the reset ends them.
    given_up: Arc<AtomicBool>,
}

/// A duplex call's inputs as sent: they end when `end_inputs()` ends them,
/// but not when the call is given up.
struct Inputs {
    inner: ReceiverStream<DuplexExecuteRequest>,
    given_up: Arc<AtomicBool>,
}

impl tokio_stream::Stream for Inputs {
    type Item = DuplexExecuteRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(None) if self.given_up.load(Ordering::SeqCst) => Poll::Pending,
            other => other,
        }
    }
}

/// The chunks of one `ExecuteStream` or `ExecuteDuplex` call, in order (and
/// for a duplex call, where its inputs go).
#[pyclass(module = "snakepit_bridge._native", frozen)]
pub struct ChunkStream {
    chunks: SharedStream<ToolChunk>,
    /// Cancelled by `close()`: a waiting `next()` answers `None`.
    closed: CancellationToken,
    inputs: std::sync::Mutex<Option<mpsc::Sender<DuplexExecuteRequest>>>,
    /// Resets a duplex call given up early (its request side is open).
    cancel: std::sync::Mutex<Option<(tonic::CancellationHandle, Arc<AtomicBool>)>>,
    runtime: Arc<Runtime>,
}

impl ChunkStream {
    /// A call's chunks; a duplex call also has where its inputs go and how
    /// to reset it.
    fn new(chunks: Streaming<ToolChunk>, duplex: Option<Duplex>, runtime: Arc<Runtime>) -> Self {
        let (inputs, cancel) = duplex.map(|d| (d.inputs, (d.reset, d.given_up))).unzip();
        ChunkStream {
            chunks: Arc::new(Mutex::new(Some(chunks))),
            closed: CancellationToken::new(),
            inputs: std::sync::Mutex::new(inputs),
            cancel: std::sync::Mutex::new(cancel),
            runtime,
        }
    }
}

impl ChunkStream {
    /// Gives a duplex call up: its inputs will not end cleanly, and it is
    /// reset (the tool sees a cancel).
    fn give_up(&self) {
        if let Some((reset, given_up)) =
            self.cancel.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            given_up.store(true, Ordering::SeqCst);
            reset.cancel();
        }
    }
}

impl Drop for ChunkStream {
    /// A duplex call dropped without `close()` is given up, not ended
    /// cleanly: reset, so the tool stops.
    fn drop(&mut self) {
        self.give_up();
    }
}

#[pymethods]
impl ChunkStream {
    /// Sends one input of a duplex call (`bytes`, raw when `is_raw`, else
    /// JSON text); a coroutine that waits while the tool is behind.
    /// Whether it was sent (`False` once the inputs ended or the call did).
    async fn send(&self, data: Vec<u8>, is_raw: bool) -> PyResult<bool> {
        let Some(inputs) = self
            .inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Ok(false);
        };
        let kind = if is_raw {
            PayloadKind::Raw
        } else {
            PayloadKind::Json
        };
        let message = DuplexExecuteRequest {
            message: Some(duplex_execute_request::Message::Input(Payload {
                kind: kind as i32,
                data: data.into(),
            })),
        };
        on_runtime(&self.runtime, async move {
            Ok(inputs.send(message).await.is_ok())
        })
        .await
    }

    /// Ends the inputs of a duplex call (the tool's iterator ends).
    fn end_inputs(&self) {
        self.inputs.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The next chunk (see `ChunkTuple`), or `None` at the end; a coroutine.
    async fn next(&self) -> PyResult<Option<ChunkTuple>> {
        let chunk = next_message(&self.runtime, &self.chunks, &self.closed).await?;
        Ok(chunk.map(chunk_tuple))
    }

    /// Ends the call now (the tool on the node is stopped); later `next()`
    /// calls answer `None`.
    fn close(&self) {
        // Given up first: ending the inputs first would let the tool see a
        // clean end of input and finish.
        self.give_up();
        self.end_inputs();
        close_stream(&self.runtime, &self.chunks, &self.closed);
    }
}

/// Registers the classes in the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NodeClient>()?;
    m.add_class::<ChunkStream>()?;
    Ok(())
}
