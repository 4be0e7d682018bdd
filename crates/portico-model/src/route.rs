//! What the data plane reads: routes, their per-route policy, and resolved backends.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;

use crate::key::ObjectKey;

/// One path of one Ingress rule, compiled.
#[derive(Clone, Debug)]
pub struct Route {
    /// The Ingress that wrote this route.
    pub ingress: ObjectKey,
    /// The rule's host as written (`None`: any host).
    pub host: Option<Arc<str>>,
    pub path: PathMatch,
    pub backend: BackendKey,
    pub policy: Arc<RoutePolicy>,
}

impl Route {
    /// The request path the backend should see: the rewritten path when `rewrite-target` is
    /// set, otherwise the original path (borrowed). `path` excludes the query string.
    pub fn upstream_path<'p>(&self, path: &'p str) -> Cow<'p, str> {
        let Some(target) = &self.policy.rewrite_target else {
            return Cow::Borrowed(path);
        };
        let mut out = String::with_capacity(target.len() + 8);
        match &self.path {
            PathMatch::Regex { regex, .. } => match regex.captures(path) {
                Some(caps) => caps.expand(target, &mut out),
                None => expand_without_captures(target, &mut out),
            },
            _ => expand_without_captures(target, &mut out),
        }
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        Cow::Owned(out)
    }
}

/// `$1`…`$9` and `${name}` become empty when there is no regex to capture them.
fn expand_without_captures(target: &str, out: &mut String) {
    let empty = Regex::new("^").expect("static regex");
    let caps = empty.captures("").expect("matches the empty string");
    caps.expand(target, out);
}

/// How a route's path matches a request path.
#[derive(Clone)]
pub enum PathMatch {
    /// The whole path, case-sensitive.
    Exact(Arc<str>),
    /// Element-wise prefix on `/`; stored without its trailing slash (`/` is stored as ``).
    Prefix(Arc<str>),
    /// `use-regex`: the pattern anchored at the start, case-insensitive (as ingress-nginx).
    Regex { pattern: Arc<str>, regex: Regex },
}

impl PathMatch {
    /// The precedence length: the path's length with any trailing slash stripped.
    pub fn precedence_len(&self) -> usize {
        match self {
            PathMatch::Exact(p) => p.strip_suffix('/').unwrap_or(p).len(),
            PathMatch::Prefix(p) => p.len(),
            PathMatch::Regex { pattern, .. } => pattern.len(),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => **p == *path,
            PathMatch::Prefix(p) => crate::path::prefix_matches(p, path),
            PathMatch::Regex { regex, .. } => regex.is_match(path),
        }
    }
}

impl fmt::Debug for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(p) => write!(f, "Exact:{p}"),
            PathMatch::Prefix(p) if p.is_empty() => f.write_str("Prefix:/"),
            PathMatch::Prefix(p) => write!(f, "Prefix:{p}"),
            PathMatch::Regex { pattern, .. } => write!(f, "Regex:{pattern}"),
        }
    }
}

/// Per-route behaviour from the Ingress's annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePolicy {
    /// Redirect plain-HTTP requests to HTTPS with 308.
    pub ssl_redirect: bool,
    /// `rewrite-target`: the path template the backend sees (`$1`…`$9` from the path regex).
    pub rewrite_target: Option<String>,
    pub backend_protocol: BackendProtocol,
    /// `proxy-body-size`; `None` means unlimited (`0`).
    pub max_body_bytes: Option<u64>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    /// `whitelist-source-range`; `None` means every source is allowed.
    pub allowed_sources: Option<Vec<IpNet>>,
    pub affinity: Option<CookieAffinity>,
}

impl RoutePolicy {
    /// Whether a client at `ip` may use this route.
    pub fn allows_source(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match &self.allowed_sources {
            None => true,
            Some(nets) => nets.iter().any(|net| net.contains(&ip)),
        }
    }
}

impl Default for RoutePolicy {
    /// ingress-nginx's defaults: 1 MiB bodies, 5 s connect, 60 s read and send.
    fn default() -> Self {
        Self {
            ssl_redirect: false,
            rewrite_target: None,
            backend_protocol: BackendProtocol::Http,
            max_body_bytes: Some(1024 * 1024),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            allowed_sources: None,
            affinity: None,
        }
    }
}

/// `backend-protocol`: how the proxy talks to the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendProtocol {
    /// HTTP/1.1 over TCP.
    #[default]
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS.
    Grpcs,
    /// HTTP/2 with prior knowledge over TCP (`GRPC` and `H2C`).
    H2c,
}

/// `affinity: cookie`: requests carrying the cookie stick to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAffinity {
    pub cookie_name: String,
}

/// Names one Service port, as an Ingress backend does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub service: ObjectKey,
    pub port: ServicePortRef,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServicePortRef {
    Number(u16),
    Name(Arc<str>),
}

impl fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicePortRef::Number(n) => write!(f, "{n}"),
            ServicePortRef::Name(n) => f.write_str(n),
        }
    }
}

/// A Service port resolved to where requests go.
#[derive(Debug)]
pub struct Backend {
    pub key: BackendKey,
    pub target: BackendTarget,
    cursor: AtomicUsize,
}

impl Backend {
    pub fn new(key: BackendKey, target: BackendTarget) -> Self {
        Self {
            key,
            target,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next endpoint in round-robin order; `None` when there is none.
    pub fn next_endpoint(&self) -> Option<&Endpoint> {
        match &self.target {
            BackendTarget::Endpoints(endpoints) if !endpoints.is_empty() => {
                let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
                Some(&endpoints[turn % endpoints.len()])
            }
            _ => None,
        }
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        match &self.target {
            BackendTarget::Endpoints(endpoints) => endpoints,
            _ => &[],
        }
    }
}

impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.target == other.target
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendTarget {
    /// Ready endpoints (or, when none is ready, serving ones that are terminating).
    /// Empty means the Service exists but nothing can take requests: 503.
    Endpoints(Arc<[Endpoint]>),
    /// An `ExternalName` Service: connect to this DNS name.
    ExternalName { host: Arc<str>, port: u16 },
    /// The Service or its port does not exist: 503.
    Unavailable(Unavailable),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    ServiceNotFound,
    PortNotFound,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The Pod behind the address, when the EndpointSlice names it.
    pub pod: Option<Arc<str>>,
}
