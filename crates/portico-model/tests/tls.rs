//! TLS: certificates parsed and checked at compile time, chosen by SAN, and kept when their
//! Secret breaks. Fixtures in tests/data/tls are test-only keys made with openssl.

mod support;

use portico_model::*;
use support::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(data_file(&format!("tls/{name}"))).unwrap()
}

fn tls_ingress(name: &str, created: i64, hosts: &[&str], secret: &str) -> Resource {
    let mut ing = ingress(name, created).tls(hosts, Some(secret));
    for host in hosts {
        ing = ing.rule(Some(host), vec![path("Prefix", "/", "web")]);
    }
    ing.build()
}

fn problems_of(table: &RoutingTable, name: &str) -> Vec<Problem> {
    table
        .problems(&key(name), 1_800_000_000)
        .into_iter()
        .filter(|p| p.reason != ProblemReason::ServiceNotFound)
        .collect()
}

#[test]
fn every_private_key_encoding_loads() {
    for (crt, key_file, host) in [
        ("rsa.crt", "rsa-pkcs1.key", "rsa.example"),
        ("rsa.crt", "rsa-pkcs8.key", "rsa.example"),
        ("ec.crt", "ec-sec1.key", "ec.example"),
    ] {
        let table = RoutingTable::compile(
            settings(),
            vec![
                our_class(),
                tls_ingress("site", 1, &[host], "cert"),
                secret("cert", Some(fixture(crt)), Some(fixture(key_file))),
            ],
        );
        assert_eq!(problems_of(&table, "site"), vec![], "{key_file}");
        let cert = table.certificate_for(Some(host)).expect(key_file);
        assert_eq!(&*cert.secret.name, "cert");
        assert!(!cert.certified_key().cert.is_empty());
    }
}

#[test]
fn certificates_are_chosen_by_san_not_cn() {
    let table = RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            tls_ingress("wild", 1, &["ec.example", "*.wild.example"], "ec"),
            tls_ingress("cn", 2, &["san.example"], "cn"),
            secret("ec", Some(fixture("ec.crt")), Some(fixture("ec-sec1.key"))),
            secret(
                "cn",
                Some(fixture("cn-only.crt")),
                Some(fixture("cn-only.key")),
            ),
        ],
    );
    let secret_for = |sni: &str| {
        table
            .certificate_for(Some(sni))
            .map(|c| c.secret.name.to_string())
    };
    assert_eq!(secret_for("ec.example").as_deref(), Some("ec"));
    assert_eq!(secret_for("a.wild.example").as_deref(), Some("ec"));
    assert_eq!(secret_for("A.Wild.Example").as_deref(), Some("ec"));
    assert_eq!(
        secret_for("a.b.wild.example"),
        None,
        "a wildcard covers one label"
    );
    assert_eq!(secret_for("wild.example"), None);
    assert_eq!(secret_for("san.example").as_deref(), Some("cn"));
    assert_eq!(
        secret_for("cn-only.example"),
        None,
        "the CN is not a name we serve"
    );
    assert_eq!(
        table
            .certificate_for(None)
            .map(|c| c.secret.name.to_string()),
        None
    );
}

#[test]
fn the_oldest_ingress_wins_a_name_two_certificates_cover() {
    let table = RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            tls_ingress("new", 9, &["shared.example"], "new-cert"),
            tls_ingress("old", 1, &["shared.example"], "old-cert"),
            tls_secret("new-cert", &["shared.example"]),
            tls_secret("old-cert", &["shared.example"]),
        ],
    );
    let cert = table.certificate_for(Some("shared.example")).unwrap();
    assert_eq!(&*cert.secret.name, "old-cert");
}

#[test]
fn the_default_certificate_serves_unknown_names() {
    let table = RoutingTable::compile(
        Settings {
            default_certificate: Some(key("fallback")),
            ..settings()
        },
        vec![our_class(), tls_secret("fallback", &["fallback.example"])],
    );
    for sni in [None, Some("unknown.example")] {
        let cert = table.certificate_for(sni).expect("default certificate");
        assert_eq!(&*cert.secret.name, "fallback");
    }
}

#[test]
fn broken_secrets_are_reported_and_the_last_good_certificate_stays() {
    let good = tls_secret("cert", &["shop.example"]);
    let mut table = RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            tls_ingress("shop", 1, &["shop.example"], "cert"),
            good,
        ],
    );
    let served = |t: &RoutingTable| t.certificate_for(Some("shop.example")).cloned();
    let original = served(&table).expect("served");
    assert_eq!(problems_of(&table, "shop"), vec![]);

    let (other_crt, _) = self_signed(&["shop.example"]);
    let (_, other_key) = self_signed(&["shop.example"]);
    let cases: Vec<(&str, Resource, ProblemReason, &str)> = vec![
        (
            "garbage certificate",
            secret(
                "cert",
                Some(b"not a certificate".to_vec()),
                Some(b"x".to_vec()),
            ),
            ProblemReason::InvalidSecret,
            "tls.crt",
        ),
        (
            "key of another certificate",
            secret(
                "cert",
                Some(other_crt.into_bytes()),
                Some(other_key.into_bytes()),
            ),
            ProblemReason::InvalidSecret,
            "does not match",
        ),
        (
            "missing key",
            secret("cert", Some(fixture("ec.crt")), None),
            ProblemReason::InvalidSecret,
            "tls.key",
        ),
        (
            "wrong type",
            Resource::Secret(std::sync::Arc::new(SecretSource {
                key: key("cert"),
                type_: Some("Opaque".into()),
                tls_crt: None,
                tls_key: None,
                oversize: None,
            })),
            ProblemReason::InvalidSecret,
            "Opaque",
        ),
    ];
    for (what, broken, reason, gist) in cases {
        table.apply(table.version() + 1, &Change::Upsert(broken));
        let problems = problems_of(&table, "shop");
        assert_eq!(problems.len(), 1, "{what}: {problems:?}");
        assert_eq!(problems[0].reason, reason, "{what}");
        assert_eq!(problems[0].field, "spec.tls[0].secretName", "{what}");
        assert!(
            problems[0].message.contains(gist),
            "{what}: {}",
            problems[0].message
        );
        assert!(
            problems[0].message.contains("last good certificate"),
            "{what}"
        );
        let still = served(&table).expect("still served");
        assert!(
            std::sync::Arc::ptr_eq(&still, &original),
            "{what}: the last good certificate stays"
        );
        // Routes are untouched.
        assert!(table.lookup("shop.example", "/").is_some());
    }

    // Deleted: still the last good certificate while an Ingress needs it, and reported.
    table.apply(
        99,
        &Change::Delete {
            kind: ResourceKind::Secret,
            key: key("cert"),
        },
    );
    assert!(served(&table).is_some());
    assert_eq!(
        problems_of(&table, "shop")[0].reason,
        ProblemReason::SecretNotFound
    );

    // Once no Ingress references it either, it is forgotten.
    table.apply(
        100,
        &Change::Delete {
            kind: ResourceKind::Ingress,
            key: key("shop"),
        },
    );
    table.apply(
        101,
        &Change::Upsert(tls_ingress("shop", 1, &["shop.example"], "cert")),
    );
    assert!(served(&table).is_none());
}

#[test]
fn a_missing_secret_is_reported_and_routes_still_work() {
    let table = RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            tls_ingress("site", 1, &["site.example"], "absent"),
        ],
    );
    let problems = problems_of(&table, "site");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason, ProblemReason::SecretNotFound);
    assert!(problems[0].message.contains("default/absent"));
    assert!(table.lookup("site.example", "/").is_some());
    assert!(table.certificate_for(Some("site.example")).is_none());
}

#[test]
fn hosts_the_certificate_does_not_cover_are_reported() {
    let table = RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            tls_ingress(
                "site",
                1,
                &["ec.example", "other.example", "x.wild.example"],
                "ec",
            ),
            secret("ec", Some(fixture("ec.crt")), Some(fixture("ec-sec1.key"))),
        ],
    );
    let problems = problems_of(&table, "site");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, ProblemReason::CertificateHostMismatch);
    assert_eq!(problems[0].field, "spec.tls[0].hosts[1]");
}

#[test]
fn expired_and_not_yet_valid_certificates_are_reported() {
    use portico_test_support::{LeafSpec, pki::self_signed};
    let old = self_signed(&LeafSpec::new(&["old.example"]).valid_years(2000, 2001));
    let table = RoutingTable::compile(
        settings(),
        vec![
            our_class(),
            tls_ingress("old", 1, &["old.example"], "old"),
            secret(
                "old",
                Some(old.cert_pem.into_bytes()),
                Some(old.key_pem.into_bytes()),
            ),
        ],
    );
    let at = |now| {
        table
            .problems(&key("old"), now)
            .into_iter()
            .filter(|p| p.reason == ProblemReason::CertificateNotValidNow)
            .map(|p| p.message)
            .collect::<Vec<_>>()
    };
    assert_eq!(at(1_800_000_000).len(), 1);
    assert!(at(1_800_000_000)[0].contains("expired"));
    assert!(at(900_000_000)[0].contains("not valid before"));
    assert!(at(960_000_000).is_empty(), "valid in mid-2000");
    // An expired certificate is still served (better than none) but reported.
    assert!(table.certificate_for(Some("old.example")).is_some());
}

#[test]
fn key_material_never_appears_in_debug_output_or_problems() {
    let key_pem = fixture("ec-sec1.key");
    let key_text = String::from_utf8(key_pem.clone()).unwrap();
    let body: String = key_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let broken_key = key_text.replace('A', "B").into_bytes();
    let resources = vec![
        our_class(),
        tls_ingress("site", 1, &["ec.example"], "ec"),
        secret("ec", Some(fixture("ec.crt")), Some(key_pem)),
    ];
    let mut table = RoutingTable::compile(settings(), resources.clone());
    let mut seen = format!(
        "{table:?} {resources:?} {:?}",
        table.certificate_for(Some("ec.example"))
    );
    table.apply(
        2,
        &Change::Upsert(secret("ec", Some(fixture("ec.crt")), Some(broken_key))),
    );
    seen.push_str(&format!("{:?}", table.problems(&key("site"), 0)));
    for line in body.as_bytes().chunks(16) {
        let line = std::str::from_utf8(line).unwrap();
        assert!(!seen.contains(line), "key material leaked: {line}");
    }
}
