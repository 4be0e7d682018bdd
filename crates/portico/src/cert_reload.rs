//! Rotation of the replica's Raft certificate without a restart: the certificate and key
//! files (`--raft-cert`, `--raft-key`) are read again every [`EVERY`], and a changed pair is
//! handed to Raft for the next handshakes. cert-manager's CSI driver renews them in place;
//! a half-written pair (the key not the certificate's) is refused and read again next time.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the files are read.
pub const EVERY: Duration = Duration::from_secs(60);

/// Reads `cert` and `key` every `every` until `stop`, calling `replace` when either changed
/// since the pair last given to it (the pair loaded at start is `loaded`).
pub async fn watch<E: std::fmt::Display>(
    cert: PathBuf,
    key: PathBuf,
    loaded: (Vec<u8>, Vec<u8>),
    every: Duration,
    stop: CancellationToken,
    replace: impl Fn(&[u8], &[u8]) -> Result<(), E>,
) {
    let mut current = loaded;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let read = std::fs::read(&cert).and_then(|c| Ok((c, std::fs::read(&key)?)));
        let pair = match read {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, cert = %cert.display(), "cannot read the Raft certificate; keeping the current one");
                continue;
            }
        };
        if pair == current {
            continue;
        }
        match replace(&pair.0, &pair.1) {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "now using a renewed Raft certificate");
                current = pair;
            }
            Err(e) => {
                tracing::warn!(error = %e, cert = %cert.display(), "refused a changed Raft certificate; keeping the current one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn a_changed_pair_is_handed_over_once_and_a_refused_one_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, "c1").unwrap();
        std::fs::write(&key, "k1").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(
            cert.clone(),
            key.clone(),
            (b"c1".to_vec(), b"k1".to_vec()),
            Duration::from_millis(20),
            stop.clone(),
            {
                let seen = seen.clone();
                move |c: &[u8], k: &[u8]| {
                    let pair = format!(
                        "{}/{}",
                        String::from_utf8_lossy(c),
                        String::from_utf8_lossy(k)
                    );
                    seen.lock().unwrap().push(pair.clone());
                    // A certificate without its key yet: refused.
                    if pair == "c2/k1" {
                        Err("mismatch")
                    } else {
                        Ok(())
                    }
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "unchanged files are not handed over"
        );
        std::fs::write(&cert, "c2").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&key, "k2").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        task.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let accepted: Vec<_> = seen.iter().filter(|p| *p == "c2/k2").collect();
        assert_eq!(accepted.len(), 1, "{seen:?}");
        assert!(seen.iter().any(|p| p == "c2/k1"), "{seen:?}");
        assert_eq!(seen.last().unwrap(), "c2/k2");
    }
}
