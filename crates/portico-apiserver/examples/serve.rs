//! Serves the API on 127.0.0.1 and writes a kubeconfig: `cargo run -p portico-apiserver
//! --example serve -- [PORT] [KUBECONFIG] [MINOR] [DATA_DIR]`.

use portico_apiserver::ApiServer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let kubeconfig = args.next().unwrap_or_else(|| "kubeconfig".into());
    let minor: u32 = args.next().map(|m| m.parse()).transpose()?.unwrap_or(33);
    let mut builder = ApiServer::builder().minor_version(minor);
    if let Some(dir) = args.next() {
        builder = builder.data_dir(dir);
    }
    let server = builder.build()?;
    let handle = server.serve(tokio::net::TcpListener::bind(("127.0.0.1", port)).await?)?;
    handle.write_kubeconfig(std::path::Path::new(&kubeconfig))?;
    println!("serving on {} (kubeconfig {kubeconfig})", handle.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
