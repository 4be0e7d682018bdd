//! Property tests: the matcher's laws, lookup against a literal reading of the Ingress spec,
//! and incremental changes against a rebuild from the snapshot.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use portico_model::*;
use proptest::prelude::*;
use support::*;

fn segment() -> impl Strategy<Value = String> {
    "[a-c]{1,3}"
}

fn request_path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..4), any::<bool>()).prop_map(|(segs, slash)| {
        let mut p = format!("/{}", segs.join("/"));
        if slash && p.len() > 1 {
            p.push('/');
        }
        p
    })
}

fn rule_path() -> impl Strategy<Value = (String, String)> {
    (prop_oneof!["Exact", "Prefix"], request_path()).prop_map(|(t, p)| (t.to_owned(), p))
}

fn one_route_table(path_type: &str, rule: &str) -> RoutingTable {
    RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            ingress("law", 1)
                .rule(Some("h"), vec![path(path_type, rule, "svc")])
                .build(),
        ],
    )
}

/// The spec read literally: split on `/`, compare element lists.
fn spec_matches(path_type: &str, rule: &str, request: &str) -> bool {
    let elements = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match path_type {
        "Exact" => rule == request,
        _ => {
            let (r, q) = (elements(rule), elements(request));
            q.len() >= r.len() && q[..r.len()] == r[..]
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prefix_matches_whole_elements_only(a in segment(), rest in "[a-z/]{0,8}", tail in "[a-z]{1,4}") {
        let table = one_route_table("Prefix", &format!("/{a}"));
        let below = format!("/{a}/{rest}");
        prop_assert!(table.lookup("h", &below).is_some(), "/{} must match {}", a, below);
        let longer = format!("/{a}{tail}");
        prop_assert!(table.lookup("h", &longer).is_none(), "/{} must not match {}", a, longer);
    }

    #[test]
    fn exact_never_matches_a_longer_path(rule in request_path(), extra in "[a-z/]{1,6}") {
        let table = one_route_table("Exact", &rule);
        prop_assert!(table.lookup("h", &rule).is_some());
        let longer = format!("{rule}{extra}");
        prop_assert!(table.lookup("h", &longer).is_none());
    }

    /// Lookup picks what the spec's rules pick: of the matching paths, the longest (trailing
    /// slash stripped), then Exact over Prefix, then the oldest Ingress.
    #[test]
    fn lookup_agrees_with_a_literal_reading_of_the_spec(
        rules in prop::collection::vec(rule_path(), 1..8),
        requests in prop::collection::vec(request_path(), 1..8),
    ) {
        // One Ingress per rule, older first, each with its own Service.
        let mut resources = vec![our_class()];
        for (i, (t, p)) in rules.iter().enumerate() {
            resources.push(
                ingress(&format!("ing-{i:02}"), i as i64)
                    .rule(Some("h"), vec![path(t, p, &format!("svc-{i:02}"))])
                    .build(),
            );
        }
        let table = RoutingTable::compile(settings(), resources);
        for request in &requests {
            let expected = rules
                .iter()
                .enumerate()
                .filter(|(_, (t, p))| spec_matches(t, p, request))
                .min_by_key(|(i, (t, p))| {
                    let len = p.strip_suffix('/').unwrap_or(p).len();
                    (std::cmp::Reverse(len), t != "Exact", *i)
                })
                .map(|(i, _)| format!("svc-{i:02}"));
            prop_assert_eq!(service_for(&table, "h", request), expected, "request {}", request);
        }
    }
}

// ---- incremental changes ----

/// Everything observable about a table, in a canonical text form.
fn fingerprint(table: &RoutingTable) -> String {
    let mut out = String::new();
    for route in table.routes() {
        let backend = table
            .backend(&route.backend)
            .map(|b| format!("{:?}", b.target));
        out.push_str(&format!(
            "route {} {:?} {} -> {} redirect={} {:?}\n",
            route.ingress, route.host, route.path, route.backend, route.redirect_to_https, backend
        ));
    }
    for host in ["h0.test", "h1.test", "x.h2.test", "other.test"] {
        for path in ["/", "/a", "/a/b", "/b"] {
            let route = table
                .lookup(host, path)
                .map(|r| (r.ingress.to_string(), r.path.to_string()));
            out.push_str(&format!("lookup {host}{path} {route:?}\n"));
        }
        let cert = table
            .certificate_for(Some(host))
            .map(|c| c.secret.to_string());
        out.push_str(&format!("cert {host} {cert:?}\n"));
    }
    for (key, verdict) in table.ingresses() {
        out.push_str(&format!(
            "ingress {key} {verdict:?} {:?}\n",
            table.problems(key, 0)
        ));
    }
    out
}

#[derive(Clone, Debug)]
enum Step {
    Ingress {
        id: u8,
        created: i64,
        host: u8,
        paths: Vec<(bool, u8, u8)>,
        tls: bool,
        default: bool,
        bad: bool,
    },
    DeleteIngress(u8),
    Service {
        id: u8,
        port: i32,
    },
    DeleteService(u8),
    Slice {
        id: u8,
        service: u8,
        ready: Vec<bool>,
    },
    DeleteSlice(u8),
    Secret {
        id: u8,
        good: bool,
    },
    DeleteSecret(u8),
    Class {
        default: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..4u8, 0..5i64, 0..5u8, prop::collection::vec((any::<bool>(), 0..3u8, 0..3u8), 0..4), any::<bool>(), any::<bool>(), prop::bool::weighted(0.15))
            .prop_map(|(id, created, host, paths, tls, default, bad)| Step::Ingress { id, created, host, paths, tls, default, bad }),
        1 => (0..4u8).prop_map(Step::DeleteIngress),
        2 => (0..3u8, prop_oneof![Just(80), Just(81)]).prop_map(|(id, port)| Step::Service { id, port }),
        1 => (0..3u8).prop_map(Step::DeleteService),
        3 => (0..4u8, 0..3u8, prop::collection::vec(any::<bool>(), 0..4)).prop_map(|(id, service, ready)| Step::Slice { id, service, ready }),
        1 => (0..4u8).prop_map(Step::DeleteSlice),
        2 => (0..4u8, any::<bool>()).prop_map(|(id, good)| Step::Secret { id, good }),
        1 => (0..4u8).prop_map(Step::DeleteSecret),
        1 => any::<bool>().prop_map(|default| Step::Class { default }),
    ]
}

/// Certificates are slow to make: two per secret id, made once.
fn certs() -> &'static [(String, String); 2] {
    static CERTS: std::sync::OnceLock<[(String, String); 2]> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| {
        [
            self_signed(&["h0.test", "*.h2.test"]),
            self_signed(&["h1.test"]),
        ]
    })
}

/// Objects with ids 0 and 1 are in one namespace, 2 and 3 in another (a second tenant), so
/// that host ownership and certificates across namespaces change incrementally too.
fn namespace_of(id: u8) -> &'static str {
    if id < 2 { NS } else { "tenant" }
}

fn to_change(step: &Step) -> Change {
    let hosts = ["h0.test", "h1.test", "*.h2.test", "x.h2.test", ""];
    let paths = ["/", "/a", "/a/b"];
    match step {
        Step::Ingress {
            id,
            created,
            host,
            paths: ps,
            tls,
            default,
            bad,
        } => {
            let host = hosts[*host as usize];
            let mut ing = ingress(&format!("ing-{id}"), *created)
                .namespace(namespace_of(*id))
                .class(None);
            let rule_paths = ps
                .iter()
                .map(|(exact, p, svc)| {
                    path(
                        if *exact { "Exact" } else { "Prefix" },
                        paths[*p as usize],
                        &format!("svc-{svc}"),
                    )
                })
                .collect();
            ing = ing.rule((!host.is_empty()).then_some(host), rule_paths);
            if *tls && !host.is_empty() {
                ing = ing.tls(&[host], Some(&format!("secret-{}", id % 2)));
            }
            if *default {
                ing = ing.default_backend("svc-0");
            }
            if *bad {
                ing = ing.nginx("proxy-body-size", "huge");
            }
            Change::Upsert(ing.build())
        }
        Step::DeleteIngress(id) => Change::Delete {
            kind: ResourceKind::Ingress,
            key: ObjectKey::new(namespace_of(*id), format!("ing-{id}")),
        },
        Step::Service { id, port } => {
            let mut objects = service_with_endpoints(&format!("svc-{id}"), 0);
            if let Resource::Service(s) = &mut objects[0] {
                Arc::make_mut(s).ports[0].port = *port;
            }
            Change::Upsert(objects.remove(0))
        }
        Step::DeleteService(id) => Change::Delete {
            kind: ResourceKind::Service,
            key: key(&format!("svc-{id}")),
        },
        Step::Slice { id, service, ready } => {
            let mut slice = endpoint_slice(
                NS,
                &format!("slice-{id}"),
                &format!("svc-{service}"),
                8080,
                ready.len(),
                |i| format!("10.0.{id}.{i}"),
            );
            if let Resource::EndpointSlice(s) = &mut slice {
                for (e, r) in Arc::make_mut(s).endpoints.iter_mut().zip(ready) {
                    e.ready = Some(*r);
                    e.serving = Some(*r);
                }
            }
            Change::Upsert(slice)
        }
        Step::DeleteSlice(id) => Change::Delete {
            kind: ResourceKind::EndpointSlice,
            key: key(&format!("slice-{id}")),
        },
        Step::Secret { id, good } => {
            let (crt, k) = &certs()[(*id % 2) as usize];
            let key_bytes = if *good {
                k.clone().into_bytes()
            } else {
                b"broken".to_vec()
            };
            Change::Upsert(Resource::Secret(Arc::new(SecretSource {
                key: ObjectKey::new(namespace_of(*id), format!("secret-{}", id % 2)),
                type_: Some(SECRET_TYPE_TLS.to_owned()),
                tls_crt: Some(crt.clone().into_bytes()),
                tls_key: Some(key_bytes),
                oversize: None,
            })))
        }
        Step::DeleteSecret(id) => Change::Delete {
            kind: ResourceKind::Secret,
            key: ObjectKey::new(namespace_of(*id), format!("secret-{}", id % 2)),
        },
        Step::Class { default } => Change::Upsert(class(CLASS, CONTROLLER_NAME, *default)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever order changes come in, the incrementally maintained table equals a table
    /// rebuilt from its snapshot, and changes survive their encoding for the Raft log.
    #[test]
    fn incremental_changes_equal_a_rebuild(steps in prop::collection::vec(step(), 1..40)) {
        let mut table = RoutingTable::compile(settings(), vec![class(CLASS, CONTROLLER_NAME, true)]);
        for (i, step) in steps.iter().enumerate() {
            let change = to_change(step);
            let decoded = Change::from_bytes(&change.to_bytes()).unwrap();
            prop_assert_eq!(&decoded, &change);
            table.apply(i as u64 + 1, &decoded);
        }
        let restored = RoutingTable::from_bytes(&table.to_bytes()).unwrap();
        prop_assert_eq!(restored.version(), table.version());
        // The same changes as one batch give the same table.
        let mut batched = RoutingTable::compile(settings(), vec![class(CLASS, CONTROLLER_NAME, true)]);
        batched.apply(table.version(), &Change::Batch(steps.iter().map(to_change).collect()));
        prop_assert_eq!(fingerprint(&batched), fingerprint(&table));
        prop_assert_eq!(fingerprint(&restored), fingerprint(&table));
        prop_assert_eq!(restored.to_bytes(), table.to_bytes());
    }
}

#[test]
fn a_resync_equals_the_same_objects_applied_one_by_one() {
    let mut resources = vec![our_class()];
    resources.extend(service_with_endpoints("svc-0", 3));
    resources.push(
        ingress("a", 1)
            .rule(Some("h0.test"), vec![path("Prefix", "/a", "svc-0")])
            .build(),
    );
    resources.push(
        ingress("b", 2)
            .rule(None, vec![path("Exact", "/", "svc-0")])
            .build(),
    );
    let compiled = RoutingTable::compile(settings(), resources.clone());
    let mut stepwise = RoutingTable::default();
    for (i, r) in resources.into_iter().rev().enumerate() {
        stepwise.apply(i as u64, &Change::Upsert(r));
    }
    assert_eq!(fingerprint(&compiled), fingerprint(&stepwise));
}

#[test]
fn round_robin_carries_on_across_unrelated_changes() {
    let mut resources = vec![our_class()];
    resources.extend(service_with_endpoints("web", 3));
    resources.push(
        ingress("a", 1)
            .rule(Some("h"), vec![path("Prefix", "/", "web")])
            .build(),
    );
    let mut table = RoutingTable::compile(settings(), resources);
    let next = |t: &RoutingTable| {
        let route = t.lookup("h", "/").unwrap();
        t.backend(&route.backend)
            .unwrap()
            .next_endpoint()
            .unwrap()
            .addr
    };
    let first = next(&table);
    table.apply(
        1,
        &Change::Upsert(
            ingress("b", 2)
                .rule(Some("other"), vec![path("Prefix", "/", "x")])
                .build(),
        ),
    );
    let second = next(&table);
    assert_ne!(
        first, second,
        "the cursor is shared by versions whose backend did not change"
    );
    let _ = BTreeMap::<u8, u8>::new();
}
