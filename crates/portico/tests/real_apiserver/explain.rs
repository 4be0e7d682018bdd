//! `kubectl explain` held to the real kube-apiserver (issue 16): the in-process server's OpenAPI
//! v3 documents carry the real server's schemas (portico-apiserver's `openapi/`, vendored by
//! `openapi/update`), so every explain of every served kind must print, byte for byte, what
//! the real server's documents make kubectl print.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use portico_apiserver::registry::RESOURCES;
use portico_apiserver::{ApiServer, ServerHandle};

use crate::common::real_apiserver::RealApiServer;
use crate::ok;

/// The in-process server on a runtime of its own, over HTTP.
struct Local {
    _server: ApiServer,
    _handle: ServerHandle,
    _runtime: tokio::runtime::Runtime,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Local {
    /// Serves `minor` (the real server's), so kubectl's dispatcher runs the same kubectl for both.
    fn start(minor: u32) -> Local {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _enter = runtime.enter();
        let server = ApiServer::builder().minor_version(minor).build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let handle = server.serve(listener).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        handle.write_kubeconfig(&kubeconfig).unwrap();
        Local {
            _server: server,
            _handle: handle,
            _runtime: runtime,
            kubeconfig,
            _dir: dir,
        }
    }
}

/// `kubectl explain args` against one server, with a fresh HOME (no cached OpenAPI).
fn explain(kubeconfig: &PathBuf, args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    ok(Command::new("kubectl")
        .arg("explain")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home.path())
        .stdin(Stdio::null()))
}

/// Every served kind, whole and `--recursive`, and the fields users ask about, by plural, short
/// name and kind: the same output from both servers.
#[test]
fn kubectl_explain_prints_the_same_from_both_servers() {
    let api = RealApiServer::start();
    let version: serde_json::Value =
        serde_json::from_str(&ok(api.kubectl().args(["get", "--raw", "/version"]))).unwrap();
    let minor: u32 = version["minor"]
        .as_str()
        .and_then(|m| m.trim_end_matches('+').parse().ok())
        .unwrap_or_else(|| panic!("no minor in {version}"));
    let local = Local::start(minor);

    let mut commands: Vec<Vec<String>> = Vec::new();
    for info in RESOURCES {
        for recursive in [false, true] {
            let mut args = vec![
                info.plural.to_owned(),
                "--api-version".to_owned(),
                info.api_version(),
            ];
            if recursive {
                args.push("--recursive".to_owned());
            }
            commands.push(args);
        }
    }
    for fields in [
        "ingress.spec.rules",
        "ingress.spec.rules.http.paths.pathType",
        "ing.spec.tls",
        "Ingress.status.loadBalancer.ingress.ports",
        "ingressclass.spec.parameters",
        "service.spec",
        "svc.spec.ports.targetPort",
        "secret",
        "secret.type",
        "configmap.data",
        "endpointslice",
        "endpointslice.endpoints.conditions",
        "lease.spec",
        "namespace.status.phase",
        "event.involvedObject",
        "serviceaccount.secrets",
        "statefulset.spec.template.spec.containers.ports",
        "poddisruptionbudget.spec.maxUnavailable",
        "networkpolicy.spec.ingress.from",
        "clusterrole.rules",
        "rolebinding.subjects",
    ] {
        commands.push(vec![fields.to_owned()]);
    }
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let real = explain(&api.kubeconfig, &args);
        let ours = explain(&local.kubeconfig, &args);
        assert!(
            !real.trim().is_empty(),
            "{args:?}: the real server explained nothing"
        );
        if ours != real {
            let line = ours
                .lines()
                .zip(real.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(ours.lines().count().min(real.lines().count()));
            let show = |s: &str| {
                s.lines()
                    .skip(line.saturating_sub(3))
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "kubectl explain {args:?} differs at line {}:\nours:\n{}\nreal:\n{}",
                line + 1,
                show(&ours),
                show(&real)
            );
        }
    }
}

/// The vendored schemas are the real server's: every component schema the in-process server
/// publishes equals the real kube-apiserver's schema of the same name, so a Kubernetes bump in
/// tests/kube without `crates/portico-apiserver/openapi/update` fails here.
#[test]
fn the_served_schemas_are_the_real_servers() {
    let api = RealApiServer::start();
    let local = Local::start(33);
    let raw = |kubeconfig: &PathBuf, path: &str| -> serde_json::Value {
        let home = tempfile::tempdir().unwrap();
        serde_json::from_str(&ok(Command::new("kubectl")
            .args(["get", "--raw", path])
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", home.path())))
        .unwrap()
    };
    let index = raw(&local.kubeconfig, "/openapi/v3");
    let paths = index["paths"].as_object().unwrap();
    assert!(!paths.is_empty());
    for path in paths.keys() {
        let ours = raw(&local.kubeconfig, &format!("/openapi/v3/{path}"));
        let real = raw(&api.kubeconfig, &format!("/openapi/v3/{path}"));
        let ours = ours["components"]["schemas"].as_object().unwrap();
        assert!(!ours.is_empty(), "{path} has no schemas");
        for (name, schema) in ours {
            assert_eq!(
                Some(schema),
                real["components"]["schemas"].get(name),
                "{path}: {name} is not the real server's (run crates/portico-apiserver/openapi/update)"
            );
        }
    }
}
