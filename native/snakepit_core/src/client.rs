//! The gRPC client that calls a worker.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::address::{abstract_socket, WorkerAddress};
use crate::auth::AttachToken;
use crate::proto::worker_service_client::WorkerServiceClient;
use crate::CoreError;

/// Default largest message either side sends or accepts (256 MiB): a single
/// result or chunk beyond it fails with a clear error. Pools can change it.
///
/// Shared with `Snakepit.Limits` (`test/snakepit/limits_test.exs` checks).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Environment variable through which workers learn the limit.
pub const MAX_MESSAGE_ENV_VAR: &str = "SNAKEPIT_MAX_MESSAGE_BYTES";

/// HTTP/2 connection window of every Snakepit endpoint, client and server
/// (1 GiB).
///
/// HTTP/2 (h2) refuses a peer whose small DATA frames pile up unread beyond
/// a budget of half the connection window, and ends the connection
/// (`GOAWAY ENHANCE_YOUR_CALM`). Small chunks waiting for a slow callback,
/// small duplex inputs waiting for a busy tool, and variable updates waiting
/// for a slow watcher are exactly that, and legitimate. With this window the
/// budget is far above what flow control lets pile up: each stream still
/// holds at most its own window (2 MiB on clients, 1 MiB on servers), which
/// is what bounds memory per stream.
pub const CONNECTION_WINDOW: u32 = 1 << 30;

/// A cheap-to-clone client for one worker; clones share the HTTP/2 connection.
pub type WorkerClient = WorkerServiceClient<InterceptedService<Channel, AttachToken>>;

/// Connects to a worker at `address`, with the default limit.
pub async fn connect(address: &WorkerAddress, token: &str) -> Result<WorkerClient, CoreError> {
    connect_with_limit(address, token, MAX_MESSAGE_BYTES).await
}

/// Connects to a worker at `address`; messages larger than
/// `max_message_bytes` are refused in both directions.
pub async fn connect_with_limit(
    address: &WorkerAddress,
    token: &str,
    max_message_bytes: usize,
) -> Result<WorkerClient, CoreError> {
    let failed = |message: String| CoreError::Connect {
        address: address.to_string(),
        message,
    };
    // The same settings for both transports; for a Unix socket the URI is
    // only a placeholder, the connector decides where to go.
    let uri = match address {
        WorkerAddress::Tcp(port) => format!("http://127.0.0.1:{port}"),
        WorkerAddress::Unix(_) => "http://snakepit-worker".to_owned(),
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| failed(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let connected = match address {
        WorkerAddress::Tcp(_) => endpoint.connect().await,
        WorkerAddress::Unix(name) => {
            let name = name.clone();
            endpoint
                .connect_with_connector(service_fn(move |_: Uri| {
                    let name = name.clone();
                    async move { connect_abstract(&name).map(TokioIo::new) }
                }))
                .await
        }
    };
    let channel = connected.map_err(|e| failed(e.to_string()))?;
    let auth = AttachToken::new(token).map_err(|e| failed(e.message().to_owned()))?;
    Ok(WorkerServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes))
}

/// How long connecting to a worker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the abstract Unix socket `name`. Connecting to a local
/// socket completes (or fails) at once, so it is done without waiting.
pub fn connect_abstract(name: &str) -> std::io::Result<tokio::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::connect_addr(&abstract_socket(name)?)?;
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}
