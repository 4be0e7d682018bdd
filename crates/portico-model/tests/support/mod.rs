//! Builders for the model's inputs, shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use portico_model::*;

pub const NS: &str = "default";
pub const CLASS: &str = "portico";

pub fn data_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// One of this crate's own tables in `tests/data` (the shared ones are in the workspace's
/// `testdata/`, read with [`portico_test_support::Table::read`]).
pub fn tsv(name: &str) -> portico_test_support::Table {
    portico_test_support::Table::read_path(&data_file(name))
}

pub fn our_class() -> Resource {
    Resource::IngressClass(Arc::new(IngressClassSource {
        key: ObjectKey::cluster(CLASS),
        controller: CONTROLLER_NAME.to_owned(),
        is_default_class: false,
    }))
}

pub fn class(name: &str, controller: &str, is_default: bool) -> Resource {
    Resource::IngressClass(Arc::new(IngressClassSource {
        key: ObjectKey::cluster(name),
        controller: controller.to_owned(),
        is_default_class: is_default,
    }))
}

/// An Ingress of our class, built up with the methods below.
#[derive(Clone)]
pub struct IngressBuilder(pub IngressSource);

pub fn ingress(name: &str, created: i64) -> IngressBuilder {
    IngressBuilder(IngressSource {
        key: ObjectKey::new(NS, name),
        creation_timestamp: Some(created),
        ingress_class_name: Some(CLASS.to_owned()),
        ..Default::default()
    })
}

pub fn backend(service: &str, port: i32) -> BackendSource {
    BackendSource {
        service: Some(ServiceBackendSource {
            name: service.to_owned(),
            port_number: Some(port),
            port_name: None,
        }),
        resource: None,
    }
}

pub fn path(path_type: &str, path: &str, service: &str) -> HttpPathSource {
    HttpPathSource {
        path: Some(path.to_owned()),
        path_type: Some(path_type.to_owned()),
        backend: backend(service, 80),
    }
}

impl IngressBuilder {
    pub fn namespace(mut self, ns: &str) -> Self {
        self.0.key = ObjectKey::new(ns, self.0.key.name.clone());
        self
    }

    pub fn class(mut self, class: Option<&str>) -> Self {
        self.0.ingress_class_name = class.map(str::to_owned);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn nginx(self, key: &str, value: &str) -> Self {
        self.annotation(&format!("{NGINX_PREFIX}{key}"), value)
    }

    pub fn rule(mut self, host: Option<&str>, paths: Vec<HttpPathSource>) -> Self {
        self.0.rules.push(IngressRuleSource {
            host: host.map(str::to_owned),
            http: Some(paths),
        });
        self
    }

    pub fn default_backend(mut self, service: &str) -> Self {
        self.0.default_backend = Some(backend(service, 80));
        self
    }

    pub fn tls(mut self, hosts: &[&str], secret: Option<&str>) -> Self {
        self.0.tls.push(IngressTlsSource {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            secret_name: secret.map(str::to_owned),
        });
        self
    }

    pub fn build(self) -> Resource {
        Resource::Ingress(Arc::new(self.0))
    }
}

/// A Service with one port 80 (named `http`) and a slice with `n` ready endpoints.
pub fn service_with_endpoints(name: &str, n: usize) -> Vec<Resource> {
    service_in(NS, name, n)
}

pub fn service_in(ns: &str, name: &str, n: usize) -> Vec<Resource> {
    let service = ServiceSource {
        key: ObjectKey::new(ns, name),
        type_: Some("ClusterIP".into()),
        external_name: None,
        ports: vec![ServicePortSource {
            name: Some("http".into()),
            port: 80,
            protocol: Some("TCP".into()),
            target_port: Some(TargetPort::Number(8080)),
        }],
    };
    let slice = endpoint_slice(ns, &format!("{name}-abcde"), name, 8080, n, |i| {
        format!("10.{}.{}.{}", name.len() % 250, i / 250, i % 250 + 1)
    });
    vec![Resource::Service(Arc::new(service)), slice]
}

pub fn endpoint_slice(
    ns: &str,
    slice_name: &str,
    service: &str,
    port: i32,
    n: usize,
    address: impl Fn(usize) -> String,
) -> Resource {
    Resource::EndpointSlice(Arc::new(EndpointSliceSource {
        key: ObjectKey::new(ns, slice_name),
        service_name: Some(service.to_owned()),
        address_type: "IPv4".into(),
        ports: vec![EndpointPortSource {
            name: Some("http".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
        }],
        endpoints: (0..n)
            .map(|i| EndpointSource {
                addresses: vec![address(i)],
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
                target_name: Some(format!("{service}-pod-{i}")),
            })
            .collect(),
    }))
}

/// The Service a request is routed to, or `None` for 404.
pub fn service_for(table: &RoutingTable, host: &str, path: &str) -> Option<String> {
    table
        .lookup(host, path)
        .map(|route| route.backend.service.name.to_string())
}

pub fn settings() -> Settings {
    Settings::default()
}

pub fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A self-signed certificate for `names`, as a `kubernetes.io/tls` Secret.
pub fn tls_secret(name: &str, names: &[&str]) -> Resource {
    let (crt, key) = self_signed(names);
    secret(name, Some(crt.into_bytes()), Some(key.into_bytes()))
}

pub fn self_signed(names: &[&str]) -> (String, String) {
    let leaf = portico_test_support::pki::self_signed(&portico_test_support::LeafSpec::new(names));
    (leaf.cert_pem, leaf.key_pem)
}

pub fn secret(name: &str, crt: Option<Vec<u8>>, key: Option<Vec<u8>>) -> Resource {
    Resource::Secret(Arc::new(SecretSource {
        key: ObjectKey::new(NS, name),
        type_: Some(SECRET_TYPE_TLS.to_owned()),
        tls_crt: crt,
        tls_key: key,
        oversize: None,
    }))
}

pub fn key(name: &str) -> ObjectKey {
    ObjectKey::new(NS, name)
}
