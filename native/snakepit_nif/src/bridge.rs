//! The node's bridge server and the Elixir tools it offers to Python.
//!
//! `bridge_start` serves the session store (`session.rs`) over gRPC with
//! `snakepit_core::bridge`, on loopback, behind the node's token; workers
//! spawned afterwards find it in `SNAKEPIT_BRIDGE_ADDRESS`. The `owner`
//! process (`Snakepit.Bridge`) receives
//!
//! * `{:snakepit_tool_call, call, name, args, context}` when Python runs an
//!   Elixir tool; it answers with `bridge_tool_reply(call, outcome)`;
//! * `{:snakepit_session_ended, id, reason}` when a session is deleted or
//!   expires, so pools can drop their bindings.
//!
//! Messages are sent from runtime threads only (never from a scheduler thread,
//! where `OwnedEnv` must not send): the store's end listener hands the event
//! to a channel drained by a task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustler::{Atom, Encoder, Env, LocalPid, NifMap, OwnedEnv, ResourceArc, Term};
use snakepit_core::bridge::ERROR_METADATA_KEY;
use snakepit_core::bridge::{
    serve, tool_not_found, BridgeConfig, BridgeServer, ToolCall as ToolFuture, ToolHost,
};
use snakepit_core::proto::{
    execute_tool_response::Outcome, ExecuteToolRequest, ExecuteToolResponse, ParameterSpec,
    Payload, PayloadKind, ToolError, ToolSpec,
};
use snakepit_core::session::{Store, StoreConfig};
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::atoms;
use crate::codec::{decode, encode};
use crate::runtime::{node_token, runtime};
use crate::session::store_with;

/// How `Snakepit.Bridge` configures the server and the store.
#[derive(NifMap)]
pub struct BridgeOptions {
    /// `"127.0.0.1:0"` unless configured.
    address: String,
    heartbeat_ms: u64,
    max_sessions: usize,
    max_variables_per_session: usize,
    session_ttl_s: u64,
    watch_buffer: usize,
    max_message_bytes: usize,
}

static SERVER: Mutex<Option<BridgeServer>> = Mutex::new(None);
static ADDRESS: RwLock<Option<String>> = RwLock::new(None);
/// Where the bridge last listened: a restarted bridge asked for port 0 takes
/// that port again, so workers started before the restart still reach it.
static LAST_ADDRESS: Mutex<Option<SocketAddr>> = Mutex::new(None);
static TOOLS: RwLock<Vec<ToolSpec>> = RwLock::new(Vec::new());

/// The running bridge's address, for workers' environment.
pub fn bridge_address() -> Option<String> {
    ADDRESS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The process that receives tool calls and session ends (`Snakepit.Bridge`);
/// replaced when that process restarts, while the server keeps running.
static OWNER: RwLock<Option<LocalPid>> = RwLock::new(None);

pub(crate) fn owner() -> Option<LocalPid> {
    *OWNER.read().unwrap_or_else(|e| e.into_inner())
}

/// Python's calls of Elixir tools, delivered to the owner process.
struct ElixirTools;

/// One Elixir tool call waiting for `bridge_tool_reply`. Dropped unanswered
/// (the Elixir process died), the waiting RPC sees the sender gone.
pub struct ToolCall {
    reply: Mutex<Option<oneshot::Sender<ExecuteToolResponse>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for ToolCall {}

fn status(code: Code, reason: &str, message: String) -> Status {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = reason.parse() {
        metadata.insert(ERROR_METADATA_KEY, value);
    }
    Status::with_metadata(code, message, metadata)
}

impl ToolHost for ElixirTools {
    fn list(&self) -> Vec<ToolSpec> {
        TOOLS.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn call(&self, request: ExecuteToolRequest, timeout: Option<Duration>) -> ToolFuture {
        let owner = owner();
        let known = self.list().iter().any(|t| t.name == request.tool_name);
        Box::pin(async move {
            if !known {
                return Err(tool_not_found(&request.tool_name));
            }
            let arguments: &[u8] = if request.arguments_json.is_empty() {
                b"{}"
            } else {
                &request.arguments_json
            };
            let (sender, receiver) = oneshot::channel();
            let call = ResourceArc::new(ToolCall {
                reply: Mutex::new(Some(sender)),
            });
            let Some(owner) = owner else {
                return Err(Status::unavailable("the Elixir side of the bridge is down"));
            };
            let mut env = OwnedEnv::new();
            let mut bad_arguments = None;
            let sent = env.send_and_clear(&owner, |env| {
                let args = match decode(env, arguments) {
                    Ok(args) => args,
                    Err(error) => {
                        bad_arguments = Some(error.to_string());
                        Term::map_new(env)
                    }
                };
                let mut context = Term::map_new(env);
                let key = |name| Atom::from_str(env, name).expect("atom");
                context = context
                    .map_put(key("session_id"), request.session_id.as_str())
                    .unwrap_or(context);
                context = context
                    .map_put(key("metadata"), request.metadata.clone())
                    .unwrap_or(context);
                let label = key("snakepit_tool_call");
                (label, call, request.tool_name.as_str(), args, context).encode(env)
            });
            if let Some(message) = bad_arguments {
                return Err(status(
                    Code::InvalidArgument,
                    "invalid_argument",
                    format!("arguments_json is not valid JSON: {message}"),
                ));
            }
            if sent.is_err() {
                return Err(Status::unavailable("the Elixir side of the bridge is down"));
            }
            let answer = match timeout {
                Some(limit) => match tokio::time::timeout(limit, receiver).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        return Err(Status::deadline_exceeded(
                            "the Elixir tool did not answer within the call's deadline",
                        ))
                    }
                },
                None => receiver.await,
            };
            answer.map_err(|_| Status::internal("the Elixir tool exited without answering"))
        })
    }
}

/// Starts the bridge, or adopts the running one when its owner process was
/// restarted (so workers keep their address); returns `{:ok, address}` or
/// `{:error, message}`.
#[rustler::nif(schedule = "DirtyIo")]
fn bridge_start<'a>(env: Env<'a>, options: BridgeOptions, owner: LocalPid) -> Term<'a> {
    let address: SocketAddr = match options.address.parse() {
        Ok(address) => address,
        Err(_) => {
            let message = format!("bridge address {:?} is not ip:port", options.address);
            return (atoms::error(), message).encode(env);
        }
    };
    *OWNER.write().unwrap_or_else(|e| e.into_inner()) = Some(owner);
    let mut server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(running) = server.as_ref() {
        return (atoms::ok(), running.address().to_string()).encode(env);
    }

    let store = store_with(StoreConfig {
        max_sessions: options.max_sessions,
        max_variables_per_session: options.max_variables_per_session,
        default_ttl: Duration::from_secs(options.session_ttl_s.max(1)),
        default_watch_buffer: options.watch_buffer.max(1),
    })
    .clone();
    forward_session_ends(&store);

    let config = |address| {
        let mut config = BridgeConfig::new(node_token().to_owned());
        config.address = address;
        config.heartbeat = Duration::from_millis(options.heartbeat_ms.max(1));
        config.max_message_bytes = options.max_message_bytes;
        config
    };
    let tools: Arc<dyn ToolHost> = Arc::new(ElixirTools);
    let mut last = LAST_ADDRESS.lock().unwrap_or_else(|e| e.into_inner());
    let started = runtime().block_on(async {
        if let Some(previous) = last.filter(|p| address.port() == 0 && p.ip() == address.ip()) {
            if let Ok(running) = serve(config(previous), store.clone(), tools.clone()).await {
                return Ok(running);
            }
        }
        serve(config(address), store, tools).await
    });
    match started {
        Ok(running) => {
            *last = Some(running.address());
            let address = running.address().to_string();
            *server = Some(running);
            *ADDRESS.write().unwrap_or_else(|e| e.into_inner()) = Some(address.clone());
            (atoms::ok(), address).encode(env)
        }
        Err(error) => (atoms::error(), error.to_string()).encode(env),
    }
}

/// Sends `{:snakepit_session_ended, id, reason}` to the owner for every
/// session the store ends, from a runtime thread.
fn forward_session_ends(store: &Store) {
    let (ended, mut ended_rx) = mpsc::unbounded_channel::<(String, &'static str)>();
    store.set_end_listener(Arc::new(move |id, reason| {
        let _ = ended.send((id.to_owned(), reason.as_str()));
    }));
    runtime().spawn(async move {
        let mut env = OwnedEnv::new();
        while let Some((id, reason)) = ended_rx.recv().await {
            // Without an owner (it is restarting) the pools keep that
            // session's worker binding: a later session with the same id
            // then prefers the same worker, which is harmless.
            let Some(owner) = owner() else { continue };
            let _ = env.send_and_clear(&owner, |env| {
                let label = Atom::from_str(env, "snakepit_session_ended").expect("atom");
                let reason = Atom::from_str(env, reason).expect("atom");
                (label, id.as_str(), reason).encode(env)
            });
        }
    });
}

/// Stops serving; sessions stay in the store.
#[rustler::nif]
fn bridge_stop() -> Atom {
    if let Some(server) = SERVER.lock().unwrap_or_else(|e| e.into_inner()).take() {
        server.shutdown();
    }
    *ADDRESS.write().unwrap_or_else(|e| e.into_inner()) = None;
    atoms::ok()
}

#[rustler::nif]
fn bridge_token() -> &'static str {
    node_token()
}

/// One tool as `Snakepit.ElixirTools` describes it:
/// `{name, description, [{param, type, required}]}`.
type ToolTerm = (String, String, Vec<(String, String, bool)>);

/// Replaces the list of Elixir tools offered to Python.
#[rustler::nif]
fn bridge_set_tools(tools: Vec<ToolTerm>) -> Atom {
    let specs = tools
        .into_iter()
        .map(|(name, description, parameters)| ToolSpec {
            name,
            description,
            supports_streaming: false,
            parameters: parameters
                .into_iter()
                .map(|(name, kind, required)| ParameterSpec {
                    name,
                    r#type: kind,
                    required,
                    default_json: String::new(),
                })
                .collect(),
        })
        .collect();
    *TOOLS.write().unwrap_or_else(|e| e.into_inner()) = specs;
    atoms::ok()
}

/// Answers an Elixir tool call: `{:ok, result}` or `{:error, type, message}`.
/// Returns `:ok`, or `{:error, message}` when the result cannot be encoded
/// (the call then fails with that message).
#[rustler::nif(schedule = "DirtyCpu")]
fn bridge_tool_reply<'a>(env: Env<'a>, call: ResourceArc<ToolCall>, outcome: Term<'a>) -> Term<'a> {
    let Some(sender) = call.reply.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return (atoms::error(), "the call was answered already").encode(env);
    };
    let failure = |error_type: String, message: String| ExecuteToolResponse {
        outcome: Some(Outcome::Error(ToolError {
            category: "elixir".into(),
            error_type,
            message,
            traceback: String::new(),
        })),
        metadata: HashMap::new(),
    };
    let mut result = Ok(());
    let response = if let Ok((tag, value)) = outcome.decode::<(Atom, Term)>() {
        if tag == atoms::ok() {
            match encode(value, "result") {
                Ok(data) => ExecuteToolResponse {
                    outcome: Some(Outcome::Result(Payload {
                        kind: PayloadKind::Json as i32,
                        data: data.into(),
                    })),
                    metadata: HashMap::new(),
                },
                Err(error) => {
                    let message =
                        format!("{} cannot be sent to Python: {}", error.path, error.message);
                    result = Err(message.clone());
                    failure("EncodeError".into(), message)
                }
            }
        } else {
            failure("Error".into(), format!("{value:?}"))
        }
    } else if let Ok((_, error_type, message)) = outcome.decode::<(Atom, String, String)>() {
        failure(error_type, message)
    } else {
        failure(
            "Error".into(),
            format!("unexpected tool outcome {outcome:?}"),
        )
    };
    let _ = sender.send(response);
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(message) => (atoms::error(), message).encode(env),
    }
}
