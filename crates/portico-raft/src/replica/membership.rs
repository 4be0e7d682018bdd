//! Membership: first boot and rejoin (`join_cluster`), and the leader's side of a join
//! (learner, catch-up, promotion) and of a removal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::InitializeError;
use openraft::{BasicNode, ChangeMembers, ServerState};

use super::forward::{ForwardFailure, LocalOutcome, client_write_failure};
use super::{Inner, MembershipError, Replica};
use crate::backoff::Backoff;
use crate::transport::client::CallError;
use crate::transport::wire::{self, ForwardError, JoinRequest, NodeStatus};
use crate::types::{NodeId, RaftError};

impl Replica {
    /// Removes a member (voter or learner) from the cluster: the scale-down step. Forwarded
    /// to the leader.
    pub async fn remove_member(&self, node_id: NodeId) -> Result<(), MembershipError> {
        self.inner
            .forward(wire::REMOVE, &node_id, self.membership_timeout(), |id| {
                self.inner.remove(id)
            })
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
            .forward(wire::JOIN, &request, self.membership_timeout(), |request| {
                self.inner.join(request)
            })
            .await
            .map_err(membership_error)
    }

    fn membership_timeout(&self) -> Duration {
        self.inner.peers.settings().request_timeout * 6
    }
}

fn membership_error(e: ForwardFailure) -> MembershipError {
    match e {
        ForwardFailure::ShuttingDown => MembershipError::ShuttingDown,
        ForwardFailure::Refused(e) => MembershipError::Refused(e),
        ForwardFailure::Unavailable(e) => MembershipError::Unavailable(e),
    }
}

impl Inner {
    /// Leader side of a join: learner, catch-up, promotion (replacing stale identities
    /// that share the joiner's address).
    pub(super) async fn join(&self, request: JoinRequest) -> LocalOutcome<()> {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return LocalOutcome::NotLeader(self.leader_hint());
        }
        let membership = self.membership();
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
        let membership = self.membership();
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
        let membership = self.membership();
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

    pub(super) async fn remove(&self, node_id: NodeId) -> LocalOutcome<()> {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return LocalOutcome::NotLeader(self.leader_hint());
        }
        let membership = self.membership();
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

/// First boot and rejoin: makes this replica a voting member.
///
/// * Already a voter (from its own log): nothing to do.
/// * Some contact point belongs to a cluster: ask it (it forwards to the leader) to add us
///   as a learner, let us catch up, and promote us.
/// * Nobody belongs to a cluster yet, and we are the first initial member, and every
///   other initial member answered: initialize the cluster with all of them.
/// * Otherwise wait and ask again.
pub(super) async fn join_cluster(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let settings = inner.peers.settings().clone();
    loop {
        let is_voter = inner.membership().voter_ids().any(|id| id == inner.id);
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
