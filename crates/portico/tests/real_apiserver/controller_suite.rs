//! The controller suite against a real kube-apiserver and etcd: `failover/scenarios.rs` run
//! with [`Backend::Real`] (three `portico run` processes as deploy/'s ServiceAccount, objects
//! applied with `kubectl apply` as a tenant would, no 403 allowed), and what only the real
//! server can judge: a status write refused by its resourceVersion precondition (409) after a
//! concurrent write, the Events as it stores them, and a watch restarted past an etcd
//! compaction (410) followed by a relist that loses nothing. One scenario at a time
//! (`scenarios::serial`), each on its own API server: most of them stop it or hold its Lease.

#[path = "../failover/cluster.rs"]
mod cluster;
#[path = "../failover/scenarios.rs"]
mod scenarios;
#[path = "../failover/stream.rs"]
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::Backend::Real;
use cluster::{Cluster, NAMESPACE, metric, node_address};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use scenarios::{CLASS, CONTROLLER, apply_ingress, simple_ingress, wait_status};
use serde_json::{Value, json};

use crate::common::wait_until;

#[test]
fn docs_conformance_and_tls_ingresses_are_served_everywhere_and_status_has_one_writer() {
    scenarios::docs_conformance_and_tls_ingresses_are_served_everywhere_and_status_has_one_writer(
        Real,
    );
}

#[test]
fn leader_sigkill_fails_over_within_the_lease_and_loses_no_change() {
    scenarios::leader_sigkill_fails_over_within_the_lease_and_loses_no_change(Real);
}

#[test]
fn leader_sigterm_hands_over_and_loses_no_change() {
    scenarios::leader_sigterm_hands_over_and_loses_no_change(Real);
}

#[test]
fn api_server_stopped_every_replica_keeps_serving_then_the_leader_resyncs() {
    scenarios::api_server_gone_every_replica_keeps_serving_then_the_leader_resyncs(Real);
}

#[test]
fn publish_service_addresses_follow_the_service_and_leave_with_the_class() {
    scenarios::publish_service_addresses_follow_the_service_and_leave_with_the_class(Real);
}

/// One replica against the real server (as deploy/'s ServiceAccount), publishing this
/// machine's address, with our IngressClass as the default and the echo Service `web`.
fn one_replica(extra: &[&str]) -> (Cluster, String) {
    let address = node_address(Real);
    let mut flags = vec!["--publish-status-address", address.as_str()];
    flags.extend_from_slice(extra);
    let mut cluster = Cluster::start_n(Real, 1, &flags);
    cluster.ingress_class(CLASS, CONTROLLER, true);
    cluster.echo_service("web", 1);
    (cluster, address)
}

/// The JSON log lines of replica 0 whose message is `message`, after byte `from` of its log.
fn log_lines(cluster: &Cluster, from: usize, message: &str) -> Vec<Value> {
    cluster.replicas[0].proc.log_text()[from..]
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// A concurrent writer changes the Ingresses (an annotation, as fast as the real server
/// answers) while the leader has their status to write: its writes carry the resourceVersion
/// it read as a precondition, the real server refuses the stale ones with 409, and the leader
/// retries from what the watch shows next. The published address (`--publish-service`)
/// flips, each time once the last flip was written or refused, until a refusal is seen, so
/// every flip is one more status write per Ingress racing the writer. Once the writer stops, every Ingress gets the last address,
/// and the writer's last change is what the server holds (the status writes overwrote
/// nothing).
#[test]
fn a_status_write_racing_a_concurrent_change_is_refused_with_409_and_retried() {
    let _serial = scenarios::serial();
    let mut cluster = Cluster::start_n(Real, 1, &["--publish-service", "default/portico-lb"]);
    cluster.ingress_class(CLASS, CONTROLLER, true);
    cluster.echo_service("web", 1);
    cluster.api.apply::<Service>(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "portico-lb", "namespace": NAMESPACE},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }));
    let services: Api<Service> = Api::namespaced(cluster.api.client.clone(), NAMESPACE);
    let publish = |ip: &str| {
        let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
        cluster
            .api
            .runtime
            .block_on(services.patch_status(
                "portico-lb",
                &PatchParams::default(),
                &Patch::Merge(&status),
            ))
            .unwrap();
    };
    publish("192.0.2.1");
    let names: Vec<String> = (0..4).map(|i| format!("race-{i}")).collect();
    for name in &names {
        apply_ingress(
            &cluster,
            simple_ingress(name, &format!("{name}.race.test"), "web", CLASS),
        );
    }
    for name in &names {
        wait_status(&cluster, name, &["192.0.2.1"]);
    }

    let api: Api<Ingress> = Api::namespaced(cluster.api.client.clone(), NAMESPACE);
    let stop = Arc::new(AtomicBool::new(false));
    // The writer's rounds so far (each patches every Ingress once).
    let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (api, stop, names) = (api.clone(), stop.clone(), names.clone());
        let rounds = rounds.clone();
        let runtime = cluster.api.runtime.handle().clone();
        std::thread::spawn(move || {
            let mut last = std::collections::BTreeMap::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for name in &names {
                    seq += 1;
                    let patch = json!({"metadata": {"annotations": {"test/seq": seq.to_string()}}});
                    runtime
                        .block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)))
                        .unwrap_or_else(|e| panic!("the concurrent writer's patch of {name}: {e}"));
                    last.insert(name.clone(), seq);
                }
                rounds.fetch_add(1, Ordering::SeqCst);
            }
            (seq, last)
        })
    };
    let mark = cluster.replicas[0].proc.log_text().len();
    let refused = "status write refused: the Ingress changed since we read it";
    let started = Instant::now();
    let mut flips = 0;
    let mut address = "192.0.2.1";
    while log_lines(&cluster, mark, refused).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no status write refused with 409 in {flips} address changes"
        );
        address = if address == "192.0.2.1" {
            "192.0.2.2"
        } else {
            "192.0.2.1"
        };
        publish(address);
        flips += 1;
        // The next flip once this one met every Ingress: written, or refused.
        wait_until(
            &format!("flip {flips} to {address} written or refused"),
            Duration::from_secs(30),
            || {
                (!log_lines(&cluster, mark, refused).is_empty()
                    || names
                        .iter()
                        .all(|n| cluster.api.status_addresses(n) == [address]))
                .then_some(())
            },
        );
    }
    // The refused write is retried while the writer still patches: one more full round.
    let round = rounds.load(Ordering::SeqCst);
    wait_until(
        "a round of the writer after the refusal",
        Duration::from_secs(30),
        || (rounds.load(Ordering::SeqCst) >= round + 2).then_some(()),
    );
    stop.store(true, Ordering::SeqCst);
    let (patches, last) = writer.join().unwrap();
    let refusals = log_lines(&cluster, mark, refused).len();
    for name in &names {
        wait_status(&cluster, name, &[address]);
        let ingress = cluster.api.runtime.block_on(api.get(name)).unwrap();
        let seq = ingress.metadata.annotations.unwrap_or_default()["test/seq"].clone();
        assert_eq!(
            seq,
            last[name].to_string(),
            "{name}: the writer's last change"
        );
    }
    let metrics = cluster.metrics(0).unwrap();
    let errors = metric(&metrics, "portico_controller_status_write_errors_total").unwrap_or(0.0);
    assert!(
        errors >= refusals as f64,
        "{refusals} refusals logged, {errors} counted"
    );
    eprintln!(
        "{patches} concurrent patches, {flips} address changes; {refusals} status writes \
         refused with 409, then every status written"
    );
    cluster.assert_no_403(None);
}

/// The Events the leader records, read back from the real server in both of its views: an
/// Ingress naming a missing Service gets one Warning `ServiceNotFound` Event regarding it (by
/// uid) from portico-controller; when the problem goes and comes back in the same leadership,
/// the same Event becomes a series of two (a PATCH deploy/'s RBAC must allow), not a second
/// Event.
#[test]
fn events_are_stored_by_the_real_server_with_reason_type_object_and_series() {
    let _serial = scenarios::serial();
    let (cluster, _) = one_replica(&[]);
    apply_ingress(
        &cluster,
        simple_ingress("lonely", "lonely.events.test", "absent", CLASS),
    );
    let ingresses: Api<Ingress> = Api::namespaced(cluster.api.client.clone(), NAMESPACE);
    let uid = cluster
        .api
        .runtime
        .block_on(ingresses.get("lonely"))
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let new_events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.api.client.clone(), NAMESPACE);
    let old_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(cluster.api.client.clone(), NAMESPACE);
    let regarding = ListParams::default().fields("regarding.name=lonely");
    let involved = ListParams::default().fields("involvedObject.name=lonely");
    let list = |want_count: i32| {
        wait_until(
            &format!("the Event with series count {want_count}"),
            Duration::from_secs(60),
            || {
                let items = cluster
                    .api
                    .runtime
                    .block_on(new_events.list(&regarding))
                    .ok()?
                    .items;
                let count = items.first()?.series.as_ref().map_or(1, |s| s.count);
                (count == want_count).then_some(items)
            },
        )
    };

    let events = list(1);
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("ServiceNotFound"));
    assert_eq!(event.action.as_deref(), Some("Validate"));
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some("portico-controller")
    );
    assert!(
        event
            .reporting_instance
            .as_deref()
            .is_some_and(|i| i.starts_with("portico-0")),
        "{event:?}"
    );
    let object = event.regarding.as_ref().unwrap();
    assert_eq!(object.kind.as_deref(), Some("Ingress"));
    assert_eq!(object.api_version.as_deref(), Some("networking.k8s.io/v1"));
    assert_eq!(object.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(object.uid.as_deref(), Some(uid.as_str()));
    assert!(
        event.note.as_deref().is_some_and(|n| n.contains("absent")),
        "the note names the Service: {event:?}"
    );
    assert!(event.series.is_none(), "{event:?}");
    // The core/v1 view of the same object, as `kubectl describe` reads it.
    let old = cluster
        .api
        .runtime
        .block_on(old_events.list(&involved))
        .unwrap()
        .items;
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(old[0].metadata.name, event.metadata.name);
    assert_eq!(old[0].involved_object.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(old[0].involved_object.kind.as_deref(), Some("Ingress"));
    assert_eq!(old[0].type_.as_deref(), Some("Warning"));
    assert_eq!(old[0].reason.as_deref(), Some("ServiceNotFound"));
    assert!(old[0].series.is_none(), "{:?}", old[0]);
    let first_count = old[0].count;

    // The Service appears (the problem goes), then goes again (the problem is back). The
    // leader's count of invalid Ingresses shows when it has seen the problem go.
    let invalid = |cluster: &Cluster| {
        let metrics = cluster.metrics(0)?;
        let name = "portico_controller_invalid_ingresses{reason=\"ServiceNotFound\"}";
        Some(metric(&metrics, name).unwrap_or(0.0))
    };
    assert_eq!(invalid(&cluster), Some(1.0), "the problem counted");
    let services: Api<Service> = Api::namespaced(cluster.api.client.clone(), NAMESPACE);
    cluster.api.apply::<Service>(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "absent", "namespace": NAMESPACE},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}]},
    }));
    wait_until("the problem gone", Duration::from_secs(30), || {
        (invalid(&cluster)? == 0.0).then_some(())
    });
    cluster
        .api
        .runtime
        .block_on(services.delete("absent", &DeleteParams::default()))
        .unwrap();
    let events = list(2);
    assert_eq!(events.len(), 1, "one Event, now a series: {events:?}");
    assert_eq!(events[0].metadata.name, event.metadata.name);
    let old = cluster
        .api
        .runtime
        .block_on(old_events.list(&involved))
        .unwrap()
        .items;
    assert_eq!(old.len(), 1, "{old:?}");
    let series = old[0].series.as_ref().expect("the core/v1 view's series");
    assert_eq!(series.count, Some(2), "{:?}", old[0]);
    // The real server keeps an events.k8s.io Event's repetitions in `series` alone: the
    // core/v1 view shows no deprecated `count`, before the series or with it.
    assert_eq!((first_count, old[0].count), (None, None), "{:?}", old[0]);
    cluster.assert_no_403(None);
}

/// A watch restarted past an etcd compaction: with a lease long enough to outlive a
/// kube-apiserver restart (so the leader keeps its leadership and epoch, and only its watches
/// break), the API server stops, etcd is compacted at its current revision, the API server
/// starts again and changes land at once (one Ingress deleted, one changed, one created).
/// The watches' resourceVersions are gone: the real server answers 410, the watchers list
/// again, the leader proposes a resync, and its table is exactly the API server's Ingresses.
#[test]
fn a_watch_restarted_past_an_etcd_compaction_gets_410_and_the_relist_loses_nothing() {
    let _serial = scenarios::serial();
    let long_lease = [
        "--lease-duration-seconds",
        "90",
        "--renew-deadline-seconds",
        "60",
        "--retry-period-seconds",
        "2",
    ];
    let (mut cluster, address) = one_replica(&long_lease);
    for name in ["gone", "changed", "kept"] {
        apply_ingress(
            &cluster,
            simple_ingress(name, &format!("{name}.relist.test"), "web", CLASS),
        );
    }
    for name in ["gone", "changed", "kept"] {
        cluster.wait_served(
            0,
            &format!("{name}.relist.test"),
            "/",
            "web",
            Duration::from_secs(30),
        );
        wait_status(&cluster, name, &[&address]);
    }
    let resync = "portico_controller_proposals_total{kind=\"resync\"}";
    let before = cluster.metrics(0).unwrap();
    let resyncs = metric(&before, resync).unwrap();
    let epoch = metric(&before, "portico_controller_epoch").unwrap();
    let mark = cluster.replicas[0].proc.log_text().len();

    cluster.api.stop_serving();
    let (real, _) = cluster.api.real.as_ref().unwrap();
    let revision = real.compact_etcd();
    cluster.api.resume_serving();
    let ready_again = Instant::now();
    let ready_mark = cluster.replicas[0].proc.log_text().len();
    scenarios::delete_ingress(&cluster, "gone");
    let mut changed = simple_ingress("changed", "changed.relist.test", "web", CLASS);
    changed["metadata"]["annotations"] =
        json!({"nginx.ingress.kubernetes.io/rewrite-target": "/after"});
    apply_ingress(&cluster, changed);
    apply_ingress(
        &cluster,
        simple_ingress("new", "new.relist.test", "web", CLASS),
    );

    // The real server's 410 reached a watcher, which listed again, within one leadership.
    let expired = wait_until("a watch answered 410", Duration::from_secs(60), || {
        log_lines(&cluster, mark, "watch failed; retrying with backoff")
            .into_iter()
            .find(|l| {
                let error = l["error"].as_str().unwrap_or_default().to_ascii_lowercase();
                error.contains("410") || error.contains("too old") || error.contains("expired")
            })
    });
    wait_until("a relist", Duration::from_secs(60), || {
        (!log_lines(&cluster, mark, "listed").is_empty()).then_some(())
    });
    wait_until("the leader's resync", Duration::from_secs(60), || {
        let now = metric(&cluster.metrics(0)?, resync)?;
        (now > resyncs).then_some(())
    });
    let after = cluster.metrics(0).unwrap();
    assert_eq!(metric(&after, "portico_controller_is_leader"), Some(1.0));
    assert_eq!(
        metric(&after, "portico_controller_epoch"),
        Some(epoch),
        "the relist happened within the same leadership"
    );

    // Nothing lost: the deletion, the change and the creation are all served.
    wait_until("gone.relist.test unrouted", Duration::from_secs(30), || {
        let (code, _, _) = cluster.http_get(0, "gone.relist.test", "/")?;
        (code == 404).then_some(())
    });
    wait_until("the change served", Duration::from_secs(30), || {
        let (code, body, _) = cluster.http_get(0, "changed.relist.test", "/")?;
        (code == 200 && body["path"] == "/after").then_some(())
    });
    cluster.wait_served(0, "new.relist.test", "/", "web", Duration::from_secs(30));
    cluster.wait_served(0, "kept.relist.test", "/", "web", Duration::from_secs(5));
    wait_status(&cluster, "new", &[&address]);
    // The table holds exactly the API server's Ingresses.
    let listed: std::collections::BTreeSet<String> = cluster
        .api
        .runtime
        .block_on(
            Api::<Ingress>::namespaced(cluster.api.client.clone(), NAMESPACE)
                .list(&ListParams::default()),
        )
        .unwrap()
        .items
        .into_iter()
        .map(|i| format!("{NAMESPACE}/{}", i.metadata.name.unwrap()))
        .collect();
    wait_until(
        "the table is the API server's Ingresses",
        Duration::from_secs(30),
        || {
            let view = cluster.routes(0)?;
            let table: std::collections::BTreeSet<String> = view["ingresses"]
                .as_array()?
                .iter()
                .filter_map(|i| i["ingress"].as_str().map(str::to_owned))
                .collect();
            (table == listed).then_some(())
        },
    );
    eprintln!(
        "compacted at revision {revision}; {:.1} s from the restart to a table equal to the \
         API server's; the 410: {}",
        ready_again.elapsed().as_secs_f64(),
        expired["error"]
    );
    let marks = |at: usize| vec![at];
    cluster.assert_no_403(Some((&marks(mark), &marks(ready_mark))));
}
