//! The replicas' way to the real kube-apiserver: plain HTTP on the harness's address, each
//! connection forwarded over its own TLS connection to the real server, and every request
//! recorded with the replica it came from.
//!
//! Why a front at all: the replicas live in network namespaces and the real server listens on
//! 127.0.0.1 of the root namespace, so something must carry their traffic; doing it here, one
//! upstream connection per replica connection, keeps what the replica sees what a real server
//! does (a stopped server: the connection closes, no answer is made up) while giving the
//! one-writer check what it needs: each request's writer (by source address, as
//! [`crate::apifront`] does) and its arrival time, taken before it is forwarded. The request
//! goes through untouched, with the replica's own bearer token (its ServiceAccount's), so the
//! real server authenticates and authorizes every call with deploy/'s RBAC. The audit log
//! would name the ServiceAccount, not which of the three replicas (they share it), and gives
//! no arrival time on the harness's clock.
//!
//! The drop-watches fault ends every watch response in flight (the replica's connection and
//! its upstream one close): what a cut connection to a real server looks like. New watch
//! requests can be held back for a moment ([`ApiProxy::hold_watches`]), so force-410 can cut
//! the watches, move etcd's revision past where they stopped and compact it before any
//! re-watch reaches the server: with the writer and the leader's status writes going on, a
//! watcher could otherwise have seen the very revision compacted at, and resume.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::record::{ApiWrite, Recorder};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the real server is and how to trust it.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
}

/// The serving task; dropping it stops serving and closes every connection.
pub struct ApiProxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    /// Cancelled to end every watch in flight; replaced by a fresh one each time.
    watches: Arc<Mutex<CancellationToken>>,
    /// Watch responses ended by [`ApiProxy::drop_watches`], in all.
    cut: Arc<AtomicUsize>,
    /// New watch requests wait for a read lock; [`ApiProxy::hold_watches`] takes the write.
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl std::fmt::Debug for ApiProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiProxy")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiProxy {
    /// Ends every watch response in flight (their connections close).
    pub fn drop_watches(&self) {
        let mut current = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *current).cancel();
    }

    /// Holds every new watch request (before it is forwarded) until the guard is dropped.
    pub async fn hold_watches(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// How many watch responses the drop-watches fault has ended so far.
    pub fn watches_cut(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

/// Whether a request is a watch (`?watch=true` or `?watch=1`).
pub fn is_watch(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    })
}

/// Serves the proxy on `listener`; `replica_of` maps a peer address to a replica ordinal.
pub fn serve(
    listener: TcpListener,
    upstream: Upstream,
    recorder: Arc<Recorder>,
    replica_of: fn(IpAddr) -> Option<usize>,
) -> std::io::Result<ApiProxy> {
    let addr = listener.local_addr()?;
    let watches = Arc::new(Mutex::new(CancellationToken::new()));
    let cut = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let shared = Shared {
        watches: watches.clone(),
        cut: cut.clone(),
        gate: gate.clone(),
    };
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    connections.spawn(connection(
                        stream,
                        replica_of(peer.ip()),
                        upstream.clone(),
                        recorder.clone(),
                        shared.clone(),
                    ));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(ApiProxy {
        addr,
        task,
        watches,
        cut,
        gate,
    })
}

/// What every connection shares with the proxy's handle.
#[derive(Clone)]
struct Shared {
    watches: Arc<Mutex<CancellationToken>>,
    cut: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::RwLock<()>>,
}

/// One replica connection and its own upstream connection. When the upstream cannot be
/// reached (the API server is stopped), the replica's connection is closed unanswered.
async fn connection(
    stream: TcpStream,
    replica: Option<usize>,
    upstream: Upstream,
    recorder: Arc<Recorder>,
    shared: Shared,
) {
    let _ = stream.set_nodelay(true);
    let Ok(sender) = connect(&upstream).await else {
        return;
    };
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        let recorder = recorder.clone();
        let shared = shared.clone();
        async move {
            // A write counts from when it arrived here, before it is forwarded.
            let t = recorder.now();
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let watch = is_watch(req.uri().query());
            // A watch waits while watches are held, and takes the fault's signal before the
            // gate can close again, so a later drop-watches reaches it.
            let cut = {
                let _open = match watch {
                    true => Some(shared.gate.read().await),
                    false => None,
                };
                shared
                    .watches
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .cancelled_owned()
            };
            let result = {
                let mut sender = sender.lock().await;
                match sender.ready().await {
                    Ok(()) => sender.send_request(req).await,
                    Err(e) => Err(e),
                }
            };
            let status = result.as_ref().map_or(0, |r| r.status().as_u16());
            recorder.with(|o| {
                let call = ApiWrite {
                    t,
                    replica,
                    method: method.to_string(),
                    path: path.clone(),
                    status,
                };
                if status == 403 {
                    o.api_forbidden.push(call.clone());
                }
                if method != Method::GET && !path.contains("/events") {
                    o.api_writes.push(call);
                }
            });
            // An upstream failure closes the replica's connection: no made-up answer.
            let response = result?;
            Ok::<_, hyper::Error>(response.map(|body| Cuttable {
                body,
                cut: watch.then(|| (Box::pin(cut), shared.cut)),
            }))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn connect(
    upstream: &Upstream,
) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, BoxError> {
    let tcp = TcpStream::connect(upstream.addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(upstream.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(upstream.tls.clone())
        .connect(name, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A response body that, for a watch, ends with an error when the drop-watches fault fires.
struct Cuttable {
    body: Incoming,
    /// For a watch: the fault's signal, and the count of watches it ended.
    cut: Option<(Pin<Box<WaitForCancellationFutureOwned>>, Arc<AtomicUsize>)>,
}

impl Body for Cuttable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some((cut, count)) = self.cut.as_mut()
            && cut.as_mut().poll(cx).is_ready()
        {
            count.fetch_add(1, Ordering::SeqCst);
            // Once: the connection is closed after this error.
            self.cut = None;
            return Poll::Ready(Some(Err("watch dropped by the chaos harness".into())));
        }
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use http_body_util::{Either, Full, StreamBody};

    #[test]
    fn watches_are_told_from_lists() {
        assert!(is_watch(Some("watch=true&resourceVersion=5")));
        assert!(is_watch(Some("labelSelector=a&watch=1")));
        assert!(!is_watch(Some("watch=false")));
        assert!(!is_watch(Some("resourceVersion=0")));
        assert!(!is_watch(None));
    }

    type UpstreamBody = Either<
        StreamBody<
            futures_util::stream::BoxStream<
                'static,
                Result<Frame<Bytes>, std::convert::Infallible>,
            >,
        >,
        Full<Bytes>,
    >;

    /// The stand-in upstream's answers: a watch streams a line every 50 ms forever (and is
    /// counted in `watches`), `/forbidden` answers 403, a POST 201, anything else 200.
    fn answer(req: &Request<Incoming>, watches: &AtomicUsize) -> http::Response<UpstreamBody> {
        use futures_util::StreamExt;
        let status = match (req.method(), req.uri().path()) {
            (_, "/forbidden") => 403,
            (&Method::POST, _) => 201,
            _ => 200,
        };
        let body = if is_watch(req.uri().query()) {
            watches.fetch_add(1, Ordering::SeqCst);
            let lines = futures_util::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let line = Bytes::from(format!("{{\"n\":{n}}}\n"));
                Some((Ok(Frame::data(line)), n + 1))
            });
            Either::Left(StreamBody::new(lines.boxed()))
        } else {
            Either::Right(Full::new(Bytes::from_static(b"{}")))
        };
        http::Response::builder().status(status).body(body).unwrap()
    }

    /// A stand-in upstream over TLS (see [`answer`]): its address, a client config trusting
    /// it, its accept loop, and the count of watches it received.
    async fn upstream() -> (
        SocketAddr,
        Arc<rustls::ClientConfig>,
        JoinHandle<()>,
        Arc<AtomicUsize>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let watches = Arc::new(AtomicUsize::new(0));
        let seen = watches.clone();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let response = answer(&req, &seen);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, Arc::new(client), task, watches)
    }

    fn curl(args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new("curl")
            .args(["-sS", "-N", "--max-time", "20", "-o", "/dev/null"])
            .args(["-w", "%{http_code}"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("curl (tests/setup installs it)")
    }

    async fn finish(child: tokio::process::Child) -> (Option<i32>, String) {
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("curl finished")
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Over real sockets with curl: requests go through to a TLS upstream and back, writes
    /// and 403s are recorded with the sender's replica and the status, a held watch reaches
    /// the upstream only once released, drop-watches ends a watch in flight (curl sees the
    /// transfer cut) and not a later one, and with the upstream gone a request's connection
    /// closes unanswered.
    #[tokio::test]
    async fn forwards_records_holds_cuts_watches_and_closes_when_the_upstream_is_gone() {
        let (addr, tls, server, upstream_watches) = upstream().await;
        let recorder = Arc::new(Recorder::new(1));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = serve(listener, Upstream { addr, tls }, recorder.clone(), |ip| {
            ip.is_loopback().then_some(0)
        })
        .unwrap();
        let base = format!("http://{}", proxy.addr);

        let (code, status) =
            finish(curl(&["-X", "POST", &format!("{base}/apis/x/v1/things")])).await;
        assert_eq!((code, status.as_str()), (Some(0), "201"));
        let (_, status) = finish(curl(&[&format!("{base}/forbidden")])).await;
        assert_eq!(status, "403");
        let (_, status) = finish(curl(&[&format!("{base}/api/v1/list")])).await;
        assert_eq!(status, "200");
        recorder.with(|o| {
            assert_eq!(o.api_writes.len(), 1, "{:?}", o.api_writes);
            let w = &o.api_writes[0];
            assert_eq!(
                (w.replica, w.method.as_str(), w.path.as_str(), w.status),
                (Some(0), "POST", "/apis/x/v1/things", 201)
            );
            assert_eq!(o.api_forbidden.len(), 1);
            assert_eq!(o.api_forbidden[0].path, "/forbidden");
        });

        let held = proxy.hold_watches().await;
        let watch = curl(&[&format!("{base}/api/v1/things?watch=true")]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(upstream_watches.load(Ordering::SeqCst), 0, "held");
        drop(held);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(upstream_watches.load(Ordering::SeqCst), 1, "let through");
        assert_eq!(proxy.watches_cut(), 0);
        proxy.drop_watches();
        let (code, _) = finish(watch).await;
        // 18: "partial file", the chunked transfer ended before its last chunk.
        assert_eq!(code, Some(18), "curl saw the watch cut");
        assert_eq!(proxy.watches_cut(), 1);
        // A new watch after the fault is not cut by it.
        let watch = curl(&[
            "--max-time",
            "1",
            &format!("{base}/api/v1/things?watch=true"),
        ]);
        let (code, _) = finish(watch).await;
        assert_eq!(code, Some(28), "ran until curl's own time limit");

        server.abort();
        let _ = server.await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (code, status) = finish(curl(&[&format!("{base}/api/v1/list")])).await;
        // The connection closed without an answer: curl's 52 (empty reply) or 56 (reset,
        // when the request was still unread), and no status.
        assert!(matches!(code, Some(52 | 56)), "curl exit {code:?}");
        assert_eq!(status, "000");
    }
}
