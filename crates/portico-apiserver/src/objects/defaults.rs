//! Per-kind defaulting: what kube-apiserver fills in for the fields clients read back
//! (Namespace finalizers, phase and name label; Service type, ports, clusterIP and families;
//! EndpointSlice port protocol; Secret type and `stringData`; empty Ingress status).

use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

use super::{meta, meta_mut, str_field};
use crate::registry::ResourceInfo;

/// The defaulting kube-apiserver does for the fields clients read back.
pub(crate) fn defaults(
    info: &ResourceInfo,
    current: Option<&Value>,
    object: &mut Value,
    ips: &AtomicU32,
) {
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

/// The fields the registry allocates rather than the scheme defaults (a Namespace's
/// finalizers, a Service's cluster IPs and IP families), and those only encoding fills in (a
/// core Event's zero `eventTime` and reporting fields), as JSON pointers. kube-apiserver sets
/// them after it has tracked the request's fields, so no manager owns them unless its request
/// set them.
fn allocated(info: &ResourceInfo) -> &'static [&'static str] {
    match (info.group, info.kind) {
        ("", "Event") => &["/eventTime", "/reportingComponent", "/reportingInstance"],
        ("", "Namespace") => &["/spec/finalizers"],
        ("", "Service") => &[
            "/spec/clusterIP",
            "/spec/clusterIPs",
            "/spec/ipFamilies",
            "/spec/ipFamilyPolicy",
        ],
        _ => &[],
    }
}

/// `object` as field tracking sees it: the allocated fields as `requested` had them.
pub(crate) fn as_tracked(info: &ResourceInfo, requested: &Value, object: &Value) -> Value {
    let mut view = object.clone();
    for pointer in allocated(info) {
        let (parent, field) = pointer.rsplit_once('/').expect("a pointer below the root");
        let Some(Value::Object(map)) = view.pointer_mut(parent) else {
            continue;
        };
        match requested.pointer(pointer) {
            Some(v) => map.insert(field.into(), v.clone()),
            None => map.remove(field),
        };
        // A struct that holds only allocated fields was not in the request either.
        if map.is_empty()
            && requested.pointer(parent).is_none()
            && let Some((grand, name)) = parent.rsplit_once('/')
            && let Some(Value::Object(up)) = view.pointer_mut(grand)
        {
            up.remove(name);
        }
    }
    view
}
