//! M2: the admin listener is not an open door.
//!
//! An attacker in another Pod reaches the admin port. It must find: the admin listener bound
//! only to loopback and the Pod IP by default (not every interface); `/debug/routes` (every
//! namespace's hosts, Services and endpoints) refused to anyone but a loopback client, and
//! never showing key material; a slowloris connection (a request head trickled a byte at a
//! time, or nothing at all) closed after the header timeout; and connections past the limit
//! closed at once, while the probes keep answering once the attacker's connections are gone.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::deploy_rbac::{deploy_dir, kustomize};
use crate::common::portico_run;
use crate::common::{InProcessApi, get, wait_until};
use portico_test_support::process::{Listening, Process};
/// The admin listener's header timeout (`admin::HEADER_READ_TIMEOUT`) and connection limit.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 64;

/// Dropped in field order: the replica first, then the API server it talks to.
struct Replica {
    _process: Process,
    /// What it bound.
    listening: Listening,
    _api: InProcessApi,
    _dir: tempfile::TempDir,
}

/// This machine's address on its default route: a non-loopback address to connect from.
fn non_loopback_ip() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.1:9")
        .expect("a non-loopback interface (a default route) is needed");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

/// One replica against the in-process API server, with `admin` flags (their ports 0) and
/// `env`; ready on its first admin address.
fn start(admin: &[String], env: &[(&str, String)]) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let api = InProcessApi::start(dir.path());
    let kubeconfig = api.kubeconfig.clone();
    let mut program = portico_run::single(dir.path(), &kubeconfig, "default")
        .args(admin)
        .env_remove("POD_IP");
    for (key, value) in env {
        program = program.env(key, value);
    }
    let process = program.spawn("portico-0");
    let listening = portico_run::listening(&process);
    let ready_at = listening.admin();
    wait_until("/readyz 200", Duration::from_secs(60), || {
        get(&ready_at, "/readyz").filter(|(code, _)| *code == 200)
    });
    Replica {
        _process: process,
        listening,
        _api: api,
        _dir: dir,
    }
}

#[test]
fn by_default_the_admin_port_is_bound_to_loopback_and_the_pod_ip_only() {
    let ip = non_loopback_ip();
    // Port 0: each default listener gets a port of its own, and the listening line says which.
    let replica = start(
        &["--admin-port".into(), "0".into()],
        &[("POD_IP", ip.to_string())],
    );
    let admin = &replica.listening.admin;
    assert_eq!(admin.len(), 2, "loopback and the Pod IP: {admin:?}");
    assert!(admin[0].ip().is_loopback(), "{admin:?}");
    assert_eq!(admin[1].ip(), ip, "{admin:?}");
    let pod = admin[1].to_string();
    assert_eq!(get(&pod, "/healthz").map(|(c, _)| c), Some(200));
    assert_eq!(get(&pod, "/metrics").map(|(c, _)| c), Some(200));
    // Another local address: it would answer if the listener were on 0.0.0.0.
    let other = SocketAddr::new([127, 0, 0, 2].into(), admin[0].port());
    assert!(
        TcpStream::connect_timeout(&other, Duration::from_secs(2)).is_err(),
        "the admin port answers on {other}"
    );
}

#[test]
fn debug_routes_is_for_loopback_clients_only_and_holds_no_key_material() {
    let ip = non_loopback_ip();
    let replica = start(&["--admin".into(), format!("127.0.0.1:0,{ip}:0")], &[]);
    let (loopback, pod) = match &replica.listening.admin[..] {
        [loopback, pod] => (loopback.to_string(), pod.to_string()),
        other => panic!("two admin listeners, got {other:?}"),
    };
    // From the Pod network (our non-loopback address): refused; the probes answer.
    let (code, body) = get(&pod, "/debug/routes").unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("\"version\""), "{body}");
    assert_eq!(get(&pod, "/readyz").map(|(c, _)| c), Some(200));
    // From loopback (a port-forward, `portico routes` on the node): served, no keys.
    let (code, body) = get(&loopback, "/debug/routes").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"version\""), "{body}");
    assert!(!body.contains("PRIVATE KEY"), "{body}");
}

/// Whether the server closed `stream` within `within` (EOF or reset on read).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slowloris_connections_are_closed_and_the_connection_count_is_bounded() {
    let replica = start(&["--admin".into(), "127.0.0.1:0".into()], &[]);
    let admin = replica.listening.admin();

    // A head trickled one byte every 500 ms: closed by the header timeout, long before the
    // head would be complete.
    let mut slow = TcpStream::connect(&admin).unwrap();
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed_after = None;
    for byte in head {
        if slow.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(500)) {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the slow head was never cut off");
    assert!(
        closed_after >= HEADER_TIMEOUT - Duration::from_millis(500)
            && closed_after < HEADER_TIMEOUT + Duration::from_secs(3),
        "closed after {closed_after:?}"
    );

    // A connection that sends nothing is closed too.
    let mut silent = TcpStream::connect(&admin).unwrap();
    assert!(closed_within(
        &mut silent,
        HEADER_TIMEOUT + Duration::from_secs(3)
    ));

    // Past the limit, a further connection is closed at once.
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(&admin).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(&admin).unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n");
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "a connection past the limit was kept"
    );
    // Once the attacker's connections are gone, the probes answer again.
    drop(held);
    wait_until("/healthz after the flood", Duration::from_secs(10), || {
        get(&admin, "/healthz").filter(|(code, _)| *code == 200)
    });
}

/// The shipped NetworkPolicy: Raft from Portico Pods only, admin from labelled Pods only.
#[test]
fn the_shipped_network_policy_admits_raft_from_replicas_and_admin_from_labelled_pods() {
    let policy = kustomize(&deploy_dir())
        .into_iter()
        .find(|d| d["kind"] == "NetworkPolicy")
        .expect("deploy/ ships a NetworkPolicy");
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "portico"
    );
    assert_eq!(spec["policyTypes"][0], "Ingress");
    let rules = spec["ingress"].as_sequence().unwrap();
    let admitting = |port: u64| -> Vec<&serde_yaml::Value> {
        rules
            .iter()
            .filter(|r| {
                r["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"].as_u64() == Some(port))
            })
            .collect()
    };
    let raft = admitting(9444);
    assert_eq!(raft.len(), 1);
    assert_eq!(
        raft[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "portico"
    );
    assert!(
        raft[0]["from"][0]["namespaceSelector"].is_null(),
        "other namespaces"
    );
    let admin = admitting(9090);
    assert_eq!(admin.len(), 1);
    assert_eq!(
        admin[0]["from"][0]["podSelector"]["matchLabels"]["portico.dev/admin-access"],
        "true"
    );
    // Every rule that admits everyone is the data plane's.
    for rule in rules.iter().filter(|r| r["from"].is_null()) {
        for port in rule["ports"].as_sequence().unwrap() {
            assert!(
                [8080, 8443].contains(&port["port"].as_u64().unwrap()),
                "{port:?} is open to everyone"
            );
        }
    }
}
