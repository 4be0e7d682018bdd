//! `portico run` alone: one replica against the in-process API server. Checks the admin
//! endpoints, readiness (false until a committed table is applied, false while draining),
//! and that SIGTERM releases the Lease before the process exits.

mod common;

use std::process::Command;
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
/// (here one named `admin`) stops the start with an error naming it, instead of being left
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
        .socket("admin", &sockets[0])
        .spawn("portico-0");
    let status = child.wait_blocking(Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "{status}");
    let output = process::block_on(child.output().ended(Duration::from_secs(10)))
        .unwrap()
        .join("\n");
    assert!(
        output.contains(
            r#"socket "admin" handed over (LISTEN_FDNAMES) is not one portico run serves"#
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
