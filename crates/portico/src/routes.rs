//! `portico routes`: the committed routing table of a running replica, read from its
//! admin `/debug/routes`.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::routes_view::TableView;

#[derive(clap::Args, Debug)]
pub struct RoutesArgs {
    /// The replica's admin address (`host:port`).
    #[arg(long, env = "PORTICO_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Print the JSON as served instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// GETs `path` from an admin listener over plain HTTP/1.1.
pub async fn admin_get(admin: &str, path: &str) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("connecting to the admin listener {admin}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, admin)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

pub async fn run(args: RoutesArgs) -> anyhow::Result<()> {
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        admin_get(&args.admin, "/debug/routes"),
    )
    .await
    .context("timed out asking the replica")??;
    if !status.is_success() {
        bail!(
            "{} answered {status}: {}",
            args.admin,
            String::from_utf8_lossy(&body).trim()
        );
    }
    if args.json {
        print!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let view: TableView = serde_json::from_slice(&body)
        .context("the replica's /debug/routes is not a routing table")?;
    print!("{}", view.render());
    Ok(())
}
