//! A child process's output, read line by line as it comes, to wait on.
//!
//! Tests used to bind port 0, read the port, release it and pass it to a child: between the
//! release and the child's bind any other process may take the port. A child that binds
//! port 0 itself and logs what it got has no such window; [`Output::wait_for_line`] waits for
//! that log line and [`addr_after`] reads the address out of it. The same line wait replaces
//! sleeps that stood for "the child has done X by now" where the child logs X.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

use crate::wait::{WaitError, wait_for};

/// Lines read so far from one or more of a child's streams, ANSI colour codes removed.
#[derive(Clone)]
pub struct Output {
    lines: Arc<Mutex<Vec<String>>>,
    /// Bumped after each line; closed once every stream read has ended.
    count: watch::Receiver<usize>,
    sender: Arc<Mutex<Option<watch::Sender<usize>>>>,
}

impl Default for Output {
    fn default() -> Self {
        let (tx, rx) = watch::channel(0);
        Self {
            lines: Arc::default(),
            count: rx,
            sender: Arc::new(Mutex::new(Some(tx))),
        }
    }
}

impl Output {
    /// Reads `stream` (a child's stdout or stderr) into a new `Output`.
    pub fn capture(stream: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let output = Self::default();
        output.read(stream);
        output.seal();
        output
    }

    /// Reads `stream` too (call [`Output::seal`] once every stream is added).
    pub fn read(&self, stream: impl AsyncRead + Unpin + Send + 'static) {
        let tx = self.sender.lock().unwrap().clone().expect("not sealed yet");
        let lines = self.lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut lines = lines.lock().unwrap();
                lines.push(strip_ansi(&line));
                let n = lines.len();
                drop(lines);
                tx.send_replace(n);
            }
        });
    }

    /// No more streams will be added: once those read end, waits for a line fail at once.
    pub fn seal(&self) {
        self.sender.lock().unwrap().take();
    }

    /// Every line read so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until every stream read has ended (the child exited or closed them), for at most
    /// `deadline`; returns all the lines.
    pub async fn ended(&self, deadline: Duration) -> Result<Vec<String>, WaitError> {
        let mut count = self.count.clone();
        wait_for("the child's output to end", deadline, async {
            while count.changed().await.is_ok() {}
        })
        .await?;
        Ok(self.lines())
    }

    /// Waits for a line (read earlier or later) for which `pred` holds, for at most `deadline`;
    /// fails at once if the streams end first (the child exited without saying it).
    pub async fn wait_for_line(
        &self,
        what: impl Display,
        deadline: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, WaitError> {
        let what = what.to_string();
        let mut count = self.count.clone();
        let mut seen = 0;
        let found = wait_for(&what, deadline, async {
            loop {
                // Mark the count seen before scanning, so a line added after the scan wakes
                // the `changed` below.
                count.borrow_and_update();
                let closed = {
                    let lines = self.lines.lock().unwrap();
                    if let Some(line) = lines[seen..].iter().find(|l| pred(l)) {
                        return Some(line.clone());
                    }
                    seen = lines.len();
                    false
                };
                if closed || count.changed().await.is_err() {
                    let lines = self.lines.lock().unwrap();
                    return lines[seen..].iter().find(|l| pred(l)).cloned();
                }
            }
        })
        .await?;
        found.ok_or(WaitError::Closed { what })
    }
}

/// The socket address right after `key` in `line`: `key=127.0.0.1:80`, `key=[::1]:80` or a
/// list `key=[127.0.0.1:80, …]` (its first), `key=Some(127.0.0.1:80)` or JSON `"key":"…"`.
pub fn addr_after(line: &str, key: &str) -> Option<SocketAddr> {
    let (_, rest) = line
        .split_once(&format!("{key}="))
        .or_else(|| line.split_once(&format!("\"{key}\":")))?;
    let rest = rest.trim_start_matches('"');
    let rest = rest.strip_prefix("Some(").unwrap_or(rest);
    // `[` opens either an IPv6 address or a list: try as written, then inside the list.
    first_addr(rest).or_else(|| first_addr(rest.strip_prefix('[')?))
}

/// Every socket address in the value of `key` in `line`: a list as `Debug` writes it
/// (`key=[127.0.0.1:80, [::1]:80]`, `"key":"[…]"`) or a single address; empty if none.
pub fn addrs_after(line: &str, key: &str) -> Vec<SocketAddr> {
    let Some((_, rest)) = line
        .split_once(&format!("{key}="))
        .or_else(|| line.split_once(&format!("\"{key}\":")))
    else {
        return Vec::new();
    };
    let rest = rest.trim_start_matches('"');
    if let Some(addr) = first_addr(rest) {
        return vec![addr];
    }
    // A list: IPv6 addresses inside it are bracketed, so `[` then a parse decides.
    let Some(mut rest) = rest.strip_prefix('[') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Some(addr) = first_addr(rest) {
        out.push(addr);
        let used = addr.to_string().len();
        match rest[used..].strip_prefix(", ") {
            Some(next) => rest = next,
            None => break,
        }
    }
    out
}

/// The longest prefix of `text` that is a socket address.
fn first_addr(text: &str) -> Option<SocketAddr> {
    let end = text
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(text.len());
    (1..=end).rev().find_map(|n| text[..n].parse().ok())
}

/// `line` without ANSI escape sequences (tracing colours its fields when it is told to).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_in_every_form_the_binaries_log() {
        let v4: SocketAddr = "127.0.0.1:41233".parse().unwrap();
        let v6: SocketAddr = "[::1]:8443".parse().unwrap();
        for (line, key, want) in [
            (
                "ready http=[127.0.0.1:41233, 127.0.0.1:5] https=[]",
                "http",
                v4,
            ),
            (
                "INFO serving http=[127.0.0.1:41233] admin=[::1]:8443",
                "admin",
                v6,
            ),
            ("echo listening addr=127.0.0.1:41233 service=a", "addr", v4),
            ("x=Some(127.0.0.1:41233) y", "x", v4),
            (r#"{"fields":{"addr":"[::1]:8443"}}"#, "addr", v6),
        ] {
            assert_eq!(addr_after(line, key), Some(want), "{line}");
        }
        assert_eq!(addr_after("ready https=[]", "https"), None);
        assert_eq!(
            addrs_after("x http=[127.0.0.1:41233, [::1]:8443] y", "http"),
            [v4, v6]
        );
        assert_eq!(addrs_after(r#""raft":"[::1]:8443","#, "raft"), [v6]);
        assert!(addrs_after("ready https=[]", "https").is_empty());
        assert_eq!(addr_after("nothing here", "http"), None);
    }

    #[test]
    fn colour_codes_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[2maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:1"),
            "addr=127.0.0.1:1"
        );
    }

    #[tokio::test]
    async fn a_line_is_awaited_and_the_end_of_output_fails_the_wait() {
        let mut child = tokio::process::Command::new("sh")
            .args([
                "-c",
                "echo starting; sleep 0.2; echo 'ready http=[127.0.0.1:9]'",
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let output = Output::capture(child.stdout.take().unwrap());
        let line = output
            .wait_for_line("the ready line", Duration::from_secs(10), |l| {
                l.starts_with("ready")
            })
            .await
            .unwrap();
        assert_eq!(
            addr_after(&line, "http"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        let err = output
            .wait_for_line("a line never written", Duration::from_secs(10), |l| {
                l == "never"
            })
            .await
            .unwrap_err();
        assert!(matches!(err, WaitError::Closed { .. }), "{err}");
        assert_eq!(output.lines().len(), 2);
        let all = output.ended(Duration::from_secs(10)).await.unwrap();
        assert_eq!(all, ["starting", "ready http=[127.0.0.1:9]"]);
    }

    #[tokio::test]
    async fn both_streams_are_read_until_both_end() {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let output = Output::default();
        output.read(child.stdout.take().unwrap());
        output.read(child.stderr.take().unwrap());
        output.seal();
        let mut all = output.ended(Duration::from_secs(10)).await.unwrap();
        all.sort();
        assert_eq!(all, ["err", "out"]);
    }
}
