//! `portico run` as deploy/'s ServiceAccount: its ClusterRole and Role exactly as shipped are
//! enough (no 403 while it serves, writes status and records an Event), and every rule in them
//! is needed (without it, the replica meets a 403).

use std::path::Path;
use std::time::Duration;

use crate::common::deploy_rbac::{deploy_and_service_account, rendered_deploy};
use crate::common::real_apiserver::RealApiServer;
use crate::common::{get, wait_until, write_ca};
use crate::support::{
    Cluster, Member, Publish, Replica, backend_yaml, echo, event_reasons, get_host,
    ingress_jsonpath, met_forbidden, names_resource, rule_resources, tests_without_rule,
};
use crate::{KillOnDrop, apply_yaml, ok};
use portico_test_support::process;

/// The backend (`portico echo` on this machine's address, a Service without a selector and
/// the EndpointSlice an endpoints controller would have written), an IngressClass of ours
/// named as in the docs, the docs' minimal Ingress and one naming a missing Service (so the
/// leader has an Event to record). Returns the echo process and the address it serves on.
fn backend_and_ingresses(api: &RealApiServer, dir: &Path) -> (KillOnDrop, String) {
    let (echo, ip, echo_port) = echo("default");
    apply_yaml(
        api,
        dir,
        "backend.yaml",
        &format!(
            r#"{}---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx-example
spec:
  controller: portico.dev/ingress-controller
"#,
            backend_yaml("default", &ip, echo_port)
        ),
    );
    // The docs' minimal Ingress, as testdata/ keeps it (no namespace: kubectl's, default).
    ok(api
        .kubectl()
        .args(["apply", "--server-side", "-n", "default", "-f"])
        .arg(portico_test_support::testdata("minimal-ingress.yaml")));
    apply_yaml(
        api,
        dir,
        "missing-service.yaml",
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: missing-service
  namespace: default
spec:
  ingressClassName: nginx-example
  rules:
  - host: missing.example
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: missing
            port:
              number: 80
"#,
    );
    (echo, ip)
}

/// An Ingress of ours for `host`, to the test backend.
fn host_ingress(name: &str, host: &str) -> String {
    crate::support::host_ingress("default", "nginx-example", name, host)
}

/// One `portico run` with `kubeconfig` (`portico-0`), its Lease in portico-system (deploy/'s
/// Role is there), writing `status_address` to Ingress status.
fn start(dir: &Path, kubeconfig: &Path, status_address: &str) -> Replica {
    start_with(dir, kubeconfig, status_address, &[])
}

fn start_with(dir: &Path, kubeconfig: &Path, status_address: &str, extra: &[&str]) -> Replica {
    let publish = Publish::StatusAddress(status_address);
    Replica::single(dir, kubeconfig, publish, false, extra)
}

/// deploy/ (less the `rule`th rule of `role`, if given), its ServiceAccount's kubeconfig, the
/// backend and Ingresses.
fn setup(without: Option<(&str, usize)>) -> Cluster {
    Cluster::start(
        |api, dir| deploy_and_service_account(api, dir, without),
        backend_and_ingresses,
    )
}

/// Waits for `ingress`'s status to be `ip`.
fn wait_for_status(api: &RealApiServer, what: &str, ingress: &str, ip: &str) {
    wait_until(what, Duration::from_secs(30), || {
        let path = "{.status.loadBalancer.ingress[0].ip}";
        (ingress_jsonpath(api, "default", ingress, path) == ip).then_some(())
    });
}

/// Lease timings short enough for a test to wait out a lost leader.
const SHORT_LEASE: [&str; 6] = [
    "--lease-duration-seconds",
    "4",
    "--renew-deadline-seconds",
    "3",
    "--retry-period-seconds",
    "0.5",
];

/// The Lease holder's ordinal (`portico-N_...`), if any.
fn lease_holder(api: &RealApiServer) -> Option<usize> {
    let holder = ok(api.kubectl().args([
        "-n",
        "portico-system",
        "get",
        "lease",
        "portico-leader",
        "--ignore-not-found",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]));
    holder
        .strip_prefix("portico-")?
        .split('_')
        .next()?
        .parse()
        .ok()
}

/// An API server outage, then etcd compacted: the data plane serves throughout, the replica
/// loses the Lease past its renew deadline, retakes it, lists again, and an Ingress made after
/// the outage is served and gets its status, all as deploy/'s ServiceAccount.
///
/// A restarted kube-apiserver answers before it is ready, and until its RBAC caches are filled
/// it denies: the replica may meet a 403 in that window (as any controller does) and must
/// retry through it. Outside the window, no 403.
#[test]
fn a_replica_rides_out_an_api_server_outage_and_an_etcd_compaction() {
    let Cluster {
        api,
        dir,
        kubeconfig,
        echo: _echo,
        ip,
    } = setup(None);
    let mut replica = start_with(dir.path(), &kubeconfig, &ip, &SHORT_LEASE);
    wait_until("/testpath served", Duration::from_secs(60), || {
        replica.logs();
        get(&replica.http, "/testpath").filter(|(code, _)| *code == 200)
    });

    let before_outage = replica.logs().len();
    api.stop_apiserver();
    // Past the renew deadline the replica stops leading, and keeps serving the table it has.
    wait_until("leadership lost", Duration::from_secs(20), || {
        get(&replica.admin, "/readyz").filter(|(_, body)| !body.contains("controller: leader"))
    });
    assert_eq!(get(&replica.http, "/testpath").unwrap().0, 200);
    api.start_apiserver();
    let ready_again = replica.logs().len();
    let revision = api.compact_etcd();

    apply_yaml(
        &api,
        dir.path(),
        "after.yaml",
        &host_ingress("after-outage", "after.example"),
    );
    let created: i64 = ok(api.kubectl().args([
        "get",
        "ingress",
        "after-outage",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]))
    .parse()
    .unwrap();
    assert!(created > revision);
    wait_until("the new Ingress served", Duration::from_secs(60), || {
        (get_host(&replica.http, "after.example") == Some(200)).then_some(())
    });
    wait_for_status(&api, "its status", "after-outage", &ip);
    let logs = replica.logs();
    assert!(
        !met_forbidden(&logs[..before_outage]),
        "403 before the outage:\n{logs}"
    );
    assert!(
        !met_forbidden(&logs[ready_again..]),
        "403 after the API server was ready again:\n{logs}"
    );
}

/// Three replicas as deploy/'s ServiceAccount, the Lease holder SIGKILLed: another replica
/// takes the Lease, and an Ingress made after the kill is served by both survivors and gets its
/// status. No 403 on the way.
#[test]
fn three_replicas_fail_over_when_the_leader_is_killed() {
    let Cluster {
        api,
        dir,
        kubeconfig,
        echo: _echo,
        ip,
    } = setup(None);
    let ca = write_ca(dir.path());
    let raft = process::raft_listeners(3);
    let mut replicas: Vec<Replica> = (0..3)
        .map(|ordinal| {
            let member = Member {
                ca: &ca,
                ordinal,
                raft: &raft,
            };
            let publish = Publish::StatusAddress(&ip);
            Replica::spawn(
                dir.path(),
                &kubeconfig,
                &member,
                publish,
                false,
                &SHORT_LEASE,
            )
        })
        .collect();
    for replica in &mut replicas {
        wait_until(
            "/testpath on every replica",
            Duration::from_secs(90),
            || {
                replica.logs();
                get(&replica.http, "/testpath").filter(|(code, _)| *code == 200)
            },
        );
    }
    let leader = wait_until("a Lease holder", Duration::from_secs(30), || {
        lease_holder(&api)
    });

    replicas[leader].process.kill_blocking();
    let successor = wait_until("another Lease holder", Duration::from_secs(30), || {
        lease_holder(&api).filter(|holder| *holder != leader)
    });
    apply_yaml(
        &api,
        dir.path(),
        "after.yaml",
        &host_ingress("after-failover", "after.example"),
    );
    for (ordinal, replica) in replicas.iter_mut().enumerate() {
        if ordinal == leader {
            continue;
        }
        wait_until(
            "the new Ingress on a survivor",
            Duration::from_secs(30),
            || {
                replica.logs();
                (get_host(&replica.http, "after.example") == Some(200)).then_some(())
            },
        );
    }
    wait_for_status(&api, "its status", "after-failover", &ip);
    for (ordinal, replica) in replicas.iter_mut().enumerate() {
        if ordinal == leader {
            continue;
        }
        replica.assert_no_403(&format!(
            "portico-{ordinal} (successor portico-{successor}) met a 403"
        ));
    }
}

/// One replica with deploy/'s ServiceAccount token (so deploy/'s ClusterRole and Role, not the
/// admin, decide what it may do) leads, serves the minimal Ingress from the Kubernetes docs,
/// writes its status and records an Event for the Ingress naming a missing Service; its log
/// holds no 403.
#[test]
fn a_replica_as_the_deploy_service_account_serves_the_docs_minimal_ingress() {
    let Cluster {
        api,
        dir,
        kubeconfig,
        echo: _echo,
        ip,
    } = setup(None);
    let mut replica = start(dir.path(), &kubeconfig, &ip);
    wait_until("/readyz names the leader", Duration::from_secs(60), || {
        replica.logs();
        get(&replica.admin, "/readyz")
            .filter(|(code, body)| *code == 200 && body.contains("controller: leader"))
    });

    let (_, body) = wait_until("/testpath served", Duration::from_secs(30), || {
        get(&replica.http, "/testpath").filter(|(code, _)| *code == 200)
    });
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["service"], "test", "{echo}");
    assert_eq!(echo["path"], "/", "rewrite-target: {echo}");
    assert_eq!(get(&replica.http, "/other").unwrap().0, 404);
    wait_for_status(&api, "the Ingress status", "minimal-ingress", &ip);
    wait_until("the Event", Duration::from_secs(30), || {
        let reasons = event_reasons(&api, "default", "missing-service");
        (!reasons.is_empty()).then_some(())
    });
    let holder = ok(api.kubectl().args([
        "-n",
        "portico-system",
        "get",
        "lease",
        "portico-leader",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]));
    assert!(holder.starts_with("portico-0"), "{holder}");

    replica.assert_no_403("the replica met a 403 with deploy/'s RBAC");
}

/// deploy/ less one rule: the replica must meet a 403 on a resource of that rule (the rule is
/// used), within the time it takes to lead, serve, write status and record the Event.
fn without_rule(role: &str, rule: usize) {
    let Cluster {
        api: _api,
        dir,
        kubeconfig,
        echo: _echo,
        ip,
    } = setup(Some((role, rule)));
    let mut replica = start(dir.path(), &kubeconfig, &ip);
    let removed = rendered_deploy()
        .into_iter()
        .find(|o| o["kind"] == role)
        .map(|o| o["rules"][rule].clone())
        .unwrap();
    let resources = rule_resources(&removed);
    // The API server's message names the resource: `cannot get resource "leases" ...`.
    replica.wait_for_line(
        &format!("a 403 on {resources:?} without {role} rule {rule}"),
        Duration::from_secs(60),
        |line| met_forbidden(line) && names_resource(line, &resources),
    );
}

/// A rule added to deploy/ needs its own test below.
#[test]
fn every_rule_in_deploy_has_a_test_without_it() {
    let objects = rendered_deploy();
    let rules = |kind: &str| {
        objects.iter().find(|o| o["kind"] == kind).unwrap()["rules"]
            .as_sequence()
            .unwrap()
            .len()
    };
    assert_eq!(rules("ClusterRole"), 5);
    assert_eq!(rules("Role"), 2);
}

tests_without_rule! {
    without_the_cluster_role_rule_on_ingresses_the_replica_meets_a_403("ClusterRole", 0);
    without_the_cluster_role_rule_on_ingress_status_the_replica_meets_a_403("ClusterRole", 1);
    without_the_cluster_role_rule_on_services_and_secrets_the_replica_meets_a_403("ClusterRole", 2);
    without_the_cluster_role_rule_on_endpointslices_the_replica_meets_a_403("ClusterRole", 3);
    without_the_cluster_role_rule_on_events_the_replica_meets_a_403("ClusterRole", 4);
    without_the_role_rule_on_its_lease_the_replica_meets_a_403("Role", 0);
    without_the_role_rule_to_create_leases_the_replica_meets_a_403("Role", 1);
}
