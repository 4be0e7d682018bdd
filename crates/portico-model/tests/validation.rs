//! Ingress validation against the API server's rules, driven by
//! `testdata/apiserver-validation-cases.tsv` (the workspace's, which the real-API-server test reads too): every row is turned into a minimal object
//! exhibiting the case, and an unrecognised row fails the test rather than being skipped.

use k8s_openapi::api::networking::v1::{
    IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};
use portico_model::validate::{self, FieldViolation, ViolationKind};
use portico_model::{
    BackendSource, HttpPathSource, IngressRuleSource, IngressSource, IngressTlsSource, ObjectKey,
    ServiceBackendSource,
};

const CASES: &str = include_str!("../../../testdata/apiserver-validation-cases.tsv");

const PATH0: &str = "spec.rules[0].http.paths[0]";

#[derive(Debug)]
struct Row<'a> {
    line: usize,
    field: &'a str,
    path_type: &'a str,
    value: &'a str,
    verdict: &'a str,
    message: &'a str,
}

fn rows() -> Vec<Row<'static>> {
    let rows: Vec<Row> = CASES
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, line)| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert!(
                cols.len() >= 4,
                "line {}: expected at least 4 columns: {line:?}",
                i + 1
            );
            Row {
                line: i + 1,
                field: cols[0],
                path_type: cols[1],
                value: cols[2],
                verdict: cols[3],
                message: cols.get(4).copied().unwrap_or(""),
            }
        })
        .collect();
    assert!(rows.len() > 40, "the case table looks truncated");
    rows
}

/// The row's expectation: `reject|accept` rows depend on a feature gate; we follow the default
/// gates (`RelaxedServiceNameValidation` off), which reject.
fn expects_reject(row: &Row) -> bool {
    match row.verdict {
        "accept" => false,
        "reject" | "reject|accept" => true,
        other => panic!("line {}: unknown verdict {other:?}", row.line),
    }
}

/// The TSV's abridged message, without the parenthetical explanation, if it is a literal
/// part of the API server's message.
fn tsv_gist(row: &Row) -> String {
    let message = row.message.trim();
    match message.find(" (") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn service(name: &str, port: i32) -> BackendSource {
    BackendSource {
        service: Some(ServiceBackendSource {
            name: name.into(),
            port_name: None,
            port_number: Some(port),
        }),
        resource: None,
    }
}

fn http_path(path: Option<&str>, path_type: Option<&str>) -> HttpPathSource {
    HttpPathSource {
        path: path.map(Into::into),
        path_type: path_type.map(Into::into),
        backend: service("svc", 80),
    }
}

/// A valid Ingress with one rule and one path; each case changes one thing.
fn base() -> IngressSource {
    IngressSource {
        key: ObjectKey::new("default", "test"),
        rules: vec![IngressRuleSource {
            host: Some("foo.bar.com".into()),
            http: Some(vec![http_path(Some("/"), Some("Prefix"))]),
        }],
        ..Default::default()
    }
}

fn with_path(path: Option<&str>, path_type: Option<&str>) -> IngressSource {
    let mut ing = base();
    ing.rules[0].http = Some(vec![http_path(path, path_type)]);
    ing
}

fn with_host(host: Option<&str>) -> IngressSource {
    let mut ing = base();
    ing.rules[0].host = host.map(Into::into);
    ing
}

fn with_tls(hosts: &[&str], secret_name: Option<&str>) -> IngressSource {
    let mut ing = base();
    ing.tls = vec![IngressTlsSource {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        secret_name: secret_name.map(Into::into),
    }];
    ing
}

fn with_backend(backend: BackendSource) -> IngressSource {
    let mut ing = base();
    ing.rules[0].http.as_mut().unwrap()[0].backend = backend;
    ing
}

fn with_service_port(name: Option<&str>, number: Option<i32>) -> IngressSource {
    with_backend(BackendSource {
        service: Some(ServiceBackendSource {
            name: "svc".into(),
            port_name: name.map(Into::into),
            port_number: number,
        }),
        resource: None,
    })
}

/// "(empty)" may be written as an empty string or left out.
fn empty_or(value: &str) -> Vec<Option<&str>> {
    if value == "(empty)" {
        vec![Some(""), None]
    } else {
        vec![Some(value)]
    }
}

/// One object exhibiting a row, with the field a rejection must name and, where the TSV
/// message is a description rather than the API server's words, the words to look for.
struct Case {
    what: String,
    object: Object,
    field: String,
    gist: Option<&'static str>,
}

enum Object {
    Ingress(Box<IngressSource>),
    Status(IngressStatus),
}

const SUBDOMAIN_GIST: &str = "a lowercase RFC 1123 subdomain must consist of";
const WILDCARD_GIST: &str = "a wildcard DNS-1123 subdomain must start with '*.'";

fn cases_for(row: &Row) -> Vec<Case> {
    let case = |what: String, ing: IngressSource, field: &str, gist: Option<&'static str>| Case {
        what,
        object: Object::Ingress(Box::new(ing)),
        field: field.to_owned(),
        gist,
    };
    let unhandled = || -> ! { panic!("line {}: no case builder for {row:?}", row.line) };
    let path_types: Vec<&str> = match row.path_type {
        "-" => vec![],
        list => list.split('|').collect(),
    };
    match row.field {
        "path" => {
            assert!(
                !path_types.is_empty(),
                "line {}: path rows need a pathType",
                row.line
            );
            let mut out = Vec::new();
            for path_type in &path_types {
                for path in empty_or(row.value) {
                    out.push(case(
                        format!("path {path:?} with pathType {path_type}"),
                        with_path(path, Some(path_type)),
                        &format!("{PATH0}.path"),
                        None,
                    ));
                }
            }
            out
        }
        "pathType" => {
            let path_type = match row.value {
                "(missing)" => None,
                v => Some(v),
            };
            vec![case(
                format!("pathType {path_type:?}"),
                with_path(Some("/"), path_type),
                &format!("{PATH0}.pathType"),
                None,
            )]
        }
        "host" => {
            let gist = match row.value {
                "*" | "foo.*.com" | "*.*.foo.com" | "*foo.com" => Some(WILDCARD_GIST),
                "foo.bar.com:8080" | "Foo.Bar.com" | "foo.bar.com." | "foo_bar.com" => {
                    Some(SUBDOMAIN_GIST)
                }
                _ => None,
            };
            empty_or(row.value)
                .into_iter()
                .map(|host| {
                    case(
                        format!("host {host:?}"),
                        with_host(host),
                        "spec.rules[0].host",
                        gist,
                    )
                })
                .collect()
        }
        "tls.hosts" => vec![case(
            format!("tls host {:?}", row.value),
            with_tls(&[row.value], Some("tls-secret")),
            "spec.tls[0].hosts[0]",
            Some(SUBDOMAIN_GIST),
        )],
        "tls.secretName" => empty_or(row.value)
            .into_iter()
            .map(|secret| {
                case(
                    format!("tls secretName {secret:?}"),
                    with_tls(&["foo.bar.com"], secret),
                    "spec.tls[0].secretName",
                    Some(SUBDOMAIN_GIST),
                )
            })
            .collect(),
        "spec" => match row.value {
            "no rules and no defaultBackend" => {
                let mut ing = base();
                ing.rules.clear();
                vec![case(row.value.into(), ing, "spec", None)]
            }
            "rule with host and no http" => {
                let mut ing = base();
                ing.rules[0].http = None;
                vec![case(row.value.into(), ing, "spec.rules[0]", None)]
            }
            "rule with http.paths: []" => {
                let mut ing = base();
                ing.rules[0].http = Some(vec![]);
                vec![case(
                    row.value.into(),
                    ing,
                    "spec.rules[0].http.paths",
                    None,
                )]
            }
            v if v.starts_with("same path twice") => {
                let mut prefix_and_exact = base();
                prefix_and_exact.rules[0].http = Some(vec![
                    http_path(Some("/foo"), Some("Prefix")),
                    http_path(Some("/foo"), Some("Exact")),
                ]);
                let mut identical = base();
                identical.rules[0].http = Some(vec![
                    http_path(Some("/foo"), Some("Prefix")),
                    http_path(Some("/foo"), Some("Prefix")),
                ]);
                let mut twice_in_two_rules = identical.clone();
                twice_in_two_rules.rules.push(identical.rules[0].clone());
                vec![
                    case(
                        "/foo Prefix + /foo Exact".into(),
                        prefix_and_exact,
                        "spec",
                        None,
                    ),
                    case("identical paths".into(), identical, "spec", None),
                    case("identical rules".into(), twice_in_two_rules, "spec", None),
                ]
            }
            _ => unhandled(),
        },
        "backend" => {
            let backend = format!("{PATH0}.backend");
            let (objects, field, gist): (Vec<IngressSource>, String, Option<&'static str>) =
                match row.value {
                    "service and resource both set" => {
                        let mut b = service("svc", 80);
                        b.resource = Some("StorageBucket/static".into());
                        (vec![with_backend(b)], backend, None)
                    }
                    "neither service nor resource" => {
                        (vec![with_backend(BackendSource::default())], backend, None)
                    }
                    "port.name and port.number both set" => (
                        vec![with_service_port(Some("http"), Some(80))],
                        backend,
                        None,
                    ),
                    "port.number 0 / no port" => (
                        vec![
                            with_service_port(None, Some(0)),
                            with_service_port(None, None),
                            with_service_port(Some(""), None),
                        ],
                        backend,
                        None,
                    ),
                    "port.number 70000" => (
                        vec![with_service_port(None, Some(70000))],
                        format!("{backend}.service.port.number"),
                        None,
                    ),
                    "port.name Http_Port" => (
                        vec![with_service_port(Some("Http_Port"), None)],
                        format!("{backend}.service.port.name"),
                        Some(
                            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                        ),
                    ),
                    "service.name 1svc" => (
                        vec![with_backend(service("1svc", 80))],
                        format!("{backend}.service.name"),
                        Some("a DNS-1035 label must consist of"),
                    ),
                    _ => unhandled(),
                };
            objects
                .into_iter()
                .enumerate()
                .map(|(i, ing)| case(format!("{} #{i}", row.value), ing, &field, gist))
                .collect()
        }
        "ingressClassName" => {
            let mut ing = base();
            ing.ingress_class_name = Some(row.value.into());
            vec![case(
                format!("ingressClassName {:?}", row.value),
                ing,
                "spec.ingressClassName",
                Some(SUBDOMAIN_GIST),
            )]
        }
        "annotation" => {
            let Some((annotation, class)) = row
                .value
                .strip_prefix("kubernetes.io/ingress.class=")
                .and_then(|rest| rest.split_once(" with ingressClassName="))
            else {
                unhandled()
            };
            let mut ing = base();
            ing.annotations
                .insert("kubernetes.io/ingress.class".into(), annotation.into());
            ing.ingress_class_name = Some(class.into());
            vec![case(
                row.value.into(),
                ing,
                "annotations.kubernetes.io/ingress.class",
                None,
            )]
        }
        "status" => {
            let Some((attr, value)) = row
                .value
                .strip_prefix("loadBalancer.ingress[].")
                .and_then(|rest| rest.split_once('='))
            else {
                unhandled()
            };
            let mut entry = IngressLoadBalancerIngress::default();
            match attr {
                "ip" => entry.ip = Some(value.into()),
                "hostname" => entry.hostname = Some(value.into()),
                _ => unhandled(),
            }
            vec![Case {
                what: row.value.into(),
                object: Object::Status(status_with(vec![entry])),
                field: format!("status.loadBalancer.ingress[0].{attr}"),
                gist: None,
            }]
        }
        _ => unhandled(),
    }
}

fn status_with(entries: Vec<IngressLoadBalancerIngress>) -> IngressStatus {
    IngressStatus {
        load_balancer: Some(IngressLoadBalancerStatus {
            ingress: Some(entries),
        }),
    }
}

fn violations(object: &Object) -> Vec<FieldViolation> {
    match object {
        Object::Ingress(ing) => validate::ingress(ing),
        Object::Status(status) => validate::ingress_status(status),
    }
}

#[test]
fn the_base_object_is_valid() {
    assert_eq!(validate::ingress(&base()), vec![]);
}

#[test]
fn every_row_of_the_apiserver_case_table() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in rows() {
        let cases = cases_for(&row);
        assert!(!cases.is_empty(), "line {}: no case built", row.line);
        let reject = expects_reject(&row);
        for case in cases {
            checked += 1;
            let found = violations(&case.object);
            let context = format!("line {} ({}): {}", row.line, row.field, case.what);
            if !reject {
                if !found.is_empty() {
                    failures.push(format!("{context}: expected accept, got {found:#?}"));
                }
                continue;
            }
            let gist = case
                .gist
                .map(str::to_owned)
                .unwrap_or_else(|| tsv_gist(&row));
            assert!(!gist.is_empty(), "{context}: reject row without a gist");
            // The TSV abridges the API server's output, sometimes leaving the value out.
            let hit = found.iter().any(|v| {
                v.field == case.field
                    && (v.to_string().contains(&gist)
                        || format!("{}: {}", v.kind, v.message).contains(&gist))
            });
            if !hit {
                failures.push(format!(
                    "{context}: expected a violation on {} containing {gist:?}, got {:#?}",
                    case.field,
                    found.iter().map(ToString::to_string).collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked > 50, "only {checked} cases checked");
}

#[test]
fn display_matches_the_apiserver_format() {
    let ing = with_host(Some("Foo.com"));
    let found = validate::ingress(&ing);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0].to_string(),
        "spec.rules[0].host: Invalid value: \"Foo.com\": a lowercase RFC 1123 subdomain must \
         consist of lower case alphanumeric characters, '-' or '.', and must start and end with \
         an alphanumeric character (e.g. 'example.com', regex used for validation is \
         '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );

    let found = validate::ingress(&with_path(Some("/"), None));
    assert_eq!(
        found.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified"]
    );

    let found = validate::ingress(&with_path(Some("/"), Some("Regex")));
    assert_eq!(found[0].kind, ViolationKind::Unsupported);
    assert_eq!(
        found[0].to_string(),
        "spec.rules[0].http.paths[0].pathType: Unsupported value: \"Regex\": supported values: \
         \"Exact\", \"ImplementationSpecific\", \"Prefix\""
    );

    let found = validate::ingress(&with_service_port(None, Some(70000)));
    assert_eq!(
        found[0].to_string(),
        "spec.rules[0].http.paths[0].backend.service.port.number: Invalid value: 70000: must be \
         between 1 and 65535, inclusive"
    );

    let mut empty = base();
    empty.rules.clear();
    assert_eq!(
        validate::ingress(&empty)[0].to_string(),
        "spec: Invalid value: []networking.IngressRule(nil): either `defaultBackend` or `rules` \
         must be specified"
    );
}

#[test]
fn every_violation_is_reported_with_its_own_path() {
    let mut ing = base();
    ing.key = ObjectKey::new("default", "Bad_Name");
    ing.ingress_class_name = Some("Bad".into());
    ing.default_backend = Some(BackendSource::default());
    ing.rules.push(IngressRuleSource {
        host: Some("1.2.3.4".into()),
        http: Some(vec![
            http_path(Some("/ok"), Some("Exact")),
            http_path(Some("/a//b/.."), Some("Prefix")),
            http_path(Some("x"), None),
        ]),
    });
    ing.tls = vec![
        IngressTlsSource {
            hosts: vec!["ok.com".into()],
            secret_name: Some("ok".into()),
        },
        IngressTlsSource {
            hosts: vec!["ok.com".into(), "Bad.com".into()],
            secret_name: Some("Bad".into()),
        },
    ];
    let fields: Vec<String> = validate::ingress(&ing)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "spec.defaultBackend",
            "spec.rules[1].host",
            "spec.rules[1].http.paths[1].path",
            "spec.rules[1].http.paths[1].path",
            "spec.rules[1].http.paths[2].pathType",
            "spec.tls[1].hosts[1]",
            "spec.tls[1].secretName",
            "spec.ingressClassName",
        ]
    );
}

#[test]
fn metadata_is_checked() {
    let mut ing = base();
    ing.key = ObjectKey::new("", "");
    let found = validate::ingress(&ing);
    assert_eq!(
        found
            .iter()
            .map(|v| (v.field.as_str(), v.kind))
            .collect::<Vec<_>>(),
        [
            ("metadata.name", ViolationKind::Required),
            ("metadata.namespace", ViolationKind::Required)
        ]
    );

    ing.key = ObjectKey::new("Not_A_Label", "x".repeat(254));
    let found = validate::ingress(&ing);
    assert!(
        found
            .iter()
            .any(|v| v.field == "metadata.name"
                && v.message == "must be no more than 253 characters")
    );
    assert!(
        found.iter().any(|v| v.field == "metadata.namespace"
            && v.message.starts_with("a lowercase RFC 1123 label"))
    );

    let mut ing = base();
    ing.annotations.insert("bad key!".into(), "v".into());
    ing.annotations.insert(
        "nginx.ingress.kubernetes.io/rewrite-target".into(),
        "/".into(),
    );
    let found = validate::ingress(&ing);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].field, "metadata.annotations");
    assert_eq!(found[0].value, "bad key!");
}

#[test]
fn matching_class_annotation_is_accepted() {
    let mut ing = base();
    ing.annotations
        .insert("kubernetes.io/ingress.class".into(), "portico".into());
    ing.ingress_class_name = Some("portico".into());
    assert_eq!(validate::ingress(&ing), vec![]);
    // The annotation alone is fine too.
    ing.ingress_class_name = None;
    assert_eq!(validate::ingress(&ing), vec![]);
}

#[test]
fn resource_backends() {
    let resource = |r: &str| {
        with_backend(BackendSource {
            service: None,
            resource: Some(r.into()),
        })
    };
    assert_eq!(validate::ingress(&resource("StorageBucket/static")), vec![]);
    let found = validate::ingress(&resource("/"));
    assert_eq!(
        found
            .iter()
            .map(|v| (v.field.as_str(), v.kind))
            .collect::<Vec<_>>(),
        [
            (
                "spec.rules[0].http.paths[0].backend.resource.kind",
                ViolationKind::Required
            ),
            (
                "spec.rules[0].http.paths[0].backend.resource.name",
                ViolationKind::Required
            ),
        ]
    );
    let found = validate::ingress(&resource("Bucket/a%b"));
    assert_eq!(found[0].message, "may not contain '%'");
}

#[test]
fn status_accepts_valid_addresses() {
    let entries = vec![
        IngressLoadBalancerIngress {
            ip: Some("10.0.0.1".into()),
            ..Default::default()
        },
        IngressLoadBalancerIngress {
            ip: Some("2001:db8::1".into()),
            hostname: Some("lb.example.com".into()),
            ..Default::default()
        },
    ];
    assert_eq!(validate::ingress_status(&status_with(entries)), vec![]);
    assert_eq!(validate::ingress_status(&IngressStatus::default()), vec![]);

    let bad = status_with(vec![
        IngressLoadBalancerIngress::default(),
        IngressLoadBalancerIngress {
            ip: Some("300.1.1.1".into()),
            hostname: Some("Bad_Host".into()),
            ..Default::default()
        },
    ]);
    let fields: Vec<String> = validate::ingress_status(&bad)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "status.loadBalancer.ingress[1].ip",
            "status.loadBalancer.ingress[1].hostname"
        ]
    );
}

#[test]
fn string_checks() {
    use validate::*;
    for ok in ["http", "h2c", "web-80", "a", "abcdefghijklmno"] {
        assert!(is_iana_svc_name(ok), "{ok}");
    }
    for bad in [
        "",
        "80",
        "Http",
        "http_port",
        "-http",
        "http-",
        "a--b",
        "abcdefghijklmnop",
    ] {
        assert!(!is_iana_svc_name(bad), "{bad}");
    }
    assert!(is_dns1035_label("svc-1"));
    assert!(!is_dns1035_label("1svc"));
    assert!(!is_dns1035_label(&"a".repeat(64)));
    assert!(is_dns1123_label("1svc"));
    assert!(is_dns1123_subdomain("a.b-c.d"));
    for bad in ["", ".a", "a.", "a..b", "-a", "a-", "A", "a_b", "a:80"] {
        assert!(!is_dns1123_subdomain(bad), "{bad}");
    }
    assert!(is_wildcard_dns1123_subdomain("*.a.b"));
    for bad in ["*", "*.", "*a.b", "a.*.b", "*.*.b"] {
        assert!(!is_wildcard_dns1123_subdomain(bad), "{bad}");
    }
    assert!(is_qualified_name("example.com/My_Name.1"));
    assert!(!is_qualified_name("a/b/c"));
    assert!(!is_qualified_name("/name"));
    assert!(parse_ip_sloppy("010.001.1.1").is_some());
    assert!(parse_ip_sloppy("::ffff:1.2.3.4").is_some());
    assert!(parse_ip_sloppy("1.2.3").is_none());
    assert!(parse_ip_sloppy("256.1.1.1").is_none());
    assert_eq!(
        check_port_number(0),
        ["must be between 1 and 65535, inclusive"]
    );
    assert!(check_port_number(65535).is_empty());
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn on_arbitrary_strings(host in ".{0,40}", path in ".{0,40}", path_type in ".{0,12}",
                                port in any::<i32>(), port_name in ".{0,20}") {
            let mut ing = with_path(Some(&path), Some(&path_type));
            ing.rules[0].host = Some(host.clone());
            ing.tls = vec![IngressTlsSource { hosts: vec![host.clone()], secret_name: Some(port_name.clone()) }];
            ing.default_backend = Some(BackendSource {
                service: Some(ServiceBackendSource { name: host, port_name: Some(port_name), port_number: Some(port) }),
                resource: Some(path),
            });
            for v in validate::ingress(&ing) {
                prop_assert!(!v.field.is_empty());
                prop_assert!(!v.to_string().is_empty());
            }
        }
    }
}

#[test]
fn ingress_classes() {
    use portico_model::IngressClassSource;
    let class = |name: &str, controller: &str| IngressClassSource {
        key: ObjectKey::cluster(name),
        controller: controller.into(),
        is_default_class: false,
    };
    assert_eq!(
        validate::ingress_class(&class("portico", "portico.dev/ingress-controller")),
        vec![]
    );
    assert_eq!(
        validate::ingress_class(&class("nginx", "k8s.io/ingress-nginx")),
        vec![]
    );
    let shown = |c: IngressClassSource| -> Vec<String> {
        validate::ingress_class(&c)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        shown(class("Bad", "")),
        [
            "metadata.name: Invalid value: \"Bad\": a lowercase RFC 1123 subdomain must consist of \
             lower case alphanumeric characters, '-' or '.', and must start and end with an \
             alphanumeric character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            "spec.controller: Required value",
        ]
    );
    assert_eq!(
        shown(class("a", "no-slash")),
        [
            "spec.controller: Invalid value: \"no-slash\": must be a domain-prefixed path (such as \"acme.io/foo\")"
        ]
    );
    assert_eq!(
        shown(class("a", "Acme.io/a b")),
        [
            "spec.controller: Invalid value: \"Acme.io\": a lowercase RFC 1123 subdomain must consist of \
             lower case alphanumeric characters, '-' or '.', and must start and end with an \
             alphanumeric character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            "spec.controller: Invalid value: \"a b\": Invalid path (regex used for validation is \
             '[A-Za-z0-9/\\-._~%!$&'()*+,;=:]+')",
        ]
    );
    let long = format!("acme.io/{}", "a".repeat(250));
    assert_eq!(
        shown(class("a", &long)),
        ["spec.controller: Too long: may not be more than 250 bytes"]
    );
}

/// Objects can reach the compiler without passing a validating API server (files, fakes):
/// every Ingress row the API server rejects is refused by the compiler too, with a problem
/// on the same field, and routes nothing.
#[test]
fn the_compiler_refuses_every_rejected_row() {
    use portico_model::{
        CONTROLLER_NAME, IngressClassSource, IngressVerdict, ProblemReason, Resource, RoutingTable,
        Settings,
    };
    use std::sync::Arc;
    let mut checked = 0;
    for row in rows().iter().filter(|r| expects_reject(r)) {
        for case in cases_for(row) {
            let Object::Ingress(mut ing) = case.object else {
                continue;
            };
            // Make it ours, under whatever class name the case uses.
            let class = ing
                .ingress_class_name
                .get_or_insert_with(|| "portico".into())
                .clone();
            let key = ing.key.clone();
            let table = RoutingTable::compile(
                Settings::default(),
                vec![
                    Resource::IngressClass(Arc::new(IngressClassSource {
                        key: ObjectKey::cluster(class),
                        controller: CONTROLLER_NAME.into(),
                        is_default_class: false,
                    })),
                    Resource::Ingress(Arc::new(*ing)),
                ],
            );
            let context = format!("line {} ({}): {}", row.line, row.field, case.what);
            assert_eq!(
                table.ingress_verdict(&key),
                Some(IngressVerdict::Rejected),
                "{context}"
            );
            let problems = table.problems(&key, 0);
            assert!(
                problems
                    .iter()
                    .any(|p| p.reason == ProblemReason::InvalidSpec && p.field == case.field),
                "{context}: expected InvalidSpec on {}, got {problems:#?}",
                case.field
            );
            assert_eq!(table.routes().count(), 0, "{context}: nothing is routed");
            checked += 1;
        }
    }
    assert!(
        checked > 30,
        "only {checked} rejected Ingress cases checked"
    );
}
