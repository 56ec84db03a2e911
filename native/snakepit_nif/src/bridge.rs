//! Bridge servers, the session stores they serve, and the Elixir tools they
//! offer to Python.
//!
//! `bridge_start` creates a session store with the limits it is given and
//! serves it with `snakepit_core::bridge`, on loopback, behind the node's
//! token. It returns a [`BridgeResource`] that owns both: the session NIFs
//! (`session.rs`, `variable_watch.rs`) take it as their first argument, and
//! `bridge_stop` or dropping it stops the server. Nothing here is global, so
//! each `Snakepit.Bridge` process (the application's, or one a test starts)
//! runs a bridge of its own with its own limits; workers learn the address
//! from their spawn spec (`worker.rs`).
//!
//! The owner process (`Snakepit.Bridge`) receives
//!
//! * `{:snakepit_tool_call, call, name, args, context}` when Python runs an
//!   Elixir tool; it answers with `bridge_tool_reply(call, outcome)`;
//! * `{:snakepit_checkout, call, request}` when a program outside the pools
//!   runs a tool (see `outside.rs`); it answers with
//!   `bridge_checkout_reply(call, outcome)`;
//! * `{:snakepit_session_ended, id, reason}` when a session is deleted or
//!   expires, so pools can drop their bindings;
//! * `{:snakepit_watch_count, handle, pid, question}` from Elixir watches
//!   (`variable_watch.rs`).
//!
//! Messages are sent from runtime threads only (never from a scheduler thread,
//! where `OwnedEnv` must not send): the store's end listener hands the event
//! to a channel drained by a task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustler::{Atom, Encoder, Env, LocalPid, NifMap, OwnedEnv, ResourceArc, Term};
use snakepit_core::bridge::status_with_reason;
use snakepit_core::bridge::{
    serve, tool_not_found, BridgeConfig, BridgeServer, PoolHost, TlsIdentity,
    ToolCall as ToolFuture, ToolHost,
};
use snakepit_core::proto::{
    execute_tool_response::Outcome, ExecuteToolRequest, ExecuteToolResponse, ParameterSpec,
    Payload, PayloadKind, ToolError, ToolSpec,
};
use snakepit_core::session::{Store, StoreConfig};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::atoms;
use crate::codec::{encode, value_to_term};
use crate::outside::ElixirPools;
use crate::runtime::{node_token, runtime};

/// How `Snakepit.Bridge` starts a bridge (its config, validated there).
#[derive(NifMap)]
pub struct BridgeOptions {
    /// `"127.0.0.1:0"` unless configured.
    address: String,
    /// Where this bridge listened before it was last stopped, if it did: a
    /// bridge asked for port 0 takes that port again when it is free, so
    /// workers started before the restart still reach it.
    previous_address: Option<String>,
    heartbeat_ms: u64,
    max_sessions: usize,
    max_variables_per_session: usize,
    session_ttl_s: u64,
    watch_buffer: usize,
    max_message_bytes: usize,
    /// The node's Elixir tools (`bridge_tools_new`).
    tools: ResourceArc<ToolCatalog>,
    /// The process that hears from the bridge.
    owner: LocalPid,
    /// `{certificate chain PEM, private key PEM}` to serve TLS; required
    /// beyond loopback.
    tls: Option<(String, String)>,
}

/// The process that receives a bridge's tool calls, session ends and watch
/// questions. `bridge_adopt` replaces it when `Snakepit.Bridge` restarts
/// after a crash, while the server keeps running.
#[derive(Clone)]
pub struct Owner(Arc<RwLock<LocalPid>>);

impl Owner {
    fn new(pid: LocalPid) -> Self {
        Self(Arc::new(RwLock::new(pid)))
    }

    pub fn pid(&self) -> LocalPid {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn replace(&self, pid: LocalPid) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = pid;
    }
}

/// A running bridge: its server and the store it serves. Dropping it stops
/// the server (`BridgeServer`'s own drop cancels it, without blocking).
pub struct BridgeResource {
    store: Arc<Store>,
    owner: Owner,
    server: Mutex<Option<BridgeServer>>,
}

#[rustler::resource_impl]
impl rustler::Resource for BridgeResource {}

impl BridgeResource {
    /// The bridge's session store, shared with its server.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// The Elixir tools Python may call, as `Snakepit.ElixirTools` publishes
/// them. Tools are registered node-wide, so every bridge shares the one
/// catalogue that the tools' table owner created.
pub struct ToolCatalog {
    tools: RwLock<Vec<ToolSpec>>,
}

#[rustler::resource_impl]
impl rustler::Resource for ToolCatalog {}

/// Python's calls of Elixir tools, delivered to the bridge's owner.
struct ElixirTools {
    catalog: ResourceArc<ToolCatalog>,
    owner: Owner,
}

/// One Elixir tool call waiting for `bridge_tool_reply`. Dropped unanswered
/// (the Elixir process died), the waiting RPC sees the sender gone.
pub struct ToolCall {
    reply: Mutex<Option<oneshot::Sender<ExecuteToolResponse>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for ToolCall {}

impl ToolHost for ElixirTools {
    fn list(&self) -> Vec<ToolSpec> {
        self.catalog
            .tools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn call(&self, request: ExecuteToolRequest, timeout: Option<Duration>) -> ToolFuture {
        let owner = self.owner.pid();
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
            // Refused before the tool runs: it must not run on arguments
            // it was not given.
            let arguments = snakepit_core::json::parse(arguments).map_err(|error| {
                status_with_reason(
                    Code::InvalidArgument,
                    "invalid_argument",
                    format!("arguments_json is not valid JSON: {error}"),
                )
            })?;
            let mut env = OwnedEnv::new();
            let sent = env.send_and_clear(&owner, |env| {
                let args = value_to_term(env, &arguments);
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

/// Starts a bridge with its own store; returns `{:ok, {bridge, address}}`
/// or `{:error, message}`.
#[rustler::nif(schedule = "DirtyIo")]
fn bridge_start(env: Env<'_>, options: BridgeOptions) -> Term<'_> {
    let Ok(address) = options.address.parse::<SocketAddr>() else {
        let message = format!("bridge address {:?} is not ip:port", options.address);
        return (atoms::error(), message).encode(env);
    };
    let previous = options
        .previous_address
        .as_deref()
        .and_then(|p| p.parse::<SocketAddr>().ok())
        .filter(|p| address.port() == 0 && p.ip() == address.ip());

    let store = Store::new(StoreConfig {
        max_sessions: options.max_sessions,
        max_variables_per_session: options.max_variables_per_session,
        default_ttl: Duration::from_secs(options.session_ttl_s.max(1)),
        default_watch_buffer: options.watch_buffer.max(1),
    });
    let owner = Owner::new(options.owner);
    forward_session_ends(&store, owner.clone());

    let config = |address| {
        let mut config = BridgeConfig::new(node_token().to_owned());
        config.address = address;
        config.heartbeat = Duration::from_millis(options.heartbeat_ms.max(1));
        config.max_message_bytes = options.max_message_bytes;
        config.tls = options.tls.clone().map(|(cert, key)| TlsIdentity {
            cert_pem: cert.into_bytes(),
            key_pem: key.into_bytes(),
        });
        config
    };
    let tools: Arc<dyn ToolHost> = Arc::new(ElixirTools {
        catalog: options.tools.clone(),
        owner: owner.clone(),
    });
    let pools: Arc<dyn PoolHost> = Arc::new(ElixirPools {
        owner: owner.clone(),
    });
    let started = runtime().block_on(async {
        if let Some(previous) = previous {
            let serving = serve(
                config(previous),
                store.clone(),
                tools.clone(),
                pools.clone(),
            );
            if let Ok(running) = serving.await {
                return Ok(running);
            }
        }
        serve(config(address), store.clone(), tools, pools).await
    });
    match started {
        Ok(server) => {
            let address = server.address().to_string();
            let bridge = ResourceArc::new(BridgeResource {
                store,
                owner,
                server: Mutex::new(Some(server)),
            });
            (atoms::ok(), (bridge, address)).encode(env)
        }
        Err(error) => (atoms::error(), error.to_string()).encode(env),
    }
}

/// Sends `{:snakepit_session_ended, id, reason}` to the owner for every
/// session the store ends, from a runtime thread. The task ends with the
/// store, which holds the channel's sender.
fn forward_session_ends(store: &Store, owner: Owner) {
    let (ended, mut ended_rx) = mpsc::unbounded_channel::<(String, &'static str)>();
    store.set_end_listener(Arc::new(move |id, reason| {
        let _ = ended.send((id.to_owned(), reason.as_str()));
    }));
    runtime().spawn(async move {
        let mut env = OwnedEnv::new();
        while let Some((id, reason)) = ended_rx.recv().await {
            // While the owner is restarting the message is lost and the
            // pools keep that session's worker binding: a later session
            // with the same id then prefers the same worker, which is
            // harmless.
            let _ = env.send_and_clear(&owner.pid(), |env| {
                let label = Atom::from_str(env, "snakepit_session_ended").expect("atom");
                let reason = Atom::from_str(env, reason).expect("atom");
                (label, id.as_str(), reason).encode(env)
            });
        }
    });
}

/// Makes `owner` the process that hears from the bridge: a restarted
/// `Snakepit.Bridge` takes over the running server, so workers keep their
/// address and sessions survive the crash.
#[rustler::nif]
fn bridge_adopt(bridge: ResourceArc<BridgeResource>, owner: LocalPid) -> Atom {
    bridge.owner.replace(owner);
    atoms::ok()
}

/// Stops serving; the store stays readable through the resource until it is
/// dropped.
#[rustler::nif]
fn bridge_stop(bridge: ResourceArc<BridgeResource>) -> Atom {
    drop(
        bridge
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    atoms::ok()
}

#[rustler::nif]
fn bridge_token() -> &'static str {
    node_token()
}

/// Fixes the node's token: `:ok`, or `{:error, message}` when another one
/// is in use already.
#[rustler::nif]
fn bridge_set_token(env: Env<'_>, token: String) -> Term<'_> {
    match crate::runtime::set_node_token(&token) {
        Ok(()) => atoms::ok().encode(env),
        Err(message) => (atoms::error(), message).encode(env),
    }
}

/// One tool as `Snakepit.ElixirTools` describes it:
/// `{name, description, [{param, type, required}]}`.
type ToolTerm = (String, String, Vec<(String, String, bool)>);

/// An empty catalogue of Elixir tools, for `Snakepit.ElixirTools`.
#[rustler::nif]
fn bridge_tools_new() -> ResourceArc<ToolCatalog> {
    ResourceArc::new(ToolCatalog {
        tools: RwLock::new(Vec::new()),
    })
}

/// Replaces the Elixir tools offered to Python by every bridge sharing
/// `catalog`.
#[rustler::nif]
fn bridge_set_tools(catalog: ResourceArc<ToolCatalog>, tools: Vec<ToolTerm>) -> Atom {
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
    *catalog.tools.write().unwrap_or_else(|e| e.into_inner()) = specs;
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
