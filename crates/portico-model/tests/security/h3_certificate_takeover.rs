//! H3 (certificate takeover): tenant B references a Secret whose SAN covers tenant A's host,
//! hoping to have it served for A's name (a TLS outage, or interception with a trusted
//! certificate), or lists A's host in its own `tls.hosts`. What must hold: the certificate
//! for a name comes only from a Secret of an Ingress that lists that name in `tls.hosts`, in
//! the namespace that owns the host; a SAN alone claims nothing.

use portico_model::*;

use crate::support::*;
use crate::{cert_secret, restored, tls_secret_in};

fn tenant_a() -> Vec<Resource> {
    let mut resources = vec![
        our_class(),
        ingress("shop", 1)
            .namespace("tenant-a")
            .rule(Some("shop.example.com"), vec![path("Prefix", "/", "shop")])
            .rule(Some("*.example.com"), vec![path("Prefix", "/", "shop")])
            .tls(&["shop.example.com", "*.example.com"], Some("shop-tls"))
            .build(),
        tls_secret_in(
            "tenant-a",
            "shop-tls",
            &["shop.example.com", "*.example.com"],
        ),
    ];
    resources.extend(service_in("tenant-a", "shop", 1));
    resources
}

#[test]
fn a_san_covering_another_tenants_host_changes_nothing() {
    let mut resources = tenant_a();
    // B is even older than A, and its certificate names A's hosts exactly.
    resources.push(
        ingress("mine", 0)
            .namespace("tenant-b")
            .rule(Some("b.example.org"), vec![path("Prefix", "/", "b")])
            .tls(&["b.example.org"], Some("evil"))
            .build(),
    );
    resources.push(tls_secret_in(
        "tenant-b",
        "evil",
        &["b.example.org", "shop.example.com", "pay.example.com"],
    ));
    resources.extend(service_in("tenant-b", "b", 1));
    let table = RoutingTable::compile(settings(), resources);
    for table in [&table, &restored(&table)] {
        assert_eq!(
            cert_secret(table, "shop.example.com").as_deref(),
            Some("tenant-a/shop-tls")
        );
        // A name under A's wildcard: A's wildcard certificate, not B's exact SAN.
        assert_eq!(
            cert_secret(table, "pay.example.com").as_deref(),
            Some("tenant-a/shop-tls")
        );
        assert_eq!(
            cert_secret(table, "b.example.org").as_deref(),
            Some("tenant-b/evil")
        );
    }
}

#[test]
fn listing_another_tenants_host_in_tls_hosts_changes_nothing() {
    let mut resources = tenant_a();
    resources.push(
        ingress("list", 5)
            .namespace("tenant-b")
            .rule(Some("shop.example.com"), vec![path("Prefix", "/x", "b")])
            .tls(&["shop.example.com", "www.shop.example.com"], Some("evil"))
            .build(),
    );
    resources.push(tls_secret_in(
        "tenant-b",
        "evil",
        &["shop.example.com", "www.shop.example.com"],
    ));
    resources.extend(service_in("tenant-b", "b", 1));
    let table = RoutingTable::compile(settings(), resources);
    assert_eq!(
        cert_secret(&table, "shop.example.com").as_deref(),
        Some("tenant-a/shop-tls")
    );
    // A name nobody routes: the oldest Ingress listing it may serve it (B's own, here).
    assert_eq!(
        cert_secret(&table, "www.shop.example.com").as_deref(),
        Some("tenant-b/evil")
    );
    // Not silently: B's Ingress is told that its tls.hosts entry for A's host is not served
    // (its Event), and only that entry.
    let problems = table.problems(&ObjectKey::new("tenant-b", "list"), 0);
    let tls: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.field.starts_with("spec.tls") && p.field.ends_with(".hosts"))
        .collect();
    assert_eq!(tls.len(), 1, "{problems:?}");
    assert_eq!(tls[0].reason, ProblemReason::HostOwnedByAnotherNamespace);
    assert_eq!(tls[0].field, "spec.tls[0].hosts");
    assert!(
        tls[0].message.contains("shop.example.com"),
        "{}",
        tls[0].message
    );
}

#[test]
fn listing_a_host_in_tls_hosts_does_not_turn_on_its_redirect() {
    // A serves plain HTTP only; B lists A's host in tls.hosts to force 308s on A's routes.
    let mut resources = vec![
        our_class(),
        ingress("plain", 1)
            .namespace("tenant-a")
            .rule(Some("plain.example.com"), vec![path("Prefix", "/", "web")])
            .build(),
        ingress("tls", 5)
            .namespace("tenant-b")
            .rule(Some("b.example.com"), vec![path("Prefix", "/", "b")])
            .tls(&["plain.example.com", "b.example.com"], Some("b-tls"))
            .build(),
        tls_secret_in("tenant-b", "b-tls", &["plain.example.com", "b.example.com"]),
    ];
    resources.extend(service_in("tenant-a", "web", 1));
    resources.extend(service_in("tenant-b", "b", 1));
    let table = RoutingTable::compile(settings(), resources);
    let route = table.lookup("plain.example.com", "/").unwrap();
    assert!(!route.redirect_to_https, "A's plain-HTTP routes stay plain");
    assert!(
        table
            .lookup("b.example.com", "/")
            .unwrap()
            .redirect_to_https
    );
    assert_eq!(cert_secret(&table, "plain.example.com"), None);
}

#[test]
fn the_certificate_follows_ownership_incrementally() {
    let mut resources = tenant_a();
    resources.push(
        ingress("later", 5)
            .namespace("tenant-b")
            .rule(Some("shop.example.com"), vec![path("Prefix", "/", "b")])
            .tls(&["shop.example.com"], Some("b-tls"))
            .build(),
    );
    resources.push(tls_secret_in("tenant-b", "b-tls", &["shop.example.com"]));
    let mut table = RoutingTable::compile(settings(), resources);
    assert_eq!(
        cert_secret(&table, "shop.example.com").as_deref(),
        Some("tenant-a/shop-tls")
    );
    table.apply(
        1,
        &Change::Delete {
            kind: ResourceKind::Ingress,
            key: ObjectKey::new("tenant-a", "shop"),
        },
    );
    for table in [&table, &restored(&table)] {
        assert_eq!(
            cert_secret(table, "shop.example.com").as_deref(),
            Some("tenant-b/b-tls"),
            "B owns the host once A's Ingress is gone"
        );
    }
}

#[test]
fn a_name_listed_without_rules_follows_the_wildcard_owner_incrementally() {
    // B lists pay.example.com in tls.hosts (no rule for it); A's wildcard then claims it.
    let mut resources = vec![
        our_class(),
        ingress("list", 1)
            .namespace("tenant-b")
            .rule(Some("b.example.org"), vec![path("Prefix", "/", "b")])
            .tls(&["pay.example.com"], Some("evil"))
            .build(),
        tls_secret_in("tenant-b", "evil", &["pay.example.com"]),
    ];
    resources.extend(service_in("tenant-b", "b", 1));
    let mut table = RoutingTable::compile(settings(), resources);
    assert_eq!(
        cert_secret(&table, "pay.example.com").as_deref(),
        Some("tenant-b/evil"),
        "nobody routes the name yet"
    );
    table.apply(
        1,
        &Change::Upsert(
            ingress("wild", 0)
                .namespace("tenant-a")
                .rule(Some("*.example.com"), vec![path("Prefix", "/", "shop")])
                .build(),
        ),
    );
    for table in [&table, &restored(&table)] {
        assert_eq!(
            cert_secret(table, "pay.example.com"),
            None,
            "A's wildcard owns the name now; B's certificate is no longer served for it"
        );
    }
}
