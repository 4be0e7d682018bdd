//! The in-process API server held to the real one (issue 16): one sequence of requests, sent
//! to kube-testenv's kube-apiserver and to `portico-apiserver`, answered the same way.
//!
//! The sequence is kubectl's (`create namespace|secret tls|configmap|serviceaccount|ingress`,
//! `apply`, `get -o json`, `patch --type=merge|json|strategic`, `apply --server-side`, `delete`,
//! and its error messages) and raw HTTP with curl (list, watch from a resourceVersion,
//! merge and JSON patches, server-side apply with managedFields and conflicts, the status
//! subresource, 409 on a stale resourceVersion, 410 for a too-old watch, 404/422 Status
//! bodies). Each answer is compared whole, status code and body, after normalising what
//! legitimately differs between two servers: uids, timestamps, resourceVersion values (their
//! order is checked instead: every write's is above the one before), allocated ClusterIPs.
//!
//! What must hold: every difference found is in [`KNOWN`], the list of documented limits
//! (portico-apiserver's crate docs, "Known differences from kube-apiserver", and
//! ARCHITECTURE.md), and every entry of [`KNOWN`] is still seen, so fixing one shows up here
//! as a failure that asks for its entry and its documentation to go.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use portico_apiserver::{ApiServer, ServerHandle};
use serde_json::{Value, json};

use crate::common::real_apiserver::RealApiServer;

/// A difference between the two servers that is documented rather than fixed: `step` is the
/// step's name, `path` a JSON path prefix in the normalised answer (`status` for the code).
struct Known {
    step: &'static str,
    path: &'static str,
    why: &'static str,
}

/// The documented differences (portico-apiserver's lib.rs, "Known differences from
/// kube-apiserver"). Each must still be observed.
const KNOWN: &[Known] = &[
    Known {
        step: "delete the namespace",
        path: "body",
        why: "a namespace is deleted at once, answering a Status; kube-apiserver answers with \
              the namespace, Terminating, for the namespace controller to empty",
    },
    Known {
        step: "the namespace's objects after its deletion",
        path: "body.items",
        why: "its objects go with it; kube-apiserver keeps them for the namespace controller \
              (kube-testenv runs none)",
    },
    Known {
        step: "server-side table",
        path: "body.columnDefinitions",
        why: "Table columns carry no descriptions (kubectl prints none)",
    },
    Known {
        step: "streaming list (sendInitialEvents)",
        path: "events[3].object",
        why: "a bookmark's object is apiVersion, kind and metadata only; kube-apiserver's is \
              the kind's Go zero value (spec: {}, status: {loadBalancer: {}})",
    },
    Known {
        step: "endpointslice with a loopback address",
        path: "status",
        why: "loopback endpoints are accepted: portico local's and the controller tests' \
              backends listen on 127.0.0.x",
    },
    Known {
        step: "endpointslice with a loopback address",
        path: "body",
        why: "the same: the created EndpointSlice instead of a 422 Status",
    },
    Known {
        step: "get patched service",
        path: "spec.ports",
        why: "strategic merge of a keyed list keeps the stored order; kube-apiserver puts the \
              patch's elements first, in the patch's order (patch.rs)",
    },
    Known {
        step: "patch json failing test",
        path: "body.message",
        why: "a failed JSON patch names the failing operation; kube-apiserver's message stops \
              at 'due to an error in our request' (patch.rs)",
    },
    Known {
        step: "patch json failing test",
        path: "body.details",
        why: "the same error carries no empty details object",
    },
];

/// One server under test: how kubectl and curl reach it.
struct Side {
    name: &'static str,
    kubeconfig: PathBuf,
    base: String,
    curl_auth: Vec<String>,
    home: tempfile::TempDir,
}

/// A command's outcome.
#[derive(Debug)]
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// An HTTP answer: the status code and the body (JSON, or a string when it is not).
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
}

impl Side {
    fn kubectl(&self, args: &[&str]) -> Out {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `method path` with curl; `body` sent as `content_type` when given.
    fn http(&self, method: &str, path: &str, content_type: Option<&str>, body: &str) -> Answer {
        self.request(method, path, "application/json", content_type, body)
    }

    /// A request with its own `Accept` (a server-side Table, say).
    fn request(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Answer {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "20",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .args(&self.curl_auth)
        .args(["-H", &format!("Accept: {accept}")]);
        if let Some(ct) = content_type {
            cmd.args(["-H", &format!("Content-Type: {ct}"), "--data-binary", body]);
        }
        let out = cmd
            .arg(format!("{}{path}", self.base))
            .output()
            .unwrap_or_else(|e| panic!("curl {method} {path}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("{}: {method} {path}: no status: {text}", self.name));
        Answer {
            status: code.parse().unwrap_or_else(|_| {
                panic!(
                    "{}: {method} {path}: {text}{}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                )
            }),
            body: serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())),
        }
    }

    /// A watch that the server ends after `timeoutSeconds`: its status and events in order.
    fn watch(&self, path: &str) -> (u16, Vec<Value>) {
        let answer = self.http("GET", path, None, "");
        let events = match &answer.body {
            Value::String(lines) => lines
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                .collect(),
            one => vec![one.clone()],
        };
        (answer.status, events)
    }
}

/// The in-process server on a runtime of its own (the test itself is synchronous).
struct Local {
    side: Side,
    _handle: ServerHandle,
    _server: ApiServer,
    _runtime: tokio::runtime::Runtime,
}

impl Local {
    /// Serves the minor version the real server reports, so kubectl's dispatcher runs the same
    /// kubectl against both; a small watch window, so an old resourceVersion falls out of it
    /// during the sequence as one does from kube-apiserver's watch cache.
    fn start(minor: u32) -> Local {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let server = ApiServer::builder()
            .minor_version(minor)
            .watch_window(WATCH_WINDOW)
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let handle = server.serve(listener).unwrap();
        let home = tempfile::tempdir().unwrap();
        let kubeconfig = home.path().join("kubeconfig");
        handle.write_kubeconfig(&kubeconfig).unwrap();
        Local {
            side: Side {
                name: "portico-apiserver",
                kubeconfig,
                base: handle.url(),
                curl_auth: Vec::new(),
                home,
            },
            _handle: handle,
            _server: server,
            _runtime: runtime,
        }
    }
}

const WATCH_WINDOW: usize = 16;

fn real_side(api: &RealApiServer) -> Side {
    Side {
        name: "kube-apiserver",
        kubeconfig: api.kubeconfig.clone(),
        base: api.server.clone(),
        curl_auth: vec![
            "--cacert".into(),
            api.ca.display().to_string(),
            "-H".into(),
            format!("Authorization: Bearer {}", api.token),
        ],
        home: tempfile::tempdir().unwrap(),
    }
}

/// Values that legitimately differ between two servers, replaced by what they are.
fn normalise(value: &Value) -> Value {
    fn walk(v: &mut Value, key: &str) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    walk(child, k);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, key)),
            Value::String(s) if !s.is_empty() => {
                let placeholder = match key {
                    "uid" => "<uid>",
                    "resourceVersion" => "<resourceVersion>",
                    "creationTimestamp" | "deletionTimestamp" | "time" | "renewTime"
                    | "acquireTime" => "<time>",
                    "clusterIP" | "clusterIPs" => "<cluster-ip>",
                    // Opaque to clients, and each server encodes its own position.
                    "continue" => "<continue>",
                    _ => {
                        *s = without_uuids(s);
                        return;
                    }
                };
                *s = placeholder.to_owned();
            }
            _ => {}
        }
    }
    let mut v = value.clone();
    walk(&mut v, "");
    sort_managed_fields(&mut v);
    v
}

/// `text` with every UUID (a uid quoted in a message) replaced by `<uid>`.
fn without_uuids(text: &str) -> String {
    let is_uuid = |w: &[u8]| {
        w.len() == 36
            && w.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            })
    };
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes.len() - i >= 36 && is_uuid(&bytes[i..i + 36]) {
            out.push_str("<uid>");
            i += 36;
        } else {
            let c = text[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// managedFields entries in an order of their own: kube-apiserver sorts them by the second of
/// their time first, and two servers asked a moment apart can cross a second differently.
fn sort_managed_fields(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(entries)) = map.get_mut("managedFields") {
                entries.sort_by_key(|e| {
                    ["operation", "manager", "apiVersion", "subresource"]
                        .map(|k| e[k].as_str().unwrap_or_default().to_owned())
                });
            }
            map.values_mut().for_each(sort_managed_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(sort_managed_fields),
        _ => {}
    }
}

/// Every path where `real` and `local` differ, with both values.
fn differences(real: &Value, local: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match (real, local) {
        (Value::Object(r), Value::Object(l)) => {
            let keys: std::collections::BTreeSet<&String> = r.keys().chain(l.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (r.get(k), l.get(k)) {
                    (Some(a), Some(b)) => differences(a, b, &p, out),
                    (a, b) => out.push((p, format!("real={a:?} local={b:?}"))),
                }
            }
        }
        (Value::Array(r), Value::Array(l)) if r.len() == l.len() => {
            for (i, (a, b)) in r.iter().zip(l).enumerate() {
                differences(a, b, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push((path.to_owned(), format!("real={a} local={b}"))),
    }
}

/// The comparison so far: every difference by step, and each side's resourceVersions of
/// writes in order.
#[derive(Default)]
struct Ledger {
    found: Vec<(String, String, String)>,
    versions: BTreeMap<&'static str, Vec<(String, u64)>>,
}

impl Ledger {
    fn compare(&mut self, step: &str, real: &Value, local: &Value) {
        let mut out = Vec::new();
        differences(&normalise(real), &normalise(local), "", &mut out);
        for (path, what) in out {
            self.found.push((step.to_owned(), path, what));
        }
    }

    fn answers(&mut self, step: &str, real: &Answer, local: &Answer) {
        self.compare(
            step,
            &json!({"status": real.status, "body": real.body}),
            &json!({"status": local.status, "body": local.body}),
        );
    }

    fn commands(&mut self, step: &str, real: &Out, local: &Out) {
        self.compare(
            step,
            &json!({"ok": real.ok, "stdout": real.stdout, "stderr": real.stderr}),
            &json!({"ok": local.ok, "stdout": local.stdout, "stderr": local.stderr}),
        );
    }

    /// Records the resourceVersion a write answered with, per side.
    fn wrote(&mut self, side: &'static str, step: &str, object: &Value) {
        let rv = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("{side}: {step}: no resourceVersion in {object}"));
        let rv = rv
            .parse()
            .unwrap_or_else(|_| panic!("{side}: {step}: resourceVersion {rv:?}"));
        self.versions
            .entry(side)
            .or_default()
            .push((step.to_owned(), rv));
    }
}

/// The same step on both sides.
struct Both<'a> {
    real: &'a Side,
    local: &'a Side,
    ledger: Ledger,
}

impl Both<'_> {
    fn kubectl(&mut self, step: &str, args: &[&str]) -> (Out, Out) {
        let (r, l) = (self.real.kubectl(args), self.local.kubectl(args));
        self.ledger.commands(step, &r, &l);
        (r, l)
    }

    /// `kubectl get -o json` of one object, compared.
    fn get_json(&mut self, step: &str, args: &[&str]) -> (Value, Value) {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
        let (r, l) = (self.real.kubectl(&full), self.local.kubectl(&full));
        assert!(r.ok && l.ok, "{step}: {r:?} {l:?}");
        let r: Value = serde_json::from_str(&r.stdout).unwrap();
        let l: Value = serde_json::from_str(&l.stdout).unwrap();
        self.ledger.compare(step, &r, &l);
        (r, l)
    }

    fn http(
        &mut self,
        step: &str,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> (Answer, Answer) {
        let r = self.real.http(method, path, content_type, body);
        let l = self.local.http(method, path, content_type, body);
        self.ledger.answers(step, &r, &l);
        for (side, answer) in [(self.real.name, &r), (self.local.name, &l)] {
            // A DELETE answers with a Status, and a dry run stores nothing: no resourceVersion
            // (whether one is there is compared above).
            if method != "GET"
                && answer.status < 300
                && answer.body["metadata"]["resourceVersion"].is_string()
            {
                self.ledger.wrote(side, step, &answer.body);
            }
        }
        (r, l)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const NS: &str = "diff";
const INGRESSES: &str = "/apis/networking.k8s.io/v1/namespaces/diff/ingresses";
const CONFIGMAPS: &str = "/api/v1/namespaces/diff/configmaps";

const APPLIED: &str = r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: portico
spec:
  controller: portico.dev/ingress-controller
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-1
  namespace: diff
  labels:
    kubernetes.io/service-name: backend
addressType: IPv4
endpoints:
  - addresses: ["192.0.2.10"]
    conditions:
      ready: true
ports:
  - name: ""
    port: 8080
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: leader
  namespace: diff
spec:
  holderIdentity: replica-0
  leaseDurationSeconds: 15
---
apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: diff
spec:
  ports:
    - port: 80
      targetPort: 8080
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: api
  namespace: diff
spec:
  ingressClassName: portico
  rules:
    - host: api.example
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: backend
                port:
                  number: 80
"#;

/// An Ingress path without `pathType`: kube-apiserver refuses it (422).
const NO_PATH_TYPE: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"Ingress",
"metadata":{"name":"bad","namespace":"diff"},
"spec":{"rules":[{"host":"bad.example","http":{"paths":[{"path":"/",
"backend":{"service":{"name":"backend","port":{"number":80}}}}]}}]}}"#;

/// The differential run. One real control plane and one in-process server, the same steps in
/// the same order; the comparison is asserted at the end so one run lists every difference.
#[test]
fn the_in_process_api_server_answers_as_kube_apiserver_does() {
    let api = RealApiServer::start();
    let real = real_side(&api);
    let minor: u32 = {
        let v = real.http("GET", "/version", None, "");
        v.body["minor"]
            .as_str()
            .unwrap()
            .trim_end_matches('+')
            .parse()
            .unwrap()
    };
    let local = Local::start(minor);
    let mut both = Both {
        real: &real,
        local: &local.side,
        ledger: Ledger::default(),
    };
    let files = tempfile::tempdir().unwrap();
    let dir = files.path();

    kubectl_steps(&mut both, dir);
    raw_steps(&mut both, &api);

    // resourceVersions are opaque to clients, but ordered: a write that changes the object
    // moves it on, one that changes nothing keeps it, and none goes back.
    let order = |side: &str| -> Vec<Value> {
        let versions = &both.ledger.versions[side];
        versions
            .windows(2)
            .map(|w| {
                let relation = match w[1].1.cmp(&w[0].1) {
                    std::cmp::Ordering::Greater => "up",
                    std::cmp::Ordering::Equal => "same",
                    std::cmp::Ordering::Less => "DOWN",
                };
                json!(format!("{} -> {}: {relation}", w[0].0, w[1].0))
            })
            .collect()
    };
    let (r, l) = (order(real.name), order(local.side.name));
    both.ledger
        .compare("resourceVersion order of writes", &json!(r), &json!(l));
    check_known(&both.ledger.found);
    for relation in r.iter().chain(&l) {
        assert!(!relation.as_str().unwrap().ends_with("DOWN"), "{relation}");
    }
}

fn kubectl_steps(both: &mut Both, dir: &Path) {
    let certified = rcgen::generate_simple_self_signed(vec!["web.example".into()]).unwrap();
    let cert = write(dir, "tls.crt", &certified.cert.pem());
    let key = write(dir, "tls.key", &certified.signing_key.serialize_pem());

    both.kubectl("create namespace", &["create", "namespace", NS]);
    both.kubectl(
        "create secret tls",
        &[
            "-n",
            NS,
            "create",
            "secret",
            "tls",
            "tls",
            &format!("--cert={cert}"),
            &format!("--key={key}"),
        ],
    );
    both.kubectl(
        "create configmap",
        &["-n", NS, "create", "configmap", "cm", "--from-literal=a=b"],
    );
    both.kubectl(
        "create serviceaccount",
        &["-n", NS, "create", "serviceaccount", "sa"],
    );
    both.kubectl(
        "create ingress",
        &[
            "-n",
            NS,
            "create",
            "ingress",
            "web",
            "--class=portico",
            "--rule=web.example/=backend:80,tls=tls",
        ],
    );
    both.get_json("get namespace", &["namespace", NS]);
    both.get_json("get secret", &["-n", NS, "secret", "tls"]);
    both.get_json("get configmap", &["-n", NS, "configmap", "cm"]);
    both.get_json("get serviceaccount", &["-n", NS, "serviceaccount", "sa"]);
    both.get_json("get ingress", &["-n", NS, "ingress", "web"]);

    let applied = write(dir, "applied.yaml", APPLIED);
    both.kubectl("apply", &["apply", "-f", &applied]);
    both.kubectl("apply again", &["apply", "-f", &applied]);
    let changed = write(
        dir,
        "changed.yaml",
        &APPLIED.replace("targetPort: 8080", "targetPort: 8081"),
    );
    both.kubectl("apply changed", &["apply", "-f", &changed]);
    both.get_json("get applied service", &["-n", NS, "service", "backend"]);
    both.get_json("get applied ingressclass", &["ingressclass", "portico"]);
    both.get_json(
        "get applied endpointslice",
        &["-n", NS, "endpointslice", "backend-1"],
    );
    both.get_json("get applied lease", &["-n", NS, "lease", "leader"]);
    both.get_json("get applied ingress", &["-n", NS, "ingress", "api"]);

    both.kubectl(
        "patch merge",
        &[
            "-n",
            NS,
            "patch",
            "ingress",
            "api",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"tier":"edge"}}}"#,
        ],
    );
    both.kubectl(
        "patch json",
        &[
            "-n",
            NS,
            "patch",
            "ingress",
            "api",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/host","value":"api2.example"}]"#,
        ],
    );
    both.kubectl(
        "patch strategic",
        &[
            "-n",
            NS,
            "patch",
            "ingress",
            "api",
            "--type=strategic",
            "-p",
            r#"{"spec":{"tls":[{"hosts":["api2.example"],"secretName":"tls"}]}}"#,
        ],
    );
    both.kubectl(
        "patch strategic service ports (merge key port)",
        &[
            "-n",
            NS,
            "patch",
            "service",
            "backend",
            "--type=strategic",
            "-p",
            r#"{"spec":{"ports":[{"port":443,"targetPort":8443,"name":"https"},{"port":80,"name":"http"}]}}"#,
        ],
    );
    both.get_json("get patched ingress", &["-n", NS, "ingress", "api"]);
    both.get_json("get patched service", &["-n", NS, "service", "backend"]);

    let ssa = write(
        dir,
        "ssa.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: diff\ndata:\n  k: v\n",
    );
    both.kubectl(
        "apply --server-side",
        &["apply", "--server-side", "-f", &ssa],
    );
    both.kubectl(
        "apply --server-side again",
        &["apply", "--server-side", "-f", &ssa],
    );
    both.get_json(
        "get server-side applied configmap",
        &["-n", NS, "configmap", "ssa"],
    );
    both.kubectl(
        "apply --server-side conflicting",
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &write(
                dir,
                "ssa2.yaml",
                &std::fs::read_to_string(&ssa)
                    .unwrap()
                    .replace("k: v", "k: w"),
            ),
        ],
    );

    both.kubectl("delete configmap", &["-n", NS, "delete", "configmap", "cm"]);
    both.kubectl("get missing", &["-n", NS, "get", "ingress", "nope"]);
    both.kubectl("delete missing", &["-n", NS, "delete", "configmap", "cm"]);
    let bad = write(dir, "bad.json", NO_PATH_TYPE);
    both.kubectl("create invalid ingress", &["create", "-f", &bad]);
    both.kubectl(
        "create in a missing namespace",
        &["-n", "absent", "create", "configmap", "x"],
    );
}

fn raw_steps(both: &mut Both, api: &RealApiServer) {
    // Where the watch below starts: the list's resourceVersion before the raw writes.
    let (r, l) = both.http("list ingresses", "GET", INGRESSES, None, "");
    let start = (
        r.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned(),
        l.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    both.http(
        "list with a label selector",
        "GET",
        &format!("{INGRESSES}?labelSelector=tier%3Dedge"),
        None,
        "",
    );
    both.http(
        "get missing (404)",
        "GET",
        &format!("{INGRESSES}/nope"),
        None,
        "",
    );
    both.http(
        "get in a missing namespace",
        "GET",
        "/api/v1/namespaces/absent/configmaps/x",
        None,
        "",
    );
    both.http(
        "create without pathType (422)",
        "POST",
        INGRESSES,
        Some("application/json"),
        NO_PATH_TYPE,
    );
    both.http(
        "create an existing one (409)",
        "POST",
        INGRESSES,
        Some("application/json"),
        &NO_PATH_TYPE
            .replace("\"bad\"", "\"api\"")
            .replace("\"/\",", "\"/\",\"pathType\":\"Prefix\","),
    );

    // A raw Ingress to watch: create, merge patch, JSON patch, status, stale write, delete.
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "raw", "namespace": NS},
        "spec": {"ingressClassName": "portico",
                 "defaultBackend": {"service": {"name": "backend", "port": {"number": 80}}},
                 "rules": [{"host": "raw.example", "http": {"paths": [
            {"path": "/", "pathType": "Exact",
             "backend": {"service": {"name": "backend", "port": {"number": 80}}}}]}}]}
    });
    let (r, l) = both.http(
        "create",
        "POST",
        INGRESSES,
        Some("application/json"),
        &ingress.to_string(),
    );
    let stale = (
        r.body["metadata"]["resourceVersion"].clone(),
        l.body["metadata"]["resourceVersion"].clone(),
    );
    both.http(
        "patch merge",
        "PATCH",
        &format!("{INGRESSES}/raw"),
        Some("application/merge-patch+json"),
        r#"{"metadata":{"annotations":{"a":"1"}},"spec":{"rules":[{"host":"raw2.example","http":{"paths":[{"path":"/x","pathType":"Prefix","backend":{"service":{"name":"backend","port":{"number":80}}}}]}}]}}"#,
    );
    both.http(
        "patch json",
        "PATCH",
        &format!("{INGRESSES}/raw"),
        Some("application/json-patch+json"),
        r#"[{"op":"add","path":"/metadata/labels","value":{"l":"v"}},{"op":"test","path":"/spec/ingressClassName","value":"portico"}]"#,
    );
    both.http(
        "patch json failing test",
        "PATCH",
        &format!("{INGRESSES}/raw"),
        Some("application/json-patch+json"),
        r#"[{"op":"test","path":"/spec/ingressClassName","value":"other"}]"#,
    );
    both.http(
        "patch a status through the main resource (ignored)",
        "PATCH",
        &format!("{INGRESSES}/raw"),
        Some("application/merge-patch+json"),
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.9"}]}}}"#,
    );
    both.http(
        "patch status",
        "PATCH",
        &format!("{INGRESSES}/raw/status"),
        Some("application/merge-patch+json"),
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.1"}]}}}"#,
    );
    let (r, l) = both.http(
        "get after status",
        "GET",
        &format!("{INGRESSES}/raw"),
        None,
        "",
    );
    let mut put_status = (r.body.clone(), l.body.clone());
    for body in [&mut put_status.0, &mut put_status.1] {
        body["status"] = json!({"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}});
        body["spec"]["rules"][0]["host"] = json!("ignored-by-status.example");
    }
    let (r, l) = (
        both.real.http(
            "PUT",
            &format!("{INGRESSES}/raw/status"),
            Some("application/json"),
            &put_status.0.to_string(),
        ),
        both.local.http(
            "PUT",
            &format!("{INGRESSES}/raw/status"),
            Some("application/json"),
            &put_status.1.to_string(),
        ),
    );
    both.ledger.answers("put status", &r, &l);
    both.ledger.wrote(both.real.name, "put status", &r.body);
    both.ledger.wrote(both.local.name, "put status", &l.body);
    both.http(
        "invalid status (422)",
        "PATCH",
        &format!("{INGRESSES}/raw/status"),
        Some("application/merge-patch+json"),
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"not-an-ip"}]}}}"#,
    );

    // A write carrying the resourceVersion of the create: 409 Conflict.
    let mut stale_put = (ingress.clone(), ingress.clone());
    stale_put.0["metadata"]["resourceVersion"] = stale.0;
    stale_put.1["metadata"]["resourceVersion"] = stale.1;
    let (r, l) = (
        both.real.http(
            "PUT",
            &format!("{INGRESSES}/raw"),
            Some("application/json"),
            &stale_put.0.to_string(),
        ),
        both.local.http(
            "PUT",
            &format!("{INGRESSES}/raw"),
            Some("application/json"),
            &stale_put.1.to_string(),
        ),
    );
    both.ledger
        .answers("put with a stale resourceVersion (409)", &r, &l);

    both.http(
        "create with empty maps (no fields to own)",
        "POST",
        CONFIGMAPS,
        Some("application/json"),
        r#"{"metadata":{"name":"empty","labels":{}},"data":{}}"#,
    );

    // Server-side apply: a create, managedFields, a conflict, then forced.
    let apply = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: diff\n  labels:\n    owner: a\ndata:\n  k: v\n";
    both.http(
        "server-side apply create",
        "PATCH",
        &format!("{CONFIGMAPS}/applied?fieldManager=manager-a"),
        Some("application/apply-patch+yaml"),
        apply,
    );
    both.http(
        "server-side apply conflict (409)",
        "PATCH",
        &format!("{CONFIGMAPS}/applied?fieldManager=manager-b"),
        Some("application/apply-patch+yaml"),
        &apply.replace("k: v", "k: w"),
    );
    both.http(
        "server-side apply forced",
        "PATCH",
        &format!("{CONFIGMAPS}/applied?fieldManager=manager-b&force=true"),
        Some("application/apply-patch+yaml"),
        &apply.replace("k: v", "k: w"),
    );
    both.http(
        "server-side apply without fieldManager",
        "PATCH",
        &format!("{CONFIGMAPS}/applied"),
        Some("application/apply-patch+yaml"),
        apply,
    );
    both.http(
        "update after apply (managedFields Update entry)",
        "PATCH",
        &format!("{CONFIGMAPS}/applied?fieldManager=updater"),
        Some("application/merge-patch+json"),
        r#"{"data":{"u":"1"}}"#,
    );

    // The other reads clients make: pages, field selectors, kubectl's server-side Table, a
    // streaming list (kube-rs's watcher can ask for one), core Events read as events.k8s.io.
    both.http(
        "list a page (limit, continue)",
        "GET",
        &format!("{CONFIGMAPS}?limit=2"),
        None,
        "",
    );
    both.http(
        "list with a field selector",
        "GET",
        &format!("{INGRESSES}?fieldSelector=metadata.name%3Draw"),
        None,
        "",
    );
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (r, l) = (
        both.real.request("GET", INGRESSES, accept, None, ""),
        both.local.request("GET", INGRESSES, accept, None, ""),
    );
    both.ledger
        .answers("server-side table", &without_ages(r), &without_ages(l));
    let streaming = format!(
        "{INGRESSES}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan\
         &allowWatchBookmarks=true&timeoutSeconds=1"
    );
    let (rw, lw) = (both.real.watch(&streaming), both.local.watch(&streaming));
    both.ledger.compare(
        "streaming list (sendInitialEvents)",
        &json!({"status": rw.0, "events": rw.1}),
        &json!({"status": lw.0, "events": lw.1}),
    );
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "raw.1", "namespace": NS},
        "involvedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                           "namespace": NS, "name": "raw"},
        "reason": "Sync", "message": "synced", "type": "Normal",
        "source": {"component": "portico"},
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
        "count": 1
    });
    both.http(
        "create a core Event",
        "POST",
        "/api/v1/namespaces/diff/events",
        Some("application/json"),
        &event.to_string(),
    );
    both.http(
        "read it as events.k8s.io",
        "GET",
        "/apis/events.k8s.io/v1/namespaces/diff/events/raw.1",
        None,
        "",
    );

    // Out of a label selector and back: a selector watch sees DELETED, then ADDED.
    for (step, patch) in [
        ("label removed", r#"{"metadata":{"labels":{"l":null}}}"#),
        ("label back", r#"{"metadata":{"labels":{"l":"v"}}}"#),
    ] {
        both.http(
            step,
            "PATCH",
            &format!("{INGRESSES}/raw"),
            Some("application/merge-patch+json"),
            patch,
        );
    }

    // Writes that store nothing, or refuse an unknown field.
    both.http(
        "dry-run create",
        "POST",
        &format!("{CONFIGMAPS}?dryRun=All"),
        Some("application/json"),
        r#"{"metadata":{"name":"dry"},"data":{"a":"b"}}"#,
    );
    both.http(
        "dry-run left nothing",
        "GET",
        &format!("{CONFIGMAPS}/dry"),
        None,
        "",
    );
    both.http(
        "strict field validation",
        "POST",
        &format!("{CONFIGMAPS}?fieldValidation=Strict"),
        Some("application/json"),
        r#"{"metadata":{"name":"strict"},"data":{"a":"b"},"spec":{"x":1}}"#,
    );

    // A finalizer holds a deletion until it is removed.
    both.http(
        "create with a finalizer",
        "POST",
        CONFIGMAPS,
        Some("application/json"),
        r#"{"metadata":{"name":"held","finalizers":["example.com/hold"]},"data":{"a":"b"}}"#,
    );
    both.http(
        "delete held by a finalizer",
        "DELETE",
        &format!("{CONFIGMAPS}/held"),
        None,
        "",
    );
    both.http(
        "a new finalizer while deleting (422)",
        "PATCH",
        &format!("{CONFIGMAPS}/held"),
        Some("application/merge-patch+json"),
        r#"{"metadata":{"finalizers":["example.com/hold","example.com/other"]}}"#,
    );
    both.http(
        "last finalizer removed",
        "PATCH",
        &format!("{CONFIGMAPS}/held"),
        Some("application/merge-patch+json"),
        r#"{"metadata":{"finalizers":null}}"#,
    );
    both.http(
        "gone once released",
        "GET",
        &format!("{CONFIGMAPS}/held"),
        None,
        "",
    );
    both.http(
        "delete with a stale uid precondition (409)",
        "DELETE",
        &format!("{CONFIGMAPS}/applied"),
        Some("application/json"),
        r#"{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{"uid":"00000000-0000-0000-0000-000000000000"}}"#,
    );

    both.http("delete", "DELETE", &format!("{INGRESSES}/raw"), None, "");
    both.http(
        "delete again (404)",
        "DELETE",
        &format!("{INGRESSES}/raw"),
        None,
        "",
    );

    // The same with a label selector: objects enter and leave it as ADDED and DELETED.
    let (rw, lw) = (
        both.real.watch(&format!(
            "{INGRESSES}?watch=1&labelSelector=l%3Dv&resourceVersion={}&timeoutSeconds=1",
            start.0
        )),
        both.local.watch(&format!(
            "{INGRESSES}?watch=1&labelSelector=l%3Dv&resourceVersion={}&timeoutSeconds=1",
            start.1
        )),
    );
    both.ledger.compare(
        "watch with a label selector",
        &json!({"status": rw.0, "types": rw.1.iter().map(|e| e["type"].clone()).collect::<Vec<_>>(), "events": rw.1}),
        &json!({"status": lw.0, "types": lw.1.iter().map(|e| e["type"].clone()).collect::<Vec<_>>(), "events": lw.1}),
    );

    // The watch from before the raw writes: the same events, in the same order.
    let (rw, lw) = (
        both.real.watch(&format!(
            "{INGRESSES}?watch=1&resourceVersion={}&timeoutSeconds=1",
            start.0
        )),
        both.local.watch(&format!(
            "{INGRESSES}?watch=1&resourceVersion={}&timeoutSeconds=1",
            start.1
        )),
    );
    both.ledger.compare(
        "watch from a resourceVersion",
        &json!({"status": rw.0, "events": rw.1}),
        &json!({"status": lw.0, "events": lw.1}),
    );
    for (side, events) in [(both.real.name, &rw.1), (both.local.name, &lw.1)] {
        let versions: Vec<u64> = events
            .iter()
            .map(|e| {
                e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{side}: watch events out of order: {versions:?}"
        );
    }

    // EndpointSlices with a loopback address.
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "loop", "namespace": NS, "labels": {"kubernetes.io/service-name": "backend"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]
    });
    let path = "/apis/discovery.k8s.io/v1/namespaces/diff/endpointslices";
    let body = slice.to_string();
    let (r, l) = (
        both.real
            .http("POST", path, Some("application/json"), &body),
        both.local
            .http("POST", path, Some("application/json"), &body),
    );
    both.ledger
        .answers("endpointslice with a loopback address", &r, &l);

    // A resourceVersion older than what the server keeps: 410 Expired, in the stream. The
    // watch cache of kube-apiserver starts at the revision it comes up at (it keeps events from
    // there until its window fills), so restart it; portico-apiserver keeps a window of
    // WATCH_WINDOW events, long passed by now. The message names the oldest version kept.
    api.stop_apiserver();
    api.start_apiserver();
    let old = format!("{INGRESSES}?watch=1&resourceVersion=1&timeoutSeconds=1");
    let (rw, lw) = (both.real.watch(&old), both.local.watch(&old));
    let digits = |events: Vec<Value>| -> Vec<Value> {
        events
            .into_iter()
            .map(|mut e| {
                if let Some(m) = e["object"]["message"].as_str() {
                    let mut text = String::new();
                    for c in m.chars() {
                        if !c.is_ascii_digit() {
                            text.push(c);
                        } else if !text.ends_with('N') {
                            text.push('N');
                        }
                    }
                    e["object"]["message"] = text.into();
                }
                e
            })
            .collect()
    };
    both.ledger.compare(
        "watch from a too-old resourceVersion (410)",
        &json!({"status": rw.0, "events": digits(rw.1)}),
        &json!({"status": lw.0, "events": digits(lw.1)}),
    );

    // Deleting the namespace, last: kube-apiserver marks it Terminating and leaves its objects
    // to the namespace controller (there is none here); portico-apiserver deletes it and its
    // objects at once.
    let (r, l) = (
        both.real
            .http("DELETE", "/api/v1/namespaces/diff", None, ""),
        both.local
            .http("DELETE", "/api/v1/namespaces/diff", None, ""),
    );
    both.ledger.answers("delete the namespace", &r, &l);
    both.http(
        "the namespace's objects after its deletion",
        "GET",
        CONFIGMAPS,
        None,
        "",
    );
}

/// A server-side Table without its Age cells, which depend on when each server was asked.
fn without_ages(mut answer: Answer) -> Answer {
    let age = answer.body["columnDefinitions"]
        .as_array()
        .and_then(|columns| columns.iter().position(|c| c["name"] == "Age"));
    if let (Some(age), Some(rows)) = (age, answer.body["rows"].as_array_mut()) {
        for row in rows {
            row["cells"][age] = json!("<age>");
        }
    }
    answer
}

/// Every difference is a known one, and every known one is still there.
fn check_known(found: &[(String, String, String)]) {
    let is_known = |step: &str, path: &str| {
        KNOWN
            .iter()
            .position(|k| k.step == step && path.starts_with(k.path))
    };
    let unexpected: Vec<String> = found
        .iter()
        .filter(|(step, path, _)| is_known(step, path).is_none())
        .map(|(step, path, what)| format!("[{step}] {path}: {what}"))
        .collect();
    let unseen: Vec<String> = KNOWN
        .iter()
        .filter(|k| {
            !found
                .iter()
                .any(|(step, path, _)| *step == k.step && path.starts_with(k.path))
        })
        .map(|k| format!("[{}] {} ({})", k.step, k.path, k.why))
        .collect();
    assert!(
        unexpected.is_empty() && unseen.is_empty(),
        "differences from kube-apiserver not in KNOWN ({}):\n{}\n\nKNOWN entries no longer seen \
         (fixed? remove them here, in portico-apiserver's lib.rs and ARCHITECTURE.md) ({}):\n{}",
        unexpected.len(),
        unexpected.join("\n"),
        unseen.len(),
        unseen.join("\n")
    );
}
