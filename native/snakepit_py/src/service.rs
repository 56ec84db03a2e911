//! The `WorkerService` gRPC implementation of a Python worker.
//!
//! Unary calls run on the worker's executor (`snakepit_core::executor`):
//! queued calls run back to back on one thread, and a call stuck behind a
//! slow one gets a thread of its own. A streaming or duplex call runs its
//! generator on a blocking thread of its own for its whole life.
//!
//! What happens around the tool is `snakepit_core::worker`: the deadline
//! (`unary`), cancellation when the caller goes away (`control`), the
//! response stream and its backpressure (`stream`), a duplex call's inputs
//! (`inputs`), and the recycle request when a cancelled tool does not stop
//! (`stuck`). This module wires them to the Python dispatcher, holding the
//! GIL once per call (unary) or once per stream.

use pyo3::Python;
use snakepit_core::executor::Executor;
use snakepit_core::proto::worker_service_server::WorkerService as WorkerServiceApi;
use snakepit_core::proto::{
    execute_tool_response::Outcome, DescribeRequest, DescribeResponse, DuplexRequest,
    ExecuteToolRequest, ExecuteToolResponse, GetVersionRequest, ToolError, VersionInfo,
};
use snakepit_core::worker::inputs::{read_inputs, read_start};
use snakepit_core::worker::stream::{self, error_chunk, StreamItem, STREAM_BUFFER};
use snakepit_core::worker::stuck::StuckWatch;
use snakepit_core::worker::unary::{unary_outcome, CallDeadline};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use crate::control::{self, Control, Guard, PyCall};
use crate::describe::describe_response;
use crate::dispatch::{AttachedChunks, ChunkIterator, Dispatcher};
use crate::inputs::InputIterator;
use crate::{stuck, thread_state};

/// The response stream of streaming and duplex calls.
pub type CallStream = stream::CallStream<PyCall>;

pub struct WorkerService {
    dispatcher: Dispatcher,
    versions: VersionInfo,
    /// Runs unary calls (streams keep a thread each for their whole life).
    executor: Executor,
    stuck: &'static StuckWatch,
}

impl WorkerService {
    pub fn new(dispatcher: Dispatcher, versions: VersionInfo) -> Self {
        Self {
            dispatcher,
            versions,
            executor: Executor::new("snakepit-python", thread_state::keep),
            stuck: stuck::watch(),
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
        let deadline = CallDeadline::of(&request);
        let deadline_at = deadline.map(|d| d.at);
        let request = request.into_inner();
        let dispatcher = self.dispatcher.clone();
        let control = Control::new(request.tool_name.clone(), self.stuck);
        // Dropped with this future when the client goes away: cancels the tool.
        let guard = Guard::new(control.clone());
        let (done, mut result) = oneshot::channel();
        let ticket = self.executor.submit(move || {
            // One GIL acquisition for the whole call (the inner ones nest).
            let outcome = Python::attach(|_| {
                let handle = control::start(&control, &dispatcher, deadline_at)?;
                let outcome = dispatcher.call(&request, handle.as_deref().map(PyCall::object));
                control.finish();
                Some(outcome)
            });
            let _ = done.send(outcome);
        });
        // Still queued after the hand-off (the threads are busy): the call
        // gets a thread of its own.
        let outcome = unary_outcome(&mut result, deadline, &guard, || {
            self.executor.unstick(ticket)
        })
        .await?;
        let response = match outcome {
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
        let deadline = CallDeadline::of(&request).map(|d| d.at);
        let request = request.into_inner();
        let dispatcher = self.dispatcher.clone();
        let control = Control::new(request.tool_name.clone(), self.stuck);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let guard = Guard::new(control.clone());
        tokio::task::spawn_blocking(move || {
            thread_state::keep();
            // One GIL acquisition to start (the inner ones nest); the loop in
            // `produce` must not hold it while it waits for the consumer.
            let started = Python::attach(|_| {
                let handle = control::start(&control, &dispatcher, deadline)?;
                Some(dispatcher.open_stream(&request, handle.as_deref().map(PyCall::object), None))
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
        let deadline = CallDeadline::of(&request).map(|d| d.at);
        let mut requests = request.into_inner();
        let request = read_start(&mut requests, deadline).await?;
        let dispatcher = self.dispatcher.clone();
        let control = Control::new(request.tool_name.clone(), self.stuck);
        let guard = Guard::new(control.clone());
        let (inputs, reader_news) = read_inputs(requests, control.clone());
        let inputs_closer = inputs.closer();
        let inputs = InputIterator::from(inputs);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::task::spawn_blocking(move || {
            thread_state::keep();
            // As in `execute_streaming_tool`.
            let started = Python::attach(|_| {
                let handle = control::start(&control, &dispatcher, deadline)?;
                Some(dispatcher.open_stream(
                    &request,
                    handle.as_deref().map(PyCall::object),
                    Some(inputs),
                ))
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

/// Runs a streaming tool in a blocking thread, sending its chunks to `tx`;
/// attached to Python once for the whole stream (see [`AttachedChunks`]).
fn produce(
    opened: Result<ChunkIterator, ToolError>,
    control: &Control,
    tx: &mpsc::Sender<StreamItem>,
) {
    match opened {
        Ok(chunks) => Python::attach(|py| {
            stream::produce(
                &AttachedChunks {
                    py,
                    chunks: &chunks,
                },
                control,
                tx,
            )
        }),
        Err(error) => {
            let _ = tx.blocking_send(Ok(error_chunk(error)));
        }
    }
}
