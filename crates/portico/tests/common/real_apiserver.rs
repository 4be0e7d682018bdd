//! A real kube-apiserver and etcd for a test: `tests/kube/`'s kube-testenv, built by
//! `tests/kube/build.sh` (tests/setup runs it). A missing or stale binary fails the test with
//! that instruction; nothing is skipped. Self-contained (std, serde_json, tempfile) so other
//! crates' tests can include it with `#[path]` (portico-controller's election tests do).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a cold start may take (etcd, then kube-apiserver's post-start hooks; seconds on an
/// idle machine, more when two cores are shared with a cargo build).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The built kube-testenv: `$PORTICO_KUBE_TESTENV` as given, else the build of the current
/// sources in build.sh's cache (`build.sh --check`), so a stale build is never used: a missing
/// or stale one fails the test with the command that builds it.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTICO_KUBE_TESTENV") {
        return PathBuf::from(path);
    }
    // The checkout's root holds tests/kube/; the including crate sits somewhere below it.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest
        .ancestors()
        .map(|dir| dir.join("tests/kube/build.sh"))
        .find(|script| script.exists())
        .unwrap_or_else(|| panic!("no tests/kube/build.sh above {}", manifest.display()));
    let out = Command::new(&script)
        .arg("--check")
        .output()
        .unwrap_or_else(|e| panic!("running {} --check: {e}", script.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// One running control plane. Dropping it stops both servers (its stdin closes, as when this
/// test process dies) and waits; its temp dirs go with it.
pub struct RealApiServer {
    child: Child,
    // Held open: kube-testenv runs with --lifeline and stops (cleanly, as on SIGTERM) when
    // it closes.
    lifeline: Option<ChildStdin>,
    dir: tempfile::TempDir,
    /// The admin kubeconfig (static token in system:masters, the CA embedded).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`, the same across stop/start.
    pub server: String,
    /// etcd's client URL (`http://127.0.0.1:PORT`).
    pub etcd: String,
    /// The CA that signed the API server's serving certificate (PEM file).
    pub ca: PathBuf,
    /// The admin bearer token.
    pub token: String,
    control: String,
}

impl RealApiServer {
    /// Starts etcd and kube-apiserver and returns once /readyz answers.
    pub fn start() -> Self {
        let binary = binary();
        assert!(
            binary.exists(),
            "{} is missing: build the real API server with tests/kube/build.sh (tests/setup runs it)",
            binary.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let log = std::fs::File::create(dir.path().join("kube-testenv.log")).unwrap();
        let mut child = Command::new(&binary)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--lifeline")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let lifeline = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if !line.is_empty() => line,
            outcome => {
                // Closing stdin stops it and removes its temp dir; SIGKILL only if that fails.
                drop(lifeline);
                let status = stop(&mut child);
                panic!(
                    "kube-testenv not ready ({outcome:?}, {status:?}); its log:\n{}",
                    log_tail(&dir.path().join("kube-testenv.log"))
                );
            }
        };
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready record {line:?}: {e}"));
        assert_eq!(ready["ready"], true, "{ready}");
        let field = |name: &str| {
            ready[name]
                .as_str()
                .unwrap_or_else(|| panic!("{name} missing from {ready}"))
                .to_owned()
        };
        Self {
            kubeconfig: PathBuf::from(field("kubeconfig")),
            server: field("server"),
            etcd: field("etcd"),
            ca: PathBuf::from(field("ca")),
            token: field("token"),
            control: field("control"),
            child,
            lifeline: Some(lifeline),
            dir,
        }
    }

    /// kubectl with this server's admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Writes a kubeconfig for `token` (e.g. a ServiceAccount's, from `kubectl create token`).
    pub fn write_kubeconfig_for_token(&self, path: &Path, token: &str) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: real\n  context:\n    cluster: real\n    user: user\ncurrent-context: real\n",
                self.server,
                self.ca.display()
            ),
        )
        .unwrap();
    }

    /// Stops kube-apiserver (graceful SIGTERM); etcd keeps running with all data.
    pub fn stop_apiserver(&self) {
        self.control("/apiserver/stop");
    }

    /// Starts kube-apiserver again on the same port; returns once /readyz answers.
    pub fn start_apiserver(&self) {
        self.control("/apiserver/start");
    }

    /// Compacts etcd at its current revision (physically); returns that revision. Every
    /// resourceVersion before it is then gone: lists and watches from one get 410 Gone.
    pub fn compact_etcd(&self) -> i64 {
        let reply = self.control("/etcd/compact");
        reply["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no revision in {reply}"))
    }

    /// kube-apiserver's and etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kube-testenv.log")).unwrap_or_default()
    }

    fn control(&self, path: &str) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "200", "-X", "POST"])
            .arg(format!("{}{path}", self.control))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "POST {path}: {body}{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            log_tail(&self.dir.path().join("kube-testenv.log"))
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST {path}: {body}: {e}"))
    }
}

impl Drop for RealApiServer {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = stop(&mut self.child);
    }
}

/// Waits for kube-testenv, its lifeline closed, to stop both servers and remove its temp dir;
/// SIGKILL after 40 s.
fn stop(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    for _ in 0..400 {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill()?;
    child.wait()
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
