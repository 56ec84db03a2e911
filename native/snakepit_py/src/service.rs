//! The `WorkerService` gRPC implementation of a Python worker.
//!
//! Unary calls run on the worker's executor (`snakepit_core::executor`):
//! queued calls run back to back on one thread, and a call stuck behind a
//! slow one gets a thread of its own. A streaming or duplex call runs its
//! generator on a blocking thread of its own for its whole life.
//!
//! Tool calls honour their deadline and stop when their caller goes away:
//!
//! - The deadline comes from the `grpc-timeout` header, read by [`Admit`]
//!   when the request arrives (see `snakepit_core::deadline`, which also
//!   explains why the server ends the call a little before the client would).
//!   When it passes, a unary call ends with `DEADLINE_EXCEEDED` and a stream
//!   ends with that status after the chunks already sent.
//! - tonic drops the handler future (unary) or the response stream
//!   (streaming) when the client cancels or disconnects; a guard in each
//!   cancels the Python work then (see `control.rs`). For streams this reaches
//!   a generator even while it is busy between two `yield`s.
//!
//! - A duplex call also stops when its request stream fails or breaks the
//!   protocol (`inputs.rs`): the call ends with that status.
//!
//! Either way the Python tool is asked to stop (`ToolCancelled` in its thread,
//! or its asyncio task cancelled) and its `finally` blocks run. A unary call
//! that reaches its deadline waits up to half the deadline's early margin for
//! the tool to stop, and says in its status whether it did
//! ([`TOOL_STOPPED_KEY`]); a tool blocked in C does not, and if it is still
//! running after the grace, the worker asks to be recycled (`stuck.rs`).
//!
//! A duplex call (`ExecuteDuplexTool`) is a streaming call whose tool also
//! gets an iterator of the client's inputs (`inputs.rs` explains how they are
//! read lazily, so HTTP/2 flow control holds back a client that sends faster
//! than the tool consumes); its outputs go through the same `produce` and
//! [`CallStream`] as `ExecuteStreamingTool`'s.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pyo3::Python;
use snakepit_core::auth::RequireToken;
use snakepit_core::deadline::{
    early_margin, parse_grpc_timeout, server_deadline, GRPC_TIMEOUT_HEADER, TOOL_STOPPED_KEY,
};
use snakepit_core::executor::{Executor, HANDOFF};
use snakepit_core::proto::worker_service_server::WorkerService as WorkerServiceApi;
use snakepit_core::proto::{
    duplex_request, execute_tool_response::Outcome, DescribeRequest, DescribeResponse,
    DuplexRequest, ExecuteToolRequest, ExecuteToolResponse, GetVersionRequest, ToolChunk,
    ToolError, VersionInfo,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status, Streaming};

use crate::control::{CallControl, CancelOnDrop, CancelReason};
use crate::describe::describe_response;
use crate::dispatch::{ChunkIterator, Dispatcher};
use crate::inputs::{read_inputs, ReaderNews};
use crate::thread_state;

/// Chunks buffered between a Python generator and the HTTP/2 stream. When the
/// buffer is full the generator's thread waits: that is the backpressure.
const STREAM_BUFFER: usize = 16;

/// How long after a chunk the response stream keeps polling for the next one
/// before it lets its thread park. A fast generator's next chunk is there
/// within it, and the thread running the generator then does not have to
/// wake this one: that wake-up was most of the cost of a chunk (100 000 small
/// chunks went from about 165 000 to about 200 000 chunks/s, see `bench/`).
const SPIN_AFTER_CHUNK: Duration = Duration::from_micros(50);

/// Whether polling instead of parking can pay: not on a single CPU, where it
/// would only take time from the producer it waits for.
fn spinning_pays() -> bool {
    static PAYS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PAYS.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// The instant a call must end by, and how long after it a unary call waits
/// for its cancelled tool to stop (a fifth of the deadline's early margin, at
/// most 10 ms: a tool that Python can interrupt stops within that, and most
/// of the margin is left for the status to reach the client before its own
/// deadline on a loaded machine); put in the request's extensions by
/// [`Admit`].
#[derive(Debug, Clone, Copy)]
struct CallDeadline {
    at: Instant,
    stop_check: Duration,
}

/// Checks the token and notes the call's deadline, as soon as the headers
/// are in (before a large request body is decoded).
#[derive(Clone)]
pub struct Admit {
    token: RequireToken,
}

impl Admit {
    pub fn new(token: RequireToken) -> Self {
        Self { token }
    }
}

impl Interceptor for Admit {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let received = Instant::now();
        let mut request = self.token.call(request)?;
        // A malformed value is ignored (as tonic itself does): no deadline.
        let timeout = request
            .metadata()
            .get(GRPC_TIMEOUT_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_grpc_timeout(value).ok());
        if let Some(timeout) = timeout {
            request.extensions_mut().insert(CallDeadline {
                at: server_deadline(received, timeout),
                stop_check: early_margin(timeout) / 5,
            });
        }
        Ok(request)
    }
}

fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    request.extensions().get::<CallDeadline>().map(|d| d.at)
}

fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call's deadline passed; the tool was cancelled")
}

pub struct WorkerService {
    dispatcher: Dispatcher,
    versions: VersionInfo,
    /// Runs unary calls (streams keep a thread each for their whole life).
    executor: Executor,
}

impl WorkerService {
    pub fn new(dispatcher: Dispatcher, versions: VersionInfo) -> Self {
        Self {
            dispatcher,
            versions,
            executor: Executor::new("snakepit-python", thread_state::keep),
        }
    }
}

fn internal(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("worker task failed: {e}"))
}

#[tonic::async_trait]
impl WorkerServiceApi for WorkerService {
    async fn get_version(
        &self,
        _request: Request<GetVersionRequest>,
    ) -> Result<Response<VersionInfo>, Status> {
        Ok(Response::new(self.versions.clone()))
    }

    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        let dispatcher = self.dispatcher.clone();
        let json = tokio::task::spawn_blocking(move || {
            thread_state::keep();
            dispatcher.describe_json()
        })
        .await
        .map_err(internal)?
        .map_err(|e| Status::internal(format!("{}: {}", e.error_type, e.message)))?;
        describe_response(&json, self.versions.clone())
            .map(Response::new)
            .map_err(|e| Status::internal(format!("bad describe_json: {e}")))
    }

    async fn execute_tool(
        &self,
        request: Request<ExecuteToolRequest>,
    ) -> Result<Response<ExecuteToolResponse>, Status> {
        let deadline = request.extensions().get::<CallDeadline>().copied();
        let request = request.into_inner();
        let dispatcher = self.dispatcher.clone();
        let control = CallControl::new(dispatcher.clone(), request.tool_name.clone());
        // Dropped with this future when the client goes away: cancels the tool.
        let deadline_at = deadline.map(|d| d.at);
        let guard = CancelOnDrop::new(control.clone());
        let (done, mut result) = oneshot::channel();
        let ticket = self.executor.submit(move || {
            // One GIL acquisition for the whole call (the inner ones nest).
            let outcome = Python::attach(|_| {
                let handle = control.start(deadline_at)?;
                let outcome = dispatcher.call(&request, handle.as_deref());
                control.finish();
                Some(outcome)
            });
            let _ = done.send(outcome);
        });
        let executor = self.executor.clone();
        let work = async {
            match tokio::time::timeout(HANDOFF, &mut result).await {
                Ok(outcome) => outcome,
                Err(_waited) => {
                    // Still queued (the threads are busy) or running: if
                    // queued, the call gets a thread of its own.
                    executor.unstick(ticket);
                    (&mut result).await
                }
            }
        };
        let outcome = match deadline {
            None => work.await,
            Some(deadline) => match tokio::time::timeout_at(deadline.at.into(), work).await {
                Ok(joined) => joined,
                Err(_elapsed) => {
                    guard.cancel(CancelReason::Deadline);
                    let stopped = tokio::time::timeout(deadline.stop_check, &mut result)
                        .await
                        .is_ok();
                    let mut status = deadline_exceeded();
                    status.metadata_mut().insert(
                        TOOL_STOPPED_KEY,
                        tonic::metadata::MetadataValue::from_static(if stopped {
                            "true"
                        } else {
                            "false"
                        }),
                    );
                    return Err(status);
                }
            },
        };
        let response =
            match outcome.map_err(|_| Status::internal("the worker's Python thread failed"))? {
                Some(Ok((payload, metadata))) => ExecuteToolResponse {
                    outcome: Some(Outcome::Result(payload)),
                    metadata,
                },
                Some(Err(error)) => ExecuteToolResponse {
                    outcome: Some(Outcome::Error(error)),
                    metadata: Default::default(),
                },
                // Only this handler cancels a unary call, and it no longer waits
                // once it has.
                None => return Err(Status::cancelled("the call was cancelled")),
            };
        Ok(Response::new(response))
    }

    type ExecuteStreamingToolStream = CallStream;

    async fn execute_streaming_tool(
        &self,
        request: Request<ExecuteToolRequest>,
    ) -> Result<Response<Self::ExecuteStreamingToolStream>, Status> {
        let deadline = deadline_of(&request);
        let request = request.into_inner();
        let dispatcher = self.dispatcher.clone();
        let control = CallControl::new(dispatcher.clone(), request.tool_name.clone());
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let guard = CancelOnDrop::new(control.clone());
        tokio::task::spawn_blocking(move || {
            thread_state::keep();
            // One GIL acquisition to start (the inner ones nest); the loop in
            // `produce` must not hold it while it waits for the consumer.
            let started = Python::attach(|_| {
                let handle = control.start(deadline)?;
                Some(dispatcher.open_stream(&request, handle.as_deref(), None))
            });
            if let Some(opened) = started {
                produce(opened, &control, &tx);
            }
            control.finish();
        });
        Ok(Response::new(CallStream::new(rx, deadline, guard, None)))
    }

    type ExecuteDuplexToolStream = CallStream;

    async fn execute_duplex_tool(
        &self,
        request: Request<Streaming<DuplexRequest>>,
    ) -> Result<Response<Self::ExecuteDuplexToolStream>, Status> {
        let deadline = deadline_of(&request);
        let mut requests = request.into_inner();
        let first = match deadline {
            None => requests.message().await?,
            Some(at) => tokio::time::timeout_at(at.into(), requests.message())
                .await
                .map_err(|_elapsed| deadline_exceeded())??,
        };
        let request = match first {
            Some(DuplexRequest {
                message: Some(duplex_request::Message::Start(start)),
            }) => start,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a duplex call must carry `start`",
                ))
            }
            None => {
                return Err(Status::invalid_argument(
                    "the duplex call's request stream ended before its `start` message",
                ))
            }
        };
        let dispatcher = self.dispatcher.clone();
        let control = CallControl::new(dispatcher.clone(), request.tool_name.clone());
        let guard = CancelOnDrop::new(control.clone());
        let (inputs, reader_news) = read_inputs(requests, control.clone());
        let inputs_closer = inputs.closer();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::task::spawn_blocking(move || {
            thread_state::keep();
            // As in `execute_streaming_tool`.
            let started = Python::attach(|_| {
                let handle = control.start(deadline)?;
                Some(dispatcher.open_stream(&request, handle.as_deref(), Some(inputs)))
            });
            if let Some(opened) = started {
                produce(opened, &control, &tx);
            }
            control.finish();
            // The call is over (the Python side closes the inputs too, but
            // not if it never started): stop reading the client's inputs.
            inputs_closer.cancel();
        });
        Ok(Response::new(CallStream::new(
            rx,
            deadline,
            guard,
            Some(reader_news),
        )))
    }
}

/// Runs a streaming tool in a blocking thread, sending its chunks to `tx`.
fn produce(
    opened: Result<ChunkIterator, ToolError>,
    control: &CallControl,
    tx: &mpsc::Sender<Result<ToolChunk, Status>>,
) {
    let chunks = match opened {
        Ok(chunks) => chunks,
        Err(error) => {
            let _ = tx.blocking_send(Ok(error_chunk(error)));
            return;
        }
    };
    // Attached once for the whole stream: the thread keeps one Python thread
    // state, and each step below nests cheaply inside it instead of creating
    // and destroying a thread state per chunk. The GIL is released while the
    // chunk waits for room in the buffer.
    Python::attach(|py| {
        while let Some(next) = chunks.next_chunk() {
            if control.is_cancelled() {
                // Nobody reads any more (the chunk or error of an interrupted
                // step included): close the generator so its `finally` blocks
                // run now, not at garbage collection.
                chunks.close();
                return;
            }
            let (message, failed) = match next {
                Ok(chunk) => (chunk, false),
                Err(error) => (error_chunk(error), true),
            };
            // Without the GIL only when the buffer is full and this thread
            // has to wait; a chunk that fits is queued at once.
            let sent = match tx.try_send(Ok(message)) {
                Ok(()) => true,
                Err(TrySendError::Full(message)) => py.detach(|| tx.blocking_send(message).is_ok()),
                Err(TrySendError::Closed(_)) => false,
            };
            if !sent {
                // The caller went away while the generator was suspended.
                chunks.close();
                return;
            }
            if failed {
                return;
            }
        }
    })
}

/// The response stream of `ExecuteStreamingTool` and `ExecuteDuplexTool`:
/// the generator's chunks, ended by the deadline or (duplex) by a failure of
/// the request stream; dropping it (the client went away) cancels the tool.
pub struct CallStream {
    chunks: ReceiverStream<Result<ToolChunk, Status>>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// A duplex call's news from the reader of its inputs.
    reader: Option<oneshot::Receiver<ReaderNews>>,
    ended: bool,
    /// When the last chunk went out (see [`SPIN_AFTER_CHUNK`]).
    last_chunk: Option<Instant>,
    guard: CancelOnDrop,
}

impl CallStream {
    fn new(
        chunks: mpsc::Receiver<Result<ToolChunk, Status>>,
        deadline: Option<Instant>,
        guard: CancelOnDrop,
        reader: Option<oneshot::Receiver<ReaderNews>>,
    ) -> Self {
        Self {
            chunks: ReceiverStream::new(chunks),
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at.into()))),
            reader,
            ended: false,
            last_chunk: None,
            guard,
        }
    }

    /// Ends the stream with `status`, cancelling the tool.
    fn fail(
        &mut self,
        status: Status,
        reason: CancelReason,
    ) -> Poll<Option<Result<ToolChunk, Status>>> {
        self.ended = true;
        self.chunks.close();
        self.guard.cancel(reason);
        Poll::Ready(Some(Err(status)))
    }
}

impl Stream for CallStream {
    type Item = Result<ToolChunk, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // The deadline first: a generator that is always ready must not
        // outrun it.
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return this.fail(deadline_exceeded(), CancelReason::Deadline);
            }
        }
        // Then a duplex call's inputs: a failed request stream ends the call
        // before outputs that are moot now.
        if let Some(news) = this.reader.as_mut() {
            match Pin::new(news).poll(cx) {
                Poll::Ready(Ok(ReaderNews::Failed(status))) => {
                    return this.fail(status, CancelReason::Caller)
                }
                Poll::Ready(Ok(ReaderNews::Ended(ack))) => {
                    // hyper polls this stream only after checking that the
                    // client did not reset it: the end of input is real.
                    this.reader = None;
                    let _ = ack.send(());
                }
                // The reader is done without news.
                Poll::Ready(Err(_closed)) => this.reader = None,
                Poll::Pending => {}
            }
        }
        let next = Pin::new(&mut this.chunks).poll_next(cx);
        match &next {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(_)) => this.last_chunk = Some(Instant::now()),
            Poll::Pending => {
                // Shortly after a chunk, the next one is likely on its way:
                // poll again soon instead of parking this thread, which the
                // producer would have to wake (a wake per chunk is most of
                // the cost of a fast stream).
                if spinning_pays()
                    && this
                        .last_chunk
                        .is_some_and(|at| at.elapsed() < SPIN_AFTER_CHUNK)
                {
                    cx.waker().wake_by_ref();
                }
            }
        }
        next
    }
}

fn error_chunk(error: ToolError) -> ToolChunk {
    ToolChunk {
        payload: None,
        is_final: true,
        metadata: Default::default(),
        error: Some(error),
    }
}
