//! `portico run` as deploy/'s ServiceAccount: its ClusterRole and Role exactly as shipped are
//! enough (no 403 while it serves, writes status and records an Event), and every rule in them
//! is needed (without it, the replica meets a 403).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::real_apiserver::RealApiServer;
use crate::common::{free_port, get, wait_until, write_ca};
use crate::{KillOnDrop, PORTICO, apply_yaml, deploy_dir, host_ip, ok};

/// deploy/ rendered by kustomize, one value per object.
fn rendered_deploy() -> Vec<serde_yaml::Value> {
    let rendered = ok(Command::new("kubectl").arg("kustomize").arg(deploy_dir()));
    rendered
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).unwrap())
        .collect()
}

/// Applies deploy/ (less the `rule`th rule of `role`, if given) and returns a kubeconfig with a
/// fresh token of its ServiceAccount.
fn deploy_and_service_account(
    api: &RealApiServer,
    dir: &Path,
    without: Option<(&str, usize)>,
) -> PathBuf {
    let mut objects = rendered_deploy();
    if let Some((role, rule)) = without {
        let object = objects
            .iter_mut()
            .find(|o| o["kind"] == role)
            .unwrap_or_else(|| panic!("deploy/ has no {role}"));
        let rules = object["rules"].as_sequence_mut().unwrap();
        assert!(rule < rules.len(), "{role} has {} rules", rules.len());
        rules.remove(rule);
    }
    let yaml: Vec<String> = objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap())
        .collect();
    apply_yaml(api, dir, "deploy.yaml", &yaml.join("---\n"));
    let token = ok(api.kubectl().args([
        "-n",
        "portico-system",
        "create",
        "token",
        "portico",
        "--duration=1h",
    ]));
    let kubeconfig = dir.join("portico-sa.kubeconfig");
    api.write_kubeconfig_for_token(&kubeconfig, token.trim());
    let whoami = ok(Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]));
    assert_eq!(whoami, "system:serviceaccount:portico-system:portico");
    kubeconfig
}

/// The backend (`portico echo` on this machine's address, a Service without a selector and
/// the EndpointSlice an endpoints controller would have written), an IngressClass of ours
/// named as in the docs, the docs' minimal Ingress and one naming a missing Service (so the
/// leader has an Event to record). Returns the echo process and the address it serves on.
fn backend_and_ingresses(api: &RealApiServer, dir: &Path) -> (KillOnDrop, String) {
    let ip = host_ip();
    let echo_port = free_port();
    let echo = KillOnDrop(
        Command::new(PORTICO)
            .args(["echo", "--service", "test", "--namespace", "default"])
            .args(["--listen", &format!("{ip}:{echo_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    apply_yaml(
        api,
        dir,
        "backend.yaml",
        &format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: test
  namespace: default
spec:
  ports:
    - port: 80
      targetPort: {echo_port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: test-1
  namespace: default
  labels:
    kubernetes.io/service-name: test
addressType: IPv4
endpoints:
  - addresses: ["{ip}"]
    conditions:
      ready: true
ports:
  - name: ""
    port: {echo_port}
    protocol: TCP
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx-example
spec:
  controller: portico.dev/ingress-controller
"#
        ),
    );
    // https://kubernetes.io/docs/concepts/services-networking/ingress/#the-ingress-resource
    apply_yaml(
        api,
        dir,
        "ingresses.yaml",
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: minimal-ingress
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  ingressClassName: nginx-example
  rules:
  - http:
      paths:
      - path: /testpath
        pathType: Prefix
        backend:
          service:
            name: test
            port:
              number: 80
---
apiVersion: networking.k8s.io/v1
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

/// A replica's place in its Raft cluster: the CA (certificate, key) every member's certificate
/// is signed by, its ordinal, and every initial member's Raft port in ordinal order.
struct Member<'a> {
    ca: &'a (PathBuf, PathBuf),
    ordinal: usize,
    raft_ports: &'a [u16],
}

/// An Ingress of ours for `host`, to the test backend.
fn host_ingress(name: &str, host: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
spec:
  ingressClassName: nginx-example
  rules:
  - host: {host}
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: test
            port:
              number: 80
"#
    )
}

/// One `portico run` with `kubeconfig`, its Lease in portico-system (deploy/'s Role is there).
struct Replica {
    process: KillOnDrop,
    admin: String,
    http: String,
    log: PathBuf,
}

impl Replica {
    fn start(dir: &Path, kubeconfig: &Path, status_address: &str) -> Self {
        Self::start_with(dir, kubeconfig, status_address, &[])
    }

    fn start_with(dir: &Path, kubeconfig: &Path, status_address: &str, extra: &[&str]) -> Self {
        let ca = write_ca(dir);
        let member = Member {
            ca: &ca,
            ordinal: 0,
            raft_ports: &[free_port()],
        };
        Self::spawn(dir, kubeconfig, status_address, &member, extra)
    }

    /// `portico-ORDINAL`, its Raft address the ORDINALth of `raft_ports` (the initial members).
    fn spawn(
        dir: &Path,
        kubeconfig: &Path,
        status_address: &str,
        member: &Member,
        extra: &[&str],
    ) -> Self {
        let (ca, ordinal) = (member.ca, member.ordinal);
        let (admin, http) = (free_port(), free_port());
        let raft = member.raft_ports[ordinal];
        let members: Vec<String> = member
            .raft_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let log = dir.join(format!("replica-{ordinal}.log"));
        let process = KillOnDrop(
            Command::new(PORTICO)
                .args(["run", "--pod-name", &format!("portico-{ordinal}")])
                .args(["--namespace", "portico-system"])
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("--data-dir")
                .arg(dir.join(format!("data-{ordinal}")))
                .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
                .args(["--initial-members", &members.join(",")])
                .arg("--raft-ca")
                .arg(&ca.0)
                .arg("--raft-ca-key")
                .arg(&ca.1)
                .args(["--http", &format!("127.0.0.1:{http}")])
                .args(["--https", "127.0.0.1:0", "--http3", "127.0.0.1:0"])
                .args(["--admin", &format!("127.0.0.1:{admin}")])
                .args(["--log-format", "json"])
                .args(["--publish-status-address", status_address])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        Self {
            process,
            admin: format!("127.0.0.1:{admin}"),
            http: format!("127.0.0.1:{http}"),
            log,
        }
    }

    fn logs(&mut self) -> String {
        if let Ok(Some(status)) = self.process.0.try_wait() {
            panic!(
                "replica exited ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
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

/// The status of GET `/` on `http` for Host `host`.
fn get_host(http: &str, host: &str) -> Option<u16> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://{http}/"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).parse().ok()
}

/// A 403 as the replica logs it: the API server's message ("... is forbidden: User ...") and
/// reason (`Forbidden`). Not the digits, which a timestamp can hold.
fn met_forbidden(logs: &str) -> bool {
    logs.to_ascii_lowercase().contains("forbidden")
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
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = deploy_and_service_account(&api, dir.path(), None);
    let (_echo, ip) = backend_and_ingresses(&api, dir.path());
    let mut replica = Replica::start_with(dir.path(), &kubeconfig, &ip, &SHORT_LEASE);
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
    wait_until("its status", Duration::from_secs(30), || {
        let status = ok(api.kubectl().args([
            "get",
            "ingress",
            "after-outage",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]));
        (status == ip).then_some(())
    });
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
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = deploy_and_service_account(&api, dir.path(), None);
    let (_echo, ip) = backend_and_ingresses(&api, dir.path());
    let ca = write_ca(dir.path());
    let raft_ports = [free_port(), free_port(), free_port()];
    let mut replicas: Vec<Replica> = (0..3)
        .map(|ordinal| {
            let member = Member {
                ca: &ca,
                ordinal,
                raft_ports: &raft_ports,
            };
            Replica::spawn(dir.path(), &kubeconfig, &ip, &member, &SHORT_LEASE)
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

    replicas[leader]
        .process
        .0
        .kill()
        .expect("SIGKILL the leader");
    let _ = replicas[leader].process.0.wait();
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
    wait_until("its status", Duration::from_secs(30), || {
        let status = ok(api.kubectl().args([
            "get",
            "ingress",
            "after-failover",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]));
        (status == ip).then_some(())
    });
    for (ordinal, replica) in replicas.iter_mut().enumerate() {
        if ordinal == leader {
            continue;
        }
        let logs = replica.logs();
        assert!(
            !met_forbidden(&logs),
            "portico-{ordinal} (successor portico-{successor}) met a 403:\n{logs}"
        );
    }
}

/// One replica with deploy/'s ServiceAccount token (so deploy/'s ClusterRole and Role, not the
/// admin, decide what it may do) leads, serves the minimal Ingress from the Kubernetes docs,
/// writes its status and records an Event for the Ingress naming a missing Service; its log
/// holds no 403.
#[test]
fn a_replica_as_the_deploy_service_account_serves_the_docs_minimal_ingress() {
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = deploy_and_service_account(&api, dir.path(), None);
    let (_echo, ip) = backend_and_ingresses(&api, dir.path());
    let mut replica = Replica::start(dir.path(), &kubeconfig, &ip);
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
    wait_until("the Ingress status", Duration::from_secs(30), || {
        let status = ok(api.kubectl().args([
            "get",
            "ingress",
            "minimal-ingress",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]));
        (status == ip).then_some(())
    });
    wait_until("the Event", Duration::from_secs(30), || {
        let reasons = ok(api.kubectl().args([
            "get",
            "events.events.k8s.io",
            "--field-selector",
            "regarding.name=missing-service",
            "-o",
            "jsonpath={.items[*].reason}",
        ]));
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

    let logs = replica.logs();
    assert!(
        !met_forbidden(&logs),
        "the replica met a 403 with deploy/'s RBAC:\n{logs}"
    );
}

/// deploy/ less one rule: the replica must meet a 403 on a resource of that rule (the rule is
/// used), within the time it takes to lead, serve, write status and record the Event.
fn without_rule(role: &str, rule: usize) {
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = deploy_and_service_account(&api, dir.path(), Some((role, rule)));
    let (_echo, ip) = backend_and_ingresses(&api, dir.path());
    let mut replica = Replica::start(dir.path(), &kubeconfig, &ip);
    let removed = rendered_deploy()
        .into_iter()
        .find(|o| o["kind"] == role)
        .map(|o| o["rules"][rule].clone())
        .unwrap();
    let resources: Vec<String> = removed["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    // The API server's message names the resource: `cannot get resource "leases" ...`.
    wait_until(
        &format!("a 403 on {resources:?} without {role} rule {rule}"),
        Duration::from_secs(60),
        || {
            replica
                .logs()
                .lines()
                .any(|line| {
                    met_forbidden(line)
                        && resources
                            .iter()
                            .any(|r| line.contains(&format!("resource \\\"{r}\\\"")))
                })
                .then_some(())
        },
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

#[test]
fn without_the_cluster_role_rule_on_ingresses_the_replica_meets_a_403() {
    without_rule("ClusterRole", 0);
}

#[test]
fn without_the_cluster_role_rule_on_ingress_status_the_replica_meets_a_403() {
    without_rule("ClusterRole", 1);
}

#[test]
fn without_the_cluster_role_rule_on_services_and_secrets_the_replica_meets_a_403() {
    without_rule("ClusterRole", 2);
}

#[test]
fn without_the_cluster_role_rule_on_endpointslices_the_replica_meets_a_403() {
    without_rule("ClusterRole", 3);
}

#[test]
fn without_the_cluster_role_rule_on_events_the_replica_meets_a_403() {
    without_rule("ClusterRole", 4);
}

#[test]
fn without_the_role_rule_on_its_lease_the_replica_meets_a_403() {
    without_rule("Role", 0);
}

#[test]
fn without_the_role_rule_to_create_leases_the_replica_meets_a_403() {
    without_rule("Role", 1);
}
