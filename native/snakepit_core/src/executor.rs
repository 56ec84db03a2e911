//! The threads that run a worker's unary tool calls (in Python).
//!
//! Sync Python code runs one thread at a time (the GIL), so one thread that
//! runs queued calls back to back does the work of many, without handing the
//! GIL from thread to thread and without waking a thread per call. Under load
//! that is most of the difference: with a pool of 4 workers at 64 concurrent
//! callers, one thread per worker served about 20% more calls per second
//! than a thread per call (see `bench/`).
//!
//! A tool may wait outside the GIL for long (I/O, `time.sleep`, NumPy), and
//! calls queued behind it must not wait with it. So a call that has not
//! started within [`HANDOFF`] of being queued gets a thread of its own:
//! [`Executor::unstick`] wakes an idle thread or starts one, and every thread
//! serves the same queue, in order. Threads stay once started (each keeps a
//! Python thread state, see `thread_state.rs`); there are never more than the
//! most calls that were ever stuck at once.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a queued call waits for a busy thread before it gets its own.
pub const HANDOFF: Duration = Duration::from_millis(1);

type Job = Box<dyn FnOnce() + Send>;

/// A FIFO of Python calls and the threads that run them.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    /// Runs first on every new thread.
    on_thread_start: fn(),
    thread_name: String,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Jobs ever queued, and ever taken by a thread: job `n` has started
    /// once `started > n` (jobs start in queue order).
    queued: u64,
    started: u64,
    /// Threads waiting for work, and threads running a job.
    idle: usize,
    busy: usize,
    /// Wake-ups sent to idle threads and not yet taken.
    wakeups: usize,
}

/// The number of a submitted job, to ask whether it started.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl Executor {
    /// An executor whose threads are named `thread_name` and run
    /// `on_thread_start` before any job.
    pub fn new(thread_name: &str, on_thread_start: fn()) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                on_thread_start,
                thread_name: thread_name.to_owned(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so nothing panics while holding it.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job`. It runs on a thread that is free now, or after the jobs
    /// ahead of it on a busy one; see [`Executor::unstick`].
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> Ticket {
        let mut state = self.state();
        let ticket = Ticket(state.queued);
        state.queued += 1;
        state.queue.push_back(Box::new(job));
        // A busy thread takes the job when it is done; otherwise one must run.
        if state.busy == 0 && state.wakeups == 0 {
            self.add_runner(state);
        }
        ticket
    }

    /// Whether the job of `ticket` has started.
    pub fn started(&self, ticket: Ticket) -> bool {
        self.state().started > ticket.0
    }

    /// Gives the queue another thread if the job of `ticket` is still
    /// waiting: the threads before it are held up.
    pub fn unstick(&self, ticket: Ticket) {
        let state = self.state();
        if state.started <= ticket.0 {
            self.add_runner(state);
        }
    }

    /// Wakes an idle thread, or starts a new one.
    fn add_runner(&self, mut state: MutexGuard<'_, State>) {
        if state.idle > state.wakeups {
            state.wakeups += 1;
            drop(state);
            self.shared.work.notify_one();
            return;
        }
        state.busy += 1;
        drop(state);
        let executor = self.clone();
        let spawned = std::thread::Builder::new()
            .name(self.shared.thread_name.clone())
            .spawn(move || executor.run());
        if let Err(e) = spawned {
            // The jobs still run on the threads there are.
            eprintln!("snakepit: cannot start an executor thread: {e}");
            self.state().busy -= 1;
        }
    }

    /// The loop of one thread: run queued jobs, wait when there are none.
    fn run(&self) {
        (self.shared.on_thread_start)();
        let mut state = self.state();
        loop {
            if let Some(job) = state.queue.pop_front() {
                state.started += 1;
                drop(state);
                // A panicking job must not take the thread (and its count) with it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    eprintln!("snakepit: a job panicked on an executor thread");
                }
                state = self.state();
                continue;
            }
            state.busy -= 1;
            state.idle += 1;
            while state.wakeups == 0 {
                state = self
                    .shared
                    .work
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            state.wakeups -= 1;
            state.idle -= 1;
            state.busy += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn runs_jobs_in_order_on_one_thread() {
        let executor = Executor::new("test-executor", || {});
        let (tx, rx) = mpsc::channel();
        for i in 0..100 {
            let tx = tx.clone();
            executor.submit(move || tx.send((i, std::thread::current().id())).unwrap());
        }
        let done: Vec<_> = (0..100).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(
            done.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        // Submitted faster than they run: one thread drained them all.
        assert!(done.iter().all(|(_, id)| *id == done[0].1));
    }

    #[test]
    fn a_stuck_job_does_not_hold_up_the_next_one_once_unstuck() {
        let executor = Executor::new("test-executor", || {});
        let (release, held) = mpsc::channel::<()>();
        executor.submit(move || held.recv().unwrap());
        let (tx, rx) = mpsc::channel();
        let ticket = executor.submit(move || tx.send(()).unwrap());
        assert!(
            rx.recv_timeout(HANDOFF * 20).is_err(),
            "queued behind the first"
        );
        assert!(!executor.started(ticket));
        let asked = Instant::now();
        executor.unstick(ticket);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("ran on another thread");
        assert!(executor.started(ticket));
        assert!(asked.elapsed() < Duration::from_secs(5));
        release.send(()).unwrap();
    }

    #[test]
    fn idle_threads_are_reused() {
        let executor = Executor::new("test-executor", || {});
        let (tx, rx) = mpsc::channel();
        let mut threads = std::collections::HashSet::new();
        for _ in 0..20 {
            let tx = tx.clone();
            executor.submit(move || tx.send(std::thread::current().id()).unwrap());
            threads.insert(rx.recv().unwrap());
        }
        assert_eq!(threads.len(), 1);
    }
}
