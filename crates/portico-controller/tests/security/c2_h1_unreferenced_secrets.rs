//! C2 / H1: every `kubernetes.io/tls` Secret in the cluster went into the Raft log, the
//! snapshots on three volumes and every peer, whether or not an Ingress used it; and a
//! tenant's 1 MiB Secrets wedged replication. What must hold, through the real controller:
//! an unreferenced Secret's key is in no committed table and in no file of any replica's
//! data directory (`raft.redb`, mode 0600, in a 0700 directory); it enters once an Ingress of
//! ours references it and leaves when none does; a referenced Secret over the size limit is
//! not stored, gets a `SecretTooLarge` Event, and other routes keep working.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use portico_model::{MAX_TLS_SECRET_BYTES, ObjectKey, ProblemReason};

use crate::support::*;
use crate::{Kubectl, ingress, wait_event};

fn certificate(name: &str) -> (Vec<u8>, Vec<u8>) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    (
        certified.cert.pem().into_bytes(),
        certified.signing_key.serialize_pem().into_bytes(),
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether any file under `dir` holds `needle`.
fn on_disk(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            on_disk(&path, needle)
        } else {
            contains(&std::fs::read(&path).unwrap_or_default(), needle)
        }
    })
}

/// The base64-free body of a PEM key: what a Raft entry would carry.
fn key_body(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).unwrap();
    text.lines().nth(1).unwrap().as_bytes().to_vec()
}

fn web(secrets: &[(&str, &str)]) -> k8s_openapi::api::networking::v1::Ingress {
    let tls: Vec<_> = secrets
        .iter()
        .map(|(host, secret)| serde_json::json!({"hosts": [host], "secretName": secret}))
        .collect();
    let rules: Vec<_> = secrets
        .iter()
        .map(|(host, _)| {
            serde_json::json!({"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "svc", "port": {"number": 80}}}
            }]}})
        })
        .collect();
    ingress(
        NAMESPACE,
        "web",
        serde_json::json!({"ingressClassName": "conformance", "tls": tls, "rules": rules}),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreferenced_secret_never_reaches_the_log_a_snapshot_or_a_peer() {
    let cluster = Cluster::start().await;
    apply_class(&cluster.admin, "conformance").await;
    let (used_crt, used_key) = certificate("used.example");
    let (spare_crt, spare_key) = certificate("spare.example");
    // The spare Secret first, so that it is there in every list and resync; made with
    // kubectl, as a tenant would.
    let kubectl = Kubectl::start(&cluster.api).await;
    kubectl
        .create_tls_secret(NAMESPACE, "spare", &spare_crt, &spare_key)
        .await;
    apply(&cluster.admin, &tls_secret("used", &used_crt, &used_key)).await;
    apply(&cluster.admin, &web(&[("used.example", "used")])).await;
    cluster
        .wait_tables("the used certificate", |t| {
            t.certificate_for(Some("used.example")).is_some()
        })
        .await;
    // Another change after it, so the Secrets' moment is well in the past.
    apply(&cluster.admin, &ingress_marker("after-1")).await;
    cluster
        .wait_tables("the marker", |t| t.lookup("after-1.example", "/").is_some())
        .await;

    let (used, spare) = (key_body(&used_key), key_body(&spare_key));
    for (i, replica) in cluster.running() {
        let snapshot = replica.table().borrow().to_bytes();
        assert!(
            contains(&snapshot, &used),
            "replica {i}: the used key is in the table"
        );
        assert!(
            !contains(&snapshot, &spare),
            "replica {i}: the spare key is not"
        );
        let dir = cluster.data_dir(i);
        assert!(
            on_disk(dir, &used),
            "replica {i}: the check sees keys on disk"
        );
        assert!(
            !on_disk(dir, &spare),
            "replica {i}: the spare key is on no disk"
        );
        assert_eq!(mode(&dir.join("raft.redb")), 0o600, "replica {i}");
        assert_eq!(mode(dir), 0o700, "replica {i}");
    }

    // Referenced: it is proposed; no longer referenced: deleted from the table.
    apply(
        &cluster.admin,
        &web(&[("used.example", "used"), ("spare.example", "spare")]),
    )
    .await;
    cluster
        .wait_tables("the spare certificate, once referenced", |t| {
            t.certificate_for(Some("spare.example")).is_some()
        })
        .await;
    apply(&cluster.admin, &web(&[("used.example", "used")])).await;
    cluster
        .wait_tables("the spare key gone from the table", |t| {
            t.certificate_for(Some("spare.example")).is_none() && !contains(&t.to_bytes(), &spare)
        })
        .await;
    // Deleting the used Secret takes it out of the table's inputs (its last good version
    // stays served while referenced, as before).
    Api::<Secret>::namespaced(cluster.admin.clone(), NAMESPACE)
        .delete("used", &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .wait_tables(
            "the deleted Secret reported, its last good copy served",
            |t| {
                t.problems(&ObjectKey::new(NAMESPACE, "web"), 0)
                    .iter()
                    .any(|p| p.reason == ProblemReason::SecretNotFound)
                    && t.certificate_for(Some("used.example")).is_some()
            },
        )
        .await;
}

fn ingress_marker(name: &str) -> k8s_openapi::api::networking::v1::Ingress {
    crate::support::ingress(name, &format!("{name}.example"), "/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_secret_is_refused_with_an_event_and_others_keep_working() {
    let cluster = Cluster::start().await;
    apply_class(&cluster.admin, "conformance").await;
    let (crt, key) = certificate("big.example");
    let mut junk = crt.clone();
    junk.resize(MAX_TLS_SECRET_BYTES * 16, b'A');
    apply(&cluster.admin, &tls_secret("big", &junk, &key)).await;
    let (crt, key) = certificate("fine.example");
    apply(&cluster.admin, &tls_secret("fine", &crt, &key)).await;
    apply(
        &cluster.admin,
        &web(&[("big.example", "big"), ("fine.example", "fine")]),
    )
    .await;
    let note = wait_event(&cluster.admin, NAMESPACE, "web", "SecretTooLarge").await;
    assert!(
        note.contains("default/big"),
        "the Event names the Secret: {note}"
    );
    cluster
        .wait_tables("the fine certificate and routes", |t| {
            t.certificate_for(Some("fine.example")).is_some()
                && t.certificate_for(Some("big.example")).is_none()
                && t.lookup("big.example", "/").is_some()
        })
        .await;
    for (i, _) in cluster.running() {
        assert!(
            !on_disk(cluster.data_dir(i), &junk[junk.len() - 4096..]),
            "replica {i}: the oversized data is on no disk"
        );
    }
    // New changes still commit.
    apply(&cluster.admin, &ingress_marker("after-big")).await;
    cluster
        .wait_tables("a later Ingress", |t| {
            t.lookup("after-big.example", "/").is_some()
        })
        .await;
}
