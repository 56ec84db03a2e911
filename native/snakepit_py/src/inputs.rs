//! The inputs of a duplex call (`ExecuteDuplexTool`): the client's request
//! stream, read lazily by a tokio task and handed to Python through an
//! [`InputIterator`].
//!
//! Backpressure: the reader task reserves a slot in a small channel
//! ([`INPUT_BUFFER`]) *before* it reads the next request message. While the
//! tool does not take inputs the channel stays full, the reader stops polling
//! the request stream, tonic stops releasing HTTP/2 flow-control capacity,
//! and a client sending faster than the tool consumes is held back by HTTP/2
//! instead of filling the worker's memory.
//!
//! End and cancellation: a half-close of the client's side is forwarded as an
//! explicit [`Input::End`], so the iterator can tell "no more inputs" from
//! "the reader stopped". The reader stops early only when the call is being
//! cancelled (its request stream failed, or the client broke the protocol:
//! it then cancels the call itself) or is over; in those cases the iterator
//! does not report an end, which the tool would take for a complete input,
//! but waits for `close()`. `close()` comes from the Python `CallHandle`'s
//! cancel (after the handle has recorded the cancel and interrupted the
//! tool's thread, so Python can raise `ToolCancelled` rather than end the
//! iteration) and from the server once the call is over.
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

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use snakepit_core::proto::{duplex_request::Message, DuplexRequest, Payload, PayloadKind};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::control::{CallControl, CancelReason};

/// Inputs read ahead of the tool. Small on purpose: beyond it, the client's
/// messages wait in HTTP/2 flow control.
pub const INPUT_BUFFER: usize = 8;

enum Input {
    Item(Payload),
    /// The client half-closed its side: there are no more inputs.
    End,
}

/// The inputs of one duplex call, in order, as a blocking Python iterator of
/// `(data: bytes, is_raw: bool)`. Created by the server only; the dispatcher
/// wraps it into the iterator the tool sees (see `snakepit_bridge/duplex.py`).
#[pyclass(module = "snakepit_bridge._native", frozen)]
pub struct InputIterator {
    receiver: Mutex<mpsc::Receiver<Input>>,
    /// Cancelled by `close()`: wakes a waiting `__next__`, stops the reader.
    closed: CancellationToken,
    /// The client's end of input was seen.
    ended: AtomicBool,
    runtime: tokio::runtime::Handle,
}

impl InputIterator {
    /// A token that closes the iterator (for the server, once the call is over).
    pub fn closer(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Waits for the next input; `None` at the end of input or once closed.
    fn wait_next(&self) -> Option<Payload> {
        if self.ended.load(Ordering::Acquire) || self.closed.is_cancelled() {
            return None;
        }
        // Only one waiter reads the channel at a time; others queue here
        // (without the GIL).
        let mut receiver = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        // A plain block_on: this runs on a Python thread (or a tokio blocking
        // thread), never on a runtime worker.
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

#[pymethods]
impl InputIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next input as `(data, is_raw)`, waiting for it with the GIL
    /// released; `StopIteration` at the end of input or once closed.
    fn __next__<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyBytes>, bool)> {
        let payload = py.detach(|| self.wait_next())?;
        let raw = payload.kind == PayloadKind::Raw as i32;
        Some((PyBytes::new(py, &payload.data), raw))
    }

    /// Ends the iteration from any thread: a waiting `__next__` returns at
    /// once, and no more inputs are read from the client.
    fn close(&self) {
        self.closed.cancel();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

/// What the reader of a duplex call's inputs tells the call's response
/// stream (`CallStream`), once at most.
pub enum ReaderNews {
    /// The request stream failed or broke the protocol: end the call with
    /// this status (the reader has cancelled the call).
    Failed(Status),
    /// The request stream ended: answer to confirm that the HTTP/2 stream was
    /// not reset (see the module docs).
    Ended(oneshot::Sender<()>),
}

/// Starts reading a duplex call's inputs (the messages after `start`) from
/// `requests`, in a tokio task; must be called inside the runtime.
///
/// Returns the iterator for the tool, and the receiver of the reader's news
/// for the response stream.
pub fn read_inputs(
    requests: Streaming<DuplexRequest>,
    control: Arc<CallControl>,
) -> (InputIterator, oneshot::Receiver<ReaderNews>) {
    let (sender, receiver) = mpsc::channel(INPUT_BUFFER);
    let (news, news_receiver) = oneshot::channel();
    let iterator = InputIterator {
        receiver: Mutex::new(receiver),
        closed: CancellationToken::new(),
        ended: AtomicBool::new(false),
        runtime: tokio::runtime::Handle::current(),
    };
    let reader = Reader {
        requests,
        sender,
        closed: iterator.closer(),
        news: Some(news),
        control,
    };
    tokio::spawn(reader.run());
    (iterator, news_receiver)
}

struct Reader {
    requests: Streaming<DuplexRequest>,
    sender: mpsc::Sender<Input>,
    closed: CancellationToken,
    news: Option<oneshot::Sender<ReaderNews>>,
    control: Arc<CallControl>,
}

impl Reader {
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

    /// Forwards inputs until the end of input, the iterator's close, or a
    /// failure (returned).
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
                message = self.requests.message() => message,
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
