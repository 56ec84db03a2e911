//! Server-streaming tool calls with flow control.
//!
//! `stream_open` sends `{tag, {:chunk, envelope}}` per chunk, in order, then
//! `{tag, :done}` or `{tag, {:error, failure}}`. Chunks that are already
//! there when one is sent travel with it, as `{tag, {:chunks, [envelope, ...]}}`
//! in order, so a fast stream costs one message per batch, not per chunk.
//! At most `window` chunks, and [`BYTE_WINDOW`] bytes of payload, are sent
//! ahead of what the caller acknowledged with `stream_ack` (each chunk of a
//! batch counts; see `snakepit_core::window`); while the window is full the
//! task stops reading, HTTP/2 flow control fills up, and the worker's Python
//! generator waits. Dropping the resource (the caller died or
//! gave up) or `stream_cancel` cancels the gRPC stream, which stops the
//! generator in the worker. Duplex calls (`duplex.rs`) use the same resource
//! and the same delivery of chunks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustler::{Encoder, Env, LocalPid, NifMap, ResourceArc, Term};
use snakepit_core::envelope::{BinaryMode, Envelope, StreamEnvelopes};
use snakepit_core::proto::{DuplexRequest, ToolChunk};
use snakepit_core::window::{Window, BYTE_WINDOW};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::atoms;
use crate::binary::binary_term;
use crate::call::{expire, prepare_call, rpc_failure, timed_out, timeout_of};
use crate::codec::object_to_term;
use crate::error::Failure;
use crate::reply::Reply;
use crate::runtime::runtime;
use crate::worker::{WorkerResource, WorkerShared};

/// How a stream behaves, as `Snakepit.Call` passes it.
#[derive(NifMap)]
pub struct StreamOptions {
    /// The whole stream; 0 for none.
    pub timeout_ms: u64,
    /// Between two chunks; 0 for none.
    pub idle_timeout_ms: u64,
    /// Chunks sent ahead of the caller's acknowledgements.
    pub window: usize,
    /// Raw payloads as binaries under `"data"` instead of base64 text.
    pub raw_binaries: bool,
}

/// A stream in flight; dropping it cancels the stream.
pub struct StreamResource {
    pub cancel: CancellationToken,
    pub window: Arc<Window>,
    /// The inputs of a duplex call; `None` for a plain stream or once closed.
    pub inputs: Mutex<Option<mpsc::Sender<DuplexRequest>>>,
    /// The largest input the worker accepts (its `:max_message_bytes`).
    pub max_input_bytes: usize,
    /// Whether messages may still go to the caller (see [`Outbox`]).
    open: Arc<Mutex<bool>>,
}

#[rustler::resource_impl]
impl rustler::Resource for StreamResource {}

impl Drop for StreamResource {
    fn drop(&mut self) {
        self.close();
    }
}

impl StreamResource {
    pub fn new(
        window: usize,
        inputs: Option<mpsc::Sender<DuplexRequest>>,
        max_input_bytes: usize,
    ) -> Self {
        Self {
            cancel: CancellationToken::new(),
            window: Arc::new(Window::new(window, BYTE_WINDOW)),
            inputs: Mutex::new(inputs),
            max_input_bytes,
            open: Arc::new(Mutex::new(true)),
        }
    }

    /// Cancels the stream; once this returns, no message of it reaches the caller.
    fn close(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.cancel.cancel();
    }
}

/// The caller's end of a stream. Sending and closing take the same lock, so
/// after `stream_cancel` no further chunk lands in the caller's mailbox: only
/// what was already there, which the caller flushes.
pub struct Outbox {
    reply: Reply,
    open: Arc<Mutex<bool>>,
}

impl Outbox {
    fn new(stream: &StreamResource, reply: Reply) -> Self {
        Self {
            reply,
            open: stream.open.clone(),
        }
    }

    /// Sends `{tag, build(env)}`; false once the stream is closed or the caller gone.
    fn send<F>(&mut self, build: F) -> bool
    where
        F: for<'a> FnOnce(rustler::Env<'a>) -> Term<'a>,
    {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open && self.reply.send(build)
    }
}

// Encoding the arguments (JSON, binary copies) takes time proportional to
// their size, so this runs on a dirty scheduler, never a normal one.
#[rustler::nif(schedule = "DirtyCpu")]
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
    options: StreamOptions,
) -> Term<'a> {
    let (request, mut client) = match prepare_call(&worker, tool, arguments, binaries, session_id) {
        Ok(prepared) => prepared,
        Err(failure) => return failure.error_tuple(env),
    };
    let stream = StreamResource::new(options.window, None, worker.shared.max_message_bytes);
    let timeout = timeout_of(options.timeout_ms);
    let open = async move {
        let mut request = tonic::Request::new(request);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        client.execute_streaming_tool(request).await
    };
    spawn_stream(
        &stream,
        &worker,
        Reply::for_call(owner, tag),
        options,
        open,
        || {},
    );
    (atoms::ok(), ResourceArc::new(stream)).encode(env)
}

/// Runs a stream on the runtime: opens it with `open`, delivers its chunks,
/// then reports `:done` or the failure; the whole within the stream timeout.
/// `on_end` runs when the task ends, however it ends.
pub fn spawn_stream<F, E>(
    stream: &StreamResource,
    worker: &WorkerResource,
    reply: Reply,
    options: StreamOptions,
    open: F,
    on_end: E,
) where
    F: std::future::Future<Output = Result<tonic::Response<Streaming<ToolChunk>>, tonic::Status>>
        + Send
        + 'static,
    E: FnOnce() + Send + 'static,
{
    let cancelled = stream.cancel.clone();
    let credit = stream.window.clone();
    let shared = worker.shared.clone();
    let mut reply = Outbox::new(stream, reply);
    runtime().spawn(async move {
        let _on_end = OnDrop(Some(on_end));
        let timeout = timeout_of(options.timeout_ms);
        let work = async {
            let chunks = match open.await {
                Ok(response) => response.into_inner(),
                Err(status) => return Err(rpc_failure(&shared, status).await),
            };
            deliver_all(chunks, &shared, &options, &credit, &mut reply).await
        };
        let outcome = tokio::select! {
            _ = cancelled.cancelled() => return,
            _ = expire(timeout) => Err(timed_out(timeout)),
            outcome = work => outcome,
        };
        reply.send(|env| match outcome {
            Ok(()) => atoms::done().encode(env),
            Err(failure) => failure.error_tuple(env),
        });
    });
}

/// Runs its function when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Returns `count` chunks of credit to the stream's window.
#[rustler::nif]
fn stream_ack(stream: ResourceArc<StreamResource>, count: usize) -> rustler::Atom {
    stream.window.ack(count);
    atoms::ok()
}

/// Cancels the stream at once; no message of it is sent after this returns.
#[rustler::nif]
fn stream_cancel(stream: ResourceArc<StreamResource>) -> rustler::Atom {
    stream.close();
    atoms::ok()
}

/// Most chunks sent to the caller in one message.
const MAX_BATCH: usize = 64;

async fn deliver_all(
    mut chunks: Streaming<ToolChunk>,
    shared: &WorkerShared,
    options: &StreamOptions,
    credit: &Window,
    reply: &mut Outbox,
) -> Result<(), Failure> {
    let mode = if options.raw_binaries {
        BinaryMode::Raw
    } else {
        BinaryMode::Base64
    };
    let idle = timeout_of(options.idle_timeout_ms);
    let mut envelopes = StreamEnvelopes::new(shared.worker_id.clone(), mode);
    let mut batch = Vec::new();
    // A chunk read while building a batch, whose credit was not there yet.
    let mut carried = None;
    loop {
        let next = match carried.take() {
            Some(next) => next,
            None => tokio::select! {
                next = chunks.message() => next,
                _ = expire(idle) => return Err(idle_timeout(idle)),
            },
        };
        // The caller's credit for this chunk; more chunks join its message
        // only while credit and chunks are both there without waiting.
        if let Some(size) = delivered_size(&next) {
            take_credit(credit, size).await?;
        }
        let mut next = Some(next);
        loop {
            match next.take() {
                None => break,
                Some(Ok(Some(chunk))) => {
                    if let Some(error) = chunk.error {
                        send_batch(reply, &mut batch)?;
                        return Err(error.into());
                    }
                    match envelopes.envelope(chunk) {
                        Ok(envelope) => batch.push(envelope),
                        Err(error) => {
                            // The chunks before it still reach the caller.
                            send_batch(reply, &mut batch)?;
                            return Err(error.into());
                        }
                    }
                }
                Some(Ok(None)) => {
                    send_batch(reply, &mut batch)?;
                    return finish(&mut envelopes, credit, reply).await;
                }
                Some(Err(status)) => {
                    send_batch(reply, &mut batch)?;
                    return Err(rpc_failure(shared, status).await);
                }
            }
            if batch.len() == MAX_BATCH {
                break;
            }
            let Some(ready) = ready_now(chunks.message()).await else {
                break;
            };
            match delivered_size(&ready) {
                Some(size) if !credit.try_take(size) => {
                    carried = Some(ready);
                    break;
                }
                _ => next = Some(ready),
            }
        }
        send_batch(reply, &mut batch)?;
    }
}

/// Ends a stream that ended cleanly: the synthetic final chunk, if needed.
async fn finish(
    envelopes: &mut StreamEnvelopes,
    credit: &Window,
    reply: &mut Outbox,
) -> Result<(), Failure> {
    if let Some(envelope) = envelopes.finish() {
        take_credit(credit, 0).await?;
        send_batch(reply, &mut vec![envelope])?;
    }
    Ok(())
}

/// The payload size of what `next` delivers to the caller as a chunk, or
/// `None` when it delivers none (the end, an error).
fn delivered_size(next: &Result<Option<ToolChunk>, tonic::Status>) -> Option<usize> {
    match next {
        Ok(Some(chunk)) if chunk.error.is_none() => {
            Some(chunk.payload.as_ref().map_or(0, |p| p.data.len()))
        }
        _ => None,
    }
}

/// `Some(output)` if `future` is ready at its first poll, else `None` (the
/// future is dropped: use it only with cancel-safe futures).
async fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

fn idle_timeout(idle: Option<Duration>) -> Failure {
    let ms = idle.map(|t| t.as_millis()).unwrap_or(0);
    Failure::new(
        atoms::timeout(),
        format!("no chunk arrived for {ms} ms (idle timeout)"),
    )
    .with(atoms::reason(), "idle_timeout")
}

async fn take_credit(credit: &Window, size: usize) -> Result<(), Failure> {
    credit
        .take(size)
        .await
        .map_err(|_| Failure::new(atoms::transport(), "stream window closed"))
}

/// Sends the envelopes of `batch` (emptied) to the caller: `{:chunk, map}`
/// for one, `{:chunks, [map, ...]}` in order for several.
fn send_batch(reply: &mut Outbox, batch: &mut Vec<Envelope>) -> Result<(), Failure> {
    if batch.is_empty() {
        return Ok(());
    }
    let delivered = reply.send(|env| {
        let message = if let [envelope] = batch.as_slice() {
            (atoms::chunk(), envelope_term(env, envelope)).encode(env)
        } else {
            let terms: Vec<Term<'_>> = batch.iter().map(|e| envelope_term(env, e)).collect();
            (atoms::chunks(), terms).encode(env)
        };
        message
    });
    batch.clear();
    if delivered {
        Ok(())
    } else {
        Err(Failure::new(
            atoms::transport(),
            "the caller is gone or cancelled",
        ))
    }
}

fn envelope_term<'a>(env: Env<'a>, envelope: &Envelope) -> Term<'a> {
    let map = object_to_term(env, &envelope.fields);
    match &envelope.raw_data {
        Some(data) => map.map_put("data", binary_term(env, data)).unwrap_or(map),
        None => map,
    }
}
