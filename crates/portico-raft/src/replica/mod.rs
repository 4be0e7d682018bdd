//! The running replica: Raft, its storage and transport, and the handle Portico uses.
//!
//! * `config`: the settings, and openraft's `Config` made from them.
//! * `error`: the public errors.
//! * `propose`: where a proposal enters, on any replica.
//! * `forward`: a leader-only operation run here when this replica leads, else sent to the
//!   leader.
//! * `leadership`: leadership tracking, step-down and retirement.
//! * `membership`: bootstrap, joins and removals.
//! * `rpc`: the RPC handler: authorization, incarnations, then the operation.

mod config;
mod error;
mod forward;
mod leadership;
mod membership;
mod propose;
mod rpc;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, Membership, ServerState};
use portico_model::RoutingTable;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::identity;
use crate::incarnation::{self, Incarnations, Ledger};
use crate::metrics::{Counters, ReplicaMetrics};
use crate::peer::PeerPolicy;
use crate::store::Db;
use crate::store::log::LogStore;
use crate::store::state_machine::StateMachine;
use crate::tls::{OwnCertificate, TlsError};
use crate::transport::client::Peers;
use crate::transport::network::NetworkFactory;
use crate::transport::server;
use crate::types::{NodeId, Raft};

pub use config::{RaftSettings, ReplicaConfig};
pub use error::{BoxError, MembershipError, ProposeError, StartError, Unavailable};
pub use leadership::StepDown;
pub use propose::CommittedChange;

use config::raft_config;
use leadership::{LeadershipTrack, stand_down_when_stale, track_leadership};
use membership::join_cluster;
use rpc::ReceivingSnapshot;

struct Inner {
    id: NodeId,
    advertise: String,
    initial_members: Vec<String>,
    /// Which certificate names are replicas (see [`ReplicaConfig::peer_hosts`]).
    policy: PeerPolicy,
    raft: Raft,
    /// Followers refuse votes for this long after the leader's last heartbeat (openraft's
    /// leader lease is the maximum election timeout).
    leader_lease: Duration,
    /// Set by [`Replica::retire`]: never stand for election again.
    retired: AtomicBool,
    peers: Arc<Peers>,
    counters: Arc<Counters>,
    leadership: Mutex<LeadershipTrack>,
    /// This replica's certificate, replaceable while running.
    own_certificate: Arc<OwnCertificate>,
    /// The check of the snapshot being received, done before its last chunk reaches Raft.
    receiving_snapshot: tokio::sync::Mutex<Option<ReceivingSnapshot>>,
    /// This start's incarnation and those accepted from the other nodes (restored or
    /// cloned volumes).
    incarnations: Arc<Incarnations>,
}

impl Inner {
    /// The membership in effect as this replica knows it: a copy, so no borrow of the
    /// metrics is held across an await.
    fn membership(&self) -> Membership<NodeId, BasicNode> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }
}

/// A running replica. Cloning gives another handle to the same replica.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
    table: watch::Receiver<Arc<RoutingTable>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Replica {
    /// Opens the store in `config.data_dir`, starts Raft and serves RPCs on `listener`.
    /// Joining or bootstrapping the cluster continues in the background; watch
    /// [`Replica::metrics`] (`voters`) to see when this replica is a member.
    pub async fn start(config: ReplicaConfig, listener: TcpListener) -> Result<Self, StartError> {
        // A snapshot chunk plus its envelope must fit in one RPC body.
        if config.raft.snapshot_chunk_bytes.saturating_add(64 << 10)
            > config.transport.max_body_bytes as u64
        {
            return Err(StartError::SnapshotChunkTooLarge {
                chunk_bytes: config.raft.snapshot_chunk_bytes,
                max_body_bytes: config.transport.max_body_bytes,
            });
        }
        let tls = config.tls.configs()?;
        let db = Db::open(&config.data_dir)?;
        let (id, fresh) = identity::load_or_create(&db).await?;
        // Stored before anything is answered: see the `incarnation` module.
        let own = incarnation::begin(&db).await?;
        tracing::info!(node_id = id, fresh, incarnation = own.counter, addr = %config.advertise, "starting replica");
        let ledger = Ledger::open(db.clone(), config.raft.election_timeout_max).await?;
        let incarnations = Arc::new(Incarnations::new(id, own, ledger, &config.data_dir));

        let counters = Arc::new(Counters::default());
        let log_store = LogStore::new(db.clone(), counters.clone());
        let (state_machine, table) = StateMachine::open(db, counters.clone()).await?;
        let peers = Arc::new(
            Peers::new(tls.client, config.transport.clone())
                .with_incarnations(incarnations.clone()),
        );
        let network = NetworkFactory {
            local_id: id,
            peers: peers.clone(),
        };
        let raft_config = raft_config(&config.raft)?;
        let raft = Raft::new(id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| StartError::Raft(Box::new(e)))?;

        let inner = Arc::new(Inner {
            id,
            advertise: config.advertise.clone(),
            initial_members: config.initial_members.clone(),
            policy: PeerPolicy::new(&config.initial_members, &config.peer_hosts),
            raft,
            leader_lease: config.raft.election_timeout_max,
            retired: AtomicBool::new(false),
            peers,
            counters,
            leadership: Mutex::new(LeadershipTrack::default()),
            own_certificate: tls.own,
            receiving_snapshot: tokio::sync::Mutex::new(None),
            incarnations,
        });
        let server = server::spawn(listener, tls.server, inner.clone(), config.transport);
        let leadership = tokio::spawn(track_leadership(inner.clone()));
        let membership = tokio::spawn(join_cluster(inner.clone()));
        let stale = tokio::spawn(stand_down_when_stale(inner.clone()));
        Ok(Self {
            inner,
            table,
            tasks: Arc::new(Mutex::new(vec![server, leadership, membership, stale])),
        })
    }

    /// Replaces this replica's certificate and key (PEM) for every handshake from now on,
    /// in both directions: a renewed short-lived certificate is used without a restart.
    /// Connections already open keep theirs. The current pair stays on an error (the key is
    /// not the certificate's, or either does not parse). The CA is not replaced.
    pub fn replace_certificate(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        self.inner.own_certificate.replace(cert_pem, key_pem)
    }

    /// This replica's Raft node ID.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The latest applied routing table; changes whenever a batch of entries is applied.
    pub fn table(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.table.clone()
    }

    /// The applied table's version (the log index of the last change it applied).
    pub fn version(&self) -> u64 {
        self.inner.counters.table_version()
    }

    /// Waits until the applied table reaches `version`.
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) -> Result<u64, u64> {
        let mut table = self.table.clone();
        let reached =
            tokio::time::timeout(timeout, table.wait_for(|t| t.version() >= version)).await;
        match reached {
            Ok(Ok(t)) => Ok(t.version()),
            _ => Err(self.version()),
        }
    }

    /// A snapshot of the replica's metrics.
    pub fn metrics(&self) -> ReplicaMetrics {
        let m = self.inner.raft.metrics().borrow().clone();
        let counters = &self.inner.counters;
        let last_log = m.last_log_index;
        let replication_lag = m
            .replication
            .as_ref()
            .map(|peers| {
                peers
                    .iter()
                    .filter(|(id, _)| **id != self.inner.id)
                    .map(|(id, matched)| {
                        let matched = matched.map(|l| l.index);
                        let lag = match (last_log, matched) {
                            (Some(last), Some(at)) => last.saturating_sub(at),
                            (Some(last), None) => last + 1,
                            (None, _) => 0,
                        };
                        (*id, lag)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let membership = m.membership_config.membership();
        let addr = |id: &NodeId| {
            membership
                .get_node(id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        let voters: BTreeMap<_, _> = membership.voter_ids().map(|id| (id, addr(&id))).collect();
        let learners = membership.learner_ids().map(|id| (id, addr(&id))).collect();
        ReplicaMetrics {
            node_id: self.inner.id,
            fatal: m.running_state.as_ref().err().map(|e| e.to_string()),
            term: m.current_term,
            leader: m.current_leader,
            is_leader: m.state == ServerState::Leader,
            committed_index: counters.committed(),
            applied_index: counters.applied(),
            table_version: counters.table_version(),
            last_log_index: last_log,
            highest_epoch: counters.highest_epoch(),
            replication_lag,
            snapshot_installs: counters.snapshot_installs(),
            snapshots_built: counters.snapshots_built(),
            refused_stale_entries: counters.refused_stale_entries(),
            stale_volume: self.inner.incarnations.stale(),
            refused_incarnations: self.inner.incarnations.refused(),
            incarnation: self.inner.incarnations.own.counter,
            voters,
            learners,
        }
    }

    /// Stops Raft and the RPC server. Other handles stop working.
    pub async fn shutdown(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock poisoned"));
        for task in &tasks {
            task.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly");
        }
    }
}
