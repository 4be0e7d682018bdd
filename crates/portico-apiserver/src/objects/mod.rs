//! The write semantics of the API, independent of HTTP: create, replace, patch, apply, delete,
//! with server-set metadata, status subresource rules, defaulting, validation and finalizers.
//!
//! Every write ends in `Objects::commit`, which runs `rules::prepare` inside the store's
//! read-modify-write closure: the old object, the requested new object and the rules meet in
//! one place, so the invariants hold for every verb:
//! - `uid`, `creationTimestamp`, `name`, `namespace`, `deletionTimestamp` come from the server;
//! - `generation` (kinds that keep one) starts at 1 and grows when anything outside `metadata` and
//!   `status` changes;
//! - main-resource writes keep the stored `.status`; `/status` writes change only `.status`;
//! - an object being deleted whose last finalizer is removed is deleted.
//!
//! Submodules: `verbs` (what each verb asks of the store), `rules` (the server-set metadata
//! and subresource invariants, then per-kind defaulting, decoding and validation), `decode`
//! (strict decoding through the Kubernetes types, unknown fields) and `defaults` (per-kind
//! defaulting).

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use serde_json::{Map, Value, json};

use crate::apply;
use crate::error::ApiError;
use crate::registry::{self, ResourceId};
use crate::store::{Committed, Mutation, ObjectKey, Store};

mod decode;
mod defaults;
mod rules;
mod verbs;

pub use crate::registry::Part;
pub use decode::unknown_fields_of;

/// `fieldValidation` of a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// Options common to all writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub field_validation: FieldValidation,
    pub force: bool,
    /// The `User-Agent` of the request: names the field manager when `fieldManager` is unset.
    pub user_agent: Option<String>,
}

impl WriteOptions {
    /// The field manager of a non-apply write, named as kube-apiserver does.
    pub(crate) fn update_manager(&self) -> String {
        if let Some(m) = &self.field_manager {
            return m.clone();
        }
        let ua = self.user_agent.as_deref().unwrap_or_default();
        let name = ua.split('/').next().unwrap_or_default().trim();
        if name.is_empty() {
            "unknown".into()
        } else {
            name.chars().take(128).collect()
        }
    }
}

/// The content types of PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}
/// The object verbs over a [`Store`].
#[derive(Debug)]
pub struct Objects {
    store: Arc<Store>,
    next_cluster_ip: AtomicU32,
}

/// The current time as Kubernetes writes `metav1.Time`.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub(crate) fn meta(object: &Value) -> &Value {
    &object["metadata"]
}

pub(crate) fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("made an object above")
}

pub(crate) fn str_field<'v>(object: &'v Value, field: &str) -> Option<&'v str> {
    meta(object)
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub(crate) fn finalizers(object: &Value) -> bool {
    meta(object)
        .get("finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

impl Objects {
    pub fn new(store: Arc<Store>) -> Self {
        Objects {
            store,
            next_cluster_ip: AtomicU32::new(1),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs `build` under the store lock, then applies the server's rules and commits.
    pub(crate) fn commit<F>(
        &self,
        resource: ResourceId,
        key: &ObjectKey,
        opts: &WriteOptions,
        build: F,
        part: Part,
    ) -> Result<Committed, ApiError>
    where
        F: FnOnce(Option<&Arc<Value>>) -> Result<Value, ApiError>,
    {
        self.commit_as(resource, key, opts, build, part, true)
    }

    /// [`Self::commit`]; `track` records the write in `managedFields` as an `Update`
    /// (server-side apply records its own `Apply` entries instead).
    pub(crate) fn commit_as<F>(
        &self,
        resource: ResourceId,
        key: &ObjectKey,
        opts: &WriteOptions,
        build: F,
        part: Part,
        track: bool,
    ) -> Result<Committed, ApiError>
    where
        F: FnOnce(Option<&Arc<Value>>) -> Result<Value, ApiError>,
    {
        let info = registry::get(resource);
        let mut released = None;
        let committed = self.store.mutate(resource, key, opts.dry_run, |current| {
            let requested = build(current)?;
            let tracked = track.then(|| requested.clone());
            let mut object = rules::prepare(
                info,
                current.map(|c| &**c),
                requested,
                part,
                opts,
                &self.next_cluster_ip,
            )?;
            if let Some(requested) = tracked {
                // Fields the registry allocates are nobody's unless the request set them.
                let mut view = defaults::as_tracked(info, &requested, &object);
                let subresource = if part == Part::Status { "status" } else { "" };
                let manager = opts.update_manager();
                apply::track_update(
                    info,
                    current.map(|c| &**c),
                    &mut view,
                    &manager,
                    subresource,
                    &now(),
                );
                match meta(&view).get("managedFields") {
                    Some(mf) => meta_mut(&mut object).insert("managedFields".into(), mf.clone()),
                    None => meta_mut(&mut object).remove("managedFields"),
                };
            }
            if let Some(current) = current {
                if **current == object {
                    return Ok(Mutation::Unchanged);
                }
                if meta(&object).get("deletionTimestamp").is_some() && !finalizers(&object) {
                    released = Some(object);
                    return Ok(Mutation::Delete);
                }
            }
            Ok(Mutation::Put(object))
        })?;
        // The write that removed the last finalizer answers with what it wrote, as
        // kube-apiserver does, not with the object as it was stored.
        match released {
            Some(object) => Ok(Committed {
                kind: committed.kind,
                object: Arc::new(object),
            }),
            None => Ok(committed),
        }
    }
}
