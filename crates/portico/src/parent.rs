//! `--die-with-parent`: a child of `portico local` asks the kernel to kill it when its parent
//! dies (`PR_SET_PDEATHSIG`), so even a SIGKILLed `portico local` leaves nothing behind.
//!
//! Set at the child's own startup rather than in a `pre_exec` hook (which needs unsafe
//! code). That leaves a window between fork and the call in which the parent may already
//! have died: the parent passes its PID in [`PARENT_PID_ENV`], and the child exits at once
//! if its parent is no longer that process.

use anyhow::Context;
use rustix::process::{Signal, getppid, set_parent_process_death_signal};

/// The environment variable in which the spawning process passes its PID.
pub const PARENT_PID_ENV: &str = "PORTICO_PARENT_PID";

pub fn die_with_parent() -> anyhow::Result<()> {
    set_parent_process_death_signal(Some(Signal::KILL))
        .context("setting the parent-death signal")?;
    let parent = getppid().map(|p| p.as_raw_nonzero().get());
    if let Ok(expected) = std::env::var(PARENT_PID_ENV) {
        let expected: i32 = expected
            .parse()
            .with_context(|| format!("{PARENT_PID_ENV} is not a PID"))?;
        if parent != Some(expected) {
            // The parent died before the signal was armed.
            std::process::exit(1);
        }
    } else if parent.is_none() || parent == Some(1) {
        std::process::exit(1);
    }
    Ok(())
}
