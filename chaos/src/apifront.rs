//! Serves the in-process API server to the replicas and records who wrote what.
//!
//! Each replica has its own address, so the connection's source address names the writer:
//! every non-GET request (Lease renewals, Ingress status, Events) is recorded with the
//! replica it came from, when it arrived, and the status it got. The one-writer check reads
//! that log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Method, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portico_apiserver::ApiServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::record::{ApiWrite, Recorder};

/// The serving task; dropping it stops serving and closes every connection.
#[derive(Debug)]
pub struct ApiFront {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for ApiFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `server` on `listener`; `replica_of` maps a peer address to a replica ordinal.
pub fn serve(
    server: ApiServer,
    listener: TcpListener,
    recorder: Arc<Recorder>,
    replica_of: fn(IpAddr) -> Option<usize>,
) -> std::io::Result<ApiFront> {
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let replica = replica_of(peer.ip());
                    let server = server.clone();
                    let recorder = recorder.clone();
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let service = server.service();
                        let recorder = recorder.clone();
                        async move {
                            // A write counts from when it arrived: that is when the API
                            // server acts on it, whenever the answer goes out.
                            let t = recorder.now();
                            let method = req.method().clone();
                            let path = req.uri().path().to_string();
                            let result = service.oneshot(req).await;
                            if method != Method::GET && !path.contains("/events") {
                                let status = match &result {
                                    Ok(resp) => resp.status().as_u16(),
                                    Err(_) => 0,
                                };
                                recorder.with(|o| o.api_writes.push(ApiWrite {
                                    t,
                                    replica,
                                    method: method.to_string(),
                                    path,
                                    status,
                                }));
                            }
                            result.map_err(|e| std::io::Error::other(e.to_string()))
                        }
                    });
                    connections.spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(ApiFront { addr, task })
}
