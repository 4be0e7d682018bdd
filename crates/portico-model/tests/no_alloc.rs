//! The request hot path does not allocate: lookup, backend and certificate selection.
//! (Allocation is counted, not timed: a fact, not a performance target.)

mod support;

use portico_model::*;
use support::*;

fn allocations_during(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

#[test]
fn lookup_does_not_allocate() {
    let mut resources = vec![
        our_class(),
        tls_secret("cert", &["shop.example", "*.wild.example"]),
    ];
    resources.extend(service_with_endpoints("web", 3));
    resources.push(
        ingress("shop", 1)
            .tls(&["shop.example"], Some("cert"))
            .rule(
                Some("shop.example"),
                vec![path("Prefix", "/cart", "web"), path("Exact", "/", "web")],
            )
            .rule(Some("*.wild.example"), vec![path("Prefix", "/", "web")])
            .build(),
    );
    resources.push(
        ingress("regex", 2)
            .nginx("use-regex", "true")
            .rule(
                Some("regex.example"),
                vec![path("ImplementationSpecific", "/v[0-9]+/.*", "web")],
            )
            .build(),
    );
    let table = RoutingTable::compile(settings(), resources);
    let requests = [
        ("Shop.Example:443", "/cart/items/42"),
        ("shop.example.", "/"),
        ("a.wild.example", "/deep/path/"),
        ("regex.example", "/v2/users"),
        ("unknown.example", "/nothing"),
    ];
    assert_eq!(
        allocations_during(|| drop(std::hint::black_box(vec![1u8]))),
        1,
        "the counter counts"
    );
    // Warm up lazily initialised state (the regex engine's caches).
    for (host, path) in requests {
        let _ = table.lookup(host, path);
    }
    let n = allocations_during(|| {
        for (host, path) in requests {
            if let Some(route) = table.lookup(host, path) {
                let backend = table.backend(&route.backend).expect("resolved");
                std::hint::black_box(backend.next_endpoint());
            }
            std::hint::black_box(table.certificate_for(Some(host)));
        }
    });
    assert_eq!(n, 0, "the hot path allocated {n} times");
}
