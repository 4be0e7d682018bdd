//! Test support: echo backends written here, manifests, the proxy under test, and runners
//! for the external clients (curl, nghttp2, the venv's Python).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_model::{RoutingTable, Settings};
use portico_proxy::{BoundAddrs, Proxy, ProxyConfig, table_file};
pub use portico_test_support::process::{Process, Program};
use portico_test_support::wait_for_watch;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Aborts a spawned task when dropped.
pub struct TaskGuard(pub JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The standalone binary, for the tests that run the proxy as a process.
pub const STANDALONE: &str = env!("CARGO_BIN_EXE_portico-proxy-standalone");

/// A started standalone proxy (a [`Process`]: its output read line by line, signals, killed
/// when dropped) and the `ready http=[…] https=[…] h3=[…]` line it printed. It binds port 0
/// itself and reports what it got, so no port is chosen for it and released first.
pub struct Standalone {
    pub process: Process,
    ready: String,
}

impl Standalone {
    /// Starts `program` and waits for the ready line.
    pub async fn start(program: Program) -> Standalone {
        let process = program.spawn("portico-proxy-standalone");
        let ready = process
            .wait_for_line("the ready line", Duration::from_secs(30), |l| {
                l.starts_with("ready ")
            })
            .await
            .unwrap();
        Standalone { process, ready }
    }

    /// The first address the `listener` (`http`, `https` or `h3`) bound.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        portico_test_support::child::addr_after(&self.ready, listener)
            .unwrap_or_else(|| panic!("no {listener} address in {:?}", self.ready))
    }
}

/// An echo backend: answers with a JSON description of the request it received.
/// `/bytes/N` streams N bytes; `/upload` counts the body; `/slow/MS` waits first;
/// `/trailers` ends with gRPC-style trailers; `/ws` is a WebSocket echo.
pub struct Backend {
    pub addr: SocketAddr,
    /// How many requests have arrived (counted before `/slow/MS` waits), so a test can act
    /// once a request is in flight instead of sleeping until it probably is.
    arrivals: watch::Receiver<u64>,
    _task: TaskGuard,
}

impl Backend {
    pub async fn start() -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        Self::serve(listener)
    }

    /// How many requests have arrived so far.
    pub fn arrivals(&self) -> u64 {
        *self.arrivals.borrow()
    }

    /// Waits until `n` requests in all have arrived (generous deadline: clients such as
    /// Python with aioquic are slow to start on a loaded machine).
    pub async fn arrived(&self, n: u64) {
        let mut arrivals = self.arrivals.clone();
        let what = format!("{n} request(s) to reach the backend {}", self.addr);
        wait_for_watch(what, Duration::from_secs(30), &mut arrivals, |seen| {
            *seen >= n
        })
        .await
        .unwrap();
    }

    fn serve(listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let (arrived, arrivals) = watch::channel(0);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let local = stream.local_addr().unwrap();
                let arrived = arrived.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| echo(req, local, arrived.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            arrivals,
            _task: TaskGuard(task),
        }
    }

    /// A backend behind TLS (self-signed; ALPN h2 and http/1.1), for `backend-protocol`
    /// HTTPS and GRPCS.
    pub async fn start_tls() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let acceptor = backend_tls(&[b"h2", b"http/1.1"]);
        let (arrived, arrivals) = watch::channel(0);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let local = stream.local_addr().unwrap();
                let acceptor = acceptor.clone();
                let arrived = arrived.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req| echo(req, local, arrived.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            arrivals,
            _task: TaskGuard(task),
        }
    }

    /// `n` backends on 127.0.0.2, 127.0.0.3, … sharing one port (as Pods behind a Service).
    pub async fn start_many(n: u8) -> Vec<Backend> {
        'retry: for _ in 0..50 {
            let first = TcpListener::bind("127.0.0.2:0").await.expect("bind");
            let port = first.local_addr().unwrap().port();
            let mut listeners = vec![first];
            for i in 1..n {
                let ip = IpAddr::from([127, 0, 0, 2 + i]);
                match TcpListener::bind(SocketAddr::new(ip, port)).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => continue 'retry,
                }
            }
            return listeners.into_iter().map(Self::serve).collect();
        }
        panic!("could not find a free shared port");
    }
}

async fn echo(
    req: Request<Incoming>,
    local: SocketAddr,
    arrived: watch::Sender<u64>,
) -> Result<Response<TestBody>, Infallible> {
    arrived.send_modify(|n| *n += 1);
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        return Ok(websocket_echo(req));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let frames = (0..n.div_ceil(chunk.len())).map(move |i| {
            let len = (n - i * chunk.len()).min(chunk.len());
            Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
        });
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let resp = Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", n)
            .body(BodyExt::boxed(body))
            .unwrap();
        return Ok(resp);
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        // A slow backend is what these requests ask for.
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let received = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    let json = serde_json::json!({
        "backend": local.to_string(), "method": method, "path": target, "version": version,
        "headers": headers, "received": received,
    });
    let text = format!("{json}\n");
    if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "all-good".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from(text))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let resp = Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(body))
            .unwrap();
        return Ok(resp);
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)).boxed())
        .unwrap())
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<TestBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(400)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

/// A Service named `name` (port 80 named `http`) with one EndpointSlice per endpoint.
pub fn service(name: &str, endpoints: &[SocketAddr]) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  ports: [{{name: http, port: 80, targetPort: http, protocol: TCP}}]\n"
    );
    for (i, ep) in endpoints.iter().enumerate() {
        out += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-{i}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}, protocol: TCP}}]\n\
             endpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n",
            ep.port(),
            ep.ip()
        );
    }
    out
}

/// An Ingress with one rule `host` + Prefix `path` to `service:80`.
pub fn ingress(
    name: &str,
    host: &str,
    path: &str,
    service: &str,
    annotations: &[(&str, &str)],
) -> String {
    let mut ann = String::new();
    for (k, v) in annotations {
        ann += &format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n");
    }
    let ann = if ann.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n{ann}")
    };
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n{ann}\
         spec:\n  rules:\n  - host: {host}\n    http:\n      paths:\n      - path: {path}\n        pathType: Prefix\n\
         \x20       backend: {{service: {{name: {service}, port: {{number: 80}}}}}}\n"
    )
}

/// An Ingress terminating TLS for `host` with the Secret `secret`.
pub fn tls_ingress(name: &str, host: &str, service: &str, secret: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  tls: [{{hosts: [{host}], secretName: {secret}}}]\n  rules:\n  - host: {host}\n    http:\n      paths:\n\
         \x20     - path: /\n        pathType: Prefix\n        backend: {{service: {{name: {service}, port: {{number: 80}}}}}}\n"
    )
}

/// A test CA and a leaf certificate for `host` signed by it, as PEM.
pub type TestCert = portico_test_support::Leaf;

pub fn test_cert(host: &str) -> TestCert {
    portico_test_support::TestCa::new("portico test CA").leaf(&[host])
}

/// A backend's TLS side: a certificate for `backend.test` from the test CA, offering `alpn`.
pub fn backend_tls(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let cert = test_cert("backend.test");
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::pem::PemObject::pem_slice_iter(cert.cert_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let private =
        rustls_pki_types::pem::PemObject::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, private)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

pub fn tls_secret(name: &str, cert: &TestCert) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert.cert_pem),
        indent(&cert.key_pem)
    )
}

pub fn table(yaml: &str) -> Arc<RoutingTable> {
    // The data plane's tests: a defaultBackend-only Ingress is the catch-all here (the
    // tenant rules that keep it off by default are portico-model's tests).
    let settings = Settings {
        watch_ingress_without_class: true,
        allow_catch_all: true,
        ..Settings::default()
    };
    Arc::new(table_file::from_yaml(yaml, settings).expect("test manifest compiles"))
}

/// The proxy under test, on ephemeral loopback ports.
pub struct TestProxy {
    pub proxy: Proxy,
    pub addrs: BoundAddrs,
}

impl TestProxy {
    pub async fn start(yaml: &str) -> TestProxy {
        Self::start_with(yaml, |_| {}).await
    }

    pub async fn start_with(yaml: &str, tweak: impl FnOnce(&mut ProxyConfig)) -> TestProxy {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut config = ProxyConfig {
            http: vec![local],
            https: vec![local],
            h3: vec![local],
            ..Default::default()
        };
        tweak(&mut config);
        let mut proxy = Proxy::new(config, table(yaml)).expect("proxy");
        let addrs = proxy.spawn_listeners().expect("listeners");
        TestProxy { proxy, addrs }
    }

    pub fn http(&self) -> SocketAddr {
        self.addrs.http[0]
    }

    pub fn https(&self) -> SocketAddr {
        self.addrs.https[0]
    }

    pub fn h3(&self) -> SocketAddr {
        self.addrs.h3[0]
    }
}

/// Runs an external program with a timeout; the process is killed if the test fails.
pub async fn run(program: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} timed out"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

pub async fn curl(args: &[&str]) -> Output {
    let mut all = vec!["-sS", "--max-time", "60"];
    all.extend_from_slice(args);
    run("curl", &all).await
}

/// curl's status line output via `-w`, with the body discarded: returns the status code.
pub async fn curl_status(args: &[&str]) -> u16 {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all).await;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The venv's Python (created by `tests/setup`).
pub fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
}

pub fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/proxy")
        .join(name)
        .display()
        .to_string()
}

/// Writes `text` to a fresh temporary file and returns its path (removed on drop).
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, text: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("portico-proxy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}-{name}", rand_suffix()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The JSON the echo backend returned.
pub fn echoed(body: &str) -> serde_json::Value {
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not echo JSON ({e}): {body}"))
}

/// A fixed xorshift sequence: the same mutations on every run, so a failure reproduces.
pub fn xorshift(state: &mut u64) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state as usize
}

/// One random edit of `bytes`: a byte changed, a control or separator byte inserted, a byte
/// deleted, a span doubled, the end cut off, or a line break inserted.
pub fn mutate(bytes: &mut Vec<u8>, rng: &mut u64) {
    const INTERESTING: [u8; 10] = [b'\r', b'\n', 0, b' ', b':', b'\t', 0x7f, 0xff, b'/', b','];
    if bytes.is_empty() {
        bytes.push(b'G');
    }
    let at = xorshift(rng) % bytes.len();
    match xorshift(rng) % 6 {
        0 => bytes[at] = xorshift(rng) as u8,
        1 => bytes.insert(at, INTERESTING[xorshift(rng) % INTERESTING.len()]),
        2 => {
            bytes.remove(at);
        }
        3 => {
            let end = (at + 1 + xorshift(rng) % 24).min(bytes.len());
            let span = bytes[at..end].to_vec();
            bytes.splice(at..at, span);
        }
        4 => bytes.truncate(at),
        _ => {
            bytes.splice(at..at, *b"\r\n");
        }
    }
}
