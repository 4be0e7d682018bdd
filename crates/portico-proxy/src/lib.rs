//! Portico's data plane.
//!
//! A [`Proxy`] serves whatever [`RoutingTable`] it was last handed, over plain HTTP
//! (HTTP/1.1 and h2c), TLS (HTTP/1.1 and HTTP/2) and QUIC (HTTP/3). The table lives in an
//! [`ArcSwap`]: every request loads the current one once and keeps it to the end, so a swap
//! is atomic, never blocks, and never disturbs requests or connections already open.
//!
//! Modules, in the order a request meets them:
//! - `tcp` / `quic`: listeners, accept loops, per-connection limits and drain;
//! - `limits`: connection limits, global and per client; `activity`: what keeps a TCP
//!   connection from being idle, and when a response is stalled by its client;
//! - `h1::server`: the lean HTTP/1.1 loop for plain requests, handing anything else to hyper;
//! - `tls`: the certificate resolver shared by TCP and QUIC, reading the current table;
//! - `request_path`: the canonical request path that routing and policy see;
//! - `handler`: the request's phases: admission, routing, per-route policy, the upstream
//!   head, the response (error pages, WebSockets); `exchange`: the upstream path chosen once
//!   per request, attempts and retries;
//! - `observe`: per-request counters and the optional access log;
//! - `upstream`: backend clients, endpoint choice and passive ejection; `pool`: the
//!   keep-alive pool for plain HTTP/1.1 upstreams, exchanging through `h1::client`;
//! - `headers`, `body`: the header rules of a proxy and streaming body adapters;
//! - `table_file`: a routing table from a YAML manifest, for running standalone.
//!
//! `fuzzing` (hidden) exposes the request head path to the fuzz targets in `fuzz/`.

mod activity;
mod body;
mod config;
mod exchange;
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod h2pool;
mod handler;
mod headers;
mod limits;
mod observe;
mod pool;
mod quic;
mod request_path;
mod send_watch;
pub mod table_file;
mod tcp;
mod tls;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use portico_model::RoutingTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::ProxyBody;
pub use config::{Limits, LoopToken, LoopTokenError, ProxyConfig};
/// The type of [`ProxyConfig::trusted_proxies`].
pub use ipnet::IpNet;
pub use limits::ConnectionsSnapshot;
pub use observe::{
    LATENCY_BUCKETS, LatencySnapshot, MetricsSnapshot, Protocol, RefusedBodiesSnapshot, StatusClass,
};
pub use quic::QuicError;
pub use tls::{TlsError, certified_key_from_pem, generate_default_certificate};

use handler::Shared;
use observe::ProxyMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Quic(#[from] QuicError),
    #[error("cannot bind TCP {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot serve a listener bound already: {0}")]
    Listener(io::Error),
    #[error("listeners were already started")]
    AlreadyStarted,
    #[error("invalid Server header value")]
    ServerName,
}

/// The addresses the listeners actually bound (useful with port 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoundAddrs {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub h3: Vec<SocketAddr>,
}

/// Listeners bound already (e.g. handed over by socket activation), served besides the
/// configured addresses: TCP ones must listen; all are made non-blocking here.
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Vec<std::net::TcpListener>,
    pub https: Vec<std::net::TcpListener>,
    pub h3: Vec<std::net::UdpSocket>,
}

/// One data-plane instance: its listeners, its current table and its upstream pools.
pub struct Proxy {
    config: ProxyConfig,
    shared: Arc<Shared>,
    tls: tls::ServerConfigs,
    draining: CancellationToken,
    connections: TaskTracker,
    quic_endpoints: Vec<quinn::Endpoint>,
    bound: Option<BoundAddrs>,
}

impl Proxy {
    /// Prepares a proxy serving `table`; nothing is bound until [`Proxy::spawn_listeners`].
    pub fn new(config: ProxyConfig, table: Arc<RoutingTable>) -> Result<Self, ProxyError> {
        let fallback = match &config.default_certificate {
            Some(cert) => cert.clone(),
            None => tls::generate_default_certificate()?,
        };
        let table = Arc::new(ArcSwap::new(table));
        let resolver = Arc::new(tls::TableCertResolver::new(table.clone(), fallback));
        let tls = tls::server_configs(resolver, config.session_resumption)?;
        let server_header =
            HeaderValue::from_str(&config.server_name).map_err(|_| ProxyError::ServerName)?;
        let shared = Arc::new(Shared {
            table,
            clients: upstream::Clients::new(&config.external_name_deny),
            health: Default::default(),
            server_header,
            alt_svc: OnceLock::new(),
            tunnels: TaskTracker::new(),
            force: CancellationToken::new(),
            metrics: Arc::default(),
            access_log: config.access_log,
            trusted_proxies: config.trusted_proxies.clone(),
            forward_original_path: config.forward_original_path,
            hop: headers::HopMarker::new(&config.loop_token),
        });
        Ok(Self {
            config,
            shared,
            tls,
            draining: CancellationToken::new(),
            connections: TaskTracker::new(),
            quic_endpoints: Vec::new(),
            bound: None,
        })
    }

    /// Binds every configured listener and spawns its accept loop on the current Tokio
    /// runtime. QUIC is bound first so TCP responses can advertise it from the start.
    pub fn spawn_listeners(&mut self) -> Result<BoundAddrs, ProxyError> {
        self.spawn_listeners_with(Listeners::default())
    }

    /// [`Proxy::spawn_listeners`], serving `ready` (bound already, listed first in the
    /// addresses returned) as well as the configured addresses.
    pub fn spawn_listeners_with(&mut self, ready: Listeners) -> Result<BoundAddrs, ProxyError> {
        if self.bound.is_some() {
            return Err(ProxyError::AlreadyStarted);
        }
        let limits = &self.config.limits;
        let mut bound = BoundAddrs::default();
        let mut tcp_listeners = Vec::new();
        for socket in ready.h3 {
            socket.set_nonblocking(true).map_err(ProxyError::Listener)?;
            let endpoint = quic::endpoint(socket, self.tls.quic.clone(), limits)?;
            bound
                .h3
                .push(endpoint.local_addr().map_err(ProxyError::Listener)?);
            self.quic_endpoints.push(endpoint);
        }
        for (listeners, tls, out) in [
            (ready.http, None, &mut bound.http),
            (ready.https, Some(self.tls.tcp.clone()), &mut bound.https),
        ] {
            for listener in listeners {
                listener
                    .set_nonblocking(true)
                    .map_err(ProxyError::Listener)?;
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(ProxyError::Listener)?;
                out.push(listener.local_addr().map_err(ProxyError::Listener)?);
                tcp_listeners.push((listener, tls.clone()));
            }
        }
        for &addr in &self.config.h3 {
            let endpoint = quic::bind(addr, self.tls.quic.clone(), limits)?;
            let local = endpoint
                .local_addr()
                .map_err(|source| QuicError::Bind { addr, source })?;
            bound.h3.push(local);
            self.quic_endpoints.push(endpoint);
        }
        for (addrs, tls, out) in [
            (&self.config.http, None, &mut bound.http),
            (
                &self.config.https,
                Some(self.tls.tcp.clone()),
                &mut bound.https,
            ),
        ] {
            for &addr in addrs {
                let listener =
                    tcp::bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
                let local = listener
                    .local_addr()
                    .map_err(|source| ProxyError::Bind { addr, source })?;
                out.push(local);
                tcp_listeners.push((listener, tls.clone()));
            }
        }
        if let Some(port) = self
            .config
            .alt_svc_port
            .or_else(|| bound.h3.first().map(|a| a.port()))
        {
            let value = format!("h3=\":{port}\"; ma=86400");
            let _ = self
                .shared
                .alt_svc
                .set(HeaderValue::from_str(&value).expect("digits and quotes"));
        }
        let builder = Arc::new(tcp::http_builder(limits));
        // One count for every listener: the limits are the process's, not a port's.
        let conns = Arc::new(limits::ConnLimits::new(
            limits.max_connections,
            limits.max_connections_per_ip,
            self.shared.metrics.connections.clone(),
        ));
        for (listener, tls) in tcp_listeners {
            let serve = Arc::new(tcp::Serve {
                shared: self.shared.clone(),
                tls: tls.map(tokio_rustls::TlsAcceptor::from),
                builder: builder.clone(),
                limits: limits.clone(),
                draining: self.draining.clone(),
                connections: self.connections.clone(),
                conns: conns.clone(),
            });
            self.connections.spawn(tcp::accept_loop(listener, serve));
        }
        for endpoint in &self.quic_endpoints {
            let serve = Arc::new(quic::ServeQuic {
                shared: self.shared.clone(),
                limits: limits.clone(),
                draining: self.draining.clone(),
                connections: self.connections.clone(),
                conns: conns.clone(),
                handshakes: Default::default(),
            });
            self.connections
                .spawn(quic::accept_loop(endpoint.clone(), serve));
        }
        self.bound = Some(bound.clone());
        Ok(bound)
    }

    /// The addresses bound by [`Proxy::spawn_listeners`].
    pub fn local_addrs(&self) -> Option<&BoundAddrs> {
        self.bound.as_ref()
    }

    /// Makes `table` the one every new request uses. Requests in flight keep the table they
    /// started with; connections, upgraded tunnels and TLS sessions are untouched.
    pub fn swap_table(&self, table: Arc<RoutingTable>) {
        self.shared.table.store(table);
    }

    /// The table new requests are routed with.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.shared.table.load_full()
    }

    /// The data plane's request counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// A handle for reading the counters from elsewhere (e.g. a metrics collector).
    pub fn metrics_handle(&self) -> MetricsHandle {
        MetricsHandle(self.shared.metrics.clone())
    }

    /// A handle for swapping tables from elsewhere (e.g. the replication task).
    pub fn table_handle(&self) -> TableHandle {
        TableHandle(self.shared.table.clone())
    }

    /// Graceful drain: stop accepting, ask every connection to finish (HTTP/1.1 closes after
    /// the response in flight, HTTP/2 and HTTP/3 send GOAWAY), wait up to `deadline`, then
    /// drop whatever is left, WebSocket tunnels included.
    pub async fn shutdown(mut self, deadline: Duration) {
        self.draining.cancel();
        self.connections.close();
        self.shared.tunnels.close();
        let drained = async {
            self.connections.wait().await;
            self.shared.tunnels.wait().await;
        };
        if tokio::time::timeout(deadline, drained).await.is_err() {
            tracing::info!("drain deadline reached; closing the remaining connections");
        }
        self.shared.force.cancel();
        for endpoint in self.quic_endpoints.drain(..) {
            endpoint.close(quinn::VarInt::from_u32(0x100), b"shutdown");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.connections.wait()).await;
    }
}

/// Swaps the table of a running [`Proxy`]; cheap to clone.
#[derive(Clone)]
pub struct TableHandle(Arc<ArcSwap<RoutingTable>>);

impl TableHandle {
    pub fn swap(&self, table: Arc<RoutingTable>) {
        self.0.store(table);
    }

    pub fn current(&self) -> Arc<RoutingTable> {
        self.0.load_full()
    }
}

/// Reads the counters of a running [`Proxy`]; cheap to clone.
#[derive(Clone)]
pub struct MetricsHandle(Arc<ProxyMetrics>);

impl MetricsHandle {
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.0.snapshot()
    }
}

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHandle").finish_non_exhaustive()
    }
}
