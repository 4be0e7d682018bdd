//! The issuer's own HTTPS certificate: made in memory at start from the CA it holds (so a
//! replica trusts it with the CA certificate it already has), for the issuer Service's names
//! and any `--serving-name`, valid for [`LIFETIME`] and renewed in memory every
//! [`RENEW_EVERY`]. Its key never touches the disk. TLS 1.3 only.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::pki::Ca;

/// How long one serving certificate is valid.
pub const LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a fresh one replaces it (well inside [`LIFETIME`]).
pub const RENEW_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The names the issuer serves under: its Service's, then the extras.
pub fn names(namespace: &str, cluster_domain: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        format!("portico-pki.{namespace}.svc"),
        format!("portico-pki.{namespace}.svc.{cluster_domain}"),
    ];
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The current serving certificate, replaced by [`ServingCertificate::renew`].
#[derive(Debug)]
pub struct ServingCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    names: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServingCertificate {
    pub fn new(ca: &Ca, names: Vec<String>) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = RwLock::new(issue(ca, &names, &provider)?);
        Ok(Arc::new(Self {
            current,
            names,
            provider,
        }))
    }

    /// Signs a fresh certificate for the next handshakes.
    pub fn renew(&self, ca: &Ca) -> anyhow::Result<()> {
        let fresh = issue(ca, &self.names, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// A TLS 1.3 server configuration that presents the current certificate.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn issue(
    ca: &Ca,
    names: &[String],
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let leaf = ca.sign_for("portico-pki", names, LIFETIME)?;
    let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the serving certificate just made does not parse")?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
        .context("the serving key just made does not parse")?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, provider)?))
}
