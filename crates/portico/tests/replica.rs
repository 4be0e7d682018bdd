//! `portico run` alone: one replica against the in-process API server. Checks the admin
//! endpoints, readiness (false until a committed table is applied, false while draining),
//! and that SIGTERM releases the Lease before the process exits.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::portico_run::{self, LOOPBACK_PORT_0, PORTICO};
use common::{InProcessApi, get, wait_until};
use portico_test_support::TestCa;
use portico_test_support::process::{self, Program, Signal};

#[test]
fn help_names_every_environment_variable() {
    let out = Command::new(PORTICO)
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for env in [
        "POD_NAME",
        "POD_NAMESPACE",
        "KUBECONFIG",
        "PORTICO_DATA_DIR",
        "PORTICO_RAFT_CA",
        "PORTICO_RAFT_CA_KEY",
        "PORTICO_INITIAL_MEMBERS",
        "PORTICO_HTTP",
        "PORTICO_HTTPS",
        "PORTICO_HTTP3",
        "PORTICO_ADMIN",
        "PORTICO_LOG_FORMAT",
        "PORTICO_ACCESS_LOG",
        "PORTICO_PUBLISH_STATUS_ADDRESS",
        "PORTICO_LEASE_DURATION_SECONDS",
        "PORTICO_RENEW_DEADLINE_SECONDS",
        "PORTICO_RETRY_PERIOD_SECONDS",
    ] {
        assert!(
            help.contains(&format!("[env: {env}")),
            "{env} missing from:\n{help}"
        );
    }
    for sub in ["run", "local", "routes", "echo"] {
        let out = Command::new(PORTICO)
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub} --help");
    }
}

#[test]
fn bad_flags_are_clear_errors() {
    let out = Command::new(PORTICO)
        .args([
            "run",
            "--pod-name",
            "p-0",
            "--raft-ca",
            "/nonexistent/ca.crt",
            "--raft-ca-key",
            "/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ca.crt"), "{err}");
    // Lease timings that would let a deposed leader act after its successor started.
    let out = Command::new(PORTICO)
        .args(["run", "--pod-name", "p-0", "--raft-ca", "/x"])
        .args([
            "--lease-duration-seconds",
            "5",
            "--renew-deadline-seconds",
            "4",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("renew_deadline must be below lease_duration"),
        "{err}"
    );
    let out = Command::new(PORTICO)
        .args(["run", "--pod-name", "p-0", "--raft-ca", "/x"])
        .arg("--retry-period-seconds=-1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--retry-period-seconds -1"), "{err}");
    let out = Command::new(PORTICO)
        .args(["routes", "--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[test]
fn one_replica_serves_admin_and_releases_the_lease_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let api = InProcessApi::start(dir.path());
    let kubeconfig = api.kubeconfig.clone();

    // A CA given as files; the replica signs its own certificate at first boot. Every
    // listener on port 0, read back from the listening line; Raft on the socket handed over.
    let program = portico_run::single(dir.path(), &kubeconfig, "default")
        .args(["--admin", "127.0.0.1:0"])
        .args(["--shutdown-delay-seconds", "6", "--access-log"]);
    let mut child = program.spawn("portico-0");
    let listening = portico_run::listening(&child);
    assert_eq!(
        listening.raft,
        program.handed_over("raft"),
        "Raft served on the socket handed over"
    );
    assert!(!listening.h3.is_empty(), "{listening:?}");
    let http_addr = listening.http().to_string();
    let admin_addr = listening.admin();

    // Ready once the (empty) committed table is applied.
    wait_until("/readyz 200", Duration::from_secs(60), || {
        get(&admin_addr, "/readyz").filter(|(code, _)| *code == 200)
    });
    assert_eq!(get(&admin_addr, "/healthz").unwrap().0, 200);
    // One data-plane request (no Ingress yet: 404), counted and logged without its query.
    assert_eq!(
        get(&http_addr, "/observed/path?token=s3cr3t").unwrap().0,
        404
    );
    let (code, metrics) = get(&admin_addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "portico_ready 1",
        "portico_table_version",
        "portico_raft_is_leader 1",
        "portico_proxy_requests_total{protocol=\"HTTP/1.1\",code_class=\"4xx\"} 1",
        "portico_proxy_upstream_errors_total 0",
        "portico_proxy_request_duration_seconds_count 1",
        "portico_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let (code, routes) = get(&admin_addr, "/debug/routes").unwrap();
    assert_eq!(code, 200);
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert!(routes["version"].as_u64().unwrap() >= 1, "{routes}");
    assert_eq!(get(&admin_addr, "/nope").unwrap().0, 404);
    assert!(dir.path().join("data/tls/replica.crt").exists());

    // The replica is the leader (the only member): it holds the Lease.
    let holder = || {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args([
                "get",
                "lease",
                "portico-leader",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until("the Lease", Duration::from_secs(30), || {
        holder().starts_with("portico-0").then_some(())
    });
    // Readiness shows the controller's role.
    wait_until("/readyz names the leader", Duration::from_secs(10), || {
        get(&admin_addr, "/readyz")
            .filter(|(code, body)| *code == 200 && body.contains("controller: leader (epoch "))
    });

    // SIGTERM: not ready during the shutdown delay, then the Lease is released, then exit.
    child.signal(Signal::TERM);
    let (code, body) = wait_until("/readyz 503", Duration::from_secs(6), || {
        get(&admin_addr, "/readyz").filter(|(code, _)| *code == 503)
    });
    assert_eq!(code, 503);
    assert!(body.starts_with("draining\n"), "{body}");
    // The Lease is released at once, not after the load balancers' delay: the replica is
    // still draining (and alive) when it is free.
    wait_until("the Lease released", Duration::from_secs(5), || {
        holder().is_empty().then_some(())
    });
    assert_eq!(get(&admin_addr, "/readyz").unwrap().0, 503);
    assert_eq!(
        get(&admin_addr, "/healthz").unwrap().0,
        200,
        "alive while draining"
    );
    let status = child.wait_blocking(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(holder(), "", "the Lease is released on shutdown");
    let logs = process::block_on(child.output().ended(Duration::from_secs(10)))
        .unwrap()
        .join("\n");
    assert!(
        logs.lines().all(|l| l.starts_with('{')),
        "JSON logs:\n{logs}"
    );
    assert!(!logs.contains("PRIVATE KEY"));
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "portico::access")
        .collect();
    assert_eq!(access.len(), 1, "one access line:\n{logs}");
    assert_eq!(access[0]["path"], "/observed/path", "{}", access[0]);
    assert_eq!(access[0]["status"], 404, "{}", access[0]);
    assert_eq!(access[0]["protocol"], "HTTP/1.1", "{}", access[0]);
    assert!(!logs.contains("s3cr3t"), "query string logged:\n{logs}");
    api.shutdown();
}

/// Socket activation fails closed: a socket handed over that `portico run` does not serve
/// (here one named `metrics`) stops the start with an error naming it, instead of being left
/// open and unserved.
#[test]
fn a_socket_handed_over_that_run_does_not_serve_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("portico test CA").write(dir.path());
    let sockets = process::raft_listeners(1);
    let mut child = Program::new(PORTICO)
        .args(["run", "--pod-name", "portico-0", "--raft-ca"])
        .arg(&ca.0)
        .arg("--raft-ca-key")
        .arg(&ca.1)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .socket("metrics", &sockets[0])
        .spawn("portico-0");
    let status = child.wait_blocking(Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "{status}");
    let output = process::block_on(child.output().ended(Duration::from_secs(10)))
        .unwrap()
        .join("\n");
    assert!(
        output.contains(
            r#"socket "metrics" handed over (LISTEN_FDNAMES) is not one portico run serves"#
        ),
        "{output}"
    );
}

/// A socket handed to another process (`LISTEN_PID` names someone else, as when a parent
/// passes its environment on) is not taken: the replica binds `--raft-listen` itself.
#[test]
fn a_socket_meant_for_another_process_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let api = InProcessApi::start(dir.path());
    let ca = TestCa::new("portico test CA").write(dir.path());
    let held = process::raft_listeners(1);
    let child = Program::new(PORTICO)
        .args(["run", "--pod-name", "portico-0", "--namespace", "default"])
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--raft-ca")
        .arg(&ca.0)
        .arg("--raft-ca-key")
        .arg(&ca.1)
        .args(["--raft-listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(LOOPBACK_PORT_0)
        .args(["--log-format", "json"])
        .socket("raft", &held[0])
        .env("LISTEN_PID", "1")
        .spawn("portico-0");
    let listening = portico_run::listening(&child);
    let raft = listening.raft.expect("a Raft address");
    assert_ne!(raft, held[0].local_addr().unwrap(), "took another's socket");
    assert!(raft.ip().is_loopback() && raft.port() != 0, "{raft}");
}

/// A TCP listener and a UDP socket on one loopback port (HTTPS and HTTP/3 share it).
fn tcp_and_udp_on_one_port() -> (Arc<TcpListener>, Arc<UdpSocket>) {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        if let Ok(udp) = UdpSocket::bind(tcp.local_addr().unwrap()) {
            return (Arc::new(tcp), Arc::new(udp));
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}

/// curl (a client we did not write): (HTTP version, status, Alt-Svc header) of a GET.
fn curl(extra: &[&str], url: &str) -> (String, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code} %header{alt-svc}"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {extra:?} {url}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parts = text.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap(), parts.next().unwrap());
    (
        version.to_owned(),
        code.parse().unwrap(),
        parts.next().unwrap_or_default().to_owned(),
    )
}

/// One HTTP/3 GET with aioquic (tests/h3get.py, no certificate check): its status.
fn h3_status(addr: SocketAddr) -> Option<u16> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = manifest.join("../../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tests/setup",
        python.display()
    );
    let out = Command::new(python)
        .arg(manifest.join("tests/h3get.py"))
        .args([&addr.to_string(), "h3.portico.test", "/"])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    answer["status"].as_u64().map(|s| s as u16)
}

/// Socket activation for every listener: the data plane (`http`, `https` TCP, `http3` UDP)
/// and `admin` are served on exactly the sockets handed over, which take precedence over the
/// flags (given here as port 0), and the `listening` line reports them. Real clients reach
/// each one: curl over HTTP/1.1, over TLS with HTTP/1.1 and HTTP/2, aioquic over HTTP/3.
#[test]
fn every_listener_is_served_on_the_socket_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let api = InProcessApi::start(dir.path());
    let http = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
    let (https, http3) = tcp_and_udp_on_one_port();
    let admin = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
    let program = portico_run::single(dir.path(), &api.kubeconfig, "default")
        .args(["--admin", "127.0.0.1:0"])
        .socket("http", &http)
        .socket("https", &https)
        .udp_socket("http3", &http3)
        .socket("admin", &admin);
    let child = program.spawn("portico-0");
    let listening = portico_run::listening(&child);
    let addr = |l: &TcpListener| l.local_addr().unwrap();
    assert_eq!(listening.http, [addr(&http)], "{listening:?}");
    assert_eq!(listening.https, [addr(&https)], "{listening:?}");
    assert_eq!(listening.h3, [http3.local_addr().unwrap()], "{listening:?}");
    assert_eq!(listening.admin, [addr(&admin)], "{listening:?}");
    assert_eq!(listening.raft, program.handed_over("raft"));

    // No Ingress yet: the data plane answers 404 on each, the admin listener its probes.
    let (version, code, _) = curl(&["--http1.1"], &format!("http://{}/", addr(&http)));
    assert_eq!((version.as_str(), code), ("1.1", 404));
    let port = addr(&https).port();
    let url = format!("https://h3.portico.test:{port}/");
    let resolve = format!("h3.portico.test:{port}:127.0.0.1");
    for (flag, expected) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (version, code, alt_svc) = curl(&["-k", flag, "--resolve", &resolve], &url);
        assert_eq!((version.as_str(), code), (expected, 404), "{flag}");
        // HTTP/3 is advertised on the UDP socket handed over.
        assert!(alt_svc.starts_with(&format!("h3=\":{port}\"")), "{alt_svc}");
    }
    let status = wait_until("an HTTP/3 answer", Duration::from_secs(20), || {
        h3_status(http3.local_addr().unwrap())
    });
    assert_eq!(status, 404);
    wait_until(
        "/healthz on the admin socket",
        Duration::from_secs(30),
        || get(&addr(&admin).to_string(), "/healthz").filter(|(code, _)| *code == 200),
    );
    drop(child);
    api.shutdown();
}

/// `portico run` with one socket handed over as `name` (nothing else), run to its exit: its
/// output.
fn start_refused(name: &str, tcp: Option<Arc<TcpListener>>, udp: Option<Arc<UdpSocket>>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("portico test CA").write(dir.path());
    let mut program = Program::new(PORTICO)
        .args(["run", "--pod-name", "portico-0", "--raft-ca"])
        .arg(&ca.0)
        .arg("--raft-ca-key")
        .arg(&ca.1)
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    if let Some(tcp) = &tcp {
        program = program.socket(name, tcp);
    }
    if let Some(udp) = &udp {
        program = program.udp_socket(name, udp);
    }
    let mut child = program.spawn("portico-0");
    let status = child.wait_blocking(Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "{status}");
    process::block_on(child.output().ended(Duration::from_secs(10)))
        .unwrap()
        .join("\n")
}

/// Socket activation checks each socket's type: a UDP socket handed over as `https` (TCP
/// expected) or a TCP listener as `http3` (UDP expected) stops the start with an error naming
/// it, instead of failing later or serving the wrong protocol.
#[test]
fn a_socket_of_the_wrong_type_stops_the_start() {
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let output = start_refused("https", None, Some(udp));
    assert!(
        output.contains("the socket named https (fd 3) is not a TCP socket"),
        "{output}"
    );
    let tcp = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
    let output = start_refused("http3", Some(tcp), None);
    assert!(
        output.contains("the socket named http3 (fd 3) is not a UDP socket"),
        "{output}"
    );
}
