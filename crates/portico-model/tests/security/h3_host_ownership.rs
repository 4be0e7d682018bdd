//! H3 (host takeover): tenant B adds rules for a host that tenant A's older Ingress already
//! serves (or that A's older wildcard covers), to receive A's traffic. What must hold: a host
//! belongs to the namespace of its oldest Ingress; other namespaces' rules for it are refused
//! with `HostOwnedByAnotherNamespace`, unless the settings allow cross-namespace merging.

use portico_model::*;

use crate::support::*;
use crate::{reasons, restored};

fn tenants() -> Vec<Resource> {
    let mut resources = vec![
        our_class(),
        ingress("shop", 1)
            .namespace("tenant-a")
            .rule(Some("shop.example.com"), vec![path("Prefix", "/", "shop")])
            .build(),
        ingress("grab", 5)
            .namespace("tenant-b")
            .rule(
                Some("shop.example.com"),
                vec![
                    path("Prefix", "/checkout", "thief"),
                    path("Exact", "/login", "thief"),
                ],
            )
            .rule(Some("b.example.com"), vec![path("Prefix", "/", "thief")])
            .build(),
    ];
    resources.extend(service_in("tenant-a", "shop", 1));
    resources.extend(service_in("tenant-b", "thief", 1));
    resources
}

#[test]
fn another_namespace_cannot_add_rules_to_an_owned_host() {
    let table = RoutingTable::compile(settings(), tenants());
    for table in [&table, &restored(&table)] {
        for path in ["/checkout", "/checkout/pay", "/login", "/"] {
            assert_eq!(
                service_for(table, "shop.example.com", path).as_deref(),
                Some("shop"),
                "{path} stays with the owner"
            );
        }
        // B's own host still works: only the rules for A's host are refused.
        assert_eq!(
            service_for(table, "b.example.com", "/").as_deref(),
            Some("thief")
        );
        let problems = table.problems(&ObjectKey::new("tenant-b", "grab"), 0);
        let refused: Vec<_> = problems
            .iter()
            .filter(|p| p.reason == ProblemReason::HostOwnedByAnotherNamespace)
            .collect();
        assert_eq!(refused.len(), 2, "{problems:?}");
        assert_eq!(refused[0].field, "spec.rules[0].http.paths[0]");
        assert!(
            !refused[0].message.contains("tenant-a"),
            "the owner is not disclosed: {}",
            refused[0].message
        );
        assert!(reasons(table, &ObjectKey::new("tenant-a", "shop")).is_empty());
    }
}

#[test]
fn an_older_wildcard_owns_the_names_under_it() {
    let mut resources = vec![
        our_class(),
        ingress("wild", 1)
            .namespace("tenant-a")
            .rule(Some("*.example.com"), vec![path("Prefix", "/", "shop")])
            .build(),
        ingress("exact", 5)
            .namespace("tenant-b")
            .rule(Some("pay.example.com"), vec![path("Prefix", "/", "thief")])
            .build(),
    ];
    resources.extend(service_in("tenant-a", "shop", 1));
    resources.extend(service_in("tenant-b", "thief", 1));
    let table = RoutingTable::compile(settings(), resources);
    for table in [&table, &restored(&table)] {
        assert_eq!(
            service_for(table, "pay.example.com", "/").as_deref(),
            Some("shop")
        );
        assert_eq!(
            reasons(table, &ObjectKey::new("tenant-b", "exact")),
            [ProblemReason::HostOwnedByAnotherNamespace]
        );
    }
}

#[test]
fn ownership_follows_the_oldest_ingress_incrementally() {
    let mut table = RoutingTable::compile(settings(), tenants());
    // The owner's Ingress goes: B's rules, refused until now, take the host.
    table.apply(
        1,
        &Change::Delete {
            kind: ResourceKind::Ingress,
            key: ObjectKey::new("tenant-a", "shop"),
        },
    );
    for table in [&table, &restored(&table)] {
        assert_eq!(
            service_for(table, "shop.example.com", "/checkout").as_deref(),
            Some("thief")
        );
        assert!(reasons(table, &ObjectKey::new("tenant-b", "grab")).is_empty());
    }
    // A's Ingress comes back, newer than B's now: B owns the host.
    let again = ingress("shop", 9)
        .namespace("tenant-a")
        .rule(Some("shop.example.com"), vec![path("Prefix", "/", "shop")])
        .build();
    table.apply(2, &Change::Upsert(again));
    assert_eq!(
        service_for(&table, "shop.example.com", "/").as_deref(),
        None,
        "B has no rule for / and A's is refused"
    );
    assert_eq!(
        reasons(&table, &ObjectKey::new("tenant-a", "shop")),
        [ProblemReason::HostOwnedByAnotherNamespace]
    );
}

#[test]
fn the_same_namespace_still_merges_rules_for_a_host() {
    let mut resources = tenants();
    resources.push(
        ingress("shop-api", 7)
            .namespace("tenant-a")
            .rule(
                Some("shop.example.com"),
                vec![path("Prefix", "/api", "shop")],
            )
            .build(),
    );
    let table = RoutingTable::compile(settings(), resources);
    let route = table.lookup("shop.example.com", "/api/x").unwrap();
    assert_eq!(route.ingress, ObjectKey::new("tenant-a", "shop-api"));
}

#[test]
fn cross_namespace_merging_is_an_explicit_setting() {
    let merge = Settings {
        allow_cross_namespace_hosts: true,
        ..settings()
    };
    let table = RoutingTable::compile(merge, tenants());
    assert_eq!(
        service_for(&table, "shop.example.com", "/checkout").as_deref(),
        Some("thief"),
        "the Ingress spec's merge semantics, when asked for"
    );
    assert!(reasons(&table, &ObjectKey::new("tenant-b", "grab")).is_empty());
}

#[test]
fn wildcards_over_a_top_level_domain_are_refused() {
    let mut resources = vec![
        our_class(),
        ingress("tld", 1)
            .namespace("tenant-b")
            .rule(Some("*.com"), vec![path("Prefix", "/", "thief")])
            .build(),
        ingress("tls-tld", 1)
            .namespace("tenant-b")
            .rule(Some("b.example.com"), vec![path("Prefix", "/", "thief")])
            .tls(&["*.com"], Some("cert"))
            .build(),
    ];
    resources.extend(service_in("tenant-b", "thief", 1));
    let table = RoutingTable::compile(settings(), resources);
    assert_eq!(service_for(&table, "anything.com", "/"), None);
    for name in ["tld", "tls-tld"] {
        let key = ObjectKey::new("tenant-b", name);
        assert_eq!(table.ingress_verdict(&key), Some(IngressVerdict::Rejected));
        assert_eq!(reasons(&table, &key), [ProblemReason::WildcardTooBroad]);
    }
}

#[test]
fn rules_without_host_belong_to_one_namespace_too() {
    let mut resources = vec![
        our_class(),
        ingress("any", 1)
            .namespace("tenant-a")
            .rule(None, vec![path("Prefix", "/", "shop")])
            .build(),
        ingress("any", 5)
            .namespace("tenant-b")
            .rule(None, vec![path("Prefix", "/admin", "thief")])
            .build(),
    ];
    resources.extend(service_in("tenant-a", "shop", 1));
    resources.extend(service_in("tenant-b", "thief", 1));
    let table = RoutingTable::compile(settings(), resources);
    assert_eq!(
        service_for(&table, "anything.example", "/admin").as_deref(),
        Some("shop")
    );
    assert_eq!(
        reasons(&table, &ObjectKey::new("tenant-b", "any")),
        [ProblemReason::HostOwnedByAnotherNamespace]
    );
}
