//! Tenant attacks end to end: the controller and three Raft replicas against the in-process
//! API server, each attack made as a tenant would (objects written through the API), and
//! shown not to get through. One module per finding of `../shared/reviews/security.md`
//! (issue 14).

#[path = "../support/mod.rs"]
mod support;

mod c2_bounded_resync;
mod c2_compaction;
mod c2_h1_unreferenced_secrets;
mod h3_host_ownership;

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};
use portico_test_support::poll_until;

use support::PATIENCE;

/// Waits for an Event about the Ingress `name` in `namespace` with `reason`; returns its note.
pub async fn wait_event(client: &Client, namespace: &str, name: &str, reason: &str) -> String {
    let events = Api::<Event>::namespaced(client.clone(), namespace);
    let found = poll_until(
        format!("a {reason} Event for Ingress {namespace}/{name}"),
        PATIENCE,
        || async {
            let list = events.list(&ListParams::default()).await.unwrap();
            list.items.into_iter().find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
        },
    )
    .await;
    match found {
        Ok(event) => event.note.unwrap_or_default(),
        Err(e) => {
            let list = events.list(&ListParams::default()).await.unwrap();
            panic!(
                "{e}: {:?}",
                list.items
                    .iter()
                    .map(|e| (&e.reason, &e.note))
                    .collect::<Vec<_>>()
            )
        }
    }
}

/// The real `kubectl`, against the cluster's API server over TCP: what a tenant uses.
pub struct Kubectl {
    _server: portico_apiserver::ServerHandle,
    home: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Kubectl {
    pub async fn start(api: &portico_apiserver::ApiServer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = api.serve(listener).unwrap();
        let home = tempfile::tempdir().unwrap();
        let kubeconfig = home.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            _server: server,
            home,
            kubeconfig,
        }
    }

    /// Runs `kubectl args…` with `stdin`; panics unless it succeeds.
    pub async fn run(&self, args: &[&str], stdin: &str) -> String {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("kubectl")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl runs");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finished within 60s")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Kubectl {
    /// `kubectl create secret tls NAME` in `namespace` from PEM files, as a tenant would.
    /// (`kubectl create` itself would send protobuf, which the in-process API server does not
    /// read: it writes the object and `kubectl apply` sends it.)
    pub async fn create_tls_secret(&self, namespace: &str, name: &str, crt: &[u8], key: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let (crt_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&crt_path, crt).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let secret = self
            .run(
                &[
                    "-n",
                    namespace,
                    "create",
                    "secret",
                    "tls",
                    name,
                    "--cert",
                    crt_path.to_str().unwrap(),
                    "--key",
                    key_path.to_str().unwrap(),
                    "--dry-run=client",
                    "-o",
                    "json",
                ],
                "",
            )
            .await;
        self.run(&["-n", namespace, "apply", "-f", "-"], &secret)
            .await;
    }
}

/// Creates a namespace (a tenant's).
pub async fn namespace(client: &Client, name: &str) {
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::all(client.clone())
        .create(&kube::api::PostParams::default(), &ns)
        .await
        .unwrap();
}

/// An Ingress of class `conformance` from JSON parts.
pub fn ingress(
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> k8s_openapi::api::networking::v1::Ingress {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap()
}
