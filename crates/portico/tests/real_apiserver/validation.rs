//! portico-model's table of what kube-apiserver accepts and rejects for an Ingress
//! (`testdata/apiserver-validation-cases.tsv`, which the model's own
//! validation is tested against) held to the real kube-apiserver: every row is sent as a
//! server-side dry run and the real verdict must be the table's.

use std::process::Command;

use serde_json::{Value, json};

use crate::common::real_apiserver::RealApiServer;

const INGRESSES: &str = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";

fn table() -> String {
    let path = portico_test_support::testdata("apiserver-validation-cases.tsv");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An Ingress that the API server accepts; each case changes one thing.
fn valid() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "case", "namespace": "default"},
        "spec": {"rules": [{"host": "a.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "svc", "port": {"number": 80}}}}
        ]}}]},
    })
}

fn value_of(text: &str) -> Option<&str> {
    (text != "(empty)").then_some(text)
}

/// The Ingresses a row describes (one per path type for `Exact|Prefix`), or a status for the
/// `status` rows (sent to the status subresource of a stored valid Ingress).
fn cases(field: &str, path_type: &str, value: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut one = |what: String, change: &dyn Fn(&mut Value)| {
        let mut ingress = valid();
        change(&mut ingress);
        out.push((what, ingress));
    };
    let path0 = "/spec/rules/0/http/paths/0";
    match field {
        "path" => {
            for path_type in path_type.split('|') {
                one(format!("path {value:?} {path_type}"), &|i| {
                    let path = i.pointer_mut(path0).unwrap();
                    path["pathType"] = json!(path_type);
                    match value_of(value) {
                        Some(v) => path["path"] = json!(v),
                        None => {
                            path.as_object_mut().unwrap().remove("path");
                        }
                    }
                });
            }
        }
        "pathType" => one(format!("pathType {value}"), &|i| {
            let path = i.pointer_mut(path0).unwrap();
            if value == "(missing)" {
                path.as_object_mut().unwrap().remove("pathType");
            } else {
                path["pathType"] = json!(value);
            }
        }),
        "host" => one(format!("host {value:?}"), &|i| {
            let rule = i.pointer_mut("/spec/rules/0").unwrap();
            match value_of(value) {
                Some(v) => rule["host"] = json!(v),
                None => {
                    rule.as_object_mut().unwrap().remove("host");
                }
            }
        }),
        "tls.hosts" => one(format!("tls.hosts {value:?}"), &|i| {
            i["spec"]["tls"] = json!([{"hosts": [value], "secretName": "tls"}]);
        }),
        "tls.secretName" => one(format!("tls.secretName {value:?}"), &|i| {
            i["spec"]["tls"] = match value_of(value) {
                Some(v) => json!([{"hosts": ["a.example"], "secretName": v}]),
                None => json!([{"hosts": ["a.example"]}]),
            };
        }),
        "ingressClassName" => one(format!("ingressClassName {value:?}"), &|i| {
            i["spec"]["ingressClassName"] = json!(value);
        }),
        "annotation" => {
            assert_eq!(
                value,
                "kubernetes.io/ingress.class=a with ingressClassName=b"
            );
            one(value.to_owned(), &|i| {
                i["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": "a"});
                i["spec"]["ingressClassName"] = json!("b");
            });
        }
        "spec" => one(value.to_owned(), &|i| match value {
            "no rules and no defaultBackend" => i["spec"] = json!({}),
            "rule with host and no http" => i["spec"]["rules"] = json!([{"host": "a.example"}]),
            "rule with http.paths: []" => {
                i["spec"]["rules"] = json!([{"host": "a.example", "http": {"paths": []}}]);
            }
            v if v.starts_with("same path twice") => {
                let paths = i.pointer_mut("/spec/rules/0/http/paths").unwrap();
                let mut exact = paths[0].clone();
                exact["pathType"] = json!("Exact");
                paths.as_array_mut().unwrap().push(exact);
            }
            other => panic!("no case for spec row {other:?}: add one"),
        }),
        "backend" => one(value.to_owned(), &|i| {
            let backend = &mut i.pointer_mut(path0).unwrap()["backend"];
            match value {
                "service and resource both set" => {
                    backend["resource"] =
                        json!({"apiGroup": "k8s.example.com", "kind": "Bucket", "name": "b"});
                }
                "neither service nor resource" => *backend = json!({}),
                "port.name and port.number both set" => {
                    backend["service"]["port"] = json!({"name": "http", "number": 80});
                }
                "port.number 0 / no port" => backend["service"]["port"] = json!({}),
                "port.number 70000" => backend["service"]["port"] = json!({"number": 70000}),
                "port.name Http_Port" => backend["service"]["port"] = json!({"name": "Http_Port"}),
                "service.name 1svc" => backend["service"]["name"] = json!("1svc"),
                other => panic!("no case for backend row {other:?}: add one"),
            }
        }),
        "status" => {
            let status = match value {
                "loadBalancer.ingress[].hostname=1.2.3.4" => json!({"hostname": "1.2.3.4"}),
                "loadBalancer.ingress[].ip=not-an-ip" => json!({"ip": "not-an-ip"}),
                other => panic!("no case for status row {other:?}: add one"),
            };
            out.push((
                format!("status {value}"),
                json!({"status": {"loadBalancer": {"ingress": [status]}}}),
            ));
        }
        other => panic!("no case for field {other:?}: add one"),
    }
    out
}

/// The HTTP status of a dry-run request with the admin token (curl, our CA).
fn dry_run(api: &RealApiServer, method: &str, path: &str, body: &Value) -> (u16, String) {
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", method])
        .arg("--cacert")
        .arg(&api.ca)
        .args(["-H", &format!("Authorization: Bearer {}", api.token)])
        .args(["-H", &format!("Content-Type: {content_type}")])
        .args(["--data-binary", &body.to_string()])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("{}{path}?dryRun=All", api.server))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

#[test]
fn the_validation_table_holds_against_the_real_api_server() {
    let api = RealApiServer::start();
    // The status rows go to a stored, valid Ingress.
    let mut stored = valid();
    stored["metadata"]["name"] = json!("stored");
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-X", "POST"])
        .arg("--cacert")
        .arg(&api.ca)
        .args(["-H", &format!("Authorization: Bearer {}", api.token)])
        .args(["-H", "Content-Type: application/json"])
        .args(["--data-binary", &stored.to_string()])
        .arg(format!("{}{INGRESSES}", api.server))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let table = table();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let (field, path_type, value, verdict) = (cols[0], cols[1], cols[2], cols[3]);
        let allowed: Vec<&str> = verdict.split('|').collect();
        for (what, body) in cases(field, path_type, value) {
            let (code, answer) = if field == "status" {
                dry_run(&api, "PATCH", &format!("{INGRESSES}/stored/status"), &body)
            } else {
                dry_run(&api, "POST", INGRESSES, &body)
            };
            let real = match code {
                200 | 201 => "accept",
                422 => "reject",
                other => panic!("{what}: HTTP {other}: {answer}"),
            };
            if allowed.len() > 1 {
                // The table leaves it to a feature gate; say which way this release went.
                eprintln!("{what}: {real} (kube-apiserver v1.34 defaults)");
            }
            if !allowed.contains(&real) {
                wrong.push(format!(
                    "{what}: the table says {verdict}, the real server {real}: {answer}"
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} cases");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The manifests the other crates' tests are built on (the ingress-controller-conformance
/// Ingresses and the docs' minimal Ingress) are what the real API server admits, unchanged.
#[test]
fn the_test_data_manifests_are_admitted_by_the_real_api_server() {
    let api = RealApiServer::start();
    let mut files = vec![portico_test_support::testdata("minimal-ingress.yaml")];
    for entry in std::fs::read_dir(portico_test_support::testdata("manifests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    // The docs' minimal Ingress and the five conformance manifests.
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        let out = api
            .kubectl()
            .args(["-n", "default", "create", "--dry-run=server", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("created (server dry run)"),
            "{}: {stdout}{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
