//! H5 (memory amplification): hyper's default HTTP/2 send buffer (400 KiB per stream, 128
//! streams) let a client that does not read hold about 50 MiB per connection, and nothing
//! limited idle connections. What must hold, measured on the standalone proxy (a child
//! process, so the clients' memory is not counted): 1,000 HTTP/2 streams of large responses
//! that get a zero flow-control window, plus 10,000 idle TCP connections, grow its resident
//! memory by less than [`SLOW_AND_IDLE_BOUND`]; one HTTP/2 connection of 100 streams that
//! never reads its socket, by less than [`UNREAD_CONNECTION_BOUND`] (the per-connection bound
//! of ARCHITECTURE.md); and a normal client (curl) is served meanwhile. Over HTTP/3, quinn's
//! default receive windows (1.25 MB a stream, none for the connection) would let 100 uploads
//! waiting for an upstream put all 100 MB in the proxy; now at most the 1 MiB connection window
//! comes in ([`HTTP3_UPLOAD_BOUND`]).

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;

use crate::common::*;
use crate::raw_h2;

/// Measured: 89 MiB (about 8 KiB per idle connection or slow stream, with its upstream
/// connection); the bound leaves headroom for allocator and kernel differences.
const SLOW_AND_IDLE_BOUND: u64 = 160 << 20;
/// 100 streams x (64 KiB send buffer + 3 upstream read chunks of 64 KiB: one over the send
/// buffer, one held by hyper, one being read) + the 1 MiB receive window: about 26 MiB, plus
/// each stream's state and upstream connection. Measured: 24 MiB. By the same count before
/// the fix: 128 x (400 KiB + 3 x 64 KiB), about 74 MiB.
const UNREAD_CONNECTION_BOUND: u64 = 32 << 20;

/// The 1 MiB QUIC receive window plus 100 waiting requests' state; measured: 4.4 MiB.
const HTTP3_UPLOAD_BOUND: u64 = 16 << 20;

const IDLE: usize = 10_000;
const SLOW_CONNECTIONS: usize = 10;
const STREAMS: usize = 100;
const BIG: &str = "/bytes/1073741824";

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb << 10
}

/// The most resident memory seen over a second (the proxy may still be settling): the
/// kernel's count for another process, sampled.
async fn settled_rss(pid: u32) -> u64 {
    let mut max = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        max = max.max(rss(pid));
    }
    max
}

/// Room for the idle connections, the streams' upstream connections and the proxy's own
/// (inherited by the child): the soft descriptor limit raised to the hard one.
async fn raise_nofile() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        hard >= IDLE as u64 + 2_500,
        "the hard RLIMIT_NOFILE ({hard}) is too low for {IDLE} connections"
    );
    let pid = std::process::id().to_string();
    let value = format!("--nofile={hard}:{hard}");
    let out = run("prlimit", &["--pid", &pid, &value]).await;
    assert!(out.status.success(), "{out:?}");
}

/// The standalone proxy on `table`: the process, its HTTP and its QUIC address.
async fn start_proxy(table: &TempFile) -> (Process, SocketAddr, SocketAddr) {
    let program = Program::new(STANDALONE).args([
        "--table",
        table.path(),
        "--http",
        "127.0.0.1:0",
        "--h3",
        "127.0.0.1:0",
        "--workers",
        "2",
    ]);
    let proxy = Standalone::start(program).await;
    let (http, h3) = (proxy.addr("http"), proxy.addr("h3"));
    (proxy.process, http, h3)
}

/// Idle connections from 127.0.1.1 upwards, 500 per address: under the default per-IP limit.
async fn open_idle(addr: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let ip = IpAddr::from([127, 0, 1, 1 + (i / 500) as u8]);
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
        held.push(socket.connect(addr).await.expect("idle connection"));
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_and_idle_connections_hold_bounded_memory_and_a_client_is_served() {
    raise_nofile().await;
    let backend = Backend::start().await;
    let table = TempFile::new(
        "memory.yaml",
        &(service("echo", &[backend.addr]) + &ingress("e", "mem.test", "/", "echo", &[])),
    );
    let (child, addr, _) = start_proxy(&table).await;
    let pid = child.pid().unwrap();
    let url = format!("http://{addr}/");
    let served = || async { curl_status(&["-H", "Host: mem.test", &url]).await };
    assert_eq!(served().await, 200);
    let base = settled_rss(pid).await;

    // 1,000 streams whose responses (1 GiB each) get no flow-control window.
    let mut slow = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..SLOW_CONNECTIONS {
        let mut h2 = raw_h2::connect(addr, 0).await;
        let mut heads = Vec::new();
        for _ in 0..STREAMS {
            h2.send = h2.send.ready().await.expect("stream slot");
            let (resp, _) = h2
                .send
                .send_request(raw_h2::get("mem.test", BIG), true)
                .unwrap();
            heads.push(resp);
        }
        for resp in join_all(heads).await {
            let resp = resp.expect("response head");
            assert_eq!(resp.status(), 200);
            // Kept, not read: dropping it would cancel the stream (RST_STREAM).
            bodies.push(resp.into_body());
        }
        slow.push(h2);
    }
    let idle = open_idle(addr).await;
    let loaded = settled_rss(pid).await;
    assert_eq!(served().await, 200, "a normal client is served meanwhile");
    assert!(
        slow.iter().all(|h2| !h2.driver.is_finished()),
        "slow streams still open"
    );
    let grown = loaded.saturating_sub(base);
    eprintln!(
        "RSS {} MiB -> {} MiB: {} KiB per stream+connection ({} streams, {} idle)",
        base >> 20,
        loaded >> 20,
        (grown >> 10) / (STREAMS * SLOW_CONNECTIONS + IDLE) as u64,
        STREAMS * SLOW_CONNECTIONS,
        idle.len()
    );
    assert!(
        grown < SLOW_AND_IDLE_BOUND,
        "grew {} MiB with {} slow streams and {} idle connections",
        grown >> 20,
        STREAMS * SLOW_CONNECTIONS,
        IDLE
    );
    drop((idle, bodies, slow));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_never_reads_holds_at_most_the_per_connection_bound() {
    let backend = Backend::start().await;
    let table = TempFile::new(
        "unread.yaml",
        &(service("echo", &[backend.addr]) + &ingress("e", "mem.test", "/", "echo", &[])),
    );
    let (child, addr, _) = start_proxy(&table).await;
    let pid = child.pid().unwrap();
    let url = format!("http://{addr}/");
    let served = || async { curl_status(&["-H", "Host: mem.test", &url]).await };
    assert_eq!(served().await, 200);
    // 100 streams, a huge window, and a socket nobody reads.
    let before = settled_rss(pid).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(i32::MAX as u32)
        .initial_connection_window_size(i32::MAX as u32);
    let (mut send, mut conn) = builder.handshake::<_, bytes::Bytes>(tcp).await.unwrap();
    let mut heads = Vec::new();
    for _ in 0..STREAMS {
        let (resp, _) = send
            .send_request(raw_h2::get("mem.test", BIG), true)
            .unwrap();
        heads.push(resp);
    }
    // Read until every head is in, then stop reading (the connection is kept, not polled).
    let heads = tokio::select! {
        heads = join_all(heads) => heads,
        r = &mut conn => panic!("connection ended: {r:?}"),
    };
    let bodies: Vec<_> = heads
        .into_iter()
        .map(|r| r.expect("head").into_body())
        .collect();
    let unread = settled_rss(pid).await;
    assert_eq!(served().await, 200);
    let grown = unread.saturating_sub(before);
    eprintln!(
        "one unread HTTP/2 connection of {STREAMS} streams: {} KiB",
        grown >> 10
    );
    assert!(
        grown < UNREAD_CONNECTION_BOUND,
        "one unread connection grew the proxy by {} MiB",
        grown >> 20
    );
    drop((bodies, send, conn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_request_bodies_waiting_for_an_upstream_hold_at_most_the_receive_window() {
    // An upstream whose accept queue is full: connecting to it hangs (SYNs are dropped), so
    // the proxy reads none of the request bodies and they wait in QUIC's receive buffers.
    let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    stuck.listen(0).unwrap();
    let stuck_addr = stuck.local_addr().unwrap().as_socket().unwrap();
    // The one connection a backlog of 0 queues: once its handshake completes the queue is
    // full. More attempts behind it only make sure (they hang).
    let queued_first =
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(stuck_addr))
            .await
            .expect("the first connection is queued at once")
            .unwrap();
    let mut queued = Vec::new();
    for _ in 0..3 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&stuck_addr.into());
        queued.push(s);
    }
    let table = TempFile::new(
        "stuck.yaml",
        &(service("stuck", &[stuck_addr])
            + &ingress(
                "s",
                "mem.test",
                "/",
                "stuck",
                &[("proxy-connect-timeout", "30")],
            )),
    );
    let (child, _, h3) = start_proxy(&table).await;
    let pid = child.pid().unwrap();
    let before = settled_rss(pid).await;

    // 100 uploads of 1 MB (under the default 1 MiB body limit): quinn's default windows
    // (1.25 MB a stream, no connection limit) would take all 100 MB of them in.
    let script = format!("{}/tests/security/h3_slow.py", env!("CARGO_MANIFEST_DIR"));
    let mut client = Command::new(python())
        .args([
            &script,
            "upload",
            &h3.to_string(),
            "mem.test",
            "100",
            "1000000",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    assert_eq!(first.unwrap().unwrap().as_deref(), Some("uploading"));
    // The peak while the client uploads: sampled (the kernel's count for another process)
    // until the client reports the end.
    let mut peak = rss(pid);
    let last = tokio::time::timeout(Duration::from_secs(30), async {
        let mut sample = tokio::time::interval(Duration::from_millis(250));
        let next = lines.next_line();
        tokio::pin!(next);
        loop {
            tokio::select! {
                line = &mut next => return line,
                _ = sample.tick() => peak = peak.max(rss(pid)),
            }
        }
    })
    .await;
    peak = peak.max(rss(pid));
    let last = last.unwrap().unwrap().unwrap_or_default();
    let sent: u64 = last
        .strip_prefix("sent_bytes=")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{last}"));
    let grown = peak.saturating_sub(before);
    eprintln!(
        "HTTP/3: {} KiB of request bodies let through, RSS grew {} KiB",
        sent >> 10,
        grown >> 10
    );
    assert!(last.ends_with("answered=0"), "the uploads wait: {last}");
    assert!(
        (512 << 10..=1 << 20).contains(&sent),
        "the connection window lets 1 MiB through: {sent}"
    );
    assert!(grown < HTTP3_UPLOAD_BOUND, "grew {} MiB", grown >> 20);
    drop((queued_first, queued));
}
