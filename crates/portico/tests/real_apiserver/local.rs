//! `portico local --kubeconfig` against the real API server.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::real_apiserver::RealApiServer;
use crate::common::{get, wait_until};
use crate::{KillOnDrop, PORTICO, host_ip, ok};

/// `portico local --kubeconfig`: the three replicas and the demo run against the real API
/// server instead of the in-process one. The demo backends listen on this machine's
/// non-loopback address (one EndpointSlice per backend port, since the real server refuses
/// loopback addresses); every replica serves the demo Ingresses from both backends, status is
/// written, and SIGTERM stops everything.
#[test]
fn portico_local_runs_its_replicas_against_a_real_api_server() {
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ip = host_ip();
    let state = dir.path().join("state");
    let log = dir.path().join("local.log");
    let mut local = KillOnDrop(
        Command::new(PORTICO)
            .args(["local", "--ready-timeout", "240", "--state-dir"])
            .arg(&state)
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            // The default is the first non-loopback address; on a machine where other tests
            // (the chaos harness) add and remove bridges, name the lasting one.
            .args(["--backend-address", &ip])
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
