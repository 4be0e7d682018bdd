//! H3 (cluster-wide catch-all): tenant B's old Ingress with `spec.defaultBackend` answers
//! every unmatched path on every host, including tenant A's. What must hold: a default
//! backend answers only for hosts its namespace owns; a host no rule names gets the
//! catch-all only when the settings allow one (ingress-nginx's `--disable-catch-all`,
//! inverted so that the default is safe).

use portico_model::*;

use crate::restored;
use crate::support::*;

fn resources() -> Vec<Resource> {
    let mut resources = vec![
        our_class(),
        ingress("catch", 0)
            .namespace("tenant-b")
            .default_backend("thief")
            .build(),
        ingress("shop", 1)
            .namespace("tenant-a")
            .rule(
                Some("shop.example.com"),
                vec![path("Prefix", "/app", "shop")],
            )
            .build(),
    ];
    resources.extend(service_in("tenant-a", "shop", 1));
    resources.extend(service_in("tenant-b", "thief", 1));
    resources
}

#[test]
fn another_namespaces_default_backend_never_answers_for_an_owned_host() {
    let table = RoutingTable::compile(settings(), resources());
    for table in [&table, &restored(&table)] {
        assert_eq!(service_for(table, "shop.example.com", "/admin"), None);
        assert_eq!(
            service_for(table, "shop.example.com", "/app/x").as_deref(),
            Some("shop")
        );
        // Nor for a host no rule names: there is no catch-all by default.
        assert_eq!(service_for(table, "unclaimed.example.com", "/"), None);
        // The tenant is told why its defaultBackend-only Ingress answers nothing.
        let problems = table.problems(&ObjectKey::new("tenant-b", "catch"), 0);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].reason, ProblemReason::CatchAllNotAllowed);
        assert!(problems[0].message.contains("--allow-catch-all"));
    }
}

#[test]
fn a_namespaces_own_default_backend_answers_for_its_hosts() {
    let mut resources = resources();
    resources.push(
        ingress("fallback", 9)
            .namespace("tenant-a")
            .default_backend("shop")
            .build(),
    );
    let mut table = RoutingTable::compile(settings(), resources);
    assert_eq!(
        service_for(&table, "shop.example.com", "/admin").as_deref(),
        Some("shop"),
        "A's own default, though B's is older"
    );
    table.apply(
        1,
        &Change::Delete {
            kind: ResourceKind::Ingress,
            key: ObjectKey::new("tenant-a", "fallback"),
        },
    );
    assert_eq!(service_for(&table, "shop.example.com", "/admin"), None);
}

#[test]
fn the_catch_all_is_an_explicit_setting() {
    let catch_all = Settings {
        allow_catch_all: true,
        ..settings()
    };
    let table = RoutingTable::compile(catch_all, resources());
    assert_eq!(
        service_for(&table, "unclaimed.example.com", "/").as_deref(),
        Some("thief")
    );
    assert!(
        table
            .problems(&ObjectKey::new("tenant-b", "catch"), 0)
            .is_empty()
    );
}

#[test]
fn even_the_allowed_catch_all_never_answers_for_an_owned_host() {
    let catch_all = Settings {
        allow_catch_all: true,
        ..settings()
    };
    let table = RoutingTable::compile(catch_all, resources());
    assert_eq!(service_for(&table, "shop.example.com", "/admin"), None);
}
