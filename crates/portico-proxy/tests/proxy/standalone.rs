//! The standalone binary, and process-level behaviour: reload, drain, fd exhaustion, IPv6,
//! idle connections.

use std::time::{Duration, Instant};

use portico_test_support::poll_until;
use portico_test_support::process::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_reloads_on_sighup_and_drains_on_sigterm() {
    let backend = Backend::start().await;
    let file = TempFile::new(
        "routes.yaml",
        &(service("echo", &[backend.addr]) + &ingress("e", "one.test", "/", "echo", &[])),
    );
    let program = Program::new(STANDALONE).args([
        "--table",
        file.path(),
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--h3",
        "127.0.0.1:0",
        "--workers",
        "1",
    ]);
    let mut proxy = Standalone::start(program).await;
    let url = format!("http://{}/", proxy.addr("http"));
    assert_eq!(curl_status(&["-H", "Host: one.test", &url]).await, 200);
    std::fs::write(
        &file.0,
        service("echo", &[backend.addr]) + &ingress("e", "two.test", "/", "echo", &[]),
    )
    .unwrap();
    let patience = Duration::from_secs(20);
    proxy.process.signal(Signal::HUP);
    // The proxy logs the reload after swapping the table in.
    proxy
        .process
        .wait_for_line("the reload", patience, |l| l.contains("table reloaded"))
        .await
        .unwrap();
    assert_eq!(curl_status(&["-H", "Host: two.test", &url]).await, 200);
    assert_eq!(curl_status(&["-H", "Host: one.test", &url]).await, 404);
    // A broken file keeps the current table: once the proxy has said it refused the file,
    // the old table still answers.
    std::fs::write(&file.0, "kind: [unclosed").unwrap();
    proxy.process.signal(Signal::HUP);
    proxy
        .process
        .wait_for_line("the refused reload", patience, |l| {
            l.contains("table reload failed")
        })
        .await
        .unwrap();
    assert_eq!(curl_status(&["-H", "Host: two.test", &url]).await, 200);
    proxy.process.signal(Signal::TERM);
    let status = proxy
        .process
        .wait(Duration::from_secs(20))
        .await
        .expect("exits after drain");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_survives_file_descriptor_exhaustion() {
    let backend = Backend::start().await;
    let file = TempFile::new(
        "routes.yaml",
        &(service("echo", &[backend.addr]) + &ingress("e", "fd.test", "/", "echo", &[])),
    );
    let script = format!(
        "ulimit -n 64; exec {STANDALONE} --table {} --http 127.0.0.1:0 --workers 1",
        file.path()
    );
    let mut proxy = Standalone::start(Program::new("bash").args(["-c", &script])).await;
    let http = proxy.addr("http");
    let url = format!("http://{http}/");
    assert_eq!(curl_status(&["-H", "Host: fd.test", &url]).await, 200);
    // Hold more connections than the process has descriptors, until it says it ran out.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = TcpStream::connect(http).await {
            held.push(s);
        }
    }
    proxy
        .process
        .wait_for_line("the accept loop to run out", Duration::from_secs(20), |l| {
            l.contains("out of resources")
        })
        .await
        .unwrap();
    assert!(
        proxy.process.is_running(),
        "still running while out of descriptors"
    );
    drop(held);
    // Nothing announces that it accepts again: ask until it answers.
    poll_until(
        "an answer once descriptors are free",
        Duration::from_secs(20),
        || async { (curl_status(&["-H", "Host: fd.test", &url]).await == 200).then_some(()) },
    )
    .await
    .unwrap();
    assert!(proxy.process.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr]) + &ingress("e", "v6.test", "/", "echo", &[]);
    let proxy = TestProxy::start_with(&yaml, |c| {
        let v6: std::net::SocketAddr = "[::1]:0".parse().unwrap();
        c.http = vec![v6];
        c.https = vec![v6];
        c.h3 = vec![v6];
    })
    .await;
    assert!(proxy.http().is_ipv6());
    let url = format!("http://[::1]:{}/", proxy.http().port());
    let seen = echoed(&stdout(&curl(&["-g", "-H", "Host: v6.test", &url]).await));
    assert_eq!(seen["headers"]["x-forwarded-for"], "::1");
    let url = format!("https://[::1]:{}/", proxy.https().port());
    assert_eq!(
        curl_status(&["-g", "-k", "--http2", "-H", "Host: v6.test", &url]).await,
        200
    );
    let out = run(
        python().to_str().unwrap(),
        &[
            &script("h3client.py"),
            "get",
            &format!("[::1]:{}", proxy.h3().port()),
            "v6.test",
            "/",
        ],
    )
    .await;
    assert!(
        stdout(&out).contains("status=200"),
        "{} {}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr]) + &ingress("e", "idle.test", "/", "echo", &[]);
    let proxy =
        TestProxy::start_with(&yaml, |c| c.limits.idle_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(proxy.http()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Keep-alive, then silence: the proxy closes the connection.
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "closed after the idle timeout");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A slow backend is not idleness: a request waiting 2.5 s for its response completes.
    let url = format!("http://127.0.0.1:{}/slow/2500", proxy.http().port());
    assert_eq!(curl_status(&["-H", "Host: idle.test", &url]).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_too() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr]) + &ingress("e", "idle.test", "/", "echo", &[]);
    let proxy =
        TestProxy::start_with(&yaml, |c| c.limits.idle_timeout = Duration::from_secs(1)).await;
    let port = proxy.http().port().to_string();
    let out = run(
        python().to_str().unwrap(),
        &[&script("h2_idle.py"), "127.0.0.1", &port, "idle.test", "30"],
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.contains("status=200 goaway=True closed=True"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
