//! Listening sockets handed over at start, by systemd's socket-activation protocol
//! (`LISTEN_FDS` sockets from fd 3 on, `LISTEN_PID` naming this process, `LISTEN_FDNAMES` their
//! names). `portico run` serves every listener it has on the sockets named after it (`raft`,
//! `http`, `https`, `admin` TCP; `http3` UDP) instead of binding the flag's addresses;
//! `portico echo` serves the ones named `listen`; `portico pki serve` the one named `pki`.
//!
//! Under systemd, a `.socket` unit with `FileDescriptorName=http` keeps the port bound across
//! restarts of the service. `portico local` and the multi-process tests do the same: they bind
//! every child's sockets before any child starts (the replicas must know each other's Raft
//! addresses, and `local` prints its ports) and hand each child its own, so no port is ever
//! released for another process to take.
//!
//! Fail closed: a socket handed over that the command does not serve (an unknown name), a second
//! one under a name served once, one of the wrong type (UDP where TCP is expected or the
//! reverse), a TCP socket not listening, or sockets without names stop the start with an error
//! naming the socket rather than being left unserved or served wrongly.

use std::net::{TcpListener, UdpSocket};

use anyhow::{Context, bail};

/// TCP (a listening stream socket) or UDP (a bound datagram socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// One name a command takes sockets under.
#[derive(Debug, PartialEq, Eq)]
pub struct Name {
    pub name: &'static str,
    pub transport: Transport,
    /// Several sockets may carry it (the flag it replaces takes a list).
    pub repeatable: bool,
}

const fn name(name: &'static str, transport: Transport, repeatable: bool) -> Name {
    Name {
        name,
        transport,
        repeatable,
    }
}

/// `portico run`'s listeners: Raft once (it is the replica's one identity), the others as
/// many as their flags take.
pub const RUN: &[Name] = &[
    name("raft", Transport::Tcp, false),
    name("http", Transport::Tcp, true),
    name("https", Transport::Tcp, true),
    name("http3", Transport::Udp, true),
    name("admin", Transport::Tcp, true),
];

/// `portico echo`'s listeners (`--listen`).
pub const ECHO: &[Name] = &[name("listen", Transport::Tcp, true)];

/// `portico pki serve`'s HTTPS listener (`--listen`): one, as the flag takes one address.
pub const PKI: &[Name] = &[name("pki", Transport::Tcp, false)];

/// The names in `LISTEN_FDNAMES`, one per socket handed over (`count`, from `LISTEN_FDS`),
/// each matched to what `command` serves under it.
fn assign(
    command: &str,
    names: Option<&str>,
    count: usize,
    served: &'static [Name],
) -> anyhow::Result<Vec<&'static Name>> {
    let names: Vec<&str> = names.map_or_else(Vec::new, |n| n.split(':').collect());
    if names.len() != count {
        bail!(
            "{count} sockets handed over (LISTEN_FDS) but {} names in LISTEN_FDNAMES {names:?}",
            names.len()
        );
    }
    let all: Vec<&str> = served.iter().map(|n| n.name).collect();
    let mut assigned: Vec<&'static Name> = Vec::with_capacity(count);
    for (i, given) in names.iter().enumerate() {
        let Some(spec) = served.iter().find(|n| n.name == *given) else {
            bail!(
                "socket {given:?} handed over (LISTEN_FDNAMES) is not one {command} serves \
                 (it serves {})",
                all.join(", ")
            );
        };
        if !spec.repeatable && assigned.iter().any(|a| a.name == spec.name) {
            bail!(
                "a second socket named {given} handed over (fd {}): {command} serves one only",
                3 + i
            );
        }
        assigned.push(spec);
    }
    Ok(assigned)
}

/// One socket handed over, of the type its name asks for.
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// The sockets handed to this process, by name; take each kind once.
#[derive(Default)]
pub struct Handed {
    sockets: Vec<(&'static str, Socket)>,
}

impl Handed {
    /// The TCP listeners named `name`, in fd order (empty when none was handed over).
    pub fn tcp(&mut self, name: &str) -> Vec<TcpListener> {
        self.take_named(name, |socket| match socket {
            Socket::Tcp(listener) => Ok(listener),
            other => Err(other),
        })
    }

    /// The UDP sockets named `name`, in fd order.
    pub fn udp(&mut self, name: &str) -> Vec<UdpSocket> {
        self.take_named(name, |socket| match socket {
            Socket::Udp(udp) => Ok(udp),
            other => Err(other),
        })
    }

    /// Removes the sockets named `name` that `pick` accepts; the others stay.
    fn take_named<T>(&mut self, name: &str, pick: fn(Socket) -> Result<T, Socket>) -> Vec<T> {
        let mut taken = Vec::new();
        for (n, socket) in std::mem::take(&mut self.sockets) {
            if n != name {
                self.sockets.push((n, socket));
                continue;
            }
            match pick(socket) {
                Ok(t) => taken.push(t),
                Err(socket) => self.sockets.push((n, socket)),
            }
        }
        taken
    }
}

/// A TCP socket handed over must already listen: accepting on one that does not fails only
/// later, after the start was reported.
fn check_listening(listener: &TcpListener, name: &str, fd: usize) -> anyhow::Result<()> {
    let listening = rustix::net::sockopt::socket_acceptconn(listener)
        .with_context(|| format!("the socket named {name} (fd {fd})"))?;
    if !listening {
        bail!("the socket named {name} (fd {fd}) is a TCP socket that is not listening");
    }
    Ok(())
}

/// Takes the sockets handed to this process (`command` serves the names `served`), checked
/// and non-blocking. Call before other threads run: listenfd removes `LISTEN_FDS` and
/// `LISTEN_PID` from the environment.
pub fn take(command: &str, served: &'static [Name]) -> anyhow::Result<Handed> {
    let names = std::env::var("LISTEN_FDNAMES").ok();
    // listenfd checks LISTEN_PID (a socket meant for another process is not ours) and removes
    // LISTEN_FDS and LISTEN_PID; LISTEN_FDNAMES is read above.
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(Handed::default());
    }
    let assigned = assign(command, names.as_deref(), fds.len(), served)?;
    let mut handed = Handed::default();
    for (i, spec) in assigned.into_iter().enumerate() {
        let (name, fd) = (spec.name, 3 + i);
        // listenfd checks the socket's type (SO_TYPE) and family before taking it.
        let socket = match spec.transport {
            Transport::Tcp => {
                let listener = fds
                    .take_tcp_listener(i)
                    .with_context(|| {
                        format!("the socket named {name} (fd {fd}) is not a TCP socket")
                    })?
                    .with_context(|| format!("the socket named {name} (fd {fd}) was taken"))?;
                check_listening(&listener, name, fd)?;
                listener.set_nonblocking(true)?;
                Socket::Tcp(listener)
            }
            Transport::Udp => {
                let socket = fds
                    .take_udp_socket(i)
                    .with_context(|| {
                        format!("the socket named {name} (fd {fd}) is not a UDP socket")
                    })?
                    .with_context(|| format!("the socket named {name} (fd {fd}) was taken"))?;
                socket.set_nonblocking(true)?;
                Socket::Udp(socket)
            }
        };
        handed.sockets.push((name, socket));
    }
    let names: Vec<&str> = handed.sockets.iter().map(|(n, _)| *n).collect();
    tracing::info!(
        names = %names.join(":"),
        "sockets handed over (socket activation): served instead of binding their flags' addresses"
    );
    Ok(handed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(given: &str, count: usize) -> anyhow::Result<Vec<&'static str>> {
        Ok(assign("portico run", Some(given), count, RUN)?
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    #[test]
    fn every_listener_of_run_is_named_and_lists_repeat() {
        assert_eq!(
            names("raft:http:https:http3:admin", 5).unwrap(),
            ["raft", "http", "https", "http3", "admin"]
        );
        assert_eq!(
            names("http:http:admin:admin:https:https:http3:http3", 8).unwrap(),
            [
                "http", "http", "admin", "admin", "https", "https", "http3", "http3"
            ]
        );
        let udp: Vec<&str> = RUN
            .iter()
            .filter(|n| n.transport == Transport::Udp)
            .map(|n| n.name)
            .collect();
        assert_eq!(udp, ["http3"], "only HTTP/3 is served over UDP");
    }

    #[test]
    fn an_unknown_name_a_second_raft_or_a_count_mismatch_is_refused() {
        let unknown = names("raft:metrics", 2).unwrap_err().to_string();
        assert!(
            unknown.contains(
                r#"socket "metrics" handed over (LISTEN_FDNAMES) is not one portico run serves"#
            ),
            "{unknown}"
        );
        let twice = names("raft:raft", 2).unwrap_err().to_string();
        assert!(
            twice.contains("a second socket named raft handed over (fd 4)"),
            "{twice}"
        );
        assert!(names("raft", 2).is_err(), "fewer names than sockets");
        assert!(names("raft:http", 1).is_err(), "more names than sockets");
        assert!(assign("portico run", None, 1, RUN).is_err(), "no names");
        // systemd's default name for an unnamed socket is "unknown": not served either.
        assert!(names("unknown", 1).is_err());
        // Names are exact: no case folding, no empty name.
        assert!(names("HTTP", 1).is_err());
        assert!(names("http:", 2).is_err());
    }

    #[test]
    fn echo_serves_listen_only() {
        let echo = |given: &str, n| assign("portico echo", Some(given), n, ECHO);
        assert_eq!(echo("listen:listen", 2).unwrap().len(), 2);
        let err = echo("http", 1).unwrap_err().to_string();
        assert!(
            err.contains("is not one portico echo serves (it serves listen)"),
            "{err}"
        );
    }

    #[test]
    fn the_issuer_serves_one_pki_socket_only() {
        let pki = |given: &str, n| assign("portico pki serve", Some(given), n, PKI);
        assert_eq!(pki("pki", 1).unwrap()[0].transport, Transport::Tcp);
        let twice = pki("pki:pki", 2).unwrap_err().to_string();
        assert!(
            twice.contains("a second socket named pki handed over (fd 4)"),
            "{twice}"
        );
        let err = pki("listen", 1).unwrap_err().to_string();
        assert!(
            err.contains("is not one portico pki serve serves (it serves pki)"),
            "{err}"
        );
    }

    #[test]
    fn a_tcp_socket_not_listening_is_refused() {
        use rustix::net::{AddressFamily, SocketType, bind, listen, socket};
        let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        bind(&fd, &"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap()).unwrap();
        let bound_only = TcpListener::from(fd);
        let err = check_listening(&bound_only, "http", 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the socket named http (fd 4) is a TCP socket that is not listening"),
            "{err}"
        );
        listen(&bound_only, 8).unwrap();
        check_listening(&bound_only, "http", 4).unwrap();
    }

    #[test]
    fn handed_sockets_are_taken_by_name_and_type() {
        let mut handed = Handed::default();
        let tcp = || TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = (tcp(), tcp());
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        handed.sockets.push(("http", Socket::Tcp(a)));
        handed.sockets.push(("admin", Socket::Tcp(tcp())));
        handed.sockets.push(("http", Socket::Tcp(b)));
        handed.sockets.push((
            "http3",
            Socket::Udp(UdpSocket::bind("127.0.0.1:0").unwrap()),
        ));
        let http: Vec<_> = handed
            .tcp("http")
            .iter()
            .map(|l| l.local_addr().unwrap())
            .collect();
        assert_eq!(http, [a_addr, b_addr], "in fd order");
        assert!(handed.tcp("http").is_empty(), "taken once");
        assert!(
            handed.tcp("http3").is_empty(),
            "a UDP socket is not a TCP one"
        );
        assert_eq!(handed.udp("http3").len(), 1);
        assert_eq!(handed.tcp("admin").len(), 1);
    }
}
