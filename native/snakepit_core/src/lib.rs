//! The plain-Rust heart of Snakepit.
//!
//! Everything that can be tested without the BEAM or a Python interpreter lives
//! here: the generated protocol types, the token check shared by every gRPC
//! endpoint, call deadlines (`grpc-timeout`), worker process supervision with
//! the `GRPC_READY:<port>` handshake (TCP or a Unix socket), the gRPC client used to call workers,
//! the chunk envelope that streaming callers receive and their delivery within
//! the caller's credit, the classification of failed calls, and the node's session
//! store (sessions, typed variables and their watchers). The NIF crate and the
//! Python extension crate are thin glue over this crate.

pub mod address;
pub mod auth;
pub mod bridge;
pub mod client;
pub mod deadline;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod executor;
pub mod failure;
pub mod json;
pub mod lifeline;
pub mod log_record;
pub mod output;
pub mod process;
pub mod proto;
pub mod session;
pub mod window;
pub mod worker;

pub use error::CoreError;

/// Version of the wire protocol in `proto/snakepit/v1`.
///
/// Shared with `snakepit_bridge.limits` (`test/snakepit/limits_test.exs` checks).
pub const PROTOCOL_VERSION: &str = "1";
