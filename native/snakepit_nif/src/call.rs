//! Unary tool calls.
//!
//! `call_unary` validates and encodes the arguments on the calling scheduler
//! (so bad input fails before anything is sent), then runs the gRPC call on the
//! runtime and sends `{tag, {:ok, result}}` or `{tag, {:error, failure}}`.
//! It returns a resource; dropping it (e.g. the caller died) cancels the call.

use std::future::Future;
use std::time::Duration;

use rustler::{Encoder, Env, LocalPid, MapIterator, ResourceArc, Term, TermType};
use snakepit_core::client::WorkerClient;
use snakepit_core::proto::{
    execute_tool_response::Outcome, ExecuteToolRequest, Payload, PayloadKind,
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::atoms;
use crate::binary::binary_term;
use crate::codec;
use crate::error::Failure;
use crate::reply::Reply;
use crate::runtime::runtime;
use crate::worker::{WorkerResource, WorkerShared};

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

/// The request and the client of a call to `worker`, refusing arguments that
/// cannot be sent and a worker that is not ready, before anything is sent.
pub fn prepare_call(
    worker: &WorkerResource,
    tool: String,
    args: Term<'_>,
    binaries: Term<'_>,
    session_id: String,
) -> Result<(ExecuteToolRequest, WorkerClient), Failure> {
    let arguments_json = codec::encode(args, "args").map_err(Failure::unsendable)?;
    let mut binary_arguments = std::collections::HashMap::new();
    if binaries.get_type() == TermType::Map {
        for (key, value) in MapIterator::new(binaries).into_iter().flatten() {
            let name = key
                .decode::<String>()
                .or_else(|_| key.atom_to_string())
                .map_err(|_| {
                    invalid_binary("binary parameter names must be strings or atoms", "?")
                })?;
            let data = value
                .decode_as_binary()
                .map_err(|_| invalid_binary("binary parameters must be binaries", &name))?;
            binary_arguments.insert(name, data.as_slice().to_vec());
        }
    }
    let size = arguments_json.len() + binary_arguments.values().map(Vec::len).sum::<usize>();
    check_size(worker.shared.max_message_bytes, size, "a request")?;
    let client = client_of(worker)?;
    let request = ExecuteToolRequest {
        tool_name: tool,
        arguments_json,
        binary_arguments,
        session_id,
        metadata: Default::default(),
    };
    Ok((request, client))
}

/// Refuses, before anything is sent, a message the worker would refuse
/// (after the whole of it had been sent).
pub fn check_size(limit: usize, size: usize, what: &str) -> Result<(), Failure> {
    if size <= limit {
        return Ok(());
    }
    Err(Failure::new(
        atoms::validation(),
        format!("{what} of {size} bytes is larger than the pool's :max_message_bytes ({limit})"),
    )
    .with(atoms::reason(), "message_too_large"))
}

fn invalid_binary(message: &str, name: &str) -> Failure {
    Failure::new(atoms::validation(), format!("{message} ({name:?})"))
        .with(atoms::reason(), "invalid_binary_parameter")
        .with(atoms::path(), name)
}

/// The connected client of `worker`, or a `:worker` failure.
pub fn client_of(worker: &WorkerResource) -> Result<WorkerClient, Failure> {
    worker.client().ok_or_else(|| {
        Failure::new(
            atoms::worker(),
            format!("worker {} is not ready", worker.worker_id()),
        )
        .with(atoms::reason(), "not_ready")
    })
}

/// `Some(duration)`, or `None` for 0 (no timeout).
pub fn timeout_of(timeout_ms: u64) -> Option<Duration> {
    // `Snakepit` refuses longer timeouts; beyond this a deadline could
    // overflow the clock's arithmetic, and the call waits without one.
    const LONGEST_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
    (timeout_ms > 0 && timeout_ms <= LONGEST_MS).then(|| Duration::from_millis(timeout_ms))
}

/// Waits until `timeout` has passed; forever when there is none.
pub async fn expire(timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => tokio::time::sleep(timeout).await,
        None => std::future::pending().await,
    }
}

pub fn timed_out(timeout: Option<Duration>) -> Failure {
    let ms = timeout.map(|t| t.as_millis()).unwrap_or(0);
    Failure::new(
        atoms::timeout(),
        format!("the call did not finish within {ms} ms"),
    )
    .with(atoms::reason(), "timeout")
}

// Encoding the arguments (JSON, binary copies) takes time proportional to
// their size, so this runs on a dirty scheduler, never a normal one. For
// small arguments a normal scheduler would do less work, but measured slower
// end to end at concurrency 1 (about 340 against 260 µs here): the trip to a
// dirty scheduler and back keeps the caller's scheduler awake, so the reply
// does not have to wake it from sleep. Under load the two measured within 3%.
#[rustler::nif(schedule = "DirtyCpu")]
#[allow(clippy::too_many_arguments)]
fn call_unary<'a>(
    env: Env<'a>,
    worker: ResourceArc<WorkerResource>,
    owner: LocalPid,
    tag: Term<'a>,
    tool: String,
    arguments: Term<'a>,
    binaries: Term<'a>,
    session_id: String,
    timeout_ms: u64,
) -> Term<'a> {
    let (request, mut client) = match prepare_call(&worker, tool, arguments, binaries, session_id) {
        Ok(prepared) => prepared,
        Err(failure) => return failure.error_tuple(env),
    };
    let timeout = timeout_of(timeout_ms);
    let shared = worker.shared.clone();
    let work = async move {
        let mut request = tonic::Request::new(request);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let response = match client.execute_tool(request).await {
            Ok(response) => response,
            Err(status) => return Err(rpc_failure(&shared, status).await),
        };
        match response.into_inner().outcome {
            Some(Outcome::Result(payload)) => Ok(payload),
            Some(Outcome::Error(error)) => Err(Failure::from(error)),
            None => Err(Failure::new(
                atoms::transport(),
                "worker sent an empty response",
            )),
        }
    };
    spawn_call(env, owner, tag, timeout, work, |env, payload| {
        payload_term(env, &payload)
    })
}

/// Runs `work` on the runtime, bounded by `timeout`, and sends the caller
/// `{tag, {:ok, encode(value)}}` or `{tag, {:error, failure}}`. Returns
/// `{:ok, call}`; dropping or cancelling `call` abandons the work.
pub fn spawn_call<'a, T, W, E>(
    env: Env<'a>,
    owner: LocalPid,
    tag: Term<'a>,
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
    let mut reply = Reply::for_call(owner, tag);
    runtime().spawn(async move {
        let outcome = tokio::select! {
            _ = cancelled.cancelled() => return,
            _ = expire(timeout) => Err(timed_out(timeout)),
            outcome = work => outcome,
        };
        reply.send(|env| match outcome.and_then(|value| encode(env, value)) {
            Ok(term) => (atoms::ok(), term).encode(env),
            Err(failure) => failure.error_tuple(env),
        });
    });
    (atoms::ok(), ResourceArc::new(CallResource { cancel })).encode(env)
}

/// How long to wait, after an RPC failed, for news that the worker died.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// The failure of an RPC: `:worker` when the worker process died under it,
/// otherwise what the gRPC status says.
pub async fn rpc_failure(shared: &WorkerShared, status: Status) -> Failure {
    let connection_lost = matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    );
    if connection_lost {
        if let Some(exit) = shared.exit_within(EXIT_GRACE).await {
            return Failure::new(
                atoms::worker(),
                format!(
                    "worker {} exited during the call ({exit})",
                    shared.worker_id
                ),
            )
            .with(atoms::reason(), "worker_exited")
            .with(atoms::grpc_status(), format!("{:?}", status.code()));
        }
    }
    Failure::from(status)
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
