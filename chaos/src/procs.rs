//! Processes the harness starts: each runs inside one of our namespaces (`ip netns exec`
//! execs the program, so the PID we hold is the program's own and signals reach it directly),
//! logs to a file, and is SIGKILLed when its handle is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use rustix::process::{Pid, Signal, kill_process};

/// One running process.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: tokio::process::Child,
    pid: Pid,
    log: PathBuf,
    stopped: bool,
}

impl Proc {
    /// Starts `program args...` inside `netns`, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        netns: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let pid = child
            .id()
            .and_then(|id| Pid::from_raw(id as i32))
            .context("started process has no PID")?;
        Ok(Proc {
            name: name.to_string(),
            child,
            pid,
            log: log.to_path_buf(),
            stopped: false,
        })
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill_process(self.pid, signal)
            .with_context(|| format!("cannot signal {} (pid {})", self.name, self.pid))
    }

    /// SIGKILL and reap.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        let _ = self.signal(Signal::KILL);
        self.child.wait().await?;
        Ok(())
    }

    /// SIGSTOP: the process is frozen, its sockets stay open.
    pub fn freeze(&mut self) -> anyhow::Result<()> {
        self.stopped = true;
        self.signal(Signal::STOP)
    }

    /// SIGCONT.
    pub fn thaw(&mut self) -> anyhow::Result<()> {
        self.stopped = false;
        self.signal(Signal::CONT)
    }

    /// SIGTERM, then SIGKILL after `grace` (a graceful restart, as Kubernetes does).
    pub async fn terminate(mut self, grace: std::time::Duration) -> anyhow::Result<()> {
        if self.stopped {
            let _ = self.signal(Signal::CONT);
        }
        let _ = self.signal(Signal::TERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.signal(Signal::KILL);
            self.child.wait().await?;
        }
        Ok(())
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process ignores nothing but SIGKILL, which kill_on_drop sends.
        let _ = self.signal(Signal::KILL);
    }
}
