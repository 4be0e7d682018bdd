//! A purpose-built keep-alive pool for plain HTTP/1.1 to endpoint addresses, the common
//! upstream. hyper-util's legacy client did the same job with more machinery per request
//! (a SipHash-keyed pool behind a connect-or-checkout race, a spawned task per response to
//! put the connection back); here a request takes an idle `SendRequest` from a per-endpoint
//! stack under one short lock, and the response body puts it back when it ends.
//!
//! Each connection is driven by its own task (hyper's `Connection` future). Idle connections
//! expire after `idle_timeout` (a sweeper task ticks four times per timeout, so expiry happens
//! between 1 and 1.25 timeouts); dropping the `SendRequest` closes the connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{BoxError, ProxyBody};
use crate::h1;
use crate::h1::client::{Conn, ExchangeError, RawBody};

/// Idle connections kept per endpoint at most (as the legacy client's `pool_max_idle_per_host`).
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// A stale pooled connection (closed by the backend before our request was written) is
/// replaced at most this many times per request before the pool gives up.
const MAX_STALE_RETRIES: usize = 4;
/// The read buffer of one upstream connection grows up to this (hyper's default is ~400 KB;
/// response heads beyond 64 KB are refused, as nginx's `proxy_buffer_size` would).
const MAX_BUF_SIZE: usize = 64 * 1024;

/// Why a pooled request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// No connection could be made (refused, unreachable, connect timeout): nothing was sent.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Connections closed before the request was written, every time: nothing was sent.
    #[error("connection closed before the request was sent: {0}")]
    Unsent(#[source] hyper::Error),
    /// The request was (at least partly) sent.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The request was (at least partly) sent, on the lean path for bodiless requests.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
}

/// A failed [`H1Pool::send`]: the error, and the request when not one byte of it was sent.
#[derive(Debug)]
pub(crate) struct PoolFailure {
    pub(crate) error: PoolError,
    pub(crate) request: Option<Request<ProxyBody>>,
}

impl PoolError {
    /// Not one byte of the request reached the endpoint, so another one may be tried.
    pub(crate) fn nothing_sent(&self) -> bool {
        matches!(self, PoolError::Connect { .. } | PoolError::Unsent(_))
    }
}

/// Idle connections of one kind, a stack per endpoint under one short lock: the most
/// recently used is taken first (the least likely to have been closed by the peer).
struct IdleStack<T> {
    /// foldhash: endpoint addresses come from the table, not from clients, so SipHash's
    /// resistance to chosen keys buys nothing on this per-request lookup.
    by_addr: Mutex<foldhash::HashMap<Key, Vec<Idle<T>>>>,
}

/// An idle stack's key: the endpoint address, hashed in one write. (The derived `Hash` of a
/// `SocketAddr` is four writes: callgrind put it at ~47 instructions per lookup, two
/// lookups per request.) Equal addresses hash alike; V6 flow and scope are left to `Eq`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(SocketAddr);

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self.0 {
            SocketAddr::V4(a) => {
                state.write_u64(u64::from(a.ip().to_bits()) << 16 | u64::from(a.port()))
            }
            SocketAddr::V6(a) => state.write_u128(a.ip().to_bits() ^ u128::from(a.port())),
        }
    }
}

struct Idle<T> {
    conn: T,
    /// The sweep tick at which it was put back.
    tick: u64,
}

impl<T> Default for IdleStack<T> {
    fn default() -> Self {
        Self {
            by_addr: Mutex::default(),
        }
    }
}

impl<T> IdleStack<T> {
    /// The most recent idle connection to `addr` that is `usable`; the unusable ones met on
    /// the way are dropped.
    fn take(&self, addr: SocketAddr, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        let mut by_addr = self.by_addr.lock().ok()?;
        let stack = by_addr.get_mut(&Key(addr))?;
        while let Some(mut idle) = stack.pop() {
            if usable(&mut idle.conn) {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps `conn` for reuse, unless `addr` already has the most idle connections kept.
    fn put(&self, addr: SocketAddr, conn: T, tick: u64) {
        let Ok(mut by_addr) = self.by_addr.lock() else {
            return;
        };
        let stack = by_addr.entry(Key(addr)).or_default();
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push(Idle { conn, tick });
        }
    }

    /// Drops the connections idle since before `expired_before` or `dead`, after the lock is
    /// released (dropping a hyper sender wakes its connection task).
    fn sweep(&self, expired_before: u64, dead: impl Fn(&T) -> bool) {
        let mut dropped = Vec::new();
        if let Ok(mut by_addr) = self.by_addr.lock() {
            by_addr.retain(|_, stack| {
                let mut i = 0;
                while i < stack.len() {
                    if stack[i].tick < expired_before || dead(&stack[i].conn) {
                        dropped.push(stack.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                !stack.is_empty()
            });
        }
        drop(dropped);
    }

    /// Idle connections to `addr` now (tests).
    #[cfg(test)]
    fn len(&self, addr: SocketAddr) -> usize {
        self.by_addr
            .lock()
            .unwrap()
            .get(&Key(addr))
            .map_or(0, Vec::len)
    }
}

struct Inner {
    idle: IdleStack<SendRequest<ProxyBody>>,
    /// Idle connections of the lean path (`h1::client`), which needs no hyper connection.
    idle_raw: IdleStack<Conn>,
    idle_timeout: Duration,
    /// Advanced by the sweeper; read when a connection is put back (no clock on the hot path).
    tick: AtomicU64,
    sweeper: AtomicBool,
    builder: http1::Builder,
}

/// Keep-alive HTTP/1.1 connections to endpoint addresses. Cheap to clone.
#[derive(Clone)]
pub(crate) struct H1Pool {
    inner: Arc<Inner>,
}

/// Sweeps per idle timeout.
const SWEEPS_PER_TIMEOUT: u64 = 4;

impl H1Pool {
    pub(crate) fn new(idle_timeout: Duration) -> Self {
        let mut builder = http1::Builder::new();
        builder.max_buf_size(MAX_BUF_SIZE);
        Self {
            inner: Arc::new(Inner {
                idle: IdleStack::default(),
                idle_raw: IdleStack::default(),
                idle_timeout,
                tick: AtomicU64::new(0),
                sweeper: AtomicBool::new(false),
                builder,
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` on an idle connection, or a new
    /// one. A pooled connection that turns out closed before the request was written is
    /// replaced transparently (nothing was sent on it). When nothing was sent at all, the
    /// failure hands the request back whole, so it can go to another endpoint.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, PoolFailure> {
        self.start_sweeper();
        let mut stale = 0;
        loop {
            let (mut sender, reused) = match self.checkout(addr) {
                Some(sender) => (sender, true),
                // Boxed: the connect path is rare and large; keep the common future small.
                None => match Box::pin(self.connect(addr, connect_timeout)).await {
                    Ok(sender) => (sender, false),
                    Err(error) => {
                        return Err(PoolFailure {
                            error,
                            request: Some(req),
                        });
                    }
                },
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        sender: Some(sender),
                        addr,
                        pool: Arc::downgrade(&self.inner),
                    };
                    return Ok(resp.map(|incoming| UpstreamBody::pooled(incoming, lease)));
                }
                Err(mut err) => match err.take_message() {
                    // Closed before the write: the request is whole, try a fresher connection.
                    Some(back) if reused && stale < MAX_STALE_RETRIES => {
                        stale += 1;
                        req = back;
                    }
                    Some(back) => {
                        return Err(PoolFailure {
                            error: PoolError::Unsent(err.into_error()),
                            request: Some(back),
                        });
                    }
                    None => {
                        return Err(PoolFailure {
                            error: PoolError::Http(err.into_error()),
                            request: None,
                        });
                    }
                },
            }
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        self.inner.idle.take(addr, |sender| sender.is_ready())
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<SendRequest<ProxyBody>, PoolError> {
        let connect_error = |source| PoolError::Connect { addr, source };
        let stream = connect_tcp(addr, timeout).await?;
        let (sender, conn) = self
            .inner
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends a request without a body (and not asking for an upgrade) over the lean path:
    /// `head` (the request's, encoded by the exchange with its forwarding values) is written
    /// by us and the response read by its own body, no connection task.
    /// A pooled connection found closed, or failing the write, is replaced (the peer was
    /// gone, so it processed nothing), and so is one closed without a byte of answer when
    /// the method is idempotent; a failure before anything was written hands the request
    /// back.
    pub(crate) async fn send_bodyless(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        req: Request<ProxyBody>,
        head: &[u8],
    ) -> Result<Response<UpstreamBody>, PoolFailure> {
        self.start_sweeper();
        let mut stale = 0;
        loop {
            let pooled = std::future::poll_fn(|cx| Poll::Ready(self.checkout_raw(addr, cx))).await;
            let (mut conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => match Box::pin(connect_tcp(addr, connect_timeout)).await {
                    Ok(stream) => (Conn::new(stream), false),
                    Err(error) => {
                        return Err(PoolFailure {
                            error,
                            request: Some(req),
                        });
                    }
                },
            };
            if let Err(e) = h1::client::write_head(&mut conn, head).await {
                if reused && stale < MAX_STALE_RETRIES {
                    stale += 1;
                    continue;
                }
                return Err(PoolFailure {
                    error: e.into(),
                    request: None,
                });
            }
            let pool = Arc::downgrade(&self.inner);
            let done = Box::new(move |conn: Conn| {
                if let Some(pool) = pool.upgrade() {
                    pool.put_back_raw(addr, conn);
                }
            });
            return match h1::client::read_response(conn, req.method(), done).await {
                Ok(resp) => Ok(resp.map(UpstreamBody::Raw)),
                // The backend closed a reused connection as our request arrived (its idle
                // timeout raced our reuse). An idempotent request may be sent again
                // (RFC 9110 §9.2.2), on a fresh connection if no other idle one is open.
                Err(ExchangeError::Unanswered)
                    if reused && req.method().is_idempotent() && stale < MAX_STALE_RETRIES =>
                {
                    stale += 1;
                    continue;
                }
                Err(e) => Err(PoolFailure {
                    error: e.into(),
                    request: None,
                }),
            };
        }
    }

    fn checkout_raw(&self, addr: SocketAddr, cx: &mut Context<'_>) -> Option<Conn> {
        self.inner
            .idle_raw
            .take(addr, |conn| conn.idle_and_open(cx))
    }

    /// One sweeper per pool, started on first use (a runtime is needed), ending with the pool.
    fn start_sweeper(&self) {
        if self.inner.sweeper.load(Ordering::Relaxed)
            || self.inner.sweeper.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let period =
            (self.inner.idle_timeout / SWEEPS_PER_TIMEOUT as u32).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.sweep();
            }
        });
    }

    /// Idle connections per endpoint now (tests).
    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        self.inner.idle.len(addr)
    }
}

/// A TCP connection to `addr` within `timeout`, with TCP_NODELAY and keepalive probes.
async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, PoolError> {
    let connect_error = |source| PoolError::Connect { addr, source };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(connect_error(e)),
        Err(_) => {
            return Err(connect_error(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    Ok(stream)
}

impl Inner {
    fn put_back_raw(&self, addr: SocketAddr, conn: Conn) {
        self.idle_raw
            .put(addr, conn, self.tick.load(Ordering::Relaxed));
    }

    fn put_back(&self, addr: SocketAddr, sender: SendRequest<ProxyBody>) {
        if !sender.is_closed() {
            self.idle
                .put(addr, sender, self.tick.load(Ordering::Relaxed));
        }
    }

    fn sweep(&self) {
        let now = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        // Put back more than SWEEPS_PER_TIMEOUT ticks ago: idle for over one timeout.
        let expired_before = now.saturating_sub(SWEEPS_PER_TIMEOUT);
        self.idle.sweep(expired_before, SendRequest::is_closed);
        self.idle_raw.sweep(expired_before, |_| false);
    }
}

/// The connection a response is being read from; it goes back to the pool when the body
/// has ended (a body dropped early leaves the connection busy, and checkout skips it).
pub(crate) struct Lease {
    sender: Option<SendRequest<ProxyBody>>,
    addr: SocketAddr,
    pool: Weak<Inner>,
}

impl Lease {
    fn release(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.put_back(self.addr, sender);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// A response body from upstream, returning its pooled connection when it ends.
pub(crate) enum UpstreamBody {
    /// From a hyper client connection (ours, with a lease; or the legacy client's).
    Hyper {
        incoming: Incoming,
        lease: Option<Lease>,
    },
    /// From the lean path for bodiless requests.
    Raw(RawBody),
}

impl UpstreamBody {
    /// Whether the response head came without hop-by-hop headers (the lean path leaves them
    /// out while parsing), so the handler need not look for them again.
    pub(crate) fn hop_by_hop_stripped(&self) -> bool {
        matches!(self, UpstreamBody::Raw(body) if body.hop_by_hop_stripped())
    }

    fn pooled(incoming: Incoming, lease: Lease) -> Self {
        UpstreamBody::Hyper {
            incoming,
            lease: Some(lease),
        }
    }

    /// A body whose connection is managed elsewhere (the legacy client).
    pub(crate) fn unpooled(incoming: Incoming) -> Self {
        UpstreamBody::Hyper {
            incoming,
            lease: None,
        }
    }

    /// The connection will not serve another request (it was upgraded): never pool it.
    pub(crate) fn forget_connection(&mut self) {
        match self {
            UpstreamBody::Hyper {
                lease: Some(lease), ..
            } => lease.sender = None,
            UpstreamBody::Hyper { lease: None, .. } => {}
            UpstreamBody::Raw(raw) => raw.forget_connection(),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Raw(raw) => Pin::new(raw).poll_frame(cx),
            UpstreamBody::Hyper { incoming, lease } => {
                let frame = std::task::ready!(Pin::new(incoming).poll_frame(cx));
                match &frame {
                    None => {
                        if let Some(mut lease) = lease.take() {
                            lease.release();
                        }
                    }
                    Some(Err(_)) => {
                        if let Some(lease) = lease {
                            lease.sender = None;
                        }
                    }
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper { incoming, .. } => incoming.is_end_stream(),
            UpstreamBody::Raw(raw) => raw.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper { incoming, .. } => incoming.size_hint(),
            UpstreamBody::Raw(raw) => raw.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::head::encode_request_head;
    use crate::headers::ForwardedValues;
    use http::Method;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What a raw test backend does after reading one request head.
    enum Reply {
        Send(&'static [u8]),
        SendThenClose(&'static [u8]),
        Close,
    }

    /// A raw HTTP/1.1 backend: after each request head it reads, does what `reply` says
    /// (given how many responses this connection has sent). Counts accepted connections.
    async fn raw_backend(
        reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let reply = Arc::new(reply);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let (resp, close) = match reply(served) {
                                Reply::Send(resp) => (resp, false),
                                Reply::SendThenClose(resp) => (resp, true),
                                Reply::Close => return,
                            };
                            if s.write_all(resp).await.is_err() || close {
                                return;
                            }
                            served += 1;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Answers `ok` to every request; `close_after`: hang up (without saying so) after that
    /// many responses on a connection.
    async fn backend(close_after: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        raw_backend(move |served| {
            if close_after == Some(served + 1) {
                Reply::SendThenClose(OK)
            } else {
                Reply::Send(OK)
            }
        })
        .await
    }

    fn get() -> Request<ProxyBody> {
        Request::builder()
            .uri("/")
            .header("host", "pool.test")
            .body(crate::body::empty())
            .unwrap()
    }

    async fn fetch(pool: &H1Pool, addr: SocketAddr) -> Result<Bytes, PoolFailure> {
        let resp = pool.send(addr, Duration::from_secs(2), get()).await?;
        Ok(resp.into_body().collect().await.expect("body").to_bytes())
    }

    /// `req` over the lean path, its head encoded as the exchange does (no forwarding values).
    async fn send_lean(
        pool: &H1Pool,
        addr: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, PoolFailure> {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let head = encode_request_head(&req, target, &ForwardedValues::none());
        pool.send_bodyless(addr, Duration::from_secs(2), req, &head)
            .await
    }

    /// The same over the lean path for bodiless requests.
    async fn fetch_lean(pool: &H1Pool, addr: SocketAddr) -> Result<Bytes, PoolFailure> {
        let resp = send_lean(pool, addr, get()).await?;
        Ok(resp.into_body().collect().await.expect("body").to_bytes())
    }

    #[tokio::test]
    async fn connections_are_reused() {
        let (addr, accepted) = backend(None).await;
        let pool = H1Pool::new(Duration::from_secs(60));
        for _ in 0..20 {
            assert_eq!(fetch(&pool, addr).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(addr), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_more_connections_then_share_them() {
        let (addr, accepted) = backend(None).await;
        let pool = H1Pool::new(Duration::from_secs(60));
        let resps: Vec<_> = futures_util::future::join_all(
            (0..4).map(|_| pool.send(addr, Duration::from_secs(2), get())),
        )
        .await;
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        for resp in resps {
            let body = resp.unwrap().into_body().collect().await.unwrap();
            assert_eq!(body.to_bytes(), "ok");
        }
        assert_eq!(pool.idle_count(addr), 4);
        for _ in 0..8 {
            fetch(&pool, addr).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    /// Waits (with a deadline, not a fixed time) until the sweeper task has emptied `len`.
    async fn swept(len: impl Fn() -> usize) {
        portico_test_support::wait::poll_until(
            "idle connections swept",
            Duration::from_secs(10),
            || {
                let now = len();
                async move { (now == 0).then_some(()) }
            },
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn idle_connections_expire_after_one_timeout_of_sweeps() {
        let (addr, accepted) = backend(None).await;
        // Long enough that the sweeper task never ticks during the test: the sweeps are ours.
        let pool = H1Pool::new(Duration::from_secs(600));
        fetch(&pool, addr).await.unwrap();
        fetch_lean(&pool, addr).await.unwrap();
        for _ in 0..SWEEPS_PER_TIMEOUT {
            pool.inner.sweep();
        }
        assert_eq!(pool.idle_count(addr), 1, "idle for less than one timeout");
        assert_eq!(
            pool.inner.idle_raw.len(addr),
            1,
            "lean: idle for less than one timeout"
        );
        pool.inner.sweep();
        assert_eq!(pool.idle_count(addr), 0, "expired and closed");
        assert_eq!(pool.inner.idle_raw.len(addr), 0, "lean: expired and closed");
        fetch(&pool, addr).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_sweeper_task_expires_idle_connections() {
        let (addr, accepted) = backend(None).await;
        let pool = H1Pool::new(Duration::from_millis(100));
        fetch(&pool, addr).await.unwrap();
        assert_eq!(pool.idle_count(addr), 1);
        swept(|| pool.idle_count(addr)).await;
        fetch(&pool, addr).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_backend_is_not_reused() {
        // The backend hangs up after each response; the next request must use a new
        // connection and succeed, never fail on the dead one.
        let (addr, accepted) = backend(Some(1)).await;
        let pool = H1Pool::new(Duration::from_secs(60));
        for i in 1..=5 {
            assert_eq!(fetch(&pool, addr).await.unwrap(), "ok");
            // Let the connection task see the hang-up (the race itself is the next test's).
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(accepted.load(Ordering::SeqCst), i);
        }
    }

    #[tokio::test]
    async fn back_to_back_requests_survive_backend_hangups() {
        // The backend hangs up after each response and the next request follows at once, so
        // a pooled connection may be checked while its hang-up is in flight: every request
        // must still succeed, each on its own connection. (Whether the closed-before-write
        // replacement path runs depends on timing; here the hang-up is usually seen first.)
        let (addr, accepted) = backend(Some(1)).await;
        let pool = H1Pool::new(Duration::from_secs(60));
        for _ in 0..50 {
            assert_eq!(fetch(&pool, addr).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 50);
    }

    #[tokio::test]
    async fn refused_is_a_connect_error_with_nothing_sent() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let pool = H1Pool::new(Duration::from_secs(60));
        let failure = fetch(&pool, addr).await.unwrap_err();
        let err = &failure.error;
        assert!(matches!(err, PoolError::Connect { .. }), "{err}");
        assert!(err.nothing_sent());
        let back = failure.request.expect("the unsent request is handed back");
        assert_eq!(back.headers()["host"], "pool.test");
    }

    #[tokio::test]
    async fn lean_path_reuses_connections_and_survives_hangups() {
        let (addr, accepted) = backend(None).await;
        let pool = H1Pool::new(Duration::from_secs(60));
        for _ in 0..20 {
            assert_eq!(fetch_lean(&pool, addr).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.inner.idle_raw.len(addr), 1);

        let (addr, accepted) = backend(Some(1)).await;
        for _ in 0..50 {
            assert_eq!(fetch_lean(&pool, addr).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 50);
    }

    #[tokio::test]
    async fn the_sweeper_task_expires_lean_path_idle_connections() {
        let (addr, accepted) = backend(None).await;
        let pool = H1Pool::new(Duration::from_millis(100));
        fetch_lean(&pool, addr).await.unwrap();
        assert_eq!(pool.inner.idle_raw.len(addr), 1);
        swept(|| pool.inner.idle_raw.len(addr)).await;
        fetch_lean(&pool, addr).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Answers each request head (across connections) with the next canned response, then
    /// closes if `close` is set; closes once the script is used up.
    async fn scripted(
        responses: Vec<&'static [u8]>,
        close: bool,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let responses = std::sync::Mutex::new(responses.into_iter());
        raw_backend(move |_| match responses.lock().unwrap().next() {
            Some(resp) if close => Reply::SendThenClose(resp),
            Some(resp) => Reply::Send(resp),
            None => Reply::Close,
        })
        .await
    }

    #[tokio::test]
    async fn lean_path_framing() {
        let pool = H1Pool::new(Duration::from_secs(60));
        // Chunked with extensions and trailers, an interim 103 first, then a length-framed
        // response on the same connection.
        let (addr, accepted) = scripted(
            vec![
                b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nx-check: 1\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            ],
            false,
        )
        .await;
        let resp = send_lean(&pool, addr, get()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-check"], "1");
        assert_eq!(collected.to_bytes(), "abcde");
        let resp = send_lean(&pool, addr, get()).await.unwrap();
        assert_eq!(resp.status(), 204);
        assert!(resp.body().is_end_stream());
        drop(resp);
        assert_eq!(fetch_lean(&pool, addr).await.unwrap(), "hello");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection throughout"
        );

        // No length at all: the body runs to the close, and the connection is not reused.
        let (addr, accepted) = scripted(
            vec![
                b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            ],
            true,
        )
        .await;
        assert_eq!(fetch_lean(&pool, addr).await.unwrap(), "until the end");
        assert_eq!(fetch_lean(&pool, addr).await.unwrap(), "ok");
        assert_eq!(fetch_lean(&pool, addr).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        // A short body is an error, never a truncated success.
        let (addr, _) = scripted(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
            true,
        )
        .await;
        let resp = send_lean(&pool, addr, get()).await.unwrap();
        assert!(resp.into_body().collect().await.is_err());
        // Conflicting lengths are refused.
        let (addr, _) = scripted(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"],
            true,
        )
        .await;
        let Err(err) = send_lean(&pool, addr, get()).await else {
            panic!("conflicting Content-Length accepted");
        };
        assert!(!err.error.nothing_sent(), "{}", err.error);
    }

    #[tokio::test]
    async fn lean_path_head_requests_have_no_body() {
        let pool = H1Pool::new(Duration::from_secs(60));
        let (addr, accepted) = scripted(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            ],
            false,
        )
        .await;
        let head = Request::builder()
            .method(Method::HEAD)
            .uri("/")
            .header("host", "pool.test")
            .body(crate::body::empty())
            .unwrap();
        let resp = send_lean(&pool, addr, head).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "1000");
        assert!(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
        assert_eq!(fetch_lean(&pool, addr).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
