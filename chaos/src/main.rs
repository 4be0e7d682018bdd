//! Chaos harness for Portico.
mod checks;
mod load;
mod net;
mod procs;
mod record;
mod timeline;

fn main() -> anyhow::Result<()> {
    anyhow::bail!("wip")
}
