//! The `portico` binary.
//!
//! * `run`: one replica (Raft, data plane, controller, admin listener) — [`run`].
//! * `local`: a whole local cluster in one command — [`local`].
//! * `routes`: print a running replica's committed table — [`routes`].
//! * `echo`: a backend that describes each request it gets — [`echo`].
//! * `pki issue`: sign this replica's Raft certificate (an init container) — [`pki_issue`].
//! * `pki serve`: the Raft certificate issuer, the only holder of the CA key —
//!   [`pki_issuer`].
//! * `raft recover`: make a stopped survivor the only voter after a lost quorum —
//!   [`raft_admin`].

mod accept;
mod admin;
mod cert_reload;
mod controller;
mod echo;
mod local;
mod logging;
mod metrics;
mod parent;
mod pki;
mod pki_issue;
mod pki_issuer;
mod raft_admin;
mod raft_cert_renewal;
mod routes;
mod routes_view;
mod run;
mod signals;
mod socket_activation;
mod state;

use clap::{Parser, Subcommand};

/// The data plane's allocator, as benchmarked (bench/proxy.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portico: a highly available Kubernetes Ingress controller.
///
/// Every flag can also be set with the environment variable shown in its help.
#[derive(Parser, Debug)]
#[command(name = "portico", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one replica: Raft replication, the HTTP/HTTPS/HTTP3 data plane, the controller
    /// (when it holds the Lease), and the admin listener.
    Run(Box<run::RunArgs>),
    /// Start a local cluster: an in-process Kubernetes API server, three replicas, demo
    /// backends and Ingresses. Ctrl-C stops everything.
    Local(local::LocalArgs),
    /// Print the committed routing table of a running replica.
    Routes(routes::RoutesArgs),
    /// An echo backend: answers every request with JSON describing it.
    Echo(echo::EchoArgs),
    /// Certificates: `pki issue` signs this replica's Raft certificate (the StatefulSet's
    /// init container); `pki serve` is the issuer replicas ask for short-lived ones.
    Pki(pki_issue::PkiArgs),
    /// Raft administration: `raft recover` makes a stopped survivor the only voter after a
    /// majority of the replicas is lost for good.
    Raft(raft_admin::RaftArgs),
}

fn runtime(multi_thread: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            if args.die_with_parent {
                parent::die_with_parent()?;
            }
            logging::init(args.log_format, "info,openraft=warn,kube=warn");
            runtime(true)?.block_on(run::run(*args))
        }
        Command::Local(args) => {
            logging::init(args.log_format, "info");
            // One thread: the parent-death signal of each child is tied to the thread
            // that spawned it, so every child is spawned from this one.
            runtime(false)?.block_on(local::run(args))
        }
        Command::Routes(args) => {
            logging::init(logging::LogFormat::Human, "warn");
            runtime(false)?.block_on(routes::run(args))
        }
        Command::Pki(args) => pki_issue::run(args),
        Command::Raft(args) => {
            logging::init(logging::LogFormat::Human, "warn");
            runtime(false)?.block_on(raft_admin::run(args))
        }
        Command::Echo(args) => {
            if args.die_with_parent {
                parent::die_with_parent()?;
            }
            logging::init(args.log_format, "info");
            runtime(true)?.block_on(echo::run(args))
        }
    }
}
