//! A Python thread state kept for the life of each runtime thread.
//!
//! Attaching a thread that has no Python thread state creates one, and
//! detaching destroys it again: per call, that costs more than the call's
//! Python work for small tools. Each blocking thread that runs Python keeps
//! one thread state instead (created on first use, the GIL released at once),
//! so later attachments only take the GIL. The runtime keeps its threads for
//! an hour of idleness, so states are not created over and over.

use std::cell::Cell;

use pyo3::ffi;

thread_local! {
    static KEPT: Cell<bool> = const { Cell::new(false) };
}

/// Call before running Python on a runtime thread.
pub fn keep() {
    KEPT.with(|kept| {
        if !kept.get() {
            // SAFETY: the interpreter is running (this module lives inside
            // it); Ensure creates this thread's state and takes the GIL, and
            // SaveThread releases the GIL while keeping the state current
            // for this thread, where later PyGILState_Ensure calls find it.
            unsafe {
                let _state = ffi::PyGILState_Ensure();
                let _thread_state = ffi::PyEval_SaveThread();
            }
            kept.set(true);
        }
    });
}
