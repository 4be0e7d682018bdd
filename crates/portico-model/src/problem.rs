//! Problems found in an Ingress: what the controller reports as Kubernetes Events.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem in one Ingress, naming the field it is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The field path, as the API server writes it: `spec.rules[0].http.paths[1].path`,
    /// `metadata.annotations[nginx.ingress.kubernetes.io/proxy-body-size]`.
    pub field: String,
    pub reason: ProblemReason,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(
        field: impl Into<String>,
        reason: ProblemReason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            reason,
            message: message.into(),
        }
    }

    /// Whether this problem keeps the whole Ingress out of the table.
    pub fn rejects_ingress(&self) -> bool {
        self.reason.rejects_ingress()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why an Ingress, or part of it, is not served as written. The names are the `reason` of
/// the Kubernetes Event the controller records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProblemReason {
    /// The spec breaks a rule the API server enforces; the Ingress is rejected.
    InvalidSpec,
    /// An annotation's value does not parse; the Ingress is rejected.
    InvalidAnnotation,
    /// A `use-regex` path is not a valid regular expression; the Ingress is rejected.
    InvalidPathRegex,
    /// A `resource` backend: Portico serves only Service backends. That path is skipped.
    UnsupportedBackend,
    /// The Service does not exist (yet): the path answers 503 until it does.
    ServiceNotFound,
    /// The Service has no such port: the path answers 503.
    ServicePortNotFound,
    /// The TLS Secret does not exist; the host keeps its last good certificate, if any.
    SecretNotFound,
    /// The TLS Secret cannot be served; the host keeps its last good certificate, if any.
    InvalidSecret,
    /// The certificate's SANs do not cover a host listed in `tls.hosts`.
    CertificateHostMismatch,
    /// The certificate is expired or not yet valid.
    CertificateNotValidNow,
    /// Another Ingress (or an earlier rule) already routes the same host, path and type;
    /// the older one wins and this path is skipped.
    ConflictingRule,
    /// The host belongs to another namespace (the one of its oldest Ingress, or of an older
    /// wildcard covering it); this Ingress's rules for it are skipped.
    HostOwnedByAnotherNamespace,
    /// A wildcard host with fewer than two labels after `*.` (`*.com`); the Ingress is
    /// rejected.
    WildcardTooBroad,
    /// More `use-regex` paths, or longer patterns, than one Ingress may have (the Ingress is
    /// rejected), or more regex paths than its namespace may have (this Ingress's regex paths
    /// are skipped).
    RegexLimitExceeded,
    /// The backend is an `ExternalName` Service, which the settings do not allow (or whose
    /// `externalName` is an IP address): the path answers 503.
    ExternalNameNotAllowed,
    /// The TLS Secret is larger than the limit; it is not stored or served.
    SecretTooLarge,
    /// An Ingress with only a `defaultBackend` while the catch-all is off: it answers only
    /// for hosts its namespace owns.
    CatchAllNotAllowed,
}

impl ProblemReason {
    pub fn rejects_ingress(self) -> bool {
        matches!(
            self,
            ProblemReason::InvalidSpec
                | ProblemReason::InvalidAnnotation
                | ProblemReason::InvalidPathRegex
                | ProblemReason::WildcardTooBroad
                | ProblemReason::RegexLimitExceeded
        )
    }

    /// The CamelCase reason for a Kubernetes Event.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemReason::InvalidSpec => "InvalidSpec",
            ProblemReason::InvalidAnnotation => "InvalidAnnotation",
            ProblemReason::InvalidPathRegex => "InvalidPathRegex",
            ProblemReason::UnsupportedBackend => "UnsupportedBackend",
            ProblemReason::ServiceNotFound => "ServiceNotFound",
            ProblemReason::ServicePortNotFound => "ServicePortNotFound",
            ProblemReason::SecretNotFound => "SecretNotFound",
            ProblemReason::InvalidSecret => "InvalidSecret",
            ProblemReason::CertificateHostMismatch => "CertificateHostMismatch",
            ProblemReason::CertificateNotValidNow => "CertificateNotValidNow",
            ProblemReason::ConflictingRule => "ConflictingRule",
            ProblemReason::HostOwnedByAnotherNamespace => "HostOwnedByAnotherNamespace",
            ProblemReason::WildcardTooBroad => "WildcardTooBroad",
            ProblemReason::RegexLimitExceeded => "RegexLimitExceeded",
            ProblemReason::ExternalNameNotAllowed => "ExternalNameNotAllowed",
            ProblemReason::SecretTooLarge => "SecretTooLarge",
            ProblemReason::CatchAllNotAllowed => "CatchAllNotAllowed",
        }
    }
}

impl fmt::Display for ProblemReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
