//! The real `kubectl explain` and client-side `kubectl apply` against the in-process server's
//! OpenAPI v3 documents (issue 16): the component schemas of every served kind, vendored from
//! the real kube-apiserver in `openapi/`, with the extensions kubectl reads. The same commands
//! are compared with the real server's output in crates/portico/tests/real_apiserver/explain.rs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use portico_apiserver::registry::RESOURCES;
use portico_apiserver::{ApiServer, ServerHandle};
use tokio::process::Command;

struct Kubectl {
    _server: ApiServer,
    _handle: ServerHandle,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// `/usr/bin/kubectl` runs `kubectl.1.NN` for the server's minor: 1.33 is the newest here.
    async fn start() -> Kubectl {
        Kubectl::serving(33).await
    }

    async fn serving(minor: u32) -> Kubectl {
        let server = ApiServer::builder().minor_version(minor).build().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = server.serve(listener).unwrap();
        let home = tempfile::tempdir().unwrap();
        let kubeconfig = home.path().join("kubeconfig");
        handle.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl {
            _server: server,
            _handle: handle,
            home,
            kubeconfig,
        }
    }

    /// (success, stdout, stderr) of `kubectl args`, with a fresh HOME (no cached OpenAPI).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("kubectl finished within 60s")
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }
}

/// A field's page: its type, its enum values and its description (with the enum's own text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_prints_a_fields_description_and_enum() {
    let k = Kubectl::start().await;
    let out = k
        .ok(&["explain", "ingress.spec.rules.http.paths.pathType"])
        .await;
    for want in [
        "GROUP:      networking.k8s.io\nKIND:       Ingress\nVERSION:    v1\n",
        "FIELD: pathType <string>",
        "ENUM:\n    Exact\n    ImplementationSpecific\n    Prefix\n",
        "pathType determines the interpretation of the path matching.",
        "Possible enum values:",
        " - `\"Prefix\"` matches based on a URL path prefix split by '/'.",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }

    let rules = k.ok(&["explain", "ingress.spec.rules"]).await;
    assert!(rules.contains("FIELD: rules <[]IngressRule>"), "{rules}");
    assert!(rules.contains("  host\t<string>\n"), "{rules}");
    assert!(
        rules.contains("  http\t<HTTPIngressRuleValue>\n"),
        "{rules}"
    );

    let service = k.ok(&["explain", "service.spec.ports"]).await;
    assert!(
        service.contains("  port\t<integer> -required-\n"),
        "{service}"
    );
}

/// `--recursive` lists the fields of the whole tree, nested by indentation, required marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_recursive_lists_every_field() {
    let k = Kubectl::start().await;
    let out = k.ok(&["explain", "ingress", "--recursive"]).await;
    for want in [
        "  metadata\t<ObjectMeta>\n",
        "    ownerReferences\t<[]OwnerReference>\n      apiVersion\t<string> -required-\n",
        "  spec\t<IngressSpec>\n",
        "    rules\t<[]IngressRule>\n      host\t<string>\n      http\t<HTTPIngressRuleValue>\n        paths\t<[]HTTPIngressPath> -required-\n",
        "          pathType\t<string> -required-\n",
        "  status\t<IngressStatus>\n",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
}

/// Every kind the server serves explains, as the kind of its own group version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_kind_explains() {
    let k = Kubectl::start().await;
    for info in RESOURCES {
        let api_version = info.api_version();
        let out = k
            .ok(&["explain", info.plural, "--api-version", &api_version])
            .await;
        let group = if info.group.is_empty() {
            String::new()
        } else {
            format!("GROUP:      {}\n", info.group)
        };
        let head = format!("{group}KIND:       {}\nVERSION:    v1\n", info.kind);
        assert!(
            out.starts_with(&head),
            "{api_version} {}:\n{out}",
            info.kind
        );
        assert!(out.contains("\nFIELDS:\n"), "{out}");
        assert!(out.contains("\n  apiVersion\t<string>\n"), "{out}");
        assert!(out.contains("\n  metadata\t<ObjectMeta>"), "{out}");
    }
}

/// Client-side apply reads the kind's schema (its strategic-merge keys) from `/openapi/v3`:
/// a Service's ports merge by `port`, and a second apply of the same file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_apply_uses_the_schemas_and_is_idempotent() {
    let k = Kubectl::start().await;
    let ingress = k.home.path().join("ingress.yaml");
    std::fs::write(
        &ingress,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: shop\n  namespace: default\nspec:\n  rules:\n  - host: shop.example\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend:\n          service:\n            name: shop\n            port:\n              number: 80\n",
    )
    .unwrap();
    let file = ingress.to_str().unwrap();
    let (ok, _, log) = k.run(&["apply", "-f", file, "-v=6"]).await;
    assert!(ok, "{log}");
    assert!(
        log.contains("/openapi/v3/apis/networking.k8s.io/v1?hash="),
        "apply did not read the Ingress schema:\n{log}"
    );
    let again = k.ok(&["apply", "-f", file]).await;
    assert_eq!(
        again.trim(),
        "ingress.networking.k8s.io/shop unchanged",
        "{again}"
    );

    let service = k.home.path().join("service.yaml");
    let with_ports = |ports: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: shop\n  namespace: default\nspec:\n  selector:\n    app: shop\n  ports:\n{ports}"
        )
    };
    std::fs::write(
        &service,
        with_ports("  - name: http\n    port: 80\n  - name: https\n    port: 443\n"),
    )
    .unwrap();
    let file = service.to_str().unwrap();
    k.ok(&["apply", "-f", file]).await;
    assert_eq!(
        k.ok(&["apply", "-f", file]).await.trim(),
        "service/shop unchanged"
    );
    std::fs::write(
        &service,
        with_ports("  - name: https\n    port: 443\n    targetPort: 8443\n"),
    )
    .unwrap();
    let (ok, out, log) = k.run(&["apply", "-f", file, "-v=8"]).await;
    assert!(ok, "{out}\n{log}");
    assert_eq!(out.trim(), "service/shop configured");
    // The merge key from the schema: the removed port is deleted by its `port`, the other
    // merged (the body as -v=8 logs it, quotes escaped).
    assert!(
        log.contains(r#"{\"$patch\":\"delete\",\"port\":80}"#),
        "no strategic merge by port in:\n{log}"
    );
    let ports = k
        .ok(&[
            "get",
            "service",
            "shop",
            "-o",
            "jsonpath={range .spec.ports[*]}{.port}:{.targetPort} {end}",
        ])
        .await;
    assert_eq!(ports.trim(), "443:8443");
}

/// Every kubectl here (1.27 to 1.33) explains from `/openapi/v3`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_kubectls_explain_too() {
    for minor in 27..=32 {
        let k = Kubectl::serving(minor).await;
        let out = k
            .ok(&["explain", "ingress.spec.rules.http.paths.pathType"])
            .await;
        assert!(
            out.contains("FIELD: pathType <string>"),
            "1.{minor}:\n{out}"
        );
        assert!(out.contains("Possible enum values:"), "1.{minor}:\n{out}");
    }
}
