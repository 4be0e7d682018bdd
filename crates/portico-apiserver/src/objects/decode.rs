//! Strict decoding through the real Kubernetes type (k8s-openapi, via the registry's typed
//! check), and the fields a request carries that the type does not know.

use serde_json::{Map, Value};

use super::FieldValidation;
use crate::error::ApiError;
use crate::registry::ResourceInfo;

/// Strict decoding through the real Kubernetes type; the stored form is the re-encoded one
/// (unknown fields dropped, as kube-apiserver does for `Ignore`/`Warn`; empty maps too).
pub(crate) fn decode(
    info: &ResourceInfo,
    object: &Value,
    mode: FieldValidation,
) -> Result<Value, ApiError> {
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
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {list}",
                info.kind, info.version, info.kind
            )));
        }
    }
    let mut typed = typed;
    drop_empty_maps(info, &mut typed, &mut Vec::new());
    go_zero_fields(info, &mut typed);
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

/// Removes empty maps, as Go's `omitempty` does when kube-apiserver encodes the object.
fn drop_empty_maps(info: &ResourceInfo, value: &mut Value, path: &mut Vec<String>) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    map.retain(|k, v| {
        path.push(k.clone());
        let fields: Vec<&str> = path.iter().map(String::as_str).collect();
        let keep = !(info.is_map_field(&fields) && v.as_object().is_some_and(Map::is_empty));
        path.pop();
        keep
    });
    for (k, v) in map.iter_mut() {
        path.push(k.clone());
        drop_empty_maps(info, v, path);
        path.pop();
    }
}

/// Fields Go always encodes (no `omitempty`) that the Rust types leave out when unset: a core
/// Event's `eventTime` (null) and reporting component and instance (empty).
fn go_zero_fields(info: &ResourceInfo, value: &mut Value) {
    if (info.group, info.kind) != ("", "Event") {
        return;
    }
    if let Some(map) = value.as_object_mut() {
        map.entry("eventTime").or_insert(Value::Null);
        map.entry("reportingComponent").or_insert_with(|| "".into());
        map.entry("reportingInstance").or_insert_with(|| "".into());
    }
}
