//! The server side: accepts mutually authenticated TLS connections and dispatches RPCs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::TransportSettings;
use crate::peer::PeerIdentity;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request was not answered with `200`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RpcRejection {
    #[error("unknown RPC {0}")]
    NotFound(String),
    #[error("malformed RPC body: {0}")]
    BadRequest(String),
    #[error("replica unavailable: {0}")]
    Unavailable(String),
    /// The RPC names another node than this one.
    #[error("this is node {this}, not node {target}")]
    Misdirected { this: u64, target: u64 },
    /// The caller's certificate does not name a replica allowed to make this call.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The caller's incarnation is refused for good: its volume is a stale copy.
    #[error("{0}")]
    StaleCaller(String),
    /// This replica's own volume is a stale copy: it takes no part any more.
    #[error("{0}")]
    StaleSelf(String),
    /// The caller's new incarnation is not taken yet (its predecessor spoke moments ago).
    #[error("{0}")]
    NotYet(String),
}

/// What a request says besides its path and body (all optional on the wire).
#[derive(Debug, Default)]
pub(crate) struct RpcMeta {
    /// The node the caller meant (the Raft RPCs name one).
    pub(crate) target: Option<u64>,
    /// The caller's incarnation header.
    pub(crate) incarnation: Option<String>,
    /// What the caller knows of this node's incarnation.
    pub(crate) known: Option<String>,
}

/// The replica behind the transport: answers one decoded-path RPC with an encoded body.
pub(crate) trait RpcHandler: Send + Sync + 'static {
    /// `meta` holds what the request's headers say; `caller` is who the caller's verified
    /// certificate says it is.
    fn handle(
        &self,
        path: &str,
        meta: RpcMeta,
        caller: &PeerIdentity,
        body: Bytes,
    ) -> impl Future<Output = Result<Vec<u8>, RpcRejection>> + Send;

    /// This replica's incarnation header, sent with every answer.
    fn incarnation_header(&self) -> &http::HeaderValue;
}

/// Accepts connections until the returned task is aborted (which also drops every
/// connection it spawned).
pub(crate) fn spawn<H: RpcHandler>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: Arc<H>,
    settings: TransportSettings,
) -> tokio::task::JoinHandle<()> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, remote) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let handler = handler.clone();
                    let settings = settings.clone();
                    connections.spawn(async move {
                        let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::warn!(%remote, error = %e, "refused a replica connection (TLS)");
                                return;
                            }
                            Err(_) => {
                                tracing::warn!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                        // Whom the certificate names; one that cannot be read is refused.
                        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                        let caller = match leaf.map(|der| PeerIdentity::from_certificate(der)) {
                            Some(Ok(caller)) => Arc::new(caller),
                            Some(Err(e)) => {
                                tracing::warn!(%remote, error = %e, "refused a replica connection");
                                return;
                            }
                            None => {
                                tracing::warn!(%remote, "refused a replica connection: no certificate");
                                return;
                            }
                        };
                        serve_connection(tls, handler, caller, settings).await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

async fn serve_connection<H: RpcHandler>(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    handler: Arc<H>,
    caller: Arc<PeerIdentity>,
    settings: TransportSettings,
) {
    let max_body = settings.max_body_bytes;
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let handler = handler.clone();
        let caller = caller.clone();
        async move {
            Ok::<_, std::convert::Infallible>(answer(&*handler, &caller, request, max_body).await)
        }
    });
    let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(64)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "replica connection ended with an error");
    }
}

fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(message)))
        .expect("a response built from valid parts")
}

async fn answer<H: RpcHandler>(
    handler: &H,
    caller: &PeerIdentity,
    request: http::Request<Incoming>,
    max_body: usize,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
    }
    let path = request.uri().path().to_owned();
    let headers = request.headers();
    let target = match headers.get(super::wire::TARGET_HEADER) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|v| v.parse().ok()) {
            Some(target) => Some(target),
            None => return plain(StatusCode::BAD_REQUEST, "invalid target node ID\n".into()),
        },
    };
    let text = |name: &str| -> Result<Option<String>, ()> {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::to_owned).map_err(|_| ()))
            .transpose()
    };
    let (Ok(incarnation), Ok(known)) = (
        text(super::wire::INCARNATION_HEADER),
        text(super::wire::KNOWN_HEADER),
    ) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "invalid incarnation header\n".into(),
        );
    };
    let meta = RpcMeta {
        target,
        incarnation,
        known,
    };
    let body = match Limited::new(request.into_body(), max_body).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return plain(status, format!("reading the body: {e}\n"));
        }
    };
    let mut response = match handler.handle(&path, meta, caller, body).await {
        Ok(bytes) => Response::builder()
            .header(http::header::CONTENT_TYPE, "application/x-postcard")
            .body(Full::new(Bytes::from(bytes)))
            .expect("a response built from valid parts"),
        Err(rejection) => {
            let status = match rejection {
                RpcRejection::NotFound(_) => StatusCode::NOT_FOUND,
                RpcRejection::BadRequest(_) => StatusCode::BAD_REQUEST,
                RpcRejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                RpcRejection::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
                RpcRejection::Forbidden(_) => StatusCode::FORBIDDEN,
                RpcRejection::StaleCaller(_) => StatusCode::CONFLICT,
                RpcRejection::StaleSelf(_) => StatusCode::GONE,
                RpcRejection::NotYet(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            // A stale peer retries all the time: its refusals are logged where they are
            // decided, once.
            if !matches!(
                rejection,
                RpcRejection::StaleCaller(_) | RpcRejection::StaleSelf(_) | RpcRejection::NotYet(_)
            ) {
                tracing::warn!(%path, %caller, %rejection, "rejected a replica RPC");
            }
            plain(status, format!("{rejection}\n"))
        }
    };
    response.headers_mut().insert(
        super::wire::INCARNATION_HEADER,
        handler.incarnation_header().clone(),
    );
    response
}
