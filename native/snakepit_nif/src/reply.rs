//! Sending `{tag, message}` to an Elixir process from runtime threads.

use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};

/// The destination of a call's messages: a pid and the caller's tag (usually a
/// reference), kept in an environment of its own so it survives the NIF call.
pub struct Reply {
    pid: LocalPid,
    tag_env: OwnedEnv,
    tag: rustler::env::SavedTerm,
    msg_env: OwnedEnv,
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
        }
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
        } = self;
        msg_env
            .send_and_clear(pid, |env| {
                let tag = tag_env.run(|saved_env| tag.load(saved_env).in_env(env));
                (tag, build(env)).encode(env)
            })
            .is_ok()
    }
}
