//! The RPC handler: who may call what, the caller's incarnation, then the Raft RPC or the
//! forwarded operation; and the check of a snapshot as it streams in.

use bytes::Bytes;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use super::Inner;
use super::forward::answer_forwarded;
use crate::authorize::{self, Members};
use crate::incarnation::{Incarnation, Refusal};
use crate::peer::PeerIdentity;
use crate::store::state_machine::SnapshotCheck;
use crate::transport::server::{RpcHandler, RpcMeta, RpcRejection};
use crate::transport::wire::{self, JoinRequest, NodeStatus};
use crate::types::{NodeId, Proposal, TypeConfig};

pub(super) struct ReceivingSnapshot {
    id: String,
    /// The digest streamed so far: no copy of the snapshot is kept besides openraft's own.
    check: SnapshotCheck,
    /// Offset and SHA-256 of the last chunk, so the same chunk sent again after a lost
    /// answer is recognised (the streamed digest cannot rewind).
    last_chunk: Option<(u64, [u8; 32])>,
}

/// A snapshot chunk's SHA-256, to recognise it when sent again.
fn chunk_digest(data: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
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
}

fn bad_request(e: postcard::Error) -> RpcRejection {
    RpcRejection::BadRequest(e.to_string())
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
                answer_forwarded(self.write(request).await)
            }
            wire::JOIN => {
                let request: JoinRequest = wire::decode(&body).map_err(bad_request)?;
                authorize::join(&self.members(), &self.policy, caller, &request)?;
                answer_forwarded(self.join(request).await)
            }
            wire::REMOVE => {
                let request: NodeId = wire::decode(&body).map_err(bad_request)?;
                answer_forwarded(self.remove(request).await)
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
