//! The inputs of a duplex call (`ExecuteDuplexTool`): the client's request
//! stream, read lazily by a tokio task and handed to the tool through
//! [`Inputs`] (in the Python extension, an `InputIterator`).
//!
//! Backpressure: the reader task reserves a slot in a small channel
//! ([`INPUT_BUFFER`]) *before* it reads the next request message. While the
//! tool does not take inputs the channel stays full, the reader stops polling
//! the request stream, tonic stops releasing HTTP/2 flow-control capacity,
//! and a client sending faster than the tool consumes is held back by HTTP/2
//! instead of filling the worker's memory.
//!
//! End and cancellation: a half-close of the client's side is forwarded as an
//! explicit end, so the tool can tell "no more inputs" from "the reader
//! stopped". The reader stops early only when the call is being cancelled
//! (its request stream failed, or the client broke the protocol: it then
//! cancels the call itself) or is over; in those cases [`Inputs::wait_next`]
//! does not report an end, which the tool would take for a complete input,
//! but waits for [`Inputs::close`]. `close()` comes from the Python
//! `CallHandle`'s cancel (after the handle has recorded the cancel and
//! interrupted the tool's thread, so Python can raise `ToolCancelled` rather
//! than end the iteration) and from the server once the call is over.
//!
//! Telling a half-close from a cancel: tonic's server reports a request
//! stream that the client reset with `RST_STREAM(CANCEL)` (how a tonic
//! client cancels a call, `Request::cancellation_handle`) exactly like a
//! half-close: the stream just ends. Only the response side can tell them
//! apart: hyper checks the HTTP/2 stream for a reset before each poll of the
//! response body, and drops the body when it finds one. So before it reports
//! the end of input, the reader asks the response stream ([`ReaderNews::Ended`]):
//! an answer means hyper polled it after checking, so the stream was not
//! reset and the end is real; no answer (the response stream was dropped)
//! means the call is being cancelled, and the tool gets `ToolCancelled`
//! rather than a cut-off input.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::control::{CallControl, CallHandle, CancelReason};
use super::unary::deadline_exceeded;
use crate::proto::{
    duplex_request::Message, DuplexRequest, ExecuteToolRequest, Payload, PayloadKind,
};

/// Inputs read ahead of the tool. Small on purpose: beyond it, the client's
/// messages wait in HTTP/2 flow control.
pub const INPUT_BUFFER: usize = 8;

enum Input {
    Item(Payload),
    /// The client half-closed its side: there are no more inputs.
    End,
}

/// The inputs of one duplex call, in order, for the thread running the tool.
pub struct Inputs {
    receiver: Mutex<mpsc::Receiver<Input>>,
    /// Cancelled by `close()`: wakes a waiting `wait_next`, stops the reader.
    closed: CancellationToken,
    /// The client's end of input was seen.
    ended: AtomicBool,
    runtime: tokio::runtime::Handle,
}

impl Inputs {
    /// A token that closes the inputs (for the server, once the call is over).
    pub fn closer(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Ends the inputs from any thread: a waiting `wait_next` returns at
    /// once, and no more inputs are read from the client.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Whether `close()` was called.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Waits for the next input; `None` at the end of input or once closed.
    /// Blocks: call it outside the runtime (the tool's thread).
    pub fn wait_next(&self) -> Option<Payload> {
        if self.ended.load(Ordering::Acquire) || self.closed.is_cancelled() {
            return None;
        }
        // Only one waiter reads the channel at a time; others queue here.
        let mut receiver = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.runtime.block_on(async {
            tokio::select! {
                biased;
                () = self.closed.cancelled() => None,
                input = receiver.recv() => Some(input),
            }
        });
        match next? {
            Some(Input::Item(payload)) => Some(payload),
            Some(Input::End) => {
                self.ended.store(true, Ordering::Release);
                None
            }
            None => {
                // The reader stopped without an end: the call is being
                // cancelled (or is over). Reporting an end now would let the
                // tool take a cut-off input for a complete one; wait for the
                // close that follows the cancel instead.
                self.runtime.block_on(self.closed.cancelled());
                None
            }
        }
    }
}

/// What the reader of a duplex call's inputs tells the call's response
/// stream (`stream::CallStream`), once at most.
pub enum ReaderNews {
    /// The request stream failed or broke the protocol: end the call with
    /// this status (the reader has cancelled the call).
    Failed(Status),
    /// The request stream ended: answer to confirm that the HTTP/2 stream was
    /// not reset (see the module docs).
    Ended(oneshot::Sender<()>),
}

/// Reads the `start` message that opens a duplex call, by `deadline`.
pub async fn read_start<S>(
    requests: &mut S,
    deadline: Option<Instant>,
) -> Result<ExecuteToolRequest, Status>
where
    S: Stream<Item = Result<DuplexRequest, Status>> + Unpin,
{
    let first = match deadline {
        None => requests.next().await,
        Some(at) => tokio::time::timeout_at(at.into(), requests.next())
            .await
            .map_err(|_elapsed| deadline_exceeded())?,
    };
    match first.transpose()? {
        Some(DuplexRequest {
            message: Some(Message::Start(start)),
        }) => Ok(start),
        Some(_) => Err(Status::invalid_argument(
            "the first message of a duplex call must carry `start`",
        )),
        None => Err(Status::invalid_argument(
            "the duplex call's request stream ended before its `start` message",
        )),
    }
}

/// Starts reading a duplex call's inputs (the messages after `start`) from
/// `requests`, in a tokio task; must be called inside the runtime.
///
/// Returns the inputs for the tool, and the receiver of the reader's news
/// for the response stream.
pub fn read_inputs<S, H>(
    requests: S,
    control: Arc<CallControl<H>>,
) -> (Inputs, oneshot::Receiver<ReaderNews>)
where
    S: Stream<Item = Result<DuplexRequest, Status>> + Unpin + Send + 'static,
    H: CallHandle,
{
    let (sender, receiver) = mpsc::channel(INPUT_BUFFER);
    let (news, news_receiver) = oneshot::channel();
    let inputs = Inputs {
        receiver: Mutex::new(receiver),
        closed: CancellationToken::new(),
        ended: AtomicBool::new(false),
        runtime: tokio::runtime::Handle::current(),
    };
    let reader = Reader {
        requests,
        sender,
        closed: inputs.closer(),
        news: Some(news),
        control,
    };
    tokio::spawn(reader.run());
    (inputs, news_receiver)
}

struct Reader<S, H: CallHandle> {
    requests: S,
    sender: mpsc::Sender<Input>,
    closed: CancellationToken,
    news: Option<oneshot::Sender<ReaderNews>>,
    control: Arc<CallControl<H>>,
}

impl<S, H> Reader<S, H>
where
    S: Stream<Item = Result<DuplexRequest, Status>> + Unpin,
    H: CallHandle,
{
    async fn run(mut self) {
        if let Some(failure) = self.forward().await {
            if let Some(news) = self.news.take() {
                let _ = news.send(ReaderNews::Failed(failure));
            }
            let runtime = tokio::runtime::Handle::current();
            self.control
                .cancel_in_background(CancelReason::Caller, &runtime);
        }
    }

    /// Forwards inputs until the end of input, the close, or a failure
    /// (returned).
    async fn forward(&mut self) -> Option<Status> {
        // The `start` message was message 1.
        let mut number = 1usize;
        loop {
            // Room first, then the next message: see the module docs.
            let permit = tokio::select! {
                biased;
                () = self.closed.cancelled() => return None,
                permit = self.sender.reserve() => permit.ok()?,
            };
            let message = tokio::select! {
                biased;
                () = self.closed.cancelled() => return None,
                message = self.requests.next() => message.transpose(),
            };
            number += 1;
            match message {
                Ok(Some(DuplexRequest {
                    message: Some(Message::Input(payload)),
                })) => {
                    if PayloadKind::try_from(payload.kind).is_err() {
                        return Some(Status::invalid_argument(format!(
                            "message {number} of the duplex call: unknown payload kind {}",
                            payload.kind
                        )));
                    }
                    permit.send(Input::Item(payload));
                }
                Ok(Some(_)) => {
                    return Some(Status::invalid_argument(format!(
                        "message {number} of the duplex call carries no `input` \
                         (only the first message carries `start`)"
                    )))
                }
                Ok(None) => {
                    drop(permit);
                    self.end().await;
                    return None;
                }
                Err(status) => return Some(status),
            }
        }
    }

    /// Reports the end of input, once the response stream has confirmed that
    /// the client did not reset the call (see the module docs).
    async fn end(&mut self) {
        let Some(news) = self.news.take() else {
            return;
        };
        let (ack, acked) = oneshot::channel();
        if news.send(ReaderNews::Ended(ack)).is_err() {
            return; // the response stream is gone: the call is being cancelled
        }
        let confirmed = tokio::select! {
            biased;
            () = self.closed.cancelled() => false,
            answer = acked => answer.is_ok(),
        };
        if confirmed {
            // The slot reserved for this message was released just before.
            let _ = self.sender.try_send(Input::End);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::worker::testing::{watch, Probe};

    type Requests = mpsc::Sender<Result<DuplexRequest, Status>>;

    fn input(data: &'static [u8]) -> Result<DuplexRequest, Status> {
        Ok(DuplexRequest {
            message: Some(Message::Input(Payload {
                kind: PayloadKind::Json as i32,
                data: data.into(),
            })),
        })
    }

    fn start(tool: &str) -> Result<DuplexRequest, Status> {
        Ok(DuplexRequest {
            message: Some(Message::Start(ExecuteToolRequest {
                tool_name: tool.into(),
                ..Default::default()
            })),
        })
    }

    fn duplex() -> (Requests, Arc<Inputs>, oneshot::Receiver<ReaderNews>, Probe) {
        let control = CallControl::new("tool".into(), watch(Duration::from_secs(60)).0);
        let probe = Probe::default();
        control.start(Some(probe.clone()));
        let (requests, incoming) = mpsc::channel(4);
        let (inputs, news) = read_inputs(ReceiverStream::new(incoming), control);
        (requests, Arc::new(inputs), news, probe)
    }

    /// `wait_next` on a blocking thread, as the tool calls it.
    async fn next(inputs: &Arc<Inputs>) -> Option<Vec<u8>> {
        let inputs = inputs.clone();
        tokio::task::spawn_blocking(move || inputs.wait_next().map(|p| p.data.to_vec()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn reads_the_start_message_or_refuses_the_call() {
        let mut requests = tokio_stream::iter([start("echo")]);
        assert_eq!(
            read_start(&mut requests, None).await.unwrap().tool_name,
            "echo"
        );
        let mut requests = tokio_stream::iter([input(b"1")]);
        let refused = read_start(&mut requests, None).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        let mut requests = tokio_stream::iter(Vec::new());
        let refused = read_start(&mut requests, None).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_message_that_does_not_come_in_time_is_a_deadline() {
        let (_requests, incoming) = mpsc::channel::<Result<DuplexRequest, Status>>(1);
        let mut incoming = ReceiverStream::new(incoming);
        let at = Instant::now() + Duration::from_millis(100);
        let status = read_start(&mut incoming, Some(at)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inputs_arrive_in_order_and_end_once_the_end_is_confirmed() {
        let (requests, inputs, news, _probe) = duplex();
        requests.send(input(b"1")).await.unwrap();
        requests.send(input(b"2")).await.unwrap();
        drop(requests);
        assert_eq!(next(&inputs).await.as_deref(), Some(&b"1"[..]));
        assert_eq!(next(&inputs).await.as_deref(), Some(&b"2"[..]));
        let Ok(ReaderNews::Ended(ack)) = news.await else {
            panic!("the reader asks to confirm the end");
        };
        ack.send(()).unwrap();
        assert_eq!(next(&inputs).await, None);
        assert_eq!(next(&inputs).await, None, "stays ended");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unconfirmed_end_waits_for_the_close() {
        let (requests, inputs, news, _probe) = duplex();
        drop(requests);
        // The response stream is gone: the client reset the call.
        drop(news);
        let waiting = next(&inputs);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "no end reported for a cut-off input"
        );
        inputs.close();
        assert_eq!(waiting.await, None);
        assert!(inputs.is_closed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_without_input_fails_the_call() {
        let (requests, _inputs, news, probe) = duplex();
        requests.send(start("again")).await.unwrap();
        let Ok(ReaderNews::Failed(status)) = news.await else {
            panic!("the reader reports the failure");
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("message 2"),
            "{}",
            status.message()
        );
        while probe.cancels().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(probe.cancels(), [CancelReason::Caller]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reader_stops_reading_while_the_tool_does_not_take_inputs() {
        let (requests, inputs, _news, _probe) = duplex();
        // The buffer, then the channel feeding the reader (4), fill up; the
        // next send waits: the client is held back.
        for _ in 0..INPUT_BUFFER + 4 {
            requests.send(input(b"x")).await.unwrap();
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(50), requests.send(input(b"y")))
                .await
                .is_err(),
            "held back"
        );
        assert_eq!(next(&inputs).await.as_deref(), Some(&b"x"[..]));
    }
}
