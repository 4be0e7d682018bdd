//! Attack tests against the `portico` binary, one module per finding of the security
//! review (`../shared/reviews/security.md`). Each module says what the attacker does and
//! what must hold.

#[path = "../common/mod.rs"]
mod common;

mod c1_raft_certificates;
mod m2_admin_listener;
mod m6_restored_volume;
