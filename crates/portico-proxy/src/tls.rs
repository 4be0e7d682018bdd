//! TLS for clients (TCP and QUIC) and for backends.
//!
//! One [`TableCertResolver`] serves both the TCP and the QUIC server configs. It reads the
//! certificate from whichever table is current, so a rotation is just a table swap: no config
//! is rebuilt, and the session ticket key (made once per process) survives every swap.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portico_model::RoutingTable;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub(crate) const ALPN_H2: &[u8] = b"h2";
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";
pub(crate) const ALPN_H3: &[u8] = b"h3";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the default self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot read PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("no certificate in the PEM input")]
    NoCertificate,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Picks the certificate for a handshake from the current table, by SNI.
pub(crate) struct TableCertResolver {
    table: Arc<ArcSwap<RoutingTable>>,
    fallback: Arc<CertifiedKey>,
}

impl TableCertResolver {
    pub(crate) fn new(table: Arc<ArcSwap<RoutingTable>>, fallback: Arc<CertifiedKey>) -> Self {
        Self { table, fallback }
    }
}

impl fmt::Debug for TableCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableCertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for TableCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        match table.certificate_for(hello.server_name()) {
            Some(cert) => Some(cert.certified_key()),
            None => Some(self.fallback.clone()),
        }
    }
}

/// The TCP (`h2`, `http/1.1`; TLS 1.2 and 1.3) and QUIC (`h3`; TLS 1.3, no 0-RTT) configs.
pub(crate) struct ServerConfigs {
    pub tcp: Arc<ServerConfig>,
    pub quic: Arc<ServerConfig>,
}

pub(crate) fn server_configs(
    resolver: Arc<TableCertResolver>,
    session_resumption: bool,
) -> Result<ServerConfigs, TlsError> {
    let provider = provider();
    // One ticket key (rotated by rustls on its own schedule) shared by both configs.
    let ticketer = rustls::crypto::ring::Ticketer::new()?;
    let cache = ServerSessionMemoryCache::new(8192);
    let build = |versions: &[&'static rustls::SupportedProtocolVersion], alpn: &[&[u8]]| {
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.max_early_data_size = 0;
        if session_resumption {
            config.ticketer = ticketer.clone();
            config.session_storage = cache.clone();
        } else {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Ok::<_, TlsError>(Arc::new(config))
    };
    Ok(ServerConfigs {
        tcp: build(
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            &[ALPN_H2, ALPN_HTTP11],
        )?,
        quic: build(&[&rustls::version::TLS13], &[ALPN_H3])?,
    })
}

/// A self-signed certificate for `localhost`-less, SNI-less or unknown names, as
/// ingress-nginx's "Fake Certificate".
pub fn generate_default_certificate() -> Result<Arc<CertifiedKey>, TlsError> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["portico.invalid".to_owned()])?;
    let key = PrivateKeyDer::try_from(signing_key.serialize_der())
        .map_err(|_| TlsError::NoCertificate)?;
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// A certificate chain and key from PEM (for the standalone binary and tests).
pub fn certified_key_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem).collect::<Result<_, _>>()?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Backends are reached over TLS without verifying their certificate, as ingress-nginx does
/// by default (`proxy-ssl-verify: off`): in-cluster Pods rarely hold publicly valid names.
/// ALPN is left to the connector, which offers what the client is built for.
pub(crate) fn upstream_client_config() -> rustls::ClientConfig {
    let provider = provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
