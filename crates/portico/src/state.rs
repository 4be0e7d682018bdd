//! What `/healthz` and `/readyz` report, shared by the replica's tasks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Liveness and readiness of one replica.
///
/// * Ready: a committed table has been applied (version > 0: version is the Raft log index
///   of the last change applied, and the empty table before any change is version 0),
///   shutdown has not begun, and no supervised loop has failed.
/// * Healthy (alive): no supervised loop has failed. A failed loop is fatal: the pod is
///   restarted rather than left serving with a dead part.
#[derive(Debug, Default)]
pub struct ReplicaState {
    applied: AtomicBool,
    draining: AtomicBool,
    failure: Mutex<Option<String>>,
    controller: Mutex<Option<String>>,
}

impl ReplicaState {
    pub fn set_applied(&self) {
        self.applied.store(true, Ordering::Release);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Records that a supervised loop failed (the first failure is kept).
    pub fn fail(&self, reason: impl Into<String>) {
        let mut failure = self.failure.lock().expect("failure lock");
        if failure.is_none() {
            *failure = Some(reason.into());
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }

    pub fn ready(&self) -> bool {
        self.applied.load(Ordering::Acquire) && !self.draining() && self.failure().is_none()
    }

    /// The controller's state, shown in the `/readyz` body: whether this replica leads, and
    /// why its last leadership ended if that was abnormal. It does not change readiness:
    /// the data plane serves either way, and another replica takes the Lease.
    pub fn set_controller(&self, note: impl Into<String>) {
        *self.controller.lock().expect("controller lock") = Some(note.into());
    }

    pub fn controller(&self) -> Option<String> {
        self.controller.lock().expect("controller lock").clone()
    }

    /// Why the replica is not ready, for the `/readyz` body.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(failure) = self.failure() {
            Some(format!("failed: {failure}"))
        } else if self.draining() {
            Some("draining".to_owned())
        } else if !self.applied.load(Ordering::Acquire) {
            Some("no committed routing table applied yet".to_owned())
        } else {
            None
        }
    }
}
