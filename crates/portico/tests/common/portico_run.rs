//! `portico run` and `portico echo` as the tests start them, through portico-test-support's
//! process starter: every listener on port 0 and read back from the `listening` line, except
//! Raft, whose sockets the test binds and holds for the cluster's life and hands to each
//! replica (socket activation; see `portico_test_support::process`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portico_test_support::TestCa;
use portico_test_support::process::{self, Listening, Process, Program};

pub const PORTICO: &str = env!("CARGO_BIN_EXE_portico");

/// How long a replica may take to bind its listeners (its Raft certificate is signed first).
pub const LISTENING_WITHIN: Duration = Duration::from_secs(60);

/// A replica's place in its Raft cluster: its ordinal, every initial member's Raft socket in
/// ordinal order (its own among them), and the CA (certificate, key) its certificate is signed
/// by at first boot.
pub struct Member<'a> {
    pub ordinal: usize,
    pub raft: &'a [Arc<TcpListener>],
    pub ca: &'a (PathBuf, PathBuf),
}

impl Member<'_> {
    /// `host:port` of every member's Raft socket, in ordinal order.
    pub fn addresses(&self) -> Vec<String> {
        self.raft
            .iter()
            .map(|s| s.local_addr().unwrap().to_string())
            .collect()
    }
}

/// `portico run` as `portico-ORDINAL` in `namespace` with `kubeconfig`, its data in
/// `data_dir`, JSON logs; the caller adds the listeners' flags ([`LOOPBACK_PORT_0`] and
/// `--admin`) and any others.
pub fn run(member: &Member, namespace: &str, kubeconfig: &Path, data_dir: &Path) -> Program {
    let own = &member.raft[member.ordinal];
    Program::new(PORTICO)
        .args(["run", "--pod-name", &format!("portico-{}", member.ordinal)])
        .args(["--namespace", namespace])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--data-dir")
        .arg(data_dir)
        // The socket handed over is served; --raft-listen names it, for the default
        // --raft-advertise and the certificate's name.
        .args(["--raft-listen", &own.local_addr().unwrap().to_string()])
        .args(["--initial-members", &member.addresses().join(",")])
        .arg("--raft-ca")
        .arg(&member.ca.0)
        .arg("--raft-ca-key")
        .arg(&member.ca.1)
        .args(["--log-format", "json"])
        .socket("raft", own)
}

/// `portico run` as `portico-0` in `namespace`, the only member of its Raft cluster: its CA
/// written to `dir` (the replica signs its own certificate at first boot), its data in
/// `dir/data`, its Raft socket handed over (the program holds it), the data plane on port 0.
/// The caller adds `--admin` and any other flags.
pub fn single(dir: &Path, kubeconfig: &Path, namespace: &str) -> Program {
    let ca = TestCa::new("portico test CA").write(dir);
    let raft = process::raft_listeners(1);
    let member = Member {
        ordinal: 0,
        raft: &raft,
        ca: &ca,
    };
    run(&member, namespace, kubeconfig, &dir.join("data")).args(LOOPBACK_PORT_0)
}

/// The data plane's listeners, each on a port of its own the replica picks.
pub const LOOPBACK_PORT_0: [&str; 6] = [
    "--http",
    "127.0.0.1:0",
    "--https",
    "127.0.0.1:0",
    "--http3",
    "127.0.0.1:0",
];

/// Waits for a replica's `listening` line; panics with its output if it exits first.
pub fn listening(process: &Process) -> Listening {
    process
        .listening_blocking(LISTENING_WITHIN)
        .unwrap_or_else(|e| panic!("{e}\n{}", process.output_text()))
}

/// `portico echo` for Service `service` (Pod `pod`) on `ip`, port `port` (0: any); started,
/// with the address it listens on.
pub fn echo(ip: &str, port: u16, service: &str, pod: &str, namespace: &str) -> (Process, String) {
    let process = Program::new(PORTICO)
        .args(["echo", "--listen", &format!("{ip}:{port}")])
        .args(["--service", service, "--pod", pod, "--namespace", namespace])
        .spawn(format!("echo {pod}"));
    let line = process
        .wait_for_line_blocking("echo listening", LISTENING_WITHIN, |l| {
            l.contains("echo listening")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", process.output_text()));
    let addr = portico_test_support::child::addr_after(&line, "addr")
        .unwrap_or_else(|| panic!("no address in {line}"));
    (process, addr.to_string())
}
