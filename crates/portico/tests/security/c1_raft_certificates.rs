//! C1: no long-lived CA private key in the serving process.
//!
//! The attacker compromises the process that serves Internet traffic. It must not find the
//! cluster CA's private key there: a short-lived certificate naming the Pod's DNS name is
//! signed elsewhere (`portico pki issue` by hand, or the issuer `portico pki serve`, the
//! only Pod of the shipped manifests that mounts `ca.key`), and `portico run` serves Raft
//! with it and the CA certificate alone. The shipped StatefulSet mounts no Secret at all.
//! (Renewal from the issuer while running: `real_apiserver raft_rotation`.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::deploy_rbac::{deploy_dir, kustomize};
use crate::common::portico_run::{self, LOOPBACK_PORT_0, PORTICO};
use crate::common::{InProcessApi, get, wait_until};
use portico_test_support::TestCa;
use portico_test_support::process::{self, Program};

fn openssl(cert: &Path, what: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(cert)
        .args(what)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Seconds since the epoch of an `openssl -dates` line's date.
fn epoch_seconds(date: &str) -> i64 {
    let out = Command::new("date")
        .args(["-u", "-d", date, "+%s"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn pki_issue_signs_a_short_lived_certificate_that_run_serves_raft_with() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_key) = TestCa::new("portico test CA").write(dir.path());
    let tls = dir.path().join("tls");
    let out = Command::new(PORTICO)
        .args(["pki", "issue", "--name", "127.0.0.1"])
        .env("PORTICO_RAFT_CA", &ca)
        .env("PORTICO_RAFT_CA_KEY", &ca_key)
        .env("PORTICO_RAFT_TLS_DIR", &tls)
        .env("POD_NAME", "portico-0")
        .env("POD_NAMESPACE", "portico-system")
        .env("PORTICO_PEER_SERVICE", "portico-peers")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logged = String::from_utf8_lossy(&out.stderr);
    assert!(!logged.contains("PRIVATE KEY"), "{logged}");

    let cert = tls.join("replica.crt");
    let sans = openssl(&cert, &["-ext", "subjectAltName"]);
    assert!(
        sans.contains("DNS:portico-0.portico-peers.portico-system.svc.cluster.local"),
        "{sans}"
    );
    assert!(sans.contains("IP Address:127.0.0.1"), "{sans}");
    let dates = openssl(&cert, &["-dates"]);
    let field = |name: &str| {
        let line = dates.lines().find(|l| l.starts_with(name)).unwrap();
        epoch_seconds(line.split_once('=').unwrap().1)
    };
    let lifetime = field("notAfter") - field("notBefore");
    assert_eq!(lifetime, 30 * 86_400 + 3_600, "{dates}");
    let mode = std::fs::metadata(tls.join("replica.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read(tls.join("ca.crt")).unwrap(),
        std::fs::read(&ca).unwrap()
    );

    // A replica given only the CA certificate and its issued pair (no CA key) serves.
    let api = InProcessApi::start(dir.path());
    let kubeconfig = api.kubeconfig.clone();
    // Raft on a socket the test holds (socket activation), every other listener on port 0.
    let raft = process::raft_listeners(1);
    let child = Program::new(PORTICO)
        .args(["run", "--pod-name", "portico-0", "--namespace", "default"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--raft-listen", &raft[0].local_addr().unwrap().to_string()])
        .socket("raft", &raft[0])
        .arg("--raft-ca")
        .arg(tls.join("ca.crt"))
        .arg("--raft-cert")
        .arg(&cert)
        .arg("--raft-key")
        .arg(tls.join("replica.key"))
        .args(LOOPBACK_PORT_0)
        .args(["--admin", "127.0.0.1:0"])
        .spawn("portico-0");
    let admin = portico_run::listening(&child).admin();
    wait_until("/readyz 200", Duration::from_secs(60), || {
        get(&admin, "/readyz").filter(|(code, _)| *code == 200)
    });
    drop(child);
    assert!(
        !dir.path().join("data/tls/replica.crt").exists(),
        "signed its own"
    );
}

/// The shipped manifests: the CA Secret (`ca.key`) is mounted by the issuer `portico-pki`
/// alone; the StatefulSet's Pods mount no Secret at all (the CA certificate comes from a
/// ConfigMap holding `ca.crt` only), run no init container and are told of no CA key.
#[test]
fn the_shipped_statefulset_mounts_no_ca_key_only_the_issuer_does() {
    let docs = kustomize(&deploy_dir());
    let pods = docs
        .iter()
        .filter(|d| !d["spec"]["template"]["spec"].is_null())
        .map(|d| (d["kind"].as_str().unwrap(), &d["spec"]["template"]["spec"]));
    let mut holders = Vec::new();
    for (kind, pod) in pods {
        let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
        let secrets: Vec<&serde_yaml::Value> = volumes
            .iter()
            .filter(|v| {
                !v["secret"].is_null()
                    || v["projected"]["sources"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .any(|s| !s["secret"].is_null())
            })
            .collect();
        if kind == "StatefulSet" {
            assert!(secrets.is_empty(), "a replica mounts a Secret: {secrets:?}");
            assert!(pod["initContainers"].is_null(), "an init container");
            for container in pod["containers"].as_sequence().unwrap() {
                let env = container["env"].as_sequence().unwrap();
                assert!(
                    !env.iter().any(|e| e["name"] == "PORTICO_RAFT_CA_KEY"),
                    "{:?} is told where a CA key is",
                    container["name"]
                );
            }
            for volume in &volumes {
                if let Some(items) = volume["configMap"]["items"].as_sequence() {
                    assert!(items.iter().all(|i| i["key"] == "ca.crt"), "{volume:?}");
                }
            }
        }
        if secrets
            .iter()
            .any(|v| v["secret"]["secretName"] == "portico-raft-ca")
        {
            holders.push(kind.to_owned());
            assert_eq!(pod["serviceAccountName"], "portico-pki");
            let container = &pod["containers"][0];
            assert_eq!(container["args"][0], "pki");
            assert_eq!(container["args"][1], "serve");
        }
    }
    assert_eq!(
        holders,
        ["Deployment"],
        "only the issuer mounts the CA Secret"
    );
}
