//! M6: a restored or cloned Raft volume must not vote or count with stale state.
//!
//! The attacker (or an unlucky operator) holds a replica's volume: a backup, or a clone of
//! it. Started under the node ID stored in it, the copy would answer votes and appends as
//! if it still held only what the copy holds, so entries the real replica acknowledged
//! since could be lost. What must hold, with three `portico-raft-node` processes:
//! * a volume copied aside, then restored after the replica ran on (more entries, an
//!   election): the restored replica is refused by every peer, says in its status and log
//!   that it must be wiped and re-added, and never counts: with it and one healthy replica
//!   left, nothing commits; the healthy majority keeps committing;
//! * a clone of a running replica's volume started beside it: refused, the leader and term
//!   unchanged, the original replica working on;
//! * a replica restarted on its own intact volume (a follower, then the leader) rejoins as
//!   before.

use std::time::{Duration, Instant};

use portico_test_support::process;
use portico_test_support::volume::copy_dir;
use serde_json::Value;

use crate::common::processes::{PATIENCE, ProcessCluster};

const NODE: &str = env!("CARGO_BIN_EXE_portico-raft-node");

/// Waits until the replicas `among` applied `version`.
async fn wait_applied(cluster: &mut ProcessCluster, among: &[usize], version: u64) {
    let started = Instant::now();
    for &i in among {
        loop {
            let status = cluster.process(i).command("status").await;
            if status["version"].as_u64() >= Some(version) {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "replica {i} did not apply {version}: {status}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until replica `i` reports that its own volume is stale; the report.
async fn wait_stale(cluster: &mut ProcessCluster, i: usize) -> String {
    let started = Instant::now();
    loop {
        let status = cluster.process(i).command("status").await;
        if let Some(stale) = status["stale_volume"].as_str() {
            return stale.to_owned();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "replica {i} never found its volume stale: {status}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refused(status: &Value) -> u64 {
    status["refused_incarnations"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_restored_after_the_replica_ran_on_is_refused_and_never_counts() {
    let mut cluster = ProcessCluster::start(NODE, 3, &[]).await;
    let leader = cluster.wait_for_leader(3).await;
    let version = cluster.propose_ok(leader, 1, 0, 20).await;
    cluster.wait_converged(version).await;

    // The backup: a follower's volume, copied while it is stopped.
    let victim = (leader + 1) % 3;
    cluster.kill(victim).await;
    let backup = cluster.scratch().join("backup");
    copy_dir(&cluster.members[victim].data_dir, &backup).unwrap();
    cluster.spawn(victim);

    // The replica runs on: it acknowledges more entries, and takes part in an election.
    let version = cluster.propose_ok(leader, 1, 20, 20).await;
    cluster.wait_converged(version).await;
    cluster.kill(leader).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let second = cluster.wait_leader_among(&others, None).await;
    let version = cluster.propose_ok(second, 1, 40, 20).await;
    cluster.spawn(leader);
    cluster.wait_converged(version).await;

    // The backup is restored and started under the same node ID.
    cluster.kill(victim).await;
    std::fs::remove_dir_all(&cluster.members[victim].data_dir).unwrap();
    copy_dir(&backup, &cluster.members[victim].data_dir).unwrap();
    cluster.spawn(victim);
    let stale = wait_stale(&mut cluster, victim).await;
    assert!(stale.contains("stale copy"), "{stale}");
    assert!(
        stale.contains("Delete the data directory") && stale.contains("new node ID"),
        "{stale}"
    );
    let log = cluster.process(victim).log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("Delete the data directory")),
        "the log says what to do:\n{log}"
    );

    // The healthy two keep committing, and refuse the restored replica's RPCs.
    let healthy: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let leader = cluster.wait_leader_among(&healthy, None).await;
    let version = cluster.propose_ok(leader, 1, 60, 20).await;
    wait_applied(&mut cluster, &healthy, version).await;
    let restored = cluster.process(victim).command("status").await;
    assert!(
        restored["version"].as_u64() < Some(version),
        "the restored replica took no entries: {restored}"
    );
    let mut refusals = 0;
    for &i in &healthy {
        refusals += refused(&cluster.process(i).command("status").await);
    }
    assert!(refusals > 0, "no refused incarnation counted");

    // Its vote never counts: with the leader gone, the healthy replica left stands for
    // election again and again, and never wins with the restored replica's vote.
    let gone = leader;
    let left = healthy.iter().copied().find(|i| *i != gone).unwrap();
    let term_before = cluster.process(left).command("status").await["term"]
        .as_u64()
        .unwrap();
    cluster.kill(gone).await;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(6) {
        let status = cluster.process(left).command("status").await;
        assert_eq!(
            status["is_leader"], false,
            "elected with the restored replica's vote: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = cluster.process(left).command("status").await;
    assert!(
        status["term"].as_u64().unwrap() > term_before,
        "it stood for election: {status}"
    );

    // The healthy replica back: a majority again, writes commit.
    cluster.spawn(gone);
    let leader = cluster.wait_leader_among(&healthy, None).await;
    let version = cluster.propose_ok(leader, 1, 81, 5).await;
    wait_applied(&mut cluster, &healthy, version).await;
    let restored = cluster.process(victim).command("status").await;
    assert!(restored["stale_volume"].is_string(), "{restored}");
    assert_eq!(restored["is_leader"], false, "{restored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_of_a_running_replicas_volume_is_refused() {
    let mut cluster = ProcessCluster::start(NODE, 3, &[]).await;
    let leader = cluster.wait_for_leader(3).await;
    let version = cluster.propose_ok(leader, 1, 0, 20).await;
    cluster.wait_converged(version).await;
    let before = cluster.process(leader).command("status").await;

    // The clone: the volume of a running follower (quiet: nothing is being written), under
    // its node ID, at another address.
    let original = (leader + 1) % 3;
    let clone_dir = cluster.scratch().join("clone");
    copy_dir(&cluster.members[original].data_dir, &clone_dir).unwrap();
    let original_id = cluster.process(original).command("status").await["node_id"].clone();
    // At an address of its own, held by the test like the members'.
    let clone_socket = process::raft_listeners(1).remove(0);
    let mut clone = cluster.node(original, &clone_dir, &clone_socket);
    let started = Instant::now();
    let stale = loop {
        let status = clone.command("status").await;
        assert_eq!(
            status["node_id"], original_id,
            "the clone has the original's ID"
        );
        if let Some(stale) = status["stale_volume"].as_str() {
            break stale.to_owned();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the clone was never refused: {status}\n{}",
            clone.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(stale.contains("stale copy"), "{stale}");

    // Nothing moved: the same leader in the same term, and the original works on.
    let version = cluster.propose_ok(leader, 1, 20, 20).await;
    let statuses = cluster.wait_converged(version).await;
    for (i, s) in &statuses {
        assert_eq!(s["leader"], before["node_id"], "replica {i}: {s}");
        assert_eq!(s["term"], before["term"], "replica {i}: {s}");
        assert!(s["stale_volume"].is_null(), "replica {i}: {s}");
    }
    assert!(refused(&statuses[leader].1) > 0, "{:?}", statuses[leader]);
    let clone_status = clone.command("status").await;
    assert!(
        clone_status["version"].as_u64() < Some(version),
        "the clone took entries: {clone_status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_on_its_own_volume_rejoins() {
    let mut cluster = ProcessCluster::start(NODE, 3, &[]).await;
    let leader = cluster.wait_for_leader(3).await;
    let mut version = cluster.propose_ok(leader, 1, 0, 10).await;
    cluster.wait_converged(version).await;
    // A follower, then the leader, restarted at once (within the quiet window of their
    // last RPCs), each twice.
    for (round, restarted) in [(leader + 1) % 3, leader, (leader + 1) % 3, leader]
        .into_iter()
        .enumerate()
    {
        let before = cluster.process(restarted).command("status").await;
        cluster.kill(restarted).await;
        cluster.spawn(restarted);
        let now_leader = cluster.wait_for_leader(3).await;
        version = cluster
            .propose_ok(now_leader, 1, 10 + 10 * round as u64, 10)
            .await;
        let statuses = cluster.wait_converged(version).await;
        for (i, s) in &statuses {
            assert!(s["stale_volume"].is_null(), "replica {i}: {s}");
        }
        let after = &statuses[restarted].1;
        assert_eq!(after["node_id"], before["node_id"]);
        assert_eq!(
            after["incarnation"].as_u64(),
            Some(before["incarnation"].as_u64().unwrap() + 1),
            "{after}"
        );
    }
}
