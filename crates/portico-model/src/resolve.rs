//! Resolving a Service port to where requests go: its ready endpoints, or an external name.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::route::{BackendTarget, Endpoint, ServicePortRef, Unavailable};
use crate::source::{EndpointSliceSource, ServicePortSource, ServiceSource};

/// Where requests for `port` of `service` go.
///
/// Endpoints are those of the Service's EndpointSlices whose port has the Service port's
/// name (the EndpointSlice controller resolves a named `targetPort` per Pod, so the slice's
/// port number is the one to dial). Ready endpoints take traffic; when none is ready, the
/// ones still serving while terminating do, as kube-proxy does, so that a rolling update of
/// the last Pods does not turn into 503s. Addresses are deduplicated and sorted so every
/// replica balances over the same list.
///
/// `ExternalName` Services resolve only when `allow_external_name` is set, and only to a DNS
/// name: an IP literal is refused, because the proxy checks where a name resolves to at
/// connect time and a literal would skip that check.
pub(crate) fn backend_target<'a>(
    service: Option<&ServiceSource>,
    port: &ServicePortRef,
    allow_external_name: bool,
    slices: impl Iterator<Item = &'a EndpointSliceSource>,
) -> BackendTarget {
    let Some(service) = service else {
        return BackendTarget::Unavailable(Unavailable::ServiceNotFound);
    };
    let service_port = service.ports.iter().find(|p| match port {
        ServicePortRef::Number(n) => p.port == i32::from(*n),
        ServicePortRef::Name(name) => p.name.as_deref() == Some(&**name),
    });

    if service.type_.as_deref() == Some("ExternalName") {
        let Some(host) = service.external_name.as_deref().filter(|h| !h.is_empty()) else {
            return BackendTarget::Unavailable(Unavailable::ServiceNotFound);
        };
        if !allow_external_name || external_name_is_address(host) {
            return BackendTarget::Unavailable(Unavailable::ExternalNameNotAllowed);
        }
        // An ExternalName Service needs no ports; a port number in the Ingress is the port.
        let port = match (service_port, port) {
            (Some(p), _) => u16::try_from(p.port).ok(),
            (None, ServicePortRef::Number(n)) => Some(*n),
            (None, ServicePortRef::Name(_)) => None,
        };
        return match port {
            Some(port) => BackendTarget::ExternalName {
                host: host.into(),
                port,
            },
            None => BackendTarget::Unavailable(Unavailable::PortNotFound),
        };
    }

    let Some(service_port) = service_port else {
        return BackendTarget::Unavailable(Unavailable::PortNotFound);
    };
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(target) = slice_port(slice, service_port) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let is_ready = endpoint.ready.unwrap_or(true);
            let serving = endpoint.serving.unwrap_or(is_ready);
            let is_terminating = endpoint.terminating.unwrap_or(false);
            let bucket = if is_ready {
                &mut ready
            } else if serving && is_terminating {
                &mut terminating
            } else {
                continue;
            };
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    bucket.push(Endpoint {
                        addr: SocketAddr::new(ip, target),
                        pod: endpoint.target_name.as_deref().map(Arc::from),
                    });
                }
            }
        }
    }
    let mut endpoints = if ready.is_empty() { terminating } else { ready };
    endpoints.sort();
    endpoints.dedup_by(|a, b| a.addr == b.addr);
    BackendTarget::Endpoints(endpoints.into())
}

/// Whether an `externalName` is an IP address (`127.0.0.1`, `::1`, `[::1]`) rather than a
/// DNS name.
pub(crate) fn external_name_is_address(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<IpAddr>().is_ok()
}

/// The slice's port number for a Service port: matched by name (both unnamed for a
/// single-port Service), TCP only.
fn slice_port(slice: &EndpointSliceSource, service_port: &ServicePortSource) -> Option<u16> {
    let name = service_port.name.as_deref().unwrap_or("");
    slice
        .ports
        .iter()
        .find(|p| {
            p.name.as_deref().unwrap_or("") == name
                && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}
