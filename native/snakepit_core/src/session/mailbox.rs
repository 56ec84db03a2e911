//! Forwarding a watch into a mailbox that the forwarder cannot see (an
//! Elixir process's), under the same bound as a gRPC watcher.
//!
//! A gRPC watcher is bounded by its store buffer: the stream task takes an
//! update out only when HTTP/2 lets it send, so a client that does not read
//! fills the buffer and the watch ends with [`WatchEnd::Overflow`]. A process
//! mailbox has no such back pressure: a forwarder that moves every update
//! into it at once keeps the store buffer empty and lets an unread mailbox
//! grow without bound (about 10 KiB per update).
//!
//! So the mailbox counts as the watcher's buffer: [`forward`] moves an update
//! into the mailbox only while the mailbox holds fewer than `buffer`
//! messages. Otherwise the updates wait in the store buffer (`buffer` more),
//! and when that is full too the store ends the watch with `Overflow`, as for
//! a gRPC watcher. The updates still waiting are then dropped and the end is
//! delivered at once: the mailbox already holds `buffer` updates the watcher
//! has not read, and the watcher learns sooner that it must watch again. An
//! unread watcher thus costs at most `2 * buffer` updates, however many
//! writes follow.
//!
//! The forwarder cannot read a mailbox's length (the BEAM offers no NIF call
//! for it, and none from a non-scheduler thread), so it asks: it counts the
//! messages it sent since the last answer and, when that may reach
//! `buffer`, asks the [`Mailbox`] for the length (the NIF asks an Elixir
//! process to call `Process.info(pid, :message_queue_len)`). A watcher that
//! reads costs one question per `buffer` updates. While the mailbox is full
//! the forwarder asks again after a pause that doubles from
//! [`RECOUNT_MIN`] to [`RECOUNT_MAX`]: no message tells it that the watcher
//! read. Every message counts, not only the watch's, which errs on the side
//! of less memory.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{VariableUpdate, Watch, WatchEnd};

/// First pause before asking again for the length of a full mailbox.
pub const RECOUNT_MIN: Duration = Duration::from_millis(1);
/// Longest pause between two questions about a full mailbox: how late a
/// watcher that has read everything may get the next update.
pub const RECOUNT_MAX: Duration = Duration::from_millis(64);
/// How long an answer may take before the question is asked again (the
/// process that answers may have been restarted; a late answer is ignored).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a forwarded watch goes.
pub trait Mailbox: Send {
    /// Puts `update` in the mailbox; `false` when the watcher is gone.
    fn deliver(&mut self, update: &VariableUpdate) -> bool;
    /// Tells the watcher that the watch ended (`None`: the store went away).
    fn end(&mut self, end: Option<WatchEnd>);
    /// Asks for the mailbox's length; the answer comes back through the
    /// [`Answers`] paired with this forward, tagged with `question`.
    /// `false` when nobody can answer now.
    fn ask_length(&mut self, question: u64) -> bool;
}

/// The sending half of [`Answers`]: where the mailbox's lengths arrive.
#[derive(Clone, Debug)]
pub struct Answerer {
    tx: mpsc::Sender<(u64, usize)>,
}

impl Answerer {
    /// The mailbox held `length` messages when `question` was answered.
    /// Never waits; an answer nobody waits for is dropped.
    pub fn answer(&self, question: u64, length: usize) {
        let _ = self.tx.try_send((question, length));
    }
}

/// The lengths a [`Mailbox`] reports, for [`forward`].
#[derive(Debug)]
pub struct Answers {
    rx: mpsc::Receiver<(u64, usize)>,
}

impl Answers {
    /// The answer to `question`; answers to earlier questions are stale (the
    /// forwarder may have delivered since) and skipped. `None` once the
    /// [`Answerer`] is gone.
    async fn to(&mut self, question: u64) -> Option<usize> {
        loop {
            let (asked, length) = self.rx.recv().await?;
            if asked == question {
                return Some(length);
            }
        }
    }
}

/// A pair for one forward. Only one question is open at a time, so a small
/// channel holds every answer but stale ones, which may be dropped.
pub fn answers() -> (Answerer, Answers) {
    let (tx, rx) = mpsc::channel(4);
    (Answerer { tx }, Answers { rx })
}

/// Forwards `watch` into `mailbox` until the watch ends (then the end is
/// delivered) or the watcher is gone. Dropping the future drops the watch,
/// which removes it from the store.
pub async fn forward<M: Mailbox>(mut watch: Watch, mut mailbox: M, mut answers: Answers) {
    let limit = watch.buffer().max(1);
    // At most this many messages are in the mailbox: the last length
    // answered plus what was delivered since.
    let mut unread = 0usize;
    let mut question = 0u64;
    let mut pause = RECOUNT_MIN;
    loop {
        if watch.end() == Some(WatchEnd::Overflow) {
            // What is still buffered is dropped with the watch (see above).
            mailbox.end(Some(WatchEnd::Overflow));
            return;
        }
        if unread < limit {
            match watch.recv().await {
                Some(update) => {
                    if !mailbox.deliver(&update) {
                        return;
                    }
                    unread += 1;
                }
                None => {
                    mailbox.end(watch.end());
                    return;
                }
            }
            continue;
        }
        question += 1;
        let answer = if mailbox.ask_length(question) {
            tokio::time::timeout(ANSWER_TIMEOUT, answers.to(question)).await
        } else {
            // Nobody can count now: the mailbox counts as full.
            Ok(Some(limit))
        };
        match answer {
            Ok(Some(length)) if length < limit => {
                unread = length;
                pause = RECOUNT_MIN;
            }
            Ok(Some(_full)) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RECOUNT_MAX);
            }
            // The answerer is gone: so is the handle that held it.
            Ok(None) => return,
            // No answer: ask again.
            Err(_elapsed) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{EndReason, Source, Store, StoreConfig, VariableSpec, VariableWrite};
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// A mailbox in memory: `read` empties it, as a reading watcher would.
    #[derive(Clone, Default)]
    struct Inbox {
        state: Arc<Mutex<InboxState>>,
    }

    #[derive(Default)]
    struct InboxState {
        queued: Vec<u64>,
        read: Vec<u64>,
        most_queued: usize,
        ended: Option<Option<WatchEnd>>,
        questions: Vec<u64>,
        answerer: Option<Answerer>,
        /// Whether questions are answered (a counting process is up).
        answering: bool,
        gone: bool,
    }

    impl Inbox {
        fn new(answerer: Answerer) -> Inbox {
            let inbox = Inbox::default();
            {
                let mut state = inbox.state.lock().unwrap();
                state.answerer = Some(answerer);
                state.answering = true;
            }
            inbox
        }

        fn with<T>(&self, f: impl FnOnce(&mut InboxState) -> T) -> T {
            f(&mut self.state.lock().unwrap())
        }

        fn read(&self) -> Vec<u64> {
            self.with(|s| {
                let batch = std::mem::take(&mut s.queued);
                s.read.extend(&batch);
                batch
            })
        }
    }

    impl Mailbox for Inbox {
        fn deliver(&mut self, update: &VariableUpdate) -> bool {
            self.with(|s| {
                s.queued.push(update.variable.version);
                s.most_queued = s.most_queued.max(s.queued.len());
                !s.gone
            })
        }

        fn end(&mut self, end: Option<WatchEnd>) {
            self.with(|s| s.ended = Some(end));
        }

        fn ask_length(&mut self, question: u64) -> bool {
            self.with(|s| {
                s.questions.push(question);
                if s.answering {
                    s.answerer
                        .as_ref()
                        .unwrap()
                        .answer(question, s.queued.len());
                }
                s.answering
            })
        }
    }

    fn session() -> Arc<Store> {
        let store = Store::new(StoreConfig::default());
        store.create_session("s", None, HashMap::new()).unwrap();
        store
            .register_variable(
                "s",
                VariableSpec {
                    name: "x".into(),
                    var_type: "integer".into(),
                    value: json!(0),
                    constraints: json!(null),
                    metadata: HashMap::new(),
                },
                Source::Elixir,
            )
            .unwrap();
        store
    }

    fn set(store: &Store, value: i64) -> Result<(), crate::session::StoreError> {
        store
            .set_variable(
                "s",
                VariableWrite {
                    identifier: "x".into(),
                    value: json!(value),
                    expected_version: None,
                    metadata: HashMap::new(),
                },
                Source::Elixir,
            )
            .map(|_| ())
    }

    fn start(store: &Arc<Store>, buffer: usize) -> (Inbox, tokio::task::JoinHandle<()>) {
        let watch = store.watch("s", &["x".to_string()], false, buffer).unwrap();
        let (answerer, answers) = answers();
        let inbox = Inbox::new(answerer);
        let task = tokio::spawn(forward(watch, inbox.clone(), answers));
        (inbox, task)
    }

    /// Lets the forwarder run until it waits (paused time: instantly).
    async fn settle() {
        tokio::time::sleep(RECOUNT_MAX * 4).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_unread_mailbox_holds_at_most_the_buffer_then_the_watch_overflows() {
        let store = session();
        let (inbox, task) = start(&store, 8);
        for i in 1..=1_000 {
            set(&store, i).unwrap();
            if i % 5 == 0 {
                settle().await;
            }
        }
        task.await.unwrap();
        inbox.with(|s| {
            assert_eq!(s.most_queued, 8);
            assert_eq!(s.ended, Some(Some(WatchEnd::Overflow)));
            // The first updates, in order; the rest was dropped.
            assert_eq!(s.queued, (2..=9).collect::<Vec<_>>());
        });
        assert_eq!(store.watcher_count("s"), Ok(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_watcher_gets_everything_in_order_and_few_questions() {
        let store = session();
        let (inbox, task) = start(&store, 16);
        for i in 1..=2_000 {
            set(&store, i).unwrap();
            if i % 10 == 0 {
                settle().await;
                inbox.read();
            }
        }
        settle().await;
        inbox.read();
        store.delete_session("s");
        task.await.unwrap();
        inbox.with(|s| {
            assert_eq!(s.read, (2..=2_001).collect::<Vec<_>>());
            assert_eq!(
                s.ended,
                Some(Some(WatchEnd::SessionEnded(EndReason::Deleted)))
            );
            assert!(s.most_queued <= 16);
            // About one question per `buffer` updates.
            assert!(s.questions.len() <= 2_000 / 10, "{}", s.questions.len());
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_mailbox_that_is_read_later_gets_the_waiting_updates() {
        let store = session();
        let (inbox, task) = start(&store, 4);
        for i in 1..=4 {
            set(&store, i).unwrap();
        }
        settle().await;
        // The mailbox is full: these wait in the store's buffer.
        set(&store, 5).unwrap();
        set(&store, 6).unwrap();
        settle().await;
        assert_eq!(inbox.read(), vec![2, 3, 4, 5]);
        // Asked again after a pause, the mailbox is empty: the rest comes.
        settle().await;
        assert_eq!(inbox.read(), vec![6, 7]);
        assert!(inbox.with(|s| s.ended.is_none()));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_answering_means_the_mailbox_counts_as_full() {
        let store = session();
        let (inbox, task) = start(&store, 2);
        inbox.with(|s| s.answering = false);
        for i in 1..=5 {
            set(&store, i).unwrap();
            settle().await;
        }
        task.await.unwrap();
        inbox.with(|s| {
            assert_eq!(s.queued, vec![2, 3]);
            assert_eq!(s.ended, Some(Some(WatchEnd::Overflow)));
            assert!(s.questions.len() >= 2);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_end_comes_after_the_updates_before_it() {
        let store = session();
        let (inbox, task) = start(&store, 2);
        set(&store, 1).unwrap();
        set(&store, 2).unwrap();
        settle().await;
        // The mailbox is full: this one waits in the store's buffer.
        set(&store, 3).unwrap();
        store.delete_session("s");
        settle().await;
        assert_eq!(inbox.read(), vec![2, 3]);
        task.await.unwrap();
        assert_eq!(inbox.read(), vec![4]);
        assert_eq!(
            inbox.with(|s| s.ended),
            Some(Some(WatchEnd::SessionEnded(EndReason::Deleted)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_watcher_ends_the_forward_and_the_watch() {
        let store = session();
        let (inbox, task) = start(&store, 8);
        inbox.with(|s| s.gone = true);
        set(&store, 1).unwrap();
        task.await.unwrap();
        assert_eq!(store.watcher_count("s"), Ok(0));
        assert!(inbox.with(|s| s.ended.is_none()));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_answers_are_skipped() {
        let (answerer, mut answers) = answers();
        answerer.answer(1, 10);
        answerer.answer(2, 3);
        assert_eq!(answers.to(2).await, Some(3));
        drop(answerer);
        assert_eq!(answers.to(3).await, None);
    }
}
