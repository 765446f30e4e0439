use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use cloud_identity_access::{Config, SERVICE_NAME};

#[derive(Debug, Parser)]
#[command(name = "cloud-identity-access", version, about = "Multi-tenant OAuth 2.1 / OpenID Connect provider")]
struct Cli {
    /// YAML config file; `IDENTITY_*` environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let _telemetry = cloud_kit::telemetry::init(SERVICE_NAME, &config.telemetry)?;
    let app = cloud_identity_access::build(config).await.context("cannot start")?;
    app.run_until_stopped().await?;
    Ok(())
}
