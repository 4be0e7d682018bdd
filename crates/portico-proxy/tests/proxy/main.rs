//! The data plane over real sockets, driven by clients we did not write: curl, nghttp2's
//! h2load and nghttp, tokio-tungstenite, and aioquic/httpx/h2 from the venv.
//! Run `tests/setup` first to install them.

mod common;
mod h3;
mod hostile;
mod http1_connection;
mod http1_http2;
mod observe;
mod policy;
mod standalone;
mod upstream;
mod upstream_hostile;
