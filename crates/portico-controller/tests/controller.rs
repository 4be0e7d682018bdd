//! The controller against the in-process API server, with three Raft replicas over mTLS.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use portico_model::{IngressVerdict, ObjectKey};
use portico_raft::ProposeError;
use portico_test_support::poll_until;
use support::*;

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../portico-model/tests/data");
/// The workspace's test data shared by several crates (testdata/README.md).
const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata");

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(NAMESPACE, name)
}

/// The docs' Ingress, the conformance manifests (class `conformance` where they name
/// none, as the conformance harness does) and a TLS Ingress.
async fn load_manifests(cluster: &Cluster) -> Vec<String> {
    let client = &cluster.admin;
    apply_class(client, "conformance").await;
    apply_class(client, "nginx-example").await;
    let mut names = Vec::new();
    let docs = std::fs::read_to_string(format!("{TESTDATA}/minimal-ingress.yaml")).unwrap();
    let mut documents = vec![docs];
    for file in [
        "default-backend",
        "host-rules",
        "ingress-class",
        "load-balancing",
        "path-rules",
    ] {
        documents
            .push(std::fs::read_to_string(format!("{TESTDATA}/manifests/{file}.yaml")).unwrap());
    }
    for text in documents {
        let mut ingress: Ingress = serde_yaml::from_str(&text).unwrap();
        let spec = ingress.spec.get_or_insert_default();
        if spec.ingress_class_name.is_none() {
            spec.ingress_class_name = Some("conformance".into());
        }
        names.push(ingress.metadata.name.clone().unwrap());
        apply(client, &ingress).await;
    }
    let cert = std::fs::read(format!("{MANIFESTS}/tls/rsa.crt")).unwrap();
    let key = std::fs::read(format!("{MANIFESTS}/tls/rsa-pkcs8.key")).unwrap();
    apply(client, &tls_secret("rsa-tls", &cert, &key)).await;
    let mut tls: Ingress = ingress("tls", "rsa.example", "/");
    tls.spec.as_mut().unwrap().tls = Some(vec![
        serde_json::from_value(serde_json::json!({
            "hosts": ["rsa.example"], "secretName": "rsa-tls"
        }))
        .unwrap(),
    ]);
    apply(client, &tls).await;
    names.push("tls".into());
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifests_become_routes_everywhere_and_one_replica_writes_status() {
    let cluster = Cluster::start().await;
    let names = load_manifests(&cluster).await;
    // An invalid Ingress (an annotation that does not parse): an Event, no routes, no status.
    let mut bad = ingress("bad-annotation", "bad.example", "/");
    bad.metadata.annotations = Some(
        [(
            "nginx.ingress.kubernetes.io/proxy-connect-timeout".to_owned(),
            "soon".to_owned(),
        )]
        .into(),
    );
    apply(&cluster.admin, &bad).await;

    cluster
        .wait_tables("every manifest planned, TLS served", |t| {
            names.iter().all(|n| t.ingress_verdict(&key(n)).is_some())
                && t.ingress_verdict(&key("bad-annotation")) == Some(IngressVerdict::Rejected)
                && t.certificate_for(Some("rsa.example")).is_some()
        })
        .await;
    for (i, replica) in cluster.running() {
        let table = replica.table().borrow().clone();
        assert!(
            table.lookup("example.com", "/testpath").is_some(),
            "replica {i}: docs Ingress"
        );
        assert!(
            table.lookup("foo.bar.com", "/").is_some(),
            "replica {i}: host rules"
        );
        assert!(
            table.lookup("rsa.example", "/").is_some(),
            "replica {i}: TLS Ingress"
        );
        assert_eq!(
            table.ingress_verdict(&key("test-ingress-class")),
            Some(IngressVerdict::NotOurs),
            "replica {i}: another class"
        );
        assert!(
            table
                .lookup("ingress-class", "/")
                .is_none_or(|r| r.ingress != key("test-ingress-class")),
            "replica {i}: another class's Ingress is not routed"
        );
    }

    // Status: every accepted Ingress shows our address; the foreign and the invalid none.
    for name in names.iter().filter(|n| *n != "test-ingress-class") {
        wait_ingress(&cluster.admin, name, "given our status address", |i| {
            status_addresses(i) == [STATUS_ADDRESS]
        })
        .await;
    }
    let leader = cluster.wait_for_controller_leader().await;
    let lease = cluster.lease().await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.unwrap(),
        cluster.identity(leader),
        "the controller leader holds the Lease"
    );
    let api = Api::<Ingress>::namespaced(cluster.admin.clone(), NAMESPACE);
    for name in ["test-ingress-class", "bad-annotation"] {
        let ingress = api.get(name).await.unwrap();
        assert!(
            status_addresses(&ingress).is_empty(),
            "{name} must have no status"
        );
    }
    let writers: std::collections::BTreeSet<usize> = cluster
        .writes
        .lock()
        .unwrap()
        .iter()
        .map(|w| w.node)
        .collect();
    assert_eq!(
        writers,
        [leader].into(),
        "status written by the leader only"
    );

    // The invalid Ingress got an Event naming the field.
    let events = Api::<Event>::namespaced(cluster.admin.clone(), NAMESPACE);
    let event = poll_until("an Event for the invalid Ingress", PATIENCE, || async {
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items.into_iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad-annotation")
        })
    })
    .await
    .unwrap();
    assert_eq!(event.reason.as_deref(), Some("InvalidAnnotation"));
    let note = event.note.clone().unwrap_or_default();
    assert!(
        note.contains("proxy-connect-timeout"),
        "note names the field: {note}"
    );
    let metrics = cluster.metrics_text(leader);
    assert!(
        metrics.contains("portico_controller_is_leader 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portico_controller_invalid_ingresses{reason=\"InvalidAnnotation\"} 1"),
        "{metrics}"
    );

    // An Ingress that leaves our class has its status cleared; deleting one removes its routes.
    let mut moved = ingress("path-rules", "", "/");
    moved = Ingress {
        spec: api.get("path-rules").await.unwrap().spec,
        ..moved
    };
    moved.spec.as_mut().unwrap().ingress_class_name = Some("someone-else".into());
    apply(&cluster.admin, &moved).await;
    wait_ingress(&cluster.admin, "path-rules", "cleared", |i| {
        status_addresses(i).is_empty()
    })
    .await;
    api.delete("tls", &DeleteParams::default()).await.unwrap();
    cluster
        .wait_tables("tls deleted", |t| {
            t.ingress_verdict(&key("tls")).is_none()
                && t.ingress_verdict(&key("path-rules")) == Some(IngressVerdict::NotOurs)
        })
        .await;
}

/// Applies `count` changes to one Ingress (path /v0, /v1, ...) and a new Ingress per step,
/// one every `every`: paced on purpose, so that changes keep arriving while the leader fails.
async fn stream_changes(client: &kube::Client, count: usize, every: Duration) {
    for i in 0..count {
        apply(
            client,
            &ingress("stream", "stream.example", &format!("/v{i}")),
        )
        .await;
        apply(
            client,
            &ingress(&format!("stream-{i}"), &format!("s{i}.example"), "/"),
        )
        .await;
        tokio::time::sleep(every).await;
    }
}

/// The stream's first changes are served everywhere: the leader fails mid-stream.
async fn stream_flowing(cluster: &Cluster) {
    cluster
        .wait_tables("the stream's first changes", |t| {
            t.ingress_verdict(&key("stream-2")).is_some()
        })
        .await;
}

/// Every change of the stream landed, the last one last.
async fn assert_stream_landed(cluster: &Cluster, count: usize) {
    let last = format!("/v{}", count - 1);
    let before_last = format!("/v{}", count - 2);
    cluster
        .wait_tables("every streamed change, the last one last", |t| {
            (0..count).all(|i| t.ingress_verdict(&key(&format!("stream-{i}"))).is_some())
                && t.lookup("stream.example", &last).is_some()
                && t.lookup("stream.example", &before_last).is_none()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_leader_is_replaced_within_a_lease_and_no_change_is_lost() {
    let mut cluster = Cluster::start().await;
    cluster.apply_first_ingress().await;
    wait_ingress(&cluster.admin, "before", "given status", |i| {
        status_addresses(i) == [STATUS_ADDRESS]
    })
    .await;
    let old = cluster.wait_for_controller_leader().await;
    let old_epoch = cluster.nodes[old]
        .controller
        .as_ref()
        .unwrap()
        .status
        .borrow()
        .epoch
        .unwrap();

    let client = cluster.admin.clone();
    let changes =
        tokio::spawn(async move { stream_changes(&client, 30, Duration::from_millis(100)).await });
    stream_flowing(&cluster).await;
    let killed_at = Instant::now();
    cluster.kill(old).await;
    let new = cluster.wait_for_controller_leader().await;
    let failover = killed_at.elapsed();
    println!("failover after abort: {failover:?} (lease {LEASE:?} + retry {RETRY:?})");
    assert_ne!(new, old);
    // Raft elects within ~1.2 s; the Lease expires LEASE after the others last saw it renewed.
    assert!(
        failover < LEASE + RETRY + Duration::from_secs(3),
        "failover took {failover:?}"
    );
    let new_epoch = cluster.nodes[new]
        .controller
        .as_ref()
        .unwrap()
        .status
        .borrow()
        .epoch
        .unwrap();
    assert!(
        new_epoch > old_epoch,
        "epochs grow: {old_epoch} -> {new_epoch}"
    );
    changes.await.unwrap();
    assert_stream_landed(&cluster, 30).await;
    wait_ingress(
        &cluster.admin,
        "stream-29",
        "given status by the new leader",
        |i| status_addresses(i) == [STATUS_ADDRESS],
    )
    .await;
    // The leader change neither cleared nor rewrote the status it found in place.
    let before = Api::<Ingress>::namespaced(cluster.admin.clone(), NAMESPACE)
        .get("before")
        .await
        .unwrap();
    assert_eq!(status_addresses(&before), [STATUS_ADDRESS]);
    let rewritten = cluster
        .writes
        .lock()
        .unwrap()
        .iter()
        .any(|w| w.node == new && w.path.ends_with("/before/status"));
    assert!(!rewritten, "the new leader rewrote an unchanged status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_leader_hands_over_in_about_a_second() {
    let mut cluster = Cluster::start().await;
    cluster.apply_first_ingress().await;
    let old = cluster.wait_for_controller_leader().await;
    let client = cluster.admin.clone();
    let changes =
        tokio::spawn(async move { stream_changes(&client, 20, Duration::from_millis(100)).await });
    stream_flowing(&cluster).await;

    let controller = cluster.nodes[old].controller.take().unwrap();
    let started = Instant::now();
    controller.shutdown.cancel();
    controller.task.await.unwrap().unwrap();
    let returned = started.elapsed();
    let lease = cluster.lease().await.unwrap();
    assert_ne!(
        lease.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some(controller.identity.as_str()),
        "run() returns after releasing the Lease"
    );
    // run() handed Raft leadership on as well (only the Raft leader campaigns); the old
    // replica runs on as a follower, as during a rolling restart's drain.
    let new = cluster.wait_for_controller_leader().await;
    let handover = started.elapsed();
    println!("graceful handover: run() returned after {returned:?}, new leader after {handover:?}");
    assert_ne!(new, old);
    assert!(
        !cluster.nodes[old]
            .replica
            .as_ref()
            .unwrap()
            .leadership()
            .is_leader
    );
    // About one Raft leader lease (1.2 s here): followers refuse to elect anyone before it
    // has run out. Generous for a loaded machine.
    assert!(
        handover < Duration::from_secs(3),
        "handover took {handover:?}"
    );
    changes.await.unwrap();
    assert_stream_landed(&cluster, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_stops_before_the_next_starts_and_its_epoch_is_refused() {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};

    let mut cluster = Cluster::start().await;
    apply_class(&cluster.admin, "conformance").await;
    apply(&cluster.admin, &ingress("before", "before.example", "/")).await;
    wait_ingress(&cluster.admin, "before", "given status", |i| {
        status_addresses(i) == [STATUS_ADDRESS]
    })
    .await;
    let old = cluster.wait_for_controller_leader().await;
    let old_controller = cluster.nodes[old].controller.as_ref().unwrap();
    let old_epoch = old_controller.status.borrow().epoch.unwrap();
    let mut old_status = old_controller.status.clone();

    // Sample the old leader's own view of its lease (a clock reading behind a mutex, with
    // nothing to subscribe to; the sampling period bounds how late "last valid" can be).
    let validity = old_controller.lease.clone();
    let last_valid = Arc::new(Mutex::new(Instant::now()));
    let sampler = {
        let last_valid = last_valid.clone();
        tokio::spawn(async move {
            loop {
                if validity.is_valid() {
                    *last_valid.lock().unwrap() = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // Cut the leader off the API server: it must step down by its renew deadline, though
    // it cannot tell anyone.
    // Cut first, then the time: every write the old leader sent at or after `cut_at` met
    // the cut (see `StatusWrite::at`).
    cluster.nodes[old].cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    tokio::time::timeout(PATIENCE, old_status.wait_for(|s| !s.is_leader))
        .await
        .unwrap()
        .unwrap();
    let stepped_down = cut_at.elapsed();
    let reason = old_status.borrow().last_error.clone().unwrap_or_default();
    println!("partitioned leader stepped down after {stepped_down:?}: {reason}");
    assert!(reason.contains("renew deadline"), "{reason}");
    assert!(
        stepped_down <= RENEW + RETRY + Duration::from_secs(1),
        "{stepped_down:?}"
    );
    assert!(
        !cluster.nodes[old]
            .controller
            .as_ref()
            .unwrap()
            .lease
            .is_valid()
    );

    // Now its peers lose it too (its Raft stops): a new leader takes over, but only after
    // the Lease expired by the others' clocks, so after the old one stopped acting.
    cluster.nodes[old].replica.take().unwrap().shutdown().await;
    apply(&cluster.admin, &ingress("during", "during.example", "/")).await;
    let new = cluster.wait_for_controller_leader().await;
    let new_started = Instant::now();
    let new_epoch = cluster.nodes[new]
        .controller
        .as_ref()
        .unwrap()
        .status
        .borrow()
        .epoch
        .unwrap();
    sampler.abort();
    let old_last_valid = *last_valid.lock().unwrap();
    assert!(
        old_last_valid < new_started,
        "the old leader's lease was valid until after the new leader started"
    );
    wait_ingress(
        &cluster.admin,
        "during",
        "given status by the new leader",
        |i| status_addresses(i) == [STATUS_ADDRESS],
    )
    .await;
    // The API server makes the status visible before the writer's client has recorded its
    // response: wait for the record too.
    let writes = poll_until(
        "the new leadership's status write recorded",
        PATIENCE,
        || {
            let writes = cluster.writes.lock().unwrap().clone();
            let new_wrote = writes.iter().any(|w| w.node != old);
            async move { new_wrote.then_some(writes) }
        },
    )
    .await
    .unwrap();
    let last_old = writes.iter().filter(|w| w.node == old).map(|w| w.at).max();
    // Any replica but the old leader: with two replicas left, Raft leadership (and so the
    // Lease) may still move once after `new` first leads.
    let first_new = writes
        .iter()
        .filter(|w| w.node != old)
        .map(|w| w.at)
        .min()
        .expect("the new leadership wrote status");
    if let Some(last_old) = last_old {
        assert!(
            last_old < first_new,
            "status writes of two leaders interleaved"
        );
    }
    // After the cut: one writer, or two one after the other (Raft leadership, and the Lease
    // with it, may move once more between the two left), never back and forth.
    let mut after_cut: Vec<(usize, Instant)> = writes
        .iter()
        .filter(|w| w.at >= cut_at)
        .map(|w| (w.node, w.at))
        .collect();
    after_cut.sort_by_key(|(_, at)| *at);
    let mut writers: Vec<usize> = after_cut.iter().map(|(node, _)| *node).collect();
    writers.dedup();
    assert!(
        writers.len() <= 2 && !writers.contains(&old),
        "status writers after the cut (old leader {old}): {writers:?}"
    );

    // A late proposal from the deposed leader, with its epoch, is refused everywhere.
    assert!(new_epoch > old_epoch);
    let replica = cluster.replica(new).clone();
    poll_until("the new epoch applied", PATIENCE, || async {
        (replica.metrics().highest_epoch >= new_epoch).then_some(())
    })
    .await
    .unwrap();
    let late = portico_model::Change::Delete {
        kind: portico_model::ResourceKind::Ingress,
        key: key("before"),
    };
    match replica.propose(old_epoch, late).await {
        Err(ProposeError::StaleEpoch {
            epoch,
            highest_epoch,
        }) => {
            assert_eq!(epoch, old_epoch);
            assert!(highest_epoch >= new_epoch);
        }
        other => panic!("a stale proposal was not refused: {other:?}"),
    }
    cluster
        .wait_tables("the refused delete changed nothing", |t| {
            t.lookup("before.example", "/").is_some() && t.lookup("during.example", "/").is_some()
        })
        .await;
}

/// A Raft leader that can reach its peers but not the API server must not keep everyone
/// from leading: it gives the Lease up, hands Raft leadership on, and the next replica takes
/// the Lease once it has expired; changes made meanwhile land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_cut_off_from_the_api_server_only_hands_over_and_changes_keep_landing() {
    use std::sync::atomic::Ordering;

    let cluster = Cluster::start().await;
    cluster.apply_first_ingress().await;
    let old = cluster.wait_for_controller_leader().await;
    let mut old_status = cluster.nodes[old]
        .controller
        .as_ref()
        .unwrap()
        .status
        .clone();

    // Cut first, then the time: every write the old leader sent at or after `cut_at` met
    // the cut (see `StatusWrite::at`).
    cluster.nodes[old].cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    apply(&cluster.admin, &ingress("during", "during.example", "/")).await;
    tokio::time::timeout(PATIENCE, old_status.wait_for(|s| !s.is_leader))
        .await
        .unwrap()
        .unwrap();

    let new = cluster.wait_for_controller_leader().await;
    let took = cut_at.elapsed();
    println!("leader cut off from the API server: another replica leads after {took:?}");
    assert_ne!(new, old);
    // Its replica still runs and follows: Raft leadership moved with the Lease.
    assert!(!cluster.replica(old).leadership().is_leader);
    assert!(cluster.replica(new).leadership().is_leader);
    // Renew deadline, then the Lease's expiry as the others saw it (they read it every
    // retry period); plus the Raft handover and slack for a loaded machine.
    assert!(
        took < LEASE + RETRY * 2 + Duration::from_secs(4),
        "{took:?}"
    );

    cluster
        .wait_tables("the change made while the leader was cut off", |t| {
            t.lookup("during.example", "/").is_some()
        })
        .await;
    let after = cluster.admin.clone();
    apply(&after, &ingress("after", "after.example", "/")).await;
    cluster
        .wait_tables("a change after the handover", |t| {
            t.lookup("after.example", "/").is_some()
        })
        .await;
}

fn resyncs(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("portico_controller_proposals_total{kind=\"resync\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_server_outage_keeps_every_table_and_the_leader_resyncs_after() {
    use portico_apiserver::Availability;
    let cluster = Cluster::start().await;
    apply_class(&cluster.admin, "conformance").await;
    for i in 0..3 {
        apply(
            &cluster.admin,
            &ingress(&format!("o{i}"), &format!("o{i}.example"), "/"),
        )
        .await;
    }
    cluster
        .wait_tables("three Ingresses", |t| {
            (0..3).all(|i| t.lookup(&format!("o{i}.example"), "/").is_some())
        })
        .await;
    let before: Vec<u64> = cluster.running().map(|(_, r)| r.version()).collect();

    // Kept short (12 s rather than the minute) to keep the suite short; the
    // behaviour does not change after the renew deadline has passed.
    let outage = Duration::from_secs(12);
    cluster
        .api
        .faults()
        .set_availability(Availability::Unavailable);
    // Every table each replica applies during the outage is looked at, not samples of them.
    let lost_routes = cluster.running().map(|(i, replica)| {
        let mut table = replica.table();
        Box::pin(async move {
            let lost = table
                .wait_for(|t| !(0..3).all(|n| t.lookup(&format!("o{n}.example"), "/").is_some()));
            (i, lost.await.map(|t| t.version()))
        })
    });
    if let Ok(((i, lost), _, _)) =
        tokio::time::timeout(outage, futures_util::future::select_all(lost_routes)).await
    {
        panic!("replica {i} lost routes during the outage: {lost:?}");
    }
    let leaders = cluster
        .nodes
        .iter()
        .filter(|n| n.controller.as_ref().unwrap().status.borrow().is_leader)
        .count();
    assert_eq!(leaders, 0, "nobody leads without the API server");
    let resyncs_before: Vec<u64> = (0..3).map(|i| resyncs(&cluster.metrics_text(i))).collect();
    cluster.api.faults().reset();

    let leader = cluster.wait_for_controller_leader().await;
    poll_until("a resync after the outage", PATIENCE, || async {
        (resyncs(&cluster.metrics_text(leader)) > resyncs_before[leader]).then_some(())
    })
    .await
    .unwrap();
    apply(&cluster.admin, &ingress("after", "after.example", "/")).await;
    cluster
        .wait_tables("the change after the outage", |t| {
            t.lookup("after.example", "/").is_some()
        })
        .await;
    assert!(
        cluster
            .running()
            .zip(before)
            .all(|((_, r), v)| r.version() > v)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_410_dropped_watches_and_409s_are_recovered() {
    let cluster = Cluster::start().await;
    let faults = cluster.api.faults().clone();
    apply_class(&cluster.admin, "conformance").await;
    // The backend Service exists, so these Ingresses have no problems (no Events): the
    // write after each apply is its status write (or, now and then, a Lease renewal).
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svc", "namespace": NAMESPACE},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    apply(&cluster.admin, &svc).await;
    apply(&cluster.admin, &ingress("f0", "f0.example", "/")).await;
    wait_ingress(&cluster.admin, "f0", "given status", |i| {
        status_addresses(i) == [STATUS_ADDRESS]
    })
    .await;
    let leader = cluster.wait_for_controller_leader().await;
    let resyncs_at_start = resyncs(&cluster.metrics_text(leader));

    // Forced 410 on the next watch: the watchers relist, and the leader resyncs.
    faults.expire_next_watch();
    faults.drop_watches();
    apply(&cluster.admin, &ingress("f1", "f1.example", "/")).await;
    cluster
        .wait_tables("f1", |t| t.lookup("f1.example", "/").is_some())
        .await;
    poll_until(
        "a resync (or a new leader) after the 410",
        PATIENCE,
        || async {
            (cluster.wait_for_controller_leader().await != leader
                || resyncs(&cluster.metrics_text(leader)) > resyncs_at_start)
                .then_some(())
        },
    )
    .await
    .unwrap();

    // Dropped watches: resumed, nothing missed.
    faults.drop_watches();
    apply(&cluster.admin, &ingress("f2", "f2.example", "/")).await;
    faults.drop_watches();
    apply(&cluster.admin, &ingress("f3", "f3.example", "/")).await;
    cluster
        .wait_tables("f2, f3", |t| {
            t.lookup("f2.example", "/").is_some() && t.lookup("f3.example", "/").is_some()
        })
        .await;

    // 409s (and a 500) on whatever is written next: Lease renewals and status writes.
    for (round, code) in [409, 409, 500, 409, 409, 409].into_iter().enumerate() {
        let name = format!("c{round}");
        apply(
            &cluster.admin,
            &ingress(&name, &format!("{name}.example"), "/"),
        )
        .await;
        faults.fail_nth_write(1, code);
        poll_until("the injected failure hit", PATIENCE, || async {
            faults.current().fail_write.is_none().then_some(())
        })
        .await
        .unwrap();
    }
    // Everything converges: every Ingress routed and given status.
    let names: Vec<String> = ["f0", "f1", "f2", "f3"]
        .into_iter()
        .map(String::from)
        .chain((0..6).map(|r| format!("c{r}")))
        .collect();
    cluster
        .wait_tables("every Ingress after the faults", |t| {
            names
                .iter()
                .all(|n| t.lookup(&format!("{n}.example"), "/").is_some())
        })
        .await;
    for name in &names {
        wait_ingress(&cluster.admin, name, "given status", |i| {
            status_addresses(i) == [STATUS_ADDRESS]
        })
        .await;
    }
    let leader = cluster.wait_for_controller_leader().await;
    let text = cluster.metrics_text(leader);
    let failed_status_writes: u64 = text
        .lines()
        .find(|l| l.starts_with("portico_controller_status_write_errors_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        failed_status_writes >= 1,
        "no status write was hit by a fault:\n{text}"
    );
    println!(
        "{}",
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The table holds exactly the API server's Ingresses.
    let listed = Api::<Ingress>::namespaced(cluster.admin.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await
        .unwrap();
    let want: std::collections::BTreeSet<ObjectKey> = listed
        .items
        .iter()
        .map(|i| key(i.metadata.name.as_deref().unwrap()))
        .collect();
    cluster
        .wait_tables("exactly the API server's Ingresses", |t| {
            t.ingresses()
                .map(|(k, _)| k.clone())
                .collect::<std::collections::BTreeSet<_>>()
                == want
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fenced_leader_work_gives_up_the_lease_says_why_and_the_next_epoch_is_higher() {
    let cluster = Cluster::start().await;
    apply_class(&cluster.admin, "conformance").await;
    apply(&cluster.admin, &ingress("a", "a.example", "/")).await;
    cluster
        .wait_tables("a", |t| t.lookup("a.example", "/").is_some())
        .await;
    let leader = cluster.wait_for_controller_leader().await;
    let controller = cluster.nodes[leader].controller.as_ref().unwrap();
    let epoch = controller.status.borrow().epoch.unwrap();
    let mut status = controller.status.clone();

    // Someone with a much higher epoch wrote to the log (as a Lease recreated elsewhere
    // would): the leader's next proposal is refused, its leader work dies, it steps down.
    let foreign = epoch + 5;
    cluster
        .replica(leader)
        .propose(foreign, portico_model::Change::Batch(Vec::new()))
        .await
        .unwrap();
    apply(&cluster.admin, &ingress("b", "b.example", "/")).await;
    tokio::time::timeout(PATIENCE, status.wait_for(|s| !s.is_leader))
        .await
        .unwrap()
        .unwrap();
    let why = status.borrow().last_error.clone().unwrap();
    assert!(why.contains("deposed"), "{why}");

    // Leadership comes back with an epoch above everything applied, and the change lands.
    let leader = cluster.wait_for_controller_leader().await;
    let next = cluster.nodes[leader]
        .controller
        .as_ref()
        .unwrap()
        .status
        .borrow()
        .epoch
        .unwrap();
    assert!(next > foreign, "epoch {next} must exceed {foreign}");
    cluster
        .wait_tables("b", |t| t.lookup("b.example", "/").is_some())
        .await;
    let lease = cluster.lease().await.unwrap();
    assert_eq!(
        lease.spec.unwrap().lease_transitions,
        Some(i32::try_from(next).unwrap())
    );
}
