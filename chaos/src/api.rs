//! Which API server a run uses, and how the API faults are made on it.
//!
//! * `real` (what `tests/run` runs): the real kube-apiserver and etcd ([`crate::realapi`]),
//!   reached by the replicas through [`crate::apiproxy`] as deploy/'s ServiceAccount. The
//!   faults are real: api-unavailable stops kube-apiserver and starts it again over the same
//!   etcd (stop, 10 s, start: longer than the lease, so the next leader lists afresh);
//!   drop-watches closes every watch connection; force-410 holds new watches at the proxy,
//!   cuts the watches, writes twice and compacts etcd (past every resourceVersion the
//!   replicas hold), then lets the re-watches through, so those of the kinds served from etcd
//!   ([`crate::realapi::UNCACHED_KINDS`]) get 410 from etcd and relist (the run checks the
//!   leader's log for both). Real validation, defaulting and RBAC judge every object and
//!   call.
//! * `in-process`: portico-apiserver, served by [`crate::apifront`], with its fault hooks
//!   (503 to every request, every watch ended, the next watch answered 410).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use portico_apiserver::{ApiServer, Availability};
use serde_json::json;

use crate::apifront::ApiFront;
use crate::apiproxy::{self, ApiProxy};
use crate::cluster;
use crate::net::HARNESS_ADDR;
use crate::realapi::{self, ControlPlane};
use crate::record::Recorder;

/// The `--api` choice.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// The real kube-apiserver and etcd (tests/kube's kube-testenv).
    Real,
    /// Portico's in-process API server and its fault hooks.
    InProcess,
}

impl ApiKind {
    pub fn name(self) -> &'static str {
        match self {
            ApiKind::Real => "real",
            ApiKind::InProcess => "in-process",
        }
    }
}

/// Where the real control plane's pieces are.
#[derive(Debug, Clone)]
pub struct RealOptions {
    /// kube-testenv, if given; else the cached build of the checkout's tests/kube.
    pub kube_testenv: Option<PathBuf>,
    /// The checkout (for tests/kube/build.sh --check).
    pub checkout: PathBuf,
    /// deploy/ (the ServiceAccount and RBAC the replicas run as).
    pub deploy: PathBuf,
}

/// A started API server: the harness's client, and what the replicas use.
pub struct Started {
    pub backend: Backend,
    /// The harness's own client (setup, writer, fresh compiles, conformance).
    pub client: kube::Client,
    /// One kubeconfig per replica.
    pub kubeconfigs: Vec<PathBuf>,
    /// The replicas' namespace (their Lease lives there).
    pub namespace: String,
}

pub enum Backend {
    InProcess {
        api: ApiServer,
        front: ApiFront,
    },
    Real {
        plane: Box<ControlPlane>,
        proxy: ApiProxy,
    },
}

impl Backend {
    /// Starts the API server `kind` and its front on the harness's address.
    pub async fn start(
        kind: ApiKind,
        real: &RealOptions,
        work: &Path,
        replicas: usize,
        recorder: Arc<Recorder>,
    ) -> anyhow::Result<Started> {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::new(HARNESS_ADDR.into(), 0)).await?;
        match kind {
            ApiKind::InProcess => {
                let api = ApiServer::builder().build()?;
                let front =
                    crate::apifront::serve(api.clone(), listener, recorder, cluster::replica_of)?;
                let kubeconfig = work.join("kubeconfig");
                std::fs::write(
                    &kubeconfig,
                    portico_apiserver::kubeconfig(&format!("http://{}", front.addr)),
                )?;
                let client = kube::Client::new(api.service(), crate::writer::NAMESPACE);
                Ok(Started {
                    backend: Backend::InProcess { api, front },
                    client,
                    kubeconfigs: vec![kubeconfig; replicas],
                    namespace: "default".to_string(),
                })
            }
            ApiKind::Real => {
                let binary = realapi::binary(real.kube_testenv.as_deref(), &real.checkout)?;
                let plane = ControlPlane::start(
                    &binary,
                    &work.join("kube"),
                    &work.join("logs").join("kube-testenv.log"),
                )
                .await?;
                let upstream = apiproxy::Upstream {
                    addr: plane.addr,
                    tls: plane.tls()?,
                };
                let proxy = apiproxy::serve(listener, upstream, recorder, cluster::replica_of)?;
                let credentials = realapi::replica_credentials(
                    &plane,
                    &real.deploy,
                    proxy.addr,
                    replicas,
                    &work.join("kube"),
                )
                .await?;
                let client = plane.admin_client().await?;
                Ok(Started {
                    backend: Backend::Real {
                        plane: Box::new(plane),
                        proxy,
                    },
                    client,
                    kubeconfigs: credentials.kubeconfigs,
                    namespace: credentials.namespace,
                })
            }
        }
    }

    /// The port the replicas reach the API server on (at the harness's address).
    pub fn port(&self) -> u16 {
        match self {
            Backend::InProcess { front, .. } => front.addr.port(),
            Backend::Real { proxy, .. } => proxy.addr.port(),
        }
    }

    /// The API server is gone for `hold`, then back. For the real one, `hold` runs from the
    /// moment it has stopped; its graceful stop and its start-up come on top.
    pub async fn unavailable(&self, hold: Duration) -> anyhow::Result<()> {
        match self {
            Backend::InProcess { api, .. } => {
                api.faults().set_availability(Availability::Unavailable);
                tokio::time::sleep(hold).await;
                api.faults().set_availability(Availability::Up);
            }
            Backend::Real { plane, .. } => {
                plane.stop_apiserver().await?;
                tokio::time::sleep(hold).await;
                plane.start_apiserver().await?;
            }
        }
        Ok(())
    }

    /// Every watch stream ends at once.
    pub fn drop_watches(&self) {
        match self {
            Backend::InProcess { api, .. } => api.faults().drop_watches(),
            Backend::Real { proxy, .. } => proxy.drop_watches(),
        }
    }

    /// Watch responses the real server's proxy has cut so far (None in-process).
    pub fn watches_cut(&self) -> Option<usize> {
        match self {
            Backend::InProcess { .. } => None,
            Backend::Real { proxy, .. } => Some(proxy.watches_cut()),
        }
    }

    /// Watches are dropped and re-watches get 410 Expired. For the real server: new watches
    /// held at the proxy, the watches cut (so no watcher's resourceVersion moves any more), two
    /// writes (etcd's revision is now at least two past any of them, so a re-watch starts
    /// below it), etcd compacted at that revision, and the held re-watches let through.
    /// Returns what was done, for the log.
    pub async fn force_410(&self, client: &kube::Client) -> anyhow::Result<String> {
        match self {
            Backend::InProcess { api, .. } => {
                api.faults().expire_next_watch();
                api.faults().drop_watches();
                Ok("next watch answered 410".to_string())
            }
            Backend::Real { plane, proxy } => {
                let held = proxy.hold_watches().await;
                let before = proxy.watches_cut();
                proxy.drop_watches();
                let maps: Api<ConfigMap> =
                    Api::namespaced(client.clone(), crate::writer::NAMESPACE);
                for n in 0..2 {
                    let marker = json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "chaos-compaction-marker"},
                        "data": {"n": format!("{n}-{}", std::process::id())},
                    });
                    maps.patch(
                        "chaos-compaction-marker",
                        &PatchParams::apply("portico-chaos").force(),
                        &Patch::Apply(&marker),
                    )
                    .await?;
                }
                let revision = plane.compact_etcd().await?;
                drop(held);
                Ok(format!(
                    "etcd compacted at revision {revision}, {} watches cut",
                    proxy.watches_cut() - before
                ))
            }
        }
    }

    /// Stops serving; the real control plane stops and removes its temp dir.
    pub async fn shutdown(self) {
        match self {
            Backend::InProcess { front, .. } => drop(front),
            Backend::Real { plane, proxy } => {
                drop(proxy);
                plane.stop().await;
            }
        }
    }
}

/// What a replica's JSON log says happened to its watches: the kinds whose watch failed with
/// 410 Expired, and the kinds it (re)listed after such a failure.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Relists {
    pub expired: BTreeSet<String>,
    pub relisted_after_expiry: BTreeSet<String>,
}

/// Reads `portico run --log-format json` lines (the controller's "watch failed" warnings and
/// "listing" notes).
pub fn relists(log: &str) -> Relists {
    let mut out = Relists::default();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(message), Some(kind)) = (v["message"].as_str(), v["kind"].as_str()) else {
            continue;
        };
        if message.starts_with("watch failed") {
            let error = v["error"].as_str().unwrap_or_default();
            if error.contains("410") || error.contains("Expired") || error.contains("too old") {
                out.expired.insert(kind.to_string());
            }
        } else if message == "listing" && out.expired.contains(kind) {
            out.relisted_after_expiry.insert(kind.to_string());
        }
    }
    out
}

/// The controller's names for [`realapi::UNCACHED_KINDS`].
pub const UNCACHED_KIND_NAMES: [&str; 2] = ["Ingress", "EndpointSlice"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relists_are_read_from_the_json_log() {
        let log = [
            r#"{"timestamp":"t","level":"INFO","message":"listing","kind":"Ingress","target":"portico_controller::reconcile"}"#,
            r#"{"timestamp":"t","level":"WARN","message":"watch failed; retrying with backoff","kind":"Ingress","error":"error returned by apiserver during watch: The resourceVersion for the provided watch is too old.: Expired","target":"portico_controller::reconcile"}"#,
            r#"{"timestamp":"t","level":"WARN","message":"watch failed; retrying with backoff","kind":"Service","error":"failed to perform initial object list: connection refused","target":"portico_controller::reconcile"}"#,
            "not json",
            r#"{"timestamp":"t","level":"INFO","message":"listing","kind":"Ingress","target":"portico_controller::reconcile"}"#,
            r#"{"timestamp":"t","level":"INFO","message":"listing","kind":"Service","target":"portico_controller::reconcile"}"#,
            r#"{"timestamp":"t","level":"WARN","message":"watch failed; retrying with backoff","kind":"EndpointSlice","error":"ErrorResponse { code: 410 }","target":"portico_controller::reconcile"}"#,
        ]
        .join("\n");
        let r = relists(&log);
        assert_eq!(
            r.expired,
            ["EndpointSlice", "Ingress"].map(String::from).into()
        );
        // EndpointSlice expired but was not relisted (yet); Service failed, but not with 410.
        assert_eq!(
            r.relisted_after_expiry,
            ["Ingress"].map(String::from).into()
        );
    }
}
