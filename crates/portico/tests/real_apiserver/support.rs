//! What `namespaced` and `replica` share: a rendered kustomization, the ServiceAccount's
//! kubeconfig, the test backend and Ingresses for it, reads of Ingress fields and Events, and a
//! `portico run` replica with its log.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use crate::common::deploy_rbac::{
    kustomize, met_forbidden, service_account_kubeconfig, to_yaml,
};
use crate::common::real_apiserver::RealApiServer;
use crate::common::{free_port, wait_until, write_ca};
use crate::{KillOnDrop, PORTICO, host_ip, ok};

/// The resources an RBAC rule names.
pub fn rule_resources(rule: &serde_yaml::Value) -> Vec<String> {
    rule["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// Whether a log line names one of `resources` as the API server's message does
/// (`cannot get resource "leases" ...`, quotes escaped in the JSON log).
pub fn names_resource(line: &str, resources: &[String]) -> bool {
    resources
        .iter()
        .any(|r| line.contains(&format!("resource \\\"{r}\\\"")))
}

/// `portico echo` for the Service `test` in `ns`, on this machine's address (the real API
/// server refuses loopback endpoints). Returns it, that address and its port.
pub fn echo(ns: &str) -> (KillOnDrop, String, u16) {
    let ip = host_ip();
    let echo_port = free_port();
    let echo = KillOnDrop(
        Command::new(PORTICO)
            .args(["echo", "--service", "test", "--namespace", ns])
            .args(["--listen", &format!("{ip}:{echo_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (echo, ip, echo_port)
}

/// The Service `test` in `ns` without a selector, port 80 to `echo_port`, and the EndpointSlice
/// an endpoints controller would have written for it, to `ip`.
pub fn backend_yaml(ns: &str, ip: &str, echo_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: test
  namespace: {ns}
spec:
  ports:
    - port: 80
      targetPort: {echo_port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: test-1
  namespace: {ns}
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
"#
    )
}

/// An Ingress `ns/name` of the IngressClass `class` for `host`, to its Service `test`.
pub fn host_ingress(ns: &str, class: &str, name: &str, host: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: {ns}
spec:
  ingressClassName: {class}
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

/// `jsonpath` of the Ingress `ns/name`.
pub fn ingress_jsonpath(api: &RealApiServer, ns: &str, name: &str, jsonpath: &str) -> String {
    ok(api.kubectl().args([
        "-n",
        ns,
        "get",
        "ingress",
        name,
        "-o",
        &format!("jsonpath={jsonpath}"),
    ]))
}

/// The reasons of the Events in `ns` regarding `name`, space-separated.
pub fn event_reasons(api: &RealApiServer, ns: &str, name: &str) -> String {
    ok(api.kubectl().args([
        "-n",
        ns,
        "get",
        "events.events.k8s.io",
        "--field-selector",
        &format!("regarding.name={name}"),
        "-o",
        "jsonpath={.items[*].reason}",
    ]))
}

/// The status of GET `/` on `http` for Host `host`, with curl.
pub fn get_host(http: &str, host: &str) -> Option<u16> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "3", "-o", "/dev/null"])
        .args(["-w", "%{http_code}", "-H", &format!("Host: {host}")])
        .arg(format!("http://{http}/"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).parse().ok()
}

/// What a test runs a replica against: a real API server, a temp dir, a kubeconfig of the
/// ServiceAccount and the test backend, with this machine's address it serves on.
/// Destructured, it must bind `api` and `echo`: a field left to `..` is dropped (stopped) at once.
pub struct Cluster {
    pub api: RealApiServer,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub echo: KillOnDrop,
    pub ip: String,
}

impl Cluster {
    /// Starts the API server; `service_account` applies the RBAC and returns the kubeconfig,
    /// `backends` applies the backend and Ingresses and returns the echo process and its address.
    pub fn start(
        service_account: impl FnOnce(&RealApiServer, &Path) -> PathBuf,
        backends: impl FnOnce(&RealApiServer, &Path) -> (KillOnDrop, String),
    ) -> Self {
        let api = RealApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = service_account(&api, dir.path());
        let (echo, ip) = backends(&api, dir.path());
        Self {
            api,
            dir,
            kubeconfig,
            echo,
            ip,
        }
    }
}

/// A replica's place in its Raft cluster: the CA (certificate, key) every member's certificate
/// is signed by, its ordinal, and every initial member's Raft port in ordinal order.
pub struct Member<'a> {
    pub ca: &'a (PathBuf, PathBuf),
    pub ordinal: usize,
    pub raft_ports: &'a [u16],
}

/// Where a replica takes the address it writes to Ingress status from.
pub enum Publish<'a> {
    /// `--publish-service NAMESPACE/NAME`: that Service's LoadBalancer address.
    Service(&'a str),
    /// `--publish-status-address ADDRESS`.
    StatusAddress(&'a str),
}

/// One `portico run` with a kubeconfig, its Lease in portico-system.
pub struct Replica {
    pub process: KillOnDrop,
    pub admin: String,
    pub http: String,
    /// The HTTPS listener's address, when it was given a port of its own (else any port).
    pub https: Option<String>,
    log: PathBuf,
}

impl Replica {
    /// `portico-0`, the only member of its Raft cluster (its CA written to `dir`).
    pub fn single(
        dir: &Path,
        kubeconfig: &Path,
        publish: Publish,
        https_port: bool,
        extra: &[&str],
    ) -> Self {
        let ca = write_ca(dir);
        let member = Member {
            ca: &ca,
            ordinal: 0,
            raft_ports: &[free_port()],
        };
        Self::spawn(dir, kubeconfig, &member, publish, https_port, extra)
    }

    /// `portico-ORDINAL`, its Raft address the ORDINALth of `raft_ports` (the initial members),
    /// HTTPS on a free port of its own if `https_port` (else on any port), then `extra` flags.
    pub fn spawn(
        dir: &Path,
        kubeconfig: &Path,
        member: &Member,
        publish: Publish,
        https_port: bool,
        extra: &[&str],
    ) -> Self {
        let (ca, ordinal) = (member.ca, member.ordinal);
        let (admin, http) = (free_port(), free_port());
        let https = https_port.then(|| format!("127.0.0.1:{}", free_port()));
        let raft = member.raft_ports[ordinal];
        let members: Vec<String> = member
            .raft_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let publish = match publish {
            Publish::Service(service) => ["--publish-service", service],
            Publish::StatusAddress(address) => ["--publish-status-address", address],
        };
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
                .args(["--https", https.as_deref().unwrap_or("127.0.0.1:0")])
                .args(["--http3", "127.0.0.1:0"])
                .args(["--admin", &format!("127.0.0.1:{admin}")])
                .args(["--log-format", "json"])
                .args(publish)
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
            https,
            log,
        }
    }

    /// Its log so far; panics with it if the replica has exited.
    pub fn logs(&mut self) -> String {
        if let Ok(Some(status)) = self.process.0.try_wait() {
            panic!(
                "replica exited ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asserts that its log so far holds no 403; the failure says `what`, then the log.
    pub fn assert_no_403(&mut self, what: &str) {
        let logs = self.logs();
        assert!(!met_forbidden(&logs), "{what}:\n{logs}");
    }

    /// Waits up to `timeout` for a line of its log that `matches`.
    pub fn wait_for_line(&mut self, what: &str, timeout: Duration, matches: impl Fn(&str) -> bool) {
        wait_until(what, timeout, || {
            self.logs().lines().any(&matches).then_some(())
        });
    }
}

/// One `#[test]` a name, each calling the module's `without_rule` with its arguments.
macro_rules! tests_without_rule {
    ($($name:ident($($arg:expr),*);)*) => {
        $(
            #[test]
            fn $name() {
                without_rule($($arg),*);
            }
        )*
    };
}
pub(crate) use tests_without_rule;
