//! Three `portico run` processes (Raft over mutual TLS from a CA given as files) against one
//! API server, plus `portico echo` backends, all killed on drop. The API server is either
//! Portico's in-process one or a real kube-apiserver with etcd ([`Backend`]).
//!
//! In-process, each replica reaches the API server through its own listener (its own
//! kubeconfig), so every write the API server answers is attributed to the replica that sent
//! it by the port it arrived on: that is how the tests tell who wrote Ingress status. The
//! listeners can be closed and reopened on the same ports, which is how the API server "goes
//! away". Against the real one, every replica runs as deploy/'s ServiceAccount (its RBAC
//! applied from `kubectl kustomize deploy/`), the test applies objects with `kubectl apply`
//! as a tenant would, and the API server goes away by being stopped (etcd keeps its data).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kube::Api;
use kube::api::{Patch, PatchParams};
use portico_apiserver::ApiServer;
use portico_test_support::process::{self, Process, Signal};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::common::deploy_rbac::{deploy_and_service_account, met_forbidden};
use crate::common::portico_run::{self, LOOPBACK_PORT_0, Member};
use crate::common::real_apiserver::RealApiServer;
use crate::common::{get, wait_until, write_ca};
/// Where the tests' Ingresses, Services and Secrets live.
pub const NAMESPACE: &str = "default";

/// Which API server the replicas run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `portico-apiserver` in this test process, one listener per replica.
    InProcess,
    /// tests/kube's kube-testenv: kube-apiserver and etcd, replicas as deploy/'s ServiceAccount.
    Real,
}

/// One write (any method but GET) answered by the API server.
#[derive(Clone, Debug)]
pub struct ApiWrite {
    pub replica: usize,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub at: Instant,
}

impl ApiWrite {
    pub fn is_ingress_status(&self) -> bool {
        self.method != "GET" && self.path.contains("/ingresses/") && self.path.ends_with("/status")
    }
}

type Writes = Arc<Mutex<Vec<ApiWrite>>>;

/// The API server, the test's own client, and (in-process) one listener per replica.
pub struct ApiSide {
    pub runtime: tokio::runtime::Runtime,
    /// The test's client: in-process, so closing the replicas' listeners leaves it working;
    /// against the real server, the admin's (it fails while the server is stopped).
    pub client: kube::Client,
    /// In-process only: every write answered, by the replica's listener it came through.
    pub writes: Writes,
    fronts: Vec<(SocketAddr, Option<JoinHandle<()>>)>,
    server: Option<ApiServer>,
    /// The real control plane and the ServiceAccount's kubeconfig every replica uses.
    pub real: Option<(RealApiServer, PathBuf)>,
}

impl ApiSide {
    fn start(backend: Backend, replicas: usize, dir: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        if backend == Backend::Real {
            let real = RealApiServer::start();
            let kubeconfig = deploy_and_service_account(&real, dir, None);
            let client = runtime.block_on(async {
                let config = kube::Config::from_custom_kubeconfig(
                    kube::config::Kubeconfig::read_from(&real.kubeconfig).unwrap(),
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .unwrap();
                kube::Client::try_from(config).unwrap()
            });
            return ApiSide {
                runtime,
                client,
                writes: Writes::default(),
                fronts: Vec::new(),
                server: None,
                real: Some((real, kubeconfig)),
            };
        }
        let server = ApiServer::builder().minor_version(33).build().unwrap();
        let client = {
            let _guard = runtime.enter();
            kube::Client::new(server.service(), NAMESPACE)
        };
        let mut api = ApiSide {
            runtime,
            client,
            writes: Writes::default(),
            fronts: Vec::new(),
            server: Some(server),
            real: None,
        };
        for _ in 0..replicas {
            let listener = api
                .runtime
                .block_on(TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            api.fronts.push((listener.local_addr().unwrap(), None));
            let i = api.fronts.len() - 1;
            api.fronts[i].1 = Some(api.serve_front(i, listener));
        }
        api
    }

    pub fn backend(&self) -> Backend {
        if self.real.is_some() {
            Backend::Real
        } else {
            Backend::InProcess
        }
    }

    /// The kubeconfig replica `replica` runs with (written to `dir` in-process).
    fn kubeconfig(&self, replica: usize, dir: &Path) -> PathBuf {
        if let Some((_, kubeconfig)) = &self.real {
            return kubeconfig.clone();
        }
        let kubeconfig = dir.join(format!("kubeconfig-{replica}"));
        std::fs::write(
            &kubeconfig,
            portico_apiserver::kubeconfig(&self.url(replica)),
        )
        .unwrap();
        kubeconfig
    }

    /// kubectl as the real server's admin (a tenant with every right).
    pub fn kubectl(&self) -> Command {
        self.real.as_ref().expect("the real API server").0.kubectl()
    }

    pub fn url(&self, replica: usize) -> String {
        format!("http://{}", self.fronts[replica].0)
    }

    /// Serves the API to replica `replica` on `listener`, recording every write.
    fn serve_front(&self, replica: usize, listener: TcpListener) -> JoinHandle<()> {
        let server = self.server.clone().expect("in-process");
        let writes = self.writes.clone();
        self.runtime.spawn(async move {
            // Dropping this set (when the task is aborted) closes every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let inner = hyper_util::service::TowerToHyperService::new(server.service());
                        let writes = writes.clone();
                        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                            let method = request.method().clone();
                            let path = request.uri().path().to_owned();
                            let answer = hyper::service::Service::call(&inner, request);
                            let writes = writes.clone();
                            async move {
                                // A concrete error type (hyper's bound on a boxed one is too
                                // general for an async block to satisfy).
                                let answer = answer.await.map_err(|e| std::io::Error::other(e.to_string()));
                                if method != http::Method::GET
                                    && let Ok(response) = &answer
                                {
                                    writes.lock().unwrap().push(ApiWrite {
                                        replica,
                                        method: method.to_string(),
                                        path,
                                        status: response.status().as_u16(),
                                        at: Instant::now(),
                                    });
                                }
                                answer
                            }
                        });
                        connections.spawn(async move {
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        })
    }

    /// The API server goes away. In-process: every replica's listener and open connection
    /// (watches included) closes, so from the replicas' side it is gone (connection
    /// refused). Real: kube-apiserver stops (gracefully); etcd keeps running.
    pub fn stop_serving(&mut self) {
        if let Some((real, _)) = &self.real {
            real.stop_apiserver();
            return;
        }
        for (_, task) in &mut self.fronts {
            if let Some(task) = task.take() {
                task.abort();
                let _ = self.runtime.block_on(task);
            }
        }
    }

    /// Serves again on the same address(es).
    pub fn resume_serving(&mut self) {
        if let Some((real, _)) = &self.real {
            real.start_apiserver();
            return;
        }
        for i in 0..self.fronts.len() {
            let addr = self.fronts[i].0;
            let listener = wait_until(
                &format!("rebinding {addr}"),
                Duration::from_secs(10),
                || self.runtime.block_on(TcpListener::bind(addr)).ok(),
            );
            self.fronts[i].1 = Some(self.serve_front(i, listener));
        }
    }

    /// Successful Ingress status writes so far, by replica.
    pub fn status_writers(&self) -> Vec<usize> {
        let writes = self.writes.lock().unwrap();
        let mut who: Vec<usize> = writes
            .iter()
            .filter(|w| w.is_ingress_status() && w.status < 300)
            .map(|w| w.replica)
            .collect();
        who.sort();
        who.dedup();
        who
    }

    pub fn status_write_count(&self) -> usize {
        let writes = self.writes.lock().unwrap();
        writes
            .iter()
            .filter(|w| w.is_ingress_status() && w.status < 300)
            .count()
    }

    /// Applies one object given as JSON (namespace `default`): in-process by server-side
    /// apply, against the real server with `kubectl apply` as a tenant would.
    pub fn apply<K>(&self, object: Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        self.apply_through(Api::<K>::namespaced(self.client.clone(), NAMESPACE), object);
    }

    /// [`ApiSide::apply`] for a cluster-scoped object.
    pub fn apply_cluster<K>(&self, object: Value)
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        self.apply_through(Api::<K>::all(self.client.clone()), object);
    }

    /// Server-side apply through `api` in-process; `kubectl apply -f -` (client-side, the
    /// default) as the admin against the real server.
    fn apply_through<K>(&self, api: Api<K>, object: Value)
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        if self.real.is_some() {
            return crate::common::kubectl_apply(self.kubectl(), &object.to_string(), &name);
        }
        self.runtime
            .block_on(api.patch(
                &name,
                &PatchParams::apply("failover-test").force(),
                &Patch::Apply(&object),
            ))
            .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }

    /// The addresses (IP or hostname) in an Ingress's `status.loadBalancer.ingress`.
    pub fn status_addresses(&self, ingress: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::networking::v1::Ingress> =
            Api::namespaced(self.client.clone(), NAMESPACE);
        let ingress = self.runtime.block_on(api.get(ingress)).unwrap();
        let mut out: Vec<String> = ingress
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip.or(i.hostname))
            .collect();
        out.sort();
        out
    }
}

impl Drop for ApiSide {
    fn drop(&mut self) {
        self.stop_serving();
    }
}

/// A child process (portico-test-support's), killed on drop; its output kept in memory.
pub struct Proc(pub Process);

impl Proc {
    pub fn name(&self) -> &str {
        self.0.name()
    }

    pub fn signal(&self, signal: Signal) {
        self.0.signal(signal);
    }

    /// Waits for the process to exit; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        self.0
            .wait_blocking(within)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Its output so far (it only grows: a length is a mark).
    pub fn log_text(&self) -> String {
        self.0.output_text()
    }

    /// The JSON log lines whose message is `message`.
    pub fn log_events(&self, message: &str) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

/// One `portico run`.
pub struct Replica {
    pub proc: Proc,
    pub http: u16,
    pub https: u16,
    pub admin: String,
}

pub struct Cluster {
    // Dropped in field order: replicas first, then backends, then the API server.
    pub replicas: Vec<Replica>,
    pub echoes: Vec<Proc>,
    /// The replicas' Raft sockets, held by the test for the cluster's life.
    raft: Vec<Arc<std::net::TcpListener>>,
    pub api: ApiSide,
    pub dir: tempfile::TempDir,
    /// The namespace of the Lease (deploy/'s Role grants it in portico-system only).
    pub lease_namespace: &'static str,
}

/// The address replicas publish in Ingress status, and backends listen on: loopback
/// in-process; against the real server, which refuses loopback addresses in status and in
/// EndpointSlices, this machine's first global IPv4 address.
pub fn node_address(backend: Backend) -> String {
    match backend {
        Backend::InProcess => "127.0.0.1".to_owned(),
        Backend::Real => crate::common::host_ip(),
    }
}

/// A self-signed serving certificate for `names`: (certificate PEM, key PEM).
pub fn serving_cert(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Cluster {
    /// Starts the API server and three replicas (with `extra` flags each), and waits until
    /// every replica is ready and one leads.
    pub fn start(backend: Backend, extra: &[&str]) -> Cluster {
        Self::start_n(backend, 3, extra)
    }

    /// Starts the API server and `n` replicas (with `extra` flags each), and waits until
    /// every replica is ready and one leads.
    pub fn start_n(backend: Backend, n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiSide::start(backend, n, dir.path());
        let lease_namespace = match backend {
            Backend::InProcess => NAMESPACE,
            Backend::Real => "portico-system",
        };
        let mut cluster = Cluster {
            replicas: Vec::new(),
            echoes: Vec::new(),
            raft: process::raft_listeners(n),
            api,
            dir,
            lease_namespace,
        };
        cluster.replicas = cluster.spawn_replicas(extra);
        if let Err(failed) = cluster.wait_ready() {
            panic!("{failed}");
        }
        let all: Vec<usize> = (0..n).collect();
        cluster.wait_leader(&all, Duration::from_secs(60));
        cluster
    }

    /// A replica per Raft socket, the members of one Raft cluster; each binds its other
    /// listeners on port 0 and says which it got.
    fn spawn_replicas(&self, extra: &[&str]) -> Vec<Replica> {
        let ca = write_ca(self.dir.path());
        let started: Vec<Proc> = (0..self.raft.len())
            .map(|i| {
                let member = Member {
                    ordinal: i,
                    raft: &self.raft,
                    ca: &ca,
                };
                let kubeconfig = self.api.kubeconfig(i, self.dir.path());
                let data_dir = self.dir.path().join(format!("data-{i}"));
                let program =
                    portico_run::run(&member, self.lease_namespace, &kubeconfig, &data_dir)
                        .args(LOOPBACK_PORT_0)
                        .args(["--admin", "127.0.0.1:0"])
                        // Nothing stays connected to the data plane here; a short drain keeps
                        // a SIGTERMed replica from holding Raft leadership for the default 20 s.
                        .args(["--drain-seconds", "2"])
                        .args(extra);
                Proc(program.spawn(format!("portico-{i}")))
            })
            .collect();
        started
            .into_iter()
            .map(|proc| {
                let listening = portico_run::listening(&proc.0);
                Replica {
                    http: listening.http().port(),
                    https: listening.https().port(),
                    admin: listening.admin(),
                    proc,
                }
            })
            .collect()
    }

    /// Waits until every replica is ready; the error names one that exited instead, with the
    /// end of its log.
    fn wait_ready(&mut self) -> Result<(), String> {
        for r in &mut self.replicas {
            let ready = wait_until(
                &format!("{} /readyz", r.proc.name()),
                Duration::from_secs(60),
                || {
                    if let Some(status) = r.proc.0.exit_status() {
                        return Some(Err(status));
                    }
                    get(&r.admin, "/readyz").filter(|(code, _)| *code == 200)?;
                    Some(Ok(()))
                },
            );
            if let Err(status) = ready {
                let log = r.proc.log_text();
                let tail: Vec<&str> = log.lines().filter(|l| !l.starts_with("  ")).collect();
                return Err(format!(
                    "{} exited while starting ({status}):\n{}",
                    r.proc.name(),
                    tail[tail.len().saturating_sub(6)..].join("\n")
                ));
            }
        }
        Ok(())
    }

    /// How far each replica's log has got: marks for [`Cluster::assert_no_403`].
    pub fn log_marks(&self) -> Vec<usize> {
        self.replicas
            .iter()
            .map(|r| r.proc.log_text().len())
            .collect()
    }

    /// Against the real server: no replica met a 403 (deploy/'s RBAC is enough), except
    /// between the marks `except` (a restarted kube-apiserver may deny until its RBAC
    /// caches are filled; a controller retries through that).
    pub fn assert_no_403(&self, except: Option<(&[usize], &[usize])>) {
        if self.api.backend() != Backend::Real {
            return;
        }
        for (i, r) in self.replicas.iter().enumerate() {
            let log = r.proc.log_text();
            let checked = match except {
                Some((from, to)) => format!("{}{}", &log[..from[i]], &log[to[i]..]),
                None => log.clone(),
            };
            assert!(
                !met_forbidden(&checked),
                "{} met a 403 with deploy/'s RBAC:\n{log}",
                r.proc.name()
            );
        }
    }

    /// Starts `pods` echo backends for Service `service` (ports `http`=8080 and `web`=80) and
    /// the EndpointSlices an endpoints controller would write, one per Pod (each echo binds
    /// a port of its own). In-process: 127.0.0.1, .2, ...; real: this machine's address
    /// (loopback is refused there).
    pub fn echo_service(&mut self, service: &str, pods: usize) {
        let real = self.api.backend() == Backend::Real;
        let host = node_address(self.api.backend());
        let mut slices: Vec<(String, u16)> = Vec::new();
        for k in 0..pods {
            let pod = format!("{service}-{k}");
            let ip = if real {
                host.clone()
            } else {
                format!("127.0.0.{}", k + 1)
            };
            let (echo, addr) = portico_run::echo(&ip, 0, service, &pod, NAMESPACE);
            self.echoes.push(Proc(echo));
            let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
            slices.push((ip, port));
        }
        let target = slices[0].1;
        self.api
            .apply::<k8s_openapi::api::core::v1::Service>(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": service, "namespace": NAMESPACE},
                "spec": {"ports": [
                    {"name": "http", "port": 8080, "targetPort": target, "protocol": "TCP"},
                    {"name": "web", "port": 80, "targetPort": target, "protocol": "TCP"},
                ]},
            }));
        for (k, (ip, port)) in slices.iter().enumerate() {
            self.api
                .apply::<k8s_openapi::api::discovery::v1::EndpointSlice>(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{service}-{}", k + 1), "namespace": NAMESPACE,
                                 "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                    "ports": [
                        {"name": "http", "port": port, "protocol": "TCP"},
                        {"name": "web", "port": port, "protocol": "TCP"},
                    ],
                }));
        }
    }

    /// An IngressClass of ours (`default`: the cluster's default class).
    pub fn ingress_class(&self, name: &str, controller: &str, default: bool) {
        self.api
            .apply_cluster::<k8s_openapi::api::networking::v1::IngressClass>(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": {"name": name, "annotations": {
                    "ingressclass.kubernetes.io/is-default-class": default.to_string()}},
                "spec": {"controller": controller},
            }));
    }

    pub fn tls_secret(&self, name: &str, cert_pem: &str, key_pem: &str) {
        self.api.apply::<k8s_openapi::api::core::v1::Secret>(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "stringData": {"tls.crt": cert_pem, "tls.key": key_pem},
        }));
    }

    pub fn metrics(&self, replica: usize) -> Option<String> {
        get(&self.replicas[replica].admin, "/metrics")
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
    }

    /// Which of `among` currently leads (reports `portico_controller_is_leader 1`); None
    /// unless exactly one does.
    pub fn leader_among(&self, among: &[usize]) -> Option<usize> {
        let leaders: Vec<usize> = among
            .iter()
            .copied()
            .filter(|&i| {
                self.metrics(i)
                    .and_then(|m| metric(&m, "portico_controller_is_leader"))
                    == Some(1.0)
            })
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    pub fn wait_leader(&self, among: &[usize], within: Duration) -> usize {
        wait_until("a controller leader", within, || self.leader_among(among))
    }

    /// The replica's committed table as `/debug/routes` shows it.
    pub fn routes(&self, replica: usize) -> Option<Value> {
        let (code, body) = get(&self.replicas[replica].admin, "/debug/routes")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// GET `http://host:PORT/path` on replica `replica`'s HTTP port (Host via --resolve).
    pub fn http_get(&self, replica: usize, host: &str, path: &str) -> Option<(u16, Value, String)> {
        let port = self.replicas[replica].http;
        curl(
            &["--resolve", &format!("{host}:{port}:127.0.0.1")],
            &format!("http://{host}:{port}{path}"),
        )
    }

    /// GET over TLS (SNI = host) to replica `replica`'s HTTPS port, trusting only `ca`.
    pub fn https_get(
        &self,
        replica: usize,
        host: &str,
        path: &str,
        ca: &Path,
    ) -> Option<(u16, Value, String)> {
        let port = self.replicas[replica].https;
        curl(
            &[
                "--cacert",
                &ca.to_string_lossy(),
                "--resolve",
                &format!("{host}:{port}:127.0.0.1"),
            ],
            &format!("https://{host}:{port}{path}"),
        )
    }

    /// Waits until `host`+`path` answers 200 from `service` on replica `replica`.
    pub fn wait_served(
        &self,
        replica: usize,
        host: &str,
        path: &str,
        service: &str,
        within: Duration,
    ) {
        wait_until(
            &format!("{host}{path} -> {service} on portico-{replica}"),
            within,
            || {
                let (code, body, _) = self.http_get(replica, host, path)?;
                (code == 200 && body["service"] == service).then_some(())
            },
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the replicas (and a real API server) said, to judge a failure without
            // rerunning.
            if let Some((real, _)) = &self.api.real {
                let log = real.log();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("---- last lines of kube-testenv's log ----");
                for l in &lines[lines.len().saturating_sub(30)..] {
                    eprintln!("{l}");
                }
            }
            for r in &mut self.replicas {
                // Whether it is still running, or how it ended (a crash leaves no log line).
                let state = match r.proc.0.exit_status() {
                    None => "running or stopped by the test".to_owned(),
                    Some(status) => format!("exited: {status}"),
                };
                eprintln!("---- {}: {state} ----", r.proc.name());
                let text = r.proc.log_text();
                // Without DEBUG lines and a panic's backtrace frames (indented), so the
                // panic's message stays in view.
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.contains("\"level\":\"DEBUG\"") && !l.starts_with("  "))
                    .collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("---- last log lines of {} ----", r.proc.name());
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// curl; (status, body as JSON or Null, the Location header or "").
pub fn curl(extra: &[&str], url: &str) -> Option<(u16, Value, String)> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code} %{redirect_url}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, meta) = text.rsplit_once('\n')?;
    let (code, location) = meta.split_once(' ').unwrap_or((meta, ""));
    Some((
        code.parse().ok()?,
        serde_json::from_str(body).unwrap_or(Value::Null),
        location.to_owned(),
    ))
}

/// The value of a sample named exactly `name` (labels included, e.g. `x{kind="a"}`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
