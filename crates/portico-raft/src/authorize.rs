//! Which caller may make which RPC (review finding C1). A valid chain to the cluster CA is
//! not enough: the caller's certificate must name a member's host (or, where a replica
//! that has not joined yet must be answered, a replica host of the [`PeerPolicy`]).
//!
//! | RPC | caller |
//! |---|---|
//! | append-entries, vote, install-snapshot | a member, speaking for itself; before this replica has any membership, a replica host |
//! | propose | a member |
//! | remove, elect | a voter |
//! | status | a member or a replica host (a joiner asks before it joins) |
//! | join | the joiner itself (its address's host in its certificate) or a member forwarding it; the address must be a replica host |

use openraft::{BasicNode, Membership};

use crate::peer::{PeerIdentity, PeerPolicy, host_of};
use crate::transport::server::RpcRejection;
use crate::transport::wire::JoinRequest;
use crate::types::NodeId;

/// The membership as authorization needs it: each node's ID, host, and whether it votes.
pub(crate) struct Members {
    nodes: Vec<(NodeId, String, bool)>,
}

impl Members {
    pub(crate) fn of(membership: &Membership<NodeId, BasicNode>) -> Self {
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let nodes = membership
            .nodes()
            .map(|(id, node)| (*id, host_of(&node.addr), voters.contains(id)))
            .collect();
        Self { nodes }
    }

    /// Whether the caller's certificate names a member's host (a voter's, if `voter`).
    fn covers(&self, caller: &PeerIdentity, voter: bool) -> bool {
        self.nodes
            .iter()
            .any(|(_, host, votes)| (*votes || !voter) && caller.covers(host))
    }
}

fn forbidden(caller: &PeerIdentity, what: &str) -> RpcRejection {
    RpcRejection::Forbidden(format!("{caller} {what}"))
}

/// A Raft RPC: from a member, or from a replica host while we know no membership (the
/// bootstrap, or a fresh replica's first entries from the leader).
pub(crate) fn raft_peer(
    members: &Members,
    policy: &PeerPolicy,
    caller: &PeerIdentity,
) -> Result<(), RpcRejection> {
    if members.covers(caller, false) || (members.nodes.is_empty() && policy.admits(caller)) {
        return Ok(());
    }
    Err(forbidden(caller, "is not a member of this cluster"))
}

/// A Raft RPC claiming to come from `claimed`: the caller must be that node's host.
pub(crate) fn speaker(
    members: &Members,
    caller: &PeerIdentity,
    claimed: Option<NodeId>,
) -> Result<(), RpcRejection> {
    let host = claimed.and_then(|id| members.nodes.iter().find(|(n, _, _)| *n == id));
    match host {
        Some((id, host, _)) if !caller.covers(host) => Err(forbidden(
            caller,
            &format!("speaks for node {id}, whose host is {host}"),
        )),
        _ => Ok(()),
    }
}

/// A member (a voter, if `voter`) only.
pub(crate) fn member(
    members: &Members,
    caller: &PeerIdentity,
    voter: bool,
) -> Result<(), RpcRejection> {
    if members.covers(caller, voter) {
        return Ok(());
    }
    Err(forbidden(
        caller,
        if voter {
            "is not a voting member of this cluster"
        } else {
            "is not a member of this cluster"
        },
    ))
}

/// A member, or a replica host that has not joined yet.
pub(crate) fn replica(
    members: &Members,
    policy: &PeerPolicy,
    caller: &PeerIdentity,
) -> Result<(), RpcRejection> {
    if members.covers(caller, false) || policy.admits(caller) {
        return Ok(());
    }
    Err(forbidden(caller, "is not a replica of this cluster"))
}

/// A join: the address must be a replica host, and the caller either that host itself
/// or a member forwarding the request (it checked the joiner).
pub(crate) fn join(
    members: &Members,
    policy: &PeerPolicy,
    caller: &PeerIdentity,
    request: &JoinRequest,
) -> Result<(), RpcRejection> {
    let host = host_of(&request.addr);
    if !policy.allows(&host) {
        return Err(forbidden(
            caller,
            &format!("asked to add {host}, which is not a replica host"),
        ));
    }
    if caller.covers(&host) || members.covers(caller, false) {
        return Ok(());
    }
    Err(forbidden(
        caller,
        &format!("asked to add {host}, which its certificate does not name"),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn members() -> Members {
        let nodes = BTreeMap::from([
            (1, BasicNode::new("portico-0.peers:9444")),
            (2, BasicNode::new("portico-1.peers:9444")),
            (3, BasicNode::new("portico-2.peers:9444")),
        ]);
        Members::of(&Membership::new(vec![BTreeSet::from([1, 2])], nodes))
    }

    fn policy() -> PeerPolicy {
        PeerPolicy::new(
            &["portico-0.peers:9444".into()],
            &["portico-*.peers".into()],
        )
    }

    #[test]
    fn only_members_make_raft_calls_and_only_as_themselves() {
        let (members, policy) = (members(), policy());
        let zero = PeerIdentity::of(&["portico-0.peers"]);
        let learner = PeerIdentity::of(&["portico-2.peers"]);
        let stranger = PeerIdentity::of(&["not-a-member"]);
        assert!(raft_peer(&members, &policy, &zero).is_ok());
        assert!(raft_peer(&members, &policy, &learner).is_ok());
        assert!(raft_peer(&members, &policy, &stranger).is_err());
        // A replica host that is not a member: only while we know no membership.
        let five = PeerIdentity::of(&["portico-5.peers"]);
        assert!(raft_peer(&members, &policy, &five).is_err());
        let empty = Members { nodes: Vec::new() };
        assert!(raft_peer(&empty, &policy, &five).is_ok());
        assert!(raft_peer(&empty, &policy, &stranger).is_err());

        assert!(speaker(&members, &zero, Some(1)).is_ok());
        assert!(speaker(&members, &zero, Some(2)).is_err());
        assert!(speaker(&members, &zero, None).is_ok());

        assert!(member(&members, &learner, false).is_ok());
        assert!(member(&members, &learner, true).is_err());
        assert!(member(&members, &zero, true).is_ok());
        assert!(member(&members, &stranger, false).is_err());
    }

    #[test]
    fn a_join_names_the_callers_own_replica_host() {
        let (members, policy) = (members(), policy());
        let request = |addr: &str| JoinRequest {
            node_id: 9,
            addr: addr.into(),
        };
        let five = PeerIdentity::of(&["portico-5.peers"]);
        assert!(join(&members, &policy, &five, &request("portico-5.peers:9444")).is_ok());
        // Someone else's address, even a member's (which would evict it).
        assert!(join(&members, &policy, &five, &request("portico-1.peers:9444")).is_err());
        // A member forwards a joiner's request.
        let zero = PeerIdentity::of(&["portico-0.peers"]);
        assert!(join(&members, &policy, &zero, &request("portico-5.peers:9444")).is_ok());
        // Never an address outside the replica hosts, whoever asks.
        let evil = PeerIdentity::of(&["evil.attacker"]);
        assert!(join(&members, &policy, &evil, &request("evil.attacker:9444")).is_err());
        assert!(join(&members, &policy, &zero, &request("evil.attacker:9444")).is_err());
        assert!(replica(&members, &policy, &evil).is_err());
        assert!(replica(&members, &policy, &five).is_ok());
    }
}
