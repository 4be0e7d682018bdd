//! Conversion from Kubernetes objects to the model's inputs.
//!
//! Two entry points: `From<&T>` for the k8s-openapi types the controller's watches deliver,
//! and [`resource_from_value`] / [`resources_from_value`] for objects as JSON values (e.g.
//! documents of a YAML manifest), which dispatch on `apiVersion` and `kind`.
//!
//! Conversions keep what routing needs and nothing else, and never judge it: an Ingress
//! with a bad host converts fine and is then rejected by [`crate::validate`]. Only objects
//! that do not match their schema at all give a [`ConvertError`], which names the object.
//! Namespaced objects without `metadata.namespace` land in `default`, as `kubectl apply`
//! would put them; cluster-scoped objects (IngressClass) have the empty namespace.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, Ingress, IngressBackend, IngressClass, IngressRule, IngressTLS,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::key::ObjectKey;
use crate::source::*;

/// Annotation that marks an IngressClass as the cluster's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Namespace of namespaced objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An object that could not be converted. The message names the object; for Secrets it
/// withholds the decoder's details, which could quote key material.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("YAML document {document}: {message}")]
    Yaml { document: usize, message: String },
    #[error("not a Kubernetes object: expected a mapping with apiVersion and kind, found {found}")]
    NotAnObject { found: &'static str },
    #[error("object {object}: missing or empty `{field}`")]
    MissingTypeField { object: String, field: &'static str },
    #[error("{kind} {object}: apiVersion {api_version} is not supported (expected {expected})")]
    UnsupportedVersion {
        kind: String,
        object: String,
        api_version: String,
        expected: &'static str,
    },
    /// The decoder's message is part of the text (not a `source`), so one log line says it all.
    #[error("{kind} {object} is malformed: {error}")]
    Malformed {
        kind: &'static str,
        object: String,
        error: serde_json::Error,
    },
    #[error("Secret {object} is malformed (details withheld: they could contain key material)")]
    MalformedSecret { object: String },
    #[error("{kind} without `metadata.name`")]
    MissingName { kind: String },
    #[error("List {object}: `items` must be a sequence")]
    MalformedList { object: String },
    #[error("a {kind} holds several objects: use resources_from_value to convert its items")]
    UnexpectedList { kind: String },
}

/// Converts one Kubernetes object given as JSON. `Ok(None)` for kinds routing ignores; an
/// error for lists (`List`, `IngressList`, ...), which [`resources_from_value`] converts.
pub fn resource_from_value(value: &Value) -> Result<Option<Resource>, ConvertError> {
    let Some(object) = value.as_object() else {
        return Err(ConvertError::NotAnObject {
            found: json_type_name(value),
        });
    };
    let api_version = type_field(value, object, "apiVersion")?;
    let kind = type_field(value, object, "kind")?;
    let (group, _) = split_api_version(api_version);

    // A kind routing reads: it must be the version we read, and have a name to be keyed by.
    let expect = |expected: &'static str| -> Result<(), ConvertError> {
        if api_version != expected {
            return Err(ConvertError::UnsupportedVersion {
                kind: kind.to_owned(),
                object: object_name(value),
                api_version: api_version.to_owned(),
                expected,
            });
        }
        let name = value.pointer("/metadata/name").and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            return Err(ConvertError::MissingName {
                kind: kind.to_owned(),
            });
        }
        Ok(())
    };

    let resource = match (group, kind) {
        ("networking.k8s.io" | "extensions", "Ingress") => {
            expect("networking.k8s.io/v1")?;
            let ingress: Ingress = decode(value, "Ingress")?;
            Resource::Ingress(Arc::new(IngressSource::from(&ingress)))
        }
        ("networking.k8s.io", "IngressClass") => {
            expect("networking.k8s.io/v1")?;
            let class: IngressClass = decode(value, "IngressClass")?;
            Resource::IngressClass(Arc::new(IngressClassSource::from(&class)))
        }
        ("", "Service") => {
            expect("v1")?;
            let service: Service = decode(value, "Service")?;
            Resource::Service(Arc::new(ServiceSource::from(&service)))
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            expect("discovery.k8s.io/v1")?;
            let slice: EndpointSlice = decode(value, "EndpointSlice")?;
            Resource::EndpointSlice(Arc::new(EndpointSliceSource::from(&slice)))
        }
        ("", "Secret") => {
            expect("v1")?;
            let secret: Secret = serde_json::from_value(value.clone()).map_err(|_| {
                ConvertError::MalformedSecret {
                    object: object_name(value),
                }
            })?;
            Resource::Secret(Arc::new(SecretSource::from(&secret)))
        }
        (_, kind) if kind.ends_with("List") => {
            return Err(ConvertError::UnexpectedList {
                kind: kind.to_owned(),
            });
        }
        _ => return Ok(None),
    };
    Ok(Some(resource))
}

/// Converts one object, or every item of a `kind: List` or a typed list such as
/// `IngressList` (recursively), skipping kinds routing ignores. `null` (an empty YAML document) gives nothing.
pub fn resources_from_value(value: &Value) -> Result<Vec<Resource>, ConvertError> {
    let mut out = Vec::new();
    collect_resources(value, &mut out)?;
    Ok(out)
}

/// Converts a sequence of objects, e.g. the documents of a multi-document YAML manifest.
pub fn resources_from_values<'a>(
    values: impl IntoIterator<Item = &'a Value>,
) -> Result<Vec<Resource>, ConvertError> {
    let mut out = Vec::new();
    for value in values {
        collect_resources(value, &mut out)?;
    }
    Ok(out)
}

/// Converts a YAML manifest: `---`-separated documents, each an object or a List.
pub fn resources_from_yaml(text: &str) -> Result<Vec<Resource>, ConvertError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| ConvertError::Yaml {
            document: i + 1,
            message: e.to_string(),
        })?;
        collect_resources(&value, &mut out)?;
    }
    Ok(out)
}

fn collect_resources(value: &Value, out: &mut Vec<Resource>) -> Result<(), ConvertError> {
    if value.is_null() {
        return Ok(());
    }
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(item_kind) = kind.strip_suffix("List") else {
        out.extend(resource_from_value(value)?);
        return Ok(());
    };
    let items = match value.get("items") {
        None | Some(Value::Null) => return Ok(()), // an empty List
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ConvertError::MalformedList {
                object: object_name(value),
            });
        }
    };
    if item_kind.is_empty() {
        // `kind: List`, as `kubectl get -o yaml` prints: each item says what it is.
        for item in items {
            collect_resources(item, out)?;
        }
    } else {
        // A typed list as the API returns it (`IngressList`): items omit apiVersion and kind.
        let api_version = value.get("apiVersion").cloned().unwrap_or(Value::Null);
        for item in items {
            let mut item = item.clone();
            if let Some(fields) = item.as_object_mut() {
                fields
                    .entry("apiVersion")
                    .or_insert_with(|| api_version.clone());
                fields.entry("kind").or_insert_with(|| item_kind.into());
            }
            collect_resources(&item, out)?;
        }
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(value: &Value, kind: &'static str) -> Result<T, ConvertError> {
    serde_json::from_value(value.clone()).map_err(|error| ConvertError::Malformed {
        kind,
        object: object_name(value),
        error,
    })
}

fn type_field<'v>(
    value: &'v Value,
    object: &'v serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<&'v str, ConvertError> {
    match object.get(field).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ConvertError::MissingTypeField {
            object: object_name(value),
            field,
        }),
    }
}

/// `group/version` -> (group, version); the core group is `""`.
fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// `namespace/name` (or `name`, or `<unnamed>`) from whatever metadata the value has.
fn object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) if !ns.is_empty() => format!("{ns}/{name}"),
        (_, Some(name)) => name.to_owned(),
        _ => "<unnamed>".to_owned(),
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

// ---- From k8s-openapi types ----

fn namespaced_key(meta: &ObjectMeta) -> ObjectKey {
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    ObjectKey::new(namespace, meta.name.as_deref().unwrap_or(""))
}

fn cluster_key(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::cluster(meta.name.as_deref().unwrap_or(""))
}

fn unix_seconds(time: &Time) -> UnixSeconds {
    time.0.as_second()
}

impl From<&Ingress> for IngressSource {
    fn from(ingress: &Ingress) -> Self {
        let meta = &ingress.metadata;
        let spec = ingress.spec.as_ref();
        IngressSource {
            key: namespaced_key(meta),
            uid: meta.uid.clone(),
            generation: meta.generation,
            creation_timestamp: meta.creation_timestamp.as_ref().map(unix_seconds),
            annotations: meta.annotations.clone().unwrap_or_default(),
            ingress_class_name: spec.and_then(|s| s.ingress_class_name.clone()),
            default_backend: spec
                .and_then(|s| s.default_backend.as_ref())
                .map(BackendSource::from),
            tls: spec
                .and_then(|s| s.tls.as_deref())
                .unwrap_or_default()
                .iter()
                .map(IngressTlsSource::from)
                .collect(),
            rules: spec
                .and_then(|s| s.rules.as_deref())
                .unwrap_or_default()
                .iter()
                .map(IngressRuleSource::from)
                .collect(),
        }
    }
}

impl From<&IngressTLS> for IngressTlsSource {
    fn from(tls: &IngressTLS) -> Self {
        IngressTlsSource {
            hosts: tls.hosts.clone().unwrap_or_default(),
            secret_name: tls.secret_name.clone(),
        }
    }
}

impl From<&IngressRule> for IngressRuleSource {
    fn from(rule: &IngressRule) -> Self {
        IngressRuleSource {
            host: rule.host.clone(),
            http: rule
                .http
                .as_ref()
                .map(|http| http.paths.iter().map(HttpPathSource::from).collect()),
        }
    }
}

impl From<&HTTPIngressPath> for HttpPathSource {
    fn from(path: &HTTPIngressPath) -> Self {
        HttpPathSource {
            path: path.path.clone(),
            // k8s-openapi reads a missing `pathType` as ""; keep it missing for validation.
            path_type: Some(path.path_type.clone()).filter(|t| !t.is_empty()),
            backend: BackendSource::from(&path.backend),
        }
    }
}

impl From<&IngressBackend> for BackendSource {
    fn from(backend: &IngressBackend) -> Self {
        BackendSource {
            service: backend.service.as_ref().map(|service| {
                let port = service.port.as_ref();
                ServiceBackendSource {
                    name: service.name.clone(),
                    port_name: port.and_then(|p| p.name.clone()),
                    port_number: port.and_then(|p| p.number),
                }
            }),
            resource: backend
                .resource
                .as_ref()
                .map(|r| format!("{}/{}", r.kind, r.name)),
        }
    }
}

impl From<&IngressClass> for IngressClassSource {
    fn from(class: &IngressClass) -> Self {
        let meta = &class.metadata;
        IngressClassSource {
            key: cluster_key(meta),
            controller: class
                .spec
                .as_ref()
                .and_then(|s| s.controller.clone())
                .unwrap_or_default(),
            is_default_class: annotation(meta, DEFAULT_CLASS_ANNOTATION) == Some("true"),
        }
    }
}

impl From<&Service> for ServiceSource {
    fn from(service: &Service) -> Self {
        let spec = service.spec.as_ref();
        ServiceSource {
            key: namespaced_key(&service.metadata),
            type_: spec.and_then(|s| s.type_.clone()),
            external_name: spec.and_then(|s| s.external_name.clone()),
            ports: spec
                .and_then(|s| s.ports.as_deref())
                .unwrap_or_default()
                .iter()
                .map(|port| ServicePortSource {
                    name: port.name.clone(),
                    port: port.port,
                    protocol: port.protocol.clone(),
                    target_port: port.target_port.as_ref().map(|target| match target {
                        IntOrString::Int(n) => TargetPort::Number(*n),
                        IntOrString::String(name) => TargetPort::Name(name.clone()),
                    }),
                })
                .collect(),
        }
    }
}

impl From<&EndpointSlice> for EndpointSliceSource {
    fn from(slice: &EndpointSlice) -> Self {
        let meta = &slice.metadata;
        EndpointSliceSource {
            key: namespaced_key(meta),
            service_name: meta
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
                .cloned(),
            address_type: slice.address_type.clone(),
            ports: slice
                .ports
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|port| EndpointPortSource {
                    name: port.name.clone(),
                    port: port.port,
                    protocol: port.protocol.clone(),
                })
                .collect(),
            endpoints: slice
                .endpoints
                .iter()
                .map(|endpoint| {
                    let conditions = endpoint.conditions.as_ref();
                    EndpointSource {
                        addresses: endpoint.addresses.clone(),
                        ready: conditions.and_then(|c| c.ready),
                        serving: conditions.and_then(|c| c.serving),
                        terminating: conditions.and_then(|c| c.terminating),
                        target_name: endpoint.target_ref.as_ref().and_then(|r| r.name.clone()),
                    }
                })
                .collect(),
        }
    }
}

impl From<&Secret> for SecretSource {
    fn from(secret: &Secret) -> Self {
        // `stringData` is write-only sugar that the API server merges over `data`; honour it
        // the same way for objects that never went through an API server.
        let entry = |key: &str| -> Option<Vec<u8>> {
            let string_data = secret.string_data.as_ref().and_then(|d| d.get(key));
            let data = secret.data.as_ref().and_then(|d| d.get(key));
            string_data
                .map(|s| s.as_bytes().to_vec())
                .or_else(|| data.map(|b| b.0.clone()))
        };
        let (tls_crt, tls_key) = (entry("tls.crt"), entry("tls.key"));
        let size = [&tls_crt, &tls_key]
            .into_iter()
            .flatten()
            .map(|b| b.len() as u64)
            .sum::<u64>();
        // Bound what one Secret can put in the Raft log: keep only its size when too large.
        let keep = size <= crate::MAX_TLS_SECRET_BYTES as u64;
        SecretSource {
            key: namespaced_key(&secret.metadata),
            type_: secret.type_.clone(),
            tls_crt: tls_crt.filter(|_| keep),
            tls_key: tls_key.filter(|_| keep),
            oversize: (!keep).then_some(size),
        }
    }
}

fn annotation<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.annotations
        .as_ref()
        .and_then(|a: &BTreeMap<String, String>| a.get(key))
        .map(String::as_str)
}
