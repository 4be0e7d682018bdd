//! `portico run --watch-namespace apps` as deploy/overlays/namespaced's ServiceAccount: Roles in
//! `apps` (and one for the publish Service by name in portico-system) and a ClusterRole for
//! IngressClasses only, no cluster-wide read of Ingresses, Services, EndpointSlices or Secrets.
//! With the flag the replica meets no 403, serves the Ingress in `apps`, writes its status from
//! the publish Service, and ignores the Ingress in `other`. Without the flag, the same RBAC
//! refuses its cluster-wide lists: the flag is what makes namespaced RBAC work (issue 15, M3).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::real_apiserver::RealApiServer;
use crate::common::wait_until;
use crate::support::{
    Cluster, Publish, Replica, backend_yaml, echo, event_reasons, get_host, host_ingress,
    ingress_jsonpath, kustomize, names_resource, rule_resources, service_account_kubeconfig,
    tests_without_rule, to_yaml,
};
use crate::{KillOnDrop, apply_yaml, deploy_dir, ok};

const SERVICE_ACCOUNT: &str = "system:serviceaccount:portico-system:portico";
/// What the publish Service's LoadBalancer says, and so what Ingress status must say.
const LB_IP: &str = "203.0.113.7";

/// deploy/overlays/namespaced rendered by kustomize, one value per object.
fn rendered_overlay() -> Vec<serde_yaml::Value> {
    kustomize(&deploy_dir().join("overlays/namespaced"))
}

/// The rules of the overlay's `kind` named `name`.
fn rules<'a>(
    objects: &'a mut [serde_yaml::Value],
    kind: &str,
    name: &str,
) -> &'a mut Vec<serde_yaml::Value> {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the overlay has no {kind} {name}"))["rules"]
        .as_sequence_mut()
        .unwrap()
}

/// Namespaces `apps` and `other`, deploy/overlays/namespaced as rendered (less the `rule`th
/// rule of the role `(kind, name)`, if given), and a kubeconfig with a token of its
/// ServiceAccount. With every rule, checks that the overlay grants no cluster-wide read of the
/// namespaced kinds and nothing in `other`.
fn overlay_and_service_account(
    api: &RealApiServer,
    dir: &Path,
    without: Option<(&str, &str, usize)>,
) -> PathBuf {
    ok(api.kubectl().args(["create", "namespace", "apps"]));
    ok(api.kubectl().args(["create", "namespace", "other"]));
    let mut objects = rendered_overlay();
    if let Some((kind, name, rule)) = without {
        rules(&mut objects, kind, name).remove(rule);
    }
    let rendered = to_yaml(&objects);
    let watched = objects
        .iter()
        .find(|o| o["kind"] == "StatefulSet")
        .and_then(|set| {
            set["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_sequence()?
                .iter()
                .find(|e| e["name"] == "PORTICO_WATCH_NAMESPACES")
                .cloned()
        });
    assert_eq!(
        watched.map(|e| e["value"].clone()),
        Some("apps".into()),
        "the overlay's replicas watch `apps`, where its Role is"
    );
    apply_yaml(api, dir, "namespaced.yaml", &rendered);
    if without.is_none() {
        check_grants(api);
    }
    service_account_kubeconfig(api, dir)
}

/// No cluster-wide read of the namespaced kinds, none in `other`, every one in `apps`.
fn check_grants(api: &RealApiServer) {
    let can = |args: &[&str]| {
        let out = crate::run(
            api.kubectl()
                .args(["auth", "can-i", "--as", SERVICE_ACCOUNT])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for resource in [
        "ingresses.networking.k8s.io",
        "services",
        "endpointslices.discovery.k8s.io",
        "secrets",
    ] {
        assert!(!can(&["list", resource, "--all-namespaces"]), "{resource}");
        assert!(!can(&["list", resource, "-n", "other"]), "{resource}");
        assert!(can(&["list", resource, "-n", "apps"]), "{resource}");
    }
    assert!(can(&["list", "ingressclasses.networking.k8s.io"]));
    assert!(!can(&["list", "services", "-n", "portico-system"]));
}

/// `portico echo`, and in each of `apps` and `other` a Service and EndpointSlice for it and an
/// Ingress of ours (`apps.example`, `other.example`); the publish Service's LoadBalancer address.
/// Returns the echo process and the address it serves on.
fn backends_and_ingresses(api: &RealApiServer, dir: &Path) -> (KillOnDrop, String) {
    let (echo, ip, echo_port) = echo("apps");
    let mut yaml = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: portico-test\nspec:\n  controller: portico.dev/ingress-controller\n",
    );
    for ns in ["apps", "other"] {
        yaml.push_str("---\n");
        yaml.push_str(&ingress(ns, "web", &format!("{ns}.example")));
        yaml.push_str("---\n");
        yaml.push_str(&backend_yaml(ns, &ip, echo_port));
    }
    // Names a missing Service: the leader records an Event on it.
    yaml.push_str("---\n");
    yaml.push_str(
        &ingress("apps", "missing", "missing.example").replace("name: test", "name: missing"),
    );
    apply_yaml(api, dir, "backends.yaml", &yaml);
    ok(api.kubectl().args([
        "-n",
        "portico-system",
        "patch",
        "service",
        "portico",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{LB_IP}"}}]}}}}}}"#),
    ]));
    (echo, ip)
}

/// An Ingress of ours for `host` in `ns`, to its Service `test`.
fn ingress(ns: &str, name: &str, host: &str) -> String {
    host_ingress(ns, "portico-test", name, host)
}

/// One `portico run` (Lease in portico-system), status from the overlay's publish Service.
fn start_replica(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> Replica {
    let publish = Publish::Service("portico-system/portico");
    Replica::single(dir, kubeconfig, publish, true, extra)
}

fn ingress_status(api: &RealApiServer, ns: &str) -> String {
    ingress_jsonpath(api, ns, "web", "{.status.loadBalancer.ingress[*].ip}")
}

/// The overlay (less the `rule`th rule of the role `(kind, name)`, if given), its
/// ServiceAccount's kubeconfig, the backends and Ingresses.
fn setup(without: Option<(&str, &str, usize)>) -> Cluster {
    Cluster::start(
        |api, dir| overlay_and_service_account(api, dir, without),
        backends_and_ingresses,
    )
}

#[test]
fn with_watch_namespace_the_namespaced_overlay_is_enough_and_other_namespaces_are_ignored() {
    let Cluster {
        api,
        dir,
        kubeconfig,
        echo: _echo,
        ..
    } = setup(None);
    let mut replica = start_replica(dir.path(), &kubeconfig, &["--watch-namespace", "apps"]);

    wait_until("apps.example served", Duration::from_secs(60), || {
        replica.logs();
        (get_host(&replica.http, "apps.example") == Some(200)).then_some(())
    });
    wait_until(
        "the publish Service's address in apps/web's status",
        Duration::from_secs(30),
        || (ingress_status(&api, "apps") == LB_IP).then_some(()),
    );
    // A later Ingress in `other` is not seen either (the watch, not only the list, is scoped).
    apply_yaml(
        &api,
        dir.path(),
        "later.yaml",
        &ingress("other", "later", "later.example"),
    );
    wait_until("the Event on apps/missing", Duration::from_secs(30), || {
        let reasons = event_reasons(&api, "apps", "missing");
        (!reasons.is_empty()).then_some(())
    });
    // A marker Ingress in `apps`, applied after `later`: once it is served, the replica has
    // processed everything the API server had before it (a watch of every namespace would
    // have delivered `later` first), so the absences below are not just "not yet".
    apply_yaml(
        &api,
        dir.path(),
        "marker.yaml",
        &ingress("apps", "marker", "marker.example"),
    );
    wait_until("the marker Ingress served", Duration::from_secs(30), || {
        (get_host(&replica.http, "marker.example") == Some(200)).then_some(())
    });
    assert_eq!(get_host(&replica.http, "other.example"), Some(404));
    assert_eq!(get_host(&replica.http, "later.example"), Some(404));
    assert_eq!(ingress_status(&api, "other"), "");
    assert_eq!(get_host(&replica.http, "apps.example"), Some(200));
    replica.assert_no_403("a 403 with the namespaced overlay and --watch-namespace");
}

/// The default certificate in portico-system, outside the watched namespaces: the replica
/// watches that one Secret by name, so a Role granting only it (as deploy/README.md says to add)
/// is enough, and the certificate is served (curl trusts only it, for a host no Ingress names).
#[test]
fn a_default_certificate_outside_the_watched_namespaces_is_watched_by_name() {
    let Cluster {
        api,
        dir,
        kubeconfig,
        echo: _echo,
        ..
    } = setup(None);
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    ok(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=default.example"])
        .args(["-addext", "subjectAltName=DNS:default.example"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    ok(api
        .kubectl()
        .args([
            "-n",
            "portico-system",
            "create",
            "secret",
            "tls",
            "default-tls",
        ])
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("--key={}", key.display())));
    apply_yaml(
        &api,
        dir.path(),
        "default-certificate-role.yaml",
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: portico-default-certificate
  namespace: portico-system
rules:
  - apiGroups: [""]
    resources: ["secrets"]
    resourceNames: ["default-tls"]
    verbs: ["list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: portico-default-certificate
  namespace: portico-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: portico-default-certificate
subjects:
  - kind: ServiceAccount
    name: portico
    namespace: portico-system
"#,
    );
    let mut replica = start_replica(
        dir.path(),
        &kubeconfig,
        &[
            "--watch-namespace",
            "apps",
            "--default-certificate",
            "portico-system/default-tls",
        ],
    );
    let port = replica.https.as_deref().unwrap().rsplit(':').next();
    let port = port.unwrap().to_owned();
    wait_until(
        "the default certificate served",
        Duration::from_secs(60),
        || {
            replica.logs();
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
                .args(["--resolve", &format!("default.example:{port}:127.0.0.1")])
                .arg("--cacert")
                .arg(&cert)
                .arg(format!("https://default.example:{port}/"))
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout) == "404").then_some(())
        },
    );
    replica.assert_no_403("a 403 with a Role for the default certificate alone");
}

#[test]
fn without_watch_namespace_the_namespaced_overlay_refuses_the_cluster_wide_lists() {
    let Cluster {
        api,
        dir,
        kubeconfig,
        echo: _echo,
        ..
    } = setup(None);
    let mut replica = start_replica(dir.path(), &kubeconfig, &[]);
    // The API server's message names each kind: `cannot list resource "secrets" ... at the
    // cluster scope` (quotes escaped in the JSON log).
    for resource in ["ingresses", "services", "endpointslices", "secrets"] {
        replica.wait_for_line(
            &format!("a cluster-wide 403 on {resource}"),
            Duration::from_secs(60),
            |line| {
                line.contains("forbidden")
                    && names_resource(line, &[resource.to_owned()])
                    && line.contains("at the cluster scope")
            },
        );
    }
    // And so nothing is ever served.
    assert_eq!(get_host(&replica.http, "apps.example"), Some(404));
    assert_eq!(ingress_status(&api, "apps"), "");
}

/// The overlay less one rule: with --watch-namespace apps the replica must meet a 403 on a
/// resource of that rule (the rule is used) while it leads, serves, writes status and records
/// the Event.
fn without_rule(kind: &str, name: &str, rule: usize) {
    // Bound, not left to `..`: the API server and the backend run until the end.
    let Cluster {
        api: _api,
        dir,
        kubeconfig,
        echo: _echo,
        ..
    } = setup(Some((kind, name, rule)));
    let mut replica = start_replica(dir.path(), &kubeconfig, &["--watch-namespace", "apps"]);
    let removed = rules(&mut rendered_overlay(), kind, name)[rule].clone();
    let resources = rule_resources(&removed);
    replica.wait_for_line(
        &format!("a 403 on {resources:?} without {kind} {name} rule {rule}"),
        Duration::from_secs(60),
        |line| line.contains("forbidden") && names_resource(line, &resources),
    );
}

/// A rule added to the overlay needs its own test below.
#[test]
fn every_rule_of_the_namespaced_overlay_has_a_test_without_it() {
    let mut objects = rendered_overlay();
    assert_eq!(rules(&mut objects, "Role", "portico").len(), 5);
    assert_eq!(
        rules(&mut objects, "ClusterRole", "portico-ingressclasses").len(),
        1
    );
    assert_eq!(
        rules(&mut objects, "Role", "portico-publish-service").len(),
        1
    );
    // The Lease's Role is the base's, tested in `replica`; the Raft certificate issuer's
    // (`portico-pki`, bound to its own ServiceAccount only) in `raft_pki_issuer`; and nothing
    // else grants anything.
    let roles: Vec<String> = objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .filter(|name| name != "portico-pki")
        .collect();
    assert_eq!(
        roles.len(),
        4,
        "{roles:?}: portico, portico-ingressclasses, portico-publish-service, portico-leader-election"
    );
}

tests_without_rule! {
    without_the_namespaced_rule_on_ingresses_the_replica_meets_a_403("Role", "portico", 0);
    without_the_namespaced_rule_on_ingress_status_the_replica_meets_a_403("Role", "portico", 1);
    without_the_namespaced_rule_on_services_and_secrets_the_replica_meets_a_403("Role", "portico", 2);
    without_the_namespaced_rule_on_endpointslices_the_replica_meets_a_403("Role", "portico", 3);
    without_the_namespaced_rule_on_events_the_replica_meets_a_403("Role", "portico", 4);
    without_the_cluster_role_on_ingressclasses_the_replica_meets_a_403("ClusterRole", "portico-ingressclasses", 0);
    without_the_role_on_the_publish_service_the_replica_meets_a_403("Role", "portico-publish-service", 0);
}
