//! C1: no long-lived CA private key in the serving process.
//!
//! The attacker compromises the process that serves Internet traffic. It must not find the
//! cluster CA's private key there: `portico pki issue` (the StatefulSet's init container,
//! the only container that mounts `ca.key`) signs a short-lived certificate naming the
//! Pod's DNS name, and `portico run` serves Raft with it and the CA certificate alone. The
//! shipped StatefulSet mounts the CA Secret in the init container only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{free_port, get, wait_until};
use portico_test_support::TestCa;

const PORTICO: &str = env!("CARGO_BIN_EXE_portico");

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
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = portico_apiserver::ApiServer::builder()
        .minor_version(33)
        .build()
        .unwrap();
    let _api = runtime
        .block_on(async { server.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await?) })
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    _api.write_kubeconfig(&kubeconfig).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(PORTICO)
        .args(["run", "--pod-name", "portico-0", "--namespace", "default"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--raft-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--raft-ca")
        .arg(tls.join("ca.crt"))
        .arg("--raft-cert")
        .arg(&cert)
        .arg("--raft-key")
        .arg(tls.join("replica.key"))
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .args(["--https", "127.0.0.1:0", "--http3", "127.0.0.1:0"])
        .args(["--admin", &admin])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = std::panic::catch_unwind(|| {
        wait_until("/readyz 200", Duration::from_secs(60), || {
            get(&admin, "/readyz").filter(|(code, _)| *code == 200)
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    ready.unwrap();
    assert!(
        !dir.path().join("data/tls/replica.crt").exists(),
        "signed its own"
    );
}

#[test]
fn the_shipped_statefulset_mounts_the_ca_key_in_the_init_container_only() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&deploy)
        .output()
        .unwrap();
    assert!(out.status.success());
    let rendered = String::from_utf8_lossy(&out.stdout);
    let set: serde_yaml::Value = rendered
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str::<serde_yaml::Value>(doc).unwrap())
        .find(|d| d["kind"] == "StatefulSet")
        .unwrap();
    let pod = &set["spec"]["template"]["spec"];
    let ca_volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == "portico-raft-ca")
        .expect("the CA Secret volume")["name"]
        .clone();
    let mounts_ca = |container: &serde_yaml::Value| {
        container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == ca_volume)
    };
    let init = pod["initContainers"].as_sequence().unwrap();
    assert!(init.iter().any(|c| mounts_ca(c) && c["args"][0] == "pki"));
    for container in pod["containers"].as_sequence().unwrap() {
        assert!(
            !mounts_ca(container),
            "{:?} mounts the CA",
            container["name"]
        );
        let env = container["env"].as_sequence().unwrap();
        assert!(
            !env.iter().any(|e| e["name"] == "PORTICO_RAFT_CA_KEY"),
            "{:?} is told where a CA key is",
            container["name"]
        );
    }
}
