//! After the faults: the ingress-controller-conformance routing expectations
//! (`testdata/conformance-cases.tsv` and its manifests), re-checked
//! against every replica over real HTTP, so a run proves the survivors still route right.
//!
//! Each manifest is applied on its own (as the conformance suite does), with an echo backend
//! per Service it names (the echo answer names its Service); once every replica lists its
//! Ingresses, each row is sent to each replica, the Ingresses' status is checked (the
//! published address on ours, none on another class's), then the manifest is deleted.
//! HTTPS rows go over TLS with SNI to each replica's HTTPS port, trusting only the
//! certificate the harness made for the suite's `conformance-tls` Secret, so a row passes only
//! if the replica chose that certificate by SNI.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use portico_test_support::{ConformanceCase as Case, Table, poll_until, service_names};
use serde_json::{Value, json};

use crate::cluster::{Cluster, STATUS_ADDRESS, admin_addr, http_addr, https_addr};
use crate::net::{BACKEND_ADDRS, replica_addr};
use crate::observe;
use crate::writer::NAMESPACE;

/// The cases of a conformance table, read with the workspace's one table reader.
fn read_cases(path: &Path) -> anyhow::Result<Vec<Case>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table = Table::parse(&text).with_context(|| format!("{} has no header", path.display()))?;
    Case::from_table(&table).with_context(|| path.display().to_string())
}

/// The outcome: what was checked, what failed, what was skipped.
#[derive(Debug, Default)]
pub struct Outcome {
    pub checked: usize,
    pub failures: Vec<String>,
    pub skipped: Vec<String>,
}

/// The suite's TLS Secret: a certificate for the hosts of its TLS rows.
pub struct SuiteCertificate {
    cert_pem: String,
    key_pem: String,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

impl SuiteCertificate {
    pub fn generate(names: Vec<String>) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(names)?.self_signed(&key)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone())?;
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(SuiteCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            tls: std::sync::Arc::new(tls),
        })
    }
}

async fn request(
    addr: std::net::SocketAddr,
    tls: Option<&SuiteCertificate>,
    method: &str,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, Option<String>, Bytes)> {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let mut sender = match tls {
            None => {
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                sender
            }
            Some(suite) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_string())?;
                let stream = tokio_rustls::TlsConnector::from(suite.tls.clone())
                    .connect(name, stream)
                    .await
                    .context("TLS handshake (the suite's certificate must be chosen by SNI)")?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                sender
            }
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, location, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .context("timed out")?
}

fn check_case(
    case: &Case,
    replica: usize,
    status: u16,
    location: Option<&str>,
    body: &[u8],
    host: &str,
) -> Option<String> {
    let want = case.status?;
    if (300..400).contains(&status) && case.other.contains("redirects") {
        // The row follows a redirect to HTTPS; the plain leg must redirect to this host.
        let ok = location.is_some_and(|l| l.starts_with(&format!("https://{host}")));
        return (!ok).then(|| format!("{} on replica {replica}: {status} to {location:?}, expected a redirect to https://{host}", case.id));
    }
    if status != want {
        return Some(format!(
            "{} on replica {replica}: {} {}{} answered {status}, expected {want}",
            case.id, case.method, host, case.path
        ));
    }
    if !case.service.is_empty() {
        let got = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["service"].as_str().map(str::to_string));
        if got.as_deref() != Some(case.service.as_str()) {
            return Some(format!(
                "{} on replica {replica}: served by {got:?}, expected {}",
                case.id, case.service
            ));
        }
    }
    None
}

/// The addresses in an Ingress's `status.loadBalancer.ingress`.
async fn status_addresses(api: &Api<Ingress>, name: &str) -> Vec<String> {
    let Ok(ingress) = api.get(name).await else {
        return vec!["(could not read the Ingress)".to_string()];
    };
    ingress
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip.or(i.hostname))
        .collect()
}

/// How long the replicas may take to show a change in their tables.
const TABLE_DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `ready` holds for every replica's `/debug/routes`.
async fn wait_tables(
    replicas: usize,
    what: String,
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    let ready = &ready;
    poll_until(what, TABLE_DEADLINE, || async move {
        for r in 0..replicas {
            let view = observe::routes(admin_addr(r), Duration::from_secs(2)).await?;
            if !ready(&view) {
                return None;
            }
        }
        Some(())
    })
    .await?;
    Ok(())
}

/// Waits until every replica's table lists (or no longer lists) each of `ingresses`.
async fn wait_listed(replicas: usize, ingresses: &[String], present: bool) -> anyhow::Result<()> {
    let what = format!(
        "every replica {} {ingresses:?}",
        if present {
            "listing"
        } else {
            "no longer listing"
        }
    );
    wait_tables(replicas, what, |view| {
        let listed: BTreeSet<&str> = view["ingresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ingress"].as_str())
            .collect();
        ingresses
            .iter()
            .all(|i| listed.contains(i.as_str()) == present)
    })
    .await
}

/// Waits until every replica's table has every route of `ingresses` with its backend resolved
/// (endpoints, nothing unavailable) and a certificate for each of `tls_hosts`. The Services,
/// EndpointSlices and the suite's Secret were applied before the Ingresses, but they come
/// through other watches than the Ingresses' and may commit in a later change; a row sent
/// before then would be answered 503, or its handshake refused.
async fn wait_resolved(
    replicas: usize,
    ingresses: &[String],
    tls_hosts: &BTreeSet<&str>,
) -> anyhow::Result<()> {
    let what = format!(
        "every replica resolving the backends of {ingresses:?} and certificates for {tls_hosts:?}"
    );
    wait_tables(replicas, what, |view| {
        let routes: Vec<&Value> = view["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|route| {
                route["ingress"]
                    .as_str()
                    .is_some_and(|i| ingresses.iter().any(|k| k == i))
            })
            .collect();
        let resolved = routes.iter().all(|route| {
            route["unavailable"].is_null()
                && route["endpoints"].as_array().is_some_and(|e| !e.is_empty())
        });
        let certified = tls_hosts.iter().all(|&host| {
            routes
                .iter()
                .any(|route| route["host"] == host && !route["tls"].is_null())
        });
        resolved && certified
    })
    .await
}

/// The Ingress applied after the status-only ones, whose status shows the leader has judged
/// them: see [`mark_status_judged`]. Its name sorts after theirs (checked there).
const STATUS_MARKER: &str = "zz-conformance-status-marker";

/// Applies the marker Ingress (ours: the default class) once every replica lists the
/// `earlier` Ingresses, and waits for the leader to publish the marker's status: by then its
/// status worker has judged them (and made any status write for them). Why, in
/// portico-controller: the leader proposed the earlier Ingresses in a flush that ended before
/// its reconciler saw the marker (one loop, and the marker was written after they committed);
/// it sends the status worker a flush's commit, and an Ingress's watch inputs, in that order
/// on one channel, so any pass of the worker that takes the marker has taken the earlier commit
/// too, or an earlier pass judged them; and a pass judges its Ingresses in key order against
/// one table that holds its commits (`status::Worker::process`; a new leader's first pass
/// too), the marker's name sorting last.
async fn mark_status_judged(
    replicas: usize,
    ingresses: &Api<Ingress>,
    params: &PatchParams,
    earlier: &[String],
) -> anyhow::Result<()> {
    anyhow::ensure!(
        earlier.iter().all(|name| name.as_str() < STATUS_MARKER),
        "the status marker {STATUS_MARKER} must sort after {earlier:?}"
    );
    let keys: Vec<String> = earlier.iter().map(|n| format!("{NAMESPACE}/{n}")).collect();
    wait_listed(replicas, &keys, true).await?;
    let marker = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": STATUS_MARKER, "namespace": NAMESPACE},
        "spec": {"rules": [{"host": "status-marker.conformance", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "echo", "port": {"number": 80}}},
        }]}}]},
    });
    ingresses
        .patch(STATUS_MARKER, params, &Patch::Apply(&marker))
        .await?;
    poll_until(
        format!("the leader publishing the status of {STATUS_MARKER}"),
        Duration::from_secs(30),
        || async {
            (status_addresses(ingresses, STATUS_MARKER).await == [STATUS_ADDRESS]).then_some(())
        },
    )
    .await?;
    Ok(())
}

/// Applies each manifest in turn and checks its rows on every replica.
pub async fn recheck(
    cluster: &mut Cluster,
    client: &kube::Client,
    data: &Path,
) -> anyhow::Result<Outcome> {
    let cases = read_cases(&data.join("conformance-cases.tsv"))?;
    anyhow::ensure!(
        !cases.is_empty(),
        "no conformance cases in {}",
        data.display()
    );
    let manifests: BTreeSet<String> = cases.iter().map(|c| c.manifest.clone()).collect();
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), NAMESPACE);
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let params = PatchParams::apply("portico-chaos").force();
    let mut outcome = Outcome::default();
    // The suite's `conformance-tls` Secret, for the hosts of its HTTPS rows.
    let tls_hosts: Vec<String> = cases
        .iter()
        .filter(|c| c.scheme == "https")
        .map(|c| c.host.clone())
        .collect();
    let suite = SuiteCertificate::generate(tls_hosts)?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), NAMESPACE);
    secrets
        .patch(
            "conformance-tls",
            &params,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "conformance-tls", "namespace": NAMESPACE},
                "stringData": {"tls.crt": suite.cert_pem, "tls.key": suite.key_pem},
            })),
        )
        .await?;
    let mut echo_port = 9100u16;
    let mut started: BTreeSet<String> = BTreeSet::new();
    for manifest in manifests {
        let rows: Vec<&Case> = cases.iter().filter(|c| c.manifest == manifest).collect();
        // Rows without a request (an Ingress of another class) are judged by its status.
        let status_only = rows
            .iter()
            .all(|c| c.scheme != "http" && c.scheme != "https");
        let text = std::fs::read_to_string(data.join("manifests").join(&manifest))
            .with_context(|| format!("reading manifest {manifest}"))?;
        let mut objects = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .with_context(|| format!("parsing {manifest}"))?;
            if !value.is_null() {
                objects.push(value);
            }
        }
        let mut names = BTreeSet::new();
        objects.iter().for_each(|o| service_names(o, &mut names));
        for service in names.difference(&started.clone()) {
            echo_port += 1;
            cluster.start_echo(service, echo_port)?;
            services
                .patch(service, &params, &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": service, "namespace": NAMESPACE},
                    "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": echo_port, "protocol": "TCP"}]},
                })))
                .await?;
            slices
                .patch(&format!("{service}-chaos"), &params, &Patch::Apply(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{service}-chaos"), "namespace": NAMESPACE,
                                 "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": [BACKEND_ADDRS[0].to_string()], "conditions": {"ready": true}}],
                    "ports": [{"name": "http", "port": echo_port, "protocol": "TCP"}],
                })))
                .await?;
            started.insert(service.clone());
        }
        let mut applied = Vec::new();
        for mut object in objects.into_iter().filter(|o| o["kind"] == "Ingress") {
            object["metadata"]["namespace"] = json!(NAMESPACE);
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            ingresses
                .patch(&name, &params, &Patch::Apply(&object))
                .await?;
            applied.push(name);
        }
        let mut keys: Vec<String> = applied.iter().map(|n| format!("{NAMESPACE}/{n}")).collect();
        if status_only {
            // An absence is shown by an event after it: the leader publishing the status of
            // an Ingress applied after these.
            mark_status_judged(cluster.replicas(), &ingresses, &params, &applied).await?;
            keys.push(format!("{NAMESPACE}/{STATUS_MARKER}"));
        } else {
            wait_listed(cluster.replicas(), &keys, true).await?;
            let tls_hosts = rows
                .iter()
                .filter(|c| c.scheme == "https")
                .map(|c| c.host.as_str())
                .collect();
            wait_resolved(cluster.replicas(), &keys, &tls_hosts).await?;
        }
        for &case in &rows {
            let (tls, addr): (_, fn(usize) -> std::net::SocketAddr) = match case.scheme.as_str() {
                "http" => (None, http_addr),
                "https" => (Some(&suite), https_addr),
                _ => {
                    // A status-only row is judged below.
                    if !status_only {
                        outcome.skipped.push(format!(
                            "{} ({} {}): not a request row",
                            case.id, case.scheme, case.host
                        ));
                    }
                    continue;
                }
            };
            for r in 0..cluster.replicas() {
                let host = if case.host == "<ingress-address>" {
                    replica_addr(r).to_string()
                } else {
                    case.host.clone()
                };
                outcome.checked += 1;
                match request(addr(r), tls, &case.method, &host, &case.path).await {
                    Ok((status, location, body)) => {
                        if let Some(f) =
                            check_case(case, r, status, location.as_deref(), &body, &host)
                        {
                            outcome.failures.push(f);
                        }
                    }
                    Err(e) => outcome
                        .failures
                        .push(format!("{} on replica {r}: {e:#}", case.id)),
                }
            }
        }
        // Status: our Ingresses get the published address from the leader; another class's
        // Ingress is not admitted and gets none.
        for name in &applied {
            let want: Vec<String> = if status_only {
                Vec::new()
            } else {
                vec![STATUS_ADDRESS.to_string()]
            };
            // An absence was awaited above; a status the leader should write, here.
            let got = if status_only {
                status_addresses(&ingresses, name).await
            } else {
                let what = format!("the leader publishing the status of {name}");
                let published = poll_until(what, Duration::from_secs(30), || async {
                    let got = status_addresses(&ingresses, name).await;
                    (got == want).then_some(got)
                });
                match published.await {
                    Ok(got) => got,
                    Err(_) => status_addresses(&ingresses, name).await,
                }
            };
            outcome.checked += 1;
            if got != want {
                let ids: Vec<&str> = rows.iter().map(|c| c.id.as_str()).collect();
                outcome.failures.push(format!(
                    "{ids:?}: Ingress {name} has status addresses {got:?}, expected {want:?}"
                ));
            }
        }
        let marker = status_only.then_some(STATUS_MARKER.to_string());
        for name in applied.iter().chain(&marker) {
            let _ = ingresses.delete(name, &DeleteParams::default()).await;
        }
        wait_listed(cluster.replicas(), &keys, false).await?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
    }

    #[test]
    fn reads_every_case_and_the_services_of_every_manifest() {
        let cases = read_cases(&data().join("conformance-cases.tsv")).unwrap();
        assert!(cases.len() >= 30, "{}", cases.len());
        let c13 = cases.iter().find(|c| c.id == "C13").unwrap();
        assert_eq!(
            (
                c13.host.as_str(),
                c13.path.as_str(),
                c13.status,
                c13.service.as_str()
            ),
            ("exact-path-rules", "/foo", Some(200), "foo-exact")
        );
        let text = std::fs::read_to_string(data().join("manifests/path-rules.yaml")).unwrap();
        let mut names = BTreeSet::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            service_names(&v, &mut names);
        }
        assert!(
            names.contains("foo-exact") && names.contains("aaa-slash-bbb-prefix"),
            "{names:?}"
        );
    }

    #[test]
    fn judges_status_service_and_redirect_rows() {
        let case = |status: u16, service: &str, other: &str| Case {
            id: "C".into(),
            feature: "f".into(),
            manifest: "m".into(),
            scheme: "http".into(),
            method: "GET".into(),
            host: "h".into(),
            path: "/".into(),
            status: Some(status),
            service: service.into(),
            other: other.into(),
        };
        let body = br#"{"service":"foo-exact"}"#;
        assert_eq!(
            check_case(&case(200, "foo-exact", ""), 0, 200, None, body, "h"),
            None
        );
        assert!(check_case(&case(200, "other", ""), 0, 200, None, body, "h").is_some());
        assert!(check_case(&case(404, "", ""), 0, 200, None, body, "h").is_some());
        let redirect = case(
            200,
            "foo-bar-com",
            "3xx redirects (e.g. to https) are followed",
        );
        assert_eq!(
            check_case(&redirect, 0, 308, Some("https://h/"), b"", "h"),
            None
        );
        assert!(check_case(&redirect, 0, 308, Some("http://h/"), b"", "h").is_some());
    }
}
