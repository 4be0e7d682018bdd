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

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use quinn::crypto::rustls::QuicServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{H3RequestBody, ProxyBody};
use crate::config::Limits;
use crate::handler::{self, ConnInfo, Shared, Transport};

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
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_concurrent_streams.into())
        .max_concurrent_uni_streams(16u32.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok())
        .keep_alive_interval(None);
    server.transport_config(Arc::new(transport));
    let bind_err = |source| QuicError::Bind { addr, source };
    let socket = udp_socket(addr).map_err(bind_err)?;
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
        let Some(incoming) = incoming else { break };
        let serve2 = serve.clone();
        serve.connections.spawn(async move {
            let peer = incoming.remote_address();
            let handshake = tokio::time::timeout(serve2.limits.handshake_timeout, incoming);
            match handshake.await {
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
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let shared = serve.shared.clone();
                    let head_timeout = serve.limits.header_read_timeout;
                    let budget = budget.clone();
                    streams.spawn(async move {
                        let work = async {
                            // A stream that never completes its HEADERS frame is dropped (slowloris).
                            match tokio::time::timeout(head_timeout, resolver.resolve_request()).await {
                                Ok(Ok((req, stream))) => serve_request(&shared, info, req, stream).await,
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
) -> Outcome {
    let (mut send, recv) = stream.split();
    let req = req.map(|()| ProxyBody::new(H3RequestBody::new(recv)));
    let resp = handler::handle(shared, info, req, None).await;
    let (parts, mut body) = resp.into_parts();
    if let Err(e) = send
        .send_response(http::Response::from_parts(parts, ()))
        .await
    {
        tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 response head not sent");
        return Outcome::Cancelled;
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
            Ok(data) => send.send_data(data).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => send.send_trailers(trailers).await,
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = sent {
            tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 client went away");
            return Outcome::Cancelled;
        }
    }
    match send.finish().await {
        Ok(()) => Outcome::Answered,
        Err(_) => Outcome::Cancelled,
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
