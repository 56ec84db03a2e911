//! The inputs of a duplex call as a Python iterator.
//!
//! The reading (lazily, behind HTTP/2 flow control) and the rules for the end
//! of input and cancellation are `snakepit_core::worker::inputs`; here is only
//! the `InputIterator` the tool sees, which waits with the GIL released.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use snakepit_core::proto::PayloadKind;
use snakepit_core::worker::inputs::Inputs;

/// The inputs of one duplex call, in order, as a blocking Python iterator of
/// `(data: bytes, is_raw: bool)`. Created by the server only; the dispatcher
/// wraps it into the iterator the tool sees (see `snakepit_bridge/duplex.py`).
#[pyclass(module = "snakepit_bridge._native", frozen)]
pub struct InputIterator(Inputs);

impl From<Inputs> for InputIterator {
    fn from(inputs: Inputs) -> Self {
        Self(inputs)
    }
}

#[pymethods]
impl InputIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next input as `(data, is_raw)`, waiting for it with the GIL
    /// released; `StopIteration` at the end of input or once closed.
    fn __next__<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyBytes>, bool)> {
        let payload = py.detach(|| self.0.wait_next())?;
        let raw = payload.kind == PayloadKind::Raw as i32;
        Some((PyBytes::new(py, &payload.data), raw))
    }

    /// Ends the iteration from any thread: a waiting `__next__` returns at
    /// once, and no more inputs are read from the client.
    fn close(&self) {
        self.0.close();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.0.is_closed()
    }
}
