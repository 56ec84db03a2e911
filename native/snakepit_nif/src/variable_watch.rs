//! Elixir processes watching session variables.
//!
//! `var_watch` starts a store watch and a task that forwards every update to
//! the watching process as `{:snakepit_variable, ref, %Snakepit.Session.Update{}}`
//! and, when the watch ends on its own, `{:snakepit_watch_ended, ref, reason}`
//! (`:overflow`, `:deleted` or `:expired`). The watch lasts until
//! `var_unwatch` or until the watching process exits: the handle monitors it,
//! and the forwarding task keeps the handle alive, so a watch does not stop
//! just because its handle was garbage-collected.
//!
//! The forwarding itself, and the bound on what an unread mailbox holds, are
//! `snakepit_core::session::forward`'s; this is its `Mailbox`. It asks for the
//! mailbox's length by sending `{:snakepit_watch_count, handle, pid, question}`
//! to the watch's bridge process (`Snakepit.Bridge`), whose answer comes back
//! through `var_watch_counted`.

use std::sync::{Arc, Mutex};

use rustler::env::SavedTerm;
use rustler::{Atom, Encoder, Env, LocalPid, Monitor, NifMap, OwnedEnv, ResourceArc, Term};
use snakepit_core::session::{
    answers, forward, Answerer, EndReason, Mailbox, VariableUpdate, WatchEnd,
};
use tokio_util::sync::CancellationToken;

use crate::atoms;
use crate::bridge::{BridgeResource, Owner};
use crate::runtime::runtime;
use crate::session_terms::{store_error, update};

pub struct WatchResource {
    cancel: CancellationToken,
    /// Cleared by `var_unwatch`; the forwarder sends only while it holds this
    /// lock and it is set, so nothing arrives after `var_unwatch` returns.
    open: Arc<Mutex<bool>>,
    /// Where `var_watch_counted` puts the mailbox's length.
    answerer: Answerer,
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

/// The watching process's mailbox, written from a runtime thread.
struct ProcessMailbox {
    owner: LocalPid,
    /// The bridge's process, which counts the mailbox for us. Not the bridge
    /// resource: a watch must not keep a stopped bridge's server alive.
    bridge: Owner,
    handle: ResourceArc<WatchResource>,
    msg_env: OwnedEnv,
    tag_env: OwnedEnv,
    tag: SavedTerm,
}

impl ProcessMailbox {
    /// Sends `{label, tag, body}` if the watch is still open.
    fn send(&mut self, label: &str, body: impl for<'a> FnOnce(Env<'a>) -> Term<'a>) -> bool {
        let gate = self.handle.open.lock().unwrap_or_else(|e| e.into_inner());
        if !*gate {
            return false;
        }
        let (tag_env, tag) = (&self.tag_env, &self.tag);
        self.msg_env
            .send_and_clear(&self.owner, |env| {
                let tag = tag_env.run(|e| tag.load(e).in_env(env));
                let label = Atom::from_str(env, label).expect("atom");
                (label, tag, body(env)).encode(env)
            })
            .is_ok()
    }
}

impl Mailbox for ProcessMailbox {
    fn deliver(&mut self, change: &VariableUpdate) -> bool {
        self.send("snakepit_variable", |env| update(env, change))
    }

    fn end(&mut self, end: Option<WatchEnd>) {
        let reason = end_reason(end);
        self.send("snakepit_watch_ended", |env| {
            Atom::from_str(env, reason).expect("atom").encode(env)
        });
    }

    fn ask_length(&mut self, question: u64) -> bool {
        let (owner, handle) = (self.owner, &self.handle);
        self.msg_env
            .send_and_clear(&self.bridge.pid(), |env| {
                let label = Atom::from_str(env, "snakepit_watch_count").expect("atom");
                (label, handle.clone(), owner, question).encode(env)
            })
            .is_ok()
    }
}

/// What to watch, as `Snakepit.Session.watch/3` passes it.
#[derive(NifMap)]
struct WatchOptions {
    identifiers: Vec<String>,
    include_initial: bool,
    /// 0 for the store's default.
    buffer: usize,
}

/// Returns `{:ok, handle}` or `{:error, {reason, message}}`.
#[rustler::nif]
fn var_watch<'a>(
    env: Env<'a>,
    bridge: ResourceArc<BridgeResource>,
    session: String,
    options: WatchOptions,
    owner: LocalPid,
    tag: Term<'a>,
) -> Term<'a> {
    let WatchOptions {
        identifiers,
        include_initial,
        buffer,
    } = options;
    let watch = match bridge
        .store()
        .watch(&session, &identifiers, include_initial, buffer)
    {
        Ok(watch) => watch,
        Err(error) => return store_error(env, &error),
    };
    let (answerer, answers) = answers();
    let resource = ResourceArc::new(WatchResource {
        cancel: CancellationToken::new(),
        open: Arc::new(Mutex::new(true)),
        answerer,
    });
    if resource.monitor(Some(env), &owner).is_none() {
        // The owner is already gone: nothing to forward to.
        resource.close();
        return (atoms::ok(), resource).encode(env);
    }
    let cancel = resource.cancel.clone();
    let tag_env = OwnedEnv::new();
    let tag = tag_env.save(tag);
    // The mailbox holds the handle, which keeps the watch alive as long as
    // the task runs.
    let mailbox = ProcessMailbox {
        owner,
        bridge: bridge.owner().clone(),
        handle: resource.clone(),
        msg_env: OwnedEnv::new(),
        tag_env,
        tag,
    };
    runtime().spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = forward(watch, mailbox, answers) => {}
        }
    });
    (atoms::ok(), resource).encode(env)
}

/// The watching process's mailbox held `length` messages when asked
/// `question` (called by `Snakepit.Session` for the bridge process).
#[rustler::nif]
fn var_watch_counted(handle: ResourceArc<WatchResource>, question: u64, length: usize) -> Atom {
    handle.answerer.answer(question, length);
    atoms::ok()
}

/// Stops a watch; once this returns no further message of it is sent (those
/// already in the mailbox are flushed by `Snakepit.Session.unwatch/1`).
#[rustler::nif]
fn var_unwatch(handle: ResourceArc<WatchResource>) -> Atom {
    handle.close();
    atoms::ok()
}
