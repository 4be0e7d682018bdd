//! Who a peer is, from its certificate, and which peers may act as replicas.
//!
//! A certificate chained to the cluster CA proves only that someone signed it. A replica is
//! identified by the host of its advertised address (its Pod's DNS name in a StatefulSet),
//! which must be a DNS or IP SAN of its certificate (the client side already checks that
//! when it connects). So a caller *is* member `n` when its certificate names the host of
//! `n`'s address in the membership; and a replica that has not joined yet may do so only
//! under a host the operator listed as one of the StatefulSet's Pods. The Common Name is
//! never looked at.

use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The names a peer's certificate vouches for: its DNS and IP SANs, normalized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerCertError {
    #[error("the peer certificate does not parse: {0}")]
    Unparsable(String),
}

impl PeerIdentity {
    /// The identity in `der`, the leaf certificate rustls has already verified.
    pub(crate) fn from_certificate(der: &[u8]) -> Result<Self, PeerCertError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PeerCertError::Unparsable(e.to_string()))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| PeerCertError::Unparsable(e.to_string()))?;
        let mut names = Vec::new();
        for name in sans.iter().flat_map(|ext| ext.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(dns) => names.push(normalize(dns)),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
        Ok(Self { names })
    }

    #[cfg(test)]
    pub(crate) fn of(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(|n| normalize(n)).collect(),
        }
    }

    /// Whether the certificate names `host` exactly (no wildcard SAN counts as a replica).
    pub(crate) fn covers(&self, host: &str) -> bool {
        let host = normalize(host);
        self.names.contains(&host)
    }

    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.names.is_empty() {
            return f.write_str("a certificate with no DNS or IP name");
        }
        write!(f, "{}", self.names.join(","))
    }
}

/// The host of `host:port` (IPv6 in brackets allowed), normalized as SANs are.
pub(crate) fn host_of(addr: &str) -> String {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    normalize(host.trim_start_matches('[').trim_end_matches(']'))
}

/// Lower case, no trailing dot; an IP address in its canonical text form.
fn normalize(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// The hosts that may be replicas: the initial members' hosts and the operator's
/// `peer_hosts`, where `name-*.rest` stands for `name-<ordinal>.rest` (a StatefulSet's Pods).
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerPolicy {
    exact: Vec<String>,
    ordinal: Vec<(String, String)>,
}

impl PeerPolicy {
    pub(crate) fn new(initial_members: &[String], peer_hosts: &[String]) -> Self {
        let mut policy = Self::default();
        for member in initial_members {
            policy.exact.push(host_of(member));
        }
        for host in peer_hosts {
            match host.split_once('*') {
                Some((prefix, suffix)) => {
                    policy.ordinal.push((normalize(prefix), normalize(suffix)))
                }
                None => policy.exact.push(normalize(host)),
            }
        }
        policy
    }

    /// Whether `host` is one of the replicas' hosts.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let host = normalize(host);
        self.exact.contains(&host)
            || self.ordinal.iter().any(|(prefix, suffix)| {
                host.strip_prefix(prefix.as_str())
                    .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    }

    /// Whether the certificate names some replica host.
    pub(crate) fn admits(&self, peer: &PeerIdentity) -> bool {
        peer.names().iter().any(|n| self.allows(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_compared_normalized() {
        assert_eq!(
            host_of("Portico-0.Peers.NS.svc.:9444"),
            "portico-0.peers.ns.svc"
        );
        assert_eq!(host_of("[::1]:9444"), "::1");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        let peer = PeerIdentity::of(&["portico-0.peers.ns.svc", "0:0::1"]);
        assert!(peer.covers("PORTICO-0.peers.ns.svc."));
        assert!(peer.covers("::1"));
        assert!(!peer.covers("portico-1.peers.ns.svc"));
    }

    #[test]
    fn policy_admits_initial_members_and_ordinal_pods_only() {
        let policy = PeerPolicy::new(
            &["127.0.0.1:9444".into()],
            &["portico-*.peers.ns.svc.cluster.local".into()],
        );
        assert!(policy.allows("127.0.0.1"));
        assert!(policy.allows("portico-12.peers.ns.svc.cluster.local"));
        for refused in [
            "127.0.0.2",
            "portico-.peers.ns.svc.cluster.local",
            "portico-x.peers.ns.svc.cluster.local",
            "portico-1.evil.peers.ns.svc.cluster.local",
            "portico-1.peers.ns.svc.cluster.local.evil",
            "not-a-member",
        ] {
            assert!(!policy.allows(refused), "{refused}");
        }
        assert!(!policy.admits(&PeerIdentity::of(&["not-a-member"])));
        assert!(!policy.admits(&PeerIdentity::default()));
    }
}
