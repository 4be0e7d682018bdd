//! The accept loop's step shared by the binary's own listeners (admin, echo, the certificate
//! issuer): the next connection, or none once the server stops.
//!
//! A failed accept (out of file descriptors, a connection reset before it was taken) is logged
//! and retried after a pause, so a listener that keeps failing does not spin a core.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Pause after a failed accept.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// The next connection on `listener` (its peer's address), or `None` once `stop` is
/// cancelled. `what` names the listener in the log.
pub async fn next(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            // Stopping comes first, even with connections waiting.
            biased;
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    tracing::debug!(error = %e, listener = what, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                        () = stop.cancelled() => return None,
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_then_none_once_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let client = TcpStream::connect(addr).await.unwrap();
        let (_, peer) = next(&listener, &stop, "test").await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        stop.cancel();
        // A connection waiting is not taken once stopped.
        let _waiting = TcpStream::connect(addr).await.unwrap();
        assert!(next(&listener, &stop, "test").await.is_none());
    }
}
