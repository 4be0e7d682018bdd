//! The real kubectl against the server over HTTP. `/usr/bin/kubectl` picks `kubectl.1.NN` by the
//! server's reported minor, so each test serves a chosen minor; every test gets a fresh HOME and
//! KUBECONFIG.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use portico_apiserver::{ApiServer, ServerHandle};
use portico_test_support::{poll_until, testdata};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Kubectl {
    _server: ApiServer,
    handle: ServerHandle,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    async fn start(minor: u32) -> Kubectl {
        let server = ApiServer::builder().minor_version(minor).build().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = server.serve(listener).unwrap();
        let home = tempfile::tempdir().unwrap();
        let kubeconfig = home.path().join("kubeconfig");
        handle.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl {
            _server: server,
            handle,
            home,
            kubeconfig,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Output {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("kubectl finished within 60s")
            .expect("kubectl runs");
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.ok,
            "kubectl {args:?} failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all).await).unwrap()
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.home.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    }
}

const MINIMAL_CHANGED: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: minimal-ingress
  labels:
    team: edge
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  ingressClassName: nginx-example
  rules:
  - host: shop.example.com
    http:
      paths:
      - path: /cart
        pathType: Prefix
        backend:
          service:
            name: cart
            port:
              number: 8080
";

/// The whole kubectl workflow of the issue against one kubectl minor.
async fn workflow(minor: u32) {
    let k = Kubectl::start(minor).await;
    let version = k.ok(&["version", "-o", "json"]).await;
    assert!(
        version.contains(&format!("\"minor\": \"{minor}\"")),
        "{version}"
    );

    let ns = k.ok(&["get", "namespaces"]).await;
    assert!(ns.contains("default") && ns.contains("Active"), "{ns}");

    // Client-side apply of the docs' minimal Ingress, unchanged.
    let minimal = testdata("minimal-ingress.yaml");
    let out = k.ok(&["apply", "-f", minimal.to_str().unwrap()]).await;
    assert!(
        out.contains("ingress.networking.k8s.io/minimal-ingress created"),
        "{out}"
    );
    let ing = k.json(&["get", "ingress", "minimal-ingress"]).await;
    assert_eq!(ing["metadata"]["generation"], 1);
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][0]["path"],
        "/testpath"
    );

    // `get -w` in the background sees the following changes.
    let mut watch = k
        .command(&["get", "ingresses", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch_lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), watch_lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first.contains("EVENT") || first.contains("minimal-ingress"),
        "{first}"
    );

    // Re-apply with a change (client-side).
    let changed = k.write("changed.yaml", MINIMAL_CHANGED);
    let out = k.ok(&["apply", "-f", &changed]).await;
    assert!(out.contains("configured"), "{out}");
    let ing = k.json(&["get", "ingress", "minimal-ingress"]).await;
    assert_eq!(ing["metadata"]["generation"], 2);
    assert_eq!(ing["metadata"]["labels"]["team"], "edge");
    assert_eq!(ing["spec"]["rules"][0]["host"], "shop.example.com");

    // Server-side apply of the original manifest: ownership moves to the `kubectl` manager.
    let out = k
        .ok(&["apply", "--server-side", "-f", minimal.to_str().unwrap()])
        .await;
    // No conflict with the client-side apply: kubectl takes over the fields it had applied.
    assert!(out.contains("serverside-applied"), "{out}");
    let ing = k
        .json(&["get", "ingress", "minimal-ingress", "--show-managed-fields"])
        .await;
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][0]["path"],
        "/testpath"
    );
    let managers: Vec<&str> = ing["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kubectl"), "{managers:?}");

    // A field another manager changed is a conflict for server-side apply, unless forced.
    k.ok(&[
        "annotate",
        "ingress",
        "minimal-ingress",
        "kubectl.kubernetes.io/last-applied-configuration-",
    ])
    .await;
    k.ok(&[
        "patch",
        "ingress",
        "minimal-ingress",
        "--type=merge",
        "-p",
        r#"{"spec":{"ingressClassName":"patched"}}"#,
    ])
    .await;
    let out = k
        .run(&["apply", "--server-side", "-f", minimal.to_str().unwrap()])
        .await;
    assert!(
        !out.ok
            && out.stderr.contains("conflict with \"kubectl-patch\"")
            && out.stderr.contains(".spec.ingressClassName"),
        "{}",
        out.stderr
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        minimal.to_str().unwrap(),
    ])
    .await;
    let ing = k.json(&["get", "ingress", "minimal-ingress"]).await;
    assert_eq!(ing["spec"]["ingressClassName"], "nginx-example");

    // Status subresource: only .status changes.
    let out = k
        .ok(&["patch", "ingress", "minimal-ingress", "--subresource=status", "--type=merge", "-p", r#"{"status":{"loadBalancer":{"ingress":[{"ip":"127.0.0.1"}]}},"spec":{"ingressClassName":"other"}}"#])
        .await;
    assert!(out.contains("patched"), "{out}");
    let ing = k.json(&["get", "ingress", "minimal-ingress"]).await;
    assert_eq!(
        ing["status"]["loadBalancer"]["ingress"][0]["ip"],
        "127.0.0.1"
    );
    assert_eq!(ing["spec"]["ingressClassName"], "nginx-example");
    let table = k.ok(&["get", "ingress", "minimal-ingress"]).await;
    assert!(
        table.contains("127.0.0.1") && table.contains("nginx-example"),
        "{table}"
    );

    // Invalid status and invalid spec are refused with field paths.
    let out = k
        .run(&[
            "patch",
            "ingress",
            "minimal-ingress",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"not-an-ip"}]}}}"#,
        ])
        .await;
    assert!(
        !out.ok && out.stderr.contains("status.loadBalancer.ingress[0].ip"),
        "{}",
        out.stderr
    );
    let bad = k.write(
        "bad.yaml",
        &MINIMAL_CHANGED
            .replace("pathType: Prefix", "pathType: Sometimes")
            .replace("minimal-ingress", "bad"),
    );
    let out = k.run(&["apply", "-f", &bad]).await;
    assert!(
        !out.ok && out.stderr.contains("is invalid") && out.stderr.contains("pathType"),
        "{}",
        out.stderr
    );
    let unknown = k.write(
        "unknown.yaml",
        &MINIMAL_CHANGED.replace("ingressClassName:", "bogusField: 1\n  ingressClassName:"),
    );
    let out = k.run(&["apply", "-f", &unknown]).await;
    assert!(
        !out.ok && out.stderr.contains("bogusField"),
        "{}",
        out.stderr
    );

    // describe, with an events.k8s.io Event about the Ingress (read back as a core Event).
    let uid = ing["metadata"]["uid"].as_str().unwrap();
    let event = format!(
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata:\n  name: minimal-ingress.sync\neventTime: \"2026-01-01T00:00:00.000000Z\"\nreportingController: portico\nreportingInstance: portico-0\naction: Reconcile\nreason: Sync\ntype: Normal\nnote: routes updated by portico\nregarding:\n  apiVersion: networking.k8s.io/v1\n  kind: Ingress\n  name: minimal-ingress\n  namespace: default\n  uid: {uid}\n"
    );
    let event = k.write("event.yaml", &event);
    k.ok(&["create", "-f", &event]).await;
    let out = k.ok(&["describe", "ingress", "minimal-ingress"]).await;
    assert!(
        out.contains("Name:") && out.contains("/testpath") && out.contains("127.0.0.1"),
        "{out}"
    );
    assert!(
        out.contains("routes updated by portico") && out.contains("Sync"),
        "{out}"
    );

    // The conformance manifests, unchanged.
    for entry in std::fs::read_dir(testdata("manifests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            let out = k.ok(&["apply", "-f", path.to_str().unwrap()]).await;
            assert!(out.contains("created"), "{}: {out}", path.display());
        }
    }
    let names = k.ok(&["get", "ingresses", "-o", "name"]).await;
    for name in [
        "default-backend",
        "host-rules",
        "path-rules",
        "load-balancing",
    ] {
        assert!(names.contains(name), "{names}");
    }

    // Services: strategic merge by port on re-apply.
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n  - name: https\n    port: 443\n";
    let path = k.write("svc.yaml", svc);
    k.ok(&["apply", "-f", &path]).await;
    let path = k.write(
        "svc.yaml",
        &svc.replace("  - name: https\n    port: 443\n", ""),
    );
    k.ok(&["apply", "-f", &path]).await;
    let svc = k.json(&["get", "service", "web"]).await;
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 1, "{svc}");
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.96."))
    );

    // delete --wait waits for finalizers.
    k.ok(&[
        "patch",
        "ingress",
        "minimal-ingress",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ])
    .await;
    let mut delete = k
        .command(&[
            "delete",
            "ingress",
            "minimal-ingress",
            "--wait=true",
            "--timeout=60s",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the server has marked the object, then check kubectl is still waiting.
    poll_until(
        "the DELETE to mark the object",
        Duration::from_secs(10),
        || async {
            let ing = k.json(&["get", "ingress", "minimal-ingress"]).await;
            ing["metadata"]["deletionTimestamp"]
                .is_string()
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        delete.try_wait().unwrap().is_none(),
        "kubectl delete --wait returned while a finalizer was pending"
    );
    k.ok(&[
        "patch",
        "ingress",
        "minimal-ingress",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let status = tokio::time::timeout(Duration::from_secs(30), delete.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let out = k.run(&["get", "ingress", "minimal-ingress"]).await;
    assert!(!out.ok && out.stderr.contains("NotFound"), "{}", out.stderr);

    // The watch saw the modifications and the deletion.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("DELETED") && l.contains("minimal-ingress"))
    {
        let line = tokio::time::timeout_at(deadline, watch_lines.next_line())
            .await
            .expect("watch shows the deletion")
            .unwrap()
            .unwrap();
        seen.push(line);
    }
    assert!(
        seen.iter()
            .any(|l| l.starts_with("MODIFIED") && l.contains("127.0.0.1")),
        "{seen:#?}"
    );
    let _ = watch.kill().await;

    // HTTP/2 (prior knowledge) on the same port, with curl.
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &format!("{}/api/v1/namespaces", k.handle.url()),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_33_workflow() {
    workflow(33).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_29_workflow() {
    workflow(29).await;
}

/// kubectl 1.27 asks `/openapi/v2` (protobuf) where later versions ask `/openapi/v3`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_27_workflow() {
    workflow(27).await;
}

/// Runs a `kubectl create` with `-v=8` and checks that its request body was protobuf (what
/// kubectl's typed clients send) and that it succeeded on a JSON response.
async fn create_protobuf(k: &Kubectl, args: &[&str]) {
    let mut all = vec!["create"];
    all.extend(args);
    all.push("-v=8");
    let out = k.run(&all).await;
    assert!(
        out.ok,
        "kubectl {all:?} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr
            .contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "kubectl {all:?} did not send protobuf:\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("Accept: application/vnd.kubernetes.protobuf,application/json"),
        "{}",
        out.stderr
    );
}

fn base64_bytes(value: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("a base64 string"))
        .expect("valid base64")
}

/// kubectl's protobuf `create`s (issue 16): every kind arrives with the fields kubectl set, in
/// the server's JSON (Secret bytes byte for byte, IntOrString as int or string).
async fn protobuf_creates(minor: u32) {
    let k = Kubectl::start(minor).await;

    create_protobuf(&k, &["namespace", "pb"]).await;
    let ns = k.json(&["get", "namespace", "pb"]).await;
    assert_eq!(ns["metadata"]["name"], "pb");
    assert!(
        ns["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert!(ns["metadata"]["creationTimestamp"].is_string(), "{ns}");

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = k.write("tls.crt", &cert.pem());
    let key_path = k.write("tls.key", &key.serialize_pem());
    create_protobuf(
        &k,
        &[
            "secret", "tls", "shop-tls", "-n", "pb", "--cert", &cert_path, "--key", &key_path,
        ],
    )
    .await;
    let secret = k.json(&["get", "secret", "shop-tls", "-n", "pb"]).await;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        base64_bytes(&secret["data"]["tls.crt"]),
        cert.pem().as_bytes()
    );
    assert_eq!(
        base64_bytes(&secret["data"]["tls.key"]),
        key.serialize_pem().as_bytes()
    );

    // Every byte value, and an empty value, survive the protobuf bytes field.
    let every_byte: Vec<u8> = (0..=255u8).rev().collect();
    let blob = k.home.path().join("blob");
    std::fs::write(&blob, &every_byte).unwrap();
    let from_file = format!("blob={}", blob.display());
    create_protobuf(
        &k,
        &[
            "secret",
            "generic",
            "bin",
            "-n",
            "pb",
            "--from-file",
            &from_file,
            "--from-literal=empty=",
        ],
    )
    .await;
    let secret = k.json(&["get", "secret", "bin", "-n", "pb"]).await;
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(base64_bytes(&secret["data"]["blob"]), every_byte);
    assert_eq!(secret["data"]["empty"], "");

    create_protobuf(
        &k,
        &[
            "configmap",
            "settings",
            "-n",
            "pb",
            "--from-literal=mode=fast",
            "--from-literal=blank=",
        ],
    )
    .await;
    let cm = k.json(&["get", "configmap", "settings", "-n", "pb"]).await;
    assert_eq!(cm["data"], serde_json::json!({"mode": "fast", "blank": ""}));

    create_protobuf(&k, &["serviceaccount", "robot", "-n", "pb"]).await;
    let sa = k
        .json(&["get", "serviceaccount", "robot", "-n", "pb"])
        .await;
    assert_eq!(sa["metadata"]["namespace"], "pb");

    create_protobuf(
        &k,
        &[
            "ingress",
            "shop",
            "-n",
            "pb",
            "--class=portico",
            "--rule=shop.example.com/cart*=cart:8080,tls=shop-tls",
            "--rule=/exact=api:http",
            "--annotation=portico.dev/ssl-redirect=false",
        ],
    )
    .await;
    let ing = k.json(&["get", "ingress", "shop", "-n", "pb"]).await;
    assert_eq!(ing["spec"]["ingressClassName"], "portico");
    assert_eq!(
        ing["metadata"]["annotations"]["portico.dev/ssl-redirect"],
        "false"
    );
    assert_eq!(
        ing["spec"]["tls"],
        serde_json::json!([{"hosts": ["shop.example.com"], "secretName": "shop-tls"}])
    );
    // IngressRuleValue is an embedded struct: `http` sits beside `host`.
    assert_eq!(
        ing["spec"]["rules"],
        serde_json::json!([
            {"host": "shop.example.com", "http": {"paths": [{"path": "/cart", "pathType": "Prefix",
                "backend": {"service": {"name": "cart", "port": {"number": 8080}}}}]}},
            {"http": {"paths": [{"path": "/exact", "pathType": "Exact",
                "backend": {"service": {"name": "api", "port": {"name": "http"}}}}]}}
        ])
    );

    // IntOrString, both ways: a Service's targetPort and a PodDisruptionBudget's minAvailable.
    create_protobuf(
        &k,
        &["service", "clusterip", "cart", "-n", "pb", "--tcp=80:8080"],
    )
    .await;
    let svc = k.json(&["get", "service", "cart", "-n", "pb"]).await;
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    create_protobuf(
        &k,
        &[
            "poddisruptionbudget",
            "half",
            "-n",
            "pb",
            "--selector=app=cart",
            "--min-available=50%",
        ],
    )
    .await;
    let pdb = k.json(&["get", "pdb", "half", "-n", "pb"]).await;
    assert_eq!(pdb["spec"]["minAvailable"], "50%");
    assert_eq!(
        pdb["spec"]["selector"],
        serde_json::json!({"matchLabels": {"app": "cart"}})
    );

    create_protobuf(
        &k,
        &[
            "role",
            "reader",
            "-n",
            "pb",
            "--verb=get,list",
            "--resource=secrets",
        ],
    )
    .await;
    let role = k.json(&["get", "role", "reader", "-n", "pb"]).await;
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}])
    );

    // A server-side dry run decodes the same body and stores nothing.
    create_protobuf(
        &k,
        &[
            "configmap",
            "dry",
            "-n",
            "pb",
            "--from-literal=a=b",
            "--dry-run=server",
        ],
    )
    .await;
    let missing = k.run(&["get", "configmap", "dry", "-n", "pb"]).await;
    assert!(
        !missing.ok && missing.stderr.contains("NotFound"),
        "{}",
        missing.stderr
    );

    k.ok(&["delete", "secret", "bin", "-n", "pb"]).await;
    let gone = k.run(&["get", "secret", "bin", "-n", "pb"]).await;
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_33_protobuf_creates() {
    protobuf_creates(33).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_32_protobuf_creates() {
    protobuf_creates(32).await;
}

/// A minimal protobuf Secret named `x` as kubectl would frame it: `k8s\0`, then runtime.Unknown
/// { typeMeta (1) { apiVersion (1) "v1", kind (2) "Secret" }, raw (2) Secret { metadata (1)
/// { name (1) "x" } } }. Written out byte by byte as test input.
const PROTOBUF_SECRET: &[u8] = b"k8s\0\
    \x0a\x0c\x0a\x02v1\x12\x06Secret\
    \x12\x05\x0a\x03\x0a\x01x";

async fn curl_post(k: &Kubectl, path: &str, body: &[u8]) -> (String, String) {
    let file = k.home.path().join("body.pb");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", "Content-Type: application/vnd.kubernetes.protobuf"])
        .args([
            "-H",
            "Accept: application/vnd.kubernetes.protobuf, application/json",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}{path}", k.handle.url()))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

/// Attack: a protobuf body whose envelope says Secret, posted to the ConfigMaps URL, must not be
/// stored as a ConfigMap (nor anything else); the same bytes to the Secrets URL are a Secret,
/// answered in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_body_of_another_kind_is_refused() {
    let k = Kubectl::start(33).await;
    let (code, body) =
        curl_post(&k, "/api/v1/namespaces/default/configmaps", PROTOBUF_SECRET).await;
    assert_eq!(code, "400", "{body}");
    assert!(
        body.contains("v1/Secret") && body.contains("v1/ConfigMap"),
        "{body}"
    );
    let none = k.json(&["get", "configmaps", "-n", "default"]).await;
    assert_eq!(none["items"], serde_json::json!([]), "{none}");

    let (code, body) = curl_post(&k, "/api/v1/namespaces/default/secrets", PROTOBUF_SECRET).await;
    assert_eq!(code, "201", "{body}");
    let secret: Value = serde_json::from_str(&body).expect("a JSON response");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "x");

    // Without the magic prefix the body is refused, not read as JSON or YAML.
    let (code, body) = curl_post(
        &k,
        "/api/v1/namespaces/default/secrets",
        &PROTOBUF_SECRET[4..],
    )
    .await;
    assert_eq!(code, "400", "{body}");
}
