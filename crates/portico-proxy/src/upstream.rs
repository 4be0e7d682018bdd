//! Connections to backends: pooled keep-alive clients per protocol, endpoint choice
//! (round-robin, cookie affinity) and passive ejection of failing endpoints.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;
use portico_model::{Backend, Endpoint};

use crate::body::ProxyBody;
use crate::h2pool::{H2Error, H2Pool};
use crate::pool::{H1Pool, PoolError, UpstreamBody};
use crate::tls::upstream_client_config;

pub(crate) type Connector = HttpConnector<GuardedResolver>;
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
    #[error(transparent)]
    H2(#[from] H2Error),
}

impl UpstreamError {
    /// Not one byte of the request was sent: another endpoint may be tried.
    pub(crate) fn nothing_sent(&self) -> bool {
        match self {
            UpstreamError::Pool(e) => e.nothing_sent(),
            UpstreamError::Legacy(e) => e.is_connect(),
            UpstreamError::H2(e) => e.nothing_sent(),
        }
    }
}

/// How long an idle upstream connection is kept (nginx's `keepalive_timeout` default is 60 s).
pub(crate) const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Plain HTTP/1.1 to an endpoint address (the common case) goes through our own pool
/// (`pool`); HTTP/2 (h2c, gRPC over TLS) through `h2pool`, which sends the routed
/// authority; HTTPS and plain ExternalName upstreams through hyper-util's pooled clients,
/// made on first use per (TLS or not, connect timeout) and then shared, so each keeps one
/// keep-alive pool per endpoint.
pub(crate) struct Clients {
    pub(crate) h1: H1Pool,
    pub(crate) h2: H2Pool,
    clients: RwLock<HashMap<(bool, Duration), Arc<UpstreamClient>>>,
    /// Ranges `ExternalName` Services may not resolve into (`ProxyConfig::external_name_deny`).
    external_name_deny: Arc<[IpNet]>,
}

impl Clients {
    pub(crate) fn new(external_name_deny: &[IpNet]) -> Self {
        let external_name_deny: Arc<[IpNet]> = external_name_deny.into();
        Self {
            h1: H1Pool::new(UPSTREAM_IDLE_TIMEOUT),
            h2: H2Pool::new(external_name_deny.clone()),
            clients: RwLock::default(),
            external_name_deny,
        }
    }

    /// hyper-util's HTTP/1.1 client, over TLS (`tls`) or not (shared: a clone is a count).
    pub(crate) fn get(&self, tls: bool, connect_timeout: Duration) -> Arc<UpstreamClient> {
        let key = (tls, connect_timeout);
        if let Some(client) = self.clients.read().ok().and_then(|m| m.get(&key).cloned()) {
            return client;
        }
        let client = Arc::new(build_client(tls, connect_timeout, &self.external_name_deny));
        if let Ok(mut map) = self.clients.write() {
            return map.entry(key).or_insert(client).clone();
        }
        client
    }
}

fn build_client(tls: bool, connect_timeout: Duration, deny: &Arc<[IpNet]>) -> UpstreamClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
        .pool_max_idle_per_host(1024);
    let http = connector(connect_timeout, deny);
    if !tls {
        return UpstreamClient::Plain(builder.build(http));
    }
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(upstream_client_config())
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    UpstreamClient::Tls(builder.build(tls))
}

/// TCP to an endpoint address, or to an ExternalName through [`GuardedResolver`].
pub(crate) fn connector(connect_timeout: Duration, deny: &Arc<[IpNet]>) -> Connector {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(deny.clone()));
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    http
}

/// TLS offering only ALPN h2, over [`connector`] (GRPCS).
pub(crate) fn h2_tls_connector(
    connect_timeout: Duration,
    deny: &Arc<[IpNet]>,
) -> HttpsConnector<Connector> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(upstream_client_config())
        .https_only()
        .enable_http2()
        .wrap_connector(connector(connect_timeout, deny))
}

/// The resolver of the pooled clients. Only `ExternalName` Services reach it: endpoints are
/// IP addresses, which hyper-util connects to without resolving (and the model refuses an
/// IP-literal `externalName`). A name that resolves to an address a tenant must not reach
/// through the proxy (`forbidden`) is refused before any connection is made: the request
/// gets a 502 and a warning is logged. Every address is checked, so a name mixing a public
/// address with a forbidden one is refused too. `R` is the system resolver except in tests.
#[derive(Clone)]
pub(crate) struct GuardedResolver<R = GaiResolver> {
    inner: R,
    /// The API server's Service address, from `KUBERNETES_SERVICE_HOST` (set in every pod).
    api_server: Option<IpAddr>,
    /// Further ranges refused (the cluster's Pod and Service CIDRs, when configured).
    deny: Arc<[IpNet]>,
}

impl GuardedResolver {
    fn new(deny: Arc<[IpNet]>) -> Self {
        GuardedResolver::with_resolver(GaiResolver::new(), deny)
    }
}

impl<R> GuardedResolver<R> {
    fn with_resolver(inner: R, deny: Arc<[IpNet]>) -> Self {
        Self {
            inner,
            api_server: std::env::var("KUBERNETES_SERVICE_HOST")
                .ok()
                .and_then(|h| h.trim_matches(|c| c == '[' || c == ']').parse().ok()),
            deny,
        }
    }
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl<R> tower_service::Service<Name> for GuardedResolver<R>
where
    R: tower_service::Service<Name, Error = io::Error>,
    R::Response: Iterator<Item = SocketAddr>,
    R::Future: Send + 'static,
{
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let api_server = self.api_server;
        let deny = self.deny.clone();
        let host = name.as_str().to_owned();
        let resolving = self.inner.call(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolving.await?.collect();
            if let Some(why) = addrs
                .iter()
                .find_map(|a| forbidden(a.ip(), api_server, &deny))
            {
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
/// unspecified, broadcast or multicast, the API server, or a range in `deny`.
fn forbidden(ip: IpAddr, api_server: Option<IpAddr>, deny: &[IpNet]) -> Option<String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if let Some(net) = deny.iter().find(|net| net.contains(&ip)) {
        return Some(format!(
            "{ip} (in {net}, a range ExternalName may not reach)"
        ));
    }
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
    use portico_model::BackendProtocol;

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
            assert!(forbidden(ip.parse().unwrap(), api, &[]).is_some(), "{ip}");
        }
        for ip in ["10.1.2.3", "192.0.2.10", "2001:db8::1", "8.8.8.8"] {
            assert!(forbidden(ip.parse().unwrap(), api, &[]).is_none(), "{ip}");
        }
    }

    #[test]
    fn configured_pod_and_service_ranges_are_forbidden() {
        let deny: Vec<IpNet> = vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10::/64".parse().unwrap(),
        ];
        for ip in ["10.244.3.7", "::ffff:10.244.0.1", "fd00:10::5"] {
            let why = forbidden(ip.parse().unwrap(), None, &deny);
            assert!(
                why.is_some_and(|w| w.contains("a range ExternalName may not reach")),
                "{ip}"
            );
        }
        for ip in ["10.96.0.10", "192.0.2.10", "fd00:11::5"] {
            assert!(
                forbidden(ip.parse().unwrap(), None, &deny).is_none(),
                "{ip}"
            );
        }
    }

    /// Resolves every name to the addresses it was given, as DNS would for an
    /// `externalName` a tenant chose (no /etc/hosts entry or DNS server needed).
    #[derive(Clone)]
    struct Fixed(Vec<SocketAddr>);

    impl tower_service::Service<Name> for Fixed {
        type Response = std::vec::IntoIter<SocketAddr>;
        type Error = io::Error;
        type Future = std::future::Ready<io::Result<Self::Response>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Name) -> Self::Future {
            std::future::ready(Ok(self.0.clone().into_iter()))
        }
    }

    async fn resolve(addrs: &[&str], deny: &[&str]) -> io::Result<Vec<SocketAddr>> {
        use std::str::FromStr;
        let addrs = addrs.iter().map(|a| a.parse().unwrap()).collect();
        let deny: Arc<[IpNet]> = deny.iter().map(|n| n.parse().unwrap()).collect();
        let mut resolver = GuardedResolver::with_resolver(Fixed(addrs), deny);
        let name = Name::from_str("backend.other-ns.svc.cluster.local").unwrap();
        tower_service::Service::call(&mut resolver, name)
            .await
            .map(Iterator::collect)
    }

    /// `--external-name-deny-cidr` with the Pod and Service CIDRs: a name that resolves into
    /// them (another namespace's Service or Pod, reached around its NetworkPolicy) is refused
    /// before any connection, even when only one of its addresses is inside.
    #[tokio::test]
    async fn an_external_name_resolving_into_a_denied_range_is_refused() {
        let cidrs = ["10.244.0.0/16", "10.96.0.0/12"];
        for addrs in [
            &["10.96.14.2:80"][..],
            &["10.244.1.5:8080"],
            &["192.0.2.10:80", "10.244.1.5:80"],
        ] {
            let err = resolve(addrs, &cidrs).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{addrs:?}");
            assert!(
                err.to_string()
                    .contains("backend.other-ns.svc.cluster.local"),
                "{err}"
            );
        }
        // Outside the ranges, or with none configured (the default), the name resolves.
        let outside = resolve(&["192.0.2.10:80"], &cidrs).await.unwrap();
        assert_eq!(outside, ["192.0.2.10:80".parse::<SocketAddr>().unwrap()]);
        assert!(resolve(&["10.244.1.5:80"], &[]).await.is_ok());
        // The fixed refusals hold whatever is configured.
        let metadata = resolve(&["169.254.169.254:80"], &[]).await.unwrap_err();
        assert_eq!(metadata.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn this_hosts_own_addresses_are_forbidden() {
        // A UDP "connection" picks the address this host sends from: one of its own.
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        if probe.connect("192.0.2.1:9").is_ok() {
            let own = probe.local_addr().unwrap().ip();
            assert!(forbidden(own, None, &[]).is_some(), "{own}");
        }
    }

    /// `externalName: localhost` with Portico's admin port: the name is refused before any
    /// connection is made, and the request fails (the handler's 502).
    #[tokio::test]
    async fn an_external_name_resolving_to_this_host_is_never_connected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for tls in [false, true] {
            let scheme = if tls { "https" } else { "http" };
            let client = build_client(tls, Duration::from_secs(2), &Arc::from([]));
            let request = http::Request::get(format!("{scheme}://localhost:{port}/debug/routes"))
                .body(crate::body::empty())
                .unwrap();
            let err = match client.request(request).await {
                Err(e) => e,
                Ok(resp) => panic!("{scheme}: answered {}", resp.status()),
            };
            assert!(err.nothing_sent(), "{scheme}: {err:?}");
        }
        // The same through the HTTP/2 pool (GRPC, H2C, GRPCS).
        let h2 = H2Pool::new(Arc::from([]));
        let target = crate::h2pool::Target::External(format!("localhost:{port}").parse().unwrap());
        for protocol in [BackendProtocol::H2c, BackendProtocol::Grpcs] {
            let request = http::Request::get("http://app.test/debug/routes")
                .body(crate::body::empty())
                .unwrap();
            let Err(failure) = h2
                .send(target.clone(), protocol, Duration::from_secs(2), request)
                .await
            else {
                panic!("{protocol:?}: answered");
            };
            let err = UpstreamError::from(failure.error);
            assert!(err.nothing_sent(), "{protocol:?}: {err:?}");
            assert!(
                failure.request.is_some(),
                "the unsent request is handed back"
            );
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
