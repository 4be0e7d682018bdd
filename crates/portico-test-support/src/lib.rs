//! Test support shared by Portico's crates and its chaos harness, used only by tests (as
//! linkerd2-proxy's `linkerd/app/test` and `linkerd/tls/test-util` are): code that every
//! crate's tests had written again for itself lives here once.
//!
//! - [`pki`]: one test PKI, a CA that issues server and client certificates for given names.
//! - [`tables`]: the workspace `testdata/` directory and the one reader of its TSV tables
//!   (the Kubernetes docs' examples, the ingress-controller-conformance cases).
//! - [`wait`]: wait for an event with a deadline and fail naming what was awaited; polling
//!   only where there is nothing to subscribe to.
//! - [`child`]: a child process's output read line by line, so a child that binds port 0 can
//!   report the address it got (binding a port and releasing it for the child is a race).
//! - [`process`]: the one starter of real processes under test (`portico run`, `portico echo`,
//!   `portico-raft-node`): spawn with sockets handed over, read the reported addresses,
//!   signal, restart, kill on drop.
//! - [`volume`]: a replica's data directory copied whole (a backup, a restored volume, a clone).

pub mod child;
pub mod pki;
pub mod process;
pub mod tables;
pub mod volume;
pub mod wait;

pub use pki::{Leaf, LeafSpec, TestCa};
pub use tables::{ConformanceCase, Table, service_names, testdata};
pub use wait::{WaitError, poll_until, poll_until_blocking, wait_for, wait_for_watch};
