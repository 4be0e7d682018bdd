//! The QUIC listener: HTTP/3 over quinn, with the same certificate resolver as TCP.
//!
//! The UDP socket is bound once and never rebound; a table swap changes nothing here.
//! Garbage datagrams are quinn's to drop; a failed connection or stream ends only itself.
//!
//! Rapid reset: a stream the client cancels keeps its slot in the concurrent-stream limit
//! until our handler is done with it (quinn grants new stream credit only for streams closed
//! on both sides), so cancelled streams cannot pile up work beyond that limit. Beyond it, a
//! connection that cancels more requests than it lets finish, past an allowance, is closed
//! with `H3_EXCESSIVE_LOAD` and the work of its open streams is dropped ([`CancelBudget`]).
//!
//! Exhaustion: an attempt past the connection limits (`limits`) is refused before its
//! handshake; with many handshakes in progress an unvalidated client gets a Retry first. The
//! flow-control windows are explicit (`Limits::quic_*`); a response stream the client gives
//! no credit for the send timeout is reset; a connection with no request stream open for the
//! idle timeout is closed, whatever PINGs keep quinn's own idle timer alive.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use quinn::crypto::rustls::QuicServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{H3RequestBody, ProxyBody};
use crate::config::Limits;
use crate::handler::{self, ConnInfo, Shared, Transport};
use crate::limits::ConnLimits;

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("QUIC needs TLS 1.3 with AES-128-GCM: {0}")]
    Crypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

pub(crate) fn bind(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    limits: &Limits,
) -> Result<quinn::Endpoint, QuicError> {
    let socket = udp_socket(addr).map_err(|source| QuicError::Bind { addr, source })?;
    endpoint(socket, tls, limits)
}

/// A QUIC endpoint on `socket`, bound already (by [`bind`] or by whoever handed it over).
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    tls: Arc<rustls::ServerConfig>,
    limits: &Limits,
) -> Result<quinn::Endpoint, QuicError> {
    let addr = socket.local_addr().map_err(|source| QuicError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_concurrent_streams.into())
        .max_concurrent_uni_streams(16u32.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok())
        .keep_alive_interval(None)
        // quinn's defaults: an unbounded connection receive window and 10 MB to send.
        .stream_receive_window(limits.quic_stream_receive_window.into())
        .receive_window(limits.quic_receive_window.into())
        .send_window(limits.quic_send_window);
    server.transport_config(Arc::new(transport));
    let bind_err = |source| QuicError::Bind { addr, source };
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub(crate) struct ServeQuic {
    pub shared: Arc<Shared>,
    pub limits: Limits,
    pub draining: CancellationToken,
    pub connections: TaskTracker,
    pub conns: Arc<ConnLimits>,
    /// Handshakes in progress on this listener.
    pub handshakes: AtomicUsize,
}

/// Counts a handshake in progress until dropped.
struct Handshake<'a>(&'a AtomicUsize);

impl<'a> Handshake<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Handshake<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, serve: Arc<ServeQuic>) {
    let Ok(local) = endpoint.local_addr() else {
        return;
    };
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = serve.draining.cancelled() => break,
        };
        let Some(mut incoming) = incoming else { break };
        if !incoming.remote_address_validated()
            && serve.handshakes.load(Ordering::Relaxed) >= serve.limits.quic_retry_above_handshakes
        {
            // Stateless: a spoofed source never comes back with the token.
            match incoming.retry() {
                Ok(()) => {
                    let counters = &serve.shared.metrics.connections;
                    counters.quic_retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => incoming = e.into_incoming(),
            }
        }
        let peer = incoming.remote_address();
        let Some(permit) = serve.conns.try_acquire(peer.ip()) else {
            tracing::debug!(%peer, "connection limit reached; refusing a QUIC connection");
            incoming.refuse();
            continue;
        };
        let serve2 = serve.clone();
        serve.connections.spawn(async move {
            let _permit = permit;
            let handshake = Handshake::start(&serve2.handshakes);
            let connecting = tokio::time::timeout(serve2.limits.handshake_timeout, incoming);
            let connected = connecting.await;
            drop(handshake);
            match connected {
                Ok(Ok(conn)) => {
                    serve_connection(
                        conn,
                        ConnInfo {
                            peer,
                            local,
                            transport: Transport::Quic,
                        },
                        serve2,
                    )
                    .await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "QUIC handshake failed"),
                Err(_) => tracing::debug!(%peer, "QUIC handshake timed out"),
            }
        });
    }
    // Refuse new connections from now on; the ones open drain on their own.
    endpoint.set_server_config(None);
}

async fn serve_connection(conn: quinn::Connection, info: ConnInfo, serve: Arc<ServeQuic>) {
    let mut h3 = match h3::server::builder()
        .max_field_section_size(serve.limits.max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    let streams = TaskTracker::new();
    let budget = Arc::new(CancelBudget::new(
        serve.limits.max_pending_accept_reset_streams,
    ));
    let mut draining = false;
    let idle = serve.limits.idle_timeout;
    let mut idle_tick = tokio::time::interval((idle / 4).max(Duration::from_millis(250)));
    let mut busy_at = Instant::now();
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    busy_at = Instant::now();
                    let send_timeout = serve.limits.send_timeout;
                    let shared = serve.shared.clone();
                    let head_timeout = serve.limits.header_read_timeout;
                    let budget = budget.clone();
                    streams.spawn(async move {
                        let work = async {
                            // A stream that never completes its HEADERS frame is dropped (slowloris).
                            match tokio::time::timeout(head_timeout, resolver.resolve_request()).await {
                                Ok(Ok((req, stream))) => serve_request(&shared, info, req, stream, send_timeout).await,
                                Ok(Err(e)) => {
                                    tracing::debug!(peer = %info.peer, error = %e, "bad HTTP/3 request");
                                    Outcome::Cancelled
                                }
                                Err(_) => {
                                    tracing::debug!(peer = %info.peer, "HTTP/3 request head timed out");
                                    Outcome::Cancelled
                                }
                            }
                        };
                        tokio::select! {
                            outcome = work => budget.record(outcome),
                            // The connection is being closed for abuse: drop the work.
                            () = budget.exhausted.cancelled() => {}
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 connection ended");
                    break;
                }
            },
            _ = serve.draining.cancelled(), if !draining => {
                draining = true;
                // GOAWAY: no new requests; those already accepted finish.
                let _ = h3.shutdown(0).await;
            }
            _ = serve.shared.force.cancelled() => {
                conn.close(quinn::VarInt::from_u32(0x100), b"shutdown");
                return;
            }
            () = budget.exhausted.cancelled() => {
                tracing::info!(peer = %info.peer, "closing an HTTP/3 connection that cancels most of its requests (rapid reset)");
                conn.close(H3_EXCESSIVE_LOAD, b"too many cancelled requests");
                return;
            }
            // PINGs keep quinn's idle timer alive; only request streams count here.
            _ = idle_tick.tick() => {
                if !streams.is_empty() {
                    busy_at = Instant::now();
                } else if busy_at.elapsed() >= idle {
                    serve.shared.metrics.connections.idle_closes.fetch_add(1, Ordering::Relaxed);
                    conn.close(H3_NO_ERROR, b"idle");
                    return;
                }
            }
        }
    }
    streams.close();
    tokio::select! {
        _ = streams.wait() => {}
        _ = serve.shared.force.cancelled() => conn.close(quinn::VarInt::from_u32(0x100), b"shutdown"),
    }
    // Let the last frames flush before the connection handle goes away.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// HTTP/3's `H3_EXCESSIVE_LOAD` error code (RFC 9114, section 8.1).
const H3_EXCESSIVE_LOAD: quinn::VarInt = quinn::VarInt::from_u32(0x0107);
/// HTTP/3's `H3_NO_ERROR`.
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x0100);

/// How a request stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The whole response was handed to QUIC.
    Answered,
    /// The client reset or stopped the stream (or never sent a valid request) before that.
    Cancelled,
}

/// Per connection: requests cancelled by the client against requests answered. More
/// cancelled than answered, past `allowance`, trips `exhausted` (a browser cancels a few
/// requests when a page navigates away; it does not cancel most of them, many times over).
struct CancelBudget {
    allowance: usize,
    cancelled: AtomicUsize,
    answered: AtomicUsize,
    exhausted: CancellationToken,
}

impl CancelBudget {
    fn new(allowance: usize) -> Self {
        Self {
            allowance,
            cancelled: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            exhausted: CancellationToken::new(),
        }
    }

    fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Answered => {
                self.answered.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Cancelled => {
                let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
                if cancelled > self.allowance && cancelled > self.answered.load(Ordering::Relaxed) {
                    self.exhausted.cancel();
                }
            }
        }
    }
}

async fn serve_request(
    shared: &Shared,
    info: ConnInfo,
    req: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    send_timeout: Duration,
) -> Outcome {
    let (mut send, recv) = stream.split();
    let req = req.map(|()| ProxyBody::new(H3RequestBody::new(recv)));
    let resp = handler::handle(shared, info, req, None).await;
    let (parts, mut body) = resp.into_parts();
    // Every write waits at most `send_timeout` for the client's flow-control credit.
    let stalled = |send: &mut h3::server::RequestStream<_, Bytes>| {
        tracing::debug!(peer = %info.peer, "HTTP/3 response stalled by the client; resetting the stream");
        let counters = &shared.metrics.connections;
        counters.send_timeouts.fetch_add(1, Ordering::Relaxed);
        send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        Outcome::Cancelled
    };
    let head = send.send_response(http::Response::from_parts(parts, ()));
    match tokio::time::timeout(send_timeout, head).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 response head not sent");
            return Outcome::Cancelled;
        }
        Err(_) => return stalled(&mut send),
    }
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, "response body failed");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                // The upstream's failure, not the client's doing.
                return Outcome::Answered;
            }
        };
        let sent = match frame.into_data() {
            Ok(data) => tokio::time::timeout(send_timeout, send.send_data(data)).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    tokio::time::timeout(send_timeout, send.send_trailers(trailers)).await
                }
                Err(_) => Ok(Ok(())),
            },
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 client went away");
                return Outcome::Cancelled;
            }
            Err(_) => return stalled(&mut send),
        }
    }
    match tokio::time::timeout(send_timeout, send.finish()).await {
        Ok(Ok(())) => Outcome::Answered,
        Ok(Err(_)) => Outcome::Cancelled,
        Err(_) => stalled(&mut send),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_budget_trips_only_past_the_allowance_and_the_answered_count() {
        let budget = CancelBudget::new(3);
        for _ in 0..3 {
            budget.record(Outcome::Cancelled);
        }
        assert!(!budget.exhausted.is_cancelled(), "within the allowance");
        for _ in 0..10 {
            budget.record(Outcome::Answered);
        }
        for _ in 0..7 {
            budget.record(Outcome::Cancelled);
        }
        assert!(
            !budget.exhausted.is_cancelled(),
            "10 cancelled, 10 answered"
        );
        budget.record(Outcome::Cancelled);
        assert!(budget.exhausted.is_cancelled(), "11 cancelled, 10 answered");
    }
}
