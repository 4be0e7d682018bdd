//! Three replicas in one process, over the real mTLS transport on loopback addresses.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, PATIENCE, test_settings};
use common::{Pki, client_config, raw_post, raw_post_to, service_change};
use portico_raft::{
    Proposal, ProposeError, RaftSettings, StepDown, TransportSettings, Unavailable,
};
use portico_test_support::poll_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_proposed_on_any_replica_is_applied_on_all() {
    let cluster = Cluster::start(3, test_settings()).await;
    cluster.wait_for_leader(3).await;
    let mut last = 0;
    for i in 0..3 {
        // Two of the three are followers: their writes are forwarded to the leader.
        let committed = cluster
            .replica(i)
            .propose(1, service_change(i as u64))
            .await
            .unwrap();
        assert!(committed.version > last, "versions increase");
        last = committed.version;
    }
    cluster.wait_converged(last).await;
    for (_, replica) in cluster.running() {
        let m = replica.metrics();
        assert_eq!(m.fatal, None);
        assert_eq!(m.table_version, last);
        assert!(m.committed_index.unwrap() >= last);
        assert_eq!(m.refused_stale_entries, 0);
    }
    // The leader reports its leadership and a recent quorum acknowledgement.
    let leader = cluster.wait_for_leader(3).await;
    let leadership = cluster.replica(leader).leadership();
    assert!(leadership.is_leader);
    assert!(leadership.since.is_some());
    let ack = leadership
        .last_quorum_ack
        .expect("a quorum acknowledged the leader");
    assert!(ack.elapsed() < Duration::from_secs(10));
    let lag = cluster.replica(leader).metrics().replication_lag;
    assert_eq!(lag.len(), 2, "lag is reported for both followers: {lag:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_is_refused_on_every_replica() {
    let cluster = Cluster::start(3, test_settings()).await;
    cluster.wait_for_leader(3).await;
    let fresh = cluster
        .replica(1)
        .propose(5, service_change(1))
        .await
        .unwrap();
    let stale = cluster.replica(2).propose(3, service_change(2)).await;
    match stale {
        Err(ProposeError::StaleEpoch {
            epoch: 3,
            highest_epoch: 5,
        }) => {}
        other => panic!("expected a stale-epoch refusal, got {other:?}"),
    }
    // A later write with the current epoch goes through, and every replica refused the
    // stale entry on its own.
    let after = cluster
        .replica(0)
        .propose(5, service_change(3))
        .await
        .unwrap();
    assert!(
        after.version > fresh.version + 1,
        "the refused entry holds a log index"
    );
    cluster.wait_converged(after.version).await;
    for (i, replica) in cluster.running() {
        let m = replica.metrics();
        assert_eq!(m.refused_stale_entries, 1, "replica {i}: {m:?}");
        assert_eq!(m.highest_epoch, 5);
        assert_eq!(m.table_version, after.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_after_the_leader_stops_and_stopped_replica_catches_up_by_snapshot() {
    let settings = RaftSettings {
        snapshot_after_entries: 50,
        entries_kept_after_snapshot: 5,
        ..test_settings()
    };
    let mut cluster = Cluster::start(3, settings).await;
    let leader = cluster.wait_for_leader(3).await;
    let first = cluster
        .replica(0)
        .propose(1, service_change(0))
        .await
        .unwrap();
    cluster.wait_converged(first.version).await;

    cluster.stop(leader).await;
    let stopped_at = Instant::now();
    let new_leader = cluster.wait_for_leader(3).await;
    assert_ne!(new_leader, leader);
    assert!(stopped_at.elapsed() < Duration::from_secs(15));

    let mut last = 0;
    for i in 0..300 {
        let on = [0, 1, 2].into_iter().find(|n| *n != leader).unwrap();
        last = cluster
            .replica(on)
            .propose(1, service_change(i))
            .await
            .unwrap()
            .version;
    }
    cluster.wait_converged(last).await;

    cluster.restart(leader).await;
    let bytes = cluster.wait_converged(last).await;
    let restarted = cluster.replica(leader).metrics();
    assert!(
        restarted.snapshot_installs >= 1,
        "the log was compacted, so catch-up needs a snapshot: {restarted:?}"
    );
    assert_eq!(cluster.replica(leader).table().borrow().to_bytes(), bytes);
    assert!(cluster.replica(new_leader).metrics().snapshots_built >= 1);
}

/// Without a quorum a write fails once its request timeout is spent, and says why in a
/// type the caller can match (here: no leader known), with the reason kept as its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_quorum_is_unavailable_with_a_typed_reason() {
    let transport = TransportSettings {
        request_timeout: Duration::from_secs(1),
        ..TransportSettings::default()
    };
    let mut cluster = Cluster::start_with(3, test_settings(), transport).await;
    let leader = cluster.wait_for_leader(3).await;
    let survivor = (0..3).find(|n| *n != leader).unwrap();
    for n in (0..3).filter(|n| *n != survivor) {
        cluster.stop(n).await;
    }
    // Once its election timer has run out, the survivor knows of no leader.
    // Raft's metrics are a snapshot with nothing to subscribe to: polled.
    poll_until("the survivor to name no leader", PATIENCE, || async {
        cluster
            .replica(survivor)
            .metrics()
            .leader
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();

    let asked = Instant::now();
    let refused = cluster
        .replica(survivor)
        .propose(1, service_change(0))
        .await;
    let Err(e @ ProposeError::Unavailable(Unavailable::NoLeader)) = refused else {
        panic!("expected Unavailable(NoLeader), got {refused:?}");
    };
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "gave up after {waited:?}, the request timeout is 1 s"
    );
    let source = std::error::Error::source(&e).expect("the reason is the source");
    assert_eq!(source.to_string(), "no leader known");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_steps_down_to_a_caught_up_successor_within_about_a_lease() {
    let settings = test_settings();
    let lease = settings.election_timeout_max;
    let cluster = Cluster::start(3, settings).await;
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 1) % 3;
    assert_eq!(
        cluster.replica(follower).step_down(PATIENCE).await,
        StepDown::NotLeader
    );
    let written = cluster
        .replica(follower)
        .propose(1, service_change(0))
        .await
        .unwrap();
    cluster.wait_converged(written.version).await;

    let started = Instant::now();
    let outcome = cluster.replica(leader).step_down(PATIENCE).await;
    let took = started.elapsed();
    let StepDown::Handed { to } = outcome else {
        panic!("leadership was not handed over: {outcome:?}");
    };
    assert_ne!(to, cluster.replica(leader).node_id());
    eprintln!("step-down took {took:?} (leader lease {lease:?})");
    // The lease must run out first; the successor is asked at once after it.
    assert!(took >= lease, "{took:?}");
    assert!(took < lease * 3, "{took:?}");

    // The old leader follows, stays a voter, and writes still commit everywhere.
    let new_leader = cluster.wait_for_leader(3).await;
    assert_ne!(new_leader, leader);
    let after = cluster
        .replica(leader)
        .propose(1, service_change(1))
        .await
        .unwrap();
    cluster.wait_converged(after.version).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_cannot_step_down_and_leads_on() {
    let cluster = Cluster::start(1, test_settings()).await;
    cluster.wait_for_leader(1).await;
    let started = Instant::now();
    let outcome = cluster.replica(0).step_down(Duration::from_secs(30)).await;
    assert_eq!(outcome, StepDown::StillLeader);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no successor to wait for"
    );
    // Heartbeats and elections are back on: it still takes writes.
    let written = cluster
        .replica(0)
        .propose(1, service_change(0))
        .await
        .unwrap();
    cluster.wait_converged(written.version).await;
    assert!(cluster.replica(0).leadership().is_leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_a_cluster_certificate_is_refused() {
    let cluster = Cluster::start(1, test_settings()).await;
    cluster.wait_for_leader(1).await;
    let addr = &cluster.addrs[0];
    let ca = cluster.pki.ca_pem().into_bytes();

    // A member of the cluster is answered.
    let member = cluster.pki.node("portico-9");
    let answer = raw_post(
        addr,
        client_config(&ca, Some(&member)),
        "/raft/v1/status",
        vec![],
    )
    .await;
    assert_eq!(answer.map(|(s, _)| s), Ok(http::StatusCode::OK));

    // No client certificate: refused.
    let answer = raw_post(addr, client_config(&ca, None), "/raft/v1/status", vec![]).await;
    assert!(
        answer.is_err(),
        "a peer without a certificate was answered: {answer:?}"
    );

    // A certificate from another CA: refused.
    let stranger = Pki::new("another-ca").node("portico-0");
    let answer = raw_post(
        addr,
        client_config(&ca, Some(&stranger)),
        "/raft/v1/status",
        vec![],
    )
    .await;
    assert!(
        answer.is_err(),
        "a peer with a foreign certificate was answered: {answer:?}"
    );

    // The replica still works.
    cluster
        .replica(0)
        .propose(1, service_change(1))
        .await
        .unwrap();
}

openraft::declare_raft_types!(
    /// The same wire layout as the replicas' own configuration.
    WireConfig: D = Proposal, R = portico_raft::ApplyOutcome, SnapshotData = std::io::Cursor<Vec<u8>>
);

fn forged_snapshot_chunk(leader: u64, offset: u64, done: bool) -> Vec<u8> {
    let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, leader), 1_000);
    let request = openraft::raft::InstallSnapshotRequest::<WireConfig> {
        vote: openraft::Vote::new_committed(1, leader),
        meta: openraft::SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: Default::default(),
            snapshot_id: "forged".into(),
        },
        offset,
        data: vec![0xab; 1_000],
        done,
    };
    postcard::to_stdvec(&request).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_or_truncated_rpc_body_is_rejected_without_harm() {
    let cluster = Cluster::start(3, test_settings()).await;
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 1) % 3;
    let ca = cluster.pki.ca_pem().into_bytes();
    let tls = client_config(&ca, Some(&cluster.pki.node("portico-9")));
    let encoded = postcard::to_stdvec(&Proposal {
        epoch: 1,
        change: Some(service_change(7)),
    })
    .unwrap();

    for node in [leader, follower] {
        let addr = &cluster.addrs[node];
        let id = cluster.replica(node).node_id();
        for path in [
            "/raft/v1/append-entries",
            "/raft/v1/vote",
            "/raft/v1/install-snapshot",
            "/raft/v1/propose",
            "/raft/v1/join",
        ] {
            let garbage = vec![0xff; 64];
            let (status, body) = raw_post_to(addr, tls.clone(), path, Some(id), garbage)
                .await
                .unwrap();
            assert_eq!(status, http::StatusCode::BAD_REQUEST, "garbage to {path}");
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("malformed RPC body"), "{path}: {body}");
        }
        // A Raft RPC meant for another node (an old identity at this address) is refused.
        let (status, _) = raw_post_to(
            addr,
            tls.clone(),
            "/raft/v1/vote",
            Some(id.wrapping_add(1)),
            vec![0; 8],
        )
        .await
        .unwrap();
        assert_eq!(status, http::StatusCode::MISDIRECTED_REQUEST);
        // A Raft RPC that names no node is refused.
        let (status, _) = raw_post(addr, tls.clone(), "/raft/v1/append-entries", vec![])
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::BAD_REQUEST);
        // A well-formed snapshot RPC whose snapshot bytes are garbage, or whose chunks are
        // out of sequence: refused before Raft sees it (a bad snapshot is fatal to Raft).
        let leader_id = cluster.replica(leader).node_id();
        for (offset, done) in [(0, true), (4096, false)] {
            let forged = forged_snapshot_chunk(leader_id, offset, done);
            let (status, body) = raw_post_to(
                addr,
                tls.clone(),
                "/raft/v1/install-snapshot",
                Some(id),
                forged,
            )
            .await
            .unwrap();
            assert_eq!(status, http::StatusCode::BAD_REQUEST, "{body:?}");
            let body = String::from_utf8_lossy(&body);
            let expected = if done {
                "refused snapshot"
            } else {
                "out of sequence"
            };
            assert!(body.contains(expected), "{body}");
        }
        let truncated = encoded[..encoded.len() / 2].to_vec();
        let (status, _) = raw_post(addr, tls.clone(), "/raft/v1/propose", truncated)
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::BAD_REQUEST, "truncated proposal");
        let mut trailing = encoded.clone();
        trailing.push(0);
        let (status, _) = raw_post(addr, tls.clone(), "/raft/v1/propose", trailing)
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::BAD_REQUEST, "trailing bytes");
        let (status, _) = raw_post(addr, tls.clone(), "/raft/v1/nothing", vec![])
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::NOT_FOUND);
    }

    // Nothing was harmed: the same leader, and writes still commit everywhere.
    assert_eq!(cluster.wait_for_leader(3).await, leader);
    let committed = cluster
        .replica(follower)
        .propose(1, service_change(8))
        .await
        .unwrap();
    cluster.wait_converged(committed.version).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_rebuilds_its_table_from_its_snapshot_and_log() {
    let settings = RaftSettings {
        snapshot_after_entries: 20,
        entries_kept_after_snapshot: 0,
        ..test_settings()
    };
    let mut cluster = Cluster::start(1, settings).await;
    cluster.wait_for_leader(1).await;
    let mut last = 0;
    for i in 0..45 {
        last = cluster
            .replica(0)
            .propose(2, service_change(i))
            .await
            .unwrap()
            .version;
    }
    let before = cluster.replica(0).table().borrow().to_bytes();
    let metrics = cluster.replica(0).metrics();
    assert!(metrics.snapshots_built >= 1, "{metrics:?}");
    let id = cluster.replica(0).node_id();

    cluster.stop(0).await;
    cluster.restart(0).await;
    let restarted = cluster.replica(0);
    assert_eq!(restarted.node_id(), id, "a restart keeps the node ID");
    assert_eq!(restarted.wait_for_version(last, PATIENCE).await, Ok(last));
    assert_eq!(restarted.table().borrow().to_bytes(), before);
    let metrics = restarted.metrics();
    assert_eq!(
        metrics.highest_epoch, 2,
        "the epoch survives in the snapshot"
    );
    assert_eq!(
        metrics.snapshot_installs, 0,
        "rebuilt locally, not sent by a peer"
    );
    // Fencing still holds after the restart.
    let stale = restarted.propose(1, service_change(99)).await;
    assert!(
        matches!(stale, Err(ProposeError::StaleEpoch { .. })),
        "{stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_adds_a_caught_up_voter_and_scale_down_removes_it() {
    let mut cluster = Cluster::start(3, test_settings()).await;
    cluster.wait_for_leader(3).await;
    let mut last = 0;
    for i in 0..50 {
        last = cluster
            .replica(i % 3)
            .propose(1, service_change(i as u64))
            .await
            .unwrap()
            .version;
    }

    // A fourth replica joins as a learner, catches up, and is promoted.
    let added = cluster.add_node().await;
    cluster.wait_for_leader(4).await;
    let bytes = cluster.wait_converged(last).await;
    assert_eq!(cluster.replica(added).table().borrow().to_bytes(), bytes);
    let id = cluster.replica(added).node_id();
    assert!(cluster.replica(0).metrics().voters.contains_key(&id));
    last = cluster
        .replica(added)
        .propose(1, service_change(100))
        .await
        .unwrap()
        .version;
    cluster.wait_converged(last).await;

    // Scale down: remove it (through any replica), then stop it.
    cluster.replica(1).remove_member(id).await.unwrap();
    cluster.stop(added).await;
    cluster.wait_for_leader(3).await;
    for (_, replica) in cluster.running() {
        let m = replica.metrics();
        assert!(
            !m.voters.contains_key(&id) && !m.learners.contains_key(&id),
            "{m:?}"
        );
    }
    last = cluster
        .replica(2)
        .propose(1, service_change(101))
        .await
        .unwrap()
        .version;
    cluster.wait_converged(last).await;
}

/// A change with a large annotation, about `bytes` long once encoded.
fn bulky_change(i: u64, bytes: usize) -> portico_model::Change {
    use portico_model::{IngressSource, ObjectKey, Resource};
    let mut ingress = IngressSource {
        key: ObjectKey::new("default", format!("ing-{i}")),
        ..Default::default()
    };
    ingress
        .annotations
        .insert("example.com/padding".into(), "x".repeat(bytes));
    portico_model::Change::Upsert(Resource::Ingress(std::sync::Arc::new(ingress)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_respects_the_rpc_size_limit() {
    let transport = TransportSettings {
        max_body_bytes: 256 << 10,
        ..TransportSettings::default()
    };
    let raft = RaftSettings {
        snapshot_chunk_bytes: 128 << 10,
        ..test_settings()
    };
    let mut cluster = Cluster::start_with(3, raft, transport).await;
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 1) % 3;

    // One change larger than half the limit is refused up front.
    let too_big = cluster
        .replica(leader)
        .propose(1, bulky_change(0, 200 << 10))
        .await;
    assert!(
        matches!(too_big, Err(ProposeError::TooLarge { .. })),
        "{too_big:?}"
    );

    // A lagging follower gets 40 changes of 40 KiB (1.6 MiB): more than one RPC may carry,
    // so the leader sends them in smaller appends.
    cluster.stop(follower).await;
    let mut last = 0;
    for i in 0..40 {
        last = cluster
            .replica(leader)
            .propose(1, bulky_change(i, 40 << 10))
            .await
            .unwrap()
            .version;
    }
    cluster.restart(follower).await;
    cluster.wait_converged(last).await;
}

/// The server certificate node `addr` presents on a new connection (DER).
async fn presented_certificate(addr: &str, tls: std::sync::Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let host = addr.rsplit_once(':').unwrap().0.to_owned();
    let name = rustls_pki_types::ServerName::try_from(host).unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_der(material: &portico_raft::TlsMaterial) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(&material.cert_pem)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_while_running_is_used_for_new_connections() {
    let cluster = Cluster::start(3, test_settings()).await;
    cluster.wait_for_leader(3).await;
    let ca = cluster.pki.ca_pem().into_bytes();
    let client = client_config(&ca, Some(&cluster.nodes[1].tls));
    let old = presented_certificate(&cluster.addrs[0], client.clone()).await;
    assert_eq!(old, leaf_der(&cluster.nodes[0].tls));

    // A renewed certificate for the same name, with a new key.
    let renewed = cluster
        .pki
        .node_for("portico-0", &[common::cluster::node_host(0)]);
    cluster
        .replica(0)
        .replace_certificate(&renewed.cert_pem, &renewed.key_pem)
        .unwrap();
    assert_eq!(
        presented_certificate(&cluster.addrs[0], client.clone()).await,
        leaf_der(&renewed)
    );
    // A key that is not the certificate's is refused, and the renewed pair stays.
    let other = cluster.pki.node("other");
    assert!(
        cluster
            .replica(0)
            .replace_certificate(&renewed.cert_pem, &other.key_pem)
            .is_err()
    );
    assert_eq!(
        presented_certificate(&cluster.addrs[0], client).await,
        leaf_der(&renewed)
    );
    // The replica still replicates both ways.
    let committed = cluster
        .replica(0)
        .propose(1, service_change(1))
        .await
        .unwrap();
    cluster.wait_converged(committed.version).await;
}
