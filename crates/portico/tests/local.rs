//! End-to-end: `portico local` as a user runs it, driven with real clients (curl, kubectl,
//! aioquic for HTTP/3), then stopped with SIGINT; and a SIGKILLed `portico local` leaves
//! no process behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico_test_support::poll_until_blocking;
use portico_test_support::process::Listening;
use serde_json::Value;

const PORTICO: &str = env!("CARGO_BIN_EXE_portico");

/// Kills `portico local` and everything listed in its cluster.json if the test fails.
struct LocalGuard {
    child: Option<Child>,
    pids: Vec<i32>,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        for &pid in &self.pids {
            signal(pid, rustix::process::Signal::KILL);
        }
    }
}

fn signal(pid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn start_local(state: &Path) -> LocalGuard {
    let log = std::fs::File::create(state.with_extension("log")).unwrap();
    let child = Command::new(PORTICO)
        .args(["local", "--state-dir"])
        .arg(state)
        .args(["--ready-timeout", "240"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn portico local");
    LocalGuard {
        child: Some(child),
        pids: Vec::new(),
    }
}

fn wait_for_cluster(state: &Path, guard: &mut LocalGuard) -> Value {
    let path = state.join("cluster.json");
    let info: Value = poll_until_blocking("cluster.json", Duration::from_secs(300), || {
        if let Some(status) = guard.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "portico local exited early ({status}):\n{}",
                std::fs::read_to_string(state.with_extension("log")).unwrap_or_default()
            );
        }
        serde_json::from_slice(&std::fs::read(&path).ok()?).ok()
    })
    .unwrap();
    for entry in info["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .chain(info["backends"].as_array().unwrap())
    {
        guard.pids.push(entry["pid"].as_i64().unwrap() as i32);
    }
    info
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubectl(kubeconfig: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", kubeconfig).args(args);
    let out = match stdin {
        None => cmd.output().unwrap(),
        Some(input) => {
            portico_test_support::process::output_with_stdin(&mut cmd, input.as_bytes()).unwrap()
        }
    };
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET with curl; returns (HTTP version, status, parsed echo body).
fn curl(extra: &[&str], url: &str) -> Option<(String, u16, Value)> {
    let (ok, out, _) = run(Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(extra)
        .arg(url));
    if !ok {
        return None;
    }
    let (body, meta) = out.rsplit_once('\n')?;
    let (version, code) = meta.split_once(' ')?;
    Some((
        version.to_owned(),
        code.parse().ok()?,
        serde_json::from_str(body).unwrap_or(Value::Null),
    ))
}

fn venv_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tests/setup",
        python.display()
    );
    python
}

fn h3_get(addr: &str, host: &str, path: &str, ca: Option<&str>) -> Option<(u16, Value)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h3get.py");
    let mut cmd = Command::new(venv_python());
    cmd.arg(script).args([addr, host, path]);
    if let Some(ca) = ca {
        cmd.arg(ca);
    }
    let (ok, out, _) = run(&mut cmd);
    if !ok {
        return None;
    }
    let answer: Value = serde_json::from_str(out.trim()).ok()?;
    let body = serde_json::from_str(answer["body"].as_str()?).unwrap_or(Value::Null);
    Some((answer["status"].as_u64()? as u16, body))
}

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

fn ingress(name: &str, host: &str, path: &str, service: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
spec:
  ingressClassName: portico
  rules:
  - host: {host}
    http:
      paths:
      - path: {path}
        pathType: Prefix
        backend:
          service:
            name: {service}
            port:
              number: 80
"#
    )
}

/// A child's log without its ANSI colours.
fn plain_log(log: &str) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The last `listening` line of the child whose log is `log`, once written; and that the child
/// took the sockets `names` handed over (its socket-activation line).
fn listening_in_log(log: &str, names: &str) -> Listening {
    let listening = poll_until_blocking(
        format!("the listening line in {log}"),
        Duration::from_secs(10),
        || {
            plain_log(log)
                .lines()
                .rev()
                .find(|l| Listening::is_listening(l))
                .map(Listening::parse)
        },
    )
    .unwrap();
    let names = format!("names={names}");
    let plain = plain_log(log);
    assert!(
        plain
            .lines()
            .any(|l| l.contains("sockets handed over (socket activation)")
                && l.split_whitespace().any(|field| field == names)),
        "{log} lacks its sockets handed over ({names}):\n{plain}"
    );
    listening
}

/// Every child serves exactly the addresses cluster.json (and the walk-through) names: the
/// sockets `portico local` bound and handed over.
fn assert_served_as_printed(info: &Value) {
    let addr = |v: &Value| v.as_str().unwrap().parse::<std::net::SocketAddr>().unwrap();
    for r in info["replicas"].as_array().unwrap() {
        let served = listening_in_log(r["log"].as_str().unwrap(), "raft:http:https:http3:admin");
        assert_eq!(served.http, [addr(&r["http"])], "{r}: {served:?}");
        assert_eq!(served.https, [addr(&r["https"])], "{r}: {served:?}");
        assert_eq!(served.h3, [addr(&r["http3"])], "{r}: {served:?}");
        assert_eq!(served.admin, [addr(&r["admin"])], "{r}: {served:?}");
        assert_eq!(served.raft, Some(addr(&r["raft"])), "{r}: {served:?}");
    }
    for b in info["backends"].as_array().unwrap() {
        let served = listening_in_log(b["log"].as_str().unwrap(), "listen");
        assert_eq!(served.addr, Some(addr(&b["addr"])), "{b}: {served:?}");
    }
}

/// Waits until `host`+`path` on `http` answers 200 from `service` over HTTP/1.1.
fn wait_served(http: &str, host: &str, path: &str, service: &str, within: Duration) {
    let resolve = format!("{host}:{}:127.0.0.1", port(http));
    let url = format!("http://{host}:{}{path}", port(http));
    poll_until_blocking(format!("{url} on {http}"), within, || {
        let (_, code, body) = curl(&["--resolve", &resolve], &url)?;
        (code == 200 && body["service"] == service).then_some(())
    })
    .unwrap();
}

#[test]
fn local_cluster_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut guard = start_local(&state);
    let info = wait_for_cluster(&state, &mut guard);
    let kubeconfig = info["kubeconfig"].as_str().unwrap().to_owned();
    let ca = info["ca_cert"].as_str().unwrap().to_owned();
    let replicas = info["replicas"].as_array().unwrap().clone();
    assert_eq!(replicas.len(), 3);
    for key in ["name", "pid", "http", "https", "http3", "admin"] {
        assert!(
            replicas.iter().all(|r| !r[key].is_null()),
            "replicas lack {key}: {info}"
        );
    }
    assert!(
        info["apiserver"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert_served_as_printed(&info);

    // The demo works as printed: the docs' Ingress with its rewrite, round-robin over both
    // endpoints, and the TLS host with the demo CA.
    let http0 = replicas[0]["http"].as_str().unwrap();
    let mut pods = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (_, code, body) =
            curl(&[], &format!("http://{http0}/testpath/x")).expect("curl /testpath");
        assert_eq!(code, 200);
        // As ingress-nginx: `rewrite-target: /` without capture groups replaces the path.
        assert_eq!(body["path"], "/", "rewrite-target / applies: {body}");
        pods.insert(body["pod"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        pods.len(),
        2,
        "round-robin reaches both endpoints: {pods:?}"
    );

    // A new Ingress applied with kubectl is served by every replica over HTTP/1.1, HTTP/2
    // and HTTP/3.
    let applied = Instant::now();
    kubectl(
        &kubeconfig,
        &["apply", "-f", "-"],
        Some(&ingress("e2e", "e2e.portico.test", "/e2e", "web")),
    );
    for r in &replicas {
        wait_served(
            r["http"].as_str().unwrap(),
            "e2e.portico.test",
            "/e2e",
            "web",
            Duration::from_secs(30),
        );
    }
    eprintln!(
        "new Ingress served by all replicas after {:?}",
        applied.elapsed()
    );
    for r in &replicas {
        let http = r["http"].as_str().unwrap();
        let resolve = format!("e2e.portico.test:{}:127.0.0.1", port(http));
        let url = format!("http://e2e.portico.test:{}/e2e/h1", port(http));
        let (version, code, body) = curl(&["--http1.1", "--resolve", &resolve], &url).unwrap();
        assert_eq!((version.as_str(), code), ("1.1", 200), "{body}");
        assert_eq!(body["service"], "web");
        let (version, code, body) =
            curl(&["--http2-prior-knowledge", "--resolve", &resolve], &url).unwrap();
        assert_eq!((version.as_str(), code), ("2", 200), "{body}");
        assert_eq!(body["service"], "web");

        // HTTPS with HTTP/2 (ALPN) on the demo TLS host, verified against the demo CA.
        let https = r["https"].as_str().unwrap();
        let resolve = format!("secure.portico.test:{}:127.0.0.1", port(https));
        let url = format!("https://secure.portico.test:{}/", port(https));
        let (version, code, body) =
            curl(&["--http2", "--cacert", &ca, "--resolve", &resolve], &url).unwrap();
        assert_eq!((version.as_str(), code), ("2", 200), "{body}");
        assert_eq!(body["service"], "web");

        let http3 = r["http3"].as_str().unwrap();
        let (code, body) = poll_until_blocking("HTTP/3 answer", Duration::from_secs(20), || {
            h3_get(http3, "e2e.portico.test", "/e2e/h3", None)
        })
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["service"], "web");
        let (code, body) =
            h3_get(http3, "secure.portico.test", "/", Some(&ca)).expect("HTTP/3 with the demo CA");
        assert_eq!(code, 200, "{body}");
    }

    // Status written by the leader, seen through kubectl.
    poll_until_blocking("Ingress status", Duration::from_secs(30), || {
        let ip = kubectl(
            &kubeconfig,
            &[
                "get",
                "ingress",
                "e2e",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ],
            None,
        );
        (ip == "127.0.0.1").then_some(())
    })
    .unwrap();

    // `portico routes` prints the committed table.
    let (ok, out, err) = run(Command::new(PORTICO).args([
        "routes",
        "--admin",
        replicas[1]["admin"].as_str().unwrap(),
    ]));
    assert!(ok, "{err}");
    assert!(
        out.contains("e2e.portico.test") && out.contains("default/e2e"),
        "{out}"
    );
    let (ok, out, err) = run(Command::new(PORTICO).args([
        "routes",
        "--json",
        "--admin",
        replicas[2]["admin"].as_str().unwrap(),
    ]));
    assert!(ok, "{err}");
    let table: Value = serde_json::from_str(&out).unwrap();
    assert!(table["version"].as_u64().unwrap() > 0);
    let tls_route = table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "secure.portico.test")
        .expect("the TLS host is routed");
    assert_eq!(tls_route["tls"]["secret"], "default/portico-demo-tls");
    assert!(
        !out.contains("PRIVATE KEY"),
        "no key material in /debug/routes"
    );

    // Kill one replica (SIGKILL): the other two keep serving, and still take new Ingresses
    // (the leader may be the one killed: Raft and the Lease move on).
    let victim = replicas[0]["pid"].as_i64().unwrap() as i32;
    signal(victim, rustix::process::Signal::KILL);
    poll_until_blocking(
        "the killed replica to be gone",
        Duration::from_secs(10),
        || (!alive(victim)).then_some(()),
    )
    .unwrap();
    for r in &replicas[1..] {
        wait_served(
            r["http"].as_str().unwrap(),
            "e2e.portico.test",
            "/e2e",
            "web",
            Duration::from_secs(5),
        );
    }
    kubectl(
        &kubeconfig,
        &["apply", "-f", "-"],
        Some(&ingress("after-kill", "after.portico.test", "/", "test")),
    );
    for r in &replicas[1..] {
        wait_served(
            r["http"].as_str().unwrap(),
            "after.portico.test",
            "/",
            "test",
            Duration::from_secs(90),
        );
    }

    // Ctrl-C: everything stops, nothing is left behind.
    let mut child = guard.child.take().unwrap();
    signal(child.id() as i32, rustix::process::Signal::INT);
    let status = poll_until_blocking("portico local to exit", Duration::from_secs(60), || {
        child.try_wait().unwrap()
    })
    .unwrap();
    assert!(status.success(), "portico local exited with {status}");
    for &pid in &guard.pids {
        poll_until_blocking(
            format!("pid {pid} to be gone"),
            Duration::from_secs(10),
            || (!alive(pid)).then_some(()),
        )
        .unwrap();
    }
    assert!(
        !state.join("cluster.json").exists(),
        "cluster.json is removed on exit"
    );

    // Restart over the same state, then SIGKILL `portico local`: its children die with it
    // (parent-death signal). The restarted cluster serves what was applied before.
    let mut guard = start_local(&state);
    let info = wait_for_cluster(&state, &mut guard);
    // The kept ports are bound again by `portico local` and handed over as before.
    assert_served_as_printed(&info);
    let http = info["replicas"][2]["http"].as_str().unwrap().to_owned();
    wait_served(
        &http,
        "after.portico.test",
        "/",
        "test",
        Duration::from_secs(30),
    );
    let mut child = guard.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for &pid in &guard.pids {
        poll_until_blocking(
            format!("pid {pid} to die with its parent"),
            Duration::from_secs(10),
            || (!alive(pid)).then_some(()),
        )
        .unwrap();
    }
}
