//! A watcher's end of the store: a bounded receiver of updates.
//!
//! The store keeps a [`Watcher`] (the sending half and what it watches) in
//! the session; the caller holds the [`Watch`]. Writers `try_send` under the
//! store's lock, so a watcher sees each variable's changes in version order
//! and a slow watcher never makes a writer wait.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, Weak};

use tokio::sync::mpsc;

use super::{EndReason, Store, VariableUpdate};

/// Why a watch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// Its buffer overflowed; updates were dropped from then on.
    Overflow,
    /// Its session ended.
    SessionEnded(EndReason),
}

/// Receives the updates of a watch. Dropping it removes the watcher from the
/// store at once.
pub struct Watch {
    id: u64,
    session: String,
    store: Weak<Store>,
    rx: mpsc::Receiver<VariableUpdate>,
    end: Arc<OnceLock<WatchEnd>>,
    buffer: usize,
}

impl Watch {
    pub(super) fn new(
        id: u64,
        session: String,
        store: Weak<Store>,
        rx: mpsc::Receiver<VariableUpdate>,
        end: Arc<OnceLock<WatchEnd>>,
        buffer: usize,
    ) -> Watch {
        Watch {
            id,
            session,
            store,
            rx,
            end,
            buffer,
        }
    }

    /// The next update; `None` once the watch ended (see [`Watch::end`]) and
    /// everything buffered was received.
    pub async fn recv(&mut self) -> Option<VariableUpdate> {
        self.rx.recv().await
    }

    /// Why the watch ended, once `recv` returned `None`.
    ///
    /// The reason is recorded before the store lets go of the sending half,
    /// so it is always there when `recv` has returned `None`.
    pub fn end(&self) -> Option<WatchEnd> {
        self.end.get().copied()
    }

    /// Updates the store holds for this watch before it overflows (the
    /// default already applied).
    pub fn buffer(&self) -> usize {
        self.buffer
    }

    /// Unique in the store; identifies the watch in logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What is buffered right now, without waiting (tests only).
    #[cfg(test)]
    pub(super) fn rx_try_recv(&mut self) -> Option<VariableUpdate> {
        self.rx.try_recv().ok()
    }

    /// The session watched.
    pub fn session(&self) -> &str {
        &self.session
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("id", &self.id)
            .field("session", &self.session)
            .field("end", &self.end())
            .finish_non_exhaustive()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Never blocks for long: the store's lock is only ever held briefly.
        if let Some(store) = self.store.upgrade() {
            store.remove_watcher(&self.session, self.id);
        }
    }
}

/// The store's half of a watch.
pub(super) struct Watcher {
    pub(super) id: u64,
    /// Variable ids watched (given as ids, or resolved from names).
    ids: HashSet<String>,
    /// Names watched; a variable registered again under one is followed.
    names: HashSet<String>,
    tx: mpsc::Sender<VariableUpdate>,
    end: Arc<OnceLock<WatchEnd>>,
}

/// What became of a delivery.
pub(super) enum Delivery {
    Kept,
    /// The watcher is gone; remove it.
    Remove,
}

impl Watcher {
    pub(super) fn new(
        id: u64,
        ids: HashSet<String>,
        names: HashSet<String>,
        tx: mpsc::Sender<VariableUpdate>,
        end: Arc<OnceLock<WatchEnd>>,
    ) -> Watcher {
        Watcher {
            id,
            ids,
            names,
            tx,
            end,
        }
    }

    pub(super) fn watches(&self, id: &str, name: &str) -> bool {
        self.ids.contains(id) || self.names.contains(name)
    }

    /// Whether the `Watch` still exists.
    pub(super) fn is_live(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Hands `update` over without waiting. A full buffer ends the watch
    /// with `Overflow`: its receiver drains what it has, then sees the end.
    pub(super) fn deliver(&self, update: VariableUpdate) -> Delivery {
        match self.tx.try_send(update) {
            Ok(()) => Delivery::Kept,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let _ = self.end.set(WatchEnd::Overflow);
                Delivery::Remove
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Remove,
        }
    }

    /// Ends the watch because its session ended; dropping `self` closes
    /// the channel.
    pub(super) fn session_ended(self, reason: EndReason) {
        let _ = self.end.set(WatchEnd::SessionEnded(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Source, StoreConfig, Variable, VariableSpec, VariableWrite};
    use serde_json::json;
    use std::collections::HashMap;

    fn session_with_variable() -> (Arc<Store>, Variable) {
        let store = Store::new(StoreConfig::default());
        store.create_session("s", None, HashMap::new()).unwrap();
        let variable = store
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
        (store, variable)
    }

    fn set(store: &Store, value: i64) {
        store
            .set_variable(
                "s",
                VariableWrite {
                    identifier: "x".into(),
                    value: json!(value),
                    expected_version: None,
                    metadata: HashMap::new(),
                },
                Source::Python,
            )
            .unwrap();
    }

    #[test]
    fn watcher_matches_by_id_or_name() {
        let (tx, _rx) = mpsc::channel(1);
        let watcher = Watcher::new(
            1,
            HashSet::from(["var_1".to_string()]),
            HashSet::from(["x".to_string()]),
            tx,
            Arc::new(OnceLock::new()),
        );
        assert!(watcher.watches("var_1", "other"));
        assert!(watcher.watches("var_9", "x"));
        assert!(!watcher.watches("var_9", "y"));
    }

    #[tokio::test]
    async fn end_is_known_once_recv_returns_none() {
        let (store, _) = session_with_variable();
        let mut watch = store.watch("s", &["x".to_string()], false, 1).unwrap();
        assert_eq!(watch.session(), "s");
        set(&store, 1);
        set(&store, 2);
        assert!(watch.end().is_some());
        assert_eq!(watch.recv().await.unwrap().variable.value, json!(1));
        assert!(watch.recv().await.is_none());
        assert_eq!(watch.end(), Some(WatchEnd::Overflow));
        assert!(format!("{watch:?}").contains("Overflow"));
    }

    #[tokio::test]
    async fn recv_waits_for_a_write_from_another_thread() {
        let (store, variable) = session_with_variable();
        let mut watch = store
            .watch("s", std::slice::from_ref(&variable.id), false, 0)
            .unwrap();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                set(&store, 42);
            })
        };
        let update = watch.recv().await.unwrap();
        assert_eq!(update.variable.value, json!(42));
        assert_eq!(update.source, Source::Python);
        writer.join().unwrap();
    }

    #[test]
    fn huge_buffers_are_refused() {
        let (store, _) = session_with_variable();
        let max = crate::session::MAX_WATCH_BUFFER;
        assert!(store.watch("s", &["x".to_string()], true, max).is_ok());
        let error = store
            .watch("s", &["x".to_string()], true, usize::MAX)
            .unwrap_err();
        assert_eq!(error.reason(), "invalid_argument");
    }
}
