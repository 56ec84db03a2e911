//! The `WorkerService` gRPC implementation of a Python worker.

use snakepit_core::proto::worker_service_server::WorkerService as WorkerServiceApi;
use snakepit_core::proto::{
    execute_tool_response::Outcome, DescribeRequest, DescribeResponse, ExecuteToolRequest,
    ExecuteToolResponse, GetVersionRequest, ToolChunk, ToolError, VersionInfo,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::describe::describe_response;
use crate::dispatch::Dispatcher;

/// Chunks buffered between a Python generator and the HTTP/2 stream. When the
/// buffer is full the generator's thread waits: that is the backpressure.
const STREAM_BUFFER: usize = 16;

pub struct WorkerService {
    dispatcher: Dispatcher,
    versions: VersionInfo,
}

impl WorkerService {
    pub fn new(dispatcher: Dispatcher, versions: VersionInfo) -> Self {
        Self {
            dispatcher,
            versions,
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
        let json = tokio::task::spawn_blocking(move || dispatcher.describe_json())
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
        let request = request.into_inner();
        let dispatcher = self.dispatcher.clone();
        let outcome = tokio::task::spawn_blocking(move || dispatcher.call(&request))
            .await
            .map_err(internal)?;
        let response = match outcome {
            Ok((payload, metadata)) => ExecuteToolResponse {
                outcome: Some(Outcome::Result(payload)),
                metadata,
            },
            Err(error) => ExecuteToolResponse {
                outcome: Some(Outcome::Error(error)),
                metadata: Default::default(),
            },
        };
        Ok(Response::new(response))
    }

    type ExecuteStreamingToolStream = ReceiverStream<Result<ToolChunk, Status>>;

    async fn execute_streaming_tool(
        &self,
        request: Request<ExecuteToolRequest>,
    ) -> Result<Response<Self::ExecuteStreamingToolStream>, Status> {
        let request = request.into_inner();
        let dispatcher = self.dispatcher.clone();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::task::spawn_blocking(move || {
            let chunks = match dispatcher.open_stream(&request) {
                Ok(chunks) => chunks,
                Err(error) => {
                    let _ = tx.blocking_send(Ok(error_chunk(error)));
                    return;
                }
            };
            while let Some(next) = chunks.next_chunk() {
                let (message, failed) = match next {
                    Ok(chunk) => (chunk, false),
                    Err(error) => (error_chunk(error), true),
                };
                if tx.blocking_send(Ok(message)).is_err() {
                    // The caller went away: close the generator so its
                    // `finally` blocks run now, not at garbage collection.
                    chunks.close();
                    return;
                }
                if failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
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
