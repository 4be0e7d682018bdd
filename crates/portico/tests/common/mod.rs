//! Helpers shared by the binary's integration tests (each test file includes this module and
//! uses what it needs).
#![allow(dead_code)]

pub mod deploy_rbac;
pub mod portico_run;
pub mod real_apiserver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Portico's in-process API server on 127.0.0.1, a port of its own, and a kubeconfig for it.
pub struct InProcessApi {
    pub handle: portico_apiserver::ServerHandle,
    pub kubeconfig: PathBuf,
    /// The server's runtime (dropped after the handle).
    runtime: tokio::runtime::Runtime,
}

impl InProcessApi {
    /// Serves, the kubeconfig written to `dir/kubeconfig`.
    pub fn start(dir: &Path) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = portico_apiserver::ApiServer::builder()
            .minor_version(33)
            .build()
            .unwrap();
        let handle = runtime
            .block_on(async { server.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await?) })
            .unwrap();
        let kubeconfig = dir.join("kubeconfig");
        handle.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            handle,
            kubeconfig,
            runtime,
        }
    }

    /// Stops serving and waits until it has.
    pub fn shutdown(self) {
        let Self {
            handle, runtime, ..
        } = self;
        runtime.block_on(handle.shutdown());
    }
}

/// `kubectl apply -f -` (`kubectl` as `kubectl` is set up: its kubeconfig, its user) with
/// `manifest` on stdin; panics with kubectl's error, naming `what`, unless it succeeds.
pub fn kubectl_apply(mut kubectl: Command, manifest: &str, what: &str) {
    let out = portico_test_support::process::output_with_stdin(
        kubectl.args(["apply", "-f", "-"]),
        manifest.as_bytes(),
    )
    .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl apply {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (status, body) of GET http://addr/path with curl, if it answered.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "3", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.parse().ok()?, body.to_owned()))
}

/// A CA written as PEM files in `dir`: (certificate, key).
pub fn write_ca(dir: &Path) -> (PathBuf, PathBuf) {
    portico_test_support::TestCa::new("portico-test-ca").write(dir)
}

/// The first non-loopback IPv4 address of this machine. The real API server refuses loopback
/// addresses in EndpointSlices (and in status), so backends listen on this one.
pub fn host_ip() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("running ip addr");
    let out = String::from_utf8_lossy(&out.stdout);
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no global IPv4 address on this machine:\n{out}"))
        .to_owned()
}
