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
    /// Answer plain-HTTP requests with a 308 to HTTPS (from `ssl-redirect`, which is on by
    /// default for hosts with TLS, and `force-ssl-redirect`).
    pub redirect_to_https: bool,
}

impl Route {
    /// The request path the backend should see: the rewritten path when `rewrite-target` is
    /// set, otherwise the original path (borrowed). `path` excludes the query string.
    pub fn upstream_path<'p>(&self, path: &'p str) -> Cow<'p, str> {
        let Some(target) = &self.policy.rewrite_target else {
            return Cow::Borrowed(path);
        };
        if let PathMatch::Regex { regex, .. } = &self.path
            && let Some(caps) = regex.captures(path)
        {
            let mut out = String::with_capacity(target.template.len() + path.len());
            caps.expand(&target.template, &mut out);
            if !out.starts_with('/') {
                out.insert(0, '/');
            }
            return Cow::Owned(out);
        }
        Cow::Owned(target.without_captures.clone())
    }
}

/// `rewrite-target`: the whole path is replaced, as nginx's `rewrite` does; `$1`…`$9` are
/// the capture groups of a `use-regex` path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteTarget {
    as_written: String,
    /// In `regex::Captures::expand` syntax: `$1` becomes `${1}` so that `$1abc` stays group 1
    /// followed by `abc`, as in nginx.
    template: String,
    /// The result when there are no captures (a path that is not a regex).
    without_captures: String,
}

impl RewriteTarget {
    pub(crate) fn parse(target: &str) -> Result<Self, String> {
        if target.is_empty() {
            return Err("the rewrite target must not be empty".into());
        }
        let mut template = String::with_capacity(target.len() + 8);
        let mut without_captures = String::with_capacity(target.len());
        let mut chars = target.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('$', Some(d)) if d.is_ascii_digit() => {
                    template.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                ('$', _) => {
                    template.push_str("$$");
                    without_captures.push('$');
                }
                (c, _) => {
                    template.push(c);
                    without_captures.push(c);
                }
            }
        }
        if !without_captures.starts_with('/') {
            without_captures.insert(0, '/');
        }
        Ok(Self {
            as_written: target.to_owned(),
            template,
            without_captures,
        })
    }

    pub fn as_written(&self) -> &str {
        &self.as_written
    }
}

/// How a route's path matches a request path.
#[derive(Clone)]
pub enum PathMatch {
    /// The whole path, case-sensitive.
    Exact(Arc<str>),
    /// Element-wise prefix on `/`; stored without its trailing slash (`/` is stored as ``).
    Prefix(Arc<str>),
    /// `use-regex`: the pattern anchored at the start, case-insensitive (as ingress-nginx).
    /// `literal_len` is how many bytes every match starts with literally: its precedence.
    Regex {
        pattern: Arc<str>,
        regex: Regex,
        literal_len: usize,
    },
}

impl PathMatch {
    /// The precedence length: the path's length with any trailing slash stripped; for a
    /// regex, the length of its literal prefix (`/api/v[0-9]+` ranks as `/api/v`), so a
    /// long pattern cannot outrank the paths it overlaps.
    pub fn precedence_len(&self) -> usize {
        match self {
            PathMatch::Exact(p) => p.strip_suffix('/').unwrap_or(p).len(),
            PathMatch::Prefix(p) => p.len(),
            PathMatch::Regex { literal_len, .. } => *literal_len,
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

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex { pattern: a, .. }, PathMatch::Regex { pattern: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for PathMatch {}

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
    /// `ssl-redirect` as written; unset means "redirect when the host has TLS".
    pub ssl_redirect: Option<bool>,
    /// `force-ssl-redirect`: redirect to HTTPS even when the host has no TLS section.
    pub force_ssl_redirect: bool,
    pub rewrite_target: Option<RewriteTarget>,
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
            ssl_redirect: None,
            force_ssl_redirect: false,
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

impl BackendKey {
    /// The smallest key of a Service, for range scans over its ports.
    pub(crate) fn first_of(service: &ObjectKey) -> Self {
        Self {
            service: service.clone(),
            port: ServicePortRef::Number(0),
        }
    }
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
    /// An `ExternalName` Service while they are not allowed (the default), or one whose
    /// `externalName` is an IP address.
    ExternalNameNotAllowed,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The Pod behind the address, when the EndpointSlice names it.
    pub pod: Option<Arc<str>>,
}
