//! C1: a certificate chained to the cluster CA is not enough to be a peer.
//!
//! The attacker holds a client certificate signed by the cluster CA, with `CN=not-a-member`
//! and SANs naming a host of its own. Against every replica of a running cluster it asks
//! for the status (node IDs and the leader), proposes a change, removes a voter, joins
//! (under its own address and under a member's, which would evict that member), sends
//! Raft RPCs (append-entries, vote, install-snapshot) and asks for an election. Every one
//! must be refused (403) before it touches Raft, and the cluster must be unchanged. A
//! member's certificate is still answered; and a member cannot speak for another member.

use openraft::{CommittedLeaderId, LogId, Vote};
use portico_raft::{Proposal, TlsMaterial};
use serde::Serialize;

use crate::common::cluster::{Cluster, node_host, test_settings};
use crate::common::{client_config, raw_post, raw_post_to, service_change};

openraft::declare_raft_types!(
    /// The replicas' wire layout for the Raft RPCs the attacker forges.
    WireConfig: D = Proposal, R = portico_raft::ApplyOutcome, SnapshotData = std::io::Cursor<Vec<u8>>
);

/// The join request's wire form.
#[derive(Serialize)]
struct JoinRequest {
    node_id: u64,
    addr: String,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap()
}

/// Every RPC the attacker tries against `node`, as (path, target, body).
fn attacks(cluster: &Cluster, node: usize) -> Vec<(&'static str, Option<u64>, Vec<u8>)> {
    let id = cluster.replica(node).node_id();
    let other = cluster.replica((node + 1) % 3).node_id();
    let vote = Vote::new(99, 7);
    let append = openraft::raft::AppendEntriesRequest::<WireConfig> {
        vote: Vote::new_committed(99, 7),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    let snapshot = openraft::raft::InstallSnapshotRequest::<WireConfig> {
        vote: Vote::new_committed(99, 7),
        meta: openraft::SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(99, 7), 1)),
            last_membership: Default::default(),
            snapshot_id: "attacker".into(),
        },
        offset: 0,
        data: vec![0; 16],
        done: false,
    };
    let proposal = Proposal {
        epoch: 1,
        change: Some(service_change(666)),
    };
    vec![
        ("/raft/v1/status", None, Vec::new()),
        ("/raft/v1/propose", None, encode(&proposal)),
        ("/raft/v1/remove", None, encode(&other)),
        (
            "/raft/v1/join",
            None,
            encode(&JoinRequest {
                node_id: 7,
                addr: "not-a-member.attacker.svc:9444".into(),
            }),
        ),
        (
            "/raft/v1/join",
            None,
            encode(&JoinRequest {
                node_id: 7,
                addr: cluster.addrs[(node + 1) % 3].clone(),
            }),
        ),
        (
            "/raft/v1/vote",
            Some(id),
            encode(&openraft::raft::VoteRequest::new(vote, None)),
        ),
        ("/raft/v1/append-entries", Some(id), encode(&append)),
        ("/raft/v1/install-snapshot", Some(id), encode(&snapshot)),
        ("/raft/v1/elect", Some(id), Vec::new()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_signed_certificate_that_names_no_member_is_refused_everything() {
    let cluster = Cluster::start(3, test_settings()).await;
    let leader = cluster.wait_for_leader(3).await;
    let before = cluster
        .replica(0)
        .propose(1, service_change(1))
        .await
        .unwrap();
    cluster.wait_converged(before.version).await;
    let voters = cluster.replica(leader).metrics().voters;
    let ca = cluster.pki.ca_pem().into_bytes();

    // Signed by the cluster CA: with a name of its own, with a replica-like loopback
    // address that is no member's, and with no name at all.
    let attackers: Vec<TlsMaterial> = vec![
        cluster
            .pki
            .node_for("not-a-member", &["not-a-member.attacker.svc".into()]),
        cluster.pki.node_for("not-a-member", &["127.0.0.99".into()]),
        cluster.pki.node_for("not-a-member", &[]),
    ];
    for attacker in &attackers {
        let tls = client_config(&ca, Some(attacker));
        for node in 0..3 {
            for (path, target, body) in attacks(&cluster, node) {
                let answer = raw_post_to(&cluster.addrs[node], tls.clone(), path, target, body)
                    .await
                    .unwrap();
                assert_eq!(
                    answer.0,
                    http::StatusCode::FORBIDDEN,
                    "{path} to node {node}: {:?}",
                    String::from_utf8_lossy(&answer.1)
                );
                let text = String::from_utf8_lossy(&answer.1);
                for id in voters.keys() {
                    assert!(!text.contains(&id.to_string()), "a refusal names a node ID");
                }
            }
        }
    }

    // Nothing changed: the same voters, the same table everywhere, writes still commit.
    assert_eq!(cluster.wait_for_leader(3).await, leader);
    for (i, replica) in cluster.running() {
        let m = replica.metrics();
        assert_eq!(m.voters, voters, "replica {i}");
        assert!(m.learners.is_empty(), "replica {i}: {m:?}");
        assert_eq!(m.table_version, before.version, "replica {i}");
    }
    let after = cluster
        .replica(2)
        .propose(1, service_change(2))
        .await
        .unwrap();
    cluster.wait_converged(after.version).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_answered_but_cannot_speak_for_another_member() {
    let cluster = Cluster::start(3, test_settings()).await;
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 1) % 3;
    let ca = cluster.pki.ca_pem().into_bytes();
    // A certificate that names the follower's host: the follower's identity.
    let member = cluster.pki.node_for("portico-x", &[node_host(follower)]);
    let tls = client_config(&ca, Some(&member));

    let (status, _) = raw_post(
        &cluster.addrs[leader],
        tls.clone(),
        "/raft/v1/status",
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, http::StatusCode::OK);
    let proposal = Proposal {
        epoch: 1,
        change: Some(service_change(3)),
    };
    let (status, _) = raw_post(
        &cluster.addrs[leader],
        tls.clone(),
        "/raft/v1/propose",
        encode(&proposal),
    )
    .await
    .unwrap();
    assert_eq!(status, http::StatusCode::OK, "a member's proposal");

    // A vote request from the follower's certificate in the leader's name: refused.
    let third = 3 - leader - follower;
    let leader_id = cluster.replica(leader).node_id();
    let forged = openraft::raft::VoteRequest::new(Vote::new(1_000, leader_id), None);
    let (status, body) = raw_post_to(
        &cluster.addrs[third],
        tls.clone(),
        "/raft/v1/vote",
        Some(cluster.replica(third).node_id()),
        encode(&forged),
    )
    .await
    .unwrap();
    assert_eq!(
        status,
        http::StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        cluster.wait_for_leader(3).await,
        leader,
        "no election forced"
    );
}
