//! M7: a replica installing a snapshot kept a whole second copy of it to check it, decoded
//! the table bytes out of it once more for that check and again to install it, besides
//! openraft's own copy: several times the snapshot's size at once, which a large table turns
//! into an OOM kill on every attempt. What must hold: the check streams a SHA-256 over the
//! chunks as they arrive and keeps none of them (`SnapshotCheck`; garbled, truncated and
//! extended snapshots are refused in its unit tests), the install reads the table in place,
//! and a snapshot sent in many small chunks is still checked and installed.

use portico_raft::RaftSettings;

use crate::common::cluster::{Cluster, test_settings};
use crate::common::service_change;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_many_small_chunks_is_checked_as_it_streams_and_installs() {
    const CHUNK: u64 = 1 << 10;
    let settings = RaftSettings {
        snapshot_after_entries: 50,
        entries_kept_after_snapshot: 5,
        snapshot_chunk_bytes: CHUNK,
        ..test_settings()
    };
    let mut cluster = Cluster::start(3, settings).await;
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 1) % 3;
    cluster.stop(follower).await;
    let mut last = 0;
    for i in 0..300 {
        last = cluster
            .replica(leader)
            .propose(1, service_change(i))
            .await
            .unwrap()
            .version;
    }
    cluster.restart(follower).await;
    let bytes = cluster.wait_converged(last).await;
    assert!(
        bytes.len() as u64 > 4 * CHUNK,
        "the snapshot spans several chunks: {} bytes",
        bytes.len()
    );
    let metrics = cluster.replica(follower).metrics();
    assert!(
        metrics.snapshot_installs >= 1,
        "the log was compacted, so catch-up needs a snapshot: {metrics:?}"
    );
    assert_eq!(cluster.replica(follower).table().borrow().to_bytes(), bytes);
}
