//! Worker processes as BEAM resources.
//!
//! `worker_spawn` starts the OS process and returns a resource at once; the
//! owner then receives `{tag, event}` messages, in order:
//! `{:log, :stdout | :stderr, line}` at any time, then `{:ready, port}` (the
//! gRPC client is connected by then) or `{:start_failed, message}`, and after
//! `:ready` eventually `{:exit, {:exit_status, code} | {:signal, number}}`.
//! Dropping the last reference to the resource kills the worker's process group.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustler::{Encoder, Env, LocalPid, NifMap, ResourceArc, Term};
use snakepit_core::client::{connect, WorkerClient};
use snakepit_core::process::{
    launch, EventSink, ExitInfo, LogStream, WorkerEvent, WorkerProcess, WorkerSpec,
};
use tokio::sync::mpsc;

use crate::atoms;
use crate::reply::Reply;
use crate::runtime::{node_token, runtime};

/// How to start a worker, as `Snakepit.Worker` passes it.
#[derive(NifMap)]
pub struct SpawnSpec {
    worker_id: String,
    executable: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    start_timeout_ms: u64,
}

pub struct WorkerResource {
    pub worker_id: String,
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
}

/// Spawns a worker; returns `{:ok, {resource, os_pid}}` or `{:error, message}`.
#[rustler::nif]
fn worker_spawn<'a>(env: Env<'a>, spec: SpawnSpec, owner: LocalPid, tag: Term<'a>) -> Term<'a> {
    let mut variables = spec.env;
    variables.push((
        snakepit_core::auth::TOKEN_ENV_VAR.to_owned(),
        node_token().to_owned(),
    ));
    let core_spec = WorkerSpec {
        worker_id: spec.worker_id.clone(),
        executable: spec.executable,
        args: spec.args,
        env: variables,
        cwd: spec.cwd.map(Into::into),
        start_timeout: Duration::from_millis(spec.start_timeout_ms),
    };
    let (events, receiver) = mpsc::unbounded_channel();
    let sink: EventSink = Arc::new(move |event| {
        let _ = events.send(event);
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
    let reply = Reply::new(owner, tag);
    runtime().spawn(forward_events(receiver, reply, client.clone()));
    let resource = ResourceArc::new(WorkerResource {
        worker_id: spec.worker_id,
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

async fn forward_events(
    mut events: mpsc::UnboundedReceiver<WorkerEvent>,
    mut reply: Reply,
    client: Arc<OnceLock<WorkerClient>>,
) {
    while let Some(event) = events.recv().await {
        let delivered = match event {
            WorkerEvent::Ready { port } => match connect(port, node_token()).await {
                Ok(connected) => {
                    let _ = client.set(connected);
                    reply.send(|env| (atoms::ready(), port).encode(env))
                }
                Err(e) => {
                    let message = e.to_string();
                    reply.send(|env| (atoms::start_failed(), message.as_str()).encode(env))
                }
            },
            WorkerEvent::StartFailed { message } => {
                reply.send(|env| (atoms::start_failed(), message.as_str()).encode(env))
            }
            WorkerEvent::Log { stream, line } => {
                let stream = match stream {
                    LogStream::Stdout => atoms::stdout(),
                    LogStream::Stderr => atoms::stderr(),
                };
                reply.send(|env| (atoms::log(), stream, line.as_str()).encode(env))
            }
            WorkerEvent::Exited { status } => reply.send(|env| {
                let status = match status {
                    ExitInfo::Code(code) => (atoms::exit_status(), code).encode(env),
                    ExitInfo::Signal(signal) => (atoms::signal(), signal).encode(env),
                };
                (atoms::exit(), status).encode(env)
            }),
        };
        if !delivered {
            // The owner is gone; its resource reference dies with it, which
            // stops the worker. Nothing is left to report to.
            return;
        }
    }
}
