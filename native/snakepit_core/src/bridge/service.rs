//! `BridgeService` over the session store and a [`ToolHost`].
//!
//! Each RPC is one store call: the store validates, renews the session's time
//! to live and notifies watchers, so this layer only converts between wire and
//! store types. Store calls hold the store's lock briefly and never wait, so
//! they run inline on the async handler.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::pools::{self, ChunkStream, PoolHost};
use super::status::{from_store, invalid_argument, session_ended, watch_overflow};
use super::ToolHost;
use crate::deadline::request_deadline;
use crate::proto::bridge_service_server::BridgeService;
use crate::proto::{
    CreateSessionRequest, DeleteSessionResponse, DeleteVariableRequest, DeleteVariableResponse,
    DescribeNodeRequest, DuplexExecuteRequest, ExecuteRequest, ExecuteResponse, ExecuteToolRequest,
    ExecuteToolResponse, GetVariableRequest, GetVariablesRequest, GetVariablesResponse,
    GetVersionRequest, ListElixirToolsRequest, ListElixirToolsResponse, ListSessionsRequest,
    ListSessionsResponse, ListVariablesRequest, ListVariablesResponse, NodeDescription,
    RegisterVariableRequest, SessionInfo, SessionRequest, SetVariableRequest, SetVariablesRequest,
    SetVariablesResponse, Variable, VariableUpdate, VersionInfo, WatchVariablesRequest,
};
use crate::session::{Store, Watch, WatchEnd};

/// Updates a watch stream holds between its task and HTTP/2. Small on
/// purpose: the store-side buffer (`max_buffered`) is what absorbs bursts and
/// decides overflow; this one only decouples the task from the transport.
const STREAM_CHANNEL: usize = 64;

pub(crate) struct Bridge {
    store: Arc<Store>,
    tools: Arc<dyn ToolHost>,
    pools: Arc<dyn PoolHost>,
    heartbeat: Duration,
    version: VersionInfo,
    /// Cancelled when the server stops: open watch streams end.
    stop: CancellationToken,
}

impl Bridge {
    pub(crate) fn new(
        store: Arc<Store>,
        tools: Arc<dyn ToolHost>,
        pools: Arc<dyn PoolHost>,
        heartbeat: Duration,
        version: VersionInfo,
        stop: CancellationToken,
    ) -> Self {
        Self {
            store,
            tools,
            pools,
            heartbeat,
            version,
            stop,
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl BridgeService for Bridge {
    async fn get_version(&self, _request: Request<GetVersionRequest>) -> Reply<VersionInfo> {
        Ok(Response::new(self.version.clone()))
    }

    async fn create_session(&self, request: Request<CreateSessionRequest>) -> Reply<SessionInfo> {
        let request = request.into_inner();
        let ttl =
            (request.ttl_seconds > 0).then(|| Duration::from_secs(u64::from(request.ttl_seconds)));
        let info = self
            .store
            .create_session(&request.session_id, ttl, request.metadata)
            .map_err(from_store)?;
        Ok(Response::new(convert::session_info(&info)))
    }

    async fn get_session(&self, request: Request<SessionRequest>) -> Reply<SessionInfo> {
        self.touch_session(request).await
    }

    async fn touch_session(&self, request: Request<SessionRequest>) -> Reply<SessionInfo> {
        let info = self
            .store
            .touch_session(&request.into_inner().session_id)
            .map_err(from_store)?;
        Ok(Response::new(convert::session_info(&info)))
    }

    async fn delete_session(
        &self,
        request: Request<SessionRequest>,
    ) -> Reply<DeleteSessionResponse> {
        let existed = self.store.delete_session(&request.into_inner().session_id);
        Ok(Response::new(DeleteSessionResponse { existed }))
    }

    async fn list_sessions(
        &self,
        _request: Request<ListSessionsRequest>,
    ) -> Reply<ListSessionsResponse> {
        let sessions = self
            .store
            .list_sessions()
            .iter()
            .map(convert::session_info)
            .collect();
        Ok(Response::new(ListSessionsResponse { sessions }))
    }

    async fn register_variable(
        &self,
        request: Request<RegisterVariableRequest>,
    ) -> Reply<Variable> {
        let request = request.into_inner();
        let session = request.session_id.clone();
        let source = convert::source(&request.source)?;
        let spec = convert::variable_spec(request)?;
        let var = self
            .store
            .register_variable(&session, spec, source)
            .map_err(from_store)?;
        Ok(Response::new(convert::variable(&var)))
    }

    async fn get_variable(&self, request: Request<GetVariableRequest>) -> Reply<Variable> {
        let request = request.into_inner();
        let var = self
            .store
            .get_variable(&request.session_id, &request.identifier)
            .map_err(from_store)?;
        Ok(Response::new(convert::variable(&var)))
    }

    async fn get_variables(
        &self,
        request: Request<GetVariablesRequest>,
    ) -> Reply<GetVariablesResponse> {
        let request = request.into_inner();
        let (found, missing) = self
            .store
            .get_variables(&request.session_id, &request.identifiers)
            .map_err(from_store)?;
        Ok(Response::new(GetVariablesResponse {
            variables: convert::variables(&found),
            missing,
        }))
    }

    async fn set_variable(&self, request: Request<SetVariableRequest>) -> Reply<Variable> {
        let request = request.into_inner();
        let source = convert::source(&request.source)?;
        let write = request
            .write
            .ok_or_else(|| invalid_argument("write is required".into()))?;
        let write = convert::write("write", write)?;
        let var = self
            .store
            .set_variable(&request.session_id, write, source)
            .map_err(from_store)?;
        Ok(Response::new(convert::variable(&var)))
    }

    async fn set_variables(
        &self,
        request: Request<SetVariablesRequest>,
    ) -> Reply<SetVariablesResponse> {
        let request = request.into_inner();
        let source = convert::source(&request.source)?;
        let writes = request
            .writes
            .into_iter()
            .enumerate()
            .map(|(i, write)| convert::write(&format!("writes[{i}]"), write))
            .collect::<Result<Vec<_>, _>>()?;
        let vars = self
            .store
            .set_variables(&request.session_id, writes, source)
            .map_err(from_store)?;
        Ok(Response::new(SetVariablesResponse {
            variables: convert::variables(&vars),
        }))
    }

    async fn list_variables(
        &self,
        request: Request<ListVariablesRequest>,
    ) -> Reply<ListVariablesResponse> {
        let request = request.into_inner();
        let vars = self
            .store
            .list_variables(&request.session_id, &request.pattern)
            .map_err(from_store)?;
        Ok(Response::new(ListVariablesResponse {
            variables: convert::variables(&vars),
        }))
    }

    async fn delete_variable(
        &self,
        request: Request<DeleteVariableRequest>,
    ) -> Reply<DeleteVariableResponse> {
        let request = request.into_inner();
        let source = convert::source(&request.source)?;
        self.store
            .delete_variable(&request.session_id, &request.identifier, source)
            .map_err(from_store)?;
        Ok(Response::new(DeleteVariableResponse {}))
    }

    type WatchVariablesStream = ReceiverStream<Result<VariableUpdate, Status>>;

    async fn watch_variables(
        &self,
        request: Request<WatchVariablesRequest>,
    ) -> Reply<Self::WatchVariablesStream> {
        let request = request.into_inner();
        if request.variable_identifiers.is_empty() {
            return Err(invalid_argument(
                "variable_identifiers must name at least one variable".into(),
            ));
        }
        if request.variable_identifiers.iter().any(String::is_empty) {
            return Err(invalid_argument(
                "variable_identifiers must not contain an empty identifier".into(),
            ));
        }
        let buffer = match request.max_buffered {
            0 => self.store.config().default_watch_buffer,
            n => n as usize,
        };
        let heartbeat = match request.heartbeat_interval_ms {
            0 => self.heartbeat,
            ms => Duration::from_millis(u64::from(ms)),
        }
        // A zero interval from the configuration would be a busy loop.
        .max(Duration::from_millis(1));
        let watch = self
            .store
            .watch(
                &request.session_id,
                &request.variable_identifiers,
                request.include_initial_values,
                buffer,
            )
            .map_err(from_store)?;
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL);
        let end = WatchContext {
            session: request.session_id,
            buffer,
        };
        tokio::spawn(forward(watch, tx, heartbeat, end, self.stop.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_elixir_tools(
        &self,
        _request: Request<ListElixirToolsRequest>,
    ) -> Reply<ListElixirToolsResponse> {
        Ok(Response::new(ListElixirToolsResponse {
            tools: self.tools.list(),
        }))
    }

    async fn execute_elixir_tool(
        &self,
        request: Request<ExecuteToolRequest>,
    ) -> Reply<ExecuteToolResponse> {
        let received = Instant::now();
        let deadline = request_deadline(request.metadata(), received);
        let request = request.into_inner();
        if !request.session_id.is_empty() {
            // A tool call in a session is a use of it: renew its time to
            // live. The tool decides what an unknown session means to it.
            let _ = self.store.touch_session(&request.session_id);
        }
        let timeout = deadline.map(|at| at.saturating_duration_since(received));
        let call = self.tools.call(request, timeout);
        let response = match deadline {
            None => call.await?,
            Some(at) => tokio::time::timeout_at(at.into(), call)
                .await
                .map_err(|_| Status::deadline_exceeded("the Elixir tool ran out of time"))??,
        };
        Ok(Response::new(response))
    }

    async fn execute(&self, request: Request<ExecuteRequest>) -> Reply<ExecuteResponse> {
        let (lent, prepared, received) = self.lend(request, pools::DEFAULT_UNARY_TIMEOUT).await?;
        Ok(Response::new(
            pools::execute(lent, prepared, received).await?,
        ))
    }

    type ExecuteStreamStream = ChunkStream;

    async fn execute_stream(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Reply<Self::ExecuteStreamStream> {
        let (lent, prepared, _) = self.lend(request, pools::DEFAULT_STREAM_TIMEOUT).await?;
        Ok(Response::new(pools::open_stream(lent, prepared).await?))
    }

    type ExecuteDuplexStream = ChunkStream;

    async fn execute_duplex(
        &self,
        request: Request<Streaming<DuplexExecuteRequest>>,
    ) -> Reply<Self::ExecuteDuplexStream> {
        let received = Instant::now();
        let deadline = request_deadline(request.metadata(), received);
        let mut inbound = request.into_inner();
        // The start must come within the call's time (or the default).
        let wait = deadline
            .map(|at| at.saturating_duration_since(received))
            .unwrap_or(pools::DEFAULT_STREAM_TIMEOUT);
        let start = tokio::time::timeout(wait, pools::duplex_start(&mut inbound))
            .await
            .map_err(|_| Status::deadline_exceeded("no start message within the call's time"))??;
        let prepared = pools::prepare(start, deadline, received, pools::DEFAULT_STREAM_TIMEOUT)?;
        let lent = self.pools.checkout(prepared.checkout.clone()).await?;
        Ok(Response::new(
            pools::open_duplex(lent, prepared, inbound).await?,
        ))
    }

    async fn describe(&self, request: Request<DescribeNodeRequest>) -> Reply<NodeDescription> {
        let client_version = request.into_inner().client_protocol_version;
        Ok(Response::new(self.describe_node(&client_version).await?))
    }
}

impl Bridge {
    async fn describe_node(&self, client_version: &str) -> Result<NodeDescription, Status> {
        let (compatible, compatibility_message) = pools::compatibility(client_version);
        // Every pool at once: a busy pool's wait does not add to the others'.
        let mut asked = tokio::task::JoinSet::new();
        for (index, pool) in self.pools.pools().await?.into_iter().enumerate() {
            let host = self.pools.clone();
            asked.spawn(async move { (index, pools::describe_pool(host.as_ref(), pool).await) });
        }
        let mut described: Vec<_> = asked.join_all().await;
        described.sort_by_key(|(index, _)| *index);
        let described = described.into_iter().map(|(_, pool)| pool).collect();
        Ok(NodeDescription {
            version: Some(self.version.clone()),
            compatible,
            compatibility_message,
            pools: described,
        })
    }

    /// Checks an outside call's request, then has a worker lent for it.
    async fn lend(
        &self,
        request: Request<ExecuteRequest>,
        default: Duration,
    ) -> Result<(pools::Lent, pools::Prepared, Instant), Status> {
        let received = Instant::now();
        let deadline = request_deadline(request.metadata(), received);
        let prepared = pools::prepare(request.into_inner(), deadline, received, default)?;
        let lent = self.pools.checkout(prepared.checkout.clone()).await?;
        Ok((lent, prepared, received))
    }
}

/// What the end of a watch stream needs to say.
struct WatchContext {
    session: String,
    buffer: usize,
}

/// Moves a watch's updates into its gRPC stream, with heartbeats when quiet,
/// until the watch ends (then its reason is the stream's final status), the
/// client goes away (then the watch is dropped, which removes it from the
/// store), or the server stops.
async fn forward(
    mut watch: Watch,
    tx: mpsc::Sender<Result<VariableUpdate, Status>>,
    heartbeat: Duration,
    context: WatchContext,
    stop: CancellationToken,
) {
    let quiet = tokio::time::sleep(heartbeat);
    tokio::pin!(quiet);
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            _ = stop.cancelled() => Err(Status::unavailable("the bridge is shutting down")),
            update = watch.recv() => match update {
                Some(update) => Ok(convert::update(&update)),
                None => Err(match watch.end() {
                    Some(WatchEnd::Overflow) => watch_overflow(context.buffer),
                    Some(WatchEnd::SessionEnded(reason)) => session_ended(&context.session, reason),
                    None => Status::internal("the watch ended without a reason"),
                }),
            },
            _ = &mut quiet => Ok(convert::heartbeat(SystemTime::now())),
        };
        let last = next.is_err();
        let sent = tokio::select! {
            // Sending first: when there is room, the update (or the final
            // status) goes out even though the server is stopping.
            biased;
            sent = tx.send(next) => sent.is_ok(),
            // A client that stopped reading must not keep a stopping server up.
            _ = stop.cancelled() => false,
        };
        if !sent || last {
            return;
        }
        quiet
            .as_mut()
            .reset(tokio::time::Instant::now() + heartbeat);
    }
}
