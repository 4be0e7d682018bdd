//! Backends: Service ports resolved through EndpointSlices to ready endpoints.

mod support;

use std::sync::Arc;

use portico_model::*;
use support::*;

fn web_ingress(port: ServiceBackendSource) -> Resource {
    let mut ing = ingress("web", 1).rule(Some("web.example"), vec![path("Prefix", "/", "web")]);
    ing.0.rules[0].http.as_mut().unwrap()[0].backend.service = Some(port);
    ing.build()
}

fn by_name(name: &str) -> ServiceBackendSource {
    ServiceBackendSource {
        name: "web".into(),
        port_name: Some(name.into()),
        port_number: None,
    }
}

fn by_number(n: i32) -> ServiceBackendSource {
    ServiceBackendSource {
        name: "web".into(),
        port_name: None,
        port_number: Some(n),
    }
}

/// A Service with two ports whose targetPorts are names, resolved per Pod in the slices.
fn two_port_service() -> Resource {
    Resource::Service(Arc::new(ServiceSource {
        key: key("web"),
        type_: Some("ClusterIP".into()),
        external_name: None,
        ports: vec![
            ServicePortSource {
                name: Some("http".into()),
                port: 80,
                protocol: None,
                target_port: Some(TargetPort::Name("web-http".into())),
            },
            ServicePortSource {
                name: Some("metrics".into()),
                port: 9090,
                protocol: None,
                target_port: Some(TargetPort::Name("web-metrics".into())),
            },
        ],
    }))
}

fn slice(name: &str, address_type: &str, endpoints: Vec<EndpointSource>) -> Resource {
    Resource::EndpointSlice(Arc::new(EndpointSliceSource {
        key: key(name),
        service_name: Some("web".into()),
        address_type: address_type.into(),
        ports: vec![
            EndpointPortSource {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
            },
            EndpointPortSource {
                name: Some("metrics".into()),
                port: Some(9100),
                protocol: Some("TCP".into()),
            },
        ],
        endpoints,
    }))
}

fn endpoint(
    address: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> EndpointSource {
    EndpointSource {
        addresses: vec![address.into()],
        ready,
        serving,
        terminating,
        target_name: None,
    }
}

fn endpoints(table: &RoutingTable) -> Vec<String> {
    let route = table.lookup("web.example", "/").expect("routed");
    let backend = table.backend(&route.backend).expect("resolved");
    backend
        .endpoints()
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

#[test]
fn ports_by_name_and_number_resolve_to_the_slice_port() {
    let slices = vec![
        slice(
            "web-v4",
            "IPv4",
            vec![endpoint("10.0.0.1", Some(true), None, None)],
        ),
        slice(
            "web-v6",
            "IPv6",
            vec![endpoint("fd00::1", Some(true), None, None)],
        ),
    ];
    for (port, want) in [
        (by_name("http"), vec!["10.0.0.1:8080", "[fd00::1]:8080"]),
        (by_number(80), vec!["10.0.0.1:8080", "[fd00::1]:8080"]),
        (by_name("metrics"), vec!["10.0.0.1:9100", "[fd00::1]:9100"]),
        (by_number(9090), vec!["10.0.0.1:9100", "[fd00::1]:9100"]),
    ] {
        let mut resources = vec![our_class(), two_port_service(), web_ingress(port.clone())];
        resources.extend(slices.clone());
        let table = RoutingTable::compile(settings(), resources);
        assert_eq!(endpoints(&table), want, "{port:?}");
    }
}

#[test]
fn only_ready_endpoints_take_traffic_and_terminating_ones_fill_in_when_none_is() {
    let mut resources = vec![
        our_class(),
        two_port_service(),
        web_ingress(by_name("http")),
    ];
    resources.push(slice(
        "web-a",
        "IPv4",
        vec![
            endpoint("10.0.0.1", Some(true), Some(true), Some(false)),
            endpoint("10.0.0.2", None, None, None), // unknown means ready
            endpoint("10.0.0.3", Some(false), Some(false), Some(false)),
            endpoint("10.0.0.4", Some(false), Some(true), Some(true)),
        ],
    ));
    let mut table = RoutingTable::compile(settings(), resources);
    assert_eq!(endpoints(&table), ["10.0.0.1:8080", "10.0.0.2:8080"]);

    // A rolling update's last moments: nothing ready, one Pod still serving while terminating.
    table.apply(
        1,
        &Change::Upsert(slice(
            "web-a",
            "IPv4",
            vec![
                endpoint("10.0.0.3", Some(false), Some(false), Some(false)),
                endpoint("10.0.0.4", Some(false), Some(true), Some(true)),
            ],
        )),
    );
    assert_eq!(endpoints(&table), ["10.0.0.4:8080"]);

    // Nothing serving at all: the route stays and answers 503.
    table.apply(
        2,
        &Change::Upsert(slice(
            "web-a",
            "IPv4",
            vec![endpoint("10.0.0.3", Some(false), None, None)],
        )),
    );
    assert!(endpoints(&table).is_empty());
}

#[test]
fn endpoints_of_several_slices_merge_deduplicated_and_sorted() {
    let mut resources = vec![our_class(), two_port_service(), web_ingress(by_number(80))];
    resources.push(slice(
        "web-b",
        "IPv4",
        vec![
            endpoint("10.0.0.9", Some(true), None, None),
            endpoint("10.0.0.1", Some(true), None, None),
        ],
    ));
    resources.push(slice(
        "web-a",
        "IPv4",
        vec![endpoint("10.0.0.1", Some(true), None, None)],
    ));
    resources.push(slice(
        "web-fqdn",
        "FQDN",
        vec![endpoint("pod.example", Some(true), None, None)],
    ));
    let mut table = RoutingTable::compile(settings(), resources);
    assert_eq!(endpoints(&table), ["10.0.0.1:8080", "10.0.0.9:8080"]);

    table.apply(
        3,
        &Change::Delete {
            kind: ResourceKind::EndpointSlice,
            key: key("web-b"),
        },
    );
    assert_eq!(endpoints(&table), ["10.0.0.1:8080"]);
}

#[test]
fn a_slice_moving_to_another_service_updates_both() {
    let mut resources = vec![our_class()];
    resources.extend(service_with_endpoints("a", 0));
    resources.extend(service_with_endpoints("b", 0));
    resources.push(
        ingress("a", 1)
            .rule(Some("a"), vec![path("Prefix", "/", "a")])
            .build(),
    );
    resources.push(
        ingress("b", 1)
            .rule(Some("b"), vec![path("Prefix", "/", "b")])
            .build(),
    );
    resources.push(endpoint_slice(NS, "moving", "a", 8080, 1, |_| {
        "10.9.9.9".into()
    }));
    let mut table = RoutingTable::compile(settings(), resources);
    let count = |t: &RoutingTable, host: &str| {
        let route = t.lookup(host, "/").unwrap();
        t.backend(&route.backend).unwrap().endpoints().len()
    };
    assert_eq!((count(&table, "a"), count(&table, "b")), (1, 0));
    table.apply(
        1,
        &Change::Upsert(endpoint_slice(NS, "moving", "b", 8080, 1, |_| {
            "10.9.9.9".into()
        })),
    );
    assert_eq!((count(&table, "a"), count(&table, "b")), (0, 1));
}

#[test]
fn external_name_services_resolve_to_their_dns_name_when_allowed() {
    let service = Resource::Service(Arc::new(ServiceSource {
        key: key("web"),
        type_: Some("ExternalName".into()),
        external_name: Some("api.partner.example".into()),
        ports: vec![],
    }));
    let allowed = Settings {
        allow_external_name_services: true,
        ..settings()
    };
    let table = RoutingTable::compile(
        allowed,
        vec![our_class(), service, web_ingress(by_number(443))],
    );
    let route = table.lookup("web.example", "/").unwrap();
    assert_eq!(
        table.backend(&route.backend).unwrap().target,
        BackendTarget::ExternalName {
            host: "api.partner.example".into(),
            port: 443
        }
    );
}

#[test]
fn a_service_appearing_later_brings_its_routes_to_life() {
    let mut table =
        RoutingTable::compile(settings(), vec![our_class(), web_ingress(by_name("http"))]);
    assert!(endpoints(&table).is_empty());
    assert_eq!(
        table.problems(&key("web"), 0)[0].reason,
        ProblemReason::ServiceNotFound
    );
    table.apply(
        1,
        &Change::Upsert(slice(
            "web-a",
            "IPv4",
            vec![endpoint("10.0.0.1", Some(true), None, None)],
        )),
    );
    table.apply(2, &Change::Upsert(two_port_service()));
    assert_eq!(endpoints(&table), ["10.0.0.1:8080"]);
    assert!(table.problems(&key("web"), 0).is_empty());
}
