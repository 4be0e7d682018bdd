//! API errors, rendered as `meta/v1 Status` bodies exactly as kube-apiserver writes them.

use serde_json::{Value, json};

use crate::registry::ResourceInfo;

/// One field-level cause of an `Invalid` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, ...
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// An error answer of the API, convertible to a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<Details>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    pub name: String,
    pub group: String,
    pub kind: String,
    pub causes: Vec<Cause>,
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, info: &ResourceInfo, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            name: name.to_string(),
            group: info.group.to_string(),
            kind: info.plural.to_string(),
            causes: Vec::new(),
            retry_after_seconds: None,
        }));
        self
    }

    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", info.qualified_plural()),
        )
        .with_details(info, name)
    }

    pub fn namespace_not_found(namespace: &str) -> Self {
        let ns = crate::registry::get(crate::registry::namespaces());
        Self::not_found(ns, namespace)
    }

    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", info.qualified_plural()),
        )
        .with_details(info, name)
    }

    pub fn conflict(info: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                info.qualified_plural()
            ),
        )
        .with_details(info, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Gone", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut err = Self::new(503, "ServiceUnavailable", message);
        err.details = Some(Box::new(Details {
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            causes: Vec::new(),
            retry_after_seconds: Some(1),
        }));
        err
    }

    /// `422 Invalid` with one cause per field, message built like kube-apiserver's.
    pub fn invalid(info: &ResourceInfo, name: &str, causes: Vec<Cause>) -> Self {
        // As field.ErrorList.ToAggregate: the message names each distinct error once.
        let mut list: Vec<String> = Vec::new();
        for c in &causes {
            let one = format!("{}: {}", c.field, c.message);
            if !list.contains(&one) {
                list.push(one);
            }
        }
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut err = Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {joined}", qualified_kind(info)),
        );
        err.details = Some(Box::new(Details {
            name: name.to_string(),
            group: info.group.to_string(),
            kind: info.kind.to_string(),
            causes,
            retry_after_seconds: None,
        }));
        err
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = serde_json::Map::new();
            if !d.name.is_empty() {
                details.insert("name".into(), d.name.clone().into());
            }
            if !d.group.is_empty() {
                details.insert("group".into(), d.group.clone().into());
            }
            if !d.kind.is_empty() {
                details.insert("kind".into(), d.kind.clone().into());
            }
            if !d.causes.is_empty() {
                let causes = d
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect::<Vec<_>>();
                details.insert("causes".into(), causes.into());
            }
            if let Some(secs) = d.retry_after_seconds {
                details.insert("retryAfterSeconds".into(), secs.into());
            }
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// `Ingress.networking.k8s.io`, or just `Service` for the core group (as in kube-apiserver messages).
fn qualified_kind(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        info.kind.to_string()
    } else {
        format!("{}.{}", info.kind, info.group)
    }
}

/// A successful `Status` (answers to some deletes).
pub fn success_status(info: &ResourceInfo, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": info.group, "kind": info.plural, "uid": uid},
    })
}
