//! The exchange with the backend: which upstream path a request takes, decided once
//! ([`Upstream::choose`]), then attempts until one is answered or no other may be made.
//! Retries only when nothing was sent: the connection was never made and no body byte was
//! read (the pool hands such a request back; for hyper-util's client a copy of the head is
//! kept, and the body taken back if it was not touched).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use portico_model::{Backend, BackendProtocol, BackendTarget, RoutePolicy};

use crate::body::{ClientBodyFault, ProxyBody, Reclaimable};
use crate::h1::head::encode_request_head;
use crate::h2pool::{self, H2Failure, H2Pool};
use crate::handler::{Refusal, Shared};
use crate::headers::ForwardedValues;
use crate::observe::Trace;
use crate::pool::{H1Pool, PoolFailure, UpstreamBody};
use crate::send_watch::SendWatch;
use crate::upstream::{self, UpstreamClient, UpstreamError};

/// At most this many endpoints are tried for one request (only when nothing was sent).
const MAX_ATTEMPTS: usize = 3;

/// How a request reaches its backend: where attempts go, and through which client.
pub(crate) enum Upstream<'a> {
    /// The Service's endpoint addresses: each attempt picks one (affinity, then round-robin,
    /// skipping ejected and tried ones).
    Endpoints(Via<'a>),
    /// An `ExternalName`'s `host:port` (the name resolved at connect time by a resolver that
    /// refuses forbidden addresses): one attempt.
    External(ExternalVia<'a>, Authority),
}

/// The client an endpoint attempt goes through.
pub(crate) enum Via<'a> {
    /// Plain HTTP/1.1, no body and no upgrade (most requests): the pool's lean exchange,
    /// which writes this request head as it is, the forwarding values encoded into it
    /// (eight hashed insertions saved, and the values, ~370 bytes, are not moved from
    /// phase to phase).
    Lean(&'a H1Pool, Vec<u8>),
    /// Plain HTTP/1.1 with a body or an upgrade: the pool's hyper connections.
    Pooled(&'a H1Pool),
    /// HTTP/2 (h2c, gRPC over TLS): the shared connection, `:authority` the routed host.
    H2(&'a H2Pool),
    /// HTTPS: hyper-util's pooled client.
    Client(Arc<UpstreamClient>),
}

/// The client an ExternalName attempt goes through.
pub(crate) enum ExternalVia<'a> {
    H2(&'a H2Pool),
    /// Plain HTTP/1.1 or HTTPS: hyper-util's pooled client.
    Client(Arc<UpstreamClient>),
}

impl<'a> Upstream<'a> {
    /// The path for `backend` under `policy`; `bodyless`: no body and no upgrade. The
    /// forwarding values go into `req`'s headers, or for the lean exchange into the head it
    /// writes (to `path`). Refused: a backend with nothing to send to (503), an
    /// ExternalName that is no authority (502).
    pub(crate) fn choose(
        shared: &'a Shared,
        backend: &Backend,
        policy: &RoutePolicy,
        bodyless: bool,
        forwarded: ForwardedValues,
        path: &PathAndQuery,
        req: &mut Request<ProxyBody>,
    ) -> Result<Self, Refusal> {
        let protocol = policy.backend_protocol;
        let h2 = matches!(protocol, BackendProtocol::H2c | BackendProtocol::Grpcs);
        let client = || {
            let tls = protocol == BackendProtocol::Https;
            shared.clients.get(tls, policy.connect_timeout)
        };
        let upstream = match &backend.target {
            BackendTarget::Unavailable(_) => {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no endpoint available",
                ));
            }
            BackendTarget::ExternalName { host, port } => {
                let Ok(authority) = Authority::try_from(format!("{host}:{port}")) else {
                    return Err(Refusal::new(
                        StatusCode::BAD_GATEWAY,
                        "invalid upstream address",
                    ));
                };
                let via = match h2 {
                    true => ExternalVia::H2(&shared.clients.h2),
                    false => ExternalVia::Client(client()),
                };
                Upstream::External(via, authority)
            }
            BackendTarget::Endpoints(_) if h2 => Upstream::Endpoints(Via::H2(&shared.clients.h2)),
            BackendTarget::Endpoints(_) if protocol == BackendProtocol::Https => {
                Upstream::Endpoints(Via::Client(client()))
            }
            BackendTarget::Endpoints(_) if bodyless => {
                let head = encode_request_head(req, path.as_str(), &forwarded);
                return Ok(Upstream::Endpoints(Via::Lean(&shared.clients.h1, head)));
            }
            BackendTarget::Endpoints(_) => Upstream::Endpoints(Via::Pooled(&shared.clients.h1)),
        };
        forwarded.insert_into(req.headers_mut());
        Ok(upstream)
    }
}

/// One attempt: where it goes and through which client.
enum Attempt<'u, 'a> {
    Endpoint(&'u Via<'a>, SocketAddr),
    External(&'u ExternalVia<'a>, &'u Authority),
}

/// A failed attempt: why, and the request when not one byte of it was sent.
struct Failure {
    error: UpstreamError,
    unsent: Option<Request<ProxyBody>>,
}

impl From<PoolFailure> for Failure {
    fn from(f: PoolFailure) -> Self {
        Failure {
            error: f.error.into(),
            unsent: f.request,
        }
    }
}

impl From<H2Failure> for Failure {
    fn from(f: H2Failure) -> Self {
        Failure {
            error: f.error.into(),
            unsent: f.request,
        }
    }
}

impl Attempt<'_, '_> {
    fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            Attempt::Endpoint(_, addr) => Some(*addr),
            Attempt::External(..) => None,
        }
    }

    /// The request URI: origin-form for the HTTP/1.1 pool, which writes it as it is;
    /// absolute for hyper-util's client, which connects to its authority (and sends `Host`,
    /// set before, over HTTP/1.1); for HTTP/2, whose `:authority` is the URI's, the host
    /// routed by (`host`, validated in `admit`; the target's only when the client named
    /// none; finding L3).
    fn uri(&self, path: &PathAndQuery, scheme: Scheme, host: &str) -> Option<Uri> {
        let routed = || Authority::try_from(host).ok();
        let authority = match self {
            Attempt::Endpoint(Via::Lean(..) | Via::Pooled(_), _) => {
                return Some(Uri::from(path.clone()));
            }
            Attempt::Endpoint(Via::H2(_), addr) => match routed() {
                Some(routed) => routed,
                None => endpoint_authority(*addr)?,
            },
            Attempt::External(ExternalVia::H2(_), authority) => {
                routed().unwrap_or_else(|| (*authority).clone())
            }
            Attempt::Endpoint(Via::Client(_), addr) => endpoint_authority(*addr)?,
            Attempt::External(ExternalVia::Client(_), authority) => (*authority).clone(),
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme);
        parts.authority = Some(authority);
        parts.path_and_query = Some(path.clone());
        Uri::from_parts(parts).ok()
    }

    /// Sends `req` once. `keep_copy`: another attempt may follow, so hyper-util's client
    /// keeps what it needs to hand an unsent request back.
    async fn send(
        self,
        protocol: BackendProtocol,
        connect_timeout: Duration,
        req: Request<ProxyBody>,
        keep_copy: bool,
    ) -> Result<Response<UpstreamBody>, Failure> {
        match self {
            Attempt::Endpoint(Via::Lean(pool, head), addr) => pool
                .send_bodyless(addr, connect_timeout, req, head)
                .await
                .map_err(Failure::from),
            Attempt::Endpoint(Via::Pooled(pool), addr) => pool
                .send(addr, connect_timeout, req)
                .await
                .map_err(Failure::from),
            Attempt::Endpoint(Via::H2(pool), addr) => pool
                .send(
                    h2pool::Target::Endpoint(addr),
                    protocol,
                    connect_timeout,
                    req,
                )
                .await
                .map_err(Failure::from),
            Attempt::External(ExternalVia::H2(pool), authority) => pool
                .send(
                    h2pool::Target::External(authority.clone()),
                    protocol,
                    connect_timeout,
                    req,
                )
                .await
                .map_err(Failure::from),
            Attempt::Endpoint(Via::Client(client), _)
            | Attempt::External(ExternalVia::Client(client), _) => {
                if !keep_copy {
                    return client.request(req).await.map_err(|error| Failure {
                        error,
                        unsent: None,
                    });
                }
                let (head, body) = req.into_parts();
                let kept = head.clone();
                let (reclaim, body) = Reclaimable::new(body);
                let req = Request::from_parts(head, body);
                client.request(req).await.map_err(|error| Failure {
                    error,
                    unsent: reclaim
                        .reclaim()
                        .map(|body| Request::from_parts(kept, body)),
                })
            }
        }
    }
}

/// An answered exchange: the response, and the affinity cookie naming the endpoint that
/// gave it (when the route has affinity and the request named another or none).
pub(crate) struct Answer {
    pub(crate) response: Response<UpstreamBody>,
    pub(crate) set_cookie: Option<String>,
}

/// What one request's exchange needs, from the phases before it.
pub(crate) struct Exchange<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) backend: &'a Backend,
    pub(crate) policy: &'a RoutePolicy,
    pub(crate) upstream: Upstream<'a>,
    /// The upstream request target (origin-form).
    pub(crate) path: PathAndQuery,
    /// The host routed by (`""`: the client named none), HTTP/2's `:authority`.
    pub(crate) host: &'a str,
    /// The endpoint the affinity cookie names, if it is one of the backend's.
    pub(crate) sticky: Option<SocketAddr>,
    /// Set when the request has a body (proxy-send-timeout).
    pub(crate) send_watch: Option<Arc<SendWatch>>,
    pub(crate) client_fault: Arc<ClientBodyFault>,
}

impl Exchange<'_> {
    /// Attempts until one is answered; a refusal is the answer for the client.
    pub(crate) async fn run(
        self,
        mut req: Request<ProxyBody>,
        trace: &mut Trace,
    ) -> Result<Answer, Refusal> {
        let policy = self.policy;
        let deadline = policy.connect_timeout + policy.read_timeout;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_failure = StatusCode::BAD_GATEWAY;
        loop {
            let attempt = match &self.upstream {
                Upstream::External(client, authority) => Attempt::External(client, authority),
                Upstream::Endpoints(via) => {
                    match upstream::pick(self.backend, &self.shared.health, &tried, self.sticky) {
                        Some(ep) => Attempt::Endpoint(via, ep.addr),
                        None if tried.is_empty() => {
                            return Err(Refusal::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "no endpoint available",
                            ));
                        }
                        None => return Err(Refusal::new(last_failure, "upstream unavailable")),
                    }
                }
            };
            let Some(uri) = attempt.uri(&self.path, self.scheme(), self.host) else {
                return Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "invalid upstream address",
                ));
            };
            *req.uri_mut() = uri;
            // The pools hand an unsent request back themselves; hyper-util's client needs a
            // copy kept while another endpoint may still be tried.
            let keep_copy = matches!(attempt, Attempt::Endpoint(Via::Client(_), _))
                && tried.len() + 1 < MAX_ATTEMPTS.min(self.backend.endpoints().len());
            let endpoint = attempt.endpoint();
            // Not boxed on its own: the whole forwarding state already is (see handler).
            let sent = tokio::time::timeout(
                deadline,
                attempt.send(
                    policy.backend_protocol,
                    policy.connect_timeout,
                    req,
                    keep_copy,
                ),
            );
            let outcome = match &self.send_watch {
                None => sent.await,
                Some(watch) => tokio::select! {
                    outcome = sent => outcome,
                    // Boxed too: only requests with a body pay for the watch's timer.
                    () = Box::pin(watch.stalled(policy.send_timeout)) => {
                        self.shared.metrics.upstream_error();
                        tracing::debug!("upstream stopped reading the request body");
                        return Err(Refusal::new(StatusCode::GATEWAY_TIMEOUT, "upstream stopped reading the request"));
                    }
                },
            };
            trace.upstream = endpoint;
            match outcome {
                Ok(Ok(response)) => {
                    if let Some(addr) = endpoint {
                        self.shared.health.success(addr);
                    }
                    let set_cookie = self.affinity_cookie(endpoint);
                    return Ok(Answer {
                        response,
                        set_cookie,
                    });
                }
                Ok(Err(failure)) => {
                    req = self.classify(failure, endpoint, &mut tried, &mut last_failure)?;
                }
                Err(_elapsed) => {
                    self.shared.metrics.upstream_error();
                    tracing::debug!(upstream = ?endpoint, "upstream timed out");
                    return Err(Refusal::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream timed out",
                    ));
                }
            }
        }
    }

    /// The affinity cookie for an answer from `endpoint`, unless the request named it.
    fn affinity_cookie(&self, endpoint: Option<SocketAddr>) -> Option<String> {
        let name = &self.policy.affinity.as_ref()?.cookie_name;
        let addr = endpoint.filter(|addr| self.sticky != Some(*addr))?;
        Some(format!(
            "{name}={}; Path=/; HttpOnly",
            upstream::affinity_token(addr)
        ))
    }

    /// The scheme of hyper-util's absolute request URIs.
    fn scheme(&self) -> Scheme {
        match self.policy.backend_protocol {
            BackendProtocol::Http | BackendProtocol::H2c => Scheme::HTTP,
            BackendProtocol::Https | BackendProtocol::Grpcs => Scheme::HTTPS,
        }
    }

    /// After a failed attempt: the request to send again (to another endpoint), or the
    /// answer. A body that failed on the client's side is the client's answer, blaming no
    /// endpoint; otherwise the endpoint is marked failed, and the request goes again only
    /// when it never left.
    fn classify(
        &self,
        failure: Failure,
        endpoint: Option<SocketAddr>,
        tried: &mut Vec<SocketAddr>,
        last_failure: &mut StatusCode,
    ) -> Result<Request<ProxyBody>, Refusal> {
        let err = failure.error;
        if let Some((status, message)) = self.client_fault.status() {
            tracing::debug!(upstream = ?endpoint, error = %ErrorChain(&err), "request body failed on the client's side");
            return Err(Refusal::new(status, message));
        }
        self.shared.metrics.upstream_error();
        let status = if is_timeout(&err) {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        tracing::debug!(upstream = ?endpoint, error = %ErrorChain(&err), "upstream request failed");
        if let Some(addr) = endpoint {
            self.shared.health.failure(addr);
            tried.push(addr);
        }
        *last_failure = status;
        let retryable = err.nothing_sent() && endpoint.is_some() && tried.len() < MAX_ATTEMPTS;
        match failure.unsent {
            Some(unsent) if retryable => Ok(unsent),
            _ => Err(Refusal::new(status, "upstream failure")),
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
