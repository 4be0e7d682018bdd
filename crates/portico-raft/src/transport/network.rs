//! openraft's network traits on top of the peer channels.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;

use super::client::{CallError, PeerChannel, Peers};
use super::wire;
use crate::backoff::Backoff;
use crate::types::{Node, NodeId, RaftError, TypeConfig};

/// Creates one [`PeerNetwork`] per replication stream; all streams to one peer share its
/// channel (and so its connection and in-flight byte budget).
pub(crate) struct NetworkFactory {
    pub(crate) local_id: NodeId,
    pub(crate) peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerNetwork {
        PeerNetwork {
            local_id: self.local_id,
            target,
            channel: self.peers.channel(&node.addr),
            max_body_bytes: self.peers.settings().max_body_bytes,
        }
    }
}

/// The most bytes one AppendEntries carries when it holds more than one entry: twice the
/// controller's largest entry, so a follower catching up never gets megabytes in one RPC
/// that cannot finish within the heartbeat interval (and so never finishes at all).
const MAX_APPEND_BYTES: usize = 2 * portico_model::MAX_ENTRY_BYTES;

pub(crate) struct PeerNetwork {
    local_id: NodeId,
    target: NodeId,
    channel: Arc<PeerChannel>,
    max_body_bytes: usize,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<E>>>;

impl PeerNetwork {
    async fn call<Resp, E>(
        &self,
        action: RPCTypes,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = self
            .channel
            .call_node(path, Some(self.target), body, timeout)
            .await
            .map_err(|e| match e {
                // An unreachable peer, or an answer from a stale copy of it: back off.
                CallError::Unreachable { .. } | CallError::Refused { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                // Another node now answers at this address: the target is gone.
                // Or the target's volume is a stale copy (410), or ours is (409).
                CallError::Status { status, .. }
                    if status == http::StatusCode::MISDIRECTED_REQUEST
                        || status == http::StatusCode::GONE
                        || status == http::StatusCode::CONFLICT =>
                {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                CallError::Timeout { after, .. } => RPCError::Timeout(Timeout {
                    action,
                    id: self.local_id,
                    target: self.target,
                    timeout: after,
                }),
                CallError::Transport { .. } | CallError::Status { .. } => {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let answer: Result<Resp, RaftError<E>> =
            wire::decode(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let body = wire::encode(&rpc);
        // openraft gives an append the heartbeat interval as its whole timeout, so its size
        // is bounded well below what the peer accepts: one largest entry and then some (C2).
        let limit = self.max_body_bytes.min(MAX_APPEND_BYTES);
        if body.len() > limit && rpc.entries.len() > 1 {
            // Too big: ask openraft for fewer entries per RPC.
            let entries = rpc.entries.len() as u64;
            let hint = (entries * limit as u64 / body.len() as u64).clamp(1, entries - 1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.call(
            RPCTypes::AppendEntries,
            wire::APPEND_ENTRIES,
            body,
            option.hard_ttl(),
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(
            RPCTypes::InstallSnapshot,
            wire::INSTALL_SNAPSHOT,
            wire::encode(&rpc),
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(
            RPCTypes::Vote,
            wire::VOTE,
            wire::encode(&rpc),
            option.hard_ttl(),
        )
        .await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Unreachable peer: retry quickly at first, then settle at one attempt every 0.5-1 s.
        openraft::network::Backoff::new(Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(1),
        ))
    }
}
