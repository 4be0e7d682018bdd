//! M4 (regex cost): a tenant's regexes are compiled on every replica and scanned per
//! request. What must hold: one Ingress may have at most `MAX_REGEX_PATHS_PER_INGRESS`
//! `use-regex` paths of at most `MAX_REGEX_PATTERN_BYTES` each, with a bounded compiled size;
//! beyond that the Ingress is rejected with `RegexLimitExceeded` and others keep working.

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
