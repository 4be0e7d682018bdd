//! H5 over HTTP/3: quinn's idle timer is reset by any packet, so PINGs kept a QUIC
//! connection for ever, and a response stream the client gave no flow-control credit waited
//! for ever. What must hold: a connection with no request stream for the idle timeout is
//! closed despite PINGs, and a response that cannot be sent for the send timeout has its
//! stream reset (counted), with an independent client (aioquic).

use std::time::Duration;

use crate::common::*;

async fn start(idle: Duration, send: Duration) -> (Backend, TestProxy) {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr]) + &ingress("e", "h3.test", "/", "echo", &[]);
    let proxy = TestProxy::start_with(&yaml, |c| {
        c.limits.idle_timeout = idle;
        c.limits.send_timeout = send;
    })
    .await;
    (backend, proxy)
}

async fn h3_slow(proxy: &TestProxy, mode: &str) -> String {
    let script = format!("{}/tests/security/h3_slow.py", env!("CARGO_MANIFEST_DIR"));
    let addr = proxy.h3().to_string();
    let out = run(
        python().to_str().unwrap(),
        &[&script, mode, &addr, "h3.test"],
    )
    .await;
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The number after `key=` in `text`.
fn number(text: &str, key: &str) -> f64 {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_pings_do_not_keep_an_idle_connection_open() {
    let (_backend, proxy) = start(Duration::from_secs(1), Duration::from_secs(60)).await;
    let text = h3_slow(&proxy, "ping").await;
    assert!(text.contains("status=200"), "{text}");
    assert!(
        number(&text, "pings=") >= 3.0,
        "the client was pinging: {text}"
    );
    assert!(number(&text, "closed_after=") < 4.0, "{text}");
    let m = proxy.proxy.metrics().connections;
    assert!(m.idle_closes >= 1, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_response_without_flow_control_credit_is_reset_after_the_send_timeout() {
    let (_backend, proxy) = start(Duration::from_secs(30), Duration::from_secs(1)).await;
    let text = h3_slow(&proxy, "zero-window").await;
    assert!(number(&text, "reset_after=") < 4.0, "{text}");
    let m = proxy.proxy.metrics().connections;
    assert!(m.send_timeouts >= 1, "{m:?}");
}
