//! Server-side apply: field ownership per manager in `metadata.managedFields` (FieldsV1 format),
//! conflicts with other managers (409 unless `force`), removal of fields a manager stopped
//! applying, and merging of the applied configuration.
//!
//! Simplifications against kube-apiserver: only `Apply` operations record ownership (plain
//! updates keep the existing entries as sent by the client), and lists are atomic except those
//! with merge keys in [`crate::patch::list_strategy`].

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{ApiError, Cause};
use crate::patch::{self, ListStrategy};
use crate::registry::ResourceInfo;

/// A set of field paths as a tree; an empty node is a leaf. Keys are FieldsV1 path elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeMap<String, FieldSet>);

impl FieldSet {
    fn from_fields_v1(value: &Value) -> FieldSet {
        FieldSet(
            value
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), FieldSet::from_fields_v1(v)))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    fn to_fields_v1(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.to_fields_v1()))
                .collect(),
        )
    }

    /// Every leaf path.
    fn leaves(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect_leaves(&mut Vec::new(), &mut out);
        out
    }

    fn collect_leaves(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (k, child) in &self.0 {
            prefix.push(k.clone());
            if child.0.is_empty() {
                out.push(prefix.clone());
            } else {
                child.collect_leaves(prefix, out);
            }
            prefix.pop();
        }
    }

    fn contains_prefix(&self, path: &[String]) -> bool {
        let mut node = self;
        for p in path {
            match node.0.get(p) {
                Some(n) => node = n,
                None => return false,
            }
        }
        true
    }

    fn contains_leaf(&self, path: &[String]) -> bool {
        let mut node = self;
        for p in path {
            match node.0.get(p) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.0.is_empty()
    }

    fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for p in path {
            node = node.0.entry(p.clone()).or_default();
        }
    }

    fn remove(&mut self, path: &[String]) {
        if let Some((first, rest)) = path.split_first() {
            if rest.is_empty() {
                self.0.remove(first);
            } else if let Some(child) = self.0.get_mut(first) {
                child.remove(rest);
                if child.0.is_empty() {
                    self.0.remove(first);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Fields that identify an object rather than configure it; never owned.
fn ignored_top(key: &str) -> bool {
    matches!(key, "apiVersion" | "kind")
}

fn ignored_meta(key: &str) -> bool {
    matches!(
        key,
        "name"
            | "namespace"
            | "uid"
            | "resourceVersion"
            | "generation"
            | "creationTimestamp"
            | "deletionTimestamp"
            | "deletionGracePeriodSeconds"
            | "managedFields"
            | "selfLink"
            | "generateName"
    )
}

/// The fields set by an applied configuration.
pub fn fields_of(config: &Value, kind: &str) -> FieldSet {
    let mut set = FieldSet::default();
    if let Some(map) = config.as_object() {
        for (k, v) in map {
            if ignored_top(k) {
                continue;
            }
            let mut path = vec![k.as_str()];
            let node = if k == "metadata" {
                let mut meta = FieldSet::default();
                for (mk, mv) in v.as_object().into_iter().flatten() {
                    if ignored_meta(mk) {
                        continue;
                    }
                    path.push(mk);
                    meta.0
                        .insert(format!("f:{mk}"), value_fields(mv, kind, &mut path));
                    path.pop();
                }
                if meta.is_empty() {
                    continue;
                }
                meta
            } else {
                value_fields(v, kind, &mut path)
            };
            set.0.insert(format!("f:{k}"), node);
        }
    }
    set
}

fn value_fields<'a>(value: &'a Value, kind: &str, path: &mut Vec<&'a str>) -> FieldSet {
    match value {
        Value::Object(_) if atomic_struct(kind, path) => FieldSet::default(),
        Value::Object(m) => {
            let mut set = FieldSet::default();
            for (k, v) in m {
                path.push(k);
                set.0.insert(format!("f:{k}"), value_fields(v, kind, path));
                path.pop();
            }
            set
        }
        Value::Array(items) => match patch::list_strategy(kind, path) {
            ListStrategy::Atomic => FieldSet::default(),
            ListStrategy::MergePrimitives => FieldSet(
                items
                    .iter()
                    .map(|i| (format!("v:{i}"), FieldSet::default()))
                    .collect(),
            ),
            ListStrategy::MergeByKey(key) => {
                let mut set = FieldSet::default();
                for item in items {
                    let Some(id) = element_key(kind, path, key, item) else {
                        continue;
                    };
                    let mut element = value_fields(item, kind, path);
                    element.0.insert(".".into(), FieldSet::default());
                    set.0.insert(format!("k:{id}"), element);
                }
                set
            }
        },
        _ => FieldSet::default(),
    }
}

/// The `.` members of `object`: structured-merge-diff records a map, a struct below the top
/// level (in these kinds, pointers: absent until set) or a list that is a map or a set as a
/// member of its own besides its fields, so an update that creates one owns it.
fn members(object: &Value, kind: &str) -> Vec<Vec<String>> {
    fn walk(v: &Value, kind: &str, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let Some(map) = v.as_object() else { return };
        for (k, child) in map {
            path.push(format!("f:{k}"));
            let fields: Vec<&str> = path.iter().map(|p| &p[2..]).collect();
            let member = match child {
                Value::Array(items) => {
                    !items.is_empty()
                        && !matches!(patch::list_strategy(kind, &fields), ListStrategy::Atomic)
                }
                Value::Object(m) if !m.is_empty() && !atomic_struct(kind, &fields) => {
                    let top_map = path.len() == 1
                        && matches!(kind, "ConfigMap" | "Secret")
                        && matches!(k.as_str(), "data" | "binaryData" | "stringData");
                    walk(child, kind, path, out);
                    path.len() >= 2 || top_map
                }
                _ => false,
            };
            if member {
                let mut dot = path.clone();
                dot.push(".".into());
                out.push(dot);
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(object, kind, &mut Vec::new(), &mut out);
    out
}

/// Structs owned as a whole (`+structType=atomic`): an Ingress backend's Service port, an
/// Event's object references.
fn atomic_struct(kind: &str, path: &[&str]) -> bool {
    match kind {
        "Ingress" => path.ends_with(&["service", "port"]),
        "Event" => matches!(path, ["involvedObject" | "related" | "regarding"]),
        _ => false,
    }
}

/// The key fields of a list element in FieldsV1 (`k:{...}`): a Service port is keyed by port
/// and protocol (its `listMapKeys`, where the strategic merge key is the port alone), the
/// protocol defaulting to TCP; other lists by their merge key.
fn element_key(kind: &str, path: &[&str], merge_key: &str, item: &Value) -> Option<Value> {
    let mut id = Map::new();
    id.insert(merge_key.into(), item.get(merge_key)?.clone());
    if kind == "Service" && path == ["spec", "ports"] {
        id.insert("protocol".into(), key_field(item, "protocol")?.clone());
    }
    Some(Value::Object(id))
}

/// A key field of a list element, with its default when unset (a port's protocol is TCP).
fn key_field<'v>(item: &'v Value, field: &str) -> Option<&'v Value> {
    static TCP: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| "TCP".into());
    match item.get(field) {
        Some(v) => Some(v),
        None if field == "protocol" => Some(&TCP),
        None => None,
    }
}

/// Whether a list element is the one a `k:{...}` path element names.
fn key_matches(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| key_field(item, k) == Some(v))
}

/// Navigates to the value at a FieldsV1 path.
fn value_at<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = root;
    for p in path {
        cur = step(cur, p)?;
    }
    Some(cur)
}

fn step<'v>(cur: &'v Value, element: &str) -> Option<&'v Value> {
    if let Some(field) = element.strip_prefix("f:") {
        cur.get(field)
    } else if let Some(key) = element.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        cur.as_array()?.iter().find(|item| key_matches(item, &key))
    } else if let Some(v) = element.strip_prefix("v:") {
        let v: Value = serde_json::from_str(v).ok()?;
        cur.as_array()?.iter().find(|item| **item == v)
    } else if element == "." {
        Some(cur)
    } else {
        None
    }
}

/// Removes the value at a FieldsV1 path (a `.` leaf removes the list element itself).
fn remove_at(root: &mut Value, path: &[String]) {
    let path: Vec<&String> = path.iter().filter(|p| p.as_str() != ".").collect();
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for p in parents {
        let next = if let Some(field) = p.strip_prefix("f:") {
            cur.get_mut(field)
        } else if let Some(key) = p.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|item| key_matches(item, &key)))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(field);
        }
    } else if let Some(key) = last.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
        if let Some(a) = cur.as_array_mut() {
            a.retain(|item| !key_matches(item, &key));
        }
    } else if let Some(v) = last.strip_prefix("v:") {
        let v: Value = serde_json::from_str(v).unwrap_or(Value::Null);
        if let Some(a) = cur.as_array_mut() {
            a.retain(|item| *item != v);
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    raw: Map<String, Value>,
    fields: FieldSet,
}

impl Entry {
    fn manager(&self) -> &str {
        self.raw
            .get("manager")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
    fn is_apply(&self) -> bool {
        self.raw.get("operation").and_then(Value::as_str) == Some("Apply")
    }
    fn subresource(&self) -> &str {
        self.raw
            .get("subresource")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The manager as kube-apiserver's conflict messages print it (`printManager`): quoted,
    /// with its subresource, and for an update the apiVersion and time it wrote with.
    fn printed(&self) -> String {
        let mut out = format!("{:?}", self.manager());
        if !self.subresource().is_empty() {
            out.push_str(&format!(" with subresource {:?}", self.subresource()));
        }
        if !self.is_apply() {
            let api_version = self.raw.get("apiVersion").and_then(Value::as_str);
            out.push_str(&format!(" using {}", api_version.unwrap_or_default()));
            if let Some(time) = self.raw.get("time").and_then(Value::as_str) {
                out.push_str(&format!(" at {time}"));
            }
        }
        out
    }
}

/// The entries as `managedFields`, in kube-apiserver's order (`sortEncodedManagedFields`):
/// by operation (Apply first), then time in seconds, manager, apiVersion, subresource.
fn encode_entries(all: Vec<Entry>) -> Vec<Value> {
    let mut managed: Vec<Entry> = all.into_iter().filter(|e| !e.fields.is_empty()).collect();
    let text = |e: &Entry, field: &str| -> String {
        e.raw
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    managed.sort_by_key(|e| {
        (
            text(e, "operation"),
            text(e, "time"),
            text(e, "manager"),
            text(e, "apiVersion"),
            text(e, "subresource"),
        )
    });
    managed
        .into_iter()
        .map(|mut e| {
            e.raw.insert("fieldsV1".into(), e.fields.to_fields_v1());
            Value::Object(e.raw)
        })
        .collect()
}

fn entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let raw = e.as_object()?.clone();
            let fields = FieldSet::from_fields_v1(raw.get("fieldsV1").unwrap_or(&Value::Null));
            Some(Entry { raw, fields })
        })
        .collect()
}

fn path_display(path: &[String]) -> String {
    path.iter()
        .filter(|p| p.as_str() != ".")
        .map(|p| match p.strip_prefix("f:") {
            Some(f) => format!(".{f}"),
            None => format!("[{}]", &p[2..]),
        })
        .collect()
}

/// kube-apiserver's apply conflict (`NewApplyConflict`): the causes alone as details, and a
/// message naming the one conflict, or listing them by manager in sorted order.
fn conflict_error(conflicts: &[(String, String)]) -> ApiError {
    let message = match conflicts {
        [(manager, field)] => {
            format!("Apply failed with 1 conflict: conflict with {manager}: {field}")
        }
        _ => {
            let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (manager, field) in conflicts {
                by_manager.entry(manager).or_default().push(field);
            }
            let mut lines = Vec::new();
            for (manager, fields) in by_manager {
                lines.push(format!("conflicts with {manager}:"));
                lines.extend(fields.iter().map(|f| format!("- {f}")));
            }
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        }
    };
    let mut err = ApiError::new(409, "Conflict", message);
    err.details = Some(Box::new(crate::error::Details {
        name: String::new(),
        group: String::new(),
        kind: String::new(),
        causes: conflicts
            .iter()
            .map(|(manager, field)| Cause {
                reason: "FieldManagerConflict".into(),
                message: format!("conflict with {manager}"),
                field: field.clone(),
            })
            .collect(),
        retry_after_seconds: None,
    }));
    err
}

/// The fields of the `kubectl.kubernetes.io/last-applied-configuration` annotation.
fn last_applied_fields(object: &Value, kind: &str) -> FieldSet {
    object
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .map(|config| fields_of(&config, kind))
        .unwrap_or_default()
}

/// What an apply request carries besides the configuration.
pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub force: bool,
    /// `"status"` for the status subresource, empty for the main resource.
    pub subresource: &'a str,
    pub now: &'a str,
}

/// Applies `config` onto `current` (an empty object when creating) and returns the new object
/// with updated `managedFields`.
pub fn apply(
    info: &ResourceInfo,
    current: &Value,
    config: &Value,
    req: &ApplyRequest<'_>,
) -> Result<Value, ApiError> {
    if req.manager.is_empty() {
        // As kube-apiserver: the PatchOptions are invalid (422), not the request.
        let mut err = ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        );
        err.details = Some(Box::new(crate::error::Details {
            name: String::new(),
            group: "meta.k8s.io".into(),
            kind: "PatchOptions".into(),
            causes: vec![Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: is required for apply patch".into(),
                field: "fieldManager".into(),
            }],
            retry_after_seconds: None,
        }));
        return Err(err);
    }
    let new_set = fields_of(config, info.kind);
    let mut all = entries(current);
    // (entry index, field) of every field another manager owns with a different value.
    let mut clashes: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, entry) in all.iter().enumerate() {
        if (entry.manager() == req.manager && entry.is_apply())
            || entry.subresource() != req.subresource
        {
            continue;
        }
        for leaf in new_set.leaves() {
            if leaf.last().map(String::as_str) == Some(".") || !entry.fields.contains_leaf(&leaf) {
                continue;
            }
            if value_at(current, &leaf) != value_at(config, &leaf) {
                clashes.push((i, leaf));
            }
        }
    }
    // As kube-apiserver's lastAppliedManager: `kubectl apply --server-side` takes over fields
    // that the client-side apply annotation lists, so moving from client-side apply works.
    let allowed = if req.manager == "kubectl" {
        last_applied_fields(current, info.kind)
    } else {
        FieldSet::default()
    };
    let force = req.force || clashes.iter().all(|(_, leaf)| allowed.contains_leaf(leaf));
    // (manager as printed, field) of every conflict.
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for (i, leaf) in clashes {
        if force {
            all[i].fields.remove(&leaf);
        } else if !allowed.contains_leaf(&leaf) {
            conflicts.push((all[i].printed(), path_display(&leaf)));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflict_error(&conflicts));
    }

    let mut merged = current.clone();
    let previous = all.iter().position(|e| {
        e.manager() == req.manager && e.is_apply() && e.subresource() == req.subresource
    });
    if let Some(prev) = previous {
        for leaf in all[prev].fields.leaves() {
            if new_set.contains_leaf(&leaf) {
                continue;
            }
            let owned_elsewhere = all.iter().enumerate().any(|(i, e)| {
                i != prev
                    && e.fields.contains_prefix(
                        &leaf[..leaf.len() - usize::from(leaf.last().is_some_and(|l| l == "."))],
                    )
            });
            if !owned_elsewhere {
                remove_at(&mut merged, &leaf);
            }
        }
    }
    let mut config = config.clone();
    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| !ignored_meta(k));
    }
    patch::strategic_merge_patch(&mut merged, &config, info.kind)?;

    let mut entry = Map::new();
    entry.insert("manager".into(), req.manager.into());
    entry.insert("operation".into(), "Apply".into());
    entry.insert("apiVersion".into(), info.api_version().into());
    entry.insert("time".into(), req.now.into());
    entry.insert("fieldsType".into(), "FieldsV1".into());
    entry.insert("fieldsV1".into(), new_set.to_fields_v1());
    if !req.subresource.is_empty() {
        entry.insert("subresource".into(), req.subresource.into());
    }
    let new_entry = Entry {
        raw: entry,
        fields: new_set,
    };
    match previous {
        Some(i) => all[i] = new_entry,
        None => all.push(new_entry),
    }
    let managed = encode_entries(all);
    if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".into(), Value::Array(managed));
    }
    Ok(merged)
}

/// Records a non-apply write (create, update, patch) as kube-apiserver does: the writing
/// manager's `Update` entry gains the fields the write changed, and every other manager loses
/// them. Writes that set `managedFields` themselves (e.g. kubectl's migration of client-side
/// apply ownership) are taken as they are.
pub fn track_update(
    info: &ResourceInfo,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    now: &str,
) {
    let old_managed = old.and_then(|o| o.pointer("/metadata/managedFields"));
    if old.is_some() && new.pointer("/metadata/managedFields") != old_managed {
        return;
    }
    let scope = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            if subresource == "status" {
                map.retain(|k, _| k == "status");
            } else {
                map.remove("status");
            }
        }
        v
    };
    let empty = Value::Object(Map::new());
    let before = scope(old.unwrap_or(&empty));
    let after = scope(new);
    // A `.` member (a list element, a map) changes only by coming into being; what is inside
    // it is tracked by its own fields.
    let changed: Vec<Vec<String>> = fields_of(&after, info.kind)
        .leaves()
        .into_iter()
        .filter(|leaf| match leaf.split_last() {
            Some((dot, parent)) if dot == "." => value_at(&before, parent).is_none(),
            // An empty map, struct or list is no field (Go's omitempty drops it).
            _ => {
                let now = value_at(&after, leaf);
                value_at(&before, leaf) != now
                    && !now.is_some_and(|v| {
                        v.as_object().is_some_and(Map::is_empty)
                            || v.as_array().is_some_and(Vec::is_empty)
                    })
            }
        })
        .collect();
    let mut removed: Vec<Vec<String>> = fields_of(&before, info.kind)
        .leaves()
        .into_iter()
        .filter(|leaf| value_at(&after, leaf).is_none())
        .collect();
    // A map, struct or keyed list the update creates is a member of its set too (`.`); one
    // that goes away leaves every set.
    let mut changed = changed;
    changed.extend(
        members(&after, info.kind)
            .into_iter()
            .filter(|m| value_at(&before, &m[..m.len() - 1]).is_none()),
    );
    removed.extend(
        members(&before, info.kind)
            .into_iter()
            .filter(|m| value_at(&after, &m[..m.len() - 1]).is_none()),
    );
    if changed.is_empty() && removed.is_empty() {
        return;
    }
    let mut all = entries(new);
    let own = |e: &Entry| e.manager() == manager && !e.is_apply() && e.subresource() == subresource;
    for entry in all.iter_mut() {
        let mine = own(entry);
        for leaf in removed.iter().chain(changed.iter().filter(|_| !mine)) {
            entry.fields.remove(leaf);
        }
        if mine {
            for leaf in &changed {
                entry.fields.insert(leaf);
            }
            entry.raw.insert("time".into(), now.into());
        }
    }
    if !all.iter().any(own) && !changed.is_empty() {
        let mut fields = FieldSet::default();
        for leaf in &changed {
            fields.insert(leaf);
        }
        let mut raw = Map::new();
        raw.insert("manager".into(), manager.into());
        raw.insert("operation".into(), "Update".into());
        raw.insert("apiVersion".into(), info.api_version().into());
        raw.insert("time".into(), now.into());
        raw.insert("fieldsType".into(), "FieldsV1".into());
        if !subresource.is_empty() {
            raw.insert("subresource".into(), subresource.into());
        }
        all.push(Entry { raw, fields });
    }
    let managed = encode_entries(all);
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        if managed.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(managed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;
    use serde_json::json;

    fn svc_info() -> &'static ResourceInfo {
        registry::get(registry::lookup("", "v1", "services").unwrap())
    }

    fn req(manager: &str, force: bool) -> ApplyRequest<'_> {
        ApplyRequest {
            manager,
            force,
            subresource: "",
            now: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn apply_removes_fields_no_longer_applied_and_detects_conflicts() {
        let info = svc_info();
        let base = json!({"metadata": {"name": "s", "namespace": "default"}});
        let v1 = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "1", "b": "2"}},
                        "spec": {"ports": [{"port": 80}, {"port": 443}]}});
        let one = apply(info, &base, &v1, &req("alice", false)).unwrap();
        assert_eq!(one["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        let fields = &one["metadata"]["managedFields"][0]["fieldsV1"];
        assert!(
            fields["f:spec"]["f:ports"]["k:{\"port\":80,\"protocol\":\"TCP\"}"]["."].is_object(),
            "{fields}"
        );

        let v2 = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "1"}},
                        "spec": {"ports": [{"port": 80}]}});
        let two = apply(info, &one, &v2, &req("alice", false)).unwrap();
        assert_eq!(two["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(two["spec"]["ports"], json!([{"port": 80}]));

        let bob = json!({"metadata": {"name": "s", "labels": {"a": "other"}}});
        let err = apply(info, &two, &bob, &req("bob", false)).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        assert!(err.message.contains("alice"), "{}", err.message);
        let same = json!({"metadata": {"name": "s", "labels": {"a": "1"}}});
        apply(info, &two, &same, &req("bob", false)).unwrap();
        let forced = apply(info, &two, &bob, &req("bob", true)).unwrap();
        assert_eq!(forced["metadata"]["labels"]["a"], "other");
    }

    #[test]
    fn updates_take_ownership_from_appliers() {
        let info = svc_info();
        let base = json!({"metadata": {"name": "s", "namespace": "default"}});
        let applied = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "1"}}});
        let one = apply(info, &base, &applied, &req("alice", false)).unwrap();
        let mut edited = one.clone();
        edited["metadata"]["labels"]["a"] = json!("2");
        track_update(
            info,
            Some(&one),
            &mut edited,
            "kubectl-edit",
            "",
            "2026-01-01T00:00:00Z",
        );
        let managers: Vec<&str> = edited["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert_eq!(managers, ["kubectl-edit"], "alice lost her only field");
        let err = apply(info, &edited, &applied, &req("alice", false)).unwrap_err();
        assert!(err.message.contains("kubectl-edit"), "{}", err.message);
    }
}
