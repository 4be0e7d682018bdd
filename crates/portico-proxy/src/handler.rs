//! One request, whatever protocol it came in on: route it through the current table, apply
//! the route's policy, forward it to an endpoint and shape the response.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use portico_model::{Backend, BackendProtocol, BackendTarget, Route, RoutingTable};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{self, ClientBodyFault, LimitedBody, ProxyBody, Reclaimable, TimeoutBody};
use crate::headers::{self, Forwarded};
use crate::observe::{self, Observation, Protocol, ProxyMetrics, RequestFacts, Trace};
use crate::pool::UpstreamBody;
use crate::request_path;
use crate::send_watch::{SendWatch, WatchedBody};
use crate::upstream::{self, Clients, Health};

/// State shared by every listener and connection of one proxy.
pub(crate) struct Shared {
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub clients: Clients,
    pub health: Health,
    pub server_header: HeaderValue,
    /// `Alt-Svc` for TCP responses, set once the QUIC listener is bound.
    pub alt_svc: OnceLock<HeaderValue>,
    /// Upgraded (WebSocket) tunnels: they outlive their HTTP connection and any table.
    pub tunnels: TaskTracker,
    /// The drain deadline passed: drop whatever is still open.
    pub force: CancellationToken,
    pub metrics: Arc<ProxyMetrics>,
    /// Emit one `portico::access` event per request.
    pub access_log: bool,
    /// Peers whose forwarding headers are believed (`ProxyConfig::trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `ProxyConfig::forward_original_path`.
    pub forward_original_path: bool,
    /// Our `Via` entry and the loop check (`ProxyConfig::loop_token`).
    pub hop: headers::HopMarker,
}

/// The request target as the client sent it, kept (only with `forward_original_path`)
/// when its path was made canonical.
#[derive(Clone)]
struct OriginalTarget(PathAndQuery);

impl Shared {
    /// Whether `peer` is a trusted proxy whose forwarding headers are believed.
    fn trusts(&self, peer: SocketAddr) -> bool {
        !self.trusted_proxies.is_empty() && {
            let ip = headers::canonical_ip(peer.ip());
            self.trusted_proxies.iter().any(|net| net.contains(&ip))
        }
    }
}

/// How the client reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Plain,
    Tls,
    Quic,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub transport: Transport,
}

/// At most this many endpoints are tried for one request (only when nothing was sent).
const MAX_ATTEMPTS: usize = 3;

pub(crate) async fn handle(
    shared: &Shared,
    conn: ConnInfo,
    req: Request<ProxyBody>,
    upgrade: Option<OnUpgrade>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let protocol = match (conn.transport, req.version()) {
        (Transport::Quic, _) => Protocol::Http3,
        (_, Version::HTTP_2) => Protocol::Http2,
        _ => Protocol::Http1,
    };
    // Only the access log needs these; without it the hot path allocates nothing more.
    let facts = shared.access_log.then(|| RequestFacts {
        method: req.method().clone(),
        host: headers::request_host(req.uri(), req.headers())
            .unwrap_or("-")
            .to_owned(),
        uri: req.uri().clone(),
    });
    let mut trace = Trace {
        enabled: shared.access_log,
        ..Trace::default()
    };
    let mut resp = route_and_forward(shared, conn, req, upgrade, &mut trace).await;
    observe::observe(
        &shared.metrics,
        Observation {
            protocol,
            status: resp.status(),
            elapsed: start.elapsed(),
            client: conn.peer,
            facts: facts.as_ref(),
            trace: &trace,
        },
    );
    let headers = resp.headers_mut();
    headers::add_response_defaults(headers, &shared.server_header);
    if conn.transport != Transport::Quic
        && let Some(alt_svc) = shared.alt_svc.get()
    {
        headers
            .entry(header::ALT_SVC)
            .or_insert_with(|| alt_svc.clone());
    }
    resp
}

async fn route_and_forward(
    shared: &Shared,
    conn: ConnInfo,
    mut req: Request<ProxyBody>,
    upgrade: Option<OnUpgrade>,
    trace: &mut Trace,
) -> Response<ProxyBody> {
    // Already forwarded by this cluster: a backend leads back to us (finding H2, loops).
    if shared.hop.seen_in(req.headers()) {
        return error(StatusCode::LOOP_DETECTED, "request loop through this proxy");
    }
    if let Some(rejection) = malformed(&req) {
        return rejection;
    }
    if req.method() == Method::CONNECT {
        return error(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported");
    }
    // Routing, policy and the upstream all see the canonical path (finding H4).
    match request_path::normalize(req.uri().path()) {
        Ok(Cow::Borrowed(_)) => {}
        Ok(Cow::Owned(path)) => match with_path(req.uri(), &path) {
            Some(uri) => {
                if shared.forward_original_path
                    && let Some(original) = req.uri().path_and_query().cloned()
                {
                    req.extensions_mut().insert(OriginalTarget(original));
                }
                *req.uri_mut() = uri;
            }
            None => return error(StatusCode::BAD_REQUEST, "invalid request target"),
        },
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
    let request_host = headers::RequestHost::of(req.uri(), req.headers());
    let host = request_host.as_str();
    let table = shared.table.load_full();
    let Some(route) = table.lookup(host, &request_path::without_params(req.uri().path())) else {
        return error(StatusCode::NOT_FOUND, "no route for this host and path");
    };
    if trace.enabled {
        trace.ingress = Some(route.ingress.clone());
    }
    let policy = &route.policy;
    if !policy.allows_source(conn.peer.ip()) {
        return error(StatusCode::FORBIDDEN, "source address not allowed");
    }
    if conn.transport == Transport::Plain && route.redirect_to_https {
        return redirect_to_https(host, req.uri());
    }
    if let Some(limit) = policy.max_body_bytes
        && declared_length(&req).is_some_and(|len| len > limit)
    {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let Some(backend) = table.backend(&route.backend) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no such backend");
    };
    // Boxed: hyper keeps room for the whole request future in every connection, idle or
    // not; the forwarding state (the largest part) is only allocated while forwarding.
    Box::pin(forward(
        shared, conn, host, route, backend, req, upgrade, trace,
    ))
    .await
}

/// Requests hyper accepts but a proxy must not forward.
fn malformed(req: &Request<ProxyBody>) -> Option<Response<ProxyBody>> {
    let headers = req.headers();
    // Both framings at once is the classic request-smuggling vector (RFC 9112 §6.1).
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "both Transfer-Encoding and Content-Length",
        ));
    }
    // Two `Host` lines: which one a backend believes is anyone's guess (RFC 9112 §3.2).
    let mut hosts = headers.get_all(header::HOST).iter();
    let first_host = hosts.next();
    if hosts.next().is_some() {
        return Some(error(StatusCode::BAD_REQUEST, "more than one Host"));
    }
    // As `headers::request_host`, without a second lookup of `Host`.
    let host = match req.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => first_host.and_then(|v| v.to_str().ok()),
    };
    match host {
        Some(host) if !headers::valid_authority(host) => {
            Some(error(StatusCode::BAD_REQUEST, "invalid host"))
        }
        None if req.version() == Version::HTTP_11 => {
            Some(error(StatusCode::BAD_REQUEST, "missing Host"))
        }
        _ => None,
    }
}

/// `uri` with its path replaced by `path` (scheme, authority and query kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).ok()?);
    Uri::from_parts(parts).ok()
}

fn declared_length(req: &Request<ProxyBody>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn redirect_to_https(host: &str, uri: &Uri) -> Response<ProxyBody> {
    let path = uri
        .path_and_query()
        .map(PathAndQuery::as_str)
        .unwrap_or("/");
    let location = format!("https://{}{}", headers::host_without_port(host), path);
    let mut resp = error(StatusCode::PERMANENT_REDIRECT, "");
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => error(StatusCode::BAD_REQUEST, "invalid host"),
    }
}

/// Where one attempt goes.
enum Target {
    Endpoint(SocketAddr),
    External(String),
}

// Each argument is borrowed from a different owner (table, connection, request, caller).
#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Shared,
    conn: ConnInfo,
    host: &str,
    route: &Route,
    backend: &Backend,
    req: Request<ProxyBody>,
    client_upgrade: Option<OnUpgrade>,
    trace: &mut Trace,
) -> Response<ProxyBody> {
    let policy = &route.policy;
    let protocol = policy.backend_protocol;
    let (mut parts, body) = req.into_parts();

    // A body gets its client-side layer (size limit, client faults) inside the send watch
    // (proxy-send-timeout: only a body can stall on its way upstream), in one box.
    let client_fault = Arc::new(ClientBodyFault::default());
    let send_watch = (!body.is_end_stream()).then(SendWatch::new);
    let mut body = match &send_watch {
        Some(watch) => ProxyBody::new(WatchedBody::new(
            LimitedBody::new(body, policy.max_body_bytes, client_fault.clone()),
            watch.clone(),
        )),
        None => body,
    };

    let upgrade_token = client_upgrade
        .as_ref()
        .and_then(|_| parts.headers.get(header::UPGRADE).cloned());
    let h2_upstream = matches!(protocol, BackendProtocol::H2c | BackendProtocol::Grpcs);
    headers::strip_hop_by_hop(&mut parts.headers, h2_upstream);
    // We answer `Expect: 100-continue` ourselves (hyper does when the body is first read).
    parts.headers.remove(header::EXPECT);
    if let Some(token) = &upgrade_token
        && !h2_upstream
    {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, token.clone());
    }
    // The backend sees the host we routed by (finding M1): with an absolute-form target or
    // `:authority`, a different `Host` from the client is replaced (RFC 9112 §3.2.2).
    if (parts.uri.authority().is_some() || !parts.headers.contains_key(header::HOST))
        && let Ok(v) = HeaderValue::from_str(host)
    {
        parts.headers.insert(header::HOST, v);
    }
    let forwarded = headers::forwarded_values(
        &parts.headers,
        &Forwarded {
            trusted: shared.trusts(conn.peer),
            client: conn.peer.ip(),
            proto: if conn.transport == Transport::Plain {
                "http"
            } else {
                "https"
            },
            host: headers::host_without_port(host),
            port: conn.local.port(),
        },
    )
    .with_via(shared.hop.value(parts.version).clone());
    parts.version = if h2_upstream {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    // The original path and query are reused as they are (no re-parse) unless rewritten.
    // rewrite-target captures come from the path routes matched (canonical, no parameters).
    let rewritten = policy.rewrite_target.as_ref().map(|_| {
        route
            .upstream_path(&request_path::without_params(parts.uri.path()))
            .into_owned()
    });
    let upstream_path = match rewritten {
        None if shared.forward_original_path => parts
            .extensions
            .remove::<OriginalTarget>()
            .map(|original| original.0)
            .or_else(|| parts.uri.path_and_query().cloned()),
        None => parts.uri.path_and_query().cloned(),
        Some(path) => {
            let target = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(target).ok()
        }
    };
    let Some(upstream_path) = upstream_path else {
        return error(StatusCode::BAD_REQUEST, "invalid request target");
    };
    let scheme = match protocol {
        BackendProtocol::Http | BackendProtocol::H2c => Scheme::HTTP,
        BackendProtocol::Https | BackendProtocol::Grpcs => Scheme::HTTPS,
    };

    let sticky_cookie = policy.affinity.as_ref().map(|a| a.cookie_name.as_str());
    let sticky = sticky_cookie
        .and_then(|name| headers::cookie(&parts.headers, name))
        .and_then(|token| upstream::endpoint_for_token(backend, token));

    // Plain HTTP/1.1 to an endpoint goes through our own pool; the rest through hyper-util.
    let legacy = (protocol != BackendProtocol::Http
        || !matches!(backend.target, BackendTarget::Endpoints(_)))
    .then(|| shared.clients.get(protocol, policy.connect_timeout));
    // No body and no upgrade to a plain endpoint (most requests): the lean HTTP/1.1 path,
    // which writes the forwarded values straight into the request head.
    let lean = legacy.is_none() && client_upgrade.is_none() && body.is_end_stream();
    let forwarded = if lean {
        Some(forwarded)
    } else {
        forwarded.insert_into(&mut parts.headers);
        None
    };
    let deadline = policy.connect_timeout + policy.read_timeout;
    let mut template = Some(parts);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_failure = StatusCode::BAD_GATEWAY;
    loop {
        let target = match &backend.target {
            BackendTarget::ExternalName { host, port } => {
                Target::External(format!("{host}:{port}"))
            }
            BackendTarget::Endpoints(_) => {
                match upstream::pick(backend, &shared.health, &tried, sticky) {
                    Some(ep) => Target::Endpoint(ep.addr),
                    None if tried.is_empty() => {
                        return error(StatusCode::SERVICE_UNAVAILABLE, "no endpoint available");
                    }
                    None => return error(last_failure, "upstream unavailable"),
                }
            }
            BackendTarget::Unavailable(_) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, "no endpoint available");
            }
        };
        let uri = match (&legacy, &target) {
            // The pool writes the URI as it is: origin-form, no authority to format.
            (None, _) => Uri::from(upstream_path.clone()),
            (Some(_), target) => {
                let authority = match target {
                    Target::Endpoint(addr) => endpoint_authority(*addr),
                    Target::External(hostport) => Authority::try_from(hostport.as_str()).ok(),
                };
                let mut uri_parts = http::uri::Parts::default();
                uri_parts.scheme = Some(scheme.clone());
                uri_parts.authority = authority;
                uri_parts.path_and_query = Some(upstream_path.clone());
                let Ok(uri) = Uri::from_parts(uri_parts) else {
                    return error(StatusCode::BAD_GATEWAY, "invalid upstream address");
                };
                uri
            }
        };
        // The pool hands an unsent request back; for the legacy client keep a copy of the
        // head (and a way to take the body back) while another attempt is still possible.
        let may_retry = legacy.is_some()
            && matches!(target, Target::Endpoint(_))
            && tried.len() + 1 < MAX_ATTEMPTS.min(backend.endpoints().len());
        let head = match (may_retry, template.as_ref()) {
            (true, Some(kept)) => kept.clone(),
            _ => match template.take() {
                Some(parts) => parts,
                None => return error(last_failure, "upstream unavailable"),
            },
        };
        let (reclaim, sent_body) = match legacy {
            Some(_) => {
                let (reclaim, sent) = Reclaimable::new(body);
                (Some(reclaim), sent)
            }
            None => (None, body),
        };
        let mut upstream_req = Request::from_parts(head, sent_body);
        *upstream_req.uri_mut() = uri;

        let sent = async {
            match (&legacy, &target) {
                (Some(client), _) => client.request(upstream_req).await.map_err(|e| (e, None)),
                (None, Target::Endpoint(addr)) if let Some(forwarded) = &forwarded => shared
                    .clients
                    .h1
                    .send_bodyless(*addr, policy.connect_timeout, upstream_req, forwarded)
                    .await
                    .map_err(|f| (f.error.into(), f.request)),
                (None, Target::Endpoint(addr)) => shared
                    .clients
                    .h1
                    .send(*addr, policy.connect_timeout, upstream_req)
                    .await
                    .map_err(|f| (f.error.into(), f.request)),
                (None, Target::External(_)) => unreachable!("external names use the legacy client"),
            }
        };
        // Not boxed on its own: the whole forwarding state already is (see route_and_forward).
        let sent = tokio::time::timeout(deadline, sent);
        let outcome = match &send_watch {
            None => sent.await,
            Some(watch) => tokio::select! {
                outcome = sent => outcome,
                // Boxed too: only requests with a body pay for the watch's timer.
                () = Box::pin(watch.stalled(policy.send_timeout)) => {
                    shared.metrics.upstream_error();
                    tracing::debug!("upstream stopped reading the request body");
                    return error(StatusCode::GATEWAY_TIMEOUT, "upstream stopped reading the request");
                }
            },
        };
        let endpoint = match target {
            Target::Endpoint(addr) => Some(addr),
            Target::External(_) => None,
        };
        trace.upstream = endpoint;
        match outcome {
            Ok(Ok(resp)) => {
                if let Some(addr) = endpoint {
                    shared.health.success(addr);
                }
                let cookie = match (sticky_cookie, endpoint) {
                    (Some(name), Some(addr)) if sticky != Some(addr) => Some(format!(
                        "{name}={}; Path=/; HttpOnly",
                        upstream::affinity_token(addr)
                    )),
                    _ => None,
                };
                return respond(shared, resp, client_upgrade, policy.read_timeout, cookie);
            }
            Ok(Err((err, handed_back))) => {
                // The client's body failed, not the endpoint: answer the client, blame no one.
                if let Some((status, message)) = client_fault.status() {
                    tracing::debug!(upstream = ?endpoint, error = %ErrorChain(&err), "request body failed on the client's side");
                    return error(status, message);
                }
                shared.metrics.upstream_error();
                let status = if is_timeout(&err) {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                tracing::debug!(upstream = ?endpoint, error = %ErrorChain(&err), "upstream request failed");
                if let Some(addr) = endpoint {
                    shared.health.failure(addr);
                    tried.push(addr);
                }
                last_failure = status;
                // Retry only when the request never left: the connection was not made and
                // not one byte of the body was read.
                let unsent = match (handed_back, reclaim) {
                    (Some(request), _) => {
                        let (parts, body) = request.into_parts();
                        template = Some(parts);
                        Some(body)
                    }
                    (None, Some(reclaim)) => reclaim.reclaim(),
                    (None, None) => None,
                };
                let retryable = err.nothing_sent()
                    && endpoint.is_some()
                    && template.is_some()
                    && tried.len() < MAX_ATTEMPTS;
                match unsent {
                    Some(unsent) if retryable => body = unsent,
                    _ => return error(status, "upstream failure"),
                }
            }
            Err(_elapsed) => {
                shared.metrics.upstream_error();
                tracing::debug!(upstream = ?endpoint, "upstream timed out");
                return error(StatusCode::GATEWAY_TIMEOUT, "upstream timed out");
            }
        }
    }
}

/// An endpoint's address as a URI authority, formatted once per thread and address.
fn endpoint_authority(addr: SocketAddr) -> Option<Authority> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static CACHE: RefCell<HashMap<SocketAddr, Authority>> = RefCell::new(HashMap::new());
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(authority) = cache.get(&addr) {
            return Some(authority.clone());
        }
        let authority = Authority::try_from(addr.to_string()).ok()?;
        // Endpoints come and go with the table; a bounded cache forgets them wholesale.
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(addr, authority.clone());
        Some(authority)
    })
}

fn respond(
    shared: &Shared,
    mut resp: Response<UpstreamBody>,
    client_upgrade: Option<OnUpgrade>,
    read_timeout: Duration,
    set_cookie: Option<String>,
) -> Response<ProxyBody> {
    // The endpoint is a loop (our own check, or another proxy's): its connection is not
    // kept for reuse, so a loop leaves no connection open on either side.
    if resp.status() == StatusCode::LOOP_DETECTED {
        resp.body_mut().forget_connection();
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return error(
                StatusCode::BAD_GATEWAY,
                "backend switched protocols unasked",
            );
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        resp.body_mut().forget_connection();
        let force = shared.force.clone();
        shared.tunnels.spawn(async move {
            let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = force.cancelled() => {}
            }
        });
        let (mut parts, _) = resp.into_parts();
        let connection = parts.headers.get(header::CONNECTION).cloned();
        let upgrade = parts.headers.get(header::UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        parts.headers.insert(
            header::CONNECTION,
            connection.unwrap_or(HeaderValue::from_static("upgrade")),
        );
        if let Some(upgrade) = upgrade {
            parts.headers.insert(header::UPGRADE, upgrade);
        }
        return Response::from_parts(parts, body::empty());
    }
    let stripped = resp.body().hop_by_hop_stripped();
    let (mut parts, incoming) = resp.into_parts();
    if !stripped {
        headers::strip_hop_by_hop(&mut parts.headers, false);
    }
    parts.version = Version::HTTP_11;
    if let Some(cookie) = set_cookie
        && let Ok(v) = HeaderValue::from_str(&cookie)
    {
        parts.headers.append(header::SET_COOKIE, v);
    }
    Response::from_parts(
        parts,
        ProxyBody::new(TimeoutBody::new(incoming, read_timeout)),
    )
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = e.source();
    }
    false
}

struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// A small plain-text response of our own.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let text = if message.is_empty() {
        format!("{status}\n")
    } else {
        format!("{status}: {message}\n")
    };
    let mut resp = Response::new(body::full(text.clone()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    resp
}
