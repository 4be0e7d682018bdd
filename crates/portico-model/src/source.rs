//! The inputs of the compiler: the parts of Kubernetes objects that routing depends on.
//!
//! These mirror the Kubernetes types field for field where routing needs them, keep every
//! `Option` the API allows (so that validation can see what is missing), and drop the rest.
//! They are our own types, not k8s-openapi's, because they travel through the Raft log in a
//! compact binary encoding that k8s-openapi's map-only deserializers cannot read.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::key::ObjectKey;

/// One Kubernetes object that routing depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resource {
    Ingress(Arc<IngressSource>),
    IngressClass(Arc<IngressClassSource>),
    Service(Arc<ServiceSource>),
    EndpointSlice(Arc<EndpointSliceSource>),
    Secret(Arc<SecretSource>),
}

/// Which collection an object belongs to; with an [`ObjectKey`] it names one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    Ingress,
    IngressClass,
    Service,
    EndpointSlice,
    Secret,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Ingress => "Ingress",
            ResourceKind::IngressClass => "IngressClass",
            ResourceKind::Service => "Service",
            ResourceKind::EndpointSlice => "EndpointSlice",
            ResourceKind::Secret => "Secret",
        })
    }
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::Ingress(_) => ResourceKind::Ingress,
            Resource::IngressClass(_) => ResourceKind::IngressClass,
            Resource::Service(_) => ResourceKind::Service,
            Resource::EndpointSlice(_) => ResourceKind::EndpointSlice,
            Resource::Secret(_) => ResourceKind::Secret,
        }
    }

    pub fn key(&self) -> &ObjectKey {
        match self {
            Resource::Ingress(o) => &o.key,
            Resource::IngressClass(o) => &o.key,
            Resource::Service(o) => &o.key,
            Resource::EndpointSlice(o) => &o.key,
            Resource::Secret(o) => &o.key,
        }
    }
}

/// Seconds since the Unix epoch, as Kubernetes' `creationTimestamp` (second precision).
pub type UnixSeconds = i64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressSource {
    pub key: ObjectKey,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub creation_timestamp: Option<UnixSeconds>,
    pub annotations: BTreeMap<String, String>,
    pub ingress_class_name: Option<String>,
    pub default_backend: Option<BackendSource>,
    pub tls: Vec<IngressTlsSource>,
    pub rules: Vec<IngressRuleSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressTlsSource {
    pub hosts: Vec<String>,
    pub secret_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRuleSource {
    pub host: Option<String>,
    /// `None` when the rule has no `http` at all (allowed; it routes nothing).
    pub http: Option<Vec<HttpPathSource>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpPathSource {
    pub path: Option<String>,
    /// As written: `Exact`, `Prefix`, `ImplementationSpecific`, or anything else (rejected).
    pub path_type: Option<String>,
    pub backend: BackendSource,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSource {
    pub service: Option<ServiceBackendSource>,
    /// `kind/name` of a `resource` backend; Portico does not serve those.
    pub resource: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBackendSource {
    pub name: String,
    pub port_name: Option<String>,
    pub port_number: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressClassSource {
    /// IngressClass is cluster-scoped: the namespace is empty.
    pub key: ObjectKey,
    pub controller: String,
    pub is_default_class: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSource {
    pub key: ObjectKey,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalName`.
    pub type_: Option<String>,
    pub external_name: Option<String>,
    pub ports: Vec<ServicePortSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortSource {
    pub name: Option<String>,
    pub port: i32,
    /// `TCP` when absent.
    pub protocol: Option<String>,
    pub target_port: Option<TargetPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetPort {
    Number(i32),
    Name(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSliceSource {
    pub key: ObjectKey,
    /// The `kubernetes.io/service-name` label: the Service this slice belongs to.
    pub service_name: Option<String>,
    /// `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    pub ports: Vec<EndpointPortSource>,
    pub endpoints: Vec<EndpointSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPortSource {
    pub name: Option<String>,
    pub port: Option<i32>,
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSource {
    pub addresses: Vec<String>,
    /// Conditions as the API gives them: `None` means unknown, which Kubernetes says to read
    /// as ready (for `ready`) and as `ready` (for `serving`).
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    /// Pod name from `targetRef`, for logs and the echo demo.
    pub target_name: Option<String>,
}

/// A Secret, reduced to what TLS needs. Its key material never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSource {
    pub key: ObjectKey,
    pub type_: Option<String>,
    pub tls_crt: Option<Vec<u8>>,
    pub tls_key: Option<Vec<u8>>,
    /// The size of `tls.crt` plus `tls.key` when it was over
    /// [`MAX_TLS_SECRET_BYTES`](crate::MAX_TLS_SECRET_BYTES): the data was dropped at
    /// conversion, so it never reaches the Raft log, and the Secret is reported as too large.
    pub oversize: Option<u64>,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource")
            .field("key", &self.key)
            .field("type_", &self.type_)
            .field("tls_crt", &self.tls_crt.as_ref().map(|c| c.len()))
            .field("tls_key", &self.tls_key.as_ref().map(|_| "<redacted>"))
            .field("oversize", &self.oversize)
            .finish()
    }
}
