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
        }
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
