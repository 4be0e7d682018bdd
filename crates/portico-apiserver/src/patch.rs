//! The three PATCH formats of the Kubernetes API: JSON merge patch (RFC 7386) and JSON patch
//! (RFC 6902) by the `json-patch` crate, with kube-apiserver's status codes; strategic merge
//! patch (list merge keys and `$patch` directives, with the merge keys of the kinds this
//! server serves) is ours.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// RFC 7386: maps merge, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`, applied all or
/// nothing. A body that is not an array is a 400, as kube-apiserver's "error decoding patch";
/// an operation that does not decode (an unknown `op`, no `path`) or does not apply is a 422.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    if !patch.is_array() {
        return Err(ApiError::bad_request(
            "json patch must be a JSON array of operations",
        ));
    }
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| rejected(&e.to_string()))?;
    json_patch::patch(doc, &ops).map_err(|e| {
        let path = e.path.as_str();
        match e.kind {
            json_patch::PatchErrorKind::TestFailed => {
                rejected(&format!("testing value {path} failed"))
            }
            kind => {
                let op = ops.get(e.operation).map(op_name).unwrap_or_default();
                rejected(&format!("{op} operation on {path:?}: {kind}"))
            }
        }
    })
}

/// kube-apiserver's 422 for a JSON patch that does not apply, with what went wrong.
fn rejected(why: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("the server rejected our request due to an error in our request: {why}"),
    )
}

fn op_name(op: &json_patch::PatchOperation) -> &'static str {
    use json_patch::PatchOperation as Op;
    match op {
        Op::Add(_) => "add",
        Op::Remove(_) => "remove",
        Op::Replace(_) => "replace",
        Op::Move(_) => "move",
        Op::Copy(_) => "copy",
        Op::Test(_) => "test",
    }
}

/// How strategic merge patch treats a list field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    Atomic,
    /// Elements are maps merged by the value of this key.
    MergeByKey(&'static str),
    /// A set of primitives: union.
    MergePrimitives,
}

/// Merge strategies for the lists of the served kinds (from the Kubernetes API's
/// `patchStrategy`/`patchMergeKey` tags); all other lists are atomic.
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    match (kind, path) {
        (_, ["metadata", "ownerReferences"]) => ListStrategy::MergeByKey("uid"),
        (_, ["metadata", "finalizers"]) => ListStrategy::MergePrimitives,
        ("Service", ["spec", "ports"]) => ListStrategy::MergeByKey("port"),
        ("Service" | "Namespace", ["status", "conditions"]) => ListStrategy::MergeByKey("type"),
        _ => ListStrategy::Atomic,
    }
}

/// Removes `$`-directives from a value that is inserted as a whole.
fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Applies a strategic merge patch for an object of `kind`.
pub fn strategic_merge_patch(
    target: &mut Value,
    patch: &Value,
    kind: &str,
) -> Result<(), ApiError> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::bad_request(
            "strategic merge patch must be a JSON object",
        ));
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    smp_map(
        target.as_object_mut().expect("object"),
        patch,
        kind,
        &mut Vec::new(),
    )
}

fn smp_map<'p>(
    target: &mut Map<String, Value>,
    patch: &'p Map<String, Value>,
    kind: &str,
    path: &mut Vec<&'p str>,
) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_directives(&Value::Object(patch.clone()))
                .as_object()
                .cloned()
                .unwrap_or_default();
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some(other) if other != "merge" => {
            return Err(ApiError::bad_request(format!(
                "unknown patch type {other:?}"
            )));
        }
        _ => {}
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((field, value));
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        path.push(key.as_str());
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(pm) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(key);
                } else {
                    let entry = target
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !entry.is_object() {
                        *entry = Value::Object(Map::new());
                    }
                    smp_map(entry.as_object_mut().expect("object"), pm, kind, path)?;
                }
            }
            Value::Array(items) => {
                let strategy = list_strategy(kind, path);
                let merged = smp_list(target.get(key), items, strategy, kind, path)?;
                target.insert(key.clone(), merged);
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
        path.pop();
    }
    for (field, order) in orders {
        path.push(field);
        let strategy = list_strategy(kind, path);
        path.pop();
        if let (Some(Value::Array(list)), Some(order)) = (target.get_mut(field), order.as_array()) {
            reorder(list, order, strategy);
        }
    }
    Ok(())
}

fn element_key(item: &Value, strategy: ListStrategy) -> Option<&Value> {
    match strategy {
        ListStrategy::MergeByKey(k) => item.get(k),
        _ => Some(item),
    }
}

fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let position = |item: &Value| {
        let key = element_key(item, strategy);
        order
            .iter()
            .position(|o| element_key(o, strategy) == key)
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(position);
}

fn smp_list<'p>(
    current: Option<&Value>,
    items: &'p [Value],
    strategy: ListStrategy,
    kind: &str,
    path: &mut Vec<&'p str>,
) -> Result<Value, ApiError> {
    let replace = items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    let current = current
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if replace || strategy == ListStrategy::Atomic {
        let kept = items
            .iter()
            .filter(|i| i.get("$patch").is_none() || !replace)
            .map(strip_directives)
            .collect();
        return Ok(Value::Array(kept));
    }
    let mut out = current;
    match strategy {
        ListStrategy::MergePrimitives => {
            for item in items {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
        }
        ListStrategy::MergeByKey(key) => {
            for item in items {
                let Some(item_map) = item.as_object() else {
                    return Err(ApiError::bad_request(format!(
                        "list elements of {} must be objects",
                        path.join(".")
                    )));
                };
                let id = item.get(key);
                let existing = out.iter().position(|o| id.is_some() && o.get(key) == id);
                let delete = item_map.get("$patch").and_then(Value::as_str) == Some("delete");
                match (existing, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        if let Some(m) = out[i].as_object_mut() {
                            smp_map(m, item_map, kind, path)?;
                        }
                    }
                    (None, false) => out.push(strip_directives(item)),
                }
            }
        }
        ListStrategy::Atomic => unreachable!("handled above"),
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "replace", "path": "/list/0", "value": 0},
                {"op": "test", "path": "/list/2", "value": 3},
                {"op": "copy", "from": "/list", "path": "/copy"},
                {"op": "move", "from": "/copy", "path": "/moved"},
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"b/c": "2"}}, "list": [0, 2, 3], "moved": [0, 2, 3]})
        );
        let err = json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/list/0", "value": 9}]),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}]))
                .unwrap_err()
                .code,
            422
        );
        // As kube-apiserver: an unknown operation is a 422, a body that is no array a 400.
        let unknown = json_patch(&mut doc, &json!([{"op": "bogus", "path": "/a"}])).unwrap_err();
        assert_eq!((unknown.code, unknown.reason), (422, "Invalid"));
        assert_eq!(
            json_patch(&mut doc, &json!({"op": "add"}))
                .unwrap_err()
                .code,
            400
        );
        // All or nothing: a failing operation leaves the earlier ones undone.
        let before = doc.clone();
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/x", "value": 2}])
            )
            .is_err()
        );
        assert_eq!(doc, before);
    }

    #[test]
    fn strategic_merge_by_key_and_directives() {
        let mut svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}], "selector": {"app": "a"}},
                              "metadata": {"finalizers": ["x"]}});
        strategic_merge_patch(
            &mut svc,
            &json!({"spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}, {"port": 8080}],
                             "ports": [{"port": 80, "targetPort": 8080}, {"port": 8080}, {"port": 443, "$patch": "delete"}],
                             "selector": {"$patch": "replace", "app": "b"}},
                    "metadata": {"finalizers": ["y"]}}),
            "Service",
        )
        .unwrap();
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port": 80, "name": "http", "targetPort": 8080}, {"port": 8080}])
        );
        assert_eq!(svc["spec"]["selector"], json!({"app": "b"}));
        assert_eq!(svc["metadata"]["finalizers"], json!(["x", "y"]));

        let mut ing = json!({"spec": {"rules": [{"host": "a"}]}});
        strategic_merge_patch(
            &mut ing,
            &json!({"spec": {"rules": [{"host": "b"}]}}),
            "Ingress",
        )
        .unwrap();
        assert_eq!(ing["spec"]["rules"], json!([{"host": "b"}]));
    }
}
