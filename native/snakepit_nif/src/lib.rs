//! The Snakepit NIF, loaded by `Snakepit.Native`.
//!
//! It owns one tokio runtime for the whole VM, the worker OS processes, and the
//! gRPC clients that call them. No NIF here blocks a scheduler: calls and
//! streams run as tokio tasks and report to the calling process by message,
//! GenServer-style (`{tag, result}`, `{tag, {:chunk, map, bytes}}`, `{tag, :done}`).
//!
//! It also runs bridge servers (`bridge.rs`), each serving a session store of
//! its own (`session.rs`, `variable_watch.rs`) and the Elixir tools to Python.
//! Those are owned by resources that `Snakepit.Bridge` holds, not by statics;
//! the runtime and the node's token are the only VM-wide state.

mod atoms;
mod binary;
mod bridge;
mod call;
mod codec;
mod describe;
mod duplex;
mod error;
mod lease;
mod limits;
mod outside;
mod reply;
mod runtime;
mod session;
mod session_terms;
mod stream;
mod variable_watch;
mod worker;

rustler::init!("Elixir.Snakepit.Native");

/// Replaces the `Snakepit.Native.loaded?/0` stub, which answers false.
#[rustler::nif(name = "loaded?")]
fn loaded() -> bool {
    true
}
