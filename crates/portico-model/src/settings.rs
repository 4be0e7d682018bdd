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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            controller_name: CONTROLLER_NAME.to_owned(),
            watch_ingress_without_class: false,
            default_certificate: None,
        }
    }
}
