//! The store itself: sessions keyed by id, each with its variables and watchers.
//!
//! One `std::sync::Mutex` guards everything. It is never held across an
//! await or while calling out (the end listener runs after it is released),
//! and every operation under it is bounded by the size of one session, so
//! callers on tokio threads and BEAM dirty schedulers alike can take it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::pattern;
use super::types::{validate_constraints, validate_value, VarType};
use super::watch::{Delivery, Watcher};
use super::{
    EndReason, SessionInfo, Source, StoreError, UpdateType, Variable, VariableSpec, VariableUpdate,
    VariableWrite, Watch,
};

/// Longest session id and variable name, in bytes.
const MAX_IDENTIFIER_BYTES: usize = 256;

/// Longest time to live: what the wire's `uint32 ttl_seconds` can say.
const MAX_TTL: Duration = Duration::from_secs(u32::MAX as u64);

/// Largest buffer a watcher may ask for.
pub const MAX_WATCH_BUFFER: usize = 1 << 20;

/// Limits and defaults of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Most sessions the node holds at once.
    pub max_sessions: usize,
    /// Most variables one session holds.
    pub max_variables_per_session: usize,
    /// Time to live of a session created without one.
    pub default_ttl: Duration,
    /// Buffer of a watcher that asked for none.
    pub default_watch_buffer: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            max_variables_per_session: 1_000,
            default_ttl: Duration::from_secs(3600),
            default_watch_buffer: 1024,
        }
    }
}

/// Called (outside the store's lock) for every session that ends.
pub type EndListener = Arc<dyn Fn(&str, EndReason) + Send + Sync>;

/// The node's sessions. Shared as `Arc<Store>` so watches can find their
/// way back to remove themselves.
pub struct Store {
    config: StoreConfig,
    inner: Mutex<Inner>,
    listener: Mutex<Option<EndListener>>,
}

struct Inner {
    sessions: HashMap<String, Session>,
    next_variable: u64,
    next_watcher: u64,
}

struct Session {
    id: String,
    created_at: SystemTime,
    last_used: SystemTime,
    ttl: Duration,
    metadata: HashMap<String, String>,
    /// By id.
    variables: HashMap<String, Variable>,
    /// Name to id.
    names: HashMap<String, String>,
    watchers: Vec<Watcher>,
}

impl Session {
    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used,
            ttl: self.ttl,
            expires_at: self.expires_at(),
            metadata: self.metadata.clone(),
            variable_count: self.variables.len(),
            watcher_count: self.live_watchers(),
        }
    }

    fn expires_at(&self) -> SystemTime {
        // `ttl <= MAX_TTL`, so this only saturates for absurd clocks.
        self.last_used
            .checked_add(self.ttl)
            .unwrap_or(self.last_used)
    }

    fn live_watchers(&self) -> usize {
        self.watchers.iter().filter(|w| w.is_live()).count()
    }

    /// The id of the variable named or identified by `identifier`: ids first,
    /// then names (names never look like ids, see `check_variable_name`).
    fn resolve(&self, identifier: &str) -> Option<&str> {
        if let Some((id, _)) = self.variables.get_key_value(identifier) {
            return Some(id);
        }
        self.names.get(identifier).map(String::as_str)
    }

    fn variable(&self, identifier: &str) -> Option<&Variable> {
        self.resolve(identifier)
            .and_then(|id| self.variables.get(id))
    }

    fn not_found(&self, identifier: &str) -> StoreError {
        StoreError::VariableNotFound {
            session: self.id.clone(),
            identifier: identifier.to_string(),
        }
    }

    /// Hands `update` to every watcher of its variable; drops the watchers
    /// that overflowed or went away. O(watchers of the session).
    fn notify(&mut self, update: &VariableUpdate) {
        let (id, name) = (&update.variable.id, &update.variable.name);
        self.watchers.retain(|watcher| {
            if !watcher.watches(id, name) {
                return true;
            }
            match watcher.deliver(update.clone()) {
                Delivery::Kept => true,
                Delivery::Remove => false,
            }
        });
    }

    fn end_watchers(&mut self, reason: EndReason) {
        for watcher in self.watchers.drain(..) {
            watcher.session_ended(reason);
        }
    }
}

impl Store {
    /// An empty store; in an `Arc` because watches keep a weak reference.
    pub fn new(config: StoreConfig) -> Arc<Store> {
        Arc::new(Store {
            config,
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                next_variable: 1,
                next_watcher: 1,
            }),
            listener: Mutex::new(None),
        })
    }

    /// The limits it was made with (the bridge reports the defaults).
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Sets the listener told about ended sessions (replaces any previous one).
    pub fn set_end_listener(&self, listener: EndListener) {
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    /// Creates the session, or renews and returns the existing one.
    /// `id == ""` generates one; `ttl == None` uses the default.
    pub fn create_session(
        &self,
        id: &str,
        ttl: Option<Duration>,
        metadata: HashMap<String, String>,
    ) -> Result<SessionInfo, StoreError> {
        let ttl = ttl.unwrap_or(self.config.default_ttl);
        if ttl > MAX_TTL {
            return Err(StoreError::InvalidArgument(format!(
                "a session's time to live is at most {} seconds",
                MAX_TTL.as_secs()
            )));
        }
        if !id.is_empty() {
            check_identifier("session id", id)?;
        }
        let now = SystemTime::now();
        let mut inner = self.lock();
        if let Some(session) = inner.sessions.get_mut(id) {
            session.last_used = now;
            return Ok(session.info());
        }
        if inner.sessions.len() >= self.config.max_sessions {
            return Err(StoreError::SessionQuotaExceeded {
                max: self.config.max_sessions,
            });
        }
        let id = if id.is_empty() {
            loop {
                let candidate = format!("session_{:016x}", rand::random::<u64>());
                if !inner.sessions.contains_key(&candidate) {
                    break candidate;
                }
            }
        } else {
            id.to_string()
        };
        let session = Session {
            id: id.clone(),
            created_at: now,
            last_used: now,
            ttl,
            metadata,
            variables: HashMap::new(),
            names: HashMap::new(),
            watchers: Vec::new(),
        };
        let info = session.info();
        inner.sessions.insert(id, session);
        Ok(info)
    }

    /// Renews and returns the session.
    pub fn touch_session(&self, id: &str) -> Result<SessionInfo, StoreError> {
        let mut inner = self.lock();
        Ok(session_mut(&mut inner, id)?.info())
    }

    /// Returns whether it existed; its watchers end with `WatchEnd::SessionEnded(Deleted)`.
    pub fn delete_session(&self, id: &str) -> bool {
        let removed = {
            let mut inner = self.lock();
            inner.sessions.remove(id).map(|mut session| {
                session.end_watchers(EndReason::Deleted);
                session
            })
        };
        // The session (its variables) is dropped outside the lock.
        let existed = removed.is_some();
        if existed {
            self.tell_ended(&[id.to_string()], EndReason::Deleted);
        }
        existed
    }

    /// Sorted by id.
    pub fn list_sessions(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> =
            self.lock().sessions.values().map(Session::info).collect();
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        sessions
    }

    /// Live watchers of the session (watch streams and Elixir watchers).
    pub fn watcher_count(&self, session: &str) -> Result<usize, StoreError> {
        let inner = self.lock();
        inner
            .sessions
            .get(session)
            .map(Session::live_watchers)
            .ok_or_else(|| StoreError::SessionNotFound(session.to_string()))
    }

    /// Ends every session unused for longer than its ttl at `now`; returns their ids.
    pub fn expire_sessions(&self, now: SystemTime) -> Vec<String> {
        let ended: Vec<Session> = {
            let mut inner = self.lock();
            let expired: Vec<String> = inner
                .sessions
                .values()
                .filter(|s| s.expires_at() < now)
                .map(|s| s.id.clone())
                .collect();
            expired
                .iter()
                .filter_map(|id| inner.sessions.remove(id))
                .map(|mut session| {
                    session.end_watchers(EndReason::Expired);
                    session
                })
                .collect()
        };
        let mut ids: Vec<String> = ended.into_iter().map(|s| s.id).collect();
        ids.sort();
        self.tell_ended(&ids, EndReason::Expired);
        ids
    }

    /// Adds a variable at version 1 after checking its name, type,
    /// constraints and value; watchers of its name (left from a deleted
    /// variable) receive it as a `ValueChange` without old value.
    pub fn register_variable(
        &self,
        session: &str,
        spec: VariableSpec,
        source: Source,
    ) -> Result<Variable, StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let session = session_mut_in(&mut inner.sessions, session)?;
        check_variable_name(&spec.name)?;
        let var_type = VarType::parse(&spec.var_type)?;
        let constraints = validate_constraints(var_type, &spec.constraints)?;
        let value = validate_value(&spec.name, var_type, &constraints, &spec.value)?;
        if session.names.contains_key(&spec.name) {
            return Err(StoreError::VariableExists(spec.name));
        }
        if session.variables.len() >= self.config.max_variables_per_session {
            return Err(StoreError::VariableQuotaExceeded {
                session: session.id.clone(),
                max: self.config.max_variables_per_session,
            });
        }
        let id = format!("var_{}", inner.next_variable);
        inner.next_variable += 1;
        let now = SystemTime::now();
        let variable = Variable {
            id: id.clone(),
            name: spec.name.clone(),
            var_type,
            value,
            constraints,
            metadata: spec.metadata,
            version: 1,
            source,
            update_metadata: HashMap::new(),
            created_at: now,
            updated_at: now,
        };
        session.names.insert(spec.name, id.clone());
        session.variables.insert(id, variable.clone());
        // Watchers of the name (from before a deletion) follow the new one.
        if !session.watchers.is_empty() {
            session.notify(&VariableUpdate {
                update_type: UpdateType::ValueChange,
                variable: variable.clone(),
                old_value: None,
                source,
                metadata: HashMap::new(),
                timestamp: now,
            });
        }
        Ok(variable)
    }

    /// One variable, by id or name.
    pub fn get_variable(&self, session: &str, identifier: &str) -> Result<Variable, StoreError> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session)?;
        session
            .variable(identifier)
            .cloned()
            .ok_or_else(|| session.not_found(identifier))
    }

    /// Found variables in the order asked, and the identifiers not found.
    pub fn get_variables(
        &self,
        session: &str,
        identifiers: &[String],
    ) -> Result<(Vec<Variable>, Vec<String>), StoreError> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session)?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for identifier in identifiers {
            match session.variable(identifier) {
                Some(variable) => found.push(variable.clone()),
                None => missing.push(identifier.clone()),
            }
        }
        Ok((found, missing))
    }

    /// One write: a batch of one (see [`Store::set_variables`]).
    pub fn set_variable(
        &self,
        session: &str,
        write: VariableWrite,
        source: Source,
    ) -> Result<Variable, StoreError> {
        let mut written = self.set_variables(session, vec![write], source)?;
        Ok(written.pop().expect("one write gives one variable"))
    }

    /// All validated first, then all applied; or none.
    ///
    /// The writes are applied in order to copies of the variables they
    /// touch, so a variable written twice in one batch gets two versions and
    /// the second write's `expected_version` refers to the first's result.
    /// Returns each variable as its write left it, in request order.
    pub fn set_variables(
        &self,
        session: &str,
        writes: Vec<VariableWrite>,
        source: Source,
    ) -> Result<Vec<Variable>, StoreError> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session)?;
        let now = SystemTime::now();

        let mut scratch: HashMap<String, Variable> = HashMap::new();
        let mut updates: Vec<VariableUpdate> = Vec::with_capacity(writes.len());
        for write in writes {
            let id = session
                .resolve(&write.identifier)
                .ok_or_else(|| session.not_found(&write.identifier))?;
            let variable = match scratch.get_mut(id) {
                Some(variable) => variable,
                None => scratch
                    .entry(id.to_string())
                    .or_insert_with(|| session.variables[id].clone()),
            };
            if let Some(expected) = write.expected_version {
                if expected != variable.version {
                    return Err(StoreError::VersionConflict {
                        name: variable.name.clone(),
                        expected,
                        actual: variable.version,
                    });
                }
            }
            let value = validate_value(
                &variable.name,
                variable.var_type,
                &variable.constraints,
                &write.value,
            )?;
            let old_value = std::mem::replace(&mut variable.value, value);
            variable.version += 1;
            variable.source = source;
            variable.update_metadata = write.metadata.clone();
            variable.updated_at = now;
            updates.push(VariableUpdate {
                update_type: UpdateType::ValueChange,
                variable: variable.clone(),
                old_value: Some(old_value),
                source,
                metadata: write.metadata,
                timestamp: now,
            });
        }

        for (id, variable) in scratch {
            session.variables.insert(id, variable);
        }
        if !session.watchers.is_empty() {
            for update in &updates {
                session.notify(update);
            }
        }
        Ok(updates.into_iter().map(|u| u.variable).collect())
    }

    /// Names matching `pattern` (`*` wildcard; `""` all), sorted by name.
    pub fn list_variables(
        &self,
        session: &str,
        pattern: &str,
    ) -> Result<Vec<Variable>, StoreError> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session)?;
        let mut variables: Vec<Variable> = session
            .variables
            .values()
            .filter(|v| pattern::matches(pattern, &v.name))
            .cloned()
            .collect();
        variables.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(variables)
    }

    /// Removes a variable; its watchers receive its last state as `Deleted`.
    /// Watchers by name stay and follow a variable registered again.
    pub fn delete_variable(
        &self,
        session: &str,
        identifier: &str,
        source: Source,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session)?;
        let id = session
            .resolve(identifier)
            .map(str::to_string)
            .ok_or_else(|| session.not_found(identifier))?;
        let variable = session
            .variables
            .remove(&id)
            .expect("a resolved id names a variable");
        session.names.remove(&variable.name);
        if !session.watchers.is_empty() {
            session.notify(&VariableUpdate {
                update_type: UpdateType::Deleted,
                variable,
                old_value: None,
                source,
                metadata: HashMap::new(),
                timestamp: SystemTime::now(),
            });
        }
        Ok(())
    }

    /// Starts a watch of the given variables (names or ids, all must exist).
    /// `buffer == 0` uses the default.
    ///
    /// The watcher is registered and its initial values queued under one
    /// hold of the lock, so no change can fall between the initial values
    /// and the live updates. The channel has room for the initial values on
    /// top of `buffer`.
    pub fn watch(
        self: &Arc<Self>,
        session: &str,
        identifiers: &[String],
        include_initial: bool,
        buffer: usize,
    ) -> Result<Watch, StoreError> {
        if identifiers.is_empty() {
            return Err(StoreError::InvalidArgument(
                "a watch needs at least one variable".into(),
            ));
        }
        let buffer = if buffer == 0 {
            self.config.default_watch_buffer
        } else {
            buffer
        };
        if buffer > MAX_WATCH_BUFFER {
            // A client must not be able to make one slow watcher hold
            // unbounded memory in the node.
            return Err(StoreError::InvalidArgument(format!(
                "a watch buffer holds at most {MAX_WATCH_BUFFER} updates, {buffer} asked"
            )));
        }

        let mut guard = self.lock();
        let inner = &mut *guard;
        let session_state = session_mut_in(&mut inner.sessions, session)?;
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        let mut initial = Vec::new();
        for identifier in identifiers {
            let variable = session_state
                .variable(identifier)
                .ok_or_else(|| session_state.not_found(identifier))?;
            ids.insert(variable.id.clone());
            if variable.id != *identifier {
                names.insert(identifier.clone());
            }
            if include_initial {
                initial.push(VariableUpdate {
                    update_type: UpdateType::InitialValue,
                    variable: variable.clone(),
                    old_value: None,
                    source: variable.source,
                    metadata: variable.update_metadata.clone(),
                    timestamp: variable.updated_at,
                });
            }
        }

        // Tokio refuses capacities above `MAX_PERMITS`; nobody needs more.
        let capacity = buffer
            .saturating_add(initial.len())
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::channel(capacity);
        for update in initial {
            tx.try_send(update)
                .expect("the channel has room for the initial values");
        }
        let id = inner.next_watcher;
        inner.next_watcher += 1;
        let end = Arc::new(OnceLock::new());
        session_state
            .watchers
            .push(Watcher::new(id, ids, names, tx, end.clone()));
        Ok(Watch::new(
            id,
            session.to_string(),
            Arc::downgrade(self),
            rx,
            end,
            buffer,
        ))
    }

    /// Called by a dropped [`Watch`].
    pub(super) fn remove_watcher(&self, session: &str, watcher: u64) {
        let removed = {
            let mut inner = self.lock();
            inner.sessions.get_mut(session).and_then(|s| {
                let index = s.watchers.iter().position(|w| w.id == watcher)?;
                Some(s.watchers.swap_remove(index))
            })
        };
        drop(removed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves no half-applied change (writes are
        // prepared first and committed without failing), so the state is
        // still sound.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tell_ended(&self, ids: &[String], reason: EndReason) {
        if ids.is_empty() {
            return;
        }
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(listener) = listener {
            for id in ids {
                listener(id, reason);
            }
        }
    }
}

/// The session, renewed.
fn session_mut<'a>(inner: &'a mut Inner, id: &str) -> Result<&'a mut Session, StoreError> {
    session_mut_in(&mut inner.sessions, id)
}

fn session_mut_in<'a>(
    sessions: &'a mut HashMap<String, Session>,
    id: &str,
) -> Result<&'a mut Session, StoreError> {
    let session = sessions
        .get_mut(id)
        .ok_or_else(|| StoreError::SessionNotFound(id.to_string()))?;
    session.last_used = SystemTime::now();
    Ok(session)
}

fn check_identifier(what: &str, text: &str) -> Result<(), StoreError> {
    if text.is_empty() {
        return Err(StoreError::InvalidArgument(format!("{what} is empty")));
    }
    if text.len() > MAX_IDENTIFIER_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "{what} is {} bytes long; the limit is {MAX_IDENTIFIER_BYTES}",
            text.len()
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(StoreError::InvalidArgument(format!(
            "{what} {text:?} contains control characters"
        )));
    }
    Ok(())
}

/// Names are what users type; they must never be mistaken for an id or a
/// pattern.
fn check_variable_name(name: &str) -> Result<(), StoreError> {
    check_identifier("variable name", name)?;
    if name.contains('*') {
        return Err(StoreError::InvalidArgument(format!(
            "variable name {name:?} contains '*', which is reserved for patterns"
        )));
    }
    if name.starts_with("var_") {
        return Err(StoreError::InvalidArgument(format!(
            "variable name {name:?} starts with \"var_\", which is reserved for variable ids"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::WatchEnd;
    use serde_json::{json, Value};

    fn store() -> Arc<Store> {
        Store::new(StoreConfig::default())
    }

    fn spec(name: &str, var_type: &str, value: Value, constraints: Value) -> VariableSpec {
        VariableSpec {
            name: name.into(),
            var_type: var_type.into(),
            value,
            constraints,
            metadata: HashMap::new(),
        }
    }

    fn write(identifier: &str, value: Value, expected_version: Option<u64>) -> VariableWrite {
        VariableWrite {
            identifier: identifier.into(),
            value,
            expected_version,
            metadata: HashMap::new(),
        }
    }

    fn with_session() -> Arc<Store> {
        let store = store();
        store.create_session("s", None, HashMap::new()).unwrap();
        store
    }

    fn register(store: &Store, name: &str, value: Value) -> Variable {
        store
            .register_variable(
                "s",
                spec(name, "integer", value, Value::Null),
                Source::Elixir,
            )
            .unwrap()
    }

    fn ids(list: &[impl AsRef<str>]) -> Vec<String> {
        list.iter().map(|s| s.as_ref().to_string()).collect()
    }

    #[test]
    fn create_is_idempotent_and_keeps_first_metadata() {
        let store = store();
        let meta = HashMap::from([("owner".to_string(), "a".to_string())]);
        let first = store
            .create_session("s1", Some(Duration::from_secs(60)), meta.clone())
            .unwrap();
        assert_eq!(first.id, "s1");
        assert_eq!(first.ttl, Duration::from_secs(60));
        assert_eq!(first.expires_at, first.last_used_at + first.ttl);
        let again = store
            .create_session(
                "s1",
                None,
                HashMap::from([("owner".to_string(), "b".to_string())]),
            )
            .unwrap();
        assert_eq!(again.metadata, meta);
        assert_eq!(again.created_at, first.created_at);
        assert!(again.last_used_at >= first.last_used_at);
        assert_eq!(store.list_sessions().len(), 1);
    }

    #[test]
    fn generated_ids_and_default_ttl() {
        let store = store();
        let a = store.create_session("", None, HashMap::new()).unwrap();
        let b = store.create_session("", None, HashMap::new()).unwrap();
        assert_ne!(a.id, b.id);
        assert!(a.id.starts_with("session_"));
        assert_eq!(a.id.len(), "session_".len() + 16);
        assert!(a.id["session_".len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.ttl, Duration::from_secs(3600));
        let listed: Vec<String> = store.list_sessions().into_iter().map(|s| s.id).collect();
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(listed, sorted);
    }

    #[test]
    fn session_ids_are_checked() {
        let store = store();
        for bad in ["a\nb".to_string(), "x".repeat(257)] {
            let err = store
                .create_session(&bad, None, HashMap::new())
                .unwrap_err();
            assert_eq!(err.reason(), "invalid_argument");
        }
        assert!(store
            .create_session(&"x".repeat(256), None, HashMap::new())
            .is_ok());
        let err = store
            .create_session("t", Some(Duration::from_secs(u64::MAX)), HashMap::new())
            .unwrap_err();
        assert_eq!(err.reason(), "invalid_argument");
    }

    #[test]
    fn missing_sessions() {
        let store = store();
        let err = store.touch_session("nope").unwrap_err();
        assert_eq!(err, StoreError::SessionNotFound("nope".into()));
        assert_eq!(err.reason(), "session_not_found");
        assert!(store.get_variable("nope", "x").is_err());
        assert!(store.list_variables("nope", "").is_err());
        assert!(store.watch("nope", &ids(&["x"]), false, 0).is_err());
        assert!(!store.delete_session("nope"));
    }

    #[test]
    fn quotas() {
        let store = Store::new(StoreConfig {
            max_sessions: 2,
            max_variables_per_session: 2,
            ..StoreConfig::default()
        });
        store.create_session("a", None, HashMap::new()).unwrap();
        store.create_session("s", None, HashMap::new()).unwrap();
        let err = store.create_session("c", None, HashMap::new()).unwrap_err();
        assert_eq!(err, StoreError::SessionQuotaExceeded { max: 2 });
        // Existing sessions can still be "created".
        assert!(store.create_session("a", None, HashMap::new()).is_ok());
        register(&store, "x", json!(1));
        register(&store, "y", json!(1));
        let err = store
            .register_variable(
                "s",
                spec("z", "integer", json!(1), Value::Null),
                Source::Client,
            )
            .unwrap_err();
        assert_eq!(err.reason(), "variable_quota_exceeded");
        store.delete_variable("s", "x", Source::Client).unwrap();
        register(&store, "z", json!(1));
        assert!(store.delete_session("a"));
        assert!(store.create_session("c", None, HashMap::new()).is_ok());
    }

    #[test]
    fn expiry_ends_sessions_and_tells_the_listener() {
        let store = store();
        let ended = Arc::new(Mutex::new(Vec::new()));
        let seen = ended.clone();
        store.set_end_listener(Arc::new(move |id: &str, reason| {
            seen.lock().unwrap().push((id.to_string(), reason));
        }));
        store
            .create_session("short", Some(Duration::from_secs(10)), HashMap::new())
            .unwrap();
        store
            .create_session("long", Some(Duration::from_secs(1000)), HashMap::new())
            .unwrap();
        let now = SystemTime::now();
        assert!(store.expire_sessions(now).is_empty());
        let expired = store.expire_sessions(now + Duration::from_secs(100));
        assert_eq!(expired, vec!["short".to_string()]);
        assert!(store.touch_session("short").is_err());
        assert!(store.touch_session("long").is_ok());
        assert!(store.delete_session("long"));
        assert_eq!(
            *ended.lock().unwrap(),
            vec![
                ("short".to_string(), EndReason::Expired),
                ("long".to_string(), EndReason::Deleted)
            ]
        );
    }

    #[test]
    fn listener_may_call_the_store() {
        let store = store();
        let weak = Arc::downgrade(&store);
        store.set_end_listener(Arc::new(move |_id: &str, _reason| {
            // Would deadlock if called under the lock.
            let store = weak.upgrade().unwrap();
            store.list_sessions();
        }));
        store.create_session("s", None, HashMap::new()).unwrap();
        assert!(store.delete_session("s"));
    }

    #[test]
    fn use_renews_sessions() {
        let store = store();
        store
            .create_session("s", Some(Duration::from_secs(10)), HashMap::new())
            .unwrap();
        let before = store.touch_session("s").unwrap().last_used_at;
        std::thread::sleep(Duration::from_millis(2));
        let _ = store.get_variable("s", "missing");
        let after = store.list_sessions()[0].last_used_at;
        assert!(after > before);
    }

    #[test]
    fn register_and_read() {
        let store = with_session();
        let meta = HashMap::from([("unit".to_string(), "C".to_string())]);
        let variable = store
            .register_variable(
                "s",
                VariableSpec {
                    metadata: meta.clone(),
                    ..spec("temp", "float", json!(20), json!({"min": -50, "max": 60}))
                },
                Source::Python,
            )
            .unwrap();
        assert!(variable.id.starts_with("var_"));
        assert_eq!(variable.var_type, VarType::Float);
        assert_eq!(variable.value, json!(20.0));
        assert_eq!(variable.version, 1);
        assert_eq!(variable.source, Source::Python);
        assert_eq!(variable.metadata, meta);
        assert!(variable.update_metadata.is_empty());
        assert_eq!(variable.created_at, variable.updated_at);
        assert_eq!(variable.constraints, json!({"min": -50, "max": 60}));
        assert_eq!(store.get_variable("s", "temp").unwrap(), variable);
        assert_eq!(store.get_variable("s", &variable.id).unwrap(), variable);
        let info = store.touch_session("s").unwrap();
        assert_eq!(info.variable_count, 1);

        let (found, missing) = store
            .get_variables("s", &ids(&["nope", &variable.id, "temp"]))
            .unwrap();
        assert_eq!(found, vec![variable.clone(), variable.clone()]);
        assert_eq!(missing, vec!["nope".to_string()]);

        let err = store.get_variable("s", "nope").unwrap_err();
        assert_eq!(err.reason(), "variable_not_found");
    }

    #[test]
    fn registration_errors() {
        let store = with_session();
        register(&store, "x", json!(1));
        let err = store
            .register_variable(
                "s",
                spec("x", "integer", json!(1), Value::Null),
                Source::Client,
            )
            .unwrap_err();
        assert_eq!(err, StoreError::VariableExists("x".into()));
        let reason = |s: VariableSpec| {
            store
                .register_variable("s", s, Source::Client)
                .unwrap_err()
                .reason()
        };
        for bad in ["", "a*b", "var_1", "a\tb"] {
            assert_eq!(
                reason(spec(bad, "integer", json!(1), Value::Null)),
                "invalid_argument",
                "{bad:?}"
            );
        }
        assert_eq!(
            reason(spec(&"n".repeat(257), "integer", json!(1), Value::Null)),
            "invalid_argument"
        );
        assert_eq!(
            reason(spec("y", "int", json!(1), Value::Null)),
            "invalid_type"
        );
        assert_eq!(
            reason(spec("y", "integer", json!(1), json!({"mn": 0}))),
            "invalid_constraints"
        );
        assert_eq!(
            reason(spec("y", "integer", json!(11), json!({"max": 10}))),
            "invalid_value"
        );
        assert_eq!(store.list_variables("s", "").unwrap().len(), 1);
    }

    #[test]
    fn variable_ids_are_unique_in_the_store() {
        let store = with_session();
        store.create_session("t", None, HashMap::new()).unwrap();
        let a = register(&store, "x", json!(1));
        let b = store
            .register_variable(
                "t",
                spec("x", "integer", json!(1), Value::Null),
                Source::Client,
            )
            .unwrap();
        store.delete_variable("s", "x", Source::Client).unwrap();
        let c = register(&store, "x", json!(1));
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(b.id, c.id);
    }

    #[test]
    fn set_bumps_version_and_records_the_write() {
        let store = with_session();
        let x = register(&store, "x", json!(1));
        let meta = HashMap::from([("why".to_string(), "test".to_string())]);
        let written = store
            .set_variable(
                "s",
                VariableWrite {
                    metadata: meta.clone(),
                    ..write(&x.id, json!(2.0), Some(1))
                },
                Source::Python,
            )
            .unwrap();
        assert_eq!(written.value, json!(2));
        assert_eq!(written.version, 2);
        assert_eq!(written.source, Source::Python);
        assert_eq!(written.update_metadata, meta);
        assert!(written.updated_at >= x.updated_at);
        assert_eq!(written.created_at, x.created_at);
        assert_eq!(store.get_variable("s", "x").unwrap(), written);
        let err = store
            .set_variable("s", write("y", json!(1), None), Source::Client)
            .unwrap_err();
        assert_eq!(err.reason(), "variable_not_found");
    }

    #[test]
    fn version_conflict_writes_nothing() {
        let store = with_session();
        register(&store, "x", json!(1));
        let mut watch = store.watch("s", &ids(&["x"]), false, 0).unwrap();
        let err = store
            .set_variable("s", write("x", json!(5), Some(7)), Source::Client)
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::VersionConflict {
                name: "x".into(),
                expected: 7,
                actual: 1
            }
        );
        assert_eq!(err.reason(), "version_conflict");
        let x = store.get_variable("s", "x").unwrap();
        assert_eq!((x.version, x.value), (1, json!(1)));
        assert!(store.delete_session("s"));
        assert_eq!(watch.rx_try_recv(), None);
    }

    #[test]
    fn invalid_write_writes_nothing() {
        let store = with_session();
        register(&store, "x", json!(1));
        let err = store
            .set_variable("s", write("x", json!("one"), None), Source::Client)
            .unwrap_err();
        assert_eq!(err.reason(), "invalid_value");
        assert_eq!(store.get_variable("s", "x").unwrap().version, 1);
    }

    #[test]
    fn batch_is_atomic() {
        let store = with_session();
        register(&store, "a", json!(1));
        register(&store, "b", json!(1));
        let mut watch = store.watch("s", &ids(&["a", "b"]), false, 0).unwrap();
        let err = store
            .set_variables(
                "s",
                vec![write("a", json!(2), None), write("b", json!(2.5), None)],
                Source::Client,
            )
            .unwrap_err();
        assert_eq!(err.reason(), "invalid_value");
        let err = store
            .set_variables(
                "s",
                vec![write("a", json!(2), None), write("nope", json!(2), None)],
                Source::Client,
            )
            .unwrap_err();
        assert_eq!(err.reason(), "variable_not_found");
        for name in ["a", "b"] {
            let v = store.get_variable("s", name).unwrap();
            assert_eq!((v.version, v.value), (1, json!(1)));
        }
        assert_eq!(watch.rx_try_recv(), None);
        assert_eq!(store.set_variables("s", vec![], Source::Client), Ok(vec![]));
    }

    #[test]
    fn batch_writing_one_variable_twice() {
        let store = with_session();
        register(&store, "a", json!(1));
        register(&store, "b", json!(1));
        let mut watch = store.watch("s", &ids(&["a", "b"]), false, 0).unwrap();
        // The second write's expected version is the first's result.
        let written = store
            .set_variables(
                "s",
                vec![
                    write("a", json!(2), Some(1)),
                    write("b", json!(5), None),
                    write("a", json!(3), Some(2)),
                ],
                Source::Elixir,
            )
            .unwrap();
        let got: Vec<(String, u64, Value)> = written
            .into_iter()
            .map(|v| (v.name, v.version, v.value))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 2, json!(2)),
                ("b".into(), 2, json!(5)),
                ("a".into(), 3, json!(3))
            ]
        );
        let a = store.get_variable("s", "a").unwrap();
        assert_eq!((a.version, a.value), (3, json!(3)));
        let events: Vec<(String, u64, Option<Value>)> = std::iter::from_fn(|| watch.rx_try_recv())
            .map(|u| (u.variable.name, u.variable.version, u.old_value))
            .collect();
        assert_eq!(
            events,
            vec![
                ("a".into(), 2, Some(json!(1))),
                ("b".into(), 2, Some(json!(1))),
                ("a".into(), 3, Some(json!(2)))
            ]
        );
        // Stale expected version within a batch: nothing is written.
        let err = store
            .set_variables(
                "s",
                vec![write("a", json!(4), Some(3)), write("a", json!(5), Some(3))],
                Source::Elixir,
            )
            .unwrap_err();
        assert_eq!(err.reason(), "version_conflict");
        assert_eq!(store.get_variable("s", "a").unwrap().version, 3);
    }

    #[test]
    fn list_with_patterns() {
        let store = with_session();
        for name in ["temp_max", "temp_min", "pressure", "attempt"] {
            register(&store, name, json!(1));
        }
        let names = |pattern: &str| -> Vec<String> {
            store
                .list_variables("s", pattern)
                .unwrap()
                .into_iter()
                .map(|v| v.name)
                .collect()
        };
        assert_eq!(
            names(""),
            vec!["attempt", "pressure", "temp_max", "temp_min"]
        );
        assert_eq!(names("*"), names(""));
        assert_eq!(names("temp_*"), vec!["temp_max", "temp_min"]);
        assert_eq!(names("*temp*"), vec!["attempt", "temp_max", "temp_min"]);
        assert_eq!(names("*_m?x"), Vec::<String>::new());
        assert_eq!(names("pressure"), vec!["pressure"]);
    }

    #[test]
    fn delete_and_register_again_with_watchers() {
        let store = with_session();
        let old = register(&store, "x", json!(1));
        let mut by_name = store.watch("s", &ids(&["x"]), false, 0).unwrap();
        let mut by_id = store.watch("s", &ids(&[&old.id]), false, 0).unwrap();
        store.delete_variable("s", "x", Source::Python).unwrap();
        assert_eq!(
            store.get_variable("s", "x").unwrap_err().reason(),
            "variable_not_found"
        );
        let err = store.delete_variable("s", "x", Source::Python).unwrap_err();
        assert_eq!(err.reason(), "variable_not_found");
        let new = register(&store, "x", json!(7));
        assert_ne!(new.id, old.id);
        store
            .set_variable("s", write("x", json!(8), None), Source::Client)
            .unwrap();

        let deleted = by_name.rx_try_recv().unwrap();
        assert_eq!(deleted.update_type, UpdateType::Deleted);
        assert_eq!(deleted.variable, old);
        assert_eq!(deleted.source, Source::Python);
        assert_eq!(deleted.old_value, None);
        let registered = by_name.rx_try_recv().unwrap();
        assert_eq!(registered.update_type, UpdateType::ValueChange);
        assert_eq!(registered.variable, new);
        assert_eq!(registered.old_value, None);
        let changed = by_name.rx_try_recv().unwrap();
        assert_eq!(changed.variable.version, 2);
        assert_eq!(changed.old_value, Some(json!(7)));
        assert_eq!(by_name.rx_try_recv(), None);

        assert_eq!(
            by_id.rx_try_recv().unwrap().update_type,
            UpdateType::Deleted
        );
        assert_eq!(by_id.rx_try_recv(), None);
    }

    #[tokio::test]
    async fn initial_values_come_first_in_the_order_asked() {
        let store = with_session();
        let a = register(&store, "a", json!(1));
        let b = register(&store, "b", json!(2));
        store
            .set_variable(
                "s",
                VariableWrite {
                    metadata: HashMap::from([("k".to_string(), "v".to_string())]),
                    ..write("b", json!(3), None)
                },
                Source::Python,
            )
            .unwrap();
        let mut watch = store.watch("s", &ids(&["b", &a.id]), true, 1).unwrap();
        // Live updates still fit after the initial values.
        store
            .set_variable("s", write("a", json!(10), None), Source::Client)
            .unwrap();

        let first = watch.recv().await.unwrap();
        assert_eq!(first.update_type, UpdateType::InitialValue);
        assert_eq!(first.variable.name, "b");
        assert_eq!(first.variable.value, json!(3));
        assert_eq!(first.old_value, None);
        assert_eq!(first.source, Source::Python);
        assert_eq!(first.metadata["k"], "v");
        assert_eq!(first.timestamp, first.variable.updated_at);
        let second = watch.recv().await.unwrap();
        assert_eq!(second.update_type, UpdateType::InitialValue);
        assert_eq!(second.variable.id, a.id);
        assert_eq!(second.source, Source::Elixir);
        let third = watch.recv().await.unwrap();
        assert_eq!(third.update_type, UpdateType::ValueChange);
        assert_eq!(third.variable.value, json!(10));
        assert_eq!(third.old_value, Some(json!(1)));
        assert_eq!(b.version, 1);
        assert!(watch.end().is_none());
    }

    #[test]
    fn watch_arguments_are_checked() {
        let store = with_session();
        register(&store, "a", json!(1));
        let err = store.watch("s", &[], false, 0).unwrap_err();
        assert_eq!(err.reason(), "invalid_argument");
        let err = store.watch("s", &ids(&["a", "b"]), false, 0).unwrap_err();
        assert_eq!(
            err,
            StoreError::VariableNotFound {
                session: "s".into(),
                identifier: "b".into()
            }
        );
        assert_eq!(store.watcher_count("s"), Ok(0));
    }

    #[tokio::test]
    async fn overflow_ends_the_watch_after_draining() {
        let store = with_session();
        register(&store, "a", json!(0));
        let mut slow = store.watch("s", &ids(&["a"]), false, 3).unwrap();
        let mut fast = store.watch("s", &ids(&["a"]), false, 100).unwrap();
        for i in 1..=5 {
            store
                .set_variable("s", write("a", json!(i), None), Source::Client)
                .unwrap();
        }
        assert_eq!(store.watcher_count("s"), Ok(1));
        let mut versions = Vec::new();
        while let Some(update) = slow.recv().await {
            versions.push(update.variable.version);
        }
        assert_eq!(versions, vec![2, 3, 4]);
        assert_eq!(slow.end(), Some(WatchEnd::Overflow));
        // The other watcher is unaffected.
        for version in 2..=6 {
            assert_eq!(fast.recv().await.unwrap().variable.version, version);
        }
        assert!(fast.end().is_none());
    }

    #[tokio::test]
    async fn session_end_ends_watches() {
        let store = with_session();
        register(&store, "a", json!(0));
        let mut watch = store.watch("s", &ids(&["a"]), false, 0).unwrap();
        store
            .set_variable("s", write("a", json!(1), None), Source::Client)
            .unwrap();
        assert!(store.delete_session("s"));
        assert_eq!(watch.recv().await.unwrap().variable.version, 2);
        assert!(watch.recv().await.is_none());
        assert_eq!(
            watch.end(),
            Some(WatchEnd::SessionEnded(EndReason::Deleted))
        );

        store
            .create_session("e", Some(Duration::from_secs(1)), HashMap::new())
            .unwrap();
        store
            .register_variable(
                "e",
                spec("a", "json", json!(null), Value::Null),
                Source::Client,
            )
            .unwrap();
        let mut watch = store.watch("e", &ids(&["a"]), true, 0).unwrap();
        store.expire_sessions(SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(
            watch.recv().await.unwrap().update_type,
            UpdateType::InitialValue
        );
        assert!(watch.recv().await.is_none());
        assert_eq!(
            watch.end(),
            Some(WatchEnd::SessionEnded(EndReason::Expired))
        );
        // Dropping a watch of an ended session is harmless.
        drop(watch);
    }

    #[test]
    fn dropping_a_watch_removes_it() {
        let store = with_session();
        register(&store, "a", json!(0));
        let one = store.watch("s", &ids(&["a"]), false, 0).unwrap();
        let two = store.watch("s", &ids(&["a"]), true, 0).unwrap();
        assert_ne!(one.id(), two.id());
        assert_eq!(store.watcher_count("s"), Ok(2));
        assert_eq!(store.touch_session("s").unwrap().watcher_count, 2);
        drop(one);
        assert_eq!(store.watcher_count("s"), Ok(1));
        drop(two);
        assert_eq!(store.watcher_count("s"), Ok(0));
        // A watch outliving its store is harmless too.
        let three = store.watch("s", &ids(&["a"]), false, 0).unwrap();
        drop(store);
        drop(three);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_keep_per_variable_order() {
        const THREADS: usize = 4;
        const WRITES: usize = 5_000;
        const WATCHERS: usize = 10;
        let store = with_session();
        let names = ["a", "b", "c"];
        for name in names {
            register(&store, name, json!(0));
        }
        let watches: Vec<Watch> = (0..WATCHERS)
            .map(|_| {
                store
                    .watch("s", &ids(&names), false, THREADS * WRITES)
                    .unwrap()
            })
            .collect();
        let started = std::time::Instant::now();
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..WRITES {
                        let name = names[(i + t) % names.len()];
                        store
                            .set_variable("s", write(name, json!(i), None), Source::Client)
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let final_versions: HashMap<String, u64> = names
            .iter()
            .map(|n| (n.to_string(), store.get_variable("s", n).unwrap().version))
            .collect();
        assert_eq!(
            final_versions.values().sum::<u64>(),
            (THREADS * WRITES + names.len()) as u64
        );
        assert!(store.delete_session("s"));
        for mut watch in watches {
            let mut last: HashMap<String, u64> = HashMap::new();
            let mut count = 0;
            while let Some(update) = watch.recv().await {
                let previous = last.entry(update.variable.name.clone()).or_insert(1);
                assert_eq!(update.variable.version, *previous + 1);
                *previous = update.variable.version;
                count += 1;
            }
            assert_eq!(count, THREADS * WRITES);
            assert_eq!(last, final_versions);
            assert_eq!(
                watch.end(),
                Some(WatchEnd::SessionEnded(EndReason::Deleted))
            );
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
