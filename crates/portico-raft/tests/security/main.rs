//! Attack tests for portico-raft, one module per finding of the security review
//! (`../shared/reviews/security.md`). Each module says what the attacker does and what
//! must hold.

#[path = "../common/mod.rs"]
mod common;

mod c1_peer_identity;
mod c1_processes;
mod m5_fencing_epochs;
mod m6_restored_volume;
mod m7_snapshot_memory;
