//! Certificates: a CA that signs replica (mTLS) and demo (Ingress TLS) certificates, and
//! certificates for keys a replica made itself (`portico pki serve`).
//!
//! Nothing here is hard-coded: every key is generated with the OS CSPRNG (ring, through
//! rcgen) and written with mode 0600. Keys are never logged.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber, SubjectPublicKeyInfo,
};

/// A certificate authority able to sign leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A leaf certificate and its private key, both PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf").finish_non_exhaustive()
    }
}

impl Ca {
    /// A fresh self-signed CA.
    pub fn generate(common_name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2045, 1, 1);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let cert_pem = issuer.pem();
        let key_pem = issuer.key().serialize_pem();
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// A CA from its certificate and private key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key =
            KeyPair::from_pem(key_pem).context("the CA private key is not a valid PEM key")?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .context("the CA certificate is not a valid PEM certificate")?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// Loads the CA from `cert` and `key`, creating both first when neither exists.
    pub fn load_or_create(cert: &Path, key: &Path, common_name: &str) -> anyhow::Result<Self> {
        if cert.exists() || key.exists() {
            let cert_pem = read_string(cert)?;
            let key_pem = read_string(key)?;
            return Self::from_pem(&cert_pem, &key_pem);
        }
        let ca = Self::generate(common_name)?;
        write_private(key, ca.issuer.key().serialize_pem().as_bytes())?;
        fs::write(cert, &ca.cert_pem).with_context(|| format!("writing {}", cert.display()))?;
        Ok(ca)
    }

    /// A leaf for `names` (DNS names or IP addresses), usable as TLS server and client,
    /// valid until 2044 (the local cluster's demo and first-boot certificates).
    pub fn sign(&self, common_name: &str, names: &[String]) -> anyhow::Result<Leaf> {
        let params = leaf_params(common_name, names, Validity::Fixed)?;
        self.sign_new_key(params)
    }

    /// Like [`Ca::sign`], valid from an hour ago (clock skew between nodes) for `lifetime`.
    pub fn sign_for(
        &self,
        common_name: &str,
        names: &[String],
        lifetime: Duration,
    ) -> anyhow::Result<Leaf> {
        let skew = Duration::from_secs(3600);
        let params = leaf_params(common_name, names, Validity::For { lifetime, skew })?;
        self.sign_new_key(params)
    }

    /// A leaf for the public key `spki_der` (a DER SubjectPublicKeyInfo, from a CSR whose
    /// signature was checked), naming `names` only, valid from `skew` ago for `lifetime`,
    /// with a random serial. What the key's holder asked for beyond its key is not used.
    pub fn sign_public_key(
        &self,
        common_name: &str,
        names: &[String],
        spki_der: &[u8],
        lifetime: Duration,
        skew: Duration,
    ) -> anyhow::Result<Issued> {
        let key = SubjectPublicKeyInfo::from_der(spki_der)
            .context("the public key's algorithm is not one we sign")?;
        let mut params = leaf_params(common_name, names, Validity::For { lifetime, skew })?;
        let mut serial = [0u8; 16];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut serial)
            .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        // Positive and non-zero, as RFC 5280 asks of a serial.
        serial[0] = (serial[0] & 0x7f) | 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let not_after = params.not_after.to_string();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
            not_after,
        })
    }

    fn sign_new_key(&self, params: CertificateParams) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A certificate signed for a key someone else holds.
#[derive(Debug)]
pub struct Issued {
    pub cert_pem: String,
    /// The serial number, lower-case hex.
    pub serial: String,
    /// The end of its validity, for logs.
    pub not_after: String,
}

enum Validity {
    /// 2025 to 2044.
    Fixed,
    /// From `skew` ago to `lifetime` from now.
    For { lifetime: Duration, skew: Duration },
}

/// A leaf's parameters: `names` as SANs, usable as TLS server and client.
fn leaf_params(
    common_name: &str,
    names: &[String],
    validity: Validity,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    match validity {
        Validity::Fixed => {
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
            params.not_after = rcgen::date_time_ymd(2044, 1, 1);
        }
        Validity::For { lifetime, skew } => {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?;
            let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
            params.not_before = now - skew;
            params.not_after = now + lifetime;
        }
    }
    Ok(params)
}

/// The names of a replica's Raft certificate: `POD.PEER_SERVICE.NAMESPACE.svc.DOMAIN` (when
/// there is a peer Service) and `POD`. `portico pki issue` and `portico pki serve` both use
/// it, so a replica's identity is the same whichever signed it.
pub fn replica_names(
    pod: &str,
    namespace: &str,
    peer_service: Option<&str>,
    cluster_domain: &str,
) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(peers) = peer_service {
        names.push(format!("{pod}.{peers}.{namespace}.svc.{cluster_domain}"));
    }
    names.push(pod.to_owned());
    names
}

pub fn read_string(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes a certificate (world-readable) atomically: a temporary file, synced, renamed.
pub fn write_public(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_atomically(path, contents, 0o644)
}

/// Writes a private key readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_atomically(path, contents, 0o600)
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    // The rename itself survives a power loss only once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trips_through_pem_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let first = Ca::load_or_create(&cert, &key, "test").unwrap();
        let again = Ca::load_or_create(&cert, &key, "test").unwrap();
        assert_eq!(first.cert_pem, again.cert_pem);
        let leaf = again
            .sign("node", &["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{leaf:?}").contains("PRIVATE"));
        let mode = std::fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn a_public_key_is_signed_for_the_given_names_only_with_a_fresh_serial() {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

        let ca = Ca::generate("test").unwrap();
        let key = KeyPair::generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let names = replica_names("portico-0", "ns", Some("peers"), "cluster.local");
        let (lifetime, skew) = (Duration::from_secs(600), Duration::from_secs(60));
        let one = ca
            .sign_public_key("portico-0", &names, &spki, lifetime, skew)
            .unwrap();
        let two = ca
            .sign_public_key("portico-0", &names, &spki, lifetime, skew)
            .unwrap();
        assert_ne!(one.serial, two.serial);
        let der = CertificateDer::from_pem_slice(one.cert_pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.public_key().raw, spki.as_slice());
        assert_eq!(cert.raw_serial_as_string().replace(':', ""), one.serial);
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(dns) => dns.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, ["portico-0.peers.ns.svc.cluster.local", "portico-0"]);
        let validity = cert.validity();
        let span = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert_eq!(span, 660);
    }
}
