//! Chunk-size lines (the request-path rule; the review's I1 found request framing
//! sound and this keeps it so on both hops): a chunk-size line must be read exactly as
//! strictly as hyper reads one, because two parsers that disagree about where a chunk ends
//! are a smuggling channel. No `+5`, no leading space, no `0x`, and a bare LF is an error at
//! once rather than a wait for a CRLF that never comes. Requests are parsed by hyper; the
//! one hand-written chunk parser is `h1::decode`'s, which `h1::client` reads upstream
//! responses with: both are shown here.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// A backend that answers every request head with `reply` and then holds the connection
/// open until the proxy closes it (a parser waiting for more bytes would wait until its
/// timeout).
async fn holding_backend(reply: &'static [u8]) -> (std::net::SocketAddr, TaskGuard) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(reply).await;
                while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, TaskGuard(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_chunk_sizes_hyper_refuses_never_reach_the_client_as_a_body() {
    for body in [
        &b"+5\r\nhello\r\n0\r\n\r\n"[..],
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5;ext\nhello\r\n0\r\n\r\n",
        b"5\rhello\r\n0\r\n\r\n",
    ] {
        let reply: &'static [u8] = [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body,
        ]
        .concat()
        .leak();
        let (addr, _backend) = holding_backend(reply).await;
        let yaml = service("raw", &[addr]) + &ingress("raw", "raw.test", "/", "raw", &[]);
        let proxy = TestProxy::start(&yaml).await;
        let url = format!("http://127.0.0.1:{}/", proxy.http().port());
        let started = Instant::now();
        let out = curl(&["-H", "Host: raw.test", "--max-time", "20", &url]).await;
        let elapsed = started.elapsed();
        let shown = String::from_utf8_lossy(body);
        // The body fails visibly (curl sees a cut-off chunked body), never "hello"...
        assert!(!out.status.success(), "{shown:?}: curl succeeded");
        assert!(
            !stdout(&out).contains("hello"),
            "{shown:?}: {}",
            stdout(&out)
        );
        // ...and at once: the backend holds its connection open, so a parser waiting for a
        // CRLF would wait for the read timeout (60 s) or curl's 20 s.
        assert!(
            elapsed < Duration::from_secs(5),
            "{shown:?}: took {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chunk_sizes_hyper_refuses_are_400() {
    let backend = Backend::start().await;
    let yaml = service("app", &[backend.addr]) + &ingress("app", "app.test", "/", "app", &[]);
    let proxy = TestProxy::start(&yaml).await;
    for body in [
        "+5\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(proxy.http()).await.unwrap();
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out);
        assert!(answer.starts_with("HTTP/1.1 400"), "{body:?}: {answer}");
    }
}
