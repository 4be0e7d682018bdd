//! C2 / H1 (Secrets): every `kubernetes.io/tls` Secret in the cluster went into the table,
//! its Raft log and snapshots, and one of about 1 MiB per object could wedge replication.
//! What must hold: only Secrets referenced by an Ingress of our class (and the default
//! certificate) are needed by the table (`referenced_secrets`, which the controller uses to
//! decide what to propose); a Secret over `MAX_TLS_SECRET_BYTES` loses its data at conversion
//! and is reported as `SecretTooLarge` on the Ingresses that use it, while every other route
//! keeps working.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_model::*;

use crate::support::*;
use crate::tls_secret_in;

fn ingress_source(resource: &Resource) -> &IngressSource {
    match resource {
        Resource::Ingress(i) => i,
        _ => unreachable!(),
    }
}

fn class_source(resource: &Resource) -> &IngressClassSource {
    match resource {
        Resource::IngressClass(c) => c,
        _ => unreachable!(),
    }
}

#[test]
fn only_referenced_secrets_are_needed() {
    let class = our_class();
    let ours = ingress("web", 1)
        .rule(Some("web.example.com"), vec![path("Prefix", "/", "web")])
        .tls(&["web.example.com"], Some("web-tls"))
        .build();
    let theirs = ingress("other", 1)
        .class(Some("someone-else"))
        .tls(&["x.example.com"], Some("other-tls"))
        .build();
    let settings = Settings {
        default_certificate: Some(ObjectKey::new("portico-system", "default-tls")),
        ..settings()
    };
    let needed = referenced_secrets(
        &settings,
        [class_source(&class)],
        [ingress_source(&ours), ingress_source(&theirs)],
    );
    let needed: Vec<String> = needed.iter().map(ToString::to_string).collect();
    assert_eq!(needed, ["default/web-tls", "portico-system/default-tls"]);
}

fn big_secret(bytes: usize) -> Secret {
    let (crt, key) = self_signed(&["big.example.com"]);
    let mut crt = crt.into_bytes();
    // Junk after the PEM block, as the attack in the issue used.
    crt.resize(bytes, b'A');
    Secret {
        metadata: ObjectMeta {
            name: Some("big".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE_TLS.into()),
        data: Some(
            [
                ("tls.crt".to_owned(), ByteString(crt)),
                ("tls.key".to_owned(), ByteString(key.into_bytes())),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

#[test]
fn an_oversized_secret_is_dropped_at_conversion_and_reported() {
    let source = SecretSource::from(&big_secret(1 << 20));
    assert_eq!(source.tls_crt, None, "the data never reaches the Raft log");
    assert_eq!(source.tls_key, None);
    let size = source.oversize.expect("size kept");
    assert!(size > 1 << 20);
    assert!(
        Change::Upsert(Resource::Secret(Arc::new(source.clone())))
            .to_bytes()
            .len()
            < 200
    );

    let mut resources = vec![
        our_class(),
        ingress("big", 1)
            .rule(Some("big.example.com"), vec![path("Prefix", "/", "web")])
            .tls(&["big.example.com"], Some("big"))
            .build(),
        ingress("fine", 1)
            .rule(Some("fine.example.com"), vec![path("Prefix", "/", "web")])
            .tls(&["fine.example.com"], Some("fine"))
            .build(),
        Resource::Secret(Arc::new(source)),
        tls_secret_in(NS, "fine", &["fine.example.com"]),
    ];
    resources.extend(service_with_endpoints("web", 1));
    let table = RoutingTable::compile(settings(), resources);
    let problems = table.problems(&key("big"), 0);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, ProblemReason::SecretTooLarge);
    assert!(
        problems[0].message.contains("default/big"),
        "names the Secret"
    );
    assert!(
        problems[0]
            .message
            .contains(&MAX_TLS_SECRET_BYTES.to_string())
    );
    assert!(table.certificate_for(Some("big.example.com")).is_none());
    // Everything else is served as before.
    assert_eq!(
        table
            .certificate_for(Some("fine.example.com"))
            .map(|c| c.secret.to_string())
            .as_deref(),
        Some("default/fine")
    );
    assert_eq!(
        service_for(&table, "fine.example.com", "/").as_deref(),
        Some("web")
    );
}

#[test]
fn a_secret_at_the_limit_is_kept() {
    let mut secret = big_secret(4096);
    let data = secret.data.as_mut().unwrap();
    let key_len = data["tls.key"].0.len();
    let crt = &mut data.get_mut("tls.crt").unwrap().0;
    crt.resize(MAX_TLS_SECRET_BYTES - key_len, b'A');
    let source = SecretSource::from(&secret);
    assert_eq!(source.oversize, None);
    assert!(source.tls_crt.is_some());
    crt_grows_by_one_byte_and_is_refused(secret);
}

fn crt_grows_by_one_byte_and_is_refused(mut secret: Secret) {
    let data = secret.data.as_mut().unwrap();
    data.get_mut("tls.crt").unwrap().0.push(b'A');
    let source = SecretSource::from(&secret);
    assert_eq!(source.oversize, Some(MAX_TLS_SECRET_BYTES as u64 + 1));
}
