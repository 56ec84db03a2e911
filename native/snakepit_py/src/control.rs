//! Stopping a call's Python work when its caller goes away or its deadline
//! passes.
//!
//! Every tool call gets a [`CallControl`], shared by the blocking thread that
//! runs the Python tool and by a [`CancelOnDrop`] guard that the async side
//! owns: the handler future of a unary call, the response stream of a
//! streaming or duplex call. tonic drops those when the client cancels the call
//! (RST_STREAM) or the connection goes, which drops the guard, which cancels
//! the call; the deadline timers cancel explicitly, with their own reason, and
//! so does the task reading a duplex call's inputs when that request stream
//! fails.
//!
//! Cancelling calls the Python `CallHandle.cancel(reason)` of the call (see
//! `snakepit_bridge/cancellation.py`: it raises `ToolCancelled` in the thread
//! running a sync tool, or cancels the asyncio task of an async one). That
//! needs the GIL, so the guard hands it to a blocking thread instead of
//! waiting for the GIL on an async worker thread. The handle is created in the
//! call's blocking thread (it needs the GIL too), so a cancel can come before
//! it exists: the state records that, and the call then never starts.
//!
//! A cancelled call that is still running after the grace (`stuck.rs`) has a
//! tool that cannot be interrupted: the worker then asks to be recycled.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use pyo3::prelude::*;

use crate::dispatch::{cancel_call, Dispatcher};
use crate::stuck;

/// Why a call is cancelled; the strings match `snakepit_bridge.errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The client cancelled the call or disconnected.
    Caller,
    /// The call's deadline passed.
    Deadline,
}

impl CancelReason {
    fn as_str(self) -> &'static str {
        match self {
            CancelReason::Caller => "cancelled",
            CancelReason::Deadline => "deadline_exceeded",
        }
    }
}

enum State {
    /// The Python handle does not exist yet.
    Starting,
    Running(Arc<Py<PyAny>>),
    /// Cancelled before it ran: it never will.
    Cancelled,
    /// Cancelled while running, and not finished yet.
    Stopping,
    Finished,
}

/// The Python `CallHandle` of a started call; `None` in the unexpected case
/// where creating it failed (the call then runs without cancellation).
pub type Handle = Option<Arc<Py<PyAny>>>;

/// One call's cancellation state.
pub struct CallControl {
    dispatcher: Dispatcher,
    /// For the report of a tool that does not stop.
    tool: String,
    state: Mutex<State>,
    /// The reason of the first cancel asked for.
    reason: OnceLock<CancelReason>,
}

impl CallControl {
    pub fn new(dispatcher: Dispatcher, tool: String) -> Arc<Self> {
        Arc::new(Self {
            dispatcher,
            tool,
            state: Mutex::new(State::Starting),
            reason: OnceLock::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover the data if it did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// In the call's blocking thread, before running Python: creates the
    /// call's handle, whose deadline is `deadline`. `None` means the call was
    /// cancelled already and must not run.
    pub fn start(&self, deadline: Option<Instant>) -> Option<Handle> {
        let handle = match self.dispatcher.new_call(deadline) {
            Ok(handle) => Some(Arc::new(handle)),
            Err(e) => {
                Python::attach(|py| e.print(py));
                None
            }
        };
        let mut state = self.state();
        match *state {
            State::Starting => {
                *state = match &handle {
                    Some(handle) => State::Running(handle.clone()),
                    None => State::Finished,
                };
                Some(handle)
            }
            // Cancelled while queued: it is over without running.
            _ => {
                *state = State::Finished;
                None
            }
        }
    }

    /// In the call's blocking thread, once Python is done: later cancels do
    /// nothing.
    pub fn finish(&self) {
        *self.state() = State::Finished;
    }

    /// Whether the call was cancelled (and has not finished since).
    pub fn is_cancelled(&self) -> bool {
        matches!(*self.state(), State::Cancelled | State::Stopping)
    }

    /// Whether the call was cancelled while running and has not finished.
    fn is_stopping(&self) -> bool {
        matches!(*self.state(), State::Stopping)
    }

    fn is_live(&self) -> bool {
        matches!(*self.state(), State::Starting | State::Running(_))
    }

    /// Cancels the call; the first reason asked for wins. Takes the GIL: call
    /// it on a blocking thread.
    pub fn cancel(&self, reason: CancelReason) {
        let reason = *self.reason.get_or_init(|| reason);
        let handle = {
            let mut state = self.state();
            match std::mem::replace(&mut *state, State::Cancelled) {
                State::Running(handle) => {
                    *state = State::Stopping;
                    Some(handle)
                }
                State::Starting | State::Cancelled => None,
                old @ (State::Stopping | State::Finished) => {
                    *state = old;
                    None
                }
            }
        };
        // Outside the lock: the GIL may take a while, and the handle itself
        // copes with a call that finishes meanwhile.
        if let Some(handle) = handle {
            cancel_call(&handle, reason.as_str());
        }
    }

    /// Cancels the call from async code: the GIL is taken on one of
    /// `runtime`'s blocking threads, never on the calling thread. Only the
    /// first request counts (the deadline passing, then the response being
    /// dropped, is one cancel, for the deadline).
    pub fn cancel_in_background(
        self: &Arc<Self>,
        reason: CancelReason,
        runtime: &tokio::runtime::Handle,
    ) {
        if !self.is_live() || self.reason.set(reason).is_err() {
            return;
        }
        let control = self.clone();
        drop(runtime.spawn_blocking(move || control.cancel(reason)));
        // Counted from the cancel being asked for, GIL waits included.
        let control = self.clone();
        drop(runtime.spawn(async move {
            tokio::time::sleep(stuck::grace()).await;
            if control.is_stopping() {
                stuck::report(&control.tool, reason.as_str());
            }
        }));
    }
}

/// Cancels its call when dropped (the caller went away) or when told to
/// (the deadline passed), unless the call has finished.
pub struct CancelOnDrop {
    control: Arc<CallControl>,
    runtime: tokio::runtime::Handle,
}

impl CancelOnDrop {
    /// Must be created inside the tokio runtime.
    pub fn new(control: Arc<CallControl>) -> Self {
        Self {
            control,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Cancels the call in the background, without blocking this thread.
    /// Only the first request counts (the deadline passing, then the response
    /// being dropped, is one cancel, for the deadline).
    pub fn cancel(&self, reason: CancelReason) {
        self.control.cancel_in_background(reason, &self.runtime);
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancel(CancelReason::Caller);
    }
}
