//! M6 with `portico run`: a restored volume fails the replica's probes, and losing quorum
//! has a documented, tested way out (`portico raft recover`).
//!
//! The holder of a backup of a replica's volume restores it after the replica ran on. The
//! restored replica must not serve its stale table as if all were well: its `/healthz` and
//! `/readyz` fail saying the volume is a stale copy to delete, `portico_raft_stale_volume`
//! is 1, and the other two keep serving new Ingresses.
//!
//! Two of three replicas are lost for good (SIGKILL, volumes deleted). The survivor keeps
//! serving the last committed table, but nothing new commits: a new Ingress is never
//! served. `portico raft recover` on the stopped survivor's data directory makes it the only
//! voter (refusing while it runs, and changing nothing without `--force`); started again,
//! it serves the new Ingress, and replacements with empty volumes rejoin and serve every
//! Ingress, including one created after they joined. Real processes: the in-process API
//! server, three `portico run`, a `portico echo` backend, objects created with kubectl,
//! requests made with curl. (The restored and cloned volumes themselves are refused in
//! `portico-raft`'s `security` tests, `m6_restored_volume`.)

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::portico_run::{self, LOOPBACK_PORT_0, Member, PORTICO};
use crate::common::{InProcessApi, get, wait_until};
use portico_test_support::TestCa;
use portico_test_support::process::{self, Process};
use portico_test_support::volume::copy_dir;

/// Three `portico run` processes sharing a CA, an API server and their Raft sockets (held
/// here, so a replica restarted on its volume is back on its Raft address); their other
/// listeners on port 0, read again at each start.
struct Replicas {
    dir: PathBuf,
    kubeconfig: PathBuf,
    ca: (PathBuf, PathBuf),
    raft: Vec<Arc<TcpListener>>,
    http: Vec<u16>,
    admin: Vec<String>,
    children: Vec<Option<Process>>,
}

impl Replicas {
    /// `n` replicas started, and ready.
    fn start(dir: &Path, kubeconfig: &Path, n: usize) -> Self {
        let mut replicas = Self {
            dir: dir.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            ca: TestCa::new("portico test CA").write(dir),
            raft: process::raft_listeners(n),
            http: vec![0; n],
            admin: vec![String::new(); n],
            children: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            replicas.spawn(i);
        }
        for i in 0..n {
            replicas.wait_ready(i);
        }
        replicas
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("data-{i}"))
    }

    /// Starts replica `i` and reads the ports it bound.
    fn spawn(&mut self, i: usize) {
        let member = Member {
            ordinal: i,
            raft: &self.raft,
            ca: &self.ca,
        };
        let child = portico_run::run(&member, "default", &self.kubeconfig, &self.data_dir(i))
            .args(LOOPBACK_PORT_0)
            .args(["--admin", "127.0.0.1:0", "--drain-seconds", "1"])
            .spawn(format!("portico-{i}"));
        let listening = portico_run::listening(&child);
        self.http[i] = listening.http().port();
        self.admin[i] = listening.admin();
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        self.children[i].take().expect("running").kill_blocking();
    }

    fn wait_ready(&self, i: usize) {
        wait_until(
            &format!("portico-{i} /readyz"),
            Duration::from_secs(90),
            || get(&self.admin[i], "/readyz").filter(|(code, _)| *code == 200),
        );
    }

    /// curl `http://<ingress>.example/` on replica `i`: the status and body.
    fn fetch(&self, i: usize, ingress: &str) -> Option<(u16, String)> {
        let host = format!("{ingress}.example");
        let port = self.http[i];
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "3", "-w", "\n%{http_code}"])
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .arg(format!("http://{host}:{port}/"))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.parse().ok()?, body.to_owned()))
    }

    fn wait_served(&self, i: usize, host: &str) {
        let started = Instant::now();
        loop {
            let answer = self.fetch(i, host);
            if answer
                .as_ref()
                .is_some_and(|(code, body)| *code == 200 && body.contains("\"echo\""))
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{host} not served by portico-{i}: {answer:?}\n{:?}",
                get(&self.admin[i], "/debug/routes")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn recover(&self, i: usize, force: bool) -> Output {
        let mut command = Command::new(PORTICO);
        command.args(["raft", "recover", "--data-dir"]);
        command.arg(self.data_dir(i));
        if force {
            command.arg("--force");
        }
        command.output().unwrap()
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for child in self.children.iter().flatten() {
            let log = child.output_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- {} ----", child.name());
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
    }
}

fn kubectl_apply(kubeconfig: &Path, yaml: &str) {
    let mut kubectl = Command::new("kubectl");
    kubectl.env("KUBECONFIG", kubeconfig);
    crate::common::kubectl_apply(kubectl, yaml, "");
}

fn ingress(name: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: default}}
spec:
  ingressClassName: portico
  rules:
  - host: {name}.example
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{number: 80}}}}}}}}
"
    )
}

/// The echo backend and what routes to it: an IngressClass of ours, the Service and its
/// EndpointSlice.
fn backend_yaml(port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: portico}}
spec: {{controller: {controller}}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  namespace: default
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
ports: [{{name: http, port: {port}, protocol: TCP}}]
",
        controller = portico_model::CONTROLLER_NAME
    )
}

/// The in-process API server, a kubeconfig for it, and an echo backend with the Ingress
/// `before` routed to it: what both process tests below start from.
fn api_server_and_backend() -> (InProcessApi, tempfile::TempDir, Process) {
    let dir = tempfile::tempdir().unwrap();
    let api = InProcessApi::start(dir.path());
    let (echo, addr) = portico_run::echo("127.0.0.1", 0, "echo", "echo-0", "default");
    let echo_port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    kubectl_apply(&api.kubeconfig, &backend_yaml(echo_port));
    kubectl_apply(&api.kubeconfig, &ingress("before"));
    (api, dir, echo)
}

#[test]
fn after_losing_quorum_raft_recover_lets_changes_commit_and_replacements_rejoin() {
    let (api, dir, echo) = api_server_and_backend();
    let kubeconfig = api.kubeconfig.clone();
    let mut replicas = Replicas::start(dir.path(), &kubeconfig, 3);
    for i in 0..3 {
        replicas.wait_served(i, "before");
    }

    // Two replicas lost for good.
    for i in [1, 2] {
        replicas.kill(i);
        std::fs::remove_dir_all(replicas.data_dir(i)).unwrap();
    }
    // The survivor serves what was committed, but a new Ingress never commits.
    kubectl_apply(&kubeconfig, &ingress("during"));
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(10) {
        assert_eq!(replicas.fetch(0, "before").map(|(c, _)| c), Some(200));
        let (code, body) = replicas.fetch(0, "during").unwrap();
        assert_eq!(code, 404, "served without a quorum: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The recovery refuses to touch the store of a running replica.
    let out = replicas.recover(0, true);
    assert!(!out.status.success(), "recovered a running replica's store");
    replicas.kill(0);
    // Without --force it only says what it would do.
    let out = replicas.recover(0, false);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(said.contains("would make node"), "{said}");
    assert_eq!(
        said.matches("(127.0.0.1:").count(),
        3,
        "two dropped: {said}"
    );
    let out = replicas.recover(0, true);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("is now the only voter"), "{said}");

    // The survivor, alone, commits again: the Ingress made during the outage is served.
    replicas.spawn(0);
    replicas.wait_ready(0);
    replicas.wait_served(0, "during");

    // Replacements with empty volumes rejoin and serve everything.
    for i in [1, 2] {
        replicas.spawn(i);
    }
    for i in 0..3 {
        replicas.wait_ready(i);
        replicas.wait_served(i, "before");
        replicas.wait_served(i, "during");
    }
    kubectl_apply(&kubeconfig, &ingress("after"));
    for i in 0..3 {
        replicas.wait_served(i, "after");
    }
    let (_, metrics) = get(&replicas.admin[0], "/metrics").unwrap();
    assert!(metrics.contains("portico_raft_voters 3"), "{metrics}");
    assert!(metrics.contains("portico_raft_stale_volume 0"), "{metrics}");

    drop(replicas);
    drop(echo);
    api.shutdown();
}

#[test]
fn a_restored_volume_fails_its_probes_and_says_to_wipe_it() {
    let (api, dir, echo) = api_server_and_backend();
    let kubeconfig = api.kubeconfig.clone();
    let mut replicas = Replicas::start(dir.path(), &kubeconfig, 3);

    // The backup of portico-1's volume, taken while it is stopped; then it runs on.
    replicas.kill(1);
    let backup = dir.path().join("backup");
    copy_dir(&replicas.data_dir(1), &backup).unwrap();
    replicas.spawn(1);
    replicas.wait_ready(1);
    // Its peers take the new incarnation once the old one has been quiet for an election
    // timeout (1.2 s); until then nothing it says counts, and a copy of what it was before
    // would be harmless. Past that, it acknowledges for real.
    std::thread::sleep(Duration::from_secs(3));
    kubectl_apply(&kubeconfig, &ingress("later"));
    for i in 0..3 {
        replicas.wait_served(i, "later");
    }

    // Restored and started: it fails its probes, saying what to do.
    replicas.kill(1);
    std::fs::remove_dir_all(replicas.data_dir(1)).unwrap();
    copy_dir(&backup, &replicas.data_dir(1)).unwrap();
    replicas.spawn(1);
    let (_, health) = wait_until(
        "portico-1 /healthz failing",
        Duration::from_secs(60),
        || get(&replicas.admin[1], "/healthz").filter(|(code, _)| *code == 500),
    );
    assert!(
        health.contains("stale copy") && health.contains("Delete the data directory"),
        "{health}"
    );
    assert_eq!(get(&replicas.admin[1], "/readyz").unwrap().0, 503);
    let (_, metrics) = get(&replicas.admin[1], "/metrics").unwrap();
    assert!(metrics.contains("portico_raft_stale_volume 1"), "{metrics}");

    // The other two commit and serve on.
    kubectl_apply(&kubeconfig, &ingress("after"));
    for i in [0, 2] {
        replicas.wait_served(i, "after");
        let (_, metrics) = get(&replicas.admin[i], "/metrics").unwrap();
        assert!(metrics.contains("portico_raft_stale_volume 0"), "{metrics}");
    }

    drop(replicas);
    drop(echo);
    api.shutdown();
}
