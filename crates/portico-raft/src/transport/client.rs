//! The client side: one multiplexed HTTP/2-over-TLS connection per peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{TransportSettings, wire};
use crate::backoff::Backoff;
use crate::incarnation::{Incarnation, Incarnations};
use crate::types::NodeId;

/// Why an RPC failed on this side of the peer's handler.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No connection: the peer is down, refused us, or we are backing off.
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("RPC to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    /// The connection failed while the RPC was in flight.
    #[error("RPC to {addr} failed: {reason}")]
    Transport { addr: String, reason: String },
    /// The peer answered with an error status (for example `400` for a body it could not
    /// decode).
    #[error("peer {addr} answered {status}: {message}")]
    Status {
        addr: String,
        status: StatusCode,
        message: String,
    },
    /// The answer came from an incarnation of the target this replica does not take (a
    /// stale copy of its volume, or one not taken yet).
    #[error("answer from {addr} refused: {reason}")]
    Refused { addr: String, reason: String },
}

/// All peer channels of one replica, by address.
pub(crate) struct Peers {
    connector: TlsConnector,
    settings: TransportSettings,
    channels: Mutex<HashMap<String, Arc<PeerChannel>>>,
    incarnations: Option<Arc<Incarnations>>,
}

impl Peers {
    pub(crate) fn new(tls: Arc<ClientConfig>, settings: TransportSettings) -> Self {
        Self {
            connector: TlsConnector::from(tls),
            settings,
            channels: Mutex::new(HashMap::new()),
            incarnations: None,
        }
    }

    /// Sends this replica's incarnation with every RPC and checks the targets' answers.
    pub(crate) fn with_incarnations(mut self, incarnations: Arc<Incarnations>) -> Self {
        self.incarnations = Some(incarnations);
        self
    }

    pub(crate) fn settings(&self) -> &TransportSettings {
        &self.settings
    }

    /// The channel to `addr` (`host:port`), shared by every caller.
    pub(crate) fn channel(&self, addr: &str) -> Arc<PeerChannel> {
        let mut channels = self.channels.lock().expect("peer map lock poisoned");
        channels
            .entry(addr.to_owned())
            .or_insert_with(|| {
                Arc::new(PeerChannel {
                    addr: addr.to_owned(),
                    connector: self.connector.clone(),
                    settings: self.settings.clone(),
                    sender: tokio::sync::Mutex::new(None),
                    backoff: Mutex::new(Reconnect {
                        delays: Backoff::new(self.settings.min_backoff, self.settings.max_backoff),
                        not_before: None,
                    }),
                    in_flight: Semaphore::new(self.settings.max_in_flight_bytes_per_peer),
                    incarnations: self.incarnations.clone(),
                })
            })
            .clone()
    }
}

/// After a failed connection, no new attempt before `not_before`; reset by a success.
struct Reconnect {
    delays: Backoff,
    not_before: Option<Instant>,
}

impl Reconnect {
    fn succeeded(&mut self) {
        self.delays.reset();
        self.not_before = None;
    }

    fn failed(&mut self) {
        self.not_before = Some(Instant::now() + self.delays.next_delay());
    }
}

/// One peer: its connection, reconnect backoff, and in-flight byte budget.
pub(crate) struct PeerChannel {
    addr: String,
    connector: TlsConnector,
    settings: TransportSettings,
    sender: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
    backoff: Mutex<Reconnect>,
    in_flight: Semaphore,
    incarnations: Option<Arc<Incarnations>>,
}

fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| format!("invalid server name {host:?}: {e}"))
}

impl PeerChannel {
    /// Sends one RPC and returns the body of its `200` response.
    pub(crate) async fn call(
        &self,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        self.call_node(path, None, body, timeout).await
    }

    /// Sends one Raft RPC meant for node `target` only: a replica with another ID at this
    /// address (a wiped replica that rejoined under a fresh ID) refuses it rather than
    /// answer for the old identity.
    pub(crate) async fn call_node(
        &self,
        path: &'static str,
        target: Option<NodeId>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || CallError::Timeout {
            addr: self.addr.clone(),
            after: timeout,
        };
        // Bound the bytes in flight to this peer; a body larger than the whole budget
        // waits for the budget to drain and then goes alone.
        let permits = body
            .len()
            .clamp(1, self.settings.max_in_flight_bytes_per_peer)
            .try_into()
            .unwrap_or(u32::MAX);
        let _permit = tokio::time::timeout_at(deadline, self.in_flight.acquire_many(permits))
            .await
            .map_err(|_| timed_out())?
            .expect("the in-flight semaphore is never closed");

        let mut sender = tokio::time::timeout_at(deadline, self.sender())
            .await
            .map_err(|_| timed_out())??;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("https://{}{}", self.addr, path))
            .header(http::header::CONTENT_TYPE, "application/x-postcard");
        if let Some(target) = target {
            request = request.header(wire::TARGET_HEADER, target);
        }
        if let Some(incarnations) = &self.incarnations {
            request = request.header(wire::INCARNATION_HEADER, incarnations.header());
            if let Some(target) = target
                && let Some(known) = incarnations.known_header(target).await
            {
                request = request.header(wire::KNOWN_HEADER, known);
            }
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .expect("a request built from valid parts");
        let exchange = async {
            let transport = |e: hyper::Error| CallError::Transport {
                addr: self.addr.clone(),
                reason: e.to_string(),
            };
            sender.ready().await.map_err(transport)?;
            let response = sender.send_request(request).await.map_err(transport)?;
            let status = response.status();
            let incarnation = response.headers().get(wire::INCARNATION_HEADER).cloned();
            let body = Limited::new(response.into_body(), self.settings.max_body_bytes)
                .collect()
                .await
                .map_err(|e| CallError::Transport {
                    addr: self.addr.clone(),
                    reason: format!("reading the response: {e}"),
                })?
                .to_bytes();
            Ok::<_, CallError>((status, body, incarnation))
        };
        let (status, body, incarnation) = match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => {
                // The connection may be broken: open a new one next time.
                *self.sender.lock().await = None;
                return Err(e);
            }
            Ok(Ok(answer)) => answer,
        };
        if let Some(incarnations) = &self.incarnations {
            if status == StatusCode::CONFLICT {
                // The peer refuses our incarnation for good: our volume is a stale copy.
                incarnations.condemn(&format!(
                    "{} refused it: {}",
                    self.addr,
                    String::from_utf8_lossy(&body[..body.len().min(512)]).trim_end()
                ));
            } else if status == StatusCode::GONE {
                // The target found its own volume stale and takes no part: count it too.
                incarnations.note_stale_peer();
            } else if status == StatusCode::OK
                && let Some(target) = target
            {
                self.check_answer(incarnations, target, incarnation.as_ref())
                    .await?;
            }
        }
        if status != StatusCode::OK {
            return Err(CallError::Status {
                addr: self.addr.clone(),
                status,
                message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            });
        }
        Ok(body)
    }

    /// An answer to a Raft RPC counts only if it comes from an incarnation of `target` that
    /// this replica takes.
    async fn check_answer(
        &self,
        incarnations: &Incarnations,
        target: NodeId,
        header: Option<&http::HeaderValue>,
    ) -> Result<(), CallError> {
        let refused = |reason: String| CallError::Refused {
            addr: self.addr.clone(),
            reason,
        };
        let parsed = header
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| "no incarnation header".to_owned())
            .and_then(|v| Incarnation::parse_header(v).map_err(|e| e.to_string()))
            .map_err(refused)?;
        match parsed {
            (node, _) if node != target => {
                Err(refused(format!("it answers as node {node}, not {target}")))
            }
            (node, incarnation) => incarnations
                .admit(node, &incarnation, false)
                .await
                .map_err(|e| refused(e.to_string())),
        }
    }

    /// The live connection, or a new one (one connection attempt at a time).
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, CallError> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        *slot = None;
        let waiting = self
            .backoff
            .lock()
            .expect("backoff lock poisoned")
            .not_before
            .filter(|at| *at > Instant::now());
        if waiting.is_some() {
            return Err(CallError::Unreachable {
                addr: self.addr.clone(),
                reason: "backing off after a failed connection".into(),
            });
        }
        match tokio::time::timeout(self.settings.connect_timeout, self.connect()).await {
            Ok(Ok(sender)) => {
                self.backoff
                    .lock()
                    .expect("backoff lock poisoned")
                    .succeeded();
                *slot = Some(sender.clone());
                Ok(sender)
            }
            outcome => {
                let reason = match outcome {
                    Ok(Err(reason)) => reason,
                    _ => "connect timed out".to_owned(),
                };
                self.backoff.lock().expect("backoff lock poisoned").failed();
                Err(CallError::Unreachable {
                    addr: self.addr.clone(),
                    reason,
                })
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let name = server_name(&self.addr)?;
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %addr, error = %e, "replica connection closed");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_config() -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    /// A peer that accepts TCP and then says nothing (a hung replica).
    async fn silent_peer() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn in_flight_bytes_to_a_peer_are_bounded() {
        let (addr, _peer) = silent_peer().await;
        let settings = TransportSettings {
            max_in_flight_bytes_per_peer: 100,
            connect_timeout: Duration::from_secs(30),
            ..TransportSettings::default()
        };
        let peers = Peers::new(client_config(), settings);
        let channel = peers.channel(&addr);
        let first = tokio::spawn({
            let channel = channel.clone();
            async move {
                channel
                    .call(
                        super::super::wire::STATUS,
                        vec![0; 80],
                        Duration::from_secs(30),
                    )
                    .await
            }
        });
        // The first call holds 80 of the 100 bytes while its peer is silent.
        let started = Instant::now();
        while channel.in_flight.available_permits() != 20 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "budget not taken"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A second 80-byte call cannot start; it times out waiting for budget.
        let second = channel
            .call(
                super::super::wire::STATUS,
                vec![0; 80],
                Duration::from_millis(300),
            )
            .await;
        assert!(
            matches!(second, Err(CallError::Timeout { .. })),
            "{second:?}"
        );
        assert_eq!(channel.in_flight.available_permits(), 20);
        first.abort();
        let _ = first.await;
        assert_eq!(
            channel.in_flight.available_permits(),
            100,
            "budget returned"
        );
    }

    #[tokio::test]
    async fn failed_connections_back_off() {
        // Nothing listens on this port once the listener is dropped.
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let peers = Peers::new(client_config(), TransportSettings::default());
        let channel = peers.channel(&addr);
        let first = channel
            .call(
                super::super::wire::STATUS,
                Vec::new(),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(&first, Err(CallError::Unreachable { reason, .. }) if reason.starts_with("connect")),
            "{first:?}"
        );
        let second = channel
            .call(
                super::super::wire::STATUS,
                Vec::new(),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(&second, Err(CallError::Unreachable { reason, .. }) if reason.contains("backing off")),
            "{second:?}"
        );
    }
}
