//! HTTP/2 upstreams (`backend-protocol` GRPC or H2C over h2c, GRPCS over TLS): one
//! multiplexed connection per target, shared by every request to it.
//!
//! hyper-util's pooled client sends as `:authority` the address it connects to, so a backend
//! saw the Pod's IP and port there beside the routed `Host` (finding L3): a malformed request
//! under RFC 9113 §8.3.1, and Envoy-based sidecars and gateways route by `:authority`. Here
//! the connection goes to the target (an endpoint address, or an ExternalName through the
//! guarded resolver) while each request carries the authority it names itself: the host it
//! was routed by, as `Host` is on HTTP/1.1.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;
use portico_model::BackendProtocol;
use tower_service::Service;

use crate::body::{BoxError, ProxyBody};
use crate::pool::UpstreamBody;
use crate::upstream::{UPSTREAM_IDLE_TIMEOUT, connector, h2_tls_connector};

/// A connection closed before our request was written (GOAWAY, the peer gone) is replaced
/// at most this many times per request.
const MAX_STALE_RETRIES: usize = 2;

/// Why an HTTP/2 upstream request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H2Error {
    /// No connection could be made (refused, unreachable, timeout, a forbidden
    /// ExternalName, the TLS or HTTP/2 handshake): nothing was sent.
    #[error("connect to {target}: {source}")]
    Connect {
        target: Target,
        #[source]
        source: BoxError,
    },
    /// Connections closed before the request was written, every time: nothing was sent.
    #[error("connection closed before the request was sent: {0}")]
    Unsent(#[source] hyper::Error),
    /// The request was (at least partly) sent.
    #[error(transparent)]
    Http(hyper::Error),
}

impl H2Error {
    pub(crate) fn nothing_sent(&self) -> bool {
        matches!(self, H2Error::Connect { .. } | H2Error::Unsent(_))
    }
}

/// A failed [`H2Pool::send`]: the error, and the request when not one byte of it was sent.
pub(crate) struct H2Failure {
    pub(crate) error: H2Error,
    pub(crate) request: Option<Request<ProxyBody>>,
}

/// What a connection goes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Endpoint(SocketAddr),
    /// An ExternalName's `host:port`.
    External(Authority),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Endpoint(addr) => addr.fmt(f),
            Target::External(authority) => authority.fmt(f),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    target: Target,
    tls: bool,
    connect_timeout: Duration,
}

struct Open {
    sender: SendRequest<ProxyBody>,
    last_used: Instant,
}

#[derive(Default)]
struct Inner {
    conns: Mutex<foldhash::HashMap<Key, Open>>,
    sweeper: AtomicBool,
}

/// Shared HTTP/2 connections to upstream targets. Cheap to clone.
#[derive(Clone)]
pub(crate) struct H2Pool {
    inner: Arc<Inner>,
    /// Ranges `ExternalName` Services may not resolve into (`ProxyConfig::external_name_deny`).
    deny: Arc<[IpNet]>,
}

impl H2Pool {
    pub(crate) fn new(deny: Arc<[IpNet]>) -> Self {
        Self {
            inner: Arc::default(),
            deny,
        }
    }

    /// Sends `req` (its URI absolute, naming the authority the backend is to see) over the
    /// connection to `target`, made when there is none. When nothing was sent, the failure
    /// hands the request back whole, so it can go to another endpoint.
    pub(crate) async fn send(
        &self,
        target: Target,
        protocol: BackendProtocol,
        connect_timeout: Duration,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, H2Failure> {
        self.start_sweeper();
        let key = Key {
            target,
            tls: protocol == BackendProtocol::Grpcs,
            connect_timeout,
        };
        let mut stale = 0;
        loop {
            let (mut sender, reused) = match self.open(&key) {
                Some(sender) => (sender, true),
                None => match Box::pin(self.connect(&key)).await {
                    Ok(sender) => (sender, false),
                    Err(error) => {
                        return Err(H2Failure {
                            error,
                            request: Some(req),
                        });
                    }
                },
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(UpstreamBody::unpooled)),
                Err(mut err) => match err.take_message() {
                    // Closed before the write: the request is whole, try a fresh connection.
                    Some(back) if reused && stale < MAX_STALE_RETRIES => {
                        stale += 1;
                        req = back;
                    }
                    back => {
                        let error = err.into_error();
                        return Err(H2Failure {
                            error: match back {
                                Some(_) => H2Error::Unsent(error),
                                None => H2Error::Http(error),
                            },
                            request: back,
                        });
                    }
                },
            }
        }
    }

    /// The open connection to the key's target, if there is one (a closed one is let go).
    fn open(&self, key: &Key) -> Option<SendRequest<ProxyBody>> {
        let mut conns = self.inner.conns.lock().ok()?;
        let open = conns.get_mut(key)?;
        if open.sender.is_closed() {
            conns.remove(key);
            return None;
        }
        open.last_used = Instant::now();
        Some(open.sender.clone())
    }

    async fn connect(&self, key: &Key) -> Result<SendRequest<ProxyBody>, H2Error> {
        let connect_error = |source: BoxError| H2Error::Connect {
            target: key.target.clone(),
            source,
        };
        let scheme = if key.tls { Scheme::HTTPS } else { Scheme::HTTP };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(key.target.to_string())
            .path_and_query("/")
            .build()
            .map_err(|e| connect_error(e.into()))?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        let target = key.target.clone();
        let sender = if key.tls {
            let io = h2_tls_connector(key.connect_timeout, &self.deny)
                .call(uri)
                .await
                .map_err(connect_error)?;
            let (sender, conn) = builder
                .handshake(io)
                .await
                .map_err(|e| connect_error(e.into()))?;
            tokio::spawn(drive(conn, target));
            sender
        } else {
            let io = connector(key.connect_timeout, &self.deny)
                .call(uri)
                .await
                .map_err(|e| connect_error(e.into()))?;
            let (sender, conn) = builder
                .handshake(io)
                .await
                .map_err(|e| connect_error(e.into()))?;
            tokio::spawn(drive(conn, target));
            sender
        };
        if let Ok(mut conns) = self.inner.conns.lock() {
            conns.insert(
                key.clone(),
                Open {
                    sender: sender.clone(),
                    last_used: Instant::now(),
                },
            );
        }
        Ok(sender)
    }

    /// One sweeper per pool, started on first use, ending with the pool: connections closed
    /// or unused for the idle timeout are let go (requests still on them finish).
    fn start_sweeper(&self) {
        if self.inner.sweeper.load(Ordering::Relaxed)
            || self.inner.sweeper.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(UPSTREAM_IDLE_TIMEOUT / 4);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Ok(mut conns) = inner.conns.lock() {
                    conns.retain(|_, open| {
                        !open.sender.is_closed() && open.last_used.elapsed() < UPSTREAM_IDLE_TIMEOUT
                    });
                }
            }
        });
    }
}

async fn drive<F: Future<Output = hyper::Result<()>>>(conn: F, target: Target) {
    if let Err(e) = conn.await {
        tracing::debug!(upstream = %target, error = %e, "upstream HTTP/2 connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    /// An h2c backend answering each request with its `:authority`, closing each connection
    /// after `per_connection` responses (when set). Counts accepted connections.
    async fn backend(per_connection: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let served = Arc::new(AtomicUsize::new(0));
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                let done_tx = Arc::new(Mutex::new(Some(done_tx)));
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                    if per_connection == Some(n)
                        && let Some(tx) = done_tx.lock().unwrap().take()
                    {
                        let _ = tx.send(());
                    }
                    let authority = req.uri().authority().map(|a| a.to_string());
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(authority.unwrap_or_default()),
                        )))
                    }
                });
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = done_rx => {
                            // Answer what was asked, then say goodbye (GOAWAY).
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &H2Pool, addr: SocketAddr) -> String {
        let req = Request::get("http://app.test/x")
            .body(crate::body::empty())
            .unwrap();
        let resp = pool
            .send(
                Target::Endpoint(addr),
                BackendProtocol::H2c,
                Duration::from_secs(2),
                req,
            )
            .await
            .unwrap_or_else(|f| panic!("{}", f.error));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn requests_share_one_connection_and_name_their_own_authority() {
        let (addr, accepted) = backend(None).await;
        let pool = H2Pool::new(Arc::from([]));
        for _ in 0..5 {
            assert_eq!(get(&pool, addr).await, "app.test");
        }
        let all = futures_util::future::join_all((0..8).map(|_| get(&pool, addr))).await;
        assert!(all.iter().all(|a| a == "app.test"), "{all:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closes_is_replaced() {
        let (addr, accepted) = backend(Some(1)).await;
        let pool = H2Pool::new(Arc::from([]));
        for _ in 0..5 {
            assert_eq!(get(&pool, addr).await, "app.test");
        }
        assert!(
            accepted.load(Ordering::SeqCst) >= 2,
            "a fresh connection was made"
        );
    }
}
