//! The write semantics of the API, independent of HTTP: create, replace, patch, apply, delete,
//! with server-set metadata, status subresource rules, defaulting, validation and finalizers.
//!
//! Every write ends in [`Objects::commit`], which runs [`prepare`] inside the store's
//! read-modify-write closure: the old object, the requested new object and the rules meet in
//! one place, so the invariants hold for every verb:
//! - `uid`, `creationTimestamp`, `name`, `namespace`, `deletionTimestamp` come from the server;
//! - `generation` starts at 1 and grows when anything outside `metadata` and `status` changes;
//! - main-resource writes keep the stored `.status`; `/status` writes change only `.status`;
//! - an object being deleted whose last finalizer is removed is deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Map, Value, json};

use crate::apply::{self, ApplyRequest};
use crate::error::{ApiError, Cause};
use crate::patch;
use crate::registry::{self, ResourceId, ResourceInfo};
use crate::store::{Committed, Mutation, ObjectKey, Store};
use crate::validate;

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
    fn update_manager(&self) -> String {
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

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
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

fn random_suffix(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn new_uid() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut b = bytes;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn meta(object: &Value) -> &Value {
    &object["metadata"]
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("made an object above")
}

fn str_field<'v>(object: &'v Value, field: &str) -> Option<&'v str> {
    meta(object)
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Everything but `metadata` and `status`: what `generation` tracks.
fn spec_part(object: &Value) -> Map<String, Value> {
    object
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn finalizers(object: &Value) -> bool {
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
                    return Err(ApiError::new(409, "Conflict", format!(
                        "Operation cannot be fulfilled on {} \"{}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        info.qualified_plural(), key.name, str_field(current, "uid").unwrap_or_default())));
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

    /// Runs `build` under the store lock, then applies the server's rules and commits.
    fn commit<F>(
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
    fn commit_as<F>(
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
        self.store.mutate(resource, key, opts.dry_run, |current| {
            let requested = build(current)?;
            let mut object = prepare(
                info,
                current.map(|c| &**c),
                requested,
                part,
                opts,
                &self.next_cluster_ip,
            )?;
            if track {
                let subresource = if part == Part::Status { "status" } else { "" };
                let manager = opts.update_manager();
                apply::track_update(
                    info,
                    current.map(|c| &**c),
                    &mut object,
                    &manager,
                    subresource,
                    &now(),
                );
            }
            if let Some(current) = current {
                if **current == object {
                    return Ok(Mutation::Unchanged);
                }
                if meta(&object).get("deletionTimestamp").is_some() && !finalizers(&object) {
                    return Ok(Mutation::Delete);
                }
            }
            Ok(Mutation::Put(object))
        })
    }
}

/// Applies the server's rules to a requested object given the stored one.
fn prepare(
    info: &ResourceInfo,
    current: Option<&Value>,
    mut object: Value,
    part: Part,
    opts: &WriteOptions,
    ips: &AtomicU32,
) -> Result<Value, ApiError> {
    let name = str_field(&object, "name").unwrap_or_default().to_string();
    match current {
        None => {
            let m = meta_mut(&mut object);
            m.insert("uid".into(), new_uid().into());
            m.insert("creationTimestamp".into(), now().into());
            m.insert("generation".into(), 1.into());
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("resourceVersion");
            if info.has_status {
                // As kube-apiserver: the status of a new object is the server's to set.
                if let Some(map) = object.as_object_mut() {
                    map.remove("status");
                }
            }
            validate::check_name(info, &name)?;
        }
        Some(current) => {
            if part == Part::Status {
                let status = object.get("status").cloned();
                let mut merged = current.clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        merged.as_object_mut().map(|m| m.remove("status"));
                    }
                }
                if let Some(mf) = meta(&object).get("managedFields") {
                    meta_mut(&mut merged).insert("managedFields".into(), mf.clone());
                }
                object = merged;
            } else if info.has_status {
                let map = object.as_object_mut().expect("identified as object");
                match current.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
            }
            let cur_meta = meta(current).clone();
            let changed_spec = spec_part(current) != spec_part(&object);
            let m = meta_mut(&mut object);
            for field in [
                "uid",
                "creationTimestamp",
                "name",
                "namespace",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generateName",
            ] {
                match cur_meta.get(field) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
            if !m.contains_key("managedFields")
                && let Some(mf) = cur_meta.get("managedFields")
            {
                m.insert("managedFields".into(), mf.clone());
            }
            let generation = cur_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            m.insert(
                "generation".into(),
                (generation + i64::from(changed_spec)).into(),
            );
            m.insert(
                "resourceVersion".into(),
                cur_meta
                    .get("resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
            if cur_meta.get("deletionTimestamp").is_some() {
                // Finalizers may only be removed from an object being deleted.
                let before = cur_meta
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let after = m
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if after.iter().any(|f| !before.contains(f)) {
                    return Err(ApiError::invalid(info, &name, vec![Cause {
                        reason: "FieldValueForbidden".into(),
                        message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                        field: "metadata.finalizers".into(),
                    }]));
                }
            }
        }
    }
    if meta(&object)
        .get("managedFields")
        .is_some_and(|mf| mf.as_array().is_some_and(Vec::is_empty))
    {
        meta_mut(&mut object).remove("managedFields");
    }
    defaults(info, current, &mut object, ips);
    let typed = decode(info, &object, opts.field_validation)?;
    validate::object(info, current, &typed, part)?;
    Ok(typed)
}

/// Strict decoding through the real Kubernetes type; the stored form is the re-encoded one
/// (unknown fields dropped, as kube-apiserver does for `Ignore`/`Warn`).
fn decode(info: &ResourceInfo, object: &Value, mode: FieldValidation) -> Result<Value, ApiError> {
    let typed = info.decode_typed(object).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            info.kind, info.version, info.kind
        ))
    })?;
    if mode == FieldValidation::Strict {
        let mut unknown = Vec::new();
        unknown_fields(object, &typed, &mut String::new(), &mut unknown);
        if !unknown.is_empty() {
            let list = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {list}"
            )));
        }
    }
    Ok(typed)
}

/// The fields of `object` that its Kubernetes type does not know (for `fieldValidation=Warn`).
pub fn unknown_fields_of(info: &ResourceInfo, object: &Value) -> Vec<String> {
    let Ok(typed) = info.decode_typed(object) else {
        return Vec::new();
    };
    let mut unknown = Vec::new();
    unknown_fields(object, &typed, &mut String::new(), &mut unknown);
    unknown
}

fn unknown_fields(input: &Value, decoded: &Value, path: &mut String, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(i), Value::Object(d)) => {
            for (k, v) in i {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match d.get(k) {
                    Some(dv) => unknown_fields(v, dv, path, out),
                    None if !v.is_null() => out.push(path.clone()),
                    None => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(d)) => {
            for (idx, (iv, dv)) in i.iter().zip(d).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{idx}]"));
                unknown_fields(iv, dv, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The defaulting kube-apiserver does for the fields clients read back.
fn defaults(info: &ResourceInfo, current: Option<&Value>, object: &mut Value, ips: &AtomicU32) {
    match (info.group, info.kind) {
        ("", "Namespace") => {
            if object.pointer("/spec/finalizers").is_none() {
                object["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            let terminating = meta(object).get("deletionTimestamp").is_some();
            object["status"] = json!({"phase": if terminating { "Terminating" } else { "Active" }});
            let name = str_field(object, "name").unwrap_or_default().to_string();
            let labels = meta_mut(object)
                .entry("labels")
                .or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), name.into());
            }
        }
        ("", "Service") => {
            let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
                return;
            };
            let kind = spec
                .entry("type")
                .or_insert_with(|| "ClusterIP".into())
                .as_str()
                .unwrap_or_default()
                .to_string();
            spec.entry("sessionAffinity")
                .or_insert_with(|| "None".into());
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    p.entry("protocol").or_insert_with(|| "TCP".into());
                    if kind != "ExternalName"
                        && !p.contains_key("targetPort")
                        && let Some(port) = p.get("port").cloned()
                    {
                        p.insert("targetPort".into(), port);
                    }
                }
            }
            if kind == "ExternalName" {
                return;
            }
            let previous_ip = current.and_then(|c| c.pointer("/spec/clusterIP")).cloned();
            if spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .is_none_or(|s| s.is_empty())
            {
                let ip = previous_ip.unwrap_or_else(|| {
                    let n = ips.fetch_add(1, Ordering::Relaxed);
                    format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff).into()
                });
                spec.insert("clusterIP".into(), ip);
            }
            if let Some(ip) = spec.get("clusterIP").cloned() {
                spec.entry("clusterIPs").or_insert_with(|| json!([ip]));
            }
            spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
            spec.entry("ipFamilyPolicy")
                .or_insert_with(|| "SingleStack".into());
            spec.entry("internalTrafficPolicy")
                .or_insert_with(|| "Cluster".into());
            if object.get("status").is_none() {
                object["status"] = json!({"loadBalancer": {}});
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            if let Some(ports) = object.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    p.entry("protocol").or_insert_with(|| "TCP".into());
                }
            }
        }
        ("", "Secret") => {
            if let Some(map) = object.as_object_mut() {
                map.entry("type").or_insert_with(|| "Opaque".into());
                // stringData is write-only: merged into data (base64) as kube-apiserver does.
                if let Some(Value::Object(string_data)) = map.remove("stringData") {
                    use base64::Engine;
                    let data = map.entry("data").or_insert_with(|| json!({}));
                    if let Some(d) = data.as_object_mut() {
                        for (k, v) in string_data {
                            let text = v.as_str().unwrap_or_default();
                            d.insert(
                                k,
                                base64::engine::general_purpose::STANDARD
                                    .encode(text)
                                    .into(),
                            );
                        }
                    }
                }
            }
        }
        ("networking.k8s.io", "Ingress") if object.get("status").is_none() => {
            object["status"] = json!({"loadBalancer": {}});
        }
        _ => {}
    }
}
