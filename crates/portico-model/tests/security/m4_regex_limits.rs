//! M4 (regex cost): a tenant's regexes are compiled on every replica and scanned per
//! request. What must hold: one Ingress may have at most `MAX_REGEX_PATHS_PER_INGRESS`
//! `use-regex` paths of at most `MAX_REGEX_PATTERN_BYTES` each, with a bounded compiled size;
//! beyond that the Ingress is rejected with `RegexLimitExceeded` and others keep working. A
//! namespace may have `MAX_REGEX_PATHS_PER_NAMESPACE` regex paths: its newest Ingresses over
//! that have their regex paths skipped (`RegexLimitExceeded`), other namespaces unaffected.

use portico_model::*;

use crate::support::*;

fn regex_ingress(name: &str, paths: Vec<HttpPathSource>) -> Resource {
    ingress(name, 5)
        .nginx("use-regex", "true")
        .rule(Some(&format!("{name}.example.com")), paths)
        .build()
}

fn compile(extra: Resource) -> RoutingTable {
    let mut resources = vec![
        our_class(),
        ingress("fine", 1)
            .rule(Some("fine.example.com"), vec![path("Prefix", "/", "web")])
            .build(),
        extra,
    ];
    resources.extend(service_with_endpoints("web", 1));
    RoutingTable::compile(settings(), resources)
}

fn assert_refused(table: &RoutingTable, name: &str, reason: ProblemReason) {
    assert_eq!(
        table.ingress_verdict(&key(name)),
        Some(IngressVerdict::Rejected)
    );
    assert!(
        table
            .problems(&key(name), 0)
            .iter()
            .any(|p| p.reason == reason),
        "{:?}",
        table.problems(&key(name), 0)
    );
    assert_eq!(
        service_for(table, "fine.example.com", "/").as_deref(),
        Some("web"),
        "other Ingresses keep working"
    );
}

#[test]
fn too_many_regex_paths_are_refused() {
    let paths = (0..=MAX_REGEX_PATHS_PER_INGRESS)
        .map(|i| path("ImplementationSpecific", &format!("/p{i}/.*"), "web"))
        .collect();
    let table = compile(regex_ingress("many", paths));
    assert_refused(&table, "many", ProblemReason::RegexLimitExceeded);

    let paths = (0..MAX_REGEX_PATHS_PER_INGRESS)
        .map(|i| path("ImplementationSpecific", &format!("/p{i}/.*"), "web"))
        .collect();
    let table = compile(regex_ingress("enough", paths));
    assert_eq!(
        table.ingress_verdict(&key("enough")),
        Some(IngressVerdict::Accepted)
    );
}

#[test]
fn a_long_pattern_is_refused() {
    let long = format!("/{}", "a".repeat(MAX_REGEX_PATTERN_BYTES));
    let table = compile(regex_ingress(
        "long",
        vec![path("ImplementationSpecific", &long, "web")],
    ));
    assert_refused(&table, "long", ProblemReason::RegexLimitExceeded);
}

#[test]
fn a_pattern_that_compiles_too_large_is_refused() {
    // Short as written, but each counted repetition of a Unicode class multiplies the
    // compiled program.
    let table = compile(regex_ingress(
        "huge",
        vec![path("ImplementationSpecific", r"/\w{1000}\w{1000}", "web")],
    ));
    assert_refused(&table, "huge", ProblemReason::InvalidPathRegex);
}

fn regex_paths(prefix: &str, n: usize) -> Vec<HttpPathSource> {
    (0..n)
        .map(|i| path("ImplementationSpecific", &format!("/{prefix}{i}/.*"), "web"))
        .collect()
}

#[test]
fn a_namespace_has_a_regex_budget_the_newest_ingresses_go_over() {
    let per = MAX_REGEX_PATHS_PER_INGRESS;
    let fitting = MAX_REGEX_PATHS_PER_NAMESPACE / per;
    let mut resources = vec![our_class()];
    for i in 0..=fitting {
        resources.push(
            ingress(&format!("r{i}"), i as i64)
                .nginx("use-regex", "true")
                .rule(Some(&format!("r{i}.example.com")), regex_paths("p", per))
                .build(),
        );
    }
    // Another namespace has its own budget.
    resources.push(
        ingress("other", 0)
            .namespace("elsewhere")
            .nginx("use-regex", "true")
            .rule(Some("other.example.com"), regex_paths("p", per))
            .build(),
    );
    resources.extend(service_with_endpoints("web", 1));
    resources.extend(service_in("elsewhere", "web", 1));
    let mut table = RoutingTable::compile(settings(), resources);
    for table in [&table, &crate::restored(&table)] {
        let last = format!("r{fitting}");
        assert_eq!(
            service_for(table, &format!("{last}.example.com"), "/p0/x"),
            None
        );
        assert!(
            table
                .problems(&key(&last), 0)
                .iter()
                .all(|p| p.reason == ProblemReason::RegexLimitExceeded)
        );
        assert_eq!(table.problems(&key(&last), 0).len(), per);
        assert_eq!(
            service_for(table, "r0.example.com", "/p0/x").as_deref(),
            Some("web")
        );
        assert_eq!(
            service_for(table, "other.example.com", "/p0/x").as_deref(),
            Some("web")
        );
    }
    // An older Ingress goes: the newest fits again.
    table.apply(
        1,
        &Change::Delete {
            kind: ResourceKind::Ingress,
            key: key("r0"),
        },
    );
    let last = format!("r{fitting}.example.com");
    assert_eq!(service_for(&table, &last, "/p0/x").as_deref(), Some("web"));
    assert!(table.problems(&key(&format!("r{fitting}")), 0).is_empty());
}
