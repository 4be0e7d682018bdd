//! What a [`Proxy`](crate::Proxy) is told at start: where to listen and which limits to apply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;

/// Everything the data plane needs besides the routing table.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Plain-HTTP listeners (HTTP/1.1 and h2c with prior knowledge).
    pub http: Vec<SocketAddr>,
    /// TLS listeners (ALPN `h2`, `http/1.1`).
    pub https: Vec<SocketAddr>,
    /// QUIC listeners (ALPN `h3`). Their port is advertised in `Alt-Svc` on TCP responses.
    pub h3: Vec<SocketAddr>,
    /// The port advertised in `Alt-Svc: h3=":PORT"`; `None` uses the first QUIC listener's
    /// bound port. A LoadBalancer may map the public port to another one.
    pub alt_svc_port: Option<u16>,
    /// The certificate served when SNI matches nothing in the table and the table has no
    /// default certificate. `None`: a self-signed one is generated at start.
    pub default_certificate: Option<Arc<CertifiedKey>>,
    /// TLS session resumption (tickets and a session cache). Off for handshake benchmarks.
    pub session_resumption: bool,
    pub limits: Limits,
    /// The `Server` header added to responses that carry none.
    pub server_name: String,
    /// One `tracing` info event (target `portico::access`) per request: protocol, method,
    /// host, path without query, status, Ingress, upstream, time to response head, client.
    pub access_log: bool,
    /// Peers whose `Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Scheme`, `X-Original-URL`
    /// and similar headers are believed (a load balancer in front). From anyone else those
    /// headers are dropped and `X-Forwarded-For` starts afresh with the peer. Empty: nobody.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Forward the path as the client sent it rather than its canonical form (routing and
    /// policy still use the canonical one). For backends that need the exact bytes, such as
    /// signed URLs; such a backend must read paths as the canonical rule does, or a path
    /// trick may reach it under another route's policy (ARCHITECTURE.md, Request paths).
    pub forward_original_path: bool,
    /// Names this cluster in the `Via` entry added to every forwarded request; a request
    /// that arrives carrying it has been through this cluster already and is refused (508),
    /// so a backend that leads back to the proxy costs one hop. Every replica of a cluster
    /// must use the same token (`portico run` derives one; see [`LoopToken`]).
    pub loop_token: LoopToken,
    /// With `ExternalName` Services allowed: names resolving into these ranges (typically
    /// the cluster's Pod and Service CIDRs) are refused, besides loopback, link-local, this
    /// pod's addresses and the API server, which always are. Empty: no more than those.
    pub external_name_deny: Vec<ipnet::IpNet>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            http: vec![SocketAddr::from(([0, 0, 0, 0], 80))],
            https: vec![SocketAddr::from(([0, 0, 0, 0], 443))],
            h3: vec![SocketAddr::from(([0, 0, 0, 0], 443))],
            alt_svc_port: None,
            default_certificate: None,
            session_resumption: true,
            limits: Limits::default(),
            server_name: "portico".to_owned(),
            access_log: false,
            trusted_proxies: Vec::new(),
            forward_original_path: false,
            loop_token: LoopToken::random(),
            external_name_deny: Vec::new(),
        }
    }
}

/// The token in `Via: 1.1 portico-TOKEN` that marks a request as having passed through this
/// cluster. Not a secret: a client that sends it only gets its own request refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopToken(String);

/// Why a string cannot be a [`LoopToken`].
#[derive(Debug, thiserror::Error)]
#[error("a loop token is 1 to 64 characters of A-Z, a-z, 0-9, '-', '.' and '_', got {0:?}")]
pub struct LoopTokenError(String);

impl LoopToken {
    /// A token chosen by the operator: the same on every replica of one cluster, different
    /// from every other Portico cluster that may forward to this one.
    pub fn new(token: &str) -> Result<Self, LoopTokenError> {
        let valid = (1..=64).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if valid {
            Ok(Self(token.to_owned()))
        } else {
            Err(LoopTokenError(token.to_owned()))
        }
    }

    /// A token derived from what every replica of one cluster shares and no other cluster
    /// does: the cluster CA's certificate (as DER, so PEM layout does not matter), and the
    /// namespace and name of the leader Lease (two installations in one Kubernetes cluster
    /// cannot share a Lease, even with one CA). 16 hex digits of a stable hash (FNV-1a), the
    /// same on every platform and release.
    pub fn for_cluster(ca_pem: &[u8], lease_namespace: &str, lease_name: &str) -> Self {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let ca = CertificateDer::pem_slice_iter(ca_pem)
            .next()
            .and_then(Result::ok);
        let ca_bytes = ca.as_ref().map_or(ca_pem, |der| der.as_ref());
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        // Each part is length-prefixed, so no two different inputs run together the same.
        for part in [ca_bytes, lease_namespace.as_bytes(), lease_name.as_bytes()] {
            for b in (part.len() as u64).to_be_bytes().iter().chain(part) {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        Self(format!("{hash:016x}"))
    }

    /// A token of this process alone (the default): it still cuts a loop back to this same
    /// process, but replicas of a cluster need a shared one ([`LoopToken::for_cluster`]).
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(std::process::id().into());
        Self(format!("{:016x}", hasher.finish()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for LoopToken {
    type Err = LoopTokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl std::fmt::Display for LoopToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bounds on what one client may make the proxy do.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request line plus headers (HTTP/1.1) or the header list (HTTP/2, HTTP/3): 431 beyond.
    pub max_header_bytes: usize,
    /// How long a client may take to send a complete request head (slowloris).
    pub header_read_timeout: Duration,
    /// A connection with no request activity for this long is closed: no request waiting
    /// for its response and no body bytes moving. HTTP/2 PING, SETTINGS, WINDOW_UPDATE and
    /// empty frames, and QUIC PINGs, do not count.
    pub idle_timeout: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection and bidirectional streams per QUIC connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the server handled them (rapid reset).
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the server may reset for protocol errors before it closes the connection.
    pub max_local_error_reset_streams: usize,
    /// Client connections open at once over every listener, TCP and QUIC together (TLS and
    /// QUIC handshakes included). Past it a TCP connection is closed at once and a QUIC
    /// connection attempt refused, before any handshake work.
    pub max_connections: usize,
    /// Client connections open at once from one client: an IPv4 address, or an IPv6 /64.
    pub max_connections_per_ip: usize,
    /// A response that makes no progress towards the client for this long (flow-control
    /// window withheld, or the client not reading its socket) closes the connection (HTTP/1.1,
    /// HTTP/2) or resets the stream (HTTP/3): nginx's `send_timeout`.
    pub send_timeout: Duration,
    /// HTTP/2: response bytes buffered per stream beyond what the socket took (hyper's
    /// `max_send_buf_size`). With `max_concurrent_streams` it bounds what a client that does
    /// not read holds per connection (see ARCHITECTURE.md, portico-proxy).
    pub h2_stream_send_buffer: usize,
    /// QUIC: request body bytes a client may send ahead of us on one stream.
    pub quic_stream_receive_window: u32,
    /// QUIC: request body bytes a client may send ahead of us on all streams of a connection.
    pub quic_receive_window: u32,
    /// QUIC: response bytes buffered per connection, unsent or unacknowledged.
    pub quic_send_window: u64,
    /// QUIC address validation: with this many handshakes in progress on a listener, a
    /// client whose address is not yet validated gets a Retry first (one round trip more;
    /// a spoofed source never answers it, so a flood costs one stateless packet each).
    /// 0: always.
    pub quic_retry_above_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 100,
            max_pending_accept_reset_streams: 50,
            max_local_error_reset_streams: 256,
            max_connections: 50_000,
            max_connections_per_ip: 1_000,
            send_timeout: Duration::from_secs(60),
            h2_stream_send_buffer: 64 * 1024,
            quic_stream_receive_window: 256 * 1024,
            quic_receive_window: 1024 * 1024,
            quic_send_window: 2 * 1024 * 1024,
            quic_retry_above_handshakes: 128,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUBjq8\n-----END CERTIFICATE-----\n";

    #[test]
    fn loop_tokens_are_checked() {
        for ok in [
            "a",
            "portico-system.portico-leader",
            "A_b-9",
            &"x".repeat(64),
        ] {
            assert_eq!(LoopToken::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "a b", "a,b", "a(b)", "ä", &"x".repeat(65)] {
            assert!(LoopToken::new(bad).is_err(), "{bad:?}");
        }
    }

    /// Every replica of a cluster derives the same token, whatever the layout of its CA
    /// file; another Lease (another installation) or another CA (another cluster) differs.
    #[test]
    fn a_clusters_replicas_agree_on_the_derived_token() {
        let token = LoopToken::for_cluster(CA.as_bytes(), "portico-system", "portico-leader");
        assert_eq!(token.as_str().len(), 16);
        let crlf = CA.replace('\n', "\r\n");
        assert_eq!(
            LoopToken::for_cluster(crlf.as_bytes(), "portico-system", "portico-leader"),
            token
        );
        assert_eq!(LoopToken::new(token.as_str()).unwrap(), token);
        for other in [
            LoopToken::for_cluster(CA.as_bytes(), "portico-system", "portico-internal"),
            LoopToken::for_cluster(CA.as_bytes(), "portico-systemp", "ortico-leader"),
            LoopToken::for_cluster(b"another CA", "portico-system", "portico-leader"),
        ] {
            assert_ne!(other, token);
        }
        assert_ne!(LoopToken::random(), LoopToken::random());
    }
}
