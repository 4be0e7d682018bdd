//! Replication benchmark on three local `portico-raft-node` processes over mTLS:
//! commit latency of one small change (on the leader, and forwarded from a follower),
//! sustained changes per second, and the time a new (wiped) replica takes to catch up to a
//! 10,000-Ingress table by snapshot. Figures: bench/raft.md.
//!
//! `cargo bench -p portico-raft --bench raft`

#[path = "../tests/common/mod.rs"]
mod common;

// The routing model's synthetic cluster (10,000 Ingresses, 1,000 Services with 30
// endpoints each, 1,000 certificates), so the figures compare with its benchmarks.
#[path = "../../portico-model/benches/support/cluster.rs"]
mod cluster;

use std::time::Instant;

use common::processes::ProcessCluster;
use portico_model::{Change, Settings};

const NODE: &str = env!("CARGO_BIN_EXE_portico-raft-node");

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without
    // it, as a smoke test: do not run a minutes-long benchmark there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut cluster = ProcessCluster::start(NODE, 3, &[]).await;
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 1) % 3;

    // Commit latency on an empty table: the cost of replication alone.
    let answer = cluster.propose(leader, 1, 0, 1_000).await;
    assert_eq!(answer["ok"], true, "{answer}");
    println!(
        "commit latency on the leader, empty table: p50 {:.2} ms, p99 {:.2} ms (1,000 sequential Service upserts)",
        ms(answer["p50_us"].as_u64().unwrap()),
        ms(answer["p99_us"].as_u64().unwrap())
    );

    // Load the 10,000-Ingress cluster as one Resync entry.
    let resync = Change::Resync {
        settings: Settings::default(),
        resources: cluster::large_cluster(),
    };
    let bytes = resync.to_bytes();
    let path = cluster.scratch().join("resync.bin");
    std::fs::write(&path, &bytes).unwrap();
    let load = cluster
        .process(leader)
        .command(&format!("propose-file 1 {}", path.display()))
        .await;
    assert_eq!(load["ok"], true, "{load}");
    let statuses = cluster
        .wait_converged(load["version"].as_u64().unwrap())
        .await;
    let table_bytes = statuses[0].1["table_bytes"].as_u64().unwrap();
    println!(
        "resync entry: {:.1} MiB, committed and applied on the leader in {:.0} ms; snapshot (table bytes): {:.1} MiB",
        bytes.len() as f64 / 1048576.0,
        ms(load["elapsed_us"].as_u64().unwrap()),
        table_bytes as f64 / 1048576.0
    );

    // Commit latency, one change at a time, on the 10k table.
    for (name, on) in [("leader", leader), ("follower (forwarded)", follower)] {
        let answer = cluster.propose(on, 1, 0, 2_000).await;
        assert_eq!(answer["ok"], true, "{answer}");
        println!(
            "commit latency on the {name}: p50 {:.2} ms, p99 {:.2} ms (2,000 sequential Service upserts)",
            ms(answer["p50_us"].as_u64().unwrap()),
            ms(answer["p99_us"].as_u64().unwrap())
        );
    }

    // Sustained throughput: 20,000 changes, 64 in flight.
    let count = 20_000;
    let answer = cluster
        .process(leader)
        .command(&format!("propose 1 100000 {count} 64"))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    let seconds = answer["elapsed_us"].as_u64().unwrap() as f64 / 1e6;
    println!(
        "sustained: {:.0} changes/s ({count} Service upserts, 64 in flight; p50 {:.2} ms, p99 {:.2} ms each)",
        count as f64 / seconds,
        ms(answer["p50_us"].as_u64().unwrap()),
        ms(answer["p99_us"].as_u64().unwrap())
    );
    let last = answer["version"].as_u64().unwrap();
    cluster.wait_converged(last).await;

    // A new replica (wiped data directory: fresh ID) catches up by snapshot.
    let wiped = (leader + 2) % 3;
    cluster.kill(wiped).await;
    std::fs::remove_dir_all(&cluster.members[wiped].data_dir).unwrap();
    let started = Instant::now();
    cluster.spawn(wiped);
    let statuses = cluster.wait_converged(last).await;
    let took = started.elapsed();
    let installs = &statuses.iter().find(|(i, _)| *i == wiped).unwrap().1["snapshot_installs"];
    println!(
        "new replica caught up to the 10k-Ingress table in {:.2} s (process start, join, snapshot install: {installs} snapshot(s), then the log tail; polled every 100 ms)",
        took.as_secs_f64()
    );
}
