//! Elixir binaries made from bytes received from a worker.
//!
//! A large payload becomes a resource binary over the received bytes
//! themselves (a slice of the HTTP/2 receive buffer), so it reaches Elixir
//! without a copy; the bytes are freed when the VM collects the binary. A
//! small one is copied: a copy costs less than a resource, and a small
//! binary must not keep a large receive buffer alive.

use bytes::Bytes;
use rustler::{Encoder, Env, OwnedBinary, ResourceArc, Term};

/// Payloads from this size on are shared, not copied.
const SHARE_FROM_BYTES: usize = 64 * 1024;

/// Received bytes owned by the binaries made over them.
struct ReceivedBytes(Bytes);

#[rustler::resource_impl]
impl rustler::Resource for ReceivedBytes {}

/// `data` as an Elixir binary in `env`.
pub fn binary_term<'a>(env: Env<'a>, data: &Bytes) -> Term<'a> {
    if data.len() >= SHARE_FROM_BYTES {
        let owner = ResourceArc::new(ReceivedBytes(data.clone()));
        owner.make_binary(env, |received| &received.0).encode(env)
    } else {
        OwnedBinary::from_slice(data).release(env).encode(env)
    }
}
