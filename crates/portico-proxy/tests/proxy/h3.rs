//! HTTP/3 with aioquic (an independent client) and Alt-Svc discovery with httpx.

use crate::common::*;

async fn start() -> (Backend, TestProxy) {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr])
        + &ingress(
            "echo",
            "echo.test",
            "/",
            "echo",
            &[("proxy-body-size", "8m")],
        );
    (backend, TestProxy::start(&yaml).await)
}

async fn h3client(args: &[&str]) -> String {
    let mut all = vec![script("h3client.py")];
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = run(python().to_str().unwrap(), &refs).await;
    assert!(
        out.status.success(),
        "h3client {args:?}: {}\n{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_get_with_standard_headers() {
    let (_b, proxy) = start().await;
    let addr = format!("127.0.0.1:{}", proxy.h3().port());
    let text = h3client(&["get", &addr, "echo.test", "/h3/path?x=1"]).await;
    assert!(text.contains("status=200"), "{text}");
    for h in [
        "header server:",
        "header date:",
        "header content-length:",
        "header content-type:",
    ] {
        assert!(text.contains(h), "missing {h}: {text}");
    }
    let body = text.split_once("body=").unwrap().1;
    let seen = echoed(body);
    assert_eq!(seen["path"], "/h3/path?x=1");
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["headers"]["user-agent"], "aioquic-test/1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["host"], "echo.test");
    let text = h3client(&["get", &addr, "nothing.test", "/"]).await;
    assert!(text.contains("status=404"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_post_with_body() {
    let (_b, proxy) = start().await;
    let addr = format!("127.0.0.1:{}", proxy.h3().port());
    let text = h3client(&["post", &addr, "echo.test", "/upload", "3000000"]).await;
    assert!(text.contains("status=200"), "{text}");
    let seen = echoed(text.split_once("body=").unwrap().1);
    assert_eq!(seen["received"], 3_000_000);
    assert_eq!(seen["method"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_many_streams_on_one_connection() {
    let (_b, proxy) = start().await;
    let addr = format!("127.0.0.1:{}", proxy.h3().port());
    let text = h3client(&["multi", &addr, "echo.test", "50"]).await;
    assert!(text.contains("ok=50 distinct_paths=50"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_discovered_through_alt_svc() {
    let (_b, proxy) = start().await;
    let addr = format!("127.0.0.1:{}", proxy.https().port());
    let text = h3client(&["altsvc", &addr, "echo.test"]).await;
    assert!(
        text.contains(&format!("alt-svc=h3=\":{}\"", proxy.h3().port())),
        "{text}"
    );
    assert!(
        text.contains("status=200") && text.contains("/via-alt-svc"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_carries_grpc_style_trailers() {
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
    let addr = format!("127.0.0.1:{}", proxy.h3().port());
    let text = h3client(&["get", &addr, "grpc.test", "/trailers"]).await;
    assert!(text.contains("status=200"), "{text}");
    assert!(text.contains("trailer grpc-status: 0"), "{text}");
    assert!(text.contains("trailer grpc-message: all-good"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_alt_svc_port_is_configurable() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr]) + &ingress("echo", "echo.test", "/", "echo", &[]);
    let proxy = TestProxy::start_with(&yaml, |c| c.alt_svc_port = Some(443)).await;
    let url = format!("https://127.0.0.1:{}/", proxy.https().port());
    let out = curl(&["-k", "-I", "-H", "Host: echo.test", &url]).await;
    assert!(
        stdout(&out)
            .to_ascii_lowercase()
            .contains("alt-svc: h3=\":443\""),
        "{}",
        stdout(&out)
    );
    // Without a QUIC listener nothing is advertised.
    let proxy = TestProxy::start_with(&yaml, |c| c.h3.clear()).await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    let out = curl(&["-I", "-H", "Host: echo.test", &url]).await;
    assert!(
        !stdout(&out).to_ascii_lowercase().contains("alt-svc"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_request_in_flight_finishes_during_drain() {
    let (backend, proxy) = start().await;
    let addr = format!("127.0.0.1:{}", proxy.h3().port());
    let slow =
        tokio::spawn(async move { h3client(&["get", &addr, "echo.test", "/slow/4000"]).await });
    // Drain once the request is at the backend (which then waits 4 s to answer).
    backend.arrived(1).await;
    proxy
        .proxy
        .shutdown(std::time::Duration::from_secs(20))
        .await;
    let text = slow.await.unwrap();
    assert!(text.contains("status=200"), "{text}");
}
