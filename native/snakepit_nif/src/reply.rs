//! Sending `{tag, message}` to an Elixir process from runtime threads.

use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};

use crate::error::{Category, Failure, FailureTerm, Reason};

/// The destination of a call's messages: a pid and the caller's tag (usually a
/// reference), kept in an environment of its own so it survives the NIF call.
pub struct Reply {
    pid: LocalPid,
    tag_env: OwnedEnv,
    tag: rustler::env::SavedTerm,
    msg_env: OwnedEnv,
    /// Whether a panic of the task that owns this reply is reported to the
    /// caller as `{tag, {:error, failure}}` (see [`Reply::for_call`]).
    reports_panic: bool,
}

impl Reply {
    pub fn new(pid: LocalPid, tag: Term<'_>) -> Self {
        let tag_env = OwnedEnv::new();
        let tag = tag_env.save(tag);
        Self {
            pid,
            tag_env,
            tag,
            msg_env: OwnedEnv::new(),
            reports_panic: false,
        }
    }

    /// The reply of a call or stream: if the task holding it panics, the
    /// caller gets a `:transport` error instead of waiting for an answer
    /// that will never come (a call with `timeout: :infinity` would wait
    /// for ever).
    pub fn for_call(pid: LocalPid, tag: Term<'_>) -> Self {
        let mut reply = Self::new(pid, tag);
        reply.reports_panic = true;
        reply
    }

    /// Sends `{tag, build(env)}`. Returns false when the process is gone.
    pub fn send<F>(&mut self, build: F) -> bool
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        let Self {
            pid,
            tag_env,
            tag,
            msg_env,
            ..
        } = self;
        msg_env
            .send_and_clear(pid, |env| {
                let tag = tag_env.run(|saved_env| tag.load(saved_env).in_env(env));
                (tag, build(env)).encode(env)
            })
            .is_ok()
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        // The runtime catches a task's panic and drops the task, and with it
        // this reply, while unwinding. Sending does not block.
        if self.reports_panic && std::thread::panicking() {
            let failure = Failure::new(
                Category::Transport,
                "the call was abandoned: its task in the NIF panicked (a bug; please report it)",
            )
            .with_reason(Reason::Panicked);
            self.send(|env| failure.error_tuple(env));
        }
    }
}
