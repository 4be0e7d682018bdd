//! Three replicas as real processes (`portico-raft-node`) over mTLS on 127.0.0.1, killed
//! with SIGKILL.

mod common;

use std::time::{Duration, Instant};

use common::processes::{PATIENCE, ProcessCluster};

const NODE: &str = env!("CARGO_BIN_EXE_portico-raft-node");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_replicate_fail_over_and_catch_up_by_log() {
    let mut cluster = ProcessCluster::start(NODE, 3, &[]).await;
    cluster.wait_for_leader(3).await;

    // A change proposed on any replica is applied on all.
    let mut last = 0;
    for on in 0..3 {
        last = last.max(cluster.propose_ok(on, 1, on as u64, 1).await);
    }
    cluster.wait_converged(last).await;

    // A stale epoch is refused, by every replica.
    let stale = cluster.propose(1, 0, 100, 1).await;
    assert_eq!(stale["stale"], true, "{stale}");
    last = cluster.propose_ok(2, 1, 101, 1).await;
    for (i, status) in cluster.wait_converged(last).await {
        assert_eq!(status["refused_stale_entries"], 1, "replica {i}: {status}");
    }

    // Kill the leader: a new one is elected within a few seconds and writes continue.
    let leader = cluster.wait_for_leader(3).await;
    cluster.kill(leader).await;
    let killed_at = Instant::now();
    let new_leader = cluster.wait_for_leader(3).await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let survivor = (leader + 1) % 3;
    last = cluster.propose_ok(survivor, 1, 200, 1).await;
    cluster.spawn(leader);
    cluster.wait_converged(last).await;

    // Kill a follower, write 1,000 changes, restart it: it catches up by log.
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower).await;
    last = cluster.propose_ok(leader, 1, 1_000, 1_000).await;
    cluster.spawn(follower);
    let statuses = cluster.wait_converged(last).await;
    let restarted = &statuses.iter().find(|(i, _)| *i == follower).unwrap().1;
    assert_eq!(
        restarted["snapshot_installs"], 0,
        "caught up by log: {restarted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_catches_up_by_snapshot_after_compaction() {
    let mut cluster = ProcessCluster::start(
        NODE,
        3,
        &["--snapshot-after", "100", "--keep-after-snapshot", "10"],
    )
    .await;
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 2) % 3;
    cluster.kill(follower).await;
    let last = cluster.propose_ok(leader, 1, 0, 1_000).await;
    cluster.spawn(follower);
    let statuses = cluster.wait_converged(last).await;
    let restarted = &statuses.iter().find(|(i, _)| *i == follower).unwrap().1;
    assert!(
        restarted["snapshot_installs"].as_u64().unwrap() >= 1,
        "the log was compacted, so catch-up needs a snapshot: {restarted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_replica_rejoins_under_a_new_id() {
    let mut cluster = ProcessCluster::start(NODE, 3, &[]).await;
    let leader = cluster.wait_for_leader(3).await;
    let mut last = cluster.propose_ok(leader, 1, 0, 20).await;
    cluster.wait_converged(last).await;

    // Wipe portico-0, the member that bootstrapped the cluster (and usually its leader):
    // it must join the existing cluster under a new ID, never start a second one.
    let wiped = 0;
    let old_id = cluster.process(wiped).command("status").await["node_id"]
        .as_u64()
        .unwrap();
    cluster.kill(wiped).await;
    std::fs::remove_dir_all(&cluster.members[wiped].data_dir).unwrap();
    let leader = cluster.wait_for_leader(3).await;
    last = cluster.propose_ok(leader, 1, 100, 20).await;
    cluster.spawn(wiped);

    let started = Instant::now();
    let new_id = loop {
        let statuses = cluster.statuses().await;
        let id = statuses.iter().find(|(i, _)| *i == wiped).unwrap().1["node_id"]
            .as_u64()
            .unwrap();
        let replaced = statuses.iter().all(|(_, s)| {
            let voters: Vec<u64> = s["voters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            voters.len() == 3 && voters.contains(&id) && !voters.contains(&old_id)
        });
        if replaced {
            break id;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "wiped replica did not rejoin: {statuses:#?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new_id, old_id, "a wiped replica must take a fresh ID");
    last = last.max(cluster.propose_ok(wiped, 1, 200, 5).await);
    cluster.wait_converged(last).await;
}
