//! Validation answering `422 Invalid` with field causes: object names for every kind, and the
//! Ingress rules of kube-apiserver (from `portico_model::validate`, shared with the controller).

use k8s_openapi::api::networking::v1::Ingress;
use portico_model::IngressSource;
use portico_model::validate::{self as model, FieldViolation, ViolationKind};
use serde_json::Value;

use crate::error::{ApiError, Cause};
use crate::registry::{Part, ResourceInfo};

fn reason(kind: ViolationKind) -> &'static str {
    match kind {
        ViolationKind::Required => "FieldValueRequired",
        ViolationKind::Invalid => "FieldValueInvalid",
        ViolationKind::Unsupported => "FieldValueNotSupported",
        ViolationKind::Forbidden => "FieldValueForbidden",
        ViolationKind::Duplicate => "FieldValueDuplicate",
        ViolationKind::TooLong => "FieldValueTooLong",
    }
}

fn cause(v: &FieldViolation) -> Cause {
    let full = v.to_string();
    let message = full
        .strip_prefix(&format!("{}: ", v.field))
        .unwrap_or(&full)
        .to_string();
    Cause {
        reason: reason(v.kind).into(),
        message,
        field: v.field.clone(),
    }
}

/// Object names: DNS-1123 labels for namespaces, DNS-1035 labels for services, subdomains else.
pub fn check_name(info: &ResourceInfo, name: &str) -> Result<(), ApiError> {
    let errors = match info.kind {
        "Namespace" => model::check_dns1123_label(name),
        "Service" => model::check_dns1035_label(name),
        _ => model::check_dns1123_subdomain(name),
    };
    if errors.is_empty() {
        return Ok(());
    }
    let causes = errors
        .into_iter()
        .map(|e| Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {name:?}: {e}"),
            field: "metadata.name".into(),
        })
        .collect();
    Err(ApiError::invalid(info, name, causes))
}

/// Kind-specific validation of a decoded object about to be stored.
pub fn object(
    info: &ResourceInfo,
    current: Option<&Value>,
    object: &Value,
    part: Part,
) -> Result<(), ApiError> {
    if (info.group, info.kind) != ("networking.k8s.io", "Ingress") {
        return Ok(());
    }
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ingress: Ingress =
        serde_json::from_value(object.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut violations = Vec::new();
    let spec_changed = current.is_none_or(|c| {
        c.get("spec") != object.get("spec") || c.get("metadata") != object.get("metadata")
    });
    if part == Part::Main && spec_changed {
        violations.extend(model::ingress(&IngressSource::from(&ingress)));
    }
    let status_changed = current.is_some_and(|c| c.get("status") != object.get("status"));
    if status_changed && let Some(status) = &ingress.status {
        violations.extend(model::ingress_status(status));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            info,
            name,
            violations.iter().map(cause).collect(),
        ))
    }
}
