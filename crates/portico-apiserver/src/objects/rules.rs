//! The server's rules for every write, in the order they run: the server-set metadata
//! (`uid`, `creationTimestamp`, `generation`, `resourceVersion`), the status subresource split,
//! the finalizer rule of an object being deleted, then per-kind defaulting (`defaults.rs`),
//! strict decoding (`decode.rs`) and validation ([`crate::validate`]) (admission).

use std::sync::atomic::AtomicU32;

use serde_json::{Map, Value};

use super::{WriteOptions, decode, defaults, meta, meta_mut, now, str_field};
use crate::error::{ApiError, Cause};
use crate::registry::{Part, ResourceInfo};
use crate::validate;

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

/// Applies the server's rules to a requested object given the stored one.
pub(crate) fn prepare(
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
            if info.tracks_generation() {
                m.insert("generation".into(), 1.into());
            } else {
                m.remove("generation");
            }
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
            // Set below, once defaulted and decoded, as kube-apiserver compares.
            m.remove("generation");
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
                let added: Vec<String> = after
                    .iter()
                    .filter(|f| !before.contains(f))
                    .map(|f| format!("{:?}", f.as_str().unwrap_or_default()))
                    .collect();
                if !added.is_empty() {
                    let cause = Cause {
                        reason: "FieldValueForbidden".into(),
                        message: format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                            added.join(", ")
                        ),
                        field: "metadata.finalizers".into(),
                    };
                    // kube-apiserver validates the update's metadata twice (generic and
                    // strategy), so the cause comes twice.
                    return Err(ApiError::invalid(info, &name, vec![cause.clone(), cause]));
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
    defaults::defaults(info, current, &mut object, ips);
    let mut typed = decode::decode(info, &object, opts.field_validation)?;
    if let Some(current) = current
        && info.tracks_generation()
    {
        let generation = meta(current)
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let changed_spec = spec_part(current) != spec_part(&typed);
        meta_mut(&mut typed).insert(
            "generation".into(),
            (generation + i64::from(changed_spec)).into(),
        );
    }
    validate::object(info, current, &typed, part)?;
    Ok(typed)
}
