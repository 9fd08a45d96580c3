//! `vault-agent demo`: placeholder replaced below.
pub async fn run(_files: usize) -> anyhow::Result<()> {
    Ok(())
}
