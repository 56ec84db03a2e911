//! The bridge's [`PoolHost`]: workers lent to programs outside the pools.
//!
//! `{:snakepit_pools, call}` asks for the node's pools, answered with
//! `bridge_pools_reply(call, [{name, size}])`.
//!
//! A checkout sends `{:snakepit_checkout, call, request}` to the bridge's
//! owner (`Snakepit.Bridge`), which checks a worker out through
//! `Snakepit.Pool.Checkout` in a process of its own and answers with
//! `bridge_checkout_reply(call, outcome)`: `{:ok, worker, lease}` or
//! `{:error, reason, message}`. The lease then travels with the call in the
//! bridge server and is given back when the call ends (its destructor, as
//! for a caller that dies). A checkout nobody waits for any more (the
//! client went away, or its time ran out) sends
//! `{:snakepit_checkout_cancel, call}`, which stops the process waiting in
//! the pool's queue; an answer that comes anyway drops its lease at once.

use std::sync::Mutex;
use std::time::Duration;

use rustler::{Atom, Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};
use snakepit_core::bridge::{
    status_with_reason, Checkout, CheckoutRequest, Lent, PoolEntry, PoolHost, PoolList,
};
use tokio::sync::oneshot;
use tonic::{Code, Status};

use crate::atoms;
use crate::bridge::Owner;
use crate::call::client_of;
use crate::lease::{HeldLease, Lease};
use crate::worker::WorkerResource;

/// How much longer than the call's own time a checkout may wait for Elixir's
/// answer (Elixir enforces the time; this only catches a lost answer).
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

pub struct ElixirPools {
    pub owner: Owner,
}

/// One checkout waiting for `bridge_checkout_reply`.
pub struct CheckoutCall {
    reply: Mutex<Option<oneshot::Sender<Result<Lent, Status>>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for CheckoutCall {}

/// One pool listing waiting for `bridge_pools_reply`.
pub struct PoolsCall {
    reply: Mutex<Option<oneshot::Sender<Vec<PoolEntry>>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for PoolsCall {}

/// How long the pool list may take.
const POOLS_TIMEOUT: Duration = Duration::from_secs(5);

impl PoolHost for ElixirPools {
    fn pools(&self) -> PoolList {
        let owner = self.owner.pid();
        Box::pin(async move {
            let (sender, receiver) = oneshot::channel();
            let call = ResourceArc::new(PoolsCall {
                reply: Mutex::new(Some(sender)),
            });
            let sent = OwnedEnv::new().send_and_clear(&owner, |env| {
                (Atom::from_str(env, "snakepit_pools").expect("atom"), call).encode(env)
            });
            if sent.is_err() {
                return Err(Status::unavailable("the Elixir side of the bridge is down"));
            }
            match tokio::time::timeout(POOLS_TIMEOUT, receiver).await {
                Ok(Ok(pools)) => Ok(pools),
                _ => Err(Status::unavailable("the node did not list its pools")),
            }
        })
    }

    fn checkout(&self, request: CheckoutRequest) -> Checkout {
        let owner = self.owner.pid();
        Box::pin(async move {
            let (sender, receiver) = oneshot::channel();
            let call = ResourceArc::new(CheckoutCall {
                reply: Mutex::new(Some(sender)),
            });
            let abandoned = call.clone();
            let timeout_ms = u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX);
            let sent = OwnedEnv::new().send_and_clear(&owner, |env| {
                let key = |name| Atom::from_str(env, name).expect("atom");
                let mut map = Term::map_new(env);
                for (name, value) in [
                    ("pool", request.pool.as_str()),
                    ("session_id", request.session_id.as_str()),
                    ("affinity", request.affinity.as_str()),
                ] {
                    map = map.map_put(key(name), value).unwrap_or(map);
                }
                map = map.map_put(key("timeout_ms"), timeout_ms).unwrap_or(map);
                (key("snakepit_checkout"), call, map).encode(env)
            });
            if sent.is_err() {
                return Err(Status::unavailable("the Elixir side of the bridge is down"));
            }
            // Dropped unanswered (the client went away, or time ran out):
            // Elixir stops waiting for a worker on its behalf.
            let _abandon = Abandon {
                owner,
                call: abandoned,
            };
            match tokio::time::timeout(request.timeout + ANSWER_MARGIN, receiver).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(Status::internal("the checkout ended without an answer")),
                Err(_) => Err(Status::deadline_exceeded(
                    "no worker was lent within the call's time",
                )),
            }
        })
    }
}

/// Tells Elixir to stop a checkout nobody waits for any more, unless it was
/// answered.
struct Abandon {
    owner: LocalPid,
    call: ResourceArc<CheckoutCall>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let answered = self
            .call
            .reply
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none();
        if answered {
            return;
        }
        let call = self.call.clone();
        let _ = OwnedEnv::new().send_and_clear(&self.owner, |env| {
            let label = Atom::from_str(env, "snakepit_checkout_cancel").expect("atom");
            (label, call).encode(env)
        });
    }
}

/// The status code of a checkout refusal, by its `Snakepit.Error` reason.
fn refusal_code(reason: &str) -> Code {
    match reason {
        "unknown_pool" => Code::NotFound,
        "pool_saturated" | "worker_busy" | "session_quota_exceeded" => Code::ResourceExhausted,
        "checkout_timeout" | "timeout" => Code::DeadlineExceeded,
        "session_worker_unavailable" | "not_ready" => Code::Unavailable,
        "invalid_argument" | "invalid_session_id" => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// Answers a checkout: `{:ok, worker, lease}` or `{:error, reason, message}`.
/// Returns `:ok`, or `:gone` when nobody waits any more (the caller then
/// releases the lease). A lease that reaches a call is released when the
/// call ends.
#[rustler::nif]
fn bridge_checkout_reply<'a>(
    env: Env<'a>,
    call: ResourceArc<CheckoutCall>,
    outcome: Term<'a>,
) -> Term<'a> {
    let Some(sender) = call.reply.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return atoms::gone().encode(env);
    };
    let answer = if let Ok((_, worker, lease)) =
        outcome.decode::<(Atom, ResourceArc<WorkerResource>, ResourceArc<Lease>)>()
    {
        // Held from here: every way this answer is dropped gives the slot back.
        let lease = HeldLease(lease);
        match client_of(&worker) {
            Ok(client) => Ok(Lent {
                client,
                worker_id: worker.worker_id().to_owned(),
                slot: Box::new(lease),
            }),
            Err(_) => Err(status_with_reason(
                Code::Unavailable,
                "worker_exited",
                "the lent worker has no connection".into(),
            )),
        }
    } else if let Ok((_, reason, message)) = outcome.decode::<(Atom, Atom, String)>() {
        let reason = reason.to_term(env).atom_to_string().unwrap_or_default();
        Err(status_with_reason(refusal_code(&reason), &reason, message))
    } else {
        Err(Status::internal(format!(
            "unexpected checkout outcome {outcome:?}"
        )))
    };
    match sender.send(answer) {
        Ok(()) => atoms::ok().encode(env),
        Err(_) => atoms::gone().encode(env),
    }
}

/// Answers a pool listing with `[{name, size}]`.
#[rustler::nif]
fn bridge_pools_reply(call: ResourceArc<PoolsCall>, pools: Vec<(String, u32)>) -> Atom {
    let Some(sender) = call.reply.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return atoms::gone();
    };
    let pools = pools
        .into_iter()
        .map(|(name, size)| PoolEntry { name, size })
        .collect();
    match sender.send(pools) {
        Ok(()) => atoms::ok(),
        Err(_) => atoms::gone(),
    }
}
