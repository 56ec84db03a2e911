//! A gRPC client of the bridge, for tests and the Python extension.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::auth::AttachToken;
use crate::client::{CONNECTION_WINDOW, MAX_MESSAGE_BYTES};
use crate::proto::bridge_service_client::BridgeServiceClient;
use crate::CoreError;

/// A cheap-to-clone bridge client; clones share the HTTP/2 connection.
pub type BridgeClient = BridgeServiceClient<InterceptedService<Channel, AttachToken>>;

/// Connects to the bridge at `address` (`"127.0.0.1:1234"`), sending `token`
/// with every request.
pub async fn connect_bridge(address: &str, token: &str) -> Result<BridgeClient, CoreError> {
    connect_bridge_tls(address, token, None).await
}

/// Connects as [`connect_bridge`]; with `tls`, over TLS: `(CA certificate
/// PEM, server name)` (the name the server's certificate is for; empty for
/// the address's host).
pub async fn connect_bridge_tls(
    address: &str,
    token: &str,
    tls: Option<(Vec<u8>, String)>,
) -> Result<BridgeClient, CoreError> {
    let failed = |message: String| CoreError::Bridge {
        address: address.to_owned(),
        message,
    };
    let auth = AttachToken::new(token).map_err(|e| failed(e.message().to_owned()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| failed(format!("not an address: {e}")))?;
    if let Some((ca_pem, server_name)) = tls {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if !server_name.is_empty() {
            config = config.domain_name(server_name);
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| failed(format!("bad TLS settings: {e}")))?;
    }
    let endpoint = endpoint
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
