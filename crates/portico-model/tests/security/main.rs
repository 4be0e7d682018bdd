//! Attacks by one tenant on another, against the pure routing model: each test shows the
//! attack and that it no longer gets through. One module per finding of
//! `../shared/reviews/security.md` (issue 14).

#[path = "../support/mod.rs"]
mod support;

mod c2_secret_limits;
mod h2_external_name;
mod h3_catch_all;
mod h3_certificate_takeover;
mod h3_host_ownership;
mod h3_regex_precedence;
mod m4_regex_limits;

use std::sync::Arc;

use portico_model::*;

/// A self-signed certificate for `names` as a TLS Secret in `namespace`.
pub fn tls_secret_in(namespace: &str, name: &str, names: &[&str]) -> Resource {
    let (crt, key) = support::self_signed(names);
    Resource::Secret(Arc::new(SecretSource {
        key: ObjectKey::new(namespace, name),
        type_: Some(SECRET_TYPE_TLS.to_owned()),
        tls_crt: Some(crt.into_bytes()),
        tls_key: Some(key.into_bytes()),
        oversize: None,
    }))
}

/// The table rebuilt from its snapshot: what a replica restoring it serves. Tests check the
/// incremental result and the rebuilt one alike.
pub fn restored(table: &RoutingTable) -> RoutingTable {
    RoutingTable::from_bytes(&table.to_bytes()).expect("snapshot decodes")
}

/// The Secret (namespace/name) whose certificate is served for an SNI name.
pub fn cert_secret(table: &RoutingTable, sni: &str) -> Option<String> {
    table
        .certificate_for(Some(sni))
        .map(|c| c.secret.to_string())
}

/// The reasons of an Ingress's problems.
pub fn reasons(table: &RoutingTable, key: &ObjectKey) -> Vec<ProblemReason> {
    table
        .problems(key, 0)
        .into_iter()
        .map(|p| p.reason)
        .collect()
}
