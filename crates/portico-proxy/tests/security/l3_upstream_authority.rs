//! L3 (first item): requests to an HTTP/2 upstream (`backend-protocol` GRPC, H2C or GRPCS)
//! went out with `:authority` set to the endpoint's IP and port, beside the client's `Host`.
//! HTTP/2 calls a `Host` that differs from `:authority` malformed (RFC 9113 §8.3.1), and
//! Envoy-based sidecars and gateways route by `:authority`, so the backend's mesh saw a request
//! for a Pod address rather than for the host Portico routed. What must hold: whatever the
//! client spoke (HTTP/1.1, h2c, HTTP/2 over TLS, HTTP/3), an HTTP/2 upstream's `:authority` is
//! the host the request was routed by (as `Host` is on HTTP/1.1, finding M1), never the
//! endpoint address, and no different `Host` goes beside it; over TLS to the backend as well;
//! and an endpoint that refuses the connection is still retried on another.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::common::*;

/// What an HTTP/2 backend was asked: `:authority` (the URI's, as hyper's server gives it),
/// the `host` header if any, and the protocol version.
async fn report(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let json = serde_json::json!({
        "authority": req.uri().authority().map(|a| a.to_string()),
        "host": req.headers().get("host").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        "version": format!("{:?}", req.version()),
    });
    Ok(Response::new(Full::new(Bytes::from(format!("{json}\n")))))
}

/// A backend speaking h2c (and HTTP/1.1), or HTTP/2 over TLS with `tls`, that reports
/// [`report`] for every request.
async fn authority_backend(tls: bool) -> (SocketAddr, TaskGuard) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.then(|| backend_tls(&[b"h2"]));
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let service = service_fn(report);
                let _ = match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        builder.serve_connection(TokioIo::new(tls), service).await
                    }
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    (addr, TaskGuard(task))
}

/// The backend saw `host` as `:authority`, and no other host beside it.
fn assert_routed(seen: &serde_json::Value, host: &str, endpoint: SocketAddr) {
    assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
    assert_eq!(seen["authority"], host, "{seen}");
    assert_ne!(seen["authority"], endpoint.to_string(), "{seen}");
    assert!(
        seen["host"].is_null() || seen["host"] == host,
        "a Host beside :authority must be the same: {seen}"
    );
}

fn h2_script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/security/h2_authority.py")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_gets_the_routed_authority_from_every_client_protocol() {
    let (endpoint, _backend) = authority_backend(false).await;
    let yaml = service("grpc", &[endpoint])
        + &ingress(
            "g",
            "grpc.test",
            "/",
            "grpc",
            &[("backend-protocol", "GRPC")],
        )
        + &ingress(
            "other",
            "other.test",
            "/",
            "grpc",
            &[("backend-protocol", "GRPC")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/svc.Echo/Call", proxy.http().port());

    // HTTP/1.1 (curl): Host becomes :authority.
    let seen = echoed(&stdout(&curl(&["-H", "Host: grpc.test", &url]).await));
    assert_routed(&seen, "grpc.test", endpoint);
    // With a port, as the client named it.
    let seen = echoed(&stdout(&curl(&["-H", "Host: grpc.test:8080", &url]).await));
    assert_routed(&seen, "grpc.test:8080", endpoint);

    // h2c (nghttp).
    let out = run("nghttp", &["-H", ":authority: grpc.test", &url]).await;
    assert_routed(&echoed(&stdout(&out)), "grpc.test", endpoint);

    // h2c with a different `host` beside `:authority` (Python's h2): the request routes by
    // `:authority` (M1), and the backend sees that host alone.
    let out = run(
        python().to_str().unwrap(),
        &[
            &h2_script(),
            &proxy.http().to_string(),
            "grpc.test",
            "other.test",
            "/svc.Echo/Call",
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
    assert_eq!(status, "status=200", "{body}");
    assert_routed(&echoed(body), "grpc.test", endpoint);

    // HTTP/2 over TLS to the proxy (curl), and HTTP/3 (aioquic).
    let tls_url = format!("https://grpc.test:{}/svc.Echo/Call", proxy.https().port());
    let resolve = format!("grpc.test:{}:127.0.0.1", proxy.https().port());
    let out = curl(&["-k", "--http2", "--resolve", &resolve, &tls_url]).await;
    assert_routed(
        &echoed(&stdout(&out)),
        &format!("grpc.test:{}", proxy.https().port()),
        endpoint,
    );
    let h3 = run(
        python().to_str().unwrap(),
        &[
            &script("h3client.py"),
            "get",
            &format!("127.0.0.1:{}", proxy.h3().port()),
            "grpc.test",
            "/svc.Echo/Call",
        ],
    )
    .await;
    let text = stdout(&h3);
    assert!(text.contains("status=200"), "{text}");
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("body="))
        .unwrap_or_default();
    assert_routed(&echoed(json), "grpc.test", endpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcs_over_tls_gets_the_routed_authority() {
    let (endpoint, _backend) = authority_backend(true).await;
    let yaml = service("secure", &[endpoint])
        + &ingress(
            "s",
            "grpcs.test",
            "/",
            "secure",
            &[("backend-protocol", "GRPCS")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/svc.Echo/Call", proxy.http().port());
    for _ in 0..3 {
        let seen = echoed(&stdout(&curl(&["-H", "Host: grpcs.test", &url]).await));
        assert_routed(&seen, "grpcs.test", endpoint);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_http2_endpoint_is_retried_on_another() {
    let (endpoint, _backend) = authority_backend(false).await;
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let yaml = service("grpc", &[dead, endpoint])
        + &ingress(
            "g",
            "grpc.test",
            "/",
            "grpc",
            &[("backend-protocol", "H2C")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/", proxy.http().port());
    for _ in 0..6 {
        // A body too: nothing was sent to the dead endpoint, so it may move on.
        let out = curl(&["-H", "Host: grpc.test", "--data-binary", "payload", &url]).await;
        assert_routed(&echoed(&stdout(&out)), "grpc.test", endpoint);
    }
}
