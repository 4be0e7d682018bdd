//! Propagation and failover, in one process: the in-process API server, three Raft replicas
//! over mTLS on 127.0.0.1, three controllers.
//!
//! * Propagation: 10,000 Ingresses loaded; then 200 changes (alternately an Ingress's path
//!   and an EndpointSlice's addresses), one at a time; each is timed from just before the
//!   API write to the moment all three replicas' applied tables show it.
//! * Failover: the leader's controller aborted and its replica stopped (as SIGKILL), and the
//!   leader's `run` cancelled then its replica stopped (as SIGTERM), each timed to the moment
//!   another controller leads; with the test Lease timings (3 s / 2 s / 0.5 s) and with the
//!   defaults (15 s / 10 s / 2 s).
//!
//! Run: `cargo bench -p portico-controller --bench propagation` (figures in bench/controller.md).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_model::{PathMatch, RoutingTable};
use support::*;

const INGRESSES: usize = 10_000;
const CHANGES: usize = 200;

fn slice(addresses: &[String]) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "svc-abc", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses.iter().map(|a| serde_json::json!({
            "addresses": [a], "conditions": {"ready": true}
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn service() -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svc", "namespace": NAMESPACE},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap()
}

async fn everywhere(cluster: &Cluster, check: impl Fn(&RoutingTable) -> bool + Clone) {
    let waits = cluster.running().map(|(_, replica)| {
        let mut table = replica.table();
        let check = check.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(60), table.wait_for(|t| check(t)))
                .await
                .expect("change never propagated")
                .unwrap();
        }
    });
    futures_util::future::join_all(waits).await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn propagation() {
    let cluster = Cluster::start().await;
    apply_class(&cluster.admin, "conformance").await;
    apply(&cluster.admin, &service()).await;
    apply(&cluster.admin, &slice(&["10.0.0.1".to_owned()])).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let client = cluster.admin.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..INGRESSES).step_by(8) {
                apply(
                    &client,
                    &ingress(&format!("i{i}"), &format!("h{i}.example"), "/"),
                )
                .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    everywhere(&cluster, |t| t.ingresses().count() == INGRESSES).await;
    println!("loaded {INGRESSES} Ingresses in {:?}", started.elapsed());
    // Let the status writes for the load finish, so they do not skew the measurement. Read
    // from the API server, not one leader's counter: under load leadership may move while
    // they are written.
    let settle = Instant::now();
    let ingresses: kube::Api<k8s_openapi::api::networking::v1::Ingress> =
        kube::Api::namespaced(cluster.admin.clone(), NAMESPACE);
    loop {
        let list = ingresses.list(&Default::default()).await.unwrap();
        let with_status = list
            .items
            .iter()
            .filter(|i| {
                i.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .is_some_and(|list| !list.is_empty())
            })
            .count();
        if with_status >= INGRESSES {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(600),
            "status writes never finished ({with_status} of {INGRESSES})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("status written for all in {:?}", started.elapsed());

    let mut ingress_times = Vec::new();
    let mut slice_times = Vec::new();
    let mut addresses = vec!["10.0.0.1".to_owned()];
    for n in 0..CHANGES {
        if n % 2 == 0 {
            let i = (n * 37) % INGRESSES;
            let host = format!("h{i}.example");
            let path = format!("/p{n}");
            let t0 = Instant::now();
            apply(&cluster.admin, &ingress(&format!("i{i}"), &host, &path)).await;
            everywhere(&cluster, move |t| {
                t.lookup(&host, &path)
                    .is_some_and(|r| matches!(&r.path, PathMatch::Prefix(p) if **p == *path))
            })
            .await;
            ingress_times.push(t0.elapsed());
        } else {
            addresses.push(format!("10.0.{}.{}", n / 250, n % 250 + 2));
            let want = addresses.len();
            let t0 = Instant::now();
            apply(&cluster.admin, &slice(&addresses)).await;
            everywhere(&cluster, move |t| {
                t.lookup("h1.example", "/")
                    .and_then(|r| t.backend(&r.backend))
                    .is_some_and(|b| b.endpoints().len() == want)
            })
            .await;
            slice_times.push(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut all: Vec<Duration> = ingress_times.iter().chain(&slice_times).copied().collect();
    all.sort();
    ingress_times.sort();
    slice_times.sort();
    for (name, times) in [
        ("all", &all),
        ("ingress", &ingress_times),
        ("endpointslice", &slice_times),
    ] {
        println!(
            "propagation {name:>13} n={:3} p50={:?} p99={:?} max={:?}",
            times.len(),
            percentile(times, 0.50),
            percentile(times, 0.99),
            times.last().unwrap()
        );
    }
    let mut cluster = cluster;
    cluster.stop_all().await;
}

async fn failover(timings: Timings, label: &str) {
    let mut cluster = Cluster::start_with(timings).await;
    apply_class(&cluster.admin, "conformance").await;
    apply(&cluster.admin, &ingress("x", "x.example", "/")).await;
    let leader = cluster.wait_for_controller_leader().await;
    // Let the followers see a few renewals first, as in steady state.
    tokio::time::sleep(timings.2 * 3).await;
    let t0 = Instant::now();
    cluster.kill(leader).await;
    let next = cluster.wait_for_controller_leader().await;
    println!("failover {label} abort (SIGKILL-like): {:?}", t0.elapsed());
    assert_ne!(next, leader);

    // A fresh cluster for the graceful case (two of three must stay up for a quorum).
    cluster.stop_all().await;
    let mut cluster = Cluster::start_with(timings).await;
    let leader = cluster.wait_for_controller_leader().await;
    tokio::time::sleep(timings.2 * 3).await;
    let controller = cluster.nodes[leader].controller.take().unwrap();
    let t0 = Instant::now();
    controller.shutdown.cancel();
    // run() stops leader work, releases the Lease and hands Raft leadership on; the
    // replica itself runs on (as during a rolling restart's drain).
    controller.task.await.unwrap().unwrap();
    let returned = t0.elapsed();
    let next = cluster.wait_for_controller_leader().await;
    println!(
        "failover {label} graceful (SIGTERM-like): run() returned after {returned:?}, new leader after {:?}",
        t0.elapsed()
    );
    assert_ne!(next, leader);
    cluster.stop_all().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        if only.as_deref().is_none_or(|o| o == "propagation") {
            propagation().await;
        }
        if only.as_deref().is_none_or(|o| o == "failover") {
            failover(TEST_TIMINGS, "test timings 3s/2s/0.5s").await;
            failover(
                (
                    Duration::from_secs(15),
                    Duration::from_secs(10),
                    Duration::from_secs(2),
                ),
                "default timings 15s/10s/2s",
            )
            .await;
        }
    });
}
