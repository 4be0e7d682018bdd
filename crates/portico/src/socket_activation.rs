//! Listening sockets handed over at start, by systemd's socket-activation protocol
//! (`LISTEN_FDS` sockets from fd 3 on, `LISTEN_PID` naming this process, `LISTEN_FDNAMES` their
//! names): `portico run` serves Raft on the socket named `raft` instead of binding
//! `--raft-listen`.
//!
//! Under systemd, a `.socket` unit with `FileDescriptorName=raft` keeps the Raft port bound
//! across restarts of the service. The multi-process tests do the same: the test binds every
//! member's Raft socket before any member starts (a cluster's initial members must know each
//! other's addresses) and hands each replica its own, again on a restart, so no port is ever
//! released for another process to take.
//!
//! Fail closed: a socket handed over that `portico run` does not use, or sockets without
//! names, stop the start with an error rather than being left unserved.

use anyhow::{Context, bail};
use tokio::net::TcpListener;

/// The sockets `portico run` takes over.
#[derive(Default)]
pub struct Inherited {
    /// The Raft listener (`raft`).
    pub raft: Option<TcpListener>,
}

/// Takes the sockets handed to this process, if any. Call before other tasks run: listenfd
/// removes `LISTEN_FDS` and `LISTEN_PID` from the environment.
pub fn take() -> anyhow::Result<Inherited> {
    let names = std::env::var("LISTEN_FDNAMES").ok();
    // listenfd checks LISTEN_PID (a socket meant for another process is not ours) and removes
    // LISTEN_FDS and LISTEN_PID; LISTEN_FDNAMES is read above.
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(Inherited::default());
    }
    let names: Vec<String> = names
        .unwrap_or_default()
        .split(':')
        .map(str::to_owned)
        .collect();
    if names.len() != fds.len() {
        bail!(
            "{} sockets handed over (LISTEN_FDS) but {} names in LISTEN_FDNAMES {names:?}",
            fds.len(),
            names.len()
        );
    }
    let mut inherited = Inherited::default();
    for (i, name) in names.iter().enumerate() {
        match name.as_str() {
            "raft" if inherited.raft.is_none() => {
                let listener = fds
                    .take_tcp_listener(i)
                    .with_context(|| format!("the socket named raft (fd {})", 3 + i))?
                    .context("the socket named raft was already taken")?;
                listener.set_nonblocking(true)?;
                inherited.raft = Some(TcpListener::from_std(listener)?);
            }
            other => bail!(
                "socket {other:?} handed over (LISTEN_FDNAMES) is not one portico run serves \
                 (only raft, once)"
            ),
        }
    }
    Ok(inherited)
}
