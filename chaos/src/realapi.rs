//! A real kube-apiserver and etcd for a run: `tests/kube`'s kube-testenv (built and cached by
//! `tests/kube/build.sh`, which `tests/setup` runs), its control port (stop and start the API
//! server over the same etcd, compact etcd), the admin client the harness writes with, and the
//! replicas' credentials: deploy/'s ServiceAccount and RBAC, applied as rendered by kustomize,
//! and one token of that ServiceAccount per replica (as each pod of the StatefulSet gets its
//! own), so every call a replica makes is authorized by the RBAC we ship.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Kinds whose watches the chaos API server serves from etcd itself (no watch cache): a
/// re-watch from a compacted resourceVersion then gets 410 from etcd, which is what the
/// force-410 fault needs. With the watch cache (the default, kept for the other kinds) a
/// watch is served from the cache's window of recent events whatever etcd compacted; only
/// a restart (the api-unavailable fault) empties that window. These two are the kinds the
/// writer keeps changing.
pub const UNCACHED_KINDS: [&str; 2] = [
    "ingresses.networking.k8s.io",
    "endpointslices.discovery.k8s.io",
];

/// How long kube-testenv may take to answer (etcd, then kube-apiserver's post-start hooks;
/// longer on two shared cores).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The kube-testenv binary: `explicit`, else `$PORTICO_KUBE_TESTENV`, else the build of the
/// current sources (`tests/kube/build.sh --check`), so a stale build is never used.
pub fn binary(explicit: Option<&Path>, checkout: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PORTICO_KUBE_TESTENV") {
        return Ok(PathBuf::from(p));
    }
    let script = checkout.join("tests/kube/build.sh");
    let out = std::process::Command::new(&script)
        .arg("--check")
        .output()
        .with_context(|| format!("running {} --check", script.display()))?;
    if !out.status.success() {
        bail!(
            "the real API server is not built: {} (or pass --kube-testenv PATH)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// One running control plane. Dropping it closes kube-testenv's stdin (`--lifeline`): it
/// stops both servers and removes its temp dir, even if this process dies.
pub struct ControlPlane {
    child: Child,
    _lifeline: ChildStdin,
    /// The admin kubeconfig (static token, CA embedded).
    pub kubeconfig: PathBuf,
    /// The API server's address (127.0.0.1, the same across stop/start).
    pub addr: SocketAddr,
    /// The CA of its serving certificate (PEM).
    pub ca: PathBuf,
    control: SocketAddr,
    log: PathBuf,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver; returns once the API server is ready.
    pub async fn start(binary: &Path, dir: &Path, log: &Path) -> anyhow::Result<ControlPlane> {
        anyhow::ensure!(
            binary.is_file(),
            "{} is missing: build the real API server with tests/kube/build.sh (tests/setup runs it)",
            binary.display()
        );
        std::fs::create_dir_all(dir)?;
        let kubeconfig = dir.join("admin.kubeconfig");
        let mut cmd = Command::new(binary);
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--lifeline")
            .arg(format!(
                "--apiserver-arg=--watch-cache-sizes={}",
                UNCACHED_KINDS.map(|k| format!("{k}#0")).join(",")
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let lifeline = child.stdin.take().context("kube-testenv stdin")?;
        let stdout = child.stdout.take().context("kube-testenv stdout")?;
        let mut line = String::new();
        let read =
            tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            drop(lifeline);
            let _ = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;
            let _ = child.start_kill();
            bail!(
                "kube-testenv did not become ready within {START_TIMEOUT:?}; its log:\n{}",
                crate::harness::tail(log, 40)
            );
        }
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("ready line {line:?}"))?;
        let field = |name: &str| -> anyhow::Result<String> {
            ready[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{name} missing from {ready}"))
        };
        let server = field("server")?;
        let control = field("control")?;
        Ok(ControlPlane {
            kubeconfig: PathBuf::from(field("kubeconfig")?),
            addr: server
                .strip_prefix("https://")
                .context("server is not https")?
                .parse()?,
            ca: PathBuf::from(field("ca")?),
            control: control
                .strip_prefix("http://")
                .context("control is not http")?
                .parse()?,
            child,
            _lifeline: lifeline,
            log: log.to_path_buf(),
        })
    }

    /// The harness's own client (admin).
    pub async fn admin_client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// TLS to the API server, trusting only its CA.
    pub fn tls(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(&self.ca)? {
            roots.add(cert?)?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(std::sync::Arc::new(tls))
    }

    /// Stops kube-apiserver (SIGTERM, its graceful shutdown); etcd keeps every object.
    pub async fn stop_apiserver(&self) -> anyhow::Result<()> {
        self.control("/apiserver/stop").await.map(drop)
    }

    /// Starts it again on the same port; returns once it is ready.
    pub async fn start_apiserver(&self) -> anyhow::Result<()> {
        self.control("/apiserver/start").await.map(drop)
    }

    /// Compacts etcd at its current revision; returns the revision.
    pub async fn compact_etcd(&self) -> anyhow::Result<i64> {
        let reply = self.control("/etcd/compact").await?;
        reply["revision"]
            .as_i64()
            .with_context(|| format!("no revision in {reply}"))
    }

    async fn control(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let call = async {
            let stream = tokio::net::TcpStream::connect(self.control).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = http::Request::post(path)
                .header(http::header::HOST, self.control.to_string())
                .body(Empty::<Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::ensure!(
                status.is_success(),
                "{status}: {}",
                String::from_utf8_lossy(&body)
            );
            anyhow::Ok(serde_json::from_slice(&body)?)
        };
        // Stopping waits up to 30 s for a graceful exit; starting up to 3 minutes.
        tokio::time::timeout(Duration::from_secs(200), call)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
            .with_context(|| {
                format!(
                    "kube-testenv POST {path}; its log:\n{}",
                    crate::harness::tail(&self.log, 20)
                )
            })
    }

    /// Stops both servers and waits (SIGTERM; SIGKILL after 40 s).
    pub async fn stop(mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// What the replicas run as: deploy/'s ServiceAccount, its namespace, and one kubeconfig per
/// replica with its own token, for the proxy at `proxy`.
pub struct Credentials {
    pub namespace: String,
    pub kubeconfigs: Vec<PathBuf>,
}

/// kubectl with the admin kubeconfig.
async fn kubectl(
    plane: &ControlPlane,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", &plane.kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot run kubectl")?;
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().context("kubectl stdin")?;
        pipe.write_all(input.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kinds of deploy/ that make up the replicas' identity and permissions.
const IDENTITY_KINDS: [&str; 6] = [
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// Applies deploy/'s Namespace, ServiceAccount and RBAC (rendered by `kubectl kustomize`,
/// unchanged) and writes one kubeconfig per replica with a fresh token of that
/// ServiceAccount, pointing at `proxy` over plain HTTP.
pub async fn replica_credentials(
    plane: &ControlPlane,
    deploy: &Path,
    proxy: SocketAddr,
    replicas: usize,
    dir: &Path,
) -> anyhow::Result<Credentials> {
    let rendered = kubectl(plane, &["kustomize", &deploy.to_string_lossy()], None).await?;
    let mut keep = Vec::new();
    let mut account = None;
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let object = serde_yaml::Value::deserialize(doc)?;
        let kind = object["kind"].as_str().unwrap_or_default();
        // The replicas' ServiceAccount, not the Raft certificate issuer's (portico-pki).
        if kind == "ServiceAccount" && object["metadata"]["name"] == "portico" {
            account = Some((
                object["metadata"]["namespace"]
                    .as_str()
                    .context("the ServiceAccount has no namespace")?
                    .to_string(),
                object["metadata"]["name"]
                    .as_str()
                    .context("the ServiceAccount has no name")?
                    .to_string(),
            ));
        }
        if IDENTITY_KINDS.contains(&kind) {
            keep.push(serde_yaml::to_string(&object)?);
        }
    }
    let (namespace, name) = account.context("deploy/ renders no ServiceAccount")?;
    kubectl(plane, &["apply", "-f", "-"], Some(&keep.join("---\n")))
        .await
        .context("applying deploy/'s ServiceAccount and RBAC")?;
    let mut kubeconfigs = Vec::new();
    for i in 0..replicas {
        let token = kubectl(
            plane,
            &["-n", &namespace, "create", "token", &name, "--duration=6h"],
            None,
        )
        .await?;
        let path = dir.join(format!("replica-{i}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: chaos\n  cluster:\n    server: http://{proxy}\nusers:\n- name: replica-{i}\n  user:\n    token: {}\ncontexts:\n- name: chaos\n  context:\n    cluster: chaos\n    user: replica-{i}\n    namespace: {namespace}\ncurrent-context: chaos\n",
            token.trim()
        );
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)?
            .write_all(text.as_bytes())?;
        kubeconfigs.push(path);
    }
    Ok(Credentials {
        namespace,
        kubeconfigs,
    })
}
