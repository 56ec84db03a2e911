//! The VM-wide tokio runtime and the node's token.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// The runtime, created on first use. Its threads are not BEAM threads, so
/// they may send messages with `OwnedEnv`.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("snakepit-nif")
            .enable_all()
            .build()
            .expect("cannot start the snakepit tokio runtime")
    })
}

/// The per-node random token every worker and bridge request carries.
///
/// It stays VM-wide on purpose: a node is one trust domain, so every bridge
/// and every worker of this VM shares it, and `Snakepit.Bridge.token/0`
/// needs no running bridge to answer.
pub fn node_token() -> &'static str {
    TOKEN.get_or_init(snakepit_core::auth::generate_token)
}

static TOKEN: OnceLock<String> = OnceLock::new();

/// Fixes the node's token (`config :snakepit, :bridge, token: ...`), so
/// that outside clients can be configured with it. Only before anything
/// used the token, or to the value it already has.
pub fn set_node_token(token: &str) -> Result<(), String> {
    if TOKEN.get_or_init(|| token.to_owned()) == token {
        Ok(())
    } else {
        Err("the node's token is in use already (set it before the application starts)".into())
    }
}
