//! Worker processes as BEAM resources.
//!
//! `worker_spawn` starts the OS process and returns a resource at once; the
//! owner (the pool) then receives `{tag, event}` messages, in order:
//! `{:ready, port, address}`
//! (`port` is `nil` on a Unix socket; `address` is `"127.0.0.1:<port>"` or
//! `"unix:@<name>"`; the gRPC client is connected by then) or `{:start_failed, message}`, and after
//! `:ready` eventually `{:exit, {:exit_status, code} | {:signal, number}}`.
//! Capacity notices come on the same path (see `lease.rs`): `:capacity` when
//! a full worker frees a slot, `:recycle` when it served its last request,
//! `:drained` when a draining worker has nothing in flight any more;
//! `{:recycle, reason}` when the worker asks to be replaced (a cancelled tool
//! did not stop within the pool's `:cancel_grace`).
//! Dropping the last reference to the resource kills the worker's process group.
//!
//! The worker's output comes apart from those events, on the same tag, as
//! `{:output, worker_id, [{:stdout | :stderr, line} | {:log, record}], dropped, ack}`:
//! up to [`OUTPUT_BATCH_LINES`] lines, a line holding a Python log record
//! (`snakepit_core::log_record`) as `{:log, %{level:, logger:, message:,
//! traceback:, tool:, session_id:, metadata:}}` (`level` an atom, absent
//! fields `nil`, `metadata` a map of strings); `dropped` is `nil` or `{lines, bytes}`
//! dropped since the last report (see `snakepit_core::output` for the rate
//! limits), and `ack` is passed to `output_ack/1` once the lines are logged.
//! The next batch is sent only then (or when the message is garbage, the
//! owner gone), so at most one batch per worker waits in the owner's mailbox
//! however fast the worker prints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustler::{Encoder, Env, LocalPid, NifMap, ResourceArc, Term};
use snakepit_core::auth::TOKEN_ENV_VAR;
use snakepit_core::bridge::ADDRESS_ENV_VAR;
use snakepit_core::client::{connect_with_limit, WorkerClient, MAX_MESSAGE_ENV_VAR};
use snakepit_core::log_record::{self, LogRecord};
use snakepit_core::output::{OutputLimits, WorkerOutput};
use snakepit_core::process::{
    launch, EventSink, ExitInfo, LogStream, WorkerEvent, WorkerProcess, WorkerSpec,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::atoms;
use crate::reply::Reply;
use crate::runtime::{node_token, runtime};

/// How to start a worker, as `Snakepit.Pool` passes it.
#[derive(NifMap)]
pub struct SpawnSpec {
    worker_id: String,
    executable: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The address of the bridge the worker calls back into, if one runs.
    bridge_address: Option<String>,
    cwd: Option<String>,
    start_timeout_ms: u64,
    /// Requests one worker serves at once.
    capacity: u32,
    /// Requests after which the worker is recycled; 0 for never.
    max_requests: u64,
    /// Largest gRPC message either side sends or accepts.
    max_message_bytes: usize,
    /// Output lines per second that reach the owner, on average.
    output_lines_per_second: u64,
    /// Output bytes per second that reach the owner, on average.
    output_bytes_per_second: u64,
}

/// Most lines in one `{:output, ...}` message.
const OUTPUT_BATCH_LINES: usize = 100;
/// Most bytes of lines in one `{:output, ...}` message (beyond one line).
const OUTPUT_BATCH_BYTES: usize = 256 * 1024;

/// What the owner hears about a worker, in order.
pub enum Notice {
    Process(WorkerEvent),
    Capacity,
    Recycle,
    Drained,
}

/// State shared by the worker resource, its leases and its event task.
pub struct WorkerShared {
    pub worker_id: String,
    pub capacity: u32,
    pub max_requests: u64,
    /// Largest gRPC message either side sends or accepts.
    pub max_message_bytes: usize,
    pub in_flight: AtomicU32,
    pub served: AtomicU64,
    pub draining: AtomicBool,
    pub notices: mpsc::UnboundedSender<Notice>,
    /// Becomes `Some` once the process has exited.
    exited: watch::Receiver<Option<ExitInfo>>,
}

impl WorkerShared {
    pub fn notify(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }

    /// How the process ended, waiting at most `grace` for it to end. Used to
    /// tell a worker that died under a call from a network hiccup.
    pub async fn exit_within(&self, grace: Duration) -> Option<ExitInfo> {
        let mut exited = self.exited.clone();
        let ended = tokio::time::timeout(grace, exited.wait_for(Option::is_some)).await;
        match ended {
            Ok(Ok(status)) => *status,
            _ => None,
        }
    }
}

pub struct WorkerResource {
    pub shared: Arc<WorkerShared>,
    process: WorkerProcess,
    client: Arc<OnceLock<WorkerClient>>,
}

#[rustler::resource_impl]
impl rustler::Resource for WorkerResource {}

impl WorkerResource {
    /// The connected client, once the worker is ready.
    pub fn client(&self) -> Option<WorkerClient> {
        self.client.get().cloned()
    }

    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// The worker's output, for its counters of dropped lines.
    pub fn output(&self) -> &WorkerOutput {
        self.process.output()
    }
}

/// Travels with one `{:output, ...}` message; acknowledging it (or its
/// becoming garbage) lets the next batch go.
pub struct OutputAck {
    done: Mutex<Option<oneshot::Sender<()>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for OutputAck {}

/// The owner has logged a batch of output.
#[rustler::nif]
fn output_ack(ack: ResourceArc<OutputAck>) -> rustler::Atom {
    // Dropping the sender wakes the forwarder, as the resource's destructor would.
    drop(ack.done.lock().unwrap_or_else(|e| e.into_inner()).take());
    atoms::ok()
}

/// Spawns a worker; returns `{:ok, {resource, os_pid}}` or `{:error, message}`.
#[rustler::nif]
fn worker_spawn<'a>(env: Env<'a>, spec: SpawnSpec, owner: LocalPid, tag: Term<'a>) -> Term<'a> {
    let mut variables = spec.env;
    variables.push((TOKEN_ENV_VAR.to_owned(), node_token().to_owned()));
    if let Some(address) = spec.bridge_address {
        variables.push((ADDRESS_ENV_VAR.to_owned(), address));
    }
    variables.push((
        MAX_MESSAGE_ENV_VAR.to_owned(),
        spec.max_message_bytes.to_string(),
    ));
    let core_spec = WorkerSpec {
        worker_id: spec.worker_id.clone(),
        executable: spec.executable,
        args: spec.args,
        env: variables,
        cwd: spec.cwd.map(Into::into),
        start_timeout: Duration::from_millis(spec.start_timeout_ms),
        output_limits: OutputLimits {
            lines_per_second: u32::try_from(spec.output_lines_per_second).unwrap_or(u32::MAX),
            bytes_per_second: spec.output_bytes_per_second,
            ..OutputLimits::default()
        },
    };
    let (notices, receiver) = mpsc::unbounded_channel();
    let process_notices = notices.clone();
    let sink: EventSink = Arc::new(move |event| {
        let _ = process_notices.send(Notice::Process(event));
    });
    // Spawning on this (long-lived) scheduler thread matters: the worker's
    // parent-death signal fires when the thread that forked it exits.
    let launched = {
        let _guard = runtime().enter();
        launch(core_spec, sink)
    };
    let process = match launched {
        Ok(process) => process,
        Err(e) => return (atoms::error(), e.to_string()).encode(env),
    };
    let os_pid = process.os_pid();
    let client = Arc::new(OnceLock::new());
    let (exit_tx, exit_rx) = watch::channel(None);
    let shared = Arc::new(WorkerShared {
        worker_id: spec.worker_id,
        capacity: spec.capacity.max(1),
        max_requests: spec.max_requests,
        max_message_bytes: spec.max_message_bytes,
        in_flight: AtomicU32::new(0),
        served: AtomicU64::new(0),
        draining: AtomicBool::new(false),
        notices,
        exited: exit_rx,
    });
    let reply = Reply::new(owner, tag);
    runtime().spawn(forward_output(
        process.output().clone(),
        Reply::new(owner, tag),
        shared.worker_id.clone(),
    ));
    let limit = spec.max_message_bytes;
    runtime().spawn(forward_notices(
        receiver,
        reply,
        client.clone(),
        exit_tx,
        limit,
    ));
    let resource = ResourceArc::new(WorkerResource {
        shared,
        process,
        client,
    });
    (atoms::ok(), (resource, os_pid)).encode(env)
}

/// Asks the worker to stop: SIGTERM, then SIGKILL after `grace_ms`.
#[rustler::nif]
fn worker_stop(worker: ResourceArc<WorkerResource>, grace_ms: u64) -> rustler::Atom {
    worker.process.stop(Duration::from_millis(grace_ms));
    atoms::ok()
}

/// A Python log record as the map the owner receives.
fn record_term<'a>(env: Env<'a>, record: &LogRecord) -> Term<'a> {
    let optional = |value: &Option<String>| match value {
        Some(text) => text.as_str().encode(env),
        None => atoms::nil().encode(env),
    };
    let metadata: HashMap<&str, &str> = record
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let level = rustler::Atom::from_str(env, record.level.as_str()).expect("atom");
    let pairs = [
        (atoms::level(), level.encode(env)),
        (atoms::logger(), record.logger.as_str().encode(env)),
        (atoms::message(), record.message.as_str().encode(env)),
        (atoms::traceback(), optional(&record.traceback)),
        (atoms::tool(), optional(&record.tool)),
        (atoms::session_id(), optional(&record.session_id)),
        (atoms::metadata(), metadata.encode(env)),
    ];
    Term::map_from_pairs(env, &pairs).expect("distinct keys")
}

/// Hands the worker's output to the owner one batch at a time, each after the
/// previous one was acknowledged; ends with the output or the owner.
async fn forward_output(output: Arc<WorkerOutput>, mut reply: Reply, worker_id: String) {
    while let Some(batch) = output
        .next_batch(OUTPUT_BATCH_LINES, OUTPUT_BATCH_BYTES)
        .await
    {
        let (done, acked) = oneshot::channel();
        let ack = ResourceArc::new(OutputAck {
            done: Mutex::new(Some(done)),
        });
        let sent = reply.send(|env| {
            let lines: Vec<Term> = batch
                .lines
                .iter()
                .map(|line| {
                    // Records come on stderr only (stdout is the adapter's prints).
                    if line.stream == LogStream::Stderr {
                        if let Some(record) = log_record::parse(&line.text) {
                            return (atoms::log(), record_term(env, &record)).encode(env);
                        }
                    }
                    let stream = match line.stream {
                        LogStream::Stdout => atoms::stdout(),
                        LogStream::Stderr => atoms::stderr(),
                    };
                    (stream, line.text.as_str()).encode(env)
                })
                .collect();
            let dropped = match batch.dropped {
                Some(d) => (d.lines, d.bytes).encode(env),
                None => atoms::nil().encode(env),
            };
            (atoms::output(), worker_id.as_str(), lines, dropped, &ack).encode(env)
        });
        drop(ack);
        if !sent {
            return;
        }
        // Err: the message was dropped unread; either way the batch is done.
        let _ = acked.await;
    }
}

async fn forward_notices(
    mut notices: mpsc::UnboundedReceiver<Notice>,
    mut reply: Reply,
    client: Arc<OnceLock<WorkerClient>>,
    exited: watch::Sender<Option<ExitInfo>>,
    max_message_bytes: usize,
) {
    while let Some(notice) = notices.recv().await {
        let delivered = match notice {
            Notice::Capacity => reply.send(|env| atoms::capacity().encode(env)),
            Notice::Recycle => reply.send(|env| atoms::recycle().encode(env)),
            Notice::Drained => reply.send(|env| atoms::drained().encode(env)),
            Notice::Process(event) => {
                let link = Link {
                    client: &client,
                    exited: &exited,
                    max_message_bytes,
                };
                forward_event(event, &mut reply, link).await
            }
        };
        if !delivered {
            // The owner is gone; its resource reference dies with it, which
            // stops the worker. Nothing is left to report to.
            return;
        }
    }
}

/// Where a worker's process events land besides the owner's mailbox.
struct Link<'a> {
    client: &'a OnceLock<WorkerClient>,
    exited: &'a watch::Sender<Option<ExitInfo>>,
    max_message_bytes: usize,
}

async fn forward_event(event: WorkerEvent, reply: &mut Reply, link: Link<'_>) -> bool {
    match event {
        WorkerEvent::Ready { address } => {
            match connect_with_limit(&address, node_token(), link.max_message_bytes).await {
                Ok(connected) => {
                    let _ = link.client.set(connected);
                    let shown = address.to_string();
                    reply.send(|env| (atoms::ready(), address.port(), shown.as_str()).encode(env))
                }
                Err(e) => {
                    let message = e.to_string();
                    reply.send(|env| (atoms::start_failed(), message.as_str()).encode(env))
                }
            }
        }
        WorkerEvent::StartFailed { message } => {
            reply.send(|env| (atoms::start_failed(), message.as_str()).encode(env))
        }
        WorkerEvent::Recycle { reason } => {
            reply.send(|env| (atoms::recycle(), reason.as_str()).encode(env))
        }
        WorkerEvent::Exited { status } => {
            let _ = link.exited.send(Some(status));
            reply.send(|env| (atoms::exit(), exit_term(env, status)).encode(env))
        }
    }
}

/// `{:exit_status, code}` or `{:signal, number}`.
pub fn exit_term(env: Env<'_>, status: ExitInfo) -> Term<'_> {
    match status {
        ExitInfo::Code(code) => (atoms::exit_status(), code).encode(env),
        ExitInfo::Signal(signal) => (atoms::signal(), signal).encode(env),
    }
}
