//! A raw HTTP/2 client (the `h2` crate) for attacks no ordinary client makes: zero flow-control
//! windows, PINGs on an otherwise idle connection.

use std::net::SocketAddr;

use bytes::Bytes;
use h2::client::{self, SendRequest};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// An h2c (prior knowledge) connection: the request handle, the PING handle, and the task
/// driving the connection, which ends when the server closes it.
pub struct RawH2 {
    pub send: SendRequest<Bytes>,
    pub ping: h2::PingPong,
    pub driver: JoinHandle<Result<(), h2::Error>>,
}

/// Connects with `window` as both SETTINGS_INITIAL_WINDOW_SIZE and the connection window.
pub async fn connect(addr: SocketAddr, window: u32) -> RawH2 {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut builder = client::Builder::new();
    builder.initial_window_size(window);
    if window >= 65_535 {
        builder.initial_connection_window_size(window);
    }
    let (send, mut conn) = builder.handshake(tcp).await.expect("h2 handshake");
    let ping = conn.ping_pong().expect("ping handle");
    let driver = tokio::spawn(conn);
    RawH2 { send, ping, driver }
}

/// A bodiless GET of `path` on `host`.
pub fn get(host: &str, path: &str) -> http::Request<()> {
    http::Request::get(format!("http://{host}{path}"))
        .body(())
        .unwrap()
}
