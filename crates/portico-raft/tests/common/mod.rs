//! Shared test helpers: node certificates from the workspace's test CA, small changes, and a
//! raw mTLS client.
#![allow(dead_code)]

pub mod cluster;
pub mod processes;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_raft::TlsMaterial;
// The node's own `propose` change; unused by the targets that only run processes.
#[allow(unused_imports)]
pub use portico_raft::service_change;
use portico_test_support::{LeafSpec, TestCa};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A cluster CA that signs node certificates, as the replicas take them ([`TlsMaterial`]).
pub struct Pki {
    ca: TestCa,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        Self {
            ca: TestCa::new(name),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// A node certificate for 127.0.0.1 and localhost signed by this CA, trusting this CA.
    pub fn node(&self, name: &str) -> TlsMaterial {
        self.node_for(name, &["localhost".to_owned(), "127.0.0.1".to_owned()])
    }

    /// A certificate with common name `name` for `names` (DNS names or IP addresses).
    pub fn node_for(&self, name: &str, names: &[String]) -> TlsMaterial {
        let leaf = self.ca.issue(&LeafSpec::new(names).common_name(name));
        TlsMaterial {
            ca_pem: leaf.ca_pem.into_bytes(),
            cert_pem: leaf.cert_pem.into_bytes(),
            key_pem: leaf.key_pem.into_bytes(),
        }
    }
}

/// A TLS client configuration trusting `ca_pem`, presenting `client` (or no certificate).
pub fn client_config(ca_pem: &[u8], client: Option<&TlsMaterial>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(material) => {
            let chain = CertificateDer::pem_slice_iter(&material.cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(&material.key_pem).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// POSTs `body` to `path` on a replica over HTTP/2 + TLS; returns status and body, or the
/// connection-level error.
pub async fn raw_post(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    body: Vec<u8>,
) -> Result<(http::StatusCode, Bytes), String> {
    raw_post_to(addr, tls, path, None, body).await
}

/// Like [`raw_post`], naming the target node as Raft RPCs do.
pub async fn raw_post_to(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    target: Option<u64>,
    body: Vec<u8>,
) -> Result<(http::StatusCode, Bytes), String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::try_from(host.clone()).unwrap(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(connection);
        let mut request = http::Request::post(format!("https://{addr}{path}"));
        if let Some(target) = target {
            request = request.header("portico-raft-target", target);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}
