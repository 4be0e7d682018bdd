//! A stream of Ingress changes through the API (one every 200 ms, increasing sequence
//! numbers), and a sampler of the replicas' committed tables, to check that every change
//! lands, in order, and the last update of each object wins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::cluster::NAMESPACE;

pub const INTERVAL: Duration = Duration::from_millis(200);

/// One change: object `object` now rewrites to `/seq-{seq}`.
#[derive(Clone, Debug)]
pub struct Change {
    pub object: String,
    pub seq: u64,
    pub at: Instant,
}

pub struct Writer {
    stop: Arc<AtomicBool>,
    /// Changes written so far (the last sequence number).
    written: Arc<AtomicU64>,
    thread: Option<JoinHandle<Vec<Change>>>,
}

impl Drop for Writer {
    /// A failing test drops the writer before the API server: stop it first.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Change `i` (from 1) creates or updates Ingress `{prefix}-{(i-1) % objects}`: host
    /// `NAME.stream.test`, `/` to Service `stream`, `rewrite-target: /seq-i`, so the echo
    /// backend reports which change a replica serves.
    pub fn start(
        client: kube::Client,
        runtime: tokio::runtime::Handle,
        prefix: &str,
        objects: u64,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written_so_far = Arc::new(AtomicU64::new(0));
        let prefix = prefix.to_owned();
        let thread = {
            let stop = stop.clone();
            let written_so_far = written_so_far.clone();
            std::thread::spawn(move || {
                let api: Api<Ingress> = Api::namespaced(client, NAMESPACE);
                let params = PatchParams::apply("failover-stream").force();
                let mut written = Vec::new();
                let mut next = Instant::now();
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let object = format!("{prefix}-{}", (seq - 1) % objects);
                    let ingress = json!({
                        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                        "metadata": {"name": object, "namespace": NAMESPACE, "annotations": {
                            "nginx.ingress.kubernetes.io/rewrite-target": format!("/seq-{seq}")}},
                        "spec": {"rules": [{"host": format!("{object}.stream.test"), "http": {"paths": [
                            {"path": "/", "pathType": "Prefix",
                             "backend": {"service": {"name": "stream", "port": {"number": 80}}}}]}}]},
                    });
                    // The API server is up throughout: a failed write fails the test.
                    runtime
                        .block_on(api.patch(&object, &params, &Patch::Apply(&ingress)))
                        .unwrap_or_else(|e| panic!("writing {object} seq {seq}: {e}"));
                    written.push(Change {
                        object,
                        seq,
                        at: Instant::now(),
                    });
                    written_so_far.store(seq, Ordering::SeqCst);
                    // Paced on purpose: a steady stream across the failover, not a burst.
                    next += INTERVAL;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                written
            })
        };
        Writer {
            stop,
            written: written_so_far,
            thread: Some(thread),
        }
    }

    /// How many changes the API server has accepted so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    pub fn stop(mut self) -> Vec<Change> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("running");
        thread.join().expect("the writer panicked")
    }
}

/// The last sequence number written per object.
pub fn last_per_object(written: &[Change]) -> BTreeMap<String, u64> {
    let mut last = BTreeMap::new();
    for c in written {
        last.insert(c.object.clone(), c.seq);
    }
    last
}

/// One look at one replica's committed table.
#[derive(Clone, Debug)]
pub struct Sample {
    pub admin: String,
    pub version: u64,
    /// Stream object → the sequence number its route serves.
    pub seqs: BTreeMap<String, u64>,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    /// Rounds completed (every admin address looked at once).
    rounds: Arc<AtomicU64>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Sampler {
    /// Reads `/debug/routes` of each admin address every 250 ms.
    pub fn start(admins: Vec<String>, prefix: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let ingress_prefix = format!("{NAMESPACE}/{prefix}-");
        let thread = {
            let stop = stop.clone();
            let rounds = rounds.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    for admin in &admins {
                        let Some((200, body)) = crate::common::get(admin, "/debug/routes") else {
                            continue;
                        };
                        let Ok(view) = serde_json::from_str::<serde_json::Value>(&body) else {
                            continue;
                        };
                        let mut seqs = BTreeMap::new();
                        for route in view["routes"].as_array().into_iter().flatten() {
                            let Some(ingress) = route["ingress"].as_str() else {
                                continue;
                            };
                            let Some(object) = ingress.strip_prefix(NAMESPACE).map(|s| &s[1..])
                            else {
                                continue;
                            };
                            if !ingress.starts_with(&ingress_prefix) {
                                continue;
                            }
                            let seq = route["rewrite_target"]
                                .as_str()
                                .and_then(|t| t.strip_prefix("/seq-"))
                                .and_then(|n| n.parse().ok())
                                .unwrap_or_else(|| {
                                    panic!("stream route without a sequence: {route}")
                                });
                            seqs.insert(object.to_owned(), seq);
                        }
                        samples.push(Sample {
                            admin: admin.clone(),
                            version: view["version"].as_u64().unwrap_or(0),
                            seqs,
                        });
                    }
                    rounds.fetch_add(1, Ordering::SeqCst);
                    // A sampler's period (`/debug/routes` has no watch to follow): the
                    // order checks see the tables at this rate.
                    std::thread::sleep(Duration::from_millis(250));
                }
                samples
            })
        };
        Sampler {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    /// How many rounds of samples it has taken.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("running");
        thread.join().expect("the sampler panicked")
    }
}

/// On each replica, in sampling order: the table version never goes back, no object's
/// sequence goes back or disappears, and every sequence served was written for that object.
pub fn assert_in_order(samples: &[Sample], written: &[Change]) {
    let valid: BTreeSet<(String, u64)> =
        written.iter().map(|c| (c.object.clone(), c.seq)).collect();
    let mut previous: BTreeMap<&str, &Sample> = BTreeMap::new();
    for sample in samples {
        for (object, seq) in &sample.seqs {
            assert!(
                valid.contains(&(object.clone(), *seq)),
                "{} serves {object} at seq {seq}, which was never written for it",
                sample.admin
            );
        }
        if let Some(before) = previous.get(sample.admin.as_str()) {
            assert!(
                sample.version >= before.version,
                "{}: table version went back from {} to {}",
                sample.admin,
                before.version,
                sample.version
            );
            for (object, seq) in &before.seqs {
                let now = sample.seqs.get(object);
                assert!(
                    now.is_some_and(|n| n >= seq),
                    "{}: {object} went from seq {seq} to {now:?} (versions {} → {})",
                    sample.admin,
                    before.version,
                    sample.version
                );
            }
        }
        previous.insert(&sample.admin, sample);
    }
}
