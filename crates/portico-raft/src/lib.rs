//! Replication of Portico's routing table to every replica, with Raft (openraft 0.9).
//!
//! Every replica holds the same committed routing table, keeps serving it when the leader
//! or the API server is gone, survives its own restart, and catches up from its peers when
//! it comes back. The rest of Portico sees only [`Replica`]: a `watch` of the latest
//! applied `Arc<RoutingTable>`, [`Replica::propose`] for writes (from any replica; a
//! follower forwards to the leader), [`Replica::leadership`] for the Lease coupling, and
//! [`Replica::metrics`]. No openraft type appears in the public API.
//!
//! # Modules
//! * [`backoff`]: the jittered exponential backoff of every control-plane retry loop.
//! * `store`: the log, vote and snapshots in one redb file (`raft.redb`) in the data
//!   directory; the state machine (the routing table) in memory.
//! * `identity`: the node ID, stored with the log.
//! * `incarnation`: a new incarnation at every start, carried by every RPC, so a restored
//!   or cloned volume is refused instead of voting with a stale vote and log.
//! * `recover`: [`force_single_voter`], the way out of a lost quorum.
//! * `transport`: HTTP/2 over mutually authenticated TLS between replicas.
//! * `replica`: openraft wiring, forwarding of writes, bootstrap and membership.
//!
//! # Log entries and fencing
//! An entry is a [`Proposal`]: a `portico_model::Change` (a delta, or a whole-input
//! `Resync`) and the proposer's fencing epoch. Entry `i` is applied as
//! `table.apply(i, &change)`, so a table's version is a log index and is identical on every
//! replica. An entry whose epoch is below the highest epoch already applied is refused by
//! every replica (the decision depends only on the log) and counted in
//! [`ReplicaMetrics::refused_stale_entries`]; the proposer gets [`ProposeError::StaleEpoch`].
//! A new leader first claims its epoch ([`Replica::claim_epoch`]), which commits only when
//! the epoch is above every epoch applied: two leaderships never share an epoch, and the
//! claim fences the deposed leader at once. No epoch above [`MAX_EPOCH`] is accepted.
//!
//! # Who may call
//! Peers authenticate with certificates from the cluster CA, and are authorized by the
//! names in them: a caller is member `n` when its certificate names the host of `n`'s
//! address; Raft RPCs, proposals, removals and elections come from members only, a join
//! from the joining replica itself (or a member forwarding it) at a replica host
//! ([`ReplicaConfig::peer_hosts`]). See the `authorize` module.
//!
//! # Procedures
//! **First boot.** Start every replica with the same `initial_members` list (the
//! advertised `host:port` of `portico-0`, `portico-1`, … in ordinal order). Each replica
//! draws a random node ID and stores it in its data directory. Only the first member
//! (`portico-0`) may initialize, and only when every other initial member has answered that
//! it belongs to no cluster yet; it then initializes Raft with all of them as voters. The
//! others wait to receive the membership. If any contact already belongs to a cluster, the
//! replica joins it instead (so a wiped `portico-0` never starts a second cluster). Use
//! `podManagementPolicy: Parallel` so all initial members come up together.
//!
//! **Restart.** The replica reopens its store: same ID, same log, a new incarnation (its
//! peers take it once the previous one has been quiet for an election timeout). The table
//! is rebuilt from the stored snapshot, then the log up to the stored commit index is
//! re-applied; the leader then sends whatever it missed (log entries, or a snapshot if
//! they were compacted away).
//!
//! **Restored or cloned volume.** Never start one: its peers refuse it (see the
//! `incarnation` module) and it reports [`ReplicaMetrics::stale_volume`]. Delete the data
//! directory; the replica rejoins as a wiped one.
//!
//! **Scale up / wiped replica.** A replica whose store is empty draws a fresh ID and asks
//! a contact to add it (the request is forwarded to the leader). The leader adds it as a
//! learner, waits for it to catch up, then promotes it to voter in one joint-consensus
//! change that also drops any member with the same address (the wiped replica's old
//! identity, which must never come back with an empty log). [`Replica::add_member`] is the
//! manual form.
//!
//! **Scale down.** Call [`Replica::remove_member`] with the departing node's ID (see
//! [`ReplicaMetrics::voters`]) before deleting the pod, one member at a time, keeping a
//! majority of the remaining voters up.
//!
//! **Quorum lost for good.** Stop one survivor, run [`force_single_voter`] on its data
//! directory (`portico raft recover`), delete the lost replicas' volumes, start again.
//!
//! **Compaction.** After `snapshot_after_entries` entries a snapshot is built (the table's
//! own encoding plus the highest epoch), stored, and the log purged up to it, keeping
//! `entries_kept_after_snapshot` entries so briefly lagging peers still catch up by log.

mod authorize;
pub mod backoff;
mod identity;
mod incarnation;
mod metrics;
mod peer;
mod recover;
mod replica;
mod store;
mod tls;
mod transport;
mod types;

pub use identity::IdentityError;
pub use incarnation::IncarnationError;
pub use metrics::{Leadership, ReplicaMetrics};
pub use recover::{RecoverError, Recovered, force_single_voter};
pub use replica::{
    BoxError, CommittedChange, MembershipError, ProposeError, RaftSettings, Replica, ReplicaConfig,
    StartError, StepDown, Unavailable,
};
pub use store::{STORE_FILE, StoreError};
pub use tls::{TlsError, TlsMaterial};
pub use transport::TransportSettings;
pub use types::{ApplyOutcome, MAX_EPOCH, NodeId, Proposal};

/// The change `portico-raft-node`'s `propose` command makes for `i`: an upsert of Service
/// `default/svc-<i>`. One definition for the node and the tests, which compare tables the
/// node built with ones they built themselves. Test support only (the `node` feature).
#[cfg(feature = "node")]
#[doc(hidden)]
pub fn service_change(i: u64) -> portico_model::Change {
    use portico_model::{Change, ObjectKey, Resource, ServicePortSource, ServiceSource};
    Change::Upsert(Resource::Service(std::sync::Arc::new(ServiceSource {
        key: ObjectKey::new("default", format!("svc-{i}")),
        ports: vec![ServicePortSource {
            name: Some("http".into()),
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    })))
}
