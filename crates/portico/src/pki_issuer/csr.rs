//! A replica's certificate signing request: only its public key is used, and only once the
//! request's signature verifies with that key (the caller holds the private key). The names,
//! subject and extensions it asks for are ignored: the issuer decides them.

use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the body is not one PEM CERTIFICATE REQUEST")]
    NotPem,
    #[error("the certificate request does not parse")]
    Unparsable,
    #[error("the certificate request's signature does not verify with its public key")]
    BadSignature,
    #[error("the certificate request's key type is not one we sign")]
    UnsupportedKey,
}

/// The DER SubjectPublicKeyInfo of a PEM CSR whose signature verifies.
pub fn verified_public_key(pem: &[u8]) -> Result<Vec<u8>, CsrError> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem).map_err(|_| CsrError::NotPem)?;
    verified_public_key_der(der.as_ref())
}

fn verified_public_key_der(der: &[u8]) -> Result<Vec<u8>, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Unparsable)?;
    if !rest.is_empty() {
        return Err(CsrError::Unparsable);
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let spki = csr.certification_request_info.subject_pki.raw;
    // The key must be one rcgen can put in a certificate.
    rcgen::SubjectPublicKeyInfo::from_der(spki).map_err(|_| CsrError::UnsupportedKey)?;
    Ok(spki.to_vec())
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, PublicKeyData};

    use super::*;

    fn csr_pem(key: &KeyPair, names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        CertificateParams::new(names)
            .unwrap()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn a_signed_request_gives_its_key() {
        let key = KeyPair::generate().unwrap();
        let spki = verified_public_key(csr_pem(&key, &["portico-1"]).as_bytes()).unwrap();
        assert_eq!(spki, key.subject_public_key_info());
    }

    #[test]
    fn a_request_whose_signature_does_not_verify_is_refused() {
        let key = KeyPair::generate().unwrap();
        let pem = csr_pem(&key, &["portico-0"]);
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut der = der.as_ref().to_vec();
        assert!(verified_public_key_der(&der).is_ok());
        // The last byte is the signature's.
        *der.last_mut().unwrap() ^= 0x01;
        assert_eq!(verified_public_key_der(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(verified_public_key(b"hello"), Err(CsrError::NotPem));
        assert_eq!(
            verified_public_key_der(b"\x30\x03\x02\x01\x00"),
            Err(CsrError::Unparsable)
        );
    }
}
