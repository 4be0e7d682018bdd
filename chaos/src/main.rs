//! Chaos harness for Portico (being built; see issue 8).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("the chaos harness is not built yet")
}
