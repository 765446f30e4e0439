use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cloud_identity_access::{Config, SERVICE_NAME, cli};

#[derive(Debug, Parser)]
#[command(
    name = "cloud-identity-access",
    version,
    about = "Multi-tenant OAuth 2.1 / OpenID Connect provider"
)]
struct Cli {
    /// YAML config file; `IDENTITY_*` environment variables override it.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply pending database migrations and exit; prints what was applied (JSON).
    Migrate,
    /// Manage the token signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Inspect the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the OpenAPI 3.1 document (YAML).
    Openapi,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Rotate now: next becomes active, active becomes retiring, retiring is retired, a new next is made.
    Rotate,
    /// List the keys and their states (JSON).
    List,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain; exits 1 when a row was modified, deleted or inserted.
    Verify,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let _telemetry = cloud_kit::telemetry::init(SERVICE_NAME, &config.telemetry)?;
    let mut out = std::io::stdout().lock();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = cloud_identity_access::build(config)
                .await
                .context("cannot start")?;
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            let report = cli::migrate(&config).await.context("migration failed")?;
            serde_json::to_writer_pretty(&mut out, &report)?;
            use std::io::Write;
            writeln!(out)?;
        }
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            let keys = cli::keys_rotate(&config)
                .await
                .context("key rotation failed")?;
            serde_json::to_writer_pretty(&mut out, &keys)?;
        }
        Command::Keys {
            command: KeysCommand::List,
        } => {
            let keys = cli::keys_list(&config).await.context("cannot list keys")?;
            serde_json::to_writer_pretty(&mut out, &keys)?;
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let report = cli::audit_verify(&config)
                .await
                .context("cannot read the audit trail")?;
            serde_json::to_writer_pretty(&mut out, &report)?;
            use std::io::Write;
            writeln!(out)?;
            if !report.ok() {
                std::process::exit(1);
            }
        }
        Command::Openapi => {
            use std::io::Write;
            write!(
                out,
                "{}",
                cloud_identity_access::openapi::yaml()
                    .map_err(|e| anyhow::anyhow!("cannot render the OpenAPI document: {e}"))?
            )?;
        }
    }
    Ok(())
}
