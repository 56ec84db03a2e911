//! Server-streaming tool calls with flow control.
//!
//! `stream_open` sends `{tag, {:chunk, envelope, bytes}}` per chunk, in order, then
//! `{tag, :done}` or `{tag, {:error, failure}}` (`bytes`: the payload's size
//! as the worker sent it). Chunks that are already
//! there when one is sent travel with it, as `{tag, {:chunks, [envelope, ...], bytes}}`
//! in order (batching and credit: `snakepit_core::delivery`). At most
//! `window` chunks, and [`BYTE_WINDOW`] bytes of payload, are sent ahead of
//! what the caller acknowledged with `stream_ack`. Dropping the resource (the
//! caller died or gave up) or `stream_cancel` cancels the gRPC stream, which
//! stops the generator in the worker. Duplex calls (`duplex.rs`) use the same
//! resource and the same delivery of chunks.

use std::sync::{Arc, Mutex};

use rustler::{Decoder, Encoder, Env, NifMap, NifResult, ResourceArc, Term};
use snakepit_core::delivery::{self, bounded, Caller, Delivery};
use snakepit_core::envelope::{BinaryMode, Envelope};
use snakepit_core::proto::{DuplexRequest, ToolChunk};
use snakepit_core::window::{Window, BYTE_WINDOW};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::atoms;
use crate::binary::binary_term;
use crate::call::{grpc_request, timeout_of, Answer, CallRequest, Prepared};
use crate::codec::object_to_term;
use crate::error::FailureTerm;
use crate::reply::Reply;
use crate::runtime::runtime;

/// How a stream behaves: the keys of the request map besides the call's.
#[derive(NifMap)]
#[rustler(decode)]
pub struct StreamOptions {
    /// Between two chunks; 0 for none.
    pub idle_timeout_ms: u64,
    /// Chunks sent ahead of the caller's acknowledgements.
    pub window: usize,
    /// Raw payloads as binaries under `"data"` instead of base64 text.
    pub raw_binaries: bool,
}

impl StreamOptions {
    fn delivery(&self) -> Delivery {
        Delivery {
            idle_timeout: timeout_of(self.idle_timeout_ms),
            binary_mode: if self.raw_binaries {
                BinaryMode::Raw
            } else {
                BinaryMode::Base64
            },
        }
    }
}

/// What `stream_open` takes: one map, the call's keys and the stream's.
pub struct StreamRequest<'a> {
    pub call: CallRequest<'a>,
    pub options: StreamOptions,
}

impl<'a> Decoder<'a> for StreamRequest<'a> {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        Ok(Self {
            call: term.decode()?,
            options: term.decode()?,
        })
    }
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
    /// Sends `{tag, build(env)}`; false once the stream is closed or the caller gone.
    fn send<F>(&mut self, build: F) -> bool
    where
        F: for<'a> FnOnce(rustler::Env<'a>) -> Term<'a>,
    {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open && self.reply.send(build)
    }
}

impl Caller for Outbox {
    /// `{:chunk, map, bytes}` for one envelope, `{:chunks, [map, ...], bytes}`
    /// in order for several; `bytes` is the size of their payloads as the
    /// worker sent them.
    fn send(&mut self, batch: &[Envelope]) -> bool {
        let bytes: usize = batch.iter().map(|e| e.payload_bytes).sum();
        Outbox::send(self, |env| {
            if let [envelope] = batch {
                (atoms::chunk(), envelope_term(env, envelope), bytes).encode(env)
            } else {
                let terms: Vec<Term<'_>> = batch.iter().map(|e| envelope_term(env, e)).collect();
                (atoms::chunks(), terms, bytes).encode(env)
            }
        })
    }
}

// Encoding the arguments (JSON, binary copies) takes time proportional to
// their size, so this runs on a dirty scheduler, never a normal one.
#[rustler::nif(schedule = "DirtyCpu")]
fn stream_open<'a>(env: Env<'a>, request: StreamRequest<'a>) -> Term<'a> {
    let StreamRequest { call, options } = request;
    let max_input_bytes = call.worker.shared.max_message_bytes;
    let Prepared {
        request,
        mut client,
        answer,
    } = match call.prepare() {
        Ok(prepared) => prepared,
        Err(failure) => return failure.error_tuple(env),
    };
    let stream = StreamResource::new(options.window, None, max_input_bytes);
    let request = grpc_request(request, answer.timeout);
    let open = async move { client.execute_streaming_tool(request).await };
    spawn_stream(&stream, answer, &options, open, || {});
    (atoms::ok(), ResourceArc::new(stream)).encode(env)
}

/// Runs a stream on the runtime: opens it with `open`, delivers its chunks,
/// then reports `:done` or the failure; the whole within the call's timeout.
/// `on_end` runs when the task ends, however it ends.
pub fn spawn_stream<F, E>(
    stream: &StreamResource,
    answer: Answer,
    options: &StreamOptions,
    open: F,
    on_end: E,
) where
    F: std::future::Future<Output = Result<tonic::Response<Streaming<ToolChunk>>, tonic::Status>>
        + Send
        + 'static,
    E: FnOnce() + Send + 'static,
{
    let Answer {
        worker,
        reply,
        timeout,
    } = answer;
    let cancelled = stream.cancel.clone();
    let credit = stream.window.clone();
    let delivery = options.delivery();
    let mut outbox = Outbox {
        reply,
        open: stream.open.clone(),
    };
    runtime().spawn(async move {
        let _on_end = OnDrop(Some(on_end));
        let open = async { open.await.map(tonic::Response::into_inner) };
        let work = delivery::stream(open, &*worker, delivery, &credit, &mut outbox);
        let Some(outcome) = bounded(work, timeout, &cancelled).await else {
            return;
        };
        outbox.send(|env| match outcome {
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

fn envelope_term<'a>(env: Env<'a>, envelope: &Envelope) -> Term<'a> {
    let map = object_to_term(env, &envelope.fields);
    match &envelope.raw_data {
        Some(data) => map.map_put("data", binary_term(env, data)).unwrap_or(map),
        None => map,
    }
}
