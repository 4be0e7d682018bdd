//! C2: a tenant rewriting a referenced TLS Secret as fast as the API server takes it made
//! every write a log entry, and with snapshots only every 5,000 entries the log filled all
//! three volumes at once. What must hold: the log on disk stays within the compaction
//! bounds however many rewrites there are. The entries kept are at most
//! `snapshot_after_entries + entries_kept_after_snapshot` (plus the few appended while a
//! snapshot is built), each at most `MAX_ENTRY_BYTES`, so the log's bytes are bounded by
//! their product (the defaults: 1,500 entries of at most 128 KiB, 188 MiB); here with a
//! small policy so 250 rewrites (15 MiB of log unbounded) show it.

use std::time::Instant;

use k8s_openapi::ByteString;
use portico_model::{ObjectKey, Resource, ResourceKind};
use portico_raft::{RaftSettings, TransportSettings};

use crate::c2_bounded_resync::log_entries;
use crate::support::*;
use crate::{ingress, namespace};

const TENANT: &str = "tenant";
const SNAPSHOT_AFTER: u64 = 40;
const KEPT: u64 = 20;
const REWRITES: u8 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_rewritten_as_fast_as_the_api_allows_keeps_the_log_bounded() {
    let raft = RaftSettings {
        snapshot_after_entries: SNAPSHOT_AFTER,
        entries_kept_after_snapshot: KEPT,
        ..RaftSettings::default()
    };
    let mut cluster =
        Cluster::replicas(TEST_TIMINGS, raft, TransportSettings::default(), |_| {}).await;
    for i in 0..3 {
        cluster.start_controller(i);
    }
    apply_class(&cluster.admin, "conformance").await;
    namespace(&cluster.admin, TENANT).await;
    apply(
        &cluster.admin,
        &ingress(
            TENANT,
            "web",
            serde_json::json!({"ingressClassName": "conformance",
                "tls": [{"hosts": ["hot.example"], "secretName": "hot"}],
                "rules": [{"host": "hot.example", "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]}),
        ),
    )
    .await;
    // Each write waits for the previous one's commit, so each is its own entry (the debounce
    // would fold writes closer together into one): the worst case for the log.
    let started = Instant::now();
    for round in 0..REWRITES {
        let mut secret = tls_secret("hot", &vec![round; 60 << 10], b"key");
        secret.metadata.namespace = Some(TENANT.into());
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("tls.crt".into(), ByteString(vec![round; 60 << 10]));
        apply(&cluster.admin, &secret).await;
        cluster
            .wait_tables("the rewrite", |t| {
                matches!(
                    t.input(ResourceKind::Secret, &ObjectKey::new(TENANT, "hot")),
                    Some(Resource::Secret(s)) if s.tls_crt.as_deref().is_some_and(|c| c[0] == round)
                )
            })
            .await;
    }
    let elapsed = started.elapsed();
    let last_index = cluster.replica(0).metrics().last_log_index.unwrap_or(0);
    assert!(
        last_index >= u64::from(REWRITES),
        "{last_index} entries appended"
    );
    let dirs: Vec<_> = (0..3).map(|i| cluster.data_dir(i).to_owned()).collect();
    cluster.stop_all().await;
    for dir in &dirs {
        let (largest, kept) = log_entries(dir);
        let size = std::fs::metadata(dir.join("raft.redb")).unwrap().len();
        eprintln!(
            "{REWRITES} rewrites of a 60 KiB Secret in {elapsed:?}: {last_index} entries appended, {kept} kept (largest {largest} bytes), raft.redb {size} bytes"
        );
        // A snapshot is built in the background: a few more entries may arrive meanwhile.
        assert!(
            kept as u64 <= SNAPSHOT_AFTER + KEPT + 10,
            "{kept} entries kept of {last_index}"
        );
        // Unbounded, the log alone would be REWRITES × 60 KiB (15 MiB).
        assert!(size < 8 << 20, "raft.redb is {size} bytes");
    }
}
