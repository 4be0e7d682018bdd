//! C1 with real processes: the attack of the issue, replayed against three
//! `portico-raft-node` processes.
//!
//! The attacker holds a client certificate with `CN=not-a-member`, signed by the cluster CA.
//! It asks every replica for its status (to learn the node IDs), then asks the leader to
//! remove a voter. Both must be refused (403), and the cluster must keep its three voters
//! and keep committing.

use crate::common::processes::ProcessCluster;
use crate::common::{client_config, raw_post};

const NODE: &str = env!("CARGO_BIN_EXE_portico-raft-node");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_signed_non_member_can_neither_read_the_status_nor_remove_a_voter() {
    let mut cluster = ProcessCluster::start(NODE, 3, &[]).await;
    let leader = cluster.wait_for_leader(3).await;
    let statuses = cluster.statuses().await;
    let voters: Vec<u64> = statuses[0].1["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(voters.len(), 3);
    let victim = voters
        .iter()
        .copied()
        .find(|id| statuses[leader].1["node_id"].as_u64() != Some(*id))
        .unwrap();

    let ca = cluster.pki.ca_pem().into_bytes();
    let attacker = cluster
        .pki
        .node_for("not-a-member", &["not-a-member.attacker.svc".into()]);
    let tls = client_config(&ca, Some(&attacker));
    for member in &cluster.members {
        let (status, _) = raw_post(&member.addr, tls.clone(), "/raft/v1/status", Vec::new())
            .await
            .unwrap();
        assert_eq!(
            status,
            http::StatusCode::FORBIDDEN,
            "status of {}",
            member.addr
        );
    }
    let (status, body) = raw_post(
        &cluster.members[leader].addr,
        tls,
        "/raft/v1/remove",
        postcard::to_stdvec(&victim).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        status,
        http::StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );

    // Still three voters everywhere, and writes commit on all of them.
    let last = cluster.propose_ok(0, 1, 1, 1).await;
    for (i, status) in cluster.wait_converged(last).await {
        assert_eq!(
            status["voters"].as_array().unwrap().len(),
            3,
            "replica {i}: {status}"
        );
    }
}
