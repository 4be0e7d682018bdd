//! M1: the proxy routed (and checked the allowlist) by the absolute-form URI or HTTP/2's
//! `:authority`, but forwarded the client's different `Host`; and it accepted two `Host`
//! lines, routing by the first and forwarding both. What must hold: two `Host` lines are a
//! 400 (RFC 9112 §3.2), on the lean HTTP/1.1 loop and on hyper's; with an absolute-form
//! target or `:authority`, the backend's `Host` is the authority we routed by (RFC 9112
//! §3.2.2: a proxy replaces `Host`), so the host checked is the host the backend sees; an
//! authority with userinfo is a 400.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// `public.test` open, `admin.test` open only to 10.0.0.0/8 (not us).
async fn start() -> (Backend, TestProxy) {
    let backend = Backend::start().await;
    let yaml = service("app", &[backend.addr])
        + &ingress("public", "public.test", "/", "app", &[])
        + &ingress(
            "admin",
            "admin.test",
            "/",
            "app",
            &[("whitelist-source-range", "10.0.0.0/8")],
        );
    (backend, TestProxy::start(&yaml).await)
}

/// Sends `head` and reads until the proxy closes (it closes after a 400; other requests
/// here ask for a close) or 10 s pass.
async fn raw(proxy: &TestProxy, head: &str) -> String {
    let mut s = TcpStream::connect(proxy.http()).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_lines_are_400_on_the_lean_loop_and_on_hyper() {
    let (_b, proxy) = start().await;
    // A lone bodiless GET is served by the lean loop, which closes after a 400; with
    // Content-Length (and a close asked for) hyper serves it.
    for extra in ["", "Content-Length: 0\r\nConnection: close\r\n"] {
        for hosts in [
            "Host: public.test\r\nHost: admin.test\r\n",
            "Host: admin.test\r\nHost: public.test\r\n",
            "Host: public.test\r\nHost: public.test\r\n",
        ] {
            let answer = raw(&proxy, &format!("GET / HTTP/1.1\r\n{hosts}{extra}\r\n")).await;
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "{hosts:?} {extra:?}: {answer}"
            );
            assert!(answer.contains("more than one Host"), "{answer}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_forwards_the_host_it_was_routed_by() {
    let (_b, proxy) = start().await;
    for extra in ["", "Content-Length: 0\r\n"] {
        let answer = raw(
            &proxy,
            &format!(
                "GET http://public.test/x HTTP/1.1\r\nHost: admin.test\r\n{extra}Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = echoed(body_of(&answer));
        assert_eq!(seen["headers"]["host"], "public.test", "{extra:?}");
        assert_eq!(seen["path"], "/x");
    }
    // The allowlist follows the routed host: admin.test in the target is refused whatever
    // Host says.
    let answer = raw(
        &proxy,
        "GET http://admin.test/ HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // curl as a proxy client sends the absolute form, here with a different Host.
    let out = curl(&[
        "-x",
        &format!("http://127.0.0.1:{}", proxy.http().port()),
        "-H",
        "Host: admin.test",
        "http://public.test/y",
    ])
    .await;
    assert_eq!(echoed(&stdout(&out))["headers"]["host"], "public.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_in_the_authority_is_400() {
    let (_b, proxy) = start().await;
    let answer = raw(
        &proxy,
        "GET http://admin.test@public.test/ HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

fn h2_script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/security/h2_authority.py")
        .display()
        .to_string()
}

/// (status, body) of one h2c GET with `:authority` and `host` chosen apart.
async fn h2(proxy: &TestProxy, authority: &str, host: &str, path: &str) -> (String, String) {
    let out = run(
        python().to_str().unwrap(),
        &[
            &h2_script(),
            &proxy.http().to_string(),
            authority,
            host,
            path,
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_and_host_are_one_host_upstream() {
    let (_b, proxy) = start().await;
    // The review's scenario: routed and checked as public, seen by the backend as admin.
    let (status, body) = h2(&proxy, "public.test", "admin.test", "/z").await;
    assert_eq!(status, "status=200", "{body}");
    assert_eq!(echoed(&body)["headers"]["host"], "public.test");
    // And the allowlist follows :authority, whatever host says.
    let (status, body) = h2(&proxy, "admin.test", "public.test", "/").await;
    assert_eq!(status, "status=403", "{body}");
    // nghttp (another client we did not write): the backend sees the authority.
    let url = format!("http://127.0.0.1:{}/n", proxy.http().port());
    let out = run("nghttp", &["-H", ":authority: public.test", &url]).await;
    assert_eq!(echoed(&stdout(&out))["headers"]["host"], "public.test");
}
