//! Certificates: a CA that signs replica (mTLS) and demo (Ingress TLS) certificates.
//!
//! Nothing here is hard-coded: every key is generated with the OS CSPRNG (ring, through
//! rcgen) and written with mode 0600. Keys are never logged.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
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
        self.sign_with(common_name, names, None)
    }

    /// Like [`Ca::sign`], valid from an hour ago (clock skew between nodes) for `lifetime`.
    pub fn sign_for(
        &self,
        common_name: &str,
        names: &[String],
        lifetime: std::time::Duration,
    ) -> anyhow::Result<Leaf> {
        self.sign_with(common_name, names, Some(lifetime))
    }

    fn sign_with(
        &self,
        common_name: &str,
        names: &[String],
        lifetime: Option<std::time::Duration>,
    ) -> anyhow::Result<Leaf> {
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
        match lifetime {
            None => {
                params.not_before = rcgen::date_time_ymd(2025, 1, 1);
                params.not_after = rcgen::date_time_ymd(2044, 1, 1);
            }
            Some(lifetime) => {
                let since_epoch = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("the clock is before 1970")?;
                let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
                let skew = std::time::Duration::from_secs(3600);
                params.not_before = now - skew;
                params.not_after = now + lifetime;
            }
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
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
}
