//! The verbs: what create, replace, patch (all four content types), patch of a view and delete
//! ask of the store. Each builds the requested object under the store lock and hands it to
//! `Objects::commit`, which applies the server's rules (`rules.rs`).

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Objects, PatchType, WriteOptions, finalizers, meta, meta_mut, now, str_field};
use crate::apply::{self, ApplyRequest};
use crate::error::{ApiError, Cause};
use crate::patch;
use crate::registry::{self, Part, ResourceId, ResourceInfo};
use crate::store::{Committed, Mutation, ObjectKey};

fn random_suffix(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Objects {
    fn check_namespace(&self, info: &ResourceInfo, namespace: &str) -> Result<(), ApiError> {
        if info.namespaced && !self.store.namespace_exists(namespace) {
            return Err(ApiError::namespace_not_found(namespace));
        }
        Ok(())
    }

    /// Checks `apiVersion`/`kind`/`namespace` of a request body against the URL and fills them in.
    fn identify(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        body: &mut Value,
    ) -> Result<(), ApiError> {
        let Some(map) = body.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        };
        let want_av = info.api_version();
        match map.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("apiVersion".into(), want_av.clone().into());
            }
            Some(av) if av == want_av => {}
            Some(av) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want_av})"
                )));
            }
        }
        match map.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("kind".into(), info.kind.into());
            }
            Some(k) if k == info.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "{k} in version \"{}\" cannot be handled as a {}: the kind in the data does not match",
                    info.version, info.kind
                )));
            }
        }
        let meta = meta_mut(body);
        if info.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), namespace.into());
                }
                Some(ns) if ns == namespace => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        } else {
            meta.remove("namespace");
        }
        Ok(())
    }

    /// POST.
    pub fn create(
        &self,
        resource: ResourceId,
        namespace: &str,
        mut body: Value,
        opts: &WriteOptions,
    ) -> Result<Arc<Value>, ApiError> {
        let info = registry::get(resource);
        self.identify(info, namespace, &mut body)?;
        let name = match (str_field(&body, "name"), str_field(&body, "generateName")) {
            (Some(n), _) => n.to_string(),
            (None, Some(prefix)) => format!("{prefix}{}", random_suffix(5)),
            (None, None) => {
                return Err(ApiError::invalid(
                    info,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
        };
        meta_mut(&mut body).insert("name".into(), name.clone().into());
        self.check_namespace(info, namespace)?;
        let key = ObjectKey::new(if info.namespaced { namespace } else { "" }, name.clone());
        let committed = self.commit(
            resource,
            &key,
            opts,
            |current| {
                if current.is_some() {
                    return Err(ApiError::already_exists(info, &name));
                }
                Ok(body)
            },
            Part::Main,
        )?;
        if opts.dry_run {
            // Nothing was stored, so there is no version of it (as kube-apiserver answers).
            let mut object = (*committed.object).clone();
            meta_mut(&mut object).remove("resourceVersion");
            return Ok(Arc::new(object));
        }
        Ok(committed.object)
    }

    /// PUT on the main resource or its status.
    pub fn replace(
        &self,
        resource: ResourceId,
        key: &ObjectKey,
        mut body: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Committed, ApiError> {
        let info = registry::get(resource);
        self.identify(info, &key.namespace, &mut body)?;
        match str_field(&body, "name") {
            Some(n) if n == key.name => {}
            None => {
                meta_mut(&mut body).insert("name".into(), key.name.clone().into());
            }
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({})",
                    key.name
                )));
            }
        }
        let wanted_rv = str_field(&body, "resourceVersion").map(str::to_string);
        self.commit(
            resource,
            key,
            opts,
            |current| {
                let Some(current) = current else {
                    return Err(ApiError::not_found(info, &key.name));
                };
                if let Some(rv) = &wanted_rv
                    && str_field(current, "resourceVersion") != Some(rv.as_str())
                {
                    return Err(ApiError::conflict(info, &key.name));
                }
                Ok(body)
            },
            part,
        )
    }

    /// PATCH (all four content types) on the main resource or its status.
    pub fn patch(
        &self,
        resource: ResourceId,
        key: &ObjectKey,
        patch_type: PatchType,
        body: &[u8],
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Committed, ApiError> {
        let info = registry::get(resource);
        let patch: Value = if patch_type == PatchType::Apply {
            serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
        };
        if patch_type == PatchType::Apply {
            let mut config = patch;
            self.identify(info, &key.namespace, &mut config)?;
            if str_field(&config, "name").is_some_and(|n| n != key.name) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            let manager = opts.field_manager.clone().unwrap_or_default();
            let exists = self.store.get(resource, key).is_some();
            if !exists {
                self.check_namespace(info, &key.namespace)?;
            }
            let subresource = if part == Part::Status { "status" } else { "" };
            let now = now();
            return self.commit_as(
                resource,
                key,
                opts,
                |current| {
                    let base = match current {
                        Some(c) => (**c).clone(),
                        None if part == Part::Status => {
                            return Err(ApiError::not_found(info, &key.name));
                        }
                        None => json!({"apiVersion": info.api_version(), "kind": info.kind,
                                   "metadata": {"name": key.name, "namespace": key.namespace}}),
                    };
                    if let Some(rv) = str_field(&config, "resourceVersion")
                        && current.is_some()
                        && str_field(&base, "resourceVersion") != Some(rv)
                    {
                        return Err(ApiError::conflict(info, &key.name));
                    }
                    let req = ApplyRequest {
                        manager: &manager,
                        force: opts.force,
                        subresource,
                        now: &now,
                    };
                    apply::apply(info, &base, &config, &req)
                },
                part,
                false,
            );
        }
        self.commit(
            resource,
            key,
            opts,
            |current| {
                let Some(current) = current else {
                    return Err(ApiError::not_found(info, &key.name));
                };
                let mut object = (**current).clone();
                match patch_type {
                    PatchType::Json => patch::json_patch(&mut object, &patch)?,
                    PatchType::Merge => patch::merge_patch(&mut object, &patch),
                    PatchType::Strategic => {
                        patch::strategic_merge_patch(&mut object, &patch, info.kind)?
                    }
                    PatchType::Apply => unreachable!("handled above"),
                }
                if let Some(rv) = patch
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    && str_field(current, "resourceVersion") != Some(rv)
                {
                    return Err(ApiError::conflict(info, &key.name));
                }
                Ok(object)
            },
            part,
        )
    }

    /// PATCH of a view (JSON, merge or strategic): the patch applies to the object in the
    /// view's form, and the result is stored in the storage form.
    pub fn patch_view(
        &self,
        view: &crate::views::View,
        key: &ObjectKey,
        patch_type: PatchType,
        body: &[u8],
        opts: &WriteOptions,
    ) -> Result<Committed, ApiError> {
        let info = registry::get(view.storage);
        let patch: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        self.commit(
            view.storage,
            key,
            opts,
            |current| {
                let Some(current) = current else {
                    return Err(ApiError::not_found(info, &key.name));
                };
                let mut object = (view.to_view)(current);
                match patch_type {
                    PatchType::Json => patch::json_patch(&mut object, &patch)?,
                    PatchType::Merge => patch::merge_patch(&mut object, &patch),
                    PatchType::Strategic | PatchType::Apply => {
                        patch::strategic_merge_patch(&mut object, &patch, info.kind)?
                    }
                }
                Ok((view.to_storage)(&object))
            },
            Part::Main,
        )
    }

    /// DELETE of one object: immediate without finalizers, otherwise marks `deletionTimestamp`.
    pub fn delete(
        &self,
        resource: ResourceId,
        key: &ObjectKey,
        preconditions: &Value,
        opts: &WriteOptions,
    ) -> Result<Committed, ApiError> {
        let info = registry::get(resource);
        let now = now();
        let committed = self.store.mutate(resource, key, opts.dry_run, |current| {
            let Some(current) = current else {
                return Err(ApiError::not_found(info, &key.name));
            };
            if let Some(uid) = preconditions.get("uid").and_then(Value::as_str)
                && str_field(current, "uid") != Some(uid) {
                    // As kube-apiserver's storage: the kind (with its group) and the name.
                    let mut err = ApiError::new(409, "Conflict", format!(
                        "Operation cannot be fulfilled on {} \"{}\": the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
                        info.kind, key.name, str_field(current, "uid").unwrap_or_default()));
                    err.details = Some(Box::new(crate::error::Details {
                        name: key.name.clone(),
                        group: info.group.into(),
                        kind: info.kind.into(),
                        causes: Vec::new(),
                        retry_after_seconds: None,
                    }));
                    return Err(err);
                }
            if let Some(rv) = preconditions.get("resourceVersion").and_then(Value::as_str)
                && str_field(current, "resourceVersion") != Some(rv) {
                    return Err(ApiError::conflict(info, &key.name));
                }
            if finalizers(current) {
                if meta(current).get("deletionTimestamp").is_some() {
                    return Ok(Mutation::Unchanged);
                }
                let mut marked = (**current).clone();
                let m = meta_mut(&mut marked);
                m.insert("deletionTimestamp".into(), now.clone().into());
                m.insert("deletionGracePeriodSeconds".into(), 0.into());
                return Ok(Mutation::Put(marked));
            }
            Ok(Mutation::Delete)
        })?;
        if resource == registry::namespaces()
            && committed.kind == Some(crate::store::EventType::Deleted)
        {
            self.store.purge_namespace(&key.name);
        }
        Ok(committed)
    }
}
