//! Against a real kube-apiserver and etcd (tests/kube's kube-testenv, built by
//! tests/kube/build.sh): kubectl's protobuf bodies, deploy/ applied client-side, server-side and
//! as a server dry run with the real defaulting and validation, and one `portico run` replica
//! that runs as deploy/'s ServiceAccount (its ClusterRole and Role exactly as shipped) serving
//! the Kubernetes docs' minimal Ingress and writing its status, without a single 403.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::real_apiserver::RealApiServer;
use common::{free_port, get, wait_until, write_ca};

const PORTICO: &str = env!("CARGO_BIN_EXE_portico");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// stdout of a command that must succeed.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The objects deploy/ renders, as kubectl names them in its reports
/// (`kind.group/name`, lower-case kind, no group for the core API).
fn deploy_objects() -> Vec<String> {
    let rendered = ok(Command::new("kubectl").arg("kustomize").arg(deploy()));
    let objects: Vec<String> = rendered
        .split("\n---\n")
        .map(|doc| {
            let value: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
            let kind = value["kind"].as_str().unwrap().to_ascii_lowercase();
            let group = value["apiVersion"]
                .as_str()
                .unwrap()
                .split_once('/')
                .map_or(String::new(), |(g, _)| format!(".{g}"));
            let name = value["metadata"]["name"].as_str().unwrap();
            format!("{kind}{group}/{name}")
        })
        .collect();
    assert!(objects.len() >= 10, "{objects:?}");
    objects
}

/// kubectl's report line for each object, and no line about anything else.
fn report_lines<'a>(report: &'a str, objects: &[String]) -> BTreeMap<String, &'a str> {
    let mut lines = BTreeMap::new();
    for line in report.lines() {
        let object = objects
            .iter()
            .find(|o| line.starts_with(&format!("{o} ")))
            .unwrap_or_else(|| panic!("unexpected line {line:?} in:\n{report}"));
        lines.insert(object.clone(), &line[object.len() + 1..]);
    }
    for object in objects {
        assert!(
            lines.contains_key(object),
            "{object} not reported:\n{report}"
        );
    }
    lines
}

/// resourceVersion of every object deploy/ renders, read back from the server.
fn resource_versions(api: &RealApiServer) -> BTreeMap<String, String> {
    let list = ok(api
        .kubectl()
        .args(["get", "-o", "json", "-k"])
        .arg(deploy()));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                format!(
                    "{}/{}",
                    item["kind"].as_str().unwrap(),
                    item["metadata"]["name"].as_str().unwrap()
                ),
                item["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect()
}

/// What the in-process API server could not do (issue 16): kubectl's `create` subcommands send
/// protobuf bodies. Against the real server each one is created and reads back.
#[test]
fn kubectl_create_sends_protobuf_and_the_real_server_stores_it() {
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["secure.example".into()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();

    let creates: Vec<(Vec<String>, &str)> = vec![
        (vec!["namespace".into(), "x".into()], "namespace/x created"),
        (
            vec![
                "secret".into(),
                "tls".into(),
                "t".into(),
                format!("--cert={}", cert.display()),
                format!("--key={}", key.display()),
            ],
            "secret/t created",
        ),
        (
            vec!["configmap".into(), "c".into(), "--from-literal=a=b".into()],
            "configmap/c created",
        ),
        (
            vec!["serviceaccount".into(), "s".into()],
            "serviceaccount/s created",
        ),
        (
            vec![
                "ingress".into(),
                "i".into(),
                "--rule=secure.example/=svc:80,tls=t".into(),
            ],
            "ingress.networking.k8s.io/i created",
        ),
    ];
    for (args, expected) in creates {
        let mut cmd = api.kubectl();
        cmd.args(["-v=8", "create"]).args(&args);
        if args[0] != "namespace" {
            cmd.args(["-n", "x"]);
        }
        let out = run(&mut cmd);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
        assert_eq!(stdout.trim(), expected);
        // kubectl -v=8 shows the request's headers: the body it sent was protobuf.
        let post = stderr
            .split_once("\"Request\" verb=\"POST\"")
            .or_else(|| stderr.split_once("POST https://"))
            .unwrap_or_else(|| panic!("no POST in kubectl's log:\n{stderr}"))
            .1;
        assert!(
            post.contains("Content-Type: application/vnd.kubernetes.protobuf"),
            "{args:?} sent no protobuf:\n{stderr}"
        );
    }
    let secret = ok(api.kubectl().args([
        "-n",
        "x",
        "get",
        "secret",
        "t",
        "-o",
        "jsonpath={.type} {.data.tls\\.crt}",
    ]));
    let (kind, data) = secret.split_once(' ').unwrap();
    assert_eq!(kind, "kubernetes.io/tls");
    assert!(!data.is_empty());
    let tls = ok(api.kubectl().args([
        "-n",
        "x",
        "get",
        "ingress",
        "i",
        "-o",
        "jsonpath={.spec.tls[0].secretName} {.spec.rules[0].host}",
    ]));
    assert_eq!(tls, "t secure.example");
}

/// `kubectl apply -k deploy/` as a user runs it: every object created, and a second apply
/// writes nothing. kubectl still says "configured" for two objects because its three-way
/// patch is never empty for them, though the server changes nothing: the
/// PodDisruptionBudget's `selector` is `patchStrategy: replace` (always sent whole) and the
/// StatefulSet's `volumeClaimTemplates` is a replaced list that the server defaults
/// (apiVersion, kind, volumeMode, status). The unchanged resourceVersions prove it.
#[test]
fn client_side_apply_of_deploy_is_admitted_and_a_second_apply_writes_nothing() {
    let api = RealApiServer::start();
    let objects = deploy_objects();
    let first = ok(api.kubectl().args(["apply", "-k"]).arg(deploy()));
    for (object, outcome) in report_lines(&first, &objects) {
        assert_eq!(outcome, "created", "{object}:\n{first}");
    }
    let before = resource_versions(&api);
    assert_eq!(before.len(), objects.len(), "{before:?}");

    let second = ok(api.kubectl().args(["apply", "-k"]).arg(deploy()));
    for (object, outcome) in report_lines(&second, &objects) {
        let patch_never_empty =
            object == "statefulset.apps/portico" || object == "poddisruptionbudget.policy/portico";
        let expected = if patch_never_empty {
            "configured"
        } else {
            "unchanged"
        };
        assert_eq!(outcome, expected, "{object}:\n{second}");
    }
    assert_eq!(resource_versions(&api), before, "the second apply wrote");
}

/// `--dry-run=server` admits every object through the real defaulting, validation and
/// admission; `--server-side` applies them all; a second server-side apply writes nothing and
/// `kubectl diff --server-side` finds no difference.
#[test]
fn server_dry_run_and_server_side_apply_of_deploy_admit_every_object() {
    let api = RealApiServer::start();
    let objects = deploy_objects();
    // A dry run creates nothing, so the namespaced objects need their namespace to exist
    // already, as in any real cluster.
    ok(api
        .kubectl()
        .args(["create", "namespace", "portico-system"]));
    let dry = ok(api
        .kubectl()
        .args(["apply", "--dry-run=server", "-k"])
        .arg(deploy()));
    for (object, outcome) in report_lines(&dry, &objects) {
        let expected = if object == "namespace/portico-system" {
            "configured (server dry run)"
        } else {
            "created (server dry run)"
        };
        assert_eq!(outcome, expected, "{object}:\n{dry}");
    }
    // Nothing but the namespace exists after the dry run.
    let none = run(api
        .kubectl()
        .args(["get", "-n", "portico-system", "statefulset", "portico"]));
    assert!(!none.status.success());

    let applied = ok(api
        .kubectl()
        .args(["apply", "--server-side", "-k"])
        .arg(deploy()));
    for (object, outcome) in report_lines(&applied, &objects) {
        assert_eq!(outcome, "serverside-applied", "{object}:\n{applied}");
    }
    let before = resource_versions(&api);
    assert_eq!(before.len(), objects.len(), "{before:?}");
    ok(api
        .kubectl()
        .args(["apply", "--server-side", "-k"])
        .arg(deploy()));
    assert_eq!(resource_versions(&api), before, "the second apply wrote");
    let diff = run(api
        .kubectl()
        .args(["diff", "--server-side", "-k"])
        .arg(deploy()));
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff found differences:\n{}\n{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
}

/// The control port kube-testenv gives tests: the API server stops and starts again on the same
/// address with etcd's data intact, and a compaction makes older resourceVersions 410 Gone.
#[test]
fn the_real_api_server_restarts_over_the_same_etcd_and_compaction_expires_old_versions() {
    let api = RealApiServer::start();
    ok(api.kubectl().args(["create", "namespace", "kept"]));
    let version = ok(api.kubectl().args([
        "get",
        "namespace",
        "kept",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]));

    api.stop_apiserver();
    let down = run(api.kubectl().args(["get", "namespace", "kept"]));
    assert!(!down.status.success(), "answered while stopped");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("connection to the server"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    api.start_apiserver();
    ok(api.kubectl().args(["get", "namespace", "kept"]));

    // A list at exactly that version is served until etcd is compacted past it.
    let exact = format!("/api/v1/namespaces?resourceVersion={version}&resourceVersionMatch=Exact");
    ok(api.kubectl().args(["get", "--raw", &exact]));
    ok(api.kubectl().args(["create", "namespace", "later"]));
    let revision = api.compact_etcd();
    assert!(revision > version.parse::<i64>().unwrap());
    // The API server learns of the compaction through compact_rev_key, as from its own
    // compactor; its watch cache drops older snapshots on its next poll (every 15 s).
    let stderr = wait_until(
        "410 for the compacted version",
        Duration::from_secs(40),
        || {
            let gone = run(api.kubectl().args(["get", "--raw", &exact]));
            (!gone.status.success()).then(|| String::from_utf8_lossy(&gone.stderr).into_owned())
        },
    );
    assert!(
        stderr.contains("Expired") || stderr.contains("too old"),
        "{stderr}"
    );
}

/// The first non-loopback IPv4 address of this machine. The real API server refuses loopback
/// addresses in EndpointSlices (and in status), so the backend listens on this one.
fn host_ip() -> String {
    let out = ok(Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]));
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no global IPv4 address on this machine:\n{out}"))
        .to_owned()
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn apply_yaml(api: &RealApiServer, dir: &Path, name: &str, yaml: &str) {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    ok(api
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&file));
}

/// One replica with deploy/'s ServiceAccount token (so deploy/'s ClusterRole and Role, not the
/// admin, decide what it may do) serves the minimal Ingress from the Kubernetes docs and
/// writes its status; its log holds no 403.
#[test]
fn a_replica_as_the_deploy_service_account_serves_the_docs_minimal_ingress() {
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    ok(api
        .kubectl()
        .args(["apply", "--server-side", "-k"])
        .arg(deploy()));
    let token = ok(api.kubectl().args([
        "-n",
        "portico-system",
        "create",
        "token",
        "portico",
        "--duration=1h",
    ]));
    let kubeconfig = dir.path().join("portico-sa.kubeconfig");
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

    // The backend: `portico echo` on this machine's address, a Service without a selector and
    // the EndpointSlice an endpoints controller would have written.
    let ip = host_ip();
    let echo_port = free_port();
    let _echo = KillOnDrop(
        Command::new(PORTICO)
            .args(["echo", "--service", "test", "--namespace", "default"])
            .args(["--listen", &format!("{ip}:{echo_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    apply_yaml(
        &api,
        dir.path(),
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

    let ca = write_ca(dir.path());
    let (raft, admin, http) = (free_port(), free_port(), free_port());
    let admin_addr = format!("127.0.0.1:{admin}");
    let log = dir.path().join("replica.log");
    let mut replica = KillOnDrop(
        Command::new(PORTICO)
            .args([
                "run",
                "--pod-name",
                "portico-0",
                "--namespace",
                "portico-system",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
            .arg("--raft-ca")
            .arg(&ca.0)
            .arg("--raft-ca-key")
            .arg(&ca.1)
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--https", "127.0.0.1:0", "--http3", "127.0.0.1:0"])
            .args(["--admin", &admin_addr, "--log-format", "json"])
            .args(["--publish-status-address", &ip])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("/readyz names the leader", Duration::from_secs(60), || {
        if let Ok(Some(status)) = replica.0.try_wait() {
            panic!("replica exited ({status}):\n{}", logs());
        }
        get(&admin_addr, "/readyz")
            .filter(|(code, body)| *code == 200 && body.contains("controller: leader"))
    });

    // https://kubernetes.io/docs/concepts/services-networking/ingress/#the-ingress-resource
    apply_yaml(
        &api,
        dir.path(),
        "minimal-ingress.yaml",
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
"#,
    );
    let http_addr = format!("127.0.0.1:{http}");
    let (_, body) = wait_until("/testpath served", Duration::from_secs(30), || {
        get(&http_addr, "/testpath").filter(|(code, _)| *code == 200)
    });
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["service"], "test", "{echo}");
    assert_eq!(echo["path"], "/", "rewrite-target: {echo}");
    assert_eq!(get(&http_addr, "/other").unwrap().0, 404);
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

    let logs = logs();
    assert!(
        !logs.contains("403") && !logs.to_ascii_lowercase().contains("forbidden"),
        "the replica met a 403 with deploy/'s RBAC:\n{logs}"
    );
}

/// `portico local --kubeconfig`: the three replicas and the demo run against the real API
/// server instead of the in-process one. The demo backends listen on this machine's
/// non-loopback address (one EndpointSlice per backend port, since the real server refuses
/// loopback addresses); every replica serves the demo Ingresses from both backends, status is
/// written, and SIGTERM stops everything.
#[test]
fn portico_local_runs_its_replicas_against_a_real_api_server() {
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("local.log");
    let mut local = KillOnDrop(
        Command::new(PORTICO)
            .args(["local", "--ready-timeout", "240", "--state-dir"])
            .arg(&state)
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("local.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let info: serde_json::Value = wait_until("cluster.json", Duration::from_secs(300), || {
        if let Ok(Some(status)) = local.0.try_wait() {
            panic!(
                "portico local exited ({status}):\n{}",
                std::fs::read_to_string(dir.path().join("local.err")).unwrap_or_default()
            );
        }
        serde_json::from_slice(&std::fs::read(state.join("cluster.json")).ok()?).ok()
    });
    assert_eq!(
        info["apiserver"].as_str().unwrap().trim_end_matches('/'),
        api.server
    );
    assert_eq!(
        info["kubeconfig"].as_str().unwrap(),
        api.kubeconfig.to_str().unwrap()
    );
    assert!(
        !state.join("apiserver").exists(),
        "an in-process API server was started"
    );
    let ip = host_ip();
    let backends = info["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 4);
    for backend in backends {
        assert!(
            backend["addr"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{ip}:")),
            "{backend}"
        );
    }
    let slices = ok(api.kubectl().args([
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=test",
        "-o",
        "jsonpath={range .items[*]}{.endpoints[0].addresses[0]} {end}",
    ]));
    assert_eq!(slices.split_whitespace().count(), 2, "{slices}");

    let replicas = info["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3);
    for replica in replicas {
        let http = replica["http"].as_str().unwrap();
        let mut pods = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let (code, body) = get(http, "/testpath").unwrap();
            assert_eq!(code, 200, "{body}");
            let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(echo["service"], "test", "{echo}");
            pods.insert(echo["pod"].as_str().unwrap().to_owned());
        }
        assert_eq!(pods.len(), 2, "both backends of test from {http}: {pods:?}");
    }
    let status = ok(api.kubectl().args([
        "get",
        "ingress",
        "minimal-ingress",
        "-o",
        "jsonpath={.status.loadBalancer.ingress[0].ip}",
    ]));
    assert_eq!(status, "127.0.0.1");

    let pid = rustix::process::Pid::from_raw(local.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let exit = wait_until("portico local to exit", Duration::from_secs(60), || {
        local.0.try_wait().unwrap()
    });
    assert!(exit.success(), "{exit}");
    for entry in replicas.iter().chain(backends) {
        let pid = entry["pid"].as_i64().unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "{entry} still running"
        );
    }
    // The Lease was released by the replicas on their way out.
    let holder = ok(api.kubectl().args([
        "get",
        "lease",
        "portico-leader",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]));
    assert_eq!(holder, "");
}
