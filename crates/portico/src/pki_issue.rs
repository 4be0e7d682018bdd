//! `portico pki issue` and `portico pki serve` (the issuer, [`crate::pki_issuer`]).
//!
//! `portico pki issue`: signs this replica's Raft certificate and exits. Run as the
//! StatefulSet's init container, the only container that mounts the cluster CA's private
//! key, so the long-running process that serves Internet traffic never holds it (review
//! finding C1). The certificate is short-lived (30 days by default) and issued anew at
//! every Pod start; it names the Pod's DNS name under the peer Service, which is the
//! identity the other replicas check.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{logging, pki};

#[derive(clap::Args, Debug)]
pub struct PkiArgs {
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(clap::Subcommand, Debug)]
enum PkiCommand {
    /// Sign this replica's Raft certificate with the cluster CA into --out-dir
    /// (ca.crt, replica.crt, replica.key with mode 0600).
    Issue(IssueArgs),
    /// Serve Raft certificates over HTTPS to the StatefulSet's Pods, each proving who it
    /// is with its Pod-bound ServiceAccount token (the only process holding the CA key).
    Serve(Box<crate::pki_issuer::ServeArgs>),
}

#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    /// The cluster CA certificate (PEM).
    #[arg(long, env = "PORTICO_RAFT_CA")]
    ca: PathBuf,
    /// The cluster CA's private key (PEM).
    #[arg(long, env = "PORTICO_RAFT_CA_KEY")]
    ca_key: PathBuf,
    /// Where to write ca.crt, replica.crt and replica.key.
    #[arg(long, env = "PORTICO_RAFT_TLS_DIR")]
    out_dir: PathBuf,
    /// This replica's Pod name: the certificate's common name, and one of its names.
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The headless Service that gives each replica a DNS name: the certificate names
    /// `POD.PEER_SERVICE.NAMESPACE.svc.CLUSTER_DOMAIN`.
    #[arg(long, env = "PORTICO_PEER_SERVICE")]
    peer_service: Option<String>,
    #[arg(long, env = "PORTICO_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Further names (DNS names or IP addresses); comma-separated.
    #[arg(long, value_delimiter = ',')]
    name: Vec<String>,
    /// Days the certificate is valid.
    #[arg(long, env = "PORTICO_RAFT_CERT_DAYS", default_value_t = 30)]
    valid_days: u64,
}

impl IssueArgs {
    fn names(&self) -> Vec<String> {
        let mut names = pki::replica_names(
            &self.pod_name,
            &self.namespace,
            self.peer_service.as_deref(),
            &self.cluster_domain,
        );
        for name in &self.name {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
}

pub fn run(args: PkiArgs) -> anyhow::Result<()> {
    match args.command {
        PkiCommand::Issue(args) => {
            logging::init(logging::LogFormat::Human, "info");
            issue(&args)
        }
        PkiCommand::Serve(args) => {
            logging::init(args.log_format, "info,kube=warn");
            // Before the runtime's threads start: taking them edits the environment.
            let handed =
                crate::socket_activation::take("portico pki serve", crate::socket_activation::PKI)?
                    .tcp("pki")
                    .pop();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(crate::pki_issuer::serve(*args, handed))
        }
    }
}

fn issue(args: &IssueArgs) -> anyhow::Result<()> {
    if args.valid_days == 0 || args.valid_days > 366 {
        bail!("--valid-days must be between 1 and 366");
    }
    let ca_pem = pki::read_string(&args.ca)?;
    let ca = pki::Ca::from_pem(&ca_pem, &pki::read_string(&args.ca_key)?)?;
    let names = args.names();
    let lifetime = Duration::from_secs(args.valid_days * 24 * 3600);
    let leaf = ca.sign_for(&args.pod_name, &names, lifetime)?;
    let dir = &args.out_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    pki::write_private(&dir.join("replica.key"), leaf.key_pem.as_bytes())?;
    pki::write_public(&dir.join("replica.crt"), leaf.cert_pem.as_bytes())?;
    pki::write_public(&dir.join("ca.crt"), ca_pem.as_bytes())?;
    tracing::info!(names = %names.join(","), days = args.valid_days, dir = %dir.display(), "issued this replica's Raft certificate");
    Ok(())
}
