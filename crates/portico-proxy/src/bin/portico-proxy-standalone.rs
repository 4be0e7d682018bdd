//! Runs the data plane alone from a table file, for tests and benchmarks.
//!
//! `portico-proxy-standalone --table routes.yaml --http 127.0.0.1:8080 --https 127.0.0.1:8443 --h3 127.0.0.1:8443`
//! SIGHUP reloads the table file (a swap, as the replicated controller would do);
//! SIGTERM or Ctrl-C drains gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use portico_model::Settings;
use portico_proxy::{Limits, Proxy, ProxyConfig, table_file};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(about = "Portico's data plane, serving a routing table compiled from a YAML manifest")]
struct Args {
    /// YAML manifest of Ingress, Service, EndpointSlice and Secret objects.
    #[arg(long)]
    table: PathBuf,
    /// Plain HTTP listeners (repeatable).
    #[arg(long)]
    http: Vec<SocketAddr>,
    /// TLS listeners (repeatable).
    #[arg(long)]
    https: Vec<SocketAddr>,
    /// QUIC/HTTP/3 listeners (repeatable).
    #[arg(long)]
    h3: Vec<SocketAddr>,
    /// Port advertised in Alt-Svc (default: the first QUIC listener's).
    #[arg(long)]
    alt_svc_port: Option<u16>,
    /// Default certificate chain (PEM); a self-signed one is generated when absent.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key for --cert (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Disable TLS session resumption (tickets and cache), e.g. for handshake benchmarks.
    #[arg(long)]
    no_session_resumption: bool,
    /// Route Ingresses that name no IngressClass.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    watch_ingress_without_class: bool,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Log one line per request (target `portico::access`) on stderr.
    #[arg(long)]
    access_log: bool,
    /// Graceful drain deadline on SIGTERM, in seconds.
    #[arg(long, default_value_t = 10)]
    drain_seconds: u64,
    /// Client connections open at once over every listener (as `portico run`).
    #[arg(long, value_parser = at_least_one(), default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Client connections open at once from one IPv4 address or IPv6 /64.
    #[arg(long, value_parser = at_least_one(), default_value_t = Limits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Seconds a response may make no progress towards its client.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value_t = Limits::default().send_timeout.as_secs())]
    send_timeout_seconds: u64,
    /// QUIC handshakes in progress at which unvalidated clients get a Retry first; 0: always.
    #[arg(long, default_value_t = Limits::default().quic_retry_above_handshakes)]
    quic_retry_above_handshakes: usize,
}

/// A limit where 0 would refuse everything.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    // One worker: a current-thread runtime (no work stealing, no cross-thread wakeups), as
    // an nginx worker process is. More: Tokio's multi-threaded scheduler.
    let runtime = match args.workers {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(args))
}

fn settings(args: &Args) -> Settings {
    Settings {
        watch_ingress_without_class: args.watch_ingress_without_class,
        ..Settings::default()
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let table = table_file::load(&args.table, settings(&args))?;
    let default_certificate = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            Some(portico_proxy::certified_key_from_pem(&chain, &key)?)
        }
        _ => None,
    };
    let config = ProxyConfig {
        http: args.http.clone(),
        https: args.https.clone(),
        h3: args.h3.clone(),
        alt_svc_port: args.alt_svc_port,
        default_certificate,
        session_resumption: !args.no_session_resumption,
        access_log: args.access_log,
        limits: Limits {
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            send_timeout: Duration::from_secs(args.send_timeout_seconds),
            quic_retry_above_handshakes: args.quic_retry_above_handshakes,
            ..Limits::default()
        },
        ..ProxyConfig::default()
    };
    let mut proxy = Proxy::new(config, Arc::new(table))?;
    let bound = proxy.spawn_listeners()?;
    tracing::info!(?bound, "listening");
    // One line on stdout that scripts can wait for.
    println!(
        "ready http={:?} https={:?} h3={:?}",
        bound.http, bound.https, bound.h3
    );

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match table_file::load(&args.table, settings(&args)) {
                Ok(table) => {
                    proxy.swap_table(Arc::new(table));
                    tracing::info!("table reloaded");
                }
                Err(e) => tracing::error!(error = %e, "table reload failed; keeping the current table"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("draining");
    proxy
        .shutdown(Duration::from_secs(args.drain_seconds))
        .await;
    Ok(())
}
