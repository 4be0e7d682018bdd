//! What the in-process API server could not do (issue 16): kubectl's `create` subcommands send
//! protobuf bodies, and the real server takes them.

use crate::common::real_apiserver::RealApiServer;
use crate::{ok, run};

/// What the in-process API server could not do (issue 16): kubectl's `create` subcommands send
/// protobuf bodies. Against the real server each one is created and reads back.
#[test]
fn kubectl_create_sends_protobuf_and_the_real_server_stores_it() {
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["secure.example".into()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();

    let creates: Vec<(Vec<String>, &str)> = vec![
        (vec!["namespace".into(), "x".into()], "namespace/x created"),
        (
            vec![
                "secret".into(),
                "tls".into(),
                "t".into(),
                format!("--cert={}", cert.display()),
                format!("--key={}", key.display()),
            ],
            "secret/t created",
        ),
        (
            vec!["configmap".into(), "c".into(), "--from-literal=a=b".into()],
            "configmap/c created",
        ),
        (
            vec!["serviceaccount".into(), "s".into()],
            "serviceaccount/s created",
        ),
        (
            vec![
                "ingress".into(),
                "i".into(),
                "--rule=secure.example/=svc:80,tls=t".into(),
            ],
            "ingress.networking.k8s.io/i created",
        ),
    ];
    for (args, expected) in creates {
        let mut cmd = api.kubectl();
        cmd.args(["-v=8", "create"]).args(&args);
        if args[0] != "namespace" {
            cmd.args(["-n", "x"]);
        }
        let out = run(&mut cmd);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
        assert_eq!(stdout.trim(), expected);
        // kubectl -v=8 shows the request's headers: the body it sent was protobuf.
        let post = stderr
            .split_once("\"Request\" verb=\"POST\"")
            .or_else(|| stderr.split_once("POST https://"))
            .unwrap_or_else(|| panic!("no POST in kubectl's log:\n{stderr}"))
            .1;
        assert!(
            post.contains("Content-Type: application/vnd.kubernetes.protobuf"),
            "{args:?} sent no protobuf:\n{stderr}"
        );
    }
    let secret = ok(api.kubectl().args([
        "-n",
        "x",
        "get",
        "secret",
        "t",
        "-o",
        "jsonpath={.type} {.data.tls\\.crt}",
    ]));
    let (kind, data) = secret.split_once(' ').unwrap();
    assert_eq!(kind, "kubernetes.io/tls");
    assert!(!data.is_empty());
    let tls = ok(api.kubectl().args([
        "-n",
        "x",
        "get",
        "ingress",
        "i",
        "-o",
        "jsonpath={.spec.tls[0].secretName} {.spec.rules[0].host}",
    ]));
    assert_eq!(tls, "t secure.example");
}
