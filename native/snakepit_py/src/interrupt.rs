//! `InterruptSlot`: raise an exception in another Python thread, at most once,
//! without ever hitting a thread that has moved on to other work.
//!
//! Stopping a sync tool means raising `ToolCancelled` in the thread that runs
//! it, which CPython offers as `PyThreadState_SetAsyncExc` (part of the stable
//! ABI, so available under `abi3`). The exception is delivered at the next
//! Python instruction that thread executes, which is the whole difficulty: the
//! tool may have returned an instant before, and the thread may be about to
//! run the next call.
//!
//! Why this lives in Rust rather than in Python (say with
//! `ctypes.pythonapi.PyThreadState_SetAsyncExc` and a `threading.Lock`): each
//! method below runs as one native call, with the GIL held and no Python
//! instruction in between, so an asynchronous exception can never land in the
//! middle of one of them. In Python, the exception could land right after
//! `lock.acquire()` returned and leave the lock held, or between reading the
//! thread id and injecting. Here:
//!
//! - `enter()` registers the current thread, or refuses if the slot was
//!   already interrupted (the cancel arrived before the tool started);
//! - `interrupt()` marks the slot interrupted (for good) and, if a thread is
//!   registered, schedules the exception in it: at most once per slot;
//! - `exit()` unregisters the thread and withdraws an exception that was
//!   scheduled but not yet delivered, so nothing escapes the registered span.
//!
//! The mutex is only taken while holding the GIL and never across a call
//! that could release it, so it cannot deadlock with the GIL.

use std::ffi::{c_long, c_ulong};
use std::sync::Mutex;

use pyo3::exceptions::{PyBaseException, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

#[derive(Default)]
struct SlotState {
    /// Python thread id (`threading.get_ident()`) of the registered thread.
    thread: Option<c_ulong>,
    interrupted: bool,
    /// An exception was scheduled in `thread` and may not be delivered yet.
    scheduled: bool,
}

/// One call's target for an asynchronous exception.
#[pyclass(module = "snakepit_bridge._native", frozen)]
pub struct InterruptSlot {
    exception: Py<PyType>,
    state: Mutex<SlotState>,
}

impl InterruptSlot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // Nothing panics while holding the lock; recover the data if it did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Schedules `exception` (a class; null withdraws) in the thread `thread`.
fn set_async_exc(thread: c_ulong, exception: *mut ffi::PyObject) {
    // SAFETY: the GIL is held (every caller has a `Python` token) and
    // `exception` is null or a live type object kept alive by the slot.
    // CPython takes the id as `unsigned long`; pyo3-ffi declares it `long`,
    // which has the same size and is passed through bit for bit.
    unsafe {
        ffi::PyThreadState_SetAsyncExc(thread as c_long, exception);
    }
}

#[pymethods]
impl InterruptSlot {
    /// A slot that raises `exception` (a `BaseException` subclass).
    #[new]
    fn new(exception: Bound<'_, PyType>) -> PyResult<Self> {
        if !exception.is_subclass_of::<PyBaseException>()? {
            return Err(PyTypeError::new_err(
                "InterruptSlot needs an exception class",
            ));
        }
        Ok(Self {
            exception: exception.unbind(),
            state: Mutex::new(SlotState::default()),
        })
    }

    /// Registers the calling thread as the one to interrupt; returns `False`
    /// (registering nothing) when the slot was already interrupted.
    fn enter(&self, _py: Python<'_>) -> bool {
        let mut state = self.state();
        if state.interrupted {
            return false;
        }
        // SAFETY: a plain query of the current thread's id.
        state.thread = Some(unsafe { ffi::PyThread_get_thread_ident() });
        state.scheduled = false;
        true
    }

    /// Unregisters the thread; an exception scheduled in it and not delivered
    /// yet is withdrawn. Call it from the thread that called `enter`.
    fn exit(&self, _py: Python<'_>) {
        let mut state = self.state();
        if let Some(thread) = state.thread.take() {
            if std::mem::take(&mut state.scheduled) {
                set_async_exc(thread, std::ptr::null_mut());
            }
        }
    }

    /// Interrupts the slot: from now on `enter` refuses, and the registered
    /// thread, if any, gets the exception at its next Python instruction.
    /// Returns `False` if the slot was already interrupted.
    fn interrupt(&self, py: Python<'_>) -> bool {
        let mut state = self.state();
        if state.interrupted {
            return false;
        }
        state.interrupted = true;
        if let Some(thread) = state.thread {
            set_async_exc(thread, self.exception.bind(py).as_ptr());
            state.scheduled = true;
        }
        true
    }

    /// Whether `interrupt` was called.
    #[getter]
    fn interrupted(&self) -> bool {
        self.state().interrupted
    }

    /// The registered thread's id, or `None`.
    #[getter]
    fn thread_id(&self) -> Option<c_ulong> {
        self.state().thread
    }
}
