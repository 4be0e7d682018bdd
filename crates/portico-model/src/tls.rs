//! TLS certificates from `kubernetes.io/tls` Secrets, parsed and checked when the table is
//! compiled so that the data plane only ever sees certificates that load.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::key::ObjectKey;
use crate::source::{SecretSource, UnixSeconds};

pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

/// The largest `tls.crt` plus `tls.key` served (a long chain with an RSA-4096 key is under
/// 16 KiB): one tenant's Secret cannot fill the Raft log or the volumes.
pub const MAX_TLS_SECRET_BYTES: usize = 64 * 1024;

/// A certificate chain with its private key, ready to serve.
pub struct TlsCertificate {
    pub secret: ObjectKey,
    /// DNS names from the leaf's subjectAltName, lower case. The CN is not used, as browsers
    /// and the Ingress conformance suite do not use it.
    pub dns_names: Vec<Arc<str>>,
    pub not_before: UnixSeconds,
    pub not_after: UnixSeconds,
    certified: Arc<CertifiedKey>,
}

impl TlsCertificate {
    /// Parses the Secret's `tls.crt` (PEM chain, leaf first) and `tls.key` (PKCS#1, PKCS#8 or
    /// SEC1 PEM) and checks that the key belongs to the leaf.
    pub fn from_secret(secret: &SecretSource) -> Result<Self, CertificateError> {
        if let Some(type_) = &secret.type_
            && type_ != SECRET_TYPE_TLS
        {
            return Err(CertificateError::WrongType(type_.clone()));
        }
        let size = [&secret.tls_crt, &secret.tls_key]
            .into_iter()
            .flatten()
            .map(|b| b.len() as u64)
            .sum::<u64>();
        if let Some(bytes) = secret
            .oversize
            .or((size > MAX_TLS_SECRET_BYTES as u64).then_some(size))
        {
            return Err(CertificateError::TooLarge { bytes });
        }
        let crt = secret
            .tls_crt
            .as_deref()
            .filter(|b| !b.is_empty())
            .ok_or(CertificateError::MissingField("tls.crt"))?;
        let key = secret
            .tls_key
            .as_deref()
            .filter(|b| !b.is_empty())
            .ok_or(CertificateError::MissingField("tls.key"))?;

        let chain = CertificateDer::pem_slice_iter(crt)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertificateError::Certificate(e.to_string()))?;
        let leaf = chain.first().ok_or(CertificateError::Certificate(
            "tls.crt holds no PEM certificate".into(),
        ))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| CertificateError::Certificate(e.to_string()))?;
        let mut dns_names: Vec<Arc<str>> = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    let dns = dns.trim_end_matches('.').to_ascii_lowercase();
                    if !dns_names.iter().any(|d| **d == *dns) {
                        dns_names.push(dns.into());
                    }
                }
            }
        }
        let validity = parsed.validity();
        let not_before = validity.not_before.timestamp();
        let not_after = validity.not_after.timestamp();

        // Any error from the PEM parser would echo nothing of the key, but say only what kind
        // of problem it is anyway: key material must never reach a log or an Event.
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| CertificateError::Key)?;
        let certified =
            CertifiedKey::from_der(chain, key, &ring::default_provider()).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => CertificateError::KeyMismatch,
                _ => CertificateError::Key,
            })?;
        Ok(Self {
            secret: secret.key.clone(),
            dns_names,
            not_before,
            not_after,
            certified: Arc::new(certified),
        })
    }

    /// The chain and signing key for rustls, built once at compile time.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }

    /// Whether the certificate's SANs cover `host` (a wildcard SAN covers one label).
    pub fn covers(&self, host: &str) -> bool {
        self.dns_names
            .iter()
            .any(|san| crate::host::san_matches(san, host))
    }

    /// Why the certificate should not be served at `now`, if it should not.
    pub fn validity_problem(&self, now: UnixSeconds) -> Option<String> {
        if now < self.not_before {
            Some(format!(
                "certificate is not valid before {} (Unix time)",
                self.not_before
            ))
        } else if now > self.not_after {
            Some(format!(
                "certificate expired at {} (Unix time)",
                self.not_after
            ))
        } else {
            None
        }
    }
}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("secret", &self.secret)
            .field("dns_names", &self.dns_names)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Why a Secret cannot serve TLS. The messages never contain key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("Secret type is {0:?}, not \"kubernetes.io/tls\"")]
    WrongType(String),
    #[error("Secret has no {0}")]
    MissingField(&'static str),
    #[error("tls.crt is not a valid PEM certificate chain: {0}")]
    Certificate(String),
    #[error("tls.key is not a PEM private key (PKCS#1, PKCS#8 or SEC1) that rustls can use")]
    Key,
    #[error("tls.key does not match the public key of the first certificate in tls.crt")]
    KeyMismatch,
    #[error(
        "tls.crt and tls.key are {bytes} bytes, over the limit of {} bytes; the Secret is not stored or served",
        MAX_TLS_SECRET_BYTES
    )]
    TooLarge { bytes: u64 },
}
