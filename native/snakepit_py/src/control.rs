//! The Python side of a call's cancellation.
//!
//! The state machine (cancelled before the call started, while it runs,
//! after it finished) and the guard that cancels a call whose caller went
//! away are `snakepit_core::worker::control`; here is only what stops a
//! running call: its Python `CallHandle.cancel(reason)` (see
//! `snakepit_bridge/cancellation.py`: it raises `ToolCancelled` in the thread
//! running a sync tool, or cancels the asyncio task of an async one).

use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use snakepit_core::worker::control::{CallControl, CallHandle, CancelOnDrop, CancelReason};

use crate::dispatch::{cancel_call, Dispatcher};

/// A started call's Python `CallHandle`.
pub struct PyCall(Py<PyAny>);

impl PyCall {
    pub fn object(&self) -> &Py<PyAny> {
        &self.0
    }
}

impl CallHandle for PyCall {
    /// Takes the GIL: the core runs it on a blocking thread.
    fn cancel(&self, reason: CancelReason) {
        cancel_call(&self.0, reason.as_str());
    }
}

pub type Control = CallControl<PyCall>;
pub type Guard = CancelOnDrop<PyCall>;

/// In the call's blocking thread, before running Python: creates the call's
/// handle, whose deadline is `deadline`. `None` means the call was cancelled
/// already and must not run; `Some(None)` that creating the handle failed
/// (the call then runs without cancellation).
pub fn start(
    control: &Control,
    dispatcher: &Dispatcher,
    deadline: Option<Instant>,
) -> Option<Option<Arc<PyCall>>> {
    let handle = match dispatcher.new_call(deadline) {
        Ok(handle) => Some(PyCall(handle)),
        Err(e) => {
            Python::attach(|py| e.print(py));
            None
        }
    };
    control.start(handle)
}
