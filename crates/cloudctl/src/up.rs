//! `cloudctl up`: the whole platform in one process on this machine.

#[derive(Debug, clap::Args)]
pub struct UpArgs {}

pub fn run(_args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("not wired yet")
}
