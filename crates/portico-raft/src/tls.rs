//! Mutual TLS between replicas: every replica presents a certificate signed by the cluster
//! CA, and accepts only peers that do the same (as client and as server). TLS 1.3 only,
//! ring as the crypto provider, ALPN `h2`.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM material a replica needs. The private key is never logged (no `Debug` output).
#[derive(Clone)]
pub struct TlsMaterial {
    /// The cluster CA certificate(s) that sign every replica's certificate.
    pub ca_pem: Vec<u8>,
    /// This replica's certificate chain (leaf first).
    pub cert_pem: Vec<u8>,
    /// This replica's private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found in the {0} PEM")]
    NoCertificate(&'static str),
    #[error("invalid {what} PEM: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the cluster CA certificate was rejected: {0}")]
    BadCa(#[source] rustls::Error),
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Both sides of the replica's TLS configuration.
#[derive(Clone)]
pub(crate) struct TlsConfigs {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
}

fn certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

impl TlsMaterial {
    pub(crate) fn configs(&self) -> Result<TlsConfigs, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in certs(&self.ca_pem, "CA")? {
            roots.add(ca).map_err(TlsError::BadCa)?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&self.cert_pem, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|source| TlsError::Pem {
            what: "private key",
            source,
        })?;

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![b"h2".to_vec()];

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        client.alpn_protocols = vec![b"h2".to_vec()];

        Ok(TlsConfigs {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}
