//! The node's bridge server: the gRPC door through which Python reaches the
//! session store and the Elixir tools (`proto/snakepit/v1/bridge.proto`).
//!
//! One bridge runs per node (DESIGN.md contract 8). The NIF starts it with
//! [`serve`] over the node's [`Store`], so Elixir (through NIF calls) and
//! Python (through this server) change the same state and see each other's
//! changes. It lives in the core crate, not the NIF, so that all of it can be
//! tested with `cargo test` through real gRPC, and so that a standalone server
//! (`snakepit-bridge`, used by the Python tests) needs neither the BEAM nor
//! Elixir.
//!
//! Like every endpoint of the node it binds loopback only and refuses requests
//! without the node's token (contract 7). Failures are gRPC statuses carrying
//! a machine-readable reason in the `x-snakepit-error` trailing metadata
//! ([`error_reason`] reads it back).
//!
//! Watch streams: the store feeds each watcher through its own bounded buffer
//! without ever waiting, so a slow gRPC client can only overflow its own watch
//! (which then ends with `watch_overflow`), never slow a writer. Between that
//! buffer and the HTTP/2 stream, a small bounded channel lets one task per
//! watch wait for the client without holding anything the store needs.
//!
//! The Elixir tools (`ListElixirTools`, `ExecuteElixirTool`) are behind the
//! [`ToolHost`] trait, and the pools that `Execute` and `ExecuteStream` run
//! tools on behind [`PoolHost`] ([`pools`]): the NIF implements both by
//! messaging Elixir; tests and the standalone server use their own hosts, or
//! [`NoTools`] and [`NoPools`].

mod client;
mod convert;
pub mod pools;
mod service;
mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::Status;

use crate::auth::RequireToken;
use crate::proto::bridge_service_server::BridgeServiceServer;
use crate::proto::{ExecuteToolRequest, ExecuteToolResponse, ToolSpec, VersionInfo};
use crate::session::Store;
use crate::CoreError;

pub use client::{connect_bridge, connect_bridge_tls, BridgeClient};
pub use pools::{Checkout, CheckoutRequest, Lent, NoPools, PoolEntry, PoolHost, PoolList};
pub use status::{error_reason, status_with_reason, ERROR_METADATA_KEY};

/// Environment variable through which workers learn the bridge's address
/// (`127.0.0.1:<port>`).
pub const ADDRESS_ENV_VAR: &str = "SNAKEPIT_BRIDGE_ADDRESS";

/// How a bridge server is started.
///
/// It listens on loopback unless it has a TLS identity: beyond this machine
/// only TLS is served.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// Where to listen; must be a loopback address (port 0 picks one).
    pub address: SocketAddr,
    /// The node's token, required in every request.
    pub token: String,
    /// Heartbeat interval of watch streams that ask for none.
    pub heartbeat: Duration,
    /// How often expired sessions are ended.
    pub reap_interval: Duration,
    /// Largest message received or sent.
    pub max_message_bytes: usize,
    /// What `GetVersion` returns.
    pub version: VersionInfo,
    /// Serve over TLS with this certificate chain and key (PEM). Required
    /// to listen beyond loopback.
    pub tls: Option<TlsIdentity>,
}

/// A server's TLS certificate chain and private key, PEM-encoded.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.write_str("TlsIdentity { .. }")
    }
}

impl BridgeConfig {
    /// `127.0.0.1:0`, heartbeats every 5 s, reaping every second, the default
    /// message limit, and this crate's version.
    pub fn new(token: String) -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            token,
            heartbeat: Duration::from_secs(5),
            reap_interval: Duration::from_secs(1),
            max_message_bytes: crate::client::MAX_MESSAGE_BYTES,
            version: VersionInfo {
                protocol_version: crate::PROTOCOL_VERSION.to_owned(),
                bridge_version: env!("CARGO_PKG_VERSION").to_owned(),
                runtime_version: String::new(),
            },
            tls: None,
        }
    }
}

/// The future of one Elixir tool call.
pub type ToolCall = Pin<Box<dyn Future<Output = Result<ExecuteToolResponse, Status>> + Send>>;

/// What the bridge calls for `ListElixirTools` / `ExecuteElixirTool`; the NIF
/// implements it by messaging Elixir.
pub trait ToolHost: Send + Sync + 'static {
    /// The tools Python may call.
    fn list(&self) -> Vec<ToolSpec>;

    /// Runs one tool. `timeout` is what remains of the caller's deadline
    /// (already shortened so the answer reaches the caller in time); `None`
    /// when the caller set none. An unknown tool is `NOT_FOUND` with reason
    /// `tool_not_found` (see [`tool_not_found`]); the tool's own failure is a
    /// response carrying `error`.
    fn call(&self, request: ExecuteToolRequest, timeout: Option<Duration>) -> ToolCall;
}

/// A host without tools: the list is empty and every call is `tool_not_found`.
pub struct NoTools;

impl ToolHost for NoTools {
    fn list(&self) -> Vec<ToolSpec> {
        Vec::new()
    }

    fn call(&self, request: ExecuteToolRequest, _timeout: Option<Duration>) -> ToolCall {
        Box::pin(std::future::ready(Err(tool_not_found(&request.tool_name))))
    }
}

/// The status of a call to an unknown tool (`NOT_FOUND`, `tool_not_found`),
/// for [`ToolHost`] implementations.
pub fn tool_not_found(name: &str) -> Status {
    status::with_reason(
        tonic::Code::NotFound,
        "tool_not_found",
        format!("no Elixir tool named {name:?}"),
    )
}

/// A running bridge server. Dropping it (or [`BridgeServer::shutdown`]) stops
/// it.
pub struct BridgeServer {
    address: SocketAddr,
    stop: CancellationToken,
}

impl BridgeServer {
    /// The bound address, with the real port.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting connections, ends open watch streams (`UNAVAILABLE`)
    /// and stops the reaper. Returns at once; the server winds down on the
    /// runtime.
    pub fn shutdown(self) {
        // Drop cancels.
    }
}

impl Drop for BridgeServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds `config.address` (loopback only), then serves the bridge over
/// `store` and `tools` on the current tokio runtime, with a reaper that ends
/// expired sessions every `config.reap_interval`. Returns once listening.
pub async fn serve(
    config: BridgeConfig,
    store: Arc<Store>,
    tools: Arc<dyn ToolHost>,
    pools: Arc<dyn PoolHost>,
) -> Result<BridgeServer, CoreError> {
    let failed = |message: String| CoreError::Bridge {
        address: config.address.to_string(),
        message,
    };
    if !config.address.ip().is_loopback() && config.tls.is_none() {
        return Err(failed(
            "refusing a non-loopback address without TLS: give the bridge a certificate \
             and key (tls: [certfile: ..., keyfile: ...]), or listen on loopback"
                .into(),
        ));
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| failed(format!("bad TLS certificate or key: {e}")))?;
    }
    let listener = TcpListener::bind(config.address)
        .await
        .map_err(|e| failed(format!("cannot listen: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| failed(format!("cannot read the bound address: {e}")))?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let stop = CancellationToken::new();
    let bridge = service::Bridge::new(
        store.clone(),
        tools,
        pools,
        config.heartbeat,
        config.version.clone(),
        stop.clone(),
    );
    let service = InterceptedService::new(
        BridgeServiceServer::new(bridge)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes),
        RequireToken::new(&config.token),
    );
    let shutdown = stop.clone();
    tokio::spawn(async move {
        let result = builder
            .initial_connection_window_size(crate::client::CONNECTION_WINDOW)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            eprintln!("snakepit bridge on {address}: server failed: {e}");
        }
    });
    tokio::spawn(reap(store, config.reap_interval, stop.clone()));
    Ok(BridgeServer { address, stop })
}

/// Ends expired sessions until `stop`.
async fn reap(store: Arc<Store>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {
                store.expire_sessions(SystemTime::now());
            }
        }
    }
}
