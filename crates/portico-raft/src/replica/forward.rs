//! Leader-only operations (a proposal, a join, a removal): run here when this replica
//! leads, else sent to the leader it knows of, following hints until a deadline; and the
//! answer to one forwarded here.

use std::time::Duration;

use openraft::error::ClientWriteError as OpenraftClientWriteError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{BoxError, Inner, Unavailable};
use crate::backoff::Backoff;
use crate::transport::server::RpcRejection;
use crate::transport::wire::{self, ForwardError, LeaderHint};
use crate::types::{ClientWriteError, RaftError};

/// Why a leader-only operation failed after following leader hints.
pub(super) enum ForwardFailure {
    ShuttingDown,
    /// The leader refused it (not retried).
    Refused(BoxError),
    /// No leader took it before the deadline.
    Unavailable(Unavailable),
}

/// The leader-only operations, run locally when this replica leads.
pub(super) enum LocalOutcome<T> {
    Done(T),
    NotLeader(Option<LeaderHint>),
    Refused(BoxError),
    ShuttingDown,
}

impl Inner {
    /// Runs a leader-only operation: `local` (the leader's side, e.g. [`Inner::write`]) if
    /// this replica leads, else the `path` RPC on the leader it points to, whose handler runs
    /// the same `local` there; following hints until `timeout`.
    pub(super) async fn forward<Req, Resp, Local>(
        &self,
        path: &'static str,
        request: &Req,
        timeout: Duration,
        local: impl Fn(Req) -> Local,
    ) -> Result<Resp, ForwardFailure>
    where
        Req: Serialize + Clone + Send + Sync + 'static,
        Resp: Serialize + DeserializeOwned + Send + 'static,
        Local: Future<Output = LocalOutcome<Resp>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_problem = Unavailable::NoLeader;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            let hint = match local(request.clone()).await {
                LocalOutcome::Done(value) => return Ok(value),
                LocalOutcome::Refused(e) => return Err(ForwardFailure::Refused(e)),
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
                    .map_err(BoxError::from)
                    .and_then(|body| {
                        wire::decode::<Result<Resp, ForwardError>>(&body).map_err(BoxError::from)
                    });
                match answer {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(ForwardError::Failed(m))) => {
                        return Err(ForwardFailure::Refused(m.into()));
                    }
                    Ok(Err(ForwardError::NotLeader { .. })) => {
                        last_problem = Unavailable::NotLeader {
                            node_id: leader.node_id,
                            addr: leader.addr,
                        }
                    }
                    Err(source) => {
                        last_problem = Unavailable::Transport {
                            addr: leader.addr,
                            source,
                        }
                    }
                }
            }
            let pause = backoff.next_delay();
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(ForwardFailure::Unavailable(last_problem));
            }
            tokio::time::sleep(pause).await;
        }
    }
}

pub(super) fn client_write_failure<T>(e: RaftError<ClientWriteError>) -> LocalOutcome<T> {
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
            LocalOutcome::Refused(Box::new(e))
        }
        RaftError::Fatal(_) => LocalOutcome::ShuttingDown,
    }
}

/// The answer to a leader-only operation forwarded here, once it ran here: its result, or
/// who leads.
pub(super) fn answer_forwarded<Resp: Serialize>(
    outcome: LocalOutcome<Resp>,
) -> Result<Vec<u8>, RpcRejection> {
    let answer: Result<Resp, ForwardError> = match outcome {
        LocalOutcome::Done(value) => Ok(value),
        LocalOutcome::NotLeader(leader) => Err(ForwardError::NotLeader { leader }),
        LocalOutcome::Refused(e) => Err(ForwardError::Failed(e.to_string())),
        LocalOutcome::ShuttingDown => {
            return Err(RpcRejection::Unavailable("shutting down".into()));
        }
    };
    Ok(wire::encode(&answer))
}
