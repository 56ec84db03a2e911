//! A gRPC client of the bridge, for tests and the Python extension.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::AttachToken;
use crate::client::{CONNECTION_WINDOW, MAX_MESSAGE_BYTES};
use crate::proto::bridge_service_client::BridgeServiceClient;
use crate::CoreError;

/// A cheap-to-clone bridge client; clones share the HTTP/2 connection.
pub type BridgeClient = BridgeServiceClient<InterceptedService<Channel, AttachToken>>;

/// Connects to the bridge at `address` (`"127.0.0.1:1234"`), sending `token`
/// with every request.
pub async fn connect_bridge(address: &str, token: &str) -> Result<BridgeClient, CoreError> {
    let failed = |message: String| CoreError::Bridge {
        address: address.to_owned(),
        message,
    };
    let auth = AttachToken::new(token).map_err(|e| failed(e.message().to_owned()))?;
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| failed(format!("not an address: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_connection_window_size(CONNECTION_WINDOW);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| match std::error::Error::source(&e) {
            // tonic's own message is only "transport error".
            Some(cause) => failed(format!("cannot connect: {cause}")),
            None => failed(format!("cannot connect: {e}")),
        })?;
    Ok(BridgeServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
