//! HTTP/1.1, HTTP/2 (TLS and h2c), TLS by SNI, conformance expectations, big bodies.

use std::collections::HashMap;

use crate::common::*;

fn basic_manifest(backend: &Backend) -> String {
    service("echo", &[backend.addr]) + &ingress("echo", "echo.test", "/", "echo", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_conformance_headers_and_unchanged_request() {
    let backend = Backend::start().await;
    let proxy = TestProxy::start(&basic_manifest(&backend)).await;
    let url = format!("http://echo.test:{}/some/path?q=1", proxy.http().port());
    let resolve = format!("echo.test:{}:127.0.0.1", proxy.http().port());
    let out = curl(&[
        "--http1.1",
        "-i",
        "--resolve",
        &resolve,
        "-X",
        "PATCH",
        "-A",
        "conformance-agent/1.0",
        &url,
    ])
    .await;
    let text = stdout(&out);
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    for h in ["server:", "date:", "content-length:", "content-type:"] {
        assert!(lower.contains(&format!("\n{h}")), "missing {h} in {head}");
    }
    assert!(
        lower.contains("alt-svc: h3=\""),
        "Alt-Svc advertised: {head}"
    );
    let seen = echoed(body);
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["path"], "/some/path?q=1");
    assert_eq!(seen["version"], "HTTP/1.1", "HTTP/1.1 upstream hop");
    let h = &seen["headers"];
    assert_eq!(h["user-agent"], "conformance-agent/1.0");
    assert_eq!(h["host"], format!("echo.test:{}", proxy.http().port()));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "echo.test");
    assert_eq!(h["x-forwarded-port"], proxy.http().port().to_string());
    assert_eq!(h["x-request-id"].as_str().unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_request_id_kept() {
    let backend = Backend::start().await;
    let proxy = TestProxy::start(&basic_manifest(&backend)).await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    let out = curl(&[
        "-H",
        "Host: echo.test",
        "-H",
        "Connection: keep-alive, x-private",
        "-H",
        "x-private: secret",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "X-Request-ID: abc123",
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        &url,
    ])
    .await;
    let seen = echoed(&stdout(&out));
    let h = seen["headers"].as_object().unwrap();
    assert!(!h.contains_key("x-private"), "{h:?}");
    assert!(!h.contains_key("keep-alive"), "{h:?}");
    assert_eq!(h["x-request-id"], "abc123");
    // The client is no trusted proxy: its X-Forwarded-For is not believed (see the
    // security target's l1_forwarding_headers for the trusted case).
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_requests_reach_all_ten_endpoints() {
    let backends = Backend::start_many(10).await;
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let proxy = TestProxy::start(
        &(service("echo", &addrs) + &ingress("echo", "echo.test", "/", "echo", &[])),
    )
    .await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    let mut args = vec!["-H", "Host: echo.test"];
    for _ in 0..100 {
        args.push(&url);
    }
    let out = curl(&args).await;
    let mut hits: HashMap<String, usize> = HashMap::new();
    for line in stdout(&out).lines() {
        *hits
            .entry(echoed(line)["backend"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(hits.values().sum::<usize>(), 100);
    assert_eq!(hits.len(), 10, "every endpoint served: {hits:?}");
    assert!(
        hits.values().all(|&n| n == 10),
        "round-robin spreads evenly: {hits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_host_is_404_with_standard_headers() {
    let backend = Backend::start().await;
    let proxy = TestProxy::start(&basic_manifest(&backend)).await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    let out = curl(&["-i", "-H", "Host: nothing.test", &url]).await;
    let text = stdout(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 404"), "{text}");
    for h in ["server:", "date:", "content-length:", "content-type:"] {
        assert!(text.contains(h), "missing {h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_by_sni_http2_and_unknown_sni_gets_default_certificate() {
    let backend = Backend::start().await;
    let cert = test_cert("secure.test");
    let ca = TempFile::new("ca.pem", &cert.ca_pem);
    let yaml = service("echo", &[backend.addr])
        + &tls_secret("secure-tls", &cert)
        + &tls_ingress("secure", "secure.test", "echo", "secure-tls");
    let proxy = TestProxy::start(&yaml).await;
    let port = proxy.https().port();
    let resolve = format!("secure.test:{port}:127.0.0.1");
    let url = format!("https://secure.test:{port}/tls");
    // Verified against our CA: the SNI picked the Secret's certificate.
    let out = curl(&[
        "--http2",
        "--cacert",
        ca.path(),
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_version}",
        &url,
    ])
    .await;
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let (body, version) = text.rsplit_once('\n').unwrap();
    assert_eq!(version, "2");
    let seen = echoed(body);
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "HTTP/2 client, HTTP/1.1 upstream"
    );
    let status = curl_status(&[
        "--http1.1",
        "--cacert",
        ca.path(),
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_eq!(status, 200);
    // An unknown name gets the default certificate, which our CA did not sign.
    let other = format!("other.test:{port}:127.0.0.1");
    let out = curl(&[
        "--cacert",
        ca.path(),
        "--resolve",
        &other,
        &format!("https://other.test:{port}/"),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(60),
        "certificate not trusted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = curl_status(&[
        "-k",
        "--resolve",
        &other,
        &format!("https://other.test:{port}/"),
    ])
    .await;
    assert_eq!(
        status, 404,
        "handshake completes with the default certificate; nothing routes"
    );
    // No SNI at all (an IP address): also the default certificate.
    let status = curl_status(&[
        "-k",
        "-H",
        "Host: secure.test",
        &format!("https://127.0.0.1:{port}/"),
    ])
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotates_with_a_table_swap() {
    let backend = Backend::start().await;
    let first = test_cert("secure.test");
    let second = test_cert("secure.test");
    let ca1 = TempFile::new("ca1.pem", &first.ca_pem);
    let ca2 = TempFile::new("ca2.pem", &second.ca_pem);
    let manifest = |cert: &TestCert| {
        service("echo", &[backend.addr])
            + &tls_secret("secure-tls", cert)
            + &tls_ingress("secure", "secure.test", "echo", "secure-tls")
    };
    let proxy = TestProxy::start(&manifest(&first)).await;
    let port = proxy.https().port();
    let resolve = format!("secure.test:{port}:127.0.0.1");
    let url = format!("https://secure.test:{port}/");
    assert_eq!(
        curl_status(&["--cacert", ca1.path(), "--resolve", &resolve, &url]).await,
        200
    );
    proxy.proxy.swap_table(table(&manifest(&second)));
    assert_eq!(
        curl_status(&["--cacert", ca2.path(), "--resolve", &resolve, &url]).await,
        200
    );
    assert_eq!(
        curl_status(&["--cacert", ca1.path(), "--resolve", &resolve, &url]).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge() {
    let backend = Backend::start().await;
    let proxy = TestProxy::start(&basic_manifest(&backend)).await;
    let url = format!("http://127.0.0.1:{}/h2c", proxy.http().port());
    let out = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: echo.test",
        "-w",
        "\n%{http_version}",
        &url,
    ])
    .await;
    let text = stdout(&out);
    let (body, version) = text.rsplit_once('\n').unwrap();
    assert_eq!(version, "2");
    assert_eq!(echoed(body)["path"], "/h2c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_and_download_stream_through() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr])
        + &ingress(
            "echo",
            "echo.test",
            "/",
            "echo",
            &[("proxy-body-size", "64m")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let upload = TempFile::new("upload.bin", &"u".repeat(20 * 1024 * 1024));
    let data = format!("@{}", upload.path());
    for version in ["--http1.1", "--http2"] {
        let url = format!("https://127.0.0.1:{}/upload", proxy.https().port());
        let out = curl(&[
            version,
            "-k",
            "-H",
            "Host: echo.test",
            "--data-binary",
            &data,
            &url,
        ])
        .await;
        assert_eq!(
            echoed(&stdout(&out))["received"],
            20 * 1024 * 1024,
            "{version}"
        );
        let url = format!("https://127.0.0.1:{}/bytes/52428800", proxy.https().port());
        let out = curl(&[
            version,
            "-k",
            "-H",
            "Host: echo.test",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{http_code}",
            &url,
        ])
        .await;
        assert_eq!(stdout(&out), "52428800 200", "{version}");
    }
    // Chunked upload (no Content-Length) over plain HTTP/1.1.
    let url = format!("http://127.0.0.1:{}/upload", proxy.http().port());
    let out = curl(&[
        "-H",
        "Host: echo.test",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &url,
    ])
    .await;
    assert_eq!(echoed(&stdout(&out))["received"], 20 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_many_concurrent_streams() {
    let backend = Backend::start().await;
    let proxy = TestProxy::start_with(&basic_manifest(&backend), |c| {
        c.limits.max_concurrent_streams = 100
    })
    .await;
    let url = format!("https://127.0.0.1:{}/", proxy.https().port());
    let out = run(
        "h2load",
        &[
            "-n",
            "4000",
            "-c",
            "4",
            "-m",
            "100",
            "-H",
            ":authority: echo.test",
            &url,
        ],
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.contains("4000 total") && text.contains("4000 succeeded"),
        "{text}"
    );
    assert!(text.contains("4000 2xx"), "{text}");
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    let out = run(
        "h2load",
        &[
            "-n",
            "2000",
            "-c",
            "2",
            "-m",
            "50",
            "-H",
            ":authority: echo.test",
            &url,
        ],
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.contains("2000 succeeded") && text.contains("2000 2xx"),
        "h2c: {text}"
    );
}
