//! The async core shared by the extension's clients (`BridgeClient`,
//! `NodeClient`): their methods are coroutines (pyo3's `async fn`) whose
//! work runs on the process's client runtime; the awaiting asyncio task is
//! woken when it is done, with no thread blocked per call or per stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::bridge_client::Failure;

/// Wakes of awaiting coroutines in progress on the runtime's threads.
///
/// Waking a coroutine takes the GIL on a runtime thread (pyo3's waker calls
/// the event loop's `call_soon_threadsafe`), and that call may still be
/// finishing (re-taking the GIL after writing to the loop's pipe) when the
/// woken program has already ended and the interpreter finalizes: CPython
/// then ends the thread with `pthread_exit`, whose unwinding through Rust
/// frames aborts the process. `quiesce()`, run at exit by
/// `snakepit_bridge.client`, waits for the wakes in progress.
static WAKES_IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

/// A coroutine's waker, counted while it wakes.
struct CountedWaker(Waker);

impl Wake for CountedWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        WAKES_IN_PROGRESS.fetch_add(1, Ordering::SeqCst);
        self.0.wake_by_ref();
        WAKES_IN_PROGRESS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits (without the GIL) until no wake is in progress, at most
/// `timeout_s` seconds; whether none is.
#[pyfunction]
#[pyo3(signature = (timeout_s = 1.0))]
fn quiesce(py: Python<'_>, timeout_s: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_s.clamp(0.0, 60.0));
    py.detach(|| loop {
        if WAKES_IN_PROGRESS.load(Ordering::SeqCst) == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    })
}

/// Work spawned on the client runtime; dropping it (the awaiting task was
/// cancelled) aborts the work.
pub(crate) struct OnRuntime<T>(JoinHandle<Result<T, Failure>>);

impl<T> Future for OnRuntime<T> {
    type Output = PyResult<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let waker = Waker::from(Arc::new(CountedWaker(cx.waker().clone())));
        let mut counted = Context::from_waker(&waker);
        Pin::new(&mut self.0).poll(&mut counted).map(|joined| {
            let result = joined.unwrap_or_else(|e| Err(Failure::new("CANCELLED", e.to_string())));
            result.map_err(|failure| Python::attach(|py| failure.into_pyerr(py)))
        })
    }
}

impl<T> Drop for OnRuntime<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn on_runtime<T, F>(runtime: &Runtime, work: F) -> OnRuntime<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Failure>> + Send + 'static,
{
    OnRuntime(runtime.spawn(work))
}

/// Work polled by the awaiting coroutine itself instead of a task of the
/// runtime: for reads of a stream, which must lose nothing when the awaiting
/// asyncio task is cancelled. (A spawned read that completed just as its
/// awaiter was cancelled would be dropped with its message; a read polled in
/// place takes a message only in the poll that returns it.)
///
/// The read is polled with the GIL held, so its waker must never take the
/// GIL where it is called: the connection's task wakes it while holding the
/// stream's locks, which the polling thread may be waiting for. It hands the
/// wake to a task of the runtime instead ([`DeferredWaker`]).
pub(crate) struct InPlace<F> {
    work: Pin<Box<F>>,
    runtime: Handle,
}

impl<T, F> Future for InPlace<F>
where
    F: Future<Output = Result<T, Failure>>,
{
    type Output = PyResult<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let waker = Waker::from(Arc::new(DeferredWaker {
            waker: cx.waker().clone(),
            runtime: self.runtime.clone(),
        }));
        let mut deferred = Context::from_waker(&waker);
        self.work
            .as_mut()
            .poll(&mut deferred)
            .map(|result| result.map_err(|failure| Python::attach(|py| failure.into_pyerr(py))))
    }
}

pub(crate) fn in_place<T, F>(runtime: &Runtime, work: F) -> InPlace<F>
where
    F: Future<Output = Result<T, Failure>>,
{
    InPlace {
        work: Box::pin(work),
        runtime: runtime.handle().clone(),
    }
}

/// A coroutine's waker that wakes it from a task of the runtime (counted
/// while it wakes, as [`CountedWaker`]), never from the caller's thread.
struct DeferredWaker {
    waker: Waker,
    runtime: Handle,
}

impl Wake for DeferredWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let counted = Arc::new(CountedWaker(self.waker.clone()));
        WAKES_IN_PROGRESS.fetch_add(1, Ordering::SeqCst);
        self.runtime.spawn(async move {
            counted.wake_by_ref();
            WAKES_IN_PROGRESS.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// A gRPC response stream that a Python object's methods share; `None`
/// once it ended or was closed.
pub(crate) type SharedStream<T> = Arc<AsyncMutex<Option<Streaming<T>>>>;

/// The next message of `stream`, read in place (see [`InPlace`]): `None` at
/// its end or once `closed` is cancelled. A stream that ends, fails or is
/// closed is dropped, which cancels its call.
pub(crate) async fn next_message<T: Send + 'static>(
    runtime: &Arc<Runtime>,
    stream: &SharedStream<T>,
    closed: &CancellationToken,
) -> PyResult<Option<T>> {
    let (stream, closed, dropper) = (stream.clone(), closed.clone(), runtime.clone());
    in_place(runtime, async move {
        let mut guard = stream.lock().await;
        let Some(open) = guard.as_mut() else {
            return Ok(None);
        };
        // `message()` is cancel-safe: a message is taken from the stream
        // only in the poll that returns it.
        let next = tokio::select! {
            biased;
            () = closed.cancelled() => Ok(None),
            message = open.message() => message.map_err(Failure::from),
        };
        if !matches!(next, Ok(Some(_))) {
            let _runtime = dropper.enter();
            guard.take();
        }
        next
    })
    .await
}

/// Closes `stream` now, from any thread: a waiting [`next_message`] answers
/// `None`, and the stream is dropped on the runtime once no read holds it.
pub(crate) fn close_stream<T: Send + 'static>(
    runtime: &Runtime,
    stream: &SharedStream<T>,
    closed: &CancellationToken,
) {
    closed.cancel();
    let stream = stream.clone();
    runtime.spawn(async move {
        stream.lock().await.take();
    });
}

/// Registers `quiesce` in the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quiesce, m)?)?;
    Ok(())
}
