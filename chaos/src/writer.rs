//! The workload at the API server: the objects the load goes through, and a writer that keeps
//! changing Ingresses (each on its own host, so its arrival at a replica is visible from
//! outside) and the echo Service's EndpointSlice (rotating which backends are listed; all of
//! them stay up, so no rotation may cost a request).
//!
//! Every change is recorded with the time its write succeeded, and probed on each replica
//! until it shows there, recording how long that took: an Ingress change by a request
//! (plain HTTP/1.1, the change's Host) that must answer as the change says — 200 once
//! created, 404 once deleted —, an EndpointSlice change through the committed table
//! (`/debug/routes`), whose load route must list exactly the new endpoints. A probe of a
//! change that a later one undid (an Ingress deleted, the slice rewritten) may stop early:
//! the change is then marked superseded.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cluster::{ECHO_PORT, admin_addr, http_addr};
use crate::load::get_h1;
use crate::net::BACKEND_ADDRS;
use crate::record::{ChangeRecord, Recorder};

pub const NAMESPACE: &str = "default";
pub const LOAD_HOST: &str = "chaos-load.test";
const MANAGER: &str = "portico-chaos";

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

async fn apply<K>(api: &Api<K>, value: Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.patch(&name, &apply_params(), &Patch::Apply(&value))
        .await
        .with_context(|| format!("applying {name}"))?;
    Ok(())
}

fn backend() -> Value {
    json!({"service": {"name": "echo", "port": {"number": 80}}})
}

fn slice(endpoints: &[usize]) -> Value {
    let list: Vec<Value> = endpoints
        .iter()
        .map(|&k| {
            json!({
                "addresses": [BACKEND_ADDRS[k].to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": format!("echo-{k}")},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-chaos", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "endpoints": list,
        "ports": [{"name": "http", "port": ECHO_PORT, "protocol": "TCP"}],
    })
}

fn ingress(name: &str, host: &str, tls: Option<&str>) -> Value {
    let mut spec = json!({
        "ingressClassName": "portico",
        "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": backend()}]}}],
    });
    if let Some(secret) = tls {
        spec["tls"] = json!([{"hosts": [host], "secretName": secret}]);
    }
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     // Plain HTTP on the load host is served, not redirected.
                     "annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": "false"}},
        "spec": spec,
    })
}

/// The load route's certificate (self-signed for [`LOAD_HOST`]): PEM for the Secret, DER
/// for the HTTP/3 clients' trust store.
pub struct LoadCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

impl LoadCertificate {
    pub fn generate() -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(vec![LOAD_HOST.to_string()])?;
        let cert = params.self_signed(&key)?;
        Ok(LoadCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        })
    }
}

/// Creates the IngressClass, the echo Service and its EndpointSlice, the load route's Secret
/// and Ingress.
pub async fn setup(client: &kube::Client, cert: &LoadCertificate) -> anyhow::Result<()> {
    let classes: Api<IngressClass> = Api::all(client.clone());
    apply(&classes, json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "portico", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": portico_model::CONTROLLER_NAME},
    }))
    .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    apply(&services, json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": NAMESPACE},
        "spec": {"selector": {"app": "echo"},
                 "ports": [{"name": "http", "port": 80, "targetPort": ECHO_PORT, "protocol": "TCP"}]},
    }))
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    apply(&slices, slice(&[0, 1, 2])).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    apply(
        &secrets,
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "chaos-load-tls", "namespace": NAMESPACE},
            "stringData": {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem},
        }),
    )
    .await?;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), NAMESPACE);
    apply(
        &ingresses,
        ingress("chaos-load", LOAD_HOST, Some("chaos-load-tls")),
    )
    .await?;
    Ok(())
}

/// What the writer left, for the final checks.
#[derive(Debug, Default, Clone)]
pub struct WriterOutcome {
    /// Hosts of Ingresses that exist at the end.
    pub live_hosts: Vec<String>,
    /// Hosts of Ingresses the writer deleted.
    pub deleted_hosts: Vec<String>,
    pub slice_changes: u64,
    pub failed_attempts: u64,
    /// Writes the API server refused as invalid or forbidden (400, 403, 422): the harness's
    /// objects must pass the real server's validation, so each fails the run (up to 20 kept).
    pub refused: Vec<String>,
    /// When the last change was written (seconds since the run started).
    pub last_written_at: Option<f64>,
}

/// How a change shows on a replica.
enum Probe {
    /// A request for the host answers this status.
    Host(String, u16),
    /// The load route lists exactly these endpoints, unless a later slice change (a newer
    /// generation) was written first.
    Endpoints {
        want: BTreeSet<String>,
        generation: u64,
    },
}

/// The writer: one change every `interval` until `stop`.
pub async fn run(
    client: kube::Client,
    recorder: Arc<Recorder>,
    replicas: usize,
    interval: Duration,
    seed: u64,
    stop: CancellationToken,
) -> WriterOutcome {
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut live: VecDeque<String> = VecDeque::new();
    let mut outcome = WriterOutcome::default();
    let mut probes = tokio::task::JoinSet::new();
    let mut next_id = 0u64;
    let slice_generation = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let roll: f64 = rng.random();
        let id = next_id;
        next_id += 1;
        let (what, write, probe) = if live.len() < 3 || roll < 0.45 {
            let name = format!("w-{id}");
            let host = format!("{name}.chaos.test");
            let api = ingresses.clone();
            let value = ingress(&name, &host, None);
            live.push_back(host.clone());
            (
                format!("create Ingress {name}"),
                Write::Apply(api, value),
                Probe::Host(host, 200),
            )
        } else if roll < 0.70 {
            let host = live.pop_front().expect("at least 3 live");
            let name = host.trim_end_matches(".chaos.test").to_string();
            outcome.deleted_hosts.push(host.clone());
            (
                format!("delete Ingress {name}"),
                Write::Delete(ingresses.clone(), name),
                Probe::Host(host, 404),
            )
        } else {
            // Two of the three backends, rotating; never none.
            let skip = rng.random_range(0..3usize);
            let listed: Vec<usize> = (0..3).filter(|&k| k != skip).collect();
            outcome.slice_changes += 1;
            let want = listed
                .iter()
                .map(|&k| format!("{}:{ECHO_PORT}", BACKEND_ADDRS[k]))
                .collect();
            (
                format!("EndpointSlice echo-chaos lists backends {listed:?}"),
                Write::Slice(slices.clone(), slice(&listed)),
                Probe::Endpoints {
                    want,
                    generation: 0,
                },
            )
        };
        // Retry through API faults until it lands (or the run ends).
        let written_at = loop {
            match write.attempt().await {
                Ok(()) => break Some(recorder.now()),
                Err(e) => {
                    outcome.failed_attempts += 1;
                    if let Some(why) = refusal(&e)
                        && outcome.refused.len() < 20
                    {
                        outcome.refused.push(format!("{what}: {why}"));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break None,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        };
        let Some(written_at) = written_at else { break };
        outcome.last_written_at = Some(written_at);
        let mut probe = probe;
        if let Probe::Endpoints { generation, .. } = &mut probe {
            // Probes of the previous slice change stop: it cannot show any more.
            *generation = slice_generation.fetch_add(1, Ordering::SeqCst) + 1;
        }
        let index = recorder.with(|o| {
            if let Some(deleted) = what.strip_prefix("delete Ingress ") {
                let created = format!("create Ingress {deleted}");
                if let Some(c) = o.changes.iter_mut().rev().find(|c| c.what == created) {
                    c.superseded = true;
                }
            }
            if what.starts_with(SLICE_CHANGE)
                && let Some(c) = o
                    .changes
                    .iter_mut()
                    .rev()
                    .find(|c| c.what.starts_with(SLICE_CHANGE))
            {
                c.superseded = true;
            }
            o.changes.push(ChangeRecord {
                id,
                what,
                written_at,
                seen_after: vec![None; replicas],
                superseded: false,
            });
            o.changes.len() - 1
        });
        let probe = Arc::new(probe);
        for r in 0..replicas {
            let recorder = recorder.clone();
            let probe = probe.clone();
            let generation = slice_generation.clone();
            probes.spawn(async move {
                if let Some(after) =
                    probe_until(r, &probe, &generation, written_at, &recorder).await
                {
                    recorder.with(|o| o.changes[index].seen_after[r] = Some(after));
                }
            });
        }
        while probes.try_join_next().is_some() {}
    }
    // Give probes still running time to land (replicas may still be catching up).
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while probes.join_next().await.is_some() {}
    })
    .await;
    probes.abort_all();
    outcome.live_hosts = live.into_iter().collect();
    outcome
}

enum Write {
    Apply(Api<Ingress>, Value),
    Delete(Api<Ingress>, String),
    Slice(Api<EndpointSlice>, Value),
}

impl Write {
    async fn attempt(&self) -> anyhow::Result<()> {
        let limit = Duration::from_secs(5);
        match self {
            Write::Apply(api, value) => {
                tokio::time::timeout(limit, apply(api, value.clone())).await??
            }
            Write::Delete(api, name) => {
                match tokio::time::timeout(limit, api.delete(name, &DeleteParams::default()))
                    .await?
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Write::Slice(api, value) => {
                tokio::time::timeout(limit, apply(api, value.clone())).await??
            }
        }
        Ok(())
    }
}

/// Why the API server refused a write for good (invalid or forbidden), if it did; outages,
/// time-outs and conflicts are retried and are not refusals.
fn refusal(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) if matches!(status.code, 400 | 403 | 422) => {
            Some(format!("{} {}", status.code, status.message))
        }
        _ => None,
    }
}

/// The writer's record of an EndpointSlice change starts with this.
pub const SLICE_CHANGE: &str = "EndpointSlice ";

/// Polls replica `r` until it shows `probe`; seconds after `written_at`. None when it did
/// not within two minutes, or when a later slice change superseded this one first.
async fn probe_until(
    r: usize,
    probe: &Probe,
    slice_generation: &AtomicU64,
    written_at: f64,
    recorder: &Recorder,
) -> Option<f64> {
    let deadline = written_at + crate::checks::PROBE_PATIENCE;
    loop {
        let shows = match probe {
            Probe::Host(host, expect) => {
                matches!(get_h1(http_addr(r), host, "/", Duration::from_secs(1)).await,
                    Ok((status, _)) if status.as_u16() == *expect)
            }
            Probe::Endpoints { want, generation } => {
                if slice_generation.load(Ordering::SeqCst) != *generation {
                    return None;
                }
                crate::observe::routes(admin_addr(r), Duration::from_secs(1))
                    .await
                    .is_some_and(|view| load_route_endpoints(&view).as_ref() == Some(want))
            }
        };
        if shows {
            return Some(recorder.now() - written_at);
        }
        if recorder.now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The endpoints of the load route in a `/debug/routes` answer.
fn load_route_endpoints(view: &Value) -> Option<BTreeSet<String>> {
    let route = view["routes"]
        .as_array()?
        .iter()
        .find(|r| r["host"].as_str() == Some(LOAD_HOST))?;
    Some(
        route["endpoints"]
            .as_array()?
            .iter()
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> anyhow::Error {
        let status = kube::core::Status {
            code,
            message: format!("refused with {code}"),
            ..Default::default()
        };
        anyhow::Error::from(kube::Error::Api(Box::new(status))).context("applying w-1")
    }

    #[test]
    fn invalid_and_forbidden_writes_are_refusals_outages_are_not() {
        for code in [400, 403, 422] {
            assert_eq!(
                refusal(&api_error(code)),
                Some(format!("{code} refused with {code}"))
            );
        }
        for code in [409, 429, 500, 503] {
            assert_eq!(refusal(&api_error(code)), None);
        }
        assert_eq!(refusal(&anyhow::anyhow!("connection refused")), None);
    }
}
