//! Connections to backends: pooled keep-alive clients per protocol, endpoint choice
//! (round-robin, cookie affinity) and passive ejection of failing endpoints.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portico_model::{Backend, BackendProtocol, Endpoint};

use crate::body::ProxyBody;
use crate::pool::{H1Pool, PoolError, UpstreamBody};
use crate::tls::upstream_client_config;

type Connector = HttpConnector<GuardedResolver>;
type PlainClient = Client<Connector, ProxyBody>;
type TlsClient = Client<HttpsConnector<Connector>, ProxyBody>;

/// A pooled client for one backend protocol and connect timeout.
#[derive(Clone)]
pub(crate) enum UpstreamClient {
    Plain(PlainClient),
    Tls(TlsClient),
}

impl UpstreamClient {
    pub(crate) async fn request(
        &self,
        req: http::Request<ProxyBody>,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let resp = match self {
            UpstreamClient::Plain(c) => c.request(req).await?,
            UpstreamClient::Tls(c) => c.request(req).await?,
        };
        Ok(resp.map(UpstreamBody::unpooled))
    }
}

/// Why an upstream request failed, from either client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Legacy(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// Not one byte of the request was sent: another endpoint may be tried.
    pub(crate) fn nothing_sent(&self) -> bool {
        match self {
            UpstreamError::Pool(e) => e.nothing_sent(),
            UpstreamError::Legacy(e) => e.is_connect(),
        }
    }
}

/// How long an idle upstream connection is kept (nginx's `keepalive_timeout` default is 60 s).
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Plain HTTP/1.1 to an endpoint address (the common case) goes through our own pool
/// (`pool`); TLS, HTTP/2 and ExternalName upstreams through hyper-util's pooled clients,
/// made on first use per (protocol, connect timeout) and then shared, so each keeps one
/// keep-alive pool per endpoint.
pub(crate) struct Clients {
    pub(crate) h1: H1Pool,
    clients: RwLock<HashMap<(BackendProtocol, Duration), UpstreamClient>>,
}

impl Default for Clients {
    fn default() -> Self {
        Self {
            h1: H1Pool::new(UPSTREAM_IDLE_TIMEOUT),
            clients: RwLock::default(),
        }
    }
}

impl Clients {
    pub(crate) fn get(
        &self,
        protocol: BackendProtocol,
        connect_timeout: Duration,
    ) -> UpstreamClient {
        let key = (protocol, connect_timeout);
        if let Some(client) = self.clients.read().ok().and_then(|m| m.get(&key).cloned()) {
            return client;
        }
        let client = build_client(protocol, connect_timeout);
        if let Ok(mut map) = self.clients.write() {
            return map.entry(key).or_insert(client).clone();
        }
        client
    }
}

fn build_client(protocol: BackendProtocol, connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver::default());
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
        .pool_max_idle_per_host(1024);
    match protocol {
        BackendProtocol::Http => UpstreamClient::Plain(builder.build(http)),
        BackendProtocol::H2c => UpstreamClient::Plain(builder.http2_only(true).build(http)),
        BackendProtocol::Https => {
            let tls = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(upstream_client_config())
                .https_only()
                .enable_http1()
                .wrap_connector(http);
            UpstreamClient::Tls(builder.build(tls))
        }
        BackendProtocol::Grpcs => {
            let tls = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(upstream_client_config())
                .https_only()
                .enable_http2()
                .wrap_connector(http);
            UpstreamClient::Tls(builder.http2_only(true).build(tls))
        }
    }
}

/// The resolver of the pooled clients. Only `ExternalName` Services reach it: endpoints are
/// IP addresses, which hyper-util connects to without resolving (and the model refuses an
/// IP-literal `externalName`). A name that resolves to an address a tenant must not reach
/// through the proxy (`forbidden`) is refused before any connection is made: the request
/// gets a 502 and a warning is logged. Every address is checked, so a name mixing a public
/// address with a forbidden one is refused too.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    inner: GaiResolver,
    /// The API server's Service address, from `KUBERNETES_SERVICE_HOST` (set in every pod).
    api_server: Option<IpAddr>,
}

impl Default for GuardedResolver {
    fn default() -> Self {
        Self {
            inner: GaiResolver::new(),
            api_server: std::env::var("KUBERNETES_SERVICE_HOST")
                .ok()
                .and_then(|h| h.trim_matches(|c| c == '[' || c == ']').parse().ok()),
        }
    }
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let api_server = self.api_server;
        let host = name.as_str().to_owned();
        let resolving = tower_service::Service::call(&mut self.inner, name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolving.await?.collect();
            if let Some(why) = addrs.iter().find_map(|a| forbidden(a.ip(), api_server)) {
                tracing::warn!(%host, %why, "ExternalName refused: it resolves to an address the proxy must not reach");
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("ExternalName {host} resolves to {why}"),
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Why a tenant's `ExternalName` must not lead to `ip`: this host (loopback, any address of
/// this pod, where the admin port listens), link-local (cloud metadata at 169.254.169.254),
/// unspecified, broadcast or multicast, or the API server.
fn forbidden(ip: IpAddr, api_server: Option<IpAddr>) -> Option<String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let what = match ip {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_multicast() => "a multicast address",
        IpAddr::V4(v4) if v4.is_link_local() => "a link-local address",
        IpAddr::V4(v4) if v4.is_broadcast() || v4.octets()[0] == 0 => "a reserved address",
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => "a link-local address",
        _ if Some(ip) == api_server => "the API server",
        // Binding succeeds only for an address of one of this host's interfaces.
        _ if std::net::UdpSocket::bind((ip, 0)).is_ok() => "an address of this pod",
        _ => return None,
    };
    Some(format!("{ip} ({what})"))
}

/// Passive health: endpoints that fail are skipped for a while, doubling each time in a row.
#[derive(Default)]
pub(crate) struct Health {
    ejected: Mutex<HashMap<SocketAddr, Ejection>>,
    /// How many entries `ejected` holds, so the common case never takes the lock.
    len: AtomicUsize,
}

struct Ejection {
    until: Instant,
    strikes: u32,
}

const BASE_EJECTION: Duration = Duration::from_secs(1);
const MAX_EJECTION: Duration = Duration::from_secs(30);

impl Health {
    pub(crate) fn is_ejected(&self, addr: SocketAddr) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let Ok(map) = self.ejected.lock() else {
            return false;
        };
        map.get(&addr).is_some_and(|e| e.until > Instant::now())
    }

    pub(crate) fn failure(&self, addr: SocketAddr) {
        let Ok(mut map) = self.ejected.lock() else {
            return;
        };
        let entry = map.entry(addr).or_insert(Ejection {
            until: Instant::now(),
            strikes: 0,
        });
        entry.strikes = entry.strikes.saturating_add(1);
        let backoff = BASE_EJECTION
            .saturating_mul(1 << entry.strikes.saturating_sub(1).min(5))
            .min(MAX_EJECTION);
        entry.until = Instant::now() + backoff;
        self.len.store(map.len(), Ordering::Relaxed);
    }

    pub(crate) fn success(&self, addr: SocketAddr) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Ok(mut map) = self.ejected.lock() else {
            return;
        };
        map.remove(&addr);
        self.len.store(map.len(), Ordering::Relaxed);
    }
}

/// The endpoint for one attempt: the affinity endpoint if it is usable, otherwise the next in
/// round-robin order that is neither ejected nor already tried. If every endpoint is ejected,
/// one that was not tried is used anyway: a guess beats a certain 503.
pub(crate) fn pick<'b>(
    backend: &'b Backend,
    health: &Health,
    tried: &[SocketAddr],
    sticky: Option<SocketAddr>,
) -> Option<&'b Endpoint> {
    let endpoints = backend.endpoints();
    if let Some(addr) = sticky
        && !tried.contains(&addr)
        && !health.is_ejected(addr)
        && let Some(ep) = endpoints.iter().find(|e| e.addr == addr)
    {
        return Some(ep);
    }
    let mut fallback = None;
    for _ in 0..endpoints.len() {
        let ep = backend.next_endpoint()?;
        if tried.contains(&ep.addr) {
            continue;
        }
        if !health.is_ejected(ep.addr) {
            return Some(ep);
        }
        fallback.get_or_insert(ep);
    }
    fallback
}

/// The affinity cookie's value for an endpoint: a stable hash of its address, so every
/// replica maps the same cookie to the same Pod.
pub(crate) fn affinity_token(addr: SocketAddr) -> String {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.to_string().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

pub(crate) fn endpoint_for_token(backend: &Backend, token: &str) -> Option<SocketAddr> {
    backend
        .endpoints()
        .iter()
        .map(|e| e.addr)
        .find(|addr| affinity_token(*addr) == token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_a_tenant_must_not_reach_are_forbidden() {
        let api = Some("10.96.0.1".parse().unwrap());
        for ip in [
            "127.0.0.1",
            "127.5.6.7",
            "::1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "10.96.0.1",
        ] {
            assert!(forbidden(ip.parse().unwrap(), api).is_some(), "{ip}");
        }
        for ip in ["10.1.2.3", "192.0.2.10", "2001:db8::1", "8.8.8.8"] {
            assert!(forbidden(ip.parse().unwrap(), api).is_none(), "{ip}");
        }
    }

    #[test]
    fn this_hosts_own_addresses_are_forbidden() {
        // A UDP "connection" picks the address this host sends from: one of its own.
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        if probe.connect("192.0.2.1:9").is_ok() {
            let own = probe.local_addr().unwrap().ip();
            assert!(forbidden(own, None).is_some(), "{own}");
        }
    }

    /// `externalName: localhost` with Portico's admin port: the name is refused before any
    /// connection is made, and the request fails (the handler's 502).
    #[tokio::test]
    async fn an_external_name_resolving_to_this_host_is_never_connected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for protocol in [BackendProtocol::Http, BackendProtocol::Https] {
            let scheme = if protocol == BackendProtocol::Http {
                "http"
            } else {
                "https"
            };
            let client = build_client(protocol, Duration::from_secs(2));
            let request = http::Request::get(format!("{scheme}://localhost:{port}/debug/routes"))
                .body(crate::body::empty())
                .unwrap();
            let err = match client.request(request).await {
                Err(e) => e,
                Ok(resp) => panic!("{protocol:?}: answered {}", resp.status()),
            };
            assert!(err.nothing_sent(), "{protocol:?}: {err:?}");
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "no connection reached the listener");
    }

    #[test]
    fn ejection_backs_off_and_clears() {
        let health = Health::default();
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(!health.is_ejected(addr));
        health.failure(addr);
        assert!(health.is_ejected(addr));
        health.success(addr);
        assert!(!health.is_ejected(addr));
    }

    fn backend(addrs: &[&str]) -> Backend {
        use portico_model::{BackendKey, BackendTarget, ObjectKey, ServicePortRef};
        let endpoints: Vec<Endpoint> = addrs
            .iter()
            .map(|a| Endpoint {
                addr: a.parse().unwrap(),
                pod: None,
            })
            .collect();
        Backend::new(
            BackendKey {
                service: ObjectKey::new("default", "svc"),
                port: ServicePortRef::Number(80),
            },
            BackendTarget::Endpoints(endpoints.into()),
        )
    }

    #[test]
    fn pick_round_robins_and_skips_ejected_and_tried() {
        let b = backend(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let health = Health::default();
        let first: Vec<SocketAddr> = (0..6)
            .map(|_| pick(&b, &health, &[], None).unwrap().addr)
            .collect();
        assert_eq!(
            first[..3]
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
        assert_eq!(first[..3], first[3..]);
        let ejected: SocketAddr = "10.0.0.2:80".parse().unwrap();
        health.failure(ejected);
        for _ in 0..6 {
            assert_ne!(pick(&b, &health, &[], None).unwrap().addr, ejected);
        }
        let tried: SocketAddr = "10.0.0.1:80".parse().unwrap();
        for _ in 0..6 {
            assert_eq!(
                pick(&b, &health, &[tried], None).unwrap().addr,
                "10.0.0.3:80".parse().unwrap()
            );
        }
        // Everything else tried or ejected: the ejected one is still better than nothing.
        let all_tried = [
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.3:80".parse().unwrap(),
        ];
        assert_eq!(pick(&b, &health, &all_tried, None).unwrap().addr, ejected);
        let everyone = [all_tried[0], all_tried[1], ejected];
        assert!(pick(&b, &health, &everyone, None).is_none());
    }

    #[test]
    fn pick_prefers_the_sticky_endpoint_unless_ejected() {
        let b = backend(&["10.0.0.1:80", "10.0.0.2:80"]);
        let health = Health::default();
        let sticky: SocketAddr = "10.0.0.2:80".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(pick(&b, &health, &[], Some(sticky)).unwrap().addr, sticky);
        }
        assert_eq!(
            endpoint_for_token(&b, &affinity_token(sticky)),
            Some(sticky)
        );
        health.failure(sticky);
        assert_ne!(pick(&b, &health, &[], Some(sticky)).unwrap().addr, sticky);
    }

    #[test]
    fn affinity_tokens_are_stable_and_distinct() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(affinity_token(a), affinity_token(a));
        assert_ne!(affinity_token(a), affinity_token(b));
    }
}
