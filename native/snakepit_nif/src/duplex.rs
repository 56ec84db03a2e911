//! Duplex tool calls: inputs stream to the tool while its outputs stream back.
//!
//! `duplex_open` starts the call and returns a stream resource (see
//! `stream.rs` for the outputs: chunks, window, `:done`, errors, all sent to
//! `owner`). Inputs go through a bounded channel of `input_window` places:
//! the feeding process (`demand_to`, which may be another process than the
//! owner, so that a slow input source never delays the outputs) sends that
//! many with `duplex_send` at first, then one more each time it receives
//! `{tag, {:demand, 1}}`, which the NIF sends whenever gRPC takes an input off
//! the channel to put it on the wire. gRPC takes one only when HTTP/2 flow
//! control allows, and the worker reads one only when the tool asks, so the
//! caller's enumerable is consumed as fast as Python consumes it, no faster.
//! `duplex_close` ends the inputs (the tool's input iterator then ends);
//! cancelling the stream resets the call, so the tool is stopped instead.

use rustler::{Decoder, Encoder, Env, LocalPid, NifMap, NifResult, ResourceArc, Term, TermType};
use snakepit_core::proto::{duplex_request, DuplexRequest, Payload, PayloadKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::atoms;
use crate::call::{check_size, grpc_request, Prepared};
use crate::codec;
use crate::error::{Category, Failure, FailureTerm};
use crate::reply::Reply;
use crate::stream::{spawn_stream, StreamRequest, StreamResource};

/// The keys of a duplex call's request map besides the stream's.
#[derive(NifMap)]
#[rustler(decode)]
pub struct DuplexInputs {
    /// The process that feeds the inputs, and receives the demand for them.
    pub demand_to: LocalPid,
    /// Inputs queued in the NIF at most.
    pub input_window: usize,
}

/// What `duplex_open` takes: one map, the stream's keys and the inputs'.
pub struct DuplexOpen<'a> {
    pub stream: StreamRequest<'a>,
    pub inputs: DuplexInputs,
}

impl<'a> Decoder<'a> for DuplexOpen<'a> {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        Ok(Self {
            stream: term.decode()?,
            inputs: term.decode()?,
        })
    }
}

// Encoding the arguments (JSON, binary copies) takes time proportional to
// their size, so this runs on a dirty scheduler, never a normal one.
#[rustler::nif(schedule = "DirtyCpu")]
fn duplex_open<'a>(env: Env<'a>, request: DuplexOpen<'a>) -> Term<'a> {
    let DuplexOpen {
        stream: StreamRequest { call, options },
        inputs: DuplexInputs {
            demand_to,
            input_window,
        },
    } = request;
    let mut demand = Reply::new(demand_to, call.tag);
    let max_input_bytes = call.worker.shared.max_message_bytes;
    let Prepared {
        request: start,
        mut client,
        answer,
    } = match call.prepare() {
        Ok(prepared) => prepared,
        Err(failure) => return failure.error_tuple(env),
    };
    let (inputs_tx, inputs_rx) = mpsc::channel(input_window.max(1));
    let stream = StreamResource::new(options.window, Some(inputs_tx), max_input_bytes);
    let first = DuplexRequest {
        message: Some(duplex_request::Message::Start(start)),
    };
    let inputs =
        tokio_stream::once(first).chain(ReceiverStream::new(inputs_rx).map(move |input| {
            demand.send(|env| (atoms::demand(), 1).encode(env));
            input
        }));
    let mut request = grpc_request(inputs, answer.timeout);
    // Ending a duplex call early must reset it: dropping our side would only
    // half-close the inputs, which the tool would take for their normal end.
    // After a normal end the reset is a no-op.
    let reset = request.cancellation_handle();
    let open = async move { client.execute_duplex_tool(request).await };
    spawn_stream(&stream, answer, &options, open, move || reset.cancel());
    (atoms::ok(), ResourceArc::new(stream)).encode(env)
}

/// Queues `items` as inputs: binaries as raw bytes, other terms as JSON.
/// Returns `:ok`, or `{:error, failure}` when an item cannot be sent, the
/// inputs are closed, or more were sent than demanded.
// Encoding the arguments (JSON, binary copies) takes time proportional to
// their size, so this runs on a dirty scheduler, never a normal one.
#[rustler::nif(schedule = "DirtyCpu")]
fn duplex_send<'a>(
    env: Env<'a>,
    stream: ResourceArc<StreamResource>,
    items: Vec<Term<'a>>,
) -> Term<'a> {
    let payloads: Result<Vec<Payload>, Failure> = items
        .into_iter()
        .map(|item| input_payload(item, stream.max_input_bytes))
        .collect();
    let payloads = match payloads {
        Ok(payloads) => payloads,
        Err(failure) => return failure.error_tuple(env),
    };
    let inputs = stream.inputs.lock().unwrap_or_else(|e| e.into_inner());
    let Some(sender) = inputs.as_ref() else {
        return Failure::new(Category::Validation, "the inputs of this call are closed")
            .error_tuple(env);
    };
    for payload in payloads {
        let input = DuplexRequest {
            message: Some(duplex_request::Message::Input(payload)),
        };
        if let Err(e) = sender.try_send(input) {
            let message = match e {
                mpsc::error::TrySendError::Full(_) => "more inputs were sent than demanded",
                mpsc::error::TrySendError::Closed(_) => "the call has ended",
            };
            return Failure::new(Category::Transport, message).error_tuple(env);
        }
    }
    atoms::ok().encode(env)
}

/// Ends the inputs; the tool's input iterator finishes after those queued.
#[rustler::nif]
fn duplex_close(stream: ResourceArc<StreamResource>) -> rustler::Atom {
    stream
        .inputs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    atoms::ok()
}

/// One input as a payload: binaries raw, other terms as JSON; refused when
/// larger than the worker accepts.
fn input_payload(item: Term<'_>, max_bytes: usize) -> Result<Payload, Failure> {
    if item.get_type() == TermType::Binary {
        let data = item
            .decode_as_binary()
            .map_err(|_| Failure::new(Category::Validation, "unreadable binary input"))?;
        check_size(max_bytes, data.len(), "an input")?;
        return Ok(Payload {
            kind: PayloadKind::Raw as i32,
            data: bytes::Bytes::copy_from_slice(data.as_slice()),
        });
    }
    let data = codec::encode(item, "input").map_err(Failure::unsendable)?;
    check_size(max_bytes, data.len(), "an input")?;
    Ok(Payload {
        kind: PayloadKind::Json as i32,
        data: data.into(),
    })
}
