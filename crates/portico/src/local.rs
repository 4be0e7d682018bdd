//! `portico local`: a whole Portico cluster on one machine, in one command.
//!
//! In this process: the in-process Kubernetes API server (state in `STATE_DIR/apiserver`),
//! unless `--kubeconfig` points the cluster at another API server (e.g. a real
//! kube-apiserver). That one refuses loopback addresses in EndpointSlices, so there the demo
//! backends listen on a non-loopback address of this machine, each on its own port, with one
//! EndpointSlice per port.
//! As child processes of this one: three `portico run` replicas (each with its own Raft
//! data directory and ports) and four `portico echo` backends (two Services, two endpoints
//! each, every endpoint on its own loopback address since one EndpointSlice port serves
//! all of its endpoints). Then the demo objects are applied (server-side apply, so a
//! restart over the same state directory converges), and once every replica serves them
//! `STATE_DIR/cluster.json` is written for scripts.
//!
//! Children never outlive this process: Ctrl-C/SIGTERM stops them (SIGTERM, then SIGKILL
//! after a grace period), dropping a child kills it, and each child arms a parent-death
//! signal at its own startup (`--die-with-parent`), which covers a SIGKILLed parent. Every
//! child is spawned from this process's only thread (a current-thread runtime), because
//! the kernel ties that signal to the spawning thread.
//!
//! Ports are chosen once and kept in `STATE_DIR/layout.json`: Raft membership stores each
//! replica's address, so a restart over the same state must use the same ports. This process
//! binds every child's sockets itself (port 0 at first start, the kept ports on a restart) and
//! hands each child its own by socket activation (`LISTEN_FDS`, `LISTEN_FDNAMES`; see
//! `socket_activation`): a port is never released between being chosen and being served, so no
//! other process can take it, and the ports printed are the sockets the children serve. Its own
//! copy of a child's sockets is closed once the child is started: a child that dies leaves its
//! ports refusing connections, as a dead process does.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use command_fds::{CommandFdExt, FdMapping};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, Patch, PatchParams};
use portico_apiserver::ApiServer;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::logging::LogFormat;
use crate::parent::PARENT_PID_ENV;
use crate::pki::{self, Ca};
use crate::routes_view::TableView;

#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Where the cluster keeps its state: API server data, Raft data, certificates, logs,
    /// kubeconfig and cluster.json. Reused on the next start.
    #[arg(long, env = "PORTICO_STATE_DIR", default_value = ".portico-local")]
    pub state_dir: PathBuf,
    /// Number of replicas.
    #[arg(long, env = "PORTICO_LOCAL_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub replicas: u32,
    /// How long to wait for the cluster to be ready, in seconds.
    #[arg(long, env = "PORTICO_LOCAL_READY_TIMEOUT", default_value_t = 120)]
    pub ready_timeout: u64,
    /// Log format of this process (the children log to STATE_DIR/logs/).
    #[arg(long, env = "PORTICO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Run against the API server of this kubeconfig instead of starting the in-process one
    /// (the demo objects go to its `default` namespace). Not read from $KUBECONFIG, so the
    /// default stays the self-contained cluster.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubeconfig: the non-loopback IPv4 address the demo backends listen on and their
    /// EndpointSlices name (a real API server refuses loopback ones). Default: this machine's
    /// first non-loopback IPv4 address.
    #[arg(long, requires = "kubeconfig")]
    pub backend_address: Option<Ipv4Addr>,
}

const NAMESPACE: &str = "default";
const TLS_HOST: &str = "secure.portico.test";
const VHOST_FOO: &str = "foo.portico.test";
const VHOST_BAR: &str = "bar.portico.test";
const TLS_SECRET: &str = "portico-demo-tls";
const FIELD_MANAGER: &str = "portico-local";

/// Ports and addresses, chosen at first start and kept.
#[derive(Debug, Serialize, Deserialize)]
struct Layout {
    apiserver_port: u16,
    replicas: Vec<ReplicaPorts>,
    backends: Vec<BackendLayout>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReplicaPorts {
    http: u16,
    https: u16,
    raft: u16,
    admin: u16,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
struct BackendLayout {
    service: String,
    pod: String,
    addr: SocketAddr,
}

/// What scripts read (`cluster.json`).
#[derive(Debug, Serialize)]
struct ClusterInfo {
    kubeconfig: PathBuf,
    apiserver: String,
    ca_cert: PathBuf,
    state_dir: PathBuf,
    pid: u32,
    replicas: Vec<ReplicaInfo>,
    backends: Vec<BackendInfo>,
    hosts: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct ReplicaInfo {
    name: String,
    pid: u32,
    http: String,
    https: String,
    http3: String,
    admin: String,
    raft: String,
    data_dir: PathBuf,
    log: PathBuf,
}

#[derive(Debug, Serialize)]
struct BackendInfo {
    service: String,
    pod: String,
    addr: SocketAddr,
    pid: u32,
    log: PathBuf,
}

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A TCP listener on `ip`, on a port the kernel picks, held until handed to a child.
fn bind_and_hold_tcp(ip: Ipv4Addr) -> anyhow::Result<TcpListener> {
    TcpListener::bind((ip, 0)).with_context(|| format!("binding a TCP listener on {ip}"))
}

/// A TCP listener and a UDP socket on one loopback port (HTTPS and HTTP/3 share it, as on
/// port 443), both held until handed to a child.
fn bind_and_hold_tcp_udp() -> anyhow::Result<(TcpListener, UdpSocket)> {
    for _ in 0..50 {
        let listener = TcpListener::bind((LOOPBACK, 0))?;
        let port = listener.local_addr()?.port();
        if let Ok(socket) = UdpSocket::bind((LOOPBACK, port)) {
            return Ok((listener, socket));
        }
    }
    bail!("no port free for both TCP and UDP")
}

/// TCP listeners on one port on every address in `ips` (in that order), held until handed to
/// the children.
fn bind_and_hold_on(ips: &[Ipv4Addr]) -> anyhow::Result<Vec<TcpListener>> {
    'outer: for _ in 0..50 {
        let first = TcpListener::bind((ips[0], 0))?;
        let port = first.local_addr()?.port();
        let mut these = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)) {
                Ok(l) => these.push(l),
                Err(_) => continue 'outer,
            }
        }
        return Ok(these);
    }
    bail!("no port free on {ips:?}")
}

/// Binds a port kept in the layout again (a restart over the same state).
fn bind_kept_tcp(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| {
        format!("binding {what} on {addr} again (kept in layout.json); stop whatever holds it")
    })
}

/// One replica's sockets, bound by this process and handed to it.
struct ReplicaSockets {
    raft: TcpListener,
    http: TcpListener,
    https: TcpListener,
    http3: UdpSocket,
    admin: TcpListener,
}

impl ReplicaSockets {
    /// As handed over: socket-activation names and descriptors, in fd order.
    fn handed(self) -> Vec<(&'static str, OwnedFd)> {
        vec![
            ("raft", self.raft.into()),
            ("http", self.http.into()),
            ("https", self.https.into()),
            ("http3", self.http3.into()),
            ("admin", self.admin.into()),
        ]
    }
}

/// Every socket of a [`Layout`], bound and held by this process.
struct Held {
    apiserver: TcpListener,
    replicas: Vec<ReplicaSockets>,
    /// In the order of [`Layout::backends`].
    backends: Vec<TcpListener>,
}

/// Where the demo backends listen.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Backends {
    /// Two loopback addresses per Service sharing one port (the in-process API server).
    Loopback,
    /// One non-loopback address, a port per backend (an API server that refuses loopback).
    On(Ipv4Addr),
}

/// This machine's first non-loopback IPv4 address: the local host routes of the kernel's
/// routing trie (`/proc/net/fib_trie`, an address line followed by `/32 host LOCAL`).
fn first_non_loopback_ipv4() -> anyhow::Result<Ipv4Addr> {
    let trie = fs::read_to_string("/proc/net/fib_trie").context("reading /proc/net/fib_trie")?;
    let mut previous: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let line = line.trim();
        if line == "/32 host LOCAL"
            && let Some(ip) = previous.filter(|ip| !ip.is_loopback())
        {
            return Ok(ip);
        }
        previous = line.strip_prefix("|-- ").and_then(|ip| ip.parse().ok());
    }
    bail!("this machine has no non-loopback IPv4 address; pass --backend-address")
}

impl Layout {
    /// Binds every socket on a port the kernel picks, and the layout they make.
    fn choose(replicas: u32, backends_on: Backends) -> anyhow::Result<(Self, Held)> {
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
        let apiserver = bind_and_hold_tcp(LOOPBACK)?;
        let (mut ports, mut replica_sockets) = (Vec::new(), Vec::new());
        for _ in 0..replicas {
            let (https, http3) = bind_and_hold_tcp_udp()?;
            let sockets = ReplicaSockets {
                raft: bind_and_hold_tcp(LOOPBACK)?,
                http: bind_and_hold_tcp(LOOPBACK)?,
                https,
                http3,
                admin: bind_and_hold_tcp(LOOPBACK)?,
            };
            ports.push(ReplicaPorts {
                http: port(&sockets.http)?,
                https: port(&sockets.https)?,
                raft: port(&sockets.raft)?,
                admin: port(&sockets.admin)?,
            });
            replica_sockets.push(sockets);
        }
        let (mut backends, mut backend_sockets) = (Vec::new(), Vec::new());
        match backends_on {
            Backends::On(ip) => {
                for service in ["test", "web"] {
                    for i in 0..2 {
                        let listener = bind_and_hold_tcp(ip)?;
                        backends.push(BackendLayout {
                            service: service.to_owned(),
                            pod: format!("{service}-{i}"),
                            addr: listener.local_addr()?,
                        });
                        backend_sockets.push(listener);
                    }
                }
            }
            Backends::Loopback => {
                for (service, first_ip) in [("test", 2u8), ("web", 4u8)] {
                    let ips = [
                        Ipv4Addr::new(127, 0, 0, first_ip),
                        Ipv4Addr::new(127, 0, 0, first_ip + 1),
                    ];
                    for (i, listener) in bind_and_hold_on(&ips)?.into_iter().enumerate() {
                        backends.push(BackendLayout {
                            service: service.to_owned(),
                            pod: format!("{service}-{i}"),
                            addr: listener.local_addr()?,
                        });
                        backend_sockets.push(listener);
                    }
                }
            }
        }
        let layout = Self {
            apiserver_port: port(&apiserver)?,
            replicas: ports,
            backends,
        };
        let held = Held {
            apiserver,
            replicas: replica_sockets,
            backends: backend_sockets,
        };
        Ok((layout, held))
    }

    /// Binds this layout's ports again (a restart over the same state). The API server, in
    /// this process and named only by the kubeconfig written at each start, may move.
    fn bind(&self) -> anyhow::Result<Held> {
        let apiserver = match TcpListener::bind((LOOPBACK, self.apiserver_port)) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(port = self.apiserver_port, error = %e, "API server port taken; using another");
                bind_and_hold_tcp(LOOPBACK)?
            }
        };
        let loopback = |port| SocketAddr::V4(SocketAddrV4::new(LOOPBACK, port));
        let mut replicas = Vec::new();
        for (i, p) in self.replicas.iter().enumerate() {
            let what = |listener: &str| format!("portico-{i}'s {listener} listener");
            replicas.push(ReplicaSockets {
                raft: bind_kept_tcp(loopback(p.raft), &what("Raft"))?,
                http: bind_kept_tcp(loopback(p.http), &what("HTTP"))?,
                https: bind_kept_tcp(loopback(p.https), &what("HTTPS"))?,
                http3: UdpSocket::bind(loopback(p.https)).with_context(|| {
                    format!(
                        "binding {} on UDP {} again (kept in layout.json); stop whatever holds it",
                        what("HTTP/3"),
                        loopback(p.https)
                    )
                })?,
                admin: bind_kept_tcp(loopback(p.admin), &what("admin"))?,
            });
        }
        let backends = self
            .backends
            .iter()
            .map(|b| bind_kept_tcp(b.addr, &format!("backend {}", b.pod)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Held {
            apiserver,
            replicas,
            backends,
        })
    }

    fn backends(&self) -> Backends {
        match self.backends.first().map(|b| b.addr.ip()) {
            Some(std::net::IpAddr::V4(ip)) if !ip.is_loopback() => Backends::On(ip),
            _ => Backends::Loopback,
        }
    }

    /// The layout kept in `path` with its sockets bound again, else a new one (written there).
    fn load_or_choose(
        path: &Path,
        replicas: u32,
        backends: Backends,
    ) -> anyhow::Result<(Self, Held)> {
        if let Ok(text) = fs::read_to_string(path) {
            let layout: Layout = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a layout; remove the state directory to start afresh",
                    path.display()
                )
            })?;
            if layout.replicas.len() != replicas as usize {
                bail!(
                    "{} was made for {} replicas; use --replicas {} or a new --state-dir",
                    path.display(),
                    layout.replicas.len(),
                    layout.replicas.len()
                );
            }
            if layout.backends() != backends {
                bail!(
                    "{} has the demo backends at {:?}, not {backends:?} (the in-process API \
                     server and --kubeconfig need different ones); use a new --state-dir",
                    path.display(),
                    layout.backends()
                );
            }
            let held = layout.bind()?;
            return Ok((layout, held));
        }
        let (layout, held) = Self::choose(replicas, backends)?;
        fs::write(path, serde_json::to_vec_pretty(&layout)?)?;
        Ok((layout, held))
    }
}

/// A child process that is killed when dropped.
struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl Managed {
    /// Starts `portico ARGS`, handing it `sockets` by socket activation (fd 3.. in order,
    /// `LISTEN_FDNAMES` their names); this process's copies are closed once it runs.
    fn spawn(
        name: &str,
        args: &[String],
        sockets: Vec<(&'static str, OwnedFd)>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the portico binary")?;
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(exe);
        command
            .args(args)
            .arg("--die-with-parent")
            .env(PARENT_PID_ENV, std::process::id().to_string())
            // Sockets handed to this process are not the child's; LISTEN_PID would name us.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        if !sockets.is_empty() {
            let names: Vec<&str> = sockets.iter().map(|(n, _)| *n).collect();
            command
                .env("LISTEN_FDS", sockets.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            let mappings = sockets
                .into_iter()
                .enumerate()
                .map(|(i, (_, fd))| FdMapping {
                    parent_fd: fd,
                    child_fd: 3 + i as i32,
                })
                .collect();
            command
                .fd_mappings(mappings)
                .with_context(|| format!("handing {name} its sockets"))?;
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            exited: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Reports (once) that the child exited on its own.
    fn check_exit(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = true;
                Some(status)
            }
            _ => None,
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Everything `portico local` started; stopping it stops them all.
struct Cluster {
    replicas: Vec<Managed>,
    backends: Vec<Managed>,
}

impl Cluster {
    fn all_mut(&mut self) -> impl Iterator<Item = &mut Managed> {
        self.replicas.iter_mut().chain(self.backends.iter_mut())
    }

    /// SIGTERM to every child (replicas drain and release the Lease), SIGKILL after
    /// `grace`, and reap them all.
    async fn stop(&mut self, grace: Duration) {
        for child in self.all_mut() {
            child.signal(rustix::process::Signal::TERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        for child in self.all_mut() {
            match tokio::time::timeout_at(deadline, child.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(name = %child.name, "did not stop in time; killing it");
                    let _ = child.child.kill().await;
                }
            }
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(api: &Api<K>, value: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + Serialize + for<'de> Deserialize<'de>,
    K::DynamicType: Default,
{
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let object: K = serde_json::from_value(value)?;
    api.patch(&name, &apply_params(), &Patch::Apply(&object))
        .await
        .with_context(|| format!("applying {} {name}", K::kind(&Default::default())))?;
    Ok(())
}

/// The demo objects: IngressClass, two Services with their EndpointSlices, a TLS Secret
/// and three Ingresses (the Kubernetes docs' minimal Ingress, a TLS host, name-based
/// virtual hosts).
async fn apply_demo(client: &kube::Client, layout: &Layout, tls: &pki::Leaf) -> anyhow::Result<()> {
    let classes: Api<IngressClass> = Api::all(client.clone());
    apply(&classes, json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "portico", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": portico_model::CONTROLLER_NAME},
    })).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    for service in ["test", "web"] {
        let endpoints: Vec<&BackendLayout> = layout
            .backends
            .iter()
            .filter(|b| b.service == service)
            .collect();
        let port = endpoints[0].addr.port();
        apply(&services, json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service, "namespace": NAMESPACE},
            "spec": {"selector": {"app": service}, "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]},
        })).await?;
        // One EndpointSlice per backend port (a slice's port applies to all its endpoints):
        // one slice on loopback, one per backend on a single non-loopback address.
        let mut ports: Vec<u16> = endpoints.iter().map(|b| b.addr.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        for (i, port) in ports.iter().enumerate() {
            let slice_endpoints: Vec<serde_json::Value> = endpoints
                .iter()
                .filter(|b| b.addr.port() == *port)
                .map(|b| {
                    json!({
                        "addresses": [b.addr.ip().to_string()],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": b.pod},
                    })
                })
                .collect();
            let name = if i == 0 {
                format!("{service}-local")
            } else {
                format!("{service}-local-{i}")
            };
            apply(
                &slices,
                json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "namespace": NAMESPACE,
                                 "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4",
                    "endpoints": slice_endpoints,
                    "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                }),
            )
            .await?;
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    apply(
        &secrets,
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": TLS_SECRET, "namespace": NAMESPACE},
            "stringData": {"tls.crt": tls.cert_pem, "tls.key": tls.key_pem},
        }),
    )
    .await?;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), NAMESPACE);
    let backend = |service: &str| json!({"service": {"name": service, "port": {"number": 80}}});
    apply(
        &ingresses,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "minimal-ingress", "namespace": NAMESPACE,
                         "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/"}},
            "spec": {"ingressClassName": "portico", "rules": [{"http": {"paths": [
                {"path": "/testpath", "pathType": "Prefix", "backend": backend("test")}]}}]},
        }),
    )
    .await?;
    apply(
        &ingresses,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "tls-example-ingress", "namespace": NAMESPACE},
            "spec": {"ingressClassName": "portico",
                     "tls": [{"hosts": [TLS_HOST], "secretName": TLS_SECRET}],
                     "rules": [{"host": TLS_HOST, "http": {"paths": [
                         {"path": "/", "pathType": "Prefix", "backend": backend("web")}]}}]},
        }),
    )
    .await?;
    apply(&ingresses, json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "name-virtual-host-ingress", "namespace": NAMESPACE},
        "spec": {"ingressClassName": "portico", "rules": [
            {"host": VHOST_FOO, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend("test")}]}},
            {"host": VHOST_BAR, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend("web")}]}},
        ]},
    })).await?;
    Ok(())
}

const DEMO_INGRESSES: [&str; 3] = [
    "default/minimal-ingress",
    "default/tls-example-ingress",
    "default/name-virtual-host-ingress",
];

/// Whether the replica at `admin` is ready and serves every demo Ingress with endpoints.
async fn replica_serves_demo(admin: &str) -> bool {
    let Ok(Ok((status, _))) = tokio::time::timeout(
        Duration::from_secs(2),
        crate::routes::admin_get(admin, "/readyz"),
    )
    .await
    else {
        return false;
    };
    if !status.is_success() {
        return false;
    }
    let Ok(Ok((_, body))) = tokio::time::timeout(
        Duration::from_secs(2),
        crate::routes::admin_get(admin, "/debug/routes"),
    )
    .await
    else {
        return false;
    };
    let Ok(view) = serde_json::from_slice::<TableView>(&body) else {
        return false;
    };
    DEMO_INGRESSES.iter().all(|ingress| {
        view.routes
            .iter()
            .any(|r| r.ingress == *ingress && r.endpoints.len() == 2)
    })
}

/// Takes an exclusive lock on the state directory for as long as the returned file lives.
fn lock_state_dir(dir: &Path) -> anyhow::Result<fs::File> {
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            anyhow::anyhow!(
                "another `portico local` is using {}; stop it or pass another --state-dir",
                dir.display()
            )
        },
    )?;
    Ok(file)
}

pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let state = fs::canonicalize(&args.state_dir)?;
    let _lock = lock_state_dir(&state)?;
    let cluster_json = state.join("cluster.json");
    let _ = fs::remove_file(&cluster_json);
    for dir in ["logs", "replicas", "raft-ca"] {
        fs::create_dir_all(state.join(dir))?;
    }
    let backends = match (&args.kubeconfig, args.backend_address) {
        (None, _) => Backends::Loopback,
        (Some(_), Some(ip)) => Backends::On(ip),
        (Some(_), None) => Backends::On(first_non_loopback_ipv4()?),
    };
    let (layout, held) =
        Layout::load_or_choose(&state.join("layout.json"), args.replicas, backends)?;

    // Certificates: the demo CA (its certificate is what curl --cacert needs) and the
    // cluster CA for replica-to-replica mTLS; each replica signs its own certificate from
    // it at first boot.
    let ca_cert = state.join("ca.crt");
    let demo_ca = Ca::load_or_create(&ca_cert, &state.join("ca.key"), "portico local demo CA")?;
    let tls_leaf = demo_ca.sign(TLS_HOST, &[TLS_HOST.to_owned()])?;
    let raft_ca_cert = state.join("raft-ca/ca.crt");
    let raft_ca_key = state.join("raft-ca/ca.key");
    Ca::load_or_create(&raft_ca_cert, &raft_ca_key, "portico local cluster CA")?;

    let (client, kubeconfig, apiserver_url, handle) = match &args.kubeconfig {
        Some(path) => {
            let (client, kubeconfig, url) = external_api_server(path).await?;
            (client, kubeconfig, url, None)
        }
        None => {
            let (client, kubeconfig, handle) = in_process_api_server(&state, held.apiserver)?;
            (client, kubeconfig, handle.url(), Some(handle))
        }
    };

    // Children.
    let mut cluster = Cluster {
        replicas: Vec::new(),
        backends: Vec::new(),
    };
    for (backend, socket) in layout.backends.iter().zip(held.backends) {
        let log = state.join("logs").join(format!("{}.log", backend.pod));
        cluster.backends.push(Managed::spawn(
            &backend.pod,
            &[
                "echo".into(),
                "--listen".into(),
                backend.addr.to_string(),
                "--service".into(),
                backend.service.clone(),
                "--namespace".into(),
                NAMESPACE.into(),
                "--pod".into(),
                backend.pod.clone(),
            ],
            vec![("listen", socket.into())],
            log,
        )?);
    }
    let members: Vec<String> = layout
        .replicas
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.raft))
        .collect();
    for (i, (ports, sockets)) in layout.replicas.iter().zip(held.replicas).enumerate() {
        let name = format!("portico-{i}");
        let log = state.join("logs").join(format!("{name}.log"));
        let data_dir = state.join("replicas").join(&name);
        let path = |p: &Path| p.to_string_lossy().into_owned();
        cluster.replicas.push(Managed::spawn(
            &name,
            &[
                "run".into(),
                "--pod-name".into(),
                name.clone(),
                "--namespace".into(),
                NAMESPACE.into(),
                "--kubeconfig".into(),
                path(&kubeconfig),
                "--data-dir".into(),
                path(&data_dir),
                "--raft-listen".into(),
                format!("127.0.0.1:{}", ports.raft),
                "--initial-members".into(),
                members.join(","),
                "--raft-ca".into(),
                path(&raft_ca_cert),
                "--raft-ca-key".into(),
                path(&raft_ca_key),
                "--http".into(),
                format!("127.0.0.1:{}", ports.http),
                "--https".into(),
                format!("127.0.0.1:{}", ports.https),
                "--http3".into(),
                format!("127.0.0.1:{}", ports.https),
                "--admin".into(),
                format!("127.0.0.1:{}", ports.admin),
                "--publish-status-address".into(),
                "127.0.0.1".into(),
                "--drain-seconds".into(),
                "5".into(),
            ],
            sockets.handed(),
            log,
        )?);
    }

    let result = tokio::select! {
        result = bring_up(&args, &state, &client, &layout, &tls_leaf, &mut cluster, &apiserver_url, &kubeconfig, &ca_cert) => result,
        signal = crate::signals::terminated() => {
            tracing::info!(signal = signal?, "stopping before the cluster was ready");
            Ok(false)
        }
    };
    let keep_running = match result {
        Ok(keep_running) => keep_running,
        Err(e) => {
            cluster.stop(Duration::from_secs(10)).await;
            if let Some(handle) = handle {
                handle.shutdown().await;
            }
            return Err(e);
        }
    };
    if keep_running {
        supervise(&mut cluster).await?;
    }
    let _ = fs::remove_file(&cluster_json);
    tracing::info!("stopping the replicas and backends");
    cluster.stop(Duration::from_secs(15)).await;
    if let Some(handle) = handle {
        handle.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The in-process API server (state in STATE_DIR/apiserver) and its kubeconfig.
fn in_process_api_server(
    state: &Path,
    listener: TcpListener,
) -> anyhow::Result<(kube::Client, PathBuf, portico_apiserver::ServerHandle)> {
    let apiserver = ApiServer::builder()
        .data_dir(state.join("apiserver"))
        .minor_version(33)
        .build()
        .context("opening the API server's state")?;
    listener.set_nonblocking(true)?;
    let handle = apiserver.serve(tokio::net::TcpListener::from_std(listener)?)?;
    let kubeconfig = state.join("kubeconfig");
    handle.write_kubeconfig(&kubeconfig)?;
    tracing::info!(url = %handle.url(), "API server listening");
    Ok((
        kube::Client::new(apiserver.service(), NAMESPACE),
        kubeconfig,
        handle,
    ))
}

/// A client for the API server of `kubeconfig` (its current context), the kubeconfig's
/// absolute path for the replicas, and the server's URL.
async fn external_api_server(kubeconfig: &Path) -> anyhow::Result<(kube::Client, PathBuf, String)> {
    let path = fs::canonicalize(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let parsed = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading {}", path.display()))?;
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("building the API client")?;
    let version = client
        .apiserver_version()
        .await
        .with_context(|| format!("reaching the API server at {url}"))?;
    tracing::info!(url = %url, version = %version.git_version, "using the API server of {}", path.display());
    Ok((client, path, url))
}

/// Applies the demo objects, waits for every replica to serve them, writes cluster.json
/// and prints the walk-through. Returns whether to keep running.
#[allow(clippy::too_many_arguments)]
async fn bring_up(
    args: &LocalArgs,
    state: &Path,
    client: &kube::Client,
    layout: &Layout,
    tls_leaf: &pki::Leaf,
    cluster: &mut Cluster,
    apiserver_url: &str,
    kubeconfig: &Path,
    ca_cert: &Path,
) -> anyhow::Result<bool> {
    apply_demo(client, layout, tls_leaf).await?;
    tracing::info!("demo objects applied; waiting for every replica to serve them");
    let started = Instant::now();
    let timeout = Duration::from_secs(args.ready_timeout);
    let admins: Vec<String> = layout
        .replicas
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.admin))
        .collect();
    loop {
        for child in cluster.all_mut() {
            if let Some(status) = child.check_exit() {
                bail!(
                    "{} exited during start-up ({status}); its log {}:\n{}",
                    child.name,
                    child.log.display(),
                    tail(&child.log, 20)
                );
            }
        }
        let mut ready = true;
        for admin in &admins {
            ready &= replica_serves_demo(admin).await;
        }
        if ready {
            break;
        }
        if started.elapsed() > timeout {
            let logs: Vec<String> = cluster
                .replicas
                .iter()
                .map(|r| {
                    format!(
                        "--- {} ({}):\n{}",
                        r.name,
                        r.log.display(),
                        tail(&r.log, 15)
                    )
                })
                .collect();
            bail!(
                "the replicas did not serve the demo Ingresses within {}s\n{}",
                args.ready_timeout,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let replicas: Vec<ReplicaInfo> = cluster
        .replicas
        .iter()
        .zip(&layout.replicas)
        .map(|(child, ports)| ReplicaInfo {
            name: child.name.clone(),
            pid: child.pid(),
            http: format!("127.0.0.1:{}", ports.http),
            https: format!("127.0.0.1:{}", ports.https),
            http3: format!("127.0.0.1:{}", ports.https),
            admin: format!("127.0.0.1:{}", ports.admin),
            raft: format!("127.0.0.1:{}", ports.raft),
            data_dir: state.join("replicas").join(&child.name),
            log: child.log.clone(),
        })
        .collect();
    let backends: Vec<BackendInfo> = cluster
        .backends
        .iter()
        .zip(&layout.backends)
        .map(|(child, b)| BackendInfo {
            service: b.service.clone(),
            pod: b.pod.clone(),
            addr: b.addr,
            pid: child.pid(),
            log: child.log.clone(),
        })
        .collect();
    let info = ClusterInfo {
        kubeconfig: kubeconfig.to_owned(),
        apiserver: apiserver_url.to_owned(),
        ca_cert: ca_cert.to_owned(),
        state_dir: state.to_owned(),
        pid: std::process::id(),
        replicas,
        backends,
        hosts: json!({"tls": TLS_HOST, "virtual": [VHOST_FOO, VHOST_BAR]}),
    };
    print_walkthrough(&info);
    let path = state.join("cluster.json");
    let tmp = state.join("cluster.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&info)?)?;
    fs::rename(&tmp, &path)?;
    Ok(true)
}

fn print_walkthrough(info: &ClusterInfo) {
    let first = &info.replicas[0];
    let http_port = first.http.rsplit(':').next().unwrap_or_default();
    let https_port = first.https.rsplit(':').next().unwrap_or_default();
    let mut out = String::new();
    out.push_str("\nPortico local cluster is ready.\n\n");
    out.push_str(&format!("  kubeconfig:  {}\n", info.kubeconfig.display()));
    out.push_str(&format!("  API server:  {}\n", info.apiserver));
    out.push_str(&format!("  demo CA:     {}\n\n", info.ca_cert.display()));
    out.push_str("  replica     HTTP              HTTPS             HTTP/3 (UDP)      admin\n");
    for r in &info.replicas {
        out.push_str(&format!(
            "  {:<10}  {:<16}  {:<16}  {:<16}  {}\n",
            r.name, r.http, r.https, r.http3, r.admin
        ));
    }
    out.push_str("\nTry (any replica's port works the same):\n\n");
    out.push_str(&format!("  curl http://127.0.0.1:{http_port}/testpath\n"));
    out.push_str(&format!(
        "  curl --http2-prior-knowledge http://127.0.0.1:{http_port}/testpath?x=1\n"
    ));
    out.push_str(&format!(
        "  curl --resolve {VHOST_FOO}:{http_port}:127.0.0.1 http://{VHOST_FOO}:{http_port}/hello\n"
    ));
    out.push_str(&format!(
        "  curl --resolve {VHOST_BAR}:{http_port}:127.0.0.1 http://{VHOST_BAR}:{http_port}/\n"
    ));
    out.push_str(&format!(
        "  curl --cacert {} --resolve {TLS_HOST}:{https_port}:127.0.0.1 https://{TLS_HOST}:{https_port}/\n",
        info.ca_cert.display()
    ));
    out.push_str(&format!(
        "  curl --http3-only --cacert {} --resolve {TLS_HOST}:{https_port}:127.0.0.1 https://{TLS_HOST}:{https_port}/   # curl built with HTTP/3\n",
        info.ca_cert.display()
    ));
    out.push_str(&format!(
        "  KUBECONFIG={} kubectl get ingress\n",
        info.kubeconfig.display()
    ));
    out.push_str(&format!(
        "  cargo run --release -p portico -- routes --admin {}\n",
        first.admin
    ));
    out.push_str(&format!(
        "\nLogs: {}/logs/. Press Ctrl-C to stop everything.\n",
        info.state_dir.display()
    ));
    println!("{out}");
}

/// Runs until SIGINT/SIGTERM, reporting children that exit on their own.
async fn supervise(cluster: &mut Cluster) -> anyhow::Result<()> {
    let signal = crate::signals::terminated();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            signal = &mut signal => {
                tracing::info!(signal = signal?, "stopping");
                return Ok(());
            }
            _ = tick.tick() => {
                for child in cluster.all_mut() {
                    if let Some(status) = child.check_exit() {
                        tracing::warn!(name = %child.name, %status, log = %child.log.display(), "exited; the others keep serving");
                    }
                }
            }
        }
    }
}
