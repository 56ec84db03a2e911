//! Calls from the gRPC server into the Python `ToolDispatcher`.
//!
//! Every function here blocks on the GIL, so they run on the executor's or
//! tokio's blocking threads, never on the async worker thread. The dispatcher's contract
//! (see `snakepit_bridge/dispatcher.py`):
//!
//! - `describe_json() -> bytes`
//! - `new_call(timeout: float | None) -> CallHandle`, one per call; its
//!   `cancel(reason)` stops the call from any thread (see `control.rs`)
//! - `call(tool, arguments_json, binaries, session_id, metadata, handle=...)
//!    -> (payload: bytes, is_raw: bool, metadata: dict[str, str])`
//! - `open_stream(...)` with the same arguments -> an iterator of
//!   `(payload, is_raw, is_final, metadata)`; `close()` ends it early. A
//!   duplex call adds `inputs=`, an `InputIterator` (see `inputs.rs`).
//!
//! Failures are raised as `ToolFailure(category, error_type, message, traceback)`;
//! any other exception (`ToolCancelled` too) is reported as a Python error
//! with its traceback.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyIterator};
use snakepit_core::proto::{
    ExecuteToolRequest, Payload, PayloadKind, ToolChunk, ToolError, VersionInfo,
};
use snakepit_core::worker::stream::ChunkSource;
use snakepit_core::PROTOCOL_VERSION;

use crate::inputs::InputIterator;

/// The Python dispatcher object, shareable across threads.
#[derive(Clone)]
pub struct Dispatcher {
    inner: std::sync::Arc<Py<PyAny>>,
}

/// A Python iterator of chunks produced by `open_stream`.
pub struct ChunkIterator {
    inner: Py<PyAny>,
}

impl Dispatcher {
    pub fn new(inner: Py<PyAny>) -> Self {
        Self {
            inner: std::sync::Arc::new(inner),
        }
    }

    pub fn describe_json(&self) -> Result<Vec<u8>, ToolError> {
        Python::attach(|py| {
            let json = self.inner.bind(py).call_method0("describe_json")?;
            Ok(json.cast::<PyBytes>()?.as_bytes().to_vec())
        })
        .map_err(|e: PyErr| Python::attach(|py| tool_error(py, &e)))
    }

    /// Creates the `CallHandle` of a call that must end by `deadline`.
    pub fn new_call(&self, deadline: Option<Instant>) -> PyResult<Py<PyAny>> {
        Python::attach(|py| {
            // Measured with the GIL held, right before the handle starts its
            // own clock, so Python's deadline matches the server's.
            let timeout =
                deadline.map(|at| at.saturating_duration_since(Instant::now()).as_secs_f64());
            Ok(self
                .inner
                .bind(py)
                .call_method1("new_call", (timeout,))?
                .unbind())
        })
    }

    /// Runs a unary tool.
    pub fn call(
        &self,
        request: &ExecuteToolRequest,
        handle: Option<&Py<PyAny>>,
    ) -> Result<(Payload, HashMap<String, String>), ToolError> {
        Python::attach(|py| {
            let result = self
                .inner
                .bind(py)
                .call_method(
                    "call",
                    request_args(py, request),
                    Some(&handle_kwargs(py, handle)),
                )
                .map_err(|e| tool_error(py, &e))?;
            let (data, raw, metadata): (Bound<'_, PyBytes>, bool, HashMap<String, String>) =
                result.extract().map_err(|e: PyErr| tool_error(py, &e))?;
            Ok((payload(data, raw), metadata))
        })
    }

    /// Starts a streaming tool, or a duplex tool reading `inputs`; errors in
    /// argument handling surface here.
    pub fn open_stream(
        &self,
        request: &ExecuteToolRequest,
        handle: Option<&Py<PyAny>>,
        inputs: Option<InputIterator>,
    ) -> Result<ChunkIterator, ToolError> {
        Python::attach(|py| {
            let kwargs = handle_kwargs(py, handle);
            if let Some(inputs) = inputs {
                let inputs = Bound::new(py, inputs).map_err(|e| tool_error(py, &e))?;
                // Setting a str key cannot fail.
                let _ = kwargs.set_item("inputs", inputs);
            }
            let iterator = self
                .inner
                .bind(py)
                .call_method("open_stream", request_args(py, request), Some(&kwargs))
                .map_err(|e| tool_error(py, &e))?;
            Ok(ChunkIterator {
                inner: iterator.unbind(),
            })
        })
    }
}

impl ChunkIterator {
    /// The next chunk, `None` at the end, or the error that ended the stream.
    pub fn next_chunk(&self) -> Option<Result<ToolChunk, ToolError>> {
        Python::attach(|py| {
            let iterator = match PyIterator::from_object(self.inner.bind(py)) {
                Ok(iterator) => iterator,
                Err(e) => return Some(Err(tool_error(py, &e))),
            };
            let item = match iterator.into_iter().next()? {
                Ok(item) => item,
                Err(e) => return Some(Err(tool_error(py, &e))),
            };
            type Chunk<'py> = (Bound<'py, PyBytes>, bool, bool, HashMap<String, String>);
            Some(match item.extract::<Chunk<'_>>() {
                Ok((data, raw, is_final, metadata)) => Ok(ToolChunk {
                    payload: Some(payload(data, raw)),
                    is_final,
                    metadata,
                    error: None,
                }),
                Err(e) => Err(tool_error(py, &e)),
            })
        })
    }

    /// Closes the iterator early: the tool's generator sees `GeneratorExit`.
    pub fn close(&self) {
        Python::attach(|py| {
            if let Err(e) = self.inner.bind(py).call_method0("close") {
                e.print(py);
            }
        })
    }
}

/// A stream's chunks on the thread that runs its generator, attached to
/// Python once for the whole stream: the thread keeps one Python thread
/// state, and each step nests cheaply inside it instead of creating and
/// destroying a thread state per chunk.
pub struct AttachedChunks<'a, 'py> {
    pub py: Python<'py>,
    pub chunks: &'a ChunkIterator,
}

impl ChunkSource for AttachedChunks<'_, '_> {
    fn next_chunk(&self) -> Option<Result<ToolChunk, ToolError>> {
        self.chunks.next_chunk()
    }

    fn close(&self) {
        self.chunks.close();
    }

    /// Releases the GIL while the chunk waits for room in the buffer.
    fn wait_outside<R: Send>(&self, wait: impl FnOnce() -> R + Send) -> R {
        self.py.detach(wait)
    }
}

/// Cancels the call of `handle` (a `CallHandle`), for `reason`.
pub fn cancel_call(handle: &Py<PyAny>, reason: &str) {
    Python::attach(|py| {
        if let Err(e) = handle.bind(py).call_method1("cancel", (reason,)) {
            e.print(py);
        }
    })
}

fn handle_kwargs<'py>(py: Python<'py>, handle: Option<&Py<PyAny>>) -> Bound<'py, PyDict> {
    let kwargs = PyDict::new(py);
    if let Some(handle) = handle {
        // Setting a str key cannot fail.
        let _ = kwargs.set_item("handle", handle.bind(py));
    }
    kwargs
}

fn request_args<'py>(
    py: Python<'py>,
    request: &ExecuteToolRequest,
) -> (
    String,
    Bound<'py, PyBytes>,
    Bound<'py, PyDict>,
    String,
    HashMap<String, String>,
) {
    let binaries = PyDict::new(py);
    for (name, data) in &request.binary_arguments {
        // Setting a str key with a bytes value cannot fail.
        let _ = binaries.set_item(name, PyBytes::new(py, data));
    }
    (
        request.tool_name.clone(),
        PyBytes::new(py, &request.arguments_json),
        binaries,
        request.session_id.clone(),
        request.metadata.clone(),
    )
}

/// Payloads from this size on are not copied out of their Python bytes
/// object: the message refers to it until it is sent.
const SHARE_FROM_BYTES: usize = 16 * 1024;

fn payload(data: Bound<'_, PyBytes>, raw: bool) -> Payload {
    let kind = if raw {
        PayloadKind::Raw
    } else {
        PayloadKind::Json
    };
    let data = if data.as_bytes().len() >= SHARE_FROM_BYTES {
        Bytes::from_owner(PyBackedBytes::from(data))
    } else {
        Bytes::copy_from_slice(data.as_bytes())
    };
    Payload {
        kind: kind as i32,
        data,
    }
}

/// Reads a `ToolFailure`'s fields, or describes any other exception.
fn tool_error(py: Python<'_>, error: &PyErr) -> ToolError {
    let value = error.value(py);
    let field = |name: &str| -> Option<String> { value.getattr(name).ok()?.extract().ok() };
    if let (Some(category), Some(error_type), Some(message)) =
        (field("category"), field("error_type"), field("message"))
    {
        return ToolError {
            category,
            error_type,
            message,
            traceback: field("traceback").unwrap_or_default(),
        };
    }
    ToolError {
        category: "python".into(),
        error_type: error
            .get_type(py)
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "Exception".into()),
        message: value.str().map(|s| s.to_string()).unwrap_or_default(),
        traceback: format_traceback(py, error).unwrap_or_default(),
    }
}

fn format_traceback(py: Python<'_>, error: &PyErr) -> PyResult<String> {
    let lines = py
        .import("traceback")?
        .call_method1("format_exception", (error.value(py),))?;
    let text: Vec<String> = lines.extract()?;
    Ok(text.concat())
}

/// Versions reported by `GetVersion` and `Describe`.
pub fn versions(py: Python<'_>) -> PyResult<VersionInfo> {
    let platform = py.import("platform")?;
    let implementation: String = platform.call_method0("python_implementation")?.extract()?;
    let version: String = platform.call_method0("python_version")?.extract()?;
    let bridge_version = py
        .import("snakepit_bridge")
        .and_then(|m| m.getattr("__version__"))
        .and_then(|v| v.extract::<String>())
        .unwrap_or_else(|_| "unknown".into());
    Ok(VersionInfo {
        protocol_version: PROTOCOL_VERSION.into(),
        bridge_version,
        runtime_version: format!("{implementation} {version}"),
    })
}
