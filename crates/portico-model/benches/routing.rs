//! Routing-table benchmarks: lookup as the table grows, compiling a large cluster, and
//! applying one EndpointSlice change to it. Figures and targets: bench/README.md.
//!
//! `cargo bench -p portico-model --bench routing`; the peak memory of a compile is printed by
//! `cargo bench -p portico-model --bench compile_memory`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portico_model::{Change, Resource, RoutingTable, Settings};

#[path = "support/cluster.rs"]
mod cluster;

/// Lookup as the table grows. `hot`: the same few hosts each time (cache-resident, which
/// isolates the algorithm); `spread`: 1,024 different hosts in turn (what a busy replica with
/// many hosts sees, cache misses included).
fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for routes in [10usize, 1_000, 10_000, 100_000] {
        let table = RoutingTable::compile(Settings::default(), cluster::routes_table(routes));
        for (name, distinct) in [("hot", 8), ("spread", 1024)] {
            let probes: Vec<(String, String)> = (0..distinct)
                .map(|i| cluster::probe(routes, i * 7919))
                .collect();
            for (host, path) in &probes {
                assert!(
                    table.lookup(host, path).is_some(),
                    "probe {host}{path} routes"
                );
            }
            let mut i = 0;
            group.bench_function(format!("{name}/{routes}_routes"), |b| {
                b.iter(|| {
                    let (host, path) = &probes[i % probes.len()];
                    i += 1;
                    black_box(table.lookup(black_box(host), black_box(path)))
                })
            });
        }
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let resources = cluster::large_cluster();
    let mut group = c.benchmark_group("compile");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("10k_ingresses_30k_endpoints_1k_certs", |b| {
        b.iter_batched(
            || resources.clone(),
            |resources| black_box(RoutingTable::compile(Settings::default(), resources)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn endpoint_slice_change(c: &mut Criterion) {
    let table = RoutingTable::compile(Settings::default(), cluster::large_cluster());
    let changes: Vec<Change> = (0..64)
        .map(|i| Change::Upsert(cluster::slice(i * 13 % cluster::SERVICES, 1 + i % 29)))
        .collect();
    let mut group = c.benchmark_group("delta");
    let mut i = 0;
    group.bench_function("one_endpointslice_on_10k_table", |b| {
        b.iter_batched(
            || table.clone(),
            |mut table| {
                i += 1;
                table.apply(i as u64, &changes[i % changes.len()]);
                table
            },
            BatchSize::SmallInput,
        )
    });
    let ingress_changes: Vec<Change> = (0..64)
        .map(|i| Change::Upsert(cluster::ingress(i * 151 % cluster::INGRESSES, true)))
        .collect();
    group.bench_function("one_ingress_on_10k_table", |b| {
        b.iter_batched(
            || table.clone(),
            |mut table| {
                i += 1;
                table.apply(i as u64, &ingress_changes[i % ingress_changes.len()]);
                table
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("clone_10k_table", |b| b.iter(|| black_box(table.clone())));
    group.finish();
    let _: Option<Resource> = None;
}

criterion_group!(benches, lookup, compile, endpoint_slice_change);
criterion_main!(benches);
