//! H2 (request loop): a tenant points a backend back at Portico itself (an `ExternalName`
//! such as `portico.portico-system.svc.cluster.local`, or endpoints at its own listeners)
//! with the Ingress's own host. Each hop came back with the same `Host` and route and held
//! an inbound and an outbound connection for up to the read timeout; only the 32 KiB header
//! limit, grown by `X-Forwarded-For`, stopped it after about 2,900 hops. What must hold,
//! over real sockets with curl: every forwarded request carries our `Via` entry
//! (`1.1 portico-<token>`, one token per cluster), a request that arrives with it is refused
//! with 508 before routing, so the loop costs one hop on any protocol and path (lean
//! HTTP/1.1, with a body, h2c, HTTP/2 over TLS); afterwards no connection stays open; a loop
//! across two replicas of a cluster is cut at the second; and a client that sends the
//! marker itself only has its own request refused.

use std::time::Duration;

use portico_proxy::{LoopToken, Protocol, StatusClass};
use portico_test_support::poll_until;

use crate::common::*;

/// Requests the proxy has answered, whatever their protocol and status.
fn answered(proxy: &TestProxy) -> u64 {
    let metrics = proxy.proxy.metrics();
    Protocol::ALL
        .iter()
        .flat_map(|&p| StatusClass::ALL.iter().map(move |&c| (p, c)))
        .map(|(p, c)| metrics.requests(p, c))
        .sum()
}

/// Waits (at most 5 s) until the proxy's open client connections are back to `baseline`;
/// returns how many are open then. A counter with nothing to subscribe to: polled.
async fn open_connections_settle(proxy: &TestProxy, baseline: u64) -> u64 {
    let open = || proxy.proxy.metrics().connections.open;
    let settled = poll_until(
        "open connections back to the baseline",
        Duration::from_secs(5),
        || async { (open() == baseline).then_some(()) },
    )
    .await;
    settled.map_or_else(|_| open(), |()| baseline)
}

fn cluster(token: &str) -> impl FnOnce(&mut portico_proxy::ProxyConfig) {
    let token = LoopToken::new(token).unwrap();
    move |config| config.loop_token = token
}

/// A Service `to` whose only endpoint is `target`, and an Ingress for `loop.test` to it.
fn pointing_at(target: std::net::SocketAddr) -> std::sync::Arc<portico_model::RoutingTable> {
    table(&(service("to", &[target]) + &ingress("loop", "loop.test", "/", "to", &[])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_leading_back_to_the_proxy_costs_one_hop() {
    let proxy = TestProxy::start_with("", cluster("c1")).await;
    // The table names the proxy's own HTTP listener as the endpoint (known once bound).
    proxy.proxy.swap_table(pointing_at(proxy.http()));
    let baseline = proxy.proxy.metrics().connections.open;
    let http = format!("http://127.0.0.1:{}/", proxy.http().port());
    let https = format!("https://loop.test:{}/", proxy.https().port());
    let resolve = format!("loop.test:{}:127.0.0.1", proxy.https().port());
    let ways: [&[&str]; 5] = [
        &["--http1.1", "-H", "Host: loop.test", &http],
        &[
            "--http1.1",
            "-H",
            "Host: loop.test",
            "--data",
            "body",
            &http,
        ],
        &["--http2-prior-knowledge", "-H", "Host: loop.test", &http],
        &["--http2", "-k", "--resolve", &resolve, &https],
        &[
            "--http2",
            "-k",
            "--resolve",
            &resolve,
            "--data",
            "body",
            &https,
        ],
    ];
    for (sent, way) in ways.iter().enumerate() {
        let before = answered(&proxy);
        let status = curl_status(way).await;
        assert_eq!(status, 508, "{way:?}");
        // The client's request and exactly one looped hop: not one per header byte.
        assert_eq!(answered(&proxy) - before, 2, "request {sent}: {way:?}");
    }
    let open = open_connections_settle(&proxy, baseline).await;
    assert_eq!(open, baseline, "no connection is left open by the loop");
}

/// Two replicas of one cluster behind one Service: each forwards to the other. The second
/// replica recognises the first's entry (they share the token) and refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_another_replica_is_cut_there() {
    let a = TestProxy::start_with("", cluster("c1")).await;
    let b = TestProxy::start_with("", cluster("c1")).await;
    a.proxy.swap_table(pointing_at(b.http()));
    b.proxy.swap_table(pointing_at(a.http()));
    let url = format!("http://127.0.0.1:{}/", a.http().port());
    assert_eq!(curl_status(&["-H", "Host: loop.test", &url]).await, 508);
    assert_eq!((answered(&a), answered(&b)), (1, 1));
    assert_eq!(open_connections_settle(&a, 0).await, 0);
    assert_eq!(open_connections_settle(&b, 0).await, 0);

    // Another cluster in the path (its own token) passes the request on; the loop is cut
    // when it comes back to the first: one round, still not thousands.
    let c = TestProxy::start_with("", cluster("c2")).await;
    a.proxy.swap_table(pointing_at(c.http()));
    c.proxy.swap_table(pointing_at(a.http()));
    assert_eq!(curl_status(&["-H", "Host: loop.test", &url]).await, 508);
    assert_eq!((answered(&a), answered(&c)), (3, 1));
}

/// The marker is no secret (backends see it), and forging it gains nothing: the forger's own
/// request is refused while everyone else's is served. A foreign `Via` does not stop ours
/// from being added last (the echo backend shows the last line; that the foreign one is kept
/// before it is `headers::tests::via_is_appended_after_the_requests_own`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_the_marker_only_refuses_itself() {
    let backend = Backend::start().await;
    let yaml = service("app", &[backend.addr]) + &ingress("app", "app.test", "/", "app", &[]);
    let proxy = TestProxy::start_with(&yaml, cluster("c1")).await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    for forged in [
        "Via: 1.1 portico-c1",
        "Via: 1.0 corp, 2 PORTICO-C1 (spoofed)",
    ] {
        for way in ["--http1.1", "--http2-prior-knowledge"] {
            let args = [way, "-H", "Host: app.test", "-H", forged, &url];
            assert_eq!(curl_status(&args).await, 508, "{forged} {way}");
        }
    }
    for (way, ours) in [
        ("--http1.1", "1.1 portico-c1"),
        ("--http2-prior-knowledge", "2 portico-c1"),
    ] {
        for body in [&[][..], &["--data", "x"]] {
            let mut args = vec![way, "-H", "Host: app.test", "-H", "Via: 1.1 corp"];
            args.extend_from_slice(body);
            args.push(&url);
            let seen = echoed(&stdout(&curl(&args).await));
            assert_eq!(seen["headers"]["via"], ours, "{args:?}: {seen}");
        }
    }
}
