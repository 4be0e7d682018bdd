//! Three replicas (Raft over mTLS on 127.0.0.1), each with its own Controller and kube
//! Client, against one in-process API server.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use portico_apiserver::ApiServer;
use portico_controller::{Controller, ControllerConfig, ControllerStatus};
use portico_model::RoutingTable;
use portico_raft::{RaftSettings, Replica, ReplicaConfig, TlsMaterial, TransportSettings};
use portico_test_support::{LeafSpec, TestCa, poll_until, wait_for};
use prometheus_client::registry::Registry;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const PATIENCE: Duration = Duration::from_secs(40);
pub const NAMESPACE: &str = "default";
pub const STATUS_ADDRESS: &str = "203.0.113.7";
pub const LEASE: Duration = Duration::from_secs(3);
pub const RENEW: Duration = Duration::from_secs(2);
pub const RETRY: Duration = Duration::from_millis(500);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A successful status write seen on the wire: which replica's client sent it, and when it
/// was sent (it passed the partition check). Not when its answer came: a write sent just
/// before a cut is answered after it, and is not the cut-off leader acting after the cut.
#[derive(Clone, Debug)]
pub struct StatusWrite {
    pub node: usize,
    pub at: Instant,
    pub path: String,
}

/// The cluster CA of a test cluster (portico-test-support's), signing node certificates as
/// the replicas take them.
struct Pki {
    ca: TestCa,
}

impl Pki {
    fn new() -> Self {
        Self {
            ca: TestCa::new("portico-controller-test-ca"),
        }
    }

    fn node(&self, name: &str) -> TlsMaterial {
        let leaf = self
            .ca
            .issue(&LeafSpec::new(&["localhost", "127.0.0.1"]).common_name(name));
        TlsMaterial {
            ca_pem: leaf.ca_pem.into_bytes(),
            cert_pem: leaf.cert_pem.into_bytes(),
            key_pem: leaf.key_pem.into_bytes(),
        }
    }
}

pub struct RunningController {
    pub task: JoinHandle<Result<(), portico_controller::ControllerError>>,
    pub shutdown: CancellationToken,
    pub status: watch::Receiver<ControllerStatus>,
    pub lease: portico_controller::LeaseValidity,
    pub registry: Registry,
    pub identity: String,
}

pub struct Node {
    _dir: TempDir,
    pub replica: Option<Replica>,
    pub controller: Option<RunningController>,
    /// When set, every API request of this node's client fails (a network partition).
    pub cut: Arc<AtomicBool>,
    pub client: Client,
}

pub struct Cluster {
    pub api: ApiServer,
    pub nodes: Vec<Node>,
    pub writes: Arc<Mutex<Vec<StatusWrite>>>,
    pub admin: Client,
    pub timings: Timings,
    /// Applied to each controller's configuration as it starts.
    pub configure: fn(&mut ControllerConfig),
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,portico_controller=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A kube Client for node `node` that can be cut off and records successful status writes.
fn node_client(
    api: &ApiServer,
    node: usize,
    cut: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<StatusWrite>>>,
) -> Client {
    let inner = api.service();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let mut inner = inner.clone();
        let cut = cut.clone();
        let writes = writes.clone();
        let fut: Pin<Box<dyn Future<Output = Result<_, BoxError>> + Send>> = Box::pin(async move {
            // Before the check: a write that passes it was sent before any cut that a test
            // timestamps after setting `cut`.
            let sent = Instant::now();
            if cut.load(Ordering::SeqCst) {
                return Err::<_, BoxError>("partitioned from the API server (test)".into());
            }
            let status_write = request.method() == http::Method::PATCH
                && request.uri().path().contains("/ingresses/")
                && request.uri().path().ends_with("/status");
            let path = request.uri().path().to_owned();
            let response = tower::Service::call(&mut inner, request).await?;
            if status_write && response.status().is_success() {
                writes.lock().unwrap().push(StatusWrite {
                    node,
                    at: sent,
                    path,
                });
            }
            Ok(response)
        });
        fut
    });
    Client::new(service, NAMESPACE)
}

/// Lease timings: (lease duration, renew deadline, retry period).
pub type Timings = (Duration, Duration, Duration);
pub const TEST_TIMINGS: Timings = (LEASE, RENEW, RETRY);

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with(TEST_TIMINGS).await
    }

    pub async fn start_with(timings: Timings) -> Self {
        let mut cluster = Self::replicas(
            timings,
            RaftSettings::default(),
            TransportSettings::default(),
            |_| {},
        )
        .await;
        for i in 0..3 {
            cluster.start_controller(i);
        }
        cluster
    }

    /// Three replicas with `raft` (but this suite's Raft timings) and `transport` settings
    /// and no controller yet; each controller started later gets its configuration through
    /// `configure`.
    pub async fn replicas(
        timings: Timings,
        raft: RaftSettings,
        transport: TransportSettings,
        configure: fn(&mut ControllerConfig),
    ) -> Self {
        init_tracing();
        let api = ApiServer::builder().build().unwrap();
        let admin = Client::new(api.service(), NAMESPACE);
        let pki = Pki::new();
        let writes = Arc::new(Mutex::new(Vec::new()));
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let config = ReplicaConfig {
                data_dir: dir.path().to_owned(),
                advertise: addrs[i].clone(),
                initial_members: addrs.clone(),
                peer_hosts: Vec::new(),
                tls: pki.node(&format!("portico-{i}")),
                raft: RaftSettings {
                    heartbeat_interval: Duration::from_millis(100),
                    election_timeout_min: Duration::from_millis(600),
                    election_timeout_max: Duration::from_millis(1200),
                    ..raft.clone()
                },
                transport: transport.clone(),
            };
            let replica = Replica::start(config, listener).await.unwrap();
            let cut = Arc::new(AtomicBool::new(false));
            let client = node_client(&api, i, cut.clone(), writes.clone());
            nodes.push(Node {
                _dir: dir,
                replica: Some(replica),
                controller: None,
                cut,
                client,
            });
        }
        let cluster = Self {
            api,
            nodes,
            writes,
            admin,
            timings,
            configure,
        };
        cluster.wait_for_raft_leader().await;
        cluster
    }

    pub fn start_controller(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let identity = portico_controller::boot_identity(&format!("portico-{i}"));
        let mut config = ControllerConfig::new(NAMESPACE, identity.clone());
        (
            config.lease_duration,
            config.renew_deadline,
            config.retry_period,
        ) = self.timings;
        config.debounce = Duration::from_millis(20);
        config.publish_status_addresses = vec![STATUS_ADDRESS.to_owned()];
        (self.configure)(&mut config);
        let mut registry = Registry::default();
        let controller = Controller::new(
            config,
            node.client.clone(),
            node.replica.clone().expect("replica running"),
            &mut registry,
        );
        let status = controller.status();
        let lease = controller.lease_validity();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(controller.run(shutdown.clone()));
        node.controller = Some(RunningController {
            task,
            shutdown,
            status,
            lease,
            registry,
            identity,
        });
    }

    /// Replica `i`'s data directory (its `raft.redb`).
    pub fn data_dir(&self, i: usize) -> &std::path::Path {
        self.nodes[i]._dir.path()
    }

    pub fn replica(&self, i: usize) -> &Replica {
        self.nodes[i].replica.as_ref().expect("replica running")
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Replica)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.replica.as_ref().map(|r| (i, r)))
    }

    /// Raft's metrics offer nothing to subscribe to here (`Replica::metrics` is a snapshot):
    /// polled.
    pub async fn wait_for_raft_leader(&self) -> usize {
        poll_until("a Raft leader with three voters", PATIENCE, || async {
            self.running()
                .find(|(_, r)| {
                    let m = r.metrics();
                    m.is_leader && m.voters.len() == 3
                })
                .map(|(i, _)| i)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The node whose controller is leader (exactly one), waiting for one: looks again
    /// whenever a controller's status changes, and checks at each look that there are never
    /// two.
    pub async fn wait_for_controller_leader(&self) -> usize {
        let mut statuses: Vec<(usize, watch::Receiver<ControllerStatus>)> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((i, n.controller.as_ref()?.status.clone())))
            .collect();
        let one_leader = async {
            // The receivers whose controller still runs (a finished one cannot change).
            let mut live: Vec<usize> = (0..statuses.len()).collect();
            loop {
                let leaders: Vec<usize> = statuses
                    .iter_mut()
                    .filter_map(|(i, s)| s.borrow_and_update().is_leader.then_some(*i))
                    .collect();
                assert!(leaders.len() <= 1, "two controller leaders: {leaders:?}");
                if let [leader] = leaders[..] {
                    return leader;
                }
                if live.is_empty() {
                    std::future::pending::<()>().await;
                }
                let changed = statuses
                    .iter_mut()
                    .enumerate()
                    .filter(|(k, _)| live.contains(k))
                    .map(|(k, (_, s))| Box::pin(async move { (k, s.changed().await.is_ok()) }));
                let ((k, open), _, _) = futures_util::future::select_all(changed).await;
                if !open {
                    live.retain(|l| *l != k);
                }
            }
        };
        wait_for("a controller leader", PATIENCE, one_leader)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The class `conformance` and the Ingress `before` (before.example, `/`), waited for
    /// until every replica serves it: the starting point of the failover tests.
    pub async fn apply_first_ingress(&self) {
        apply_class(&self.admin, "conformance").await;
        apply(&self.admin, &ingress("before", "before.example", "/")).await;
        self.wait_tables("first Ingress", |t| {
            t.lookup("before.example", "/").is_some()
        })
        .await;
    }

    /// Waits until every running replica's applied table satisfies `check`: looks again
    /// whenever a replica applies a change.
    pub async fn wait_tables(&self, what: &str, check: impl Fn(&RoutingTable) -> bool) {
        let mut tables: Vec<_> = self.running().map(|(_, r)| r.table()).collect();
        let all = async {
            loop {
                for table in &mut tables {
                    table
                        .wait_for(|t| check(t))
                        .await
                        .expect("a replica stopped while waiting for its table");
                }
                // Each held in turn; all at once unless one moved on meanwhile.
                if tables.iter().all(|t| check(&t.borrow())) {
                    return;
                }
            }
        };
        if let Err(e) = wait_for(format!("tables: {what}"), PATIENCE, all).await {
            panic!(
                "{e}; versions {:?}",
                self.running().map(|(_, r)| r.version()).collect::<Vec<_>>()
            );
        }
    }

    pub async fn lease(&self) -> Option<Lease> {
        Api::<Lease>::namespaced(self.admin.clone(), NAMESPACE)
            .get_opt("portico-leader")
            .await
            .unwrap()
    }

    pub fn identity(&self, i: usize) -> String {
        self.nodes[i].controller.as_ref().unwrap().identity.clone()
    }

    /// Kills node `i` as SIGKILL would: its controller is aborted (no release), its replica stopped.
    pub async fn kill(&mut self, i: usize) {
        let controller = self.nodes[i].controller.take().expect("controller running");
        controller.task.abort();
        let _ = controller.task.await;
        let replica = self.nodes[i].replica.take().expect("replica running");
        replica.shutdown().await;
    }

    /// Stops every controller and replica (benchmarks start several clusters in a row).
    pub async fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(controller) = node.controller.take() {
                controller.task.abort();
            }
            if let Some(replica) = node.replica.take() {
                replica.shutdown().await;
            }
        }
    }

    pub fn metrics_text(&self, i: usize) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(
            &mut text,
            &self.nodes[i].controller.as_ref().unwrap().registry,
        )
        .unwrap();
        text
    }
}

/// Creates or updates an object with server-side apply.
pub async fn apply<K>(client: &Client, object: &K)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object.meta().name.clone().unwrap();
    let ns = object.meta().namespace.clone().unwrap_or(NAMESPACE.into());
    Api::<K>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply("portico-test").force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

pub async fn apply_class(client: &Client, name: &str) {
    let class: IngressClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": portico_model::CONTROLLER_NAME},
    }))
    .unwrap();
    Api::<IngressClass>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("portico-test").force(),
            &Patch::Apply(&class),
        )
        .await
        .unwrap();
}

/// A simple Ingress of class `conformance`: host `host`, path `path` → Service `svc`:80.
pub fn ingress(name: &str, host: &str, path: &str) -> Ingress {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "ingressClassName": "conformance",
            "rules": [{"host": host, "http": {"paths": [{
                "path": path, "pathType": "Prefix",
                "backend": {"service": {"name": "svc", "port": {"number": 80}}}
            }]}}]
        }
    }))
    .unwrap()
}

pub fn tls_secret(name: &str, cert: &[u8], key: &[u8]) -> Secret {
    let mut secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
    }))
    .unwrap();
    secret.data = Some(
        [
            ("tls.crt".to_owned(), ByteString(cert.to_vec())),
            ("tls.key".to_owned(), ByteString(key.to_vec())),
        ]
        .into(),
    );
    secret
}

/// The addresses in an Ingress's status.
pub fn status_addresses(ingress: &Ingress) -> Vec<String> {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| {
            list.iter()
                .filter_map(|i| i.ip.clone().or(i.hostname.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `check` holds for the Ingress `name` as the API server has it.
pub async fn wait_ingress(
    client: &Client,
    name: &str,
    what: &str,
    check: impl Fn(&Ingress) -> bool,
) {
    // Polled: the API server's watch is what the fault tests break on purpose.
    let api = Api::<Ingress>::namespaced(client.clone(), NAMESPACE);
    poll_until(format!("Ingress {name} {what}"), PATIENCE, || async {
        api.get_opt(name)
            .await
            .unwrap()
            .filter(|ingress| check(ingress))
            .map(|_| ())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}
