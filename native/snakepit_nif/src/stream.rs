//! Server-streaming tool calls with flow control.
//!
//! `stream_open` sends `{tag, {:chunk, envelope}}` per chunk, in order, then
//! `{tag, :done}` or `{tag, {:error, failure}}`. At most `window` chunks are
//! sent ahead of what the caller acknowledged with `stream_ack`; while the
//! window is full the task stops reading, HTTP/2 flow control fills up, and the
//! worker's Python generator waits. Dropping the resource (the caller died or
//! gave up) or `stream_cancel` cancels the gRPC stream, which closes the
//! generator in the worker.

use std::sync::Arc;
use std::time::Duration;

use rustler::{Encoder, Env, LocalPid, ResourceArc, Term};
use snakepit_core::client::WorkerClient;
use snakepit_core::envelope::StreamEnvelopes;
use snakepit_core::proto::ExecuteToolRequest;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::atoms;
use crate::call::{client_of, expire, prepare_request, rpc_failure, timed_out, timeout_of};
use crate::codec::object_to_term;
use crate::error::Failure;
use crate::reply::Reply;
use crate::runtime::runtime;
use crate::worker::{WorkerResource, WorkerShared};

/// A stream in flight; dropping it cancels the stream.
pub struct StreamResource {
    cancel: CancellationToken,
    window: Arc<Semaphore>,
}

#[rustler::resource_impl]
impl rustler::Resource for StreamResource {}

impl Drop for StreamResource {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn stream_open<'a>(
    env: Env<'a>,
    worker: ResourceArc<WorkerResource>,
    owner: LocalPid,
    tag: Term<'a>,
    tool: String,
    arguments: Term<'a>,
    binaries: Term<'a>,
    session_id: String,
    timeout_ms: u64,
    window: usize,
) -> Term<'a> {
    let prepared = prepare_request(tool, arguments, binaries, session_id)
        .and_then(|request| Ok((request, client_of(&worker)?)));
    let (request, client) = match prepared {
        Ok(prepared) => prepared,
        Err(failure) => return failure.error_tuple(env),
    };
    let stream = StreamResource {
        cancel: CancellationToken::new(),
        window: Arc::new(Semaphore::new(window.max(1))),
    };
    let cancelled = stream.cancel.clone();
    let credit = stream.window.clone();
    let shared = worker.shared.clone();
    let timeout = timeout_of(timeout_ms);
    let mut reply = Reply::new(owner, tag);
    runtime().spawn(async move {
        let outcome = tokio::select! {
            _ = cancelled.cancelled() => return,
            _ = expire(timeout) => Err(timed_out(timeout)),
            outcome = forward(client, request, timeout, &shared, &credit, &mut reply) => outcome,
        };
        reply.send(|env| match outcome {
            Ok(()) => atoms::done().encode(env),
            Err(failure) => failure.error_tuple(env),
        });
    });
    (atoms::ok(), ResourceArc::new(stream)).encode(env)
}

/// Returns `count` chunks of credit to the stream's window.
#[rustler::nif]
fn stream_ack(stream: ResourceArc<StreamResource>, count: usize) -> rustler::Atom {
    stream.window.add_permits(count);
    atoms::ok()
}

/// Cancels the stream at once.
#[rustler::nif]
fn stream_cancel(stream: ResourceArc<StreamResource>) -> rustler::Atom {
    stream.cancel.cancel();
    atoms::ok()
}

async fn forward(
    mut client: WorkerClient,
    request: ExecuteToolRequest,
    timeout: Option<Duration>,
    shared: &WorkerShared,
    credit: &Semaphore,
    reply: &mut Reply,
) -> Result<(), Failure> {
    let mut request = tonic::Request::new(request);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let mut chunks = match client.execute_streaming_tool(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(rpc_failure(shared, status).await),
    };
    let mut envelopes = StreamEnvelopes::new(shared.worker_id.clone());
    loop {
        let chunk = match chunks.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(status) => return Err(rpc_failure(shared, status).await),
        };
        if let Some(error) = chunk.error {
            return Err(error.into());
        }
        let envelope = envelopes.envelope(&chunk)?;
        deliver(credit, reply, &envelope).await?;
    }
    if let Some(envelope) = envelopes.finish() {
        deliver(credit, reply, &envelope).await?;
    }
    Ok(())
}

async fn deliver(
    credit: &Semaphore,
    reply: &mut Reply,
    envelope: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), Failure> {
    // Closing the semaphore never happens, so acquire only fails on a bug.
    credit
        .acquire()
        .await
        .map_err(|_| Failure::new(atoms::transport(), "stream window closed"))?
        .forget();
    let delivered = reply.send(|env| (atoms::chunk(), object_to_term(env, envelope)).encode(env));
    if delivered {
        Ok(())
    } else {
        Err(Failure::new(atoms::transport(), "the caller is gone"))
    }
}
