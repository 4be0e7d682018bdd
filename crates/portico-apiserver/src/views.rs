//! Resources that are another resource's storage seen through a conversion, as in
//! kube-apiserver: `events.k8s.io/v1` Events are the core `v1` Events, so an Event recorded by
//! kube-rs's `Recorder` shows in `kubectl describe` (which reads core Events) and vice versa.
//!
//! Objects are stored in the storage resource's form; requests to the view convert bodies on
//! the way in and objects (responses, list items, watch events) on the way out.

use serde_json::{Map, Value};

use crate::registry::{self, ResourceId};

/// A view of a storage resource.
#[derive(Debug)]
pub struct View {
    pub storage: ResourceId,
    pub to_view: fn(&Value) -> Value,
    pub to_storage: fn(&Value) -> Value,
}

/// `(events.k8s.io name, core name)` of the renamed Event fields.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(
    object: &Value,
    api_version: &str,
    pairs: impl Iterator<Item = (&'static str, &'static str)>,
) -> Value {
    let Some(map) = object.as_object() else {
        return object.clone();
    };
    let pairs: Vec<(&str, &str)> = pairs.collect();
    let mut out = Map::new();
    for (key, value) in map {
        let key = pairs
            .iter()
            .find(|(from, _)| from == key)
            .map_or(key.as_str(), |(_, to)| to);
        out.insert(key.to_string(), value.clone());
    }
    out.insert("apiVersion".into(), api_version.into());
    out.insert("kind".into(), "Event".into());
    Value::Object(out)
}

fn event_to_view(core: &Value) -> Value {
    let mut view = rename(
        core,
        "events.k8s.io/v1",
        EVENT_FIELDS.iter().map(|(v, c)| (*c, *v)),
    );
    // Core encodes these empty; events.k8s.io/v1 leaves them out (omitempty).
    if let Some(map) = view.as_object_mut() {
        for field in ["reportingController", "reportingInstance"] {
            if map.get(field).is_some_and(|v| v == "") {
                map.remove(field);
            }
        }
    }
    view
}

fn event_to_storage(view: &Value) -> Value {
    rename(view, "v1", EVENT_FIELDS.iter().copied())
}

/// The view behind a served resource, if it is one.
pub fn of(resource: ResourceId) -> Option<View> {
    let info = registry::get(resource);
    if (info.group, info.kind) == ("events.k8s.io", "Event") {
        return Some(View {
            storage: registry::lookup("", "v1", "events").expect("core events are registered"),
            to_view: event_to_view,
            to_storage: event_to_storage,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_round_trip() {
        let view = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
                          "regarding": {"kind": "Ingress", "name": "web"}, "note": "synced", "reason": "Sync",
                          "reportingController": "portico", "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:00.000000Z"}});
        let core = event_to_storage(&view);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "synced");
        assert_eq!(core["reportingComponent"], "portico");
        assert_eq!(event_to_view(&core), view);
    }
}
