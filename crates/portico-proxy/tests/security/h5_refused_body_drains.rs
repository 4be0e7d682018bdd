//! H5 (refused bodies): a refused request's body is read and thrown away in the background
//! (64 KiB and 5 s at most), so the refusal is not destroyed by a reset. What must hold: each
//! drain is counted while it runs and when it ends, so operators see them; a client that
//! stops sending holds its drain at most the 5 s bound; and the drains in progress are
//! capped (`RefusedBodies::MAX_DRAINING`, unit-tested in `observe.rs`), past which the body
//! is dropped unread and counted.

use std::time::Duration;

use portico_proxy::RefusedBodiesSnapshot;
use portico_test_support::wait::poll_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// One refused body drained, none in progress or dropped.
const DRAINED_ONE: RefusedBodiesSnapshot = RefusedBodiesSnapshot {
    draining: 0,
    drained: 1,
    dropped: 0,
};

async fn refused_bodies_become(proxy: &TestProxy, want: RefusedBodiesSnapshot) {
    poll_until(
        format!("refused bodies {want:?}"),
        Duration::from_secs(10),
        || {
            let now = proxy.proxy.metrics().refused_bodies;
            async move { (now == want).then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; now {:?}", proxy.proxy.metrics().refused_bodies));
}

/// A proxy with one Service and no Ingress, with a POST to it refused (404) whose 10-byte
/// body is announced but not sent, and the drain of that body under way.
async fn refused_post() -> (Backend, TestProxy, TcpStream) {
    let backend = Backend::start().await;
    let proxy = TestProxy::start(&service("echo", &[backend.addr])).await;
    let s = refused_post_on(&proxy).await;
    refused_bodies_become(
        &proxy,
        RefusedBodiesSnapshot {
            draining: 1,
            drained: 0,
            dropped: 0,
        },
    )
    .await;
    (backend, proxy, s)
}

async fn refused_post_on(proxy: &TestProxy) -> TcpStream {
    let mut s = TcpStream::connect(proxy.http()).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: nobody.test\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed before the 404");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test]
async fn a_refused_body_is_drained_and_counted_while_it_runs_and_when_it_ends() {
    let (_backend, proxy, mut s) = refused_post().await;
    s.write_all(b"0123456789").await.unwrap();
    refused_bodies_become(&proxy, DRAINED_ONE).await;
}

#[tokio::test]
async fn a_client_that_never_sends_its_refused_body_holds_the_drain_for_the_bound_only() {
    let (_backend, proxy, _silent) = refused_post().await;
    // The 5 s bound runs in the proxy under test, on real time: released within it (plus
    // the poll's slack), with the client still connected and silent.
    let started = std::time::Instant::now();
    refused_bodies_become(&proxy, DRAINED_ONE).await;
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
}
