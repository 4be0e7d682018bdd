//! Issue 15 (review finding C1): `portico pki serve`, the Raft certificate issuer, against the
//! real kube-apiserver. The issuer runs as its own ServiceAccount `portico-pki` with exactly
//! the RBAC deploy/ ships for it ([`issuer_rbac`]); replicas are Pod objects `portico-N`
//! controlled by the StatefulSet `portico` (no controller makes them; they stay Pending), and
//! their tokens are what kubelet would project: `kubectl create token portico --audience
//! portico-raft-pki --bound-object-kind Pod`. Requests are real curl over HTTPS, CSRs are
//! made with openssl, and certificates checked with `openssl verify`.
//!
//! What must hold: only a token of ServiceAccount `portico`, made for our audience and bound
//! to a live Pod that the StatefulSet controls, gets a certificate, and only for that Pod's
//! names; every other caller gets a refusal naming the rule, and no certificate; when the
//! API server cannot be asked, nothing is signed. The fixture (`pki_cluster`, `pod_token`,
//! `Issuer::start`) is public for the replica-side rotation test.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portico_test_support::process::{Process, Program};

use crate::common::real_apiserver::RealApiServer;
use crate::common::{wait_until, write_ca};
use crate::support::{kustomize, to_yaml};
use crate::{PORTICO, apply_yaml, deploy_dir, ok, run};

pub const NS: &str = "portico-system";
pub const AUDIENCE: &str = "portico-raft-pki";
const WAIT: Duration = Duration::from_secs(30);

/// The kinds of the issuer's identity and RBAC objects in deploy/.
const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// The issuer's ServiceAccount `portico-pki` and RBAC exactly as deploy/ ships them
/// (TokenReviews cluster-wide; `get` on Pods and on the StatefulSet in its namespace).
pub fn issuer_rbac() -> Vec<serde_yaml::Value> {
    kustomize(&deploy_dir())
        .into_iter()
        .filter(|o| o["metadata"]["name"] == "portico-pki")
        .filter(|o| RBAC_KINDS.iter().any(|k| o["kind"] == *k))
        .collect()
}

/// Applies [`issuer_rbac`], less the `rule`th rule of the object of kind `without.0`.
fn apply_issuer_rbac(api: &RealApiServer, dir: &Path, without: Option<(&str, usize)>) {
    let mut objects = issuer_rbac();
    if let Some((kind, rule)) = without {
        let object = objects.iter_mut().find(|o| o["kind"] == kind).unwrap();
        object["rules"].as_sequence_mut().unwrap().remove(rule);
    }
    apply_yaml(api, dir, "issuer-rbac.yaml", &to_yaml(&objects));
}

/// A StatefulSet object `name` (nothing runs it) with Pods of ServiceAccount `portico`.
fn statefulset_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {name}
  namespace: {NS}
spec:
  serviceName: portico-peers
  replicas: 3
  selector:
    matchLabels:
      app.kubernetes.io/name: {name}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {name}
    spec:
      serviceAccountName: portico
      containers:
        - name: portico
          image: portico:test
"#
    )
}

/// Creates Pod `name` of ServiceAccount `portico`, controlled by StatefulSet `owner` (its
/// name and UID) when given, and returns the Pod's UID.
pub fn create_pod(
    api: &RealApiServer,
    dir: &Path,
    name: &str,
    owner: Option<(&str, &str)>,
) -> String {
    let owner = owner
        .map(|(set, uid)| {
            format!(
                "  ownerReferences:\n    - apiVersion: apps/v1\n      kind: StatefulSet\n      name: {set}\n      uid: {uid}\n      controller: true\n      blockOwnerDeletion: true\n"
            )
        })
        .unwrap_or_default();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n{owner}spec:\n  serviceAccountName: portico\n  containers:\n    - name: portico\n      image: portico:test\n"
    );
    apply_yaml(api, dir, &format!("pod-{name}.yaml"), &yaml);
    uid_of(api, "pod", name)
}

fn uid_of(api: &RealApiServer, kind: &str, name: &str) -> String {
    ok(api.kubectl().args([
        "-n",
        NS,
        "get",
        kind,
        name,
        "-o",
        "jsonpath={.metadata.uid}",
    ]))
}

/// Namespace portico-system; ServiceAccounts `portico` (the replicas') and `portico-pki`
/// (the issuer's, with [`issuer_rbac`]); the StatefulSet `portico` and its Pods
/// `portico-0..replicas`. Returns the StatefulSet's UID.
pub fn pki_cluster(api: &RealApiServer, dir: &Path, replicas: usize) -> String {
    apply_yaml(
        api,
        dir,
        "namespace.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: portico\n  namespace: {NS}\n"
        ),
    );
    apply_issuer_rbac(api, dir, None);
    apply_yaml(api, dir, "statefulset.yaml", &statefulset_yaml("portico"));
    let set = uid_of(api, "statefulset", "portico");
    for n in 0..replicas {
        create_pod(api, dir, &format!("portico-{n}"), Some(("portico", &set)));
    }
    set
}

/// A token as kubelet projects it into Pod `pod`: ServiceAccount `portico`, our audience.
pub fn pod_token(api: &RealApiServer, pod: &str) -> String {
    token(
        api,
        "portico",
        &[
            "--audience",
            AUDIENCE,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            pod,
        ],
    )
}

fn token(api: &RealApiServer, account: &str, args: &[&str]) -> String {
    ok(api
        .kubectl()
        .args(["-n", NS, "create", "token", account, "--duration=1h"])
        .args(args))
    .trim()
    .to_owned()
}

/// A running `portico pki serve` as ServiceAccount `portico-pki`, on 127.0.0.1.
pub struct Issuer {
    process: Process,
    /// The listener handed to it, held by the test across [`Issuer::stop`] and
    /// [`Issuer::restart`] so the port its clients were given stays its own; `None` when the
    /// issuer bound port 0 itself.
    listener: Option<Arc<TcpListener>>,
    /// While it is stopped, what answers on its port (see [`Closer`]).
    closer: Option<Closer>,
    pub url: String,
    /// The CA certificate that signs the issued certificates and the issuer's own.
    pub ca: PathBuf,
}

impl Issuer {
    /// Starts the issuer with the CA in `ca` (certificate, key) on a listener the test binds
    /// and hands over (socket activation, `pki`), and returns once it reports that address.
    pub fn start(api: &RealApiServer, dir: &Path, ca: &(PathBuf, PathBuf), lifetime: &str) -> Self {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
        let program = Self::program(api, dir, ca, lifetime).socket("pki", &listener);
        Self::spawn(program, Some(listener), ca)
    }

    /// [`Issuer::start`], the issuer binding `--listen 127.0.0.1:0` itself (it cannot be
    /// restarted on the same port).
    pub fn start_on_port_0(
        api: &RealApiServer,
        dir: &Path,
        ca: &(PathBuf, PathBuf),
        lifetime: &str,
    ) -> Self {
        let program = Self::program(api, dir, ca, lifetime).args(["--listen", "127.0.0.1:0"]);
        Self::spawn(program, None, ca)
    }

    fn program(
        api: &RealApiServer,
        dir: &Path,
        ca: &(PathBuf, PathBuf),
        lifetime: &str,
    ) -> Program {
        let kubeconfig = dir.join("portico-pki.kubeconfig");
        let token = token(api, "portico-pki", &[]);
        api.write_kubeconfig_for_token(&kubeconfig, &token);
        Program::new(PORTICO)
            .args([
                "pki",
                "serve",
                "--namespace",
                NS,
                "--serving-name",
                "127.0.0.1",
            ])
            .args(["--certificate-lifetime", lifetime, "--log-format", "json"])
            .arg("--ca-cert")
            .arg(&ca.0)
            .arg("--ca-key")
            .arg(&ca.1)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
    }

    fn spawn(
        program: Program,
        listener: Option<Arc<TcpListener>>,
        ca: &(PathBuf, PathBuf),
    ) -> Self {
        let process = program.spawn("portico pki serve");
        let mut issuer = Self {
            process,
            listener,
            closer: None,
            url: String::new(),
            ca: ca.0.clone(),
        };
        issuer.url = format!("https://{}", issuer.listening());
        issuer
    }

    /// Waits for its `listening` line; the address in it, which is the handed-over
    /// listener's when there is one.
    fn listening(&self) -> SocketAddr {
        let listening = self
            .process
            .listening_blocking(WAIT)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        let addr = listening.addr.expect("the issuer's address");
        if let Some(listener) = &self.listener {
            assert_eq!(addr, listener.local_addr().unwrap(), "{}", self.log());
            assert!(self.log().contains("sockets handed over"), "{}", self.log());
        }
        addr
    }

    /// Kills the issuer and waits for it to exit. Its port stays the test's: every connection
    /// to it is closed at once until [`Issuer::restart`].
    pub fn stop(&mut self) {
        self.process.kill_blocking();
        let listener = self
            .listener
            .as_ref()
            .expect("an issuer on a handed-over listener");
        self.closer = Some(Closer::start(listener));
    }

    /// Starts it again after [`Issuer::stop`], on the same listener (so the same URL); its
    /// log starts afresh.
    pub fn restart(&mut self) {
        drop(self.closer.take());
        self.process.restart_blocking();
        self.listening();
    }

    /// Its log since it last started.
    pub fn log(&self) -> String {
        self.process.output_text()
    }

    /// POSTs `body` to the certificate endpoint with curl; (status, content type, body).
    pub fn post(
        &self,
        token: Option<&str>,
        content_type: &str,
        body: &Path,
    ) -> (u16, String, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .arg("--cacert")
        .arg(&self.ca)
        .args(["-H", &format!("Content-Type: {content_type}")])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()));
        if let Some(token) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        cmd.arg(format!("{}/v1/raft-certificate", self.url));
        let out = run(&mut cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, last) = text
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl: {text}{}", String::from_utf8_lossy(&out.stderr)));
        let (code, content_type) = last.split_once(' ').unwrap_or((last, ""));
        (
            code.parse().unwrap(),
            content_type.to_owned(),
            body.to_owned(),
        )
    }

    /// POSTs a CSR with `token`; (status, body).
    pub fn request(&self, token: Option<&str>, csr: &Path) -> (u16, String) {
        let (status, _, body) = self.post(token, "application/pkcs10", csr);
        (status, body)
    }
}

/// While an issuer is down, the test accepts on its held listener and closes each connection
/// at once, as a port nobody serves refuses it: a replica's renewal fails at once (instead of
/// its request waiting in the backlog for a process that is not there), and no connection is
/// left queued for the next issuer.
struct Closer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Closer {
    fn start(listener: &TcpListener) -> Self {
        let listener = listener.try_clone().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((connection, _)) => drop(connection),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => panic!("accepting on the stopped issuer's port: {e}"),
                    }
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A fresh P-256 key and a CSR for it made by openssl, asking for `names` (which the issuer
/// must ignore). Returns (key, csr) paths.
pub fn openssl_csr(dir: &Path, label: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let (key, csr) = (
        dir.join(format!("{label}.key")),
        dir.join(format!("{label}.csr")),
    );
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    ok(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", &format!("/CN={}", names[0])])
        .args(["-addext", &format!("subjectAltName={}", san.join(","))])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .stderr(Stdio::null()));
    (key, csr)
}

/// The names a replica's certificate must carry, exactly.
fn replica_sans(pod: &str) -> String {
    format!("DNS:{pod}.portico-peers.{NS}.svc.cluster.local, DNS:{pod}")
}

/// A refusal: `status`, a JSON reason containing `rule_text`, and no certificate.
fn assert_refused(what: &str, answer: &(u16, String), status: u16, rule_text: &str) {
    let (got, body) = answer;
    println!("{what}: {got} {}", body.trim());
    assert_eq!(*got, status, "{what}: {body}");
    assert!(
        !body.contains("-----BEGIN"),
        "{what}: a certificate came back: {body}"
    );
    let reason: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {body}: {e}"));
    let reason = reason["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(rule_text),
        "{what}: reason {reason:?} lacks {rule_text:?}"
    );
}

/// A refusal by one of `rules` (the API server's or the issuer's, whichever sees it first).
fn assert_refused_by(what: &str, answer: &(u16, String), rules: &[(u16, &str)]) {
    let (status, rule_text) = rules
        .iter()
        .find(|(status, _)| *status == answer.0)
        .unwrap_or_else(|| panic!("{what}: {answer:?}, not one of {rules:?}"));
    assert_refused(what, answer, *status, rule_text);
}

fn openssl_x509(cert: &Path, args: &[&str]) -> String {
    ok(Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(cert)
        .args(args))
    .trim()
    .to_owned()
}

fn epoch_of(date: &str) -> i64 {
    ok(Command::new("date").args(["-u", "-d", date, "+%s"]))
        .trim()
        .parse()
        .unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The checks of a certificate issued to `pod` for the key in `key`: it chains to the CA as
/// a TLS client and server for the Pod's DNS name, names exactly the Pod's names, certifies
/// that key, and is valid from a minute ago for `lifetime` seconds.
fn assert_issued_to(issuer: &Issuer, dir: &Path, pod: &str, key: &Path, body: &str, lifetime: i64) {
    assert_eq!(body.matches("BEGIN CERTIFICATE").count(), 1, "{body}");
    let cert = dir.join(format!("{pod}-issued.crt"));
    std::fs::write(&cert, body).unwrap();
    let fqdn = format!("{pod}.portico-peers.{NS}.svc.cluster.local");
    for purpose in ["sslclient", "sslserver"] {
        ok(Command::new("openssl")
            .args([
                "verify",
                "-purpose",
                purpose,
                "-verify_hostname",
                &fqdn,
                "-CAfile",
            ])
            .arg(&issuer.ca)
            .arg(&cert));
    }
    assert_eq!(
        openssl_x509(&cert, &["-ext", "subjectAltName"])
            .lines()
            .nth(1)
            .unwrap()
            .trim(),
        replica_sans(pod)
    );
    let certified = openssl_x509(&cert, &["-pubkey"]);
    let held = ok(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(key));
    assert_eq!(
        certified.trim(),
        held.trim(),
        "the certificate is not for the CSR's key"
    );
    let dates = openssl_x509(&cert, &["-dates", "-dateopt", "iso_8601"]);
    let date = |field: &str| {
        let line = dates.lines().find(|l| l.starts_with(field)).unwrap();
        epoch_of(line.split_once('=').unwrap().1)
    };
    let (not_before, not_after) = (date("notBefore"), date("notAfter"));
    let skew = now() - not_before;
    assert!((50..=90).contains(&skew), "notBefore is {skew} s ago");
    assert_eq!(not_after - not_before, lifetime + 60, "{dates}");
}

/// An object the attacker has made (or had made) before its token is minted.
enum Make {
    ServiceAccount(&'static str),
    Secret(&'static str),
    /// A StatefulSet that nothing runs, with Pods of ServiceAccount `portico`.
    StatefulSet(&'static str),
    /// A Pod of ServiceAccount `portico`; its controller reference names StatefulSet
    /// `owner.0` with the UID of the StatefulSet named `owner.1` (none: no controller).
    Pod {
        name: &'static str,
        owner: Option<(&'static str, &'static str)>,
    },
}

/// How the attacker's token is made.
enum Token {
    /// None sent.
    Absent,
    /// `portico-0`'s own, as kubelet projects it: the attack is in what is sent with it.
    Own,
    /// `kubectl create token ACCOUNT FLAGS...`.
    Made {
        account: &'static str,
        flags: &'static [&'static str],
    },
    /// As kubelet projects it into Pod NAME ([`pod_token`]).
    Pod(&'static str),
    /// The one of the row before.
    Previous,
}

/// What happens between the token being minted and the attacker's request.
enum Then {
    Nothing,
    /// The token first gets a certificate, then its Pod is deleted (forced, no grace).
    DeletePod(&'static str),
    /// The Pod is created again, with another UID.
    RecreatePod(&'static str),
    /// A finalizer holds the Pod and it is deleted: it is terminating when the request comes
    /// (the finalizer is removed after).
    TerminatePod(&'static str),
}

/// What the attacker sends with its token.
enum Sends {
    /// A valid PEM CSR as `application/pkcs10`.
    Csr,
    /// That CSR with its signature's last byte flipped.
    TamperedCsr,
    /// The CA certificate instead of a CSR.
    Certificate,
    /// The CSR as `application/octet-stream`.
    OctetStream,
    /// 64 KiB of `A`.
    Oversized,
}

/// One attack on the issuer and how it must be refused: one `(status, reason fragment)`, or
/// two where the API server may refuse the token itself before the issuer's rule does.
struct Attack {
    what: &'static str,
    holds: &'static [Make],
    token: Token,
    then: Then,
    sends: Sends,
    refused: &'static [(u16, &'static str)],
}

impl Attack {
    /// `what`, with `token`, sending portico-0's CSR; refused with one of `refused`.
    const fn new(
        what: &'static str,
        token: Token,
        refused: &'static [(u16, &'static str)],
    ) -> Self {
        Self {
            what,
            holds: &[],
            token,
            then: Then::Nothing,
            sends: Sends::Csr,
            refused,
        }
    }

    const fn holding(self, holds: &'static [Make]) -> Self {
        Self { holds, ..self }
    }

    const fn then(self, then: Then) -> Self {
        Self { then, ..self }
    }

    const fn sending(self, sends: Sends) -> Self {
        Self { sends, ..self }
    }
}

impl Make {
    const fn pod(name: &'static str, owner: Option<(&'static str, &'static str)>) -> Self {
        Self::Pod { name, owner }
    }
}

impl Token {
    const fn of(account: &'static str, flags: &'static [&'static str]) -> Self {
        Self::Made { account, flags }
    }
}

const AUDIENCE_FLAG: &str = "--audience";
const BOUND_KIND: &str = "--bound-object-kind";
const BOUND_NAME: &str = "--bound-object-name";
const OUR_AUDIENCE: &[&str] = &[AUDIENCE_FLAG, AUDIENCE];
/// Our audience, bound to the Secret `anchor` rather than a Pod.
const BOUND_TO_SECRET: &[&str] = &[
    AUDIENCE_FLAG,
    AUDIENCE,
    BOUND_KIND,
    "Secret",
    BOUND_NAME,
    "anchor",
];
/// Bound to `portico-0` but for the API server's audience, not ours.
const BOUND_TO_POD_0: &[&str] = &[BOUND_KIND, "Pod", BOUND_NAME, "portico-0"];
const NOT_AUTHENTICATED: (u16, &str) = (401, "not authenticated");
const NOT_PORTICO: (u16, &str) = (403, "ServiceAccount portico-system/portico");
const NOT_POD_BOUND: (u16, &str) = (403, "not bound to a Pod");
const NOT_OURS: (u16, &str) = (403, "not controlled by StatefulSet portico");

// One row an attack: what it is, its token and the refusal, then what the attacker holds
// (made before the token), what happens before the request, and what it sends (by default
// nothing, nothing, and portico-0's CSR).
#[rustfmt::skip]
const ATTACKS: &[Attack] = &[
    Attack::new("no token", Token::Absent, &[(401, "no bearer token")]),
    Attack::new("another ServiceAccount", Token::of("intruder", OUR_AUDIENCE), &[NOT_PORTICO])
        .holding(&[Make::ServiceAccount("intruder")]),
    Attack::new("the issuer's ServiceAccount", Token::of("portico-pki", OUR_AUDIENCE),
        &[NOT_PORTICO]),
    Attack::new("a token bound to no Pod", Token::of("portico", OUR_AUDIENCE), &[NOT_POD_BOUND]),
    Attack::new("a token bound to a Secret", Token::of("portico", BOUND_TO_SECRET),
        &[NOT_POD_BOUND])
        .holding(&[Make::Secret("anchor")]),
    Attack::new("a bare Pod portico-9", Token::Pod("portico-9"), &[NOT_OURS])
        .holding(&[Make::pod("portico-9", None)]),
    Attack::new("a Pod of StatefulSet other", Token::Pod("other-0"), &[NOT_OURS])
        .holding(&[Make::StatefulSet("other"), Make::pod("other-0", Some(("other", "other")))]),
    // Claiming the name `portico` with the UID of another StatefulSet (one since gone).
    Attack::new("a Pod whose owner is another StatefulSet named portico", Token::Pod("portico-7"),
        &[(403, "not the one that exists now")])
        .holding(&[Make::pod("portico-7", Some(("portico", "other")))]),
    Attack::new("the API server's audience", Token::of("portico", BOUND_TO_POD_0),
        &[NOT_AUTHENTICATED]),
    // The API server's TokenReview refuses a deleted Pod's token once its own cache of Pods
    // has caught up (401); until then the issuer's fresh GET of the Pod must (403).
    Attack::new("a deleted Pod's token", Token::Pod("portico-2"),
        &[NOT_AUTHENTICATED, (403, "Pod portico-2 does not exist")])
        .holding(&[Make::pod("portico-2", Some(("portico", "portico")))])
        .then(Then::DeletePod("portico-2")),
    Attack::new("a re-created Pod's old token", Token::Previous,
        &[NOT_AUTHENTICATED, (403, "Pod portico-2 was deleted and re-created")])
        .then(Then::RecreatePod("portico-2")),
    Attack::new("a terminating Pod", Token::Pod("portico-3"),
        &[NOT_AUTHENTICATED, (403, "Pod portico-3 is terminating")])
        .holding(&[Make::pod("portico-3", Some(("portico", "portico")))])
        .then(Then::TerminatePod("portico-3")),
    Attack::new("a CSR whose signature does not verify", Token::Own,
        &[(400, "signature does not verify")])
        .sending(Sends::TamperedCsr),
    Attack::new("a certificate instead of a CSR", Token::Own, &[(400, "CERTIFICATE REQUEST")])
        .sending(Sends::Certificate),
    Attack::new("the wrong content type", Token::Own, &[(400, "application/pkcs10")])
        .sending(Sends::OctetStream),
    Attack::new("a 64 KiB body", Token::Own, &[(413, "over 16384 bytes")])
        .sending(Sends::Oversized),
];

/// Carries out [`ATTACKS`] against `issuer`, in order.
struct Attacker<'a> {
    api: &'a RealApiServer,
    dir: &'a Path,
    issuer: &'a Issuer,
    /// portico-0's CSR.
    csr: &'a Path,
    /// portico-0's token.
    own: &'a str,
    /// The token of the row before ([`Token::Previous`]).
    last_token: Option<String>,
    /// The UID of the Pod [`Then::DeletePod`] deleted.
    deleted_uid: Option<String>,
}

impl Attacker<'_> {
    /// Makes what `attack` holds and mints its token.
    fn token(&self, attack: &Attack) -> Option<String> {
        let (api, dir) = (self.api, self.dir);
        for make in attack.holds {
            match make {
                Make::ServiceAccount(name) => apply_v1(api, dir, "ServiceAccount", name),
                Make::Secret(name) => apply_v1(api, dir, "Secret", name),
                Make::StatefulSet(name) => apply_yaml(
                    api,
                    dir,
                    &format!("statefulset-{name}.yaml"),
                    &statefulset_yaml(name),
                ),
                Make::Pod { name, owner } => {
                    self.create_pod(name, *owner);
                }
            }
        }
        match &attack.token {
            Token::Absent => None,
            Token::Own => Some(self.own.to_owned()),
            Token::Made { account, flags } => Some(token(api, account, flags)),
            Token::Pod(pod) => Some(pod_token(api, pod)),
            Token::Previous => Some(self.last_token.clone().expect("a token of the row before")),
        }
    }

    /// [`create_pod`], the controller named by (StatefulSet name, the StatefulSet whose UID).
    fn create_pod(&self, name: &str, owner: Option<(&str, &str)>) -> String {
        let owner =
            owner.map(|(set, uid_of_set)| (set, uid_of(self.api, "statefulset", uid_of_set)));
        create_pod(
            self.api,
            self.dir,
            name,
            owner.as_ref().map(|(set, uid)| (*set, uid.as_str())),
        )
    }

    /// What happens before the request ([`Then`]), the request, and what must hold after it;
    /// its (status, body).
    fn send(&mut self, attack: &Attack, token: Option<&str>) -> (u16, String) {
        let (api, issuer) = (self.api, self.issuer);
        let mut terminating = None;
        match attack.then {
            Then::Nothing => {}
            Then::DeletePod(pod) => {
                self.deleted_uid = Some(uid_of(api, "pod", pod));
                // The token is good while its Pod lives.
                let (status, body) = issuer.request(token, self.csr);
                assert_eq!(status, 200, "{}: {body}", attack.what);
                ok(api.kubectl().args([
                    "-n",
                    NS,
                    "delete",
                    "pod",
                    pod,
                    "--grace-period=0",
                    "--force",
                ]));
            }
            Then::RecreatePod(pod) => {
                let before = self.deleted_uid.take().expect("the deleted Pod's UID");
                let after = self.create_pod(pod, Some(("portico", "portico")));
                assert_ne!(before, after, "{}: the same UID again", attack.what);
            }
            Then::TerminatePod(pod) => {
                terminating = Some(uid_of(api, "pod", pod));
                set_finalizers(api, pod, r#"["portico.dev/test"]"#);
                ok(api
                    .kubectl()
                    .args(["-n", NS, "delete", "pod", pod, "--wait=false"]));
            }
        }
        let answer = match attack.sends {
            Sends::Csr => issuer.request(token, self.csr),
            Sends::TamperedCsr => issuer.request(token, &tampered_csr(self.dir, self.csr)),
            Sends::Certificate => issuer.request(token, &issuer.ca),
            Sends::OctetStream => {
                let (status, _, body) = issuer.post(token, "application/octet-stream", self.csr);
                (status, body)
            }
            Sends::Oversized => {
                let big = self.dir.join("big.csr");
                std::fs::write(&big, vec![b'A'; 64 * 1024]).unwrap();
                issuer.request(token, &big)
            }
        };
        if let (Then::TerminatePod(pod), Some(uid)) = (&attack.then, terminating) {
            // The same Pod is still there, terminating, until its finalizer goes.
            assert_eq!(uid_of(api, "pod", pod), uid, "{}", attack.what);
            set_finalizers(api, pod, "null");
        }
        self.last_token = token.map(str::to_owned);
        answer
    }
}

/// Applies an empty core (v1) object of `kind` named `name` in [`NS`].
fn apply_v1(api: &RealApiServer, dir: &Path, kind: &str, name: &str) {
    apply_yaml(
        api,
        dir,
        &format!("{kind}-{name}.yaml"),
        &format!("apiVersion: v1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {NS}\n"),
    );
}

/// Sets Pod `pod`'s finalizers to `json` (a list, or `null` for none).
fn set_finalizers(api: &RealApiServer, pod: &str, json: &str) {
    ok(api.kubectl().args([
        "-n",
        NS,
        "patch",
        "pod",
        pod,
        "--type=merge",
        "-p",
        &format!(r#"{{"metadata":{{"finalizers":{json}}}}}"#),
    ]));
}

/// `csr` with the last byte of its signature flipped, so the signature does not verify.
fn tampered_csr(dir: &Path, csr: &Path) -> PathBuf {
    let der = dir.join("tampered.der");
    ok(Command::new("openssl")
        .args(["req", "-outform", "DER", "-in"])
        .arg(csr)
        .arg("-out")
        .arg(&der));
    let mut bytes = std::fs::read(&der).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&der, &bytes).unwrap();
    let b64 = ok(Command::new("openssl").args(["base64", "-in"]).arg(&der));
    let tampered = dir.join("tampered.csr");
    std::fs::write(
        &tampered,
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n"),
    )
    .unwrap();
    tampered
}

/// Every attack of issue 15 on the issuer, and the one request that must succeed.
#[test]
fn raft_pki_issuer_signs_only_a_live_statefulset_pod_and_only_its_own_names() {
    let Fixture { issuer, api, dir } = Fixture::start(2, "1h", Issuer::start);
    let dir = dir.path();
    let mut tokens = Vec::new();

    // The API server vouches for a Pod-bound token with the Pod's name and UID.
    let token0 = pod_token(&api, "portico-0");
    tokens.push(token0.clone());
    let review = dir.join("review.yaml");
    std::fs::write(
        &review,
        format!("apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {token0}\n  audiences: [{AUDIENCE}]\n"),
    )
    .unwrap();
    let reviewed: serde_json::Value = serde_json::from_str(&ok(api
        .kubectl()
        .args(["create", "-o", "json", "-f"])
        .arg(&review)))
    .unwrap();
    let extra = &reviewed["status"]["user"]["extra"];
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"][0], "portico-0",
        "{reviewed}"
    );
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"][0].as_str(),
        Some(uid_of(&api, "pod", "portico-0").as_str()),
        "{reviewed}"
    );

    // Success: portico-0's own token and key, a CSR asking for portico-1's names.
    let (key, csr) = openssl_csr(
        dir,
        "asks-for-1",
        &[
            "portico-1",
            &format!("portico-1.portico-peers.{NS}.svc.cluster.local"),
        ],
    );
    let (status, content_type, body) = issuer.post(Some(&token0), "application/pkcs10", &csr);
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/x-pem-file");
    assert_issued_to(&issuer, dir, "portico-0", &key, &body, 3600);
    let log = issuer.log();
    let issued = log
        .lines()
        .find(|l| l.contains("issued a Raft certificate"))
        .unwrap_or_else(|| panic!("no decision logged:\n{log}"));
    let issued: serde_json::Value = serde_json::from_str(issued).unwrap();
    assert_eq!(issued["level"], "INFO");
    assert_eq!(issued["pod"], "portico-0");
    assert_eq!(issued["namespace"], NS);
    assert!(
        issued["not_after"].is_string() && issued["serial"].is_string(),
        "{issued}"
    );

    // Portico-1's own token gets portico-1's names.
    let token1 = pod_token(&api, "portico-1");
    tokens.push(token1.clone());
    let (key1, csr1) = openssl_csr(dir, "one", &["portico-1"]);
    let (status, body) = issuer.request(Some(&token1), &csr1);
    assert_eq!(status, 200, "{body}");
    assert_issued_to(&issuer, dir, "portico-1", &key1, &body, 3600);

    // Every attack of issue 15, one row each: what the attacker holds, how its token is made,
    // what it sends; each is refused with the status and reason of the rule, and no
    // certificate.
    let mut attacker = Attacker {
        api: &api,
        dir,
        issuer: &issuer,
        csr: &csr,
        own: &token0,
        last_token: None,
        deleted_uid: None,
    };
    for attack in ATTACKS {
        let token = attacker.token(attack);
        tokens.extend(token.clone());
        let answer = attacker.send(attack, token.as_deref());
        assert_refused_by(attack.what, &answer, attack.refused);
    }

    // Other methods and paths.
    let code = |args: &[&str], path: &str| {
        ok(Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&issuer.ca)
            .args(args)
            .arg(format!("{}{path}", issuer.url)))
    };
    assert_eq!(code(&["-X", "GET"], "/v1/raft-certificate"), "405");
    assert_eq!(code(&["-X", "PUT"], "/v1/raft-certificate"), "405");
    assert_eq!(code(&["-X", "POST"], "/v1/other"), "404");

    // Each refusal is counted by rule, and the log never holds a token.
    let metrics = ok(Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&issuer.ca)
        .arg(format!("{}/metrics", issuer.url)));
    for rule in [
        "not_pod_bound",
        "wrong_service_account",
        "not_owned_by_statefulset",
        "missing_token",
        "body_too_large",
        "csr_bad_signature",
    ] {
        assert!(
            metrics.contains(&format!("rule=\"{rule}\"")),
            "{rule} not counted:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("portico_pki_decisions_total{outcome=\"issued\",rule=\"\"} 3"),
        "{metrics}"
    );
    let refused: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("portico_pki_decisions_total{outcome=\"refused\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        refused,
        ATTACKS.len() as u64,
        "one refusal counted per attack:\n{metrics}"
    );
    let log = issuer.log();
    assert!(
        log.contains("\"rule\":\"not_owned_by_statefulset\""),
        "{log}"
    );
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a token was logged");
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token's signature was logged");
    }
}

/// How an issuer is started: [`Issuer::start`] or [`Issuer::start_on_port_0`].
type StartIssuer = fn(&RealApiServer, &Path, &(PathBuf, PathBuf), &str) -> Issuer;

/// The API server with [`pki_cluster`] of `replicas` Pods, a CA, and an issuer of it.
struct Fixture {
    issuer: Issuer,
    api: RealApiServer,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// `start`ed with certificates living `lifetime`.
    fn start(replicas: usize, lifetime: &str, start: StartIssuer) -> Self {
        let api = RealApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        pki_cluster(&api, dir.path(), replicas);
        let ca = write_ca(dir.path());
        let issuer = start(&api, dir.path(), &ca, lifetime);
        Self { issuer, api, dir }
    }
}

/// When the API server cannot be asked, nothing is signed (503), and signing resumes once it
/// is back.
#[test]
fn raft_pki_issuer_fails_closed_without_the_api_server() {
    let Fixture { issuer, api, dir } = Fixture::start(1, "60", Issuer::start);
    let dir = dir.path();
    let token = pod_token(&api, "portico-0");
    let (key, csr) = openssl_csr(dir, "zero", &["portico-0"]);

    api.stop_apiserver();
    assert_refused(
        "the API server is down",
        &issuer.request(Some(&token), &csr),
        503,
        "API server could not be asked",
    );
    api.start_apiserver();
    let (status, body) = wait_until("signing to resume", WAIT, || {
        let answer = issuer.request(Some(&token), &csr);
        (answer.0 != 503).then_some(answer)
    });
    assert_eq!(status, 200, "{body}");
    assert_issued_to(&issuer, dir, "portico-0", &key, &body, 60);
}

/// The issuer's shipped RBAC is enough (above) and every rule of it is needed: without any one
/// of them a valid request is answered 503 (the issuer cannot ask; it never signs unasked),
/// and signing resumes once the rule is back.
#[test]
fn raft_pki_issuer_needs_every_rule_deploy_grants_it() {
    let Fixture { issuer, api, dir } = Fixture::start(1, "60", Issuer::start);
    let dir = dir.path();
    let token = pod_token(&api, "portico-0");
    let (_, csr) = openssl_csr(dir, "zero", &["portico-0"]);
    let status_becomes = |what: &str, status: u16| {
        // RBAC changes reach the authorizer's cache a moment after they are written.
        wait_until(what, WAIT, || {
            let answer = issuer.request(Some(&token), &csr);
            (answer.0 == status).then_some(answer)
        })
    };
    status_becomes("a certificate with every rule", 200);
    let mut dropped = 0;
    for object in issuer_rbac() {
        let kind = object["kind"].as_str().unwrap().to_owned();
        let rules = object["rules"].as_sequence().map_or(0, Vec::len);
        for rule in 0..rules {
            println!("without {kind} rule {rule}: {:?}", object["rules"][rule]);
            apply_issuer_rbac(&api, dir, Some((&kind, rule)));
            let answer = status_becomes(&format!("503 without {kind} rule {rule}"), 503);
            assert_refused(
                "a rule missing",
                &answer,
                503,
                "API server could not be asked",
            );
            apply_issuer_rbac(&api, dir, None);
            status_becomes(&format!("200 with {kind} rule {rule} back"), 200);
            dropped += 1;
        }
    }
    // TokenReviews, Pods and the StatefulSet.
    assert_eq!(
        dropped,
        3,
        "deploy/ grants the issuer other rules: {:?}",
        issuer_rbac()
    );
    assert!(issuer.log().contains("forbidden"), "{}", issuer.log());
}

/// The issuer's own endpoint: it is trusted with the CA certificate a replica already has,
/// under the issuer Service's names; it speaks TLS 1.3 only; a client that sends no request
/// head is cut off; and past 64 connections a further one is closed at once (each connection
/// holds its place from accept on, before the TLS handshake), until they go.
#[test]
fn raft_pki_issuer_serves_tls13_under_its_service_names_with_limits() {
    // Bound by the issuer itself here (the other tests hand it a socket).
    let fixture = Fixture::start(0, "60", Issuer::start_on_port_0);
    let issuer = &fixture.issuer;
    let port = issuer.url.rsplit(':').next().unwrap().to_owned();
    let curl = |args: &[&str], url: &str| {
        run(Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg("--cacert")
            .arg(&issuer.ca)
            .args(args)
            .arg(url))
    };
    for name in [
        format!("portico-pki.{NS}.svc"),
        format!("portico-pki.{NS}.svc.cluster.local"),
    ] {
        let out = curl(
            &["--resolve", &format!("{name}:{port}:127.0.0.1")],
            &format!("https://{name}:{port}/metrics"),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{name}: {out:?}"
        );
    }
    // A name the serving certificate does not carry is refused by the client.
    let out = curl(
        &[
            "--resolve",
            &format!("portico-pki.other.svc:{port}:127.0.0.1"),
        ],
        &format!("https://portico-pki.other.svc:{port}/metrics"),
    );
    assert!(!out.status.success(), "{out:?}");
    // TLS 1.2 at most: no handshake.
    let out = curl(
        &["--tlsv1.2", "--tls-max", "1.2"],
        &format!("{}/metrics", issuer.url),
    );
    assert!(!out.status.success(), "TLS 1.2 was accepted: {out:?}");

    // A TLS client that never sends a request head is closed by the issuer after its 5 s
    // header timeout.
    let started = std::time::Instant::now();
    let mut idle = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
        ])
        .arg(&issuer.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let closed = wait_until("the issuer to close an idle connection", WAIT, || {
        idle.try_wait().unwrap()
    });
    let waited = started.elapsed();
    println!("idle TLS client closed after {waited:?} ({closed})");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "{waited:?}"
    );

    // 64 connections held open (no TLS even): the 65th is closed at once.
    let held: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let out = curl(&[], &format!("{}/metrics", issuer.url));
    assert!(
        !out.status.success(),
        "a 65th connection was served: {out:?}"
    );
    drop(held);
    wait_until("a connection to be served again", WAIT, || {
        let out = curl(&[], &format!("{}/metrics", issuer.url));
        (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
    });
}

/// Socket activation fails closed for the issuer too: a socket handed over under a name it
/// does not serve, or a second `pki`, stops the start with an error naming it (before the CA
/// is even read), instead of being left open and unserved.
#[test]
fn raft_pki_issuer_refuses_a_socket_it_does_not_serve() {
    let refused = |names: &[&str]| {
        let mut program = Program::new(PORTICO).args([
            "pki",
            "serve",
            "--ca-cert",
            "/nonexistent/ca.crt",
            "--ca-key",
            "/nonexistent/ca.key",
        ]);
        let held: Vec<_> = names
            .iter()
            .map(|_| Arc::new(TcpListener::bind("127.0.0.1:0").unwrap()))
            .collect();
        for (name, listener) in names.iter().zip(&held) {
            program = program.socket(name, listener);
        }
        let mut process = program.spawn("portico pki serve");
        let status = process.wait_blocking(WAIT).unwrap();
        assert!(!status.success(), "{status}");
        portico_test_support::process::block_on(process.output().ended(WAIT))
            .unwrap()
            .join("\n")
    };
    let output = refused(&["listen"]);
    assert!(
        output.contains(
            r#"socket "listen" handed over (LISTEN_FDNAMES) is not one portico pki serve serves"#
        ),
        "{output}"
    );
    let output = refused(&["pki", "pki"]);
    assert!(
        output.contains("a second socket named pki handed over (fd 4)"),
        "{output}"
    );
}
