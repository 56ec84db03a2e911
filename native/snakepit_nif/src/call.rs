//! Unary tool calls, and the preamble every call kind shares.
//!
//! `call_unary` takes one [`CallRequest`] map, built by `Snakepit.Call`;
//! `stream_open` and `duplex_open` take the same map with more keys. The
//! arguments are validated and encoded on the calling scheduler (so bad
//! input fails before anything is sent), then the gRPC call runs on the
//! runtime and sends `{tag, {:ok, result}}` or `{tag, {:error, failure}}`.
//! It returns a resource; dropping it (e.g. the caller died) cancels the call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustler::{Encoder, Env, LocalPid, MapIterator, NifMap, ResourceArc, Term, TermType};
use snakepit_core::client::WorkerClient;
use snakepit_core::delivery::bounded;
use snakepit_core::failure::{rpc_failure, Worker};
use snakepit_core::process::ExitInfo;
use snakepit_core::proto::{
    execute_tool_response::Outcome, ExecuteToolRequest, Payload, PayloadKind,
};
use tokio_util::sync::CancellationToken;

use crate::atoms;
use crate::binary::binary_term;
use crate::codec;
use crate::error::{Category, Failure, FailureTerm, Reason};
use crate::reply::Reply;
use crate::runtime::runtime;
use crate::worker::{WorkerResource, WorkerShared};

/// What every call kind passes: one map, built by `Snakepit.Call`.
#[derive(NifMap)]
#[rustler(decode)]
pub struct CallRequest<'a> {
    pub worker: ResourceArc<WorkerResource>,
    /// Where the call's messages go, tagged with `tag`.
    pub owner: LocalPid,
    pub tag: Term<'a>,
    pub tool: String,
    pub args: Term<'a>,
    /// Parameters sent as raw bytes: a map of names to binaries.
    pub binaries: Term<'a>,
    pub session_id: String,
    /// The call's metadata, given to the tool as its session context's
    /// `metadata` (checked by `Snakepit`: strings, bounded).
    pub metadata: HashMap<String, String>,
    /// The whole call; 0 for none.
    pub timeout_ms: u64,
}

/// A call that passed the preamble: its request, encoded, the client that
/// sends it, and how it answers.
pub struct Prepared {
    pub request: ExecuteToolRequest,
    pub client: WorkerClient,
    pub answer: Answer,
}

/// Where a call answers and within what time, and the worker it runs on.
pub struct Answer {
    pub worker: Arc<WorkerShared>,
    pub reply: Reply,
    pub timeout: Option<Duration>,
}

impl CallRequest<'_> {
    /// The preamble of every call: refuses arguments that cannot be sent
    /// and a worker that is not ready, before anything is sent.
    pub fn prepare(self) -> Result<Prepared, Failure> {
        let arguments_json = codec::encode(self.args, "args").map_err(Failure::unsendable)?;
        let binary_arguments = binary_arguments(self.binaries)?;
        let size = arguments_json.len() + binary_arguments.values().map(Vec::len).sum::<usize>();
        check_size(self.worker.shared.max_message_bytes, size, "a request")?;
        let client = client_of(&self.worker)?;
        let request = ExecuteToolRequest {
            tool_name: self.tool,
            arguments_json,
            binary_arguments,
            session_id: self.session_id,
            metadata: self.metadata,
        };
        let answer = Answer {
            worker: self.worker.shared.clone(),
            reply: Reply::for_call(self.owner, self.tag),
            timeout: timeout_of(self.timeout_ms),
        };
        Ok(Prepared {
            request,
            client,
            answer,
        })
    }
}

/// `message` as a gRPC request bounded by `timeout` (sent as `grpc-timeout`:
/// the worker stops the tool when it passes).
pub fn grpc_request<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

fn binary_arguments(
    binaries: Term<'_>,
) -> Result<std::collections::HashMap<String, Vec<u8>>, Failure> {
    let mut arguments = std::collections::HashMap::new();
    if binaries.get_type() != TermType::Map {
        return Ok(arguments);
    }
    for (key, value) in MapIterator::new(binaries).into_iter().flatten() {
        let name = key
            .decode::<String>()
            .or_else(|_| key.atom_to_string())
            .map_err(|_| invalid_binary("binary parameter names must be strings or atoms", "?"))?;
        let data = value
            .decode_as_binary()
            .map_err(|_| invalid_binary("binary parameters must be binaries", &name))?;
        arguments.insert(name, data.as_slice().to_vec());
    }
    Ok(arguments)
}

/// Refuses, before anything is sent, a message the worker would refuse
/// (after the whole of it had been sent).
pub fn check_size(limit: usize, size: usize, what: &str) -> Result<(), Failure> {
    if size <= limit {
        return Ok(());
    }
    Err(Failure::too_large(what, size, limit))
}

fn invalid_binary(message: &str, name: &str) -> Failure {
    Failure::new(Category::Validation, format!("{message} ({name:?})"))
        .with_reason(Reason::InvalidBinaryParameter)
        .with_path(name)
}

/// The connected client of `worker`, or a `:worker` failure.
pub fn client_of(worker: &WorkerResource) -> Result<WorkerClient, Failure> {
    worker.client().ok_or_else(|| {
        Failure::new(
            Category::Worker,
            format!("worker {} is not ready", worker.worker_id()),
        )
        .with_reason(Reason::NotReady)
    })
}

/// `Some(duration)`, or `None` for 0 (no timeout).
pub fn timeout_of(timeout_ms: u64) -> Option<Duration> {
    // `Snakepit` refuses longer timeouts; beyond this a deadline could
    // overflow the clock's arithmetic, and the call waits without one.
    const LONGEST_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
    (timeout_ms > 0 && timeout_ms <= LONGEST_MS).then(|| Duration::from_millis(timeout_ms))
}

/// What classifying a failed RPC asks of the worker (see `rpc_failure`).
impl Worker for WorkerShared {
    fn worker_id(&self) -> &str {
        &self.worker_id
    }

    fn exit_within(&self, grace: Duration) -> impl Future<Output = Option<ExitInfo>> + Send {
        WorkerShared::exit_within(self, grace)
    }
}

// Encoding the arguments (JSON, binary copies) takes time proportional to
// their size, so this runs on a dirty scheduler, never a normal one. For
// small arguments a normal scheduler would do less work, but measured slower
// end to end at concurrency 1 (about 340 against 260 µs here): the trip to a
// dirty scheduler and back keeps the caller's scheduler awake, so the reply
// does not have to wake it from sleep. Under load the two measured within 3%.
#[rustler::nif(schedule = "DirtyCpu")]
fn call_unary<'a>(env: Env<'a>, request: CallRequest<'a>) -> Term<'a> {
    let Prepared {
        request,
        mut client,
        answer: Answer {
            worker,
            reply,
            timeout,
        },
    } = match request.prepare() {
        Ok(prepared) => prepared,
        Err(failure) => return failure.error_tuple(env),
    };
    let work = async move {
        let response = match client.execute_tool(grpc_request(request, timeout)).await {
            Ok(response) => response,
            Err(status) => return Err(rpc_failure(&*worker, status).await),
        };
        match response.into_inner().outcome {
            Some(Outcome::Result(payload)) => Ok(payload),
            Some(Outcome::Error(error)) => Err(Failure::from(error)),
            None => Err(Failure::new(
                Category::Transport,
                "worker sent an empty response",
            )),
        }
    };
    spawn_call(env, reply, timeout, work, |env, payload| {
        payload_term(env, &payload)
    })
}

/// Runs `work` on the runtime, bounded by `timeout`, and sends the caller
/// `{tag, {:ok, encode(value)}}` or `{tag, {:error, failure}}`. Returns
/// `{:ok, call}`; dropping or cancelling `call` abandons the work.
pub fn spawn_call<'a, T, W, E>(
    env: Env<'a>,
    mut reply: Reply,
    timeout: Option<Duration>,
    work: W,
    encode: E,
) -> Term<'a>
where
    T: Send + 'static,
    W: Future<Output = Result<T, Failure>> + Send + 'static,
    E: for<'b> FnOnce(Env<'b>, T) -> Result<Term<'b>, Failure> + Send + 'static,
{
    let cancel = CancellationToken::new();
    let cancelled = cancel.clone();
    runtime().spawn(async move {
        let Some(outcome) = bounded(work, timeout, &cancelled).await else {
            return;
        };
        reply.send(|env| match outcome.and_then(|value| encode(env, value)) {
            Ok(term) => (atoms::ok(), term).encode(env),
            Err(failure) => failure.error_tuple(env),
        });
    });
    (atoms::ok(), ResourceArc::new(CallResource { cancel })).encode(env)
}

/// A call in flight; dropping it cancels the call.
pub struct CallResource {
    pub cancel: CancellationToken,
}

#[rustler::resource_impl]
impl rustler::Resource for CallResource {}

impl Drop for CallResource {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Cancels a call or stream at once (the resource may still be referenced).
#[rustler::nif]
fn call_cancel(call: ResourceArc<CallResource>) -> rustler::Atom {
    call.cancel.cancel();
    atoms::ok()
}

/// A result payload as a term: JSON decoded, raw bytes as a binary.
fn payload_term<'a>(env: Env<'a>, payload: &Payload) -> Result<Term<'a>, Failure> {
    if payload.kind == PayloadKind::Raw as i32 {
        return Ok(binary_term(env, &payload.data));
    }
    if payload.data.is_empty() {
        return Ok(atoms::nil().encode(env));
    }
    codec::decode(env, &payload.data).map_err(|e| Failure::unreceivable(e.at_root("result")))
}
