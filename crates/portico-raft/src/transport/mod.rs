//! Replica-to-replica RPCs: HTTP/2 over mutually authenticated TLS (hyper + rustls).
//!
//! Every RPC is one `POST` whose body is a postcard-encoded request and whose `200` response
//! is a postcard-encoded `Result`. A body that does not decode is answered with `400` and
//! touches nothing else; a body above the size limit with `413`. Each peer gets one
//! multiplexed HTTP/2 connection shared by all of openraft's streams to it, with
//! connect/RPC timeouts, exponential reconnect backoff, and a bound on the request bytes in
//! flight to it (a semaphore of bytes). Raft RPCs carry the target node ID in a header; a
//! replica refuses (`421`) RPCs meant for another ID, so a wiped replica that came back at
//! the same address under a fresh ID never answers for its old identity. Every request and
//! answer carries the sender's incarnation, and Raft RPCs what the sender knows of the
//! target's: a stale copy of a volume is refused (`409`), or finds out and stands down
//! (`410`); see the `incarnation` module.
//!
//! Why HTTP/2 over TCP rather than QUIC: replication is a handful of long-lived peer pairs
//! on a cluster network, where QUIC's strengths (connection migration, 0-RTT, independent
//! loss recovery per stream on lossy paths) buy little; hyper + tokio-rustls is the most
//! exercised stack in the Rust ecosystem and the one the rest of Portico already uses;
//! TCP needs no UDP allowances in NetworkPolicies or cloud firewalls; user-space QUIC costs
//! more CPU per byte on small nodes; and HTTP status codes give clean, testable rejections.
//! The price is TCP head-of-line blocking between a snapshot chunk and a heartbeat on the
//! same connection, bounded by 1 MiB chunks and an election timeout many round trips long.

pub(crate) mod client;
pub(crate) mod network;
pub(crate) mod server;
pub(crate) mod wire;

use std::time::Duration;

/// Limits and timeouts of the transport.
#[derive(Clone, Debug)]
pub struct TransportSettings {
    /// Time allowed to open a TCP connection and finish the TLS handshake.
    pub connect_timeout: Duration,
    /// Timeout for RPCs whose caller gives none (joins, forwarded writes, status).
    pub request_timeout: Duration,
    /// Largest RPC body accepted, in either direction.
    pub max_body_bytes: usize,
    /// Request bytes allowed in flight to one peer at once; further RPCs wait.
    pub max_in_flight_bytes_per_peer: usize,
    /// First reconnect delay after a failed connection; doubles up to `max_backoff`, jittered
    /// (see `backoff`).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 << 20,
            max_in_flight_bytes_per_peer: 32 << 20,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}
