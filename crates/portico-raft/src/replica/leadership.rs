//! Leadership: when this replica became leader and was last acknowledged, handing it over
//! (`step_down`), and never standing again (`retire`, or a stale volume).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ServerState};

use super::{Inner, Replica};
use crate::metrics::Leadership;
use crate::transport::wire::{self, LeaderHint};
use crate::types::NodeId;

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

/// Tracks when this replica became leader and when a quorum last acknowledged it.
#[derive(Default)]
pub(super) struct LeadershipTrack {
    term: u64,
    since: Option<Instant>,
    last_quorum_ack: Option<Instant>,
}

impl Replica {
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
}

impl Inner {
    pub(super) fn leader_hint(&self) -> Option<LeaderHint> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some(LeaderHint {
            node_id: leader,
            addr: node.addr.clone(),
        })
    }
}

/// A replica that finds its own volume stale stops standing for election for good (it
/// also refuses every Raft RPC; see `RpcHandler::handle`).
pub(super) async fn stand_down_when_stale(inner: Arc<Inner>) {
    let mut stale = inner.incarnations.watch_stale();
    if stale.wait_for(Option::is_some).await.is_ok() {
        inner.retired.store(true, Ordering::SeqCst);
        inner.raft.runtime_config().elect(false);
    }
}

/// Records when this replica became leader and when a quorum last acknowledged it.
pub(super) async fn track_leadership(inner: Arc<Inner>) {
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
