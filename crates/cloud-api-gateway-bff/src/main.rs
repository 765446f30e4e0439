use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use cloud_api_gateway_bff::{Config, SERVICE_NAME};

#[derive(Debug, Parser)]
#[command(
    name = "cloud-api-gateway-bff",
    version,
    about = "Authenticating, tenant-aware gateway and backend-for-frontend"
)]
struct Cli {
    /// YAML config file; `GATEWAY_*` environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let _telemetry = cloud_kit::telemetry::init(SERVICE_NAME, &config.telemetry)?;
    let app = cloud_api_gateway_bff::build(config)
        .await
        .context("cannot start")?;
    app.run_until_stopped().await?;
    Ok(())
}
