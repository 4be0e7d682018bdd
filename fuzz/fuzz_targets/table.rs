//! The table compiler: `RoutingTable::compile` then `apply` of arbitrary changes, built from
//! small Ingresses, IngressClasses, Services, EndpointSlices and Secrets whose names, hosts,
//! paths (regexes too), ports and annotations come from the fuzzer, mostly drawn from small
//! pools so objects refer to each other. Never panics; neither do lookups, rewrites and
//! certificate choices for fuzzed hosts and paths; every change and the snapshot survive
//! their encoding, and the table rebuilt from its snapshot answers exactly as the one built
//! change by change.
#![no_main]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portico_model::*;

const NAMESPACES: [&str; 3] = ["default", "tenant", ""];
const NAMES: [&str; 4] = ["a", "b", "svc", "tls"];
const CLASSES: [&str; 3] = ["portico", "nginx", ""];
const HOSTS: [&str; 12] = [
    "a.test",
    "*.a.test",
    "x.a.test",
    "A.Test.",
    "a.test:8080",
    "*",
    "",
    "b.test",
    "*.test",
    "xn--bcher-kva.test",
    "[::1]",
    "127.0.0.1",
];
const PATHS: [&str; 14] = [
    "/",
    "/a",
    "/a/",
    "/a/b",
    "/A",
    "/api/v[0-9]+",
    "/(.*)",
    "/a(/|$)(.*)",
    "(",
    "",
    "a",
    "/.*",
    "/a/$1",
    "/x{1000000}",
];
const ADDRESSES: [&str; 6] = ["10.0.0.1", "10.0.0.2", "fd00::1", "127.0.0.1", "x", ""];
const PORT_NAMES: [&str; 3] = ["http", "web", ""];

/// A string from a pool, or any string.
#[derive(Arbitrary, Debug)]
enum Text {
    Pick(u8),
    Raw(String),
}

impl Text {
    fn from(&self, pool: &[&str]) -> String {
        match self {
            Text::Pick(i) => pool[usize::from(*i) % pool.len()].to_owned(),
            Text::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Key {
    namespace: u8,
    name: Text,
}

impl Key {
    fn key(&self) -> ObjectKey {
        let ns = NAMESPACES[usize::from(self.namespace) % NAMESPACES.len()];
        ObjectKey::new(ns, self.name.from(&NAMES))
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzSettings {
    class_controller: Option<Text>,
    watch_without_class: bool,
    default_certificate: Option<Key>,
    cross_namespace: bool,
    external_names: bool,
    catch_all: bool,
}

impl FuzzSettings {
    fn settings(&self) -> Settings {
        Settings {
            controller_name: self.class_controller.as_ref().map_or_else(
                || CONTROLLER_NAME.to_owned(),
                |t| t.from(&[CONTROLLER_NAME]),
            ),
            watch_ingress_without_class: self.watch_without_class,
            default_certificate: self.default_certificate.as_ref().map(Key::key),
            allow_cross_namespace_hosts: self.cross_namespace,
            allow_external_name_services: self.external_names,
            allow_catch_all: self.catch_all,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Port {
    Name(Text),
    Number(i32),
}

#[derive(Arbitrary, Debug)]
struct FuzzBackend {
    service: Option<(Text, Option<Port>)>,
    resource: Option<String>,
}

impl FuzzBackend {
    fn source(&self) -> BackendSource {
        BackendSource {
            service: self
                .service
                .as_ref()
                .map(|(name, port)| ServiceBackendSource {
                    name: name.from(&NAMES),
                    port_name: match port {
                        Some(Port::Name(n)) => Some(n.from(&PORT_NAMES)),
                        _ => None,
                    },
                    port_number: match port {
                        Some(Port::Number(n)) => Some(*n),
                        _ => None,
                    },
                }),
            resource: self.resource.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum AnnotationKey {
    Nginx(u8),
    Portico(u8),
    Other(String),
}

const ANNOTATIONS: [&str; 10] = [
    "use-regex",
    "rewrite-target",
    "ssl-redirect",
    "force-ssl-redirect",
    "backend-protocol",
    "proxy-body-size",
    "proxy-read-timeout",
    "whitelist-source-range",
    "affinity",
    "session-cookie-name",
];

impl AnnotationKey {
    fn text(&self) -> String {
        let name = |i: &u8| ANNOTATIONS[usize::from(*i) % ANNOTATIONS.len()];
        match self {
            AnnotationKey::Nginx(i) => format!("{NGINX_PREFIX}{}", name(i)),
            AnnotationKey::Portico(i) => format!("{PORTICO_PREFIX}{}", name(i)),
            AnnotationKey::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzPath {
    path: Option<Text>,
    path_type: Option<Text>,
    backend: FuzzBackend,
}

#[derive(Arbitrary, Debug)]
struct FuzzIngress {
    key: Key,
    created: Option<u8>,
    uid: Option<u8>,
    annotations: Vec<(AnnotationKey, String)>,
    class: Option<Text>,
    legacy_class: Option<Text>,
    default_backend: Option<FuzzBackend>,
    tls: Vec<(Vec<Text>, Option<Text>)>,
    rules: Vec<(Option<Text>, Option<Vec<FuzzPath>>)>,
}

#[derive(Arbitrary, Debug)]
struct FuzzServicePort {
    name: Option<Text>,
    port: i32,
    protocol: Option<String>,
    target: Option<Port>,
}

#[derive(Arbitrary, Debug)]
struct FuzzEndpoint {
    addresses: Vec<Text>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Arbitrary, Debug)]
enum Object {
    Ingress(FuzzIngress),
    Class {
        name: Text,
        ours: bool,
        is_default: bool,
    },
    Service {
        key: Key,
        type_: Option<Text>,
        external_name: Option<Text>,
        ports: Vec<FuzzServicePort>,
    },
    Slice {
        key: Key,
        service: Option<Text>,
        address_type: Text,
        ports: Vec<(Option<Text>, Option<i32>, Option<String>)>,
        endpoints: Vec<FuzzEndpoint>,
    },
    Secret {
        key: Key,
        type_: Option<Text>,
        crt: Option<Vec<u8>>,
        tls_key: Option<Vec<u8>>,
        oversize: Option<u64>,
    },
}

fn port_of(name: &Option<Text>) -> Option<String> {
    name.as_ref().map(|n| n.from(&PORT_NAMES))
}

impl Object {
    fn resource(&self) -> Resource {
        match self {
            Object::Ingress(i) => {
                let mut annotations: BTreeMap<String, String> = i
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.text(), v.clone()))
                    .collect();
                if let Some(legacy) = &i.legacy_class {
                    annotations.insert(INGRESS_CLASS_ANNOTATION.to_owned(), legacy.from(&CLASSES));
                }
                Resource::Ingress(Arc::new(IngressSource {
                    key: i.key.key(),
                    uid: i.uid.map(|u| format!("uid-{u}")),
                    generation: Some(1),
                    creation_timestamp: i.created.map(i64::from),
                    annotations,
                    ingress_class_name: i.class.as_ref().map(|c| c.from(&CLASSES)),
                    default_backend: i.default_backend.as_ref().map(FuzzBackend::source),
                    tls: i
                        .tls
                        .iter()
                        .map(|(hosts, secret)| IngressTlsSource {
                            hosts: hosts.iter().map(|h| h.from(&HOSTS)).collect(),
                            secret_name: secret.as_ref().map(|s| s.from(&NAMES)),
                        })
                        .collect(),
                    rules: i
                        .rules
                        .iter()
                        .map(|(host, paths)| IngressRuleSource {
                            host: host.as_ref().map(|h| h.from(&HOSTS)),
                            http: paths.as_ref().map(|paths| {
                                paths
                                    .iter()
                                    .map(|p| HttpPathSource {
                                        path: p.path.as_ref().map(|t| t.from(&PATHS)),
                                        path_type: p.path_type.as_ref().map(|t| {
                                            t.from(&["Prefix", "Exact", "ImplementationSpecific"])
                                        }),
                                        backend: p.backend.source(),
                                    })
                                    .collect()
                            }),
                        })
                        .collect(),
                }))
            }
            Object::Class {
                name,
                ours,
                is_default,
            } => Resource::IngressClass(Arc::new(IngressClassSource {
                key: ObjectKey::cluster(name.from(&CLASSES)),
                controller: if *ours {
                    CONTROLLER_NAME.to_owned()
                } else {
                    "k8s.io/ingress-nginx".to_owned()
                },
                is_default_class: *is_default,
            })),
            Object::Service {
                key,
                type_,
                external_name,
                ports,
            } => Resource::Service(Arc::new(ServiceSource {
                key: key.key(),
                type_: type_
                    .as_ref()
                    .map(|t| t.from(&["ClusterIP", "ExternalName", "NodePort"])),
                external_name: external_name.as_ref().map(|h| h.from(&HOSTS)),
                ports: ports
                    .iter()
                    .map(|p| ServicePortSource {
                        name: port_of(&p.name),
                        port: p.port,
                        protocol: p.protocol.clone(),
                        target_port: p.target.as_ref().map(|t| match t {
                            Port::Name(n) => TargetPort::Name(n.from(&PORT_NAMES)),
                            Port::Number(n) => TargetPort::Number(*n),
                        }),
                    })
                    .collect(),
            })),
            Object::Slice {
                key,
                service,
                address_type,
                ports,
                endpoints,
            } => Resource::EndpointSlice(Arc::new(EndpointSliceSource {
                key: key.key(),
                service_name: service.as_ref().map(|s| s.from(&NAMES)),
                address_type: address_type.from(&["IPv4", "IPv6", "FQDN"]),
                ports: ports
                    .iter()
                    .map(|(name, port, protocol)| EndpointPortSource {
                        name: port_of(name),
                        port: *port,
                        protocol: protocol.clone(),
                    })
                    .collect(),
                endpoints: endpoints
                    .iter()
                    .map(|e| EndpointSource {
                        addresses: e.addresses.iter().map(|a| a.from(&ADDRESSES)).collect(),
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                        target_name: None,
                    })
                    .collect(),
            })),
            Object::Secret {
                key,
                type_,
                crt,
                tls_key,
                oversize,
            } => Resource::Secret(Arc::new(SecretSource {
                key: key.key(),
                type_: type_.as_ref().map(|t| t.from(&[SECRET_TYPE_TLS, "Opaque"])),
                tls_crt: crt.clone(),
                tls_key: tls_key.clone(),
                oversize: *oversize,
            })),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    Upsert(Object),
    Delete(u8, Key),
    Settings(FuzzSettings),
    Resync(FuzzSettings, Vec<Object>),
    Batch(Vec<Object>, Vec<(u8, Key)>),
}

const KINDS: [ResourceKind; 5] = [
    ResourceKind::Ingress,
    ResourceKind::IngressClass,
    ResourceKind::Service,
    ResourceKind::EndpointSlice,
    ResourceKind::Secret,
];

fn delete(kind: u8, key: &Key) -> Change {
    let kind = KINDS[usize::from(kind) % KINDS.len()];
    let key = if kind == ResourceKind::IngressClass {
        ObjectKey::cluster(key.name.from(&CLASSES))
    } else {
        key.key()
    };
    Change::Delete { kind, key }
}

impl Step {
    fn change(&self) -> Change {
        match self {
            Step::Upsert(o) => Change::Upsert(o.resource()),
            Step::Delete(kind, key) => delete(*kind, key),
            Step::Settings(s) => Change::Settings(s.settings()),
            Step::Resync(s, objects) => Change::Resync {
                settings: s.settings(),
                resources: objects.iter().map(Object::resource).collect(),
            },
            Step::Batch(upserts, deletes) => Change::Batch(
                upserts
                    .iter()
                    .map(|o| Change::Upsert(o.resource()))
                    .chain(deletes.iter().map(|(kind, key)| delete(*kind, key)))
                    .collect(),
            ),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    settings: FuzzSettings,
    objects: Vec<Object>,
    steps: Vec<Step>,
    probes: Vec<(Text, Text)>,
}

/// Everything a replica would answer from the table, as text.
fn answers(table: &RoutingTable, probes: &[(String, String)]) -> String {
    let mut out = String::new();
    for route in table.routes() {
        let _ = writeln!(out, "route {route:?} {:?}", table.backend(&route.backend));
    }
    for (host, path) in probes {
        let route = table.lookup(host, path);
        let upstream = route.map(|r| r.upstream_path(path));
        let cert = table
            .certificate_for(Some(host))
            .map(|c| c.secret.to_string());
        let _ = writeln!(
            out,
            "lookup {host:?} {path:?} {:?} {upstream:?} cert {cert:?}",
            route.map(|r| (r.ingress.to_string(), format!("{:?}", r.path)))
        );
    }
    for (key, verdict) in table.ingresses() {
        let _ = writeln!(
            out,
            "ingress {key} {verdict:?} {:?}",
            table.problems(key, 0)
        );
    }
    out
}

fuzz_target!(|input: Input| {
    let probes: Vec<(String, String)> = input
        .probes
        .iter()
        .take(16)
        .map(|(h, p)| (h.from(&HOSTS), p.from(&PATHS)))
        .collect();
    let resources = input.objects.iter().map(Object::resource).collect();
    let mut table = RoutingTable::compile(input.settings.settings(), resources);
    for (i, step) in input.steps.iter().take(16).enumerate() {
        let change = step.change();
        let decoded = Change::from_bytes(&change.to_bytes()).expect("a change decodes");
        assert_eq!(decoded, change);
        table.apply(i as u64 + 1, &change);
    }
    let bytes = table.to_bytes();
    let restored = RoutingTable::from_bytes(&bytes).expect("a snapshot decodes");
    assert_eq!(restored.to_bytes(), bytes, "the snapshot round-trips");
    assert_eq!(restored.version(), table.version());
    assert_eq!(
        answers(&restored, &probes),
        answers(&table, &probes),
        "the table rebuilt from its snapshot answers as the one built change by change"
    );
});
