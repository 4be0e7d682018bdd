//! H2 (SSRF through `ExternalName`): a tenant points an Ingress at an `ExternalName` Service
//! named `localhost` (Portico's admin port), `169.254.169.254` (cloud metadata) or the API
//! server. What must hold: `ExternalName` Services are not routed unless the settings allow
//! them (as Contour after CVE-2021-32783), and the route reports `ExternalNameNotAllowed`;
//! an IP-literal `externalName` is never routed, because the proxy's connect-time check of
//! resolved addresses applies to names. (The connect-time check itself is in
//! portico-proxy's `upstream` module.)

use std::sync::Arc;

use portico_model::*;

use crate::support::*;

fn external(name: &str) -> Vec<Resource> {
    vec![
        our_class(),
        ingress("ssrf", 1)
            .rule(Some("ssrf.example.com"), vec![path("Prefix", "/", "admin")])
            .build(),
        Resource::Service(Arc::new(ServiceSource {
            key: key("admin"),
            type_: Some("ExternalName".into()),
            external_name: Some(name.into()),
            ports: vec![],
        })),
    ]
}

fn target(table: &RoutingTable) -> BackendTarget {
    let route = table.lookup("ssrf.example.com", "/").expect("routed");
    table
        .backend(&route.backend)
        .expect("resolved")
        .target
        .clone()
}

#[test]
fn external_name_to_localhost_is_refused_by_default() {
    let table = RoutingTable::compile(settings(), external("localhost"));
    assert_eq!(
        target(&table),
        BackendTarget::Unavailable(Unavailable::ExternalNameNotAllowed),
        "answers 503, never connects"
    );
    let problems = table.problems(&key("ssrf"), 0);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, ProblemReason::ExternalNameNotAllowed);
    assert_eq!(
        problems[0].field,
        "spec.rules[0].http.paths[0].backend.service"
    );
    assert!(
        problems[0]
            .message
            .contains("--allow-external-name-services")
    );
}

#[test]
fn an_ip_literal_external_name_is_refused_even_when_allowed() {
    let allowed = Settings {
        allow_external_name_services: true,
        ..settings()
    };
    for name in ["169.254.169.254", "127.0.0.1", "::1", "[::1]", "127.0.0.1."] {
        let table = RoutingTable::compile(allowed.clone(), external(name));
        assert_eq!(
            target(&table),
            BackendTarget::Unavailable(Unavailable::ExternalNameNotAllowed),
            "{name}"
        );
    }
    let table = RoutingTable::compile(allowed, external("api.partner.example"));
    assert!(matches!(target(&table), BackendTarget::ExternalName { .. }));
}
