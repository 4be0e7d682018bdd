//! `portico run`: one replica. Raft replication of the routing table, the data plane
//! serving the applied table, the controller (leader work), and the admin listener.
//!
//! Start-up order: admin listener (so probes answer at once), Raft, the data plane fed
//! by the Raft table watch, then the controller. Shutdown (SIGTERM/SIGINT): readiness goes
//! false and the controller stops at once (releasing the Lease and handing Raft leadership
//! on, so another replica takes over in about a second); an optional delay lets load
//! balancers notice; then the data plane drains and Raft stops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use portico_model::{ObjectKey, Settings};
use portico_proxy::{Proxy, ProxyConfig};
use portico_raft::{RaftSettings, Replica, ReplicaConfig, TlsMaterial, TransportSettings};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin, DebugRoutes};
use crate::logging::LogFormat;
use crate::pki;
use crate::state::ReplicaState;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    // --- Identity (the downward API in a pod) ---
    /// This replica's Pod name; its ordinal is the number after the last `-`
    /// (`portico-2` is ordinal 2). Also the Lease holder identity.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// The namespace of the Lease (and of the Pod).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    // --- Kubernetes API ---
    /// kubeconfig file; when unset, the in-cluster service account (or the default
    /// kubeconfig lookup) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Name of the Lease that elects the leader.
    #[arg(long, env = "PORTICO_LEASE_NAME", default_value = "portico-leader")]
    pub lease_name: String,
    /// Seconds others wait, from when they saw the leader's last renew, before taking the
    /// Lease (the longest a dead leader can leave nobody leading).
    #[arg(long, env = "PORTICO_LEASE_DURATION_SECONDS", default_value_t = 15.0)]
    pub lease_duration_seconds: f64,
    /// Seconds within which the leader must renew the Lease or step down; with the retry
    /// period, below the lease duration.
    #[arg(long, env = "PORTICO_RENEW_DEADLINE_SECONDS", default_value_t = 10.0)]
    pub renew_deadline_seconds: f64,
    /// Seconds between election attempts and between renewals.
    #[arg(long, env = "PORTICO_RETRY_PERIOD_SECONDS", default_value_t = 2.0)]
    pub retry_period_seconds: f64,
    /// `spec.controller` of the IngressClasses that are ours.
    #[arg(long, env = "PORTICO_CONTROLLER_NAME", default_value = portico_model::CONTROLLER_NAME)]
    pub controller_name: String,
    /// Also take Ingresses that name no IngressClass (otherwise only when one of our
    /// classes is the default class).
    #[arg(long, env = "PORTICO_WATCH_INGRESS_WITHOUT_CLASS")]
    pub watch_ingress_without_class: bool,
    /// `namespace/name` of a kubernetes.io/tls Secret served when SNI matches no Ingress.
    #[arg(long, env = "PORTICO_DEFAULT_CERTIFICATE")]
    pub default_certificate: Option<String>,
    /// Let Ingresses of other namespaces add rules to a host (the Ingress spec's merge
    /// semantics). Off: a host belongs to the namespace of its oldest Ingress, and other
    /// namespaces' rules for it are refused (HostOwnedByAnotherNamespace).
    #[arg(long, env = "PORTICO_ALLOW_CROSS_NAMESPACE_HOSTS")]
    pub allow_cross_namespace_hosts: bool,
    /// Route to ExternalName Services (they can name anything the proxy reaches: off by
    /// default, as in Contour after CVE-2021-32783).
    #[arg(long, env = "PORTICO_ALLOW_EXTERNAL_NAME_SERVICES")]
    pub allow_external_name_services: bool,
    /// CIDRs (comma-separated) ExternalName Services may not resolve into, such as the
    /// cluster's Pod and Service CIDRs (other namespaces' Pods and Services, past their
    /// NetworkPolicies). Loopback, link-local, this Pod's addresses and the API server are
    /// refused whatever this says.
    #[arg(long, env = "PORTICO_EXTERNAL_NAME_DENY_CIDR", value_delimiter = ',')]
    pub external_name_deny_cidr: Vec<portico_proxy::IpNet>,
    /// Let the oldest defaultBackend of any namespace answer requests whose host no rule
    /// names (the Ingress spec's catch-all). Off: a defaultBackend answers only for hosts its
    /// namespace owns.
    #[arg(long, env = "PORTICO_ALLOW_CATCH_ALL")]
    pub allow_catch_all: bool,
    /// `namespace/name` of the LoadBalancer Service whose addresses are written to the
    /// status of every Ingress we serve.
    #[arg(long, env = "PORTICO_PUBLISH_SERVICE")]
    pub publish_service: Option<String>,
    /// Addresses (IPs or hostnames) written to Ingress status instead of a Service's;
    /// repeatable or comma-separated.
    #[arg(long, env = "PORTICO_PUBLISH_STATUS_ADDRESS", value_delimiter = ',')]
    pub publish_status_address: Vec<String>,
    /// Watch Ingresses, Services, EndpointSlices and TLS Secrets only in these namespaces
    /// (repeatable or comma-separated), so Roles there are enough (deploy/overlays/namespaced);
    /// IngressClasses are always watched cluster-wide. Unset: every namespace.
    #[arg(
        long = "watch-namespace",
        env = "PORTICO_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,
    /// Largest object (Ingress, Service, EndpointSlice, TLS Secret) the routing table takes,
    /// in bytes as replicated; a larger one is refused with an ObjectTooLarge Event. At most
    /// 112 KiB (one Raft log entry is at most 128 KiB).
    #[arg(long, env = "PORTICO_MAX_OBJECT_BYTES", default_value_t = portico_model::Limits::default().max_object_bytes)]
    pub max_object_bytes: usize,
    /// Bytes one namespace's objects may take in the routing table; past it its newest
    /// objects are refused (NamespaceQuotaExceeded), never another namespace's.
    #[arg(long, env = "PORTICO_MAX_NAMESPACE_BYTES", default_value_t = portico_model::Limits::default().max_namespace_bytes)]
    pub max_namespace_bytes: usize,
    /// Objects one namespace may have in the routing table; past it its newest are refused.
    #[arg(long, env = "PORTICO_MAX_NAMESPACE_OBJECTS", default_value_t = portico_model::Limits::default().max_namespace_objects)]
    pub max_namespace_objects: usize,

    // --- Raft ---
    /// The Raft store (a persistent volume in a StatefulSet).
    #[arg(long, env = "PORTICO_DATA_DIR", default_value = "/var/lib/portico")]
    pub data_dir: PathBuf,
    /// Where Raft RPCs from the other replicas are accepted (mutual TLS). A socket named
    /// `raft` handed over by systemd's socket activation (LISTEN_FDS, LISTEN_FDNAMES) takes
    /// precedence: it is served instead of binding this address; give the socket's address
    /// here all the same (the default --raft-advertise is made from it).
    #[arg(long, env = "PORTICO_RAFT_LISTEN", default_value = "0.0.0.0:9444")]
    pub raft_listen: SocketAddr,
    /// `host:port` the other replicas use to reach this one; must be a SAN of this
    /// replica's certificate. Default: `POD.PEER_SERVICE.NAMESPACE.svc.CLUSTER_DOMAIN:PORT`
    /// with --peer-service, else --raft-listen.
    #[arg(long, env = "PORTICO_RAFT_ADVERTISE")]
    pub raft_advertise: Option<String>,
    /// Advertised addresses of the initial members in ordinal order, comma-separated.
    /// Default with --peer-service: derived from --replicas and the StatefulSet name.
    #[arg(long, env = "PORTICO_INITIAL_MEMBERS", value_delimiter = ',')]
    pub initial_members: Vec<String>,
    /// Hosts of further replicas that may join (beyond the initial members and, with
    /// --peer-service, the StatefulSet's Pods): exact names or IPs, or `name-*.rest` for
    /// any ordinal; comma-separated. A peer is trusted only when its certificate names a
    /// member's host or one of these.
    #[arg(long, env = "PORTICO_RAFT_PEER_HOSTS", value_delimiter = ',')]
    pub raft_peer_host: Vec<String>,
    /// The headless Service that gives each replica a DNS name.
    #[arg(long, env = "PORTICO_PEER_SERVICE")]
    pub peer_service: Option<String>,
    /// Number of initial members (the StatefulSet's replicas) with --peer-service.
    #[arg(long, env = "PORTICO_REPLICAS", default_value_t = 3)]
    pub replicas: u32,
    /// The cluster DNS domain.
    #[arg(long, env = "PORTICO_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The cluster CA that signs every replica's certificate (PEM).
    #[arg(long, env = "PORTICO_RAFT_CA")]
    pub raft_ca: PathBuf,
    /// This replica's certificate chain (PEM), e.g. from cert-manager. Without it,
    /// --raft-cert-issuer or --raft-ca-key is required (with the key, a certificate is
    /// generated at first boot).
    #[arg(long, env = "PORTICO_RAFT_CERT", requires = "raft_key")]
    pub raft_cert: Option<PathBuf>,
    /// This replica's private key (PEM) for --raft-cert.
    #[arg(long, env = "PORTICO_RAFT_KEY", requires = "raft_cert")]
    pub raft_key: Option<PathBuf>,
    /// The cluster CA's private key (PEM): used only at first boot, to sign a certificate
    /// for --raft-advertise stored in DATA_DIR/tls/ (0600), when --raft-cert is not given.
    /// For clusters on one machine (`portico local`, tests): this process then holds the CA
    /// key while it serves Internet traffic. In Kubernetes use --raft-cert-issuer.
    #[arg(long, env = "PORTICO_RAFT_CA_KEY", conflicts_with = "raft_cert")]
    pub raft_ca_key: Option<PathBuf>,
    #[command(flatten)]
    pub raft_cert_issuer: crate::raft_cert_renewal::IssuerArgs,
    /// Raft heartbeat interval in milliseconds (elections time out after 6-12 heartbeats).
    #[arg(long, env = "PORTICO_RAFT_HEARTBEAT_MS", default_value_t = 100)]
    pub raft_heartbeat_ms: u64,

    // --- Data plane ---
    /// Plain HTTP listeners (HTTP/1.1 and h2c); comma-separated. Sockets named `http` handed
    /// over by socket activation (LISTEN_FDS, LISTEN_FDNAMES) take precedence: they are served
    /// instead of binding these addresses.
    #[arg(
        long,
        env = "PORTICO_HTTP",
        value_delimiter = ',',
        default_value = "0.0.0.0:8080"
    )]
    pub http: Vec<SocketAddr>,
    /// TLS listeners (HTTP/1.1 and HTTP/2, certificates by SNI); comma-separated. Sockets named
    /// `https` (TCP) handed over by socket activation take precedence over these addresses.
    #[arg(
        long,
        env = "PORTICO_HTTPS",
        value_delimiter = ',',
        default_value = "0.0.0.0:8443"
    )]
    pub https: Vec<SocketAddr>,
    /// QUIC listeners (HTTP/3, UDP); comma-separated; empty to disable. Sockets named `http3`
    /// (UDP) handed over by socket activation take precedence over these addresses.
    #[arg(
        long,
        env = "PORTICO_HTTP3",
        value_delimiter = ',',
        default_value = "0.0.0.0:8443"
    )]
    pub http3: Vec<SocketAddr>,
    /// Port advertised in `Alt-Svc: h3=":PORT"` (the public UDP port of the LoadBalancer);
    /// default: the first QUIC listener's port.
    #[arg(long, env = "PORTICO_ALT_SVC_PORT")]
    pub alt_svc_port: Option<u16>,
    /// Client connections open at once over every listener, TCP and QUIC together; past it
    /// a new connection is closed at once (TCP) or refused (QUIC), and counted.
    #[arg(long, env = "PORTICO_MAX_CONNECTIONS", value_parser = at_least_one(),
          default_value_t = portico_proxy::Limits::default().max_connections)]
    pub max_connections: usize,
    /// Client connections open at once from one IPv4 address or IPv6 /64.
    #[arg(long, env = "PORTICO_MAX_CONNECTIONS_PER_IP", value_parser = at_least_one(),
          default_value_t = portico_proxy::Limits::default().max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Seconds a response may make no progress towards its client (window withheld, socket
    /// not read) before its connection (HTTP/1.1, HTTP/2) or stream (HTTP/3) is closed.
    #[arg(long, env = "PORTICO_SEND_TIMEOUT_SECONDS", value_parser = at_least_one(),
          default_value_t = portico_proxy::Limits::default().send_timeout.as_secs() as usize)]
    pub send_timeout_seconds: usize,
    /// QUIC handshakes in progress on a listener at which a client whose address is not yet
    /// validated gets a Retry first (address validation against spoofed floods); 0: always.
    #[arg(long, env = "PORTICO_QUIC_RETRY_ABOVE_HANDSHAKES",
          default_value_t = portico_proxy::Limits::default().quic_retry_above_handshakes)]
    pub quic_retry_above_handshakes: usize,
    /// How long connections may take to finish on shutdown, in seconds.
    #[arg(long, env = "PORTICO_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
    /// Seconds between readiness going false and closing the listeners, so load balancers
    /// stop sending new connections first.
    #[arg(long, env = "PORTICO_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,
    /// Peers (CIDRs, comma-separated) whose `Forwarded`, `X-Forwarded-*`, `X-Real-IP` and
    /// similar headers are believed, e.g. an L7 load balancer in front. Default: nobody, so a
    /// client's own such headers are dropped and `X-Forwarded-For` is the peer alone.
    #[arg(long, env = "PORTICO_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<portico_proxy::IpNet>,
    /// Forward request paths as the client sent them instead of their canonical form
    /// (routing and policy still use the canonical path). Only for backends that need the
    /// exact bytes and read paths as Portico does; see ARCHITECTURE.md, Request paths.
    #[arg(long, env = "PORTICO_FORWARD_ORIGINAL_PATH")]
    pub forward_original_path: bool,
    /// Names this cluster in the `Via: 1.1 portico-TOKEN` entry added to every forwarded
    /// request; a request arriving with it has looped back through the cluster and gets 508.
    /// Every replica must use the same token. Default: derived from the Raft CA certificate
    /// and the Lease's namespace and name, shared by the replicas and by no other install.
    #[arg(long, env = "PORTICO_LOOP_TOKEN")]
    pub loop_token: Option<portico_proxy::LoopToken>,

    // --- Operations ---
    /// The admin listeners (/metrics, /healthz, /readyz, /debug/routes); comma-separated.
    /// Default: loopback and the Pod IP (--pod-ip), port --admin-port; never every
    /// interface unless you say so. Sockets named `admin` handed over by socket activation
    /// take precedence over these addresses.
    #[arg(
        long,
        alias = "admin-address",
        env = "PORTICO_ADMIN",
        value_delimiter = ','
    )]
    pub admin: Vec<SocketAddr>,
    /// The port of the default admin listeners.
    #[arg(long, env = "PORTICO_ADMIN_PORT", default_value_t = 9090)]
    pub admin_port: u16,
    /// This Pod's IP (the downward API's status.podIP): the admin listener binds it
    /// besides loopback, for the kubelet's probes and Prometheus.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// Who may read /debug/routes (every namespace's hosts, Services and endpoints).
    #[arg(long, env = "PORTICO_ADMIN_DEBUG_ROUTES", value_enum, default_value_t = DebugRoutes::Loopback)]
    pub admin_debug_routes: DebugRoutes,
    /// Log one line per request (target `portico::access`): protocol, method, host, path
    /// without the query string, status, Ingress, upstream, time to response head, client.
    #[arg(long, env = "PORTICO_ACCESS_LOG")]
    pub access_log: bool,
    /// Log format.
    #[arg(long, env = "PORTICO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Exit when the parent process dies (used by `portico local`).
    #[arg(long, hide = true)]
    pub die_with_parent: bool,
}

/// A count or number of seconds where 0 would refuse everything.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

impl RunArgs {
    /// The data plane's limits: the defaults, with what the flags set.
    fn proxy_limits(&self) -> portico_proxy::Limits {
        portico_proxy::Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            send_timeout: Duration::from_secs(self.send_timeout_seconds as u64),
            quic_retry_above_handshakes: self.quic_retry_above_handshakes,
            ..portico_proxy::Limits::default()
        }
    }

    /// The StatefulSet name and ordinal from the Pod name (`portico-2` → `portico`, 2).
    fn ordinal(&self) -> Option<(&str, u32)> {
        let (set, ordinal) = self.pod_name.rsplit_once('-')?;
        Some((set, ordinal.parse().ok()?))
    }

    fn raft_advertise(&self) -> String {
        if let Some(advertise) = &self.raft_advertise {
            return advertise.clone();
        }
        match &self.peer_service {
            Some(peers) => format!(
                "{}.{peers}.{}.svc.{}:{}",
                self.pod_name,
                self.namespace,
                self.cluster_domain,
                self.raft_listen.port()
            ),
            None => self.raft_listen.to_string(),
        }
    }

    fn initial_members(&self) -> anyhow::Result<Vec<String>> {
        if !self.initial_members.is_empty() {
            return Ok(self.initial_members.clone());
        }
        let Some(peers) = &self.peer_service else {
            // A single replica on its own.
            return Ok(vec![self.raft_advertise()]);
        };
        let Some((set, _)) = self.ordinal() else {
            bail!(
                "pod name {:?} has no ordinal suffix; pass --initial-members",
                self.pod_name
            );
        };
        Ok((0..self.replicas)
            .map(|i| {
                format!(
                    "{set}-{i}.{peers}.{}.svc.{}:{}",
                    self.namespace,
                    self.cluster_domain,
                    self.raft_listen.port()
                )
            })
            .collect())
    }

    /// The admin addresses: as given, else loopback and the Pod IP.
    fn admin_addresses(&self) -> Vec<SocketAddr> {
        if !self.admin.is_empty() {
            return self.admin.clone();
        }
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        std::iter::once(loopback)
            .chain(self.pod_ip.filter(|ip| !ip.is_loopback()))
            .map(|ip| SocketAddr::new(ip, self.admin_port))
            .collect()
    }

    /// Hosts of replicas that may join beyond the initial members: with --peer-service,
    /// every ordinal of the StatefulSet (scale-up), plus --raft-peer-host.
    fn peer_hosts(&self) -> Vec<String> {
        let mut hosts = self.raft_peer_host.clone();
        if let (Some(peers), Some((set, _))) = (&self.peer_service, self.ordinal()) {
            hosts.push(format!(
                "{set}-*.{peers}.{}.svc.{}",
                self.namespace, self.cluster_domain
            ));
        }
        hosts
    }

    fn settings(&self) -> anyhow::Result<Settings> {
        let default_certificate = match &self.default_certificate {
            Some(text) => Some(parse_key(text).context("--default-certificate")?),
            None => None,
        };
        Ok(Settings {
            controller_name: self.controller_name.clone(),
            watch_ingress_without_class: self.watch_ingress_without_class,
            default_certificate,
            allow_cross_namespace_hosts: self.allow_cross_namespace_hosts,
            allow_external_name_services: self.allow_external_name_services,
            allow_catch_all: self.allow_catch_all,
        })
    }
}

/// `namespace/name`.
pub fn parse_key(text: &str) -> anyhow::Result<ObjectKey> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectKey::new(ns, name))
        }
        _ => bail!("expected namespace/name, got {text:?}"),
    }
}

/// The host part of `host:port` (IPv6 in brackets allowed).
fn host_of(advertise: &str) -> &str {
    let host = advertise.rsplit_once(':').map_or(advertise, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The replica's mTLS material: given as files, or generated once from the CA key.
fn tls_material(args: &RunArgs, advertise: &str) -> anyhow::Result<TlsMaterial> {
    let ca_pem = pki::read_string(&args.raft_ca)?;
    if let (Some(cert), Some(key)) = (&args.raft_cert, &args.raft_key) {
        return Ok(TlsMaterial {
            ca_pem: ca_pem.into_bytes(),
            cert_pem: pki::read_string(cert)?.into_bytes(),
            key_pem: pki::read_string(key)?.into_bytes(),
        });
    }
    let Some(ca_key) = &args.raft_ca_key else {
        bail!(
            "give --raft-cert-issuer, or --raft-cert and --raft-key, or --raft-ca-key to generate them"
        );
    };
    let dir = args.data_dir.join("tls");
    let (cert_path, key_path, names_path) = (
        dir.join("replica.crt"),
        dir.join("replica.key"),
        dir.join("names"),
    );
    let mut names = vec![host_of(advertise).to_owned()];
    if !names.contains(&args.pod_name) {
        names.push(args.pod_name.clone());
    }
    let wanted = names.join(",");
    let current = std::fs::read_to_string(&names_path).ok();
    let ca_pem_stored = std::fs::read_to_string(dir.join("ca.crt")).ok();
    if current.as_deref() != Some(wanted.as_str())
        || ca_pem_stored.as_deref() != Some(ca_pem.as_str())
        || !cert_path.exists()
        || !key_path.exists()
    {
        let ca = pki::Ca::from_pem(&ca_pem, &pki::read_string(ca_key)?)?;
        let leaf = ca.sign(&args.pod_name, &names)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        pki::write_private(&key_path, leaf.key_pem.as_bytes())?;
        std::fs::write(&cert_path, &leaf.cert_pem)?;
        std::fs::write(dir.join("ca.crt"), &ca_pem)?;
        std::fs::write(&names_path, &wanted)?;
        tracing::info!(names = %wanted, dir = %dir.display(), "generated this replica's Raft certificate");
    }
    Ok(TlsMaterial {
        ca_pem: ca_pem.into_bytes(),
        cert_pem: pki::read_string(&cert_path)?.into_bytes(),
        key_pem: pki::read_string(&key_path)?.into_bytes(),
    })
}

/// Binds once: a restarted replica gets its old port back at once (tokio sets SO_REUSEADDR, so
/// connections left in TIME_WAIT do not hold it), and tests and `portico local` bind port 0 or
/// hand the sockets over (`socket_activation`) rather than pick a port for us to bind.
async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener {addr}"))
}

pub async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig given and no in-cluster configuration found")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut handed = crate::socket_activation::take("portico run", crate::socket_activation::RUN)?;
    let settings = args.settings()?;
    let controller_config = crate::controller::config(&args, settings.clone())?;
    let advertise = args.raft_advertise();
    let initial_members = args.initial_members()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    // With an issuer, the certificate comes from it (before Raft starts) and is renewed.
    let ca_pem = pki::read_string(&args.raft_ca)?.into_bytes();
    let tls_dir = args.data_dir.join("tls");
    let renewal = crate::raft_cert_renewal::Renewal::start(
        &args.raft_cert_issuer,
        &ca_pem,
        &tls_dir,
        host_of(&advertise),
    )
    .await?;
    let tls = match &renewal {
        Some(renewal) => renewal.material(&ca_pem),
        None => tls_material(&args, &advertise)?,
    };
    let loop_token = args.loop_token.clone().unwrap_or_else(|| {
        portico_proxy::LoopToken::for_cluster(&tls.ca_pem, &args.namespace, &args.lease_name)
    });
    let loaded_pair = (tls.cert_pem.clone(), tls.key_pem.clone());
    let client = kube_client(args.kubeconfig.as_deref()).await?;

    let state = Arc::new(ReplicaState::default());
    let stop_admin = CancellationToken::new();
    // Each kind of listener: the sockets handed over under its name, else its flag's addresses.
    let mut admin_listeners = Vec::new();
    for listener in handed.tcp("admin") {
        admin_listeners.push(TcpListener::from_std(listener)?);
    }
    if admin_listeners.is_empty() {
        for addr in args.admin_addresses() {
            admin_listeners.push(bind(addr, "admin").await?);
        }
    }
    let admin_bound: Vec<SocketAddr> = admin_listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()?;

    // Raft: the socket handed over, else --raft-listen.
    let raft_listener = match handed.tcp("raft").pop() {
        Some(listener) => TcpListener::from_std(listener)?,
        None => bind(args.raft_listen, "Raft").await?,
    };
    let raft_bound = raft_listener.local_addr()?;
    let replica = Replica::start(
        ReplicaConfig {
            data_dir: args.data_dir.clone(),
            advertise: advertise.clone(),
            initial_members: initial_members.clone(),
            peer_hosts: args.peer_hosts(),
            tls,
            raft: RaftSettings {
                heartbeat_interval: Duration::from_millis(args.raft_heartbeat_ms),
                election_timeout_min: Duration::from_millis(args.raft_heartbeat_ms * 6),
                election_timeout_max: Duration::from_millis(args.raft_heartbeat_ms * 12),
                ..RaftSettings::default()
            },
            transport: TransportSettings::default(),
        },
        raft_listener,
    )
    .await
    .context("starting Raft")?;
    tracing::info!(node_id = replica.node_id(), %advertise, members = ?initial_members, "Raft started");
    // A certificate given as files is read again, so a renewed one is used without a restart.
    if let (Some(cert), Some(key)) = (&args.raft_cert, &args.raft_key) {
        let replica = replica.clone();
        tokio::spawn(crate::cert_reload::watch(
            cert.clone(),
            key.clone(),
            loaded_pair,
            crate::cert_reload::EVERY,
            stop_admin.clone(),
            move |cert: &[u8], key: &[u8]| replica.replace_certificate(cert, key),
        ));
    }

    // The data plane, fed below by the table watch; built first so its counters join the
    // registry, bound only once the admin listener is up.
    let ready = portico_proxy::Listeners {
        http: handed.tcp("http"),
        https: handed.tcp("https"),
        h3: handed.udp("http3"),
    };
    let or_flag =
        |handed: bool, flag: &[SocketAddr]| if handed { Vec::new() } else { flag.to_vec() };
    let mut proxy = Proxy::new(
        ProxyConfig {
            limits: args.proxy_limits(),
            http: or_flag(!ready.http.is_empty(), &args.http),
            https: or_flag(!ready.https.is_empty(), &args.https),
            h3: or_flag(!ready.h3.is_empty(), &args.http3),
            alt_svc_port: args.alt_svc_port,
            access_log: args.access_log,
            trusted_proxies: args.trusted_proxies.clone(),
            forward_original_path: args.forward_original_path,
            loop_token,
            external_name_deny: args.external_name_deny_cidr.clone(),
            ..ProxyConfig::default()
        },
        replica.table().borrow().clone(),
    )?;

    // One registry for every part; complete before the admin listener serves it.
    let mut registry = Registry::default();
    crate::metrics::register(&mut registry, replica.clone(), state.clone());
    crate::metrics::register_proxy(&mut registry, proxy.metrics_handle());
    if let Some(renewal) = renewal {
        renewal.register(&mut registry);
        let replica = replica.clone();
        tokio::spawn(
            renewal.keep_renewed(stop_admin.clone(), move |cert: &[u8], key: &[u8]| {
                replica.replace_certificate(cert, key)
            }),
        );
    }
    let controller =
        crate::controller::Leader::new(controller_config, client, replica.clone(), &mut registry);

    let admin = Arc::new(Admin {
        registry,
        state: state.clone(),
        table: replica.table(),
        debug_routes: args.admin_debug_routes,
        connections: Arc::new(tokio::sync::Semaphore::new(admin::MAX_CONNECTIONS)),
    });
    let admin_task = tokio::spawn(admin::serve_all(admin_listeners, admin, stop_admin.clone()));

    let bound = proxy.spawn_listeners_with(ready)?;
    // Every address actually bound (a port 0 given resolved), in one line tests read.
    tracing::info!(http = ?bound.http, https = ?bound.https, h3 = ?bound.h3, admin = ?admin_bound, raft = %raft_bound, "listening");
    let table_task = {
        let handle = proxy.table_handle();
        let state = state.clone();
        let mut tables = replica.table();
        tokio::spawn(async move {
            loop {
                let table = tables.borrow_and_update().clone();
                if table.version() > 0 {
                    state.set_applied();
                }
                tracing::debug!(version = table.version(), "serving table");
                handle.swap(table);
                if tables.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    // Supervision: a dead part makes the replica unhealthy (and so restarted).
    let supervisor = {
        let replica = replica.clone();
        let state = state.clone();
        let table_task = table_task.abort_handle();
        let admin_task = admin_task.abort_handle();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let raft = replica.metrics();
                if let Some(fatal) = raft.fatal {
                    tracing::error!(%fatal, "Raft stopped");
                    state.fail(format!("raft: {fatal}"));
                }
                // A restored or cloned volume serves a stale table and takes no part in
                // Raft: not ready, and restarted until someone wipes it.
                if let Some(stale) = raft.stale_volume {
                    state.fail(format!("raft: {stale}"));
                }
                if table_task.is_finished() && !state.draining() {
                    state.fail("the routing table feed ended");
                }
                if admin_task.is_finished() && !state.draining() {
                    tracing::error!("the admin listener stopped");
                    state.fail("the admin listener stopped");
                }
            }
        })
    };

    let stop_controller = CancellationToken::new();
    let mut controller_task = controller.spawn(stop_controller.clone(), state.clone());

    let signal = tokio::select! {
        signal = crate::signals::terminated() => signal?,
        result = &mut controller_task => {
            let reason = match result {
                Ok(Ok(())) => "the controller stopped".to_owned(),
                Ok(Err(e)) => format!("controller: {e:#}"),
                Err(e) => format!("controller task: {e}"),
            };
            tracing::error!(%reason, "a supervised loop ended; waiting for SIGTERM");
            state.fail(reason);
            crate::signals::terminated().await?
        }
    };

    // Shutdown: readiness first; the controller hands the Lease and Raft leadership over at
    // once (a rolling restart must not wait out the load balancer's delay for that); the
    // connections drain after the delay.
    tracing::info!(signal, "shutting down: readiness is now false");
    state.start_draining();
    stop_controller.cancel();
    let controller_stopped = async {
        if !controller_task.is_finished() {
            match tokio::time::timeout(Duration::from_secs(10), controller_task).await {
                Ok(_) => tracing::info!("controller stopped"),
                Err(_) => tracing::warn!("controller did not stop within 10s"),
            }
        }
    };
    let delay = tokio::time::sleep(Duration::from_secs(args.shutdown_delay_seconds));
    tokio::join!(controller_stopped, delay);
    tracing::info!(
        deadline_seconds = args.drain_seconds,
        "draining connections"
    );
    proxy
        .shutdown(Duration::from_secs(args.drain_seconds))
        .await;
    table_task.abort();
    supervisor.abort();
    replica.shutdown().await;
    stop_admin.cancel();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec![
            "portico",
            "--pod-name",
            "portico-1",
            "--namespace",
            "ingress",
            "--raft-ca",
            "/ca.crt",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().run
    }

    #[test]
    fn members_derive_from_the_statefulset() {
        let a = args(&["--peer-service", "portico-peers", "--replicas", "3"]);
        assert_eq!(
            a.raft_advertise(),
            "portico-1.portico-peers.ingress.svc.cluster.local:9444"
        );
        assert_eq!(
            a.initial_members().unwrap(),
            vec![
                "portico-0.portico-peers.ingress.svc.cluster.local:9444",
                "portico-1.portico-peers.ingress.svc.cluster.local:9444",
                "portico-2.portico-peers.ingress.svc.cluster.local:9444",
            ]
        );
        let explicit = args(&["--initial-members", "a:1,b:2", "--raft-advertise", "b:2"]);
        assert_eq!(explicit.initial_members().unwrap(), vec!["a:1", "b:2"]);
        assert_eq!(host_of("[::1]:9444"), "::1");
        assert_eq!(host_of("portico-0.x:9444"), "portico-0.x");
    }

    #[test]
    fn limits_default_to_the_models_and_an_object_limit_above_one_entry_is_refused() {
        let settings = portico_model::Settings::default();
        let config = crate::controller::config(&args(&[]), settings.clone()).unwrap();
        assert_eq!(config.limits, portico_model::Limits::default());
        let a = args(&[
            "--max-object-bytes",
            "50000",
            "--max-namespace-objects",
            "7",
        ]);
        let config = crate::controller::config(&a, settings.clone()).unwrap();
        assert_eq!(config.limits.max_object_bytes, 50_000);
        assert_eq!(config.limits.max_namespace_objects, 7);
        let too_big = args(&["--max-object-bytes", "1048576"]);
        assert!(crate::controller::config(&too_big, settings).is_err());
    }

    #[test]
    fn trusted_proxies_are_cidrs_and_none_by_default() {
        assert!(args(&[]).trusted_proxies.is_empty());
        let a = args(&["--trusted-proxies", "10.0.0.0/8,2001:db8::/32"]);
        assert_eq!(a.trusted_proxies.len(), 2);
        let mut argv = vec!["portico", "--pod-name", "p-0", "--raft-ca", "/ca.crt"];
        argv.extend(["--trusted-proxies", "10.0.0.1"]);
        assert!(
            Cli::try_parse_from(argv).is_err(),
            "a bare address is not a CIDR"
        );
    }

    #[test]
    fn loop_token_and_external_name_ranges_are_checked_at_start() {
        let a = args(&[]);
        assert!(a.loop_token.is_none() && a.external_name_deny_cidr.is_empty());
        let a = args(&[
            "--loop-token",
            "edge-eu1",
            "--external-name-deny-cidr",
            "10.244.0.0/16,10.96.0.0/12",
        ]);
        assert_eq!(a.loop_token.unwrap().as_str(), "edge-eu1");
        assert_eq!(a.external_name_deny_cidr.len(), 2);
        for bad in [
            ["--loop-token", "a b"],
            ["--external-name-deny-cidr", "10.0.0.1"],
        ] {
            let mut argv = vec!["portico", "--pod-name", "p-0", "--raft-ca", "/ca.crt"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_namespace_slash_name() {
        assert!(parse_key("ns/name").is_ok());
        for bad in ["name", "/name", "ns/", "a/b/c"] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_limit_flags_reach_the_proxy_limits_and_zero_is_refused() {
        let defaults = portico_proxy::Limits::default();
        let l = args(&[]).proxy_limits();
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip, l.send_timeout),
            (50_000, 1_000, Duration::from_secs(60))
        );
        assert_eq!(
            l.quic_retry_above_handshakes,
            defaults.quic_retry_above_handshakes
        );
        let l = args(&[
            "--max-connections",
            "10",
            "--max-connections-per-ip",
            "2",
            "--send-timeout-seconds",
            "5",
            "--quic-retry-above-handshakes",
            "0",
        ])
        .proxy_limits();
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip, l.send_timeout),
            (10, 2, Duration::from_secs(5))
        );
        assert_eq!(l.quic_retry_above_handshakes, 0);
        let flags = [
            "--max-connections",
            "--max-connections-per-ip",
            "--send-timeout-seconds",
        ];
        for flag in flags {
            let mut argv = vec!["portico", "--pod-name", "p-0", "--raft-ca", "/ca.crt"];
            argv.extend([flag, "0"]);
            assert!(Cli::try_parse_from(argv).is_err(), "{flag} 0");
        }
    }
}
