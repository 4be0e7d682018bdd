//! H4: request paths were matched as received, so `/x/../admin`, `/%2e%2e/admin`,
//! `//admin`, `/admin%2Fx`, `/%61dmin` and `/admin;jsessionid=1` missed the `/admin` route
//! (restricted by `whitelist-source-range`), matched the open `/` route and reached a
//! backend that reads them as `/admin`. What must hold: the path is made canonical before
//! routing and policy (dot segments, unreserved escapes, merged slashes, parameters ignored
//! for matching), `%2F`/`%5C` are refused with 400, the upstream sees the canonical path,
//! and `rewrite-target` captures come from it. Over HTTP/1.1 (curl `--path-as-is` and a raw
//! socket), HTTP/2 and HTTP/3.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// `/admin` open only to 10.0.0.0/8 (not us, on 127.0.0.1), `/` open to all: the setup in
/// the review (annotations apply per Ingress, so one Ingress per policy, one Service).
async fn start() -> (Backend, TestProxy) {
    let backend = Backend::start().await;
    let yaml = service("app", &[backend.addr])
        + &ingress(
            "admin",
            "app.test",
            "/admin",
            "app",
            &[("whitelist-source-range", "10.0.0.0/8")],
        )
        + &ingress("public", "app.test", "/", "app", &[]);
    (backend, TestProxy::start(&yaml).await)
}

/// Status and body of one GET of `path`, sent exactly as written.
async fn get(proxy: &TestProxy, extra: &[&str], path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", proxy.http().port());
    let mut args = vec![
        "--path-as-is",
        "-H",
        "Host: app.test",
        "-w",
        "\n%{http_code}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = curl(&args).await;
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// One raw HTTP/1.1 request; the whole answer (the proxy closes after a 400, and the
/// request asks for a close otherwise).
async fn raw(proxy: &TestProxy, head: &str) -> String {
    let mut s = TcpStream::connect(proxy.http()).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const BYPASSES: [&str; 8] = [
    "/x/../admin",
    "/%2e%2e/admin",
    "//admin",
    "/%61dmin",
    "/admin;jsessionid=1",
    "/public/..;/admin",
    "/;x/admin/",
    "/./admin/%2E/",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_trick_meets_the_admin_allowlist() {
    let (_b, proxy) = start().await;
    // The attack's premise: /admin is refused to us, / is served.
    assert_eq!(get(&proxy, &[], "/admin").await.0, 403);
    let (code, body) = get(&proxy, &[], "/public").await;
    assert_eq!(code, 200, "{body}");
    for path in BYPASSES {
        for h2 in [false, true] {
            let extra: &[&str] = if h2 {
                &["--http2-prior-knowledge"]
            } else {
                &["--http1.1"]
            };
            let (code, body) = get(&proxy, extra, path).await;
            assert_eq!(code, 403, "{path} (h2: {h2}) reached a backend: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_separators_and_bad_escapes_are_400() {
    let (_b, proxy) = start().await;
    for path in [
        "/admin%2Fx",
        "/admin%2fx",
        "/x%2F..%2Fadmin",
        "/admin%5Cx",
        "/a%00",
        "/a%zz",
        "/a%4",
    ] {
        let (code, body) = get(&proxy, &[], path).await;
        assert_eq!(code, 400, "{path}: {body}");
    }
    // A raw backslash (curl would send it too; the raw socket shows the bytes on the wire).
    let answer = raw(
        &proxy,
        "GET /x\\..\\admin HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A target that is not a path matches no route's rules and is not forwarded.
    let answer = raw(
        &proxy,
        "OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_socket_tricks_on_the_lean_and_hyper_paths() {
    let (_b, proxy) = start().await;
    for path in BYPASSES {
        // The lean loop (a bodiless GET) and hyper (a body hands the connection over).
        for extra in ["", "Content-Length: 0\r\n"] {
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: keep-alive\r\n\r\n"
            );
            let mut s = TcpStream::connect(proxy.http()).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("answered")
                .unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert!(
                answer.starts_with("HTTP/1.1 403"),
                "{path:?} with {extra:?}: {answer}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_paths_are_normalised_too() {
    let (_b, proxy) = start().await;
    for path in ["/%2e%2e/admin", "//admin", "/admin;x"] {
        let out = run(
            python().to_str().unwrap(),
            &[
                &script("h3client.py"),
                "get",
                &format!("127.0.0.1:{}", proxy.h3().port()),
                "app.test",
                path,
            ],
        )
        .await;
        assert!(
            stdout(&out).contains("status=403"),
            "{path}: {}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_the_canonical_path_with_query_and_parameters() {
    let (_b, proxy) = start().await;
    for (sent, seen) in [
        ("/x/%2e/y/../z?q=%2e%2e/1", "/x/z?q=%2e%2e/1"),
        ("//a//b/", "/a/b/"),
        ("/%7euser/caf%c3%a9", "/~user/caf%C3%A9"),
        ("/app;v=1/./page", "/app;v=1/page"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/plain/path?x=1", "/plain/path?x=1"),
    ] {
        let (code, body) = get(&proxy, &[], sent).await;
        assert_eq!(code, 200, "{sent}: {body}");
        assert_eq!(echoed(&body)["path"], seen, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_original_path_changes_what_is_forwarded_not_what_is_matched() {
    let backend = Backend::start().await;
    let yaml = service("app", &[backend.addr])
        + &ingress(
            "admin",
            "app.test",
            "/admin",
            "app",
            &[("whitelist-source-range", "10.0.0.0/8")],
        )
        + &ingress("public", "app.test", "/", "app", &[]);
    let proxy = TestProxy::start_with(&yaml, |c| c.forward_original_path = true).await;
    for path in BYPASSES {
        assert_eq!(get(&proxy, &[], path).await.0, 403, "{path}");
    }
    for sent in ["/x/%2e/y/../z?q=1", "//a//b/", "/%7euser"] {
        let (code, body) = get(&proxy, &[], sent).await;
        assert_eq!(code, 200, "{sent}: {body}");
        assert_eq!(echoed(&body)["path"], sent);
    }
    assert_eq!(get(&proxy, &[], "/admin%2Fx").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_target_captures_come_from_the_canonical_path() {
    let backend = Backend::start().await;
    // Only /api/... is routed on this host; it is rewritten to /v1/...
    let yaml = service("app", &[backend.addr])
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: api\n  namespace: default\n  annotations:\n\
           \x20   nginx.ingress.kubernetes.io/use-regex: \"true\"\n    nginx.ingress.kubernetes.io/rewrite-target: /v1/$1\n\
           spec:\n  rules:\n  - host: app.test\n    http:\n      paths:\n      - path: /api/(.*)\n        pathType: ImplementationSpecific\n\
           \x20       backend: {service: {name: app, port: {number: 80}}}\n";
    let proxy = TestProxy::start(&yaml).await;
    let (code, body) = get(&proxy, &[], "/api/a/./b//c").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(echoed(&body)["path"], "/v1/a/b/c");
    // The review's escape: /api/../../internal became /v1/../../internal upstream. Now it
    // is /internal, which no route of this host matches.
    let (code, body) = get(&proxy, &[], "/api/../../internal").await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = get(&proxy, &[], "/api/%2e%2e/%2e%2e/internal").await;
    assert_eq!(code, 404, "{body}");
    // Parameters are not captured (matching ignores them).
    let (code, body) = get(&proxy, &[], "/api/x;jsessionid=1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(echoed(&body)["path"], "/v1/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_stay_case_sensitive_as_the_ingress_spec_says() {
    let (_b, proxy) = start().await;
    // /ADMIN is not /admin (Ingress paths are case-sensitive): it is the open route's, and
    // the backend sees /ADMIN. A case-insensitive backend must not serve admin pages under
    // other spellings; this is documented, not changed.
    let (code, body) = get(&proxy, &[], "/ADMIN").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(echoed(&body)["path"], "/ADMIN");
}
