//! The bounded path of a worker's output (stdout and stderr lines) to its owner.
//!
//! A worker may print far faster than anyone can log: 1 GB of short lines is
//! ten million log events. The pipe readers ([`crate::process`]) therefore
//! never wait on the consumer: they read the pipe as fast as the worker writes
//! (so the worker never blocks on a full pipe), and hand each line to
//! [`WorkerOutput::offer`], which keeps it only when
//!
//! * the worker's rate allows it: a token bucket of lines and one of bytes,
//!   refilled continuously at [`OutputLimits::lines_per_second`] and
//!   [`OutputLimits::bytes_per_second`], each holding at most one second's
//!   worth (so a burst of a second's output passes whole), and
//! * the queue waiting for the consumer has room
//!   ([`OutputLimits::max_queued_lines`], [`OutputLimits::max_queued_bytes`]),
//!   which bounds memory when the consumer is slower than the rate.
//!
//! Every other line is dropped and counted. The consumer takes lines in
//! batches with [`WorkerOutput::next_batch`]; a batch carries the lines dropped
//! since the last report, at most once per [`OutputLimits::report_interval`]
//! (and once more at the end), so a flood yields one report per interval, not
//! one per line. [`WorkerOutput::dropped_total`] counts all drops since start.
//! The pool takes one batch at a time (see the NIF's worker module), so what is
//! in flight to it is bounded too.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::process::LogStream;

/// How much output of one worker reaches its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Lines per second kept, on average; a second's worth may come at once.
    pub lines_per_second: u32,
    /// Bytes of line text per second kept, on average; likewise.
    pub bytes_per_second: u64,
    /// Lines kept while the consumer has not taken them.
    pub max_queued_lines: usize,
    /// Bytes kept while the consumer has not taken them.
    pub max_queued_bytes: usize,
    /// Least time between two reports of dropped lines.
    pub report_interval: Duration,
}

impl Default for OutputLimits {
    /// 1 000 lines and 1 MiB per second; 1 000 lines and 1 MiB waiting; one
    /// report of dropped lines per second at most.
    fn default() -> Self {
        Self {
            lines_per_second: 1_000,
            bytes_per_second: 1 << 20,
            max_queued_lines: 1_000,
            max_queued_bytes: 1 << 20,
            report_interval: Duration::from_secs(1),
        }
    }
}

/// One line of output, decoded (lossily) and without its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub stream: LogStream,
    pub text: String,
}

/// Lines and bytes of output dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub lines: u64,
    pub bytes: u64,
}

impl Dropped {
    fn add(&mut self, bytes: usize) {
        self.lines += 1;
        self.bytes += bytes as u64;
    }

    fn is_empty(&self) -> bool {
        self.lines == 0
    }
}

/// What [`WorkerOutput::next_batch`] hands the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputBatch {
    /// Lines in the order they were kept (stdout and stderr interleaved as read).
    pub lines: Vec<OutputLine>,
    /// Lines dropped since the previous report, when one is due.
    pub dropped: Option<Dropped>,
}

/// A token bucket: `rate` tokens per second, at most `capacity` held.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket holding one second's worth.
    fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            capacity: rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    fn has(&self, n: f64) -> bool {
        self.tokens >= n
    }

    fn take(&mut self, n: f64) {
        self.tokens -= n;
    }
}

struct State {
    lines: TokenBucket,
    bytes: TokenBucket,
    queue: VecDeque<OutputLine>,
    queued_bytes: usize,
    unreported: Dropped,
    total: Dropped,
    last_report: Instant,
    open_writers: usize,
}

/// The output of one worker on its way to the owner; see the module docs.
pub struct WorkerOutput {
    limits: OutputLimits,
    state: Mutex<State>,
    // One consumer: `notify_one` keeps a permit when it is not waiting, so no
    // wake-up is lost between its check and its wait.
    wake: Notify,
}

impl WorkerOutput {
    /// Output with `writers` producers (the pipe readers); ends when all of
    /// them called [`WorkerOutput::close_writer`].
    pub fn new(limits: OutputLimits, writers: usize) -> Self {
        let now = Instant::now();
        Self {
            limits,
            state: Mutex::new(State {
                lines: TokenBucket::new(f64::from(limits.lines_per_second), now),
                bytes: TokenBucket::new(limits.bytes_per_second as f64, now),
                queue: VecDeque::new(),
                queued_bytes: 0,
                unreported: Dropped::default(),
                total: Dropped::default(),
                last_report: now,
                open_writers: writers,
            }),
            wake: Notify::new(),
        }
    }

    /// The limits this output applies.
    pub fn limits(&self) -> OutputLimits {
        self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers one line: `raw` is its text as read (at most
    /// [`crate::process::MAX_LINE_BYTES`]), `cut` the bytes of it not kept.
    /// The line is decoded only when it is kept. Returns whether it was kept.
    pub fn offer(&self, stream: LogStream, raw: &[u8], cut: usize) -> bool {
        let size = raw.len() + cut;
        let mut state = self.state();
        let now = Instant::now();
        state.lines.refill(now);
        state.bytes.refill(now);
        // What reaches the owner is what costs: the kept part of a cut line.
        // A line longer than a second's worth passes when the bucket is full,
        // so no line is too long to ever pass.
        let byte_cost = (raw.len() as f64).min(state.bytes.capacity);
        let fits = state.queue.len() < self.limits.max_queued_lines
            && state.queued_bytes + raw.len() <= self.limits.max_queued_bytes;
        if !(fits && state.lines.has(1.0) && state.bytes.has(byte_cost)) {
            state.unreported.add(size);
            state.total.add(size);
            // Wake the consumer only for the first drop: it reports on its timer.
            if state.unreported.lines == 1 {
                drop(state);
                self.wake.notify_one();
            }
            return false;
        }
        state.lines.take(1.0);
        state.bytes.take(byte_cost);
        let text = decode_line(raw, cut);
        // Counted as it is taken out (decoding may change the length).
        state.queued_bytes += text.len();
        state.queue.push_back(OutputLine { stream, text });
        drop(state);
        self.wake.notify_one();
        true
    }

    /// One producer is done (its pipe reached end of file).
    pub fn close_writer(&self) {
        let mut state = self.state();
        state.open_writers = state.open_writers.saturating_sub(1);
        drop(state);
        self.wake.notify_one();
    }

    /// Every line dropped since the worker started.
    pub fn dropped_total(&self) -> Dropped {
        self.state().total
    }

    /// Waits for the next batch: up to `max_lines` lines and `max_bytes` bytes
    /// (at least one line), with a report of dropped lines when one is due.
    /// `None` once every producer is done and everything was handed over.
    pub async fn next_batch(&self, max_lines: usize, max_bytes: usize) -> Option<OutputBatch> {
        loop {
            let report_at = {
                let mut state = self.state();
                let now = Instant::now();
                let finished = state.open_writers == 0;
                let report_due = !state.unreported.is_empty()
                    && (finished || now >= state.last_report + self.limits.report_interval);
                if !state.queue.is_empty() || report_due {
                    return Some(take_batch(
                        &mut state, now, report_due, max_lines, max_bytes,
                    ));
                }
                if finished {
                    return None;
                }
                (!state.unreported.is_empty())
                    .then(|| state.last_report + self.limits.report_interval)
            };
            match report_at {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.wake.notified()).await;
                }
                None => self.wake.notified().await,
            }
        }
    }
}

fn take_batch(
    state: &mut State,
    now: Instant,
    report: bool,
    max_lines: usize,
    max_bytes: usize,
) -> OutputBatch {
    let mut lines = Vec::new();
    let mut bytes = 0;
    while let Some(line) = state.queue.front() {
        let size = line.text.len();
        if !lines.is_empty() && (lines.len() >= max_lines || bytes + size > max_bytes) {
            break;
        }
        bytes += size;
        lines.extend(state.queue.pop_front());
    }
    state.queued_bytes = state.queued_bytes.saturating_sub(bytes);
    if state.queue.is_empty() {
        // Decoding may change a line's length; nothing is queued, so nothing is owed.
        state.queued_bytes = 0;
    }
    let dropped = report.then(|| {
        state.last_report = now;
        std::mem::take(&mut state.unreported)
    });
    OutputBatch { lines, dropped }
}

/// The line decoded lossily, without a trailing `\r`, saying how much was cut.
fn decode_line(raw: &[u8], cut: usize) -> String {
    let mut text = String::from_utf8_lossy(raw)
        .trim_end_matches('\r')
        .to_owned();
    if cut > 0 {
        text.push_str(&format!(" [line cut: {cut} more bytes dropped]"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(lines_per_second: u32, bytes_per_second: u64) -> OutputLimits {
        OutputLimits {
            lines_per_second,
            bytes_per_second,
            max_queued_lines: 10_000,
            max_queued_bytes: 10 << 20,
            report_interval: Duration::from_secs(1),
        }
    }

    fn texts(batch: &OutputBatch) -> Vec<&str> {
        batch.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_capacity() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, start);
        bucket.take(10.0);
        assert!(!bucket.has(1.0));
        bucket.refill(start + Duration::from_millis(500));
        assert!(bucket.has(5.0) && !bucket.has(5.5));
        bucket.refill(start + Duration::from_secs(60));
        assert!(bucket.has(10.0) && !bucket.has(10.5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_holds_and_drops_are_counted() {
        let output = WorkerOutput::new(limits(100, 1 << 20), 1);
        let kept = (0..1000)
            .filter(|i| output.offer(LogStream::Stderr, format!("line {i}").as_bytes(), 0))
            .count();
        assert_eq!(kept, 100, "one second's worth passes at once");
        // "line 100" .. "line 999": 900 lines of 8 bytes.
        assert_eq!(
            output.dropped_total(),
            Dropped {
                lines: 900,
                bytes: 7200
            }
        );

        // Half a second later, half a second's worth more.
        tokio::time::advance(Duration::from_millis(500)).await;
        let kept = (0..1000)
            .filter(|_| output.offer(LogStream::Stdout, b"more", 0))
            .count();
        assert_eq!(kept, 50);
        assert_eq!(
            output.dropped_total(),
            Dropped {
                lines: 1850,
                bytes: 7200 + 950 * 4
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_limited_too() {
        let output = WorkerOutput::new(limits(1_000_000, 1000), 1);
        let line = [b'x'; 100];
        let kept = (0..100)
            .filter(|_| output.offer(LogStream::Stderr, &line, 0))
            .count();
        assert_eq!(kept, 10);
        tokio::time::advance(Duration::from_secs(1)).await;
        // A line longer than a second's worth passes when the bucket is full.
        assert!(output.offer(LogStream::Stderr, &[b'y'; 2000], 5000));
        assert!(!output.offer(LogStream::Stderr, b"z", 0));
        assert_eq!(
            output.dropped_total(),
            Dropped {
                lines: 91,
                bytes: 9001
            }
        );
        let batch = output.next_batch(100, usize::MAX).await.unwrap();
        assert_eq!(batch.lines.len(), 11);
        assert!(batch.lines[10]
            .text
            .ends_with(" [line cut: 5000 more bytes dropped]"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_while_the_consumer_lags() {
        let output = WorkerOutput::new(
            OutputLimits {
                max_queued_lines: 5,
                max_queued_bytes: 1 << 20,
                ..limits(1_000_000, 1 << 30)
            },
            1,
        );
        let kept = (0..20)
            .filter(|i| output.offer(LogStream::Stdout, format!("{i}").as_bytes(), 0))
            .count();
        assert_eq!(kept, 5);
        let batch = output.next_batch(100, usize::MAX).await.unwrap();
        assert_eq!(texts(&batch), ["0", "1", "2", "3", "4"]);
        assert!(output.offer(LogStream::Stdout, b"again", 0));

        let by_bytes = WorkerOutput::new(
            OutputLimits {
                max_queued_bytes: 10,
                ..limits(1_000_000, 1 << 30)
            },
            1,
        );
        assert!(by_bytes.offer(LogStream::Stdout, b"123456", 0));
        assert!(!by_bytes.offer(LogStream::Stdout, b"123456", 0));
        assert!(by_bytes.offer(LogStream::Stdout, b"1234", 0));
    }

    #[tokio::test(start_paused = true)]
    async fn batches_keep_order_and_respect_their_size() {
        let output = WorkerOutput::new(limits(1000, 1 << 20), 1);
        for i in 0..10 {
            let stream = if i % 2 == 0 {
                LogStream::Stdout
            } else {
                LogStream::Stderr
            };
            output.offer(stream, format!("l{i}").as_bytes(), 0);
        }
        let first = output.next_batch(4, usize::MAX).await.unwrap();
        assert_eq!(texts(&first), ["l0", "l1", "l2", "l3"]);
        assert_eq!(first.lines[1].stream, LogStream::Stderr);
        assert_eq!(first.dropped, None);
        let second = output.next_batch(100, 5).await.unwrap();
        assert_eq!(texts(&second), ["l4", "l5"]);
        // At least one line, however small the byte limit.
        let third = output.next_batch(100, 0).await.unwrap();
        assert_eq!(texts(&third), ["l6"]);
    }

    #[tokio::test(start_paused = true)]
    async fn drops_are_reported_once_per_interval_and_at_the_end() {
        let output = WorkerOutput::new(limits(2, 1 << 20), 1);
        for _ in 0..10 {
            output.offer(LogStream::Stderr, b"abc", 0);
        }
        // The kept lines come at once; the drops wait for the interval.
        let batch = output.next_batch(100, usize::MAX).await.unwrap();
        assert_eq!((batch.lines.len(), batch.dropped), (2, None));
        let started = Instant::now();
        let report = output.next_batch(100, usize::MAX).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert!(report.lines.is_empty());
        assert_eq!(
            report.dropped,
            Some(Dropped {
                lines: 8,
                bytes: 24
            })
        );

        for _ in 0..5 {
            output.offer(LogStream::Stderr, b"abcd", 0);
        }
        output.close_writer();
        // Everything is handed over before the end: the lines, then the last drops.
        let mut lines = 0;
        let mut dropped = Dropped::default();
        while let Some(batch) = output.next_batch(1, usize::MAX).await {
            lines += batch.lines.len();
            if let Some(d) = batch.dropped {
                dropped.lines += d.lines;
                dropped.bytes += d.bytes;
            }
        }
        assert_eq!(lines, 2);
        assert_eq!(
            dropped,
            Dropped {
                lines: 3,
                bytes: 12
            }
        );
        assert_eq!(
            output.dropped_total(),
            Dropped {
                lines: 11,
                bytes: 36
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn output_ends_when_every_writer_is_done() {
        let output = WorkerOutput::new(OutputLimits::default(), 2);
        output.offer(LogStream::Stdout, b"last words\r", 0);
        output.close_writer();
        output.close_writer();
        let batch = output.next_batch(10, usize::MAX).await.unwrap();
        assert_eq!(texts(&batch), ["last words"]);
        assert_eq!(output.next_batch(10, usize::MAX).await, None);
    }

    #[test]
    fn lines_are_decoded_lossily() {
        assert_eq!(decode_line(b"caf\xc3\xa9 ok\r", 0), "café ok");
        assert_eq!(decode_line(b"\xff", 0), "\u{fffd}");
        assert_eq!(decode_line(b"z", 5), "z [line cut: 5 more bytes dropped]");
    }
}
