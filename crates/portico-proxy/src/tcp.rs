//! TCP listeners: plain (HTTP/1.1 and h2c prior knowledge) and TLS (ALPN h2, http/1.1).
//!
//! The accept loop never exits on a per-connection error; when the process runs out of file
//! descriptors it backs off briefly instead of spinning. A connection past the global or
//! per-client limit (`limits`) is closed at once, before its TLS handshake. Every connection
//! has a watchdog for two tokens, `draining` (finish what is in flight, then close) and
//! `force` (drop now), and for two clocks (`activity`): no request activity for the idle
//! timeout closes it, a response waiting for the client for the send timeout drops it.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::{Activity, FromClient, ToClient, Tracked};
use crate::body;
use crate::config::Limits;
use crate::h1::{self, server::Prefixed};
use crate::handler::{self, ConnInfo, Shared, Transport};
use crate::limits::{ConnCounters, ConnLimits, ConnPermit};

/// Binds a TCP listener; IPv6 sockets are v6-only so `[::]` and `0.0.0.0` can share a port.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Everything an accept loop needs.
pub(crate) struct Serve {
    pub shared: Arc<Shared>,
    pub tls: Option<TlsAcceptor>,
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub limits: Limits,
    pub draining: CancellationToken,
    pub connections: TaskTracker,
    pub conns: Arc<ConnLimits>,
}

/// Both HTTP/2 receive windows (per stream and per connection): at most this much request
/// body from one client sits in our buffers, whatever the number of streams.
const H2_RECEIVE_WINDOW: u32 = 1024 * 1024;

pub(crate) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .auto_date_header(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        // Explicit, so the per-connection bound in ARCHITECTURE.md holds whatever hyper's
        // defaults become: request bodies by the connection window, responses to a client
        // that does not read by streams x (send buffer + upstream read chunks).
        .initial_stream_window_size(H2_RECEIVE_WINDOW)
        .initial_connection_window_size(H2_RECEIVE_WINDOW)
        .max_send_buf_size(limits.h2_stream_send_buffer)
        // No PINGs: a PING and its PONG are traffic, so they would keep an idle connection
        // alive forever; the idle watchdog in `drive` also catches dead peers.
        .keep_alive_interval(None)
        .auto_date_header(false);
    builder
}

pub(crate) async fn accept_loop(listener: TcpListener, serve: Arc<Serve>) {
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = serve.draining.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Past a limit: closed before anything is spent on it (counted).
                let Some(permit) = serve.conns.try_acquire(peer.ip()) else {
                    tracing::debug!(%peer, "connection limit reached; closing");
                    continue;
                };
                let serve2 = serve.clone();
                serve
                    .connections
                    .spawn(async move { serve_connection(stream, peer, permit, serve2).await });
            }
            Err(e) if is_resource_exhaustion(&e) => {
                tracing::warn!(listener = ?local, error = %e, "accept: out of resources; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => tracing::debug!(listener = ?local, error = %e, "accept failed"),
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: ConnPermit,
    serve: Arc<Serve>,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    // The permit lives with the socket: an upgraded (WebSocket) connection outlives this
    // task and keeps its place in the limits.
    let stream = Tracked {
        inner: stream,
        activity: activity.clone(),
        _permit: permit,
    };
    match &serve.tls {
        None => {
            let info = ConnInfo {
                peer,
                local,
                transport: Transport::Plain,
            };
            drive(stream, info, &serve, activity, true).await
        }
        // Boxed: the TLS state machine is several times the size of a plain connection's,
        // and every connection task would otherwise reserve room for it.
        Some(acceptor) => {
            Box::pin(serve_tls(stream, peer, local, acceptor, &serve, activity)).await
        }
    }
}

async fn serve_tls(
    stream: Tracked<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    acceptor: &TlsAcceptor,
    serve: &Serve,
    activity: Arc<Activity>,
) {
    let handshake = tokio::time::timeout(serve.limits.handshake_timeout, acceptor.accept(stream));
    let tls = tokio::select! {
        r = handshake => r,
        _ = serve.shared.force.cancelled() => return,
    };
    match tls {
        Ok(Ok(tls)) => {
            let info = ConnInfo {
                peer,
                local,
                transport: Transport::Tls,
            };
            // ALPN h2 speaks HTTP/2 from the first byte: straight to hyper.
            let lean = tls.get_ref().1.alpn_protocol() != Some(b"h2");
            if !lean {
                activity.set_frames_only();
            }
            drive(tls, info, serve, activity, lean).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn drive<I>(io: I, info: ConnInfo, serve: &Serve, activity: Arc<Activity>, lean: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The drain and force tokens and the idle check live in a watchdog task of their own:
    // polled beside the connection they cost ~1k instructions per request, since every
    // wake-up of the connection polled them all again.
    let watch = Arc::new(Watch::default());
    let _watchdog = AbortOnDrop(tokio::spawn(watchdog(
        watch.clone(),
        activity.clone(),
        Clocks {
            idle: serve.limits.idle_timeout,
            send: serve.limits.send_timeout,
        },
        serve.draining.clone(),
        serve.shared.force.clone(),
        serve.shared.metrics.connections.clone(),
    )));
    let mut io = io;
    let prefix = if lean {
        match serve_lean(&mut io, info, serve, &activity, &watch).await {
            Some(prefix) => prefix,
            None => return,
        }
    } else {
        Bytes::new()
    };
    // h2c with prior knowledge: HTTP/2 from the first byte after the preface.
    if prefix.starts_with(b"PRI * HTTP/2.0") {
        activity.set_frames_only();
    }
    let shared = serve.shared.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let shared = shared.clone();
        let activity = activity.clone();
        async move {
            if req.version() == http::Version::HTTP_2 {
                activity.set_frames_only();
            }
            let upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
            let req = req.map(|b| body::boxed(FromClient::new(b, activity.clone())));
            // A request waiting for its backend is not idle, however quiet the socket is.
            let pending = activity.pending();
            let resp = handler::handle(&shared, info, req, upgrade).await;
            drop(pending);
            Ok::<_, std::convert::Infallible>(resp.map(|b| ToClient::new(b, activity)))
        }
    });
    let conn = serve
        .builder
        .serve_connection_with_upgrades(TokioIo::new(Prefixed::new(prefix, io)), service);
    let mut conn = pin!(conn);
    let mut closing = false;
    let result = std::future::poll_fn(|cx| {
        let raised = watch.raised(cx);
        if raised & Watch::DROP != 0 {
            return Poll::Ready(None);
        }
        if raised & Watch::CLOSE != 0 && !closing {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx).map(Some)
    })
    .await;
    if let Some(Err(e)) = result {
        tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
    }
}

/// Runs the lean HTTP/1.1 loop under the watchdog; `Some(bytes)` hands the connection (and
/// what was read from it) to hyper, `None` means it is finished.
async fn serve_lean<I>(
    io: &mut I,
    info: ConnInfo,
    serve: &Serve,
    activity: &Activity,
    watch: &Watch,
) -> Option<Bytes>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let idle = AtomicBool::new(true);
    let lean = h1::server::serve(
        io,
        info,
        &serve.shared,
        serve.limits.max_header_bytes,
        &idle,
        || watch.flags.load(Ordering::Acquire) & Watch::CLOSE != 0,
        || activity.pending(),
    );
    let mut lean = pin!(lean);
    let next = std::future::poll_fn(|cx| {
        let raised = watch.raised(cx);
        if raised & Watch::DROP != 0 || (raised & Watch::CLOSE != 0 && idle.load(Ordering::Acquire))
        {
            return Poll::Ready(h1::server::Next::Closed);
        }
        lean.as_mut().poll(cx)
    })
    .await;
    match next {
        h1::server::Next::Closed => None,
        h1::server::Next::HandOver(prefix) => Some(prefix),
    }
}

/// What the watchdog asks of its connection, and how to wake the connection's task.
#[derive(Default)]
struct Watch {
    flags: AtomicU8,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Watch {
    /// Finish the request in flight, then close (drain, or idle for `idle_timeout`).
    const CLOSE: u8 = 1;
    /// Drop the connection now (drain deadline, or still silent after a close was asked).
    const DROP: u8 = 2;

    /// The flags raised so far; the connection's task is woken when more are.
    fn raised(&self, cx: &Context<'_>) -> u8 {
        if let Ok(mut slot) = self.waker.lock()
            && !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            *slot = Some(cx.waker().clone());
        }
        self.flags.load(Ordering::Acquire)
    }

    fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
        if let Some(waker) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            waker.wake();
        }
    }
}

/// The watchdog's two timeouts.
#[derive(Clone, Copy)]
struct Clocks {
    idle: Duration,
    send: Duration,
}

async fn watchdog(
    watch: Arc<Watch>,
    activity: Arc<Activity>,
    clocks: Clocks,
    draining: CancellationToken,
    force: CancellationToken,
    counters: Arc<ConnCounters>,
) {
    let period = (clocks.idle.min(clocks.send) / 4).max(Duration::from_millis(250));
    let mut tick = tokio::time::interval(period);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = draining.cancelled(), if !closing => {
                closing = true;
                watch.raise(Watch::CLOSE);
            }
            _ = force.cancelled() => return watch.raise(Watch::DROP),
            _ = tick.tick() => {
                if activity.stalled_for() >= clocks.send {
                    // The client takes nothing of a response: what is buffered for it goes.
                    counters.send_timeouts.fetch_add(1, Ordering::Relaxed);
                    return watch.raise(Watch::DROP);
                }
                if activity.has_pending() {
                    continue;
                }
                let quiet = activity.quiet_for();
                if quiet >= clocks.idle * 2 {
                    // Asked to close a while ago and still silent: drop it.
                    return watch.raise(Watch::DROP);
                }
                if quiet >= clocks.idle && !closing {
                    closing = true;
                    counters.idle_closes.fetch_add(1, Ordering::Relaxed);
                    watch.raise(Watch::CLOSE);
                }
            }
        }
    }
}

/// Ends the watchdog with its connection, however the connection ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket). h2c upgrades are not offered.
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == http::Version::HTTP_11
        && req
            .headers()
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.eq_ignore_ascii_case("h2c"))
        && req
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}
