//! M5 (and C1's `u64::MAX` proposal): fencing epochs are bounded and unique.
//!
//! A member proposes a change with epoch `u64::MAX`, through the API and as a raw RPC
//! that skips the proposer's own check: it must be refused by the state machine on every
//! replica, and the real controller's next epoch must still be accepted (not fenced for
//! good). A second leadership must not reuse an epoch another one claimed, and once a new
//! leader has claimed its epoch, the deposed leader's changes are refused.

use portico_raft::{ApplyOutcome, MAX_EPOCH, Proposal, ProposeError};
use serde::Deserialize;

use crate::common::cluster::{Cluster, node_host, test_settings};
use crate::common::{client_config, raw_post, service_change};

/// The answer to a forwarded proposal, as the replicas encode it.
#[derive(Debug, Deserialize)]
struct Committed {
    #[allow(dead_code)]
    index: u64,
    outcome: ApplyOutcome,
}

#[derive(Debug, Deserialize)]
enum ForwardError {
    NotLeader {
        #[allow(dead_code)]
        leader: Option<(u64, String)>,
    },
    Failed(#[allow(dead_code)] String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_epoch_is_refused_and_fences_nobody() {
    let cluster = Cluster::start(3, test_settings()).await;
    let leader = cluster.wait_for_leader(3).await;
    cluster
        .replica(0)
        .propose(3, service_change(1))
        .await
        .unwrap();

    for epoch in [u64::MAX, MAX_EPOCH + 1] {
        let refused = cluster.replica(1).propose(epoch, service_change(2)).await;
        assert!(
            matches!(refused, Err(ProposeError::EpochOutOfRange { epoch: e }) if e == epoch),
            "{refused:?}"
        );
    }

    // The same proposal sent raw by a member, past the proposer's check: the state
    // machine refuses it on every replica.
    let ca = cluster.pki.ca_pem().into_bytes();
    let member = cluster.pki.node_for("portico-x", &[node_host(leader)]);
    let huge = Proposal {
        epoch: u64::MAX,
        change: Some(service_change(3)),
    };
    let (status, body) = raw_post(
        &cluster.addrs[leader],
        client_config(&ca, Some(&member)),
        "/raft/v1/propose",
        postcard::to_stdvec(&huge).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, http::StatusCode::OK);
    let answer: Result<Committed, ForwardError> = postcard::from_bytes(&body).unwrap();
    let committed = answer.unwrap();
    assert_eq!(
        committed.outcome,
        ApplyOutcome::RefusedEpochOutOfRange { epoch: u64::MAX }
    );

    // The next leader's epoch is accepted: highest_epoch + 1 did not overflow.
    let next = cluster.replica(2).metrics().highest_epoch + 1;
    assert_eq!(next, 4);
    cluster.replica(2).claim_epoch(next).await.unwrap();
    let after = cluster
        .replica(2)
        .propose(next, service_change(4))
        .await
        .unwrap();
    cluster.wait_converged(after.version).await;
    for (i, replica) in cluster.running() {
        assert_eq!(replica.metrics().highest_epoch, 4, "replica {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_is_claimed_once_and_a_deposed_leader_is_refused() {
    let cluster = Cluster::start(3, test_settings()).await;
    cluster.wait_for_leader(3).await;

    // Leadership A claims epoch 5 and writes with it.
    cluster.replica(0).claim_epoch(5).await.unwrap();
    cluster
        .replica(0)
        .propose(5, service_change(1))
        .await
        .unwrap();
    // Leadership B (the Lease was recreated with the same transition count) cannot
    // claim 5 again, nor anything lower.
    for epoch in [5, 4] {
        let reused = cluster.replica(1).claim_epoch(epoch).await;
        assert!(
            matches!(
                reused,
                Err(ProposeError::StaleEpoch {
                    highest_epoch: 5,
                    ..
                })
            ),
            "{reused:?}"
        );
    }
    // B claims 6: from then on A, deposed, is refused everywhere.
    cluster.replica(1).claim_epoch(6).await.unwrap();
    let deposed = cluster.replica(0).propose(5, service_change(2)).await;
    assert!(
        matches!(
            deposed,
            Err(ProposeError::StaleEpoch {
                epoch: 5,
                highest_epoch: 6
            })
        ),
        "{deposed:?}"
    );
    let ok = cluster
        .replica(1)
        .propose(6, service_change(3))
        .await
        .unwrap();
    cluster.wait_converged(ok.version).await;
    for (i, replica) in cluster.running() {
        let m = replica.metrics();
        assert_eq!(m.highest_epoch, 6, "replica {i}");
        assert_eq!(m.refused_stale_entries, 3, "replica {i}: {m:?}");
    }
}
