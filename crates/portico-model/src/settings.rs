//! The controller's settings that change what the routing table contains.

use serde::{Deserialize, Serialize};

use crate::key::ObjectKey;

/// The `spec.controller` value of the IngressClasses that are Portico's.
pub const CONTROLLER_NAME: &str = "portico.dev/ingress-controller";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Our IngressClasses are those whose `spec.controller` equals this.
    pub controller_name: String,
    /// Take Ingresses that name no class even when none of our classes is the default.
    pub watch_ingress_without_class: bool,
    /// A `kubernetes.io/tls` Secret served when SNI matches no certificate of an Ingress.
    pub default_certificate: Option<ObjectKey>,
    /// Let Ingresses of any namespace add rules to a host, as the Ingress spec's merge
    /// semantics (and ingress-nginx) do. Off: a host belongs to the namespace of its oldest
    /// Ingress, and other namespaces' rules for it are refused (`HostOwnedByAnotherNamespace`).
    pub allow_cross_namespace_hosts: bool,
    /// Route to `ExternalName` Services. Off: such a route answers 503 and is reported
    /// (`ExternalNameNotAllowed`), since the name may point anywhere the proxy can reach
    /// (CVE-2021-32783 in Contour).
    pub allow_external_name_services: bool,
    /// Let the oldest `spec.defaultBackend` of any namespace answer requests whose host no
    /// rule claims (the Ingress spec's catch-all). Off: a default backend answers only for
    /// hosts its namespace owns.
    pub allow_catch_all: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            controller_name: CONTROLLER_NAME.to_owned(),
            watch_ingress_without_class: false,
            default_certificate: None,
            allow_cross_namespace_hosts: false,
            allow_external_name_services: false,
            allow_catch_all: false,
        }
    }
}
