//! The resources this server knows: one static table, looked up by URL (group, version, plural)
//! or by kind. Every other module asks the registry instead of hard-coding a resource.

use serde_json::Value;

/// One served resource (a group/version/plural triple).
#[derive(Debug)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub has_status: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Checks that an object decodes as the real Kubernetes type (strict decoding).
    pub(crate) typed: TypedCheck,
}

/// Which part of an object a write addresses: the main resource or its `status` subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

pub(crate) type TypedCheck = fn(&Value) -> Result<Value, String>;

fn roundtrip<T>(value: &Value) -> Result<Value, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

impl ResourceInfo {
    /// `apiVersion` as written in objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource's name as used in error messages: `ingresses.networking.k8s.io`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether kube-apiserver keeps `metadata.generation` for this kind (its registry strategy
    /// sets it on create and raises it on spec changes); the other kinds never carry one.
    pub fn tracks_generation(&self) -> bool {
        matches!(
            (self.group, self.kind),
            (
                "networking.k8s.io",
                "Ingress" | "IngressClass" | "NetworkPolicy"
            ) | ("discovery.k8s.io", "EndpointSlice")
                | ("apps", "StatefulSet")
                | ("policy", "PodDisruptionBudget")
        )
    }

    /// Whether the field at `path` (field names from the top) is a map from strings, not a
    /// struct: labels and annotations, a ConfigMap's or Secret's data, a Service's selector,
    /// `matchLabels`, `nodeSelector`. kube-apiserver stores an empty one as absent.
    pub fn is_map_field(&self, path: &[&str]) -> bool {
        match path {
            [field] => {
                matches!(self.kind, "ConfigMap" | "Secret")
                    && matches!(*field, "data" | "binaryData" | "stringData")
            }
            ["spec", "selector"] => self.kind == "Service",
            [.., "metadata", "labels" | "annotations"] => true,
            [.., "matchLabels" | "nodeSelector"] => true,
            _ => false,
        }
    }

    /// Decodes `object` as the real Kubernetes type and re-encodes it. Errors name the bad field.
    pub(crate) fn decode_typed(&self, object: &Value) -> Result<Value, String> {
        (self.typed)(object)
    }
}

macro_rules! resource {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, ns = $ns:expr, status = $st:expr,
     short = $short:expr, cat = $cat:expr, $ty:ty) => {
        ResourceInfo {
            group: $group,
            version: $version,
            kind: $kind,
            list_kind: concat!($kind, "List"),
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            has_status: $st,
            short_names: $short,
            categories: $cat,
            typed: roundtrip::<$ty>,
        }
    };
}

use k8s_openapi::api::{apps, coordination, core, discovery, events, networking, policy, rbac};

/// Every resource the server serves.
pub static RESOURCES: &[ResourceInfo] = &[
    resource!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        ns = false,
        status = true,
        short = &["ns"],
        cat = &[],
        core::v1::Namespace
    ),
    resource!(
        "",
        "v1",
        "Service",
        "services",
        "service",
        ns = true,
        status = true,
        short = &["svc"],
        cat = &["all"],
        core::v1::Service
    ),
    resource!(
        "",
        "v1",
        "Secret",
        "secrets",
        "secret",
        ns = true,
        status = false,
        short = &[],
        cat = &[],
        core::v1::Secret
    ),
    resource!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        ns = true,
        status = false,
        short = &["cm"],
        cat = &[],
        core::v1::ConfigMap
    ),
    resource!(
        "",
        "v1",
        "Event",
        "events",
        "event",
        ns = true,
        status = false,
        short = &["ev"],
        cat = &[],
        core::v1::Event
    ),
    resource!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        ns = true,
        status = false,
        short = &[],
        cat = &[],
        discovery::v1::EndpointSlice
    ),
    resource!(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        "ingress",
        ns = true,
        status = true,
        short = &["ing"],
        cat = &[],
        networking::v1::Ingress
    ),
    resource!(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        ns = false,
        status = false,
        short = &[],
        cat = &[],
        networking::v1::IngressClass
    ),
    resource!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        ns = true,
        status = false,
        short = &[],
        cat = &[],
        coordination::v1::Lease
    ),
    resource!(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        "event",
        ns = true,
        status = false,
        short = &["ev"],
        cat = &[],
        events::v1::Event
    ),
    // Stored only (nothing runs them), so that `kubectl apply -k deploy/` is accepted whole.
    resource!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        ns = true,
        status = false,
        short = &["sa"],
        cat = &[],
        core::v1::ServiceAccount
    ),
    resource!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        ns = true,
        status = true,
        short = &["sts"],
        cat = &["all"],
        apps::v1::StatefulSet
    ),
    resource!(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        ns = true,
        status = false,
        short = &["netpol"],
        cat = &[],
        networking::v1::NetworkPolicy
    ),
    resource!(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        ns = true,
        status = true,
        short = &["pdb"],
        cat = &[],
        policy::v1::PodDisruptionBudget
    ),
    resource!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        ns = false,
        status = false,
        short = &[],
        cat = &[],
        rbac::v1::ClusterRole
    ),
    resource!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        ns = false,
        status = false,
        short = &[],
        cat = &[],
        rbac::v1::ClusterRoleBinding
    ),
    resource!(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        ns = true,
        status = false,
        short = &[],
        cat = &[],
        rbac::v1::Role
    ),
    resource!(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        ns = true,
        status = false,
        short = &[],
        cat = &[],
        rbac::v1::RoleBinding
    ),
];

/// Index of a resource in [`RESOURCES`]; cheap to copy and hash.
pub type ResourceId = usize;

pub fn get(id: ResourceId) -> &'static ResourceInfo {
    &RESOURCES[id]
}

/// Looks a resource up by its URL coordinates.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<ResourceId> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Looks a resource up by `apiVersion` and `kind`.
pub fn lookup_kind(api_version: &str, kind: &str) -> Option<ResourceId> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

/// The group versions served, in discovery order (core `v1` first).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The id of the namespaces resource (used for existence checks).
pub fn namespaces() -> ResourceId {
    lookup("", "v1", "namespaces").expect("namespaces are registered")
}
