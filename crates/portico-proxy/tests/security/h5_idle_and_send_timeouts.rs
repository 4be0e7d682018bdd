//! H5 (slow readers and PINGs): every byte read counted as activity, so one client PING a
//! minute kept an HTTP/2 connection, and whatever it buffered, open for ever; and nothing
//! timed a response the client never takes (a zero flow-control window, or a socket it
//! does not read). What must hold: PINGs do not keep an idle connection (it gets GOAWAY and
//! is closed after the idle timeout), and a response that makes no progress towards the
//! client for the send timeout closes the connection, over HTTP/2 and HTTP/1.1, counted.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use portico_test_support::poll_until;

use crate::common::*;
use crate::raw_h2;

// Real time throughout: the watchdog under test reads `std::time::Instant` (`activity.rs`,
// `send_watch.rs`), which Tokio's paused clock does not move, so the timeouts here are
// short (1 s) rather than simulated.

async fn start(idle: Duration, send: Duration) -> (Backend, TestProxy) {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr]) + &ingress("e", "slow.test", "/", "echo", &[]);
    let proxy = TestProxy::start_with(&yaml, |c| {
        c.limits.idle_timeout = idle;
        c.limits.send_timeout = send;
    })
    .await;
    (backend, proxy)
}

/// Runs `client` until the connection's task ends (the server closed it), for at most 10 s.
async fn until_closed(
    driver: &mut tokio::task::JoinHandle<Result<(), h2::Error>>,
    client: impl std::future::Future<Output = ()>,
) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            _ = driver => {}
            () = client => {}
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    let (_backend, proxy) = start(Duration::from_secs(1), Duration::from_secs(60)).await;
    let mut h2 = raw_h2::connect(proxy.http(), 65_535).await;
    let (resp, _) = h2
        .send
        .send_request(raw_h2::get("slow.test", "/"), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);

    // A PING every 200 ms (the attack), answered each time, until the server closes the
    // connection: the client's connection task ends.
    let start = Instant::now();
    let mut pongs = 0;
    let ping = &mut h2.ping;
    let pinging = async {
        loop {
            if ping.ping(h2::Ping::opaque()).await.is_ok() {
                pongs += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    until_closed(&mut h2.driver, pinging).await;
    let lasted = start.elapsed();
    assert!(
        h2.driver.is_finished(),
        "still open after {lasted:?} of PINGs"
    );
    assert!(pongs >= 3, "the client was pinging ({pongs} PONGs)");
    assert!(lasted < Duration::from_secs(5), "closed after {lasted:?}");
    let m = proxy.proxy.metrics().connections;
    assert!(m.idle_closes >= 1, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_response_stalled_by_a_zero_window_is_cut_after_the_send_timeout() {
    let (_backend, proxy) = start(Duration::from_secs(30), Duration::from_secs(1)).await;
    let mut h2 = raw_h2::connect(proxy.http(), 0).await;
    let (resp, _) = h2
        .send
        .send_request(raw_h2::get("slow.test", "/bytes/4194304"), true)
        .unwrap();
    // The head is not flow-controlled; the body gets no window.
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    // Kept, not read: dropping it would cancel the stream (RST_STREAM).
    let _body = resp.into_body();
    let start = Instant::now();
    let ping = &mut h2.ping;
    let pinging = async {
        loop {
            let _ = ping.ping(h2::Ping::opaque()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    until_closed(&mut h2.driver, pinging).await;
    let lasted = start.elapsed();
    let m = proxy.proxy.metrics().connections;
    assert!(
        h2.driver.is_finished(),
        "still open after {lasted:?}: {m:?}"
    );
    assert!(lasted < Duration::from_secs(4), "closed after {lasted:?}");
    let m = proxy.proxy.metrics().connections;
    assert!(m.send_timeouts >= 1, "{m:?}");
    assert_eq!(
        m.idle_closes, 0,
        "the send timeout, not the idle one: {m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let (_backend, proxy) = start(Duration::from_secs(30), Duration::from_secs(1)).await;
    const SIZE: usize = 256 << 20;
    for request in [
        // The lean loop.
        format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: slow.test\r\n\r\n"),
        // hyper's HTTP/1.1 (a request with a body is never lean).
        format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 1\r\n\r\nx"),
    ] {
        let before = proxy.proxy.metrics().connections.send_timeouts;
        let mut s = TcpStream::connect(proxy.http()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        // Read nothing until the proxy gives up on us (a counter: polled), then take what
        // is left.
        poll_until(
            format!("a send timeout for {request:?}"),
            Duration::from_secs(10),
            || async { (proxy.proxy.metrics().connections.send_timeouts > before).then_some(()) },
        )
        .await
        .unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "connection still open for {request:?}");
        assert!(total < SIZE, "{total} bytes: the response was cut");
    }
}

/// The send timeout counts only responses waiting for the client: a connection whose
/// responses are all delivered stays open past it (until the idle timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_responses_never_count_as_stalled() {
    let (_backend, proxy) = start(Duration::from_secs(30), Duration::from_secs(1)).await;
    // HTTP/2.
    let mut h2 = raw_h2::connect(proxy.http(), 65_535).await;
    for _ in 0..2 {
        let (resp, _) = h2
            .send
            .send_request(raw_h2::get("slow.test", "/bytes/100000"), true)
            .unwrap();
        let mut body = resp.await.unwrap().into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            got += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        assert_eq!(got, 100_000);
        // Past the send timeout (1 s) and two watchdog periods (250 ms each): a finished
        // response counted as stalled would have closed the connection by now.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    assert!(!h2.driver.is_finished());
    // HTTP/1.1 through hyper (a request body is never lean), kept alive across the wait.
    let mut s = TcpStream::connect(proxy.http()).await.unwrap();
    for _ in 0..2 {
        let request =
            "POST /bytes/100000 HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 1\r\n\r\nx";
        s.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let whole = |got: &[u8]| {
            let head = got.windows(4).position(|w| w == b"\r\n\r\n");
            head.is_some_and(|h| got.len() >= h + 4 + 100_000)
        };
        while !whole(&got) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"));
        // As above: past the send timeout and the watchdog's periods.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    let m = proxy.proxy.metrics().connections;
    assert_eq!(m.send_timeouts, 0, "{m:?}");
}
