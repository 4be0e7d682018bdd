//! The per-request observation point: counters by protocol and status class, upstream
//! errors, the latency histogram, and the access log (only when enabled).

use std::time::Duration;

use portico_proxy::{Protocol, StatusClass};
use portico_test_support::process::Signal;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_count_requests_by_protocol_and_status_class() {
    let backend = Backend::start().await;
    // A port bound but not listening, held by the test: its endpoint refuses connections,
    // and no other process can start listening on it meanwhile.
    let dead_socket = tokio::net::TcpSocket::new_v4().unwrap();
    dead_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = dead_socket.local_addr().unwrap();
    let yaml = service("echo", &[backend.addr])
        + &service("dead", &[dead])
        + &ingress("echo", "echo.test", "/", "echo", &[])
        + &ingress("dead", "dead.test", "/", "dead", &[]);
    let proxy = TestProxy::start(&yaml).await;
    let before = proxy.proxy.metrics();
    assert!(before.requests.iter().all(|&(_, _, n)| n == 0));
    assert_eq!(before.latency.count, 0);

    let url = format!("http://{}/x?token=1", proxy.http());
    for _ in 0..2 {
        assert_eq!(curl_status(&["-H", "Host: echo.test", &url]).await, 200);
    }
    assert_eq!(curl_status(&["-H", "Host: nothing.test", &url]).await, 404);
    assert_eq!(
        curl_status(&["--http2-prior-knowledge", "-H", "Host: echo.test", &url]).await,
        200
    );
    let dead_status = curl_status(&["-H", "Host: dead.test", &url]).await;
    assert_eq!(dead_status, 502);
    let h3 = proxy.h3().to_string();
    let out = run(
        python().to_str().unwrap(),
        &[&script("h3client.py"), "get", &h3, "echo.test", "/"],
    )
    .await;
    assert!(out.status.success(), "h3client: {}", stdout(&out));

    let m = proxy.proxy.metrics_handle().snapshot();
    assert_eq!(
        m.requests(Protocol::Http1, StatusClass::of(200.try_into().unwrap())),
        2
    );
    let class = |code: u16| StatusClass::of(code.try_into().unwrap());
    assert_eq!(m.requests(Protocol::Http1, class(404)), 1);
    assert_eq!(m.requests(Protocol::Http1, class(502)), 1);
    assert_eq!(m.requests(Protocol::Http2, class(200)), 1);
    assert_eq!(m.requests(Protocol::Http3, class(200)), 1);
    let total: u64 = m.requests.iter().map(|&(_, _, n)| n).sum();
    assert_eq!(total, 6, "{m:?}");
    assert!(m.upstream_errors >= 1, "{m:?}");
    assert_eq!(m.latency.count, 6);
    assert_eq!(m.latency.buckets.last().unwrap().0, f64::INFINITY);
    assert!(m.latency.sum_seconds > 0.0);
}

/// Runs the standalone binary (with `extra` flags), sends one request with a query string,
/// stops it, and returns its stderr.
async fn standalone_stderr(extra: &[&str]) -> String {
    let backend = Backend::start().await;
    let file = TempFile::new(
        "observe-routes.yaml",
        &(service("echo", &[backend.addr]) + &ingress("e", "log.test", "/", "echo", &[])),
    );
    let program = Program::new(STANDALONE)
        .args([
            "--table",
            file.path(),
            "--http",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .args(extra)
        .env("RUST_LOG", "info");
    let mut proxy = Standalone::start(program).await;
    let url = format!("http://{}/logged/path?token=s3cr3t", proxy.addr("http"));
    assert_eq!(curl_status(&["-H", "Host: log.test", &url]).await, 200);
    proxy.process.signal(Signal::TERM);
    let lines = proxy
        .process
        .output()
        .ended(Duration::from_secs(30))
        .await
        .expect("proxy exits after SIGTERM");
    proxy
        .process
        .wait(Duration::from_secs(30))
        .await
        .expect("proxy exits after SIGTERM");
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_only_when_enabled_and_without_query() {
    let quiet = standalone_stderr(&[]).await;
    assert!(quiet.contains("draining"), "stderr captured: {quiet}");
    assert!(!quiet.contains("portico::access"), "{quiet}");

    let logged = standalone_stderr(&["--access-log"]).await;
    let access: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("portico::access"))
        .collect();
    assert_eq!(access.len(), 1, "{logged}");
    let line = access[0];
    for want in [
        "path=/logged/path",
        "status=200",
        "protocol=\"HTTP/1.1\"",
        "method=GET",
        "host=log.test",
        "ingress=default/e",
        "client=127.0.0.1",
    ] {
        assert!(line.contains(want), "{want} missing in {line}");
    }
    assert!(!logged.contains("s3cr3t"), "query string logged: {logged}");
}
