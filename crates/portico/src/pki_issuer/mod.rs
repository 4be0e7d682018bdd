//! `portico pki serve`: the Raft certificate issuer, the only process that holds the cluster
//! CA's private key (review finding C1). It runs as its own Deployment, never Internet-facing.
//! A replica makes its own key and sends a CSR with its projected ServiceAccount token
//! (audience `portico-raft-pki`, bound to its Pod); the issuer checks the token with a
//! TokenReview and the Pod against the API server, and signs a short-lived certificate for
//! the names of that Pod ([`crate::pki::replica_names`]), never for names the caller asks.
//!
//! * [`policy`] — who may have a certificate, and for which Pod (pure, every rule tested).
//! * [`facts`] — the TokenReview, Pod and StatefulSet, asked afresh for every request.
//! * [`csr`] — the CSR: its signature checked, only its public key used.
//! * [`serving`] — the issuer's own HTTPS certificate, made in memory from the CA.
//! * [`server`] — the HTTPS endpoint and its limits.

mod csr;
mod facts;
mod policy;
mod server;
mod serving;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::logging::LogFormat;
use crate::pki;

/// The shortest certificate lifetime accepted (tests watch rotation at it).
const MIN_LIFETIME: Duration = Duration::from_secs(60);
/// The longest: a stolen replica key is good for one lifetime.
const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The cluster CA certificate (PEM).
    #[arg(long, env = "PORTICO_RAFT_CA")]
    ca_cert: PathBuf,
    /// The cluster CA's private key (PEM). Only this process reads it.
    #[arg(long, env = "PORTICO_RAFT_CA_KEY")]
    ca_key: PathBuf,
    /// Address of the HTTPS listener (port 0: any free port, reported in the `listening` log
    /// line). A socket named `pki` handed over by socket activation (LISTEN_FDS,
    /// LISTEN_FDNAMES) is served instead of binding it.
    #[arg(long, env = "PORTICO_PKI_LISTEN", default_value = "0.0.0.0:9445")]
    listen: SocketAddr,
    /// The namespace of the issuer, the replicas' Pods and their StatefulSet.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The headless Service that gives each replica a DNS name: a certificate names
    /// `POD.PEER_SERVICE.NAMESPACE.svc.CLUSTER_DOMAIN` and `POD`.
    #[arg(long, env = "PORTICO_PEER_SERVICE", default_value = "portico-peers")]
    peer_service: String,
    #[arg(long, env = "PORTICO_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// The StatefulSet whose Pods alone get certificates.
    #[arg(long, env = "PORTICO_STATEFULSET", default_value = "portico")]
    statefulset: String,
    /// The replicas' ServiceAccount: only its tokens are accepted.
    #[arg(
        long,
        env = "PORTICO_REPLICA_SERVICE_ACCOUNT",
        default_value = "portico"
    )]
    replica_service_account: String,
    /// The audience a replica's token must be made for.
    #[arg(long, env = "PORTICO_PKI_AUDIENCE", default_value = "portico-raft-pki")]
    audience: String,
    /// How long an issued certificate is valid: seconds, or a number with s, m, h or d
    /// (`24h`). At least 60 s, at most 366 d.
    #[arg(long, env = "PORTICO_PKI_CERTIFICATE_LIFETIME", default_value = "24h",
          value_parser = parse_lifetime)]
    certificate_lifetime: Duration,
    /// A further name (DNS name or IP address) of the issuer's serving certificate, beside
    /// `portico-pki.NAMESPACE.svc[.CLUSTER_DOMAIN]`; repeatable or comma-separated.
    #[arg(long, env = "PORTICO_PKI_SERVING_NAMES", value_delimiter = ',')]
    serving_name: Vec<String>,
    /// kubeconfig file; when unset, the in-cluster service account (or the default
    /// kubeconfig lookup) is used.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "PORTICO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// `60`, `90s`, `15m`, `24h`, `7d`, within [`MIN_LIFETIME`]..=[`MAX_LIFETIME`].
fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => {
            return Err(format!(
                "{text:?}: use seconds, or a number with s, m, h or d"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: use seconds, or a number with s, m, h or d"))?;
    let lifetime = Duration::from_secs(n.saturating_mul(scale));
    if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&lifetime) {
        return Err(format!(
            "{text:?}: a certificate lifetime must be between 60s and 366d"
        ));
    }
    Ok(lifetime)
}

/// Runs the issuer until SIGTERM or SIGINT, on `handed` (the socket named `pki` handed over,
/// see `crate::socket_activation`) or else on `--listen`.
pub async fn serve(args: ServeArgs, handed: Option<std::net::TcpListener>) -> anyhow::Result<()> {
    let ca_pem = pki::read_string(&args.ca_cert)?;
    let ca = pki::Ca::from_pem(&ca_pem, &pki::read_string(&args.ca_key)?)?;
    let client = crate::run::kube_client(args.kubeconfig.as_deref()).await?;

    let names = serving::names(&args.namespace, &args.cluster_domain, &args.serving_name);
    let serving = serving::ServingCertificate::new(&ca, names.clone())?;
    let tls = serving.server_config()?;

    let mut registry = Registry::default();
    let decisions = server::Decisions::default();
    registry.register(
        "portico_pki_decisions",
        "Raft certificate requests, by outcome (issued, refused) and the rule that refused",
        decisions.clone(),
    );
    let issuer = Arc::new(server::Issuer {
        ca,
        client,
        policy: policy::Policy {
            namespace: args.namespace.clone(),
            service_account: args.replica_service_account,
            statefulset: args.statefulset,
            audience: args.audience,
        },
        peer_service: args.peer_service,
        cluster_domain: args.cluster_domain,
        lifetime: args.certificate_lifetime,
        registry,
        decisions,
    });

    let listener = match handed {
        Some(listener) => tokio::net::TcpListener::from_std(listener)?,
        None => tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?,
    };
    tracing::info!(
        namespace = %args.namespace,
        serving_names = %names.join(","),
        lifetime_seconds = args.certificate_lifetime.as_secs(),
        "serving Raft certificates"
    );
    // The bound address (the port chosen for port 0), as `portico run` and `echo` report it.
    tracing::info!(addr = %listener.local_addr()?, "listening");

    let stop = CancellationToken::new();
    let renewer = {
        let (issuer, serving) = (issuer.clone(), serving.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(serving::RENEW_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = serving.renew(&issuer.ca) {
                    tracing::error!(error = %e, "renewing the serving certificate failed");
                }
            }
        })
    };
    let server = tokio::spawn(server::serve(listener, tls, issuer, stop.clone()));
    let signal = crate::signals::terminated().await?;
    tracing::info!(signal, "stopping");
    stop.cancel();
    renewer.abort();
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_is_seconds_or_a_number_with_a_unit_within_bounds() {
        assert_eq!(parse_lifetime("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_lifetime("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_lifetime("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_lifetime("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_lifetime("366d"), Ok(MAX_LIFETIME));
        for refused in [
            "59",
            "59s",
            "0",
            "367d",
            "1w",
            "",
            "h",
            "-5",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_lifetime(refused).is_err(), "{refused}");
        }
    }
}
