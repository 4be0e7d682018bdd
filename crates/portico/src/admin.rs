//! The admin listener (its own port, never a public one): `/metrics`, `/healthz`,
//! `/readyz`, and `/debug/routes` (by default to loopback clients only: it lists every
//! namespace's hosts, Services and endpoints, never key material).
//!
//! Bound by default to loopback and the Pod IP, not every interface. HTTP/1.1 only (probes
//! and Prometheus need no more, and hyper's auto-detection would wait for the first bytes
//! without a timer); each request head must arrive within [`HEADER_READ_TIMEOUT`], and at
//! most [`MAX_CONNECTIONS`] connections are served at once: a further one is closed at
//! once, so a slow client cannot hold the process's file descriptors or starve the probes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use portico_model::RoutingTable;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::routes_view::TableView;
use crate::state::ReplicaState;

/// Time a client has to send a whole request head (also an idle keep-alive's limit).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once, over every admin address.
pub const MAX_CONNECTIONS: usize = 64;

/// Who may read `/debug/routes`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugRoutes {
    /// Clients connecting from a loopback address (`portico routes` on the node, a
    /// `kubectl port-forward`).
    Loopback,
    /// Any client that reaches the admin port (restrict it with the NetworkPolicy).
    Any,
    /// Nobody.
    Off,
}

impl DebugRoutes {
    fn allows(self, peer: SocketAddr) -> bool {
        match self {
            Self::Loopback => peer.ip().to_canonical().is_loopback(),
            Self::Any => true,
            Self::Off => false,
        }
    }
}

/// What the admin endpoints read.
pub struct Admin {
    pub registry: Registry,
    pub state: Arc<ReplicaState>,
    pub table: watch::Receiver<Arc<RoutingTable>>,
    pub debug_routes: DebugRoutes,
    /// One permit per connection served, shared by every admin listener.
    pub connections: Arc<Semaphore>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts")
}

impl Admin {
    fn handle<B>(&self, request: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match request.uri().path() {
            "/metrics" => crate::metrics::openmetrics(&self.registry)
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")),
            "/healthz" | "/livez" => match self.state.failure() {
                None => text(StatusCode::OK, "ok\n"),
                Some(failure) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed: {failure}\n"),
                ),
            },
            "/readyz" => {
                let controller = self
                    .state
                    .controller()
                    .map(|c| format!("controller: {c}\n"))
                    .unwrap_or_default();
                match self.state.not_ready_reason() {
                    None => text(StatusCode::OK, format!("ready\n{controller}")),
                    Some(reason) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{reason}\n{controller}"),
                    ),
                }
            }
            "/debug/routes" if !self.debug_routes.allows(peer) => text(
                StatusCode::FORBIDDEN,
                "/debug/routes is served to loopback clients only (--admin-debug-routes)\n",
            ),
            "/debug/routes" => {
                let table = self.table.borrow().clone();
                let view = TableView::of(&table);
                let mut body = serde_json::to_vec_pretty(&view).unwrap_or_default();
                body.push(b'\n');
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response parts")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz, /debug/routes\n",
            ),
        }
    }
}

/// Serves the admin endpoints on every listener until `stop` is cancelled.
pub async fn serve_all(listeners: Vec<TcpListener>, admin: Arc<Admin>, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(serve(listener, admin.clone(), stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    while let Some((stream, peer)) = crate::accept::next(&listener, &stop, "admin").await {
        let Ok(permit) = admin.connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection limit reached; closed");
            continue;
        };
        let admin = admin.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = admin.handle(&request, peer);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(debug_routes: DebugRoutes) -> Admin {
        let (_, table) = watch::channel(Arc::new(RoutingTable::default()));
        Admin {
            registry: Registry::default(),
            state: Arc::new(ReplicaState::default()),
            table,
            debug_routes,
            connections: Arc::new(Semaphore::new(1)),
        }
    }

    fn get(admin: &Admin, path: &str, peer: &str) -> StatusCode {
        let request = Request::get(path).body(()).unwrap();
        admin.handle(&request, peer.parse().unwrap()).status()
    }

    #[test]
    fn debug_routes_follows_the_setting_and_probes_answer_everyone() {
        let loopback = admin(DebugRoutes::Loopback);
        assert_eq!(
            get(&loopback, "/debug/routes", "127.0.0.1:1"),
            StatusCode::OK
        );
        assert_eq!(get(&loopback, "/debug/routes", "[::1]:1"), StatusCode::OK);
        assert_eq!(
            get(&loopback, "/debug/routes", "[::ffff:127.0.0.1]:1"),
            StatusCode::OK
        );
        assert_eq!(
            get(&loopback, "/debug/routes", "10.0.0.7:1"),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get(&admin(DebugRoutes::Off), "/debug/routes", "127.0.0.1:1"),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get(&admin(DebugRoutes::Any), "/debug/routes", "10.0.0.7:1"),
            StatusCode::OK
        );
        for path in ["/metrics", "/healthz", "/readyz"] {
            assert_ne!(get(&loopback, path, "10.0.0.7:1"), StatusCode::FORBIDDEN);
            assert_ne!(get(&loopback, path, "10.0.0.7:1"), StatusCode::NOT_FOUND);
        }
    }
}
