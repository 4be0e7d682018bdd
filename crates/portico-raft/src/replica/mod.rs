//! The running replica: Raft, its storage and transport, and the handle Portico uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{ClientWriteError as OpenraftClientWriteError, InitializeError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use portico_model::{Change, RoutingTable};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::authorize::{self, Members};
use crate::backoff::Backoff;
use crate::identity::{self, IdentityError};
use crate::incarnation::{self, Incarnation, IncarnationError, Incarnations, Ledger, Refusal};
use crate::metrics::{Counters, Leadership, ReplicaMetrics};
use crate::peer::{PeerIdentity, PeerPolicy};
use crate::store::log::LogStore;
use crate::store::state_machine::{SnapshotCheck, StateMachine};
use crate::store::{Db, StoreError};
use crate::tls::{OwnCertificate, TlsError, TlsMaterial};
use crate::transport::TransportSettings;
use crate::transport::client::{CallError, Peers};
use crate::transport::network::NetworkFactory;
use crate::transport::server::{self, RpcHandler, RpcMeta, RpcRejection};
use crate::transport::wire::{self, Committed, ForwardError, JoinRequest, LeaderHint, NodeStatus};
use crate::types::{ApplyOutcome, ClientWriteError, NodeId, Proposal, Raft, RaftError, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

/// Raft timing and log-compaction settings.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and compact the log) after this many entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so briefly lagging peers catch up by log.
    pub entries_kept_after_snapshot: u64,
    /// Largest number of entries in one append RPC.
    pub max_entries_per_append: u64,
    /// Snapshot chunk size on the wire.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(750),
            election_timeout_max: Duration::from_millis(1500),
            // The log holds at most 1,500 entries of at most 128 KiB (the controller's
            // entry bound): 188 MiB, whatever a tenant rewrites (C2).
            snapshot_after_entries: 1_000,
            entries_kept_after_snapshot: 500,
            max_entries_per_append: 256,
            snapshot_chunk_bytes: 1 << 20,
        }
    }
}

/// How to run one replica.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The replica's own directory (a StatefulSet volume): the Raft store lives here.
    pub data_dir: PathBuf,
    /// `host:port` at which the other replicas reach this one; must match a SAN of its
    /// certificate (DNS name or IP address).
    pub advertise: String,
    /// The advertised addresses of the initial members, in ordinal order (`portico-0`
    /// first). The first one bootstraps the cluster on first boot; every replica also uses
    /// them as contact points to join an existing cluster.
    pub initial_members: Vec<String>,
    /// Hosts, besides the initial members', of replicas that may join (scale-up): exact
    /// names or IP addresses, or `name-*.rest` for any ordinal (a StatefulSet's Pods:
    /// `portico-*.portico-peers.portico-system.svc.cluster.local`). A peer is trusted only
    /// when its certificate names one of these hosts or a current member's host.
    pub peer_hosts: Vec<String>,
    pub tls: TlsMaterial,
    pub raft: RaftSettings,
    pub transport: TransportSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the Raft store: {0}")]
    Store(#[from] StoreError),
    #[error("node identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("node incarnation: {0}")]
    Incarnation(#[from] IncarnationError),
    #[error("TLS material: {0}")]
    Tls(#[from] TlsError),
    /// Invalid Raft settings (for example an election timeout not above the heartbeat).
    #[error("Raft settings: {0}")]
    Settings(String),
    #[error("starting Raft: {0}")]
    Raft(String),
    #[error("the listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// A write that was committed by a quorum and applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedChange {
    /// The log index of the change: the routing table's version once it is applied.
    pub version: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// A change's epoch below the highest applied, or a claim's not above it.
    #[error("refused: epoch {epoch} is stale (epoch {highest_epoch} already applied)")]
    StaleEpoch { epoch: u64, highest_epoch: u64 },
    #[error("refused: epoch {epoch} is above the largest allowed, {max}", max = crate::types::MAX_EPOCH)]
    EpochOutOfRange { epoch: u64 },
    #[error("no leader could take the write in time: {0}")]
    Unavailable(String),
    /// The change does not fit in one replication RPC (`max_body_bytes`, with room for
    /// the envelope); split it (for example into several `Batch` entries).
    #[error("the change is {size} bytes encoded; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the replica is shutting down")]
    ShuttingDown,
}

/// What [`Replica::step_down`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepDown {
    /// This replica was not the leader.
    NotLeader,
    /// Another replica leads now.
    Handed { to: NodeId },
    /// No other replica took over in time (for example a one-replica cluster, or the
    /// others are unreachable); this replica leads on.
    StillLeader,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("no leader could make the change in time: {0}")]
    Unavailable(String),
    #[error("membership change refused: {0}")]
    Refused(String),
    #[error("the replica is shutting down")]
    ShuttingDown,
}

/// Tracks when this replica became leader and when a quorum last acknowledged it.
#[derive(Default)]
struct LeadershipTrack {
    term: u64,
    since: Option<Instant>,
    last_quorum_ack: Option<Instant>,
}

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

struct ReceivingSnapshot {
    id: String,
    /// The digest streamed so far: no copy of the snapshot is kept besides openraft's own.
    check: SnapshotCheck,
    /// Offset and SHA-256 of the last chunk, so the same chunk sent again after a lost
    /// answer is recognised (the streamed digest cannot rewind).
    last_chunk: Option<(u64, [u8; 32])>,
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
            return Err(StartError::Settings(format!(
                "snapshot_chunk_bytes ({}) must be at least 64 KiB below max_body_bytes ({})",
                config.raft.snapshot_chunk_bytes, config.transport.max_body_bytes
            )));
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
            .map_err(|e| StartError::Raft(e.to_string()))?;

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

    /// Leadership, for the controller's Lease coupling.
    pub fn leadership(&self) -> Leadership {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let is_leader = metrics.state == ServerState::Leader;
        let track = self
            .inner
            .leadership
            .lock()
            .expect("leadership lock poisoned");
        Leadership {
            is_leader,
            since: track.since.filter(|_| is_leader),
            last_quorum_ack: track.last_quorum_ack.filter(|_| is_leader),
            term: metrics.current_term,
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

    /// Proposes a change with the proposer's fencing epoch. On a follower the write is
    /// forwarded to the leader. Returns once a quorum committed it and the leader applied
    /// it; other replicas apply it moments later (use [`Replica::wait_for_version`] to read
    /// your own write on this replica).
    ///
    /// If the connection to the leader breaks after the leader received the write, the
    /// write is sent again (until the request timeout) and may be committed twice. Changes
    /// are whole-object states (upsert, delete, resync), so applying one twice in a row
    /// leaves the same table; a caller must not have two proposals in flight whose order
    /// matters.
    pub async fn propose(
        &self,
        epoch: u64,
        change: Change,
    ) -> Result<CommittedChange, ProposeError> {
        self.submit(Proposal {
            epoch,
            change: Some(change),
        })
        .await
    }

    /// Claims `epoch` for a new leadership, before its first change: committed only when
    /// `epoch` is above every epoch applied, so no other leadership can have used it or use
    /// it later, and from then on every change with a lower epoch (a deposed leader's) is
    /// refused. A refused claim is [`ProposeError::StaleEpoch`].
    pub async fn claim_epoch(&self, epoch: u64) -> Result<CommittedChange, ProposeError> {
        self.submit(Proposal {
            epoch,
            change: None,
        })
        .await
    }

    async fn submit(&self, proposal: Proposal) -> Result<CommittedChange, ProposeError> {
        let epoch = proposal.epoch;
        if epoch > crate::types::MAX_EPOCH {
            return Err(ProposeError::EpochOutOfRange { epoch });
        }
        let size = wire::encode(&proposal).len();
        let limit = self.inner.peers.settings().max_body_bytes / 2;
        if size > limit {
            return Err(ProposeError::TooLarge { size, limit });
        }
        let committed: Committed = self
            .inner
            .forward(
                wire::PROPOSE,
                &proposal,
                self.inner.peers.settings().request_timeout,
            )
            .await
            .map_err(|e| match e {
                ForwardFailure::ShuttingDown => ProposeError::ShuttingDown,
                ForwardFailure::Failed(m) | ForwardFailure::Unavailable(m) => {
                    ProposeError::Unavailable(m)
                }
            })?;
        match committed.outcome {
            ApplyOutcome::RefusedStaleEpoch {
                epoch,
                highest_epoch,
            } => Err(ProposeError::StaleEpoch {
                epoch,
                highest_epoch,
            }),
            ApplyOutcome::RefusedEpochOutOfRange { epoch } => {
                Err(ProposeError::EpochOutOfRange { epoch })
            }
            ApplyOutcome::Applied { .. } | ApplyOutcome::NotAChange => Ok(CommittedChange {
                version: committed.index,
            }),
        }
    }

    /// Gives up Raft leadership, so that another replica leads (the controller calls this
    /// when it loses the Lease or shuts down, so the next Lease holder can be elected).
    ///
    /// openraft 0.9 has no leadership transfer, and a follower refuses votes until its
    /// leader lease (the maximum election timeout) has run out since the last heartbeat.
    /// So: stop heartbeats and our own candidacy, wait out the lease, then ask the most
    /// caught-up voter to stand for election at once. If nobody has taken over within
    /// `within`, heartbeats resume and this replica leads on.
    pub async fn step_down(&self, within: Duration) -> StepDown {
        let inner = &self.inner;
        if !self.leadership().is_leader {
            return StepDown::NotLeader;
        }
        if self.best_successor(&BTreeSet::new()).is_none() {
            // A cluster of one: nobody to hand over to.
            return StepDown::StillLeader;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + within;
        let runtime = inner.raft.runtime_config();
        runtime.elect(false);
        runtime.heartbeat(false);
        tracing::info!(
            lease_ms = inner.leader_lease.as_millis() as u64,
            "stepping down as Raft leader"
        );

        let mut metrics = inner.raft.metrics();
        let handed = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
            m.current_leader.filter(|leader| *leader != inner.id)
        };
        let successor = async {
            // A little past the lease, so every follower's has run out.
            tokio::time::sleep_until(started + inner.leader_lease + Duration::from_millis(50))
                .await;
            let mut asked = BTreeSet::new();
            loop {
                if let Some(leader) = handed(&metrics.borrow_and_update()) {
                    return leader;
                }
                if let Some((id, addr)) = self.best_successor(&asked) {
                    asked.insert(id);
                    let settings = inner.peers.settings();
                    let answer = inner
                        .peers
                        .channel(&addr)
                        .call_node(wire::ELECT, Some(id), Vec::new(), settings.connect_timeout)
                        .await;
                    match answer {
                        Ok(_) => {
                            tracing::info!(node_id = id, "asked a successor to stand for election")
                        }
                        Err(e) => {
                            tracing::info!(node_id = id, error = %e, "a successor could not be asked")
                        }
                    }
                } else {
                    asked.clear();
                }
                // One candidate at a time (two would split the vote). Followers' own
                // election timers run too; whoever wins, we learn of it here.
                let elected = async {
                    while handed(&metrics.borrow_and_update()).is_none() {
                        if metrics.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                };
                let _ = tokio::time::timeout(inner.leader_lease / 2, elected).await;
            }
        };
        let outcome = match tokio::time::timeout_at(deadline, successor).await {
            Ok(to) => StepDown::Handed { to },
            Err(_) => StepDown::StillLeader,
        };
        runtime.heartbeat(true);
        if outcome == StepDown::StillLeader {
            self.stand_again_unless_retired();
        } else {
            // Our election timer may long have run out: standing again at once would depose
            // the successor before its first heartbeat reaches us. One lease later it has.
            let replica = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(replica.inner.leader_lease).await;
                replica.stand_again_unless_retired();
            });
        }
        match outcome {
            StepDown::Handed { to } => tracing::info!(
                successor = to,
                took_ms = started.elapsed().as_millis() as u64,
                "Raft leadership handed over"
            ),
            _ => tracing::warn!("no other replica took Raft leadership; leading on"),
        }
        outcome
    }

    /// Stops standing for Raft election for good (votes are still cast), for a replica that
    /// is shutting down or no longer runs a controller: as leader it could only hold the
    /// others back. Leadership it holds now is given up with [`Replica::step_down`].
    pub fn retire(&self) {
        self.inner.retired.store(true, Ordering::SeqCst);
        self.inner.raft.runtime_config().elect(false);
    }

    fn stand_again_unless_retired(&self) {
        if !self.inner.retired.load(Ordering::SeqCst) {
            self.inner.raft.runtime_config().elect(true);
        }
    }

    /// The voter (other than us, and not yet asked) that has replicated the most of our log.
    fn best_successor(&self, asked: &BTreeSet<NodeId>) -> Option<(NodeId, String)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let matched = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|log_id| log_id.index)
        };
        membership
            .voter_ids()
            .filter(|id| *id != self.inner.id && !asked.contains(id))
            .max_by_key(|id| matched(id))
            .and_then(|id| Some((id, membership.get_node(&id)?.addr.clone())))
    }

    /// Removes a member (voter or learner) from the cluster: the scale-down step. Forwarded
    /// to the leader.
    pub async fn remove_member(&self, node_id: NodeId) -> Result<(), MembershipError> {
        self.inner
            .forward::<NodeId, ()>(wire::REMOVE, &node_id, self.membership_timeout())
            .await
            .map_err(membership_error)
    }

    /// Adds a replica as a learner, waits for it to catch up, then promotes it to voter
    /// (replacing any member with the same address: a wiped replica's old identity).
    /// Replicas do this for themselves on start; this is the manual form. Forwarded to the
    /// leader.
    pub async fn add_member(&self, node_id: NodeId, addr: String) -> Result<(), MembershipError> {
        let request = JoinRequest { node_id, addr };
        self.inner
            .forward::<JoinRequest, ()>(wire::JOIN, &request, self.membership_timeout())
            .await
            .map_err(membership_error)
    }

    fn membership_timeout(&self) -> Duration {
        self.inner.peers.settings().request_timeout * 6
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

fn membership_error(e: ForwardFailure) -> MembershipError {
    match e {
        ForwardFailure::ShuttingDown => MembershipError::ShuttingDown,
        ForwardFailure::Failed(m) => MembershipError::Refused(m),
        ForwardFailure::Unavailable(m) => MembershipError::Unavailable(m),
    }
}

fn raft_config(settings: &RaftSettings) -> Result<Arc<openraft::Config>, StartError> {
    let millis = |d: Duration| d.as_millis().try_into().unwrap_or(u64::MAX);
    let config = openraft::Config {
        cluster_name: "portico".into(),
        heartbeat_interval: millis(settings.heartbeat_interval),
        election_timeout_min: millis(settings.election_timeout_min),
        election_timeout_max: millis(settings.election_timeout_max),
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_after_entries),
        max_in_snapshot_log_to_keep: settings.entries_kept_after_snapshot,
        max_payload_entries: settings.max_entries_per_append,
        snapshot_max_chunk_size: settings.snapshot_chunk_bytes,
        ..Default::default()
    };
    let config = config
        .validate()
        .map_err(|e| StartError::Settings(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A snapshot chunk's SHA-256, to recognise it when sent again.
fn chunk_digest(data: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}

/// Why a leader-only operation failed after following leader hints.
enum ForwardFailure {
    ShuttingDown,
    /// The leader refused it (not retried).
    Failed(String),
    /// No leader took it before the deadline.
    Unavailable(String),
}

/// The leader-only operations, run locally when this replica leads.
enum LocalOutcome<T> {
    Done(T),
    NotLeader(Option<LeaderHint>),
    Failed(String),
    ShuttingDown,
}

impl Inner {
    /// Checks the incoming snapshot as it streams in, and refuses it before its last chunk is
    /// handed to Raft (which treats a snapshot that fails to install as fatal).
    async fn check_snapshot_chunk(
        &self,
        request: &InstallSnapshotRequest<TypeConfig>,
    ) -> Result<(), RpcRejection> {
        let mut receiving = self.receiving_snapshot.lock().await;
        if request.offset == 0 {
            *receiving = Some(ReceivingSnapshot {
                id: request.meta.snapshot_id.clone(),
                check: SnapshotCheck::new(),
                last_chunk: None,
            });
        }
        let refuse = |receiving: &mut Option<ReceivingSnapshot>, why: &str| {
            *receiving = None;
            Err(RpcRejection::BadRequest(format!("refused snapshot: {why}")))
        };
        let Some(s) = receiving
            .as_mut()
            .filter(|s| s.id == request.meta.snapshot_id)
        else {
            return refuse(&mut receiving, "chunk out of sequence");
        };
        let digest = chunk_digest(&request.data);
        if s.last_chunk == Some((request.offset, digest)) {
            // The same chunk again (its answer was lost): already counted.
        } else if request.offset == s.check.received() {
            if let Err(e) = s.check.feed(&request.data) {
                return refuse(&mut receiving, e);
            }
            s.last_chunk = Some((request.offset, digest));
        } else {
            return refuse(&mut receiving, "chunk out of sequence");
        }
        if request.done {
            let received = receiving.take().expect("checked above");
            received
                .check
                .finish()
                .map_err(|e| RpcRejection::BadRequest(format!("refused snapshot: {e}")))?;
        }
        Ok(())
    }

    /// Checks the incarnation a caller sent (see the `incarnation` module); returns the node
    /// it speaks for.
    async fn admit_caller(
        &self,
        header: &str,
        caller: &PeerIdentity,
    ) -> Result<NodeId, RpcRejection> {
        let (node, incarnation) = Incarnation::parse_header(header)
            .map_err(|e| RpcRejection::BadRequest(e.to_string()))?;
        if node == self.id {
            return Err(RpcRejection::Forbidden(format!(
                "{caller} sends the incarnation of node {node}, this node"
            )));
        }
        authorize::speaker(&self.members(), caller, Some(node))?;
        let other_leader = self
            .raft
            .metrics()
            .borrow()
            .current_leader
            .is_some_and(|leader| leader != self.id && leader != node);
        self.incarnations
            .admit(node, &incarnation, other_leader)
            .await
            .map_err(|refusal| match refusal {
                Refusal::Stale { .. } => RpcRejection::StaleCaller(refusal.to_string()),
                Refusal::NotYet { .. } => RpcRejection::NotYet(refusal.to_string()),
            })?;
        Ok(node)
    }

    /// The current membership, for authorizing a caller.
    fn members(&self) -> Members {
        Members::of(self.raft.metrics().borrow().membership_config.membership())
    }

    fn leader_hint(&self) -> Option<LeaderHint> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some(LeaderHint {
            node_id: leader,
            addr: node.addr.clone(),
        })
    }

    fn status(&self) -> NodeStatus {
        let metrics = self.raft.metrics().borrow().clone();
        NodeStatus {
            node_id: self.id,
            member_of_cluster: metrics
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some(),
            leader: self.leader_hint(),
            stale_volume: self.incarnations.stale(),
        }
    }

    /// Runs a leader-only operation here if this replica leads, or on the leader it points
    /// to, following hints until `timeout`.
    async fn forward<Req, Resp>(
        &self,
        path: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, ForwardFailure>
    where
        Req: Serialize + Clone + Send + Sync + 'static,
        Resp: Serialize + DeserializeOwned + Send + 'static,
        Self: LocalOp<Req, Resp>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_problem = String::from("no leader known");
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            let hint = match self.run_local(request.clone()).await {
                LocalOutcome::Done(value) => return Ok(value),
                LocalOutcome::Failed(m) => return Err(ForwardFailure::Failed(m)),
                LocalOutcome::ShuttingDown => return Err(ForwardFailure::ShuttingDown),
                LocalOutcome::NotLeader(hint) => hint,
            };
            if let Some(leader) = hint.filter(|l| l.node_id != self.id) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let answer = self
                    .peers
                    .channel(&leader.addr)
                    .call(path, wire::encode(request), left)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|body| {
                        wire::decode::<Result<Resp, ForwardError>>(&body).map_err(|e| e.to_string())
                    });
                match answer {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(ForwardError::Failed(m))) => return Err(ForwardFailure::Failed(m)),
                    Ok(Err(ForwardError::NotLeader { .. })) => {
                        last_problem = format!("{} is no longer the leader", leader.addr)
                    }
                    Err(e) => last_problem = e,
                }
            }
            let pause = backoff.next_delay();
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(ForwardFailure::Unavailable(last_problem));
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn write(&self, proposal: Proposal) -> LocalOutcome<Committed> {
        match self.raft.client_write(proposal).await {
            Ok(response) => LocalOutcome::Done(Committed {
                index: response.log_id.index,
                outcome: response.data,
            }),
            Err(e) => client_write_failure(e),
        }
    }

    /// Leader side of a join: learner, catch-up, promotion (replacing stale identities
    /// that share the joiner's address).
    async fn join(&self, request: JoinRequest) -> LocalOutcome<()> {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return LocalOutcome::NotLeader(self.leader_hint());
        }
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if membership.voter_ids().any(|id| id == request.node_id) {
            return LocalOutcome::Done(());
        }
        tracing::info!(node_id = request.node_id, addr = %request.addr, "adding a learner");
        let node = BasicNode {
            addr: request.addr.clone(),
        };
        // Blocking: returns once the learner has caught up with the leader's log.
        if let Err(e) = self.raft.add_learner(request.node_id, node, true).await {
            return client_write_failure(e);
        }
        // Read again: the catch-up can take long, and another join (a second wiped replica)
        // may have changed the membership meanwhile; promoting from the old copy would drop
        // that newcomer or bring back the identity it replaced (M6).
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let stale: BTreeSet<NodeId> = membership
            .nodes()
            .filter(|(id, node)| **id != request.node_id && node.addr == request.addr)
            .map(|(id, _)| *id)
            .collect();
        let voters: BTreeSet<NodeId> = membership
            .voter_ids()
            .filter(|id| !stale.contains(id))
            .chain([request.node_id])
            .collect();
        tracing::info!(
            node_id = request.node_id,
            ?stale,
            ?voters,
            "promoting the learner"
        );
        if let Err(e) = self
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
        {
            return client_write_failure(e);
        }
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let stale_learners: BTreeSet<NodeId> = membership
            .learner_ids()
            .filter(|id| stale.contains(id))
            .collect();
        if !stale_learners.is_empty()
            && let Err(e) = self
                .raft
                .change_membership(ChangeMembers::RemoveNodes(stale_learners), false)
                .await
        {
            return client_write_failure(e);
        }
        LocalOutcome::Done(())
    }

    async fn remove(&self, node_id: NodeId) -> LocalOutcome<()> {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return LocalOutcome::NotLeader(self.leader_hint());
        }
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let change = if membership.voter_ids().any(|id| id == node_id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else if membership.learner_ids().any(|id| id == node_id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        } else {
            return LocalOutcome::Done(());
        };
        match self.raft.change_membership(change, false).await {
            Ok(_) => LocalOutcome::Done(()),
            Err(e) => client_write_failure(e),
        }
    }
}

fn client_write_failure<T>(e: RaftError<ClientWriteError>) -> LocalOutcome<T> {
    match e {
        RaftError::APIError(OpenraftClientWriteError::ForwardToLeader(forward)) => {
            LocalOutcome::NotLeader(match (forward.leader_id, forward.leader_node) {
                (Some(node_id), Some(node)) => Some(LeaderHint {
                    node_id,
                    addr: node.addr,
                }),
                _ => None,
            })
        }
        RaftError::APIError(OpenraftClientWriteError::ChangeMembershipError(e)) => {
            LocalOutcome::Failed(e.to_string())
        }
        RaftError::Fatal(_) => LocalOutcome::ShuttingDown,
    }
}

/// An operation that only the leader can run.
trait LocalOp<Req, Resp> {
    fn run_local(
        &self,
        request: Req,
    ) -> impl std::future::Future<Output = LocalOutcome<Resp>> + Send;
}

impl LocalOp<Proposal, Committed> for Inner {
    async fn run_local(&self, request: Proposal) -> LocalOutcome<Committed> {
        self.write(request).await
    }
}

impl LocalOp<JoinRequest, ()> for Inner {
    async fn run_local(&self, request: JoinRequest) -> LocalOutcome<()> {
        self.join(request).await
    }
}

impl LocalOp<NodeId, ()> for Inner {
    async fn run_local(&self, request: NodeId) -> LocalOutcome<()> {
        self.remove(request).await
    }
}

fn bad_request(e: postcard::Error) -> RpcRejection {
    RpcRejection::BadRequest(e.to_string())
}

/// Answers a forwarded leader-only operation: run here if leader, else say who leads.
async fn answer_forwarded<Req, Resp>(inner: &Inner, request: Req) -> Result<Vec<u8>, RpcRejection>
where
    Resp: Serialize,
    Inner: LocalOp<Req, Resp>,
{
    let answer: Result<Resp, ForwardError> = match inner.run_local(request).await {
        LocalOutcome::Done(value) => Ok(value),
        LocalOutcome::NotLeader(leader) => Err(ForwardError::NotLeader { leader }),
        LocalOutcome::Failed(m) => Err(ForwardError::Failed(m)),
        LocalOutcome::ShuttingDown => {
            return Err(RpcRejection::Unavailable("shutting down".into()));
        }
    };
    Ok(wire::encode(&answer))
}

impl RpcHandler for Inner {
    async fn handle(
        &self,
        path: &str,
        meta: RpcMeta,
        caller: &PeerIdentity,
        body: Bytes,
    ) -> Result<Vec<u8>, RpcRejection> {
        let raft_rpc = matches!(
            path,
            wire::APPEND_ENTRIES | wire::VOTE | wire::INSTALL_SNAPSHOT | wire::ELECT
        );
        let target = meta.target;
        match target {
            Some(target) if target != self.id => {
                return Err(RpcRejection::Misdirected {
                    this: self.id,
                    target,
                });
            }
            None if raft_rpc => {
                return Err(RpcRejection::BadRequest(format!(
                    "{} header required",
                    wire::TARGET_HEADER
                )));
            }
            _ => {}
        }
        // Who may call what is decided before a body is decoded, except the checks that
        // need the request itself (the node a Raft RPC speaks for, the joiner's address).
        match path {
            wire::APPEND_ENTRIES | wire::VOTE | wire::INSTALL_SNAPSHOT => {
                authorize::raft_peer(&self.members(), &self.policy, caller)?
            }
            wire::PROPOSE => authorize::member(&self.members(), caller, false)?,
            wire::REMOVE | wire::ELECT => authorize::member(&self.members(), caller, true)?,
            wire::STATUS | wire::JOIN => authorize::replica(&self.members(), &self.policy, caller)?,
            _ => {}
        }
        // Then the caller's incarnation, before anything is done for it.
        let sender = match meta.incarnation.as_deref() {
            Some(header) => Some(self.admit_caller(header, caller).await?),
            None => None,
        };
        if raft_rpc {
            if let Some(known) = meta.known.as_deref() {
                let (counter, nonce) = Incarnation::parse_known(known)
                    .map_err(|e| RpcRejection::BadRequest(e.to_string()))?;
                self.incarnations
                    .check_known(counter, nonce)
                    .map_err(RpcRejection::StaleSelf)?;
            }
            if let Some(why) = self.incarnations.stale() {
                return Err(RpcRejection::StaleSelf(why));
            }
        }
        match path {
            wire::APPEND_ENTRIES => {
                let request: AppendEntriesRequest<TypeConfig> =
                    wire::decode(&body).map_err(bad_request)?;
                let speaker = request.vote.leader_id().voted_for();
                authorize::speaker(&self.members(), caller, speaker)?;
                same_speaker(sender, speaker)?;
                Ok(wire::encode(&self.raft.append_entries(request).await))
            }
            wire::VOTE => {
                let request: VoteRequest<NodeId> = wire::decode(&body).map_err(bad_request)?;
                let speaker = request.vote.leader_id().voted_for();
                authorize::speaker(&self.members(), caller, speaker)?;
                same_speaker(sender, speaker)?;
                Ok(wire::encode(&self.raft.vote(request).await))
            }
            wire::INSTALL_SNAPSHOT => {
                let request: InstallSnapshotRequest<TypeConfig> =
                    wire::decode(&body).map_err(bad_request)?;
                let speaker = request.vote.leader_id().voted_for();
                authorize::speaker(&self.members(), caller, speaker)?;
                self.check_snapshot_chunk(&request).await?;
                same_speaker(sender, speaker)?;
                Ok(wire::encode(&self.raft.install_snapshot(request).await))
            }
            wire::PROPOSE => {
                let request: Proposal = wire::decode(&body).map_err(bad_request)?;
                answer_forwarded::<Proposal, Committed>(self, request).await
            }
            wire::JOIN => {
                let request: JoinRequest = wire::decode(&body).map_err(bad_request)?;
                authorize::join(&self.members(), &self.policy, caller, &request)?;
                answer_forwarded::<JoinRequest, ()>(self, request).await
            }
            wire::REMOVE => {
                let request: NodeId = wire::decode(&body).map_err(bad_request)?;
                answer_forwarded::<NodeId, ()>(self, request).await
            }
            wire::STATUS => Ok(wire::encode(&self.status())),
            wire::ELECT => {
                same_speaker(sender, sender)?;
                // A stepping-down leader asks us to stand; a no-op if we already lead.
                self.raft
                    .trigger()
                    .elect()
                    .await
                    .map_err(|e| RpcRejection::Unavailable(e.to_string()))?;
                Ok(Vec::new())
            }
            other => Err(RpcRejection::NotFound(other.to_owned())),
        }
    }

    fn incarnation_header(&self) -> &http::HeaderValue {
        self.incarnations.header()
    }
}

/// A Raft RPC's sender must send its incarnation, and be the node the RPC speaks for.
fn same_speaker(sender: Option<NodeId>, speaker: Option<NodeId>) -> Result<(), RpcRejection> {
    match sender {
        None => Err(RpcRejection::BadRequest(format!(
            "{} header required",
            wire::INCARNATION_HEADER
        ))),
        Some(sender) if Some(sender) != speaker => Err(RpcRejection::Forbidden(format!(
            "the incarnation is node {sender}'s, the RPC speaks for {speaker:?}"
        ))),
        Some(_) => Ok(()),
    }
}

/// A replica that finds its own volume stale stops standing for election for good (it
/// also refuses every Raft RPC; see `RpcHandler::handle`).
async fn stand_down_when_stale(inner: Arc<Inner>) {
    let mut stale = inner.incarnations.watch_stale();
    if stale.wait_for(Option::is_some).await.is_ok() {
        inner.retired.store(true, Ordering::SeqCst);
        inner.raft.runtime_config().elect(false);
    }
}

/// Records when this replica became leader and when a quorum last acknowledged it.
async fn track_leadership(inner: Arc<Inner>) {
    let mut metrics = inner.raft.metrics();
    loop {
        {
            let m = metrics.borrow_and_update();
            let now = Instant::now();
            let mut track = inner.leadership.lock().expect("leadership lock poisoned");
            if m.state == ServerState::Leader {
                if track.since.is_none() || track.term != m.current_term {
                    track.since = Some(now);
                    track.term = m.current_term;
                    tracing::info!(term = m.current_term, "became the Raft leader");
                }
                track.last_quorum_ack = m
                    .millis_since_quorum_ack
                    .and_then(|ms| now.checked_sub(Duration::from_millis(ms)));
            } else {
                track.since = None;
                track.last_quorum_ack = None;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// First boot and rejoin: makes this replica a voting member.
///
/// * Already a voter (from its own log): nothing to do.
/// * Some contact point belongs to a cluster: ask it (it forwards to the leader) to add us
///   as a learner, let us catch up, and promote us.
/// * Nobody belongs to a cluster yet, and we are the first initial member, and every
///   other initial member answered: initialize the cluster with all of them.
/// * Otherwise wait and ask again.
async fn join_cluster(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let settings = inner.peers.settings().clone();
    loop {
        let is_voter = inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == inner.id);
        if is_voter {
            tracing::info!(node_id = inner.id, "this replica is a voting member");
            return;
        }
        let contacts: Vec<&String> = inner
            .initial_members
            .iter()
            .filter(|a| **a != inner.advertise)
            .collect();
        let mut statuses = Vec::new();
        for addr in &contacts {
            let answer = inner
                .peers
                .channel(addr)
                .call(wire::STATUS, Vec::new(), settings.connect_timeout)
                .await
                .map_err(|e| e.to_string())
                .and_then(|body| wire::decode::<NodeStatus>(&body).map_err(|e| e.to_string()));
            match answer {
                Ok(status) => statuses.push(((*addr).clone(), status)),
                Err(e) => tracing::debug!(peer = %addr, error = %e, "no status from peer"),
            }
        }
        if let Some((contact, status)) = statuses.iter().find(|(_, s)| s.member_of_cluster) {
            // Go straight to the leader when the contact knows it; follow a few hints.
            let mut target = status
                .leader
                .as_ref()
                .map_or_else(|| contact.clone(), |l| l.addr.clone());
            let request = JoinRequest {
                node_id: inner.id,
                addr: inner.advertise.clone(),
            };
            for _hop in 0..3 {
                tracing::info!(via = %target, node_id = inner.id, "asking to join the cluster");
                let answer = inner
                    .peers
                    .channel(&target)
                    .call(
                        wire::JOIN,
                        wire::encode(&request),
                        settings.request_timeout * 6,
                    )
                    .await
                    .map_err(|e: CallError| e.to_string())
                    .and_then(|body| {
                        wire::decode::<Result<(), ForwardError>>(&body).map_err(|e| e.to_string())
                    });
                match answer {
                    Ok(Ok(())) => break,
                    Ok(Err(ForwardError::NotLeader {
                        leader: Some(leader),
                    })) if leader.addr != target => target = leader.addr,
                    Ok(Err(e)) => {
                        tracing::info!(error = %e, "join not done yet");
                        break;
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "join request failed");
                        break;
                    }
                }
            }
        } else if inner.initial_members.first() == Some(&inner.advertise)
            && statuses.len() == contacts.len()
        {
            let mut members = BTreeMap::from([(
                inner.id,
                BasicNode {
                    addr: inner.advertise.clone(),
                },
            )]);
            for (addr, status) in &statuses {
                members.insert(status.node_id, BasicNode { addr: addr.clone() });
            }
            tracing::info!(?members, "bootstrapping the cluster");
            match inner.raft.initialize(members).await {
                Ok(()) => {}
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::info!(error = %e, "already initialized")
                }
                Err(e) => tracing::warn!(error = %e, "bootstrap failed"),
            }
        }
        // Wait, unless we become a voter meanwhile.
        let mut metrics = inner.raft.metrics();
        let id = inner.id;
        let _ = tokio::time::timeout(
            backoff.next_delay(),
            metrics.wait_for(|m| {
                m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id)
            }),
        )
        .await;
    }
}
