//! The harness's private network: one namespace per replica, one for the backends, joined by
//! a bridge inside a hub namespace, with one veth into the harness's own namespace.
//!
//! ```text
//!  harness (root ns) 10.251.0.1 ── portico-chaos-h ═╗
//!                                                   ║  portico-chaos-hub: bridge br0
//!  portico-chaos-r0  10.251.0.10 ── eth0 ═══════════╣
//!  portico-chaos-r1  10.251.0.11 ── eth0 ═══════════╣
//!  portico-chaos-r2  10.251.0.12 ── eth0 ═══════════╣
//!  portico-chaos-be  10.251.0.20-22 ── eth0 ════════╝
//! ```
//!
//! The bridge lives in its own namespace so that the host's bridge-netfilter settings and
//! firewall never see (or drop) our traffic. Every name we create starts with
//! `portico-chaos-` (links inside our namespaces are deleted with them), so a cleanup pass can
//! find and remove what a killed run left behind, and nothing else is ever touched.
//!
//! Network faults are nftables tables *inside a replica's namespace* (`inet portico_chaos`);
//! they disappear with the namespace, and healing is deleting that one table.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Every namespace and root-namespace link we create starts with this.
pub const PREFIX: &str = "portico-chaos-";
const HUB: &str = "portico-chaos-hub";
const BACKENDS: &str = "portico-chaos-be";
/// The harness's veth in the root namespace (15 characters: the kernel's limit).
const HARNESS_LINK: &str = "portico-chaos-h";
const NFT_TABLE: &str = "portico_chaos";

/// Addresses inside the harness's own subnet.
pub const HARNESS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
/// The echo backends' addresses (all in the backends' namespace).
pub const BACKEND_ADDRS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 251, 0, 20),
    Ipv4Addr::new(10, 251, 0, 21),
    Ipv4Addr::new(10, 251, 0, 22),
];

pub fn replica_addr(ordinal: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 251, 0, 10 + ordinal as u8)
}

pub fn replica_netns(ordinal: usize) -> String {
    format!("{PREFIX}r{ordinal}")
}

pub fn backends_netns() -> &'static str {
    BACKENDS
}

/// Runs one command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!("cannot run {program} (is it installed? tests/setup installs it)")
        })?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `nft -f -` inside `netns` with `script` on stdin.
fn nft(netns: &str, script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Our namespaces that exist now (from an earlier, killed run or this one).
pub fn our_namespaces() -> anyhow::Result<Vec<String>> {
    let list = run("ip", &["netns", "list"])?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect())
}

/// Removes everything a previous run may have left: processes inside our namespaces (SIGKILL),
/// the namespaces (and with them their links and nftables rules), and our root-side link.
/// Returns what it removed, for the log.
pub fn cleanup_leftovers() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for ns in our_namespaces()? {
        let pids = run("ip", &["netns", "pids", &ns]).unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                removed.push(format!("process {pid} in {ns}"));
            }
        }
        run("ip", &["netns", "del", &ns])?;
        removed.push(format!("namespace {ns}"));
    }
    // Deleting the hub removes our veth's peer and so, asynchronously, our side too: a
    // link that vanished between the look and the delete is gone, as wanted.
    if run("ip", &["link", "show", HARNESS_LINK]).is_ok() {
        match run("ip", &["link", "del", HARNESS_LINK]) {
            Ok(_) => removed.push(format!("link {HARNESS_LINK}")),
            Err(_) if run("ip", &["link", "show", HARNESS_LINK]).is_err() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// The network while it exists; dropping it removes everything it made.
#[derive(Debug)]
pub struct Network {
    replicas: usize,
    torn_down: bool,
}

impl Network {
    /// Creates the hub, `replicas` replica namespaces and the backends' namespace.
    pub fn create(replicas: usize) -> anyhow::Result<Network> {
        // Guard first, so a failure half-way still tears down what was made.
        let network = Network {
            replicas,
            torn_down: false,
        };
        run("ip", &["netns", "add", HUB])?;
        run("ip", &["-n", HUB, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", HUB, "link", "set", "br0", "up"])?;
        run("ip", &["-n", HUB, "link", "set", "lo", "up"])?;

        // The harness's side.
        run(
            "ip",
            &[
                "link",
                "add",
                HARNESS_LINK,
                "type",
                "veth",
                "peer",
                "name",
                "up0",
                "netns",
                HUB,
            ],
        )?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{HARNESS_ADDR}/24"),
                "dev",
                HARNESS_LINK,
            ],
        )?;
        run("ip", &["link", "set", HARNESS_LINK, "up"])?;
        run(
            "ip",
            &["-n", HUB, "link", "set", "up0", "master", "br0", "up"],
        )?;

        let mut members: Vec<(String, Ipv4Addr, String)> = (0..replicas)
            .map(|i| (replica_netns(i), replica_addr(i), format!("r{i}")))
            .collect();
        members.push((BACKENDS.to_string(), BACKEND_ADDRS[0], "be".to_string()));
        for (ns, addr, hub_link) in &members {
            run("ip", &["netns", "add", ns])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n", HUB, "link", "add", hub_link, "type", "veth", "peer", "name", "eth0",
                    "netns", ns,
                ],
            )?;
            run(
                "ip",
                &["-n", HUB, "link", "set", hub_link, "master", "br0", "up"],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        }
        for addr in &BACKEND_ADDRS[1..] {
            run(
                "ip",
                &[
                    "-n",
                    BACKENDS,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ],
            )?;
        }
        Ok(network)
    }

    /// Cuts `ordinal` off as `cut` says (replacing any earlier cut of that replica).
    pub fn cut(&self, ordinal: usize, cut: Cut) -> anyhow::Result<()> {
        self.heal(ordinal)?;
        let (input, output) = match cut {
            Cut::Peers => {
                let peers: Vec<String> = (0..self.replicas)
                    .filter(|&i| i != ordinal)
                    .map(|i| replica_addr(i).to_string())
                    .collect();
                let set = peers.join(", ");
                (
                    format!("ip saddr {{ {set} }} drop"),
                    format!("ip daddr {{ {set} }} drop"),
                )
            }
            Cut::ApiServer { port } => (
                format!("ip saddr {HARNESS_ADDR} tcp sport {port} drop"),
                format!("ip daddr {HARNESS_ADDR} tcp dport {port} drop"),
            ),
            Cut::Everything => (
                "iifname \"eth0\" drop".to_string(),
                "oifname \"eth0\" drop".to_string(),
            ),
        };
        let script = format!(
            "table inet {NFT_TABLE} {{\n\
             chain input {{ type filter hook input priority -10; policy accept; {input}; }}\n\
             chain output {{ type filter hook output priority -10; policy accept; {output}; }}\n\
             }}\n"
        );
        nft(&replica_netns(ordinal), &script)
    }

    /// Removes any cut of `ordinal`.
    pub fn heal(&self, ordinal: usize) -> anyhow::Result<()> {
        let ns = replica_netns(ordinal);
        // `destroy` would be nicer but needs nft >= 1.0.8; add-then-delete is idempotent.
        nft(
            &ns,
            &format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"),
        )
    }

    /// The rules currently in `ordinal`'s namespace.
    #[cfg(test)]
    pub fn rules(&self, ordinal: usize) -> anyhow::Result<String> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &replica_netns(ordinal),
                "nft",
                "list",
                "ruleset",
            ],
        )
    }

    /// Kills every process left in our namespaces and deletes them. Idempotent.
    pub fn teardown(&mut self) -> anyhow::Result<()> {
        self.torn_down = true;
        cleanup_leftovers().map(drop)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if !self.torn_down
            && let Err(err) = self.teardown()
        {
            eprintln!("portico-chaos: network teardown failed: {err:#}");
        }
    }
}

/// Which traffic a network fault drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// To and from the other replicas (Raft); the API server and clients still reach it.
    Peers,
    /// To and from the API server's port; peers and clients still reach it.
    ApiServer { port: u16 },
    /// Everything on its interface.
    Everything,
}

/// Whether this process can create namespaces (root, and `ip`/`nft` installed).
pub fn available() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("the chaos harness needs root (network namespaces and nftables)");
    }
    run("ip", &["-V"]).context("iproute2")?;
    run("nft", &["--version"]).context("nftables")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Whether `from` (a namespace, or the harness when `None`) can fetch `url` within 2 s.
    fn reaches(from: Option<&str>, url: &str) -> bool {
        let script = format!(
            "import urllib.request,sys\ntry:\n urllib.request.urlopen('{url}', timeout=2)\nexcept Exception:\n sys.exit(1)"
        );
        let mut cmd = match from {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3", "-c", &script]);
                c
            }
            None => {
                let mut c = Command::new("python3");
                c.args(["-c", &script]);
                c
            }
        };
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn wait_reaches(from: Option<&str>, url: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if reaches(from, url) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// The whole network lifecycle against real namespaces, veths and nftables (needs root,
    /// as the harness does; the suite runs as root). One test, because the names are fixed.
    #[test]
    fn namespaces_cuts_heals_and_teardown() {
        available().expect("root, ip and nft (tests/setup installs them)");
        cleanup_leftovers().unwrap();
        let mut network = Network::create(3).unwrap();
        assert_eq!(
            our_namespaces().unwrap().len(),
            5,
            "hub, 3 replicas, backends"
        );

        // A web server in replica 1's namespace, and one in the harness's.
        let mut server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &replica_netns(1),
                "python3",
                "-m",
                "http.server",
                "8000",
                "--bind",
            ])
            .arg(replica_addr(1).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let harness_server = std::net::TcpListener::bind((HARNESS_ADDR, 0)).unwrap();
        let harness_port = harness_server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in harness_server.incoming().flatten() {
                let mut stream = stream;
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
        let r1 = format!("http://{}:8000/", replica_addr(1));
        let harness = format!("http://{HARNESS_ADDR}:{harness_port}/");
        let r0 = replica_netns(0);
        assert!(wait_reaches(None, &r1), "harness reaches replica 1");
        assert!(
            reaches(Some(&r0), &r1),
            "replica 0 reaches replica 1 over the bridge"
        );
        assert!(
            reaches(Some(&r0), &harness),
            "replica 0 reaches the harness"
        );
        assert!(
            reaches(Some(BACKENDS), &r1),
            "the backends' namespace is on the bridge"
        );

        // Cut from peers: replica 1 unreachable from 0, the harness still reachable.
        network.cut(0, Cut::Peers).unwrap();
        assert!(network.rules(0).unwrap().contains("portico_chaos"));
        assert!(!reaches(Some(&r0), &r1));
        assert!(reaches(Some(&r0), &harness));
        assert!(reaches(None, &r1), "others are untouched");

        // Cut from the API server's port only.
        network
            .cut(0, Cut::ApiServer { port: harness_port })
            .unwrap();
        assert!(reaches(Some(&r0), &r1));
        assert!(!reaches(Some(&r0), &harness));

        // Everything; then heal.
        network.cut(1, Cut::Everything).unwrap();
        network.heal(0).unwrap();
        assert!(!reaches(None, &r1));
        assert!(!reaches(Some(&r0), &r1));
        network.heal(1).unwrap();
        network.heal(1).unwrap(); // idempotent
        assert!(!network.rules(1).unwrap().contains("portico_chaos"));
        assert!(wait_reaches(None, &r1));
        assert!(reaches(Some(&r0), &harness));

        // Teardown kills what runs inside and removes every namespace and link.
        network.teardown().unwrap();
        assert!(our_namespaces().unwrap().is_empty());
        assert!(run("ip", &["link", "show", HARNESS_LINK]).is_err());
        let status = server.wait().unwrap();
        assert!(!status.success(), "the server in the namespace was killed");
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        assert!(HARNESS_LINK.len() <= 15);
        assert!(
            replica_netns(9).starts_with(PREFIX)
                && BACKENDS.starts_with(PREFIX)
                && HUB.starts_with(PREFIX)
        );
    }
}
