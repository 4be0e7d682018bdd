//! Attack tests for the data plane, one module per finding of the security review
//! (`../shared/reviews/security.md`): each shows the attack over real sockets, with clients
//! we did not write (curl, nghttp2, Python's h2 and aioquic), and that it now fails.
//! Run `tests/setup` first to install them.

// The proxy tests' support (echo backends, manifests, the proxy under test, client runners);
// this target uses only part of it.
#[allow(dead_code)]
#[path = "../proxy/common.rs"]
mod common;

mod chunk_size_strictness;
mod h2_external_name;
mod h2_request_loop;
mod h4_path_normalisation;
mod h5_connection_limits;
mod h5_http3;
mod h5_idle_and_send_timeouts;
mod h5_memory_bound;
mod h5_quic_retry;
mod h5_refused_body_drains;
mod l1_forwarding_headers;
mod l3_upstream_authority;
mod m1_host_authority;
// A raw HTTP/2 client for the H5 tests.
mod raw_h2;
