//! H3 (regex precedence): a `use-regex` path padded to be longer than the victim's paths
//! (`/(?:)(?:)….*`) outranked every Exact and Prefix rule, because a regex ranked by its
//! length as written. What must hold: a regex ranks by its literal prefix (the bytes every
//! match starts with), so padding gains nothing; at equal length Exact beats Prefix beats
//! regex. M4: a pattern must be a complete expression on its own, so it cannot close the
//! anchoring group (`/a)|(.*` would become `^(?:/a)|(.*)`, matching anywhere).

use portico_model::*;

use crate::support::*;

fn padded() -> String {
    format!("/{}.*", "(?:)".repeat(40))
}

fn table_with(regex_path: &str) -> RoutingTable {
    let mut resources = vec![
        our_class(),
        ingress("bank", 1)
            .rule(
                Some("bank.example.com"),
                vec![
                    path("Exact", "/account", "account"),
                    path("Prefix", "/transfer", "transfer"),
                ],
            )
            .build(),
        ingress("regex", 5)
            .nginx("use-regex", "true")
            .rule(
                Some("bank.example.com"),
                vec![path("ImplementationSpecific", regex_path, "grab")],
            )
            .build(),
    ];
    for service in ["account", "transfer", "grab"] {
        resources.extend(service_with_endpoints(service, 1));
    }
    RoutingTable::compile(settings(), resources)
}

#[test]
fn a_padded_regex_does_not_outrank_exact_and_prefix_paths() {
    let table = table_with(&padded());
    assert_eq!(
        table.ingress_verdict(&key("regex")),
        Some(IngressVerdict::Accepted)
    );
    assert_eq!(
        service_for(&table, "bank.example.com", "/account").as_deref(),
        Some("account")
    );
    assert_eq!(
        service_for(&table, "bank.example.com", "/transfer/now").as_deref(),
        Some("transfer")
    );
    // What no other rule matches, the regex still serves.
    assert_eq!(
        service_for(&table, "bank.example.com", "/other").as_deref(),
        Some("grab")
    );
}

#[test]
fn a_regex_ranks_by_its_literal_prefix() {
    // `/transfer/x` is longer literally than the `/transfer` prefix: more specific, it wins.
    let table = table_with("/transfer/x[0-9]+");
    assert_eq!(
        service_for(&table, "bank.example.com", "/transfer/x12").as_deref(),
        Some("grab")
    );
    assert_eq!(
        service_for(&table, "bank.example.com", "/transfer/y").as_deref(),
        Some("transfer")
    );
    // An alternation has no common literal prefix: it ranks last.
    let table = table_with("/transfer/x|/account");
    assert_eq!(
        service_for(&table, "bank.example.com", "/account").as_deref(),
        Some("account")
    );
}

#[test]
fn a_pattern_that_escapes_its_anchor_is_refused() {
    let table = table_with("/a)|(.*");
    assert_eq!(
        table.ingress_verdict(&key("regex")),
        Some(IngressVerdict::Rejected)
    );
    let problems = table.problems(&key("regex"), 0);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, ProblemReason::InvalidPathRegex);
    assert_eq!(problems[0].field, "spec.rules[0].http.paths[0].path");
    assert_eq!(
        service_for(&table, "bank.example.com", "/anything"),
        None,
        "nothing of the rejected Ingress is served"
    );
}
