//! Per-route behaviour from annotations, and table swaps.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_redirect_is_308_to_https() {
    let backend = Backend::start().await;
    let cert = test_cert("secure.test");
    let yaml = service("echo", &[backend.addr])
        + &tls_secret("secure-tls", &cert)
        + &tls_ingress("secure", "secure.test", "echo", "secure-tls");
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/a/b?c=d", proxy.http().port());
    let out = curl(&["-i", "-H", "Host: secure.test", &url]).await;
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 308"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("location: https://secure.test/a/b?c=d"),
        "{text}"
    );
    // curl follows it (to port 443, where nothing listens here); check it tries https.
    let out = curl(&[
        "-L",
        "--max-redirs",
        "1",
        "-o",
        "/dev/null",
        "-w",
        "%{url_effective}",
        "-H",
        "Host: secure.test",
        &url,
    ])
    .await;
    assert!(
        stdout(&out).starts_with("https://secure.test/a/b"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelist_source_range_403() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr])
        + &ingress(
            "closed",
            "closed.test",
            "/",
            "echo",
            &[("whitelist-source-range", "10.0.0.0/8")],
        )
        + &ingress(
            "open",
            "open.test",
            "/",
            "echo",
            &[("whitelist-source-range", "127.0.0.0/8, 10.0.0.0/8")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    assert_eq!(curl_status(&["-H", "Host: closed.test", &url]).await, 403);
    assert_eq!(curl_status(&["-H", "Host: open.test", &url]).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_body_size_413() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr])
        + &ingress(
            "echo",
            "echo.test",
            "/",
            "echo",
            &[("proxy-body-size", "1k")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/upload", proxy.http().port());
    let big = "x".repeat(4096);
    assert_eq!(
        curl_status(&["-H", "Host: echo.test", "--data-binary", &big, &url]).await,
        413
    );
    // Without Content-Length the limit is enforced while streaming.
    let file = TempFile::new("big.bin", &big);
    let data = format!("@{}", file.path());
    assert_eq!(
        curl_status(&[
            "-H",
            "Host: echo.test",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            &url
        ])
        .await,
        413
    );
    assert_eq!(
        curl_status(&["-H", "Host: echo.test", "--data-binary", "small", &url]).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_target_changes_only_the_path() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr])
        + &ingress(
            "rw",
            "rw.test",
            "/api",
            "echo",
            &[("rewrite-target", "/v2")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/api/users?x=1", proxy.http().port());
    let seen = echoed(&stdout(&curl(&["-H", "Host: rw.test", &url]).await));
    assert_eq!(seen["path"], "/v2?x=1");
    assert_eq!(seen["headers"]["host"], "rw.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_sticks_to_one_endpoint() {
    let backends = Backend::start_many(4).await;
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let yaml = service("echo", &addrs)
        + &ingress(
            "sticky",
            "sticky.test",
            "/",
            "echo",
            &[("affinity", "cookie"), ("session-cookie-name", "route")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let jar = TempFile::new("jar.txt", "");
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let out = curl(&[
            "-b",
            jar.path(),
            "-c",
            jar.path(),
            "-H",
            "Host: sticky.test",
            &url,
        ])
        .await;
        seen.insert(
            echoed(&stdout(&out))["backend"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(seen.len(), 1, "one endpoint for one cookie: {seen:?}");
    let jar_text = std::fs::read_to_string(jar.path()).unwrap();
    assert!(jar_text.contains("route"), "{jar_text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_catches_unmatched_requests() {
    let backend = Backend::start().await;
    let yaml = service("fallback", &[backend.addr])
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: dflt, namespace: default}\n\
           spec:\n  defaultBackend: {service: {name: fallback, port: {number: 80}}}\n";
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/anything", proxy.http().port());
    let seen = echoed(&stdout(&curl(&["-H", "Host: whatever.test", &url]).await));
    assert_eq!(seen["path"], "/anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_survives_a_table_swap() {
    let backend = Backend::start().await;
    let proxy = TestProxy::start(
        &(service("echo", &[backend.addr]) + &ingress("ws", "ws.test", "/", "echo", &[])),
    )
    .await;
    let url = format!("ws://127.0.0.1:{}/ws", proxy.http().port());
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("host", "ws.test".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "before"
    );
    // The route disappears: new requests get 404, the open tunnel keeps working.
    proxy
        .proxy
        .swap_table(table(&service("echo", &[backend.addr])));
    let http = format!("http://127.0.0.1:{}/", proxy.http().port());
    assert_eq!(curl_status(&["-H", "Host: ws.test", &http]).await, 404);
    ws.send(Message::text("after")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_swap_keeps_in_flight_requests() {
    let backend = Backend::start().await;
    let proxy = TestProxy::start(
        &(service("echo", &[backend.addr]) + &ingress("e", "echo.test", "/", "echo", &[])),
    )
    .await;
    let url = format!("http://127.0.0.1:{}/slow/3000", proxy.http().port());
    let slow = tokio::spawn(async move { curl_status(&["-H", "Host: echo.test", &url]).await });
    backend.arrived(1).await;
    proxy.proxy.swap_table(table(""));
    assert_eq!(
        slow.await.unwrap(),
        200,
        "the request started on the old table finishes"
    );
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    assert_eq!(curl_status(&["-H", "Host: echo.test", &url]).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_finishes_in_flight_and_stops_accepting() {
    let backend = Backend::start().await;
    let proxy = TestProxy::start(
        &(service("echo", &[backend.addr]) + &ingress("e", "echo.test", "/", "echo", &[])),
    )
    .await;
    let port = proxy.http().port();
    let url = format!("http://127.0.0.1:{port}/slow/3000");
    let slow = tokio::spawn(async move { curl_status(&["-H", "Host: echo.test", &url]).await });
    backend.arrived(1).await;
    let started = std::time::Instant::now();
    proxy.proxy.shutdown(Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "drain ends once idle"
    );
    assert_eq!(slow.await.unwrap(), 200);
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        curl_status(&["-H", "Host: echo.test", &url]).await,
        0,
        "listener closed"
    );
}
