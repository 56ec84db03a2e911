//! Worker OS processes: spawn, handshake, logs, exit, and stop.
//!
//! A worker is spawned with piped stdin, stdout and stderr, in a process group
//! of its own. It announces readiness with one stdout line `GRPC_READY:<port>`
//! (or `GRPC_READY:unix:@<name>`, see [`crate::address`]);
//! every other line of stdout and stderr goes to the worker's
//! [`WorkerOutput`], a bounded, rate-limited path to the owner (see
//! [`crate::output`]); the pipes are read as fast as the worker writes them,
//! whatever the owner does with the lines. The
//! supervisor task owns the child: it reports `Ready` or `StartFailed`, then
//! `Exited`, and kills the whole process group when asked to stop or when the
//! [`WorkerProcess`] handle is dropped.
//!
//! The worker dies with its parent in two independent ways: its stdin is a pipe
//! whose write end only we hold (EOF means "your parent is gone"), and on Linux
//! the kernel signals it when the spawning thread dies (`PR_SET_PDEATHSIG`);
//! either way it takes its process group along (see [`crate::lifeline`]).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use crate::address::WorkerAddress;
use crate::output::{OutputLimits, WorkerOutput};
use crate::CoreError;

/// The stdout line prefix a worker prints once it serves.
pub const READY_PREFIX: &str = "GRPC_READY:";

/// Starts the stdout line of a ready worker that asks to be recycled, with
/// its reason: `SNAKEPIT_RECYCLE:<reason>` (a cancelled tool that did not
/// stop, see the worker's `stuck.rs`).
pub const RECYCLE_PREFIX: &str = "SNAKEPIT_RECYCLE:";

/// How many stderr lines are kept to explain a failed start.
const STDERR_TAIL_LINES: usize = 40;

/// How long to wait for a dead worker's stderr to drain before reporting.
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// Bytes read from a pipe at once.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub worker_id: String,
    pub executable: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub start_timeout: Duration,
    /// How much of its stdout and stderr reaches the owner.
    pub output_limits: OutputLimits,
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Code(code) => write!(f, "exit status {code}"),
            ExitInfo::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// What the supervisor reports, in order: exactly one of `Ready` or
/// `StartFailed`, and after `Ready` eventually one `Exited`. Output lines
/// travel apart, through [`WorkerProcess::output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    Ready {
        address: WorkerAddress,
    },
    StartFailed {
        message: String,
    },
    /// The ready worker asks to be replaced (see [`RECYCLE_PREFIX`]).
    Recycle {
        reason: String,
    },
    Exited {
        status: ExitInfo,
    },
}

/// Receives the events of one worker; called from runtime threads.
pub type EventSink = Arc<dyn Fn(WorkerEvent) + Send + Sync>;

enum Control {
    Stop { grace: Duration },
}

/// Handle to a running worker process. Dropping it kills the process group.
pub struct WorkerProcess {
    os_pid: u32,
    control: mpsc::UnboundedSender<Control>,
    output: Arc<WorkerOutput>,
}

impl WorkerProcess {
    /// The OS process id of the worker (also its process group id).
    pub fn os_pid(&self) -> u32 {
        self.os_pid
    }

    /// Asks the worker to stop: SIGTERM to its process group, then SIGKILL once
    /// `grace` has passed. Returns at once; `Exited` reports the end.
    pub fn stop(&self, grace: Duration) {
        let _ = self.control.send(Control::Stop { grace });
    }

    /// The worker's output lines (stdout but the ready line, and stderr);
    /// it ends once both pipes are closed.
    pub fn output(&self) -> &Arc<WorkerOutput> {
        &self.output
    }
}

/// Spawns a worker and its supervisor task. Must run inside a tokio runtime.
pub fn launch(spec: WorkerSpec, sink: EventSink) -> Result<WorkerProcess, CoreError> {
    keep_exit_statuses();
    let mut command = Command::new(&spec.executable);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        let death_signal = crate::lifeline::parent_death_signal();
        // SAFETY: runs in the forked child before exec; prctl, getppid and _exit
        // are async-signal-safe and touch no memory shared with the parent.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, death_signal);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }

    let mut child = command.spawn().map_err(|source| CoreError::Spawn {
        executable: spec.executable.clone(),
        source,
    })?;
    let os_pid = child.id().unwrap_or(0);
    let (control, control_rx) = mpsc::unbounded_channel();
    let output = Arc::new(WorkerOutput::new(spec.output_limits, 2));
    tokio::spawn(supervise(
        child_parts(&mut child),
        child,
        spec,
        Outlets {
            sink,
            output: output.clone(),
        },
        control_rx,
    ));
    Ok(WorkerProcess {
        os_pid,
        control,
        output,
    })
}

/// Makes sure a worker's exit status can be read when it ends.
///
/// A process that ignores SIGCHLD (`SIG_IGN`, as the BEAM does) has its
/// children reaped by the kernel the moment they exit, and their exit status
/// is lost: waiting for them then fails with `ECHILD`. Listening for SIGCHLD
/// replaces that disposition with a handler for the rest of the process's
/// life (tokio installs the same handler itself once it has an orphaned
/// child to reap). The listener is kept forever; nothing reads it.
fn keep_exit_statuses() {
    static LISTENING: std::sync::Once = std::sync::Once::new();
    LISTENING.call_once(|| {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::child()) {
            Ok(listener) => std::mem::forget(listener),
            Err(e) => {
                eprintln!("snakepit: cannot listen for SIGCHLD, exit statuses may be lost: {e}")
            }
        }
    });
}

struct ChildParts {
    stdin: Option<tokio::process::ChildStdin>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
}

fn child_parts(child: &mut Child) -> ChildParts {
    ChildParts {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    }
}

/// Where a worker's events and output lines go.
struct Outlets {
    sink: EventSink,
    output: Arc<WorkerOutput>,
}

/// The last stderr lines, kept to explain a failed start; `None` once the
/// worker is ready (nothing needs them then, and a flood should not pay for them).
type StderrTail = Arc<Mutex<Option<VecDeque<String>>>>;

async fn supervise(
    parts: ChildParts,
    mut child: Child,
    spec: WorkerSpec,
    outlets: Outlets,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    // Holding stdin open is what keeps the worker alive; it closes when this
    // task ends, or when the whole VM dies.
    let _stdin = parts.stdin;
    let Outlets { sink, output } = outlets;
    let pgid = child.id().unwrap_or(0) as libc::pid_t;
    let tail: StderrTail = Arc::new(Mutex::new(Some(VecDeque::with_capacity(STDERR_TAIL_LINES))));

    let (ready_tx, mut ready_rx) = oneshot::channel();
    match parts.stdout {
        Some(stdout) => {
            tokio::spawn(read_stdout(stdout, output.clone(), ready_tx, sink.clone()));
        }
        None => output.close_writer(),
    }
    let stderr_done = match parts.stderr {
        Some(stderr) => Some(tokio::spawn(read_stderr(stderr, output, tail.clone()))),
        None => {
            output.close_writer();
            None
        }
    };

    let outcome = tokio::select! {
        address = &mut ready_rx => match address {
            Ok(address) => Ok((address, None)),
            // stdout closed without the line: the process is ending.
            Err(_) => Err(None),
        },
        status = child.wait() => {
            let status = exit_info(status);
            // A process that exits right after its ready line may be reaped
            // before the reader has read that line from the pipe.
            match tokio::time::timeout(STDERR_DRAIN, &mut ready_rx).await {
                Ok(Ok(address)) => Ok((address, Some(status))),
                _ => Err(Some(status)),
            }
        }
        _ = tokio::time::sleep(spec.start_timeout) => {
            kill_group(pgid, libc::SIGKILL);
            let _ = child.wait().await;
            sink(WorkerEvent::StartFailed {
                message: format!(
                    "worker {} did not print {READY_PREFIX}<address> within {} ms{}",
                    spec.worker_id,
                    spec.start_timeout.as_millis(),
                    describe_tail(&tail)
                ),
            });
            return;
        }
        _ = control.recv() => {
            kill_group(pgid, libc::SIGKILL);
            let status = exit_info(child.wait().await);
            sink(WorkerEvent::StartFailed {
                message: format!("worker {} was stopped before it was ready ({status})", spec.worker_id),
            });
            return;
        }
    };

    match outcome {
        Ok((address, exited)) => {
            *tail.lock().unwrap_or_else(|e| e.into_inner()) = None;
            sink(WorkerEvent::Ready { address });
            if let Some(status) = exited {
                kill_group(pgid, libc::SIGKILL);
                sink(WorkerEvent::Exited { status });
                return;
            }
        }
        Err(status) => {
            let status = match status {
                Some(status) => status,
                None => exit_info(child.wait().await),
            };
            kill_group(pgid, libc::SIGKILL);
            if let Some(done) = stderr_done {
                let _ = tokio::time::timeout(STDERR_DRAIN, done).await;
            }
            sink(WorkerEvent::StartFailed {
                message: format!(
                    "worker {} exited ({status}) before it was ready{}",
                    spec.worker_id,
                    describe_tail(&tail)
                ),
            });
            return;
        }
    }

    let status = tokio::select! {
        status = child.wait() => exit_info(status),
        request = control.recv() => {
            match request {
                Some(Control::Stop { grace }) => {
                    kill_group(pgid, libc::SIGTERM);
                    match tokio::time::timeout(grace, child.wait()).await {
                        Ok(status) => exit_info(status),
                        Err(_) => {
                            kill_group(pgid, libc::SIGKILL);
                            exit_info(child.wait().await)
                        }
                    }
                }
                // The handle was dropped: nobody wants this worker any more.
                None => {
                    kill_group(pgid, libc::SIGKILL);
                    exit_info(child.wait().await)
                }
            }
        }
    };
    // Children the worker left behind share its process group.
    kill_group(pgid, libc::SIGKILL);
    sink(WorkerEvent::Exited { status });
}

async fn read_stdout(
    stdout: impl AsyncRead + Unpin,
    output: Arc<WorkerOutput>,
    ready: oneshot::Sender<WorkerAddress>,
    sink: EventSink,
) {
    let mut ready = Some(ready);
    let mut recycle_asked = false;
    for_each_line(stdout, |raw, cut| {
        if ready.is_some() {
            if cut == 0 && raw.starts_with(READY_PREFIX.as_bytes()) {
                if let Some(address) = parse_ready_line(&String::from_utf8_lossy(raw)) {
                    let _ = ready.take().map(|tx| tx.send(address));
                    return;
                }
            }
        } else if let Some(reason) = raw.strip_prefix(RECYCLE_PREFIX.as_bytes()) {
            // The worker's protocol, not output; heard once however often
            // it is written (C code may write to fd 1 too).
            if !recycle_asked {
                recycle_asked = true;
                sink(WorkerEvent::Recycle {
                    reason: String::from_utf8_lossy(reason).trim_end().to_owned(),
                });
            }
            return;
        }
        output.offer(LogStream::Stdout, raw, cut);
    })
    .await;
    output.close_writer();
}

async fn read_stderr(stderr: impl AsyncRead + Unpin, output: Arc<WorkerOutput>, tail: StderrTail) {
    for_each_line(stderr, |raw, cut| {
        if let Some(tail) = tail.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_end_matches('\r');
            // A Python log record reads as a log line in a start failure.
            tail.push_back(match crate::log_record::parse(line) {
                Some(record) => record.to_plain(),
                None => line.to_owned(),
            });
        }
        output.offer(LogStream::Stderr, raw, cut);
    })
    .await;
    output.close_writer();
}

/// Calls `each(text, cut)` with every line, without its `\n`, until end of
/// file or a read error. A line longer than [`MAX_LINE_BYTES`] is cut there
/// (`cut` counts the bytes dropped), so a worker that prints without newlines
/// cannot make the VM hold its output in memory. Lines are not decoded here:
/// most lines of a flood are dropped, and only kept ones are worth decoding.
async fn for_each_line(reader: impl AsyncRead + Unpin, mut each: impl FnMut(&[u8], usize)) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let mut line = LineBuffer::default();
    loop {
        let available = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(available) => available,
        };
        let mut used = 0;
        // Every whole line in the buffer, without copying those that start in it.
        while let Some(end) = available[used..].iter().position(|b| *b == b'\n') {
            let text = &available[used..used + end];
            if line.is_empty() {
                let keep = text.len().min(MAX_LINE_BYTES);
                each(&text[..keep], text.len() - keep);
            } else {
                line.push(text);
                line.finish(&mut each);
            }
            used += end + 1;
        }
        line.push(&available[used..]);
        let consumed = available.len();
        reader.consume(consumed);
    }
    if !line.is_empty() {
        line.finish(&mut each);
    }
}

/// Longest log line kept whole (64 KiB); the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// A line that spans reads: at most [`MAX_LINE_BYTES`] kept, the rest counted.
#[derive(Default)]
struct LineBuffer {
    kept: Vec<u8>,
    dropped: usize,
}

impl LineBuffer {
    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES - self.kept.len();
        let keep = bytes.len().min(room);
        self.kept.extend_from_slice(&bytes[..keep]);
        self.dropped += bytes.len() - keep;
    }

    fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.dropped == 0
    }

    /// Hands the line over and empties the buffer.
    fn finish(&mut self, each: &mut impl FnMut(&[u8], usize)) {
        each(&self.kept, self.dropped);
        self.kept.clear();
        self.dropped = 0;
    }
}

/// Parses `GRPC_READY:<port>` or `GRPC_READY:unix:@<name>`; anything else
/// (or port 0) is not a ready line.
pub fn parse_ready_line(line: &str) -> Option<WorkerAddress> {
    WorkerAddress::parse(line.trim().strip_prefix(READY_PREFIX)?)
}

fn describe_tail(tail: &StderrTail) -> String {
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    match tail.as_ref() {
        Some(tail) if !tail.is_empty() => {
            let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
            format!("; its stderr ended with:\n{}", lines.join("\n"))
        }
        _ => String::new(),
    }
}

fn exit_info(status: std::io::Result<std::process::ExitStatus>) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitInfo::Code(code),
            (None, Some(signal)) => ExitInfo::Signal(signal),
            (None, None) => ExitInfo::Code(-1),
        },
        Err(_) => ExitInfo::Code(-1),
    }
}

fn kill_group(pgid: libc::pid_t, signal: libc::c_int) {
    if pgid > 0 {
        // SAFETY: killpg only sends a signal; a stale group id yields ESRCH.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::OutputLine;

    fn collector() -> (EventSink, mpsc::UnboundedReceiver<WorkerEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink: EventSink = Arc::new(move |event| {
            let _ = tx.send(event);
        });
        (sink, rx)
    }

    fn shell(script: &str, timeout_ms: u64) -> WorkerSpec {
        WorkerSpec {
            worker_id: "test-1".into(),
            executable: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            cwd: None,
            start_timeout: Duration::from_millis(timeout_ms),
            output_limits: OutputLimits::default(),
        }
    }

    async fn next_event(rx: &mut mpsc::UnboundedReceiver<WorkerEvent>) -> WorkerEvent {
        rx.recv().await.expect("event")
    }

    /// Every line the worker's output hands over, until it ends.
    async fn all_lines(output: &WorkerOutput) -> Vec<(LogStream, String)> {
        let mut lines = vec![];
        while let Some(batch) = output.next_batch(usize::MAX, usize::MAX).await {
            lines.extend(batch.lines.into_iter().map(|l| (l.stream, l.text)));
        }
        lines
    }

    /// The lines kept so far (already read, before or at a `Ready`).
    async fn lines_so_far(output: &WorkerOutput) -> Vec<OutputLine> {
        tokio::time::timeout(
            Duration::from_millis(100),
            output.next_batch(usize::MAX, usize::MAX),
        )
        .await
        .ok()
        .flatten()
        .map(|batch| batch.lines)
        .unwrap_or_default()
    }

    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[test]
    fn ready_line_parsing() {
        assert_eq!(
            parse_ready_line("GRPC_READY:50051"),
            Some(WorkerAddress::Tcp(50051))
        );
        assert_eq!(
            parse_ready_line("GRPC_READY:unix:@w1"),
            Some(WorkerAddress::Unix("w1".into()))
        );
        assert_eq!(parse_ready_line("GRPC_READY:0"), None);
        assert_eq!(parse_ready_line("GRPC_READY:x"), None);
        assert_eq!(parse_ready_line("hello"), None);
    }

    #[tokio::test]
    async fn a_recycle_line_after_ready_is_an_event() {
        let (sink, mut rx) = collector();
        let worker = launch(
            shell(
                "echo SNAKEPIT_RECYCLE:too early; echo GRPC_READY:4321; \
                 echo SNAKEPIT_RECYCLE:a tool is stuck; read _",
                5000,
            ),
            sink,
        )
        .unwrap();
        // Ready comes from the supervising task, the request from the stdout
        // reader: in either order (a real worker asks only after a call).
        let events = [next_event(&mut rx).await, next_event(&mut rx).await];
        assert!(events.contains(&WorkerEvent::Ready {
            address: WorkerAddress::Tcp(4321)
        }));
        assert!(events.contains(&WorkerEvent::Recycle {
            reason: "a tool is stuck".into()
        }));
        worker.stop(Duration::from_secs(5));
        assert!(matches!(
            next_event(&mut rx).await,
            WorkerEvent::Exited { .. }
        ));
    }

    #[tokio::test]
    async fn handshake_logs_and_exit() {
        let (sink, mut rx) = collector();
        let worker = launch(
            shell(
                "echo before; echo oops >&2; echo GRPC_READY:4321; echo after; exit 3",
                5000,
            ),
            sink,
        )
        .unwrap();
        assert_eq!(
            next_event(&mut rx).await,
            WorkerEvent::Ready {
                address: WorkerAddress::Tcp(4321)
            }
        );
        // It exits on its own, after its last line (stopping it could come
        // before that line is written).
        assert_eq!(
            next_event(&mut rx).await,
            WorkerEvent::Exited {
                status: ExitInfo::Code(3)
            }
        );
        let logs = all_lines(worker.output()).await;
        assert!(logs.contains(&(LogStream::Stdout, "before".into())));
        assert!(logs.contains(&(LogStream::Stdout, "after".into())));
        assert!(logs.contains(&(LogStream::Stderr, "oops".into())));
        assert_eq!(logs.len(), 3, "the ready line is not output: {logs:?}");
    }

    #[tokio::test]
    async fn overlong_lines_are_cut_and_later_lines_still_arrive() {
        let (sink, mut rx) = collector();
        // 1 MB without a newline on stdout, 200 KB on stderr, then short lines.
        let script = "head -c 1000000 /dev/zero | tr '\\0' x; echo; \
                      head -c 200000 /dev/zero | tr '\\0' y >&2; echo >&2; \
                      echo after; echo GRPC_READY:1; read _";
        let worker = launch(shell(script, 10_000), sink).unwrap();
        assert!(matches!(
            next_event(&mut rx).await,
            WorkerEvent::Ready { .. }
        ));
        let output = worker.output().clone();
        drop(worker);
        let logs = all_lines(&output).await;
        let long_out = &logs
            .iter()
            .find(|(s, _)| *s == LogStream::Stdout)
            .unwrap()
            .1;
        let kept = "x".repeat(MAX_LINE_BYTES);
        let cut = format!(
            "{kept} [line cut: {} more bytes dropped]",
            1_000_000 - MAX_LINE_BYTES
        );
        assert!(*long_out == cut, "stdout line of {} bytes", long_out.len());
        let long_err = &logs
            .iter()
            .find(|(s, _)| *s == LogStream::Stderr)
            .unwrap()
            .1;
        assert!(long_err.starts_with(&"y".repeat(MAX_LINE_BYTES)));
        assert!(long_err.ends_with(&format!("{} more bytes dropped]", 200_000 - MAX_LINE_BYTES)));
        assert!(logs.contains(&(LogStream::Stdout, "after".into())));
    }

    #[tokio::test]
    async fn lines_split_across_reads_are_whole() {
        // Lines of every length around the read buffer's size, in one stream.
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (i, len) in [
            0,
            1,
            READ_BUFFER_BYTES - 1,
            READ_BUFFER_BYTES,
            3 * READ_BUFFER_BYTES + 7,
            5,
        ]
        .into_iter()
        .enumerate()
        {
            let line: Vec<u8> = (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
            input.extend_from_slice(&line);
            input.push(b'\n');
            let keep = len.min(MAX_LINE_BYTES);
            expected.push((line[..keep].to_vec(), len - keep));
        }
        input.extend_from_slice(b"no newline at the end");
        expected.push((b"no newline at the end".to_vec(), 0));
        let mut seen = Vec::new();
        for_each_line(&input[..], |raw, cut| seen.push((raw.to_vec(), cut))).await;
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_flood_is_read_to_the_end_while_nobody_consumes() {
        let (sink, mut rx) = collector();
        // 200 MB of short lines on both pipes; nobody takes the output until
        // the worker is done, so the worker finishing proves the pipes were
        // drained while the output was full.
        let script = "echo GRPC_READY:1; \
                      yes 0123456789012345678901234567890123456789 | head -c 100000000 >&2; \
                      yes abcdefghijklmnopqrstuvwxyzabcdefghijklmn | head -c 100000000; \
                      echo last-line >&2; exit 0";
        let mut spec = shell(script, 10_000);
        spec.output_limits = OutputLimits {
            lines_per_second: 10,
            ..OutputLimits::default()
        };
        let started = std::time::Instant::now();
        let worker = launch(spec, sink).unwrap();
        assert!(matches!(
            next_event(&mut rx).await,
            WorkerEvent::Ready { .. }
        ));
        let exited = tokio::time::timeout(Duration::from_secs(60), next_event(&mut rx)).await;
        assert_eq!(
            exited.expect("the worker finished printing"),
            WorkerEvent::Exited {
                status: ExitInfo::Code(0)
            }
        );
        let output = worker.output();
        let mut kept = 0;
        let mut reported = crate::output::Dropped::default();
        while let Some(batch) = output.next_batch(usize::MAX, usize::MAX).await {
            kept += batch.lines.len() as u64;
            if let Some(dropped) = batch.dropped {
                reported.lines += dropped.lines;
                reported.bytes += dropped.bytes;
            }
        }
        // 41 bytes a line, newline included, on each pipe; stderr's partial
        // last line and "last-line" make one line.
        let printed = 2 * (100_000_000u64).div_ceil(41);
        // A second's worth at once, then 10 a second while the flood lasted.
        let allowed = 10 + 10 * (started.elapsed().as_secs() + 1);
        assert!(kept >= 10 && kept <= allowed, "kept {kept} lines");
        assert_eq!(reported, output.dropped_total());
        assert_eq!(kept + reported.lines, printed);
    }

    #[test]
    fn line_buffer_cuts_long_lines() {
        let mut line = LineBuffer::default();
        line.push(b"caf\xc3\xa9");
        line.push(b" ok\r");
        let mut seen = vec![];
        line.finish(&mut |raw: &[u8], cut| seen.push((raw.to_vec(), cut)));
        assert!(line.is_empty());
        line.push(&vec![b'z'; MAX_LINE_BYTES + 5]);
        line.finish(&mut |raw: &[u8], cut| seen.push((raw.to_vec(), cut)));
        assert_eq!(seen[0], (b"caf\xc3\xa9 ok\r".to_vec(), 0));
        assert_eq!((seen[1].0.len(), seen[1].1), (MAX_LINE_BYTES, 5));
    }

    #[tokio::test]
    async fn exit_before_ready_reports_stderr() {
        let (sink, mut rx) = collector();
        let _worker = launch(
            shell("echo 'ImportError: no module' >&2; exit 1", 5000),
            sink,
        )
        .unwrap();
        match next_event(&mut rx).await {
            WorkerEvent::StartFailed { message } => {
                assert!(message.contains("exit status 1"), "{message}");
                assert!(message.contains("ImportError: no module"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn start_timeout_kills_the_worker() {
        let (sink, mut rx) = collector();
        let worker = launch(shell("exec sleep 30", 200), sink).unwrap();
        let pid = worker.os_pid();
        match next_event(&mut rx).await {
            WorkerEvent::StartFailed { message } => assert!(message.contains("within 200 ms")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn dropping_the_handle_kills_the_process_group() {
        let (sink, mut rx) = collector();
        // The grandchild shares the worker's process group and must die too.
        let worker = launch(
            shell("sleep 30 & echo $!; echo GRPC_READY:1; wait", 5000),
            sink,
        )
        .unwrap();
        assert!(matches!(
            next_event(&mut rx).await,
            WorkerEvent::Ready { .. }
        ));
        let lines = lines_so_far(worker.output()).await;
        let grandchild: u32 = lines[0].text.parse().expect("grandchild pid");
        drop(worker);
        assert_eq!(
            next_event(&mut rx).await,
            WorkerEvent::Exited {
                status: ExitInfo::Signal(libc::SIGKILL)
            }
        );
        // SIGKILL is delivered asynchronously; the orphan may linger as a
        // zombie until init reaps it, which counts as gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && !is_zombie(grandchild) {
            assert!(std::time::Instant::now() < deadline, "grandchild survived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    }
}
