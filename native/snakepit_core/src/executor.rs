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
//! [`Executor::unstick`] wakes idle threads or starts new ones, and every
//! thread serves the same queue, in order.
//!
//! Threads take jobs from the front of the queue, so the thread sent for one
//! call may well take an earlier one (the hand-off timers of calls queued
//! together fire in any order). `unstick` therefore counts: it makes sure
//! that the threads on their way to the queue (woken or starting, not yet
//! holding a job) are at least as many as the jobs waiting up to and
//! including its own, so its job is taken however the threads are shared
//! out. Threads stay once started (each keeps a Python thread state, see
//! `thread_state.rs`); there are never more than the most jobs that were
//! ever running or waiting at once.

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
    /// Threads waiting for work, and threads running a job (or on their
    /// way to take one).
    idle: usize,
    busy: usize,
    /// Wake-ups sent to idle threads and not yet taken.
    wakeups: usize,
    /// Threads started and not yet at the queue.
    arriving: usize,
}

impl State {
    /// Threads on their way to the queue: each will take the job at its
    /// front, if there is one by then. (A woken thread takes a job in the
    /// same critical section as its wake-up, so it is counted until then.)
    fn on_their_way(&self) -> usize {
        self.wakeups + self.arriving
    }

    /// Jobs queued up to and including `ticket` that no thread took yet.
    fn waiting_up_to(&self, ticket: Ticket) -> usize {
        // At most the queue's length, which is a usize.
        (ticket.0 + 1).saturating_sub(self.started) as usize
    }
}

/// Threads to send to the queue, counted in [`State`] under the lock and
/// woken or started once it is released.
#[derive(Default)]
struct Runners {
    wake: usize,
    start: usize,
}

impl Runners {
    /// An idle thread to wake if one is not due a wake-up already, else a
    /// new thread.
    fn add(&mut self, state: &mut State) {
        if state.idle > state.wakeups {
            state.wakeups += 1;
            self.wake += 1;
        } else {
            state.busy += 1;
            state.arriving += 1;
            self.start += 1;
        }
    }
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
        let mut runners = Runners::default();
        if state.busy == 0 && state.wakeups == 0 {
            runners.add(&mut state);
        }
        drop(state);
        self.send(runners);
        ticket
    }

    /// Whether the job of `ticket` has started.
    pub fn started(&self, ticket: Ticket) -> bool {
        self.state().started > ticket.0
    }

    /// Sends threads to the queue if the job of `ticket` is still waiting
    /// (the threads before it are held up): as many as it takes for every job
    /// up to and including it to be taken, counting those already on their
    /// way. Jobs queued before `ticket` waited longer than it did, so they
    /// are due a thread too.
    pub fn unstick(&self, ticket: Ticket) {
        let mut state = self.state();
        let mut runners = Runners::default();
        while state.on_their_way() < state.waiting_up_to(ticket) {
            runners.add(&mut state);
        }
        drop(state);
        self.send(runners);
    }

    /// Wakes and starts the threads counted in `runners` (outside the lock:
    /// they need it to take their jobs).
    fn send(&self, runners: Runners) {
        for _ in 0..runners.wake {
            self.shared.work.notify_one();
        }
        for _ in 0..runners.start {
            let executor = self.clone();
            let spawned = std::thread::Builder::new()
                .name(self.shared.thread_name.clone())
                .spawn(move || executor.run());
            if let Err(e) = spawned {
                // The jobs still run on the threads there are.
                eprintln!("snakepit: cannot start an executor thread: {e}");
                let mut state = self.state();
                state.busy -= 1;
                state.arriving -= 1;
            }
        }
    }

    /// The loop of one thread: run queued jobs, wait when there are none.
    fn run(&self) {
        (self.shared.on_thread_start)();
        let mut state = self.state();
        state.arriving -= 1;
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

    /// Submits a job that waits until `release` is dropped or sent to.
    fn held(executor: &Executor) -> (Ticket, mpsc::Sender<()>) {
        let (release, held) = mpsc::channel::<()>();
        let ticket = executor.submit(move || {
            let _ = held.recv();
        });
        (ticket, release)
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 5 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_last_job_unstuck_first_is_not_left_behind() {
        // Hand-off timers of calls queued together fire in any order: the
        // thread sent for the last job takes the first one waiting, and when
        // that job's own timer fires it has started already.
        let executor = Executor::new("test-executor", || {});
        let (_first, _release_first) = held(&executor);
        wait_until("the first job started", || executor.started(_first));
        let (second, _release_second) = held(&executor);
        let (third, _release_third) = held(&executor);
        let (tx, rx) = mpsc::channel();
        let quick = executor.submit(move || tx.send(()).unwrap());

        executor.unstick(quick);
        wait_until("the second job started", || executor.started(second));
        executor.unstick(second);
        executor.unstick(third);

        rx.recv_timeout(Duration::from_secs(5))
            .expect("the quick job ran beside the three held ones");
        assert!(executor.started(third));
    }

    #[test]
    fn unsticking_starts_no_more_threads_than_jobs_waiting() {
        static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let executor = Executor::new("test-executor", || {
            THREADS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let jobs: Vec<_> = (0..5).map(|_| held(&executor)).collect();
        // Every hand-off, in reverse order and twice over.
        for _ in 0..2 {
            for (ticket, _) in jobs.iter().rev() {
                executor.unstick(*ticket);
            }
        }
        wait_until("every job started", || {
            jobs.iter().all(|(ticket, _)| executor.started(*ticket))
        });
        assert_eq!(THREADS.load(std::sync::atomic::Ordering::SeqCst), 5);
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
