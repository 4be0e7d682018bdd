//! Backend failures, retries and protocols.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::common::*;

/// An address nothing listens on (bound, then released).
async fn dead_addr() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_endpoint_is_retried_elsewhere_and_ejected() {
    let backend = Backend::start().await;
    let dead = dead_addr().await;
    let yaml =
        service("echo", &[dead, backend.addr]) + &ingress("e", "echo.test", "/", "echo", &[]);
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/upload", proxy.http().port());
    for _ in 0..10 {
        // A POST with a body too: nothing was sent to the dead endpoint, so it may move on.
        let out = curl(&["-H", "Host: echo.test", "--data-binary", "payload", &url]).await;
        let seen = echoed(&stdout(&out));
        assert_eq!(seen["backend"], backend.addr.to_string());
        assert_eq!(seen["received"], 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_is_503_and_all_dead_is_502() {
    let dead = dead_addr().await;
    let yaml = service("empty", &[])
        + &ingress("empty", "empty.test", "/", "empty", &[])
        + &ingress("missing", "missing.test", "/", "nosuchservice", &[])
        + &service("dead", &[dead])
        + &ingress("dead", "dead.test", "/", "dead", &[]);
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    assert_eq!(curl_status(&["-H", "Host: empty.test", &url]).await, 503);
    assert_eq!(curl_status(&["-H", "Host: missing.test", &url]).await, 503);
    assert_eq!(curl_status(&["-H", "Host: dead.test", &url]).await, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closing_without_answer_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _task = TaskGuard(tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            // Read the request, then hang up without a response.
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
        }
    }));
    let yaml = service("broken", &[addr]) + &ingress("b", "broken.test", "/", "broken", &[]);
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    assert_eq!(curl_status(&["-H", "Host: broken.test", &url]).await, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_504_after_read_timeout() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr])
        + &ingress(
            "s",
            "slow.test",
            "/",
            "echo",
            &[("proxy-read-timeout", "1")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/slow/10000", proxy.http().port());
    let started = std::time::Instant::now();
    assert_eq!(curl_status(&["-H", "Host: slow.test", &url]).await, 504);
    assert!(started.elapsed() < Duration::from_secs(9));
    let url = format!("http://127.0.0.1:{}/slow/10", proxy.http().port());
    assert_eq!(curl_status(&["-H", "Host: slow.test", &url]).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_trailers_pass_through_http2() {
    let backend = Backend::start().await;
    let yaml = service("grpc", &[backend.addr])
        + &ingress(
            "g",
            "grpc.test",
            "/",
            "grpc",
            &[("backend-protocol", "GRPC")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("https://127.0.0.1:{}/trailers", proxy.https().port());
    let out = run(
        "nghttp",
        &[
            "-v",
            "-H",
            ":authority: grpc.test",
            "-H",
            "te: trailers",
            &url,
        ],
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.contains("grpc-status: 0"),
        "trailers reach the client: {text}"
    );
    assert!(text.contains("grpc-message: all-good"), "{text}");
    assert!(
        text.contains("\"version\":\"HTTP/2.0\""),
        "h2c upstream: {text}"
    );
    // The same over h2c to the proxy.
    let url = format!("http://127.0.0.1:{}/trailers", proxy.http().port());
    let out = run("nghttp", &["-v", "-H", ":authority: grpc.test", &url]).await;
    assert!(stdout(&out).contains("grpc-status: 0"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstreams_for_https_and_grpcs() {
    let backend = Backend::start_tls().await;
    let yaml = service("secure", &[backend.addr])
        + &ingress(
            "h1",
            "https-backend.test",
            "/",
            "secure",
            &[("backend-protocol", "HTTPS")],
        )
        + &ingress(
            "h2",
            "grpcs-backend.test",
            "/",
            "secure",
            &[("backend-protocol", "GRPCS")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/over-tls", proxy.http().port());
    let seen = echoed(&stdout(
        &curl(&["-H", "Host: https-backend.test", &url]).await,
    ));
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["path"], "/over-tls");
    let seen = echoed(&stdout(
        &curl(&["-H", "Host: grpcs-backend.test", &url]).await,
    ));
    assert_eq!(seen["version"], "HTTP/2.0");
    let url = format!("https://127.0.0.1:{}/trailers", proxy.https().port());
    let out = run(
        "nghttp",
        &[
            "-v",
            "-H",
            ":authority: grpcs-backend.test",
            "-H",
            "te: trailers",
            &url,
        ],
    )
    .await;
    assert!(stdout(&out).contains("grpc-status: 0"), "{}", stdout(&out));
}
