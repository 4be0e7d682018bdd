//! One test PKI: a CA made with rcgen that issues leaf certificates for given names.
//!
//! Every crate's tests needed the same few things: a CA whose certificate a client trusts,
//! server and client certificates for `localhost`/`127.0.0.1` or an Ingress host, the CA's
//! key on disk for `portico run` to sign its own replica certificate, and now and then a
//! certificate that is expired or has a common name that is not among its names.
//! Keys are generated per CA and per leaf (ECDSA P-256, rcgen's default): nothing here is
//! fixed or protects anything.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};

/// A test certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, with the CA that signed it, all as PEM.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a leaf certificate says: its names (DNS names or IP addresses, as SANs), its common
/// name (the first name unless set) and, if set, its validity in whole years.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    names: Vec<String>,
    common_name: Option<String>,
    valid_years: Option<(i32, i32)>,
}

impl LeafSpec {
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        Self {
            names: names.iter().map(|n| n.as_ref().to_owned()).collect(),
            common_name: None,
            valid_years: None,
        }
    }

    pub fn common_name(mut self, name: &str) -> Self {
        self.common_name = Some(name.to_owned());
        self
    }

    /// Valid from 1 January `from` to 1 January `to` (a past range makes an expired one).
    pub fn valid_years(mut self, from: i32, to: i32) -> Self {
        self.valid_years = Some((from, to));
        self
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::new(self.names.clone()).expect("valid test names");
        if let Some(cn) = self.common_name.as_ref().or(self.names.first()) {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        if let Some((from, to)) = self.valid_years {
            params.not_before = date_time_ymd(from, 1, 1);
            params.not_after = date_time_ymd(to, 1, 1);
        }
        params
    }
}

impl TestCa {
    /// A new CA with its own key and the given common name.
    pub fn new(common_name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().expect("rcgen key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        Self { issuer }
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA's certificate and key written to `dir` as `ca.crt` and `ca.key`.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        std::fs::write(&cert, self.cert_pem()).expect("writing ca.crt");
        std::fs::write(&key, self.key_pem()).expect("writing ca.key");
        (cert, key)
    }

    /// A leaf for `names` (its common name the first of them), usable by servers and clients.
    pub fn leaf<S: AsRef<str>>(&self, names: &[S]) -> Leaf {
        self.issue(&LeafSpec::new(names))
    }

    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        let key = KeyPair::generate().expect("rcgen key");
        let cert = spec
            .params()
            .signed_by(&key, &self.issuer)
            .expect("signing a test leaf");
        Leaf {
            ca_pem: self.cert_pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A self-signed certificate (its own CA), for a Secret that only has to hold a valid pair.
pub fn self_signed(spec: &LeafSpec) -> Leaf {
    let key = KeyPair::generate().expect("rcgen key");
    let cert = spec.params().self_signed(&key).expect("self-signed leaf");
    Leaf {
        ca_pem: cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::pem::parse_x509_pem;

    fn parsed(pem: &str, check: impl FnOnce(&x509_parser::certificate::X509Certificate)) {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
        check(&pem.parse_x509().unwrap());
    }

    #[test]
    fn a_leaf_is_signed_by_its_ca_for_the_names_asked() {
        let ca = TestCa::new("test CA");
        let leaf = ca.issue(&LeafSpec::new(&["localhost", "127.0.0.1"]).common_name("node-1"));
        assert_eq!(leaf.ca_pem, ca.cert_pem());
        let (_, ca_pem) = parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        assert!(ca_cert.is_ca());
        parsed(&leaf.cert_pem, |cert| {
            assert_eq!(cert.issuer(), ca_cert.subject());
            let cn = cert.subject().iter_common_name().next().unwrap();
            assert_eq!(cn.as_str().unwrap(), "node-1");
            let sans = cert.subject_alternative_name().unwrap().unwrap();
            assert_eq!(sans.value.general_names.len(), 2);
            assert!(cert.validity().is_valid());
        });
    }

    #[test]
    fn validity_years_make_an_expired_certificate() {
        let leaf = self_signed(&LeafSpec::new(&["old.example"]).valid_years(2000, 2001));
        assert_eq!(leaf.ca_pem, leaf.cert_pem);
        parsed(&leaf.cert_pem, |cert| assert!(!cert.validity().is_valid()));
    }

    #[test]
    fn the_ca_is_written_for_a_child_to_sign_with() {
        let dir = std::env::temp_dir().join(format!("portico-test-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("written");
        let (cert, key) = ca.write(&dir);
        assert_eq!(std::fs::read_to_string(cert).unwrap(), ca.cert_pem());
        let key = std::fs::read_to_string(key).unwrap();
        assert!(KeyPair::from_pem(&key).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
