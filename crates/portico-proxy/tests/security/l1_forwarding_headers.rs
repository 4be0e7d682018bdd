//! L1: `Forwarded`, `X-Forwarded-Scheme`, `X-Scheme`, `X-Original-URL`/`-URI`,
//! `X-Rewrite-URL`, `True-Client-IP`, `X-Client-IP` passed through from any client, and
//! `X-Forwarded-For` was appended to whatever the client sent, so a backend trusting them
//! (as applications behind ingress-nginx do) took the client's word for its address, scheme
//! and URL. What must hold: from a peer outside `trusted_proxies` (empty by default) those
//! headers are dropped and `X-Forwarded-For` is the peer alone; we set `X-Real-IP`,
//! `X-Forwarded-Proto/Host/Port`, `X-Scheme` and `X-Forwarded-Scheme` ourselves; from a
//! trusted peer they pass and `X-Forwarded-For` is appended to. On the lean upstream path
//! (bodiless requests) and hyper's (with a body), over HTTP/1.1 and HTTP/2.

use crate::common::*;

const SPOOFED: [(&str, &str); 14] = [
    ("Forwarded", "for=6.6.6.6;proto=https"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Prefix", "/evil"),
    ("X-Scheme", "https"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Original-URL", "/admin"),
    ("X-Original-URI", "/admin"),
    ("X-Rewrite-URL", "/admin"),
];

/// The headers the echo backend saw for one request with every spoofed header.
async fn seen(proxy: &TestProxy, extra: &[&str]) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    let headers: Vec<String> = SPOOFED.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    let mut args: Vec<&str> = vec!["-H", "Host: app.test"];
    for h in &headers {
        args.extend(["-H", h]);
    }
    args.extend_from_slice(extra);
    args.push(&url);
    let out = curl(&args).await;
    echoed(&stdout(&out))["headers"].clone()
}

const WAYS: [&[&str]; 4] = [
    &["--http1.1"],
    &["--http1.1", "--data", "body"],
    &["--http2-prior-knowledge"],
    &["--http2-prior-knowledge", "--data", "body"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_cannot_claim_an_address_scheme_or_url() {
    let backend = Backend::start().await;
    let yaml = service("app", &[backend.addr]) + &ingress("app", "app.test", "/", "app", &[]);
    let proxy = TestProxy::start(&yaml).await;
    for way in WAYS {
        let h = seen(&proxy, way).await;
        let port = proxy.http().port().to_string();
        let ours = [
            ("x-forwarded-for", "127.0.0.1"),
            ("x-real-ip", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "app.test"),
            ("x-forwarded-port", port.as_str()),
            ("x-scheme", "http"),
            ("x-forwarded-scheme", "http"),
        ];
        for (name, value) in ours {
            assert_eq!(h[name], value, "{name} via {way:?}: {h}");
        }
        for gone in [
            "forwarded",
            "x-forwarded-prefix",
            "x-client-ip",
            "true-client-ip",
            "x-original-url",
            "x-original-uri",
            "x-rewrite-url",
        ] {
            assert!(h.get(gone).is_none(), "{gone} passed via {way:?}: {h}");
        }
        assert!(!h.to_string().contains("6.6.6.6"), "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_believed_and_appended_to() {
    let backend = Backend::start().await;
    let yaml = service("app", &[backend.addr]) + &ingress("app", "app.test", "/", "app", &[]);
    let proxy = TestProxy::start_with(&yaml, |c| {
        c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    for way in WAYS {
        let h = seen(&proxy, way).await;
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "{way:?}: {h}");
        assert_eq!(h["forwarded"], "for=6.6.6.6;proto=https");
        assert_eq!(h["x-original-url"], "/admin");
        assert_eq!(h["true-client-ip"], "6.6.6.6");
        // Still ours: what this hop knows about its own connection.
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
    // Several X-Forwarded-For lines from a trusted proxy are one list.
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    let out = curl(&[
        "-H",
        "Host: app.test",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Forwarded-For: 7.7.7.7, 8.8.8.8",
        &url,
    ])
    .await;
    assert_eq!(
        echoed(&stdout(&out))["headers"]["x-forwarded-for"],
        "6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1"
    );
    // A trusted list that does not hold the peer trusts nobody here.
    let other = TestProxy::start_with(&yaml, |c| {
        c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let h = seen(&other, &["--http1.1"]).await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert!(h.get("forwarded").is_none(), "{h}");
}
