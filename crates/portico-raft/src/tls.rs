//! Mutual TLS between replicas: every replica presents a certificate signed by the cluster
//! CA, and accepts only peers that do the same (as client and as server). TLS 1.3 only,
//! ring as the crypto provider, ALPN `h2`. The replica's own certificate can be replaced
//! while it runs ([`OwnCertificate`]): short-lived certificates rotate without a restart;
//! connections already open keep the certificate they were made with.

use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
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
    /// The private key does not load, or is not the certificate's.
    #[error("the private key does not fit the certificate: {0}")]
    Key(#[source] rustls::Error),
}

/// This replica's certificate and key, for both sides of every connection it makes or
/// accepts; [`OwnCertificate::replace`] swaps them for the next handshakes.
#[derive(Debug)]
pub(crate) struct OwnCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl OwnCertificate {
    fn load(
        provider: &rustls::crypto::CryptoProvider,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        let chain = certs(cert_pem, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
            what: "private key",
            source,
        })?;
        let certified = CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Key)?;
        Ok(Arc::new(certified))
    }

    /// Replaces the certificate and key (PEM) for the next handshakes; the old pair stays
    /// when the new one does not load or the key is not the certificate's.
    pub(crate) fn replace(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let loaded = Self::load(&self.provider, cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Both sides of the replica's TLS configuration.
#[derive(Clone)]
pub(crate) struct TlsConfigs {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
    pub(crate) own: Arc<OwnCertificate>,
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
        let own = Arc::new(OwnCertificate {
            current: RwLock::new(OwnCertificate::load(
                &provider,
                &self.cert_pem,
                &self.key_pem,
            )?),
            provider: provider.clone(),
        });

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(own.clone());
        server.alpn_protocols = vec![b"h2".to_vec()];

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_cert_resolver(own.clone());
        client.alpn_protocols = vec![b"h2".to_vec()];

        Ok(TlsConfigs {
            server: Arc::new(server),
            client: Arc::new(client),
            own,
        })
    }
}
