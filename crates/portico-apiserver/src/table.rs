//! Server-side printing (`meta.k8s.io/v1 Table`), which `kubectl get` asks for: the columns
//! kube-apiserver prints for each served kind, and Table-shaped watch events for `get -w`.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Value, json};

use crate::registry::ResourceInfo;

/// Whether the client accepts a Table answer.
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table") && v.contains("g=meta.k8s.io"))
}

/// kube-apiserver's `duration.HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h) = (s / 60, s / 3600);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else {
        format!("{}y{}d", h / 24 / 365, (h / 24) % 365)
    }
}

fn age(object: &Value, field: &str) -> String {
    let Some(ts) = object.pointer(field).and_then(Value::as_str) else {
        return "<unknown>".into();
    };
    let Ok(then) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let now = jiff::Timestamp::now();
    human_duration(now.as_second() - then.as_second())
}

fn s<'v>(object: &'v Value, pointer: &str) -> &'v str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn columns(info: &ResourceInfo) -> Vec<(&'static str, &'static str)> {
    let mut cols = match (info.group, info.kind) {
        ("", "Namespace") => vec![("Name", "name"), ("Status", "")],
        ("", "Service") => vec![
            ("Name", "name"),
            ("Type", ""),
            ("Cluster-IP", ""),
            ("External-IP", ""),
            ("Port(s)", ""),
        ],
        ("", "Secret") => vec![("Name", "name"), ("Type", ""), ("Data", "")],
        ("", "ConfigMap") => vec![("Name", "name"), ("Data", "")],
        (_, "Event") => {
            return vec![
                ("Last Seen", ""),
                ("Type", ""),
                ("Reason", ""),
                ("Object", ""),
                ("Message", ""),
            ];
        }
        ("discovery.k8s.io", "EndpointSlice") => vec![
            ("Name", "name"),
            ("AddressType", ""),
            ("Ports", ""),
            ("Endpoints", ""),
        ],
        ("networking.k8s.io", "Ingress") => vec![
            ("Name", "name"),
            ("Class", ""),
            ("Hosts", ""),
            ("Address", ""),
            ("Ports", ""),
        ],
        ("networking.k8s.io", "IngressClass") => {
            vec![("Name", "name"), ("Controller", ""), ("Parameters", "")]
        }
        ("coordination.k8s.io", "Lease") => vec![("Name", "name"), ("Holder", "")],
        _ => vec![("Name", "name")],
    };
    cols.push(("Age", ""));
    cols
}

fn join_max(items: Vec<String>, max: usize) -> String {
    let n = items.len();
    let mut out = items.into_iter().take(max).collect::<Vec<_>>().join(",");
    if n > max {
        out.push_str(&format!(" + {} more...", n - max));
    }
    out
}

fn cells(info: &ResourceInfo, o: &Value) -> Vec<Value> {
    let name = s(o, "/metadata/name").to_string();
    let arr = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let count = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_object)
            .map_or(0, |m| m.len())
    };
    let mut row: Vec<Value> = match (info.group, info.kind) {
        ("", "Namespace") => vec![name.into(), s(o, "/status/phase").into()],
        ("", "Service") => {
            let ports = arr("/spec/ports")
                .iter()
                .map(|p| {
                    let node = p
                        .get("nodePort")
                        .map(|n| format!(":{n}"))
                        .unwrap_or_default();
                    format!(
                        "{}{node}/{}",
                        p["port"],
                        p["protocol"].as_str().unwrap_or("TCP")
                    )
                })
                .collect::<Vec<_>>()
                .join(",");
            let external = match s(o, "/spec/type") {
                "ExternalName" => s(o, "/spec/externalName").to_string(),
                "LoadBalancer" => or_none(
                    arr("/status/loadBalancer/ingress")
                        .iter()
                        .map(|i| {
                            i["ip"]
                                .as_str()
                                .or(i["hostname"].as_str())
                                .unwrap_or_default()
                                .to_string()
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                _ => "<none>".into(),
            };
            vec![
                name.into(),
                s(o, "/spec/type").into(),
                or_none(s(o, "/spec/clusterIP").into()).into(),
                external.into(),
                or_none(ports).into(),
            ]
        }
        ("", "Secret") => vec![name.into(), s(o, "/type").into(), count("/data").into()],
        ("", "ConfigMap") => vec![name.into(), (count("/data") + count("/binaryData")).into()],
        (_, "Event") => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/series/lastObservedTime",
                "/deprecatedLastTimestamp",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find(|p| o.pointer(p).and_then(Value::as_str).is_some())
            .map(|p| age(o, p))
            .unwrap_or_default();
            let regarding = if info.group.is_empty() {
                "/involvedObject"
            } else {
                "/regarding"
            };
            let object = format!(
                "{}/{}",
                s(o, &format!("{regarding}/kind")).to_lowercase(),
                s(o, &format!("{regarding}/name"))
            );
            let message = if info.group.is_empty() {
                s(o, "/message")
            } else {
                s(o, "/note")
            };
            return vec![
                last.into(),
                s(o, "/type").into(),
                s(o, "/reason").into(),
                object.into(),
                message.into(),
            ];
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports = or_none(join_max(
                arr("/ports")
                    .iter()
                    .map(|p| p["port"].to_string())
                    .collect(),
                3,
            ));
            let addrs = arr("/endpoints")
                .iter()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            vec![
                name.into(),
                s(o, "/addressType").into(),
                ports.into(),
                or_none(join_max(addrs, 3)).into(),
            ]
        }
        ("networking.k8s.io", "Ingress") => {
            let hosts: Vec<String> = arr("/spec/rules")
                .iter()
                .filter_map(|r| r["host"].as_str().map(str::to_string))
                .collect();
            let hosts = if hosts.is_empty() {
                "*".to_string()
            } else {
                join_max(hosts, 4)
            };
            let address = arr("/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    i["ip"]
                        .as_str()
                        .or(i["hostname"].as_str())
                        .unwrap_or_default()
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(",");
            let ports = if arr("/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            let class = or_none(s(o, "/spec/ingressClassName").into());
            vec![
                name.into(),
                class.into(),
                hosts.into(),
                address.into(),
                ports.into(),
            ]
        }
        ("networking.k8s.io", "IngressClass") => {
            let params = o
                .pointer("/spec/parameters")
                .map_or("<none>".to_string(), |p| {
                    format!("{}/{}", s(p, "/kind"), s(p, "/name"))
                });
            vec![name.into(), s(o, "/spec/controller").into(), params.into()]
        }
        ("coordination.k8s.io", "Lease") => vec![name.into(), s(o, "/spec/holderIdentity").into()],
        _ => vec![name.into()],
    };
    row.push(age(o, "/metadata/creationTimestamp").into());
    row
}

fn partial(info: &ResourceInfo, o: &Value) -> Value {
    let _ = info;
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
}

/// A Table of `items`.
pub fn table(
    info: &ResourceInfo,
    items: &[std::sync::Arc<Value>],
    _include: Option<()>,
    list_meta: &Value,
) -> Value {
    let defs: Vec<Value> = columns(info)
        .into_iter()
        .map(|(name, format)| json!({"name": name, "type": "string", "format": format, "description": "", "priority": 0}))
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": cells(info, o), "object": partial(info, o)}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

/// Rewrites one watch frame so that its object is a one-row Table (ERROR/BOOKMARK unchanged).
pub fn watch_frame_as_table(info: &ResourceInfo, frame: &Bytes) -> Option<Bytes> {
    let mut event: Value = serde_json::from_slice(frame).ok()?;
    if !matches!(
        event["type"].as_str(),
        Some("ADDED" | "MODIFIED" | "DELETED")
    ) {
        return None;
    }
    let object = std::sync::Arc::new(event["object"].take());
    let rv = object
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(Value::Null);
    event["object"] = table(
        info,
        std::slice::from_ref(&object),
        None,
        &json!({"resourceVersion": rv}),
    );
    let mut bytes = serde_json::to_vec(&event).ok()?;
    bytes.push(b'\n');
    Some(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }
}
