//! Synthetic clusters for the benchmarks.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use portico_model::*;

pub const INGRESSES: usize = 10_000;
pub const SERVICES: usize = 1_000;
pub const ENDPOINTS_PER_SERVICE: usize = 30;
pub const CERTIFICATES: usize = 1_000;

const CLASS: &str = "portico";

fn class() -> Resource {
    Resource::IngressClass(Arc::new(IngressClassSource {
        key: ObjectKey::cluster(CLASS),
        controller: CONTROLLER_NAME.into(),
        is_default_class: false,
    }))
}

fn http_path(path: &str, path_type: &str, service: usize) -> HttpPathSource {
    HttpPathSource {
        path: Some(path.into()),
        path_type: Some(path_type.into()),
        backend: BackendSource {
            service: Some(ServiceBackendSource {
                name: format!("svc-{service}"),
                port_number: Some(80),
                port_name: None,
            }),
            resource: None,
        },
    }
}

/// A table with `routes` routes: ten paths on each of `routes / 10` hosts (one Ingress each).
pub fn routes_table(routes: usize) -> Vec<Resource> {
    let hosts = (routes / 10).max(1);
    let mut resources = vec![class()];
    for h in 0..hosts {
        let paths = (0..10)
            .map(|p| {
                http_path(
                    &format!("/app{p}/v{}", p % 3),
                    if p % 2 == 0 { "Prefix" } else { "Exact" },
                    h % 50,
                )
            })
            .collect();
        resources.push(Resource::Ingress(Arc::new(IngressSource {
            key: ObjectKey::new("default", format!("ing-{h}")),
            creation_timestamp: Some(h as i64),
            ingress_class_name: Some(CLASS.into()),
            rules: vec![IngressRuleSource {
                host: Some(format!("host-{h}.example.com")),
                http: Some(paths),
            }],
            ..Default::default()
        })));
    }
    resources
}

/// A request that `routes_table(routes)` routes: a Prefix path, three elements deeper.
pub fn probe(routes: usize, seed: usize) -> (String, String) {
    let hosts = (routes / 10).max(1);
    let p = (seed % 5) * 2;
    (
        format!("Host-{}.example.com:443", seed % hosts),
        format!("/app{p}/v{}/users/42/profile", p % 3),
    )
}

/// 10,000 Ingresses over 1,000 Services with 30 endpoints each, and 1,000 certificates.
pub fn large_cluster() -> Vec<Resource> {
    let mut resources = vec![class()];
    for s in 0..SERVICES {
        resources.push(service(s));
        resources.push(slice(s, ENDPOINTS_PER_SERVICE));
    }
    resources.extend(certificates().iter().cloned());
    for i in 0..INGRESSES {
        resources.push(ingress(i, false));
    }
    resources
}

pub fn service(s: usize) -> Resource {
    Resource::Service(Arc::new(ServiceSource {
        key: ObjectKey::new("default", format!("svc-{s}")),
        type_: Some("ClusterIP".into()),
        external_name: None,
        ports: vec![ServicePortSource {
            name: Some("http".into()),
            port: 80,
            protocol: Some("TCP".into()),
            target_port: Some(TargetPort::Number(8080)),
        }],
    }))
}

pub fn slice(s: usize, endpoints: usize) -> Resource {
    Resource::EndpointSlice(Arc::new(EndpointSliceSource {
        key: ObjectKey::new("default", format!("svc-{s}-slice")),
        service_name: Some(format!("svc-{s}")),
        address_type: "IPv4".into(),
        ports: vec![EndpointPortSource {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
        }],
        endpoints: (0..endpoints)
            .map(|e| EndpointSource {
                addresses: vec![format!("10.{}.{}.{}", s / 250, s % 250, e + 1)],
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
                target_name: Some(format!("svc-{s}-pod-{e}")),
            })
            .collect(),
    }))
}

/// Ingress `i`: one host, two paths, TLS for one in ten (spread over the certificates).
pub fn ingress(i: usize, changed: bool) -> Resource {
    let host = format!("app-{i}.example.com");
    let tls = if i.is_multiple_of(10) {
        vec![IngressTlsSource {
            hosts: vec![host.clone()],
            secret_name: Some(format!("cert-{}", (i / 10) % CERTIFICATES)),
        }]
    } else {
        Vec::new()
    };
    Resource::Ingress(Arc::new(IngressSource {
        key: ObjectKey::new("default", format!("ing-{i}")),
        creation_timestamp: Some(i as i64),
        ingress_class_name: Some(CLASS.into()),
        tls,
        rules: vec![IngressRuleSource {
            host: Some(host),
            http: Some(vec![
                http_path("/", "Prefix", i % SERVICES),
                http_path(
                    if changed { "/v2" } else { "/api" },
                    "Prefix",
                    (i + 1) % SERVICES,
                ),
            ]),
        }],
        ..Default::default()
    }))
}

/// 1,000 certificates, each for the hosts of the Ingresses that use it. Made once.
pub fn certificates() -> &'static [Resource] {
    static CERTS: OnceLock<Vec<Resource>> = OnceLock::new();
    CERTS.get_or_init(|| {
        (0..CERTIFICATES)
            .map(|c| {
                let names: Vec<String> = (0..INGRESSES / 10 / CERTIFICATES)
                    .map(|k| format!("app-{}.example.com", (c + k * CERTIFICATES) * 10))
                    .chain([format!("*.c{c}.example.com")])
                    .collect();
                let cert = rcgen::generate_simple_self_signed(names).expect("rcgen");
                Resource::Secret(Arc::new(SecretSource {
                    key: ObjectKey::new("default", format!("cert-{c}")),
                    type_: Some(SECRET_TYPE_TLS.into()),
                    tls_crt: Some(cert.cert.pem().into_bytes()),
                    tls_key: Some(cert.signing_key.serialize_pem().into_bytes()),
                    oversize: None,
                }))
            })
            .collect()
    })
}
