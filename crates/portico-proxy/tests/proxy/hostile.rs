//! Hostile input: each gets the right answer and the proxy keeps serving everyone else.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

async fn start() -> (Backend, TestProxy) {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr]) + &ingress("echo", "echo.test", "/", "echo", &[]);
    let proxy = TestProxy::start_with(&yaml, |c| {
        c.limits.header_read_timeout = Duration::from_secs(2);
        c.limits.max_header_bytes = 16 * 1024;
    })
    .await;
    (backend, proxy)
}

async fn still_serving(proxy: &TestProxy) {
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    assert_eq!(
        curl_status(&["-H", "Host: echo.test", &url]).await,
        200,
        "proxy still serves"
    );
}

/// A GET over HTTP/3 (aioquic) answered 200.
async fn still_serving_http3(proxy: &TestProxy, path: &str) {
    let out = run(
        python().to_str().unwrap(),
        &[
            &script("h3client.py"),
            "get",
            &format!("127.0.0.1:{}", proxy.h3().port()),
            "echo.test",
            path,
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("status=200"), "{}", stdout(&out));
}

/// Sends raw bytes and returns what came back until the server closed or 10 s passed.
async fn raw(proxy: &TestProxy, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy.http()).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (_b, proxy) = start().await;
    let big = format!("X-Big: {}", "a".repeat(64 * 1024));
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    assert_eq!(
        curl_status(&["-H", "Host: echo.test", "-H", &big, &url]).await,
        431
    );
    // HTTP/2: beyond SETTINGS_MAX_HEADER_LIST_SIZE the stream gets 431 (and a list too big
    // to even decode is refused with RST_STREAM); either way it never reaches a backend.
    let h2_big = format!("X-Big: {}", "a".repeat(40 * 1024));
    let status = curl_status(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: echo.test",
        "-H",
        &h2_big,
        &url,
    ])
    .await;
    assert_eq!(status, 431);
    let status = curl_status(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: echo.test",
        "-H",
        &big,
        &url,
    ])
    .await;
    assert_ne!(status, 200);
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_header_bytes_and_smuggling_get_400() {
    let (_b, proxy) = start().await;
    let bad_name = raw(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: echo.test\r\nBad Header: x\r\n\r\n",
    )
    .await;
    assert!(bad_name.starts_with("HTTP/1.1 400"), "{bad_name}");
    let bad_value = raw(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: echo.test\r\nX-A: a\x00b\r\n\r\n",
    )
    .await;
    assert!(bad_value.starts_with("HTTP/1.1 400"), "{bad_value}");
    let smuggle = raw(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    // Either refused, or (RFC 9112 §6.3) framed by Transfer-Encoding alone, with the
    // Content-Length never forwarded and the connection closed after the response.
    let refused = smuggle.starts_with("HTTP/1.1 400");
    let one_framing = smuggle.contains("connection: close")
        && smuggle.contains("\"received\":0")
        && !smuggle.contains("\"content-length\"");
    assert!(refused || one_framing, "{smuggle}");
    let smuggle_te_first = raw(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    )
    .await;
    let refused = smuggle_te_first.starts_with("HTTP/1.1 400");
    let one_framing = smuggle_te_first.contains("connection: close")
        && !smuggle_te_first.contains("\"content-length\"");
    assert!(refused || one_framing, "{smuggle_te_first}");
    let two_lengths = raw(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await;
    assert!(two_lengths.starts_with("HTTP/1.1 400"), "{two_lengths}");
    let no_host = raw(&proxy, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let garbage = raw(&proxy, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_while_others_are_served() {
    let (_b, proxy) = start().await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.http()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: echo.test\r\nX-A: ")
            .await
            .unwrap();
        slow.push(s);
    }
    still_serving(&proxy).await;
    let started = std::time::Instant::now();
    for s in &mut slow {
        let _ = s.write_all(b"a").await;
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
        assert!(
            r.is_ok(),
            "the server closes a connection that never finishes its head"
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_stopped() {
    let (_b, proxy) = start().await;
    let out = run(
        python().to_str().unwrap(),
        &[
            &script("rapid_reset.py"),
            "127.0.0.1",
            &proxy.http().port().to_string(),
            "echo.test",
        ],
    )
    .await;
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(" goaway=") && !text.contains("no-goaway"),
        "the server ends the abusive connection: {text}"
    );
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_rapid_reset_is_stopped() {
    let (_b, proxy) = start().await;
    let out = run(
        python().to_str().unwrap(),
        &[
            &script("h3_rapid_reset.py"),
            &format!("127.0.0.1:{}", proxy.h3().port()),
            "echo.test",
            "3000",
        ],
    )
    .await;
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    // H3_EXCESSIVE_LOAD, well before the client got through its 3,000 cancellations.
    assert!(
        text.contains("closed error_code=0x107"),
        "the server ends the abusive connection: {text}"
    );
    let sent: usize = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sent="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(sent < 3000, "{text}");

    // Others are still served, over HTTP/3 too.
    still_serving_http3(&proxy, "/after-rapid-reset").await;
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_disturb_quic() {
    let (_b, proxy) = start().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in [1usize, 7, 20, 1200, 1500, 65000] {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        for _ in 0..20 {
            let _ = socket.send_to(&junk, proxy.h3()).await;
        }
    }
    // A QUIC-looking long header with a bogus version.
    let _ = socket
        .send_to(
            &[
                0xc0, 0xba, 0xdb, 0xad, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 0,
            ],
            proxy.h3(),
        )
        .await;
    still_serving_http3(&proxy, "/after-garbage").await;
    still_serving(&proxy).await;
}

/// Hundreds of mutated requests (bytes changed, inserted or deleted, spans doubled, cut
/// short; heads and bodies): each gets one well-formed answer or a plain close within
/// seconds, never a 5xx, and the proxy serves everyone else throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_request_heads_get_an_answer_or_a_close() {
    let (_b, proxy) = start().await;
    let seeds: [&[u8]; 4] = [
        b"GET /a?b=c HTTP/1.1\r\nHost: echo.test\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: echo.test\r\nConnection: keep-alive\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /upload HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    // A fixed xorshift sequence: the same cases on every run, so a failure reproduces.
    let mut rng = 0x2545_F491_4F6C_DD1D_u64;
    let mut cases = Vec::new();
    for i in 0..800 {
        let mut bytes = seeds[i % seeds.len()].to_vec();
        for _ in 0..1 + xorshift(&mut rng) % 3 {
            mutate(&mut bytes, &mut rng);
        }
        cases.push(bytes);
    }
    let addr = proxy.http();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for batch in cases.chunks(40) {
        let tasks: Vec<_> = batch
            .iter()
            .cloned()
            .map(|case| tokio::spawn(async move { (send_and_close(addr, &case).await, case) }))
            .collect();
        for task in tasks {
            let (answer, case) = task.await.unwrap();
            let shown = String::from_utf8_lossy(&case).into_owned();
            let answer = answer.unwrap_or_else(|| panic!("no answer nor close in 10 s: {shown:?}"));
            if answer.is_empty() {
                *statuses.entry(0).or_default() += 1;
                continue;
            }
            let text = String::from_utf8_lossy(&answer);
            let status: u16 = text
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP/1.1 answer to {shown:?}: {text:?}"));
            // A body broken on the client's side is the client's fault (400), never 502.
            assert!(
                (200..500).contains(&status) || status == 505,
                "{status} for {shown:?}: {text:?}"
            );
            *statuses.entry(status).or_default() += 1;
        }
        still_serving(&proxy).await;
    }
    eprintln!("answers by status (0: closed without one): {statuses:?}");
}

/// Sends `bytes`, closes the sending half, and reads until the proxy closes: `None` when it
/// neither answered nor closed within 10 s.
async fn send_and_close(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

/// A request body broken on the client's side (bad chunk framing, or shorter than its
/// Content-Length) is answered 400, counts no upstream error and ejects no endpoint: a
/// client must not be able to steer traffic away from healthy Pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_request_body_is_400_and_blames_no_endpoint() {
    let backends = Backend::start_many(2).await;
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let yaml = service("echo", &addrs) + &ingress("echo", "echo.test", "/", "echo", &[]);
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    for broken in [
        &b"POST /upload HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"[..],
        b"POST /upload HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 50\r\n\r\nshort",
    ] {
        let answer = send_and_close(proxy.http(), broken).await.expect("answered");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        // An ejected endpoint would be skipped for a second: both must still answer.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let out = curl(&["-H", "Host: echo.test", &url]).await;
            seen.insert(echoed(&stdout(&out))["backend"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
    }
    assert_eq!(proxy.proxy.metrics().upstream_errors, 0);
}
