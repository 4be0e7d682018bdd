//! The replica's side of the Raft certificate issuer (`portico pki serve`): this replica's
//! mTLS certificate is short-lived and renewed while it runs, and no CA key is ever here.
//!
//! The replica makes its own key (it never leaves the process but to its own volume), sends a
//! CSR with its projected ServiceAccount token (read anew for every request: the kubelet
//! rotates it) to `POST <issuer>/v1/raft-certificate` over HTTPS whose only root is the
//! cluster CA, and takes the certificate back only once it chains to that CA, is valid now,
//! names this replica's advertised host and fits the key. The issuer decides the names from
//! the verified Pod, so a replica can only ever get its own.
//!
//! At start a stored certificate with more than a third of its life left is used; otherwise
//! one is requested before Raft starts, retrying until one comes. Then it is renewed when two
//! thirds of its life have passed, retried with backoff until it expires (ERROR logs and
//! `portico_raft_certificate_expiring 1` in its last tenth), and handed to Raft at once.
//!
//! On disk the pair is one file, `DATA_DIR/tls/issued.pem` (certificate then key, mode 0600),
//! replaced by one atomic rename: a crash leaves the old pair or the new one, never a
//! certificate with another key. A file that is unreadable, mismatched or for another name
//! or CA is not used: a new certificate is requested.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use portico_raft::TlsMaterial;
use portico_raft::backoff::Backoff;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Where the kubelet puts the projected token (deploy/base/statefulset.yaml).
pub const DEFAULT_TOKEN: &str = "/var/run/secrets/portico/raft-pki/token";
/// The issued pair, in `DATA_DIR/tls/`.
pub const FILE: &str = "issued.pem";
/// Longest wait for one request to the issuer, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer read from the issuer (a certificate is about 1 KiB).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct IssuerArgs {
    /// Base URL of the Raft certificate issuer (`portico pki serve`), e.g.
    /// `https://portico-pki.portico-system.svc:9445`. This replica then gets its short-lived
    /// Raft certificate there (trusting only --raft-ca for it) and renews it while it runs;
    /// no --raft-cert or --raft-ca-key.
    #[arg(
        long = "raft-cert-issuer",
        env = "PORTICO_RAFT_CERT_ISSUER",
        conflicts_with_all = ["raft_cert", "raft_ca_key"]
    )]
    pub issuer: Option<String>,
    /// The projected ServiceAccount token (audience portico-raft-pki) that proves to the
    /// issuer which Pod this is; read again for every request.
    #[arg(long = "raft-cert-token", env = "PORTICO_RAFT_CERT_TOKEN", default_value = DEFAULT_TOKEN)]
    pub token: PathBuf,
}

/// Why a certificate could not be had from the issuer this time.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("reading the ServiceAccount token {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the ServiceAccount token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("making this replica's key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("reaching the issuer: {0}")]
    Unreachable(String),
    #[error("the issuer refused ({status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("the issuer's certificate is not usable: {0}")]
    Unusable(#[from] Unusable),
}

/// Why a certificate (from the issuer or the disk) is not used.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("no certificate in it")]
    NoCertificate,
    #[error("no private key in it")]
    NoKey,
    #[error("does not parse: {0}")]
    Parse(String),
    #[error("not valid for this replica under the cluster CA: {0}")]
    Verify(#[source] rustls::Error),
    #[error("not usable as a TLS client certificate (no clientAuth extended key usage)")]
    NotClientAuth,
    #[error("the private key is not the certificate's: {0}")]
    KeyMismatch(#[source] rustls::Error),
}

/// A certificate and its key, checked, with the dates that schedule its renewal.
#[derive(Clone)]
struct Issued {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// Where its life starts as renewal counts it: notBefore, or when it arrived if later
    /// (issuers backdate notBefore for clock skew; counting from there could make a short
    /// certificate due for renewal the moment it arrives).
    since: i64,
    not_after: i64,
    serial: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Issued {
    fn lifetime(&self) -> i64 {
        (self.not_after - self.since).max(1)
    }

    /// When two thirds of its life have passed.
    fn renew_at(&self) -> i64 {
        self.since + self.lifetime() * 2 / 3
    }

    /// Whether more than a third of its life is left at `now`.
    fn fresh_at(&self, now: i64) -> bool {
        now < self.renew_at()
    }

    /// Whether `now` is in the last tenth of its life.
    fn expiring_at(&self, now: i64) -> bool {
        self.not_after - now < self.lifetime() / 10
    }

    /// The file: certificate, then key.
    fn file_contents(&self) -> Vec<u8> {
        let mut contents = self.cert_pem.clone();
        if !contents.ends_with(b"\n") {
            contents.push(b'\n');
        }
        contents.extend_from_slice(&self.key_pem);
        contents
    }
}

/// What checks a certificate for this replica: the cluster CA and the advertised host.
struct Checker {
    provider: Arc<CryptoProvider>,
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
    host: ServerName<'static>,
}

impl Checker {
    fn new(ca_pem: &[u8], host: &str) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(ca?)?;
        }
        anyhow::ensure!(!roots.is_empty(), "no certificate in the Raft CA file");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let host = ServerName::try_from(host.to_owned())?;
        Ok(Self {
            provider,
            verifier,
            host,
        })
    }

    /// `cert_pem` with `key_pem`, if it chains to the CA, is valid now, names this replica,
    /// serves as client and server, and is the key's.
    fn check(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Issued, Unusable> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Unusable::Parse(e.to_string()))?;
        let leaf = chain.first().ok_or(Unusable::NoCertificate)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| Unusable::NoKey)?;
        self.verifier
            .verify_server_cert(leaf, &chain[1..], &self.host, &[], UnixTime::now())
            .map_err(Unusable::Verify)?;
        let (_, parsed) =
            X509Certificate::from_der(leaf).map_err(|e| Unusable::Parse(e.to_string()))?;
        let client_auth = parsed
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|eku| eku.value.client_auth);
        if !client_auth {
            return Err(Unusable::NotClientAuth);
        }
        CertifiedKey::from_der(chain.clone(), key, &self.provider)
            .map_err(Unusable::KeyMismatch)?;
        let validity = parsed.validity();
        Ok(Issued {
            cert_pem: cert_pem.to_vec(),
            key_pem: key_pem.to_vec(),
            since: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            serial: parsed.raw_serial_as_string(),
        })
    }

    /// The pair stored in `contents` (certificate PEM, then key PEM, in one file).
    fn check_file(&self, contents: &[u8]) -> Result<Issued, Unusable> {
        let text = std::str::from_utf8(contents).map_err(|e| Unusable::Parse(e.to_string()))?;
        let key_at = text
            .match_indices("-----BEGIN ")
            .map(|(at, _)| at)
            .find(|&at| {
                text[at..]
                    .lines()
                    .next()
                    .is_some_and(|l| l.contains("PRIVATE KEY"))
            })
            .ok_or(Unusable::NoKey)?;
        self.check(&contents[..key_at], &contents[key_at..])
    }
}

/// The issuer's address and how to reach it.
struct Client {
    url: String,
    host: String,
    port: u16,
    authority: String,
    path: String,
    token: PathBuf,
    connector: tokio_rustls::TlsConnector,
}

impl Client {
    fn new(args: &IssuerArgs, url: &str, ca_pem: &[u8]) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--raft-cert-issuer {url:?}: {e}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("https"),
            "--raft-cert-issuer {url:?}: only https is allowed"
        );
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("--raft-cert-issuer {url:?} names no host"))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let path = format!("{}/v1/raft-certificate", uri.path().trim_end_matches('/'));
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(ca?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            url: url.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            authority: authority.to_string(),
            host,
            path,
            token: args.token.clone(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    fn token(&self) -> Result<String, RequestError> {
        let token = std::fs::read_to_string(&self.token).map_err(|source| RequestError::Token {
            path: self.token.clone(),
            source,
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(RequestError::EmptyToken(self.token.clone()));
        }
        Ok(token.to_owned())
    }

    /// One request: a fresh key, its CSR, the certificate checked with `checker`.
    async fn request(&self, checker: &Checker) -> Result<Issued, RequestError> {
        let token = self.token()?;
        let key = rcgen::KeyPair::generate()?;
        // The issuer ignores what a CSR asks for; it names the Pod it verified.
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
            .serialize_request(&key)?
            .pem()?;
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, self.post(csr, &token))
            .await
            .map_err(|_| {
                RequestError::Unreachable(format!("no answer within {REQUEST_TIMEOUT:?}"))
            })??;
        if status != http::StatusCode::OK {
            return Err(RequestError::Refused {
                status: status.as_u16(),
                reason: reason(&body),
            });
        }
        let mut issued = checker.check(&body, key.serialize_pem().as_bytes())?;
        issued.since = issued.since.max(now());
        Ok(issued)
    }

    async fn post(
        &self,
        csr: String,
        token: &str,
    ) -> Result<(http::StatusCode, Bytes), RequestError> {
        let unreachable =
            |what: &str, e: String| RequestError::Unreachable(format!("{what} {}: {e}", self.url));
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| unreachable("server name of", e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable("connecting to", e.to_string()))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable("TLS handshake with", e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable("HTTP with", e.to_string()))?;
        let connection = tokio::spawn(connection);
        let request = http::Request::post(&self.path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/pkcs10")
            .body(Full::new(Bytes::from(csr)))
            .map_err(|e| unreachable("building the request to", e.to_string()))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable("request to", e.to_string()))?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unreachable("reading the answer of", e.to_string()))?
            .to_bytes();
        connection.abort();
        Ok((status, body))
    }
}

/// The `reason` of the issuer's JSON error, else the body's first 200 characters.
fn reason(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Refusal {
        reason: String,
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(refusal) => refusal.reason,
        Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
    }
}

/// What /metrics says about the certificate.
#[derive(Clone, Default)]
struct Metrics {
    expiry: Gauge,
    expiring: Gauge,
    failures: Counter,
}

/// This replica's certificate from the issuer, kept renewed.
pub struct Renewal {
    client: Client,
    checker: Checker,
    file: PathBuf,
    current: Issued,
    metrics: Metrics,
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("issuer", &self.client.url)
            .field("serial", &self.current.serial)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Renewal {
    /// With --raft-cert-issuer: this replica's certificate, from `tls_dir` when the one stored
    /// there is good for more than a third of its life, else from the issuer (retrying until
    /// it gives one). `host` is the advertised host the certificate must name.
    pub async fn start(
        args: &IssuerArgs,
        ca_pem: &[u8],
        tls_dir: &Path,
        host: &str,
    ) -> anyhow::Result<Option<Self>> {
        let Some(url) = &args.issuer else {
            return Ok(None);
        };
        let client = Client::new(args, url, ca_pem)?;
        let checker = Checker::new(ca_pem, host)?;
        std::fs::create_dir_all(tls_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", tls_dir.display()))?;
        let file = tls_dir.join(FILE);
        let stored = match std::fs::read(&file) {
            Ok(contents) => match checker.check_file(&contents) {
                Ok(issued) if issued.fresh_at(now()) => Some(issued),
                Ok(issued) => {
                    tracing::info!(serial = %issued.serial, not_after = issued.not_after, "the stored Raft certificate is past two thirds of its life; requesting a new one");
                    None
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "not using the stored Raft certificate; requesting a new one");
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the stored Raft certificate; requesting a new one");
                None
            }
        };
        let renewal = Self {
            metrics: Metrics::default(),
            current: match stored {
                Some(issued) => {
                    tracing::info!(serial = %issued.serial, not_after = issued.not_after, "using the stored Raft certificate");
                    issued
                }
                None => Self::first(&client, &checker).await,
            },
            client,
            checker,
            file,
        };
        renewal.persist();
        renewal.published();
        Ok(Some(renewal))
    }

    /// Asks until the issuer gives a certificate (Raft cannot start without one).
    async fn first(client: &Client, checker: &Checker) -> Issued {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            match client.request(checker).await {
                Ok(issued) => {
                    tracing::info!(issuer = %client.url, serial = %issued.serial, not_after = issued.not_after, "got this replica's Raft certificate from the issuer");
                    return issued;
                }
                Err(e) => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(issuer = %client.url, error = %e, ?retry_in, "no Raft certificate from the issuer yet; Raft waits for one");
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    }

    /// The material Raft starts with.
    pub fn material(&self, ca_pem: &[u8]) -> TlsMaterial {
        TlsMaterial {
            ca_pem: ca_pem.to_vec(),
            cert_pem: self.current.cert_pem.clone(),
            key_pem: self.current.key_pem.clone(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portico_raft_certificate_expiry_timestamp_seconds",
            "notAfter of the Raft certificate in use, in seconds since the epoch",
            self.metrics.expiry.clone(),
        );
        registry.register(
            "portico_raft_certificate_expiring",
            "1 when the Raft certificate is in the last tenth of its life and not yet renewed",
            self.metrics.expiring.clone(),
        );
        registry.register(
            "portico_raft_certificate_renewal_failures",
            "Requests to the Raft certificate issuer that gave no usable certificate",
            self.metrics.failures.clone(),
        );
    }

    /// Writes the current pair to the volume (one file, one rename). A failure is logged:
    /// the pair in memory is good, and the next start asks the issuer again.
    fn persist(&self) {
        if std::fs::read(&self.file).is_ok_and(|c| c == self.current.file_contents()) {
            return;
        }
        if let Err(e) = crate::pki::write_private(&self.file, &self.current.file_contents()) {
            tracing::error!(file = %self.file.display(), error = %format!("{e:#}"), "cannot store the renewed Raft certificate; it is used, and requested anew at the next start");
        }
    }

    fn published(&self) {
        self.metrics.expiry.set(self.current.not_after);
        self.metrics
            .expiring
            .set(self.current.expiring_at(now()) as i64);
    }

    /// Renews at two thirds of each certificate's life until `stop`, handing every new pair
    /// to `replace` (Raft's, for the next handshakes) at once.
    pub async fn keep_renewed<E: std::fmt::Display>(
        mut self,
        stop: CancellationToken,
        replace: impl Fn(&[u8], &[u8]) -> Result<(), E>,
    ) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            // Sleep in steps of at most a minute, so a wall-clock jump (a suspended VM)
            // delays the renewal by at most that.
            let wait = self.current.renew_at() - now();
            if wait > 0 {
                let step = Duration::from_secs(wait.min(60) as u64);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(step) => continue,
                }
            }
            let outcome = self.client.request(&self.checker).await;
            let failed = match outcome {
                Ok(issued) => match replace(&issued.cert_pem, &issued.key_pem) {
                    Ok(()) => {
                        tracing::info!(serial = %issued.serial, not_after = issued.not_after, previous_serial = %self.current.serial, "renewed this replica's Raft certificate");
                        self.current = issued;
                        self.persist();
                        self.published();
                        backoff.reset();
                        continue;
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            self.metrics.failures.inc();
            let now = now();
            // Until it expires the old certificate still serves; then still keep trying, so
            // the replica rejoins as soon as the issuer answers.
            // Often enough to renew in time, but no faster than the backoff once expired.
            let left = Duration::from_secs((self.current.not_after - now).max(0) as u64);
            let delay = backoff.next_delay();
            let retry_in = if left.is_zero() {
                delay
            } else {
                delay.min((left / 10).max(Duration::from_secs(1)))
            };
            if self.current.expiring_at(now) {
                self.metrics.expiring.set(1);
                tracing::error!(issuer = %self.client.url, error = %failed, serial = %self.current.serial, not_after = self.current.not_after, ?retry_in, "the Raft certificate is about to expire and could not be renewed");
            } else {
                tracing::warn!(issuer = %self.client.url, error = %failed, serial = %self.current.serial, not_after = self.current.not_after, ?retry_in, "could not renew the Raft certificate; keeping the current one");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(retry_in) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::service_fn;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
        ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::*;

    const HOST: &str = "portico-0.portico-peers.portico-system.svc.cluster.local";

    fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        (Issuer::new(params, key), pem)
    }

    /// Leaf parameters for `names` (client and server), valid from `from` to `to` seconds
    /// from now.
    fn leaf_params(names: &[&str], from: i64, to: i64) -> CertificateParams {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let at = |offset: i64| {
            rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs((now() + offset) as u64)
        };
        params.not_before = at(from);
        params.not_after = at(to);
        params
    }

    /// What the test issuer answers.
    #[derive(Clone)]
    enum Answer {
        /// Signs the CSR's key for these names, valid for this many seconds (and from a
        /// second ago).
        Sign(Vec<&'static str>, i64),
        /// The same, valid from this many seconds ago (a large clock-skew margin).
        Backdated(Vec<&'static str>, i64, i64),
        Refuse(u16, &'static str),
    }

    /// The CSR's key certified by `ca` for `names`, from `ago` seconds ago for `lifetime`.
    fn sign(
        ca: &Issuer<'static, KeyPair>,
        csr: &[u8],
        names: &[&str],
        ago: i64,
        lifetime: i64,
    ) -> String {
        let mut csr =
            CertificateSigningRequestParams::from_pem(std::str::from_utf8(csr).unwrap()).unwrap();
        csr.params = leaf_params(names, -ago, lifetime);
        csr.signed_by(ca).unwrap().pem()
    }

    /// A tiny issuer speaking the protocol over HTTPS with a certificate from `ca`.
    struct TestIssuer {
        url: String,
        answer: Arc<Mutex<Answer>>,
        requests: Arc<AtomicUsize>,
        token: Arc<Mutex<String>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestIssuer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn issuer(ca: Arc<Issuer<'static, KeyPair>>, answer: Answer) -> TestIssuer {
        let serving_key = KeyPair::generate().unwrap();
        let serving = leaf_params(&["127.0.0.1"], -60, 3600)
            .signed_by(&serving_key, &*ca)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![serving.der().clone()],
            PrivateKeyDer::from_pem_slice(serving_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(AtomicUsize::new(0));
        let token = Arc::new(Mutex::new("token-1".to_owned()));
        let task = {
            let (answer, requests, token) = (answer.clone(), requests.clone(), token.clone());
            tokio::spawn(async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        continue;
                    };
                    let (ca, answer, requests, token) =
                        (ca.clone(), answer.clone(), requests.clone(), token.clone());
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let (ca, answer, requests, token) =
                                (ca.clone(), answer.clone(), requests.clone(), token.clone());
                            async move {
                                requests.fetch_add(1, Ordering::SeqCst);
                                let bearer = format!("Bearer {}", token.lock().unwrap());
                                let authorized =
                                    request.headers()[http::header::AUTHORIZATION] == bearer;
                                let pkcs10 = request.headers()[http::header::CONTENT_TYPE]
                                    == "application/pkcs10";
                                let path = request.uri().path() == "/v1/raft-certificate";
                                let csr = request.into_body().collect().await.unwrap().to_bytes();
                                let answer = answer.lock().unwrap().clone();
                                let (status, body) = match answer {
                                    _ if !authorized => {
                                        (401, r#"{"reason":"token not accepted"}"#.to_owned())
                                    }
                                    _ if !(pkcs10 && path) => {
                                        (400, r#"{"reason":"bad request"}"#.to_owned())
                                    }
                                    Answer::Refuse(status, reason) => {
                                        (status, format!(r#"{{"reason":"{reason}"}}"#))
                                    }
                                    Answer::Sign(names, lifetime) => {
                                        (200, sign(&ca, &csr, &names, 1, lifetime))
                                    }
                                    Answer::Backdated(names, lifetime, ago) => {
                                        (200, sign(&ca, &csr, &names, ago, lifetime))
                                    }
                                };
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service),
                    );
                }
            })
        };
        TestIssuer {
            url,
            answer,
            requests,
            token,
            task,
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
        ca_pem: String,
        ca: Arc<Issuer<'static, KeyPair>>,
        args: IssuerArgs,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_pem) = ca("raft-ca");
        let token = dir.path().join("token");
        std::fs::write(&token, "token-1\n").unwrap();
        Setup {
            dir,
            ca_pem,
            ca: Arc::new(ca),
            args: IssuerArgs {
                issuer: None,
                token,
            },
        }
    }

    impl Setup {
        async fn start(&self, issuer: &TestIssuer) -> Renewal {
            let args = IssuerArgs {
                issuer: Some(issuer.url.clone()),
                ..self.args.clone()
            };
            let tls_dir = self.dir.path().join("tls");
            let start = Renewal::start(&args, self.ca_pem.as_bytes(), &tls_dir, HOST);
            tokio::time::timeout(Duration::from_secs(30), start)
                .await
                .expect("a certificate within 30 s")
                .unwrap()
                .unwrap()
        }

        fn file(&self) -> PathBuf {
            self.dir.path().join("tls").join(FILE)
        }
    }

    #[tokio::test]
    async fn without_an_issuer_nothing_is_requested() {
        let s = setup();
        let none = Renewal::start(&s.args, s.ca_pem.as_bytes(), s.dir.path(), HOST).await;
        assert!(none.unwrap().is_none());
        assert!(!s.dir.path().join(FILE).exists());
    }

    #[tokio::test]
    async fn a_certificate_is_requested_stored_0600_and_reused_while_fresh() {
        let s = setup();
        let issuer = issuer(s.ca.clone(), Answer::Sign(vec![HOST, "portico-0"], 600)).await;
        let first = s.start(&issuer).await;
        assert_eq!(issuer.requests.load(Ordering::SeqCst), 1);
        let material = first.material(s.ca_pem.as_bytes());
        let stored = std::fs::read(s.file()).unwrap();
        assert!(stored.starts_with(&material.cert_pem));
        assert!(stored.ends_with(&material.key_pem));
        let mode = std::fs::metadata(s.file()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // A restart within the first two thirds of its life: the stored pair, no request.
        let again = s.start(&issuer).await;
        assert_eq!(issuer.requests.load(Ordering::SeqCst), 1);
        assert_eq!(again.current.serial, first.current.serial);
        assert_eq!(again.material(b"").key_pem, material.key_pem);
    }

    #[tokio::test]
    async fn a_stored_pair_past_two_thirds_mismatched_or_from_another_ca_is_replaced() {
        let s = setup();
        let issuer = issuer(s.ca.clone(), Answer::Sign(vec![HOST], 600)).await;
        let signed = |ca: &Issuer<'static, KeyPair>, from: i64, to: i64| {
            let key = KeyPair::generate().unwrap();
            let cert = leaf_params(&[HOST], from, to).signed_by(&key, ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (other_ca, _) = ca("another CA");
        let (cert, key) = signed(&s.ca, -500, 100);
        let (_, other_key) = signed(&s.ca, -1, 600);
        let (foreign, foreign_key) = signed(&other_ca, -1, 600);
        let cases = [
            ("past two thirds of its life", format!("{cert}{key}")),
            // A crash between writing a certificate and its key, were they two files.
            (
                "a key that is not the certificate's",
                format!("{cert}{other_key}"),
            ),
            ("another CA's", format!("{foreign}{foreign_key}")),
            ("no key", cert.clone()),
            ("garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n".to_owned()),
        ];
        for (n, (case, contents)) in cases.into_iter().enumerate() {
            std::fs::create_dir_all(s.file().parent().unwrap()).unwrap();
            std::fs::write(s.file(), &contents).unwrap();
            let renewal = s.start(&issuer).await;
            assert_eq!(issuer.requests.load(Ordering::SeqCst), n + 1, "{case}");
            assert_ne!(
                std::fs::read_to_string(s.file()).unwrap(),
                contents,
                "{case}"
            );
            assert!(renewal.current.fresh_at(now()), "{case}");
        }
    }

    #[tokio::test]
    async fn refusals_and_unusable_certificates_are_errors_naming_why() {
        let s = setup();
        let client_for =
            |issuer: &TestIssuer| Client::new(&s.args, &issuer.url, s.ca_pem.as_bytes()).unwrap();
        let checker = Checker::new(s.ca_pem.as_bytes(), HOST).unwrap();
        let refusing = issuer(
            s.ca.clone(),
            Answer::Refuse(403, "the Pod is not owned by the StatefulSet portico"),
        )
        .await;
        match client_for(&refusing).request(&checker).await {
            Err(RequestError::Refused {
                status: 403,
                reason,
            }) => {
                assert_eq!(reason, "the Pod is not owned by the StatefulSet portico")
            }
            other => panic!("{other:?}"),
        }
        // Another replica's name: not for us, never used.
        let wrong_name = issuer(
            s.ca.clone(),
            Answer::Sign(
                vec!["portico-1.portico-peers.portico-system.svc.cluster.local"],
                600,
            ),
        )
        .await;
        let err = client_for(&wrong_name).request(&checker).await.unwrap_err();
        assert!(
            matches!(err, RequestError::Unusable(Unusable::Verify(_))),
            "{err:?}"
        );
        // An issuer whose certificate is not the cluster CA's is not even talked to.
        let (other_ca, _) = ca("another CA");
        let impostor = issuer(Arc::new(other_ca), Answer::Sign(vec![HOST], 600)).await;
        let err = client_for(&impostor).request(&checker).await.unwrap_err();
        assert!(matches!(err, RequestError::Unreachable(_)), "{err:?}");
        assert_eq!(impostor.requests.load(Ordering::SeqCst), 0);
        // Plain HTTP is refused at start.
        assert!(Client::new(&s.args, "http://127.0.0.1:1", s.ca_pem.as_bytes()).is_err());
    }

    /// A replica that is refused at start keeps asking (Raft waits), and gets one once the
    /// issuer agrees.
    #[tokio::test]
    async fn the_first_certificate_is_retried_until_the_issuer_gives_one() {
        let s = setup();
        let issuer = issuer(
            s.ca.clone(),
            Answer::Refuse(503, "the API server cannot be asked"),
        )
        .await;
        let answer = issuer.answer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            *answer.lock().unwrap() = Answer::Sign(vec![HOST], 600);
        });
        let renewal = s.start(&issuer).await;
        assert!(issuer.requests.load(Ordering::SeqCst) >= 2);
        assert!(renewal.current.fresh_at(now()));
    }

    /// Renewal at two thirds of the life, each new pair handed over and stored; an issuer
    /// that refuses meanwhile leaves the current pair in use, counted, until it agrees again
    /// (before expiry); the token is read anew for each request.
    #[tokio::test]
    async fn renewals_are_handed_over_at_once_and_an_outage_is_ridden_out() {
        let s = setup();
        let issuer = issuer(s.ca.clone(), Answer::Sign(vec![HOST], 20)).await;
        let renewal = s.start(&issuer).await;
        let mut registry = Registry::default();
        renewal.register(&mut registry);
        let failures = renewal.metrics.failures.clone();
        let first_serial = renewal.current.serial.clone();
        let (handed, mut handed_rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(renewal.keep_renewed(
            stop.clone(),
            move |cert: &[u8], key: &[u8]| {
                handed.send((cert.to_vec(), key.to_vec())).unwrap();
                Ok::<(), String>(())
            },
        ));
        let checker = Checker::new(s.ca_pem.as_bytes(), HOST).unwrap();
        // Lifetime 20 s from its arrival: renewed about 13 s in.
        let (cert, key) = tokio::time::timeout(Duration::from_secs(25), handed_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let second = checker.check(&cert, &key).unwrap();
        assert_ne!(second.serial, first_serial);
        assert_eq!(std::fs::read(s.file()).unwrap(), second.file_contents());

        // The issuer down (refusing) at the next renewal; a new token meanwhile.
        *issuer.answer.lock().unwrap() = Answer::Refuse(503, "the API server cannot be asked");
        *issuer.token.lock().unwrap() = "token-2".to_owned();
        std::fs::write(&s.args.token, "token-2").unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(25), async {
            while failures.get() < 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        waited.await.expect("failed renewals are counted");
        assert!(
            handed_rx.try_recv().is_err(),
            "nothing handed over while refused"
        );
        assert_eq!(std::fs::read(s.file()).unwrap(), second.file_contents());
        let mut metrics = String::new();
        prometheus_client::encoding::text::encode(&mut metrics, &registry).unwrap();
        assert!(
            metrics.contains(&format!(
                "portico_raft_certificate_expiry_timestamp_seconds {}",
                second.not_after
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains("portico_raft_certificate_renewal_failures_total"),
            "{metrics}"
        );

        // Back before the certificate expires: renewed.
        *issuer.answer.lock().unwrap() = Answer::Sign(vec![HOST], 20);
        let (cert, key) = tokio::time::timeout(Duration::from_secs(15), handed_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let third = checker.check(&cert, &key).unwrap();
        assert!(
            now() < second.not_after,
            "renewed before the old one expired"
        );
        assert_ne!(third.serial, second.serial);
        stop.cancel();
        task.await.unwrap();
    }

    /// An issuer that backdates notBefore by an hour (clock skew) and signs for a minute:
    /// the life counts from the certificate's arrival, so it is not due for renewal at once
    /// (no request loop).
    #[tokio::test]
    async fn a_backdated_certificate_is_renewed_at_two_thirds_from_its_arrival() {
        let s = setup();
        let issuer = issuer(s.ca.clone(), Answer::Backdated(vec![HOST], 60, 3600)).await;
        let renewal = s.start(&issuer).await;
        let arrived = now();
        assert!(
            renewal.current.renew_at() >= arrived + 39,
            "{:?}",
            renewal.current
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            renewal.keep_renewed(stop.clone(), |_: &[u8], _: &[u8]| Ok::<(), String>(())),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(issuer.requests.load(Ordering::SeqCst), 1, "renewed at once");
        stop.cancel();
        task.await.unwrap();
    }
}
