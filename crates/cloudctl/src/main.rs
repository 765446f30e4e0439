//! `cloudctl`: the operator CLI of the cloud platform.

mod flags;
mod gitops;
mod output;
mod up;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cloudctl",
    version,
    about = "Operate the cloud platform: run it locally, manage environments, promote and roll back"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this machine with embedded defaults (SQLite, no external servers).
    Up(up::UpArgs),
    /// The environment matrix: list, show, diff (as rendered) and validate environments.
    Env(gitops::EnvArgs),
    /// Promote a service's version into an environment from the stage before it (one git commit).
    Promote(gitops::PromoteArgs),
    /// Restore the previously deployed version of a service in an environment (one git commit).
    Rollback(gitops::RollbackArgs),
    /// Which version of each service runs in each environment, since when, by whom, and drift.
    Status(gitops::StatusArgs),
    /// Record check results (CI runs) that promotions require.
    Checks(gitops::ChecksArgs),
    /// Feature flags: read and verify the hash-chained audit trail of flag changes.
    Flags(flags::FlagsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Env(args) => gitops::env(args),
        Command::Promote(args) => gitops::promote(args),
        Command::Rollback(args) => gitops::rollback(args),
        Command::Status(args) => gitops::status(args),
        Command::Checks(args) => gitops::checks(args),
        Command::Flags(args) => flags::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `cloudctl ... | head -1`: the reader has what it wanted; not an error.
        Err(err) if output::is_stdout_closed(&err) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cloudctl: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
