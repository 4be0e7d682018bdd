//! Broken or hostile upstream responses, over raw sockets: whatever one response does, the
//! client gets a clear answer (a complete response, a 502, or a visibly cut-off body) and
//! the next request gets its own response, never bytes left over from another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

const GOOD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood";

/// One scripted answer: the bytes to send, and whether to close the connection after.
#[derive(Clone)]
struct Reply {
    bytes: Vec<u8>,
    close: bool,
}

fn keep(bytes: &[u8]) -> Reply {
    Reply {
        bytes: bytes.to_vec(),
        close: false,
    }
}

fn then_close(bytes: &[u8]) -> Reply {
    Reply {
        bytes: bytes.to_vec(),
        close: true,
    }
}

/// A backend that answers the n-th request it reads (counted over all connections) with
/// `script[n]`, and every later one with [`GOOD`].
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    _task: TaskGuard,
}

impl Scripted {
    async fn start(script: Vec<Reply>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let accepted = connections.clone();
        let read = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (read, script) = (read.clone(), script.clone());
                tokio::spawn(serve(stream, read, script));
            }
        });
        Scripted {
            addr,
            connections,
            requests,
            _task: TaskGuard(task),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The next request head on `stream` (requests through the proxy here have no body, so a
/// head is the whole request); `None` once the peer is gone.
async fn next_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..at + 4).collect();
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve(mut stream: TcpStream, requests: Arc<AtomicUsize>, script: Arc<Vec<Reply>>) {
    let mut buf = Vec::new();
    while next_head(&mut stream, &mut buf).await.is_some() {
        let n = requests.fetch_add(1, Ordering::SeqCst);
        let reply = script.get(n).cloned().unwrap_or_else(|| keep(GOOD));
        if stream.write_all(&reply.bytes).await.is_err() || reply.close {
            return;
        }
    }
}

async fn start(script: Vec<Reply>) -> (Scripted, TestProxy) {
    let backend = Scripted::start(script).await;
    let yaml = service("raw", &[backend.addr]) + &ingress("raw", "raw.test", "/", "raw", &[]);
    (backend, TestProxy::start(&yaml).await)
}

/// (curl's exit code, status, body) of one GET (or `method`) through the proxy.
async fn fetch(proxy: &TestProxy, method: &str) -> (i32, u16, String) {
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    let mut args = vec![
        "-H",
        "Host: raw.test",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "10",
    ];
    match method {
        "HEAD" => args.push("-I"),
        "GET" => {}
        other => args.extend(["-X", other]),
    }
    args.push(&url);
    let out = run("curl", &[&["-sS"], &args[..]].concat()).await;
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
    )
}

async fn assert_next_is_good(proxy: &TestProxy) {
    let (exit, code, body) = fetch(proxy, "GET").await;
    assert_eq!(
        (exit, code, body.as_str()),
        (0, 200, "good"),
        "next request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_complete_response_never_reach_the_next_request() {
    // Response splitting: a second response smuggled after the first one's body.
    let (_b, proxy) = start(vec![keep(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    )])
    .await;
    let (exit, code, body) = fetch(&proxy, "GET").await;
    assert_eq!((exit, code, body.as_str()), (0, 200, "ok"));
    for _ in 0..3 {
        assert_next_is_good(&proxy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_refused_or_framed_by_chunked_and_not_reused() {
    let (backend, proxy) = start(vec![keep(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )])
    .await;
    let (exit, code, body) = fetch(&proxy, "GET").await;
    // RFC 9112 6.3: chunked wins, or the response is refused; never the first 3 bytes.
    assert!(
        (exit, code, body.as_str()) == (0, 200, "hello") || code == 502,
        "{exit} {code} {body:?}"
    );
    assert_next_is_good(&proxy).await;
    // Such a connection must not be reused (RFC 9112 6.3: close it after the response).
    assert_eq!(backend.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_or_invalid_content_lengths_are_502() {
    for head in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\ngood!"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\ngood",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4x\r\n\r\ngood",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\ngood",
    ] {
        let (_b, proxy) = start(vec![then_close(head)]).await;
        let (_, code, _) = fetch(&proxy, "GET").await;
        assert_eq!(code, 502, "{}", String::from_utf8_lossy(head));
        assert_next_is_good(&proxy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_bodies_are_cut_off_visibly() {
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\r\nhel",
    ] {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (_b, proxy) = start(vec![then_close(&[&head[..], body].concat())]).await;
        let (exit, code, got) = fetch(&proxy, "GET").await;
        // Either refused before the head (502), or the body ends in an error the client
        // sees: never a clean, complete response.
        assert!(
            code == 502 || exit != 0,
            "{}: exit {exit}, {code}, {got:?}",
            String::from_utf8_lossy(body)
        );
        assert_next_is_good(&proxy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_content_length_is_not_a_complete_response() {
    let (_b, proxy) = start(vec![then_close(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    )])
    .await;
    let (exit, _code, body) = fetch(&proxy, "GET").await;
    assert_ne!(exit, 0, "curl must see the cut-off body: {body:?}");
    assert_next_is_good(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_delimited_by_close_is_forwarded_whole() {
    let (backend, proxy) = start(vec![then_close(b"HTTP/1.1 200 OK\r\n\r\nuntil-the-close")]).await;
    let (exit, code, body) = fetch(&proxy, "GET").await;
    assert_eq!((exit, code, body.as_str()), (0, 200, "until-the-close"));
    assert_next_is_good(&proxy).await;
    assert_eq!(backend.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_malformed_response_heads_are_502() {
    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..2000 {
        huge.extend_from_slice(format!("x-filler-{i}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    huge.extend_from_slice(b"Content-Length: 4\r\n\r\ngood");
    for head in [
        huge,
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 4\r\n\r\ngood".to_vec(),
        b"HTTP/1.1 2OO OK\r\nContent-Length: 4\r\n\r\ngood".to_vec(),
        b"SPDY/9 200 OK\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nBad Header Name: x\r\nContent-Length: 4\r\n\r\ngood".to_vec(),
    ] {
        let (_b, proxy) = start(vec![then_close(&head)]).await;
        let (_, code, _) = fetch(&proxy, "GET").await;
        assert_eq!(
            code,
            502,
            "{:?}",
            String::from_utf8_lossy(&head[..60.min(head.len())])
        );
        assert_next_is_good(&proxy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped_for_the_final_one() {
    let (backend, proxy) = start(vec![keep(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
    )])
    .await;
    let (exit, code, body) = fetch(&proxy, "GET").await;
    assert_eq!((exit, code, body.as_str()), (0, 200, "final"));
    assert_next_is_good(&proxy).await;
    assert_eq!(
        backend.connections(),
        1,
        "a clean exchange keeps the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_only_when_the_response_allows_it() {
    // HTTP/1.0 without keep-alive, and `Connection: close`: not reused (the backend
    // leaves both open; reusing them would still work here, so count connections).
    let (backend, proxy) = start(vec![
        keep(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\ngood"),
        keep(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\ngood"),
    ])
    .await;
    for _ in 0..2 {
        assert_next_is_good(&proxy).await;
    }
    assert_next_is_good(&proxy).await;
    assert_eq!(backend.connections(), 3);

    // Chunked with an extension and a trailer, then HEAD with a Content-Length and no body:
    // both leave the connection clean for the next request.
    let (backend, proxy) = start(vec![
        keep(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
        ),
        keep(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    ])
    .await;
    let (exit, code, body) = fetch(&proxy, "GET").await;
    assert_eq!((exit, code, body.as_str()), (0, 200, "hello"));
    let (exit, code, _) = fetch(&proxy, "HEAD").await;
    assert_eq!((exit, code), (0, 200));
    assert_next_is_good(&proxy).await;
    assert_eq!(backend.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_unanswered_is_retried_only_for_idempotent_methods() {
    // The backend answers and keeps the connection, then closes it on the next request
    // without a byte of answer: its idle timeout racing our reuse.
    let (backend, proxy) = start(vec![keep(GOOD), then_close(b"")]).await;
    assert_next_is_good(&proxy).await;
    assert_next_is_good(&proxy).await;
    assert_eq!(
        (backend.connections(), backend.requests()),
        (2, 3),
        "the GET was sent again, on a fresh connection"
    );
    for method in ["HEAD", "PUT", "DELETE"] {
        let (backend, proxy) = start(vec![keep(GOOD), then_close(b"")]).await;
        assert_next_is_good(&proxy).await;
        let (_, code, _) = fetch(&proxy, method).await;
        assert_eq!((method, code, backend.requests()), (method, 200, 3));
    }
    // POST is not idempotent: 502, and the backend saw it once.
    let (backend, proxy) = start(vec![keep(GOOD), then_close(b"")]).await;
    assert_next_is_good(&proxy).await;
    let (_, code, _) = fetch(&proxy, "POST").await;
    assert_eq!((code, backend.requests()), (502, 2));
    assert_next_is_good(&proxy).await;
    // A fresh connection closed unanswered is a 502 whatever the method: no loop.
    let (backend, proxy) = start(vec![then_close(b"")]).await;
    let (_, code, _) = fetch(&proxy, "GET").await;
    assert_eq!((code, backend.requests()), (502, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_is_504_after_the_send_timeout() {
    // The backend reads the request head, then neither reads nor answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _stall = TaskGuard(tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            held.push(stream);
        }
    }));
    let yaml = service("stall", &[addr])
        + &ingress(
            "stall",
            "stall.test",
            "/",
            "stall",
            &[
                ("proxy-send-timeout", "1"),
                ("proxy-read-timeout", "30"),
                ("proxy-body-size", "128m"),
            ],
        );
    let proxy = TestProxy::start(&yaml).await;
    let upload = TempFile::new("send-timeout-upload", &"x".repeat(64 << 20));
    let url = format!("http://127.0.0.1:{}/upload", proxy.http().port());
    let started = std::time::Instant::now();
    let data = format!("@{}", upload.path());
    let code = curl_status(&["-H", "Host: stall.test", "--data-binary", &data, &url]).await;
    let took = started.elapsed();
    // Not the 30 s read timeout: the upload stalled for longer than the send timeout.
    assert_eq!(code, 504, "after {took:?}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_to_an_upstream_that_keeps_reading_is_not_a_send_timeout() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr])
        + &ingress(
            "slowup",
            "slowup.test",
            "/",
            "echo",
            &[("proxy-send-timeout", "1")],
        );
    let proxy = TestProxy::start(&yaml).await;
    // 300 kB at 100 kB/s: three seconds of upload, far past the one-second send timeout.
    let upload = TempFile::new("slow-upload", &"y".repeat(300_000));
    let data = format!("@{}", upload.path());
    let url = format!("http://127.0.0.1:{}/slow-upload", proxy.http().port());
    let code = curl_status(&[
        "-H",
        "Host: slowup.test",
        "--limit-rate",
        "100K",
        "--data-binary",
        &data,
        &url,
    ])
    .await;
    assert_eq!(code, 200);
}

/// Hundreds of mutated upstream responses (heads and bodies edited as in the client-side
/// mutation test), the backend keeping its connection open after each: every client gets
/// an answer (complete, 502/504, or visibly cut off) in time, and a request sent after each
/// one gets exactly its own response, so no mutation leaves bytes that a reused connection
/// would pass to the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_responses_never_leak_into_the_next_request() {
    let seeds: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ngood\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    ];
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let cases: Vec<Vec<u8>> = (0..250)
        .map(|i| {
            let mut bytes = seeds[i % seeds.len()].to_vec();
            for _ in 0..1 + xorshift(&mut rng) % 3 {
                mutate(&mut bytes, &mut rng);
            }
            bytes
        })
        .collect();
    let backend = ByPath::start(cases.clone()).await;
    let yaml = service("raw", &[backend.addr])
        + &ingress(
            "raw",
            "raw.test",
            "/",
            "raw",
            &[("proxy-read-timeout", "1"), ("proxy-connect-timeout", "1")],
        );
    let proxy = Arc::new(TestProxy::start(&yaml).await);
    let base = format!("http://127.0.0.1:{}", proxy.http().port());
    for batch in (0..cases.len()).collect::<Vec<_>>().chunks(50) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&n| {
                let base = base.clone();
                tokio::spawn(async move {
                    let case = format!("{base}/case/{n}");
                    let out = curl_raw(&["-H", "Host: raw.test", "--max-time", "8", &case]).await;
                    // curl 28 is its own timeout: the proxy must have answered before.
                    assert_ne!(out.status.code(), Some(28), "case {n}: no answer in time");
                    let check = format!("{base}/check/{n}");
                    let out = curl_raw(&["-H", "Host: raw.test", "--max-time", "8", &check]).await;
                    (n, stdout(&out))
                })
            })
            .collect();
        for task in tasks {
            let (n, check) = task.await.unwrap();
            assert_eq!(
                check,
                format!("check {n}"),
                "the request after case {n} ({:?}) got another's bytes",
                String::from_utf8_lossy(&cases[n])
            );
        }
    }
}

/// `curl -sS` without failing on HTTP errors: the exit status is curl's own verdict.
async fn curl_raw(args: &[&str]) -> std::process::Output {
    run("curl", &[&["-sS"], args].concat()).await
}

/// A backend answering `/case/N` with `cases[N]` as raw bytes and `/check/N` with a
/// well-formed `check N`, keeping every connection open whatever it sent.
struct ByPath {
    addr: SocketAddr,
    _task: TaskGuard,
}

impl ByPath {
    async fn start(cases: Vec<Vec<u8>>) -> ByPath {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cases = Arc::new(cases);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let cases = cases.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(head) = next_head(&mut stream, &mut buf).await {
                        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                        let reply = match path.strip_prefix("/case/") {
                            Some(n) => cases[n.parse::<usize>().unwrap()].clone(),
                            None => {
                                let body = format!("check {}", path.trim_start_matches("/check/"));
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                    body.len()
                                )
                                .into_bytes()
                            }
                        };
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ByPath {
            addr,
            _task: TaskGuard(task),
        }
    }
}
