//! Validation of Ingresses as kube-apiserver does it.
//!
//! This mirrors `ValidateIngressCreate` of kubernetes/kubernetes
//! `pkg/apis/networking/validation/validation.go` (with `ValidateObjectMeta` from
//! `pkg/apis/core/validation` and the string checks of `k8s.io/apimachinery/pkg/util/validation`)
//! for `networking.k8s.io/v1`, so that objects which never came through an API server (manifests
//! fed from files, a fake API in tests) are held to the same rules as those that did. Every
//! violation is reported, each with its field path and message in the API server's own words,
//! e.g. `spec.rules[0].http.paths[1].pathType: Required value: pathType must be specified`.
//!
//! Choices where the API server's behaviour depends on context:
//! - Create-time rules apply (no leniency for invalid Secret names or invalid rules under
//!   wildcard hosts that an update of an already stored object would tolerate).
//! - Backend service names must be DNS-1035 labels, as with the default feature gates
//!   (`RelaxedServiceNameValidation` off): `1svc` is rejected.
//! - IP addresses are parsed leniently like `netutils.ParseIPSloppy` (IPv4 octets may have
//!   leading zeros), so `010.1.1.1` counts as an IP where a DNS name is required.
//!
//! The string checks are `pub` so that other crates (e.g. a fake API server) can reuse them:
//! each `check_*` function returns the API server's messages (empty when valid) and each
//! `is_*` function is its yes/no form.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::networking::v1::IngressStatus;

use crate::source::{BackendSource, HttpPathSource, IngressClassSource, IngressSource};

/// The `kubernetes.io/ingress.class` annotation, the predecessor of `spec.ingressClassName`.
pub const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The path types of `networking.k8s.io/v1`, sorted as the API server lists them.
pub const SUPPORTED_PATH_TYPES: [&str; 3] = ["Exact", "ImplementationSpecific", "Prefix"];

/// Total size of all annotation keys and values the API server accepts (256 KiB).
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

const DNS1123_LABEL_MAX_LEN: usize = 63;
const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;
const DNS1035_LABEL_MAX_LEN: usize = 63;
const IANA_SVC_NAME_MAX_LEN: usize = 15;
const QUALIFIED_NAME_MAX_LEN: usize = 63;
const MAX_INGRESS_CLASS_CONTROLLER_LEN: usize = 250;

const INVALID_PATH_SEQUENCES: [&str; 5] = ["//", "/./", "/../", "%2f", "%2F"];
const INVALID_PATH_SUFFIXES: [&str; 2] = ["/..", "/."];

/// One rule an object breaks, as the API server reports it (`field.Error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the offending field, e.g. `spec.rules[0].http.paths[1].path`.
    pub field: String,
    pub kind: ViolationKind,
    /// The offending value as written (empty when the API server reports none).
    pub value: String,
    /// What is wrong, in the API server's words; may be empty for `Required`.
    pub message: String,
}

/// The API server's error types (`field.ErrorType`) that Ingress validation produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// `Required value`: a needed field is missing or empty.
    Required,
    /// `Invalid value`: the value is malformed.
    Invalid,
    /// `Unsupported value`: the value is not one of an enumeration.
    Unsupported,
    /// `Forbidden`: the field may not be set here.
    Forbidden,
    /// `Duplicate value`: the value must be unique but is not.
    Duplicate,
    /// `Too long`: the value exceeds a size limit (total annotation size).
    TooLong,
}

impl ViolationKind {
    /// The API server's wording (`field.ErrorType.String()`).
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::Required => "Required value",
            ViolationKind::Invalid => "Invalid value",
            ViolationKind::Unsupported => "Unsupported value",
            ViolationKind::Forbidden => "Forbidden",
            ViolationKind::Duplicate => "Duplicate value",
            ViolationKind::TooLong => "Too long",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FieldViolation {
    fn new(
        field: impl Into<String>,
        kind: ViolationKind,
        value: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            kind,
            value: value.into(),
            message: message.into(),
        }
    }

    fn invalid(field: &str, value: &str, message: impl Into<String>) -> Self {
        Self::new(field, ViolationKind::Invalid, value, message)
    }

    fn required(field: &str, message: impl Into<String>) -> Self {
        Self::new(field, ViolationKind::Required, "", message)
    }

    /// Whether the API server prints this violation's value without quotes: it does so for
    /// numbers (port numbers here) and Go literals (the nil rule list of an empty spec).
    fn value_is_literal(&self) -> bool {
        self.field.ends_with(".port.number") || self.value.starts_with("[]")
    }
}

/// Formats like the API server's `field.Error`:
/// `spec.rules[0].host: Invalid value: "Foo.com": a lowercase RFC 1123 subdomain must ...`.
impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.kind)?;
        match self.kind {
            ViolationKind::Required | ViolationKind::Forbidden | ViolationKind::TooLong => {}
            _ if self.value_is_literal() => write!(f, ": {}", self.value)?,
            _ => write!(f, ": {:?}", self.value)?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Validates an Ingress as kube-apiserver does on create; returns every violation found
/// (empty when the Ingress would be accepted).
pub fn ingress(src: &IngressSource) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    object_meta(src, &mut out);
    ingress_spec(src, &mut out);
    ingress_class_annotation(src, &mut out);
    out
}

/// Validates an IngressClass as kube-apiserver does on create: a DNS-1123 subdomain name and
/// a domain-prefixed `spec.controller` of at most 250 bytes.
pub fn ingress_class(src: &IngressClassSource) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    object_name(&src.key.name, &mut out);
    let field = "spec.controller";
    if src.controller.len() > MAX_INGRESS_CLASS_CONTROLLER_LEN {
        out.push(FieldViolation::new(
            field,
            ViolationKind::TooLong,
            "",
            format!("may not be more than {MAX_INGRESS_CLASS_CONTROLLER_LEN} bytes"),
        ));
    }
    domain_prefixed_path(field, &src.controller, &mut out);
    out
}

/// Validates an Ingress status as kube-apiserver does on a status update.
pub fn ingress_status(status: &IngressStatus) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let entries = status
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("status.loadBalancer.ingress[{i}]");
        if let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty())
            && parse_ip_sloppy(ip).is_none()
        {
            out.push(FieldViolation::invalid(
                &format!("{at}.ip"),
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
        if let Some(hostname) = entry.hostname.as_deref().filter(|h| !h.is_empty()) {
            let field = format!("{at}.hostname");
            for msg in check_dns1123_subdomain(hostname) {
                out.push(FieldViolation::invalid(&field, hostname, msg));
            }
            if parse_ip_sloppy(hostname).is_some() {
                out.push(FieldViolation::invalid(
                    &field,
                    hostname,
                    "must be a DNS name, not an IP address",
                ));
            }
        }
    }
    out
}

/// `metadata.name` of an object named by a DNS-1123 subdomain (`NameIsDNSSubdomain`).
fn object_name(name: &str, out: &mut Vec<FieldViolation>) {
    if name.is_empty() {
        out.push(FieldViolation::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for msg in check_dns1123_subdomain(name) {
            out.push(FieldViolation::invalid("metadata.name", name, msg));
        }
    }
}

/// `IsDomainPrefixedPath`, as for an IngressClass's controller: `example.com/some/path`.
fn domain_prefixed_path(field: &str, value: &str, out: &mut Vec<FieldViolation>) {
    if value.is_empty() {
        out.push(FieldViolation::required(field, ""));
        return;
    }
    let Some((host, path)) = value
        .split_once('/')
        .filter(|(h, p)| !h.is_empty() && !p.is_empty())
    else {
        out.push(FieldViolation::invalid(
            field,
            value,
            "must be a domain-prefixed path (such as \"acme.io/foo\")",
        ));
        return;
    };
    for msg in check_dns1123_subdomain(host) {
        out.push(FieldViolation::invalid(field, host, msg));
    }
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&b));
    if !path_ok {
        out.push(FieldViolation::invalid(
            field,
            path,
            regex_message("Invalid path", "[A-Za-z0-9/\\-._~%!$&'()*+,;=:]+", &[]),
        ));
    }
}

/// The parts of `ValidateObjectMeta` that concern us: name, namespace and annotations.
fn object_meta(src: &IngressSource, out: &mut Vec<FieldViolation>) {
    object_name(&src.key.name, out);
    let namespace = &*src.key.namespace;
    if namespace.is_empty() {
        out.push(FieldViolation::required("metadata.namespace", ""));
    } else {
        for msg in check_dns1123_label(namespace) {
            out.push(FieldViolation::invalid(
                "metadata.namespace",
                namespace,
                msg,
            ));
        }
    }
    let mut total_size = 0;
    for (key, value) in &src.annotations {
        for msg in check_qualified_name(&key.to_lowercase()) {
            out.push(FieldViolation::invalid("metadata.annotations", key, msg));
        }
        total_size += key.len() + value.len();
    }
    if total_size > TOTAL_ANNOTATION_SIZE_LIMIT {
        out.push(FieldViolation::new(
            "metadata.annotations",
            ViolationKind::TooLong,
            "",
            format!("may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
        ));
    }
}

fn ingress_spec(src: &IngressSource, out: &mut Vec<FieldViolation>) {
    if src.rules.is_empty() && src.default_backend.is_none() {
        out.push(FieldViolation::invalid(
            "spec",
            "[]networking.IngressRule(nil)",
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(backend) = &src.default_backend {
        ingress_backend(backend, "spec.defaultBackend", out);
    }
    for (i, rule) in src.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(host) = rule.host.as_deref().filter(|h| !h.is_empty()) {
            rule_host(host, &format!("{at}.host"), out);
        }
        if let Some(paths) = &rule.http {
            let at = format!("{at}.http.paths");
            if paths.is_empty() {
                out.push(FieldViolation::required(&at, ""));
            }
            for (j, path) in paths.iter().enumerate() {
                http_path(path, &format!("{at}[{j}]"), out);
            }
        }
    }
    for (i, tls) in src.tls.iter().enumerate() {
        let at = format!("spec.tls[{i}]");
        for (j, host) in tls.hosts.iter().enumerate() {
            let field = format!("{at}.hosts[{j}]");
            let msgs = if host.contains('*') {
                check_wildcard_dns1123_subdomain(host)
            } else {
                check_dns1123_subdomain(host)
            };
            for msg in msgs {
                out.push(FieldViolation::invalid(&field, host, msg));
            }
        }
        // An empty secretName is allowed: TLS by SNI only, with a certificate chosen elsewhere.
        if let Some(secret) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) {
            for msg in check_dns1123_subdomain(secret) {
                out.push(FieldViolation::invalid(
                    &format!("{at}.secretName"),
                    secret,
                    msg,
                ));
            }
        }
    }
    if let Some(class) = &src.ingress_class_name {
        for msg in check_dns1123_subdomain(class) {
            out.push(FieldViolation::invalid("spec.ingressClassName", class, msg));
        }
    }
}

/// A rule's host: a DNS name (not an IP, no port, lower case), optionally `*.` + a DNS name.
fn rule_host(host: &str, field: &str, out: &mut Vec<FieldViolation>) {
    if parse_ip_sloppy(host).is_some() {
        out.push(FieldViolation::invalid(
            field,
            host,
            "must be a DNS name, not an IP address",
        ));
    }
    let msgs = if host.contains('*') {
        check_wildcard_dns1123_subdomain(host)
    } else {
        check_dns1123_subdomain(host)
    };
    for msg in msgs {
        out.push(FieldViolation::invalid(field, host, msg));
    }
}

fn http_path(path: &HttpPathSource, at: &str, out: &mut Vec<FieldViolation>) {
    let Some(path_type) = path.path_type.as_deref() else {
        // The API server stops here: it does not look at the backend of such a path.
        out.push(FieldViolation::required(
            &format!("{at}.pathType"),
            "pathType must be specified",
        ));
        return;
    };
    let value = path.path.as_deref().unwrap_or("");
    let field = format!("{at}.path");
    match path_type {
        "Exact" | "Prefix" => {
            for msg in check_exact_or_prefix_path(value) {
                out.push(FieldViolation::invalid(&field, value, msg));
            }
        }
        "ImplementationSpecific" => {
            if !value.is_empty() && !value.starts_with('/') {
                out.push(FieldViolation::invalid(
                    &field,
                    value,
                    "must be an absolute path",
                ));
            }
        }
        other => out.push(FieldViolation::new(
            format!("{at}.pathType"),
            ViolationKind::Unsupported,
            other,
            supported_values_message(&SUPPORTED_PATH_TYPES),
        )),
    }
    ingress_backend(&path.backend, &format!("{at}.backend"), out);
}

fn ingress_backend(backend: &BackendSource, at: &str, out: &mut Vec<FieldViolation>) {
    match (&backend.service, &backend.resource) {
        (Some(_), Some(_)) => out.push(FieldViolation::invalid(
            at,
            "",
            "cannot set both resource and service backends",
        )),
        (None, Some(resource)) => resource_reference(resource, &format!("{at}.resource"), out),
        (Some(service), None) => {
            let name_field = format!("{at}.service.name");
            if service.name.is_empty() {
                out.push(FieldViolation::required(&name_field, ""));
            } else {
                for msg in check_dns1035_label(&service.name) {
                    out.push(FieldViolation::invalid(&name_field, &service.name, msg));
                }
            }
            // As in the API server, an empty name and a zero number count as unset.
            let port_name = service.port_name.as_deref().filter(|n| !n.is_empty());
            let port_number = service.port_number.filter(|&n| n != 0);
            match (port_name, port_number) {
                (Some(_), Some(_)) => out.push(FieldViolation::invalid(
                    at,
                    "",
                    "cannot set both port name & port number",
                )),
                (Some(name), None) => {
                    for msg in check_port_name(name) {
                        out.push(FieldViolation::invalid(
                            &format!("{at}.service.port.name"),
                            name,
                            msg,
                        ));
                    }
                }
                (None, Some(number)) => {
                    for msg in check_port_number(number) {
                        out.push(FieldViolation::invalid(
                            &format!("{at}.service.port.number"),
                            &number.to_string(),
                            msg,
                        ));
                    }
                }
                (None, None) => {
                    out.push(FieldViolation::required(
                        at,
                        "port name or number is required",
                    ));
                }
            }
        }
        (None, None) => out.push(FieldViolation::invalid(
            at,
            "",
            "resource or service backend is required",
        )),
    }
}

/// A `resource` backend, which the model keeps as `kind/name`.
fn resource_reference(resource: &str, at: &str, out: &mut Vec<FieldViolation>) {
    let (kind, name) = resource.split_once('/').unwrap_or((resource, ""));
    for (part, value) in [("kind", kind), ("name", name)] {
        let field = format!("{at}.{part}");
        if value.is_empty() {
            out.push(FieldViolation::required(
                &field,
                format!("{part} is required"),
            ));
        } else {
            for msg in check_path_segment_name(value) {
                out.push(FieldViolation::invalid(&field, value, msg));
            }
        }
    }
}

/// On create, the legacy class annotation may only repeat `spec.ingressClassName`.
fn ingress_class_annotation(src: &IngressSource, out: &mut Vec<FieldViolation>) {
    if let (Some(annotation), Some(class)) = (
        src.annotations.get(INGRESS_CLASS_ANNOTATION),
        &src.ingress_class_name,
    ) && annotation != class
    {
        out.push(FieldViolation::invalid(
            &format!("annotations.{INGRESS_CLASS_ANNOTATION}"),
            annotation,
            "must match `ingressClassName` when both are specified",
        ));
    }
}

fn supported_values_message(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("supported values: {}", quoted.join(", "))
}

// ---- String checks (k8s.io/apimachinery/pkg/util/validation and friends) ----

/// The path rules for `Exact` and `Prefix` paths: absolute, and free of sequences that
/// would let a path mean something else after normalisation.
pub fn check_exact_or_prefix_path(path: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if !path.starts_with('/') {
        errs.push("must be an absolute path".to_owned());
    }
    if !path.is_empty() {
        for seq in INVALID_PATH_SEQUENCES {
            if path.contains(seq) {
                errs.push(format!("must not contain '{seq}'"));
            }
        }
        for suffix in INVALID_PATH_SUFFIXES {
            if path.ends_with(suffix) {
                errs.push(format!("cannot end with '{suffix}'"));
            }
        }
    }
    errs
}

/// `IsDNS1123Label`: lower case alphanumerics and `-`, alphanumeric at both ends, <= 63.
pub fn check_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LEN {
        errs.push(max_len_message(DNS1123_LABEL_MAX_LEN));
    }
    if !is_dns1123_label_syntax(value) {
        errs.push(regex_message(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// `IsDNS1123Subdomain`: dot-separated RFC 1123 labels, lower case, <= 253 characters.
pub fn check_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LEN {
        errs.push(max_len_message(DNS1123_SUBDOMAIN_MAX_LEN));
    }
    if !is_dns1123_subdomain_syntax(value) {
        errs.push(regex_message(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// `IsWildcardDNS1123Subdomain`: `*.` followed by a DNS-1123 subdomain, <= 253 characters.
pub fn check_wildcard_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LEN {
        errs.push(max_len_message(DNS1123_SUBDOMAIN_MAX_LEN));
    }
    let valid = value
        .strip_prefix("*.")
        .is_some_and(is_dns1123_subdomain_syntax);
    if !valid {
        errs.push(regex_message(
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character",
            &format!("\\*\\.{DNS1123_SUBDOMAIN_FMT}"),
            &["*.example.com"],
        ));
    }
    errs
}

/// `IsDNS1035Label`: like a DNS-1123 label, but must start with a letter.
pub fn check_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1035_LABEL_MAX_LEN {
        errs.push(max_len_message(DNS1035_LABEL_MAX_LEN));
    }
    let starts_with_letter = value.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if !(starts_with_letter && is_dns1123_label_syntax(value)) {
        errs.push(regex_message(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            "[a-z]([-a-z0-9]*[a-z0-9])?",
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// `IsValidPortName` (an IANA_SVC_NAME): <= 15 of `[-a-z0-9]`, at least one letter, no `--`,
/// no hyphen at either end.
pub fn check_port_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > IANA_SVC_NAME_MAX_LEN {
        errs.push(max_len_message(IANA_SVC_NAME_MAX_LEN));
    }
    let charset_ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !charset_ok {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !value.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if value.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if value.starts_with('-') || value.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// `IsValidPortNum`: 1..=65535.
pub fn check_port_number(port: i32) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

/// `IsQualifiedName`, as for label and annotation keys: `[prefix/]name`, where the prefix is
/// a DNS-1123 subdomain and the name <= 63 of `[-A-Za-z0-9_.]`, alphanumeric at both ends.
pub fn check_qualified_name(value: &str) -> Vec<String> {
    const MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
    const FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
    const EXAMPLES: [&str; 3] = ["MyName", "my.name", "123-abc"];
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    check_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_message(MSG, FMT, &EXAMPLES)
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > QUALIFIED_NAME_MAX_LEN {
        errs.push(format!(
            "name part {}",
            max_len_message(QUALIFIED_NAME_MAX_LEN)
        ));
    }
    let bytes = name.as_bytes();
    let name_ok = match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    };
    if !name_ok {
        errs.push(format!("name part {}", regex_message(MSG, FMT, &EXAMPLES)));
    }
    errs
}

/// `IsValidPathSegmentName`: a name usable as one segment of a URL path.
pub fn check_path_segment_name(value: &str) -> Vec<String> {
    if value == "." || value == ".." {
        return vec![format!("may not be '{value}'")];
    }
    ["/", "%"]
        .into_iter()
        .filter(|bad| value.contains(bad))
        .map(|bad| format!("may not contain '{bad}'"))
        .collect()
}

pub fn is_dns1123_label(value: &str) -> bool {
    check_dns1123_label(value).is_empty()
}

pub fn is_dns1123_subdomain(value: &str) -> bool {
    check_dns1123_subdomain(value).is_empty()
}

pub fn is_wildcard_dns1123_subdomain(value: &str) -> bool {
    check_wildcard_dns1123_subdomain(value).is_empty()
}

pub fn is_dns1035_label(value: &str) -> bool {
    check_dns1035_label(value).is_empty()
}

/// Whether `value` is a valid IANA_SVC_NAME (a named port).
pub fn is_iana_svc_name(value: &str) -> bool {
    check_port_name(value).is_empty()
}

pub fn is_qualified_name(value: &str) -> bool {
    check_qualified_name(value).is_empty()
}

/// Parses an IP address as Kubernetes' `netutils.ParseIPSloppy` does: like the standard
/// parser, except that IPv4 octets may carry leading zeros (read as decimal).
pub fn parse_ip_sloppy(value: &str) -> Option<IpAddr> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(ip);
    }
    let mut octets = [0u8; 4];
    let mut parts = value.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

/// Matches `DNS1123_LABEL_FMT` (length not checked).
fn is_dns1123_label_syntax(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

/// Matches `DNS1123_SUBDOMAIN_FMT` (length not checked).
fn is_dns1123_subdomain_syntax(value: &str) -> bool {
    value.split('.').all(is_dns1123_label_syntax)
}

fn max_len_message(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// The API server's `RegexError`, spacing included.
fn regex_message(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{example}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}
