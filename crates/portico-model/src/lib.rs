//! Portico's routing model.
//!
//! Kubernetes objects go in (as [`Resource`]s, converted from k8s-openapi types at the edge);
//! one immutable [`RoutingTable`] comes out, with the problems found in each Ingress. The
//! table is changed by small [`Change`]s that travel through the Raft log, and is cheap to
//! clone, so each applied version can be handed whole to the data plane.
//!
//! Nothing here does I/O or depends on an async runtime.

mod annotations;
mod change;
pub mod convert;
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod host_routes;
mod key;
pub mod limits;
mod path;
mod plan;
mod problem;
mod referenced;
mod resolve;
mod route;
mod settings;
mod source;
mod table;
mod tls;
pub mod validate;

pub use annotations::{INGRESS_CLASS_ANNOTATION, NGINX_PREFIX, PORTICO_PREFIX};
pub use change::{Change, MAX_ENTRY_BYTES, chunks};
pub use key::ObjectKey;
pub use limits::Limits;
pub use plan::{
    MAX_REGEX_PATHS_PER_INGRESS, MAX_REGEX_PATHS_PER_NAMESPACE, MAX_REGEX_PATTERN_BYTES,
};
pub use problem::{Problem, ProblemReason};
pub use referenced::referenced_secrets;
pub use route::{
    Backend, BackendKey, BackendProtocol, BackendTarget, CookieAffinity, Endpoint, PathMatch,
    RewriteTarget, Route, RoutePolicy, ServicePortRef, Unavailable,
};
pub use settings::{CONTROLLER_NAME, Settings};
pub use source::*;
pub use table::{IngressVerdict, RoutingTable};
pub use tls::{CertificateError, MAX_TLS_SECRET_BYTES, SECRET_TYPE_TLS, TlsCertificate};

/// A table or change could not be decoded from bytes.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode routing data: {0}")]
pub struct DecodeError(#[source] postcard::Error);
