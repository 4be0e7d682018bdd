//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which kubectl's typed
//! clients send (`kubectl create namespace|secret|configmap|serviceaccount|ingress`).
//!
//! The wire format is decoded by prost-reflect against the upstream `.proto` files of
//! k8s.io/api and k8s.io/apimachinery (vendored in `proto/`, compiled by `build.rs`), never by
//! hand. This module only unwraps the `k8s\0` + `runtime.Unknown` envelope and maps the decoded
//! message to the JSON the rest of the server handles, following apimachinery's JSON forms for
//! its special types (Time, MicroTime, IntOrString, Quantity, FieldsV1, RawExtension) and
//! encoding/json's `omitempty` for the zero values gogo-protobuf always writes.

use std::sync::LazyLock;

use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value as PbValue,
};
use serde_json::{Map, Value};

/// The media type of a protobuf body.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every protobuf object starts with these four bytes.
const MAGIC: &[u8] = b"k8s\0";

const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";
const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/k8s.descriptor.bin")).as_slice(),
    )
    .map_err(|e| e.to_string())
});

/// Why a protobuf body was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    #[error("the body does not start with the protobuf magic prefix \"k8s\\x00\"")]
    NoMagic,
    #[error("the protobuf descriptors could not be loaded: {0}")]
    Descriptors(String),
    #[error("invalid protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("unsupported content encoding {0:?} in the protobuf envelope")]
    ContentEncoding(String),
    #[error("unsupported content type {0:?} in the protobuf envelope")]
    ContentType(String),
    #[error("the body is a {found_version}/{found_kind}, the URL expects a {version}/{kind}")]
    KindMismatch {
        found_version: String,
        found_kind: String,
        version: String,
        kind: String,
    },
    #[error("no protobuf type is known for {0}")]
    NoType(String),
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

impl ProtobufError {
    /// True when the body may be fine but this server has no protobuf type for it (a 415,
    /// as kube-apiserver answers for kinds without protobuf support).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::NoType(_))
    }
}

/// True when `content_type` names the Kubernetes protobuf encoding.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

/// Decodes a protobuf body that must hold a `kind` of `api_version`, to its JSON form (with
/// `apiVersion` and `kind` set from the envelope, as the JSON decoder would see them).
pub fn decode(body: &[u8], api_version: &str, kind: &str) -> Result<Value, ProtobufError> {
    let raw = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let pool = POOL
        .as_ref()
        .map_err(|e| ProtobufError::Descriptors(e.clone()))?;
    let unknown = DynamicMessage::decode(message(pool, UNKNOWN)?, raw)?;
    let encoding = string_field(&unknown, "contentEncoding");
    if !encoding.is_empty() {
        return Err(ProtobufError::ContentEncoding(encoding));
    }
    let content_type = string_field(&unknown, "contentType");
    if !content_type.is_empty() && !is_protobuf(&content_type) {
        return Err(ProtobufError::ContentType(content_type));
    }
    let (found_version, found_kind) = match unknown.get_field_by_name("typeMeta").as_deref() {
        Some(PbValue::Message(meta)) => {
            (string_field(meta, "apiVersion"), string_field(meta, "kind"))
        }
        _ => (String::new(), String::new()),
    };
    if found_version != api_version || found_kind != kind {
        return Err(ProtobufError::KindMismatch {
            found_version,
            found_kind,
            version: api_version.to_string(),
            kind: kind.to_string(),
        });
    }
    let descriptor = message(pool, &type_name(api_version, kind))?;
    let object = match unknown.get_field_by_name("raw").as_deref() {
        Some(PbValue::Bytes(b)) => DynamicMessage::decode(descriptor, b.as_ref())?,
        _ => DynamicMessage::new(descriptor),
    };
    let mut json = message_json(&object, "")?;
    if let Value::Object(map) = &mut json {
        map.insert("apiVersion".into(), Value::String(found_version));
        map.insert("kind".into(), Value::String(found_kind));
    }
    Ok(json)
}

fn message(pool: &DescriptorPool, name: &str) -> Result<MessageDescriptor, ProtobufError> {
    pool.get_message_by_name(name)
        .ok_or_else(|| ProtobufError::NoType(name.to_string()))
}

/// `networking.k8s.io/v1`, `Ingress` → `k8s.io.api.networking.v1.Ingress` (the package is the
/// group's first label; the core group's is `core`).
fn type_name(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group.split('.').next() {
        Some("") | None => "core",
        Some(first) => first,
    };
    format!("k8s.io.api.{package}.{version}.{kind}")
}

fn string_field(msg: &DynamicMessage, name: &str) -> String {
    match msg.get_field_by_name(name).as_deref() {
        Some(PbValue::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn int_field(msg: &DynamicMessage, name: &str) -> i64 {
    match msg.get_field_by_name(name).as_deref() {
        Some(PbValue::I64(n)) => *n,
        Some(PbValue::I32(n)) => i64::from(*n),
        _ => 0,
    }
}

/// One message to JSON; `path` names it in errors.
fn message_json(msg: &DynamicMessage, path: &str) -> Result<Value, ProtobufError> {
    let name = msg.descriptor().full_name().to_string();
    let field_error = |reason: String| ProtobufError::Field {
        field: path.to_string(),
        reason,
    };
    // A field these descriptors (v0.34.4) do not know would be dropped without a word, so the
    // body is refused instead (kube-apiserver drops them; a JSON body's unknown fields get
    // fieldValidation).
    if let Some(field) = msg.unknown_fields().next() {
        return Err(field_error(format!(
            "unknown field number {} in {name}",
            field.number()
        )));
    }
    match name.strip_prefix(META).unwrap_or(&name) {
        // An empty Time is Go's zero time, which encoding/json writes as null; Time keeps
        // seconds only (as metav1.Time's Unmarshal), MicroTime microseconds.
        ".Time" | ".MicroTime" => {
            if !msg.has_field_by_name("seconds") && !msg.has_field_by_name("nanos") {
                return Ok(Value::Null);
            }
            let micro = name.ends_with("MicroTime");
            let nanos = if micro { int_field(msg, "nanos") } else { 0 };
            let ts = i32::try_from(nanos)
                .ok()
                .and_then(|n| jiff::Timestamp::new(int_field(msg, "seconds"), n).ok())
                .ok_or_else(|| field_error("time out of range".into()))?;
            let format = if micro {
                "%Y-%m-%dT%H:%M:%S%.6fZ"
            } else {
                "%Y-%m-%dT%H:%M:%SZ"
            };
            return Ok(Value::String(ts.strftime(format).to_string()));
        }
        ".FieldsV1" => return raw_json(msg, "Raw", path),
        ".Duration" => {
            return Err(field_error("metav1.Duration is not supported".into()));
        }
        _ => {}
    }
    match name.as_str() {
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            return match int_field(msg, "type") {
                0 => Ok(Value::from(int_field(msg, "intVal"))),
                1 => Ok(Value::String(string_field(msg, "strVal"))),
                t => Err(field_error(format!("unknown IntOrString type {t}"))),
            };
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            return Ok(Value::String(string_field(msg, "string")));
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => return raw_json(msg, "raw", path),
        _ => {}
    }
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        if let PbValue::Message(embedded) = value
            && is_inline(&field)
        {
            // Go's embedded struct: its fields are the parent's in JSON.
            if let Value::Object(fields) = message_json(embedded, path)? {
                out.extend(fields);
            }
            continue;
        }
        let child = if path.is_empty() {
            field.json_name().to_string()
        } else {
            format!("{path}.{}", field.json_name())
        };
        let json = value_json(&field, value, &child)?;
        if !omitted(&name, &field, &json) {
            out.insert(field.json_name().to_string(), json);
        }
    }
    Ok(Value::Object(out))
}

/// The embedded structs (`json:",inline"`) of the served API groups, as (field, type): every
/// such field in k8s.io/api v0.34.4's `types.go` except `metav1.TypeMeta`, which is not in the
/// protobuf messages (the envelope carries it). Protobuf keeps them as nested messages.
const INLINE: &[(&str, &str)] = &[
    ("volumeSource", "k8s.io.api.core.v1.VolumeSource"),
    (
        "persistentVolumeSource",
        "k8s.io.api.core.v1.PersistentVolumeSource",
    ),
    (
        "localObjectReference",
        "k8s.io.api.core.v1.LocalObjectReference",
    ),
    ("handler", "k8s.io.api.core.v1.ProbeHandler"),
    (
        "ephemeralContainerCommon",
        "k8s.io.api.core.v1.EphemeralContainerCommon",
    ),
    (
        "ingressRuleValue",
        "k8s.io.api.networking.v1.IngressRuleValue",
    ),
];

fn is_inline(field: &FieldDescriptor) -> bool {
    let Kind::Message(ty) = field.kind() else {
        return false;
    };
    INLINE
        .iter()
        .any(|(name, full)| field.name() == *name && ty.full_name() == *full)
}

/// gogo-protobuf writes every non-pointer field, zero or not, and kube-apiserver's JSON drops
/// the zeros through `omitempty`; a zero in a pointer field (`replicas: 0`,
/// `automountServiceAccountToken: false`, `storageClassName: ""`) is a value. The wire cannot
/// tell them apart, so zeros are kept only for the pointer fields of the Go types
/// (`proto/pointer-fields.txt`, generated from them with the `.proto` files). Structs are
/// never empty to `omitempty`, so a message field (an IntOrString `0`, a zero Time's null)
/// stays.
fn omitted(message: &str, field: &FieldDescriptor, json: &Value) -> bool {
    if matches!(field.kind(), Kind::Message(_)) {
        return false;
    }
    let zero = match json {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        _ => false,
    };
    zero && !POINTERS.contains(&(message, field.name()))
}

static POINTERS: LazyLock<std::collections::HashSet<(&str, &str)>> = LazyLock::new(|| {
    include_str!("../proto/pointer-fields.txt")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(' '))
        .collect()
});

fn value_json(
    field: &FieldDescriptor,
    value: &PbValue,
    path: &str,
) -> Result<Value, ProtobufError> {
    Ok(match value {
        PbValue::Bool(b) => Value::Bool(*b),
        PbValue::I32(n) => Value::from(*n),
        PbValue::I64(n) => Value::from(*n),
        PbValue::U32(n) => Value::from(*n),
        PbValue::U64(n) => Value::from(*n),
        PbValue::F32(n) => Value::from(f64::from(*n)),
        PbValue::F64(n) => Value::from(*n),
        PbValue::String(s) => Value::String(s.clone()),
        PbValue::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        PbValue::EnumNumber(n) => Value::from(*n),
        PbValue::Message(m) => message_json(m, path)?,
        PbValue::List(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| value_json(field, v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        PbValue::Map(entries) => {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("a map field's kind is its entry message");
            };
            let value_field = entry.map_entry_value_field();
            let mut out = Map::new();
            for (key, v) in entries {
                let key = match key {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                let json = value_json(&value_field, v, &format!("{path}[{key}]"))?;
                out.insert(key, json);
            }
            Value::Object(out)
        }
    })
}

/// FieldsV1 and RawExtension carry JSON bytes; empty means absent.
fn raw_json(msg: &DynamicMessage, field: &str, path: &str) -> Result<Value, ProtobufError> {
    match msg.get_field_by_name(field).as_deref() {
        Some(PbValue::Bytes(b)) if !b.is_empty() => {
            serde_json::from_slice(b).map_err(|e| ProtobufError::Field {
                field: path.to_string(),
                reason: format!("not JSON: {e}"),
            })
        }
        _ => Ok(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_follow_the_group() {
        assert_eq!(type_name("v1", "Secret"), "k8s.io.api.core.v1.Secret");
        assert_eq!(
            type_name("networking.k8s.io/v1", "Ingress"),
            "k8s.io.api.networking.v1.Ingress"
        );
        assert_eq!(
            type_name("rbac.authorization.k8s.io/v1", "Role"),
            "k8s.io.api.rbac.v1.Role"
        );
    }

    #[test]
    fn every_served_kind_has_a_protobuf_type() {
        let pool = POOL.as_ref().unwrap();
        for info in crate::registry::RESOURCES {
            let name = type_name(&info.api_version(), info.kind);
            assert!(pool.get_message_by_name(&name).is_some(), "{name}");
        }
    }

    #[test]
    fn every_inline_field_exists() {
        let pool = POOL.as_ref().unwrap();
        for (field, ty) in INLINE {
            let found = pool.all_messages().any(|m| {
                m.get_field_by_name(field)
                    .is_some_and(|f| matches!(f.kind(), Kind::Message(t) if t.full_name() == *ty))
            });
            assert!(found, "{field}: {ty}");
        }
    }

    #[test]
    fn every_pointer_field_exists() {
        let pool = POOL.as_ref().unwrap();
        assert!(POINTERS.len() > 300);
        for (message, field) in POINTERS.iter() {
            let found = pool
                .get_message_by_name(message)
                .and_then(|m| m.get_field_by_name(field));
            assert!(found.is_some(), "{message} {field}");
        }
    }

    fn pool() -> &'static DescriptorPool {
        POOL.as_ref().unwrap()
    }

    /// A message of type `name` with `fields` set.
    fn msg(name: &str, fields: Vec<(&str, PbValue)>) -> DynamicMessage {
        let mut m = DynamicMessage::new(pool().get_message_by_name(name).unwrap());
        for (field, value) in fields {
            m.try_set_field_by_name(field, value).unwrap();
        }
        m
    }

    fn s(v: &str) -> PbValue {
        PbValue::String(v.to_string())
    }

    fn m(v: DynamicMessage) -> PbValue {
        PbValue::Message(v)
    }

    /// The `k8s\0` + runtime.Unknown envelope around `raw`, with extra Unknown fields.
    fn envelope(api_version: &str, kind: &str, raw: &[u8], extra: Vec<(&str, PbValue)>) -> Vec<u8> {
        let meta = msg(
            "k8s.io.apimachinery.pkg.runtime.TypeMeta",
            vec![("apiVersion", s(api_version)), ("kind", s(kind))],
        );
        let mut fields = vec![
            ("typeMeta", m(meta)),
            ("raw", PbValue::Bytes(raw.to_vec().into())),
        ];
        fields.extend(extra);
        [MAGIC, &prost::Message::encode_to_vec(&msg(UNKNOWN, fields))].concat()
    }

    fn object_meta(fields: Vec<(&str, PbValue)>) -> PbValue {
        m(msg(&format!("{META}.ObjectMeta"), fields))
    }

    fn secret() -> Vec<u8> {
        let data = [(
            MapKey::String("k".into()),
            PbValue::Bytes(vec![0, 255].into()),
        )];
        let secret = msg(
            "k8s.io.api.core.v1.Secret",
            vec![
                ("metadata", object_meta(vec![("name", s("s"))])),
                ("data", PbValue::Map(data.into_iter().collect())),
            ],
        );
        prost::Message::encode_to_vec(&secret)
    }

    #[test]
    fn times_int_or_string_and_pointer_zeros() {
        let time = |seconds: i64, nanos: i32| {
            m(msg(
                &format!("{META}.Time"),
                vec![
                    ("seconds", PbValue::I64(seconds)),
                    ("nanos", PbValue::I32(nanos)),
                ],
            ))
        };
        let micro = msg(
            &format!("{META}.MicroTime"),
            vec![
                ("seconds", PbValue::I64(1_700_000_000)),
                ("nanos", PbValue::I32(123_456_789)),
            ],
        );
        let lease = msg(
            "k8s.io.api.coordination.v1.Lease",
            vec![
                (
                    "metadata",
                    object_meta(vec![
                        ("name", s("l")),
                        ("namespace", s("")),
                        ("generation", PbValue::I64(0)),
                        ("creationTimestamp", time(1_700_000_000, 999)),
                        ("deletionTimestamp", m(msg(&format!("{META}.Time"), vec![]))),
                    ]),
                ),
                (
                    "spec",
                    m(msg(
                        "k8s.io.api.coordination.v1.LeaseSpec",
                        vec![
                            ("holderIdentity", s("a")),
                            ("leaseDurationSeconds", PbValue::I32(0)),
                            ("leaseTransitions", PbValue::I32(0)),
                            ("renewTime", m(micro)),
                        ],
                    )),
                ),
            ],
        );
        let body = envelope(
            "coordination.k8s.io/v1",
            "Lease",
            &prost::Message::encode_to_vec(&lease),
            vec![],
        );
        let json = decode(&body, "coordination.k8s.io/v1", "Lease").unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                // Time keeps seconds only; an empty Time is Go's zero time, null in JSON; the
                // non-pointer zeros (namespace "", generation 0) are gone.
                "metadata": {"name": "l", "creationTimestamp": "2023-11-14T22:13:20Z",
                             "deletionTimestamp": null},
                // MicroTime keeps microseconds; the pointers' zeros are values.
                "spec": {"holderIdentity": "a", "leaseDurationSeconds": 0, "leaseTransitions": 0,
                         "renewTime": "2023-11-14T22:13:20.123456Z"}
            })
        );

        let int_or_string = |fields| {
            m(msg(
                "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
                fields,
            ))
        };
        let port = |target| {
            let port = msg(
                "k8s.io.api.core.v1.ServicePort",
                vec![("port", PbValue::I32(80)), ("targetPort", target)],
            );
            let spec = msg(
                "k8s.io.api.core.v1.ServiceSpec",
                vec![("ports", PbValue::List(vec![m(port)]))],
            );
            let svc = msg("k8s.io.api.core.v1.Service", vec![("spec", m(spec))]);
            let body = envelope(
                "v1",
                "Service",
                &prost::Message::encode_to_vec(&svc),
                vec![],
            );
            decode(&body, "v1", "Service").map(|j| j["spec"]["ports"][0]["targetPort"].clone())
        };
        let named = int_or_string(vec![("type", PbValue::I64(1)), ("strVal", s("http"))]);
        assert_eq!(port(named).unwrap(), "http");
        let number = int_or_string(vec![("type", PbValue::I64(0)), ("intVal", PbValue::I32(0))]);
        assert_eq!(port(number).unwrap(), 0);
        let bad = int_or_string(vec![("type", PbValue::I64(2))]);
        assert!(matches!(port(bad), Err(ProtobufError::Field { .. })));
    }

    #[test]
    fn secret_bytes_become_base64() {
        let json = decode(&envelope("v1", "Secret", &secret(), vec![]), "v1", "Secret").unwrap();
        assert_eq!(json["data"]["k"], "AP8=");
        assert_eq!(json["metadata"]["name"], "s");
    }

    /// Attack: a protobuf body whose envelope names another kind than the URL (a Secret posted
    /// to the configmaps URL) must not be stored as the URL's kind.
    #[test]
    fn a_body_of_another_kind_is_refused() {
        let body = envelope("v1", "Secret", &secret(), vec![]);
        assert!(matches!(
            decode(&body, "v1", "ConfigMap"),
            Err(ProtobufError::KindMismatch { .. })
        ));
        assert!(matches!(
            decode(&body, "apps/v1", "Secret"),
            Err(ProtobufError::KindMismatch { .. })
        ));
    }

    /// Fail closed: an envelope this server cannot read whole is refused, never half-read.
    #[test]
    fn unreadable_envelopes_are_refused() {
        let gzip = envelope(
            "v1",
            "Secret",
            &secret(),
            vec![("contentEncoding", s("gzip"))],
        );
        assert!(matches!(
            decode(&gzip, "v1", "Secret"),
            Err(ProtobufError::ContentEncoding(_))
        ));
        let json = envelope(
            "v1",
            "Secret",
            b"{}",
            vec![("contentType", s("application/json"))],
        );
        assert!(matches!(
            decode(&json, "v1", "Secret"),
            Err(ProtobufError::ContentType(_))
        ));
        let raw = secret();
        let truncated = envelope("v1", "Secret", &raw[..raw.len() - 1], vec![]);
        assert!(matches!(
            decode(&truncated, "v1", "Secret"),
            Err(ProtobufError::Decode(_))
        ));
        let cut = envelope("v1", "Secret", &raw, vec![]);
        assert!(matches!(
            decode(&cut[..cut.len() - 1], "v1", "Secret"),
            Err(ProtobufError::Decode(_))
        ));
        // Field 99 of a Secret (a varint 1) is in no descriptor: refused, never dropped.
        let unknown = envelope(
            "v1",
            "Secret",
            &[raw.clone(), vec![0x98, 0x06, 0x01]].concat(),
            vec![],
        );
        let err = decode(&unknown, "v1", "Secret").unwrap_err();
        assert!(err.to_string().contains("unknown field number 99"), "{err}");
        let widget = envelope("example.com/v1", "Widget", &[], vec![]);
        let err = decode(&widget, "example.com/v1", "Widget").unwrap_err();
        assert!(err.is_unsupported(), "{err}");
    }

    #[test]
    fn the_magic_prefix_is_required() {
        assert!(matches!(
            decode(b"{}", "v1", "Secret"),
            Err(ProtobufError::NoMagic)
        ));
    }
}
