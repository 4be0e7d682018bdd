//! The controller end to end against the in-process API server: the scenarios of
//! `failover/scenarios.rs` (three `portico run` processes, `portico echo` backends).
//! `real_apiserver/controller_suite.rs` runs the same scenarios against a real kube-apiserver;
//! the in-process runs stay because this server sees more: each replica reaches it through
//! its own listener, so every write it answers is attributed to one replica (exactly one
//! status writer, as many writes answered as logged, and the Lease writes timing a failover
//! from the server's side), and its outage cuts every connection without a goodbye (the
//! real server's stop is graceful) for a whole minute.

#[path = "failover/cluster.rs"]
mod cluster;
mod common;
#[path = "failover/scenarios.rs"]
mod scenarios;
#[path = "failover/stream.rs"]
mod stream;

use cluster::Backend::InProcess;

#[test]
fn docs_conformance_and_tls_ingresses_are_served_everywhere_and_status_has_one_writer() {
    scenarios::docs_conformance_and_tls_ingresses_are_served_everywhere_and_status_has_one_writer(
        InProcess,
    );
}

#[test]
fn leader_sigkill_fails_over_within_the_lease_and_loses_no_change() {
    scenarios::leader_sigkill_fails_over_within_the_lease_and_loses_no_change(InProcess);
}

#[test]
fn leader_sigterm_hands_over_and_loses_no_change() {
    scenarios::leader_sigterm_hands_over_and_loses_no_change(InProcess);
}

#[test]
fn api_server_gone_for_a_minute_every_replica_keeps_serving_then_the_leader_resyncs() {
    scenarios::api_server_gone_every_replica_keeps_serving_then_the_leader_resyncs(InProcess);
}

#[test]
fn publish_service_addresses_follow_the_service_and_leave_with_the_class() {
    scenarios::publish_service_addresses_follow_the_service_and_leave_with_the_class(InProcess);
}
