//! Where a proposal enters, on any replica: `Replica::propose` and `Replica::claim_epoch`
//! check it (`submit`), then `forward` has the leader write it with `Inner::write`, here
//! when this replica leads, else over the propose RPC, whose handler (`rpc`) calls the same
//! `Inner::write` on the leader. No proposal is written any other way.

use portico_model::Change;

use super::forward::{ForwardFailure, LocalOutcome, client_write_failure};
use super::{Inner, ProposeError, Replica};
use crate::transport::wire::{self, Committed};
use crate::types::{ApplyOutcome, Proposal};

/// A write that was committed by a quorum and applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedChange {
    /// The log index of the change: the routing table's version once it is applied.
    pub version: u64,
}

impl Replica {
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
        // A stale copy takes no part any more: the leader would refuse its incarnation anyway.
        if self.inner.incarnations.stale().is_some() {
            return Err(ProposeError::StaleVolume);
        }
        let committed: Committed = self
            .inner
            .forward(
                wire::PROPOSE,
                &proposal,
                self.inner.peers.settings().request_timeout,
                |proposal| self.inner.write(proposal),
            )
            .await
            .map_err(|e| match e {
                ForwardFailure::ShuttingDown => ProposeError::ShuttingDown,
                ForwardFailure::Refused(e) => ProposeError::Refused(e),
                ForwardFailure::Unavailable(e) => ProposeError::Unavailable(e),
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
}

impl Inner {
    /// The leader's write of a proposal, the only one: a follower answers that it does not
    /// lead, with a hint.
    pub(super) async fn write(&self, proposal: Proposal) -> LocalOutcome<Committed> {
        match self.raft.client_write(proposal).await {
            Ok(response) => LocalOutcome::Done(Committed {
                index: response.log_id.index,
                outcome: response.data,
            }),
            Err(e) => client_write_failure(e),
        }
    }
}
