//! The admin listener (its own port, never a public one): `/metrics`, `/healthz`,
//! `/readyz` and `/debug/routes`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portico_model::RoutingTable;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::routes_view::TableView;
use crate::state::ReplicaState;

/// What the admin endpoints read.
pub struct Admin {
    pub registry: Registry,
    pub state: Arc<ReplicaState>,
    pub table: watch::Receiver<Arc<RoutingTable>>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts")
}

impl Admin {
    fn handle(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match request.uri().path() {
            "/metrics" => {
                let mut body = String::new();
                if prometheus_client::encoding::text::encode(&mut body, &self.registry).is_err() {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
                }
                Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response parts")
            }
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

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = admin.handle(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}
