//! Watch streams: one task per watch reads the store's event log from its own position and
//! writes JSON-lines frames into a bounded channel that is the HTTP body.
//!
//! A watcher never misses an event: it remembers the rv up to which it has read the log and
//! re-reads from there on every change. When it falls behind the retained window it gets an
//! in-stream `ERROR` event with a `410 Expired` Status (never an HTTP 410), as kube-apiserver
//! does. Selector transitions are turned into `ADDED`/`DELETED` like the real watch cache.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::faults::Faults;
use crate::registry::{self, ResourceId};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{EventType, Store};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `resourceVersion` unset or `0`: synthetic `ADDED` events for the current state first.
    CurrentState,
    /// `sendInitialEvents=true`: like `CurrentState`, then a bookmark marking the end.
    InitialEvents,
    /// Every change after this rv.
    After(u64),
}

/// One watch request.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub resource: ResourceId,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub start: Start,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub bookmark_interval: Duration,
}

impl WatchRequest {
    fn visible(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                != Some(ns.as_str())
        {
            return false;
        }
        self.labels.matches(object) && self.fields.matches(object)
    }
}

fn frame(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(resource: ResourceId, rv: u64, initial_end: bool) -> Bytes {
    let info = registry::get(resource);
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    frame(
        "BOOKMARK",
        &json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": metadata}),
    )
}

fn expired(requested: u64, oldest: u64) -> Bytes {
    let status =
        ApiError::expired(format!("too old resource version: {requested} ({oldest})")).to_status();
    frame("ERROR", &status)
}

/// Starts a watch; its frames arrive on the returned channel, which ends with the watch.
pub fn spawn(store: Arc<Store>, faults: &Faults, req: WatchRequest) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(256);
    let mut drops = faults.watch_drops();
    drops.mark_unchanged();
    if faults.take_expire_next_watch() {
        let requested = match req.start {
            Start::After(rv) => rv,
            _ => store.current_rv(),
        };
        let _ = tx.try_send(expired(requested, store.current_rv()));
        return rx;
    }
    tokio::spawn(async move {
        let mut latest = store.subscribe();
        let mut position = match req.start {
            Start::After(rv) => rv,
            Start::CurrentState | Start::InitialEvents => {
                latest.borrow_and_update();
                let (rv, table) = store.snapshot(req.resource);
                for object in table.values().filter(|o| req.visible(o)) {
                    if tx.send(frame("ADDED", object)).await.is_err() {
                        return;
                    }
                }
                if req.start == Start::InitialEvents
                    && tx.send(bookmark(req.resource, rv, true)).await.is_err()
                {
                    return;
                }
                rv
            }
        };
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(req.bookmark_interval);
        ticker.tick().await;
        loop {
            latest.borrow_and_update();
            let (events, head) = match store.events_after(req.resource, position) {
                Ok(read) => read,
                Err(too_old) => {
                    let _ = tx.send(expired(too_old.requested, too_old.oldest)).await;
                    return;
                }
            };
            for event in events {
                position = event.rv;
                let now = req.visible(&event.object);
                let before = event.previous.as_ref().is_some_and(|p| req.visible(p));
                let sent = match event.kind {
                    EventType::Added if now => frame("ADDED", &event.object),
                    EventType::Modified if now && before => frame("MODIFIED", &event.object),
                    EventType::Modified if now => frame("ADDED", &event.object),
                    // Leaving the selector: the object as it last matched, at this version
                    // (kube-apiserver's watch cache sends the previous object).
                    EventType::Modified if before => {
                        let mut left = event.previous.as_deref().cloned().unwrap_or_default();
                        left["metadata"]["resourceVersion"] = event.rv.to_string().into();
                        frame("DELETED", &left)
                    }
                    EventType::Deleted if now || before => frame("DELETED", &event.object),
                    _ => continue,
                };
                if tx.send(sent).await.is_err() {
                    return;
                }
            }
            position = position.max(head);
            tokio::select! {
                changed = latest.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = ticker.tick(), if req.bookmarks => {
                    let head = (*latest.borrow()).max(position);
                    // Only bookmark what has been read: re-read first if the head moved.
                    if head == position && tx.send(bookmark(req.resource, position, false)).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = drops.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    rx
}
