//! C2: a resync put every object into one Raft entry, so a tenant with a few large Secrets
//! (or a big enough cluster) made it larger than one message: refused, the leader stepped
//! down, the next built the same entry, and nothing committed again; a huge entry also
//! stalled replication for everyone. And nothing bounded what one object or one namespace
//! could put into the table. What must hold, through the real controller and three
//! replicas whose Raft messages are kept small (about 1 MiB, so one proposal may be at most
//! about 530 KiB):
//! * a table several messages large (40 referenced 60 KiB Secrets and 40 big Ingresses in
//!   one namespace) is proposed by the first leader in entries of at most `MAX_ENTRY_BYTES`
//!   each, and every entry on every replica's disk is within that bound; an Ingress of
//!   another namespace applied meanwhile is served promptly;
//! * a new leader over a table that already matches proposes no object (one empty marker
//!   entry);
//! * an object over the per-object limit, made with kubectl as a tenant would, is refused
//!   with an `ObjectTooLarge` Event on it, and everything else keeps working;
//! * a namespace flooding past its object budget has its newest objects refused
//!   (`NamespaceQuotaExceeded`), keeps its oldest, and another namespace's newer objects
//!   are all served.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use portico_model::{Limits, MAX_ENTRY_BYTES, ObjectKey, ResourceKind, RoutingTable};
use portico_raft::{RaftSettings, TransportSettings};
use portico_test_support::poll_until;

use crate::support::*;
use crate::{Kubectl, ingress, namespace, wait_event};

const TENANT: &str = "tenant";
const QUIET: &str = "quiet";

/// Raft bodies of 1 MiB + 64 KiB (the least a 1 MiB snapshot chunk allows): a proposal may be
/// half that, so one `MAX_ENTRY_BYTES` entry fits and a 2.4 MiB resync does not.
fn small_messages() -> TransportSettings {
    TransportSettings {
        max_body_bytes: (1 << 20) + (64 << 10),
        ..TransportSettings::default()
    }
}

/// Production limits, but a namespace may hold only 100 objects, so the flood below stays
/// quick.
fn test_limits(config: &mut portico_controller::ControllerConfig) {
    config.limits = Limits {
        max_namespace_objects: 100,
        ..Limits::default()
    };
}

/// A `kubernetes.io/tls` Secret of about `bytes` bytes (junk: the API server checks only the
/// keys, and a tenant's junk must cost what a real certificate would).
fn junk_secret(ns: &str, name: &str, bytes: usize) -> Secret {
    let mut secret = tls_secret(name, &vec![b'x'; bytes], b"key");
    secret.metadata.namespace = Some(ns.into());
    secret
}

/// The `i`th path of a [`big_ingress`].
fn path_number(i: usize) -> String {
    format!("/some/rather/long/path/number/{i:05}/to/make/the/ingress/big")
}

/// An Ingress of `paths` paths on `host`, using Secret `secret` for it.
fn big_ingress(ns: &str, name: &str, host: &str, secret: Option<&str>, paths: usize) -> Ingress {
    let paths: Vec<_> = (0..paths)
        .map(|i| {
            serde_json::json!({
                "path": path_number(i),
                "pathType": "Prefix",
                "backend": {"service": {"name": "svc", "port": {"number": 80}}}
            })
        })
        .collect();
    let mut spec = serde_json::json!({
        "ingressClassName": "conformance",
        "rules": [{"host": host, "http": {"paths": paths}}],
    });
    if let Some(secret) = secret {
        spec["tls"] = serde_json::json!([{"hosts": [host], "secretName": secret}]);
    }
    ingress(ns, name, spec)
}

/// The largest log entry in the `raft.redb` of a stopped replica, in bytes, and how many.
pub fn log_entries(dir: &Path) -> (usize, usize) {
    // A copy: the aborted controllers' tasks may still hold the store open in this
    // process, and redb refuses a second open of the same file.
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(dir.join("raft.redb"), copy.path()).unwrap();
    let db = redb::Database::open(copy.path()).unwrap();
    let read = db.begin_read().unwrap();
    let log: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
    let table = read.open_table(log).unwrap();
    let mut largest = 0;
    let mut count = 0;
    for entry in table.iter().unwrap() {
        let (_, value) = entry.unwrap();
        largest = largest.max(value.value().len());
        count += 1;
    }
    (largest, count)
}

/// Every input of `table`.
fn inputs(table: &RoutingTable) -> Vec<portico_model::Resource> {
    table
        .input_keys()
        .filter_map(|(kind, key)| table.input(kind, key))
        .collect()
}

fn holds(table: &RoutingTable, kind: ResourceKind, ns: &str, name: &str) -> bool {
    table.input(kind, &ObjectKey::new(ns, name)).is_some()
}

/// Three replicas (Raft messages limited by `transport`, namespaces by `test_limits`), the
/// `conformance` IngressClass and the two namespaces; no controller runs yet.
async fn tenant_cluster(transport: TransportSettings) -> Cluster {
    let cluster = Cluster::replicas(
        TEST_TIMINGS,
        RaftSettings::default(),
        transport,
        test_limits,
    )
    .await;
    apply_class(&cluster.admin, "conformance").await;
    namespace(&cluster.admin, TENANT).await;
    namespace(&cluster.admin, QUIET).await;
    cluster
}

fn start_controllers(cluster: &mut Cluster) {
    for i in 0..3 {
        cluster.start_controller(i);
    }
}

/// Waits until this machine's clock, which the API server stamps `creationTimestamp` with, is
/// past the second the tenant's Ingress `name` was made in: that field has second precision,
/// so only what is made after this is newer.
async fn wait_past_creation_of(client: &kube::Client, name: &str) {
    let made = kube::Api::<Ingress>::namespaced(client.clone(), TENANT)
        .get(name)
        .await
        .unwrap()
        .metadata
        .creation_timestamp
        .expect("the API server stamps creationTimestamp")
        .0
        .as_second();
    let next = UNIX_EPOCH + Duration::from_secs(u64::try_from(made).unwrap() + 1);
    if let Ok(left) = next.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

const RESYNC_PROPOSALS: &str = "portico_controller_proposals_total{kind=\"resync\"}";

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_larger_than_one_message_resyncs_in_bounded_entries_and_a_matching_one_proposes_no_object()
 {
    let mut cluster = tenant_cluster(small_messages()).await;
    // Before any controller runs: the first leader's resync must carry all of it.
    for i in 0..40 {
        let name = format!("big-{i:02}");
        apply(&cluster.admin, &junk_secret(TENANT, &name, 60 << 10)).await;
        let host = format!("{name}.tenant.example");
        apply(
            &cluster.admin,
            &big_ingress(TENANT, &name, &host, Some(&name), 200),
        )
        .await;
    }
    start_controllers(&mut cluster);
    let started = Instant::now();
    cluster
        .wait_tables("the tenant's 40 Secrets and Ingresses", |t| {
            (0..40).all(|i| {
                let name = format!("big-{i:02}");
                holds(t, ResourceKind::Secret, TENANT, &name)
                    && holds(t, ResourceKind::Ingress, TENANT, &name)
            })
        })
        .await;
    let resynced = started.elapsed();
    let bytes = cluster.replica(0).table().borrow().to_bytes().len();
    assert!(
        bytes > small_messages().max_body_bytes,
        "the table ({bytes} bytes) is larger than one Raft message"
    );

    // Another namespace's Ingress is served promptly, during the tenant's churn too.
    let churn = {
        let admin = cluster.admin.clone();
        tokio::spawn(async move {
            for round in 0..2u8 {
                for i in 0..40 {
                    let name = format!("big-{i:02}");
                    let mut secret = junk_secret(TENANT, &name, 60 << 10);
                    let data = secret.data.as_mut().unwrap();
                    data.insert("tls.crt".into(), ByteString(vec![b'a' + round; 60 << 10]));
                    apply(&admin, &secret).await;
                }
            }
        })
    };
    let applied = Instant::now();
    apply(
        &cluster.admin,
        &ingress(
            QUIET,
            "web",
            serde_json::json!({"ingressClassName": "conformance", "rules": [{"host": "quiet.example", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]}),
        ),
    )
    .await;
    cluster
        .wait_tables("the quiet namespace's Ingress", |t| {
            t.lookup("quiet.example", "/").is_some()
        })
        .await;
    let quiet_latency = applied.elapsed();
    churn.await.unwrap();
    assert!(
        quiet_latency < Duration::from_secs(10),
        "another namespace's Ingress took {quiet_latency:?}"
    );
    cluster
        .wait_tables("the last round of the tenant's Secrets", |t| {
            matches!(
                t.input(ResourceKind::Secret, &ObjectKey::new(TENANT, "big-39")),
                Some(portico_model::Resource::Secret(s)) if s.tls_crt.as_deref().is_some_and(|c| c[0] == b'b')
            )
        })
        .await;

    // A new leader over a table that already matches proposes nothing. (Counters are per
    // replica, over all its leaderships: compare with what each had before.)
    let leader = cluster.wait_for_controller_leader().await;
    let matching = cluster.replica(leader).table().borrow().clone();
    let version = matching.version();
    let before: Vec<(u64, u64)> = (0..3)
        .map(|i| {
            let metrics = cluster.metrics_text(i);
            (
                counter(&metrics, "portico_controller_reconciles_total"),
                counter(&metrics, RESYNC_PROPOSALS),
            )
        })
        .collect();
    cluster.kill(leader).await;
    let next = cluster.wait_for_controller_leader().await;
    // A counter offers nothing to subscribe to: polled.
    poll_until("the new leader's resync", PATIENCE, || async {
        let reconciles = counter(
            &cluster.metrics_text(next),
            "portico_controller_reconciles_total",
        );
        (reconciles > before[next].0).then_some(())
    })
    .await
    .unwrap();
    // One entry holding no object (a retry after a timeout would count twice), and every
    // input as it was.
    let metrics = cluster.metrics_text(next);
    let proposed = counter(&metrics, RESYNC_PROPOSALS) - before[next].1;
    assert!((1..=2).contains(&proposed), "{metrics}");
    let after = cluster.replica(next).table().borrow().clone();
    assert!(after.version() > version);
    assert!(inputs(&after) == inputs(&matching));

    let dirs: Vec<_> = (0..3).map(|i| cluster.data_dir(i).to_owned()).collect();
    cluster.stop_all().await;
    // The largest entry is one chunk plus the entry's own envelope (log id, epoch).
    for dir in &dirs {
        let (largest, count) = log_entries(dir);
        assert!(count > 3, "{count} entries kept");
        assert!(
            largest <= MAX_ENTRY_BYTES + 64,
            "an entry of {largest} bytes"
        );
        assert!(
            largest > MAX_ENTRY_BYTES / 2,
            "the chunks are full ({largest})"
        );
    }
    eprintln!(
        "resync of {bytes} bytes committed in {resynced:?}; quiet Ingress in {quiet_latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_over_the_limit_is_refused_with_an_event_and_nothing_else_is() {
    let mut cluster = tenant_cluster(TransportSettings::default()).await;
    start_controllers(&mut cluster);
    let kubectl = Kubectl::start(&cluster.api).await;
    // As a tenant would, with kubectl; `--server-side` where client-side apply would copy the
    // object into an annotation, over 256 KiB.
    let kubectl_apply = async |ingress: &Ingress, server_side: bool| {
        let yaml = serde_json::to_string(ingress).unwrap();
        let args: &[&str] = if server_side {
            &["apply", "--server-side", "-f", "-"]
        } else {
            &["apply", "-f", "-"]
        };
        kubectl.run(args, &yaml).await;
    };
    let served = async |host: &str| {
        cluster
            .wait_tables(&format!("{host} served"), |t| {
                t.lookup(host, &path_number(0)).is_some()
            })
            .await;
    };
    kubectl_apply(
        &big_ingress(TENANT, "small", "small.tenant.example", None, 1),
        false,
    )
    .await;
    served("small.tenant.example").await;
    // 2,000 paths: about 180 KiB for routing, over the default 96 KiB limit.
    let huge = big_ingress(TENANT, "huge", "huge.tenant.example", None, 2000);
    kubectl_apply(&huge, true).await;
    let note = wait_event(&cluster.admin, TENANT, "huge", "ObjectTooLarge").await;
    assert!(note.contains("--max-object-bytes"), "{note}");
    // Everything else keeps working: a later Ingress is served, the huge one is not.
    let later = big_ingress(TENANT, "later", "later.tenant.example", None, 1);
    kubectl_apply(&later, false).await;
    served("later.tenant.example").await;
    for (_, replica) in cluster.running() {
        let table = replica.table().borrow().clone();
        assert!(!holds(&table, ResourceKind::Ingress, TENANT, "huge"));
        assert!(table.lookup("huge.tenant.example", "/").is_none());
        assert!(holds(&table, ResourceKind::Ingress, TENANT, "small"));
    }
    // Shrunk under the limit, it is served.
    let fixed = big_ingress(TENANT, "huge", "huge.tenant.example", None, 10);
    kubectl_apply(&fixed, true).await;
    served("huge.tenant.example").await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_namespace_flooding_its_budget_never_refuses_another_namespaces_objects() {
    let mut cluster = tenant_cluster(TransportSettings::default()).await;
    start_controllers(&mut cluster);
    // 130 Ingresses where 100 objects are allowed; creationTimestamp has second precision,
    // so the first ones are made in an earlier second than the rest.
    let flood = |i: usize| {
        big_ingress(
            TENANT,
            &format!("flood-{i:03}"),
            &format!("flood-{i:03}.tenant.example"),
            None,
            1,
        )
    };
    for i in 0..10 {
        apply(&cluster.admin, &flood(i)).await;
    }
    wait_past_creation_of(&cluster.admin, "flood-009").await;
    for i in 10..130 {
        apply(&cluster.admin, &flood(i)).await;
    }
    // The quiet namespace's Ingresses come after all of it: the newest in the cluster.
    wait_past_creation_of(&cluster.admin, "flood-129").await;
    for i in 0..20 {
        apply(
            &cluster.admin,
            &big_ingress(
                QUIET,
                &format!("web-{i}"),
                &format!("web-{i}.quiet.example"),
                None,
                1,
            ),
        )
        .await;
    }
    let path = &path_number(0);
    cluster
        .wait_tables("every quiet Ingress", |t| {
            (0..20).all(|i| t.lookup(&format!("web-{i}.quiet.example"), path).is_some())
        })
        .await;
    cluster
        .wait_tables("the tenant's first hundred", |t| {
            (0..130)
                .filter(|i| holds(t, ResourceKind::Ingress, TENANT, &format!("flood-{i:03}")))
                .count()
                == 100
        })
        .await;
    for (_, replica) in cluster.running() {
        let table = replica.table().borrow().clone();
        // The oldest ten are kept whatever order the rest came in.
        for i in 0..10 {
            assert!(
                table
                    .lookup(&format!("flood-{i:03}.tenant.example"), path)
                    .is_some()
            );
        }
    }
    let refused = (10..130)
        .find(|i| {
            !holds(
                &cluster.replica(0).table().borrow(),
                ResourceKind::Ingress,
                TENANT,
                &format!("flood-{i:03}"),
            )
        })
        .unwrap();
    let note = wait_event(
        &cluster.admin,
        TENANT,
        &format!("flood-{refused:03}"),
        "NamespaceQuotaExceeded",
    )
    .await;
    assert!(note.contains("--max-namespace-objects"), "{note}");
    cluster.stop_all().await;
}
