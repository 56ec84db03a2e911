//! `snakepit_bridge._native`: the gRPC server of a Python worker, and the
//! client of the node's bridge (`bridge_client.rs`).
//!
//! Python calls [`serve`] (TCP) or [`serve_unix`] (a Unix socket) with a
//! `ToolDispatcher`; the server runs on a tokio
//! runtime owned by the returned [`Server`] and calls back into the dispatcher
//! for every request (see `dispatch.rs`). The main Python thread then parks in
//! [`Server::wait`] with the GIL released.
//!
//! Calls honour their deadline and are cancelled when their caller goes away
//! (`service.rs`, `control.rs`, over `snakepit_core::worker`); `InterruptSlot` (`interrupt.rs`) is how the
//! Python side raises `ToolCancelled` in the thread running a sync tool.
//! Duplex calls hand their client's inputs to the tool through an
//! `InputIterator` (`inputs.rs`).

mod aio;
mod bridge_client;
mod control;
mod describe;
mod dispatch;
mod inputs;
mod interrupt;
mod node_client;
mod service;
mod stuck;
mod thread_state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use snakepit_core::address::{abstract_socket, WorkerAddress, UNIX_PREFIX};
use snakepit_core::auth::{generate_token, RequireToken};
use snakepit_core::client::{CONNECTION_WINDOW, MAX_MESSAGE_BYTES, MAX_MESSAGE_ENV_VAR};
use snakepit_core::proto::worker_service_server::WorkerServiceServer;
use snakepit_core::worker::unary::Admit;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Runtime;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Connected, Router, TcpIncoming};

use crate::dispatch::Dispatcher;
use crate::inputs::InputIterator;
use crate::interrupt::InterruptSlot;
use crate::service::WorkerService;

/// How often `wait` wakes up to let Python handle signals (Ctrl-C).
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// A running worker server.
#[pyclass(module = "snakepit_bridge._native", frozen)]
struct Server {
    address: WorkerAddress,
    runtime: Arc<Runtime>,
    stopped: CancellationToken,
}

#[pymethods]
impl Server {
    /// The TCP port the server listens on (chosen by the OS when 0 was
    /// asked); 0 when it serves on a Unix socket.
    #[getter]
    fn port(&self) -> u16 {
        self.address.port().unwrap_or(0)
    }

    /// Where the server listens: `127.0.0.1:<port>` or `unix:@<name>`.
    #[getter]
    fn address(&self) -> String {
        self.address.to_string()
    }

    /// The line that tells the parent the server is ready:
    /// `GRPC_READY:<port>` or `GRPC_READY:unix:@<name>`.
    #[getter]
    fn ready_line(&self) -> String {
        self.address.ready_line()
    }

    /// Blocks until the server shuts down, with the GIL released.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        loop {
            let stopped = self.stopped.clone();
            let runtime = self.runtime.clone();
            let done = py.detach(move || {
                runtime.block_on(async {
                    tokio::time::timeout(SIGNAL_CHECK_INTERVAL, stopped.cancelled())
                        .await
                        .is_ok()
                })
            });
            if done {
                return Ok(());
            }
            py.check_signals()?;
        }
    }

    /// Stops accepting requests and ends `wait`.
    fn shutdown(&self) {
        self.stopped.cancel();
    }
}

/// Starts serving `dispatcher` on `host:port` (port 0 lets the OS choose).
///
/// Every request must carry `token` in the `x-snakepit-token` metadata; an
/// empty token is replaced by a random one, so the server is never open.
#[pyfunction]
fn serve(
    py: Python<'_>,
    dispatcher: Py<PyAny>,
    host: &str,
    port: u16,
    token: &str,
) -> PyResult<Server> {
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| PyValueError::new_err(format!("invalid address {host}:{port}: {e}")))?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| PyOSError::new_err(format!("cannot bind {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let address = WorkerAddress::Tcp(listener.local_addr()?.port());
    start(py, dispatcher, token, address, Listener::Tcp(listener))
}

/// Starts serving `dispatcher` on a Unix socket in the abstract namespace
/// (Linux), named `name`, or a fresh random name when `name` is empty.
/// The token works as for [`serve`].
#[pyfunction]
#[pyo3(signature = (dispatcher, token, name = ""))]
fn serve_unix(py: Python<'_>, dispatcher: Py<PyAny>, token: &str, name: &str) -> PyResult<Server> {
    let name = if name.is_empty() {
        format!(
            "snakepit-{}-{}",
            std::process::id(),
            &generate_token()[..12]
        )
    } else {
        name.to_owned()
    };
    let address = WorkerAddress::parse(&format!("{UNIX_PREFIX}{name}"))
        .ok_or_else(|| PyValueError::new_err(format!("invalid socket name {name:?}")))?;
    let listener = bind_abstract(&name)
        .map_err(|e| PyOSError::new_err(format!("cannot bind {address}: {e}")))?;
    start(py, dispatcher, token, address, Listener::Unix(listener))
}

fn bind_abstract(name: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind_addr(&abstract_socket(name)?)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A bound socket, not yet registered with the runtime.
enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Serves `dispatcher` on `listener` from a runtime of its own.
fn start(
    py: Python<'_>,
    dispatcher: Py<PyAny>,
    token: &str,
    address: WorkerAddress,
    listener: Listener,
) -> PyResult<Server> {
    let token = if token.is_empty() {
        generate_token()
    } else {
        token.to_owned()
    };
    let versions = dispatch::versions(py)?;
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            // One thread for the HTTP/2 side: it does little per call, and
            // every extra thread is another hand-off (a thread wake-up) on
            // the way from request to Python and back. Python runs on the
            // executor's threads (`snakepit_core::executor`) and, for
            // streams, on blocking threads.
            .worker_threads(1)
            .thread_name("snakepit-worker-io")
            // Threads that ran Python keep a thread state (see thread_state.rs).
            .thread_keep_alive(Duration::from_secs(3600))
            .enable_all()
            .build()
            .map_err(|e| PyOSError::new_err(format!("cannot start runtime: {e}")))?,
    );

    let service = WorkerService::new(Dispatcher::new(dispatcher), versions);
    let server = InterceptedService::new(
        WorkerServiceServer::new(service)
            .max_decoding_message_size(max_message_bytes())
            .max_encoding_message_size(max_message_bytes()),
        Admit::new(RequireToken::new(&token)),
    );
    let stopped = CancellationToken::new();
    let shutdown = stopped.clone();
    runtime.spawn(async move {
        let router = tonic::transport::Server::builder()
            .initial_connection_window_size(CONNECTION_WINDOW)
            .add_service(server);
        let until = shutdown.clone().cancelled_owned();
        let result = match listener {
            Listener::Tcp(listener) => {
                // TCP_NODELAY on each accepted connection (the builder's
                // option does not reach connections served from an incoming
                // stream): without it a response written in several pieces
                // waits for the client's delayed ACK, about 40 ms.
                let incoming = tokio::net::TcpListener::from_std(listener)
                    .map(|listener| TcpIncoming::from(listener).with_nodelay(Some(true)));
                serve_incoming(router, incoming, until).await
            }
            Listener::Unix(listener) => {
                let incoming =
                    tokio::net::UnixListener::from_std(listener).map(UnixListenerStream::new);
                serve_incoming(router, incoming, until).await
            }
        };
        if let Err(message) = result {
            eprintln!("snakepit worker: {message}");
        }
        shutdown.cancel();
    });
    Ok(Server {
        address,
        runtime,
        stopped,
    })
}

/// Serves `router` on the connections of `incoming` until `until`, or says
/// why it could not.
async fn serve_incoming<I, IO>(
    router: Router,
    incoming: std::io::Result<I>,
    until: impl Future<Output = ()>,
) -> Result<(), String>
where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let incoming = incoming.map_err(|e| format!("cannot listen: {e}"))?;
    router
        .serve_with_incoming_shutdown(incoming, until)
        .await
        .map_err(|e| format!("server failed: {e}"))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(serve_unix, m)?)?;
    m.add_function(wrap_pyfunction!(die_with_parent, m)?)?;
    m.add_function(wrap_pyfunction!(exit_with_process_group, m)?)?;
    m.add_function(wrap_pyfunction!(scrub_initial_environment, m)?)?;
    #[cfg(target_os = "linux")]
    m.add(
        "PARENT_DEATH_SIGNAL",
        snakepit_core::lifeline::parent_death_signal(),
    )?;
    m.add_class::<Server>()?;
    m.add_class::<InterruptSlot>()?;
    m.add_class::<InputIterator>()?;
    aio::register(m)?;
    bridge_client::register(m)?;
    node_client::register(m)?;
    Ok(())
}

/// Makes the parent-death signal (sent when the VM dies) take this process's
/// group down with it (`snakepit_core::lifeline`).
#[pyfunction]
fn die_with_parent() -> PyResult<()> {
    snakepit_core::lifeline::die_with_parent().map_err(|e| PyOSError::new_err(e.to_string()))
}

/// Ends this process, and its whole process group when it leads one; never
/// returns.
#[pyfunction]
fn exit_with_process_group(status: i32) {
    snakepit_core::lifeline::kill_own_group(status)
}

/// Zeroes `name=value` in the process's initial environment block
/// (`/proc/<pid>/environ`); see `snakepit_core::auth::scrub_initial_environment`.
#[pyfunction]
fn scrub_initial_environment(name: &str) -> PyResult<bool> {
    snakepit_core::auth::scrub_initial_environment(name)
        .map_err(|e| PyOSError::new_err(e.to_string()))
}

/// The message size limit the pool chose (`SNAKEPIT_MAX_MESSAGE_BYTES`), so
/// both ends refuse the same messages; the default when unset or unreadable.
fn max_message_bytes() -> usize {
    std::env::var(MAX_MESSAGE_ENV_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(MAX_MESSAGE_BYTES)
}
