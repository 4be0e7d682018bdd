//! Peak memory and wall time of compiling the large cluster (10,000 Ingresses, 30,000
//! endpoints, 1,000 certificates), read from the kernel's high-water mark of this process.
//!
//! `cargo bench -p portico-model --bench compile_memory`

use std::time::Instant;

use portico_model::{RoutingTable, Settings};

#[path = "support/cluster.rs"]
mod cluster;

/// Peak resident set size so far, from /proc/self/status (Linux).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    // criterion passes --bench; nothing to parse.
    let resources = cluster::large_cluster();
    let inputs_peak = peak_rss_mib();
    let started = Instant::now();
    let table = RoutingTable::compile(Settings::default(), resources);
    let elapsed = started.elapsed();
    let peak = peak_rss_mib();
    let snapshot = table.to_bytes();
    println!(
        "compile: {} routes in {:.1} ms; peak RSS {:.1} MiB (inputs alone {:.1} MiB, compile added {:.1} MiB); snapshot {:.1} MiB",
        table.routes().count(),
        elapsed.as_secs_f64() * 1e3,
        peak,
        inputs_peak,
        peak - inputs_peak,
        snapshot.len() as f64 / (1024.0 * 1024.0),
    );
    let started = Instant::now();
    let restored = RoutingTable::from_bytes(&snapshot).expect("snapshot decodes");
    println!(
        "restore from snapshot: {:.1} ms (version {})",
        started.elapsed().as_secs_f64() * 1e3,
        restored.version()
    );
}
