//! Tools run for programs outside the pools (`Execute`, `ExecuteStream`).
//!
//! The request is checked here first (parameters, affinity), then the
//! [`PoolHost`] lends a worker through the pool's own checkout (the NIF asks
//! Elixir, so queue, affinity and limits are `Snakepit.Pool`'s), and the call
//! runs from here to the worker over its gRPC client. Results and chunks go
//! from the worker to the client without passing through Elixir: HTTP/2 flow
//! control holds on both legs, so a slow client slows the Python generator,
//! and a client that cancels or disconnects drops the worker call, which
//! stops the Python tool. The lent slot goes back when the call ends.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Status, Streaming};

use super::status::with_reason;
use crate::client::WorkerClient;
use crate::envelope::FinalMetadata;
use crate::json;
use crate::proto::{
    duplex_execute_request, duplex_request, execute_tool_response, DescribeRequest,
    DuplexExecuteRequest, DuplexRequest, ExecuteRequest, ExecuteResponse, ExecuteToolRequest,
    Payload, PoolDescription, ToolChunk,
};

/// Default time of an outside unary call without a deadline.
pub const DEFAULT_UNARY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time of an outside stream without a deadline.
pub const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest `timeout_ms` a request may give (as `Snakepit.Limits.max_timeout/0`).
pub const MAX_TIMEOUT_MS: u64 = 4_000_000_000;

/// The affinities a request may name (empty: the pool's).
pub const AFFINITIES: [&str; 3] = ["hint", "strict_queue", "strict_fail_fast"];

/// What a checkout asks of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutRequest {
    pub pool: String,
    pub session_id: String,
    /// One of [`AFFINITIES`], or empty for the pool's.
    pub affinity: String,
    /// What the whole call may take, queue included.
    pub timeout: Duration,
}

/// A worker lent to one call. The slot it holds goes back when this is
/// dropped.
pub struct Lent {
    pub client: WorkerClient,
    pub worker_id: String,
    /// Whatever keeps the slot taken (the NIF's lease).
    pub slot: Box<dyn Send + Sync>,
}

/// The future of one checkout.
pub type Checkout = Pin<Box<dyn Future<Output = Result<Lent, Status>> + Send>>;

/// A pool of the node: its name and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEntry {
    pub name: String,
    pub size: u32,
}

/// The future of the node's pool list.
pub type PoolList = Pin<Box<dyn Future<Output = Result<Vec<PoolEntry>, Status>> + Send>>;

/// Lends workers of the node's pools; the NIF implements it through
/// `Snakepit.Pool.Checkout`. Refusals are statuses with the reasons of the
/// bridge's table (`unknown_pool`, `pool_saturated`, ...).
pub trait PoolHost: Send + Sync + 'static {
    fn checkout(&self, request: CheckoutRequest) -> Checkout;

    /// The pools running on the node.
    fn pools(&self) -> PoolList;
}

/// A host without pools: every checkout is `unknown_pool`.
pub struct NoPools;

impl PoolHost for NoPools {
    fn checkout(&self, request: CheckoutRequest) -> Checkout {
        Box::pin(std::future::ready(Err(unknown_pool(&request.pool))))
    }

    fn pools(&self) -> PoolList {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

/// How long describing one pool may take (its checkout included).
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool's description, asked of one of its workers; a pool that cannot
/// answer is described with `error` set.
pub async fn describe_pool(host: &dyn PoolHost, pool: PoolEntry) -> PoolDescription {
    let mut description = PoolDescription {
        name: pool.name.clone(),
        size: pool.size,
        ..Default::default()
    };
    let checkout = CheckoutRequest {
        pool: pool.name,
        session_id: String::new(),
        affinity: String::new(),
        timeout: DESCRIBE_TIMEOUT,
    };
    let described = async {
        let lent = host.checkout(checkout).await?;
        let mut request = Request::new(DescribeRequest {});
        request.set_timeout(DESCRIBE_TIMEOUT);
        let response = lent.client.clone().describe(request).await?;
        Ok::<_, Status>(response.into_inner())
    };
    match tokio::time::timeout(DESCRIBE_TIMEOUT, described).await {
        Ok(Ok(response)) => {
            description.adapter = response.adapter;
            description.tools = response.tools;
        }
        Ok(Err(status)) => description.error = status.message().to_owned(),
        Err(_) => description.error = "no worker answered in time".to_owned(),
    }
    description
}

/// Whether a client of `client_version` speaks this node's protocol; the
/// reason when not.
pub fn compatibility(client_version: &str) -> (bool, String) {
    if client_version == crate::PROTOCOL_VERSION {
        (true, String::new())
    } else {
        (
            false,
            format!(
                "the node speaks protocol version {:?}, the client {client_version:?}",
                crate::PROTOCOL_VERSION
            ),
        )
    }
}

/// `NOT_FOUND` with reason `unknown_pool`.
pub fn unknown_pool(pool: &str) -> Status {
    with_reason(
        Code::NotFound,
        "unknown_pool",
        format!("no pool named {pool:?} runs on this node"),
    )
}

/// A checked request: what to ask the pool and what to send the worker.
#[derive(Debug)]
pub struct Prepared {
    pub checkout: CheckoutRequest,
    pub call: ExecuteToolRequest,
    /// When the whole call must be over.
    pub deadline: Instant,
}

/// Checks `request` before any worker is touched: every parameter is JSON
/// (else `invalid_parameter`, naming it), the affinity is known. `deadline`
/// is the request's (`grpc-timeout`), else `timeout_ms`, else `default`.
pub fn prepare(
    request: ExecuteRequest,
    deadline: Option<Instant>,
    received: Instant,
    default: Duration,
) -> Result<Prepared, Status> {
    if request.tool_name.is_empty() {
        return Err(with_reason(
            Code::InvalidArgument,
            "invalid_argument",
            "the tool name is empty".into(),
        ));
    }
    if !request.affinity.is_empty() && !AFFINITIES.contains(&request.affinity.as_str()) {
        return Err(with_reason(
            Code::InvalidArgument,
            "invalid_argument",
            format!(
                "unknown affinity {:?}; known: {AFFINITIES:?}",
                request.affinity
            ),
        ));
    }
    let arguments = arguments_json(&request.parameters, &request.binary_parameters)?;
    if request.timeout_ms > MAX_TIMEOUT_MS {
        return Err(with_reason(
            Code::InvalidArgument,
            "invalid_argument",
            format!(
                "timeout_ms must be at most {MAX_TIMEOUT_MS}, got {}",
                request.timeout_ms
            ),
        ));
    }
    let deadline = deadline.unwrap_or_else(|| {
        received
            + if request.timeout_ms > 0 {
                Duration::from_millis(request.timeout_ms)
            } else {
                default
            }
    });
    let pool = if request.pool.is_empty() {
        "default".to_owned()
    } else {
        request.pool
    };
    Ok(Prepared {
        checkout: CheckoutRequest {
            pool,
            session_id: request.session_id.clone(),
            affinity: request.affinity,
            timeout: deadline.saturating_duration_since(received),
        },
        call: ExecuteToolRequest {
            tool_name: request.tool_name,
            arguments_json: arguments,
            binary_arguments: request.binary_parameters,
            session_id: request.session_id,
            metadata: request.metadata,
        },
        deadline,
    })
}

/// The JSON object of the parameters, each checked with the exact reader.
fn arguments_json(
    parameters: &HashMap<String, String>,
    binaries: &HashMap<String, Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    let mut names: Vec<&String> = parameters.keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(2 + parameters.values().map(|v| v.len() + 8).sum::<usize>());
    out.push(b'{');
    for (index, name) in names.into_iter().enumerate() {
        let text = &parameters[name];
        if let Err(error) = json::parse(text.as_bytes()) {
            return Err(invalid_parameter(name, &error.to_string()));
        }
        if binaries.contains_key(name) {
            return Err(invalid_parameter(
                name,
                "given both as a JSON parameter and as a binary parameter",
            ));
        }
        if index > 0 {
            out.push(b',');
        }
        out.extend(serde_json::to_string(name).expect("a string").as_bytes());
        out.push(b':');
        out.extend(text.trim().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// `INVALID_ARGUMENT` with reason `invalid_parameter`, naming the key.
pub fn invalid_parameter(key: &str, message: &str) -> Status {
    with_reason(
        Code::InvalidArgument,
        "invalid_parameter",
        format!("parameter {key:?}: {message}"),
    )
}

fn remaining(deadline: Instant) -> Result<Duration, Status> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Status::deadline_exceeded(
            "the call's time ran out while it waited for a worker",
        ))
    } else {
        Ok(left)
    }
}

/// Runs a unary call on a lent worker.
pub async fn execute(
    lent: Lent,
    prepared: Prepared,
    started: Instant,
) -> Result<ExecuteResponse, Status> {
    let mut request = Request::new(prepared.call);
    request.set_timeout(remaining(prepared.deadline)?);
    let response = lent
        .client
        .clone()
        .execute_tool(request)
        .await?
        .into_inner();
    let outcome = response.outcome.map(|outcome| match outcome {
        execute_tool_response::Outcome::Result(payload) => {
            crate::proto::execute_response::Outcome::Result(payload)
        }
        execute_tool_response::Outcome::Error(error) => {
            crate::proto::execute_response::Outcome::Error(error)
        }
    });
    Ok(ExecuteResponse {
        outcome,
        metadata: response.metadata,
        execution_time_ms: started.elapsed().as_millis() as u64,
        worker_id: lent.worker_id,
    })
}

/// Opens a stream on a lent worker; its chunks, with the node's final
/// metadata, hold the slot until the stream ends or is dropped.
pub async fn open_stream(lent: Lent, prepared: Prepared) -> Result<ChunkStream, Status> {
    let mut request = Request::new(prepared.call);
    request.set_timeout(remaining(prepared.deadline)?);
    let inner = lent
        .client
        .clone()
        .execute_streaming_tool(request)
        .await?
        .into_inner();
    Ok(ChunkStream {
        last: FinalMetadata::new(lent.worker_id.clone()),
        inner: Some(inner),
        broken: None,
        _lent: lent,
    })
}

/// Opens a duplex call on a lent worker: the payloads of `inbound` (the
/// client's messages after its start) follow the start as the worker takes
/// them; its chunks as for [`open_stream`].
pub async fn open_duplex(
    lent: Lent,
    prepared: Prepared,
    inbound: Streaming<DuplexExecuteRequest>,
) -> Result<ChunkStream, Status> {
    let broken = Arc::new(DuplexBreak::default());
    let start = DuplexRequest {
        message: Some(duplex_request::Message::Start(prepared.call)),
    };
    let inputs = DuplexInputs {
        inbound,
        broken: broken.clone(),
    }
    .map(|payload| DuplexRequest {
        message: Some(duplex_request::Message::Input(payload)),
    });
    let mut request = Request::new(tokio_stream::once(start).chain(inputs));
    request.set_timeout(remaining(prepared.deadline)?);
    // The request side stays open while inputs come: dropping the response
    // alone would not tell the worker, a reset does.
    let _ = broken.reset.set(request.cancellation_handle());
    let inner = lent
        .client
        .clone()
        .execute_duplex_tool(request)
        .await?
        .into_inner();
    Ok(ChunkStream {
        last: FinalMetadata::new(lent.worker_id.clone()),
        inner: Some(inner),
        broken: Some(broken),
        _lent: lent,
    })
}

/// How a duplex call ends when its client's side breaks (a reset, a lost
/// connection, an input too large): the worker call is reset (the tool is
/// cancelled, not told its input ended), and the client gets the failure.
#[derive(Default)]
struct DuplexBreak {
    reset: OnceLock<tonic::CancellationHandle>,
    failure: Mutex<Option<Status>>,
}

impl DuplexBreak {
    fn reset(&self) {
        if let Some(reset) = self.reset.get() {
            reset.clone().cancel();
        }
    }

    fn failure(&self) -> Option<Status> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The inputs of an outside duplex call: the payloads after its start, up
/// to the end of the client's side or another start. A client side that
/// breaks ends nothing here: it resets the worker call (see [`DuplexBreak`]).
struct DuplexInputs {
    inbound: Streaming<DuplexExecuteRequest>,
    broken: Arc<DuplexBreak>,
}

impl Stream for DuplexInputs {
    type Item = Payload;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Payload>> {
        match Pin::new(&mut self.inbound).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(DuplexExecuteRequest {
                message: Some(duplex_execute_request::Message::Input(payload)),
            }))) => Poll::Ready(Some(payload)),
            Poll::Ready(Some(Err(status))) => {
                *self
                    .broken
                    .failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(status);
                self.broken.reset();
                // Never a clean end: the reset ends the call.
                Poll::Pending
            }
            Poll::Ready(Some(Ok(_))) | Poll::Ready(None) => Poll::Ready(None),
        }
    }
}

/// The start of an outside duplex call: its first message.
pub async fn duplex_start(
    inbound: &mut Streaming<DuplexExecuteRequest>,
) -> Result<ExecuteRequest, Status> {
    match inbound.message().await? {
        Some(DuplexExecuteRequest {
            message: Some(duplex_execute_request::Message::Start(start)),
        }) => Ok(start),
        _ => Err(with_reason(
            Code::InvalidArgument,
            "invalid_argument",
            "a duplex call's first message must carry `start`".into(),
        )),
    }
}

/// A worker's chunks on their way to an outside client.
pub struct ChunkStream {
    inner: Option<Streaming<ToolChunk>>,
    last: FinalMetadata,
    /// For duplex calls: resets the worker call if this is dropped early,
    /// and holds the failure of a broken client side.
    broken: Option<Arc<DuplexBreak>>,
    _lent: Lent,
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        if let (Some(broken), Some(_)) = (self.broken.as_ref(), self.inner.as_ref()) {
            broken.reset();
        }
    }
}

impl Stream for ChunkStream {
    type Item = Result<ToolChunk, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(mut chunk))) => {
                if chunk.error.is_some() {
                    // A failure is the stream's last message.
                    this.inner = None;
                } else {
                    this.last.on_chunk(chunk.is_final, &mut chunk.metadata);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(status))) => {
                this.inner = None;
                // A worker call reset because the client's side broke ends
                // with why it broke.
                let failure = this.broken.as_ref().and_then(|b| b.failure());
                Poll::Ready(Some(Err(failure.unwrap_or(status))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                if let Some(failure) = this.broken.as_ref().and_then(|b| b.failure()) {
                    return Poll::Ready(Some(Err(failure)));
                }
                Poll::Ready(this.last.synthetic().map(|metadata| {
                    Ok(ToolChunk {
                        payload: None,
                        is_final: true,
                        metadata,
                        error: None,
                    })
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(parameters: &[(&str, &str)]) -> ExecuteRequest {
        ExecuteRequest {
            tool_name: "add".into(),
            parameters: parameters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn parameters_become_one_json_object() {
        let now = Instant::now();
        let prepared = prepare(
            request(&[("b", " [1, 2.5] "), ("a", "{\"x\": \"é\"}")]),
            None,
            now,
            DEFAULT_UNARY_TIMEOUT,
        )
        .unwrap();
        let text = String::from_utf8(prepared.call.arguments_json.to_vec()).unwrap();
        assert_eq!(text, r#"{"a":{"x": "é"},"b":[1, 2.5]}"#);
        assert_eq!(prepared.checkout.pool, "default");
        assert_eq!(prepared.deadline, now + DEFAULT_UNARY_TIMEOUT);
    }

    #[test]
    fn a_malformed_parameter_is_refused_with_its_key() {
        for bad in ["{", "", "nan", "[1,]", "{\"a\":1,\"a\":2}"] {
            let error = prepare(
                request(&[("good", "1"), ("bad", bad)]),
                None,
                Instant::now(),
                DEFAULT_UNARY_TIMEOUT,
            )
            .unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument);
            assert_eq!(
                super::super::error_reason(&error),
                Some("invalid_parameter")
            );
            assert!(error.message().contains("\"bad\""), "{}", error.message());
        }
    }

    #[test]
    fn affinity_timeout_and_names_are_checked() {
        let mut bad = request(&[]);
        bad.affinity = "sticky".into();
        assert!(prepare(bad, None, Instant::now(), DEFAULT_UNARY_TIMEOUT).is_err());
        let mut empty = request(&[]);
        empty.tool_name.clear();
        assert!(prepare(empty, None, Instant::now(), DEFAULT_UNARY_TIMEOUT).is_err());
        let mut both = request(&[("x", "1")]);
        both.binary_parameters.insert("x".into(), b"1".to_vec());
        assert!(prepare(both, None, Instant::now(), DEFAULT_UNARY_TIMEOUT).is_err());
        let now = Instant::now();
        let mut endless = request(&[]);
        endless.timeout_ms = u64::MAX;
        let refused = prepare(endless, None, Instant::now(), DEFAULT_UNARY_TIMEOUT).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        let mut timed = request(&[]);
        timed.timeout_ms = 1500;
        timed.pool = "gpu".into();
        let prepared = prepare(timed, None, now, DEFAULT_UNARY_TIMEOUT).unwrap();
        assert_eq!(prepared.deadline, now + Duration::from_millis(1500));
        assert_eq!(prepared.checkout.pool, "gpu");
        let given = now + Duration::from_secs(2);
        let prepared = prepare(request(&[]), Some(given), now, DEFAULT_UNARY_TIMEOUT).unwrap();
        assert_eq!(prepared.deadline, given);
    }
}
