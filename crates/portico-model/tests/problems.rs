//! Bad input: every kind of invalid Ingress yields a problem naming the field, and every
//! other Ingress's routes stay exactly as they were.

mod support;

use portico_model::*;
use support::*;

/// A table of good Ingresses, and what each of their requests resolves to.
fn good_resources() -> Vec<Resource> {
    let mut resources = vec![our_class()];
    resources.extend(service_with_endpoints("web", 2));
    resources.extend(service_with_endpoints("api", 2));
    resources.push(tls_secret("web-cert", &["web.example"]));
    resources.push(
        ingress("web", 1)
            .tls(&["web.example"], Some("web-cert"))
            .rule(
                Some("web.example"),
                vec![path("Prefix", "/", "web"), path("Exact", "/health", "api")],
            )
            .build(),
    );
    resources.push(
        ingress("api", 2)
            .nginx("rewrite-target", "/")
            .rule(None, vec![path("Prefix", "/api", "api")])
            .build(),
    );
    resources
}

const PROBES: &[(&str, &str)] = &[
    ("web.example", "/"),
    ("web.example", "/health"),
    ("web.example", "/x/y"),
    ("anything", "/api/v1"),
    ("anything", "/other"),
    ("bad.example", "/"),
];

fn observe(table: &RoutingTable) -> Vec<String> {
    let mut seen: Vec<String> = PROBES
        .iter()
        .map(|(h, p)| {
            let route = table.lookup(h, p);
            format!(
                "{h}{p} -> {:?}",
                route.map(|r| (
                    r.ingress.to_string(),
                    r.path.to_string(),
                    r.backend.to_string(),
                    r.redirect_to_https
                ))
            )
        })
        .collect();
    seen.push(format!(
        "cert {:?}",
        table
            .certificate_for(Some("web.example"))
            .map(|c| c.secret.to_string())
    ));
    for name in ["web", "api"] {
        seen.push(format!(
            "{name}: {:?} {:?}",
            table.ingress_verdict(&key(name)),
            table.problems(&key(name), 0)
        ));
    }
    seen
}

/// Adds `bad` to the good table and checks that it is reported as `reason` on `field`, is
/// served or not as `verdict` says, and changes nothing for the good Ingresses (requests to
/// `bad.example`, which only the bad Ingress names, aside).
fn check(what: &str, bad: Resource, verdict: IngressVerdict, reason: ProblemReason, field: &str) {
    let good = RoutingTable::compile(settings(), good_resources());
    let before = observe(&good);

    // Both ways: compiled together, and applied as a change to a running table.
    let mut together = good_resources();
    together.push(bad.clone());
    let compiled = RoutingTable::compile(settings(), together);
    let mut changed = good.clone();
    changed.apply(1, &Change::Upsert(bad.clone()));

    for table in [&compiled, &changed] {
        let bad_key = bad.key();
        assert_eq!(table.ingress_verdict(bad_key), Some(verdict), "{what}");
        let problems = table.problems(bad_key, 0);
        assert!(
            problems
                .iter()
                .any(|p| p.reason == reason && p.field == field),
            "{what}: expected {reason} on {field}, got {problems:#?}"
        );
        for p in &problems {
            assert!(!p.message.is_empty(), "{what}");
        }
        let after: Vec<String> = observe(table)
            .into_iter()
            .filter(|line| !line.starts_with("bad.example"))
            .collect();
        let before: Vec<String> = before
            .iter()
            .filter(|l| !l.starts_with("bad.example"))
            .cloned()
            .collect();
        assert_eq!(after, before, "{what}: the other Ingresses are untouched");
    }
    // The bad Ingress itself never routes anything it was rejected for.
    if verdict == IngressVerdict::Rejected {
        assert!(compiled.lookup("bad.example", "/").is_none(), "{what}");
    }
}

fn bad() -> IngressBuilder {
    ingress("bad", 0)
}

#[test]
fn invalid_path_is_rejected() {
    check(
        "relative path",
        bad()
            .rule(Some("bad.example"), vec![path("Prefix", "relative", "web")])
            .build(),
        IngressVerdict::Rejected,
        ProblemReason::InvalidSpec,
        "spec.rules[0].http.paths[0].path",
    );
}

#[test]
fn invalid_path_type_is_rejected() {
    check(
        "pathType Regex",
        bad()
            .rule(Some("bad.example"), vec![path("Regex", "/", "web")])
            .build(),
        IngressVerdict::Rejected,
        ProblemReason::InvalidSpec,
        "spec.rules[0].http.paths[0].pathType",
    );
}

#[test]
fn invalid_host_is_rejected() {
    check(
        "host with a port",
        bad()
            .rule(Some("bad.example:8080"), vec![path("Prefix", "/", "web")])
            .build(),
        IngressVerdict::Rejected,
        ProblemReason::InvalidSpec,
        "spec.rules[0].host",
    );
}

#[test]
fn bad_regex_is_rejected() {
    check(
        "unbalanced regex",
        bad()
            .nginx("use-regex", "true")
            .rule(
                Some("bad.example"),
                vec![path("ImplementationSpecific", "/api/(v1", "web")],
            )
            .build(),
        IngressVerdict::Rejected,
        ProblemReason::InvalidPathRegex,
        "spec.rules[0].http.paths[0].path",
    );
}

#[test]
fn bad_annotations_are_rejected() {
    for (name, value) in [
        ("proxy-body-size", "12 parsecs"),
        ("whitelist-source-range", "10.0.0.0/40"),
        ("proxy-connect-timeout", "-1"),
        ("backend-protocol", "FCGI"),
    ] {
        check(
            name,
            bad()
                .nginx(name, value)
                .rule(Some("bad.example"), vec![path("Prefix", "/", "web")])
                .build(),
            IngressVerdict::Rejected,
            ProblemReason::InvalidAnnotation,
            &format!("metadata.annotations[{NGINX_PREFIX}{name}]"),
        );
    }
}

#[test]
fn unknown_service_is_reported_and_answers_503() {
    check(
        "unknown Service",
        bad()
            .rule(
                Some("bad.example"),
                vec![path("Prefix", "/", "nonexistent")],
            )
            .build(),
        IngressVerdict::Accepted,
        ProblemReason::ServiceNotFound,
        "spec.rules[0].http.paths[0].backend.service",
    );
    let mut resources = good_resources();
    resources.push(
        bad()
            .rule(
                Some("bad.example"),
                vec![path("Prefix", "/", "nonexistent")],
            )
            .build(),
    );
    let table = RoutingTable::compile(settings(), resources);
    let route = table
        .lookup("bad.example", "/")
        .expect("routed, to nothing");
    let backend = table.backend(&route.backend).expect("resolved");
    assert_eq!(
        backend.target,
        BackendTarget::Unavailable(Unavailable::ServiceNotFound)
    );
    assert!(
        backend.next_endpoint().is_none(),
        "the data plane answers 503"
    );
}

#[test]
fn unknown_service_port_is_reported() {
    let mut ing = bad().rule(Some("bad.example"), vec![path("Prefix", "/", "web")]);
    ing.0.rules[0].http.as_mut().unwrap()[0].backend = backend("web", 9999);
    check(
        "unknown port",
        ing.build(),
        IngressVerdict::Accepted,
        ProblemReason::ServicePortNotFound,
        "spec.rules[0].http.paths[0].backend.service",
    );
}

#[test]
fn missing_tls_secret_is_reported() {
    check(
        "missing Secret",
        bad()
            .tls(&["bad.example"], Some("absent"))
            .rule(Some("bad.example"), vec![path("Prefix", "/", "web")])
            .build(),
        IngressVerdict::Accepted,
        ProblemReason::SecretNotFound,
        "spec.tls[0].secretName",
    );
}

#[test]
fn malformed_tls_secret_is_reported() {
    let mut resources = good_resources();
    resources.push(secret(
        "broken",
        Some(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()),
        Some(b"nope".to_vec()),
    ));
    let bad_ingress = bad()
        .tls(&["bad.example"], Some("broken"))
        .rule(Some("bad.example"), vec![path("Prefix", "/", "web")])
        .build();
    resources.push(bad_ingress);
    let table = RoutingTable::compile(settings(), resources);
    let problems = table.problems(&key("bad"), 0);
    assert!(
        problems.iter().any(
            |p| p.reason == ProblemReason::InvalidSecret && p.field == "spec.tls[0].secretName"
        ),
        "{problems:?}"
    );
    assert_eq!(
        observe(&table)
            .into_iter()
            .filter(|l| !l.starts_with("bad.example"))
            .collect::<Vec<_>>(),
        observe(&RoutingTable::compile(settings(), good_resources()))
            .into_iter()
            .filter(|l| !l.starts_with("bad.example"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn conflicting_rule_is_reported_and_the_older_one_wins() {
    check(
        "same host and path as web",
        ingress("bad", 5)
            .rule(Some("web.example"), vec![path("Exact", "/health", "web")])
            .build(),
        IngressVerdict::Accepted,
        ProblemReason::ConflictingRule,
        "spec.rules[0].http.paths[0]",
    );
}

#[test]
fn resource_backends_are_reported_as_unsupported() {
    let mut ing = bad().rule(Some("bad.example"), vec![path("Prefix", "/", "web")]);
    ing.0.rules[0].http.as_mut().unwrap()[0].backend = BackendSource {
        service: None,
        resource: Some("StorageBucket/static-assets".into()),
    };
    check(
        "resource backend",
        ing.build(),
        IngressVerdict::Accepted,
        ProblemReason::UnsupportedBackend,
        "spec.rules[0].http.paths[0].backend.resource",
    );
}

#[test]
fn fixing_a_rejected_ingress_brings_its_routes_back() {
    let mut table = RoutingTable::compile(settings(), good_resources());
    let broken = bad()
        .nginx("proxy-body-size", "lots")
        .rule(Some("bad.example"), vec![path("Prefix", "/", "web")]);
    table.apply(1, &Change::Upsert(broken.clone().build()));
    assert!(table.lookup("bad.example", "/").is_none());
    let mut fixed = broken;
    fixed.0.annotations.clear();
    table.apply(2, &Change::Upsert(fixed.build()));
    assert_eq!(
        service_for(&table, "bad.example", "/").as_deref(),
        Some("web")
    );
    assert!(table.problems(&key("bad"), 0).is_empty());
}
