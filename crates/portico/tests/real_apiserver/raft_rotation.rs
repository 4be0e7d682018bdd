//! Issue 15 (review finding C1): replicas whose Raft certificates come from the issuer and
//! rotate while they run. Real processes against the real kube-apiserver: deploy/ applied as
//! it ships (the StatefulSet `portico`, the replicas' and the issuer's ServiceAccounts and
//! RBAC), Pod objects `portico-0..2` controlled by that StatefulSet (nothing runs them), the
//! real `portico pki serve` as ServiceAccount `portico-pki` with certificates living 60 s,
//! and three `portico run --raft-cert-issuer` replicas, each with its own Pod-bound token (as
//! the kubelet projects it), an empty data directory and no CA key anywhere in its
//! arguments or environment.
//!
//! What must hold: the replicas get certificates and form a cluster; each presents (to a
//! real `openssl s_client` on its Raft port) a certificate with a new serial at least twice,
//! with an Ingress change made after each rotation served by all three, and the same
//! processes throughout (no restart); an issuer down at renewal time leaves each replica on
//! its certificate (it logs the failure) and it renews once the issuer is back, before the
//! old certificate expires.
//!
//! The certificates name `portico-N.portico-peers.portico-system.svc.cluster.local`, the
//! replicas' advertised hosts, which must resolve to 127.0.0.1 here: each replica runs in a
//! mount namespace of its own (`unshare --mount`) whose /etc/hosts says so. Nothing outside
//! the replica processes sees that file; no network namespace is involved.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_test_support::process::{Listening, Process, Program, raft_listeners};

use crate::common::deploy_rbac::deploy_and_service_account;
use crate::common::portico_run::{LISTENING_WITHIN, LOOPBACK_PORT_0, PORTICO, echo};
use crate::common::real_apiserver::RealApiServer;
use crate::common::{get, wait_until, write_ca};
use crate::raft_pki_issuer::{Issuer, NS, create_pod, pod_token};
use crate::support::{backend_yaml, get_host, host_ingress};
use crate::{apply_yaml, host_ip, ok};

const REPLICAS: usize = 3;
/// The issuer's shortest lifetime: each certificate is renewed 40 s after it arrives.
const LIFETIME: &str = "60s";
const APP: &str = "rotation";

fn advertised_host(n: usize) -> String {
    format!("portico-{n}.portico-peers.{NS}.svc.cluster.local")
}

/// The /etc/hosts the replicas see: their advertised hosts on loopback.
fn hosts_file(dir: &Path) -> PathBuf {
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for n in 0..REPLICAS {
        hosts.push_str(&format!("127.0.0.1 {}\n", advertised_host(n)));
    }
    let path = dir.join("hosts");
    std::fs::write(&path, hosts).unwrap();
    path
}

struct Replica {
    process: Process,
    listening: Listening,
    raft: String,
}

/// `portico run` as `portico-N` with the issuer, in its own mount namespace (see the module
/// doc): the CA certificate, a token file and nothing else of the PKI.
fn replica_program(
    n: usize,
    dir: &Path,
    kubeconfig: &Path,
    issuer: &Issuer,
    raft: &[Arc<std::net::TcpListener>],
) -> Program {
    let members: Vec<String> = raft
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}:{}", advertised_host(i), s.local_addr().unwrap().port()))
        .collect();
    let token = dir.join(format!("token-{n}"));
    Program::new("unshare")
        .args(["--mount", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(hosts_file(dir))
        .arg(PORTICO)
        .args([
            "run",
            "--pod-name",
            &format!("portico-{n}"),
            "--namespace",
            NS,
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--data-dir")
        .arg(dir.join(format!("data-{n}")))
        .args(["--raft-listen", &raft[n].local_addr().unwrap().to_string()])
        .args(["--raft-advertise", &members[n]])
        .args(["--initial-members", &members.join(",")])
        .arg("--raft-ca")
        .arg(&issuer.ca)
        .args(["--raft-cert-issuer", &issuer.url])
        .arg("--raft-cert-token")
        .arg(token)
        .args(LOOPBACK_PORT_0)
        .args(["--admin", "127.0.0.1:0", "--log-format", "json"])
        .socket("raft", &raft[n])
}

/// Serial and PEM of the certificate a replica presents on its Raft port, read with openssl
/// s_client (no client certificate: TLS 1.3 sends the server's before asking for one).
fn presented(raft: &str) -> Option<(String, String)> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"openssl s_client -connect "$0" </dev/null 2>/dev/null | openssl x509"#)
        .arg(raft)
        .output()
        .ok()?;
    let pem = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || !pem.contains("BEGIN CERTIFICATE") {
        return None;
    }
    Some((openssl_x509(&pem, &["-noout", "-serial"])?, pem))
}

/// `openssl x509 ARGS` of `pem`, its trimmed stdout if it succeeded.
fn openssl_x509(pem: &str, args: &[&str]) -> Option<String> {
    let out = portico_test_support::process::output_with_stdin(
        Command::new("openssl").arg("x509").args(args),
        pem.as_bytes(),
    )
    .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

struct Rotation {
    api: RealApiServer,
    dir: tempfile::TempDir,
    issuer: Issuer,
    /// The CA's certificate and key: the issuer's alone.
    ca: (PathBuf, PathBuf),
    replicas: Vec<Replica>,
    _echo: Process,
    ingresses: usize,
}

impl Rotation {
    fn start() -> Self {
        let api = RealApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = deploy_and_service_account(&api, dir.path(), None);
        let set = ok(api.kubectl().args([
            "-n",
            NS,
            "get",
            "statefulset",
            "portico",
            "-o",
            "jsonpath={.metadata.uid}",
        ]));
        for n in 0..REPLICAS {
            let pod = format!("portico-{n}");
            create_pod(&api, dir.path(), &pod, Some(("portico", &set)));
            std::fs::write(dir.path().join(format!("token-{n}")), pod_token(&api, &pod)).unwrap();
        }
        let ca = write_ca(dir.path());
        let issuer = Issuer::start(&api, dir.path(), &ca, LIFETIME);
        // The backend and the namespace the Ingress changes are made in.
        apply_yaml(
            &api,
            dir.path(),
            "app-namespace.yaml",
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {APP}\n"),
        );
        let (echo, addr) = echo(&host_ip(), 0, "test", "echo-0", APP);
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let backend = backend_yaml(APP, &addr.ip().to_string(), addr.port());
        apply_yaml(&api, dir.path(), "backend.yaml", &backend);

        let raft = raft_listeners(REPLICAS);
        let replicas = (0..REPLICAS)
            .map(|n| {
                let program = replica_program(n, dir.path(), &kubeconfig, &issuer, &raft);
                let process = program.spawn(format!("portico-{n}"));
                let listening = process
                    .listening_blocking(LISTENING_WITHIN)
                    .unwrap_or_else(|e| panic!("{e}\n{}", process.output_text()));
                Replica {
                    process,
                    listening,
                    raft: raft[n].local_addr().unwrap().to_string(),
                }
            })
            .collect();
        let mut rotation = Self {
            api,
            dir,
            issuer,
            ca,
            replicas,
            _echo: echo,
            ingresses: 0,
        };
        for r in &rotation.replicas {
            wait_until(
                &format!("{} ready", r.process.name()),
                Duration::from_secs(60),
                || (get(&r.listening.admin(), "/readyz")?.0 == 200).then_some(()),
            );
        }
        rotation.ingress_reaches_every_replica();
        rotation
    }

    /// A new Ingress, served by every replica within 30 s.
    fn ingress_reaches_every_replica(&mut self) {
        self.ingresses += 1;
        let name = format!("rotation-{}", self.ingresses);
        let host = format!("{name}.example");
        apply_yaml(
            &self.api,
            self.dir.path(),
            &format!("{name}.yaml"),
            &host_ingress(APP, "portico", &name, &host),
        );
        for r in &self.replicas {
            let http = r.listening.http().to_string();
            wait_until(
                &format!("{host} served by {}", r.process.name()),
                Duration::from_secs(30),
                || (get_host(&http, &host) == Some(200)).then_some(()),
            );
        }
    }

    /// Every replica's presented certificate (serial, PEM).
    fn presented(&self) -> Vec<(String, String)> {
        self.replicas
            .iter()
            .map(|r| {
                wait_until(
                    &format!("{}'s Raft certificate", r.process.name()),
                    Duration::from_secs(10),
                    || presented(&r.raft),
                )
            })
            .collect()
    }

    /// Waits until every replica presents a serial other than `before`'s; the new ones.
    fn rotated(&self, before: &[(String, String)], within: Duration) -> Vec<(String, String)> {
        self.replicas
            .iter()
            .zip(before)
            .map(|(r, (old, _))| {
                wait_until(
                    &format!(
                        "{} to present a certificate other than {old}",
                        r.process.name()
                    ),
                    within,
                    || presented(&r.raft).filter(|(serial, _)| serial != old),
                )
            })
            .collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.replicas
            .iter()
            .map(|r| r.process.pid().expect("running"))
            .collect()
    }
}

#[test]
fn replica_certificates_rotate_without_a_restart_and_ride_out_an_issuer_outage() {
    let mut c = Rotation::start();
    let pids = c.pids();

    // Nothing of the CA key reaches a replica: not its path, not the variable.
    let key = c.ca.1.to_string_lossy().into_owned();
    for (r, pid) in c.replicas.iter().zip(&pids) {
        for what in ["cmdline", "environ"] {
            let text = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
            let text = String::from_utf8_lossy(&text);
            assert!(!text.contains(&key), "{} {what}: {text}", r.process.name());
            assert!(
                !text.contains("CA_KEY") && !text.contains("ca-key"),
                "{text}"
            );
        }
    }

    // Nor an open file of it.
    for pid in &pids {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
            assert_ne!(target, c.ca.1, "portico run holds the CA key open");
        }
    }
    // /metrics says until when each certificate is good.
    for r in &c.replicas {
        let (_, metrics) = get(&r.listening.admin(), "/metrics").unwrap();
        assert!(
            metrics.contains("portico_raft_certificate_expiry_timestamp_seconds ")
                && metrics.contains("portico_raft_certificate_expiring 0"),
            "{metrics}"
        );
    }

    // Two rotations, each followed by a change every replica serves.
    let first = c.presented();
    let mut before = first.clone();
    for round in 1..=2 {
        let after = c.rotated(&before, Duration::from_secs(60));
        eprintln!(
            "rotation {round}: {:?}",
            after.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
        c.ingress_reaches_every_replica();
        before = after;
    }
    assert_eq!(c.pids(), pids, "no replica restarted");
    for r in &c.replicas {
        let log = r.process.output_text();
        assert!(
            log.matches("renewed this replica's Raft certificate")
                .count()
                >= 2,
            "{}:\n{log}",
            r.process.name()
        );
    }

    // The issuer down at renewal time: each replica keeps its certificate and says so.
    let failures = |r: &Replica| {
        r.process
            .output()
            .lines()
            .iter()
            .filter(|l| {
                l.contains("could not renew the Raft certificate")
                    || l.contains("about to expire and could not be renewed")
            })
            .count()
    };
    let failed_before: Vec<usize> = c.replicas.iter().map(failures).collect();
    c.issuer.stop();
    let held = c.presented();
    for (r, before) in c.replicas.iter().zip(failed_before) {
        wait_until(
            &format!("{} to log a failed renewal", r.process.name()),
            Duration::from_secs(60),
            || (failures(r) > before).then_some(()),
        );
    }
    let still = c.presented();
    for ((r, (held, _)), (now, pem)) in c.replicas.iter().zip(&held).zip(&still) {
        assert_eq!(
            held,
            now,
            "{} kept its certificate while the issuer was down",
            r.process.name()
        );
        assert!(
            openssl_x509(pem, &["-noout", "-checkend", "0"]).is_some(),
            "{}: its certificate is still valid",
            r.process.name()
        );
    }
    // Back on the same address: renewed before the old certificates expire.
    c.issuer.restart();
    let started = Instant::now();
    let renewed = c.rotated(&still, Duration::from_secs(40));
    for ((r, (_, old)), (serial, _)) in c.replicas.iter().zip(&still).zip(&renewed) {
        assert!(
            openssl_x509(old, &["-noout", "-checkend", "0"]).is_some(),
            "{} renewed ({serial}) only after its old certificate expired",
            r.process.name()
        );
    }
    eprintln!("renewed {:?} after the issuer came back", started.elapsed());
    c.ingress_reaches_every_replica();
    assert_eq!(c.pids(), pids, "no replica restarted");
}
