//! Elixir processes watching session variables.
//!
//! `var_watch` starts a store watch and a task that forwards every update to
//! the watching process as `{:snakepit_variable, ref, %Snakepit.Session.Update{}}`
//! and, when the watch ends on its own, `{:snakepit_watch_ended, ref, reason}`
//! (`:overflow`, `:deleted` or `:expired`). The watch lasts until
//! `var_unwatch` or until the watching process exits: the handle monitors it,
//! and the forwarding task keeps the handle alive, so a watch does not stop
//! just because its handle was garbage-collected.

use std::sync::{Arc, Mutex};

use rustler::{Atom, Encoder, Env, LocalPid, Monitor, OwnedEnv, ResourceArc, Term};
use snakepit_core::session::{EndReason, WatchEnd};
use tokio_util::sync::CancellationToken;

use crate::atoms;
use crate::runtime::runtime;
use crate::session::store;
use crate::session_terms::{store_error, update};

pub struct WatchResource {
    cancel: CancellationToken,
    /// Cleared by `var_unwatch`; the forwarder sends only while it holds this
    /// lock and it is set, so nothing arrives after `var_unwatch` returns.
    open: Arc<Mutex<bool>>,
}

impl WatchResource {
    fn close(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.cancel.cancel();
    }
}

#[rustler::resource_impl]
impl rustler::Resource for WatchResource {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.close();
    }
}

impl Drop for WatchResource {
    fn drop(&mut self) {
        self.close();
    }
}

fn end_reason(end: Option<WatchEnd>) -> &'static str {
    match end {
        Some(WatchEnd::Overflow) => "overflow",
        Some(WatchEnd::SessionEnded(EndReason::Deleted)) => "deleted",
        Some(WatchEnd::SessionEnded(EndReason::Expired)) => "expired",
        None => "closed",
    }
}

/// Returns `{:ok, handle}` or `{:error, {reason, message}}`.
#[rustler::nif]
fn var_watch<'a>(
    env: Env<'a>,
    session: String,
    identifiers: Vec<String>,
    include_initial: bool,
    buffer: usize,
    owner: LocalPid,
    tag: Term<'a>,
) -> Term<'a> {
    let mut watch = match store().watch(&session, &identifiers, include_initial, buffer) {
        Ok(watch) => watch,
        Err(error) => return store_error(env, &error),
    };
    let resource = ResourceArc::new(WatchResource {
        cancel: CancellationToken::new(),
        open: Arc::new(Mutex::new(true)),
    });
    if resource.monitor(Some(env), &owner).is_none() {
        // The owner is already gone: nothing to forward to.
        resource.close();
        return (atoms::ok(), resource).encode(env);
    }
    let keep = resource.clone();
    let cancel = resource.cancel.clone();
    let open = resource.open.clone();
    let tag_env = OwnedEnv::new();
    let saved_tag = tag_env.save(tag);
    runtime().spawn(async move {
        let _keep = keep;
        let mut msg_env = OwnedEnv::new();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                next = watch.recv() => next,
            };
            let gate = open.lock().unwrap_or_else(|e| e.into_inner());
            if !*gate {
                return;
            }
            let sent = match next {
                Some(change) => msg_env.send_and_clear(&owner, |env| {
                    let tag = tag_env.run(|e| saved_tag.load(e).in_env(env));
                    let label = Atom::from_str(env, "snakepit_variable").expect("atom");
                    (label, tag, update(env, &change)).encode(env)
                }),
                None => {
                    let reason = end_reason(watch.end());
                    let _ = msg_env.send_and_clear(&owner, |env| {
                        let tag = tag_env.run(|e| saved_tag.load(e).in_env(env));
                        let ended = Atom::from_str(env, "snakepit_watch_ended").expect("atom");
                        let reason = Atom::from_str(env, reason).expect("atom");
                        (ended, tag, reason).encode(env)
                    });
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
    (atoms::ok(), resource).encode(env)
}

/// Stops a watch; once this returns no further message of it is sent (those
/// already in the mailbox are flushed by `Snakepit.Session.unwatch/1`).
#[rustler::nif]
fn var_unwatch(handle: ResourceArc<WatchResource>) -> Atom {
    handle.close();
    atoms::ok()
}
