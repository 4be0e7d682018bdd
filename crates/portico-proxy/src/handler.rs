//! One request, whatever protocol it came in on, in the order a reader meets it (as
//! pingora's `ProxyHttp` phases): `admit` (what no proxy forwards; the canonical path),
//! `route` (the table's lookup), `policy` (the route's checks, before any upstream work),
//! `upstream_request` (the head the backend sees), the exchange with the backend
//! (`exchange`: the upstream path decided once, attempts and retries) and `respond` (the
//! response as the client sees it). `handle` wraps them with the per-request observation.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use portico_model::{Backend, BackendProtocol, Route, RoutingTable};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{self, ClientBodyFault, LimitedBody, ProxyBody, TimeoutBody};
use crate::exchange::{Exchange, Upstream};
use crate::headers::{self, Forwarded, ForwardedValues, RequestHost};
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
    // Read once: validated, routed by, sent upstream and logged.
    let host = RequestHost::of(req.uri(), req.headers());
    // Only the access log needs these; without it the hot path allocates nothing more.
    let facts = shared.access_log.then(|| RequestFacts {
        method: req.method().clone(),
        host: host.get().unwrap_or("-").to_owned(),
        uri: req.uri().clone(),
    });
    let mut trace = Trace {
        enabled: shared.access_log,
        ..Trace::default()
    };
    let mut resp = route_and_forward(shared, conn, req, &host, upgrade, &mut trace)
        .await
        .unwrap_or_else(Refusal::into_response);
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

/// The phases in order; any of them may answer in the backend's place.
async fn route_and_forward(
    shared: &Shared,
    conn: ConnInfo,
    mut req: Request<ProxyBody>,
    host: &RequestHost,
    upgrade: Option<OnUpgrade>,
    trace: &mut Trace,
) -> Result<Response<ProxyBody>, Refusal> {
    let table = shared.table.load_full();
    let decided = decide(
        shared,
        conn,
        &table,
        host,
        &mut req,
        upgrade.is_some(),
        trace,
    );
    let (route, exchange) = match decided {
        Ok(decided) => decided,
        Err(refusal) => {
            discard_body(shared, req.into_body());
            return Err(refusal);
        }
    };
    // Boxed: hyper keeps room for the whole request future in every connection, idle or
    // not; the exchange (the largest part) is only allocated while forwarding. The phases
    // before it are plain functions, so its future is built once, straight into the box.
    let answer = Box::pin(exchange.run(req, trace)).await?;
    Ok(respond(
        shared,
        answer.response,
        upgrade,
        route.policy.read_timeout,
        answer.set_cookie,
    ))
}

/// The phases before the exchange: admit, route, policy, and the request the backend sees.
fn decide<'a>(
    shared: &'a Shared,
    conn: ConnInfo,
    table: &'a RoutingTable,
    host: &'a RequestHost,
    req: &mut Request<ProxyBody>,
    upgrade: bool,
    trace: &mut Trace,
) -> Result<(&'a Route, Exchange<'a>), Refusal> {
    admit(shared, req, host)?;
    let host = host.as_str();
    let route = route(table, host, req, trace).ok_or(Refusal::Error(
        StatusCode::NOT_FOUND,
        Cow::Borrowed("no route for this host and path"),
    ))?;
    let backend = policy(table, route, conn, host, req)?;
    let exchange = upstream_request(shared, conn, host, route, backend, req, upgrade)?;
    Ok((route, exchange))
}

/// What a refused request may still send of its body is read and thrown away, after the
/// refusal is answered and within bounds (as nginx discards it): closing an HTTP/1.1
/// connection with the client's bytes unread makes the kernel answer with a reset, which
/// can destroy the refusal before the client reads it. Past the bounds the body is dropped
/// and the connection closes as before; so it is when too many bodies are being drained.
fn discard_body(shared: &Shared, body: ProxyBody) {
    /// nginx's lingering_timeout is 5 s; a refused client gets no more than this.
    const DISCARD_FOR: Duration = Duration::from_secs(5);
    const DISCARD_BYTES: usize = 64 * 1024;
    if body.is_end_stream() || !shared.metrics.refused_bodies.start() {
        return;
    }
    let metrics = shared.metrics.clone();
    tokio::spawn(async move {
        use http_body_util::BodyExt as _;
        let mut body = std::pin::pin!(body);
        let mut left = DISCARD_BYTES;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                let len = frame.data_ref().map_or(0, |d| d.len());
                match left.checked_sub(len) {
                    Some(rest) => left = rest,
                    None => return,
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_FOR, drain).await;
        metrics.refused_bodies.finish();
    });
}

/// Requests no proxy forwards, refused before routing: a loop through this cluster (508),
/// a malformed request (400), CONNECT (405), a path `request_path` refuses (400). The path
/// that routing, policy and the upstream see is made canonical here (finding H4).
fn admit(shared: &Shared, req: &mut Request<ProxyBody>, host: &RequestHost) -> Result<(), Refusal> {
    // Already forwarded by this cluster: a backend leads back to us (finding H2, loops).
    if shared.hop.seen_in(req.headers()) {
        return Err(Refusal::new(
            StatusCode::LOOP_DETECTED,
            "request loop through this proxy",
        ));
    }
    malformed(req, host)?;
    if req.method() == Method::CONNECT {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
        ));
    }
    match request_path::normalize(req.uri().path()) {
        Ok(Cow::Borrowed(_)) => Ok(()),
        Ok(Cow::Owned(path)) => {
            let Some(uri) = with_path(req.uri(), &path) else {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "invalid request target",
                ));
            };
            if shared.forward_original_path
                && let Some(original) = req.uri().path_and_query().cloned()
            {
                req.extensions_mut().insert(OriginalTarget(original));
            }
            *req.uri_mut() = uri;
            Ok(())
        }
        Err(e) => Err(Refusal::new(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

/// Requests hyper accepts but a proxy must not forward.
fn malformed(req: &Request<ProxyBody>, host: &RequestHost) -> Result<(), Refusal> {
    let headers = req.headers();
    // Both framings at once is the classic request-smuggling vector (RFC 9112 §6.1).
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "both Transfer-Encoding and Content-Length",
        ));
    }
    // Two `Host` lines: which one a backend believes is anyone's guess (RFC 9112 §3.2).
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "more than one Host"));
    }
    match host.get() {
        Some(host) if !headers::valid_authority(host) => {
            Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid host"))
        }
        None if req.version() == Version::HTTP_11 => {
            Err(Refusal::new(StatusCode::BAD_REQUEST, "missing Host"))
        }
        _ => Ok(()),
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

/// The route for the host and the canonical path without its parameters (`None`: 404).
fn route<'t>(
    table: &'t RoutingTable,
    host: &str,
    req: &Request<ProxyBody>,
    trace: &mut Trace,
) -> Option<&'t Route> {
    let route = table.lookup(host, &request_path::without_params(req.uri().path()))?;
    if trace.enabled {
        trace.ingress = Some(route.ingress.clone());
    }
    Some(route)
}

/// The route's checks, before any upstream work: the source allowlist (403), ssl-redirect
/// (308), the declared body size (413); then the backend to send to (503 when none).
fn policy<'t>(
    table: &'t RoutingTable,
    route: &Route,
    conn: ConnInfo,
    host: &str,
    req: &Request<ProxyBody>,
) -> Result<&'t Backend, Refusal> {
    let policy = &route.policy;
    if !policy.allows_source(conn.peer.ip()) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "source address not allowed",
        ));
    }
    if conn.transport == Transport::Plain && route.redirect_to_https {
        return Err(redirect_to_https(host, req.uri()));
    }
    if let Some(limit) = policy.max_body_bytes
        && declared_length(req).is_some_and(|len| len > limit)
    {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    match table.backend(&route.backend) {
        Some(backend) => Ok(backend),
        None => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no such backend",
        )),
    }
}

fn declared_length(req: &Request<ProxyBody>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn redirect_to_https(host: &str, uri: &Uri) -> Refusal {
    let path = uri
        .path_and_query()
        .map(PathAndQuery::as_str)
        .unwrap_or("/");
    let location = format!("https://{}{}", headers::host_without_port(host), path);
    match HeaderValue::from_str(&location) {
        Ok(location) => Refusal::Redirect(location),
        Err(_) => Refusal::new(StatusCode::BAD_REQUEST, "invalid host"),
    }
}

/// The request the backend sees, made in place, and the way to it: the client body's limit
/// and send watch, the upstream head ([`upstream_head`]), the affinity endpoint, the
/// upstream path chosen once ([`Upstream::choose`]). Refused: a path that makes no request
/// target (400), a backend with nothing to send to (503, 502).
// The request is changed in place, not taken apart and rebuilt: each move of it (and of
// the exchange) between phases was a copy of a few hundred bytes per request.
fn upstream_request<'a>(
    shared: &'a Shared,
    conn: ConnInfo,
    host: &'a str,
    route: &'a Route,
    backend: &'a Backend,
    req: &mut Request<ProxyBody>,
    upgrade: bool,
) -> Result<Exchange<'a>, Refusal> {
    let policy = &route.policy;

    // A body gets its client-side layer (size limit, client faults) inside the send watch
    // (proxy-send-timeout: only a body can stall on its way upstream), in one box.
    let client_fault = Arc::new(ClientBodyFault::default());
    let send_watch = (!req.body().is_end_stream()).then(SendWatch::new);
    if let Some(watch) = &send_watch {
        let body = std::mem::replace(req.body_mut(), body::empty());
        *req.body_mut() = ProxyBody::new(WatchedBody::new(
            LimitedBody::new(body, policy.max_body_bytes, client_fault.clone()),
            watch.clone(),
        ));
    }
    let bodyless = !upgrade && send_watch.is_none();

    let Some((path, forwarded)) = upstream_head(shared, conn, host, route, req, upgrade) else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid request target",
        ));
    };
    let sticky = policy
        .affinity
        .as_ref()
        .and_then(|a| headers::cookie(req.headers(), &a.cookie_name))
        .and_then(|token| upstream::endpoint_for_token(backend, token));
    let upstream = Upstream::choose(shared, backend, policy, bodyless, forwarded, &path, req)?;
    Ok(Exchange {
        shared,
        backend,
        policy,
        upstream,
        path,
        host,
        sticky,
        send_watch,
        client_fault,
    })
}

/// The head the backend sees: hop-by-hop headers stripped (RFC 9110 §7.6.1), the upgrade
/// asked again, the routed host, the forwarding values (added to the head, or written by
/// the lean exchange itself, once the upstream path is chosen), the upstream version, and
/// the path (rewritten, canonical or as sent). `None`: the path does not make a request
/// target (400). Returns the path and the forwarding values.
fn upstream_head(
    shared: &Shared,
    conn: ConnInfo,
    host: &str,
    route: &Route,
    req: &mut Request<ProxyBody>,
    upgrade: bool,
) -> Option<(PathAndQuery, ForwardedValues)> {
    let policy = &route.policy;
    let h2_upstream = matches!(
        policy.backend_protocol,
        BackendProtocol::H2c | BackendProtocol::Grpcs
    );
    let client_version = req.version();
    let absolute_form = req.uri().authority().is_some();
    let fields = req.headers_mut();
    let upgrade_token = upgrade
        .then(|| fields.get(header::UPGRADE).cloned())
        .flatten();
    headers::strip_hop_by_hop(fields, h2_upstream);
    // We answer `Expect: 100-continue` ourselves (hyper does when the body is first read).
    fields.remove(header::EXPECT);
    if let Some(token) = upgrade_token
        && !h2_upstream
    {
        fields.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        fields.insert(header::UPGRADE, token);
    }
    // The backend sees the host we routed by (finding M1): with an absolute-form target or
    // `:authority`, a different `Host` from the client is replaced (RFC 9112 §3.2.2). Over
    // HTTP/2 it goes as `:authority` (the exchange's URI), never beside it (finding L3).
    if h2_upstream {
        fields.remove(header::HOST);
    } else if (absolute_form || !fields.contains_key(header::HOST))
        && let Ok(v) = HeaderValue::from_str(host)
    {
        fields.insert(header::HOST, v);
    }
    let forwarded = headers::forwarded_values(
        fields,
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
    .with_via(shared.hop.value(client_version).clone());
    *req.version_mut() = if h2_upstream {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    // The original path and query are reused as they are (no re-parse) unless rewritten.
    // rewrite-target captures come from the path routes matched (canonical, no parameters).
    let path = match &policy.rewrite_target {
        None if shared.forward_original_path => req
            .extensions_mut()
            .remove::<OriginalTarget>()
            .map(|original| original.0)
            .or_else(|| req.uri().path_and_query().cloned()),
        None => req.uri().path_and_query().cloned(),
        Some(_) => {
            let path = route
                .upstream_path(&request_path::without_params(req.uri().path()))
                .into_owned();
            let target = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(target).ok()
        }
    }?;
    Some((path, forwarded))
}

/// The response as the client sees it: a WebSocket tunnel started on a 101, hop-by-hop
/// headers stripped, the affinity cookie, the read timeout on the body.
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

/// The proxy's own answer in the backend's place: a phase that refuses returns one, and
/// `handle` makes it the response.
pub(crate) enum Refusal {
    /// A small plain-text error page.
    Error(StatusCode, Cow<'static, str>),
    /// ssl-redirect: a 308 to this `Location`.
    Redirect(HeaderValue),
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Refusal::Error(status, message.into())
    }

    fn into_response(self) -> Response<ProxyBody> {
        match self {
            Refusal::Error(status, message) => error(status, &message),
            Refusal::Redirect(location) => {
                let mut resp = error(StatusCode::PERMANENT_REDIRECT, "");
                resp.headers_mut().insert(header::LOCATION, location);
                resp
            }
        }
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
