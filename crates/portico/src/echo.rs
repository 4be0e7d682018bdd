//! `portico echo`: a backend that answers every request with JSON describing what it
//! received, like the Ingress conformance suite's echoserver, so rewrites, headers and
//! round-robin can be seen from outside.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::logging::LogFormat;

#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on (HTTP/1.1 and h2c); repeatable. Sockets named `listen` handed over
    /// by socket activation (LISTEN_FDS, LISTEN_FDNAMES) take precedence: they are served
    /// instead of binding these addresses.
    #[arg(
        long,
        env = "PORTICO_ECHO_LISTEN",
        default_value = "127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,
    /// The Service name reported in each answer.
    #[arg(long, env = "PORTICO_ECHO_SERVICE", default_value = "echo")]
    pub service: String,
    /// The namespace reported in each answer.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The endpoint (Pod) name reported in each answer.
    #[arg(long, env = "POD_NAME", default_value = "echo-0")]
    pub pod: String,
    /// Log format.
    #[arg(long, env = "PORTICO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Exit when the parent process dies (used by `portico local`).
    #[arg(long, hide = true)]
    pub die_with_parent: bool,
}

/// What the echo server reports about one request.
#[derive(Serialize)]
struct Echo<'a> {
    service: &'a str,
    namespace: &'a str,
    pod: &'a str,
    endpoint: &'a str,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    host: &'a str,
    proto: &'static str,
    protocol: &'static str,
    headers: BTreeMap<String, Vec<String>>,
    remote_addr: String,
    body_bytes: usize,
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

struct Identity {
    service: String,
    namespace: String,
    pod: String,
}

async fn answer(
    identity: &Identity,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    // Read the body so clients that send one are not cut off; report only its size.
    let body_bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => 0,
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let proto = protocol(parts.version);
    let echo = Echo {
        service: &identity.service,
        namespace: &identity.namespace,
        pod: &identity.pod,
        endpoint: &identity.pod,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        host,
        proto,
        protocol: proto,
        headers,
        remote_addr: peer.to_string(),
        body_bytes,
    };
    let mut body = serde_json::to_vec_pretty(&echo).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let identity = std::sync::Arc::new(Identity {
        service: args.service,
        namespace: args.namespace,
        pod: args.pod,
    });
    let handed = crate::socket_activation::take("portico echo", crate::socket_activation::ECHO)?
        .tcp("listen");
    let mut listeners = Vec::new();
    for listener in handed {
        listeners.push(TcpListener::from_std(listener)?);
    }
    if listeners.is_empty() {
        for addr in &args.listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            listeners.push(listener);
        }
    }
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tracing::info!(addr = %listener.local_addr()?, service = %identity.service, pod = %identity.pod, "echo listening");
        let identity = identity.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            while let Some((stream, peer)) = crate::accept::next(&listener, &stop, "echo").await {
                let identity = identity.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let identity = identity.clone();
                        async move { Ok::<_, Infallible>(answer(&identity, peer, request).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    if let Err(e) = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        });
    }
    crate::signals::terminated().await?;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
