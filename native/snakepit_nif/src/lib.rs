//! The Snakepit NIF, loaded by `Snakepit.Native`.
//!
//! It owns one tokio runtime for the whole VM, the worker OS processes, and the
//! gRPC clients that call them. No NIF here blocks a scheduler: calls and
//! streams run as tokio tasks and report to the calling process by message,
//! GenServer-style (`{tag, result}`, `{tag, {:chunk, map}}`, `{tag, :done}`).

mod atoms;
mod call;
mod codec;
mod describe;
mod duplex;
mod error;
mod lease;
mod reply;
mod runtime;
mod stream;
mod worker;

rustler::init!("Elixir.Snakepit.Native");

/// Replaces the `Snakepit.Native.loaded?/0` stub, which answers false.
#[rustler::nif(name = "loaded?")]
fn loaded() -> bool {
    true
}
