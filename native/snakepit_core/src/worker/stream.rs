//! The chunks of a streaming or duplex call, from the tool to the HTTP/2
//! stream.
//!
//! A streaming tool runs on a blocking thread of its own for its whole life;
//! [`produce`] moves its chunks into a bounded buffer ([`STREAM_BUFFER`]).
//! When the buffer is full the tool's thread waits, without holding the
//! interpreter ([`ChunkSource::wait_outside`]): that is the backpressure.
//! [`CallStream`] is the response stream that reads the buffer: it ends the
//! call with `DEADLINE_EXCEEDED` when the deadline passes (after the chunks
//! already sent), with the request stream's status when a duplex call's
//! inputs fail, and its guard cancels the tool when tonic drops it (the
//! client went away).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use super::control::{CallControl, CallHandle, CancelOnDrop, CancelReason};
use super::inputs::ReaderNews;
use super::unary::deadline_exceeded;
use crate::proto::{ToolChunk, ToolError};

/// Chunks buffered between a tool and the HTTP/2 stream.
pub const STREAM_BUFFER: usize = 16;

/// How long after a chunk the response stream keeps polling for the next one
/// before it lets its thread park. A fast generator's next chunk is there
/// within it, and the thread running the generator then does not have to
/// wake this one: that wake-up was most of the cost of a chunk (100 000 small
/// chunks went from about 165 000 to about 200 000 chunks/s, see `bench/`).
pub const SPIN_AFTER_CHUNK: Duration = Duration::from_micros(50);

/// What the response stream sends: a chunk, or the status that ends the call.
pub type StreamItem = Result<ToolChunk, Status>;

/// Whether polling instead of parking can pay: not on a single CPU, where it
/// would only take time from the producer it waits for.
fn spinning_pays() -> bool {
    static PAYS: OnceLock<bool> = OnceLock::new();
    *PAYS.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// A streaming tool's chunks, as the thread running it sees them.
pub trait ChunkSource {
    /// The next chunk, `None` at the end, or the error that ended the tool.
    fn next_chunk(&self) -> Option<Result<ToolChunk, ToolError>>;
    /// Ends the tool early (a Python generator sees `GeneratorExit`).
    fn close(&self);
    /// Runs `wait`, which blocks until the buffer has room, without holding
    /// what the tool needs to run (the GIL).
    fn wait_outside<R: Send>(&self, wait: impl FnOnce() -> R + Send) -> R;
}

/// The chunk that ends a stream with `error`.
pub fn error_chunk(error: ToolError) -> ToolChunk {
    ToolChunk {
        payload: None,
        is_final: true,
        metadata: Default::default(),
        error: Some(error),
    }
}

/// Runs a streaming tool on the calling (blocking) thread, sending its
/// chunks to `tx` in order, until it ends, fails (its error as the last
/// chunk), is cancelled, or nobody reads any more (then it is closed).
pub fn produce<S: ChunkSource, H: CallHandle>(
    chunks: &S,
    control: &CallControl<H>,
    tx: &mpsc::Sender<StreamItem>,
) {
    while let Some(next) = chunks.next_chunk() {
        if control.is_cancelled() {
            // Nobody reads any more (the chunk or error of an interrupted
            // step included): close the tool so its `finally` blocks run
            // now, not at garbage collection.
            chunks.close();
            return;
        }
        let (message, failed) = match next {
            Ok(chunk) => (chunk, false),
            Err(error) => (error_chunk(error), true),
        };
        // Waits outside the tool only when the buffer is full; a chunk that
        // fits is queued at once.
        let sent = match tx.try_send(Ok(message)) {
            Ok(()) => true,
            Err(TrySendError::Full(message)) => {
                chunks.wait_outside(|| tx.blocking_send(message).is_ok())
            }
            Err(TrySendError::Closed(_)) => false,
        };
        if !sent {
            // The caller went away while the tool was suspended.
            chunks.close();
            return;
        }
        if failed {
            return;
        }
    }
}

/// The response stream of `ExecuteStreamingTool` and `ExecuteDuplexTool`:
/// the tool's chunks, ended by the deadline or (duplex) by a failure of the
/// request stream; dropping it (the client went away) cancels the tool.
pub struct CallStream<H: CallHandle> {
    chunks: ReceiverStream<StreamItem>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// A duplex call's news from the reader of its inputs.
    reader: Option<oneshot::Receiver<ReaderNews>>,
    ended: bool,
    /// When the last chunk went out (see [`SPIN_AFTER_CHUNK`]).
    last_chunk: Option<Instant>,
    /// [`SPIN_AFTER_CHUNK`], or zero where spinning does not pay.
    spin: Duration,
    guard: CancelOnDrop<H>,
}

impl<H: CallHandle> CallStream<H> {
    pub fn new(
        chunks: mpsc::Receiver<StreamItem>,
        deadline: Option<Instant>,
        guard: CancelOnDrop<H>,
        reader: Option<oneshot::Receiver<ReaderNews>>,
    ) -> Self {
        Self {
            chunks: ReceiverStream::new(chunks),
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at.into()))),
            reader,
            ended: false,
            last_chunk: None,
            spin: if spinning_pays() {
                SPIN_AFTER_CHUNK
            } else {
                Duration::ZERO
            },
            guard,
        }
    }

    /// Ends the stream with `status`, cancelling the tool.
    fn fail(&mut self, status: Status, reason: CancelReason) -> Poll<Option<StreamItem>> {
        self.ended = true;
        self.chunks.close();
        self.guard.cancel(reason);
        Poll::Ready(Some(Err(status)))
    }
}

impl<H: CallHandle> Stream for CallStream<H> {
    type Item = StreamItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // The deadline first: a generator that is always ready must not
        // outrun it.
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return this.fail(deadline_exceeded(), CancelReason::Deadline);
            }
        }
        // Then a duplex call's inputs: a failed request stream ends the call
        // before outputs that are moot now.
        if let Some(news) = this.reader.as_mut() {
            match Pin::new(news).poll(cx) {
                Poll::Ready(Ok(ReaderNews::Failed(status))) => {
                    return this.fail(status, CancelReason::Caller)
                }
                Poll::Ready(Ok(ReaderNews::Ended(ack))) => {
                    // hyper polls this stream only after checking that the
                    // client did not reset it: the end of input is real.
                    this.reader = None;
                    let _ = ack.send(());
                }
                // The reader is done without news.
                Poll::Ready(Err(_closed)) => this.reader = None,
                Poll::Pending => {}
            }
        }
        let next = Pin::new(&mut this.chunks).poll_next(cx);
        match &next {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(_)) => this.last_chunk = Some(Instant::now()),
            Poll::Pending => {
                // Shortly after a chunk, the next one is likely on its way:
                // poll again soon instead of parking this thread, which the
                // producer would have to wake (a wake per chunk is most of
                // the cost of a fast stream).
                if !this.spin.is_zero()
                    && this.last_chunk.is_some_and(|at| at.elapsed() < this.spin)
                {
                    cx.waker().wake_by_ref();
                }
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use tokio_stream::StreamExt;

    use super::*;
    use crate::worker::testing::{watch, Probe};

    fn chunk(n: u8) -> ToolChunk {
        ToolChunk {
            payload: Some(crate::proto::Payload {
                kind: 0,
                data: vec![n].into(),
            }),
            is_final: false,
            metadata: Default::default(),
            error: None,
        }
    }

    fn number(item: &StreamItem) -> u8 {
        item.as_ref().unwrap().payload.as_ref().unwrap().data[0]
    }

    fn failure(message: &str) -> ToolError {
        ToolError {
            category: "python".into(),
            error_type: "ValueError".into(),
            message: message.into(),
            traceback: String::new(),
        }
    }

    /// Runs before each step of a [`Script`], with the step's number.
    type StepHook = Box<dyn FnMut(usize)>;

    /// A tool that yields `items`, and what the producer did with it.
    #[derive(Default)]
    struct Script {
        items: RefCell<VecDeque<Result<ToolChunk, ToolError>>>,
        closed: Cell<bool>,
        waits: Cell<usize>,
        /// Runs before each step (to cancel mid-stream, say).
        before_step: RefCell<Option<StepHook>>,
        steps: Cell<usize>,
    }

    impl Script {
        fn of(items: impl IntoIterator<Item = Result<ToolChunk, ToolError>>) -> Self {
            Self {
                items: RefCell::new(items.into_iter().collect()),
                ..Self::default()
            }
        }
    }

    impl ChunkSource for Script {
        fn next_chunk(&self) -> Option<Result<ToolChunk, ToolError>> {
            let step = self.steps.get();
            self.steps.set(step + 1);
            if let Some(hook) = self.before_step.borrow_mut().as_mut() {
                hook(step);
            }
            self.items.borrow_mut().pop_front()
        }
        fn close(&self) {
            self.closed.set(true);
        }
        fn wait_outside<R: Send>(&self, wait: impl FnOnce() -> R + Send) -> R {
            self.waits.set(self.waits.get() + 1);
            wait()
        }
    }

    fn control() -> Arc<CallControl<Probe>> {
        let control = CallControl::new("tool".into(), watch(Duration::from_secs(60)).0);
        control.start(Some(Probe::default()));
        control
    }

    fn drain(rx: &mut mpsc::Receiver<StreamItem>) -> Vec<StreamItem> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn produces_chunks_in_order_then_stops() {
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        let script = Script::of((0..5).map(|n| Ok(chunk(n))));
        produce(&script, &control(), &tx);
        let got: Vec<u8> = drain(&mut rx).iter().map(number).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert!(!script.closed.get(), "ended on its own");
        assert_eq!(script.waits.get(), 0, "never waited: the buffer had room");
    }

    #[test]
    fn an_error_is_the_last_chunk() {
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        let script = Script::of([Ok(chunk(1)), Err(failure("boom")), Ok(chunk(2))]);
        produce(&script, &control(), &tx);
        let got = drain(&mut rx);
        assert_eq!(got.len(), 2);
        let last = got[1].as_ref().unwrap();
        assert!(last.is_final);
        assert_eq!(last.error.as_ref().unwrap().message, "boom");
        assert_eq!(script.steps.get(), 2, "no step after the error");
    }

    #[test]
    fn a_cancel_mid_stream_closes_the_tool() {
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        let control = control();
        let script = Script::of((0..5).map(|n| Ok(chunk(n))));
        let cancelled = control.clone();
        *script.before_step.borrow_mut() = Some(Box::new(move |step| {
            if step == 2 {
                cancelled.cancel(CancelReason::Caller);
            }
        }));
        produce(&script, &control, &tx);
        let got: Vec<u8> = drain(&mut rx).iter().map(number).collect();
        assert_eq!(got, [0, 1], "the chunk of the interrupted step is dropped");
        assert!(script.closed.get());
    }

    #[test]
    fn a_full_buffer_waits_outside_and_a_gone_reader_closes_the_tool() {
        let (tx, rx) = mpsc::channel(2);
        // More chunks than the reader takes plus the buffer holds, so the
        // producer meets the closed channel whatever the timing.
        let script = Script::of((0..10).map(|n| Ok(chunk(n))));
        let reader = std::thread::spawn(move || {
            let mut rx = rx;
            // Reads three, then goes away.
            (0..3)
                .map(|_| number(&rx.blocking_recv().unwrap()))
                .collect::<Vec<_>>()
        });
        produce(&script, &control(), &tx);
        assert_eq!(reader.join().unwrap(), [0, 1, 2]);
        assert!(script.waits.get() >= 1, "waited for room outside the tool");
        assert!(script.closed.get(), "closed once nobody reads");
    }

    /// Counts its wake-ups.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn stream(
        deadline: Option<Instant>,
        reader: Option<oneshot::Receiver<ReaderNews>>,
    ) -> (CallStream<Probe>, mpsc::Sender<StreamItem>, Probe) {
        let control = CallControl::new("tool".into(), watch(Duration::from_secs(60)).0);
        let probe = Probe::default();
        control.start(Some(probe.clone()));
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = CallStream::new(rx, deadline, CancelOnDrop::new(control), reader);
        (stream, tx, probe)
    }

    async fn cancels_of(probe: &Probe) -> Vec<CancelReason> {
        for _ in 0..100 {
            if !probe.cancels().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        probe.cancels()
    }

    #[tokio::test]
    async fn streams_chunks_in_order_to_the_end() {
        let (mut stream, tx, probe) = stream(None, None);
        for n in 0..3 {
            tx.send(Ok(chunk(n))).await.unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(item) = stream.next().await {
            got.push(number(&item));
        }
        assert_eq!(got, [0, 1, 2]);
        assert!(stream.next().await.is_none(), "stays ended");
        drop(stream);
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Dropped while the call still runs: cancelled for the caller.
        assert_eq!(probe.cancels(), [CancelReason::Caller]);
    }

    #[tokio::test]
    async fn a_status_from_the_producer_goes_through() {
        let (mut stream, tx, _probe) = stream(None, None);
        tx.send(Err(Status::internal("lost"))).await.unwrap();
        drop(tx);
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_the_stream_after_the_chunks_sent_and_cancels_the_tool() {
        let at = Instant::now() + Duration::from_millis(100);
        let (mut stream, tx, probe) = stream(Some(at), None);
        tx.send(Ok(chunk(1))).await.unwrap();
        assert_eq!(number(&stream.next().await.unwrap()), 1);
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(stream.next().await.is_none());
        assert!(tx.is_closed(), "the producer sees the end");
        drop(stream);
        assert_eq!(cancels_of(&probe).await, [CancelReason::Deadline]);
    }

    #[tokio::test]
    async fn a_failed_request_stream_ends_the_call_with_its_status() {
        let (news, reader) = oneshot::channel();
        let (mut stream, tx, probe) = stream(None, Some(reader));
        tx.send(Ok(chunk(1))).await.unwrap();
        news.send(ReaderNews::Failed(Status::invalid_argument("bad input")))
            .ok()
            .unwrap();
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(stream.next().await.is_none());
        assert_eq!(cancels_of(&probe).await, [CancelReason::Caller]);
    }

    #[tokio::test]
    async fn the_end_of_input_is_confirmed_while_the_stream_is_polled() {
        let (news, reader) = oneshot::channel();
        let (mut stream, tx, _probe) = stream(None, Some(reader));
        let (ack, acked) = oneshot::channel();
        news.send(ReaderNews::Ended(ack)).ok().unwrap();
        tx.send(Ok(chunk(4))).await.unwrap();
        assert_eq!(number(&stream.next().await.unwrap()), 4);
        acked.await.expect("confirmed");
    }

    #[tokio::test]
    async fn keeps_polling_only_shortly_after_a_chunk() {
        let (mut stream, tx, _probe) = stream(None, None);
        stream.spin = Duration::from_secs(3600);
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut stream = Pin::new(&mut stream);
        // Wake-ups since the last look (a send to the channel wakes too).
        let woken = || wakes.0.swap(0, Ordering::SeqCst);
        assert!(stream.as_mut().poll_next(&mut cx).is_pending());
        assert_eq!(woken(), 0, "no chunk yet: park");
        tx.try_send(Ok(chunk(1))).unwrap();
        assert!(stream.as_mut().poll_next(&mut cx).is_ready());
        woken();
        assert!(stream.as_mut().poll_next(&mut cx).is_pending());
        assert_eq!(woken(), 1, "right after a chunk: poll again");
        stream.spin = Duration::from_millis(1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(stream.as_mut().poll_next(&mut cx).is_pending());
        assert_eq!(woken(), 0, "past the window: park");
        stream.spin = Duration::ZERO;
        tx.try_send(Ok(chunk(2))).unwrap();
        assert!(stream.as_mut().poll_next(&mut cx).is_ready());
        woken();
        assert!(stream.as_mut().poll_next(&mut cx).is_pending());
        assert_eq!(woken(), 0, "no window on one CPU");
    }
}
