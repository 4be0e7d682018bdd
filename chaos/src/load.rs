//! The load generator: a steady mix of HTTP/1.1, HTTP/2 (h2c) and HTTP/3 requests to every
//! replica, as a cloud load balancer sends them.
//!
//! Each worker speaks one protocol and walks the replicas round-robin. An attempt that fails
//! (error, timeout or a 5xx) is recorded against that replica, which the worker then skips
//! for [`EJECT`] (a passive health check), and the same request moves on to the next replica;
//! the client's request fails only if no replica answered. Every attempt, and every client
//! outcome, goes into the [`Recorder`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use crate::record::{Protocol, Recorder};

/// How long a replica is skipped after a failed attempt.
pub const EJECT: Duration = Duration::from_secs(1);

/// Where one replica listens.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Plain HTTP (HTTP/1.1 and h2c).
    pub http: SocketAddr,
    /// QUIC (HTTP/3).
    pub h3: SocketAddr,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub targets: Vec<Target>,
    /// The Host (and TLS server name) of the route under load.
    pub host: String,
    pub path: String,
    /// Trust anchors for HTTP/3 (the route's certificate or its CA), DER.
    pub h3_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Workers per protocol.
    pub workers: usize,
    /// Pause between one worker's requests.
    pub interval: Duration,
    /// Bound on one attempt (a frozen replica never answers).
    pub attempt_timeout: Duration,
}

/// One request, on one protocol, to one replica: whether it got a non-5xx answer.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("timed out")]
    Timeout,
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("{0}")]
    Transport(String),
}

fn transport(e: impl std::fmt::Display) -> AttemptError {
    AttemptError::Transport(e.to_string())
}

/// A client for one protocol, with its connections to every replica.
pub enum ProtocolClient {
    H1(Client<HttpConnector, Empty<Bytes>>),
    H2(H2Client),
    H3(H3Client),
}

impl ProtocolClient {
    pub fn new(protocol: Protocol, config: &LoadConfig) -> anyhow::Result<Self> {
        Ok(match protocol {
            Protocol::H1 => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(config.attempt_timeout));
                connector.set_nodelay(true);
                let mut builder = Client::builder(TokioExecutor::new());
                builder.pool_idle_timeout(Duration::from_secs(30));
                ProtocolClient::H1(builder.build(connector))
            }
            Protocol::H2 => ProtocolClient::H2(H2Client::default()),
            Protocol::H3 => ProtocolClient::H3(H3Client::new(config)?),
        })
    }

    pub async fn attempt(
        &mut self,
        target: &Target,
        host: &str,
        path: &str,
    ) -> Result<StatusCode, AttemptError> {
        match self {
            ProtocolClient::H2(client) => client.get(target.http, host, path).await,
            ProtocolClient::H1(client) => {
                let req = Request::get(format!("http://{}{path}", target.http))
                    .header(http::header::HOST, host)
                    .body(Empty::new())
                    .map_err(transport)?;
                let resp = client.request(req).await.map_err(transport)?;
                let status = resp.status();
                resp.into_body().collect().await.map_err(transport)?;
                Ok(status)
            }
            ProtocolClient::H3(client) => client.get(target.h3, host, path).await,
        }
    }
}

/// HTTP/2 with prior knowledge (h2c), one connection per replica, reconnecting after
/// errors. Its own connections (not hyper-util's pool) because the route is chosen by
/// `:authority`, which must be the route's host while the connection goes to the replica.
#[derive(Default)]
pub struct H2Client {
    connections: std::collections::HashMap<
        SocketAddr,
        hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    >,
}

impl H2Client {
    async fn sender(
        &mut self,
        addr: SocketAddr,
    ) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>, AttemptError> {
        if let Some(s) = self.connections.get(&addr)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(transport)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(transport)?;
        tokio::spawn(conn);
        self.connections.insert(addr, sender.clone());
        Ok(sender)
    }

    pub async fn get(
        &mut self,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> Result<StatusCode, AttemptError> {
        let result = async {
            let mut sender = self.sender(addr).await?;
            sender.ready().await.map_err(transport)?;
            let req = Request::get(format!("http://{host}{path}"))
                .body(Empty::new())
                .map_err(transport)?;
            let resp = sender.send_request(req).await.map_err(transport)?;
            let status = resp.status();
            resp.into_body().collect().await.map_err(transport)?;
            Ok(status)
        }
        .await;
        if result.is_err() {
            self.connections.remove(&addr);
        }
        result
    }
}

type H3Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// HTTP/3 over one QUIC endpoint, one connection per replica, reconnecting after errors.
pub struct H3Client {
    endpoint: quinn::Endpoint,
    connections: std::collections::HashMap<SocketAddr, H3Sender>,
}

impl H3Client {
    pub fn new(config: &LoadConfig) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &config.h3_roots {
            roots.add(cert.clone())?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(5).try_into()?));
        transport.keep_alive_interval(Some(Duration::from_secs(1)));
        client_config.transport_config(Arc::new(transport));
        let bind: SocketAddr = if config.targets.first().is_some_and(|t| t.h3.is_ipv6()) {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(client_config);
        Ok(H3Client {
            endpoint,
            connections: Default::default(),
        })
    }

    async fn sender(&mut self, addr: SocketAddr, host: &str) -> Result<H3Sender, AttemptError> {
        if let Some(s) = self.connections.get(&addr) {
            return Ok(s.clone());
        }
        let conn = self
            .endpoint
            .connect(addr, host)
            .map_err(transport)?
            .await
            .map_err(transport)?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(transport)?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        self.connections.insert(addr, sender.clone());
        Ok(sender)
    }

    pub async fn get(
        &mut self,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> Result<StatusCode, AttemptError> {
        let result = async {
            let mut sender = self.sender(addr, host).await?;
            let req = Request::get(format!("https://{host}{path}"))
                .body(())
                .map_err(transport)?;
            let mut stream = sender.send_request(req).await.map_err(transport)?;
            stream.finish().await.map_err(transport)?;
            let resp = stream.recv_response().await.map_err(transport)?;
            while let Some(mut chunk) = stream.recv_data().await.map_err(transport)? {
                chunk.advance(chunk.remaining());
            }
            Ok(resp.status())
        }
        .await;
        if result.is_err() {
            // Next time, a fresh connection (the old one may be dead or wedged).
            self.connections.remove(&addr);
        }
        result
    }
}

/// One attempt, bounded in time; anything but a 2xx (the echo backend's answer) fails.
async fn bounded(
    client: &mut ProtocolClient,
    target: &Target,
    config: &LoadConfig,
) -> Result<StatusCode, AttemptError> {
    match tokio::time::timeout(
        config.attempt_timeout,
        client.attempt(target, &config.host, &config.path),
    )
    .await
    {
        Err(_) => Err(AttemptError::Timeout),
        Ok(Ok(s)) if !s.is_success() => Err(AttemptError::Status(s)),
        Ok(other) => other,
    }
}

/// One worker: loops until `stop`, recording everything.
async fn worker(
    protocol: Protocol,
    index: usize,
    config: Arc<LoadConfig>,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut client = ProtocolClient::new(protocol, &config)?;
    let n = config.targets.len();
    let mut ejected_until = vec![tokio::time::Instant::now(); n];
    let mut next = index % n.max(1);
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        // Healthy replicas first, from the round-robin position; ejected ones as a last resort.
        let order: Vec<usize> = (0..n).map(|k| (next + k) % n).collect();
        next = (next + 1) % n;
        let (healthy, ejected): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|&r| ejected_until[r] <= now);
        let mut served = false;
        for r in healthy.into_iter().chain(ejected) {
            let result = bounded(&mut client, &config.targets[r], &config).await;
            let ok = result.is_ok();
            let t = recorder.now();
            recorder.with(|o| {
                o.attempt(t, r, protocol, ok);
                if let Err(e) = &result {
                    o.error(t, r, protocol, &e.to_string());
                }
            });
            if ok {
                served = true;
                break;
            }
            ejected_until[r] = tokio::time::Instant::now() + EJECT;
            if stop.is_cancelled() {
                break;
            }
        }
        // A request the harness abandoned because the run is ending did not fail for lack of
        // a replica: it is not a client outcome.
        if served || !stop.is_cancelled() {
            recorder.with(|o| o.client_outcome(recorder.now(), served));
        }
    }
    Ok(())
}

/// Runs the workers until `stop` is cancelled.
pub fn start(
    config: LoadConfig,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) -> tokio::task::JoinSet<anyhow::Result<()>> {
    let config = Arc::new(config);
    let mut set = tokio::task::JoinSet::new();
    for protocol in Protocol::ALL {
        for i in 0..config.workers {
            set.spawn(worker(
                protocol,
                i,
                config.clone(),
                recorder.clone(),
                stop.clone(),
            ));
        }
    }
    set
}

/// One HTTP/1.1 GET (for probes: propagation, conformance, admin endpoints), with its body.
pub async fn get_h1(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), AttemptError> {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(transport)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(transport)?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .map_err(transport)?;
        let resp = sender.send_request(req).await.map_err(transport)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(transport)?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(AttemptError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::LoadCertificate;
    use hyper_util::server::conn::auto;

    /// A backend speaking HTTP/1.1 and h2c on TCP and HTTP/3 on UDP, on one port number;
    /// answers 200 only for `host` (by Host or :authority), 404 otherwise.
    async fn server(host: &'static str, cert: &LoadCertificate) -> Target {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let answer = move |authority: Option<String>| {
            if authority
                .as_deref()
                .map(|a| a.split(':').next().unwrap_or(a))
                == Some(host)
            {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            }
        };
        tokio::spawn(async move {
            loop {
                let (stream, _) = tcp.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| async move {
                            let authority =
                                req.uri().authority().map(|a| a.to_string()).or_else(|| {
                                    req.headers()
                                        .get(http::header::HOST)
                                        .and_then(|h| h.to_str().ok())
                                        .map(str::to_string)
                                });
                            let resp = http::Response::builder()
                                .status(answer(authority))
                                .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        },
                    );
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let key = rustls_pki_types::PrivateKeyDer::try_from(
            rustls_pki_types::pem::PemObject::from_pem_slice(cert.key_pem.as_bytes())
                .map(|k: rustls_pki_types::PrivatePkcs8KeyDer| k.secret_pkcs8_der().to_vec())
                .unwrap(),
        )
        .unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], key)
        .unwrap();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let endpoint =
            quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(quic)), addr)
                .unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let Ok(mut h3) =
                        h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn))
                            .await
                    else {
                        return;
                    };
                    while let Ok(Some(resolver)) = h3.accept().await {
                        tokio::spawn(async move {
                            let Ok((req, mut stream)) = resolver.resolve_request().await else {
                                return;
                            };
                            let status = answer(req.uri().authority().map(|a| a.to_string()));
                            let _ = stream
                                .send_response(
                                    http::Response::builder().status(status).body(()).unwrap(),
                                )
                                .await;
                            let _ = stream.send_data(Bytes::from_static(b"ok")).await;
                            let _ = stream.finish().await;
                        });
                    }
                });
            }
        });
        Target {
            http: addr,
            h3: addr,
        }
    }

    /// A target nothing listens on (TCP refused; QUIC unanswered), with the sockets that keep
    /// its ports ours (bound, never listening or read) for as long as the caller holds them:
    /// a port released instead could be taken by another process and answer.
    async fn dead() -> (Target, (tokio::net::TcpSocket, std::net::UdpSocket)) {
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = Target {
            http: tcp.local_addr().unwrap(),
            h3: udp.local_addr().unwrap(),
        };
        (t, (tcp, udp))
    }

    #[tokio::test]
    async fn every_protocol_is_served_and_clients_move_on_from_a_dead_replica() {
        let cert = LoadCertificate::generate().unwrap();
        let live = server(crate::writer::LOAD_HOST, &cert).await;
        let (dead, _held) = dead().await;
        let config = LoadConfig {
            targets: vec![dead, live],
            host: crate::writer::LOAD_HOST.into(),
            path: "/".into(),
            h3_roots: vec![cert.der.clone()],
            workers: 1,
            interval: Duration::from_millis(20),
            attempt_timeout: Duration::from_millis(500),
        };
        // Each protocol alone against the live target, with the route's host.
        for protocol in Protocol::ALL {
            let mut client = ProtocolClient::new(protocol, &config).unwrap();
            let status = client.attempt(&live, crate::writer::LOAD_HOST, "/").await;
            assert_eq!(status.unwrap(), StatusCode::OK, "{protocol:?}");
            let other = client.attempt(&live, "other.test", "/").await;
            assert_eq!(
                other.unwrap(),
                StatusCode::NOT_FOUND,
                "{protocol:?} routes by the request's host"
            );
        }

        let recorder = Arc::new(Recorder::new(2));
        let stop = CancellationToken::new();
        let mut set = start(config, recorder.clone(), stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        let obs = recorder.snapshot();
        let client: crate::record::Counts =
            obs.client.iter().fold(Default::default(), |mut a, c| {
                a.add(*c);
                a
            });
        let per: Vec<crate::record::Counts> = (0..2)
            .map(|r| {
                obs.requests
                    .iter()
                    .fold(Default::default(), |mut a: crate::record::Counts, row| {
                        a.add(row[r]);
                        a
                    })
            })
            .collect();
        assert!(client.ok > 50, "{client:?}");
        assert_eq!(client.failed, 0, "every request found the live replica");
        assert_eq!(per[0].ok, 0);
        assert!(per[0].failed > 0, "the dead replica was tried");
        assert!(
            per[0].failed * 3 < per[1].ok,
            "ejection keeps the dead replica mostly skipped: {per:?}"
        );
        for p in Protocol::ALL {
            assert!(
                obs.by_protocol[p.index()].ok > 10,
                "{p:?}: {:?}",
                obs.by_protocol
            );
        }
        assert!(
            obs.errors.keys().any(|k| k.starts_with("replica 0 H3")),
            "{:?}",
            obs.errors.keys()
        );
    }
}
