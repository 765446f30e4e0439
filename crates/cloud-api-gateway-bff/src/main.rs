use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use cloud_api_gateway_bff::{Config, SERVICE_NAME};

// glibc's malloc and free were about a fifth of the gateway's CPU per proxied request
// (docs/benchmarks.md); mimalloc's thread-local free lists fit a tokio server's many small,
// short-lived allocations. Not in cloud-identity-access: there it raised the idle RSS from
// 13 to 44 MiB (a heap per SQLite worker thread), over that service's 30 MB budget.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
