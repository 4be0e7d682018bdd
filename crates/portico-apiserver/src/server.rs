//! The server's public face: the builder, the in-process `tower::Service`, and HTTP serving
//! (HTTP/1.1 and HTTP/2 on one port) with a kubeconfig for it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::faults::{Availability, Faults};
use crate::http::{ResponseBody, Shared, error_response, handle};
use crate::objects::{Objects, WriteOptions};
use crate::persist::{self, PersistError};
use crate::registry;
use crate::store::Store;

/// Largest request body accepted (kube-apiserver's limit).
const MAX_BODY: usize = 3 * 1024 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Configures an [`ApiServer`].
#[derive(Debug, Clone)]
pub struct ApiServerBuilder {
    data_dir: Option<PathBuf>,
    minor: u32,
    window: usize,
    bookmark_interval: Duration,
}

impl Default for ApiServerBuilder {
    fn default() -> Self {
        ApiServerBuilder {
            data_dir: None,
            minor: 33,
            window: 100_000,
            bookmark_interval: Duration::from_secs(10),
        }
    }
}

impl ApiServerBuilder {
    /// Keep state in this directory so that it survives a restart.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The Kubernetes minor version `/version` reports (kubectl picks its own version by it).
    pub fn minor_version(mut self, minor: u32) -> Self {
        self.minor = minor;
        self
    }

    /// How many change events the watch log retains; older watch positions get 410.
    pub fn watch_window(mut self, events: usize) -> Self {
        self.window = events;
        self
    }

    /// How often idle watches that asked for bookmarks get one.
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    pub fn build(self) -> Result<ApiServer, PersistError> {
        let store = match &self.data_dir {
            Some(dir) => {
                let (rv, tables, journal) = persist::open(dir)?;
                Store::with_contents(self.window, rv, tables, Some(journal))
            }
            None => Store::new(self.window),
        };
        let store = Arc::new(store);
        let objects = Objects::new(store.clone());
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if !store.namespace_exists(ns) {
                let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                if let Err(err) =
                    objects.create(registry::namespaces(), "", body, &WriteOptions::default())
                {
                    tracing::warn!(%err, ns, "could not create a built-in namespace");
                }
            }
        }
        Ok(ApiServer {
            shared: Arc::new(Shared {
                objects,
                faults: Faults::default(),
                minor: self.minor,
                bookmark_interval: self.bookmark_interval,
                server_address: std::sync::OnceLock::new(),
            }),
        })
    }
}

/// An in-process Kubernetes API server. Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct ApiServer {
    shared: Arc<Shared>,
}

impl ApiServer {
    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder::default()
    }

    /// The fault injection handle.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The object store (for inspection in tests).
    pub fn store(&self) -> &Arc<Store> {
        self.shared.objects.store()
    }

    /// A `tower::Service` answering API requests in-process, e.g. for
    /// `kube::Client::new(server.service(), "default")`.
    pub fn service(&self) -> ApiService {
        ApiService {
            shared: self.shared.clone(),
        }
    }

    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until the handle is shut down
    /// or dropped.
    pub fn serve(&self, listener: TcpListener) -> std::io::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        let _ = self.shared.server_address.set(addr.to_string());
        let service = self.service();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let stream = match accepted {
                            Ok((stream, _)) => stream,
                            Err(err) => {
                                // E.g. out of file descriptors: back off instead of spinning.
                                tracing::warn!(%err, "apiserver accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        };
                        let _ = stream.set_nodelay(true);
                        let svc = hyper_util::service::TowerToHyperService::new(service.clone());
                        connections.spawn(async move {
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(ServerHandle { addr, task })
    }
}

/// A running HTTP server; dropping it stops the server and closes its connections.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig that points kubectl and kube-rs at this server (namespace `default`).
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A kubeconfig for a server at `url`, without credentials (the server does not authenticate).
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: portico\n  cluster:\n    server: {url}\ncontexts:\n- name: portico\n  context:\n    cluster: portico\n    user: portico\n    namespace: default\ncurrent-context: portico\nusers:\n- name: portico\n  user: {{}}\npreferences: {{}}\n"
    )
}

/// The API as a `tower::Service` over any request body type.
#[derive(Debug, Clone)]
pub struct ApiService {
    shared: Arc<Shared>,
}

/// The error of a refused request (the `refuse` fault).
#[derive(Debug, thiserror::Error)]
#[error("connection refused (injected fault)")]
pub struct Refused;

impl<B> tower::Service<Request<B>> for ApiService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let admin = req.uri().path().starts_with("/admin/");
            if !admin {
                match shared.faults.availability() {
                    Availability::Up => {}
                    Availability::Refuse => return Err(Box::new(Refused) as BoxError),
                    Availability::Unavailable => {
                        return Ok(error_response(&ApiError::unavailable(
                            "the server is currently unable to handle the request (injected fault)",
                        )));
                    }
                }
                let delay = shared.faults.delay();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, MAX_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    let err = if err
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        ApiError::new(
                            413,
                            "RequestEntityTooLarge",
                            "the request body is too large",
                        )
                    } else {
                        ApiError::bad_request(format!("reading the request body failed: {err}"))
                    };
                    return Ok(error_response(&err));
                }
            };
            Ok::<_, BoxError>(handle(shared, Request::from_parts(parts, bytes)).await)
        })
    }
}
