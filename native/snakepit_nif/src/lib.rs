//! The Snakepit NIF, loaded by `Snakepit.Native`.
//!
//! It owns one tokio runtime for the whole VM, the worker OS processes, and the
//! gRPC clients that call them. No NIF here blocks a scheduler: calls and
//! streams run as tokio tasks and report to the calling process by message,
//! GenServer-style (`{tag, result}`, `{tag, {:chunk, map}}`, `{tag, :done}`).
//!
//! It also holds the node's session store (`session.rs`, `variable_watch.rs`)
//! and serves it, with the Elixir tools, to Python (`bridge.rs`).

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
