//! `portico-chaos`: kills, freezes and cuts off Portico replicas under load and checks that
//! nothing is lost. See [`harness`] for the run, [`checks`] for the verdict's rules.
//!
//! ```text
//! portico-chaos --profile short --out target/chaos          # every fault once (CI)
//! portico-chaos --profile long --duration 1800 --out chaos  # 30 minutes of random faults
//! portico-chaos --api in-process --profile short            # against portico-apiserver
//! portico-chaos --cleanup                                    # remove a killed run's leftovers
//! ```
//!
//! Needs root (network namespaces, nftables), the `portico` binary (next to this one by
//! default) and, with `--api real` (the default), kube-testenv (`tests/kube/build.sh`, which
//! `tests/setup` runs) and kubectl. See [`api`] for what each API server's faults are. Exit status: 0 when every check passed, 1 when one failed, 2 on a harness error.

mod api;
mod apifront;
mod apiproxy;
mod checks;
mod cluster;
mod conformance;
mod faults;
mod harness;
mod load;
mod net;
mod observe;
mod procs;
mod realapi;
mod record;
mod report;
mod timeline;
mod writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::faults::{Profile, Timing};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Chaos harness for Portico: faults under load, then a verdict"
)]
struct Args {
    /// `short`: every fault once (a few minutes). `long`: random faults for --duration.
    #[arg(long, value_enum, default_value_t = ProfileArg::Short)]
    profile: ProfileArg,
    /// The long profile's length in seconds.
    #[arg(long, default_value_t = 1800)]
    duration: u64,
    /// Seed of the random schedule and the writer (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the report (chaos-report.json, chaos-timeline.png) and logs go.
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
    /// The portico binary (default: next to this executable).
    #[arg(long)]
    portico: Option<PathBuf>,
    /// The replicas' lease duration in seconds, for the new-leader bound and fault lengths
    /// (`portico run` uses portico-controller's default, 15 s; it has no flag to change it).
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// The replicas' retry period in seconds (portico-controller's default, 2 s).
    #[arg(long, default_value_t = 2)]
    retry_seconds: u64,
    /// Milliseconds between the writer's changes.
    #[arg(long, default_value_t = 500)]
    write_every_ms: u64,
    /// The conformance cases re-checked after the run (conformance-cases.tsv, manifests/).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata"))]
    conformance_data: PathBuf,
    /// Which API server the replicas run against: `real` (kube-apiserver and etcd from
    /// tests/kube, faults made on the real thing) or `in-process` (portico-apiserver).
    #[arg(long, value_enum, default_value_t = api::ApiKind::Real)]
    api: api::ApiKind,
    /// The kube-testenv binary (default: $PORTICO_KUBE_TESTENV, else the cached build of
    /// tests/kube, as `tests/kube/build.sh --check` finds it).
    #[arg(long)]
    kube_testenv: Option<PathBuf>,
    /// deploy/: with `--api real` the replicas run as its ServiceAccount and RBAC.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))]
    deploy: PathBuf,
    /// Only remove what a killed run left behind (namespaces, processes, links), then exit.
    #[arg(long)]
    cleanup: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum ProfileArg {
    Short,
    Long,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.cleanup {
        return match net::cleanup_leftovers() {
            Ok(removed) => {
                for r in removed {
                    println!("removed {r}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portico-chaos: cleanup failed: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portico-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(args));
    // Whatever happened, nothing of ours is left behind.
    if let Err(e) = net::cleanup_leftovers() {
        eprintln!("portico-chaos: final cleanup failed: {e:#}");
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("portico-chaos: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let portico = match args.portico {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .join("portico"),
    };
    let profile = match args.profile {
        ProfileArg::Short => Profile::Short,
        ProfileArg::Long => Profile::Long,
    };
    let timing = Timing::for_lease(
        Duration::from_secs(args.lease_seconds),
        Duration::from_secs(args.retry_seconds),
    );
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.clone();
    eprintln!(
        "portico-chaos: profile {profile:?}, {} API server, seed {seed}, output in {}",
        args.api.name(),
        out.display()
    );
    let opts = harness::Options {
        profile,
        duration: Duration::from_secs(args.duration),
        seed,
        out: out.clone(),
        portico,
        timing,
        write_every: Duration::from_millis(args.write_every_ms),
        conformance_data: args.conformance_data.clone(),
        api: args.api,
        real: api::RealOptions {
            kube_testenv: args.kube_testenv.clone(),
            checkout: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
            deploy: args.deploy.clone(),
        },
    };
    // A hard bound on the whole run: the schedule plus generous time for setup and checks.
    let bound = match profile {
        Profile::Short => Duration::from_secs(30 * 60),
        Profile::Long => opts.duration + Duration::from_secs(30 * 60),
    };
    let report = tokio::select! {
        r = tokio::time::timeout(bound, harness::run(opts)) => match r {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("the run exceeded its time bound ({bound:?})"),
        },
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (Ctrl-C); cleaned up"),
        _ = terminated() => anyhow::bail!("terminated (SIGTERM); cleaned up"),
    };
    let json = out.join("chaos-report.json");
    let png = out.join("chaos-timeline.png");
    report.write_json(&json)?;
    timeline::draw(&png, &report.observations, &report.leaderships)?;
    print!("{}", report.summary());
    println!("report: {}\ntimeline: {}", json.display(), png.display());
    Ok(report.passed)
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
