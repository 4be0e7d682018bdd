//! H5 (connection limits): there was no global or per-client connection limit, so one
//! client could open connections (two tasks each) until memory or descriptors ran out. What
//! must hold: past `max_connections_per_ip` a TCP connection from that address is closed at
//! once, before a byte is read, and a QUIC attempt is refused; past `max_connections` the
//! same for everyone; both are counted; other clients are still served; and a slot comes back
//! when a connection closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use portico_test_support::poll_until;

use crate::common::*;

async fn start(tweak: impl FnOnce(&mut portico_proxy::ProxyConfig)) -> (Backend, TestProxy) {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr]) + &ingress("e", "limits.test", "/", "echo", &[]);
    let proxy = TestProxy::start_with(&yaml, tweak).await;
    (backend, proxy)
}

/// Opens `n` idle connections and waits until the proxy counts `open` connections.
async fn hold(proxy: &TestProxy, n: usize, open: u64) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpStream::connect(proxy.http()).await.unwrap());
    }
    wait_open(proxy, open).await;
    held
}

/// The connection counters are plain counters, with nothing to subscribe to: polled.
async fn wait_open(proxy: &TestProxy, open: u64) {
    let reached = poll_until(
        format!("{open} open connections"),
        Duration::from_secs(10),
        || async { (proxy.proxy.metrics().connections.open == open).then_some(()) },
    )
    .await;
    if let Err(e) = reached {
        panic!("{e}: {:?}", proxy.proxy.metrics().connections);
    }
}

/// Whether a new connection from us is closed without an answer (and how soon).
async fn closed_at_once(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: limits.test\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn h3_status(proxy: &TestProxy) -> String {
    let out = run(
        python().to_str().unwrap(),
        &[
            &script("h3client.py"),
            "get",
            &proxy.h3().to_string(),
            "limits.test",
            "/",
        ],
    )
    .await;
    stdout(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_ip_limit_tcp_is_closed_at_once_and_quic_refused_others_still_served() {
    let (_backend, proxy) = start(|c| c.limits.max_connections_per_ip = 3).await;
    let url = format!("http://{}/", proxy.http());
    let mut held = hold(&proxy, 3, 3).await;

    assert!(
        closed_at_once(proxy.http()).await,
        "a fourth from 127.0.0.1"
    );
    assert_eq!(curl_status(&["-H", "Host: limits.test", &url]).await, 0);
    assert!(
        !h3_status(&proxy).await.contains("status=200"),
        "QUIC from 127.0.0.1 is refused too"
    );
    let m = proxy.proxy.metrics().connections;
    assert!(m.refused_per_ip_limit >= 3, "{m:?}");
    assert_eq!(m.refused_total_limit, 0, "{m:?}");

    let other = ["--interface", "127.0.0.2", "-H", "Host: limits.test", &url];
    assert_eq!(curl_status(&other).await, 200, "another client is served");

    drop(held.pop());
    wait_open(&proxy, 2).await;
    assert_eq!(curl_status(&["-H", "Host: limits.test", &url]).await, 200);
    wait_open(&proxy, 2).await;
    assert!(h3_status(&proxy).await.contains("status=200"), "slot back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_global_limit_every_client_is_closed_at_once_until_a_slot_frees() {
    let (_backend, proxy) = start(|c| c.limits.max_connections = 4).await;
    let url = format!("http://{}/", proxy.http());
    let mut held = hold(&proxy, 4, 4).await;

    let other = ["--interface", "127.0.0.2", "-H", "Host: limits.test", &url];
    assert_eq!(curl_status(&other).await, 0, "the fifth connection in all");
    assert!(closed_at_once(proxy.http()).await);
    assert!(!h3_status(&proxy).await.contains("status=200"));
    let m = proxy.proxy.metrics().connections;
    assert!(m.refused_total_limit >= 3, "{m:?}");

    drop(held.pop());
    wait_open(&proxy, 3).await;
    assert_eq!(curl_status(&other).await, 200, "served once a slot is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_keep_their_place_in_the_limit_after_the_upgrade() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let (_backend, proxy) = start(|c| c.limits.max_connections_per_ip = 2).await;
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let url = format!("ws://{}/ws", proxy.http());
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("host", "limits.test".parse().unwrap());
        let (ws, resp) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(resp.status(), 101);
        tunnels.push(ws);
    }
    // The upgraded connections have left hyper; they still count.
    wait_open(&proxy, 2).await;
    assert!(closed_at_once(proxy.http()).await, "a third from 127.0.0.1");
    let mut ws = tunnels.pop().unwrap();
    ws.send(Message::text("still here")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "still here");
    drop(ws);
    wait_open(&proxy, 1).await;
    let url = format!("http://{}/", proxy.http());
    assert_eq!(curl_status(&["-H", "Host: limits.test", &url]).await, 200);
}
