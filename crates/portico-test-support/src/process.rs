//! The one starter of real processes under test (`portico run`, `portico echo`,
//! `portico-raft-node`): a [`Program`] (binary, arguments, environment, sockets handed over) is
//! spawned as a [`Process`] whose output is captured into an [`Output`], which reads the
//! addresses the child reports, signals it (SIGTERM, SIGKILL, SIGSTOP, SIGCONT), restarts it
//! with the same arguments (so the same data directory) and kills it when dropped.
//!
//! No port is picked for a child. Every listener a child can choose for itself it binds on
//! port 0 and reports in its `listening` line ([`Listening`]). Raft is the exception: a
//! cluster's initial members must know each other's addresses before any of them starts, and a
//! restarted member must come back on its old address (its identity in the membership). Three
//! ways were weighed:
//! - a port found free, released, and bound again by the child: any other process can take it
//!   in between (the failover tests started their clusters up to three times for this);
//! - members bind port 0 and the cluster forms by one member bootstrapping alone and the others
//!   joining at the addresses they report: it covers the start, but not a restart, where the
//!   old address must be bound again by the new process (the same window), and it would test
//!   the scale-up path instead of the initial-members path every deployment takes;
//! - socket activation, chosen: the test binds each member's Raft listener itself
//!   ([`raft_listeners`]) and holds it for the cluster's life; each child, and each restart of
//!   it, gets that socket as fd 3 by systemd's protocol (`LISTEN_FDS`, `LISTEN_FDNAMES=raft`;
//!   `portico run` and `portico-raft-node` take it over instead of binding). Nothing is ever
//!   released, so there is no window and nothing to retry, and the binaries gain a feature
//!   systemd deployments use. The one difference from a real cluster: while a member is down,
//!   the test still holds its listener, so a peer's connection is accepted by the kernel and
//!   then times out instead of being refused (as for a member that is stopped, not dead).
//!
//! The children's pipes and reapers run on one background runtime of this module's, so a
//! synchronous test can start processes too (the `*_blocking` methods wait from outside any
//! runtime).

use std::ffi::OsString;
use std::fmt::Display;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
pub use rustix::process::Signal;
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::child::{Output, addrs_after};
use crate::wait::{WaitError, wait_for};

/// The runtime the children's output readers and reapers run on.
fn background() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-processes")
            .enable_all()
            .build()
            .expect("the test processes' runtime")
    })
}

/// Runs `cmd` (a short-lived tool: kubectl, openssl) with `input` on its stdin and its
/// stdout and stderr captured, as `Command::output` does without stdin.
pub fn output_with_stdin(
    cmd: &mut std::process::Command,
    input: &[u8],
) -> std::io::Result<std::process::Output> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Dropped after writing: the tool sees the end of its input.
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)?;
    child.wait_with_output()
}

/// Runs `future` to completion from synchronous code (not from inside a runtime).
pub fn block_on<F: Future>(future: F) -> F::Output {
    background().handle().block_on(future)
}

/// `n` Raft listeners on 127.0.0.1, each on a port of its own, held by the test for as long
/// as it keeps them (see the module doc): hand them to the members with [`Program::socket`].
pub fn raft_listeners(n: usize) -> Vec<Arc<TcpListener>> {
    (0..n)
        .map(|_| Arc::new(TcpListener::bind("127.0.0.1:0").expect("binding a Raft listener")))
        .collect()
}

/// A socket the test holds and hands over: a TCP listener, or a UDP socket (HTTP/3).
#[derive(Clone)]
enum Held {
    Tcp(Arc<TcpListener>),
    Udp(Arc<UdpSocket>),
}

impl Held {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Held::Tcp(l) => l.local_addr(),
            Held::Udp(u) => u.local_addr(),
        }
    }

    /// A duplicate of its descriptor, for the child.
    fn duplicate(&self) -> std::io::Result<OwnedFd> {
        match self {
            Held::Tcp(l) => l.try_clone().map(OwnedFd::from),
            Held::Udp(u) => u.try_clone().map(OwnedFd::from),
        }
    }
}

/// What to run: the binary, its arguments and environment, and the sockets it is handed.
#[derive(Clone)]
pub struct Program {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_removed: Vec<OsString>,
    /// Handed over as fd 3, 4, … in this order, with these names (`LISTEN_FDNAMES`).
    sockets: Vec<(String, Held)>,
    /// stdin and stdout are the test's command channel instead of captured output.
    command_channel: bool,
}

impl Program {
    pub fn new(program: impl AsRef<Path>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_removed: Vec::new(),
            sockets: Vec::new(),
            command_channel: false,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Leaves `key` out of the environment the child inherits.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_removed.push(key.into());
        self
    }

    /// Hands `listener` to the child by socket activation, named `name`.
    pub fn socket(mut self, name: &str, listener: &Arc<TcpListener>) -> Self {
        self.sockets
            .push((name.to_owned(), Held::Tcp(listener.clone())));
        self
    }

    /// Hands the UDP `socket` to the child by socket activation, named `name`.
    pub fn udp_socket(mut self, name: &str, socket: &Arc<UdpSocket>) -> Self {
        self.sockets
            .push((name.to_owned(), Held::Udp(socket.clone())));
        self
    }

    /// stdin and stdout carry commands and answers ([`Process::command`]); stderr alone is
    /// captured.
    pub fn command_channel(mut self) -> Self {
        self.command_channel = true;
        self
    }

    /// The address of the socket handed over as `name`.
    pub fn handed_over(&self, name: &str) -> Option<SocketAddr> {
        let (_, socket) = self.sockets.iter().find(|(n, _)| n == name)?;
        socket.local_addr().ok()
    }

    /// Its arguments, as given.
    pub fn arguments(&self) -> &[OsString] {
        &self.args
    }

    /// Starts it; `name` is what failures call it.
    pub fn spawn(&self, name: impl Display) -> Process {
        let mut process = Process {
            name: name.to_string(),
            program: self.clone(),
            child: None,
            output: Output::default(),
            stdin: None,
            stdout: None,
        };
        process.start();
        process
    }
}

/// A running (or stopped) child; SIGKILLed when dropped.
pub struct Process {
    name: String,
    program: Program,
    child: Option<Child>,
    output: Output,
    stdin: Option<ChildStdin>,
    stdout: Option<tokio::io::Lines<tokio::io::BufReader<ChildStdout>>>,
}

impl Process {
    fn start(&mut self) {
        let program = &self.program;
        let mut command = tokio::process::Command::new(&program.program);
        for key in &program.env_removed {
            command.env_remove(key);
        }
        command
            .args(&program.args)
            .envs(program.env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if program.command_channel {
            command.stdin(Stdio::piped()).stdout(Stdio::piped());
        } else {
            command.stdin(Stdio::null()).stdout(Stdio::piped());
        }
        if !program.sockets.is_empty() {
            let names: Vec<&str> = program.sockets.iter().map(|(n, _)| n.as_str()).collect();
            command
                .env("LISTEN_FDS", program.sockets.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            let mappings = program
                .sockets
                .iter()
                .enumerate()
                .map(|(i, (name, socket))| FdMapping {
                    parent_fd: socket
                        .duplicate()
                        .unwrap_or_else(|e| panic!("duplicating socket {name}: {e}")),
                    child_fd: 3 + i as i32,
                })
                .collect();
            command
                .fd_mappings(mappings)
                .expect("one child fd per socket");
        }
        let _runtime = background().enter();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} ({:?}): {e}", self.name, program.program));
        let output = Output::default();
        output.read(child.stderr.take().unwrap());
        if program.command_channel {
            self.stdin = child.stdin.take();
            self.stdout = Some(tokio::io::AsyncBufReadExt::lines(
                tokio::io::BufReader::new(child.stdout.take().unwrap()),
            ));
        } else {
            output.read(child.stdout.take().unwrap());
        }
        output.seal();
        self.output = output;
        self.child = Some(child);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Its process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.child.is_some()
    }

    /// How it exited, if it has (without waiting).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Sends `signal` (TERM, KILL, STOP, CONT, …).
    pub fn signal(&self, signal: Signal) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive");
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("signalling {}: {e}", self.name));
    }

    /// Waits at most `deadline` for it to exit; its exit status.
    pub async fn wait(&mut self, deadline: Duration) -> Result<ExitStatus, WaitError> {
        let child = self.child.as_mut().expect("started");
        let status = wait_for(format!("{} to exit", self.name), deadline, child.wait()).await?;
        Ok(status.expect("waiting for a child"))
    }

    /// [`Process::wait`] from synchronous code.
    pub fn wait_blocking(&mut self, deadline: Duration) -> Result<ExitStatus, WaitError> {
        block_on(self.wait(deadline))
    }

    /// SIGKILL, and waits until it is gone (its sockets closed).
    pub async fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// [`Process::kill`] from synchronous code.
    pub fn kill_blocking(&mut self) {
        block_on(self.kill());
    }

    /// Kills it if it runs, then starts it again with the same program (arguments, data
    /// directory and sockets); its output starts afresh.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.start();
    }

    /// [`Process::restart`] from synchronous code.
    pub fn restart_blocking(&mut self) {
        block_on(self.restart());
    }

    /// Its output (stdout and stderr, or stderr alone with a command channel) since it was
    /// last started.
    pub fn output(&self) -> &Output {
        &self.output
    }

    /// Its output so far, one line each.
    pub fn output_text(&self) -> String {
        self.output
            .lines()
            .iter()
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Waits for a line of its output for which `pred` holds (read earlier or later).
    pub async fn wait_for_line(
        &self,
        what: impl Display,
        deadline: Duration,
        pred: impl FnMut(&str) -> bool,
    ) -> Result<String, WaitError> {
        let what = format!("{}: {what}", self.name);
        self.output.wait_for_line(what, deadline, pred).await
    }

    /// [`Process::wait_for_line`] from synchronous code.
    pub fn wait_for_line_blocking(
        &self,
        what: impl Display,
        deadline: Duration,
        pred: impl FnMut(&str) -> bool,
    ) -> Result<String, WaitError> {
        block_on(self.wait_for_line(what, deadline, pred))
    }

    /// Waits for its `listening` line (see [`Listening`]).
    pub async fn listening(&self, deadline: Duration) -> Result<Listening, WaitError> {
        let line = self
            .wait_for_line("its listening line", deadline, Listening::is_listening)
            .await?;
        Ok(Listening::parse(&line))
    }

    /// [`Process::listening`] from synchronous code.
    pub fn listening_blocking(&self, deadline: Duration) -> Result<Listening, WaitError> {
        block_on(self.listening(deadline))
    }

    /// Sends one line on its command channel and reads one line of answer, within `deadline`.
    pub async fn command(&mut self, line: &str, deadline: Duration) -> Result<String, WaitError> {
        use tokio::io::AsyncWriteExt;
        let what = format!("{}'s answer to {line:?}", self.name);
        let stdin = self.stdin.as_mut().expect("a command channel");
        let stdout = self.stdout.as_mut().expect("a command channel");
        let answer = wait_for(&what, deadline, async {
            stdin.write_all(format!("{line}\n").as_bytes()).await.ok()?;
            stdout.next_line().await.ok().flatten()
        })
        .await?;
        answer.ok_or(WaitError::Closed { what })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // kill_on_drop sends SIGKILL; the background runtime reaps it.
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// The addresses a child reports once every listener is bound: one line with the message
/// `listening` and the fields `http`, `https`, `h3`, `admin` (lists), `raft` (`portico run`),
/// or `addr` (`portico echo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listening {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub h3: Vec<SocketAddr>,
    pub admin: Vec<SocketAddr>,
    pub raft: Option<SocketAddr>,
    pub addr: Option<SocketAddr>,
}

impl Listening {
    /// Whether `line` is a `listening` line (JSON or human log format).
    pub fn is_listening(line: &str) -> bool {
        line.contains(r#""message":"listening""#) || line.contains(" listening ")
    }

    pub fn parse(line: &str) -> Self {
        Self {
            http: addrs_after(line, "http"),
            https: addrs_after(line, "https"),
            h3: addrs_after(line, "h3"),
            admin: addrs_after(line, "admin"),
            raft: addrs_after(line, "raft").first().copied(),
            addr: addrs_after(line, "addr").first().copied(),
        }
    }

    /// The first admin address, as `host:port` (what curl and the tests' `get` take).
    pub fn admin(&self) -> String {
        self.admin.first().expect("an admin listener").to_string()
    }

    /// The first plain HTTP address.
    pub fn http(&self) -> SocketAddr {
        *self.http.first().expect("an HTTP listener")
    }

    /// The first TLS address.
    pub fn https(&self) -> SocketAddr {
        *self.https.first().expect("an HTTPS listener")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_listening_line_gives_every_address() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"listening","http":"[127.0.0.1:41001]","https":"[127.0.0.1:41002, [::1]:41003]","h3":"[]","admin":"[127.0.0.1:41004]","raft":"127.0.0.1:41005","target":"portico::run"}"#;
        assert!(Listening::is_listening(line));
        let l = Listening::parse(line);
        assert_eq!(l.http, ["127.0.0.1:41001".parse().unwrap()]);
        assert_eq!(
            l.https,
            [
                "127.0.0.1:41002".parse().unwrap(),
                "[::1]:41003".parse().unwrap()
            ]
        );
        assert!(l.h3.is_empty());
        assert_eq!(l.admin(), "127.0.0.1:41004");
        assert_eq!(l.raft, Some("127.0.0.1:41005".parse().unwrap()));
        assert!(!Listening::is_listening(r#"{"message":"Raft started"}"#));
    }

    #[tokio::test]
    async fn a_socket_is_handed_over_held_across_a_restart_and_the_child_is_killed() {
        let sockets = raft_listeners(1);
        let port = sockets[0].local_addr().unwrap().port();
        // The child sees the protocol's variables and its fd 3 is the very socket.
        let program = Program::new("sh")
            .args([
                "-c",
                "echo fds=$LISTEN_FDS names=$LISTEN_FDNAMES; \
                 readlink /proc/self/fd/3; sleep 30",
            ])
            .socket("raft", &sockets[0]);
        let mut process = program.spawn("sh");
        let line = process
            .wait_for_line("the socket", Duration::from_secs(10), |l| {
                l.starts_with("socket:")
            })
            .await
            .unwrap();
        let first = line;
        let all = process.output().lines();
        assert_eq!(all[0], "fds=1 names=raft", "{all:?}");
        let pid = process.pid().unwrap();
        process.restart().await;
        assert_ne!(process.pid().unwrap(), pid);
        let line = process
            .wait_for_line("the socket again", Duration::from_secs(10), |l| {
                l.starts_with("socket:")
            })
            .await
            .unwrap();
        assert_eq!(line, first, "the same socket after a restart");
        // Held by the test all along: the port is still bound here.
        assert_eq!(sockets[0].local_addr().unwrap().port(), port);
        process.signal(Signal::TERM);
        let status = process.wait(Duration::from_secs(10)).await.unwrap();
        assert!(!status.success());
    }
}
