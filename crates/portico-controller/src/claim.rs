//! A new leadership's first act: claim its fencing epoch in Raft (review finding M5).
//!
//! The claim commits only when the epoch is above every epoch applied, so two leaderships
//! never share one (a Lease deleted and recreated while a leader was frozen would otherwise
//! hand its epoch out again), and from the moment it commits every change still carrying
//! the deposed leader's lower epoch is refused by the state machine.

use std::time::Duration;

use portico_raft::backoff::Backoff;
use portico_raft::{ProposeError, Replica};
use tokio_util::sync::CancellationToken;

use crate::{LeaderWorkError, LeaseValidity};

/// Claims `epoch`, retrying while no leader can take the write and the lease is valid,
/// until `token` is cancelled.
pub(crate) async fn claim_epoch(
    replica: &Replica,
    epoch: u64,
    lease: &LeaseValidity,
    token: &CancellationToken,
) -> Result<(), LeaderWorkError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        if !lease.is_valid() {
            return Err(LeaderWorkError::LeaseExpired);
        }
        let outcome = tokio::select! {
            () = token.cancelled() => return Err(LeaderWorkError::Cancelled),
            outcome = replica.claim_epoch(epoch) => outcome,
        };
        match outcome {
            Ok(_) => return Ok(()),
            Err(ProposeError::StaleEpoch {
                epoch,
                highest_epoch,
            }) => {
                return Err(LeaderWorkError::Fenced {
                    epoch,
                    highest_epoch,
                });
            }
            Err(ProposeError::ShuttingDown) => return Err(LeaderWorkError::ReplicaShuttingDown),
            Err(ProposeError::Unavailable(why)) => {
                tracing::warn!(error = %why, epoch, "claiming the epoch did not commit; retrying");
                tokio::select! {
                    () = token.cancelled() => return Err(LeaderWorkError::Cancelled),
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(
                e @ (ProposeError::TooLarge { .. }
                | ProposeError::EpochOutOfRange { .. }
                | ProposeError::Refused(_)
                | ProposeError::StaleVolume),
            ) => return Err(LeaderWorkError::Refused(e)),
        }
    }
}
