//! Path and host matching, table-driven from the Kubernetes documentation's examples, the
//! Gateway API path cases restated for Ingress, and the ingress-controller-conformance
//! scenarios (files in tests/data, see its README for their origin and licences).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use portico_model::*;
use portico_test_support::{ConformanceCase, Table, testdata};
use support::*;

/// `Prefix:/foo` → (pathType, path).
fn parse_rule(rule: &str) -> (&str, &str) {
    rule.split_once(':').expect("TYPE:PATH")
}

#[test]
fn kubernetes_docs_path_examples() {
    let Table { header, rows } = tsv("k8s-doc-path-examples.tsv");
    assert_eq!(
        header,
        [
            "row",
            "rules",
            "doc_request",
            "request",
            "doc_matches",
            "winner"
        ]
    );
    assert!(rows.len() >= 20, "every example row is read");
    for row in &rows {
        let (id, rules, request, winner) =
            (&row[0], &row[1], &row[3], row.get(5).map_or("", |s| s));
        // Each rule routes to its own Service, named after its position.
        let paths: Vec<HttpPathSource> = rules
            .split(';')
            .enumerate()
            .map(|(i, rule)| {
                let (path_type, p) = parse_rule(rule);
                path(path_type, p, &format!("rule-{i}"))
            })
            .collect();
        let expected = rules
            .split(';')
            .position(|r| r == winner)
            .map(|i| format!("rule-{i}"));

        for with_default in [false, true] {
            let mut ing = ingress("example", 1).rule(Some("example.com"), paths.clone());
            if with_default {
                ing = ing.default_backend("default-backend");
            }
            let table = RoutingTable::compile(settings(), vec![our_class(), ing.build()]);
            let got = service_for(&table, "example.com", request);
            let want = match (&expected, with_default) {
                (Some(service), _) => Some(service.clone()),
                (None, true) => Some("default-backend".to_owned()),
                (None, false) => None,
            };
            assert_eq!(
                got, want,
                "docs row {id}: rules {rules}, request {request}, default backend {with_default}"
            );
            if winner == "<defaultBackend>" {
                assert!(expected.is_none(), "row {id}: no rule wins");
            }
        }
    }
}

#[test]
fn kubernetes_docs_host_examples() {
    let rows = tsv("k8s-doc-host-examples.tsv").rows;
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let (rule_host, host_header, matches) = (&row[0], &row[1], &row[2] == "yes");
        let table = RoutingTable::compile(
            settings(),
            vec![
                our_class(),
                ingress("hosts", 1)
                    .rule(Some(rule_host), vec![path("Prefix", "/", "wildcard")])
                    .build(),
            ],
        );
        let got = service_for(&table, host_header, "/");
        assert_eq!(
            got.is_some(),
            matches,
            "rule {rule_host} vs Host {host_header}"
        );
    }
}

#[test]
fn gateway_api_path_cases() {
    // The header of this file is a comment line.
    let table = tsv("gateway-api-reusable-path-cases.tsv");
    assert_eq!(
        table.header,
        ["test", "rules", "request", "expected_winner"]
    );
    let rows = table.rows;
    assert_eq!(rows.len(), 19, "every case is read");
    let mut rules = String::new();
    for row in &rows {
        let (test, request, expected) = (&row[0], &row[2], &row[3]);
        if row[1] != "(same)" {
            rules = row[1].clone();
        }
        let paths = rules
            .split(';')
            .map(|rule| {
                let (matcher, service) = rule.split_once('=').expect("RULE=SERVICE");
                let (path_type, p) = parse_rule(matcher);
                path(path_type, p, service)
            })
            .collect();
        let table = RoutingTable::compile(
            settings(),
            vec![
                our_class(),
                ingress("gw", 1).rule(Some("gw.example"), paths).build(),
            ],
        );
        let want = (expected != "404").then(|| expected.clone());
        assert_eq!(
            service_for(&table, "gw.example", request),
            want,
            "{test}: rules {rules}, request {request}"
        );
    }
}

/// The conformance manifests as the harness applies them: each in a table of its own, with
/// the harness's IngressClass set where the manifest names none.
fn conformance_table(manifest: &str) -> RoutingTable {
    let text = std::fs::read_to_string(testdata(&format!("manifests/{manifest}"))).unwrap();
    let mut resources = vec![class("conformance", CONTROLLER_NAME, false)];
    let mut services = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        let Some(Resource::Ingress(ing)) = convert::resource_from_value(&value).unwrap() else {
            panic!("{manifest} holds Ingresses");
        };
        let mut ing = (*ing).clone();
        ing.ingress_class_name
            .get_or_insert_with(|| "conformance".to_owned());
        for b in ing
            .rules
            .iter()
            .flat_map(|r| r.http.iter().flatten().map(|p| &p.backend))
            .chain(ing.default_backend.as_ref())
        {
            services.insert(b.service.as_ref().unwrap().name.clone());
        }
        resources.push(Resource::Ingress(Arc::new(ing)));
    }
    for service in &services {
        // The harness scales the load-balancing backend to 10 Pods.
        let pods = if manifest == "load-balancing.yaml" {
            10
        } else {
            1
        };
        let mut objects = service_with_endpoints(service, pods);
        if let Resource::Service(svc) = &mut objects[0] {
            let svc = Arc::make_mut(svc);
            svc.ports[0].port = 8080;
        }
        resources.extend(objects);
    }
    resources.push(tls_secret("conformance-tls", &["foo.bar.com"]));
    // The default_backend feature (C01-C06) sends requests for hosts no rule names to an
    // Ingress that has only a defaultBackend: a catch-all, which Portico serves only when
    // allowed (`portico run --allow-catch-all`). No scenario merges hosts across namespaces.
    let settings = Settings {
        allow_catch_all: true,
        ..settings()
    };
    RoutingTable::compile(settings, resources)
}

#[test]
fn ingress_controller_conformance_cases() {
    let cases = ConformanceCase::all();
    assert_eq!(cases.len(), 30, "every scenario is checked");
    let mut tables: BTreeMap<String, RoutingTable> = BTreeMap::new();
    for case in &cases {
        let ConformanceCase {
            id,
            manifest,
            scheme,
            host,
            path,
            status,
            service,
            ..
        } = case;
        let table = tables
            .entry(manifest.clone())
            .or_insert_with(|| conformance_table(manifest));
        match id.as_str() {
            "C29" => {
                // Another class: not ours, so no routes and (for the controller) no status.
                let key = ObjectKey::new(NS, "test-ingress-class");
                assert_eq!(
                    table.ingress_verdict(&key),
                    Some(IngressVerdict::NotOurs),
                    "{id}"
                );
                assert_eq!(service_for(table, "ingress-class", "/"), None, "{id}");
                continue;
            }
            "C30" => {
                let route = table.lookup(host, path).expect("routed");
                let backend = table.backend(&route.backend).expect("resolved");
                let pods: BTreeSet<_> = (0..100)
                    .map(|_| backend.next_endpoint().expect("endpoint").addr)
                    .collect();
                assert_eq!(pods.len(), 10, "{id}: 100 requests reach all 10 endpoints");
                continue;
            }
            _ => {}
        }
        let host = if host == "<ingress-address>" {
            "192.0.2.10"
        } else {
            host
        };
        let route = table.lookup(host, path);
        match status {
            Some(200) => {
                let route = route.unwrap_or_else(|| panic!("{id}: {host}{path} is routed"));
                assert_eq!(&*route.backend.service.name, service, "{id}");
                let backend = table.backend(&route.backend).expect("resolved");
                assert!(backend.next_endpoint().is_some(), "{id}: has endpoints");
                if scheme == "https" {
                    let cert = table
                        .certificate_for(Some(host))
                        .expect("certificate by SNI");
                    assert_eq!(&*cert.dns_names[0], host, "{id}: chosen by SAN");
                    assert_eq!(&*cert.secret.name, "conformance-tls");
                }
                if id == "C08" {
                    // Plain HTTP to a TLS host is redirected; the client follows it.
                    assert!(route.redirect_to_https, "{id}");
                }
            }
            Some(404) => assert!(
                route.is_none(),
                "{id}: {host}{path} must be 404, got {route:?}"
            ),
            other => panic!("{id}: unexpected status {other:?}"),
        }
    }
}

#[test]
fn exact_host_beats_wildcard_beats_any_host() {
    let table = RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            ingress("a", 1)
                .rule(None, vec![path("Prefix", "/", "any")])
                .build(),
            ingress("b", 2)
                .rule(Some("*.foo.com"), vec![path("Prefix", "/", "wild")])
                .build(),
            ingress("c", 3)
                .rule(Some("bar.foo.com"), vec![path("Prefix", "/", "exact")])
                .build(),
        ],
    );
    assert_eq!(
        service_for(&table, "bar.foo.com", "/").as_deref(),
        Some("exact")
    );
    assert_eq!(
        service_for(&table, "BAR.Foo.com:8443", "/").as_deref(),
        Some("exact")
    );
    assert_eq!(
        service_for(&table, "bar.foo.com.", "/").as_deref(),
        Some("exact")
    );
    assert_eq!(
        service_for(&table, "baz.foo.com", "/").as_deref(),
        Some("wild")
    );
    assert_eq!(service_for(&table, "foo.com", "/").as_deref(), Some("any"));
    assert_eq!(
        service_for(&table, "a.b.foo.com", "/").as_deref(),
        Some("any")
    );
    assert_eq!(service_for(&table, "", "/").as_deref(), Some("any"));
}

#[test]
fn a_host_with_rules_does_not_fall_through_to_other_hosts() {
    let table = RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            ingress("a", 1)
                .rule(None, vec![path("Prefix", "/", "any")])
                .build(),
            ingress("b", 2)
                .rule(Some("api.example"), vec![path("Prefix", "/api", "api")])
                .build(),
        ],
    );
    assert_eq!(
        service_for(&table, "api.example", "/api/x").as_deref(),
        Some("api")
    );
    assert_eq!(service_for(&table, "api.example", "/other"), None);
}

#[test]
fn rules_of_many_ingresses_merge_and_the_oldest_wins_a_duplicate() {
    let newer = ingress("newer", 20)
        .rule(
            Some("shop.example"),
            vec![
                path("Prefix", "/cart", "cart-new"),
                path("Exact", "/", "home"),
            ],
        )
        .build();
    let older = ingress("older", 10)
        .rule(
            Some("shop.example"),
            vec![path("Prefix", "/cart", "cart-old")],
        )
        .build();
    let table = RoutingTable::compile(settings(), vec![our_class(), newer, older]);
    assert_eq!(
        service_for(&table, "shop.example", "/cart/1").as_deref(),
        Some("cart-old")
    );
    assert_eq!(
        service_for(&table, "shop.example", "/").as_deref(),
        Some("home")
    );
    let conflicts = |name: &str| -> Vec<Problem> {
        let problems = table.problems(&key(name), 0);
        problems
            .into_iter()
            .filter(|p| p.reason == ProblemReason::ConflictingRule)
            .collect()
    };
    let problems = conflicts("newer");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, ProblemReason::ConflictingRule);
    assert_eq!(problems[0].field, "spec.rules[0].http.paths[0]");
    assert!(
        problems[0].message.contains("default/older"),
        "{}",
        problems[0].message
    );
    assert!(conflicts("older").is_empty());
}

#[test]
fn same_age_ties_break_by_namespace_then_name() {
    let b = ingress("b", 5)
        .rule(Some("h"), vec![path("Prefix", "/", "from-b")])
        .build();
    let a = ingress("a", 5)
        .rule(Some("h"), vec![path("Prefix", "/", "from-a")])
        .build();
    let table = RoutingTable::compile(settings(), vec![our_class(), b, a]);
    assert_eq!(service_for(&table, "h", "/x").as_deref(), Some("from-a"));
}

#[test]
fn implementation_specific_is_prefix_unless_use_regex() {
    let plain = ingress("plain", 1)
        .rule(
            Some("h"),
            vec![path("ImplementationSpecific", "/api", "api")],
        )
        .build();
    let table = RoutingTable::compile(settings(), vec![our_class(), plain]);
    assert_eq!(service_for(&table, "h", "/api/v1").as_deref(), Some("api"));
    assert_eq!(service_for(&table, "h", "/apiv1"), None);

    let regex = ingress("regex", 1)
        .nginx("use-regex", "true")
        .rule(
            Some("h"),
            vec![path("ImplementationSpecific", "/api/(v1|v2)/.*", "api")],
        )
        .build();
    let table = RoutingTable::compile(settings(), vec![our_class(), regex]);
    assert_eq!(
        service_for(&table, "h", "/api/v1/users").as_deref(),
        Some("api")
    );
    assert_eq!(
        service_for(&table, "h", "/API/V2/x").as_deref(),
        Some("api"),
        "case-insensitive as ingress-nginx"
    );
    assert_eq!(service_for(&table, "h", "/api/v3/x"), None);
    assert_eq!(
        service_for(&table, "h", "/x/api/v1/"),
        None,
        "anchored at the start"
    );
}

#[test]
fn regex_routes_take_part_in_longest_match_precedence() {
    let regex = ingress("regex", 1)
        .nginx("use-regex", "true")
        .rule(
            Some("h"),
            vec![path("ImplementationSpecific", "/static/.+\\.css", "css")],
        )
        .build();
    let prefix = ingress("prefix", 2)
        .rule(
            Some("h"),
            vec![
                path("Prefix", "/static", "static"),
                path("Prefix", "/static/very/long/prefix", "long"),
            ],
        )
        .build();
    let table = RoutingTable::compile(settings(), vec![our_class(), regex, prefix]);
    assert_eq!(
        service_for(&table, "h", "/static/a.css").as_deref(),
        Some("css")
    );
    assert_eq!(
        service_for(&table, "h", "/static/a.js").as_deref(),
        Some("static")
    );
    assert_eq!(
        service_for(&table, "h", "/static/very/long/prefix/a.css").as_deref(),
        Some("long")
    );
}

#[test]
fn rewrite_target_with_capture_groups() {
    let docs = ingress("minimal-ingress", 1)
        .nginx("rewrite-target", "/")
        .rule(None, vec![path("Prefix", "/testpath", "test")])
        .build();
    let captures = ingress("captures", 1)
        .nginx("use-regex", "true")
        .nginx("rewrite-target", "/$2$1x")
        .rule(
            Some("r"),
            vec![path("ImplementationSpecific", "/something(/|$)(.*)", "svc")],
        )
        .build();
    let table = RoutingTable::compile(settings(), vec![our_class(), docs, captures]);
    let route = table.lookup("anything", "/testpath/foo").unwrap();
    assert_eq!(route.upstream_path("/testpath/foo"), "/");
    let route = table.lookup("r", "/something/new").unwrap();
    assert_eq!(route.upstream_path("/something/new"), "/new/x");
    let route = table.lookup("r", "/something").unwrap();
    assert_eq!(route.upstream_path("/something"), "/x");
}

#[test]
fn ssl_redirect_defaults_on_for_tls_hosts() {
    let tls = ingress("tls", 1)
        .tls(&["secure.example"], Some("cert"))
        .rule(Some("secure.example"), vec![path("Prefix", "/", "a")])
        .rule(Some("plain.example"), vec![path("Prefix", "/", "b")])
        .build();
    let off = ingress("off", 2)
        .nginx("ssl-redirect", "false")
        .rule(
            Some("secure.example"),
            vec![path("Prefix", "/no-redirect", "c")],
        )
        .build();
    let forced = ingress("forced", 3)
        .nginx("force-ssl-redirect", "true")
        .rule(Some("plain.example"), vec![path("Prefix", "/forced", "d")])
        .build();
    let table = RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            tls,
            off,
            forced,
            tls_secret("cert", &["secure.example"]),
        ],
    );
    assert!(
        table
            .lookup("secure.example", "/")
            .unwrap()
            .redirect_to_https
    );
    assert!(
        !table
            .lookup("secure.example", "/no-redirect")
            .unwrap()
            .redirect_to_https
    );
    assert!(
        !table
            .lookup("plain.example", "/")
            .unwrap()
            .redirect_to_https
    );
    assert!(
        table
            .lookup("plain.example", "/forced")
            .unwrap()
            .redirect_to_https
    );
}

#[test]
fn class_selection() {
    let named = |name: &str, class: Option<&str>| {
        ingress(name, 1)
            .class(class)
            .rule(Some(name), vec![path("Prefix", "/", name)])
    };
    let resources = vec![
        our_class(),
        class("other", "example.com/other-controller", true),
        named("by-name", Some(CLASS)).build(),
        named("other-class", Some("other")).build(),
        named("unknown-class", Some("missing")).build(),
        named("by-annotation", None)
            .annotation(INGRESS_CLASS_ANNOTATION, CLASS)
            .build(),
        named("no-class", None).build(),
    ];
    let verdict = |t: &RoutingTable, n: &str| t.ingress_verdict(&key(n)).unwrap();
    let table = RoutingTable::compile(settings(), resources.clone());
    assert_eq!(verdict(&table, "by-name"), IngressVerdict::Accepted);
    assert_eq!(verdict(&table, "by-annotation"), IngressVerdict::Accepted);
    assert_eq!(verdict(&table, "other-class"), IngressVerdict::NotOurs);
    assert_eq!(verdict(&table, "unknown-class"), IngressVerdict::NotOurs);
    assert_eq!(verdict(&table, "no-class"), IngressVerdict::NotOurs);
    assert_eq!(service_for(&table, "other-class", "/"), None);

    // Ingresses without class: ours when our class is the default, or when told so.
    let mut with_default = resources.clone();
    with_default[0] = class(CLASS, CONTROLLER_NAME, true);
    let table = RoutingTable::compile(settings(), with_default);
    assert_eq!(verdict(&table, "no-class"), IngressVerdict::Accepted);
    let table = RoutingTable::compile(
        Settings {
            watch_ingress_without_class: true,
            ..settings()
        },
        resources,
    );
    assert_eq!(verdict(&table, "no-class"), IngressVerdict::Accepted);
    assert_eq!(verdict(&table, "other-class"), IngressVerdict::NotOurs);
}

#[test]
fn default_backend_comes_from_the_oldest_ingress_that_sets_one() {
    let resources = vec![
        our_class(),
        ingress("new", 9).default_backend("new-default").build(),
        ingress("old", 1).default_backend("old-default").build(),
    ];
    let catch_all = Settings {
        allow_catch_all: true,
        ..settings()
    };
    let table = RoutingTable::compile(catch_all, resources.clone());
    assert_eq!(
        service_for(&table, "whatever", "/x").as_deref(),
        Some("old-default")
    );
    // By default a default backend is no catch-all: a host no rule names is 404.
    let table = RoutingTable::compile(settings(), resources);
    assert_eq!(service_for(&table, "whatever", "/x"), None);
}
