//! What `namespaced` and `replica` share: a rendered kustomization, the ServiceAccount's
//! kubeconfig, the test backend and Ingresses for it, reads of Ingress fields and Events, and a
//! `portico run` replica with its log.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use crate::common::deploy_rbac::{
    kustomize, met_forbidden, service_account_kubeconfig, to_yaml,
};
pub use crate::common::portico_run::Member;
use crate::common::portico_run::{self, LOOPBACK_PORT_0};
use crate::common::real_apiserver::RealApiServer;
use crate::common::{wait_until, write_ca};
use crate::{KillOnDrop, PORTICO, host_ip, ok};
use portico_test_support::process::{self, Process};

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
/// server refuses loopback endpoints) and a port it picks. Returns it, that address and the
/// port its `echo listening` line reports.
pub fn echo(ns: &str) -> (KillOnDrop, String, u16) {
    use std::io::BufRead;
    let ip = host_ip();
    let mut child = Command::new(PORTICO)
        .args(["echo", "--service", "test", "--namespace", ns])
        .args(["--listen", &format!("{ip}:0")])
        // JSON: read here raw, without the human format's colours.
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let echo = KillOnDrop(child);
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("echo listening"))
        .expect("portico echo exited before listening");
    let port = portico_test_support::child::addr_after(&listening, "addr")
        .unwrap_or_else(|| panic!("no address in {listening}"))
        .port();
    // Keep reading, so the echo never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (echo, ip, port)
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

/// Where a replica takes the address it writes to Ingress status from.
pub enum Publish<'a> {
    /// `--publish-service NAMESPACE/NAME`: that Service's LoadBalancer address.
    Service(&'a str),
    /// `--publish-status-address ADDRESS`.
    StatusAddress(&'a str),
}

/// One `portico run` with a kubeconfig, its Lease in portico-system; every listener on a port
/// of its own, read from its `listening` line.
pub struct Replica {
    pub process: Process,
    pub admin: String,
    pub http: String,
    /// The HTTPS listener's address, when it was asked for.
    pub https: Option<String>,
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
        let raft = process::raft_listeners(1);
        let member = Member {
            ordinal: 0,
            raft: &raft,
            ca: &ca,
        };
        Self::spawn(dir, kubeconfig, &member, publish, https_port, extra)
    }

    /// `portico-ORDINAL` of `member`'s cluster (Raft on its socket), its data in `dir`; its
    /// HTTPS address kept if `https_port`; then `extra` flags.
    pub fn spawn(
        dir: &Path,
        kubeconfig: &Path,
        member: &Member,
        publish: Publish,
        https_port: bool,
        extra: &[&str],
    ) -> Self {
        let publish = match publish {
            Publish::Service(service) => ["--publish-service", service],
            Publish::StatusAddress(address) => ["--publish-status-address", address],
        };
        let data_dir = dir.join(format!("data-{}", member.ordinal));
        let process = portico_run::run(member, "portico-system", kubeconfig, &data_dir)
            .args(LOOPBACK_PORT_0)
            .args(["--admin", "127.0.0.1:0"])
            .args(publish)
            .args(extra)
            .spawn(format!("portico-{}", member.ordinal));
        let listening = portico_run::listening(&process);
        Self {
            process,
            admin: listening.admin(),
            http: listening.http().to_string(),
            https: https_port.then(|| listening.https().to_string()),
        }
    }

    /// Its log so far; panics with it if the replica has exited.
    pub fn logs(&mut self) -> String {
        if let Some(status) = self.process.exit_status() {
            panic!("replica exited ({status}):\n{}", self.process.output_text());
        }
        self.process.output_text()
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
