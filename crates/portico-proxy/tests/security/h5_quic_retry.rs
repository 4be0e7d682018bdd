//! H5 (QUIC address validation): the QUIC accept loop never sent Retry, so every Initial from
//! a spoofed source cost a full handshake flight (certificate and signature). What must hold:
//! with handshakes in progress at or above `quic_retry_above_handshakes` an unvalidated client
//! gets a Retry first (stateless; a spoofed source never comes back with the token), and a
//! real client (aioquic) still connects through it.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connects_through_a_forced_retry() {
    let backend = Backend::start().await;
    let yaml = service("echo", &[backend.addr]) + &ingress("e", "retry.test", "/", "echo", &[]);
    // 0: every unvalidated client gets a Retry, as under a flood.
    let proxy = TestProxy::start_with(&yaml, |c| c.limits.quic_retry_above_handshakes = 0).await;
    for n in 1..=2 {
        let out = run(
            python().to_str().unwrap(),
            &[
                &script("h3client.py"),
                "get",
                &proxy.h3().to_string(),
                "retry.test",
                "/after-retry",
            ],
        )
        .await;
        let text = stdout(&out);
        assert!(
            text.contains("status=200"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("/after-retry"), "{text}");
        let m = proxy.proxy.metrics().connections;
        assert_eq!(m.quic_retries, n, "one Retry per new connection: {m:?}");
    }
}
