//! The three PATCH formats of the Kubernetes API: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and strategic merge patch (list merge keys and `$patch` directives, with the
//! merge keys of the kinds this server serves).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// RFC 7386: maps merge, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn pointer_tokens(pointer: &str) -> Result<Vec<String>, ApiError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| ApiError::bad_request(format!("invalid JSON pointer {pointer:?}")))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn json_patch_err(op: &str, path: &str, why: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!(
            "the server rejected our request due to an error in our request: {op} operation on {path:?}: {why}"
        ),
    )
}

fn parent_and_last<'v>(
    doc: &'v mut Value,
    tokens: &[String],
    op: &str,
    path: &str,
) -> Result<(&'v mut Value, String), ApiError> {
    let (last, parents) = tokens
        .split_last()
        .ok_or_else(|| json_patch_err(op, path, "cannot operate on the root"))?;
    let mut cur = doc;
    for t in parents {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| json_patch_err(op, path, "doc is missing path"))?;
    }
    Ok((cur, last.clone()))
}

fn add_at(doc: &mut Value, pointer: &str, value: Value, op: &str) -> Result<(), ApiError> {
    let tokens = pointer_tokens(pointer)?;
    if tokens.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = parent_and_last(doc, &tokens, op, pointer)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let index = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| json_patch_err(op, pointer, "bad index"))?
            };
            if index > a.len() {
                return Err(json_patch_err(op, pointer, "index out of bounds"));
            }
            a.insert(index, value);
        }
        _ => return Err(json_patch_err(op, pointer, "parent is not a container")),
    }
    Ok(())
}

fn remove_at(doc: &mut Value, pointer: &str, op: &str) -> Result<Value, ApiError> {
    let tokens = pointer_tokens(pointer)?;
    let (parent, last) = parent_and_last(doc, &tokens, op, pointer)?;
    match parent {
        Value::Object(m) => m
            .remove(&last)
            .ok_or_else(|| json_patch_err(op, pointer, "missing value")),
        Value::Array(a) => {
            let index = last
                .parse::<usize>()
                .map_err(|_| json_patch_err(op, pointer, "bad index"))?;
            if index >= a.len() {
                return Err(json_patch_err(op, pointer, "index out of bounds"));
            }
            Ok(a.remove(index))
        }
        _ => Err(json_patch_err(op, pointer, "parent is not a container")),
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be a JSON array of operations"))?;
    for op in ops {
        let name = op["op"].as_str().unwrap_or_default();
        let path = op["path"].as_str().ok_or_else(|| {
            ApiError::bad_request(format!("json patch operation {op} has no path"))
        })?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| json_patch_err(name, path, "missing value"))
        };
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| json_patch_err(name, path, "missing from"))
        };
        match name {
            "add" => add_at(doc, path, value()?, name)?,
            "remove" => {
                remove_at(doc, path, name)?;
            }
            "replace" => {
                remove_at(doc, path, name)?;
                add_at(doc, path, value()?, name)?;
            }
            "move" => {
                let moved = remove_at(doc, from()?, name)?;
                add_at(doc, path, moved, name)?;
            }
            "copy" => {
                let copied = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| json_patch_err(name, path, "missing from value"))?;
                add_at(doc, path, copied, name)?;
            }
            "test" => {
                let want = value()?;
                let have = doc.pointer(path);
                // Kubernetes compares resourceVersion tests as strings; a failed test is a conflict.
                if have != Some(&want) {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: testing value {path} failed"
                        ),
                    ));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown json patch operation {other:?}"
                )));
            }
        }
    }
    Ok(())
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
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
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
