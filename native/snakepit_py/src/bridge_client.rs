//! The client of the node's bridge (`BridgeService`): sessions, session
//! variables, variable watches and Elixir tools, for Python code.
//!
//! Kept thin on purpose: each method runs one RPC and hands the response to
//! Python as plain values (dicts with the proto's field names in snake_case,
//! JSON as `bytes`, times as Unix microseconds). JSON, dataclasses and the
//! error classes live in `snakepit_bridge/bridge.py`.
//!
//! Async: every method is a coroutine on the extension's async core
//! (`aio.rs`); the RPC runs on a tokio runtime shared by all clients of the
//! process, and a cancelled awaiting task aborts it. The blocking API of
//! `snakepit_bridge` runs these coroutines on a background event loop.
//! Unary calls are bounded by a timeout
//! (the client's default, 30 s unless chosen), sent as the call's
//! `grpc-timeout` and also enforced here, so nothing hangs on a silent peer.
//!
//! Connections: unary calls share the client's HTTP/2 connection; each watch
//! opens a connection of its own, because updates that wait to be read hold
//! HTTP/2 flow-control windows, and a watch read slowly (or not at all) must
//! not stall the other calls.
//!
//! Errors: a failed RPC raises `BridgeError(code, reason, message)`, where
//! `code` is the gRPC status code as in the spec ("NOT_FOUND"), `reason` the
//! `x-snakepit-error` trailer ("" when absent) and `message` the status
//! message. A peer that cannot be reached is code "UNAVAILABLE"; a call that
//! ran out of time "DEADLINE_EXCEEDED".
//!
//! Fork: the runtime's threads do not survive `fork()`; a client created in
//! a forked child gets a runtime of its own (clients created before the fork
//! must not be used in the child).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::aio::{close_stream, next_message, on_runtime, SharedStream};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use snakepit_core::bridge::{connect_bridge, error_reason, BridgeClient as Client};
use snakepit_core::proto::{
    execute_tool_response::Outcome, CreateSessionRequest, DeleteVariableRequest,
    ExecuteToolRequest, GetVariableRequest, GetVariablesRequest, GetVersionRequest,
    ListElixirToolsRequest, ListSessionsRequest, ListVariablesRequest, PayloadKind,
    RegisterVariableRequest, SessionInfo, SessionRequest, SetVariableRequest, SetVariablesRequest,
    ToolSpec, Variable, VariableUpdate, VariableWrite, WatchVariablesRequest,
};
use tokio::runtime::Runtime;
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

create_exception!(
    snakepit_bridge._native,
    BridgeError,
    PyException,
    "A bridge RPC failed: args are (code, reason, message), also attributes."
);

/// Default bound of a unary call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time given to the server, beyond the call's `grpc-timeout`, to send
/// its own deadline status before the local timer ends the call.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// One write of `set_variable` and `set_variables`:
/// `(identifier, value_json, expected_version, metadata)`.
type WriteArgs = (
    String,
    Vec<u8>,
    Option<u64>,
    Option<HashMap<String, String>>,
);

/// A variable to register: `(name, type, value_json, constraints_json,
/// metadata)`; empty constraints mean none.
type VariableArgs = (
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    Option<HashMap<String, String>>,
);

/// The request's form of one write.
fn variable_write(
    (identifier, value_json, expected_version, metadata): WriteArgs,
) -> VariableWrite {
    VariableWrite {
        identifier,
        value_json,
        expected_version,
        metadata: metadata.unwrap_or_default(),
    }
}

/// The runtime of this process's clients, with the pid it was made in.
static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The process's client runtime, created on first use (and again in a forked
/// child, whose copy of the parent's runtime has no threads).
pub(crate) fn runtime() -> PyResult<Arc<Runtime>> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some((owner, runtime)) = slot.as_ref() {
        if *owner == pid {
            return Ok(runtime.clone());
        }
    }
    if let Some((_, stale)) = slot.take() {
        // The parent's runtime: its threads are gone, dropping it would wait
        // for them.
        std::mem::forget(stale);
    }
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("snakepit-bridge-client")
            .enable_all()
            .build()
            .map_err(|e| PyOSError::new_err(format!("cannot start runtime: {e}")))?,
    );
    *slot = Some((pid, runtime.clone()));
    Ok(runtime)
}

/// A failure of a bridge call, before it becomes a Python exception.
pub(crate) struct Failure {
    code: &'static str,
    reason: String,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: String::new(),
            message: message.into(),
        }
    }

    pub(crate) fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let build = || -> PyResult<PyErr> {
            let value =
                py.get_type::<BridgeError>()
                    .call1((self.code, &self.reason, &self.message))?;
            value.setattr("code", self.code)?;
            value.setattr("reason", &self.reason)?;
            value.setattr("message", &self.message)?;
            Ok(PyErr::from_value(value))
        };
        build().unwrap_or_else(|e| e)
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        if snakepit_core::deadline::client_timed_out(&status) {
            return Failure::new(
                "DEADLINE_EXCEEDED",
                "the call ran out of time before the node's answer arrived",
            );
        }
        let reason = error_reason(&status).unwrap_or_default().to_owned();
        Self {
            code: code_name(status.code()),
            reason,
            message: status.message().to_owned(),
        }
    }
}

/// The status code's name as the gRPC spec writes it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Runs one RPC bounded by `timeout` (sent as `grpc-timeout`, enforced here
/// with a little grace).
async fn bounded<T, F>(timeout: Duration, call: F) -> Result<T, Failure>
where
    F: Future<Output = Result<tonic::Response<T>, Status>>,
{
    match tokio::time::timeout(timeout + DEADLINE_GRACE, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(Failure::new(
            "DEADLINE_EXCEEDED",
            format!("no answer from the bridge within {timeout:?}"),
        )),
    }
}

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The longest timeout a Python caller may give, in seconds (a year).
const MAX_TIMEOUT_S: f64 = 365.0 * 24.0 * 3600.0;

pub(crate) fn timeout_from(seconds: Option<f64>, default: Duration) -> PyResult<Duration> {
    match seconds {
        None => Ok(default),
        // At most a year: gRPC deadlines and clocks overflow beyond that.
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_S => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(PyValueError::new_err(format!(
            "timeout must be a positive number of seconds of at most {MAX_TIMEOUT_S}, got {s}"
        ))),
    }
}

/// A connection to the node's bridge server. Thread-safe; share one per
/// process. Every method is a coroutine.
#[pyclass(module = "snakepit_bridge._native", frozen)]
pub struct BridgeClient {
    client: Client,
    /// `host:port`, where each watch opens its own connection.
    target: String,
    token: String,
    runtime: Arc<Runtime>,
    timeout: Duration,
    /// The address as given, for `repr`.
    #[pyo3(get)]
    address: String,
}

/// Runs `$body` (an expression using `$client`, a clone of the connection)
/// on the client runtime as one RPC bounded by `$timeout`; awaits it.
macro_rules! rpc {
    ($self:ident, $timeout:expr, |$client:ident, $t:ident| $body:expr) => {{
        let mut $client = $self.client.clone();
        let $t: Duration = $timeout;
        on_runtime(&$self.runtime, async move { bounded($t, $body).await }).await
    }};
}

/// Builds a Python value with the GIL held.
fn to_py<T>(
    build: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, T>>,
) -> PyResult<Py<T>> {
    Python::attach(|py| build(py).map(Bound::unbind))
}

#[pymethods]
impl BridgeClient {
    /// Connects to the bridge at `address` (`host:port`, `http://` allowed),
    /// sending `token` with every request; a coroutine. Fails with
    /// `BridgeError` ("UNAVAILABLE") when nothing answers there.
    #[staticmethod]
    #[pyo3(signature = (address, token, timeout_s = None))]
    async fn connect(address: String, token: String, timeout_s: Option<f64>) -> PyResult<Self> {
        let timeout = timeout_from(timeout_s, DEFAULT_TIMEOUT)?;
        let target = address
            .strip_prefix("http://")
            .unwrap_or(&address)
            .to_owned();
        let runtime = runtime()?;
        let client = on_runtime(&runtime, connect(target.clone(), token.clone())).await?;
        Ok(Self {
            client,
            target,
            token,
            runtime,
            timeout,
            address,
        })
    }

    fn __repr__(&self) -> String {
        format!("BridgeClient({:?})", self.address)
    }

    /// `{"protocol_version", "bridge_version", "runtime_version"}` of the node.
    async fn get_version(&self) -> PyResult<Py<PyDict>> {
        let info = rpc!(self, self.timeout, |c, t| c
            .get_version(timed(GetVersionRequest {}, t)))?;
        to_py(|py| {
            let dict = PyDict::new(py);
            dict.set_item("protocol_version", info.protocol_version)?;
            dict.set_item("bridge_version", info.bridge_version)?;
            dict.set_item("runtime_version", info.runtime_version)?;
            Ok(dict)
        })
    }

    /// Creates the session (or renews an existing one); a session dict.
    #[pyo3(signature = (session_id, ttl_seconds = 0, metadata = None))]
    async fn create_session(
        &self,
        session_id: String,
        ttl_seconds: u32,
        metadata: Option<HashMap<String, String>>,
    ) -> PyResult<Py<PyDict>> {
        let message = CreateSessionRequest {
            session_id,
            ttl_seconds,
            metadata: metadata.unwrap_or_default(),
        };
        let info = rpc!(self, self.timeout, |c, t| c
            .create_session(timed(message, t)))?;
        to_py(|py| session_dict(py, &info))
    }

    /// The session's state (renews its time to live).
    async fn get_session(&self, session_id: String) -> PyResult<Py<PyDict>> {
        let message = SessionRequest { session_id };
        let info = rpc!(self, self.timeout, |c, t| c.get_session(timed(message, t)))?;
        to_py(|py| session_dict(py, &info))
    }

    /// Renews the session's time to live; its state.
    async fn touch_session(&self, session_id: String) -> PyResult<Py<PyDict>> {
        let message = SessionRequest { session_id };
        let info = rpc!(self, self.timeout, |c, t| c
            .touch_session(timed(message, t)))?;
        to_py(|py| session_dict(py, &info))
    }

    /// Deletes the session; whether it existed.
    async fn delete_session(&self, session_id: String) -> PyResult<bool> {
        let message = SessionRequest { session_id };
        let response = rpc!(self, self.timeout, |c, t| c
            .delete_session(timed(message, t)))?;
        Ok(response.existed)
    }

    /// Every live session, sorted by id.
    async fn list_sessions(&self) -> PyResult<Py<PyList>> {
        let response = rpc!(self, self.timeout, |c, t| c
            .list_sessions(timed(ListSessionsRequest {}, t)))?;
        to_py(|py| {
            let items = response
                .sessions
                .iter()
                .map(|s| session_dict(py, s))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)
        })
    }

    /// Registers a variable; a variable dict.
    #[pyo3(signature = (session_id, variable, source = String::new()))]
    async fn register_variable(
        &self,
        session_id: String,
        variable: VariableArgs,
        source: String,
    ) -> PyResult<Py<PyDict>> {
        let (name, r#type, value_json, constraints_json, metadata) = variable;
        let message = RegisterVariableRequest {
            session_id,
            name,
            r#type,
            value_json,
            constraints_json,
            metadata: metadata.unwrap_or_default(),
            source,
        };
        let variable = rpc!(self, self.timeout, |c, t| c
            .register_variable(timed(message, t)))?;
        to_py(|py| variable_dict(py, &variable))
    }

    /// One variable by name or id.
    async fn get_variable(&self, session_id: String, identifier: String) -> PyResult<Py<PyDict>> {
        let message = GetVariableRequest {
            session_id,
            identifier,
        };
        let variable = rpc!(self, self.timeout, |c, t| c.get_variable(timed(message, t)))?;
        to_py(|py| variable_dict(py, &variable))
    }

    /// `(variables, missing)`: the variables found, in the order asked, and
    /// the identifiers that name none.
    async fn get_variables(
        &self,
        session_id: String,
        identifiers: Vec<String>,
    ) -> PyResult<Py<PyTuple>> {
        let message = GetVariablesRequest {
            session_id,
            identifiers,
        };
        let response = rpc!(self, self.timeout, |c, t| c
            .get_variables(timed(message, t)))?;
        to_py(|py| {
            let variables = variable_list(py, &response.variables)?;
            let missing = PyList::new(py, &response.missing)?;
            PyTuple::new(py, [variables.into_any(), missing.into_any()])
        })
    }

    /// Writes one variable (only at its `expected_version` when given).
    /// `write` is a tuple as in `set_variables`.
    #[pyo3(signature = (session_id, write, source = String::new()))]
    async fn set_variable(
        &self,
        session_id: String,
        write: WriteArgs,
        source: String,
    ) -> PyResult<Py<PyDict>> {
        let message = SetVariableRequest {
            session_id,
            write: Some(variable_write(write)),
            source,
        };
        let variable = rpc!(self, self.timeout, |c, t| c.set_variable(timed(message, t)))?;
        to_py(|py| variable_dict(py, &variable))
    }

    /// Writes several variables atomically. `writes` holds
    /// `(identifier, value_json, expected_version | None, metadata | None)`
    /// tuples; returns the variables after the writes, in request order.
    #[pyo3(signature = (session_id, writes, source = String::new()))]
    async fn set_variables(
        &self,
        session_id: String,
        writes: Vec<WriteArgs>,
        source: String,
    ) -> PyResult<Py<PyList>> {
        let message = SetVariablesRequest {
            session_id,
            writes: writes.into_iter().map(variable_write).collect(),
            source,
        };
        let response = rpc!(self, self.timeout, |c, t| c
            .set_variables(timed(message, t)))?;
        to_py(|py| variable_list(py, &response.variables))
    }

    /// Variables whose name matches `pattern` (`*` any run; "" all), by name.
    #[pyo3(signature = (session_id, pattern = String::new()))]
    async fn list_variables(&self, session_id: String, pattern: String) -> PyResult<Py<PyList>> {
        let message = ListVariablesRequest {
            session_id,
            pattern,
        };
        let response = rpc!(self, self.timeout, |c, t| c
            .list_variables(timed(message, t)))?;
        to_py(|py| variable_list(py, &response.variables))
    }

    /// Deletes a variable.
    #[pyo3(signature = (session_id, identifier, source = String::new()))]
    async fn delete_variable(
        &self,
        session_id: String,
        identifier: String,
        source: String,
    ) -> PyResult<()> {
        let message = DeleteVariableRequest {
            session_id,
            identifier,
            source,
        };
        rpc!(self, self.timeout, |c, t| c
            .delete_variable(timed(message, t)))?;
        Ok(())
    }

    /// The Elixir tools exposed to Python: dicts with `name`, `description`,
    /// `supports_streaming` and `parameters` (dicts with `name`, `type`,
    /// `required`, `default_json`).
    async fn list_elixir_tools(&self) -> PyResult<Py<PyList>> {
        let response = rpc!(self, self.timeout, |c, t| c
            .list_elixir_tools(timed(ListElixirToolsRequest {}, t)))?;
        to_py(|py| {
            let items = response
                .tools
                .iter()
                .map(|tool| tool_dict(py, tool))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)
        })
    }

    /// Runs an Elixir tool: `("ok", payload_kind, data)` with payload_kind
    /// "json" or "raw", or `("error", category, error_type, message,
    /// traceback)` when the Elixir function failed. `timeout_s` bounds the
    /// call (the client's default when None).
    #[pyo3(signature = (tool_name, arguments_json, session_id = String::new(), metadata = None, timeout_s = None))]
    async fn execute_elixir_tool(
        &self,
        tool_name: String,
        arguments_json: Vec<u8>,
        session_id: String,
        metadata: Option<HashMap<String, String>>,
        timeout_s: Option<f64>,
    ) -> PyResult<Py<PyTuple>> {
        let timeout = timeout_from(timeout_s, self.timeout)?;
        let message = ExecuteToolRequest {
            tool_name,
            arguments_json,
            binary_arguments: HashMap::new(),
            session_id,
            metadata: metadata.unwrap_or_default(),
        };
        let response = rpc!(self, timeout, |c, t| c
            .execute_elixir_tool(timed(message, t)))?;
        to_py(|py| match response.outcome {
            Some(Outcome::Result(payload)) => {
                let kind = if payload.kind == PayloadKind::Raw as i32 {
                    "raw"
                } else {
                    "json"
                };
                let data = PyBytes::new(py, &payload.data);
                PyTuple::new(
                    py,
                    [
                        "ok".into_pyobject(py)?.into_any(),
                        kind.into_pyobject(py)?.into_any(),
                        data.into_any(),
                    ],
                )
            }
            Some(Outcome::Error(error)) => PyTuple::new(
                py,
                [
                    "error",
                    error.category.as_str(),
                    error.error_type.as_str(),
                    error.message.as_str(),
                    error.traceback.as_str(),
                ],
            ),
            None => Err(Failure::new(
                "INTERNAL",
                "the bridge answered the tool call with neither a result nor an error",
            )
            .into_pyerr(py)),
        })
    }

    /// Starts watching variables; the updates arrive through the returned
    /// [`WatchStream`]. Fails (e.g. `variable_not_found`) when the node
    /// refuses the watch.
    #[pyo3(signature = (session_id, identifiers, include_initial = true, heartbeat_ms = 0, max_buffered = 0))]
    async fn watch_variables(
        &self,
        session_id: String,
        identifiers: Vec<String>,
        include_initial: bool,
        heartbeat_ms: u32,
        max_buffered: u32,
    ) -> PyResult<WatchStream> {
        let message = WatchVariablesRequest {
            session_id,
            variable_identifiers: identifiers,
            include_initial_values: include_initial,
            heartbeat_interval_ms: heartbeat_ms,
            max_buffered,
        };
        let connecting = connect(self.target.clone(), self.token.clone());
        let timeout = self.timeout;
        // Only the start is bounded (the response headers); the stream lives
        // until it ends or is closed.
        let stream = on_runtime(&self.runtime, async move {
            // A connection of its own: updates not read yet hold HTTP/2
            // flow-control windows, and a watch read slowly (or not at all)
            // must not stall the client's other calls.
            let mut client = connecting.await?;
            match tokio::time::timeout(timeout, client.watch_variables(message)).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(Failure::from(status)),
                Err(_) => Err(Failure::new(
                    "DEADLINE_EXCEEDED",
                    format!("the bridge did not start the watch within {timeout:?}"),
                )),
            }
        })
        .await?;
        Ok(WatchStream {
            runtime: self.runtime.clone(),
            stream: Arc::new(AsyncMutex::new(Some(stream))),
            closed: CancellationToken::new(),
        })
    }
}

/// Opens a connection to the bridge at `target` (`host:port`).
async fn connect(target: String, token: String) -> Result<Client, Failure> {
    connect_bridge(&target, &token)
        .await
        .map_err(|e| Failure::new("UNAVAILABLE", e.to_string()))
}

/// The updates of one `WatchVariables` call, in order. `close()` (or
/// dropping the object) cancels the call.
#[pyclass(module = "snakepit_bridge._native", frozen)]
pub struct WatchStream {
    runtime: Arc<Runtime>,
    /// `None` once the stream ended or was closed.
    stream: SharedStream<VariableUpdate>,
    closed: CancellationToken,
}

#[pymethods]
impl WatchStream {
    /// The next update as a dict, or `None` once the server ended the
    /// stream cleanly or after `close()`; a coroutine. Raises `BridgeError`
    /// with the final status when the stream ended with an error
    /// (`watch_overflow`, `session_ended`, a lost connection, ...).
    /// Cancelling the awaiting task loses no update.
    async fn next(&self) -> PyResult<Option<Py<PyDict>>> {
        match next_message(&self.runtime, &self.stream, &self.closed).await? {
            Some(update) => to_py(|py| update_dict(py, &update)).map(Some),
            None => Ok(None),
        }
    }

    /// Cancels the watch at once, from any thread; a waiting `next()`
    /// answers `None`.
    fn close(&self) {
        close_stream(&self.runtime, &self.stream, &self.closed);
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        close_stream(&self.runtime, &self.stream, &self.closed);
    }
}

fn session_dict<'py>(py: Python<'py>, info: &SessionInfo) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("session_id", &info.session_id)?;
    dict.set_item("created_at_us", info.created_at_us)?;
    dict.set_item("last_used_at_us", info.last_used_at_us)?;
    dict.set_item("ttl_seconds", info.ttl_seconds)?;
    dict.set_item("expires_at_us", info.expires_at_us)?;
    dict.set_item("metadata", &info.metadata)?;
    dict.set_item("variable_count", info.variable_count)?;
    dict.set_item("watcher_count", info.watcher_count)?;
    Ok(dict)
}

fn variable_dict<'py>(py: Python<'py>, variable: &Variable) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("id", &variable.id)?;
    dict.set_item("name", &variable.name)?;
    dict.set_item("type", &variable.r#type)?;
    dict.set_item("value_json", PyBytes::new(py, &variable.value_json))?;
    dict.set_item(
        "constraints_json",
        PyBytes::new(py, &variable.constraints_json),
    )?;
    dict.set_item("metadata", &variable.metadata)?;
    dict.set_item("version", variable.version)?;
    dict.set_item("source", &variable.source)?;
    dict.set_item("update_metadata", &variable.update_metadata)?;
    dict.set_item("created_at_us", variable.created_at_us)?;
    dict.set_item("updated_at_us", variable.updated_at_us)?;
    Ok(dict)
}

fn variable_list<'py>(py: Python<'py>, variables: &[Variable]) -> PyResult<Bound<'py, PyList>> {
    let items = variables
        .iter()
        .map(|v| variable_dict(py, v))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

fn update_dict<'py>(py: Python<'py>, update: &VariableUpdate) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("update_type", &update.update_type)?;
    dict.set_item("variable_id", &update.variable_id)?;
    match &update.variable {
        Some(variable) => dict.set_item("variable", variable_dict(py, variable)?)?,
        None => dict.set_item("variable", py.None())?,
    }
    dict.set_item("old_value_json", PyBytes::new(py, &update.old_value_json))?;
    dict.set_item("update_source", &update.update_source)?;
    dict.set_item("update_metadata", &update.update_metadata)?;
    dict.set_item("timestamp_us", update.timestamp_us)?;
    dict.set_item("version", update.version)?;
    Ok(dict)
}

fn tool_dict<'py>(py: Python<'py>, tool: &ToolSpec) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("name", &tool.name)?;
    dict.set_item("description", &tool.description)?;
    dict.set_item("supports_streaming", tool.supports_streaming)?;
    let parameters = PyList::empty(py);
    for parameter in &tool.parameters {
        let p = PyDict::new(py);
        p.set_item("name", &parameter.name)?;
        p.set_item("type", &parameter.r#type)?;
        p.set_item("required", parameter.required)?;
        p.set_item("default_json", &parameter.default_json)?;
        parameters.append(p)?;
    }
    dict.set_item("parameters", parameters)?;
    Ok(dict)
}

/// Registers the classes and the exception in the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BridgeClient>()?;
    m.add_class::<WatchStream>()?;
    m.add("BridgeError", m.py().get_type::<BridgeError>())?;
    Ok(())
}
