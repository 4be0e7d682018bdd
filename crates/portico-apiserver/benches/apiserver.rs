//! Load benchmark: 10,000 Ingresses and 30,000 EndpointSlice endpoints (3,000 slices of 10),
//! 10 watchers over HTTP. Prints list times, watch fan-out latency percentiles and memory.
//! Run: `cargo bench -p portico-apiserver --bench apiserver` (figures in bench/apiserver.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use portico_apiserver::ApiServer;
use serde_json::json;

const INGRESSES: usize = 10_000;
const SLICES: usize = 3_000;
const ENDPOINTS_PER_SLICE: usize = 10;
const WATCHERS: usize = 10;
const UPDATES: usize = 2_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn ingress(i: usize) -> Ingress {
    serde_json::from_value(json!({
        "metadata": {"name": format!("ing-{i:05}"), "labels": {"app": format!("app-{}", i % 100)}},
        "spec": {"ingressClassName": "portico", "rules": [{"host": format!("h{i}.example.com"), "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": format!("svc-{i}"), "port": {"number": 80}}}},
            {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": format!("api-{i}"), "port": {"number": 8080}}}}
        ]}}]}
    }))
    .unwrap()
}

fn slice(i: usize) -> EndpointSlice {
    let endpoints: Vec<_> = (0..ENDPOINTS_PER_SLICE)
        .map(|e| json!({"addresses": [format!("10.{}.{}.{}", i / 250, i % 250, e + 1)], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-abcde"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let rss_start = rss_kib();
    let server = ApiServer::builder().build().unwrap();
    let local = Client::new(server.service(), "default");
    let load_start = Instant::now();
    let ingresses: Api<Ingress> = Api::default_namespaced(local.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(local.clone());
    let mut tasks = Vec::new();
    for part in 0..4 {
        let (ingresses, slices) = (ingresses.clone(), slices.clone());
        tasks.push(tokio::spawn(async move {
            for i in (part..INGRESSES).step_by(4) {
                ingresses
                    .create(&PostParams::default(), &ingress(i))
                    .await
                    .unwrap();
            }
            for i in (part..SLICES).step_by(4) {
                slices
                    .create(&PostParams::default(), &slice(i))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let load_time = load_start.elapsed();
    let rss_loaded = rss_kib();

    let handle = server
        .serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&handle.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let http = Client::try_from(config).unwrap();
    let remote_ing: Api<Ingress> = Api::default_namespaced(http.clone());
    let remote_slices: Api<EndpointSlice> = Api::default_namespaced(http.clone());

    let mut timings = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let list = remote_ing.list(&ListParams::default()).await.unwrap();
        timings.push(t.elapsed());
        assert_eq!(list.items.len(), INGRESSES);
    }
    timings.sort();
    let list_all = timings[2];
    let t = Instant::now();
    let mut pages = 0;
    let mut token: Option<String> = None;
    let mut count = 0;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = remote_ing.list(&lp).await.unwrap();
        pages += 1;
        count += page.items.len();
        token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(count, INGRESSES);
    let list_paged = t.elapsed();
    let t = Instant::now();
    let all_slices = remote_slices.list(&ListParams::default()).await.unwrap();
    let list_slices = t.elapsed();
    let endpoints: usize = all_slices.items.iter().map(|s| s.endpoints.len()).sum();
    assert_eq!(endpoints, SLICES * ENDPOINTS_PER_SLICE);
    let t = Instant::now();
    let selected = remote_ing
        .list(&ListParams::default().labels("app=app-7"))
        .await
        .unwrap();
    let list_selected = t.elapsed();
    assert_eq!(selected.items.len(), INGRESSES / 100);

    // Watch fan-out: each update carries its send time; watchers record the delay.
    let epoch = Arc::new(Instant::now());
    let rv = remote_ing
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let api = remote_ing.clone();
        let epoch = epoch.clone();
        let mut stream = api
            .watch(&WatchParams::default().timeout(290), &rv)
            .await
            .unwrap()
            .boxed();
        watchers.push(tokio::spawn(async move {
            let mut delays = Vec::with_capacity(UPDATES);
            while delays.len() < UPDATES {
                if let Some(WatchEvent::Modified(ing)) = stream.try_next().await.unwrap() {
                    let sent: u64 = ing.annotations()["bench/sent-ns"].parse().unwrap();
                    let now = epoch.elapsed().as_nanos() as u64;
                    delays.push(Duration::from_nanos(now.saturating_sub(sent)));
                }
            }
            delays
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let writer_start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    for u in 0..UPDATES {
        ticker.tick().await;
        let name = format!("ing-{:05}", (u * 7919) % INGRESSES);
        let sent = epoch.elapsed().as_nanos() as u64;
        let patch =
            Patch::Merge(json!({"metadata": {"annotations": {"bench/sent-ns": sent.to_string()}}}));
        remote_ing
            .patch(&name, &PatchParams::default(), &patch)
            .await
            .unwrap();
    }
    let write_time = writer_start.elapsed();
    let mut delays = Vec::new();
    for w in watchers {
        delays.extend(w.await.unwrap());
    }
    delays.sort();
    let rss_end = rss_kib();

    println!(
        "objects: {INGRESSES} Ingresses, {SLICES} EndpointSlices x {ENDPOINTS_PER_SLICE} = {} endpoints",
        SLICES * ENDPOINTS_PER_SLICE
    );
    println!(
        "load (in-process creates): {load_time:.2?} ({:.0} creates/s)",
        (INGRESSES + SLICES) as f64 / load_time.as_secs_f64()
    );
    println!("list 10,000 Ingresses over HTTP (median of 5): {list_all:.2?}");
    println!("list 10,000 Ingresses in pages of 500 ({pages} pages): {list_paged:.2?}");
    println!("list 3,000 EndpointSlices (30,000 endpoints): {list_slices:.2?}");
    println!("list with labelSelector (100 of 10,000): {list_selected:.2?}");
    println!(
        "watch fan-out, {WATCHERS} watchers x {UPDATES} updates (paced 500/s, sent in {write_time:.2?}): p50 {:.2?} p99 {:.2?} max {:.2?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
    println!(
        "memory (RSS of the whole bench process): start {} MiB, loaded {} MiB, end {} MiB",
        rss_start / 1024,
        rss_loaded / 1024,
        rss_end / 1024
    );
    drop(handle);
}
