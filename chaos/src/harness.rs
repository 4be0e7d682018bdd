//! One chaos run, start to end: network, API server (real or in-process, see [`crate::api`]),
//! replicas, load, writer, faults, final checks, report. Every resource is held by a guard
//! (processes, namespaces, the API server and its front), so an error, a panic or a cancelled
//! future (Ctrl-C, the time bound) still removes everything.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use portico_model::{BackendTarget, RoutingTable, Settings};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiKind, Backend, RealOptions, UNCACHED_KIND_NAMES, relists};
use crate::cluster::{Cluster, Layout, admin_addr, h3_addr, http_addr};
use crate::faults::{Fault, Profile, Timing, schedule};
use crate::load::{self, LoadConfig, Target, get_h1};
use crate::net::{self, Cut, Network};
use crate::observe;
use crate::record::{FaultWindow, Recorder, Sample};
use crate::report::{Check, Report};
use crate::writer::{self, LOAD_HOST, LoadCertificate, WriterOutcome};

pub const REPLICAS: usize = 3;
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How long the final check waits for every replica to reach the API server's final state
/// once the writer stopped: far above any propagation seen (p99 ~14 s, through a leader
/// change), so only a change that never lands fails it.
const FINAL_CONVERGENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Options {
    pub profile: Profile,
    /// The long profile's length (faults start until it is spent).
    pub duration: Duration,
    pub seed: u64,
    pub out: PathBuf,
    pub portico: PathBuf,
    pub timing: Timing,
    /// Writer interval.
    pub write_every: Duration,
    /// conformance-cases.tsv and manifests/ (crates/portico-model/tests/data).
    pub conformance_data: PathBuf,
    /// Which API server.
    pub api: ApiKind,
    /// Where the real one comes from, and deploy/.
    pub real: RealOptions,
}

/// Everything the fault injector acts on.
struct Ctx<'a> {
    cluster: &'a mut Cluster,
    network: &'a Network,
    backend: &'a Backend,
    client: &'a kube::Client,
    api_port: u16,
    recorder: &'a Recorder,
    timing: Timing,
    /// Checks a fault itself proves (force-410's relists on the real server).
    checks: Vec<Check>,
}

/// The replica whose most recent sample (within the last second) says it leads.
fn current_leader(recorder: &Recorder) -> Option<usize> {
    let now = recorder.now();
    recorder.with(|o| {
        let mut latest: Vec<Option<&Sample>> = vec![None; o.replicas];
        for s in o.samples.iter().rev() {
            if now - s.t > 1.0 {
                break;
            }
            if latest[s.replica].is_none() {
                latest[s.replica] = Some(s);
            }
        }
        let leaders: Vec<usize> = latest
            .iter()
            .flatten()
            .filter(|s| s.is_leader)
            .map(|s| s.replica)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
}

async fn wait_leader(recorder: &Recorder, timeout: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = current_leader(recorder) {
            return Ok(l);
        }
        if Instant::now() > deadline {
            bail!("no single leader after {timeout:?}");
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Waits until the cluster has converged on the API server's current state (see
/// [`converged`]); seconds waited.
async fn wait_converged(
    cluster: &Cluster,
    client: &kube::Client,
    timeout: Duration,
) -> Option<f64> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if converged(cluster, client).await.is_ok() {
            return Some(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    None
}

/// Whether every replica runs and is ready, exactly one leads, all serve one version, and
/// that version's routes equal a fresh compile of the API server's state as read just
/// before: converged on the latest state, not merely on some one version. Else what is
/// still wrong.
async fn converged(cluster: &Cluster, client: &kube::Client) -> Result<(), Vec<String>> {
    let down: Vec<String> = (0..cluster.replicas())
        .filter(|&i| !cluster.is_running(i))
        .map(|i| format!("replica {i} is not running"))
        .collect();
    if !down.is_empty() {
        return Err(down);
    }
    let n = cluster.replicas();
    let scrapes = futures_join(n, |i| {
        observe::scrape(admin_addr(i), Duration::from_secs(1))
    })
    .await;
    let ready = futures_join(n, |i| observe::ready(admin_addr(i), Duration::from_secs(1))).await;
    let mut why = Vec::new();
    for i in 0..n {
        if scrapes[i].is_none() || !ready[i] {
            why.push(format!("replica {i} is not ready"));
        }
    }
    if !why.is_empty() {
        return Err(why);
    }
    let s: Vec<_> = scrapes.into_iter().flatten().collect();
    let leaders = s.iter().filter(|x| x.is_leader).count();
    if leaders != 1 {
        return Err(vec![format!("{leaders} replicas lead")]);
    }
    let want = match fresh_compile(client).await {
        Ok(table) => table_lines(&table),
        Err(e) => {
            return Err(vec![format!(
                "cannot compile the API server's state: {e:#}"
            )]);
        }
    };
    let views = futures_join(n, |i| {
        observe::routes(admin_addr(i), Duration::from_secs(5))
    })
    .await;
    for (i, view) in views.iter().enumerate() {
        let Some(view) = view else {
            why.push(format!("replica {i}: /debug/routes did not answer"));
            continue;
        };
        let got = view_lines(view);
        for missing in want.difference(&got).take(5) {
            why.push(format!("replica {i} lacks {missing}"));
        }
        for extra in got.difference(&want).take(5) {
            why.push(format!("replica {i} has extra {extra}"));
        }
        if view["version"]
            != views[0]
                .as_ref()
                .map_or(serde_json::Value::Null, |v| v["version"].clone())
        {
            why.push(format!("replica {i} serves version {}", view["version"]));
        }
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}

/// Runs `f(i)` for every replica concurrently (each bounded by its own timeout).
async fn futures_join<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    futures_util::future::join_all((0..n).map(f)).await
}

async fn wait_ready(i: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if observe::ready(admin_addr(i), Duration::from_secs(1)).await {
            return Ok(());
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    bail!("replica {i} not ready after {timeout:?}")
}

fn follower(cluster: &Cluster, leader: Option<usize>) -> usize {
    (0..cluster.replicas())
        .find(|&i| Some(i) != leader && cluster.is_running(i))
        .unwrap_or(0)
}

/// Injects one fault, holds it, heals it; the window it covered.
async fn inject(fault: Fault, ctx: &mut Ctx<'_>) -> anyhow::Result<FaultWindow> {
    let leader = if fault.targets_leader() {
        Some(wait_leader(ctx.recorder, Duration::from_secs(60)).await?)
    } else {
        current_leader(ctx.recorder)
    };
    let follower = follower(ctx.cluster, leader);
    let t = ctx.timing;
    let mut window = FaultWindow {
        name: fault.name().to_string(),
        start: ctx.recorder.now(),
        leader_fault: fault.targets_leader(),
        ..Default::default()
    };
    let sleep = tokio::time::sleep;
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            let target = if fault == Fault::KillLeader {
                leader.expect("leader")
            } else {
                follower
            };
            window.targets = vec![target];
            ctx.cluster.kill(target).await?;
            sleep(t.down).await;
            ctx.cluster.start(target, false)?;
            wait_ready(target, Duration::from_secs(60)).await?;
        }
        Fault::FreezeLeader => {
            let target = leader.expect("leader");
            window.targets = vec![target];
            ctx.cluster.freeze(target)?;
            sleep(t.lease_duration + Duration::from_secs(5)).await;
            ctx.cluster.thaw(target)?;
        }
        Fault::LeaderCutFromPeers | Fault::LeaderCutFromApi | Fault::IsolateFollower => {
            let (target, cut) = match fault {
                Fault::LeaderCutFromPeers => (leader.expect("leader"), Cut::Peers),
                Fault::LeaderCutFromApi => (
                    leader.expect("leader"),
                    Cut::ApiServer { port: ctx.api_port },
                ),
                _ => (follower, Cut::Everything),
            };
            window.targets = vec![target];
            ctx.network.cut(target, cut)?;
            sleep(t.cut).await;
            ctx.network.heal(target)?;
        }
        Fault::ApiUnavailable => {
            ctx.backend.unavailable(Duration::from_secs(10)).await?;
        }
        Fault::DropWatches => {
            let before = ctx.backend.watches_cut();
            ctx.backend.drop_watches();
            sleep(Duration::from_secs(3)).await;
            if let (Some(before), Some(after)) = (before, ctx.backend.watches_cut()) {
                // The leader watches five kinds: some watch must have been cut.
                let cut = after - before;
                eprintln!("portico-chaos: drop-watches: {cut} watches cut");
                let name = "drop-watches: the real server's watch connections were cut";
                ctx.checks.push(match cut {
                    0 => Check::from_violations(name, vec!["no watch was in flight".into()]),
                    n => Check {
                        name: name.to_string(),
                        passed: true,
                        details: vec![format!("{n} watch responses ended")],
                    },
                });
            }
        }
        Fault::Force410 => {
            let logs: Vec<usize> = (0..ctx.cluster.replicas())
                .map(|i| log_len(&ctx.cluster.replica_log(i)))
                .collect();
            let what = ctx.backend.force_410(ctx.client).await?;
            eprintln!("portico-chaos: force-410: {what}");
            sleep(Duration::from_secs(3)).await;
            if matches!(ctx.backend, Backend::Real { .. }) {
                let check = relisted_after_410(ctx.cluster, &logs, leader).await;
                ctx.checks.push(check);
            }
        }
        Fault::RollingRestart => {
            window.targets = (0..ctx.cluster.replicas()).collect();
            // As a StatefulSet rolls: highest ordinal first, each ready before the next.
            for i in (0..ctx.cluster.replicas()).rev() {
                ctx.cluster.restart(i).await?;
                wait_ready(i, Duration::from_secs(60)).await?;
            }
        }
        Fault::WipeFollower => {
            window.targets = vec![follower];
            ctx.cluster.wipe_and_restart(follower).await?;
            wait_ready(follower, Duration::from_secs(90)).await?;
        }
    }
    window.end = ctx.recorder.now();
    Ok(window)
}

fn log_len(path: &std::path::Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| m.len() as usize)
}

/// After force-410 on the real server: the leader's watches of the kinds served from etcd
/// failed with 410 Expired and were listed again (read from the replicas' logs past
/// `offsets`, for up to 30 s; the leader, when known, else any replica).
async fn relisted_after_410(cluster: &Cluster, offsets: &[usize], leader: Option<usize>) -> Check {
    let name = format!(
        "force-410: the leader's {} watches got 410 from the compacted etcd and relisted",
        UNCACHED_KIND_NAMES.join(" and ")
    );
    let want: BTreeSet<String> = UNCACHED_KIND_NAMES.iter().map(|k| k.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Vec<(usize, crate::api::Relists)> = (0..cluster.replicas())
            .filter(|&i| leader.is_none_or(|l| l == i))
            .map(|i| {
                let text = std::fs::read(cluster.replica_log(i)).unwrap_or_default();
                let from = offsets[i].min(text.len());
                (i, relists(&String::from_utf8_lossy(&text[from..])))
            })
            .collect();
        if let Some((i, r)) = seen
            .iter()
            .find(|(_, r)| want.is_subset(&r.relisted_after_expiry))
        {
            return Check {
                name,
                passed: true,
                details: vec![format!(
                    "replica {i}: 410 on {:?}, relisted {:?}",
                    r.expired, r.relisted_after_expiry
                )],
            };
        }
        if Instant::now() > deadline {
            return Check::from_violations(
                &name,
                seen.iter()
                    .map(|(i, r)| {
                        format!(
                            "replica {i}: 410 on {:?}, relisted after it {:?}",
                            r.expired, r.relisted_after_expiry
                        )
                    })
                    .collect(),
            );
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// On the real server: every call a replica made was authorized by deploy/'s RBAC. A 403
/// is allowed only while the API server was stopped or starting again (a restarted server
/// answers before its RBAC caches are filled, and denies until then).
fn no_forbidden(obs: &crate::record::Observations) -> Check {
    let restarts: Vec<(f64, f64)> = obs
        .faults
        .iter()
        .filter(|f| f.name == Fault::ApiUnavailable.name())
        .map(|f| (f.start, f.end))
        .collect();
    let outside: Vec<String> = obs
        .api_forbidden
        .iter()
        .filter(|c| !restarts.iter().any(|(a, b)| *a <= c.t && c.t <= *b))
        .map(|c| {
            format!(
                "{:.2}s replica {:?}: {} {} answered 403",
                c.t, c.replica, c.method, c.path
            )
        })
        .collect();
    let mut check = Check::from_violations(
        "RBAC: no call of a replica refused 403 (deploy/'s ServiceAccount and roles)",
        outside,
    );
    if check.passed {
        check.details.push(format!(
            "{} refused during API server restarts, none outside",
            obs.api_forbidden.len()
        ));
    }
    check
}

/// A route as a comparable line: ingress, host, path, backend and its endpoints.
fn route_line(
    ingress: &str,
    host: Option<&str>,
    path: &str,
    service: &str,
    port: &str,
    endpoints: &[String],
) -> String {
    let mut e = endpoints.to_vec();
    e.sort();
    format!(
        "{ingress} {} {path} -> {service}:{port} [{}]",
        host.unwrap_or("*"),
        e.join(",")
    )
}

/// The routes of a freshly compiled table, as `/debug/routes` shows them.
pub fn table_lines(table: &RoutingTable) -> BTreeSet<String> {
    table
        .routes()
        .map(|route| {
            let endpoints: Vec<String> = match table.backend(&route.backend).map(|b| &b.target) {
                Some(BackendTarget::Endpoints(list)) => {
                    list.iter().map(|e| e.addr.to_string()).collect()
                }
                Some(BackendTarget::ExternalName { host, port }) => {
                    vec![format!("external:{host}:{port}")]
                }
                _ => Vec::new(),
            };
            route_line(
                &route.ingress.to_string(),
                route.host.as_deref(),
                &route.path.to_string(),
                &route.backend.service.to_string(),
                &route.backend.port.to_string(),
                &endpoints,
            )
        })
        .collect()
}

/// The routes of a `/debug/routes` answer.
pub fn view_lines(view: &serde_json::Value) -> BTreeSet<String> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    view["routes"]
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .map(|r| {
                    let endpoints: Vec<String> = r["endpoints"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect())
                        .unwrap_or_default();
                    route_line(
                        &s(&r["ingress"]),
                        r["host"].as_str(),
                        &s(&r["path"]),
                        &s(&r["service"]),
                        &s(&r["port"]),
                        &endpoints,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The API server's final state compiled from scratch.
async fn fresh_compile(client: &kube::Client) -> anyhow::Result<RoutingTable> {
    async fn values<K>(api: Api<K>) -> anyhow::Result<Vec<serde_json::Value>>
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let list = api.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?)
    }
    let mut all = Vec::new();
    all.extend(values(Api::<IngressClass>::all(client.clone())).await?);
    all.extend(values(Api::<Ingress>::all(client.clone())).await?);
    all.extend(values(Api::<Service>::all(client.clone())).await?);
    all.extend(values(Api::<EndpointSlice>::all(client.clone())).await?);
    all.extend(values(Api::<Secret>::all(client.clone())).await?);
    let mut resources = Vec::new();
    for v in &all {
        if let Some(r) = portico_model::convert::resource_from_value(v)? {
            resources.push(r);
        }
    }
    Ok(RoutingTable::compile(Settings::default(), resources))
}

/// The checks made once the faults are over and the cluster has converged.
async fn final_checks(
    cluster: &mut Cluster,
    client: &kube::Client,
    writer: &WriterOutcome,
    recorder: &Recorder,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let since_last_write = writer.last_written_at.map(|t| recorder.now() - t);
    let crashed = cluster.crashed();
    checks.push(Check::from_violations(
        "no replica process exited on its own",
        crashed
            .iter()
            .map(|(i, s)| format!("replica {i} exited: {s}"))
            .collect(),
    ));
    // The writer has stopped, so the API server's state is final: every replica must get
    // to it within the bound; only one that never does has lost something.
    let name = format!(
        "nothing lost: every replica's table equals a fresh compile of the API server's final state (within {:.0}s)",
        FINAL_CONVERGENCE.as_secs_f64()
    );
    checks.push(match wait_converged(cluster, client, FINAL_CONVERGENCE).await {
        Some(after) => Check {
            name,
            passed: true,
            details: vec![match since_last_write {
                Some(since) => format!(
                    "converged {after:.2}s after the writer stopped ({:.2}s after its last change was written)",
                    after + since
                ),
                None => format!("converged {after:.2}s after the writer stopped"),
            }],
        },
        None => {
            let mut why = converged(cluster, client)
                .await
                .err()
                .unwrap_or_else(|| vec!["converged only after the bound".to_string()]);
            why.insert(0, format!("not converged within {FINAL_CONVERGENCE:?}"));
            Check::from_violations(&name, why)
        }
    });
    let views = futures_join(cluster.replicas(), |i| {
        observe::routes(admin_addr(i), Duration::from_secs(5))
    })
    .await;
    let mut same = Vec::new();
    for (i, v) in views.iter().enumerate() {
        match v {
            None => same.push(format!("replica {i}: /debug/routes did not answer")),
            Some(v) if Some(v) != views[0].as_ref() => same.push(format!(
                "replica {i} (version {}) differs from replica 0 (version {})",
                v["version"],
                views[0]
                    .as_ref()
                    .map(|v| v["version"].clone())
                    .unwrap_or_default()
            )),
            _ => {}
        }
    }
    checks.push(Check::from_violations(
        "nothing lost: identical tables on every replica",
        same,
    ));
    let mut reflected = Vec::new();
    for i in 0..cluster.replicas() {
        for (hosts, expect) in [(&writer.live_hosts, 200u16), (&writer.deleted_hosts, 404)] {
            for host in hosts {
                match get_h1(http_addr(i), host, "/", Duration::from_secs(5)).await {
                    Ok((s, _)) if s.as_u16() == expect => {}
                    Ok((s, _)) => reflected.push(format!(
                        "replica {i}: {host} answers {s}, expected {expect}"
                    )),
                    Err(e) => reflected.push(format!("replica {i}: {host}: {e}")),
                }
            }
        }
    }
    checks.push(Check::from_violations(
        "nothing lost: every change the writer made is served",
        reflected,
    ));
    checks.push(Check::from_violations(
        "the API server admitted every object the writer wrote (its validation and defaulting)",
        writer.refused.clone(),
    ));
    checks
}

fn write_raft_ca(dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portico-chaos cluster CA");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let ca = dir.join("raft-ca.pem");
    let ca_key = dir.join("raft-ca-key.pem");
    std::fs::write(&ca, cert.pem())?;
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&ca_key)?
        .write_all(key.serialize_pem().as_bytes())?;
    Ok((ca, ca_key))
}

/// The sampler: every replica's metrics every [`SAMPLE_EVERY`].
fn start_sampler(
    cluster: &Cluster,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let incarnations = cluster.incarnations.clone();
    let n = cluster.replicas();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.is_cancelled() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let scrapes =
                futures_join(n, |i| observe::scrape(admin_addr(i), SAMPLE_EVERY * 2)).await;
            let inc = incarnations.lock().map(|v| v.clone()).unwrap_or_default();
            let t = recorder.now();
            recorder.with(|o| {
                for (i, s) in scrapes.into_iter().enumerate() {
                    if let Some(s) = s
                        && inc[i].running
                    {
                        o.samples.push(Sample {
                            t,
                            replica: i,
                            incarnation: inc[i].number,
                            wiped: inc[i].wiped,
                            is_leader: s.is_leader,
                            epoch: s.epoch,
                            version: s.version,
                            highest_epoch: s.highest_epoch,
                        });
                    }
                }
            });
        }
    })
}

/// Tail of a log file, for errors.
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One whole run. The caller bounds it in time; dropping it cleans up.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    net::available()?;
    anyhow::ensure!(
        opts.portico.is_file(),
        "the portico binary is not at {} (build it: cargo build -p portico, or pass --portico)",
        opts.portico.display()
    );
    for leftover in net::cleanup_leftovers()? {
        eprintln!("portico-chaos: removed leftover {leftover}");
    }
    let work = opts.out.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let mut network = Network::create(REPLICAS)?;

    let recorder = Arc::new(Recorder::new(REPLICAS));
    std::fs::create_dir_all(work.join("logs"))?;
    let started = Backend::start(opts.api, &opts.real, &work, REPLICAS, recorder.clone())
        .await
        .with_context(|| format!("starting the {} API server", opts.api.name()))?;
    let backend = started.backend;
    let api_port = backend.port();
    let (raft_ca, raft_ca_key) = write_raft_ca(&work)?;

    let client = started.client;
    let cert = LoadCertificate::generate()?;
    writer::setup(&client, &cert).await?;

    let mut cluster = Cluster::new(Layout {
        portico: opts.portico.clone(),
        dir: work.clone(),
        kubeconfigs: started.kubeconfigs,
        namespace: started.namespace,
        raft_ca,
        raft_ca_key,
        replicas: REPLICAS,
    })?;
    cluster.start_backends()?;
    for i in 0..REPLICAS {
        cluster.start(i, false)?;
    }
    let stop_sampler = CancellationToken::new();
    let sampler = start_sampler(&cluster, recorder.clone(), stop_sampler.clone());

    // Up: every replica ready, one leader, the load route served everywhere.
    let up = async {
        for i in 0..REPLICAS {
            wait_ready(i, Duration::from_secs(120)).await?;
        }
        wait_leader(&recorder, Duration::from_secs(120)).await?;
        for i in 0..REPLICAS {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if matches!(get_h1(http_addr(i), LOAD_HOST, "/", Duration::from_secs(2)).await, Ok((s, _)) if s.is_success())
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("replica {i} does not serve {LOAD_HOST}");
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        }
        anyhow::Ok(())
    };
    if let Err(e) = up.await {
        let logs: Vec<String> = (0..REPLICAS)
            .map(|i| {
                format!(
                    "--- portico-{i}:\n{}",
                    tail(&work.join("logs").join(format!("portico-{i}.log")), 15)
                )
            })
            .collect();
        bail!("the cluster did not come up: {e:#}\n{}", logs.join("\n"));
    }
    eprintln!(
        "portico-chaos: cluster up at {:.1}s; starting load and writer",
        recorder.now()
    );

    let stop_load = CancellationToken::new();
    let mut load_tasks = load::start(
        LoadConfig {
            targets: (0..REPLICAS)
                .map(|i| Target {
                    http: http_addr(i),
                    h3: h3_addr(i),
                })
                .collect(),
            host: LOAD_HOST.to_string(),
            path: "/".to_string(),
            h3_roots: vec![cert.der.clone()],
            workers: 2,
            interval: Duration::from_millis(50),
            attempt_timeout: Duration::from_secs(2),
        },
        recorder.clone(),
        stop_load.clone(),
    );
    let stop_writer = CancellationToken::new();
    let writer_task = tokio::spawn(writer::run(
        client.clone(),
        recorder.clone(),
        REPLICAS,
        opts.write_every,
        opts.seed,
        stop_writer.clone(),
    ));
    tokio::time::sleep(opts.timing.quiet).await;

    let faults = schedule(opts.profile, opts.seed, 10_000);
    let started = Instant::now();
    let mut ctx = Ctx {
        cluster: &mut cluster,
        network: &network,
        backend: &backend,
        client: &client,
        api_port,
        recorder: &recorder,
        timing: opts.timing,
        checks: Vec::new(),
    };
    for fault in faults {
        if opts.profile == Profile::Long && started.elapsed() >= opts.duration {
            break;
        }
        eprintln!("portico-chaos: {:.1}s {}", recorder.now(), fault.name());
        let mut window = inject(fault, &mut ctx)
            .await
            .with_context(|| format!("fault {}", fault.name()))?;
        window.converged_after =
            wait_converged(ctx.cluster, &client, opts.timing.converge_timeout).await;
        eprintln!(
            "portico-chaos: {:.1}s {} healed, converged after {}",
            recorder.now(),
            fault.name(),
            window
                .converged_after
                .map_or("(not converged)".to_string(), |c| format!("{c:.1}s"))
        );
        recorder.with(|o| o.faults.push(window));
        tokio::time::sleep(opts.timing.quiet).await;
    }

    let mut fault_checks = std::mem::take(&mut ctx.checks);
    stop_writer.cancel();
    let writer_outcome = writer_task.await.context("writer task")?;
    let mut extra = final_checks(&mut cluster, &client, &writer_outcome, &recorder).await;
    extra.append(&mut fault_checks);
    stop_load.cancel();
    while let Some(r) = load_tasks.join_next().await {
        r.context("load task")?.context("load worker")?;
    }
    eprintln!(
        "portico-chaos: {:.1}s re-checking the conformance cases on every replica",
        recorder.now()
    );
    let conformance =
        crate::conformance::recheck(&mut cluster, &client, &opts.conformance_data).await;
    extra.push(match conformance {
        Ok(o) => {
            let mut check = Check::from_violations(
                &format!("conformance routing re-checked on every replica ({} requests; {} rows skipped)", o.checked, o.skipped.len()),
                o.failures,
            );
            check.details.extend(o.skipped.into_iter().map(|s| format!("skipped: {s}")));
            check
        }
        Err(e) => Check::from_violations("conformance routing re-checked on every replica", vec![format!("{e:#}")]),
    });
    stop_sampler.cancel();
    let _ = sampler.await;
    cluster.stop_all().await;
    let real = matches!(backend, Backend::Real { .. });
    backend.shutdown().await;
    network.teardown()?;

    let obs = recorder.snapshot();
    if real {
        extra.push(no_forbidden(&obs));
    }
    let profile = match opts.profile {
        Profile::Short => "short",
        Profile::Long => "long",
    };
    Ok(Report::build(
        profile,
        opts.api.name(),
        opts.seed,
        opts.timing.lease_duration.as_secs_f64(),
        opts.timing.retry_period.as_secs_f64(),
        obs,
        extra,
    ))
}
