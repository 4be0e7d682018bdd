//! The object store: every object of every resource as JSON, one global resourceVersion, and a
//! bounded log of change events that watches read from.
//!
//! Invariants:
//! - `rv` only grows; every committed change gets `rv + 1` and writes it into
//!   `metadata.resourceVersion` of the stored object (or of the deleted object's final state).
//! - The event log holds the changes with rv in `(compacted_rv, rv]`, in order, without gaps, so a
//!   watch from any rv >= `compacted_rv` is served exactly; older ones get 410 Expired.
//! - Writes are read-modify-write closures run under the write lock ([`Store::mutate`]), so
//!   preconditions (resourceVersion, existence) and the commit are one atomic step.
//! - Tables are persistent maps (`imbl::OrdMap`): a list snapshot is an O(1) clone, which makes
//!   paginated lists (`limit`/`continue`) consistent at the rv of their first page.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use imbl::OrdMap;
use serde_json::Value;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::persist::Journal;
use crate::registry::{self, ResourceId};

/// `(namespace, name)`; the namespace is empty for cluster-scoped resources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

pub type Table = OrdMap<ObjectKey, Arc<Value>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub resource: ResourceId,
    pub key: ObjectKey,
    pub kind: EventType,
    /// The new object; for deletes, the last state (with the delete's rv).
    pub object: Arc<Value>,
    /// The object before the change (needed to turn selector transitions into ADDED/DELETED).
    pub previous: Option<Arc<Value>>,
}

/// What a [`Store::mutate`] closure decides.
#[derive(Debug)]
pub enum Mutation {
    /// Store this object (create or replace).
    Put(Value),
    /// Remove the object.
    Delete,
    /// Change nothing; answer with the current object.
    Unchanged,
}

/// The result of a committed mutation.
#[derive(Debug, Clone)]
pub struct Committed {
    pub kind: Option<EventType>,
    pub object: Arc<Value>,
}

struct State {
    rv: u64,
    compacted_rv: u64,
    tables: Vec<Table>,
    log: VecDeque<Arc<Event>>,
    snapshots: VecDeque<(u64, ResourceId, Table)>,
}

pub struct Store {
    state: RwLock<State>,
    window: usize,
    latest: watch::Sender<u64>,
    journal: Option<Mutex<Journal>>,
}

const MAX_SNAPSHOTS: usize = 32;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("rv", &self.current_rv())
            .finish()
    }
}

/// A watch start position the log cannot serve any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld {
    pub requested: u64,
    pub oldest: u64,
}

impl Store {
    /// An empty store whose event log retains `window` events.
    pub fn new(window: usize) -> Self {
        Self::with_contents(
            window,
            1,
            (0..registry::RESOURCES.len())
                .map(|_| Table::new())
                .collect(),
            None,
        )
    }

    pub(crate) fn with_contents(
        window: usize,
        rv: u64,
        tables: Vec<Table>,
        journal: Option<Journal>,
    ) -> Self {
        let (latest, _) = watch::channel(rv);
        Store {
            state: RwLock::new(State {
                rv,
                compacted_rv: rv,
                tables,
                log: VecDeque::new(),
                snapshots: VecDeque::new(),
            }),
            window: window.max(1),
            latest,
            journal: journal.map(Mutex::new),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.read().rv
    }

    /// A receiver that changes whenever the global resourceVersion moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    pub fn get(&self, resource: ResourceId, key: &ObjectKey) -> Option<Arc<Value>> {
        self.read().tables[resource].get(key).cloned()
    }

    /// A consistent snapshot of one resource's table and the rv it reflects.
    pub fn snapshot(&self, resource: ResourceId) -> (u64, Table) {
        let state = self.read();
        (state.rv, state.tables[resource].clone())
    }

    /// Keeps a snapshot for paginated lists; returns false when it was already kept.
    pub fn keep_snapshot(&self, rv: u64, resource: ResourceId, table: Table) {
        let mut state = self.write();
        if state
            .snapshots
            .iter()
            .any(|(r, id, _)| *r == rv && *id == resource)
        {
            return;
        }
        if state.snapshots.len() >= MAX_SNAPSHOTS {
            state.snapshots.pop_front();
        }
        state.snapshots.push_back((rv, resource, table));
    }

    /// The snapshot kept for a continue token, if still retained.
    pub fn kept_snapshot(&self, rv: u64, resource: ResourceId) -> Option<Table> {
        self.read()
            .snapshots
            .iter()
            .find(|(r, id, _)| *r == rv && *id == resource)
            .map(|(_, _, t)| t.clone())
    }

    /// Whether a namespace object exists (and is not being deleted).
    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.get(registry::namespaces(), &ObjectKey::new("", namespace))
            .is_some()
    }

    /// Events of `resource` with rv greater than `after`, and the rv up to which the log was
    /// read; or [`TooOld`] when the log no longer covers that position.
    pub fn events_after(
        &self,
        resource: ResourceId,
        after: u64,
    ) -> Result<(Vec<Arc<Event>>, u64), TooOld> {
        let state = self.read();
        if after < state.compacted_rv {
            return Err(TooOld {
                requested: after,
                oldest: state.compacted_rv,
            });
        }
        let start = state.log.partition_point(|e| e.rv <= after);
        let events = state
            .log
            .range(start..)
            .filter(|e| e.resource == resource)
            .cloned()
            .collect();
        Ok((events, state.rv.max(after)))
    }

    /// The oldest rv a watch may start from.
    pub fn compacted_rv(&self) -> u64 {
        self.read().compacted_rv
    }

    /// Runs `decide` on the current object under the write lock and commits its decision.
    /// With `dry_run`, nothing is committed and the would-be object is returned.
    pub fn mutate<F>(
        &self,
        resource: ResourceId,
        key: &ObjectKey,
        dry_run: bool,
        decide: F,
    ) -> Result<Committed, ApiError>
    where
        F: FnOnce(Option<&Arc<Value>>) -> Result<Mutation, ApiError>,
    {
        let mut state = self.write();
        let current = state.tables[resource].get(key).cloned();
        let mutation = decide(current.as_ref())?;
        match mutation {
            Mutation::Unchanged => {
                let object = current
                    .ok_or_else(|| ApiError::not_found(registry::get(resource), &key.name))?;
                Ok(Committed { kind: None, object })
            }
            Mutation::Put(mut object) => {
                let next = state.rv + 1;
                set_rv(&mut object, if dry_run { state.rv } else { next });
                let object = Arc::new(object);
                if dry_run {
                    return Ok(Committed { kind: None, object });
                }
                let kind = if current.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                state.tables[resource].insert(key.clone(), object.clone());
                self.commit(&mut state, resource, key, kind, object.clone(), current);
                Ok(Committed {
                    kind: Some(kind),
                    object,
                })
            }
            Mutation::Delete => {
                let Some(previous) = current else {
                    return Err(ApiError::not_found(registry::get(resource), &key.name));
                };
                if dry_run {
                    return Ok(Committed {
                        kind: None,
                        object: previous,
                    });
                }
                let mut last = (*previous).clone();
                set_rv(&mut last, state.rv + 1);
                let last = Arc::new(last);
                state.tables[resource].remove(key);
                self.commit(
                    &mut state,
                    resource,
                    key,
                    EventType::Deleted,
                    last.clone(),
                    Some(previous),
                );
                Ok(Committed {
                    kind: Some(EventType::Deleted),
                    object: last,
                })
            }
        }
    }

    /// Removes every object of every namespaced resource in `namespace` (namespace deletion).
    pub fn purge_namespace(&self, namespace: &str) {
        for (id, info) in registry::RESOURCES.iter().enumerate() {
            if !info.namespaced {
                continue;
            }
            let keys: Vec<ObjectKey> = {
                let state = self.read();
                state.tables[id]
                    .keys()
                    .filter(|k| k.namespace == namespace)
                    .cloned()
                    .collect()
            };
            for key in keys {
                let _ = self.mutate(id, &key, false, |cur| {
                    Ok(if cur.is_some() {
                        Mutation::Delete
                    } else {
                        Mutation::Unchanged
                    })
                });
            }
        }
    }

    fn commit(
        &self,
        state: &mut State,
        resource: ResourceId,
        key: &ObjectKey,
        kind: EventType,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        state.rv += 1;
        let rv = state.rv;
        if let Some(journal) = &self.journal {
            let stored = (kind != EventType::Deleted).then_some(&*object);
            let mut journal = journal.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(err) = journal.append(rv, resource, key, stored) {
                tracing::error!(%err, "apiserver journal write failed; state will not survive a restart");
            }
        }
        state.log.push_back(Arc::new(Event {
            rv,
            resource,
            key: key.clone(),
            kind,
            object,
            previous,
        }));
        while state.log.len() > self.window {
            if let Some(old) = state.log.pop_front() {
                state.compacted_rv = old.rv;
            }
        }
        self.latest.send_replace(rv);
    }

    /// Every object of every resource (for snapshots and tests).
    pub fn dump(&self) -> (u64, Vec<Table>) {
        let state = self.read();
        (state.rv, state.tables.clone())
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_is_gapless_and_compacts() {
        let store = Store::new(3);
        let cm = registry::lookup("", "v1", "configmaps").unwrap();
        let start = store.current_rv();
        for i in 0..5 {
            let key = ObjectKey::new("default", format!("c{i}"));
            store
                .mutate(cm, &key, false, |_| {
                    Ok(Mutation::Put(json!({"metadata": {"name": key.name}})))
                })
                .unwrap();
        }
        assert_eq!(store.current_rv(), start + 5);
        assert!(store.events_after(cm, start).is_err());
        let (events, head) = store.events_after(cm, start + 2).unwrap();
        assert_eq!(head, start + 5);
        let rvs: Vec<u64> = events.iter().map(|e| e.rv).collect();
        assert_eq!(rvs, vec![start + 3, start + 4, start + 5]);
        let obj = store.get(cm, &ObjectKey::new("default", "c4")).unwrap();
        assert_eq!(
            obj["metadata"]["resourceVersion"],
            json!((start + 5).to_string())
        );
    }
}
