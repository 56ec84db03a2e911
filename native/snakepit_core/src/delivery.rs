//! Delivering a stream's chunks to its caller, within the caller's credit.
//!
//! Chunks become envelopes and reach the caller in order, through a
//! [`Caller`] (the NIF's sends `{tag, {:chunk, map, bytes}}` or `{tag,
//! {:chunks, [map, ...], bytes}}` to an Elixir process). Chunks that are already there when
//! one is sent travel with it as one batch, so a fast stream costs one
//! message per batch, not per chunk. Each chunk of a batch takes the credit
//! of one chunk and of its payload's bytes from the stream's [`Window`];
//! while the window is full delivery stops reading, HTTP/2 flow control
//! fills up, and the worker's tool waits.

use std::future::Future;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::envelope::{BinaryMode, Envelope, StreamEnvelopes};
use crate::failure::{rpc_failure, Category, Failure, Worker};
use crate::proto::ToolChunk;
use crate::window::Window;

/// Most chunks sent to the caller in one message.
pub const MAX_BATCH: usize = 64;

/// The caller of a stream, as delivery sees it.
pub trait Caller: Send {
    /// Sends the envelopes of `batch` (one or more, in order) as one
    /// message. Returns false when the caller is gone or closed the stream.
    fn send(&mut self, batch: &[Envelope]) -> bool;
}

/// How a stream's chunks are delivered.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// The longest wait for a chunk; `None` for no limit.
    pub idle_timeout: Option<Duration>,
    /// How raw payloads reach the caller.
    pub binary_mode: BinaryMode,
}

/// Waits until `timeout` has passed; forever when there is none.
pub async fn expire(timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => tokio::time::sleep(timeout).await,
        None => std::future::pending().await,
    }
}

/// The outcome of `work` within `timeout`, or `None` once `cancelled`
/// (`work` is then dropped where it stood).
pub async fn bounded<T>(
    work: impl Future<Output = Result<T, Failure>>,
    timeout: Option<Duration>,
    cancelled: &CancellationToken,
) -> Option<Result<T, Failure>> {
    tokio::select! {
        _ = cancelled.cancelled() => None,
        _ = expire(timeout) => Some(Err(Failure::timed_out(timeout))),
        outcome = work => Some(outcome),
    }
}

/// Opens a stream with `open`, then delivers its chunks to `caller`.
/// Returns when the stream ended cleanly (`Ok`) or failed.
pub async fn stream<O, S, W, C>(
    open: O,
    worker: &W,
    delivery: Delivery,
    credit: &Window,
    caller: &mut C,
) -> Result<(), Failure>
where
    O: Future<Output = Result<S, Status>>,
    S: Stream<Item = Result<ToolChunk, Status>> + Unpin,
    W: Worker + ?Sized,
    C: Caller,
{
    match open.await {
        Ok(chunks) => deliver(chunks, worker, delivery, credit, caller).await,
        Err(status) => Err(rpc_failure(worker, status).await),
    }
}

/// Delivers the chunks of `chunks` to `caller`, in order, in batches of
/// what is there at once, within the credit of `credit`.
pub async fn deliver<S, W, C>(
    mut chunks: S,
    worker: &W,
    delivery: Delivery,
    credit: &Window,
    caller: &mut C,
) -> Result<(), Failure>
where
    S: Stream<Item = Result<ToolChunk, Status>> + Unpin,
    W: Worker + ?Sized,
    C: Caller,
{
    let idle = delivery.idle_timeout;
    let mut envelopes = StreamEnvelopes::new(worker.worker_id(), delivery.binary_mode);
    let mut batch = Vec::new();
    // A chunk read while building a batch, whose credit was not there yet.
    let mut carried = None;
    loop {
        let next = match carried.take() {
            Some(next) => next,
            None => tokio::select! {
                next = chunks.next() => next,
                _ = expire(idle) => return Err(Failure::idle_timeout(idle)),
            },
        };
        // The caller's credit for this chunk; more chunks join its message
        // only while credit and chunks are both there without waiting.
        if let Some(size) = delivered_size(&next) {
            take_credit(credit, size).await?;
        }
        let mut next = Some(next);
        loop {
            match next.take() {
                None => break,
                Some(Some(Ok(chunk))) => {
                    if let Some(error) = chunk.error {
                        send_batch(caller, &mut batch)?;
                        return Err(error.into());
                    }
                    match envelopes.envelope(chunk) {
                        Ok(envelope) => batch.push(envelope),
                        Err(error) => {
                            // The chunks before it still reach the caller.
                            send_batch(caller, &mut batch)?;
                            return Err(error.into());
                        }
                    }
                }
                Some(None) => {
                    send_batch(caller, &mut batch)?;
                    return finish(&mut envelopes, credit, caller).await;
                }
                Some(Some(Err(status))) => {
                    send_batch(caller, &mut batch)?;
                    return Err(rpc_failure(worker, status).await);
                }
            }
            if batch.len() == MAX_BATCH {
                break;
            }
            let Some(ready) = ready_now(chunks.next()).await else {
                break;
            };
            match delivered_size(&ready) {
                Some(size) if !credit.try_take(size) => {
                    carried = Some(ready);
                    break;
                }
                _ => next = Some(ready),
            }
        }
        send_batch(caller, &mut batch)?;
    }
}

/// Ends a stream that ended cleanly: the synthetic final chunk, if needed.
async fn finish<C: Caller>(
    envelopes: &mut StreamEnvelopes,
    credit: &Window,
    caller: &mut C,
) -> Result<(), Failure> {
    if let Some(envelope) = envelopes.finish() {
        take_credit(credit, 0).await?;
        send_batch(caller, &mut vec![envelope])?;
    }
    Ok(())
}

/// The payload size of what `next` delivers to the caller as a chunk, or
/// `None` when it delivers none (the end, an error).
fn delivered_size(next: &Option<Result<ToolChunk, Status>>) -> Option<usize> {
    match next {
        Some(Ok(chunk)) if chunk.error.is_none() => {
            Some(chunk.payload.as_ref().map_or(0, |p| p.data.len()))
        }
        _ => None,
    }
}

/// `Some(output)` if `future` is ready at its first poll, else `None` (the
/// future is dropped: use it only with cancel-safe futures).
async fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

async fn take_credit(credit: &Window, size: usize) -> Result<(), Failure> {
    credit
        .take(size)
        .await
        .map_err(|_| Failure::new(Category::Transport, "stream window closed"))
}

/// Sends the envelopes of `batch` (emptied) to the caller, if there are any.
fn send_batch<C: Caller>(caller: &mut C, batch: &mut Vec<Envelope>) -> Result<(), Failure> {
    if batch.is_empty() {
        return Ok(());
    }
    let delivered = caller.send(batch);
    batch.clear();
    if delivered {
        Ok(())
    } else {
        Err(Failure::new(
            Category::Transport,
            "the caller is gone or cancelled",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use serde_json::Value;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::failure::Reason;
    use crate::process::ExitInfo;
    use crate::proto::{Payload, PayloadKind, ToolError};

    struct LiveWorker;

    impl Worker for LiveWorker {
        fn worker_id(&self) -> &str {
            "w1"
        }

        fn exit_within(&self, _grace: Duration) -> impl Future<Output = Option<ExitInfo>> + Send {
            std::future::ready(None)
        }
    }

    /// A caller that reports each batch, as the `"n"` of its chunks (`-1`
    /// for the synthetic final one), and refuses batches once `open` is
    /// false.
    struct Recorder {
        batches: mpsc::UnboundedSender<Vec<i64>>,
        open: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Caller for Recorder {
        fn send(&mut self, batch: &[Envelope]) -> bool {
            if !self.open.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            let numbers = batch
                .iter()
                .map(|e| e.fields.get("n").and_then(Value::as_i64).unwrap_or(-1))
                .collect();
            let _ = self.batches.send(numbers);
            true
        }
    }

    /// A chunk `{"n": n}` with `padding` bytes more of payload.
    fn chunk(n: i64, padding: usize) -> Result<ToolChunk, Status> {
        let text = format!("{{\"n\": {n}{}}}", " ".repeat(padding));
        Ok(ToolChunk {
            payload: Some(Payload {
                kind: PayloadKind::Json as i32,
                data: Bytes::from(text),
            }),
            is_final: false,
            metadata: HashMap::new(),
            error: None,
        })
    }

    /// A running delivery: the test feeds `chunks`, reads `batches`, and
    /// gives credit back through `window`.
    struct Harness {
        chunks: Option<mpsc::Sender<Result<ToolChunk, Status>>>,
        batches: mpsc::UnboundedReceiver<Vec<i64>>,
        window: Arc<Window>,
        open: Arc<std::sync::atomic::AtomicBool>,
        cancel: CancellationToken,
        outcome: tokio::task::JoinHandle<Option<Result<(), Failure>>>,
    }

    impl Harness {
        /// Starts delivering with a window of `chunks` chunks and `bytes`
        /// bytes, once `queued` chunks are there.
        async fn start(
            window: (usize, usize),
            queued: Vec<Result<ToolChunk, Status>>,
            idle_timeout: Option<Duration>,
        ) -> Self {
            let (chunks_tx, chunks_rx) = mpsc::channel(1024);
            for chunk in queued {
                chunks_tx.send(chunk).await.unwrap();
            }
            let (batches_tx, batches) = mpsc::unbounded_channel();
            let window = Arc::new(Window::new(window.0, window.1));
            let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let cancel = CancellationToken::new();
            let mut caller = Recorder {
                batches: batches_tx,
                open: open.clone(),
            };
            let credit = window.clone();
            let cancelled = cancel.clone();
            let delivery = Delivery {
                idle_timeout,
                binary_mode: BinaryMode::Raw,
            };
            let outcome = tokio::spawn(async move {
                let chunks = ReceiverStream::new(chunks_rx);
                let work = deliver(chunks, &LiveWorker, delivery, &credit, &mut caller);
                bounded(work, None, &cancelled).await
            });
            Self {
                chunks: Some(chunks_tx),
                batches,
                window,
                open,
                cancel,
                outcome,
            }
        }

        async fn send(&self, chunk: Result<ToolChunk, Status>) {
            self.chunks.as_ref().unwrap().send(chunk).await.unwrap();
        }

        /// Ends the stream cleanly.
        fn end(&mut self) {
            self.chunks = None;
        }

        async fn batch(&mut self) -> Vec<i64> {
            self.batches.recv().await.expect("a batch")
        }

        /// Asserts that no batch comes, however long one waits (the clock is
        /// paused: the sleep ends once every task waits).
        async fn nothing_comes(&mut self) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            assert_eq!(self.batches.try_recv().ok(), None);
        }

        async fn outcome(self) -> Option<Result<(), Failure>> {
            self.outcome.await.unwrap()
        }
    }

    const WIDE: (usize, usize) = (32, 1 << 20);

    #[tokio::test(start_paused = true)]
    async fn chunks_there_at_once_travel_as_one_batch_in_order() {
        let queued = (1..=5).map(|n| chunk(n, 0)).collect();
        let mut harness = Harness::start(WIDE, queued, None).await;
        assert_eq!(harness.batch().await, vec![1, 2, 3, 4, 5]);
        harness.send(chunk(6, 0)).await;
        assert_eq!(harness.batch().await, vec![6]);
        harness.end();
        // The synthetic final chunk.
        assert_eq!(harness.batch().await, vec![-1]);
        assert_eq!(harness.outcome().await, Some(Ok(())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_holds_at_most_max_batch_chunks() {
        let queued = (0..100).map(|n| chunk(n, 0)).collect();
        let mut harness = Harness::start((200, 1 << 20), queued, None).await;
        let first = harness.batch().await;
        let second = harness.batch().await;
        assert_eq!(first, (0..64).collect::<Vec<_>>());
        assert_eq!(second, (64..100).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_stops_delivery_until_an_ack() {
        let queued = (1..=5).map(|n| chunk(n, 0)).collect();
        let mut harness = Harness::start((2, 1 << 20), queued, None).await;
        assert_eq!(harness.batch().await, vec![1, 2]);
        harness.nothing_comes().await;
        harness.window.ack(1);
        assert_eq!(harness.batch().await, vec![3]);
        harness.nothing_comes().await;
        harness.window.ack(2);
        assert_eq!(harness.batch().await, vec![4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_chunk_read_without_credit_is_carried_to_the_next_batch() {
        // Chunk 3 is read while batching 1 and 2, finds no credit, and must
        // be the first of the next batch: not lost, not out of order.
        let queued = (1..=3).map(|n| chunk(n, 0)).collect();
        let mut harness = Harness::start((2, 1 << 20), queued, None).await;
        assert_eq!(harness.batch().await, vec![1, 2]);
        harness.send(chunk(4, 0)).await;
        harness.nothing_comes().await;
        harness.window.ack(2);
        assert_eq!(harness.batch().await, vec![3, 4]);
        harness.end();
        harness.window.ack(2);
        assert_eq!(harness.batch().await, vec![-1]);
        assert_eq!(harness.outcome().await, Some(Ok(())));
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_window_bounds_a_batch_of_few_large_chunks() {
        // 60-byte chunks into a 100-byte window: one at a time.
        let queued = (1..=3).map(|n| chunk(n, 50)).collect();
        let mut harness = Harness::start((32, 100), queued, None).await;
        assert_eq!(harness.batch().await, vec![1]);
        harness.nothing_comes().await;
        harness.window.ack(1);
        assert_eq!(harness.batch().await, vec![2]);
        harness.window.ack(1);
        assert_eq!(harness.batch().await, vec![3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_larger_than_the_byte_window_goes_alone() {
        let queued = vec![chunk(1, 1000), chunk(2, 0), chunk(3, 0)];
        let mut harness = Harness::start((32, 100), queued, None).await;
        assert_eq!(harness.batch().await, vec![1]);
        harness.nothing_comes().await;
        harness.window.ack(1);
        assert_eq!(harness.batch().await, vec![2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_closed_ends_delivery_at_the_next_batch() {
        let queued = (1..=2).map(|n| chunk(n, 0)).collect();
        let mut harness = Harness::start(WIDE, queued, None).await;
        assert_eq!(harness.batch().await, vec![1, 2]);
        harness
            .open
            .store(false, std::sync::atomic::Ordering::SeqCst);
        harness.send(chunk(3, 0)).await;
        let outcome = harness.outcome().await.unwrap().unwrap_err();
        assert_eq!(outcome.category, Category::Transport);
        assert_eq!(outcome.message, "the caller is gone or cancelled");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_while_waiting_for_credit_stops_at_once() {
        let queued = (1..=4).map(|n| chunk(n, 0)).collect();
        let mut harness = Harness::start((2, 1 << 20), queued, None).await;
        assert_eq!(harness.batch().await, vec![1, 2]);
        harness.nothing_comes().await;
        harness.cancel.cancel();
        let chunks = harness.chunks.take().unwrap();
        let Harness {
            mut batches,
            outcome,
            ..
        } = harness;
        assert_eq!(outcome.await.unwrap(), None);
        // Delivery was dropped: nothing more reaches the caller, and the
        // stream is no longer read.
        assert_eq!(batches.recv().await, None);
        assert!(chunks.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_chunks_before_an_error_reach_the_caller_first() {
        let error = ToolChunk {
            error: Some(ToolError {
                category: "python".into(),
                error_type: "ValueError".into(),
                message: "bad".into(),
                traceback: String::new(),
            }),
            ..Default::default()
        };
        let queued = vec![chunk(1, 0), chunk(2, 0), Ok(error)];
        let mut harness = Harness::start(WIDE, queued, None).await;
        assert_eq!(harness.batch().await, vec![1, 2]);
        let failure = harness.outcome().await.unwrap().unwrap_err();
        assert_eq!(failure.category, Category::Python);
        assert_eq!(failure.message, "ValueError: bad");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_rpc_mid_stream_is_classified_after_the_chunks_before_it() {
        let queued = vec![chunk(1, 0), Err(Status::unavailable("reset"))];
        let mut harness = Harness::start(WIDE, queued, None).await;
        assert_eq!(harness.batch().await, vec![1]);
        let failure = harness.outcome().await.unwrap().unwrap_err();
        assert_eq!(failure.category, Category::Transport);
        assert_eq!(failure.grpc_status, Some(tonic::Code::Unavailable));
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_chunk_from_the_tool_needs_no_synthetic_one() {
        let mut last = chunk(2, 0).unwrap();
        last.is_final = true;
        let mut harness = Harness::start(WIDE, vec![chunk(1, 0), Ok(last)], None).await;
        harness.end();
        assert_eq!(harness.batch().await, vec![1, 2]);
        assert_eq!(harness.outcome().await, Some(Ok(())));
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_counts_from_the_last_chunk() {
        let idle = Some(Duration::from_millis(500));
        let mut harness = Harness::start(WIDE, vec![chunk(1, 0)], idle).await;
        assert_eq!(harness.batch().await, vec![1]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        harness.send(chunk(2, 0)).await;
        assert_eq!(harness.batch().await, vec![2]);
        let failure = harness.outcome().await.unwrap().unwrap_err();
        assert_eq!(failure.category, Category::Timeout);
        assert_eq!(failure.reason, Some(Reason::IdleTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_reports_the_timeout_of_work_that_takes_too_long() {
        let never = std::future::pending::<Result<(), Failure>>();
        let timeout = Some(Duration::from_secs(2));
        let outcome = bounded(never, timeout, &CancellationToken::new()).await;
        let failure = outcome.unwrap().unwrap_err();
        assert_eq!(failure.reason, Some(Reason::Timeout));
        assert_eq!(failure.message, "the call did not finish within 2000 ms");
    }

    #[tokio::test]
    async fn a_stream_that_does_not_open_is_classified() {
        let open = async { Err::<ReceiverStream<_>, _>(Status::unimplemented("no")) };
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut caller = Recorder {
            batches: tx,
            open: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let delivery = Delivery {
            idle_timeout: None,
            binary_mode: BinaryMode::Base64,
        };
        let window = Window::new(1, 1);
        let failure = stream(open, &LiveWorker, delivery, &window, &mut caller)
            .await
            .unwrap_err();
        assert_eq!(failure.grpc_status, Some(tonic::Code::Unimplemented));
    }
}
